"""Who may claim a scope's jobs, and whose ``running`` jobs nobody owns any more.

One claimer per scope: a head node or ``--execute`` takes the lock of its scope (the
database, job table, session, step and label) first, and holds it for the life of its
process. A second one on the same scope is refused with one line (exit 75): it would
purge the first one's queue and take back its work. The lock is MySQL's ``GET_LOCK`` on
a connection kept for it (pinged so that the server never closes it as idle), or
``flock`` on a file next to an SQLite database; either goes away with the process,
however it ends.

``--execute`` claims jobs under an owner token (``x_<host>_<pid>_<uuid>``, written to
``task_id``) and holds a lock of that name too. A ``running`` job whose token's lock is
free was left by an ``--execute`` that was killed: the next claimer of the scope gives it
back. A head node's jobs carry its tasks' ids and are recovered by the head node itself.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection

from tuna.db.engine import Database, database_error, make_engine
from tuna.errors import BadInput, ScopeBusy
from tuna.jobs import Scope, release_jobs_without_commit, running_jobs
from tuna.library import Library, Step

log = logging.getLogger(__name__)

#: Prefix of an ``--execute`` owner token in ``task_id``.
OWNER_PREFIX = "x_"
#: The lock's connection is pinged this often, well within the wait_timeout it sets.
KEEPALIVE_S = 30.0
LOCK_CONNECTION_WAIT_TIMEOUT_S = 3600
#: MySQL refuses longer lock names.
MYSQL_LOCK_NAME_MAX = 64
#: A scope lock is tried this many times, this far apart, before the scope counts as busy:
#: another process may be probing it (lock_held) for an instant.
TAKE_TRIES = 5
TAKE_PAUSE_S = 0.05


def scope_lock_name(db_name: str, scope: Scope, step: Step) -> str:
    name = f"tuna:{db_name}:{scope.table.name}:{scope.session_id}:{step.name}"
    return name if scope.label is None else f"{name}:{scope.label}"


def owner_lock_name(token: str) -> str:
    return f"tuna:owner:{token}"


def new_owner_token() -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:64]
    return f"{OWNER_PREFIX}{host}_{os.getpid()}_{uuid.uuid4().hex[:12]}"


#: File descriptors that hold this process's locks. A forked child (``--execute``'s
#: process pool) points its copies at /dev/null: a lock must end with its process, not
#: live on in a child that outlived it.
_lock_fds: set[int] = set()


def _detach_in_child() -> None:
    if not _lock_fds:
        return
    null = os.open(os.devnull, os.O_RDWR)
    for fd in _lock_fds - {-1}:
        with contextlib.suppress(OSError):
            os.dup2(null, fd)
    os.close(null)
    _lock_fds.clear()


os.register_at_fork(after_in_child=_detach_in_child)


class Locks:
    """Named locks held by this process until it ends."""

    def take(self, name: str) -> bool:
        raise NotImplementedError


class MysqlLocks(Locks):
    """``GET_LOCK`` on one connection of its own, kept alive by a thread."""

    def __init__(self, url: URL) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.mutex = threading.Lock()
        self.names: list[str] = []
        self.fd = -1
        self.conn = self._connect()
        threading.Thread(target=self._keepalive, name="tuna-scope-lock", daemon=True).start()

    def _connect(self) -> Connection:
        try:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(sa.text(f"SET SESSION wait_timeout = {LOCK_CONNECTION_WAIT_TIMEOUT_S}"))
        except sa.exc.DBAPIError as exc:
            raise database_error(self.url, exc) from None
        sock = getattr(conn.connection.dbapi_connection, "_sock", None)  # PyMySQL's socket
        self.fd = sock.fileno() if sock is not None else -1
        _lock_fds.add(self.fd)
        return conn

    def take(self, name: str) -> bool:
        with self.mutex:
            return self._get_lock(name)

    def _get_lock(self, name: str) -> bool:
        got = self.conn.execute(sa.text("SELECT GET_LOCK(:name, 0)"), {"name": mysql_lock_name(name)}).scalar()
        if got == 1:
            self.names.append(name)
        return got == 1

    def _keepalive(self) -> None:
        while True:
            time.sleep(KEEPALIVE_S)
            with self.mutex:
                try:
                    self.conn.execute(sa.text("SELECT 1"))
                except Exception as exc:  # the server restarted or the network broke
                    self._take_again(exc)

    def _take_again(self, exc: Exception) -> None:
        """The connection, and with it the locks, are gone: take them again if still free."""
        names, self.names = self.names, []
        _lock_fds.discard(self.fd)  # its number may be reused by anything once closed
        try:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = self._connect()
            lost = [name for name in names if not self._get_lock(name)]
        except Exception:
            self.names = names  # try again at the next ping
            log.warning("lost the connection holding %s (%s); retrying", ", ".join(names), type(exc).__name__)
            return
        if lost:
            log.error("lost %s to another process while the database was away", ", ".join(lost))


def mysql_lock_name(name: str) -> str:
    if len(name) <= MYSQL_LOCK_NAME_MAX:
        return name
    return "tuna:" + hashlib.sha256(name.encode()).hexdigest()[:40]


class FileLocks(Locks):
    """``flock`` on files in a folder next to the SQLite database."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: dict[str, IO[bytes]] = {}

    def take(self, name: str) -> bool:
        path = lock_file(self.folder, name)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = open(path, "ab")  # noqa: SIM115 - held open for the life of the process
        except OSError as exc:
            raise BadInput(f"cannot create the lock file {path}: {exc.strerror}; make its folder writable") from None
        # Another process may be probing the lock (lock_held) for an instant: try a few times.
        for attempt in range(TAKE_TRIES):
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == TAKE_TRIES - 1:
                    handle.close()
                    return False
                time.sleep(TAKE_PAUSE_S)
        self.files[name] = handle
        _lock_fds.add(handle.fileno())
        return True


def lock_file(folder: Path, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if len(safe) > 120:
        safe = hashlib.sha256(name.encode()).hexdigest()
    return folder / f"{safe}.lock"


def lock_folder(url: URL) -> Path | None:
    if not url.database or url.database == ":memory:":
        return None
    path = Path(url.database)
    return path.with_name(path.name + ".locks")


class ScopeLock:
    """This process's claim on one scope, and its owner token once it asked for one."""

    def __init__(self, locks: Locks | None, name: str) -> None:
        self.locks = locks
        self.name = name
        self._owner: str | None = None

    @property
    def owner(self) -> str:
        """An owner token held by this process, for claims that no task id names."""
        if self._owner is None:
            token = new_owner_token()
            if self.locks is not None and not self.locks.take(owner_lock_name(token)):
                raise ScopeBusy(f"could not take the lock of owner {token}")
            if isinstance(self.locks, FileLocks):
                atexit.register(_unlink, lock_file(self.locks.folder, owner_lock_name(token)))
            self._owner = token
        return self._owner


_held: dict[str, ScopeLock] = {}
_locks: dict[str, Locks | None] = {}


def hold_scope(db: Database, db_name: str, scope: Scope, step: Step) -> ScopeLock:
    """Take the scope's lock for the life of this process, or raise :class:`ScopeBusy`."""
    name = scope_lock_name(db_name, scope, step)
    if name in _held:
        return _held[name]
    locks = _process_locks(db)
    if locks is not None and not locks.take(name):
        label = f" label {scope.label!r}" if scope.label is not None else ""
        raise ScopeBusy(
            f"session {scope.session_id}{label} ({step.name}) is already being run by another head node "
            f"or --execute on database {db_name} (lock {name}); wait for it to end, or stop it first"
        )
    _held[name] = ScopeLock(locks, name)
    return _held[name]


def _process_locks(db: Database) -> Locks | None:
    key = db.url.render_as_string(hide_password=False)
    if key not in _locks:
        if db.dialect == "mysql":
            _locks[key] = MysqlLocks(db.url)
        else:
            folder = lock_folder(db.url)
            _locks[key] = None if folder is None else FileLocks(folder)
    return _locks[key]


def owner_alive(conn: Connection, token: str) -> bool:
    """Whether the process that claimed jobs under ``token`` still holds its lock."""
    return lock_held(conn, owner_lock_name(token), tidy=True)


def scope_active(conn: Connection, db_name: str, scope: Scope, step: Step) -> bool:
    """Whether a head node or ``--execute`` works on ``step`` in ``scope`` now (it holds the
    scope's lock), with the scope's label or without one."""
    scopes = {scope, Scope(scope.table, scope.session_id)}
    return any(lock_held(conn, scope_lock_name(db_name, s, step)) for s in scopes)


def feeder_active(conn: Connection, db_name: str, library: Library, scope: Scope, step: Step) -> bool:
    """Whether a step that feeds ``step`` (its ``done`` is one of ``step``'s claim states) is
    being worked on now in the same session: by a head node or ``--execute``."""
    return any(
        scope_active(conn, db_name, Scope(library.table_of(other), scope.session_id, scope.label), other)
        for other in library.steps
        if other is not step and other.done in step.claim_states
    )


def lock_held(conn: Connection, name: str, *, tidy: bool = False) -> bool:
    """Whether some process holds the lock ``name`` (a scope or owner lock). ``tidy``: remove
    the file of a free lock (an owner's, whose name is never taken again)."""
    if conn.dialect.name == "mysql":
        free = conn.execute(sa.text("SELECT IS_FREE_LOCK(:name)"), {"name": mysql_lock_name(name)}).scalar()
        return free == 0
    folder = lock_folder(conn.engine.url)
    if folder is None:
        return False
    path = lock_file(folder, name)
    try:
        handle = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        if tidy:
            _unlink(path)
        return False


def abandoned(
    conn: Connection, running: Sequence[tuple[int, int, str | None]], candidates: Iterable[int]
) -> dict[int, int]:
    """job id → attempt for those ``candidates`` among ``running`` (id, attempt, task id)
    that no live ``--execute`` owns."""
    wanted = set(candidates)
    alive: dict[str, bool] = {}
    found = {}
    for job_id, attempt, task_id in running:
        if job_id not in wanted:
            continue
        if task_id and task_id.startswith(OWNER_PREFIX):
            if task_id not in alive:
                alive[task_id] = owner_alive(conn, task_id)
            if alive[task_id]:
                continue
        found[job_id] = attempt
    return found


def release_abandoned(db: Database, scope: Scope, step: Step) -> int:
    """Give back the scope's running jobs that no task and no live owner holds (a killed
    ``--execute``'s, or a claim that named nobody). A head node's are left to it."""
    with db.begin() as conn:
        running = running_jobs(conn, scope, step)
        ownerless = [j for j, _, task_id in running if not task_id or task_id.startswith(OWNER_PREFIX)]
        released = release_jobs_without_commit(conn, scope, step, abandoned(conn, running, ownerless))
    if released:
        log.warning("session %s: %d running jobs of a process that ended were given back", scope.session_id, released)
    return released


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
