"""The head node's loop under faults: nobody consuming its queue, a host gone silent,
records that can never finish or are garbage, a worker slow to answer, leftovers at the
end, and signals; on the real services (and the embedded default where it applies) with
real Celery workers."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import ROOT, TunaEnv, descendants, kill_tree
from redis import Redis
from redis.exceptions import RedisError

from tuna.celery_app import make_app
from tuna.celery_app.naming import queue_name, worker_name
from tuna.db.engine import Database
from tuna.headnode import HeadNode
from tuna.library import get_library


def setup_session(env: TunaEnv, jobs: int = 1, label: str = "seed") -> int:
    """``env.setup_session`` with, on the shared broker, a session id nobody else's test
    uses: worker node names carry the session but not the database, so two tests'
    session-1 workers would collide on the broker."""
    if env.kind == "services":
        env.ok("example", "--add_tables")
        if not env.query("SELECT 1 FROM session_example LIMIT 1"):
            start = random.randrange(1000, 1_000_000)
            env.query_commit(f"ALTER TABLE session_example AUTO_INCREMENT = {start}")
    return env.setup_session(jobs=jobs, label=label)


def head_line(env: TunaEnv, head: object, text: str) -> str:
    """The first line of the head node's log that holds ``text``, or ''."""
    return next((line for line in env.log_of(head).splitlines() if text in line), "")  # type: ignore[arg-type]


def test_a_head_node_with_no_consumer_says_so_and_runs_once_one_starts(tuna_env: TunaEnv) -> None:
    env = tuna_env
    other = setup_session(env, jobs=1, label="other")
    session = setup_session(env, jobs=3)
    env.start_worker(other)  # a worker of another session consumes another queue
    queue = queue_name("compile", env.settings.db_name, session)
    command = f"./go_fish.py example --session_id {session}"

    started = time.monotonic()
    head = env.start("example", "--session_id", str(session), "--enqueue_only")
    line = env.wait_for(lambda: head_line(env, head, "no worker consumes"), what="the no-consumer line", timeout=40)
    took = time.monotonic() - started

    print(f"no-consumer line after {took:.1f} s")
    assert took < 30, f"{took:.0f} s"
    assert queue in line and command in line, line
    assert head.poll() is None
    status = env.ok("example", "--session_id", str(session), "--status")
    assert f"no worker consumes queue {queue}" in status and command in status

    env.start_worker(session)
    env.wait_for(lambda: head.poll() is not None, what="the head node to finish")
    assert head.returncode == 0, env.log_of(head)
    assert env.states(session) == {"completed": 3}
    assert env.log_of(head).count("no worker consumes") <= 2  # a slow cadence, not every poll


def test_a_silent_host_is_named_at_once_and_its_jobs_go_back_when_it_is_dead(
    services_env: TunaEnv, tmp_path: Path
) -> None:
    env = services_env
    env.vars.update({"TUNA_MAX_BUNDLE": "1", "TUNA_WORKER_HEARTBEAT_S": "1", "TUNA_WORKER_DEAD_AFTER_S": "8"})
    session = setup_session(env, jobs=1)
    marker = tmp_path / "started"
    worker = env.start_worker(session, extra_env={"FAKE_ROCMINFO_SLEEP": "60", "FAKE_ROCMINFO_MARKER": str(marker)})
    head = env.start("example", "--session_id", str(session), "--enqueue_only")
    env.wait_for(marker.exists, what="the job to start")
    host = socket.gethostname()

    kill_tree(worker, signal.SIGSTOP)  # the host hangs: no heartbeat, its connections stay open
    stopped = time.monotonic()
    try:
        line = env.wait_for(lambda: head_line(env, head, "no heartbeat from"), what="the silent host to be named")
        named_s = time.monotonic() - stopped
        env.wait_for(lambda: lost_reasons(env, session), what="the job to be given back", timeout=30)
        given_back_s = time.monotonic() - stopped
    finally:
        kill_tree(worker, signal.SIGCONT)
        kill_tree(worker)
    print(f"named after {named_s:.1f} s, given back after {given_back_s:.1f} s")

    assert host in line and "1 jobs running there" in line, line
    assert named_s < 1.5 + 2 * 1 + 1  # late at 1.5 intervals, named within two more (+1 s of noise)
    assert given_back_s < 8 + 2 + 2
    assert lost_reasons(env, session)[0].startswith(f"abandoned: no heartbeat from {host} since ")
    env.start_worker(session)
    env.wait_for(lambda: head.poll() is not None, what="the head node to finish")
    assert head.returncode == 0, env.log_of(head)
    assert env.states(session) == {"completed": 1}


def lost_reasons(env: TunaEnv, session: int) -> list[str]:
    return [
        r for (r,) in env.query("SELECT reason FROM job_attempt WHERE session = :s AND outcome = 'lost'", s=session)
    ]


def celery_main_process(launcher: subprocess.Popen[str]) -> int:
    """The Celery worker's main process: the launcher's child (its pool is below it)."""
    (pid,) = [p for p in descendants(launcher.pid) if parent_of(p) == launcher.pid]
    return pid


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_restarted_head_node_keeps_the_jobs_of_a_worker_that_does_not_answer(
    tuna_env: TunaEnv, tmp_path: Path
) -> None:
    env = tuna_env
    env.vars["TUNA_MAX_BUNDLE"] = "1"
    session = setup_session(env, jobs=1)
    marker = tmp_path / "started"
    worker = env.start_worker(session, extra_env={"FAKE_ROCMINFO_SLEEP": "15", "FAKE_ROCMINFO_MARKER": str(marker)})
    head = env.start("example", "--session_id", str(session), "--enqueue_only")
    env.wait_for(marker.exists, what="the job to start")
    kill_tree(head)
    # The worker's main process answers no control message (a busy host); its pool child
    # runs on, and the launcher keeps the heartbeat.
    main = celery_main_process(worker)
    os.kill(main, signal.SIGSTOP)
    try:
        again = env.start("example", "--session_id", str(session), "--enqueue_only")
        env.wait_for(lambda: head_line(env, again, "recovered 1 running jobs"), what="the start-up recovery")
    finally:
        os.kill(main, signal.SIGCONT)
    env.wait_for(lambda: again.poll() is not None, what="the head node to finish")

    assert again.returncode == 0, env.log_of(again)
    assert "0 given back" in head_line(env, again, "recovered 1 running jobs")
    assert env.query("SELECT state, attempt, retries FROM job WHERE session = :s", s=session) == [("completed", 1, 0)]


def result_keys(env: TunaEnv, session: int, redis: Redis | None = None) -> list[str]:
    """The session's result keys (Redis) or files (the embedded file backend)."""
    prefix = f"celery-task-meta-d_{env.settings.db_name}_sess_{session}_"
    if env.kind == "services":
        redis = redis or Redis(host="127.0.0.1", port=6379, db=15)
        return [key.decode() for key in redis.scan_iter(match=prefix + "*")]
    return [path.name for path in (env.home / "results").glob(prefix + "*")]


def put_record(env: TunaEnv, task_id: str, raw: bytes) -> None:
    """Write ``raw`` under a task's result key, as a foreign writer would."""
    key = f"celery-task-meta-{task_id}"
    if env.kind == "services":
        Redis(host="127.0.0.1", port=6379, db=15).set(key, raw)
    else:
        (env.home / "results").mkdir(exist_ok=True)
        (env.home / "results" / key).write_bytes(raw)


def success(task_id: str, result: object) -> bytes:
    return json.dumps({"status": "SUCCESS", "result": result, "traceback": None, "task_id": task_id}).encode()


def test_garbage_result_records_fail_their_jobs_which_then_complete(tuna_env: TunaEnv) -> None:
    env = tuna_env
    env.vars["TUNA_MAX_BUNDLE"] = "1"
    session = setup_session(env, jobs=4)
    head = env.start("example", "--session_id", str(session), "--enqueue_only")
    sent = env.wait_for(
        lambda: (
            [r for r in env.query("SELECT id, attempt, task_id FROM job WHERE session = :s", s=session) if r[2]]
            if env.states(session) == {"running": 4}
            else None
        ),
        what="four tasks sent",
    )
    (job_a, _, empty), (job_b, attempt_b, wrong), (job_c, _, garbage), _ = sorted(sent)
    put_record(env, empty, success(empty, []))
    put_record(env, wrong, success(wrong, [{"job_id": job_b, "attempt": attempt_b + 7, "ok": True, "result": "x"}]))
    put_record(env, garbage, b"\x80\x81 this is no result")
    env.wait_for(
        lambda: len(env.query("SELECT 1 FROM job_attempt WHERE session = :s AND outcome = 'failed'", s=session)) == 3,
        what="the three jobs to fail",
        timeout=90,
    )

    env.start_worker(session)
    env.wait_for(lambda: head.poll() is not None, what="the head node to finish")
    assert head.returncode == 0, env.log_of(head)
    assert env.states(session) == {"completed": 4}
    reasons = dict(
        env.query("SELECT job_id, reason FROM job_attempt WHERE session = :s AND outcome = 'failed'", s=session)
    )
    assert reasons[job_a] == "invalid result record: no outcome for 1 of its jobs"
    assert reasons[job_b].startswith(f"invalid result record: an outcome of job {job_b} attempt {attempt_b + 7}")
    assert reasons[job_c].startswith("invalid result record: undecodable record (")
    assert result_keys(env, session) == []


def test_no_result_of_a_finished_session_is_left_behind(tuna_env: TunaEnv) -> None:
    env = tuna_env
    session = setup_session(env, jobs=3)
    # A late result of a superseded attempt, as a host that came back would leave it.
    stale = f"d_{env.settings.db_name}_sess_{session}_example-00000000-late"
    put_record(env, stale, success(stale, []))
    env.start_worker(session)

    env.ok("example", "--session_id", str(session), "--enqueue_only")

    assert env.states(session) == {"completed": 3}
    assert result_keys(env, session) == []


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Redis]:
    """A redis-server of this test's own, on a free port: it may be made to misbehave."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    client = Redis(host="127.0.0.1", port=port, db=15)
    try:
        TunaEnv.wait_for(lambda: ping(client), what="the private redis-server")
        yield client
    finally:
        server.kill()
        server.wait(timeout=30)


def ping(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except RedisError:
        return False


def test_records_left_started_while_redis_refused_writes_are_recovered(
    services_env: TunaEnv, private_redis: Redis
) -> None:
    env = services_env
    port = private_redis.connection_pool.connection_kwargs["port"]
    env.vars.update(
        {
            "TUNA_CELERY_BACKEND_URL": f"redis://127.0.0.1:{port}/15",
            "TUNA_MAX_BUNDLE": "1",
            "TUNA_LOST_RESULT_AFTER_S": "3",
            "SLURM_CPUS_ON_NODE": "2",
        }
    )
    session = setup_session(env, jobs=12)
    worker = env.start_worker(session, extra_env={"FAKE_ROCMINFO_SLEEP": "1.5"})
    started = time.monotonic()
    head = env.start("example", "--session_id", str(session), "--enqueue_only")
    env.wait_for(lambda: env.states(session).get("completed", 0) >= 2, what="two completed jobs")

    private_redis.config_set("maxmemory-policy", "noeviction")
    private_redis.config_set("maxmemory", "1")  # every write is refused: OOM
    try:
        env.wait_for(lambda: "maxmemory" in env.log_of(worker), what="the worker to be refused a write")
        time.sleep(4)  # the fault itself: jobs that wrote STARTED finish while writes are refused
    finally:
        private_redis.config_set("maxmemory", "0")
    env.wait_for(lambda: head.poll() is not None, what="the head node to finish", timeout=120)
    took = time.monotonic() - started

    assert head.returncode == 0, env.log_of(head)
    states = env.states(session)
    print(f"took {took:.0f} s; states {states}")
    assert set(states) <= {"completed", "errored"} and sum(states.values()) == 12
    # The worker retries its result writes; when a retry outlasts the refusal, a record
    # lands late and no recovery is needed. Otherwise the head node must have recovered
    # the tasks left STARTED (on main it waited for them for ever).
    log = env.log_of(head)
    assert "is held by no worker" in log or states == {"completed": 12}, log
    reasons = env.query("SELECT result FROM job WHERE session = :s AND state = 'errored'", s=session)
    assert all(reason for (reason,) in reasons)


def start_ignoring_sigint(env: TunaEnv, *args: str) -> subprocess.Popen[str]:
    """Start a command as the background job of a non-interactive shell (``cmd &`` in a
    script, a CI runner) starts it: with SIGINT ignored, which Python then keeps."""
    with open(env.home / f"proc-{len(env.procs)}.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "go_fish.py"), *args],
            env=env.vars,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=env.home,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # noqa: PLW1509
        )
    env.procs.append(proc)
    return proc


def test_sigint_stops_a_head_node_that_inherited_it_ignored(services_env: TunaEnv) -> None:
    env = services_env
    env.vars["TUNA_MAX_BUNDLE"] = "1"
    session = setup_session(env, jobs=40)
    env.start_worker(session, extra_env={"FAKE_ROCMINFO_SLEEP": "0.3"})
    head = start_ignoring_sigint(env, "example", "--session_id", str(session), "--enqueue_only")
    env.wait_for(lambda: env.states(session).get("completed", 0) >= 2, what="two completed jobs")

    head.send_signal(signal.SIGINT)
    head.wait(timeout=60)

    assert head.returncode == 130, env.log_of(head)
    assert "running" not in env.states(session)
    assert "in-flight jobs returned to 'new'" in env.log_of(head)


def test_sigint_at_any_moment_of_the_loop_gives_130_and_returns_the_jobs(tuna_env: TunaEnv) -> None:
    env = tuna_env
    env.vars["TUNA_MAX_BUNDLE"] = "1"
    session = setup_session(env, jobs=200)
    env.start_worker(session, extra_env={"FAKE_ROCMINFO_SLEEP": "0.2"})
    moments = random.Random(12)
    for _ in range(4):
        head = env.start("example", "--session_id", str(session), "--enqueue_only")
        env.wait_for(lambda: head_line(env, head, "jobs to run"), what="the head node's loop")  # noqa: B023
        time.sleep(moments.uniform(0.0, 2.0))  # a random moment of the loop, on purpose

        head.send_signal(signal.SIGINT)
        head.wait(timeout=60)

        assert head.returncode == 130, env.log_of(head)
        assert "running" not in env.states(session), env.log_of(head)


def head_node(env: TunaEnv, session: int) -> HeadNode:
    """A head node in this process, on the test's own database, broker and backend."""
    settings = env.settings
    library = get_library("example")
    db = Database(settings)
    with db.begin() as conn:
        info = library.get_session(conn, session)
    return HeadNode(library, library.steps[0], info, settings, db, make_app(settings))


def test_jobs_stay_tracked_when_the_write_that_gives_them_back_fails(embedded_env: TunaEnv) -> None:
    env = embedded_env
    env.vars["TUNA_MAX_BUNDLE"] = "1"
    session = setup_session(env, jobs=2)
    worker = env.start_worker(session)
    worker.send_signal(signal.SIGINT)  # stops cleanly: its node is known stopped
    env.wait_for(lambda: worker.poll() is not None, what="the worker to stop")
    node = f"{worker_name(socket.gethostname(), env.settings.db_name, session)}@{socket.gethostname()}"
    first = head_node(env, session)
    first.claim_and_enqueue(2)
    tasks = sorted(first.inflight.tasks)
    env.query_commit("CREATE TRIGGER refuse BEFORE UPDATE ON job BEGIN SELECT RAISE(ABORT, 'refused'); END")

    # The head node finds the node stopped, but cannot write the jobs back ...
    first.started_on = dict.fromkeys(tasks, node)
    with pytest.raises(sa.exc.IntegrityError):
        first.reap_lost_tasks()
    assert sorted(first.inflight.tasks) == tasks and first.inflight.jobs == 2
    # ... and a restarted head node cannot release them either.
    restarted = head_node(env, session)
    with pytest.raises(sa.exc.IntegrityError):
        restarted.recover()
    assert sorted(restarted.inflight.tasks) == tasks and restarted.inflight.jobs == 2

    env.query_commit("DROP TRIGGER refuse")
    assert first.reap_lost_tasks() == 2
    assert first.inflight.tasks == {} and env.states(session) == {"new": 2}
