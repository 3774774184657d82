"""The MIOpen tuning cycle as an operator runs it (issue 11, reference/miopen.md §4): import a
network's configs, update solvers, make a session, update applicability, load jobs, compile
on a build host without a GPU (head node ``--enqueue_only`` + the host's launcher), evaluate
on a host with two GPUs (one worker per GPU), and export MIOpen's files, read back with
:mod:`tuna.miopen.dbfiles`. On the real MariaDB, RabbitMQ and Redis and on the embedded
default, with the stand-in fin of tests/fixtures/rocm and its fault knobs.

The find cycle imports the whole of /work/shared/data/miopen/networks/resnet50.txt, as the
README's cycle does; the other tests take its first 4 lines (``LINES``, 26 jobs per step):
every (config, applicable solver) pair is one job and one fin run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import ROCM, SHARED_DATA, TunaEnv, kill_tree

from tuna.miopen.dbfiles import read_find_db, read_kernel_db, read_perf_sqlite, read_perf_text
from tuna.miopen.dbfiles.kerneldb import load_kernel

RESNET50 = SHARED_DATA / "miopen" / "networks" / "resnet50.txt"
LINES = int(os.environ.get("TUNA_TEST_R50_LINES", "4"))
WHOLE_NETWORK = 10_000
FIND = "miopen_find_compile,miopen_find_eval"
PERF = "miopen_perf_compile,miopen_perf_eval"
OUT = "tuna_1.0.0"
CYCLE_TIMEOUT_S = 300


# -- hosts -----------------------------------------------------------------------------------


def gpuless_rocm(tmp_path: Path) -> Path:
    """A ROCm tree whose rocminfo shows the CPU agent only: a build host."""
    tree = tmp_path / "rocm-build-host"
    shutil.copytree(ROCM, tree, symlinks=True)
    text = (ROCM / "bin" / "rocminfo").read_text()
    head, rest = text.split("cat <<'ROCMINFO'\n", 1)
    body = rest.split("\nROCMINFO", 1)[0]
    cpu_only = body.split("Agent 2", 1)[0] + "*** Done ***\n"
    script = tree / "bin" / "rocminfo"
    script.write_text("#!/bin/sh\ncat <<'ROCMINFO'\n" + cpu_only + "ROCMINFO\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return tree


def launch(
    env: TunaEnv, step: str, session: int, *, workers: int, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """A host's launcher for ``step``, once its ``workers`` Celery workers are ready."""
    proc = env.start("miopen", "--fin_steps", step, "--session_id", str(session), extra_env=extra_env)

    def ready() -> bool:
        assert proc.poll() is None, f"launcher exited early:\n{env.log_of(proc)}"
        return env.log_of(proc).count(" ready.") >= workers

    env.wait_for(ready, what=f"{workers} worker(s) of {step}", timeout=120)
    return proc


def head(env: TunaEnv, step: str, session: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return env.run(
        "miopen", "--fin_steps", step, "--session_id", str(session), "--enqueue_only", *extra, timeout=CYCLE_TIMEOUT_S
    )


def stop(env: TunaEnv, proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        kill_tree(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            kill_tree(proc)


# -- the cycle -------------------------------------------------------------------------------


def prepared(env: TunaEnv, steps: str, lines: int = LINES) -> int:
    """Tables, resnet50's first ``lines`` configs, solvers, a session on this host's GPU,
    applicability and the jobs of ``steps``; the session id."""
    if not RESNET50.exists():
        pytest.skip(f"no {RESNET50} (set TUNA_SHARED_DATA)")
    network = env.home / "resnet50.txt"
    network.write_text("".join(RESNET50.read_text().splitlines(keepends=True)[:lines]))
    env.ok("miopen", "--add_tables")
    env.ok("miopen", "import_configs", "-f", str(network), "-t", "r50")
    env.ok("miopen", "--update_solvers")
    session = int(env.ok("miopen", "--init_session", "-l", "tune").strip())  # arch and CUs: rocminfo
    env.ok("miopen", "--update_applicability", "--session_id", str(session))
    tunable = ["--tunable"] if steps == PERF else []  # perf tuning is for tunable solvers
    out = env.ok(
        "miopen", "load_job", "--session_id", str(session), "-t", "r50", "-l", "r50", "--fin_steps", steps, *tunable
    )
    assert out.startswith("New jobs added: ")
    return session


def jobs(env: TunaEnv, session: int) -> list[Any]:
    return env.query(
        "SELECT j.id, j.state, j.result, j.retries, j.gpu_id, j.config, s.solver "
        "FROM conv_job j JOIN solver s ON s.solver = j.solver WHERE j.session = :s ORDER BY j.id",
        s=session,
    )


def states(env: TunaEnv, session: int) -> Counter[str]:
    return Counter(str(row.state) for row in jobs(env, session))


def fin_calls(record: Path, step: str) -> list[dict[str, Any]]:
    path = record / "fin_calls.jsonl"
    calls = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [c for c in calls if step in c.get("steps", [])]


def compile_step(env: TunaEnv, session: int, step: str, build_host: Path, record: Path) -> None:
    builder = launch(
        env, step, session, workers=1, extra_env={"ROCM_PATH": str(build_host), "FAKE_FIN_RECORD": str(record)}
    )
    try:
        done = head(env, step, session)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        stop(env, builder)


def eval_step(env: TunaEnv, session: int, step: str, record: Path, knobs: dict[str, str] | None = None) -> None:
    gpus = launch(env, step, session, workers=2, extra_env={"FAKE_FIN_RECORD": str(record), **(knobs or {})})
    try:
        done = head(env, step, session)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        stop(env, gpus)


def assert_pinned(env: TunaEnv, session: int, record: Path, step: str) -> None:
    """Each eval ran on the GPU its worker was pinned to, and that GPU is on its job's row."""
    by_job = {(int(r.config), str(r.solver)): int(r.gpu_id) for r in jobs(env, session)}
    calls = fin_calls(record, step)
    assert len(calls) >= len(by_job)
    for call in calls:
        visible = call["env"].get("HIP_VISIBLE_DEVICES")
        assert visible in ("0", "1"), call["env"]
        assert call["env"].get("ROCR_VISIBLE_DEVICES") == visible
        (job,) = call["input"]
        key = (int(job["config_tuna_id"]), job["solvers"][0])
        assert by_job[key] == int(visible), (key, by_job[key], visible)


@pytest.mark.parametrize("tuna_env", ["services", "embedded"], indirect=True)
def test_find_cycle_from_network_to_find_db_and_kernel_db(tuna_env: TunaEnv, tmp_path: Path) -> None:
    env = tuna_env
    record = tmp_path / "record"
    record.mkdir()
    session = prepared(env, FIND, lines=WHOLE_NETWORK)
    total = len(jobs(env, session))
    assert states(env, session) == {"new": total}

    compile_step(env, session, "miopen_find_compile", gpuless_rocm(tmp_path), record)
    assert states(env, session) == {"compiled": total}
    compiles = fin_calls(record, "miopen_find_compile")
    assert len(compiles) == total
    assert all("HIP_VISIBLE_DEVICES" not in c["env"] for c in compiles)  # a build host pins nothing
    pending = env.query(
        "SELECT COUNT(*) FROM conv_find_db WHERE session = :s AND kernel_time = -1 AND valid = 1", s=session
    )
    assert pending[0][0] == total  # one row per (config, solver), no time until eval
    assert env.query("SELECT COUNT(*) FROM conv_kernel_cache")[0][0] > 0

    eval_step(env, session, "miopen_find_eval", record)
    rows = jobs(env, session)
    assert Counter(r.state for r in rows) == {"evaluated": total}, [(r.state, r.result) for r in rows]
    assert {r.result for r in rows} == {"Success"}
    assert {int(r.gpu_id) for r in rows} == {0, 1}  # both GPU workers took jobs
    assert_pinned(env, session, record, "miopen_find_eval")
    assert env.query("SELECT COUNT(*) FROM conv_find_db WHERE session = :s AND kernel_time > 0", s=session)[0][0] == (
        total
    )

    status = env.ok("miopen", "--fin_steps", "miopen_find_eval", "--session_id", str(session), "--status")
    assert f"conv_job jobs of {FIND}: evaluated {total}" in status, status
    per_gpu = re.findall(r"miopen_find_eval attempts on \S+ GPU (\d): (\w+) (\d+)", status)
    assert {gpu for gpu, _, _ in per_gpu} == {"0", "1"}, status
    assert sum(int(n) for _, _, n in per_gpu) == total

    out = env.ok("miopen", "export_db", "--session_id", str(session), "-f")
    fdb_path = env.home / out.strip().splitlines()[-1]
    fdb = read_find_db(fdb_path)
    configs = {int(r.config) for r in rows}
    assert len(fdb.records) == len(configs)  # one line per tuned problem
    keys = {str(k) for (k,) in env.query("SELECT DISTINCT fdb_key FROM conv_find_db WHERE session = :s", s=session)}
    assert set(fdb.records) == keys
    assert not fdb.skipped
    for entries in fdb.records.values():
        assert entries and all(e.time > 0 and e.algorithm.startswith("miopenConvolution") for e in entries)

    out = env.ok("miopen", "export_db", "--session_id", str(session), "-k")
    kdb_path = env.home / out.strip().splitlines()[-1]
    kernels = read_kernel_db(kdb_path)
    assert kernels
    assert len({(k.kernel_name, k.kernel_args) for k in kernels}) == len(kernels)
    first = kernels[0]
    assert load_kernel(kdb_path, first.kernel_name, first.kernel_args)  # md5 and size hold


@pytest.mark.parametrize("tuna_env", ["services"], indirect=True)
def test_perf_cycle_ends_in_perf_db_sqlite_and_text(tuna_env: TunaEnv, tmp_path: Path) -> None:
    env = tuna_env
    record = tmp_path / "record"
    record.mkdir()
    session = prepared(env, PERF)
    total = len(jobs(env, session))

    compile_step(env, session, "miopen_perf_compile", gpuless_rocm(tmp_path), record)
    assert states(env, session) == {"compiled": total}
    cached = env.query("SELECT COUNT(DISTINCT job_id) FROM conv_job_cache_fin")[0][0]
    assert cached == total
    assert env.query("SELECT COUNT(*) FROM conv_find_db")[0][0] == 0  # no find_db rows at perf compile

    eval_step(env, session, "miopen_perf_eval", record)
    rows = jobs(env, session)
    assert Counter(r.state for r in rows) == {"evaluated": total}, [(r.state, r.result) for r in rows]
    assert_pinned(env, session, record, "miopen_perf_eval")
    assert env.query("SELECT COUNT(*) FROM conv_job_cache_fin")[0][0] == 0  # §4.8, per job

    out = env.ok("miopen", "export_db", "--session_id", str(session), "-p")
    paths = [env.home / line for line in out.strip().splitlines()]
    sqlite_path = next(p for p in paths if p.suffix == ".db")
    text_path = next(p for p in paths if p.name.endswith(".db.txt"))
    in_sqlite = read_perf_sqlite(sqlite_path)
    in_text = read_perf_text(text_path)
    assert in_sqlite and {(e.config, e.solver, e.params) for e in in_sqlite} == {
        (e.config, e.solver, e.params) for e in in_text
    }
    assert len({e.config for e in in_sqlite}) <= len({int(r.config) for r in rows})


# -- faults ----------------------------------------------------------------------------------


def execute(env: TunaEnv, step: str, session: int, **knobs: str) -> subprocess.CompletedProcess[str]:
    return env.run(
        "miopen",
        "--fin_steps",
        step,
        "--session_id",
        str(session),
        "--execute",
        extra_env={**knobs},
        timeout=CYCLE_TIMEOUT_S,
    )


COMPILE_FAULTS = [
    ({"FAKE_FIN_EXIT": "3"}, "fin exited with status 3"),
    ({"FAKE_FIN_EMPTY": "1"}, "fin exited 0 but wrote an empty output file"),
    ({"FAKE_FIN_GARBAGE": "1"}, "fin's output is not JSON"),
    ({"FAKE_FIN_UNKNOWN_SOLVER": "1"}, "fin named solver 'ConvFakeSolverNotInGetSolvers'"),
    ({"FAKE_FIN_HANG": "1", "TUNA_JOB_TIME_LIMIT_S": "2"}, "fin timed out after 2 s"),
]


@pytest.mark.parametrize(("knobs", "reason"), COMPILE_FAULTS, ids=[next(iter(k)) for k, _ in COMPILE_FAULTS])
def test_a_failed_compile_is_errored_with_its_reason_never_compiled(
    embedded_env: TunaEnv, knobs: dict[str, str], reason: str
) -> None:
    env = embedded_env
    session = prepared(env, FIND, lines=1)
    execute(env, "miopen_find_compile", session, **knobs)
    rows = jobs(env, session)
    assert rows and {r.state for r in rows} == {"errored"}, [(r.state, r.result) for r in rows]
    assert all(reason in str(r.result) for r in rows), [r.result for r in rows]
    assert env.query("SELECT COUNT(*) FROM conv_find_db WHERE kernel_time > 0")[0][0] == 0


def test_eval_with_time_zero_is_retried_then_errored_and_never_exported(embedded_env: TunaEnv) -> None:
    env = embedded_env
    session = prepared(env, FIND, lines=1)
    assert execute(env, "miopen_find_compile", session).returncode == 0
    total = len(jobs(env, session))
    assert states(env, session) == {"compiled": total}
    execute(env, "miopen_find_eval", session, FAKE_FIN_ZERO_TIME="1")
    rows = jobs(env, session)
    assert {r.state for r in rows} == {"errored"}, [(r.state, r.retries, r.result) for r in rows]
    reasons = {str(r.result) for r in rows}
    assert reasons == {"evaluated with time 0.0 ms, not a usable measurement"}
    assert {int(r.retries) for r in rows} == {3}  # MITuna's rule: retried while retries < 2, then errored
    attempts = env.query("SELECT COUNT(*) FROM job_attempt WHERE step = 'miopen_find_eval'")[0][0]
    assert attempts == 3 * total
    out = env.ok("miopen", "export_db", "--session_id", str(session), "-f")
    assert read_find_db(env.home / out.strip().splitlines()[-1]).records == {}


# -- hosts and head nodes that die -----------------------------------------------------------


@pytest.mark.parametrize("tuna_env", ["services"], indirect=True)
def test_killed_gpu_worker_and_head_node_leave_no_job_stuck(tuna_env: TunaEnv, tmp_path: Path) -> None:
    env = tuna_env
    record = tmp_path / "record"
    record.mkdir()
    session = prepared(env, FIND, lines=2)
    total = len(jobs(env, session))
    build_host = gpuless_rocm(tmp_path)

    # The head node dies mid-compile and a new one finishes the step.
    builder = launch(
        env,
        "miopen_find_compile",
        session,
        workers=1,
        extra_env={"ROCM_PATH": str(build_host), "FAKE_FIN_SLEEP": "0.5"},
    )
    first = env.start("miopen", "--fin_steps", "miopen_find_compile", "--session_id", str(session), "--enqueue_only")
    env.wait_for(lambda: states(env, session)["compiled"] > 0, what="some compiled jobs", timeout=120)
    kill_tree(first)
    done = head(env, "miopen_find_compile", session)
    assert done.returncode == 0, done.stdout + done.stderr
    stop(env, builder)
    assert states(env, session) == {"compiled": total}

    # A GPU host dies mid-eval; the head node gives its jobs to the next host.
    slow = {"FAKE_FIN_SLEEP": "2", "FAKE_FIN_ONLY_STEP": "miopen_find_eval"}
    gpus = launch(env, "miopen_find_eval", session, workers=2, extra_env=slow)
    evaluating = env.start("miopen", "--fin_steps", "miopen_find_eval", "--session_id", str(session), "--enqueue_only")
    env.wait_for(lambda: states(env, session)["eval_start"] > 0, what="evals running", timeout=120)
    kill_tree(gpus)
    gpus = launch(env, "miopen_find_eval", session, workers=2, extra_env={"FAKE_FIN_RECORD": str(record)})
    assert evaluating.wait(timeout=CYCLE_TIMEOUT_S) == 0, env.log_of(evaluating)
    stop(env, gpus)
    rows = jobs(env, session)
    assert Counter(r.state for r in rows) == {"evaluated": total}, [(r.state, r.result) for r in rows]


@pytest.mark.parametrize("tuna_env", ["services"], indirect=True)
def test_ctrl_c_returns_each_job_to_the_state_it_was_claimed_from(tuna_env: TunaEnv, tmp_path: Path) -> None:
    env = tuna_env
    session = prepared(env, FIND, lines=1)
    assert execute(env, "miopen_find_compile", session).returncode == 0
    total = len(jobs(env, session))
    gpus = launch(
        env,
        "miopen_find_eval",
        session,
        workers=2,
        extra_env={"FAKE_FIN_SLEEP": "30", "FAKE_FIN_ONLY_STEP": "miopen_find_eval"},
    )
    headnode = env.start("miopen", "--fin_steps", "miopen_find_eval", "--session_id", str(session), "--enqueue_only")
    env.wait_for(lambda: states(env, session)["eval_start"] > 0, what="evals running", timeout=120)
    headnode.send_signal(signal.SIGINT)
    headnode.wait(timeout=120)
    stop(env, gpus)
    assert states(env, session) == {"compiled": total}  # back to compiled, not new (§11.2)


# -- result processing, on outcomes a worker produced ---------------------------------------


def test_a_job_whose_kernels_or_key_do_not_check_stores_nothing(embedded_env: TunaEnv) -> None:
    """fin's output is checked before anything of a job is written: a kernel blob whose md5
    is not its code object's, a db_key that is not the config's key (neither can the
    stand-in be made to write, so the worker's outcomes are altered on their way)."""
    import sqlalchemy as sa

    from tuna.db.engine import Database
    from tuna.library import WorkerContext, get_library
    from tuna.miopen import tables as t
    from tuna.miopen import tuning

    env = embedded_env
    session_id = prepared(env, FIND, lines=1)
    library = get_library("miopen")
    step = library.step("miopen_find_compile")
    db = Database(env.settings)
    with db.begin() as conn:
        session = library.get_session(conn, session_id)
        rows = [dict(r._mapping) for r in conn.execute(sa.select(t.conv_job).order_by(t.conv_job.c.id))][:3]
        payloads = tuning.job_payloads(conn, step, session, rows, {})
    ctx = WorkerContext("host", 1, -1, ROCM, 60.0, {})
    outcomes = []
    for row, payload in zip(rows, payloads, strict=True):
        run = library.run_job(step, payload, ctx)
        assert run.ok, run.reason
        outcomes.append({"job_id": row["id"], "attempt": 1, "ok": True, "result": run.result, "state": "compiled"})
    bad_md5, bad_key, good = outcomes
    result = json.loads(bad_md5["result"])
    result["items"][0]["kernel_objects"][0]["md5_sum"] = "0" * 32
    bad_md5["result"] = json.dumps(result)
    result = json.loads(bad_key["result"])
    result["db_key"] = result["db_key"].replace("-F", "-B")
    bad_key["result"] = json.dumps(result)
    with db.begin() as conn:
        failures = library.store_results_without_commit(conn, step, outcomes)
    assert set(failures) == {bad_md5["job_id"], bad_key["job_id"]}
    assert "md5 of the code object is" in failures[bad_md5["job_id"]]
    assert "is not the config's problem key" in failures[bad_key["job_id"]]
    stored = env.query("SELECT f.config, s.solver FROM conv_find_db f JOIN solver s ON s.id = f.solver")
    assert [(int(c), str(s)) for c, s in stored] == [(rows[2]["config"], rows[2]["solver"])]
    assert env.query("SELECT result FROM conv_job WHERE id = :i", i=good["job_id"])[0][0] == "Success"


# -- batch norm and hosts that contradict the session ----------------------------------------


def test_batch_norm_find_compile_fills_bn_find_db(embedded_env: TunaEnv) -> None:
    env = embedded_env
    lines = SHARED_DATA / "miopen" / "configs" / "batch_norm.txt"
    if not lines.exists():
        pytest.skip(f"no {lines} (set TUNA_SHARED_DATA)")
    env.ok("miopen", "--add_tables")
    env.ok("miopen", "import_configs", "-C", "batch_norm", "-f", str(lines), "-t", "bn")
    env.ok("miopen", "--update_solvers")
    s = env.ok("miopen", "--init_session", "-l", "bn").strip()
    env.ok("miopen", "--update_applicability", "--session_id", s, "-C", "batch_norm")
    compile_only = ("--fin_steps", "miopen_find_compile")
    env.ok("miopen", "load_job", "-C", "batch_norm", "--session_id", s, "-t", "bn", *compile_only)
    total = env.query("SELECT COUNT(*) FROM bn_job")[0][0]
    assert total > 0
    refused = env.run("miopen", "--fin_steps", "miopen_find_eval", "-C", "batch_norm", "--session_id", s, "--execute")
    assert refused.returncode != 0
    assert "fin tunes batch norm with miopen_find_compile only" in refused.stderr
    done = env.run("miopen", "--fin_steps", "miopen_find_compile", "-C", "batch_norm", "--session_id", s, "--execute")
    assert done.returncode == 0, done.stderr
    assert dict(env.query("SELECT state, COUNT(*) FROM bn_job GROUP BY state")) == {"compiled": total}
    assert env.query("SELECT COUNT(*) FROM bn_find_db WHERE kernel_time = -1")[0][0] == total
    assert env.query("SELECT COUNT(*) FROM conv_job")[0][0] == 0


def test_a_host_that_contradicts_the_session_is_refused(embedded_env: TunaEnv, tmp_path: Path) -> None:
    env = embedded_env
    prepared(env, FIND, lines=1)
    other = int(env.ok("miopen", "--init_session", "-l", "mi300", "-a", "gfx942", "-n", "304").strip())
    gpu = env.run("miopen", "--fin_steps", "miopen_find_eval", "--session_id", str(other), timeout=60)
    assert gpu.returncode != 0
    assert f"this host's GPU is gfx90a with 104 CUs; session {other} tunes gfx942 with 304 CUs" in gpu.stderr
    newer = tmp_path / "rocm-newer"
    shutil.copytree(ROCM, newer, symlinks=True)
    (newer / ".info" / "version").write_text("9.9.9\n")
    build = env.run(
        "miopen",
        "--fin_steps",
        "miopen_find_compile",
        "--session_id",
        "1",
        extra_env={"ROCM_PATH": str(newer)},
        timeout=60,
    )
    assert build.returncode != 0
    assert "this host has ROCm 9.9.9; session 1 was made with" in build.stderr


def test_eval_claims_compiled_jobs_and_new_jobs_without_a_compile_step_only(embedded_env: TunaEnv) -> None:
    """§4.2: eval also claims ``new`` jobs, those evaluating what other jobs compiled; a new
    job whose own compile step has not run is left for it, and a job without the eval step
    is never evaluated."""
    env = embedded_env
    session = prepared(env, "miopen_find_compile", lines=1)
    s = str(session)
    assert execute(env, "miopen_find_compile", session).returncode == 0
    total = len(jobs(env, session))
    for label, steps in (("eval_only", "miopen_find_eval"), ("both", FIND)):
        env.ok("miopen", "load_job", "--session_id", s, "-t", "r50", "-l", label, "--fin_steps", steps)
    done = execute(env, "miopen_find_eval", session)
    assert done.returncode == 0, done.stderr
    by_label = Counter((str(r.reason), str(r.state)) for r in env.query("SELECT reason, state FROM conv_job"))
    assert by_label == {("r50", "compiled"): total, ("eval_only", "evaluated"): total, ("both", "new"): total}


@pytest.mark.parametrize("tuna_env", ["services"], indirect=True)
def test_an_unknown_solver_errors_its_jobs_and_the_head_node_goes_on(tuna_env: TunaEnv, tmp_path: Path) -> None:
    """MITuna's consumer died on a solver name it did not know (§11.5); here the jobs that
    name it fail with the name, and the head node finishes the step."""
    env = tuna_env
    session = prepared(env, FIND, lines=1)
    total = len(jobs(env, session))
    builder = launch(
        env,
        "miopen_find_compile",
        session,
        workers=1,
        extra_env={"ROCM_PATH": str(gpuless_rocm(tmp_path)), "FAKE_FIN_UNKNOWN_SOLVER": "1"},
    )
    try:
        done = head(env, "miopen_find_compile", session)
    finally:
        stop(env, builder)
    assert done.returncode != 0  # it ended with errored jobs, and says so
    assert f"{total} jobs errored" in done.stderr, done.stderr
    rows = jobs(env, session)
    assert {r.state for r in rows} == {"errored"}
    assert {r.result for r in rows} == {
        "its result could not be stored: fin named solver 'ConvFakeSolverNotInGetSolvers', "
        "which is not in the solver table (run --update_solvers)"
    }


def hold_step(env: TunaEnv, session: int, step: str) -> subprocess.Popen[str]:
    """A process that holds ``step``'s scope lock, as a head node working on it does,
    until its standard input is closed."""
    code = f"""
import sys
from tuna.config import load_settings
from tuna.db.engine import Database
from tuna.jobs import Scope
from tuna.library import get_library
from tuna.ownership import hold_scope
settings = load_settings()
library = get_library("miopen")
step = library.step({step!r})
hold_scope(Database(settings), settings.db_name, Scope(library.table_of(step), {session}), step)
print("held", flush=True)
sys.stdin.read()
"""
    holder = subprocess.Popen(
        [sys.executable, "-c", code], env=env.vars, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_eval_waits_for_new_jobs_only_while_their_compile_step_runs(embedded_env: TunaEnv) -> None:
    """An eval started while the compile step is at work keeps going, even when every job
    it will get is still `new`; once no compile runs, it stops waiting for them."""
    env = embedded_env
    session = prepared(env, FIND, lines=1)
    total = len(jobs(env, session))
    holder = hold_step(env, session, "miopen_find_compile")
    evaluation = env.start("miopen", "--fin_steps", "miopen_find_eval", "--session_id", str(session), "--execute")
    try:
        env.wait_for(
            lambda: f"waiting for {total} jobs of an earlier step" in env.log_of(evaluation),
            what="the eval to wait for the compile step",
            timeout=30,
        )
        assert evaluation.poll() is None, env.log_of(evaluation)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    env.wait_for(lambda: evaluation.poll() is not None, what="the eval to stop waiting", timeout=30)
    assert evaluation.returncode == 0, env.log_of(evaluation)
    assert states(env, session) == {"new": total}
