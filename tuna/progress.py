"""What a long run shows a person: a one-line summary every few seconds, not a line per job.

Jobs take milliseconds (Example) to hours (MIOpen), so the rate is measured between finishes
on the wall clock, shown per second, minute or hour, and the time left counts down between
finishes instead of waiting for the next one. The lines are plain log records: no terminal
control codes, whatever stderr is. tqdm formats the numbers; its bar is not used.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from tuna.library import Step

log = logging.getLogger("tuna.progress")

SUMMARY_EVERY_S = 5.0
#: The rate is measured over at least this long a stretch of finishes ...
RATE_WINDOW_S = 600.0
#: ... and over at least this many finished jobs, however long they took.
RATE_MIN_JOBS = 20
#: Reasons shown at the end of a run with failed jobs, each cut to one line this long.
TOP_REASONS = 3
REASON_CHARS = 160


@dataclass(frozen=True)
class Estimate:
    """Jobs per second, and seconds until the jobs left are done (None: not known yet)."""

    rate: float | None
    eta_s: float | None


def estimate(finished: int, since: float, last: float, now: float, left: int) -> Estimate:
    """Rate and time left from ``finished`` jobs that ended between ``since`` and ``last``.

    The rate is jobs per wall-clock second over that stretch, so parallel workers count as
    they should. The end is expected ``left / rate`` after the last finish, and the time
    left counts down from there; once that moment has passed with jobs still left, the
    rate is measured up to ``now`` instead (it falls while nothing finishes).
    """
    if finished <= 0 or last <= since:
        return Estimate(None, 0.0 if left <= 0 else None)
    rate = finished / (last - since)
    if left <= 0:
        return Estimate(rate, 0.0)
    eta = last + left / rate - now
    if eta >= 0:
        return Estimate(rate, eta)
    rate = finished / (now - since)
    return Estimate(rate, left / rate)


def format_rate(rate: float | None) -> str:
    """Jobs per second, minute or hour: whichever shows at least one."""
    if rate is None:
        return "rate unknown"
    unit, per = next(((u, p) for u, p in (("s", 1.0), ("min", 60.0)) if rate * p >= 1.0), ("h", 3600.0))
    return f"{tqdm.format_sizeof(rate * per, divisor=1000)} jobs/{unit}"


def format_eta(seconds: float | None) -> str:
    return "unknown" if seconds is None else tqdm.format_interval(max(0, round(seconds)))


def first_line(text: str, limit: int = REASON_CHARS) -> str:
    """A reason on one line: its first non-empty line, cut to ``limit`` characters."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    more = len(line) > limit or len(str(text).strip()) > len(line)
    return (line[: limit - 1] if len(line) > limit else line) + ("…" if more else "")


def format_reasons(reasons: Sequence[tuple[str, int]]) -> str:
    return "; ".join(f"{n}× {first_line(reason)}" for reason, n in reasons[:TOP_REASONS])


class Progress:
    """Counts finished jobs and logs a summary with throughput and ETA.

    Jobs and attempts are told apart: a failed attempt that sends its job back to be tried
    again is a retry, not a finished job.
    """

    def __init__(self, session_id: int, step_name: str) -> None:
        self.session_id = session_id
        self.step_name = step_name
        self.step: Step | None = None
        self.to_do = 0
        self.completed = 0
        self.failed = 0
        self.retried = 0
        self.waiting_for = 0  # jobs of the scope that an earlier step may still hand over
        self.started = time.monotonic()
        self.last_line = self.started
        #: (when, jobs finished so far): the start, then every count that finished a job.
        self.history: deque[tuple[float, int]] = deque([(self.started, 0)])

    def start(self, counts: Mapping[str, int], step: Step) -> None:
        self.step = step
        self.to_do = sum(counts.get(state, 0) for state in step.claim_states) + counts.get(step.running, 0)
        # Outcomes applied before (a restarted head node's recovery) are not in to_do.
        self.completed = self.failed = self.retried = 0
        self.started = self.last_line = time.monotonic()
        self.history = deque([(self.started, 0)])
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
        before = self.finished
        for outcome in applied:
            kind = self._kind(outcome)
            if kind == "done":
                self.completed += 1
            elif kind == "failed":
                self.failed += 1
            else:
                self.retried += 1
        if self.finished == before:
            return
        now = time.monotonic()
        self.history.append((now, self.finished))
        # Forget the oldest finishes once the rest still spans the window and enough jobs.
        while len(self.history) > 2:
            t1, n1 = self.history[1]
            last_t, last_n = self.history[-1]
            if last_t - t1 < RATE_WINDOW_S or last_n - n1 < RATE_MIN_JOBS:
                break
            self.history.popleft()

    def _kind(self, outcome: Mapping[str, Any]) -> str:
        """done, failed (for good) or retry. The state the outcome moved its job to says it
        where the caller passes it on; otherwise a retryable failure counts as a retry."""
        state = outcome.get("state")
        if state is not None and self.step is not None:
            if state == self.step.done:
                return "done"
            return "retry" if state in self.step.claim_states else "failed"
        if outcome.get("ok"):
            return "done"
        return "retry" if outcome.get("retryable") else "failed"

    def total(self, inflight: int = 0) -> int:
        """Jobs of the run: those there were at the start, or more if jobs were added since."""
        return max(self.to_do, self.finished + inflight)

    def estimate(self, now: float | None = None, inflight: int = 0) -> Estimate:
        (t0, n0), (t1, n1) = self.history[0], self.history[-1]
        now = time.monotonic() if now is None else now
        return estimate(n1 - n0, t0, t1, now, self.total(inflight) - self.finished)

    def waiting(self, jobs: int) -> None:
        """``jobs`` of the scope wait for an earlier step (compile before eval): said at once
        when the wait begins, then in every summary line while it lasts."""
        began = jobs and not self.waiting_for
        self.waiting_for = jobs
        if began:
            self.last_line = 0.0
            self.tick(0)

    def tick(self, inflight: int) -> None:
        now = time.monotonic()
        if now - self.last_line < SUMMARY_EVERY_S:
            return
        self.last_line = now
        guess = self.estimate(now, inflight)
        log.info(
            "session %s %s: %d/%d jobs finished (%d %s, %d %s), %d retries, %d in flight, %s, ETA %s%s",
            self.session_id,
            self.step_name,
            self.finished,
            self.total(inflight),
            self.completed,
            self.step.done if self.step else "ok",
            self.failed,
            self.step.failed if self.step else "failed",
            self.retried,
            inflight,
            format_rate(guess.rate),
            format_eta(guess.eta_s),
            f"; waiting for {self.waiting_for} jobs of an earlier step" if self.waiting_for else "",
        )

    def final(self, counts: Mapping[str, int], reasons: Sequence[tuple[str, int]] = ()) -> None:
        """The closing lines: time taken, rate, jobs by state; then, when jobs of the step
        failed, how many and their most common reasons (``reasons``: reason, jobs)."""
        took = time.monotonic() - self.started
        log.info(
            "session %s %s: done in %s, %s; jobs by state: %s",
            self.session_id,
            self.step_name,
            tqdm.format_interval(round(took)),
            format_rate(self.finished / took if took and self.finished else None),
            format_counts(counts),
        )
        failed = counts.get(self.step.failed, 0) if self.step else 0
        if failed:
            log.warning(
                "session %s %s: %d %s %s; most common reasons: %s",
                self.session_id,
                self.step_name,
                failed,
                "jobs" if failed > 1 else "job",
                self.step.failed if self.step else "failed",
                format_reasons(reasons) or "none recorded",
            )


def format_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "no jobs"
