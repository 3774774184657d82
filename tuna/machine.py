"""The local host's GPUs (from ``rocminfo``) and its row in the ``machine`` table."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import Connection

from tuna.db.tables import machine
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


def discover(rocm_path: Path) -> LocalMachine:
    """This host's GPUs, from rocminfo. Raises :class:`BadInput` when there is none."""
    agents = parse_rocminfo(run_rocminfo(rocm_path))
    gpus = [agent for agent in agents if agent.device_type == "GPU"]
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


def register_machine(conn: Connection, local: LocalMachine, *, worker_processes: int) -> int:
    """Insert or refresh this host's row; returns its id. The heartbeat starts now."""
    values = {
        "hostname": local.hostname,
        "arch": local.arch,
        "num_cu": local.num_cu,
        "avail_gpus": local.avail_gpus,
        "remarks": local.hostname,
        "available": True,
        "worker_processes": worker_processes,
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


def heartbeat(conn: Connection, machine_id: int) -> None:
    conn.execute(sa.update(machine).where(machine.c.id == machine_id).values(heartbeat_ts=sa.func.now()))


def mark_stopped(conn: Connection, machine_id: int) -> None:
    conn.execute(
        sa.update(machine)
        .where(machine.c.id == machine_id)
        .values(available=False, worker_processes=0, heartbeat_ts=None)
    )


def dead_hosts(conn: Connection, hostnames: set[str], dead_after_s: float) -> dict[str, str]:
    """Of ``hostnames``, those with a machine row whose heartbeat is older than
    ``dead_after_s`` (or stopped), mapped to their last heartbeat. Database time only."""
    names = {name.split("@")[-1] for name in hostnames}
    if not names:
        return {}
    now = conn.execute(sa.select(sa.func.now())).scalar_one()
    rows = conn.execute(
        sa.select(machine.c.hostname, machine.c.heartbeat_ts).where(machine.c.hostname.in_(names))
    ).all()
    return {
        row.hostname: str(row.heartbeat_ts or "")
        for row in rows
        if row.heartbeat_ts is None or row.heartbeat_ts < now - timedelta(seconds=dead_after_s)
    }


# TEMPORARY: replaced by the workerhost branch (its per-worker `worker` table). Until then
# a node's liveness is its host's: the part of the node name after '@'.
def worker_silence(conn: Connection, nodenames: Iterable[str]) -> dict[str, float | None]:
    """Seconds since each named Celery worker node's last heartbeat, in database time;
    None for one stopped cleanly. Names with no record are left out."""
    names = set(nodenames)
    hosts = {name.split("@")[-1] for name in names}
    if not hosts:
        return {}
    now = conn.execute(sa.select(sa.func.now())).scalar_one()
    rows = conn.execute(
        sa.select(machine.c.hostname, machine.c.heartbeat_ts).where(machine.c.hostname.in_(hosts))
    ).all()
    beats = {row.hostname: row.heartbeat_ts for row in rows}
    return {
        name: None if beats[host] is None else max(0.0, (now - beats[host]).total_seconds())
        for name in names
        if (host := name.split("@")[-1]) in beats
    }
