"""MIOpen sessions: their values (``--init_session``, reference/miopen.md §2.4, §7.2) and
finding one by id.

``rocm_v`` is ``$ROCM_PATH/.info/version``; ``miopen_v`` is the ``MIOPEN_VERSION_TWEAK``
token of ``$ROCM_PATH/include/miopen/version.h`` (``$ROCM_PATH/miopen/include/...`` in older
trees), as MITuna stores it and as the worker's environment check compares it (a git hash in
practice). A build whose tweak is empty is named by ``MAJOR.MINOR.PATCH`` instead.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tuna.errors import BadInput, NotFound
from tuna.library import SessionInfo
from tuna.miopen.tables import session

LIST_HINT = "create one with: ./go_fish.py miopen --init_session -l LABEL"
VERSION_HEADERS = ("include/miopen/version.h", "miopen/include/miopen/version.h")
_DEFINE = re.compile(r"^\s*#\s*define\s+MIOPEN_VERSION_(MAJOR|MINOR|PATCH|TWEAK)\b[ \t]*(\S*)", re.MULTILINE)


@dataclass(frozen=True)
class SessionValues:
    arch: str
    num_cu: int
    rocm_v: str
    miopen_v: str
    reason: str
    ticket: str = "N/A"
    docker: str = "miopentuna"


def miopen_version(rocm_path: Path) -> str:
    """The MIOpen version a session records, from version.h under ``rocm_path``."""
    for relative in VERSION_HEADERS:
        header = rocm_path / relative
        try:
            text = header.read_text(errors="replace")
        except OSError:
            continue
        parts = dict(_DEFINE.findall(text))
        if parts.get("TWEAK"):
            return parts["TWEAK"]
        if all(parts.get(k) for k in ("MAJOR", "MINOR", "PATCH")):
            return f"{parts['MAJOR']}.{parts['MINOR']}.{parts['PATCH']}"
        raise BadInput(f"{header} defines neither MIOPEN_VERSION_TWEAK nor MIOPEN_VERSION_MAJOR/MINOR/PATCH")
    tried = " or ".join(str(rocm_path / r) for r in VERSION_HEADERS)
    raise BadInput(f"cannot read the MIOpen version from {tried}; set ROCM_PATH")


def find_session(conn: Connection, session_id: int) -> SessionInfo | None:
    row = conn.execute(sa.select(session).where(session.c.id == session_id)).mappings().first()
    if row is None:
        return None
    return SessionInfo(id=int(row["id"]), arch=row["arch"], num_cu=int(row["num_cu"]), row=dict(row))


def get_session(conn: Connection, session_id: int) -> SessionInfo:
    found = find_session(conn, session_id)
    if found is None:
        raise NotFound("session", session_id, LIST_HINT)
    return found


def add_session(conn: Connection, values: SessionValues) -> tuple[int, bool]:
    """The id of the session with these values (its unique key), and whether it is new."""
    fields = asdict(values)
    existing = conn.execute(sa.select(session.c.id).where(*[session.c[k] == v for k, v in fields.items()])).scalar()
    if existing is not None:
        return int(existing), False
    key = conn.execute(sa.insert(session).values(**fields)).inserted_primary_key
    assert key is not None
    return int(key[0]), True
