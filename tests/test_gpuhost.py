"""The GPU host's launcher (``go_fish.py example --session_id S``) and its Celery workers,
with real launcher and worker processes: liveness per launcher, node names per database,
launcher and workers living and dying together, restarts, a heartbeat that rides out
database trouble, a worker that stops once its session is over, and TUNA_LOG_DIR."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TunaEnv, make_env
from gpuhost_support import (
    held_rows,
    jobs_running_below,
    kill_quietly,
    lock_control_queue,
    nodename,
    silence,
    still_running,
    worker_pid,
)
from redis import Redis

from tuna.celery_app import make_app
from tuna.celery_app.naming import task_id_prefix
from tuna.config import load_settings
from tuna.errors import EXIT_ERROR, ConfigError

SLOW = {"FAKE_ROCMINFO_SLEEP": "60"}


def lost_or_retried(env: TunaEnv, session: int) -> list[tuple[object, ...]]:
    lost = env.query("SELECT job_id, reason FROM job_attempt WHERE session = :s AND outcome = 'lost'", s=session)
    retried = env.query("SELECT id, retries FROM job WHERE session = :s AND retries > 0", s=session)
    return [tuple(row) for row in [*lost, *retried]]


# -- a) liveness per launcher ------------------------------------------------------------


def test_stopping_one_launcher_leaves_another_sessions_launcher_alive(tuna_env: TunaEnv, tmp_path: Path) -> None:
    env = tuna_env
    env.vars["SLURM_CPUS_ON_NODE"] = "1"
    quiet = env.setup_session(jobs=1, label="quiet")
    busy = env.setup_session(jobs=1, label="busy")
    marker = tmp_path / "started"
    launcher_quiet = env.start_worker(quiet)
    # The busy host beats at the default pace: between two beats its liveness must not
    # depend on what the other launcher does.
    env.start_worker(busy, extra_env={"FAKE_ROCMINFO_SLEEP": "6", "FAKE_ROCMINFO_MARKER": str(marker)})
    head = env.start(
        "example", "--session_id", str(busy), "--enqueue_only", extra_env={"TUNA_WORKER_HEARTBEAT_S": "0.2"}
    )
    env.wait_for(marker.exists, what="the busy session's job to start")

    launcher_quiet.send_signal(signal.SIGINT)
    env.wait_for(lambda: launcher_quiet.poll() is not None, what="the quiet launcher to stop")

    assert launcher_quiet.returncode == 0, env.log_of(launcher_quiet)
    assert silence(env, nodename(env, quiet)) is None  # stopped cleanly
    busy_silence = silence(env, nodename(env, busy))
    assert busy_silence is not None and busy_silence < 30
    env.wait_for(lambda: head.poll() is not None, what="the busy head node to finish")
    assert head.returncode == 0, env.log_of(head)
    assert env.states(busy) == {"completed": 1}
    assert lost_or_retried(env, busy) == []  # nobody gave its job back


def test_a_second_launcher_of_the_same_session_on_one_host_is_refused(embedded_env: TunaEnv) -> None:
    env = embedded_env
    env.vars["SLURM_CPUS_ON_NODE"] = "1"
    session = env.setup_session(jobs=1)
    first = env.start_worker(session)
    node = nodename(env, session)

    second = env.run("example", "--session_id", str(session))

    assert second.returncode == 2, second.stderr
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: worker {node} is already running on this host (pid ")
    assert first.poll() is None
    assert silence(env, node) is not None  # the first launcher's worker is still alive by its row


# -- b) node names per database ------------------------------------------------------------


@pytest.fixture
def other_services_env(tmp_path: Path) -> Iterator[TunaEnv]:
    """A second database on the same broker and result backend."""
    folder = tmp_path / "other"
    folder.mkdir()
    yield from make_env("services", folder)


def test_session_1_of_two_databases_on_one_host_and_broker(services_env: TunaEnv, other_services_env: TunaEnv) -> None:
    first, second = services_env, other_services_env
    for env in (first, second):
        env.vars["SLURM_CPUS_ON_NODE"] = "1"
        assert env.setup_session(jobs=2) == 1
    launcher_first = first.start_worker(1)
    launcher_second = second.start_worker(1)  # its node name must not collide with the first's

    first.ok("example", "--session_id", "1", "--enqueue_only")  # ends with a shutdown of its workers
    first.wait_for(lambda: launcher_first.poll() is not None, what="the first database's launcher to stop")

    assert launcher_first.returncode == 0, first.log_of(launcher_first)
    app = make_app(second.settings)
    replies = app.control.ping(destination=[nodename(second, 1)], timeout=2.0)
    assert replies, "the second database's worker was shut down with the first's"
    assert launcher_second.poll() is None
    assert "completed 2" in second.ok("example", "--session_id", "1", "--enqueue_only")
    second.wait_for(lambda: launcher_second.poll() is not None, what="the second launcher to stop")
    assert "ResourceLocked" not in second.log_of(launcher_second)


# -- c) launcher and workers live and die together ------------------------------------------


def test_killing_only_the_launcher_takes_its_worker_and_jobs_with_it(services_env: TunaEnv) -> None:
    env = services_env
    env.vars.update({"SLURM_CPUS_ON_NODE": "2", "TUNA_MAX_BUNDLE": "1"})
    session = env.setup_session(jobs=2)
    launcher = env.start_worker(session, extra_env=SLOW)
    head = env.start("example", "--session_id", str(session), "--enqueue_only")
    below = env.wait_for(lambda: jobs_running_below(launcher, 2), what="both jobs to run")

    kill_quietly(launcher.pid, signal.SIGKILL)  # the OOM killer, or a person, picks the launcher

    env.wait_for(lambda: not still_running(below), what=f"everything below the launcher to go: {still_running(below)}")
    # The jobs went back to the queue with the worker's connection; a new launcher runs them.
    env.start_worker(session)
    env.wait_for(lambda: head.poll() is not None, what="the head node to finish", timeout=120)
    assert head.returncode == 0, env.log_of(head)
    assert env.states(session) == {"completed": 2}


def test_a_cold_stop_leaves_nothing_of_the_worker_running(services_env: TunaEnv) -> None:
    env = services_env
    env.vars.update({"SLURM_CPUS_ON_NODE": "2", "TUNA_MAX_BUNDLE": "1"})
    session = env.setup_session(jobs=2)
    launcher = env.start_worker(session, extra_env=SLOW)
    env.start("example", "--session_id", str(session), "--enqueue_only")
    below = env.wait_for(lambda: jobs_running_below(launcher, 2), what="both jobs to run")

    launcher.send_signal(signal.SIGINT)
    env.wait_for(lambda: "stopping workers (warm" in env.log_of(launcher), what="the warm stop")
    launcher.send_signal(signal.SIGINT)
    env.wait_for(lambda: launcher.poll() is not None, what="the launcher to exit", timeout=30)

    assert launcher.returncode == 130, env.log_of(launcher)
    assert still_running(below) == []  # pool processes and the jobs' process groups too
    assert silence(env, nodename(env, session)) is None


# -- d) a dying worker is restarted, up to a limit ------------------------------------------


def test_a_worker_killed_mid_job_is_restarted_and_the_session_completes(services_env: TunaEnv, tmp_path: Path) -> None:
    env = services_env
    env.vars.update({"SLURM_CPUS_ON_NODE": "1", "TUNA_MAX_BUNDLE": "1"})
    session = env.setup_session(jobs=2)
    marker = tmp_path / "started"
    launcher = env.start_worker(session, extra_env={"FAKE_ROCMINFO_SLEEP": "2", "FAKE_ROCMINFO_MARKER": str(marker)})
    head = env.start("example", "--session_id", str(session), "--enqueue_only")
    env.wait_for(marker.exists, what="a job to start")
    node = nodename(env, session)
    first_pid = worker_pid(env, node)

    kill_quietly(first_pid, signal.SIGKILL)  # the Celery worker dies; its launcher lives on

    env.wait_for(lambda: head.poll() is not None, what="the head node to finish", timeout=120)
    assert head.returncode == 0, env.log_of(head)
    assert env.states(session) == {"completed": 2}
    log = env.log_of(launcher)
    assert f"worker {node} died (killed by SIGKILL" in log and "restarting it in" in log
    assert worker_pid(env, node) not in (0, first_pid)


@pytest.mark.parametrize("log_dir", [False, True], ids=["stderr", "TUNA_LOG_DIR"])
def test_a_worker_that_keeps_dying_is_given_up_with_one_line(
    services_env: TunaEnv, tmp_path: Path, log_dir: bool
) -> None:
    env = services_env
    env.vars.update({"SLURM_CPUS_ON_NODE": "1", "TUNA_WORKER_MAX_RESTARTS": "2"})
    logs = tmp_path / "logs"
    if log_dir:
        env.vars["TUNA_LOG_DIR"] = str(logs)
    session = env.setup_session(jobs=1)
    node = nodename(env, session)
    worker_log = logs / f"{node}.log"
    holder = lock_control_queue(env, node)  # each start of its worker dies of this
    try:
        launcher = env.start("example", "--session_id", str(session))
        env.wait_for(lambda: launcher.poll() is not None, what="the launcher to give up", timeout=120)
    finally:
        holder.release()

    log = env.log_of(launcher)
    assert launcher.returncode == EXIT_ERROR, log
    assert "restart 1 of at most 2" in log and "restart 2 of at most 2" in log
    last = log.strip().splitlines()[-1]
    assert last.startswith(
        f"error: worker {node} died 3 times within 600 s; not restarting it again. Last: exit status 1"
    )
    assert "Unrecoverable error: ResourceLocked" in last
    if log_dir:
        assert f"(log: {worker_log})" in last
        assert "Traceback" not in log  # the worker's own output went to its file
        assert worker_log.read_text().count("Unrecoverable error") == 3
    assert silence(env, node) is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [("TUNA_WORKER_MAX_RESTARTS", "-1"), ("TUNA_WORKER_MAX_RESTARTS", "many"), ("TUNA_WORKER_RESTART_WINDOW_S", "0")],
)
def test_malformed_restart_settings_name_their_variable(tmp_path: Path, variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"TUNA_HOME": str(tmp_path), variable: value})
    assert raised.value.variable == variable


def test_restart_settings_and_log_dir_defaults(tmp_path: Path) -> None:
    settings = load_settings({"TUNA_HOME": str(tmp_path)})
    assert (settings.worker_max_restarts, settings.worker_restart_window_s, settings.log_dir) == (5, 600.0, None)
    settings = load_settings({"TUNA_HOME": str(tmp_path), "TUNA_LOG_DIR": "~/tuna-logs"})
    assert settings.log_dir == Path("~/tuna-logs").expanduser()


def test_an_unwritable_log_dir_is_one_line_and_starts_nothing(embedded_env: TunaEnv, tmp_path: Path) -> None:
    env = embedded_env
    session = env.setup_session(jobs=1)
    blocker = tmp_path / "a_file"
    blocker.write_text("")

    proc = env.run("example", "--session_id", str(session), extra_env={"TUNA_LOG_DIR": str(blocker / "logs")})

    assert proc.returncode == 78, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: TUNA_LOG_DIR: cannot write {blocker}/logs/")
    assert "Traceback" not in proc.stderr
    assert silence(env, nodename(env, session)) is None


# -- e) the heartbeat rides out database trouble ----------------------------------------------


def test_a_held_host_row_delays_the_heartbeat_but_harms_no_job(services_env: TunaEnv, tmp_path: Path) -> None:
    env = services_env
    db = env.vars["TUNA_DB_NAME"]
    # Every tuna connection waits at most 1 s for a row lock (per session, not global).
    env.vars["TUNA_DB_URL"] = (
        f"mysql+pymysql://root@127.0.0.1:3306/{db}?charset=utf8mb4&init_command=SET+innodb_lock_wait_timeout%3D1"
    )
    env.vars.update({"SLURM_CPUS_ON_NODE": "1", "TUNA_MAX_BUNDLE": "1", "TUNA_WORKER_HEARTBEAT_S": "0.5"})
    session = env.setup_session(jobs=3)
    marker = tmp_path / "started"
    launcher = env.start_worker(session, extra_env={"FAKE_ROCMINFO_SLEEP": "1", "FAKE_ROCMINFO_MARKER": str(marker)})
    head = env.start(
        "example", "--session_id", str(session), "--enqueue_only", extra_env={"TUNA_WORKER_HEARTBEAT_S": "5"}
    )
    env.wait_for(marker.exists, what="the first job to start")

    engine, holder = held_rows(env, "SELECT * FROM machine WHERE hostname = :h FOR UPDATE", h=socket.gethostname())
    try:
        env.wait_for(lambda: "MySQL error 1205" in env.log_of(launcher), what="the heartbeat to hit the lock")
        time.sleep(3)  # several heartbeats' worth of lock wait timeouts
        assert launcher.poll() is None, env.log_of(launcher)
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()

    env.wait_for(lambda: "heartbeat recorded again" in env.log_of(launcher), what="the heartbeat to come back")
    env.wait_for(lambda: head.poll() is not None, what="the head node to finish", timeout=120)
    assert head.returncode == 0, env.log_of(head)
    assert env.states(session) == {"completed": 3}
    assert lost_or_retried(env, session) == []
    assert launcher.poll() is None or launcher.returncode == 0
    heartbeat_lines = [line for line in env.log_of(launcher).splitlines() if "heartbeat" in line]
    assert all("WARNING tuna.heartbeat" in line for line in heartbeat_lines), heartbeat_lines
    assert "Traceback" not in env.log_of(launcher)


# -- f) a worker whose session is over stops; late results are deleted ------------------------


def test_a_launcher_stops_by_itself_once_its_session_is_over(tuna_env: TunaEnv) -> None:
    env = tuna_env
    env.vars.update({"SLURM_CPUS_ON_NODE": "1", "TUNA_WORKER_HEARTBEAT_S": "0.5"})
    session = env.setup_session(jobs=3)
    launcher = env.start_worker(session)

    env.ok("example", "--session_id", str(session), "--execute")  # the session ends without it

    env.wait_for(lambda: launcher.poll() is not None, what="the launcher to stop by itself", timeout=30)
    assert launcher.returncode == 0, env.log_of(launcher)
    assert f"session {session}: no job left to run for step example; stopping the workers" in env.log_of(launcher)
    assert silence(env, nodename(env, session)) is None
    assert env.query("SELECT available, worker_processes FROM machine") == [(0, 0)]


def test_a_result_of_a_superseded_attempt_is_deleted(services_env: TunaEnv, tmp_path: Path) -> None:
    env = services_env
    env.vars["SLURM_CPUS_ON_NODE"] = "1"
    session = env.setup_session(jobs=1)
    marker = tmp_path / "started"
    launcher = env.start_worker(session, extra_env={"FAKE_ROCMINFO_SLEEP": "3", "FAKE_ROCMINFO_MARKER": str(marker)})
    head = env.start("example", "--session_id", str(session), "--enqueue_only")
    env.wait_for(marker.exists, what="the job to start")
    ((task_id,),) = env.query("SELECT task_id FROM job WHERE session = :s", s=session)
    assert task_id.startswith(task_id_prefix(env.settings.db_name, session, "example"))

    # Meanwhile the job moves on without this attempt: its head node is gone, and the job is
    # given back (as a reaper does for a host it believes dead).
    kill_quietly(head.pid, signal.SIGKILL)
    head.wait(timeout=30)
    env.query_commit("UPDATE job SET state = 'new', task_id = NULL WHERE session = :s", s=session)

    env.wait_for(lambda: "its result was deleted" in env.log_of(launcher), what="the worker to drop its result")
    redis = Redis(host="127.0.0.1", port=6379, db=15)
    assert redis.exists(f"celery-task-meta-{task_id}") == 0
