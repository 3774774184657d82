"""``--execute``: run a session's jobs on this host in local processes, with no broker.

Claims go through the same SQL as the head node's, and outcomes are applied the same way
(:mod:`tuna.outcomes`). The scope's lock keeps a head node and ``--execute`` off each
other's scope, and the jobs are claimed under this process's owner token, so that a
killed ``--execute``'s jobs are given back by the next claimer (:mod:`tuna.ownership`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from tuna.config import Settings
from tuna.db.engine import Database
from tuna.headnode import split
from tuna.inflight import DurationEstimate
from tuna.jobprocess import guard_job_process
from tuna.jobs import (
    Scope,
    claim_jobs_without_commit,
    count_states,
    count_waiting,
    load_jobs,
    release_jobs_without_commit,
    release_owned_without_commit,
    task_jobs,
)
from tuna.library import Library, SessionInfo, Step
from tuna.outage import SERVICE_ERRORS, Outage
from tuna.outcomes import apply_outcomes
from tuna.ownership import feeder_active, hold_scope, release_abandoned
from tuna.progress import SUMMARY_EVERY_S, Progress
from tuna.runner import run_bundle
from tuna.status import failure_reasons

log = logging.getLogger(__name__)

#: How often ``--execute`` looks for jobs that another step may hand over.
WAIT_POLL_S = 2.0


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
    options: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Claim, run and write back the scope's jobs until none is claimable and none waits
    on another step (``Step.waits_on``); return counts."""
    scope = Scope(library.table_of(step), session.id, label)
    where = library.claim_filter(step, scope.table, session)
    wait_where = library.wait_filter(step, scope.table, session)
    order = library.claim_order(step, scope.table)
    max_retries = step.retry_cap(settings.max_retries)
    last_wait = 0.0
    owner = hold_scope(db, settings.db_name, scope, step).owner
    release_abandoned(db, scope, step)
    processes = local_processes(settings)
    durations = DurationEstimate()
    progress = Progress(session.id, step.name)
    outage = Outage(session.id, settings.db_retry_max_s)
    with db.begin() as conn:
        progress.start(count_states(conn, scope), step)
    pending: dict[Future[list[dict[str, Any]]], dict[int, int]] = {}  # future -> job id -> attempt
    # Pool processes die with this one, and their jobs with them (tuna.jobprocess).
    with ProcessPoolExecutor(max_workers=processes, initializer=guard_job_process, initargs=(os.getpid(),)) as pool:
        try:
            while True:
                try:
                    if len(pending) < 2 * processes:
                        size = durations.bundle_size(settings.bundle_target_s, settings.max_bundle)
                        with db.begin() as conn:
                            ids = claim_jobs_without_commit(
                                conn, scope, step, size * processes, owner=owner, where=where, order_by=order
                            )
                            rows = load_jobs(conn, scope.table, ids, library.payload_columns(step))
                            jobs = task_jobs(conn, library, step, session, rows, options or {})
                        for part in split(jobs, size):
                            future = pool.submit(run_bundle, library.name, step.name, part)
                            pending[future] = {j["id"]: j["attempt"] for j in part}
                        if not ids and not pending and not _left_over(db, scope, step, owner):
                            waiting = _waiting(db, settings.db_name, library, scope, step, where, wait_where)
                            progress.waiting(waiting)
                            if not waiting:
                                break
                            # Another step may still hand jobs over: look again, slowly.
                            time.sleep(max(0.0, last_wait + WAIT_POLL_S - time.monotonic()))
                            last_wait = time.monotonic()
                            continue
                    if not pending:
                        continue
                    # Wake up for the summary line too: its ETA counts down while long jobs run.
                    done, _ = wait(pending, timeout=SUMMARY_EVERY_S, return_when=FIRST_COMPLETED)
                    if not done:
                        progress.tick(sum(len(ids) for ids in pending.values()))
                        continue
                    outcomes = [outcome for future in done for outcome in future.result()]
                    applied = apply_outcomes(db, scope, step, library, outcomes, max_retries)
                except SERVICE_ERRORS as exc:
                    time.sleep(outage.failed(exc))
                    continue
                outage.recovered()
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
                attempts = {job: attempt for jobs in pending.values() for job, attempt in jobs.items()}
                released = release_jobs_without_commit(conn, scope, step, attempts)
            log.warning("session %s: interrupted; %d claimed jobs returned", session.id, released)
            raise
    with db.begin() as conn:
        counts = count_states(conn, scope)
        reasons = failure_reasons(conn, scope, step) if counts.get(step.failed) else []
    progress.final(counts, reasons)
    return counts


def _waiting(
    db: Database,
    db_name: str,
    library: Library,
    scope: Scope,
    step: Step,
    where: Sequence[Any],
    wait_where: Sequence[Any],
) -> int:
    """Jobs of the scope in a state another step may still make claimable."""
    if not step.waits_on:
        return 0
    with db.begin() as conn:
        running, held = count_waiting(conn, scope, step, where, wait_where)
        # Jobs held back for an earlier step are waited for only while that step runs.
        return running + (held if held and feeder_active(conn, db_name, library, scope, step) else 0)


def _left_over(db: Database, scope: Scope, step: Step, owner: str) -> int:
    """Give back jobs claimed under ``owner`` but never run: a claim whose commit was
    reported as failed may have committed all the same. Returns how many."""
    with db.begin() as conn:
        return release_owned_without_commit(conn, scope, step, owner)
