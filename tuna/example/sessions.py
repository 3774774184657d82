"""Example sessions: creating one (``--init_session``) and finding one by id."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tuna.errors import NotFound
from tuna.example.tables import session_example
from tuna.library import SessionInfo

LIST_HINT = "create one with: ./go_fish.py example --init_session -l LABEL"


@dataclass(frozen=True)
class SessionValues:
    arch: str
    num_cu: int
    rocm_v: str
    reason: str
    ticket: str = "N/A"
    docker: str = "miopentuna"


def find_session(conn: Connection, session_id: int) -> SessionInfo | None:
    row = conn.execute(sa.select(session_example).where(session_example.c.id == session_id)).mappings().first()
    if row is None:
        return None
    return SessionInfo(id=int(row["id"]), arch=row["arch"], num_cu=int(row["num_cu"]), row=dict(row))


def get_session(conn: Connection, session_id: int) -> SessionInfo:
    session = find_session(conn, session_id)
    if session is None:
        raise NotFound("session_example", session_id, LIST_HINT)
    return session


def add_session(conn: Connection, values: SessionValues) -> tuple[int, bool]:
    """The id of the session with these values, and whether it was created now."""
    c = session_example.c
    existing = conn.execute(
        sa.select(c.id).where(
            c.arch == values.arch,
            c.num_cu == values.num_cu,
            c.rocm_v == values.rocm_v,
            c.reason == values.reason,
            c.docker == values.docker,
        )
    ).scalar()
    if existing is not None:
        return int(existing), False
    result = conn.execute(sa.insert(session_example).values(**values.__dict__))
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0]), True
