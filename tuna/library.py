"""The interface between tuna's core and a tuning library, and the registry of libraries.

A library (``example``, ``miopen``) is a subclass of :class:`Library` that declares its
tables, its steps and their job states, its command-line arguments, what a job's payload
is, how one job runs on a GPU host, and how a finished job's output is stored. The core
(head node, worker launch, Celery task) only ever calls these hooks. Libraries are found
by name through the ``tuna.libraries`` entry-point group, so the core imports none of them.
"""

from __future__ import annotations

import argparse
import functools
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tuna.config import Settings
from tuna.errors import BadInput

if TYPE_CHECKING:
    from tuna.machine import LocalMachine

ENTRY_POINT_GROUP = "tuna.libraries"
#: Further libraries as ``name=module:Class`` separated by commas, for tests and for
#: developing a library before it is installed with an entry point.
EXTRA_LIBRARIES_ENV = "TUNA_EXTRA_LIBRARIES"


@dataclass(frozen=True)
class Step:
    """One tuning step and the job states it moves through.

    A job is claimed from ``claim_from`` (or one of ``also_claim_from``) into
    ``running``; it ends in ``done`` or ``failed``. An interrupted, lost or retryably
    failed attempt goes back to the state it was claimed from (the job's ``claimed_from``).
    Step names are unique within a library: the worker finds its step by name.
    """

    name: str
    queue_kind: str  # "compile" or "eval": the queue's prefix, as in MITuna
    claim_from: str
    running: str
    done: str
    failed: str
    per_gpu: bool = False  # one single-process worker per GPU, pinned by environment
    time_limit_s: float = 3600.0  # one job's limit, unless TUNA_JOB_TIME_LIMIT_S says otherwise
    job_table: sa.Table | None = None
    """The step's job table; None: the library's ``job_table`` (see :meth:`Library.table_of`)."""
    also_claim_from: tuple[str, ...] = ()
    """Further states a job may be claimed from (an eval step takes ``new`` and ``compiled``)."""
    max_retries: int | None = None
    """This step's cap on retryable failures; None: ``TUNA_MAX_RETRIES``."""
    waits_on: tuple[str, ...] = ()
    """States of jobs (same scope and claim filter) that another step may still make
    claimable: the head node does not finish while any job is in one of them."""
    needs_gpu: bool = True
    """False for a build step: its launcher runs on a host without GPUs, one worker per host."""

    @property
    def claim_states(self) -> tuple[str, ...]:
        return (self.claim_from, *self.also_claim_from)

    def retry_cap(self, default: int) -> int:
        """This step's retry cap, ``default`` (TUNA_MAX_RETRIES) unless the step sets one."""
        return default if self.max_retries is None else self.max_retries


@dataclass(frozen=True)
class WorkerContext:
    """Where a job runs: passed to :meth:`Library.run_job` on the GPU host."""

    hostname: str
    machine_id: int
    gpu_id: int
    rocm_path: Path
    job_time_limit_s: float
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobRun:
    """What one job's run produced. A failure is a result too, with its reason."""

    ok: bool
    result: str
    exit_status: int | None = None
    reason: str = ""
    retryable: bool = False
    """A failure of the host rather than of the job (a crash, a hang): try again, capped."""


@dataclass(frozen=True)
class SessionInfo:
    """The parts of a session row the core needs."""

    id: int
    arch: str
    num_cu: int
    row: Mapping[str, Any]


class Library(ABC):
    """A tuning library. Subclasses set the class attributes and implement the hooks."""

    name: ClassVar[str]
    session_table: ClassVar[sa.Table]
    job_table: ClassVar[sa.Table]
    tables: ClassVar[tuple[sa.Table, ...]]
    """The library's tables in creation order (the core adds its own)."""
    steps: ClassVar[tuple[Step, ...]]
    schema_revision: ClassVar[str | None] = None
    """The head of the library's own Alembic branch (``miopen_0001``): ``--add_tables``
    stamps it and commands check it (:mod:`tuna.db.schema`). None: the library's tables are
    created by the core's own migrations, as Example's are."""

    # -- command line -------------------------------------------------------------------
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the library's own flags to its ``go_fish.py <name>`` parser."""

    def run_command(self, args: argparse.Namespace, settings: Settings) -> int | None:
        """Run a library-specific command (``--init_session`` ...).

        Returns the exit code, or ``None`` when ``args`` asks for none of them.
        """
        return None

    def select_step(self, args: argparse.Namespace) -> Step:
        """The step a head node or worker works on for these arguments."""
        return self.steps[0]

    def table_of(self, step: Step) -> sa.Table:
        """The job table ``step`` claims from: its own, else the library's."""
        return self.job_table if step.job_table is None else step.job_table

    def run_options(self, args: argparse.Namespace) -> dict[str, Any]:
        """Options of this run, from the command line, passed to :meth:`job_payloads`."""
        return {}

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise BadInput(f"{self.name} has no step {name!r}")

    @abstractmethod
    def get_session(self, conn: Connection, session_id: int) -> SessionInfo:
        """The session row; raises :class:`tuna.errors.NotFound` when there is none."""

    def check_session(self, conn: Connection, session: SessionInfo, args: argparse.Namespace) -> None:
        """Refuse arguments that contradict the session (raise :class:`BadInput`)."""

    # -- head node ----------------------------------------------------------------------
    def payload_columns(self, step: Step) -> Sequence[str] | None:
        """Job columns :meth:`job_payload` reads (None: all but ``result``)."""
        return None

    def job_payload(self, step: Step, job: Mapping[str, Any], session: SessionInfo) -> dict[str, Any]:
        """The JSON-able context a worker needs to run ``job``."""
        return {
            "job": {k: v for k, v in job.items() if k not in ("result", "insert_ts", "update_ts")},
            "operation": step.queue_kind,
            "arch": session.arch,
            "num_cu": session.num_cu,
            "kwargs": {"session_id": session.id, "step": step.name},
        }

    def claim_filter(self, step: Step, table: sa.Table, session: SessionInfo) -> list[Any]:
        """Extra WHERE clauses of a claim, and of the counts that say whether work remains."""
        return []

    def wait_filter(self, step: Step, table: sa.Table, session: SessionInfo) -> list[Any]:
        """WHERE clauses of the jobs ``step`` may still get, claimable now or once another
        step moves them into a claim state (``Step.waits_on``): what keeps its head node,
        ``--execute`` and launchers going. By default the claim filter; a library whose
        claim filter holds a job back until another step is done widens it here."""
        return self.claim_filter(step, table, session)

    def claim_order(self, step: Step, table: sa.Table) -> list[Any]:
        """ORDER BY of a claim."""
        return [table.c.id]

    def job_payloads(
        self,
        conn: Connection,
        step: Step,
        session: SessionInfo,
        rows: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any],
    ) -> list[dict[str, Any]]:
        """The payloads of a batch of claimed rows, in order; runs inside the claim's
        transaction, so it may read other tables. ``options``: :meth:`run_options`."""
        return [self.job_payload(step, r, session) for r in rows]

    def store_results_without_commit(
        self, conn: Connection, step: Step, outcomes: Sequence[Mapping[str, Any]]
    ) -> Mapping[int, str]:
        """Write library-side rows for applied outcomes, inside the drain's transaction.

        ``outcomes`` are all those applied, successes and failures, each with ``ok`` and
        the ``state`` its job moved to. Returns job id → reason for jobs whose result
        cannot be stored: they end ``step.failed`` with that reason, not retried.
        """
        return {}

    # -- GPU host -----------------------------------------------------------------------
    def check_host(self, step: Step, session: SessionInfo, host: LocalMachine, rocm_path: Path) -> None:
        """Refuse (raise :class:`BadInput`) a host that contradicts the session: arch,
        CU count, ROCm or library version. Called by the launcher before any worker starts."""

    @abstractmethod
    def run_job(self, step: Step, payload: Mapping[str, Any], ctx: WorkerContext) -> JobRun:
        """Run one job on this host and return what it produced."""


@functools.cache
def _entry_points() -> dict[str, Any]:
    found: dict[str, Any] = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    for item in os.environ.get(EXTRA_LIBRARIES_ENV, "").split(","):
        name, _, target = item.strip().partition("=")
        if name and target:
            found[name.strip()] = EntryPoint(name.strip(), target.strip(), ENTRY_POINT_GROUP)
    return found


def library_names() -> list[str]:
    return sorted(_entry_points())


@functools.cache
def get_library(name: str) -> Library:
    """The library registered as ``name``; one instance per process."""
    ep = _entry_points().get(name)
    if ep is None:
        known = ", ".join(library_names()) or "none (is tuna installed with pip install -e .?)"
        raise BadInput(f"unknown library {name!r}; known: {known}")
    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, Library)):
        raise TypeError(f"entry point {name!r} is not a tuna Library")
    return cls()
