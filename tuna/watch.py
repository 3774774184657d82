"""What a head node tells a person about its workers: that nobody consumes its queue, or
that a host has gone silent. One line when it happens, repeated slowly while it lasts."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from celery import Celery

from tuna.celery_app.control import count_consumers
from tuna.library import Library, Step

log = logging.getLogger("tuna.headnode")

#: While results stop coming, ask the broker (or the workers) this often who consumes ...
CONSUMER_CHECK_EVERY_S = 5.0
#: ... and say that nobody does once it has stayed so this long (a worker may be starting).
NO_CONSUMER_GRACE_S = 10.0
#: Repeat the "no worker" line this often while it stays true.
NO_CONSUMER_REMIND_S = 30.0
#: A heartbeat this many intervals old names its host as silent.
LATE_HEARTBEATS = 1.5


def no_consumer_line(queue: str, library: Library, step: Step, session_id: int) -> str:
    """The one line that says nobody works on ``queue`` and how to start somebody."""
    # The core cannot spell a library's step flag (MIOpen's --fin_steps): it names the step.
    which = f" and the options of step {step.name}" if len(library.steps) > 1 else ""
    return (
        f"no worker consumes queue {queue}; "
        f"start one on a GPU host with: ./go_fish.py {library.name} --session_id {session_id}{which}"
    )


class ConsumerWatch:
    """Notices a queue with no live consumer: no worker started, all of them dead or shut
    down, or only workers of another session or database."""

    def __init__(self, app: Celery, queue: str, library: Library, step: Step, session_id: int) -> None:
        self.app = app
        self.queue = queue
        self.library = library
        self.step = step
        self.session_id = session_id
        self.last_check = time.monotonic()
        self.empty_since: float | None = None
        self.last_line: float | None = None

    def progressed(self) -> None:
        """Results arrived: somebody consumes, no need to ask for a while."""
        self.last_check = time.monotonic()
        self.empty_since = None

    def check(self, inflight_jobs: int) -> None:
        """Ask at most every CONSUMER_CHECK_EVERY_S; empty answers for NO_CONSUMER_GRACE_S
        make the line."""
        now = time.monotonic()
        if not inflight_jobs or now - self.last_check < CONSUMER_CHECK_EVERY_S:
            return
        self.last_check = now
        if count_consumers(self.app, self.queue) > 0:
            if self.last_line is not None:
                log.info("session %s: a worker consumes queue %s again", self.session_id, self.queue)
            self.empty_since = self.last_line = None
            return
        if self.empty_since is None:
            self.empty_since = now
        if now - self.empty_since < NO_CONSUMER_GRACE_S:
            return
        if self.last_line is None or now - self.last_line >= NO_CONSUMER_REMIND_S:
            self.last_line = now
            log.warning(
                "session %s: %d jobs in flight, but %s",
                self.session_id,
                inflight_jobs,
                no_consumer_line(self.queue, self.library, self.step, self.session_id),
            )


class SilentNodes:
    """Names a worker node as soon as its heartbeat is late, before it is known dead."""

    def __init__(self, session_id: int, heartbeat_s: float, dead_after_s: float) -> None:
        self.session_id = session_id
        self.late_after_s = LATE_HEARTBEATS * heartbeat_s
        self.dead_after_s = dead_after_s
        self.named: set[str] = set()

    def update(self, silence: Mapping[str, float | None], jobs_on: Mapping[str, int]) -> None:
        """``silence``: seconds since each node's heartbeat; ``jobs_on``: its jobs in flight."""
        late = {node for node, s in silence.items() if s is not None and self.late_after_s <= s < self.dead_after_s}
        for node in sorted(late - self.named):
            log.warning(
                "session %s: no heartbeat from %s for %.0f s (%d jobs running there); "
                "they go back if it stays silent for %.0f s",
                self.session_id,
                node,
                silence[node],
                jobs_on.get(node, 0),
                self.dead_after_s,
            )
        for node in sorted(self.named - late):
            if silence.get(node) is not None and silence[node] < self.late_after_s:  # type: ignore[operator]
                log.info("session %s: %s heartbeats again", self.session_id, node)
        self.named = late
