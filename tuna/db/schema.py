"""Creating tables (``--add_tables``) and refusing a database whose schema is behind.

``--add_tables`` creates what is missing and stamps the Alembic head, so that a database
made either way (``--add_tables`` or ``alembic upgrade head``) is the same and upgrades
the same way afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL

from alembic import command
from tuna.db.engine import MYSQL_UNKNOWN_DATABASE, Database, make_engine, mysql_error_code, unavailable
from tuna.db.tables import CORE_TABLES, metadata
from tuna.errors import SchemaMismatch

#: alembic.ini and alembic/ live at the top of the source tree.
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(db: Database) -> Config | None:
    ini = SOURCE_ROOT / "alembic.ini"
    if not ini.exists():
        return None
    config = Config(str(ini))
    config.set_main_option("script_location", str(SOURCE_ROOT / "alembic"))
    config.attributes["tuna_url"] = db.url
    return config


def head_revision(db: Database) -> str | None:
    config = alembic_config(db)
    return ScriptDirectory.from_config(config).get_current_head() if config else None


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
        raise unavailable(db.url, exc) from None
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
            refuse_other_revision(db, MigrationContext.configure(conn).get_current_revision())
            metadata.create_all(conn, tables=wanted, checkfirst=True)
    except sa.exc.DBAPIError as exc:
        raise unavailable(db.url, exc) from None
    config = alembic_config(db)
    if config is not None:
        with db.begin() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            if current is None:
                config.attributes["connection"] = conn
                command.stamp(config, "head")
    return [t.name for t in wanted if t.name not in existing]


def check_schema(db: Database, tables: Sequence[sa.Table], *, command_hint: str) -> None:
    """Refuse to work on a database without these tables or behind the code's schema."""
    try:
        with db.begin() as conn:
            existing = set(sa.inspect(conn).get_table_names())
            current = MigrationContext.configure(conn).get_current_revision()
    except sa.exc.DBAPIError as exc:
        if mysql_error_code(exc) == MYSQL_UNKNOWN_DATABASE:
            raise SchemaMismatch(
                f"database {db.url.database!r} does not exist; create it with: {command_hint}"
            ) from None
        raise unavailable(db.url, exc) from None
    missing = [t.name for t in (*CORE_TABLES, *tables) if t.name not in existing]
    if missing:
        raise SchemaMismatch(f"missing tables {', '.join(missing)}; create them with: {command_hint}")
    refuse_other_revision(db, current)


def refuse_other_revision(db: Database, current: str | None) -> None:
    """A database stamped with another Alembic revision than this code's head is refused."""
    head = head_revision(db)
    if head is not None and current is not None and current != head:
        raise SchemaMismatch(
            f"database schema is at revision {current}, this tuna needs {head}; "
            f"upgrade it with: alembic upgrade head (run in {SOURCE_ROOT})"
        )
