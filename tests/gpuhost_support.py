"""Helpers for the GPU-host tests: the processes below a launcher, its worker rows, and
ways to make a Celery worker die as it does in the field."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from pathlib import Path

import sqlalchemy as sa
from conftest import TunaEnv, descendants
from kombu import Connection, Queue

from tuna.celery_app.naming import worker_name
from tuna.machine import worker_silence


def nodename(env: TunaEnv, session: int) -> str:
    host = socket.gethostname()
    return f"{worker_name(host, env.settings.db_name, session)}@{host}"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def still_running(pids: list[int]) -> list[str]:
    return [f"{pid} {cmdline(pid)}" for pid in pids if running(pid)]


def jobs_running_below(launcher: subprocess.Popen[str], count: int) -> list[int]:
    """Every process below the launcher once ``count`` job commands (the fake rocminfo's
    ``sleep``) run there; empty until then."""
    below = descendants(launcher.pid)
    sleeping = [pid for pid in below if cmdline(pid).startswith("sleep ")]
    return below if len(sleeping) >= count else []


def silence(env: TunaEnv, node: str) -> float | None:
    engine = env.engine()
    try:
        with engine.connect() as conn:
            found = worker_silence(conn, [node])
    finally:
        engine.dispose()
    assert node in found, f"no worker row for {node}"
    return found[node]


def worker_pid(env: TunaEnv, node: str) -> int:
    rows = env.query("SELECT pid FROM worker WHERE nodename = :n", n=node)
    return int(rows[0][0]) if rows and rows[0][0] else 0


def kill_quietly(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def lock_control_queue(env: TunaEnv, node: str) -> Connection:
    """Hold a worker node's control queue (exclusive to one connection), as another worker
    of the same name on the broker does: the worker's consumer then dies at start with
    'Unrecoverable error: ResourceLocked'. Close the connection to let go."""
    conn = Connection(env.settings.broker_url)
    queue = Queue(
        f"{node}.celery.pidbox",
        exclusive=True,
        auto_delete=True,
        queue_arguments={"x-message-ttl": 300000, "x-expires": 10000},
    )
    queue(conn.default_channel).declare()
    # Consumed, so that the broker never expires it as unused.
    conn.default_channel.basic_consume(queue.name, no_ack=True, callback=lambda _message: None)
    return conn


def held_rows(env: TunaEnv, sql: str, **params: object) -> tuple[sa.Engine, sa.Connection]:
    """A connection that holds the rows ``sql`` selects FOR UPDATE until it is rolled back."""
    engine = env.engine()
    conn = engine.connect()
    conn.execute(sa.text("SET SESSION innodb_lock_wait_timeout = 10"))
    conn.execute(sa.text(sql), params)
    return engine, conn
