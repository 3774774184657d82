"""One schema, however it was made: ``--add_tables`` (twice) and ``alembic upgrade head`` on
an empty database give the same tables, columns, keys and indexes, both at the head
revision; and a database at a revision this code does not know is refused."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from cli_checks import LOAD_JOB, one_line_error, run, snapshot
from conftest import MYSQL_URL, ROOT, TunaEnv

from tuna.db.schema import SCHEMA_REVISION
from tuna.errors import EXIT_SCHEMA
from tuna.library import get_library

ALEMBIC_INI = ROOT / "alembic.ini"
TABLES = {"alembic_version", "machine", "worker", "job_attempt", "session_example", "job"}


def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(Config(str(ALEMBIC_INI)))


def head_revision(branch: str = "example") -> str:
    """The head of a branch: Example's tables are in the core's chain (label ``example``)."""
    head = script().get_revision(f"{branch}@head")
    assert head is not None
    return head.revision


def alembic(env: TunaEnv, *args: str) -> subprocess.CompletedProcess[str]:
    """``alembic`` as an operator runs it, on the database the env's TUNA_* variables name."""
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ALEMBIC_INI), *args],
        env=env.vars,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=env.home,
    )


def schema(env: TunaEnv) -> dict[str, dict[str, Any]]:
    """What SQLAlchemy's inspector sees, in a form that compares across databases."""
    engine = env.engine()
    try:
        inspector = sa.inspect(engine)
        found: dict[str, dict[str, Any]] = {}
        for table in sorted(inspector.get_table_names()):
            columns = [
                (
                    c["name"],
                    c["type"].compile(dialect=engine.dialect),  # ENUM('new', ...) with its values
                    c["nullable"],
                    c.get("default"),
                    c.get("autoincrement"),
                )
                for c in inspector.get_columns(table)
            ]
            found[table] = {
                "columns": columns,
                "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
                "unique": sorted(
                    (u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)
                ),
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)
                ),
                "foreign_keys": sorted(
                    (
                        f["name"] or "",
                        tuple(f["constrained_columns"]),
                        f["referred_table"],
                        tuple(f["referred_columns"]),
                    )
                    for f in inspector.get_foreign_keys(table)
                ),
                "options": inspector.get_table_options(table),
            }
        return found
    finally:
        engine.dispose()


@pytest.fixture
def alembic_env(tuna_env: TunaEnv) -> Iterator[TunaEnv]:
    """A second, empty database next to ``tuna_env``'s, for ``alembic upgrade head``."""
    home = tuna_env.home.parent / "alembic_home"
    home.mkdir()
    env_vars = {**tuna_env.vars, "TUNA_HOME": str(home)}
    db_name = None
    if tuna_env.kind == "services":
        db_name = f"{tuna_env.vars['TUNA_DB_NAME']}_alembic"
        env_vars["TUNA_DB_NAME"] = db_name
    try:
        yield TunaEnv(tuna_env.kind, env_vars, home)
    finally:
        if db_name:
            engine = sa.create_engine(MYSQL_URL)
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{db_name}`"))
            engine.dispose()


def test_add_tables_twice_and_alembic_upgrade_give_the_same_schema(tuna_env: TunaEnv, alembic_env: TunaEnv) -> None:
    assert tuna_env.ok("example", "--add_tables").startswith("Created tables:")
    assert tuna_env.ok("example", "--add_tables").strip() == "All tables already exist"
    upgrade = alembic(alembic_env, "upgrade", "example@head")
    assert upgrade.returncode == 0, upgrade.stderr

    made_by_add_tables, made_by_alembic = schema(tuna_env), schema(alembic_env)

    assert set(made_by_add_tables) == TABLES
    assert made_by_add_tables == made_by_alembic
    head = head_revision()
    for env in (tuna_env, alembic_env):
        assert env.query("SELECT version_num FROM alembic_version") == [(head,)]
        current = alembic(env, "current")
        assert current.returncode == 0 and f"{head} (head)" in current.stdout, current.stderr


def test_either_database_then_accepts_the_other_tool_unchanged(tuna_env: TunaEnv, alembic_env: TunaEnv) -> None:
    tuna_env.ok("example", "--add_tables")
    assert alembic(alembic_env, "upgrade", "example@head").returncode == 0
    before = schema(tuna_env)

    assert alembic(tuna_env, "upgrade", "example@head").returncode == 0
    assert alembic_env.ok("example", "--add_tables").strip() == "All tables already exist"

    assert schema(tuna_env) == before == schema(alembic_env)
    assert tuna_env.query("SELECT version_num FROM alembic_version") == [(head_revision(),)]
    # And the alembic-made database is one tuna works with.
    assert alembic_env.setup_session(jobs=2, label="after-alembic") == 1


@pytest.mark.parametrize("command", ["status", "execute", "worker", "init_session", "load_job", "add_tables"])
def test_a_database_at_an_unknown_revision_is_refused_with_the_upgrade_command(tuna_env: TunaEnv, command: str) -> None:
    session = tuna_env.setup_session(jobs=2)
    engine = tuna_env.engine()
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0000feedbeef'"))
    engine.dispose()
    before = snapshot(tuna_env)
    s = str(session)
    script, args = {
        "status": ("go_fish.py", ["example", "--session_id", s, "--status"]),
        "execute": ("go_fish.py", ["example", "--session_id", s, "--execute"]),
        "worker": ("go_fish.py", ["example", "--session_id", s]),
        "init_session": ("go_fish.py", ["example", "--init_session", "-l", "other"]),
        "load_job": (LOAD_JOB, ["-l", "other", "--session_id", s]),
        "add_tables": ("go_fish.py", ["example", "--add_tables"]),
    }[command]

    proc = run(tuna_env, *args, script=script)

    line = one_line_error(proc, EXIT_SCHEMA)
    assert "0000feedbeef" in line and "alembic upgrade head" in line
    assert snapshot(tuna_env) == before


def test_the_code_expects_the_heads_of_the_migrations() -> None:
    # Commands check a database's stamps against these constants without loading Alembic.
    assert head_revision("core") == head_revision("example") == SCHEMA_REVISION
    miopen = get_library("miopen").schema_revision
    assert head_revision("miopen") == miopen
    assert set(script().get_heads()) == {SCHEMA_REVISION, miopen}
