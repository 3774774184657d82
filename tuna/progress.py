"""What a long run shows a person: a one-line summary every few seconds, not a line per job."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from tuna.library import Step

log = logging.getLogger("tuna.progress")

SUMMARY_EVERY_S = 5.0
RATE_WINDOW_S = 60.0


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Counts finished jobs and logs a summary with throughput and ETA."""

    def __init__(self, session_id: int, step_name: str) -> None:
        self.session_id = session_id
        self.step_name = step_name
        self.to_do = 0
        self.completed = 0
        self.failed = 0
        self.started = time.monotonic()
        self.last_line = self.started
        self.history: deque[tuple[float, int]] = deque([(self.started, 0)])

    def start(self, counts: Mapping[str, int], step: Step) -> None:
        self.to_do = counts.get(step.claim_from, 0) + counts.get(step.running, 0)
        log.info(
            "session %s %s: %d jobs to run (%s)",
            self.session_id,
            self.step_name,
            self.to_do,
            format_counts(counts),
        )

    @property
    def finished(self) -> int:
        return self.completed + self.failed

    def count(self, applied: Sequence[Mapping[str, Any]]) -> None:
        for outcome in applied:
            if outcome["ok"]:
                self.completed += 1
            else:
                self.failed += 1
        now = time.monotonic()
        self.history.append((now, self.finished))
        while len(self.history) > 2 and self.history[1][0] < now - RATE_WINDOW_S:
            self.history.popleft()

    def rate(self) -> float:
        (t0, n0), (t1, n1) = self.history[0], self.history[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def tick(self, inflight: int) -> None:
        now = time.monotonic()
        if now - self.last_line < SUMMARY_EVERY_S:
            return
        self.last_line = now
        rate = self.rate()
        left = max(0, self.to_do - self.finished)
        log.info(
            "session %s %s: %d/%d attempts finished (%d ok, %d failed), %d in flight, %.1f jobs/s, ETA %s",
            self.session_id,
            self.step_name,
            self.finished,
            self.to_do,
            self.completed,
            self.failed,
            inflight,
            rate,
            format_eta(left / rate if rate > 0 else None),
        )

    def final(self, counts: Mapping[str, int]) -> None:
        took = time.monotonic() - self.started
        log.info(
            "session %s %s: done in %.1f s, %.1f jobs/s; jobs by state: %s",
            self.session_id,
            self.step_name,
            took,
            self.finished / took if took else 0.0,
            format_counts(counts),
        )


def format_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "no jobs"
