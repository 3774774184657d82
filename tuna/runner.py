"""Running jobs on a GPU host: one bundle of jobs, each in its own process group.

Used by the Celery task (:mod:`tuna.worker`) and by ``--execute``'s local processes alike,
so that both produce the same outcome records.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded

from tuna import jobprocess
from tuna.config import load_settings
from tuna.db.engine import Database
from tuna.jobs import count_redelivery_without_commit
from tuna.library import JobRun, Library, Step, WorkerContext, get_library

log = logging.getLogger(__name__)

#: Characters of stderr kept with a failure.
STDERR_TAIL = 2000
GPU_ENV = ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")


@dataclass(frozen=True)
class CommandResult:
    exit_status: int | None
    stdout: str
    stderr: str
    reason: str = ""  # empty when the command exited 0
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not self.reason


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def run_command(argv: Sequence[str], *, timeout_s: float, env: Mapping[str, str] | None = None) -> CommandResult:
    """Run ``argv`` contained (:mod:`tuna.jobprocess`): on its time limit, on an
    interruption, and once it has exited, nothing it started is left running."""
    try:
        done = jobprocess.run(argv, timeout_s=timeout_s, env=env)
    except FileNotFoundError:
        return CommandResult(None, "", "", f"{argv[0]} not found")
    except PermissionError:
        return CommandResult(None, "", "", f"{argv[0]} is not executable")
    raw_out, raw_err, code = done.stdout, done.stderr, done.returncode
    if done.timed_out:
        return CommandResult(
            code,
            _text(raw_out),
            _text(raw_err[-STDERR_TAIL:]),
            f"{argv[0]} timed out after {timeout_s:g} s; its process group was killed",
            timed_out=True,
        )
    # Bytes, decoded once: cheaper than a text-mode pipe for large outputs.
    stdout, stderr = _text(raw_out), _text(raw_err[-4 * STDERR_TAIL :])
    if code < 0:
        name = signal.Signals(-code).name
        return CommandResult(code, stdout, stderr[-STDERR_TAIL:], f"{argv[0]} was killed by {name}")
    if code != 0:
        tail = stderr.strip()[-STDERR_TAIL:]
        reason = f"{argv[0]} exited with status {code}" + (f": {tail}" if tail else "")
        return CommandResult(code, stdout, tail, reason)
    return CommandResult(0, stdout, stderr[-STDERR_TAIL:])


def _gpu_id() -> int:
    raw = os.environ.get("TUNA_GPU_ID", "")
    return int(raw) if raw.lstrip("-").isdigit() else -1


def worker_context(step: Step) -> WorkerContext:
    settings = load_settings()
    machine_id = os.environ.get("TUNA_MACHINE_ID", "")
    return WorkerContext(
        hostname=socket.gethostname(),
        machine_id=int(machine_id) if machine_id.isdigit() else -1,
        gpu_id=_gpu_id(),
        rocm_path=settings.rocm_path,
        job_time_limit_s=settings.time_limit_s(step.time_limit_s),
        env=dict(os.environ),
    )


def pin_to_gpu(gpu_id: int) -> None:
    """Make this process and its children see one GPU only."""
    os.environ["TUNA_GPU_ID"] = str(gpu_id)
    for name in GPU_ENV:
        os.environ[name] = str(gpu_id)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


_database: Database | None = None


def database() -> Database:
    """This process's database handle, made on first use (after Celery's fork)."""
    global _database
    if _database is None:
        _database = Database(load_settings())
    return _database


def screen_redelivery(
    lib: Library, step: Step, jobs: Sequence[Mapping[str, Any]], ctx: WorkerContext
) -> tuple[list[Mapping[str, Any]], list[dict[str, Any]]]:
    """A redelivered message means a worker died, or lost the broker, while it held the
    message. Count that try on each job, drop jobs that moved on since, and give up on
    jobs that reached the retry cap, so that a job that kills its worker cannot loop
    forever. Returns (jobs to run, outcomes of the jobs given up)."""
    max_retries = step.retry_cap(load_settings().max_retries)
    log.warning(
        "redelivered after a worker or its broker connection was lost: jobs %s",
        _ids(jobs),
    )
    with database().begin() as conn:
        retries = count_redelivery_without_commit(
            conn, lib.table_of(step), step, {int(j["id"]): int(j["attempt"]) for j in jobs}
        )
    keep, given_up = [], []
    for job in jobs:
        tries = retries.get(int(job["id"]))
        if tries is None:
            continue
        if tries >= max_retries:
            given_up.append(
                outcome(
                    job,
                    JobRun(
                        ok=False,
                        result="",
                        reason=(f"abandoned: its worker was lost {tries} times while running it"),
                    ),
                    ctx,
                    _now(),
                    0.0,
                )
                | {"retries_counted": True, "outcome": "lost"}
            )
        else:
            keep.append(job)
    return keep, given_up


def outcome(job: Mapping[str, Any], run: JobRun, ctx: WorkerContext, started: str, seconds: float) -> dict[str, Any]:
    return {
        "job_id": job["id"],
        "attempt": job["attempt"],
        "ok": run.ok,
        "result": run.result,
        "reason": run.reason,
        "retryable": run.retryable,
        "exit_status": run.exit_status,
        "hostname": ctx.hostname,
        "machine_id": ctx.machine_id,
        "gpu_id": ctx.gpu_id,
        "started": started,
        "ended": _now(),
        "seconds": seconds,
    }


def run_bundle(
    library: str, step_name: str, jobs: Sequence[Mapping[str, Any]], *, redelivered: bool = False
) -> list[dict[str, Any]]:
    """Run each job of a bundle in turn; every job gets its own outcome record."""
    lib = get_library(library)
    step = lib.step(step_name)
    ctx = worker_context(step)
    outcomes: list[dict[str, Any]] = []
    if redelivered:
        jobs, outcomes = screen_redelivery(lib, step, jobs, ctx)
    for index, job in enumerate(jobs):
        started, clock = _now(), time.monotonic()
        try:
            run = lib.run_job(step, job["payload"], ctx)
        except SoftTimeLimitExceeded:
            # The task ran out of time on this host (a slow or stuck host): the jobs not
            # finished are tried again, capped like any lost attempt, never failed for good.
            reason = f"the task's time limit was reached on {ctx.hostname} before this job finished"
            for rest in jobs[index:]:
                outcomes.append(
                    outcome(rest, JobRun(ok=False, result="", reason=reason, retryable=True), ctx, started, 0.0)
                )
            log.warning("task time limit reached: jobs %s go back to be tried again", _ids(jobs[index:]))
            break
        except Exception as exc:  # a bug in one job's step is that job's failure, not the bundle's
            log.exception("job %s (attempt %s): %s.run_job raised", job["id"], job["attempt"], lib.name)
            run = JobRun(ok=False, result="", reason=f"{type(exc).__name__}: {exc}")
        outcomes.append(outcome(job, run, ctx, started, time.monotonic() - clock))
    for record in outcomes:
        if not record["ok"]:
            log.warning(
                "job %s attempt %s failed%s: %s",
                record["job_id"],
                record["attempt"],
                " (will be tried again unless out of retries)" if record["retryable"] else "",
                str(record["reason"]).strip().replace("\n", " | "),  # one line: the reason may hold stderr
            )
    return outcomes


def _ids(jobs: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(str(j["id"]) for j in jobs)
