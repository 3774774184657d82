"""``--execute``: run a session's jobs on this host in local processes, with no broker.

Claims go through the same SQL as the head node's, so a head node and ``--execute`` on
the same session never take the same job; outcomes are applied the same way too.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from tuna.config import Settings
from tuna.db.engine import Database
from tuna.headnode import split, task_jobs
from tuna.inflight import DurationEstimate
from tuna.jobprocess import guard_job_process
from tuna.jobs import (
    Scope,
    apply_outcomes_without_commit,
    claim_jobs_without_commit,
    count_states,
    load_jobs,
    release_jobs_without_commit,
)
from tuna.library import Library, SessionInfo, Step
from tuna.progress import SUMMARY_EVERY_S, Progress
from tuna.runner import run_bundle
from tuna.status import failure_reasons

log = logging.getLogger(__name__)


def local_processes(settings: Settings) -> int:
    return settings.cpus_on_node or os.cpu_count() or 1


def execute_locally(
    library: Library,
    step: Step,
    session: SessionInfo,
    settings: Settings,
    db: Database,
    *,
    label: str | None = None,
) -> dict[str, int]:
    """Claim, run and write back the scope's jobs until none is claimable; return counts."""
    scope = Scope(library.job_table, session.id, label)
    processes = local_processes(settings)
    durations = DurationEstimate()
    progress = Progress(session.id, step.name)
    with db.begin() as conn:
        progress.start(count_states(conn, scope), step)
    pending: dict[Future[list[dict[str, Any]]], list[int]] = {}
    # Pool processes die with this one, and their jobs with them (tuna.jobprocess).
    with ProcessPoolExecutor(max_workers=processes, initializer=guard_job_process, initargs=(os.getpid(),)) as pool:
        try:
            while True:
                if len(pending) < 2 * processes:
                    size = durations.bundle_size(settings.bundle_target_s, settings.max_bundle)
                    with db.begin() as conn:
                        ids = claim_jobs_without_commit(conn, scope, step, size * processes)
                        rows = load_jobs(conn, scope.table, ids, library.payload_columns(step))
                    for part in split(rows, size):
                        jobs = task_jobs(library, step, session, part)
                        future = pool.submit(run_bundle, library.name, step.name, jobs)
                        pending[future] = [r["id"] for r in part]
                    if not ids and not pending:
                        break
                # Wake up for the summary line too: its ETA counts down while long jobs run.
                done, _ = wait(pending, timeout=SUMMARY_EVERY_S, return_when=FIRST_COMPLETED)
                if not done:
                    progress.tick(sum(len(ids) for ids in pending.values()))
                    continue
                outcomes = [outcome for future in done for outcome in future.result()]
                with db.begin() as conn:
                    applied = apply_outcomes_without_commit(
                        conn, scope, step, outcomes, max_retries=settings.max_retries
                    )
                    library.store_results_without_commit(conn, step, [o for o in applied if o["ok"]])
                for future in done:  # only now: until written, their jobs are still ours to give back
                    pending.pop(future)
                for outcome in outcomes:
                    durations.add(float(outcome.get("seconds", 0.0)))
                progress.count(applied)
                progress.tick(sum(len(ids) for ids in pending.values()))
        except BaseException:
            for future in pending:
                future.cancel()
            with db.begin() as conn:
                released = release_jobs_without_commit(conn, scope, step, [i for ids in pending.values() for i in ids])
            log.warning("session %s: interrupted; %d claimed jobs returned", session.id, released)
            raise
    with db.begin() as conn:
        counts = count_states(conn, scope)
        reasons = failure_reasons(conn, scope, step) if counts.get(step.failed) else []
    progress.final(counts, reasons)
    return counts
