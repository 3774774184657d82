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
  longer queued (the queue is purged first, so a message is either held or gone). While
  a worker that is alive does not answer, nothing is given back: the loop asks again.
* While it runs, a task that no worker holds, that is not queued and has no finished
  record is recovered whatever its record says: sent again when it has none (at most
  ``max_retries`` times), else its jobs fail as retryable. A record that is not a valid
  result for exactly the task's jobs and attempts fails the jobs it does not account for.
* A node whose heartbeat is late is named at once; once it is dead (older than
  ``worker_dead_after_s``, or stopped), the jobs of its started tasks go back.
* On Ctrl-C or SIGTERM, queued messages are purged and in-flight jobs go back to the
  state they were claimed from.

The head node knows no library: it works through :class:`tuna.library.Library`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from celery import Celery

from tuna.celery_app import RUN_JOBS_TASK
from tuna.celery_app.control import (
    check_broker,
)
from tuna.celery_app.naming import new_task_id, queue_name, task_id_prefix
from tuna.celery_app.results import READY_STATES, UNDECODABLE, ResultStore, failure_reason
from tuna.config import Settings
from tuna.db.engine import Database
from tuna.inflight import DurationEstimate, Inflight
from tuna.interrupt import StopSignals
from tuna.jobs import (
    Scope,
    assign_task_without_commit,
    claim_jobs_without_commit,
    count_states,
    count_waiting,
    load_jobs,
    release_jobs_without_commit,
    task_jobs,
)
from tuna.library import Library, SessionInfo, Step
from tuna.outage import SERVICE_ERRORS, Outage
from tuna.outcomes import apply_outcomes
from tuna.ownership import feeder_active, hold_scope
from tuna.progress import Progress
from tuna.recovery import Recovery
from tuna.status import failure_reasons
from tuna.watch import ConsumerWatch, SilentNodes

log = logging.getLogger(__name__)

#: While no job duration is known, keep this few jobs in flight, for this long at most:
#: short jobs then get bundled from the start, and long ones lose a second or two.
PROBE_INFLIGHT = 8
PROBE_WAIT_S = 2.0
MIN_BUNDLES_PER_CLAIM = 8
#: Look for newly claimable jobs (retries, jobs loaded meanwhile) this often when idle.
RECLAIM_EVERY_S = 5.0
#: Slowest result poll when nothing arrives (long jobs).
MAX_POLL_S = 1.0
#: Margin added to a message's hard time limit beyond its jobs' own limits.
TASK_LIMIT_MARGIN_S = 60.0
#: A record that does not decode may be a result file caught half-written; after this
#: long it is garbage, and a failure of the task's jobs.
UNDECODABLE_GRACE_S = 5.0


class HeadNode(Recovery):
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
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.library = library
        self.step = step
        self.session = session
        self.settings = settings
        self.db = db
        self.app = app
        self.scope = Scope(library.table_of(step), session.id, label)
        self.options: Mapping[str, Any] = options or {}
        self.claim_where = library.claim_filter(step, self.scope.table, session)
        self.wait_where = library.wait_filter(step, self.scope.table, session)
        self.max_retries = step.retry_cap(settings.max_retries)
        self.queue = queue_name(step.queue_kind, settings.db_name, session.id)
        self.prefix = task_id_prefix(settings.db_name, session.id, step.name)
        self.results = ResultStore(app, settings.backend_url_safe)
        self.inflight = Inflight()
        self.durations = DurationEstimate()
        self.progress = Progress(session.id, step.name)
        self.last_applied: list[Mapping[str, Any]] = []
        self.started_on: dict[str, str] = {}  # task id -> worker node name, once it started
        self.resent: dict[str, int] = {}  # task id -> times sent again after its record was lost
        self.undecodable_since: dict[str, float] = {}  # task id -> when its record was first garbage
        self.silent = SilentNodes(session.id, settings.worker_heartbeat_s, settings.worker_dead_after_s)
        self.consumers = ConsumerWatch(app, self.queue, library, step, session.id)
        self.stop = StopSignals()
        self.spent_s = {"enqueue": 0.0, "drain": 0.0}
        self.handled = {"enqueue": 0, "drain": 0}

    # -- the loop ---------------------------------------------------------------------
    def run(self, *, shutdown_workers_at_end: bool = True) -> dict[str, int]:
        """Work until no job of the scope is claimable or in flight; return state counts.

        SIGINT or SIGTERM raises KeyboardInterrupt after the in-flight jobs are given back.
        """
        hold_scope(self.db, self.settings.db_name, self.scope, self.step)  # one claimer per scope
        with self.stop.installed():
            check_broker(self.app, self.settings.broker_url_safe)
            self.results.ping()
            try:
                self.recover()
                self._loop()
                self.stop.check()
            except BaseException:
                self.release_inflight()
                raise
            if shutdown_workers_at_end:
                self.finish()
            self.stop.check()  # a stop that came during finish(): the run was interrupted
        with self.db.begin() as conn:
            counts = count_states(conn, self.scope)
            reasons = failure_reasons(conn, self.scope, self.step) if counts.get(self.step.failed) else []
        self.progress.final(counts, reasons)
        log.info("session %s: enqueue %.0f jobs/s, drain %.0f jobs/s", self.session.id, *self.rates())
        return counts

    def _loop(self) -> None:
        started = time.monotonic()
        last_claim = last_reap = 0.0
        last_sweep = time.monotonic()
        exhausted = False
        poll_s = self.settings.head_poll_s
        outage = Outage(self.session.id)
        with self.db.begin() as conn:
            self.progress.start(count_states(conn, self.scope, self.claim_where), self.step)
        while True:
            self.stop.check()
            now = time.monotonic()
            try:
                if exhausted and now - last_claim >= RECLAIM_EVERY_S:
                    exhausted = False
                enqueued = 0
                room = self._room(now - started)
                if not exhausted and room > 0:
                    last_claim = now
                    enqueued = self.claim_and_enqueue(room)
                    exhausted = enqueued < room
                    self._time("enqueue", now, enqueued)
                clock = time.monotonic()
                drained = self.drain()
                self._time("drain", clock, drained)
                if now - last_reap >= self.settings.worker_heartbeat_s:
                    last_reap = now
                    drained += self.reap_lost_tasks()
                if now - last_sweep >= self.settings.lost_result_after_s / 3:
                    last_sweep = now
                    enqueued += self.recover_lost_tasks()
                if drained:
                    self.consumers.progressed()
                else:
                    self.consumers.check(self.inflight.jobs)
                if drained and any_requeued(self.last_applied):
                    exhausted = False
                if not self.inflight.tasks and exhausted:
                    claimable, waiting = self._claimable()
                    if not claimable and not waiting:
                        return
                    self.progress.waiting(waiting)
                    if claimable:
                        exhausted = False
                        continue
                    # Another step (a compile head node) may still hand jobs to this one:
                    # look again at the reclaim cadence, not at the result poll's.
                    self.progress.tick(0)
                    self.stop.sleep(min(RECLAIM_EVERY_S, max(self.settings.head_poll_s, RECLAIM_EVERY_S / 5)))
                    continue
            except SERVICE_ERRORS as exc:
                self.stop.sleep(outage.failed(exc))
                continue
            outage.recovered()
            self.progress.tick(self.inflight.jobs)
            if enqueued or drained:
                poll_s = self.settings.head_poll_s
            else:
                self.stop.sleep(poll_s)
                poll_s = min(self._max_poll_s(), poll_s * 1.5)

    def _max_poll_s(self) -> float:
        """Poll about four times per run time of the smallest bundle in flight: often for short
        jobs and near the end of a session, rarely for long jobs."""
        if self.durations.mean_s is None or not self.inflight.tasks:
            return MAX_POLL_S
        size = min(len(attempts) for attempts in self.inflight.tasks.values())
        return max(self.settings.head_poll_s, min(MAX_POLL_S, self.durations.mean_s * size / 4))

    def _time(self, what: str, since: float, jobs: int) -> None:
        if jobs:
            self.spent_s[what] += time.monotonic() - since
            self.handled[what] += jobs

    def rates(self) -> tuple[float, float]:
        """Jobs per second of the time spent enqueuing, and draining."""
        enqueue, drain = (
            self.handled[what] / self.spent_s[what] if self.spent_s[what] else 0.0 for what in ("enqueue", "drain")
        )
        return enqueue, drain

    def _room(self, elapsed_s: float) -> int:
        batch = self.settings.job_batch_size
        if self.durations.mean_s is None and elapsed_s < PROBE_WAIT_S:
            return PROBE_INFLIGHT - self.inflight.jobs
        room = min(batch, 2 * batch - self.inflight.jobs)
        # Claim in large batches once jobs are known to be short, so that each claim splits
        # into full bundles; a batch in flight keeps the workers busy meanwhile.
        return room if room >= batch // 2 else 0

    def _claimable(self) -> tuple[int, int]:
        """Jobs claimable now, and jobs in a state another step may still make claimable."""
        with self.db.begin() as conn:
            counts = count_states(conn, self.scope, self.claim_where)
            running, held = count_waiting(conn, self.scope, self.step, self.claim_where, self.wait_where)
            # Jobs held back for an earlier step are waited for only while that step runs.
            if held and not feeder_active(conn, self.settings.db_name, self.library, self.scope, self.step):
                held = 0
            waiting = running + held
        claimable = sum(counts.get(state, 0) for state in self.step.claim_states)
        return claimable, waiting

    # -- claim and enqueue -----------------------------------------------------------
    def claim_and_enqueue(self, limit: int) -> int:
        """Claim up to ``limit`` jobs, assign them to bundles and publish; returns jobs sent."""
        size = self.durations.bundle_size(self.settings.bundle_target_s, self.settings.max_bundle)
        bundles: list[tuple[str, list[dict[str, Any]]]] = []
        try:
            with self.db.begin() as conn:
                ids = claim_jobs_without_commit(
                    conn,
                    self.scope,
                    self.step,
                    limit,
                    where=self.claim_where,
                    order_by=self.library.claim_order(self.step, self.scope.table),
                )
                if not ids:
                    return 0
                # At least a few bundles per claim, and more for the last one, so that the end
                # of the session spreads over the workers instead of ending on one of them.
                parts = MIN_BUNDLES_PER_CLAIM * (4 if len(ids) < limit else 1)
                size = min(size, -(-len(ids) // parts))
                rows = load_jobs(conn, self.scope.table, ids, self.library.payload_columns(self.step))
                jobs = task_jobs(conn, self.library, self.step, self.session, rows, self.options)
                for part in split(jobs, size):
                    task_id = new_task_id(self.prefix)
                    assign_task_without_commit(conn, self.scope.table, [j["id"] for j in part], task_id)
                    bundles.append((task_id, part))
            self.publish(bundles)
        except BaseException:  # a broker error, or Ctrl-C, between the claim and the last publish
            # Jobs claimed but not sent go back (a rolled-back claim changed nothing anyway).
            unpublished = [row["id"] for task_id, rows in bundles if task_id not in self.inflight.tasks for row in rows]
            if unpublished:
                with self.db.begin() as conn:
                    release_jobs_without_commit(
                        conn,
                        self.scope,
                        self.step,
                        {r["id"]: r["attempt"] for t, rs in bundles if t not in self.inflight.tasks for r in rs},
                    )
            raise
        return len(ids)

    def publish(self, bundles: Sequence[tuple[str, list[dict[str, Any]]]]) -> None:
        """Send each (task id, jobs as :func:`task_jobs` builds them)."""
        with self.app.producer_or_acquire() as producer:
            for task_id, jobs in bundles:
                limit_s = len(jobs) * self.settings.time_limit_s(self.step.time_limit_s) + TASK_LIMIT_MARGIN_S
                self.app.send_task(
                    RUN_JOBS_TASK,
                    args=(self.library.name, self.step.name, jobs),
                    task_id=task_id,
                    queue=self.queue,
                    routing_key=self.queue,
                    time_limit=limit_s,
                    # Celery would otherwise put a repr of every payload in the headers.
                    argsrepr="",
                    kwargsrepr="",
                    soft_time_limit=limit_s - TASK_LIMIT_MARGIN_S / 2,
                    producer=producer,
                )
                self.inflight.pop(task_id)  # a task sent again is tracked afresh
                self.inflight.add(task_id, [(job["id"], job["attempt"]) for job in jobs])

    # -- drain -----------------------------------------------------------------------
    def drain(self) -> int:
        """Apply every finished result of this head node's tasks; returns jobs applied."""
        self.last_applied = []
        if not self.inflight.tasks:
            return 0
        finished = {}
        metas = self.results.fetch(list(self.inflight.tasks))
        now = time.monotonic()
        for task_id, meta in metas.items():
            if meta.get("status") == UNDECODABLE:
                if now - self.undecodable_since.setdefault(task_id, now) >= UNDECODABLE_GRACE_S:
                    finished[task_id] = meta
            elif meta.get("status") in READY_STATES:
                finished[task_id] = meta
            elif meta.get("status") == "STARTED" and isinstance(meta.get("result"), dict):
                self.started_on[task_id] = str(meta["result"].get("hostname", ""))
        if not finished:
            return 0
        outcomes = [o for task_id, meta in finished.items() for o in self._outcomes(task_id, meta)]
        self.apply(outcomes)
        self.results.forget(finished)
        self.untrack(list(finished))
        for outcome in outcomes:
            if "seconds" in outcome:
                self.durations.add(float(outcome["seconds"]))
        return len(outcomes)

    def apply(self, outcomes: Sequence[Mapping[str, Any]]) -> None:
        applied = apply_outcomes(self.db, self.scope, self.step, self.library, outcomes, self.max_retries)
        self.last_applied = applied
        self.progress.count(applied)

    def _outcomes(self, task_id: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
        """The outcome of each job the task carried. A record that is not a valid result for
        exactly those jobs and attempts (garbage, a foreign record, a job left out) fails
        the jobs it does not account for, as a retryable failure: never silence."""
        attempts = self.inflight.tasks.get(task_id, [])
        valid: list[dict[str, Any]] = []
        if meta.get("status") == "SUCCESS":
            valid, problem = valid_outcomes(meta.get("result"), attempts)
            reason = f"invalid result record: {problem}"
        elif meta.get("status") == UNDECODABLE:
            reason = f"invalid result record: {meta.get('result')}"
        else:
            reason = f"task failed: {failure_reason(meta)}"
        accounted = {int(o["job_id"]) for o in valid}
        missing = [(job_id, attempt) for job_id, attempt in attempts if job_id not in accounted]
        if not missing:
            return valid
        log.warning("session %s: task %s failed (%s)", self.session.id, task_id, reason)
        return valid + [
            {"job_id": job_id, "attempt": attempt, "ok": False, "reason": reason, "retryable": True}
            for job_id, attempt in missing
        ]

    # -- recovery and shutdown -------------------------------------------------------


def valid_outcomes(result: Any, attempts: Sequence[tuple[int, int]]) -> tuple[list[dict[str, Any]], str]:
    """The outcomes of ``result`` that belong to the task's (job, attempt) pairs, and what is
    wrong with the rest ('' when nothing is)."""
    if not isinstance(result, list):
        return [], f"a {type(result).__name__}, not a list of job outcomes"
    expected = dict(attempts)
    valid: list[dict[str, Any]] = []
    problems: list[str] = []
    for item in result:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("job_id"), int)
            and isinstance(item.get("attempt"), int)
            and isinstance(item.get("ok"), bool)
        ):
            problems.append("a malformed outcome")
        elif expected.get(item["job_id"]) != item["attempt"]:
            problems.append(f"an outcome of job {item['job_id']} attempt {item['attempt']}, not carried by it")
        else:
            valid.append(item)
    left_out = len({o["job_id"] for o in valid}) < len(expected)
    if left_out:
        problems.append(f"no outcome for {len(expected) - len({o['job_id'] for o in valid})} of its jobs")
    return valid, "; ".join(dict.fromkeys(problems))


def any_requeued(applied: Sequence[Mapping[str, Any]]) -> bool:
    return any(not o["ok"] and o.get("retryable") for o in applied)


def split(rows: Sequence[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield list(rows[start : start + size])
