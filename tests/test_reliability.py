"""No job lost, none stuck, none completed twice: killed workers and head nodes, failing
and hanging jobs, a missing rocminfo, a host whose heartbeat stops, Ctrl-C, and a result
backend restart, all on the real MariaDB, RabbitMQ and Redis with real worker processes."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROCM, TunaEnv, kill_tree
from kombu import Connection
from redis import Redis

from tuna.celery_app.naming import queue_name

SLOW = {"FAKE_ROCMINFO_SLEEP": "2", "TUNA_MAX_BUNDLE": "1"}


def one_job_per_message(env: TunaEnv) -> None:
    env.vars["TUNA_MAX_BUNDLE"] = "1"


def completed_attempts(env: TunaEnv, session: int) -> dict[int, int]:
    rows = env.query(
        "SELECT job_id, COUNT(*) FROM job_attempt WHERE session = :s AND outcome = 'completed' GROUP BY job_id",
        s=session,
    )
    return {int(job): int(n) for job, n in rows}


def queue_length(env: TunaEnv, session: int) -> int:
    queue = queue_name("compile", env.settings.db_name, session)
    with Connection(env.settings.broker_url) as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except conn.channel_errors:
            return 0


def test_worker_killed_mid_job_is_redelivered_and_counted(services_env: TunaEnv, tmp_path: Path) -> None:
    env = services_env
    one_job_per_message(env)
    session = env.setup_session(jobs=3)
    marker = tmp_path / "started"
    worker = env.start_worker(session, extra_env={**SLOW, "FAKE_ROCMINFO_MARKER": str(marker)})
    head = env.start("example", "--session_id", str(session), "--enqueue_only")
    env.wait_for(marker.exists, what="a job to start on the worker")

    kill_tree(worker)  # the host dies: launcher, Celery worker and its pool, all at once
    env.start_worker(session)
    env.wait_for(lambda: head.poll() is not None, what="the head node to finish")

    assert head.returncode == 0, env.log_of(head)
    assert env.states(session) == {"completed": 3}
    assert completed_attempts(env, session) == {job: 1 for job in completed_attempts(env, session)}
    assert len(completed_attempts(env, session)) == 3
    retries = [r for (r,) in env.query("SELECT retries FROM job WHERE session = :s", s=session)]
    assert max(retries) == 1  # the job that was running when its worker died


def test_head_node_killed_and_restarted_loses_and_doubles_nothing(services_env: TunaEnv) -> None:
    env = services_env
    env.vars["TUNA_MAX_BUNDLE"] = "2"
    session = env.setup_session(jobs=60)
    env.start_worker(session, extra_env={"FAKE_ROCMINFO_SLEEP": "0.05"})
    head = env.start("example", "--session_id", str(session), "--enqueue_only")
    env.wait_for(lambda: env.states(session).get("completed", 0) >= 10, what="10 completed jobs")

    kill_tree(head)
    assert env.states(session).get("running", 0) > 0  # it died with work in flight
    out = env.ok("example", "--session_id", str(session), "--enqueue_only")

    assert "completed 60" in out
    assert env.states(session) == {"completed": 60}
    assert completed_attempts(env, session) == {job: 1 for job in completed_attempts(env, session)}
    assert len(completed_attempts(env, session)) == 60


def own_rocm_tree(tmp_path: Path) -> Path:
    """A copy of the fake ROCm tree that a test may break after the worker has started."""
    tree = tmp_path / "rocm"
    shutil.copytree(ROCM, tree)
    return tree


def test_job_that_raises_is_errored_with_the_exception(services_env: TunaEnv, tmp_path: Path) -> None:
    env = services_env
    session = env.setup_session(jobs=2)
    tree = own_rocm_tree(tmp_path)
    env.start_worker(session, extra_env={"ROCM_PATH": str(tree)})
    (tree / "bin" / "rocminfo").write_text("this is not a program\n")  # exec now fails: ENOEXEC

    # Every job errored: the run exits 1 (EXIT_JOBS_FAILED).
    assert env.run("example", "--session_id", str(session), "--enqueue_only").returncode == 1

    rows = env.query("SELECT state, retries, result FROM job WHERE session = :s", s=session)
    assert [(state, retries) for state, retries, _ in rows] == [("errored", 1)] * 2
    assert all("Exec format error" in result for _, _, result in rows)


def test_job_past_its_time_limit_is_killed_retried_then_errored(services_env: TunaEnv) -> None:
    env = services_env
    env.vars.update({"TUNA_JOB_TIME_LIMIT_S": "1", "TUNA_MAX_RETRIES": "2"})
    session = env.setup_session(jobs=2)
    # An odd length, so that the check below finds this test's rocminfo and no other's.
    env.start_worker(session, extra_env={"FAKE_ROCMINFO_SLEEP": "31.7"})

    # Every job errored: the run exits 1 (EXIT_JOBS_FAILED).
    assert env.run("example", "--session_id", str(session), "--enqueue_only").returncode == 1

    rows = env.query("SELECT state, retries, result FROM job WHERE session = :s", s=session)
    assert [(state, retries) for state, retries, _ in rows] == [("errored", 2)] * 2
    assert all("timed out after 1 s" in result for _, _, result in rows)
    # Each try that ran is recorded with the time limit as its reason. On a loaded machine a
    # worker may lose the broker and its message come back: that try is counted on the job
    # (retries) when it is redelivered, and runs under the same attempt, so a job can reach
    # its 2 retries with one attempt record.
    attempts = env.query("SELECT job_id, outcome, reason FROM job_attempt WHERE session = :s", s=session)
    job_ids = {row_id for (row_id,) in env.query("SELECT id FROM job WHERE session = :s", s=session)}
    assert {job for job, _, _ in attempts} == job_ids
    assert 2 <= len(attempts) <= 4
    assert all(outcome == "failed" and "timed out after 1 s" in reason for _, outcome, reason in attempts)
    # The hung rocminfo was killed with its process group, not left behind.
    sleeping = subprocess.run(["pgrep", "-f", "sleep 31.7"], capture_output=True, text=True).stdout.split()
    assert sleeping == []


def test_missing_rocminfo_errors_every_job_with_the_reason(services_env: TunaEnv, tmp_path: Path) -> None:
    env = services_env
    session = env.setup_session(jobs=3)
    tree = own_rocm_tree(tmp_path)
    env.start_worker(session, extra_env={"ROCM_PATH": str(tree)})
    (tree / "bin" / "rocminfo").unlink()  # e.g. ROCm being reinstalled under a running worker

    # Every job errored: the run exits 1 (EXIT_JOBS_FAILED).
    assert env.run("example", "--session_id", str(session), "--enqueue_only").returncode == 1

    rows = env.query("SELECT state, retries, result FROM job WHERE session = :s", s=session)
    assert len(rows) == 3
    for state, retries, result in rows:
        assert (state, retries) == ("errored", 1)
        assert result == f"rocminfo not found at {tree}/bin/rocminfo"


def test_jobs_of_a_host_whose_heartbeat_stopped_are_given_back(services_env: TunaEnv, tmp_path: Path) -> None:
    env = services_env
    one_job_per_message(env)
    session = env.setup_session(jobs=1)
    marker = tmp_path / "started"
    worker = env.start_worker(session, extra_env={"FAKE_ROCMINFO_SLEEP": "60", "FAKE_ROCMINFO_MARKER": str(marker)})
    head = env.start(
        "example",
        "--session_id",
        str(session),
        "--enqueue_only",
        extra_env={"TUNA_WORKER_HEARTBEAT_S": "0.2", "TUNA_WORKER_DEAD_AFTER_S": "30"},
    )
    env.wait_for(marker.exists, what="the job to start")
    kill_tree(worker, signal.SIGSTOP)  # the host hangs: no heartbeat, yet its connections stay open
    # Back-date the heartbeat instead of waiting 30 s for it to go stale.
    env.query_commit(
        "UPDATE worker SET heartbeat_ts = NOW() - INTERVAL 1 HOUR WHERE hostname = :h",
        h=socket.gethostname(),
    )
    env.wait_for(
        lambda: env.states(session) in ({"new": 1}, {"running": 1}) and lost_rows(env, session),
        what="the job to be given back",
    )

    kill_tree(worker)
    env.start_worker(session)
    env.wait_for(lambda: head.poll() is not None, what="the head node to finish")

    assert head.returncode == 0, env.log_of(head)
    assert env.states(session) == {"completed": 1}
    (retries,) = env.query("SELECT retries FROM job WHERE session = :s", s=session)[0]
    # One for the abandoned attempt; the hung host may also have held the next delivery.
    assert retries >= 1
    (reason,) = lost_rows(env, session)[0]
    assert reason.startswith(f"abandoned: no heartbeat from {socket.gethostname()} since ")


def lost_rows(env: TunaEnv, session: int) -> list[tuple[str]]:
    return [
        tuple(row)
        for row in env.query("SELECT reason FROM job_attempt WHERE session = :s AND outcome = 'lost'", s=session)
    ]


def test_ctrl_c_on_the_head_node_returns_in_flight_jobs_and_removes_their_messages(
    services_env: TunaEnv,
) -> None:
    env = services_env
    one_job_per_message(env)
    session = env.setup_session(jobs=40)
    env.start_worker(session, extra_env={"FAKE_ROCMINFO_SLEEP": "0.3"})
    head = env.start("example", "--session_id", str(session), "--enqueue_only")
    env.wait_for(lambda: env.states(session).get("completed", 0) >= 2, what="two completed jobs")
    assert queue_length(env, session) > 0

    head.send_signal(signal.SIGINT)
    head.wait(timeout=60)

    assert head.returncode == 130
    states = env.states(session)
    assert "running" not in states and states["new"] > 0
    assert queue_length(env, session) == 0
    assert "in-flight jobs returned to 'new'" in env.log_of(head)
    # A new head node finishes the session from there.
    assert "completed 40" in env.ok("example", "--session_id", str(session), "--enqueue_only")


def test_ctrl_c_on_a_worker_lets_the_running_job_finish(services_env: TunaEnv, tmp_path: Path) -> None:
    env = services_env
    session = env.setup_session(jobs=1)
    marker = tmp_path / "started"
    worker = env.start_worker(session, extra_env={**SLOW, "FAKE_ROCMINFO_MARKER": str(marker)})
    head = env.start("example", "--session_id", str(session), "--enqueue_only")
    env.wait_for(marker.exists, what="the job to start")

    worker.send_signal(signal.SIGINT)

    env.wait_for(lambda: worker.poll() is not None, what="the worker to stop")
    env.wait_for(lambda: head.poll() is not None, what="the head node to finish")
    assert worker.returncode == 0, env.log_of(worker)
    assert head.returncode == 0, env.log_of(head)
    assert env.states(session) == {"completed": 1}


@pytest.mark.skipif(not Path("/usr/bin/redis-server").exists(), reason="needs a local redis-server to restart")
def test_result_backend_restart_mid_session_loses_nothing(services_env: TunaEnv) -> None:
    env = services_env
    env.vars["TUNA_MAX_BUNDLE"] = "1"
    session = env.setup_session(jobs=30)
    env.start_worker(session, extra_env={"FAKE_ROCMINFO_SLEEP": "0.1"})
    head = env.start("example", "--session_id", str(session), "--enqueue_only")
    env.wait_for(lambda: env.states(session).get("completed", 0) >= 3, what="three completed jobs")

    subprocess.run(["redis-cli", "shutdown", "nosave"], capture_output=True, check=False)
    try:
        env.wait_for(lambda: "result backend" in env.log_of(head), what="the head node to notice")
    finally:
        start_redis()  # never leave this machine's Redis down, whatever happened
    env.wait_for(lambda: head.poll() is not None, what="the head node to finish", timeout=120)

    assert head.returncode == 0, env.log_of(head)
    assert env.states(session) == {"completed": 30}
    log = env.log_of(head)
    assert log.count("retrying until it is back") == 1
    assert "services back after" in log


def start_redis() -> None:
    subprocess.run(
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/var/lib/redis",
            "--logfile",
            "/var/log/redis/ci.log",
        ],
        check=True,
        capture_output=True,
    )
    TunaEnv.wait_for(
        lambda: subprocess.run(["redis-cli", "ping"], capture_output=True).returncode == 0,
        what="redis to answer",
    )


def test_results_lost_from_the_backend_are_sent_again(services_env: TunaEnv) -> None:
    env = services_env
    env.vars["TUNA_MAX_BUNDLE"] = "1"
    session = env.setup_session(jobs=8)
    env.start_worker(session, extra_env={"FAKE_ROCMINFO_SLEEP": "0.2"})
    head = env.start(
        "example", "--session_id", str(session), "--enqueue_only", extra_env={"TUNA_LOST_RESULT_AFTER_S": "2"}
    )
    redis = Redis(host="127.0.0.1", port=6379, db=15)
    pattern = f"celery-task-meta-d_{env.settings.db_name}_sess_{session}_*"
    # Wipe the session's records as they appear, as a Redis restart without persistence would.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for key in redis.scan_iter(match=pattern):
            redis.delete(key)
    env.wait_for(lambda: head.poll() is not None, what="the head node to finish", timeout=120)

    assert head.returncode == 0, env.log_of(head)
    assert env.states(session) == {"completed": 8}
    assert "had no record anywhere" in env.log_of(head)


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs a local RabbitMQ to restart")
def test_broker_restart_mid_session_loses_nothing(services_env: TunaEnv) -> None:
    env = services_env
    env.vars.update({"TUNA_MAX_BUNDLE": "1", "TUNA_CELERY_JOB_BATCH_SIZE": "10"})
    session = env.setup_session(jobs=40)
    worker = env.start_worker(session, extra_env={"FAKE_ROCMINFO_SLEEP": "0.1"})
    head = env.start("example", "--session_id", str(session), "--enqueue_only")
    env.wait_for(lambda: env.states(session).get("completed", 0) >= 5, what="five completed jobs")

    subprocess.run(["rabbitmqctl", "stop_app"], capture_output=True, check=False)
    try:
        env.wait_for(lambda: "Cannot connect" in env.log_of(worker), what="the worker to lose the broker")
    finally:
        subprocess.run(["rabbitmqctl", "start_app"], capture_output=True, check=True)
    env.wait_for(lambda: head.poll() is not None, what="the head node to finish", timeout=180)

    # The worker reconnected by itself, and the queued messages survived the restart.
    assert head.returncode == 0, env.log_of(head)
    assert env.states(session) == {"completed": 40}
    assert completed_attempts(env, session) == {job: 1 for job in completed_attempts(env, session)}
    env.wait_for(lambda: worker.poll() is not None, what="the worker to be shut down at the end")
