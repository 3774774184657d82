"""A launcher's heartbeat: its own thread, which keeps its worker rows alive, refreshes the
host row, and watches whether the session still has work for the launcher's step.

The thread never ends the launcher: a database that is away, a deadlock (MySQL 1213) or a
lock wait timeout (1205, say someone holds the host's row) is a warning line and a retry
after a jittered pause, while the jobs run on. Each write is its own short transaction,
liveness first, so that a lock on the host row cannot hold up the worker rows.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection

from tuna.config import Settings
from tuna.db.engine import Database, error_detail
from tuna.errors import TunaError
from tuna.library import Library, Step
from tuna.machine import heartbeat_machine, heartbeat_workers

log = logging.getLogger(__name__)

#: Checks in a row that find no work for the step before the launcher stops its workers:
#: one could fall between a head node's claim of the last retry and its publish.
IDLE_CHECKS_TO_STOP = 2
#: A warning line per failure at most this often while the database stays unhappy.
REMIND_EVERY_S = 60.0


def launcher_database(settings: Settings) -> Database:
    """The launcher's own engine. On MySQL each of its connections waits for a row lock at
    most about one heartbeat, instead of the server's default 50 s, so that a held row
    delays one beat, not the worker rows' next ones."""
    db = Database(settings)
    if db.dialect == "mysql":
        wait_s = max(1, math.ceil(settings.worker_heartbeat_s))

        def short_lock_wait(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"SET SESSION innodb_lock_wait_timeout = {int(wait_s)}")
            cursor.close()

        event.listen(db.engine, "connect", short_lock_wait)
    return db


def pending_states(library: Library, step: Step) -> set[str]:
    """States from which a job may still reach ``step``'s queue: the step's own claim and
    running states, and those of every step that feeds it (whose ``done`` it claims)."""
    states: set[str] = set()
    todo, seen = [step], set()
    while todo:
        current = todo.pop()
        if current.name in seen:
            continue
        seen.add(current.name)
        states |= {*current.claim_states, *current.waits_on, current.running}
        todo += [other for other in library.steps if other.done in current.claim_states]
    return states


def session_has_work(
    conn: Connection, table: sa.Table, session_id: int, states: set[str], where: Sequence[Any] = ()
) -> bool:
    """Whether a job of the session is in one of ``states`` and passes ``where`` (the
    step's claim filter: a job the step never takes is no work for its workers)."""
    c = table.c
    stmt = sa.select(c.id).where(c.session == session_id, c.state.in_(sorted(states)), *where).limit(1)
    return conn.execute(stmt).first() is not None


def describe_db_error(exc: BaseException) -> str:
    """One line for a failed write: tuna's own errors say what they are (busy, away)."""
    if isinstance(exc, TunaError):
        return str(exc)
    return error_detail(exc)


class Heartbeat(threading.Thread):
    """Beats every ``settings.worker_heartbeat_s`` until :meth:`stop`."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        session_id: int,
        machine_id: int,
        worker_ids: Callable[[], list[int]],
        has_work: Callable[[Connection], bool],
    ) -> None:
        super().__init__(name="tuna-heartbeat", daemon=True)
        self.db = db
        self.every_s = settings.worker_heartbeat_s
        self.session_id = session_id
        self.machine_id = machine_id
        self.worker_ids = worker_ids
        self.has_work = has_work
        self.halt = threading.Event()
        self.session_over = threading.Event()
        """Set once the session has had no work for the step :data:`IDLE_CHECKS_TO_STOP` times."""
        self.work_seen: bool | None = None
        """What the last check found: whether the session still has work (None: not known)."""
        self.idle_checks = 0
        self._failing_since: float | None = None
        self._last_line = 0.0

    def stop(self) -> None:
        self.halt.set()

    def run(self) -> None:
        wait_s = self.every_s
        while not self.halt.wait(wait_s):
            wait_s = self.every_s if self.beat() else self.every_s * random.uniform(0.2, 0.6)

    def beat(self) -> bool:
        """One beat; returns whether every part of it was recorded."""
        ok = self._try("worker rows", lambda conn: heartbeat_workers(conn, self.worker_ids()))
        ok = self._try("session check", self._check_session) and ok
        ok = self._try("host row", lambda conn: heartbeat_machine(conn, self.machine_id)) and ok
        if ok and self._failing_since is not None:
            log.warning(
                "session %s: heartbeat recorded again after %.1f s",
                self.session_id,
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None
        return ok

    def _check_session(self, conn: Connection) -> None:
        self.work_seen = self.has_work(conn)
        self.idle_checks = 0 if self.work_seen else self.idle_checks + 1
        if self.idle_checks >= IDLE_CHECKS_TO_STOP:
            self.session_over.set()

    def _try(self, what: str, write: Callable[[Connection], None]) -> bool:
        try:
            with self.db.begin() as conn:
                write(conn)
        except Exception as exc:  # whatever it is, the running jobs must not pay for it
            now = time.monotonic()
            if self._failing_since is None or now - self._last_line >= REMIND_EVERY_S:
                self._failing_since = self._failing_since or now
                self._last_line = now
                log.warning(
                    "session %s: heartbeat (%s) not recorded: %s; retrying",
                    self.session_id,
                    what,
                    describe_db_error(exc),
                )
            return False
        return True
