"""What a user sees: --status's rate and ETA, the progress line of long jobs, the end of a
run whose jobs failed (reasons, exit status), and --yaml files that say too little or
something unknown."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from cli_checks import one_line_error, run, snapshot
from conftest import ROOT, TunaEnv

from tuna import errors
from tuna.db.tables import job_attempt
from tuna.errors import EXIT_BAD_INPUT, EXIT_JOBS_FAILED
from tuna.progress import estimate, format_eta, format_rate

PROGRESS = re.compile(
    r"(?P<done>\d+)/(?P<total>\d+) jobs finished \((?P<ok>\d+) completed, (?P<failed>\d+) errored\), "
    r"(?P<retried>\d+) retries, (?P<inflight>\d+) in flight, (?P<rate>[^,]+), ETA (?P<eta>\S+)"
)
#: The fake rocminfo's error, as a job on a worker with FAKE_ROCMINFO_EXIT set prints it.
HSA_FAILURE = "hsa api call failure at: rocminfo.cc:1306"


def seconds(clock: str) -> int:
    """tqdm's [H:]MM:SS as seconds."""
    total = 0
    for part in clock.split(":"):
        total = total * 60 + int(part)
    return total


def progress_lines(log: str) -> list[re.Match[str]]:
    return [m for m in map(PROGRESS.search, log.splitlines()) if m]


# -- --status ----------------------------------------------------------------------------


def test_status_rate_and_eta_come_from_attempt_times_of_long_jobs(tuna_env: TunaEnv) -> None:
    """Two GPUs, 45 s jobs: jobs 1-2 ran from t=0 to 45 s, jobs 3-4 from 45 to 90 s (each
    pair finishing together), jobs 5-6 have run since 90 s, and it is now 95 s. Truth: 4 jobs
    in 90 s is 0.044 jobs/s (2.67 jobs/min), and the last two end at 135 s: 40 s left."""
    session = tuna_env.setup_session(jobs=6)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    t0 = now - timedelta(seconds=95)
    at = [(1, 0, 45), (2, 0, 45), (3, 45, 90), (4, 45, 90)]
    rows = [
        {
            "job_table": "job",
            "job_id": job,
            "attempt": 1,
            "session": session,
            "step": "example",
            "outcome": "completed",
            "hostname": "gpuhost",
            "gpu_id": (job - 1) % 2,
            "started": t0 + timedelta(seconds=start, microseconds=137 * job),
            "ended": t0 + timedelta(seconds=end, microseconds=211 * job),
        }
        for job, start, end in at
    ]
    engine = tuna_env.engine()
    try:
        with engine.begin() as conn:
            conn.execute(job_attempt.insert(), rows)
    finally:
        engine.dispose()
    tuna_env.query_commit("UPDATE job SET state = 'completed', attempt = 1 WHERE id <= 4")
    tuna_env.query_commit("UPDATE job SET state = 'running', attempt = 1 WHERE id > 4")

    out = tuna_env.ok("example", "--session_id", str(session), "--status")

    line = next(line for line in out.splitlines() if line.startswith("throughput:"))
    assert "2.67 jobs/min" in line, out
    eta = re.search(r"ETA (\S+)", line)
    assert eta, out
    # 40 s at the moment the rows were written; the command itself takes a few seconds.
    assert 25 <= seconds(eta.group(1)) <= 40, out


def test_rate_and_eta_of_hours_long_jobs() -> None:
    """8 GPUs, 2-hour jobs: 8 ended at 2 h, 16 are left, it is now 2 h 10 min."""
    guess = estimate(8, 0.0, 7200.0, 7800.0, 16)
    assert format_rate(guess.rate) == "4.00 jobs/h"
    assert format_eta(guess.eta_s) == "3:50:00"  # they end at 6 h
    # Past that moment with jobs still left, the rate is measured up to now: it falls.
    late = estimate(8, 0.0, 7200.0, 30000.0, 16)
    assert late.rate is not None and guess.rate is not None and late.rate < guess.rate
    assert format_eta(late.eta_s) == "16:40:00"
    assert format_rate(None) == "rate unknown" and format_eta(None) == "unknown"
    assert format_rate(12.5) == "12.5 jobs/s" and format_rate(0.5) == "30.0 jobs/min"


# -- the end of a run whose jobs all failed ---------------------------------------------


def test_execute_whose_jobs_all_fail_shows_why_and_exits_1(tuna_env: TunaEnv) -> None:
    tuna_env.vars["TUNA_MAX_RETRIES"] = "2"
    session = tuna_env.setup_session(jobs=3)

    # TUNA_GPU_ID makes the fake rocminfo act as a job on a GPU: it fails with status 3.
    proc = tuna_env.run(
        "example",
        "--session_id",
        str(session),
        "--execute",
        extra_env={"FAKE_ROCMINFO_EXIT": "3", "TUNA_GPU_ID": "0", "SLURM_CPUS_ON_NODE": "1"},
    )

    shown = f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == EXIT_JOBS_FAILED, shown
    assert proc.stdout.strip() == f"session {session}: errored 3", shown
    assert tuna_env.states(session) == {"errored": 3}
    check_reasons_line(proc.stderr, jobs=3)


def test_head_node_whose_jobs_all_fail_shows_why_and_exits_1(tuna_env: TunaEnv) -> None:
    """Each attempt takes 3 s and fails: the progress lines count the retries apart from
    the jobs, and the end names the reason and exits 1."""
    tuna_env.vars["TUNA_MAX_RETRIES"] = "2"
    session = tuna_env.setup_session(jobs=2)
    tuna_env.start_worker(
        session, extra_env={"FAKE_ROCMINFO_EXIT": "3", "FAKE_ROCMINFO_SLEEP": "3", "SLURM_CPUS_ON_NODE": "1"}
    )

    proc = tuna_env.run("example", "--session_id", str(session), "--enqueue_only")

    shown = f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == EXIT_JOBS_FAILED, shown
    assert proc.stdout.strip() == f"session {session}: errored 2", shown
    check_reasons_line(proc.stderr, jobs=2)
    lines = progress_lines(proc.stderr)
    assert lines, shown
    for m in lines:
        assert int(m["done"]) <= int(m["total"]) == 2, m.group(0)
        assert int(m["done"]) == int(m["ok"]) + int(m["failed"]), m.group(0)
    # Four attempts ran, two of them were retries; at least one line caught a retry.
    assert any(int(m["retried"]) >= 1 for m in lines), shown
    assert max(int(m["retried"]) for m in lines) <= 2, shown


def check_reasons_line(stderr: str, *, jobs: int) -> None:
    line = next((line for line in stderr.splitlines() if "most common reasons" in line), None)
    assert line is not None, stderr
    assert f"{jobs} jobs errored" in line, line
    # The reason is the first line of the job's result, cut there: the error's second line
    # (Call returned HSA_STATUS_...) stays in job.result.
    assert re.search(rf"{jobs}× \S*rocminfo exited with status 3: {re.escape(HSA_FAILURE)}…$", line), line
    assert "HSA_STATUS_ERROR" not in line


# -- the head node's progress line for long jobs ----------------------------------------


def test_progress_line_of_long_jobs_shows_jobs_per_minute_and_counts_down(tuna_env: TunaEnv) -> None:
    """Two 12 s jobs on one worker process: between the first finish (~12 s) and the second
    (~24 s) the 5 s lines must show a rate per minute and an ETA that counts down."""
    session = tuna_env.setup_session(jobs=2)
    tuna_env.start_worker(session, extra_env={"FAKE_ROCMINFO_SLEEP": "12", "SLURM_CPUS_ON_NODE": "1"})

    proc = tuna_env.run("example", "--session_id", str(session), "--enqueue_only")

    shown = f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, shown
    assert tuna_env.states(session) == {"completed": 2}
    between = [m for m in progress_lines(proc.stderr) if m["done"] == "1"]
    assert len(between) >= 2, shown
    for m in between:
        assert m["total"] == "2" and m["retried"] == "0", m.group(0)
        assert re.fullmatch(r"\d+(\.\d+)? jobs/min", m["rate"]), m.group(0)
    etas = [seconds(m["eta"]) for m in between]
    assert all(later < earlier for earlier, later in zip(etas, etas[1:])), etas
    assert 3 <= etas[0] - etas[1] <= 7, etas  # lines 5 s apart
    assert "\x1b" not in proc.stderr  # a plain log, no terminal control codes


# -- --yaml ------------------------------------------------------------------------------

REFUSED_YAML = {
    "unknown-top-level-key": ("session_id: 1\nexecute: true\nno_such_flag: 3\n", "unknown key 'no_such_flag'"),
    "unknown-key-in-a-step": (
        "session_id: 1\nexecute:\n  enabled: true\n  bogus: 1\n",
        "unknown key 'execute.bogus'",
    ),
    "unknown-step-not-enabled": ("session_id: 1\nstatsu:\n  enabled: false\n", "unknown key 'statsu'"),
    # The file: the step was dropped and session_id alone started a worker.
    "only-step-lacks-enabled": ("session_id: 1\nstatus: {}\n", "nothing to do: no step in"),
    "only-step-disabled": ("session_id: 1\nstatus:\n  enabled: false\n", "nothing to do: no step in"),
    "enabled-not-a-boolean": ("session_id: 1\nstatus:\n  enabled: 'yes'\n", "status.enabled must be true or false"),
    "empty-file": ("", "nothing to do:"),
}


@pytest.mark.parametrize("case", list(REFUSED_YAML))
def test_yaml_that_is_unknown_or_leaves_nothing_to_do_is_refused(embedded_env: TunaEnv, case: str) -> None:
    session = embedded_env.setup_session(jobs=2)
    assert session == 1
    before = snapshot(embedded_env)
    text, message = REFUSED_YAML[case]
    path = embedded_env.home / "options.yaml"
    path.write_text(text)

    proc = run(embedded_env, "example", "--yaml", str(path))  # fails the test if it starts a worker

    assert message in one_line_error(proc, EXIT_BAD_INPUT)
    assert snapshot(embedded_env) == before
    assert embedded_env.states(session) == {"new": 2}


def test_yaml_step_that_is_not_enabled_is_skipped_with_a_notice(embedded_env: TunaEnv) -> None:
    session = embedded_env.setup_session(jobs=2)
    path = embedded_env.home / "options.yaml"
    path.write_text(
        f"session_id: {session}\nexecute:\n  enabled: true\nstatus:\n  enabled: false\nshutdown_workers: {{}}\n"
    )

    proc = embedded_env.run("example", "--yaml", str(path))

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"session {session}: completed 2"  # --status did not run
    notices = [line for line in proc.stderr.splitlines() if "is skipped" in line]
    assert len(notices) == 2, proc.stderr
    assert "step status is skipped: it does not say enabled: true" in notices[0]
    assert "step shutdown_workers is skipped" in notices[1]


def test_help_lists_every_exit_code() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "go_fish.py"), "example", "--help"], capture_output=True, text=True, check=True
    ).stdout
    codes = re.findall(r"^  (\d+) ", out.split("exit status:")[1], flags=re.MULTILINE)
    every = sorted({value for name, value in vars(errors).items() if name.startswith("EXIT_")})
    assert codes == [str(code) for code in every], out
