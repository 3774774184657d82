"""The Celery app, queue and task naming, result store and worker control.

Nothing here knows a library: tasks are sent by name (:data:`RUN_JOBS_TASK`), and the
task itself is defined in :mod:`tuna.worker`, the module Celery workers load.
"""

from tuna.celery_app.app import RUN_JOBS_TASK, make_app
from tuna.celery_app.naming import queue_name, task_id_prefix, worker_name

__all__ = ["RUN_JOBS_TASK", "make_app", "queue_name", "task_id_prefix", "worker_name"]
