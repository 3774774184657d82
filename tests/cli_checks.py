"""Checks shared by the bad-input and schema tests: run a command that must refuse, read
its one-line error, and snapshot every table to prove that nothing changed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import ROOT, TunaEnv

from tuna.db.engine import MYSQL_UNKNOWN_DATABASE, mysql_error_code

LOAD_JOB = "tuna/example/load_job.py"
#: A worker launch that wrongly starts would block; it gets this long to refuse.
REFUSE_TIMEOUT_S = 60

Snapshot = dict[str, list[tuple[Any, ...]]] | None


def run(
    env: TunaEnv, *args: str, script: str = "go_fish.py", extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Like ``env.run``, but a command that does not exit in time (a worker launch that
    should have been refused) is stopped with its whole process group, and fails the test."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / script), *args],
        env={**env.vars, **(extra_env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=env.home,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=REFUSE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM first: a worker launcher then stops the Celery workers it started.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=30)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        pytest.fail(f"{args} was still running after {REFUSE_TIMEOUT_S} s instead of refusing")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def one_line_error(proc: subprocess.CompletedProcess[str], exit_code: int) -> str:
    """The single line on stderr, after checking the exit code and that it is alone."""
    shown = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == exit_code, shown
    assert "Traceback" not in proc.stderr + proc.stdout, shown
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, shown
    assert "error:" in lines[0], shown
    return lines[0]


def snapshot(env: TunaEnv) -> Snapshot:
    """Every row of every table; None when the MySQL database does not exist at all."""
    engine = env.engine()
    try:
        with engine.connect() as conn:
            quote = conn.dialect.identifier_preparer.quote
            return {
                name: [tuple(row) for row in conn.execute(sa.text(f"SELECT * FROM {quote(name)} ORDER BY 1"))]
                for name in sorted(sa.inspect(conn).get_table_names())
            }
    except sa.exc.OperationalError as exc:
        if mysql_error_code(exc) == MYSQL_UNKNOWN_DATABASE:
            return None
        raise
    finally:
        engine.dispose()
