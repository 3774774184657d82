"""The head node's duties when something went wrong: resuming after a crash, giving back
the jobs of a dead host or of a lost result, and stopping cleanly. Mixed into
:class:`tuna.headnode.HeadNode`, whose docstring states the guarantees."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery
from sqlalchemy.engine import Connection

from tuna.celery_app.control import (
    delete_queue,
    purge_queue,
    queue_consumers,
    queue_length,
    session_workers,
    shutdown_matching,
    tasks_held_by_workers,
)
from tuna.celery_app.naming import session_worker_pattern
from tuna.celery_app.results import READY_STATES, UNDECODABLE, ResultStore
from tuna.config import Settings
from tuna.db.engine import Database
from tuna.inflight import Inflight
from tuna.jobs import (
    Scope,
    count_states,
    load_jobs,
    release_jobs_without_commit,
    running_attempts,
    running_jobs,
    task_jobs,
)
from tuna.library import Library, SessionInfo, Step
from tuna.machine import worker_silence
from tuna.ownership import abandoned
from tuna.watch import SilentNodes

log = logging.getLogger("tuna.headnode")

#: Asking workers which tasks they hold: a busy worker may miss one reply timeout.
INSPECT_TRIES = 3


class Recovery:
    """Recovery duties of a head node; the attributes are the head node's own."""

    app: Celery
    db: Database
    settings: Settings
    session: SessionInfo
    step: Step
    library: Library
    options: Mapping[str, Any]
    max_retries: int
    claim_where: list[Any]
    wait_where: list[Any]
    scope: Scope
    queue: str
    prefix: str
    results: ResultStore
    inflight: Inflight
    started_on: dict[str, str]
    resent: dict[str, int]
    undecodable_since: dict[str, float]
    silent: SilentNodes

    def drain(self) -> int:
        raise NotImplementedError

    def apply(self, outcomes: Sequence[Mapping[str, Any]]) -> None:
        raise NotImplementedError

    def publish(self, bundles: Sequence[tuple[str, list[dict[str, Any]]]]) -> None:
        raise NotImplementedError

    def reap_lost_tasks(self) -> int:
        """Name the nodes whose heartbeat is late; give back the jobs of tasks running on a
        node known dead (heartbeat older than ``worker_dead_after_s``, or stopped).

        The broker would redeliver such a task once it notices the lost connection; the
        job row is given back now so that the session is not held up, and the attempt
        check makes the late delivery, if any, a no-op.
        """
        if not self.started_on:
            return 0
        with self.db.begin() as conn:
            silence = worker_silence(conn, set(self.started_on.values()))
        jobs_on: dict[str, int] = {}
        for task_id, node in self.started_on.items():
            jobs_on[node] = jobs_on.get(node, 0) + len(self.inflight.tasks.get(task_id, []))
        self.silent.update(silence, jobs_on)
        dead = {node for node, s in silence.items() if s is None or s >= self.settings.worker_dead_after_s}
        lost = [task_id for task_id, node in self.started_on.items() if node in dead]
        if not lost:
            return 0
        outcomes = []
        for task_id in lost:
            node = self.started_on[task_id]
            host = node.split("@")[-1]
            since = silence[node]
            reason = (
                f"abandoned: no heartbeat from {host} since {since:.0f} s ago"
                if since is not None
                else f"abandoned: no heartbeat from {host} since its workers stopped"
            )
            log.warning("session %s: task %s lost (%s)", self.session.id, task_id, reason)
            outcomes += lost_outcomes(self.inflight.tasks.get(task_id, []), reason, host)
        self.apply(outcomes)
        self.results.forget(lost)
        self.untrack(lost)  # only now: had the write failed, the jobs would still be tracked
        return len(outcomes)

    def untrack(self, task_ids: Sequence[str]) -> None:
        for task_id in task_ids:
            self.inflight.pop(task_id)
            self.started_on.pop(task_id, None)
            self.resent.pop(task_id, None)
            self.undecodable_since.pop(task_id, None)

    def tasks_nobody_holds(self, task_ids: Sequence[str], metas: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Of ``task_ids``, those that no live worker can be holding, or [] when that is not
        certain: every session worker that answers a ping must answer the inspect (retried),
        the broker must count no more consumers than answered, and no task may have started
        on a node that is alive by its heartbeat yet did not answer."""
        if not task_ids:
            return []
        names = session_workers(self.app, self.settings.db_name, self.session.id)
        held = None
        for _ in range(INSPECT_TRIES):
            held = tasks_held_by_workers(self.app, names)
            if held is not None:
                break
        if held is None:
            log.info("session %s: a worker did not answer which tasks it holds; asking again later", self.session.id)
            return []
        consumers = queue_consumers(self.app, self.queue)
        if consumers is not None and consumers > len(names):
            return []
        started = {t: started_node(metas.get(t)) for t in task_ids}
        silent_nodes = {node for node in started.values() if node and node not in names}
        alive: set[str] = set()
        if silent_nodes:
            with self.db.begin() as conn:
                silence = worker_silence(conn, silent_nodes)
            alive = {n for n, s in silence.items() if s is not None and s < self.settings.worker_dead_after_s}
        return [t for t in task_ids if t not in held and started[t] not in alive]

    def recover(self) -> None:
        """Resume after a crash: apply finished results, give back orphaned jobs.

        Order matters: purge first, so that a task not held by a worker afterwards can
        only be finished (its result is drained) or lost (its jobs are given back). The
        queue is shared by the session, so it is left alone while jobs of the session
        outside this head node's label are running: another head node's messages are in
        it. A message of ours left there then runs a stale attempt, which is ignored.
        When it cannot be told which tasks the workers hold, they all stay tracked, and
        the loop recovers them once it can (:meth:`recover_lost_tasks`).
        """
        with self.db.begin() as conn:
            running = running_jobs(conn, self.scope, self.step)
            others = self._others_running(conn, len(running))
        purged = 0 if others else purge_queue(self.app, self.queue)
        if not running:
            return
        orphans = []
        for job_id, attempt, task_id in running:
            if task_id and task_id.startswith(self.prefix):
                self.inflight.add_job(task_id, job_id, attempt)
            else:
                orphans.append(job_id)
        metas = self.results.fetch(list(self.inflight.tasks))
        unheld = set(self.tasks_nobody_holds(list(self.inflight.tasks), metas))
        self.drain()
        lost = [task_id for task_id in self.inflight.tasks if task_id in unheld]
        orphans += [job_id for task_id in lost for job_id, _ in self.inflight.tasks[task_id]]
        with self.db.begin() as conn:
            released = release_jobs_without_commit(conn, self.scope, self.step, abandoned(conn, running, orphans))
        self.results.forget(lost)
        self.untrack(lost)
        log.info(
            "session %s: recovered %d running jobs: %d still held by workers or not known to be free, "
            "%d given back (%d queued messages purged)",
            self.session.id,
            len(running),
            self.inflight.jobs,
            released,
            purged,
        )

    def release_inflight(self) -> None:
        """Ctrl-C: drop queued messages (unless another head node's share the queue) and
        give in-flight jobs back."""
        job_ids = self.inflight.job_ids()
        try:
            with self.db.begin() as conn:
                others = self._others_running(conn, len(job_ids))
                released = release_jobs_without_commit(
                    conn, self.scope, self.step, {j: a for jobs in self.inflight.tasks.values() for j, a in jobs}
                )
            if not others:
                purge_queue(self.app, self.queue)
        except Exception as exc:  # a service may be the very reason we are stopping
            log.warning("session %s: could not hand back in-flight work: %s", self.session.id, exc)
            return
        if not job_ids:
            return
        log.warning(
            # each to the state it was claimed from
            "session %s: interrupted; %d in-flight jobs returned to %s",
            self.session.id,
            released,
            " or ".join(repr(state) for state in self.step.claim_states),
        )
        self.inflight = Inflight()

    def _others_running(self, conn: Connection, own: int) -> bool:
        """Whether jobs of the session other than this head node's ``own`` are running."""
        session = count_states(conn, Scope(self.scope.table, self.session.id))
        return session.get(self.step.running, 0) > own

    def finish(self) -> None:
        """The session's work is done: stop its workers on this queue and remove the queue.

        Not while jobs of the session outside this head node's label are still to run or
        running: another head node may be working on them through the same queue.
        """
        with self.db.begin() as conn:
            counts = count_states(conn, Scope(self.scope.table, self.session.id), self.wait_where)
        if any(counts.get(state, 0) for state in (*self.step.claim_states, *self.step.waits_on, self.step.running)):
            log.info("session %s: other jobs of the session remain; workers and queue left running", self.session.id)
            return
        shutdown_matching(
            self.app, session_worker_pattern(self.settings.db_name, self.session.id, per_gpu=self.step.per_gpu)
        )
        log.info("session %s: shutdown sent to the session's workers on %s", self.session.id, self.queue)
        delete_queue(self.app, self.queue)
        # Every result of the step goes, not only those drained: late copies of re-sent or
        # superseded tasks would otherwise sit in the backend until they expire.
        forgotten = self.results.forget_prefix(self.prefix + "-")
        if forgotten:
            log.info("session %s: %d leftover results deleted", self.session.id, forgotten)

    def recover_lost_tasks(self) -> int:
        """Recover the tasks that no worker holds, that are not queued and that have no
        finished record, whatever record they have: none (the backend lost it: send the
        same task again, up to ``max_retries`` times), or one that can never be finished
        (say STARTED, then the backend refused the result): give their jobs back as a
        retryable failure. Returns the number of jobs sent again or given back.
        """
        after_s = self.settings.lost_result_after_s
        old = self.inflight.older_than(after_s)
        if not old:
            return 0
        metas = self.results.fetch(old)
        candidates = [t for t in old if not finished(metas.get(t))]
        if not candidates or queue_length(self.app, self.queue) > 0:
            return 0
        unheld = self.tasks_nobody_holds(candidates, metas)
        found = self.results.fetch(unheld)  # a result may have landed meanwhile
        lost = [t for t in unheld if not finished(found.get(t))]
        if not lost:
            return 0
        resend = [t for t in lost if t not in found and self.resent.get(t, 0) < self.max_retries]
        give_back = [t for t in lost if t not in resend]
        return self._send_again(resend) + self._give_back(give_back, found)

    def _send_again(self, task_ids: Sequence[str]) -> int:
        """The same task id and attempt go out again, so whichever copy finishes first is
        applied and the other is a no-op."""
        if not task_ids:
            return 0
        bundles = []
        with self.db.begin() as conn:
            for task_id in task_ids:
                attempts = dict(self.inflight.tasks[task_id])
                current = running_attempts(conn, self.scope.table, self.step, list(attempts))
                rows = [
                    row
                    for row in load_jobs(
                        conn, self.scope.table, list(attempts), self.library.payload_columns(self.step)
                    )
                    if current.get(row["id"], (None, 0))[0] == attempts[row["id"]]
                ]
                if rows:
                    bundles.append(
                        (task_id, task_jobs(conn, self.library, self.step, self.session, rows, self.options))
                    )
        counts = {task_id: self.resent.get(task_id, 0) + 1 for task_id in task_ids}
        self.untrack([task_id for task_id in task_ids if task_id not in dict(bundles)])  # their jobs moved on
        self.publish(bundles)  # tracks each task afresh once it is sent
        self.resent.update({task_id: counts[task_id] for task_id, _ in bundles})
        sent = sum(len(rows) for _, rows in bundles)
        log.warning(
            "session %s: %d tasks (%d jobs) had no record anywhere after %.0f s; sent again",
            self.session.id,
            len(bundles),
            sent,
            self.settings.lost_result_after_s,
        )
        return sent

    def _give_back(self, task_ids: Sequence[str], metas: Mapping[str, Mapping[str, Any]]) -> int:
        if not task_ids:
            return 0
        outcomes = []
        for task_id in task_ids:
            meta = metas.get(task_id)
            if meta is None:
                reason = f"lost: task sent {self.resent.get(task_id, 0) + 1} times left no record"
            else:
                where = started_node(meta)
                reason = f"lost: task {meta.get('status')}{' on ' + where if where else ''} is held by no worker"
            log.warning("session %s: task %s %s; its jobs go back", self.session.id, task_id, reason)
            outcomes += lost_outcomes(self.inflight.tasks[task_id], reason, None)
        self.apply(outcomes)
        self.results.forget(task_ids)
        self.untrack(task_ids)
        return len(outcomes)


def finished(meta: Mapping[str, Any] | None) -> bool:
    """Whether a record is one that :meth:`HeadNode.drain` takes care of."""
    return meta is not None and meta.get("status") in READY_STATES | {UNDECODABLE}


def started_node(meta: Mapping[str, Any] | None) -> str:
    """The worker node a STARTED record names, or ''."""
    result = (meta or {}).get("result")
    return str(result.get("hostname", "")) if isinstance(result, dict) else ""


def lost_outcomes(attempts: Sequence[tuple[int, int]], reason: str, host: str | None) -> list[dict[str, Any]]:
    return [
        {
            "job_id": job_id,
            "attempt": attempt,
            "ok": False,
            "reason": reason,
            "retryable": True,
            "outcome": "lost",
            "hostname": host,
        }
        for job_id, attempt in attempts
    ]
