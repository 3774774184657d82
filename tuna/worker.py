"""The module Celery workers load (``celery -A tuna.worker worker ...``).

It defines the one task tuna sends, :data:`tuna.celery_app.RUN_JOBS_TASK`, which runs a
bundle of jobs through their library, and pins each pool process to its GPU. It also
ties the worker's processes to their launcher (:mod:`tuna.gpuhost`): the worker dies with
the launcher, each pool process dies with the worker, and a pool process that is told to
die kills its running job's process group on the way out.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

import sqlalchemy as sa
from billiard.process import current_process
from celery import Task
from celery.signals import after_setup_logger, task_postrun, worker_process_init

from tuna.celery_app import RUN_JOBS_TASK, make_app
from tuna.children import request_death_signal
from tuna.config import load_settings
from tuna.library import get_library, library_names
from tuna.runner import database, pin_to_gpu, run_bundle
from tuna.workerproc import LAUNCHER_PID_ENV

log = logging.getLogger(__name__)


def _die_with_launcher() -> None:
    """In the worker's main process, as early as the app module allows: SIGKILL when the
    launcher goes, however it goes. (Asked here rather than in a ``preexec_fn``, which is
    unsafe in the threaded launcher; the parent check covers the moments before.)"""
    launcher = os.environ.pop(LAUNCHER_PID_ENV, "")
    if launcher.isdigit():
        request_death_signal(signal.SIGKILL, parent=int(launcher))


_die_with_launcher()
_MAIN_PID = os.getpid()

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


def _exit_now(signum: int, _frame: FrameType | None) -> None:
    # Raised inside the running job, so that the runner kills the job's process group
    # (which lives in its own session, out of reach of this process's death) before going.
    raise SystemExit(128 + signum)


@worker_process_init.connect
def _die_with_the_worker(**_: Any) -> None:
    """A pool process gets SIGTERM when the worker's main process goes (Celery's own
    choice, SIGKILL, would leave the running job's commands behind), and SIGTERM, from
    its parent or Celery's cold shutdown, ends it through :func:`_exit_now`."""
    signal.signal(signal.SIGTERM, _exit_now)
    request_death_signal(signal.SIGTERM, parent=_MAIN_PID)


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


def jobs_on_their_attempt(conn: sa.Connection, table: sa.Table, running: str, attempts: Mapping[int, int]) -> list[int]:
    """Of the jobs in ``attempts`` (id → attempt), those still running that attempt."""
    c = table.c
    rows = conn.execute(sa.select(c.id, c.attempt).where(c.id.in_(list(attempts)), c.state == running)).all()
    return [int(row.id) for row in rows if attempts.get(int(row.id)) == int(row.attempt)]


@task_postrun.connect
def _forget_superseded_result(
    sender: Any = None, task_id: str | None = None, args: Sequence[Any] | None = None, **_: Any
) -> None:
    """A result that no job is waiting for any more (every job of the task was given back,
    re-run or finished by another attempt meanwhile) is deleted now: no head node will
    ever drain it, and it would sit in the backend until it expires."""
    if getattr(sender, "name", None) != RUN_JOBS_TASK or not task_id or not args or len(args) != 3:
        return
    library, step_name, jobs = args
    try:
        lib = get_library(library)
        step = lib.step(step_name)
        attempts = {int(job["id"]): int(job["attempt"]) for job in jobs}
        if not attempts:
            return
        with database().begin() as conn:
            if jobs_on_their_attempt(conn, lib.table_of(step), step.running, attempts):
                return
        sender.backend.forget(task_id)
    except Exception as exc:  # the head node's sweep or the expiry still remove it
        log.warning("task %s: could not check whether its result is still wanted: %s", task_id, exc)
        return
    log.warning("task %s: its jobs moved on to other attempts; its result was deleted", task_id)
