"""Queue, task-id and worker names, as MITuna spells them.

Task ids carry the session prefix, so a head node fetches and deletes only its own
session's results. Worker node names carry the database as well as the session: two
databases' session-1 workers on one host and broker must neither collide (Celery's
control queue of a node is exclusive to it) nor be shut down by each other's head node.
"""

from __future__ import annotations

import re
import uuid


def queue_name(queue_kind: str, db_name: str, session_id: int) -> str:
    """``compile_q_<db>_sess_<S>`` or ``eval_q_<db>_sess_<S>``."""
    return f"{queue_kind}_q_{db_name}_sess_{session_id}"


def task_id_prefix(db_name: str, session_id: int, step: str) -> str:
    return f"d_{db_name}_sess_{session_id}_{step}"


def new_task_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


def worker_name(hostname: str, db_name: str, session_id: int, gpu_id: int | None = None) -> str:
    """``tuna_<host>_sess_<S>[_gpu_id_<g>].<db>``: the part of a node name before ``@``.

    The database goes last, after a dot: MySQL database names cannot hold one, and the
    match below anchors on the whole ``.<db>`` suffix, so a dotted host name or SQLite
    file name is no trouble.
    """
    name = f"tuna_{hostname}_sess_{session_id}"
    if gpu_id is not None:
        name += f"_gpu_id_{gpu_id}"
    return f"{name}.{db_name}"


def is_session_worker(nodename: str, db_name: str, session_id: int) -> bool:
    """Exact match on database and session: ``sess_1`` never matches ``sess_10``'s
    workers, nor session 1 of another database."""
    name = nodename.split("@", 1)[0]
    suffix = f".{db_name}"
    if not name.startswith("tuna_") or not name.endswith(suffix):
        return False
    name = name[: -len(suffix)]
    marker = f"_sess_{session_id}"
    if marker not in name:
        return False
    rest = name.rsplit(marker, 1)[1]
    return rest == "" or re.fullmatch(r"_gpu_id_\d+", rest) is not None


def session_worker_pattern(db_name: str, session_id: int, *, per_gpu: bool) -> str:
    """A regular expression matching the node names of a session's workers of one kind,
    for a broadcast that needs no round of replies to find them."""
    suffix = r"_gpu_id_\d+" if per_gpu else ""
    return rf"^tuna_.+_sess_{re.escape(str(session_id))}{suffix}\.{re.escape(db_name)}@"
