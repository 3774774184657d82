#!/usr/bin/env python3
"""Add Example jobs to a session: ``load_job.py -l LABEL --session_id S [-a ARCH -n CU] [--count N]``.

Prints ``New jobs added: N``. Running the same command again adds nothing: a job is
unique by (reason, session). ``--count N`` adds N jobs in one call, with reasons
``LABEL#1`` ... ``LABEL#N`` (a head node's ``-l LABEL`` takes those too).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import Connection

if __package__ in (None, ""):  # run as a script: make the checkout importable
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tuna.cli import OneLineParser, run_cli
from tuna.config import load_settings
from tuna.db.engine import Database
from tuna.db.schema import check_schema
from tuna.errors import BadInput
from tuna.example.library import ADD_TABLES_HINT, ExampleLibrary, add_arch_arguments, check_arch
from tuna.example.sessions import get_session
from tuna.example.tables import job
from tuna.jobs import chunks

log = logging.getLogger("tuna.example.load_job")

REASON_LENGTH = 60
INSERT_CHUNK = 5000


def job_reasons(label: str, count: int | None) -> list[str]:
    reasons = [label] if count is None else [f"{label}#{i}" for i in range(1, count + 1)]
    longest = max(reasons, key=len)
    if len(longest) > REASON_LENGTH:
        raise BadInput(f"job reason {longest[:20]!r}... is longer than {REASON_LENGTH} characters; use a shorter label")
    return reasons


def add_jobs_without_commit(conn: Connection, session_id: int, reasons: Sequence[str]) -> int:
    """Insert one ``new`` job per reason, skipping those the session already has."""
    count = sa.select(sa.func.count()).select_from(job).where(job.c.session == session_id)
    before = conn.execute(count).scalar_one()
    # Only a duplicate is skipped: INSERT IGNORE would also cut a value too long for its
    # column, silently, and turn other errors into warnings.
    insert = (
        mysql.insert(job).on_duplicate_key_update(id=job.c.id)
        if conn.dialect.name == "mysql"
        else sqlite.insert(job).on_conflict_do_nothing()
    )
    for part in chunks(list(reasons), INSERT_CHUNK):
        conn.execute(insert, [{"session": session_id, "reason": reason, "state": "new"} for reason in part])
    return int(conn.execute(count).scalar_one()) - int(before)


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="load_job.py", description="Add Example jobs to a tuning session.")
    add_arch_arguments(p)
    p.add_argument("-l", "--label", required=True, help="job reason (the session's label, usually)")
    p.add_argument("--session_id", type=int, required=True, help="session to add the jobs to")
    p.add_argument("--count", type=int, metavar="N", help="add N jobs at once: reasons LABEL#1 .. LABEL#N")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.count is not None and args.count < 1:
        raise BadInput(f"--count must be at least 1, got {args.count}")
    reasons = job_reasons(args.label, args.count)
    settings = load_settings()
    db = Database(settings)
    check_schema(db, ExampleLibrary.tables, command_hint=ADD_TABLES_HINT)
    with db.begin() as conn:
        session = get_session(conn, args.session_id)
        check_arch(session, args.arch, args.num_cu)
        added = add_jobs_without_commit(conn, session.id, reasons)
    if added < len(reasons):
        log.warning("%d of %d jobs already existed in session %d", len(reasons) - added, len(reasons), session.id)
    print(f"New jobs added: {added}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
