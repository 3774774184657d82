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
    queue_length,
    session_workers,
    shutdown_matching,
    tasks_held_by_workers,
)
from tuna.celery_app.naming import session_worker_pattern
from tuna.celery_app.results import ResultStore
from tuna.config import Settings
from tuna.db.engine import Database
from tuna.inflight import Inflight
from tuna.jobs import Scope, count_states, load_jobs, release_jobs_without_commit, running_attempts, running_jobs
from tuna.library import SessionInfo, Step
from tuna.machine import dead_hosts
from tuna.ownership import abandoned

log = logging.getLogger("tuna.headnode")


class Recovery:
    """Recovery duties of a head node; the attributes are the head node's own."""

    app: Celery
    db: Database
    settings: Settings
    session: SessionInfo
    step: Step
    scope: Scope
    queue: str
    prefix: str
    results: ResultStore
    inflight: Inflight
    started_on: dict[str, str]
    unseen: set[str]

    def drain(self) -> int:
        raise NotImplementedError

    def apply(self, outcomes: Sequence[Mapping[str, Any]]) -> None:
        raise NotImplementedError

    def publish(self, bundles: Sequence[tuple[str, list[dict[str, Any]]]]) -> None:
        raise NotImplementedError

    def reap_lost_tasks(self) -> int:
        """Give back the jobs of tasks running on a host whose heartbeat has stopped.

        The broker would redeliver such a task once it notices the lost connection; the
        job row is given back now so that the session is not held up, and the attempt
        check makes the late delivery, if any, a no-op.
        """
        if not self.started_on:
            return 0
        with self.db.begin() as conn:
            dead = dead_hosts(conn, set(self.started_on.values()), self.settings.worker_dead_after_s)
        lost = [task_id for task_id, host in self.started_on.items() if host.split("@")[-1] in dead]
        if not lost:
            return 0
        outcomes = []
        for task_id in lost:
            host = self.started_on.pop(task_id).split("@")[-1]
            reason = f"abandoned: no heartbeat from {host} since {dead[host] or 'its workers stopped'}"
            log.warning("session %s: task %s lost (%s)", self.session.id, task_id, reason)
            outcomes += [
                {
                    "job_id": job_id,
                    "attempt": attempt,
                    "ok": False,
                    "reason": reason,
                    "retryable": True,
                    "outcome": "lost",
                    "hostname": host,
                }
                for job_id, attempt in self.inflight.pop(task_id)
            ]
        self.apply(outcomes)
        self.results.forget(lost)
        return len(outcomes)

    def recover(self) -> None:
        """Resume after a crash: apply finished results, give back orphaned jobs.

        Order matters: purge first, so that a task not held by a worker afterwards can
        only be finished (its result is drained) or lost (its jobs are given back). The
        queue is shared by the session, so it is left alone while jobs of the session
        outside this head node's label are running: another head node's messages are in
        it. A message of ours left there then runs a stale attempt, which is ignored.
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
        held = tasks_held_by_workers(self.app, session_workers(self.app, self.session.id)) or set()
        self.drain()
        for task_id in [t for t in self.inflight.tasks if t not in held]:
            orphans.extend(job_id for job_id, _ in self.inflight.pop(task_id))
        with self.db.begin() as conn:
            released = release_jobs_without_commit(conn, self.scope, self.step, abandoned(conn, running, orphans))
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
            "session %s: interrupted; %d in-flight jobs returned to %r",
            self.session.id,
            released,
            self.step.claim_from,
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
            counts = count_states(conn, Scope(self.scope.table, self.session.id))
        if counts.get(self.step.claim_from, 0) or counts.get(self.step.running, 0):
            log.info("session %s: other jobs of the session remain; workers and queue left running", self.session.id)
            return
        shutdown_matching(self.app, session_worker_pattern(self.session.id, per_gpu=self.step.per_gpu))
        log.info("session %s: shutdown sent to the session's workers on %s", self.session.id, self.queue)
        delete_queue(self.app, self.queue)

    def resend_lost_results(self) -> int:
        """Send again the tasks whose record vanished: not queued, not held, no result.

        The same task id and attempt go out again, so whichever copy finishes first is
        applied and the other is a no-op. Returns the number of jobs sent again.
        """
        # A task with no record at all this long after it was sent, while its queue is empty
        # and no worker holds it, has lost its result (say a result backend restarted
        # without persistence).
        after_s = self.settings.lost_result_after_s
        candidates = [t for t in self.inflight.older_than(after_s) if t in self.unseen]
        if not candidates or queue_length(self.app, self.queue) > 0:
            return 0
        held = tasks_held_by_workers(self.app, session_workers(self.app, self.session.id))
        if held is None:  # no worker answered: nobody could run them now anyway
            return 0
        lost = [t for t in candidates if t not in held]
        found = self.results.fetch(lost)  # a result may have landed meanwhile
        lost = [t for t in lost if t not in found]
        if not lost:
            return 0
        bundles = []
        with self.db.begin() as conn:
            for task_id in lost:
                attempts = dict(self.inflight.pop(task_id))
                current = running_attempts(conn, self.scope.table, self.step, list(attempts))
                rows = [
                    row
                    for row in load_jobs(conn, self.scope.table, list(attempts))
                    if current.get(row["id"], (None, 0))[0] == attempts[row["id"]]
                ]
                if rows:
                    bundles.append((task_id, rows))
        self.publish(bundles)
        sent = sum(len(rows) for _, rows in bundles)
        log.warning(
            "session %s: %d tasks (%d jobs) had no record anywhere after %.0f s; sent again",
            self.session.id,
            len(bundles),
            sent,
            after_s,
        )
        return sent
