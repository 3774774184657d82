"""Engines and transactions, with driver errors turned into tuna's own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine

from tuna.config import Settings
from tuna.errors import ServiceUnavailable

HOW_TO_START_DB = (
    "start it (here: start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd) "
    "or fix TUNA_DB_HOSTNAME/TUNA_DB_PORT/TUNA_DB_URL"
)
SQLITE_BUSY_TIMEOUT_S = 60

# MySQL error codes that mean the server, not the query, is the problem.
_MYSQL_UNREACHABLE = {1044, 1045, 2002, 2003, 2005, 2006, 2013}
MYSQL_UNKNOWN_DATABASE = 1049


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the head node read while a worker-side writer holds the lock.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: URL) -> Engine:
    """An engine for ``url``; create one per process (after Celery's fork, not before)."""
    if url.get_backend_name() == "sqlite":
        if url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # A quiet head node outlives MySQL's wait_timeout; pre-ping replaces dead connections.
    return sa.create_engine(url, pool_pre_ping=True, pool_recycle=3600)


def mysql_error_code(exc: BaseException) -> int | None:
    orig = getattr(exc, "orig", None)
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def unavailable(url: URL, exc: BaseException) -> ServiceUnavailable:
    code = mysql_error_code(exc)
    detail = f"MySQL error {code}" if code else type(getattr(exc, "orig", exc)).__name__
    return ServiceUnavailable("database", url.render_as_string(hide_password=True), HOW_TO_START_DB, detail)


def is_unreachable(exc: sa.exc.DBAPIError) -> bool:
    return (
        exc.connection_invalidated
        or mysql_error_code(exc) in _MYSQL_UNREACHABLE
        or (
            isinstance(exc, sa.exc.OperationalError)
            and mysql_error_code(exc) is None
            and "unable to open database" in str(exc.orig)
        )
    )


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction: commit on success, roll back on any error, always close.

    A lost or refused connection becomes :class:`ServiceUnavailable`.
    """
    try:
        with engine.begin() as conn:
            yield conn
    except sa.exc.DBAPIError as exc:
        if is_unreachable(exc):
            raise unavailable(engine.url, exc) from None
        raise


class Database:
    """The engine for the configured URL, opened lazily in the process that uses it."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.db_url
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.url)
        return self._engine

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    def begin(self) -> Any:
        return transaction(self.engine)

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
