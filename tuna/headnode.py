"""The head node: claim a session's jobs, enqueue them, drain their results, recover.

Job state machine, for one step of a library (Example: new → running → completed |
errored; MIOpen's steps have their own names for the same places)::

    claim_from ──claim──▶ running ──outcome ok──────────────▶ done
        ▲                    │ ──failure, not retryable or ──▶ failed (reason in result)
        │                    │    retries reached max_retries
        └────────────────────┘ retryable failure (retries+1), Ctrl-C, lost task

Who owns a ``running`` job: the attempt recorded in its row (``attempt``, ``task_id``).
Only an outcome carrying that same attempt may move it on; any other is stale and
ignored, which makes applying results idempotent under at-least-once delivery.

What is durable when:

* A claim commits before its messages are published, so a crash in between leaves
  ``running`` rows whose task never reached the broker; recovery gives them back.
* A result is deleted from the backend only after the transaction that wrote it has
  committed; a crash in between re-applies it on restart, and the attempt check makes
  that a no-op.
* On start, the head node applies every finished result of the session's ``running``
  jobs, then gives back those whose task no live worker holds and whose message is no
  longer queued (the queue is purged first, so a message is either held or gone).
* On Ctrl-C or SIGTERM, queued messages are purged and in-flight jobs go back to the
  state they were claimed from.

The head node knows no library: it works through :class:`tuna.library.Library`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from tuna.celery_app import RUN_JOBS_TASK
from tuna.celery_app.control import (
    check_broker,
    delete_queue,
    purge_queue,
    session_workers,
    shutdown_workers,
    tasks_held_by_workers,
)
from tuna.celery_app.naming import new_task_id, queue_name, task_id_prefix
from tuna.celery_app.results import ResultStore, failure_reason
from tuna.config import Settings
from tuna.db.engine import Database
from tuna.jobs import (
    Scope,
    apply_outcomes_without_commit,
    assign_task_without_commit,
    claim_jobs_without_commit,
    count_states,
    load_jobs,
    release_jobs_without_commit,
    running_jobs,
)
from tuna.library import Library, SessionInfo, Step
from tuna.progress import Progress

log = logging.getLogger(__name__)

#: While no job duration is known, keep this few jobs in flight, for this long at most:
#: short jobs then get bundled from the start, and long ones lose a second or two.
PROBE_INFLIGHT = 8
PROBE_WAIT_S = 2.0
#: Look for newly claimable jobs (retries, jobs loaded meanwhile) this often when idle.
RECLAIM_EVERY_S = 5.0
#: Slowest result poll when nothing arrives (long jobs).
MAX_POLL_S = 1.0
#: Margin added to a message's hard time limit beyond its jobs' own limits.
TASK_LIMIT_MARGIN_S = 60.0


@dataclass
class DurationEstimate:
    """Running mean of job duration, which sizes bundles of short jobs."""

    mean_s: float | None = None
    weight: float = 0.2

    def add(self, seconds: float) -> None:
        self.mean_s = (
            seconds if self.mean_s is None else (1 - self.weight) * self.mean_s + self.weight * seconds
        )

    def bundle_size(self, target_s: float, max_bundle: int) -> int:
        if self.mean_s is None:
            return 1
        return max(1, min(max_bundle, int(target_s / max(self.mean_s, 1e-4))))


@dataclass
class Inflight:
    """Tasks this head node has enqueued and not yet drained, with their jobs' attempts."""

    tasks: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    jobs: int = 0

    def add(self, task_id: str, attempts: list[tuple[int, int]]) -> None:
        self.tasks[task_id] = attempts
        self.jobs += len(attempts)

    def pop(self, task_id: str) -> list[tuple[int, int]]:
        attempts = self.tasks.pop(task_id, [])
        self.jobs -= len(attempts)
        return attempts

    def job_ids(self) -> list[int]:
        return [job_id for attempts in self.tasks.values() for job_id, _ in attempts]


class HeadNode:
    """Runs one step of one session to the end, through Celery workers."""

    def __init__(
        self,
        library: Library,
        step: Step,
        session: SessionInfo,
        settings: Settings,
        db: Database,
        app: Celery,
        *,
        label: str | None = None,
    ) -> None:
        self.library = library
        self.step = step
        self.session = session
        self.settings = settings
        self.db = db
        self.app = app
        self.scope = Scope(library.job_table, session.id, label)
        self.queue = queue_name(step.queue_kind, settings.db_name, session.id)
        self.prefix = task_id_prefix(settings.db_name, session.id, step.name)
        self.results = ResultStore(app, settings.backend_url_safe)
        self.inflight = Inflight()
        self.durations = DurationEstimate()
        self.progress = Progress(session.id, step.name)
        self.last_applied: list[Mapping[str, Any]] = []

    # -- the loop ---------------------------------------------------------------------
    def run(self, *, shutdown_workers_at_end: bool = True) -> dict[str, int]:
        """Work until no job of the scope is claimable or in flight; return state counts."""
        check_broker(self.app, self.settings.broker_url_safe)
        self.results.ping()
        try:
            self.recover()
            self._loop()
        except BaseException:
            self.release_inflight()
            raise
        if shutdown_workers_at_end:
            self.finish()
        with self.db.begin() as conn:
            counts = count_states(conn, self.scope)
        self.progress.final(counts)
        return counts

    def _loop(self) -> None:
        started = time.monotonic()
        last_claim = 0.0
        exhausted = False
        poll_s = self.settings.head_poll_s
        with self.db.begin() as conn:
            self.progress.start(count_states(conn, self.scope), self.step)
        while True:
            now = time.monotonic()
            if exhausted and now - last_claim >= RECLAIM_EVERY_S:
                exhausted = False
            enqueued = 0
            room = self._room(now - started)
            if not exhausted and room > 0:
                last_claim = now
                enqueued = self.claim_and_enqueue(room)
                exhausted = enqueued < room
            drained = self.drain()
            if drained and any_requeued(self.last_applied):
                exhausted = False
            if not self.inflight.tasks and exhausted:
                if not self._claimable():
                    return
                exhausted = False
                continue
            self.progress.tick(self.inflight.jobs)
            if enqueued or drained:
                poll_s = self.settings.head_poll_s
            else:
                time.sleep(poll_s)
                poll_s = min(MAX_POLL_S, poll_s * 1.5)

    def _room(self, elapsed_s: float) -> int:
        cap = 2 * self.settings.job_batch_size
        if self.durations.mean_s is None and elapsed_s < PROBE_WAIT_S:
            cap = PROBE_INFLIGHT
        return min(self.settings.job_batch_size, cap - self.inflight.jobs)

    def _claimable(self) -> bool:
        with self.db.begin() as conn:
            counts = count_states(conn, self.scope)
        return counts.get(self.step.claim_from, 0) > 0

    # -- claim and enqueue -----------------------------------------------------------
    def claim_and_enqueue(self, limit: int) -> int:
        """Claim up to ``limit`` jobs, assign them to bundles and publish; returns jobs sent."""
        size = self.durations.bundle_size(self.settings.bundle_target_s, self.settings.max_bundle)
        with self.db.begin() as conn:
            ids = claim_jobs_without_commit(conn, self.scope, self.step, limit)
            if not ids:
                return 0
            rows = load_jobs(conn, self.scope.table, ids)
            bundles = []
            for part in split(rows, size):
                task_id = new_task_id(self.prefix)
                assign_task_without_commit(conn, self.scope.table, [r["id"] for r in part], task_id)
                bundles.append((task_id, part))
        try:
            self.publish(bundles)
        except Exception:
            with self.db.begin() as conn:
                release_jobs_without_commit(conn, self.scope, self.step, ids)
            raise
        return len(ids)

    def publish(self, bundles: Sequence[tuple[str, list[dict[str, Any]]]]) -> None:
        with self.app.producer_or_acquire() as producer:
            for task_id, rows in bundles:
                jobs = [
                    {
                        "id": row["id"],
                        "attempt": row["attempt"],
                        "payload": self.library.job_payload(self.step, row, self.session),
                    }
                    for row in rows
                ]
                limit_s = len(jobs) * self.settings.job_time_limit_s + TASK_LIMIT_MARGIN_S
                self.app.send_task(
                    RUN_JOBS_TASK,
                    args=(self.library.name, self.step.name, jobs),
                    task_id=task_id,
                    queue=self.queue,
                    routing_key=self.queue,
                    time_limit=limit_s,
                    soft_time_limit=limit_s - TASK_LIMIT_MARGIN_S / 2,
                    producer=producer,
                )
                self.inflight.add(task_id, [(row["id"], row["attempt"]) for row in rows])

    # -- drain -----------------------------------------------------------------------
    def drain(self) -> int:
        """Apply every finished result of this head node's tasks; returns jobs applied."""
        if not self.inflight.tasks:
            self.last_applied = []
            return 0
        finished = self.results.fetch(list(self.inflight.tasks))
        if not finished:
            self.last_applied = []
            return 0
        outcomes = []
        for task_id, meta in finished.items():
            outcomes.extend(self._outcomes(task_id, meta))
        with self.db.begin() as conn:
            applied = apply_outcomes_without_commit(
                conn, self.scope, self.step, outcomes, max_retries=self.settings.max_retries
            )
            self.library.store_results_without_commit(conn, self.step, [o for o in applied if o["ok"]])
        self.results.forget(finished)
        for task_id in finished:
            self.inflight.pop(task_id)
        for outcome in outcomes:
            if "seconds" in outcome:
                self.durations.add(float(outcome["seconds"]))
        self.last_applied = applied
        self.progress.count(applied, self.step, self.settings.max_retries)
        return len(outcomes)

    def _outcomes(self, task_id: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
        attempts = self.inflight.tasks.get(task_id, [])
        if meta.get("status") == "SUCCESS" and isinstance(meta.get("result"), list):
            return list(meta["result"])
        reason = f"task failed: {failure_reason(meta)}"
        log.warning("session %s: task %s failed (%s)", self.session.id, task_id, reason)
        return [
            {"job_id": job_id, "attempt": attempt, "ok": False, "reason": reason, "retryable": True}
            for job_id, attempt in attempts
        ]

    # -- recovery and shutdown -------------------------------------------------------
    def recover(self) -> None:
        """Resume after a crash: apply finished results, give back orphaned jobs."""
        with self.db.begin() as conn:
            running = running_jobs(conn, self.scope, self.step)
        purged = purge_queue(self.app, self.queue)
        if not running:
            return
        by_task: dict[str, list[tuple[int, int]]] = {}
        orphans = []
        for job_id, attempt, task_id in running:
            if task_id and task_id.startswith(self.prefix):
                by_task.setdefault(task_id, []).append((job_id, attempt))
            else:
                orphans.append(job_id)
        for task_id, attempts in by_task.items():
            self.inflight.add(task_id, attempts)
        self.drain()
        held = tasks_held_by_workers(self.app, session_workers(self.app, self.session.id)) or set()
        for task_id in [t for t in self.inflight.tasks if t not in held]:
            orphans.extend(job_id for job_id, _ in self.inflight.pop(task_id))
        with self.db.begin() as conn:
            released = release_jobs_without_commit(conn, self.scope, self.step, orphans)
        log.info(
            "session %s: recovered %d running jobs: %d still held by workers, %d given back "
            "(%d queued messages purged)",
            self.session.id,
            len(running),
            self.inflight.jobs,
            released,
            purged,
        )

    def release_inflight(self) -> None:
        """Ctrl-C: drop queued messages and give in-flight jobs back."""
        try:
            purge_queue(self.app, self.queue)
        except Exception as exc:  # the broker may be the reason we are stopping
            log.warning("session %s: could not purge %s: %s", self.session.id, self.queue, exc)
        job_ids = self.inflight.job_ids()
        if not job_ids:
            return
        with self.db.begin() as conn:
            released = release_jobs_without_commit(conn, self.scope, self.step, job_ids)
        log.warning(
            "session %s: interrupted; %d in-flight jobs returned to %r",
            self.session.id,
            released,
            self.step.claim_from,
        )
        self.inflight = Inflight()

    def finish(self) -> None:
        """The session's work is done: stop its workers on this queue and remove the queue."""
        names = [
            name
            for name in session_workers(self.app, self.session.id)
            if ("_gpu_id_" in name) == self.step.per_gpu
        ]
        if names:
            shutdown_workers(self.app, names)
            log.info("session %s: shut down workers %s", self.session.id, ", ".join(names))
        delete_queue(self.app, self.queue)


def any_requeued(applied: Sequence[Mapping[str, Any]]) -> bool:
    return any(not o["ok"] and o.get("retryable") for o in applied)


def split(rows: Sequence[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield list(rows[start : start + size])
