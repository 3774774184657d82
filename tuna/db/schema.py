"""Creating tables (``--add_tables``) and refusing a database whose schema is behind.

The migrations in alembic/versions form branches: the core's chain (``0001`` ... , branch
labels ``core`` and ``example``: Example's tables are in the core's base revision) and one
independent branch per library that has tables of its own (``miopen_0001`` ..., label
``miopen``). ``alembic_version`` therefore holds one
row per branch head, and each library upgrades on its own (``alembic upgrade miopen@head``).
A library's branch does not ``depends_on`` the core's: Alembic would fold the core's row
into the library's, and the stamps would no longer name the core's revision.

``--add_tables`` creates what is missing and stamps the core's revision and the library's
own (:attr:`tuna.library.Library.schema_revision`), so that a database made either way
(``--add_tables`` or ``alembic upgrade``) is the same and upgrades the same way afterwards.
Commands check the stamps without loading Alembic, which keeps every command's start
quick; a test holds these constants to the heads of alembic/versions.

A revision's branch is read from its id: a library's revisions are ``<label>_<NNNN>``, the
core's have no ``_``. This is how a stamp of the library's own branch at another revision
is told from another library's stamp without loading Alembic.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection

from tuna.db.engine import MYSQL_UNKNOWN_DATABASE, Database, database_error, make_engine, mysql_error_code
from tuna.db.tables import CORE_TABLES, metadata
from tuna.errors import SchemaMismatch

#: The Alembic revision the core's tables correspond to (the head of the core's chain).
SCHEMA_REVISION = "0003"
#: alembic.ini and alembic/ live at the top of the source tree.
SOURCE_ROOT = Path(__file__).resolve().parents[2]

# Alembic's own bookkeeping table, defined as Alembic defines it.
_alembic_version = sa.Table(
    "alembic_version",
    sa.MetaData(),
    sa.Column("version_num", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


def branch_of(revision: str) -> str:
    """The branch a revision id belongs to: ``miopen`` for ``miopen_0001``, else ``core``."""
    label, sep, _ = revision.rpartition("_")
    return label if sep else "core"


def current_revisions(conn: Connection) -> set[str]:
    """The stamped branch heads; empty when the database has never been stamped."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return set()
    return {str(r) for r in conn.execute(sa.select(_alembic_version.c.version_num)).scalars()}


def needed_revisions(revision: str | None) -> list[str]:
    """The stamps a library's tables need: the core's, and the library's own branch head."""
    return [SCHEMA_REVISION] + ([revision] if revision and revision != SCHEMA_REVISION else [])


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


def create_tables(db: Database, tables: Sequence[sa.Table], *, revision: str | None = None) -> list[str]:
    """Create the core tables and ``tables`` where missing; returns the names created.

    ``revision`` is the library's own branch head (None: its tables are in the core's
    chain); it is stamped next to the core's revision, as ``alembic upgrade`` would.
    """
    ensure_database(db)
    wanted = [*CORE_TABLES, *tables]
    try:
        with db.begin() as conn:
            existing = set(sa.inspect(conn).get_table_names())
            # Today's tables next to an older schema's would be a mix no migration expects.
            current = current_revisions(conn)
            refuse_other_revision(current, revision, creating=True)
            metadata.create_all(conn, tables=list(CORE_TABLES), checkfirst=True)
            # A library's tables may live on a MetaData of their own (MIOpen's do).
            for table in tables:
                table.create(conn, checkfirst=True)
            missing = [r for r in needed_revisions(revision) if r not in current]
            if missing:  # what `alembic stamp` does for each branch head
                _alembic_version.create(conn, checkfirst=True)
                conn.execute(sa.insert(_alembic_version), [{"version_num": r} for r in missing])
    except sa.exc.DBAPIError as exc:
        raise database_error(db.url, exc) from None
    return [t.name for t in wanted if t.name not in existing]


def check_schema(db: Database, tables: Sequence[sa.Table], *, command_hint: str, revision: str | None = None) -> None:
    """Refuse to work on a database without these tables or behind the code's schema."""
    try:
        with db.begin() as conn:
            existing = set(sa.inspect(conn).get_table_names())
            current = current_revisions(conn)
    except sa.exc.DBAPIError as exc:
        if mysql_error_code(exc) == MYSQL_UNKNOWN_DATABASE:
            raise SchemaMismatch(
                f"database {db.url.database!r} does not exist; create it with: {command_hint}"
            ) from None
        raise database_error(db.url, exc) from None
    missing = [t.name for t in (*CORE_TABLES, *tables) if t.name not in existing]
    if missing:
        raise SchemaMismatch(f"missing tables {', '.join(missing)}; create them with: {command_hint}")
    refuse_other_revision(current, revision)


def refuse_other_revision(stamps: set[str], revision: str | None = None, *, creating: bool = False) -> None:
    """Refuse a database whose stamps are not the heads this code needs.

    An unstamped database (made before tuna stamped) passes. When creating tables, a
    library whose branch has no stamp yet passes too: its tables are about to be made.
    """
    if not stamps:
        return
    for needed in needed_revisions(revision):
        if needed in stamps:
            continue
        branch = branch_of(needed)
        same_branch = sorted(r for r in stamps if branch_of(r) == branch)
        if creating and not same_branch and branch != "core":
            continue
        at = ", ".join(same_branch or sorted(stamps))
        raise SchemaMismatch(
            f"database schema is at revision {at}, this tuna needs {needed}; "
            f"upgrade it with: alembic upgrade heads (run in {SOURCE_ROOT})"
        )
