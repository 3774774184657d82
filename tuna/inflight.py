"""What a head node keeps in memory: its in-flight tasks, and how long jobs take.

Both are bounded by the number of jobs in flight, never by the size of the session.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class DurationEstimate:
    """Running mean of job duration, which sizes bundles of short jobs."""

    mean_s: float | None = None
    weight: float = 0.2

    def add(self, seconds: float) -> None:
        self.mean_s = seconds if self.mean_s is None else (1 - self.weight) * self.mean_s + self.weight * seconds

    def bundle_size(self, target_s: float, max_bundle: int) -> int:
        if self.mean_s is None:
            return 1
        return max(1, min(max_bundle, int(target_s / max(self.mean_s, 1e-4))))


@dataclass
class Inflight:
    """Tasks this head node has enqueued and not yet drained, with their jobs' attempts."""

    tasks: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)  # task id -> when it was sent (monotonic)
    jobs: int = 0

    def add(self, task_id: str, attempts: list[tuple[int, int]]) -> None:
        self.tasks[task_id] = attempts
        self.since[task_id] = time.monotonic()
        self.jobs += len(attempts)

    def add_job(self, task_id: str, job_id: int, attempt: int) -> None:
        self.tasks.setdefault(task_id, []).append((job_id, attempt))
        self.since.setdefault(task_id, time.monotonic())
        self.jobs += 1

    def pop(self, task_id: str) -> list[tuple[int, int]]:
        attempts = self.tasks.pop(task_id, [])
        self.since.pop(task_id, None)
        self.jobs -= len(attempts)
        return attempts

    def older_than(self, age_s: float) -> list[str]:
        limit = time.monotonic() - age_s
        return [task_id for task_id, sent in self.since.items() if sent < limit]

    def job_ids(self) -> list[int]:
        return [job_id for attempts in self.tasks.values() for job_id, _ in attempts]
