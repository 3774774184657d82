"""Queue, task-id and worker names, as MITuna spells them.

Task ids carry the session prefix, so a head node fetches and deletes only its own
session's results.
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


def worker_name(hostname: str, session_id: int, gpu_id: int | None = None) -> str:
    """``tuna_<host>_sess_<S>``, with ``_gpu_id_<g>`` for a per-GPU worker."""
    name = f"tuna_{hostname}_sess_{session_id}"
    return name if gpu_id is None else f"{name}_gpu_id_{gpu_id}"


def is_session_worker(nodename: str, session_id: int) -> bool:
    """Exact match on the session: ``sess_1`` never matches ``sess_10``'s workers."""
    name = nodename.split("@", 1)[0]
    marker = f"_sess_{session_id}"
    if marker not in name:
        return False
    rest = name.rsplit(marker, 1)[1]
    return rest == "" or rest.startswith("_gpu_id_")


def session_worker_pattern(session_id: int, *, per_gpu: bool) -> str:
    """A regular expression matching the node names of a session's workers of one kind,
    for a broadcast that needs no round of replies to find them."""
    suffix = r"_gpu_id_\d+" if per_gpu else ""
    return rf"^tuna_.+_sess_{re.escape(str(session_id))}{suffix}@"
