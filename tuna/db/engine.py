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
from tuna.errors import ConfigError, DatabaseBusy, DatabaseFailed, ServiceUnavailable, TunaError

HOW_TO_START_DB = (
    "start it (here: start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd) "
    "or fix TUNA_DB_HOSTNAME/TUNA_DB_PORT/TUNA_DB_URL"
)
HOW_TO_FIX_DB_LOGIN = "check TUNA_DB_USER_NAME/TUNA_DB_USER_PASSWORD (or TUNA_DB_URL) and the user's grants"
SQLITE_BUSY_TIMEOUT_S = 60

# MySQL error codes that mean the server, not the query, is the problem.
_MYSQL_ACCESS_DENIED = {1044, 1045}
_MYSQL_UNREACHABLE = {*_MYSQL_ACCESS_DENIED, 2002, 2003, 2005, 2006, 2013}
MYSQL_UNKNOWN_DATABASE = 1049
# Lock wait timeout and deadlock: the statement lost a race and may be run again.
_MYSQL_BUSY = {1205, 1213}
_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the head node read while a worker-side writer holds the lock.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: URL) -> Engine:
    """An engine for ``url``; create one per process (after Celery's fork, not before)."""
    try:
        if url.get_backend_name() == "sqlite":
            return _sqlite_engine(url)
        # A quiet head node outlives MySQL's wait_timeout; pre-ping replaces dead connections.
        return sa.create_engine(url, pool_pre_ping=True, pool_recycle=3600)
    except (ImportError, sa.exc.NoSuchModuleError):
        raise ConfigError(
            "TUNA_DB_URL",
            f"no driver for {url.drivername!r} is installed; tuna uses sqlite:///PATH or mysql+pymysql://",
        ) from None


def _sqlite_engine(url: URL) -> Engine:
    if url.database and url.database != ":memory:":
        folder = Path(url.database).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServiceUnavailable(
                "database",
                url.render_as_string(hide_password=True),
                f"make {folder} a writable directory, or set TUNA_HOME or TUNA_DB_URL",
                exc.strerror or type(exc).__name__,
            ) from None
    engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def mysql_error_code(exc: BaseException) -> int | None:
    orig = getattr(exc, "orig", None)
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def unavailable(url: URL, exc: BaseException) -> ServiceUnavailable:
    code = mysql_error_code(exc)
    detail = f"MySQL error {code}" if code else type(getattr(exc, "orig", exc)).__name__
    # A refused login is not a server that is down: starting it would not help.
    how = HOW_TO_FIX_DB_LOGIN if code in _MYSQL_ACCESS_DENIED else HOW_TO_START_DB
    if code in _MYSQL_ACCESS_DENIED:
        detail += ", access denied"
    return ServiceUnavailable("database", url.render_as_string(hide_password=True), how, detail)


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


def is_busy(exc: sa.exc.DBAPIError) -> bool:
    code = mysql_error_code(exc)
    if code is not None:
        return code in _MYSQL_BUSY
    return isinstance(exc, sa.exc.OperationalError) and str(exc.orig).startswith(_SQLITE_BUSY)


def error_detail(exc: BaseException) -> str:
    """The driver's own code and message, on one line, without the statement or its values."""
    orig = getattr(exc, "orig", exc)
    code = mysql_error_code(exc)
    if code is not None:
        args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
        message = str(args[1]) if len(args) > 1 else ""
        text = f"MySQL error {code}: {message}" if message else f"MySQL error {code}"
    else:
        text = f"{type(orig).__name__}: {orig}"
    return " ".join(text.split())


def database_error(url: URL, exc: sa.exc.DBAPIError) -> TunaError:
    """The tuna error a driver error means: the server is away, busy, or refused the statement."""
    safe = url.render_as_string(hide_password=True)
    if is_unreachable(exc):
        return unavailable(url, exc)
    if is_busy(exc):
        return DatabaseBusy(safe, error_detail(exc))
    return DatabaseFailed(safe, error_detail(exc))


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction: commit on success, roll back on any error, always close.

    A lost or refused connection becomes :class:`ServiceUnavailable`; a deadlock, a lock
    wait timeout or a locked SQLite file :class:`DatabaseBusy`, which callers retry.
    """
    try:
        with engine.begin() as conn:
            yield conn
    except sa.exc.DBAPIError as exc:
        if is_unreachable(exc):
            raise unavailable(engine.url, exc) from None
        if is_busy(exc):
            raise DatabaseBusy(engine.url.render_as_string(hide_password=True), error_detail(exc)) from None
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
