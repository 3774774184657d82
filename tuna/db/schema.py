"""Creating tables (``--add_tables``) and refusing a database whose schema is behind.

``--add_tables`` creates what is missing and stamps the Alembic head revision, so that a
database made either way (``--add_tables`` or ``alembic upgrade head``) is the same and
upgrades the same way afterwards. Commands check the stamp against
:data:`SCHEMA_REVISION` without loading Alembic, which keeps every command's start quick;
a test holds that constant to the head of ``alembic/versions``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection

from tuna.db.engine import MYSQL_UNKNOWN_DATABASE, Database, database_error, make_engine, mysql_error_code
from tuna.db.tables import CORE_TABLES, metadata
from tuna.errors import SchemaMismatch

#: The Alembic revision this code's tables correspond to (the head of alembic/versions).
SCHEMA_REVISION = "0001"
#: alembic.ini and alembic/ live at the top of the source tree.
SOURCE_ROOT = Path(__file__).resolve().parents[2]

# Alembic's own bookkeeping table, defined as Alembic defines it.
_alembic_version = sa.Table(
    "alembic_version",
    sa.MetaData(),
    sa.Column("version_num", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


def current_revision(conn: Connection) -> str | None:
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(sa.select(_alembic_version.c.version_num)).scalar()


def ensure_database(db: Database) -> None:
    """Create the MySQL database itself when it does not exist yet."""
    if db.dialect != "mysql":
        return
    url = db.url
    server = make_engine(URL.create(url.drivername, url.username, url.password, url.host, url.port, query=url.query))
    name = db.url.database or ""
    try:
        with server.begin() as conn:
            quoted = conn.dialect.identifier_preparer.quote(name)
            conn.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS {quoted} CHARACTER SET utf8mb4"))
    except sa.exc.DBAPIError as exc:
        raise database_error(db.url, exc) from None
    finally:
        server.dispose()


def create_tables(db: Database, tables: Sequence[sa.Table]) -> list[str]:
    """Create the core tables and ``tables`` where missing; returns the names created."""
    ensure_database(db)
    wanted = [*CORE_TABLES, *tables]
    try:
        with db.begin() as conn:
            existing = set(sa.inspect(conn).get_table_names())
            # Today's tables next to an older schema's would be a mix no migration expects.
            current = current_revision(conn)
            refuse_other_revision(current)
            metadata.create_all(conn, tables=wanted, checkfirst=True)
            if current is None:  # what `alembic stamp head` does on a fresh database
                _alembic_version.create(conn, checkfirst=True)
                conn.execute(sa.insert(_alembic_version).values(version_num=SCHEMA_REVISION))
    except sa.exc.DBAPIError as exc:
        raise database_error(db.url, exc) from None
    return [t.name for t in wanted if t.name not in existing]


def check_schema(db: Database, tables: Sequence[sa.Table], *, command_hint: str) -> None:
    """Refuse to work on a database without these tables or behind the code's schema."""
    try:
        with db.begin() as conn:
            existing = set(sa.inspect(conn).get_table_names())
            current = current_revision(conn)
    except sa.exc.DBAPIError as exc:
        if mysql_error_code(exc) == MYSQL_UNKNOWN_DATABASE:
            raise SchemaMismatch(
                f"database {db.url.database!r} does not exist; create it with: {command_hint}"
            ) from None
        raise database_error(db.url, exc) from None
    missing = [t.name for t in (*CORE_TABLES, *tables) if t.name not in existing]
    if missing:
        raise SchemaMismatch(f"missing tables {', '.join(missing)}; create them with: {command_hint}")
    refuse_other_revision(current)


def refuse_other_revision(current: str | None) -> None:
    """A database stamped with another Alembic revision than this code's head is refused."""
    if current is not None and current != SCHEMA_REVISION:
        raise SchemaMismatch(
            f"database schema is at revision {current}, this tuna needs {SCHEMA_REVISION}; "
            f"upgrade it with: alembic upgrade head (run in {SOURCE_ROOT})"
        )
