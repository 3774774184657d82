"""The local host's GPUs (from ``rocminfo``), its row in the ``machine`` table, and the
rows of its Celery worker nodes in the ``worker`` table, which carry their liveness."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import Connection

from tuna.db.tables import machine, worker
from tuna.errors import BadInput

ROCMINFO_TIMEOUT_S = 60
_AGENT = re.compile(r"^\s*Agent\s+(\d+)\s*$")
_FIELD = re.compile(r"^(\s*)([^:]+):\s*(.*?)\s*$")


@dataclass(frozen=True)
class Agent:
    name: str
    device_type: str
    compute_units: int
    isa: str  # full target id, e.g. "gfx90a:sramecc+:xnack-"


@dataclass(frozen=True)
class LocalMachine:
    hostname: str
    arch: str
    arch_full: str
    num_cu: int
    gpus: tuple[int, ...]

    @property
    def avail_gpus(self) -> str:
        return ",".join(str(gpu) for gpu in self.gpus)


def parse_rocminfo(text: str) -> list[Agent]:
    """The agents rocminfo lists, in order. Only each agent's own fields and its ISA names
    are read; nested sections (caches, pools) are skipped by their deeper indentation."""
    agents: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    base_indent: int | None = None
    for line in text.splitlines():
        if _AGENT.match(line):
            current = {}
            agents.append(current)
            base_indent = None
            continue
        if current is None:
            continue
        field = _FIELD.match(line)
        if not field:
            continue
        indent, key, value = len(field.group(1)), field.group(2).strip(), field.group(3)
        if base_indent is None and indent > 0:
            base_indent = indent
        if value.startswith("amdgcn-") and key == "Name":
            current.setdefault("isa", value.rsplit("--", 1)[-1])
        elif indent == base_indent and value:
            current.setdefault(key, value)
    result = []
    for fields in agents:
        try:
            cus = int(fields.get("Compute Unit", "0").split()[0])
        except ValueError:
            cus = 0
        result.append(
            Agent(
                name=fields.get("Name", ""),
                device_type=fields.get("Device Type", ""),
                compute_units=cus,
                isa=fields.get("isa", fields.get("Name", "")),
            )
        )
    return result


def rocminfo_path(rocm_path: Path) -> Path:
    return rocm_path / "bin" / "rocminfo"


def run_rocminfo(rocm_path: Path) -> str:
    binary = rocminfo_path(rocm_path)
    try:
        proc = subprocess.run([str(binary)], capture_output=True, text=True, timeout=ROCMINFO_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise BadInput(f"rocminfo not found at {binary}; set ROCM_PATH or pass -a and -n") from None
    except OSError as exc:  # not executable, a directory ...
        raise BadInput(f"cannot run rocminfo at {binary}: {exc.strerror}; set ROCM_PATH") from None
    except subprocess.TimeoutExpired:
        raise BadInput(f"{binary} did not answer within {ROCMINFO_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise BadInput(f"{binary} exited with status {proc.returncode}: {proc.stderr.strip()[:200]}")
    return proc.stdout


def discover(rocm_path: Path, *, need_gpu: bool = True) -> LocalMachine:
    """This host's GPUs, from rocminfo. Raises :class:`BadInput` when there is none, unless
    ``need_gpu`` is False (a build step): then a host without GPUs has arch '' and no GPUs."""
    agents = parse_rocminfo(run_rocminfo(rocm_path))
    gpus = [agent for agent in agents if agent.device_type == "GPU"]
    if not gpus and not need_gpu:
        return LocalMachine(hostname=socket.gethostname(), arch="", arch_full="", num_cu=0, gpus=())
    if not gpus:
        raise BadInput(f"rocminfo at {rocminfo_path(rocm_path)} lists no GPU agent")
    first = gpus[0]
    return LocalMachine(
        hostname=socket.gethostname(),
        arch=first.isa.split(":")[0] or first.name,
        arch_full=first.isa,
        num_cu=first.compute_units,
        gpus=tuple(range(len(gpus))),
    )


def rocm_version(rocm_path: Path) -> str:
    version_file = rocm_path / ".info" / "version"
    try:
        return version_file.read_text().strip()
    except OSError:
        raise BadInput(f"cannot read the ROCm version from {version_file}; set ROCM_PATH") from None


def register_machine(conn: Connection, local: LocalMachine) -> int:
    """Insert or refresh this host's row; returns its id. The heartbeat starts now."""
    values = {
        "hostname": local.hostname,
        "arch": local.arch,
        "num_cu": local.num_cu,
        "avail_gpus": local.avail_gpus,
        "remarks": local.hostname,
        "available": True,
        "heartbeat_ts": sa.func.now(),
    }
    updates = {k: v for k, v in values.items() if k != "hostname"}
    if conn.dialect.name == "mysql":
        stmt = mysql.insert(machine).values(values)
        conn.execute(stmt.on_duplicate_key_update(**updates, update_ts=sa.func.now()))
    else:
        stmt_lite = sqlite.insert(machine).values(values)
        conn.execute(
            stmt_lite.on_conflict_do_update(index_elements=["hostname"], set_={**updates, "update_ts": sa.func.now()})
        )
    machine_id = conn.execute(sa.select(machine.c.id).where(machine.c.hostname == local.hostname)).scalar_one()
    return int(machine_id)


def heartbeat_machine(conn: Connection, machine_id: int) -> None:
    """The host row's own heartbeat (what ``--status`` lists); liveness is the worker rows'."""
    conn.execute(
        sa.update(machine).where(machine.c.id == machine_id).values(heartbeat_ts=sa.func.now(), available=True)
    )


def precise_now(conn: Connection) -> sa.ColumnElement[datetime]:
    """The database server's time, to the microsecond where the server has it."""
    if conn.dialect.name == "sqlite":
        return sa.func.strftime("%Y-%m-%d %H:%M:%f", "now", type_=sa.DateTime)
    return sa.func.now(6, type_=sa.DateTime)


@dataclass(frozen=True)
class WorkerNode:
    """What the ``worker`` table records about one Celery worker node of a launcher."""

    nodename: str
    db_name: str
    session: int
    step: str
    processes: int


def register_worker(conn: Connection, machine_id: int, hostname: str, node: WorkerNode, *, dead_after_s: float) -> int:
    """Insert or refresh a worker node's row, alive from now on; returns its id.

    A node name is unique per database (it carries host, session and GPU), so a launcher
    started again on the same host takes over its predecessor's row.
    """
    now = precise_now(conn)
    values = {
        "machine_id": machine_id,
        "hostname": hostname,
        "db_name": node.db_name,
        "session": node.session,
        "step": node.step,
        "processes": node.processes,
        "pid": None,
        "started_ts": now,
        "heartbeat_ts": now,
        "stopped_ts": None,
    }
    if conn.dialect.name == "mysql":
        stmt = mysql.insert(worker).values(nodename=node.nodename, **values)
        conn.execute(stmt.on_duplicate_key_update(**values, update_ts=sa.func.now()))
    else:
        stmt_lite = sqlite.insert(worker).values(nodename=node.nodename, **values)
        conn.execute(
            stmt_lite.on_conflict_do_update(index_elements=["nodename"], set_={**values, "update_ts": sa.func.now()})
        )
    worker_id = conn.execute(sa.select(worker.c.id).where(worker.c.nodename == node.nodename)).scalar_one()
    _count_processes(conn, machine_id, dead_after_s)
    return int(worker_id)


def running_worker_pid(conn: Connection, nodename: str, *, dead_after_s: float) -> int | None:
    """The pid of a worker of this name that is alive by its row (not stopped, heard from
    within ``dead_after_s``), if any."""
    cutoff = conn.execute(sa.select(precise_now(conn))).scalar_one() - timedelta(seconds=dead_after_s)
    pid = conn.execute(
        sa.select(worker.c.pid).where(
            worker.c.nodename == nodename, worker.c.stopped_ts.is_(None), worker.c.heartbeat_ts >= cutoff
        )
    ).scalar()
    return int(pid) if pid else None


def worker_started(conn: Connection, worker_id: int, pid: int) -> None:
    """A (re)started Celery worker's process id; it is alive from now on."""
    now = precise_now(conn)
    conn.execute(
        sa.update(worker)
        .where(worker.c.id == worker_id)
        .values(pid=pid, started_ts=now, heartbeat_ts=now, stopped_ts=None)
    )


def heartbeat_workers(conn: Connection, worker_ids: Iterable[int]) -> None:
    ids = list(worker_ids)
    if ids:
        conn.execute(
            sa.update(worker)
            .where(worker.c.id.in_(ids), worker.c.stopped_ts.is_(None))
            .values(heartbeat_ts=precise_now(conn))
        )


def mark_workers_stopped(conn: Connection, machine_id: int, worker_ids: Iterable[int], *, dead_after_s: float) -> None:
    """These workers stopped cleanly. The host row is marked stopped only when no other
    launcher's worker on it is still alive."""
    ids = list(worker_ids)
    if ids:
        conn.execute(
            sa.update(worker)
            .where(worker.c.id.in_(ids), worker.c.stopped_ts.is_(None))
            .values(stopped_ts=precise_now(conn))
        )
    if not _count_processes(conn, machine_id, dead_after_s):
        conn.execute(sa.update(machine).where(machine.c.id == machine_id).values(available=False, heartbeat_ts=None))


def _count_processes(conn: Connection, machine_id: int, dead_after_s: float) -> int:
    """Set the host row's process count to its live workers' total; returns how many
    of its workers are live (not stopped, and heard from within ``dead_after_s``)."""
    cutoff = conn.execute(sa.select(precise_now(conn))).scalar_one() - timedelta(seconds=dead_after_s)
    live = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(worker.c.processes), 0)).where(
        worker.c.machine_id == machine_id, worker.c.stopped_ts.is_(None), worker.c.heartbeat_ts >= cutoff
    )
    count, processes = conn.execute(live).one()
    conn.execute(sa.update(machine).where(machine.c.id == machine_id).values(worker_processes=int(processes)))
    return int(count)


def worker_silence(conn: Connection, nodenames: Iterable[str]) -> dict[str, float | None]:
    """Seconds since each named worker's last heartbeat, by the database's clock; None for
    a worker that stopped cleanly. Names without a row are left out."""
    names = sorted(set(nodenames))
    if not names:
        return {}
    found: dict[str, float | None] = {}
    for start in range(0, len(names), 500):
        rows = conn.execute(
            sa.select(
                worker.c.nodename, worker.c.heartbeat_ts, worker.c.stopped_ts, precise_now(conn).label("now")
            ).where(worker.c.nodename.in_(names[start : start + 500]))
        ).all()
        for row in rows:
            if row.stopped_ts is not None or row.heartbeat_ts is None:
                found[row.nodename] = None
            else:
                found[row.nodename] = max(0.0, (row.now - row.heartbeat_ts).total_seconds())
    return found
