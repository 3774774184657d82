"""SQL writes on the real MariaDB (and SQLite where it applies): only duplicates are
ignored, job rows are updated without an insert, a result too large for the server is
cut with a note, one outcome that cannot be stored errors only its job, a busy database
is told apart from an unreachable one, and a schema error names the server's error."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import TunaEnv
from sqlalchemy.engine import Connection

from tuna.db.engine import Database, transaction
from tuna.db.tables import job_attempt, job_columns
from tuna.errors import EXIT_JOBS_FAILED, DatabaseBusy
from tuna.example.library import EXAMPLE_STEP, ExampleLibrary
from tuna.example.load_job import add_jobs_without_commit
from tuna.example.tables import JOB_STATES, job
from tuna.jobs import Scope, apply_outcomes_without_commit, claim_jobs_without_commit, record_attempts_without_commit
from tuna.library import Step
from tuna.outage import Outage
from tuna.outcomes import apply_outcomes

TEN_MB = 10_000_000


@pytest.fixture
def db(tuna_env: TunaEnv) -> Iterator[Database]:
    """The test's database with tuna's tables and one session, opened in this process."""
    tuna_env.ok("example", "--add_tables")
    tuna_env.ok("example", "--init_session", "-l", "sql")
    database = Database(tuna_env.settings)
    yield database
    database.dispose()


def unshared_session(env: TunaEnv, jobs: int) -> int:
    """A session whose id no other test's database uses at the same time: worker names
    carry the session but not the database, and share the broker."""
    env.ok("example", "--add_tables")
    if env.kind == "services":
        env.query_commit(f"ALTER TABLE session_example AUTO_INCREMENT = {random.randrange(1000, 10**6)}")
    return env.setup_session(jobs=jobs)


def attempt(job_id: int, **changes: Any) -> dict[str, Any]:
    row = {
        "job_table": "job",
        "job_id": job_id,
        "attempt": 1,
        "session": 1,
        "step": "example",
        "outcome": "completed",
        "hostname": "host-a",
        "machine_id": -1,
        "gpu_id": 0,
        "started": None,
        "ended": None,
        "exit_status": 0,
        "reason": None,
    }
    return row | changes


def claimed(db: Database, count: int) -> list[int]:
    with db.begin() as conn:
        add_jobs_without_commit(conn, 1, [f"j{i}" for i in range(count)])
        return claim_jobs_without_commit(conn, Scope(job, 1), EXAMPLE_STEP, count)


def ok(job_id: int, result: str = "output") -> dict[str, Any]:
    return {"job_id": job_id, "attempt": 1, "ok": True, "result": result, "hostname": "host-a", "gpu_id": 0}


def test_a_second_attempt_record_is_ignored_and_nothing_else(db: Database) -> None:
    with db.begin() as conn:
        record_attempts_without_commit(conn, [attempt(1, hostname="first")])
        record_attempts_without_commit(conn, [attempt(1, hostname="second"), attempt(2)])
    with db.begin() as conn:
        rows = conn.execute(sa.select(job_attempt.c.job_id, job_attempt.c.hostname).order_by("job_id")).all()
    assert [tuple(r) for r in rows] == [(1, "first"), (2, "host-a")]


@pytest.mark.parametrize("tuna_env", ["services"], indirect=True)
def test_a_value_too_long_for_its_column_is_an_error_not_cut(db: Database) -> None:
    with pytest.raises(sa.exc.DataError, match="1406"), db.begin() as conn:
        record_attempts_without_commit(conn, [attempt(1, hostname="h" * 300)])
    with pytest.raises(sa.exc.DataError, match="1406"), db.begin() as conn:
        add_jobs_without_commit(conn, 1, ["r" * 70])
    with db.begin() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(job_attempt)).scalar() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(job)).scalar() == 0
        # A duplicate job is still skipped quietly.
        assert add_jobs_without_commit(conn, 1, ["same", "same"]) == 1


@pytest.mark.parametrize("tuna_env", ["services"], indirect=True)
def test_outcomes_are_written_to_a_job_table_with_a_not_null_column_without_default(db: Database) -> None:
    # MIOpen's conv_job.config is NOT NULL without a default.
    meta = sa.MetaData()
    sa.Table("session_example", meta, sa.Column("id", sa.Integer, primary_key=True))
    conv_job = sa.Table(
        "conv_job", meta, *job_columns("session_example", JOB_STATES), sa.Column("config", sa.Integer, nullable=False)
    )
    with db.begin() as conn:
        conv_job.create(conn)
        conn.execute(sa.insert(conv_job), [{"session": 1, "config": 7, "reason": f"c{i}"} for i in range(3)])
        ids = claim_jobs_without_commit(conn, Scope(conv_job, 1), EXAMPLE_STEP, 3)
        apply_outcomes_without_commit(conn, Scope(conv_job, 1), EXAMPLE_STEP, [ok(i) for i in ids], max_retries=3)
    with db.begin() as conn:
        rows = conn.execute(sa.select(conv_job.c.state, conv_job.c.result, conv_job.c.config)).all()
    assert [tuple(r) for r in rows] == [("completed", "output", 7)] * 3


class HookFails(ExampleLibrary):
    """A library whose result-storing hook raises on one result."""

    def store_results_without_commit(self, conn: Connection, step: Step, outcomes: Sequence[Mapping[str, Any]]) -> None:
        for o in outcomes:
            if o["result"] == "poison":
                raise ValueError("cannot parse 'poison'")


def test_a_hook_that_raises_errors_only_its_own_job(db: Database) -> None:
    ids = claimed(db, 5)
    outcomes = [ok(i, "poison" if i == ids[2] else "fine") for i in ids]
    applied = apply_outcomes(db, Scope(job, 1), EXAMPLE_STEP, HookFails(), outcomes, 3)
    assert sorted(o["job_id"] for o in applied) == ids
    with db.begin() as conn:
        rows = dict(conn.execute(sa.select(job.c.id, sa.cast(job.c.state, sa.String) + ":" + job.c.result)).all())
        recorded = conn.execute(sa.select(sa.func.count()).select_from(job_attempt)).scalar()
    assert rows.pop(ids[2]) == "errored:its outcome could not be stored: ValueError: cannot parse 'poison'"
    assert set(rows.values()) == {"completed:fine"}
    assert recorded == 5


@pytest.mark.parametrize("tuna_env", ["services"], indirect=True)
@pytest.mark.parametrize("how", ["--execute", "--enqueue_only"])
def test_a_result_of_10_mb_is_cut_with_a_note_and_every_job_ends(tuna_env: TunaEnv, how: str) -> None:
    env = tuna_env
    session = unshared_session(env, jobs=3)
    (packet,) = env.query("SELECT @@max_allowed_packet")[0]
    assert packet < 2 * TEN_MB  # sent whole, as a hex literal, it would not fit the server's packet
    big = {"FAKE_ROCMINFO_BIG_BYTES": str(TEN_MB), "SLURM_CPUS_ON_NODE": "2", "TUNA_MAX_BUNDLE": "1"}
    if how == "--enqueue_only":
        env.start_worker(session, extra_env=big)
    started = time.monotonic()
    proc = env.run("example", "--session_id", str(session), how, extra_env={**big, "TUNA_GPU_ID": "0"}, timeout=300)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    rows = env.query("SELECT state, LENGTH(result), result FROM job WHERE session = :s", s=session)
    assert [r[0] for r in rows] == ["completed"] * 3
    for _, length, result in rows:
        assert length < packet // 2
        assert result.startswith("x" * 1000) and result.endswith("*** Done ***")
        assert "bytes cut ...]" in result
    print(f"3 jobs of 10 MB output through {how}: {took:.1f} s")


@pytest.mark.parametrize("tuna_env", ["services"], indirect=True)
def test_a_result_the_server_refuses_errors_only_its_job_under_a_head_node(tuna_env: TunaEnv) -> None:
    env = tuna_env
    session = unshared_session(env, jobs=6)
    (poisoned,) = env.query("SELECT id FROM job WHERE session = :s ORDER BY id LIMIT 1 OFFSET 3", s=session)[0]
    env.query_commit(
        f"CREATE TRIGGER refuse BEFORE UPDATE ON job FOR EACH ROW "
        f"IF NEW.id = {int(poisoned)} AND NEW.state = 'completed' THEN "
        f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by a trigger'; END IF"
    )
    env.start_worker(session)
    proc = env.run("example", "--session_id", str(session), "--enqueue_only")
    assert proc.returncode == EXIT_JOBS_FAILED, proc.stderr  # the run ended; one of its jobs failed
    assert "completed 5" in proc.stdout and "errored 1" in proc.stdout
    rows = dict(env.query("SELECT id, CONCAT(state, ':', result) FROM job WHERE session = :s", s=session))
    assert rows[poisoned] == "errored:its outcome could not be stored: MySQL error 1644: refused by a trigger"


@pytest.mark.parametrize("tuna_env", ["services"], indirect=True)
def test_lock_wait_timeout_and_deadlock_are_database_busy(db: Database) -> None:
    claimed(db, 4)
    other = db.engine.connect()
    other.begin()
    try:
        for job_id in (1, 3, 4):  # one by one: a tiny table's IN list is a scan that locks every row
            other.execute(sa.text("UPDATE job SET retries = 1 WHERE id = :id"), {"id": job_id})
        with pytest.raises(DatabaseBusy, match=r"MySQL error 1205: Lock wait timeout"), db.begin() as conn:
            conn.execute(sa.text("SET SESSION innodb_lock_wait_timeout = 1"))
            conn.execute(sa.text("UPDATE job SET retries = 2 WHERE id = 1"))

        # A deadlock: the lighter transaction (tuna's, one row) is the victim.
        caught: list[BaseException] = []
        second = "UPDATE job SET retries = 2 WHERE id = 1"

        def tuna_side() -> None:
            try:
                with db.begin() as conn:
                    conn.execute(sa.text("SET SESSION innodb_lock_wait_timeout = 30"))  # may be the 1 s one
                    conn.execute(sa.text("UPDATE job SET retries = 2 WHERE id = 2"))
                    locked.set()
                    conn.execute(sa.text(second))
            except BaseException as exc:
                caught.append(exc)

        locked = threading.Event()
        thread = threading.Thread(target=tuna_side)
        thread.start()
        assert locked.wait(10), caught
        TunaEnv.wait_for(
            lambda: other.execute(
                sa.text("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = :sql"), {"sql": second}
            ).scalar(),
            what="tuna's transaction to wait for the lock",
            timeout=10,
        )
        other.execute(sa.text("UPDATE job SET retries = 1 WHERE id = 2"))
        thread.join(10)
    finally:
        other.rollback()
        other.close()
    assert len(caught) == 1 and isinstance(caught[0], DatabaseBusy), caught
    assert "MySQL error 1213: Deadlock found" in str(caught[0])
    assert "\n" not in str(caught[0])


@pytest.mark.parametrize("tuna_env", ["embedded"], indirect=True)
def test_a_locked_sqlite_file_is_database_busy(db: Database) -> None:
    holder = db.engine.connect()
    holder.exec_driver_sql("BEGIN EXCLUSIVE")
    impatient = sa.create_engine(db.url, connect_args={"timeout": 0.1})
    try:
        with pytest.raises(DatabaseBusy, match="database is locked"), transaction(impatient) as conn:
            conn.execute(sa.insert(job_attempt), [attempt(1)])
    finally:
        holder.rollback()
        holder.close()
        impatient.dispose()


def test_a_database_busy_for_longer_than_the_setting_is_given_up() -> None:
    outage = Outage(1, busy_max_s=0.3)
    busy = DatabaseBusy("mysql://h/db", "MySQL error 1205: Lock wait timeout exceeded")
    assert outage.failed(busy) <= 1.0
    time.sleep(0.35)
    with pytest.raises(DatabaseBusy, match=r"still busy after 0 s \(TUNA_DB_RETRY_MAX_S\)"):
        outage.failed(busy)


@pytest.mark.parametrize("tuna_env", ["services"], indirect=True)
def test_a_schema_error_names_the_server_error_not_an_unreachable_server(tuna_env: TunaEnv) -> None:
    env = tuna_env
    name = env.settings.db_url.database
    engine = sa.create_engine("mysql+pymysql://root@127.0.0.1:3306")
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
        conn.execute(sa.text(f"CREATE TABLE `{name}`.alembic_version (other INT)"))
    engine.dispose()
    for args in (["--add_tables"], ["--session_id", "1", "--status"]):
        proc = env.run("example", *args)
        assert proc.returncode != 0
        assert "cannot reach" not in proc.stderr and "Traceback" not in proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert "MySQL error 1054: Unknown column 'alembic_version.version_num'" in line, line
