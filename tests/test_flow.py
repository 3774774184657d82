"""The Example flow end to end, as a user runs it: tables, session, jobs, worker, head node."""

from __future__ import annotations

from conftest import TunaEnv
from redis import Redis

ROCMINFO_MARK = "amdgcn-amd-amdhsa--gfx90a:sramecc+:xnack-"


def test_seed_flow_completes_every_job_through_a_real_worker(tuna_env: TunaEnv) -> None:
    session = tuna_env.setup_session(jobs=25)
    worker = tuna_env.start_worker(session)

    out = tuna_env.ok("example", "--session_id", str(session), "--enqueue_only")

    assert "completed 25" in out
    assert tuna_env.states(session) == {"completed": 25}
    rows = tuna_env.query("SELECT result, gpu_id, machine_id, retries FROM job WHERE session = :s", s=session)
    for result, gpu_id, machine_id, retries in rows:
        assert ROCMINFO_MARK in result and result.startswith("ROCk module is loaded")
        assert gpu_id in (0, 1) and machine_id > 0 and retries == 0
    attempts = tuna_env.query("SELECT COUNT(*), MIN(hostname) FROM job_attempt WHERE session = :s", s=session)
    assert attempts[0][0] == 25 and attempts[0][1]
    # The head node shuts its session's worker down when the session is done.
    tuna_env.wait_for(lambda: worker.poll() is not None, what="the worker to exit")
    assert worker.returncode == 0


def test_execute_completes_new_jobs_without_a_broker(tuna_env: TunaEnv) -> None:
    session = tuna_env.setup_session(jobs=12)
    # A broker that does not exist proves --execute never needs one.
    out = tuna_env.ok(
        "example",
        "--session_id",
        str(session),
        "--execute",
        extra_env={"TUNA_CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"},
    )
    assert "completed 12" in out
    assert tuna_env.states(session) == {"completed": 12}
    results = tuna_env.query("SELECT DISTINCT result FROM job WHERE session = :s", s=session)
    assert len(results) == 1 and ROCMINFO_MARK in results[0][0]


def test_two_sessions_side_by_side_touch_only_their_own_jobs(tuna_env: TunaEnv) -> None:
    first = tuna_env.setup_session(jobs=30, label="first")
    second = tuna_env.setup_session(jobs=20, label="second")
    tuna_env.start_worker(first)
    tuna_env.start_worker(second)

    head_1 = tuna_env.start("example", "--session_id", str(first), "--enqueue_only")
    head_2 = tuna_env.start("example", "--session_id", str(second), "--enqueue_only")
    tuna_env.wait_for(lambda: head_1.poll() is not None and head_2.poll() is not None, what="both head nodes")

    assert head_1.returncode == 0 and head_2.returncode == 0
    assert tuna_env.states(first) == {"completed": 30}
    assert tuna_env.states(second) == {"completed": 20}
    # Each job's attempt was recorded once, under its own session.
    per_session = dict(tuna_env.query("SELECT session, COUNT(*) FROM job_attempt GROUP BY session"))
    assert per_session == {first: 30, second: 20}
    # Each head node deleted its own results after writing them, and its own queue.
    assert leftover_results(tuna_env) == []
    assert "shutdown sent to the session's workers on compile_q_" in tuna_env.log_of(head_1)


def leftover_results(env: TunaEnv) -> list[str]:
    prefix = f"celery-task-meta-d_{env.settings.db_name}_"
    if env.kind == "services":
        redis = Redis(host="127.0.0.1", port=6379, db=15)
        return [key.decode() for key in redis.scan_iter(match=prefix + "*")]
    return [path.name for path in (env.home / "results").glob(prefix + "*")]


def test_status_shows_the_counts_the_database_holds(tuna_env: TunaEnv) -> None:
    session = tuna_env.setup_session(jobs=7)
    tuna_env.query_commit("UPDATE job SET state = 'completed' WHERE id <= 3")
    tuna_env.query_commit("UPDATE job SET state = 'errored' WHERE id = 4")

    out = tuna_env.ok("example", "--session_id", str(session), "--status")

    lines = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith("  ")}
    assert lines == {"new": "3", "running": "0", "completed": "3", "errored": "1"}
    assert f"session {session} (example, gfx90a, 104 CUs): 7 jobs" in out
    assert "live workers: none" in out


def test_running_the_flow_twice_leaves_finished_jobs_alone(tuna_env: TunaEnv) -> None:
    session = tuna_env.setup_session(jobs=10)
    tuna_env.ok("example", "--session_id", str(session), "--execute")
    before = tuna_env.query("SELECT id, update_ts, attempt FROM job WHERE session = :s ORDER BY id", s=session)

    # A worker for a session with nothing left to run does not start (nor declare its queue).
    launcher = tuna_env.run("example", "--session_id", str(session))
    assert launcher.returncode == 0 and "no worker started" in launcher.stderr, launcher.stderr
    out = tuna_env.ok("example", "--session_id", str(session), "--enqueue_only")

    assert "completed 10" in out
    after = tuna_env.query("SELECT id, update_ts, attempt FROM job WHERE session = :s ORDER BY id", s=session)
    assert after == before


def test_two_head_nodes_on_one_session_split_by_label(tuna_env: TunaEnv) -> None:
    session = tuna_env.setup_session(jobs=1, label="seed")
    for label in ("part-a", "part-b"):
        out = tuna_env.ok("-l", label, "--session_id", str(session), "--count", "15", script="tuna/example/load_job.py")
        assert out.strip() == "New jobs added: 15"
    worker = tuna_env.start_worker(session)

    head_a = tuna_env.start("example", "--session_id", str(session), "--enqueue_only", "-l", "part-a")
    head_b = tuna_env.start("example", "--session_id", str(session), "--enqueue_only", "-l", "part-b")
    tuna_env.wait_for(lambda: head_a.poll() is not None and head_b.poll() is not None, what="both head nodes")

    assert (head_a.returncode, head_b.returncode) == (0, 0)
    rows = tuna_env.query("SELECT reason, state FROM job WHERE session = :s", s=session)
    assert {state for reason, state in rows if reason != "seed"} == {"completed"}
    assert sum(1 for reason, _ in rows if reason != "seed") == 30
    assert dict(rows)["seed"] == "new"  # neither label took the unlabelled job
    # The worker stays up while the session still has work: here, the job labelled "seed".
    assert worker.poll() is None
