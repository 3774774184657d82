"""One claimer per scope, and the jobs of a killed ``--execute`` given back: on both
backends, with real head nodes, workers and ``--execute`` processes."""

from __future__ import annotations

import contextlib
import os
import random
import signal
from pathlib import Path

import pytest
from conftest import TunaEnv, descendants, kill_tree

from tuna.errors import EXIT_TEMPFAIL

SLOW = {"FAKE_ROCMINFO_SLEEP": "1", "TUNA_MAX_BUNDLE": "1"}


def unshared_session(env: TunaEnv, jobs: int) -> int:
    """A session whose id no other test's database uses at the same time: worker names
    carry the session but not the database, and share the broker."""
    env.ok("example", "--add_tables")
    if env.kind == "services":
        env.query_commit(f"ALTER TABLE session_example AUTO_INCREMENT = {random.randrange(1000, 10**6)}")
    return env.setup_session(jobs=jobs)


def completed_attempts(env: TunaEnv, session: int) -> dict[int, int]:
    rows = env.query(
        "SELECT job_id, COUNT(*) FROM job_attempt WHERE session = :s AND outcome = 'completed' GROUP BY job_id",
        s=session,
    )
    return {int(job): int(n) for job, n in rows}


def test_a_second_claimer_on_the_same_scope_is_refused_and_the_first_carries_on(
    tuna_env: TunaEnv, tmp_path: Path
) -> None:
    env = tuna_env
    session = unshared_session(env, jobs=6)
    marker = tmp_path / "started"
    env.start_worker(session, extra_env={**SLOW, "FAKE_ROCMINFO_MARKER": str(marker)})
    first = env.start("example", "--session_id", str(session), "--enqueue_only", extra_env=SLOW)
    env.wait_for(marker.exists, what="a job to start on the worker")

    for second in (["--enqueue_only"], ["--execute"]):
        proc = env.run("example", "--session_id", str(session), *second, extra_env={"TUNA_GPU_ID": "0"})
        assert proc.returncode == EXIT_TEMPFAIL, proc.stderr
        (line,) = proc.stderr.strip().splitlines()[-1:]
        assert f"session {session} (example) is already being run by another head node or --execute" in line
        assert "Traceback" not in proc.stderr

    env.wait_for(lambda: first.poll() is not None, what="the first head node to finish")
    assert first.returncode == 0, env.log_of(first)
    assert env.states(session) == {"completed": 6}
    assert completed_attempts(env, session) == dict.fromkeys(completed_attempts(env, session), 1)
    assert len(completed_attempts(env, session)) == 6


@pytest.mark.parametrize("kill", ["main-process", "process-tree"])
def test_a_killed_execute_leaves_its_jobs_to_the_next_one(tuna_env: TunaEnv, kill: str) -> None:
    env = tuna_env
    session = unshared_session(env, jobs=6)
    jobs_env = {"FAKE_ROCMINFO_SLEEP": "1", "TUNA_GPU_ID": "0", "SLURM_CPUS_ON_NODE": "2", "TUNA_MAX_BUNDLE": "1"}
    first = env.start("example", "--session_id", str(session), "--execute", extra_env=jobs_env)
    env.wait_for(
        lambda: env.states(session).get("completed", 0) >= 1 and env.states(session).get("running", 0) >= 1,
        what="one job completed and others running",
    )
    pool = descendants(first.pid)
    try:
        if kill == "process-tree":
            kill_tree(first)  # SIGKILL: no chance to give anything back
        else:  # only the process a person or the OOM killer sees; its pool may live on a while
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
        assert env.states(session).get("running", 0) >= 1

        out = env.ok("example", "--session_id", str(session), "--execute", extra_env=jobs_env)
    finally:
        for pid in pool:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    assert "completed 6" in out
    assert env.states(session) == {"completed": 6}
    assert completed_attempts(env, session) == dict.fromkeys(range(1, 7), 1)


def test_a_head_node_leaves_the_jobs_of_a_live_execute_alone(tuna_env: TunaEnv) -> None:
    env = tuna_env
    session = unshared_session(env, jobs=4)  # reasons seed#1 .. seed#4
    jobs_env = {"FAKE_ROCMINFO_SLEEP": "2", "TUNA_GPU_ID": "0", "SLURM_CPUS_ON_NODE": "2", "TUNA_MAX_BUNDLE": "1"}
    env.start_worker(session)
    execute = env.start("example", "--session_id", str(session), "--execute", "-l", "seed", extra_env=jobs_env)
    env.wait_for(lambda: env.states(session).get("running", 0) >= 1, what="--execute to claim jobs")

    head = env.run("example", "--session_id", str(session), "--enqueue_only")  # the whole session: no label
    assert head.returncode == 0, head.stderr
    env.wait_for(lambda: execute.poll() is not None, what="--execute to finish")

    assert execute.returncode == 0, env.log_of(execute)
    assert env.states(session) == {"completed": 4}
    assert completed_attempts(env, session) == dict.fromkeys(range(1, 5), 1)
    # No job was claimed twice: the head node gave back none of --execute's.
    assert env.query("SELECT MAX(attempt) FROM job WHERE session = :s", s=session)[0][0] == 1
