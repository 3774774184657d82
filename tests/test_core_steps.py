"""The core's library interface for libraries of several steps (MIOpen's shape), exercised
through a small test library (tests/fixtures/two_step_library.py) registered with
TUNA_EXTRA_LIBRARIES: real head nodes, launchers and Celery workers, on both backends."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import TunaEnv

from tuna.errors import EXIT_BAD_INPUT

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LIB = "twostep"


def use_library(env: TunaEnv) -> None:
    env.vars["TUNA_EXTRA_LIBRARIES"] = f"{LIB}=two_step_library:TwoStepLibrary"
    env.vars["PYTHONPATH"] = os.pathsep.join(p for p in (str(FIXTURES), env.vars.get("PYTHONPATH", "")) if p)


def setup(
    env: TunaEnv, jobs: list[tuple[str, str, str]], *, arch: str = "gfx90a", retries: int = 0
) -> tuple[int, list[int]]:
    """Tables, a session and jobs given as (state, steps, action); returns (session, job ids)."""
    use_library(env)
    env.ok(LIB, "--add_tables")
    env.query_commit("INSERT INTO session_twostep (arch, num_cu, reason) VALUES (:a, 104, 'test')", a=arch)
    session = int(env.query("SELECT MAX(id) FROM session_twostep")[0][0])
    for state, steps, action in jobs:
        env.query_commit(
            "INSERT INTO job_twostep (session, state, steps, action) VALUES (:s, :st, :steps, :a)",
            s=session,
            st=state,
            steps=steps,
            a=action,
        )
    ids = [int(r[0]) for r in env.query("SELECT id FROM job_twostep WHERE session = :s ORDER BY id", s=session)]
    return session, ids


def job_states(env: TunaEnv, session: int) -> dict[int, str]:
    return {int(i): str(s) for i, s in env.query("SELECT id, state FROM job_twostep WHERE session = :s", s=session)}


def stored_states(env: TunaEnv, job_id: int, step: str) -> list[str]:
    rows = env.query("SELECT state FROM result_twostep WHERE job_id = :j AND step = :s ORDER BY id", j=job_id, s=step)
    return [str(r[0]) for r in rows]


def finished(env: TunaEnv, proc: subprocess.Popen[str], timeout: float = 180.0) -> str:
    env.wait_for(lambda: proc.poll() is not None, what="the process to end", timeout=timeout, every=0.2)
    return env.log_of(proc)


def test_compile_and_eval_head_nodes_carry_a_two_step_library(tuna_env: TunaEnv) -> None:
    env = tuna_env
    session, ids = setup(
        env,
        [
            ("uncompiled", "compile,eval", "slow@compile"),  # A: compiled while eval waits, then evaluated
            ("new", "eval", "ok"),  # B: needs no build
            ("uncompiled", "compile", "ok"),  # C: compile only: eval neither takes nor waits on it
            ("compiled", "compile,eval", "retry@eval"),  # D: back to compiled, then failed at eval's cap
            ("new", "eval", "retry"),  # E: back to new, then failed
            ("new", "eval", "refuse"),  # F: the store hook refuses its result
            ("new", "eval", "raise"),  # G: the store hook raises on it
        ],
    )
    a, b, c, d, e, f, g = ids
    env.vars["TWOSTEP_SLOW_S"] = "4"
    eval_workers = env.start(LIB, "--session_id", str(session), "--step", "eval")
    eval_head = env.start(LIB, "--session_id", str(session), "--step", "eval", "--enqueue_only", "--flavour", "spicy")
    env.wait_for(
        lambda: "waiting for 1 jobs of an earlier step" in env.log_of(eval_head),
        what="the eval head node to wait for the compile step",
        timeout=120,
        every=0.2,
    )
    assert eval_head.poll() is None and job_states(env, session)[a] == "uncompiled"
    # The build host has no GPU at all.
    cpu_only = {"FAKE_ROCMINFO_CPU_ONLY": "1"}
    compile_workers = env.start(LIB, "--session_id", str(session), "--step", "compile", extra_env=cpu_only)
    compile_head = env.start(LIB, "--session_id", str(session), "--step", "compile", "--enqueue_only")

    compile_log = finished(env, compile_head)
    assert compile_head.returncode == 0, compile_log
    eval_log = finished(env, eval_head)
    assert eval_head.returncode == 1, eval_log  # some eval jobs failed, as meant

    assert job_states(env, session) == {
        a: "evaluated",
        b: "evaluated",
        c: "compiled",
        d: "eval_failed",
        e: "eval_failed",
        f: "eval_failed",
        g: "eval_failed",
    }
    # Retryable failures went back to the state each was claimed from, up to eval's own cap (2).
    assert stored_states(env, d, "twostep_eval") == ["compiled", "eval_failed"]
    assert stored_states(env, e, "twostep_eval") == ["new", "eval_failed"]
    results = dict(env.query("SELECT id, result FROM job_twostep WHERE session = :s", s=session))
    assert "claimed_from=compiled state_at_claim=evaluating" in results[a] and "flavour=spicy" in results[a]
    assert "claimed_from=new" in results[b]
    for job in (a, b):  # one worker per GPU, pinned
        gpu = results[job].split("gpu=")[1].split()[0]
        assert gpu in ("0", "1") and f"rocr={gpu}" in results[job]
    assert results[f] == "its result could not be stored: the test library refuses it"
    assert results[g].startswith("its outcome could not be stored: RuntimeError: cannot store job")
    # The build ran with no GPU pinned, on a host registered without an arch.
    compiled = env.query("SELECT text FROM result_twostep WHERE job_id = :j AND step = 'twostep_compile'", j=a)
    assert compiled and "gpu=- rocr=-" in compiled[0][0]
    nodes = dict(env.query("SELECT nodename, processes FROM worker WHERE session = :s", s=session))
    per_gpu = sorted(n.split("@")[0].split(".")[0][-9:] for n in nodes if "_gpu_id_" in n)
    assert per_gpu == ["_gpu_id_0", "_gpu_id_1"] and all(nodes[n] == 1 for n in nodes if "_gpu_id_" in n)
    assert len(nodes) == 3
    for launcher in (eval_workers, compile_workers):
        env.wait_for(lambda launcher=launcher: launcher.poll() is not None, what="a launcher to stop", timeout=120)
        assert launcher.returncode == 0, env.log_of(launcher)


def test_interrupted_eval_jobs_return_to_the_state_they_were_claimed_from(tuna_env: TunaEnv, tmp_path: Path) -> None:
    env = tuna_env
    session, (x, y) = setup(env, [("compiled", "compile,eval", "slow@eval"), ("new", "eval", "slow")])
    markers = tmp_path / "markers"
    markers.mkdir()
    env.vars.update({"TWOSTEP_MARKER_DIR": str(markers), "TWOSTEP_SLOW_S": "60"})
    env.start(LIB, "--session_id", str(session), "--step", "eval")
    head = env.start(LIB, "--session_id", str(session), "--step", "eval", "--enqueue_only")
    env.wait_for(lambda: len(list(markers.iterdir())) == 2, what="both jobs to run", timeout=120, every=0.2)
    assert job_states(env, session) == {x: "evaluating", y: "evaluating"}

    head.send_signal(signal.SIGINT)
    log = finished(env, head, timeout=60)

    assert head.returncode != 0
    assert job_states(env, session) == {x: "compiled", y: "new"}, log
    assert "in-flight jobs returned to 'compiled' or 'new'" in log


def test_execute_returns_a_retried_job_to_its_claim_state_under_the_step_cap(embedded_env: TunaEnv) -> None:
    env = embedded_env
    session, (d, e, h) = setup(
        env, [("compiled", "compile,eval", "retry@eval"), ("new", "eval", "retry"), ("compiled", "eval", "ok")]
    )
    # A job at the filter's retry cap is not claimed, nor waited for.
    env.query_commit("UPDATE job_twostep SET retries = 2 WHERE id = :h", h=h)

    proc = env.run(LIB, "--session_id", str(session), "--step", "eval", "--execute", timeout=180)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert job_states(env, session) == {d: "eval_failed", e: "eval_failed", h: "compiled"}
    assert stored_states(env, d, "twostep_eval") == ["compiled", "eval_failed"]
    assert stored_states(env, e, "twostep_eval") == ["new", "eval_failed"]


@pytest.mark.parametrize(
    ("arch", "extra", "expected"),
    [
        ("gfx908", {}, "error: this host is gfx90a, session {session} is gfx908"),
        ("gfx90a", {"FAKE_ROCMINFO_CPU_ONLY": "1"}, "error: rocminfo at {rocm}/bin/rocminfo lists no GPU agent"),
    ],
)
def test_a_refused_host_is_one_line_and_starts_nothing(
    embedded_env: TunaEnv, arch: str, extra: dict[str, str], expected: str
) -> None:
    env = embedded_env
    session, _ = setup(env, [("compiled", "eval", "ok")], arch=arch)

    proc = env.run(LIB, "--session_id", str(session), "--step", "eval", extra_env=extra)

    assert proc.returncode == EXIT_BAD_INPUT
    lines = proc.stderr.strip().splitlines()
    assert lines == [expected.format(session=session, rocm=env.vars["ROCM_PATH"])], proc.stderr
    assert env.query("SELECT COUNT(*) FROM worker")[0][0] == 0
    assert env.query("SELECT COUNT(*) FROM machine")[0][0] == 0
