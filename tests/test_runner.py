"""A job's command is contained: its time limit holds whatever its children do, it dies
with the process that runs it, and a failure is visible in that process's log. Real
processes throughout: ``--execute``'s local processes and a real Celery worker."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from conftest import ROCM, TunaEnv

from tuna.errors import EXIT_JOBS_FAILED

#: A job pinned to a GPU, as on a worker, so that the fake rocminfo's knobs act.
PINNED = {"TUNA_GPU_ID": "0", "SLURM_CPUS_ON_NODE": "1"}


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                found.append(int(entry))
    return found


def read_pid(env: TunaEnv, path: Path, what: str) -> int:
    env.wait_for(path.exists, what=what, timeout=60)
    return int(path.read_text())


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def hanging_job(tmp_path: Path, seconds: int = 60, *, pinned: bool = True) -> dict[str, str]:
    """A rocminfo that starts a helper in its own session holding its stdout, then hangs.
    A worker pins its pool processes itself (``pinned=False``)."""
    return {
        **(PINNED if pinned else {}),
        "FAKE_ROCMINFO_SLEEP": str(seconds),
        "FAKE_ROCMINFO_HELPER": str(seconds),
        "FAKE_ROCMINFO_HELPER_PID": str(tmp_path / "helper.pid"),
        "FAKE_ROCMINFO_MARKER": str(tmp_path / "command.pid"),
    }


def worker_session(env: TunaEnv, jobs: int) -> int:
    """A session whose id other test runs on this broker rarely use: worker names carry the
    session but not the database (issue 9 §3), so two session-1 workers collide."""
    for label in ("spare1", "spare2"):
        env.ok("example", "--add_tables")
        env.ok("example", "--init_session", "-l", label)
    return env.setup_session(jobs=jobs)


def assert_all_gone(env: TunaEnv, pids: list[int], within: float = 15.0) -> None:
    env.wait_for(lambda: not any(alive(p) for p in pids), what=f"processes {pids} to be gone", timeout=within)


# -- issue 12 §1: a time limit holds whatever the command's children do -----------------


def test_time_limit_holds_when_a_helper_in_its_own_session_keeps_stdout_open(
    embedded_env: TunaEnv, tmp_path: Path
) -> None:
    env = embedded_env
    env.vars.update({"TUNA_JOB_TIME_LIMIT_S": "3", "TUNA_MAX_RETRIES": "1"})
    session = env.setup_session(jobs=1)
    start = time.monotonic()

    proc = env.run("example", "--session_id", str(session), "--execute", extra_env=hanging_job(tmp_path), timeout=40)

    took = time.monotonic() - start
    assert proc.returncode == EXIT_JOBS_FAILED, proc.stderr
    assert took < 25, f"--execute took {took:.0f} s for a 3 s time limit"
    [(state, result)] = env.query("SELECT state, result FROM job WHERE session = :s", s=session)
    assert state == "errored"
    assert "timed out after 3 s" in result
    command = int((tmp_path / "command.pid").read_text())
    helper = int((tmp_path / "helper.pid").read_text())
    assert_all_gone(env, [command, helper], within=5)


def test_a_command_that_exits_leaving_a_helper_on_its_stdout_completes_at_once(
    embedded_env: TunaEnv, tmp_path: Path
) -> None:
    env = embedded_env
    session = env.setup_session(jobs=2)
    knobs = {**PINNED, "FAKE_ROCMINFO_HELPER": "60", "FAKE_ROCMINFO_HELPER_PID": str(tmp_path / "helper.pid")}
    start = time.monotonic()

    proc = env.run("example", "--session_id", str(session), "--execute", extra_env=knobs, timeout=50)

    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert took < 30, f"--execute waited {took:.0f} s for a helper the job left behind"
    assert env.states(session) == {"completed": 2}
    assert not alive(int((tmp_path / "helper.pid").read_text()))
    assert "left 1 process(es) running after it ended; killed them" in proc.stderr


def test_time_limit_holds_on_a_worker_when_a_helper_keeps_stdout_open(services_env: TunaEnv, tmp_path: Path) -> None:
    env = services_env
    env.vars.update({"TUNA_JOB_TIME_LIMIT_S": "3", "TUNA_MAX_RETRIES": "1", "TUNA_MAX_BUNDLE": "1"})
    session = worker_session(env, jobs=1)
    env.start_worker(session, extra_env=hanging_job(tmp_path, pinned=False))
    start = time.monotonic()

    # Before: the job ended only at Celery's soft limit (30 s past the job's own).
    head = env.run("example", "--session_id", str(session), "--enqueue_only", timeout=60)
    assert head.returncode == EXIT_JOBS_FAILED, head.stderr

    took = time.monotonic() - start
    assert took < 25, f"the job ended {took:.0f} s after it was sent, for a 3 s time limit"
    [(state, result)] = env.query("SELECT state, result FROM job WHERE session = :s", s=session)
    assert state == "errored"
    assert "timed out after 3 s" in result
    assert_all_gone(env, [int((tmp_path / "helper.pid").read_text())], within=5)


# -- issue 9 §3: a command dies with the process that runs it, however it died ----------


def test_sigkilled_execute_leaves_no_job_process_running(embedded_env: TunaEnv, tmp_path: Path) -> None:
    env = embedded_env
    session = env.setup_session(jobs=1)
    head = env.start("example", "--session_id", str(session), "--execute", extra_env=hanging_job(tmp_path))
    command = read_pid(env, tmp_path / "command.pid", "the job's command to start")
    helper = read_pid(env, tmp_path / "helper.pid", "the job's helper to start")
    group = group_members(command)
    assert len(group) >= 2  # the command and its sleep

    os.kill(head.pid, signal.SIGKILL)
    head.wait(timeout=10)

    assert_all_gone(env, [command, helper, *group])


def test_sigkilled_local_process_running_the_job_leaves_nothing_running(embedded_env: TunaEnv, tmp_path: Path) -> None:
    env = embedded_env
    session = env.setup_session(jobs=1)
    env.start("example", "--session_id", str(session), "--execute", extra_env=hanging_job(tmp_path))
    command = read_pid(env, tmp_path / "command.pid", "the job's command to start")
    helper = read_pid(env, tmp_path / "helper.pid", "the job's helper to start")
    group = group_members(command)

    os.kill(parent_of(command), signal.SIGKILL)  # the pool process that runs the job

    assert_all_gone(env, [command, helper, *group])


@pytest.mark.parametrize("victim", ["pool process", "Celery main process"])
def test_sigkilled_celery_worker_leaves_no_job_process_running(
    services_env: TunaEnv, tmp_path: Path, victim: str
) -> None:
    env = services_env
    env.vars["TUNA_MAX_BUNDLE"] = "1"
    session = worker_session(env, jobs=1)
    env.start_worker(session, extra_env=hanging_job(tmp_path, pinned=False))
    env.start("example", "--session_id", str(session), "--enqueue_only")
    command = read_pid(env, tmp_path / "command.pid", "the job's command to start")
    helper = read_pid(env, tmp_path / "helper.pid", "the job's helper to start")
    group = group_members(command)
    pool = parent_of(command)

    # The main process: a cold stop, or the OOM killer; its pool processes die with it.
    os.kill(pool if victim == "pool process" else parent_of(pool), signal.SIGKILL)

    assert_all_gone(env, [command, helper, *group])


# -- issue 9 §3 and §4: failures are visible in the worker's log ---------------------------


def own_rocm_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "rocm"
    shutil.copytree(ROCM, tree)
    return tree


def test_a_library_exception_is_logged_with_its_traceback_and_one_line_in_the_row(
    services_env: TunaEnv, tmp_path: Path
) -> None:
    env = services_env
    session = worker_session(env, jobs=2)
    tree = own_rocm_tree(tmp_path)
    worker = env.start_worker(session, extra_env={"ROCM_PATH": str(tree)})
    (tree / "bin" / "rocminfo").write_text("this is not a program\n")  # exec fails: ENOEXEC in run_job

    head = env.run("example", "--session_id", str(session), "--enqueue_only")
    assert head.returncode == EXIT_JOBS_FAILED, head.stderr

    rows = env.query("SELECT id, state, result FROM job WHERE session = :s", s=session)
    assert {state for _, state, _ in rows} == {"errored"}
    assert all(result.startswith("OSError: [Errno 8] Exec format error") for _, _, result in rows)
    assert all("\n" not in result for _, _, result in rows)
    log = env.log_of(worker)
    for job_id, _, _ in rows:
        # Celery's format: "[time: LEVEL/ForkPoolWorker-N] message"
        assert re.search(rf"ERROR/\S+\] job {job_id} \(attempt 1\): example.run_job raised\nTraceback", log), log
        assert re.search(rf"WARNING/\S+\] job {job_id} attempt 1 failed: OSError: \[Errno 8\] Exec format error", log)


def test_every_failed_job_is_a_warning_in_the_worker_log(services_env: TunaEnv) -> None:
    env = services_env
    env.vars["TUNA_MAX_RETRIES"] = "1"
    session = worker_session(env, jobs=3)
    worker = env.start_worker(session, extra_env={"FAKE_ROCMINFO_EXIT": "3"})

    head = env.run("example", "--session_id", str(session), "--enqueue_only")
    assert head.returncode == EXIT_JOBS_FAILED, head.stderr

    assert env.states(session) == {"errored": 3}
    log = env.log_of(worker)
    for (job_id,) in env.query("SELECT id FROM job WHERE session = :s", s=session):
        line = next((x for x in log.splitlines() if f"] job {job_id} attempt 1 failed" in x), "")
        assert "WARNING/" in line, log
        assert "rocminfo exited with status 3: hsa api call failure at: rocminfo.cc:1306 | Call returned" in line


def test_celery_soft_time_limit_is_a_retry_not_a_permanent_failure(services_env: TunaEnv, tmp_path: Path) -> None:
    env = services_env
    env.vars["TUNA_MAX_BUNDLE"] = "1"
    session = worker_session(env, jobs=1)
    marker = tmp_path / "command.pid"
    worker = env.start_worker(session, extra_env={"FAKE_ROCMINFO_SLEEP": "3", "FAKE_ROCMINFO_MARKER": str(marker)})
    head = env.start("example", "--session_id", str(session), "--enqueue_only")
    command = read_pid(env, marker, "the job's command to start")
    marker.unlink()

    # What billiard does when a task passes its soft time limit: SIGUSR1 to the pool process.
    os.kill(parent_of(command), signal.SIGUSR1)
    env.wait_for(lambda: head.poll() is not None, what="the head node to finish", timeout=90)

    assert head.returncode == 0, env.log_of(head)
    [(state, retries)] = env.query("SELECT state, retries FROM job WHERE session = :s", s=session)
    assert (state, retries) == ("completed", 1)
    assert not alive(command)
    log = env.log_of(worker)
    assert "task time limit reached: jobs" in log
    assert "the task's time limit was reached on" in log
