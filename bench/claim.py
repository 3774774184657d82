#!/usr/bin/env python3
"""Cost of claiming a batch as the job table grows, and of loading jobs.

For each table size T: a fresh MariaDB database whose job table holds T rows, all but one
session's finished (``completed``, each with a result), plus one session with 2,000 ``new``
jobs. Prints the time to load the rows and the median time of claiming one batch
(TUNA_CELERY_JOB_BATCH_SIZE, default 1,000) from that session, each claim rolled back so
that every repetition claims the same batch.

    python bench/claim.py 1000 1000000
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import sqlalchemy as sa

from tuna.config import load_settings
from tuna.db.engine import Database
from tuna.db.schema import create_tables
from tuna.example.library import EXAMPLE_STEP, ExampleLibrary
from tuna.example.load_job import add_jobs_without_commit
from tuna.example.sessions import SessionValues, add_session
from tuna.example.tables import job
from tuna.jobs import Scope, claim_jobs_without_commit

TARGET_NEW_JOBS = 2000
SESSION_SIZE = 100_000
REPEATS = 7
INSERT_CHUNK = 2000
RESULT_TEXT = "x" * 2000  # finished rows carry a result, as in real tables


def fill(db: Database, rows: int) -> int:
    """Finished sessions up to ``rows`` jobs in all, then one session of new jobs; returns its id."""
    left = rows - TARGET_NEW_JOBS
    number = 0
    while left > 0:
        size = min(SESSION_SIZE, left)
        with db.begin() as conn:
            session, _ = add_session(conn, SessionValues("gfx90a", 104, "6.2", f"done{number}"))
            for start in range(0, size, INSERT_CHUNK):
                rows = [
                    {"session": session, "reason": f"j{i}", "state": "completed", "result": RESULT_TEXT}
                    for i in range(start, min(size, start + INSERT_CHUNK))
                ]
                conn.execute(sa.insert(job), rows)
        left -= size
        number += 1
    with db.begin() as conn:
        target, _ = add_session(conn, SessionValues("gfx90a", 104, "6.2", "target"))
        add_jobs_without_commit(conn, target, [f"t{i}" for i in range(TARGET_NEW_JOBS)])
    return target


def claim_ms(db: Database, session: int, batch: int) -> float:
    scope = Scope(job, session)
    times = []
    for _ in range(REPEATS):
        conn = db.engine.connect()
        tx = conn.begin()
        start = time.perf_counter()
        claimed = claim_jobs_without_commit(conn, scope, EXAMPLE_STEP, batch)
        times.append((time.perf_counter() - start) * 1000)
        assert len(claimed) == batch
        tx.rollback()
        conn.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", type=int, default=[1000, 1_000_000])
    args = parser.parse_args()
    print(f"{'rows in job':>12} {'fill s':>8} {'claim ms (median)':>18} {'batch':>6}")
    for rows in args.sizes:
        name = f"tuna_claim_{uuid.uuid4().hex[:8]}"
        settings = load_settings(
            {"TUNA_DB_HOSTNAME": "127.0.0.1", "TUNA_DB_NAME": name, "TUNA_HOME": "/tmp/tuna-bench-claim"}
        )
        db = Database(settings)
        try:
            create_tables(db, ExampleLibrary.tables)
            start = time.perf_counter()
            session = fill(db, rows)
            fill_s = time.perf_counter() - start
            ms = claim_ms(db, session, settings.job_batch_size)
            print(f"{rows:>12} {fill_s:>8.1f} {ms:>18.1f} {settings.job_batch_size:>6}", flush=True)
        finally:
            with db.begin() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
            db.dispose()


if __name__ == "__main__":
    main()
