"""The module Celery workers load (``celery -A tuna.worker worker ...``).

It defines the one task tuna sends, :data:`tuna.celery_app.RUN_JOBS_TASK`, which runs a
bundle of jobs through their library, and pins each pool process to its GPU.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from billiard.process import current_process
from celery import Task
from celery.signals import after_setup_logger, worker_process_init

from tuna.celery_app import RUN_JOBS_TASK, make_app
from tuna.config import load_settings
from tuna.library import get_library, library_names
from tuna.runner import pin_to_gpu, run_bundle

app = make_app(load_settings())

# Import every library here, in the parent, so that pool processes inherit them when they
# fork instead of each importing them on its first task.
for _name in library_names():
    get_library(_name)


@app.task(name=RUN_JOBS_TASK, bind=True)
def run_jobs(self: Task, library: str, step: str, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    return run_bundle(library, step, jobs, redelivered=redelivered)


@after_setup_logger.connect
def _quiet_per_task_lines(**_: Any) -> None:
    # One log line per received and finished task (with its whole result) is most of a
    # worker's log and a real share of its CPU on short jobs; failures still show.
    for name in ("celery.app.trace", "celery.worker.strategy", "alembic", "kombu"):
        logging.getLogger(name).setLevel(logging.WARNING if name != "kombu" else logging.ERROR)


@worker_process_init.connect
def _pin_pool_process(**_: Any) -> None:
    """A per-GPU worker is pinned by its launcher; a host-wide worker spreads its pool
    processes over the host's GPUs by pool index (TUNA_AVAIL_GPUS, set by the launcher)."""
    if os.environ.get("TUNA_GPU_ID"):
        return
    gpus = [g for g in os.environ.get("TUNA_AVAIL_GPUS", "").split(",") if g.strip()]
    index = getattr(current_process(), "index", None)
    if gpus and isinstance(index, int):
        pin_to_gpu(int(gpus[index % len(gpus)]))
