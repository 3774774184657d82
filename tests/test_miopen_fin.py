"""MIFin for the MIOpen library: the stand-in ``fin`` of the test fixtures, the runner
(:mod:`tuna.miopen.fin`), ``--update_solvers``, ``--update_applicability``, ``load_job`` and
``-e``, as a user runs them, on SQLite and on the real MariaDB.

The stand-in is checked against the real fin output in ``../shared/data/miopen/fin`` and its
db_key against tuna's own problem key (:mod:`tuna.miopen.keys`): two implementations of §13.1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_checks import one_line_error, snapshot
from conftest import ROCM, SHARED_DATA, TunaEnv, descendants

from tuna.errors import EXIT_BAD_INPUT, EXIT_ERROR
from tuna.miopen import fin
from tuna.miopen.dbfiles import KernelObject, kernel_row
from tuna.miopen.driver import parse_line
from tuna.miopen.keys import problem_key
from tuna.miopen.problem import BnProblem, ConvProblem

FIN = ROCM / "bin" / "fin"
REAL_OUTPUT = SHARED_DATA / "miopen" / "fin" / "fin_output_find_eval.json"
RESNET50 = SHARED_DATA / "miopen" / "networks" / "resnet50.txt"
KNOB_PREFIX = "FAKE_FIN_"
LINES = [
    "./bin/MIOpenDriver conv -n 128 -c 1024 -H 14 -W 14 -k 2048 -y 1 -x 1 -p 0 -q 0 -u 2 -v 2 -l 1 -j 1 -g 1 -F 1",
    "./bin/MIOpenDriver conv -n 128 -c 1024 -H 14 -W 14 -k 2048 -y 1 -x 1 -p 0 -q 0 -u 2 -v 2 -l 1 -j 1 -g 1 -F 2",
    "./bin/MIOpenDriver conv -n 64 -c 128 -H 28 -W 28 -k 128 -y 3 -x 3 -p 1 -q 1 -u 1 -v 1 -l 1 -j 1 -m conv -g 1 -F 4",
    "./bin/MIOpenDriver convfp16 -n 32 -c 64 -H 56 -W 56 -k 64 -y 3 -x 3 -p 1 -q 1 -u 1 -v 1 -l 1 -j 1 -g 1 -F 2 "
    "--in_layout NHWC --fil_layout NHWC --out_layout NHWC",
    "./bin/MIOpenDriver convbfp16 -n 16 -c 256 -H 30 -W 30 -k 512 -y 3 -x 3 -p 2 -q 2 -u 2 -v 2 -l 2 -j 2 -g 32 -F 1",
    "./bin/MIOpenDriver conv -n 4 -c 16 --in_d 8 -H 16 -W 16 -k 32 --fil_d 3 -y 3 -x 3 --pad_d 1 -p 1 -q 1 "
    "--conv_stride_d 2 -u 2 -v 2 --dilation_d 1 -l 1 -j 1 --spatial_dim 3 -g 1 -F 4",
    "./bin/MIOpenDriver conv -n 8 -c 32 -H 17 -W 9 -k 48 -y 5 -x 1 -p 2 -q 0 -u 1 -v 1 -l 1 -j 1 -m trans -g 1 -F 1",
    "./bin/MIOpenDriver conv -n 2 -c 8 -H 7 -W 7 -k 8 -y 3 -x 3 -p 1 -q 1 -u 1 -v 1 -l 1 -j 1 -g 1 -F 2 "
    "--in_layout NHWC --fil_layout NCHW --out_layout NHWC",
]


def base_env(**knobs: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(KNOB_PREFIX)}
    env.update(knobs)
    return env


def run_stand_in(tmp_path: Path, jobs: list[dict[str, Any]], **knobs: str) -> tuple[int, str]:
    in_path, out_path = tmp_path / "in.json", tmp_path / "out.json"
    in_path.write_text(json.dumps(jobs))
    out_path.unlink(missing_ok=True)
    proc = subprocess.run(
        [str(FIN), "-i", str(in_path), "-o", str(out_path)],
        env=base_env(**knobs),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, out_path.read_text() if out_path.exists() else ""


def fin_run(step: str, jobs: list[dict[str, Any]], **knobs: str) -> fin.FinResult:
    env = fin.fin_env(step, base=base_env(**knobs))
    return fin.run_fin(step, jobs, rocm_path=ROCM, timeout_s=60, env=env)


def conv_object(line: str) -> tuple[ConvProblem, dict[str, Any]]:
    (problem,) = parse_line(line)
    assert isinstance(problem, ConvProblem)
    obj = fin.config_object(problem.config_row(), problem.input_tensor(), problem.weight_tensor())
    return problem, obj


def job_for(step: str, line: str, **kwargs: Any) -> dict[str, Any]:
    problem, obj = conv_object(line)
    return fin.problem_job(step, 7, obj, arch="gfx90a", num_cu=104, direction=fin.direction_flag(obj), **kwargs)


def shape(value: Any) -> Any:
    """The keys and value types of a JSON value, for comparing two outputs' shape."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def covers(ours: Any, real: Any, where: str = "") -> None:
    """Every key of ``real`` is in ``ours`` with a value of the same shape."""
    if isinstance(real, dict):
        assert isinstance(ours, dict), where
        for key, value in real.items():
            assert key in ours, f"{where}.{key} missing"
            covers(ours[key], value, f"{where}.{key}")
    elif isinstance(real, list):
        assert isinstance(ours, list), where
        if real:
            assert ours, f"{where} is empty"
            covers(ours[0], real[0], f"{where}[0]")
    else:
        numbers = {"int", "float"}
        assert ours == real or (ours in numbers and real in numbers), f"{where}: {ours} vs {real}"


# -- the stand-in -------------------------------------------------------------------------------


def test_stand_in_usage_with_other_argument_counts_exits_zero() -> None:
    for args in ([], ["-i", "x"], ["-i", "a", "-o", "b", "extra"]):
        proc = subprocess.run([str(FIN), *args], capture_output=True, text=True, timeout=30, env=base_env())
        assert proc.returncode == 0
        assert proc.stdout.startswith("Usage:")


def test_stand_in_eval_output_has_the_shape_of_real_fin(tmp_path: Path) -> None:
    if not REAL_OUTPUT.exists():
        pytest.skip(f"no {REAL_OUTPUT} (set TUNA_SHARED_DATA)")
    real = json.loads(REAL_OUTPUT.read_text())
    job = real[1]["input"]  # the real input, with its real kernel object
    code, text = run_stand_in(tmp_path, [job])
    assert code == 0
    ours = json.loads(text)
    assert len(ours) == 2 and "process_env" in ours[0]
    covers(shape(ours), shape(real))
    result = ours[1]
    assert result["db_key"] == real[1]["db_key"] == "2048-7-7-1x1-1024-14-14-128-0x0-2x2-1x1-0-NCHW-FP32-B"
    assert (result["arch"], result["config_tuna_id"], result["direction"]) == (job["arch"], 125733, 2)
    assert result["input"] == job
    (item,) = result["miopen_find_eval_result"]
    assert item["solver_name"] == "ConvAsm1x1UV2" and item["evaluated"] is True and item["reason"] == "Success"
    assert item["algorithm"] == "miopenConvolutionBwdDataAlgoDirect"
    # §13.5: enums as integers (B is direction 1), a positive time in ms, the kernels echoed.
    assert (item["layout"], item["data_type"], item["direction"], item["bias"]) == (0, 1, 1, 0)
    assert isinstance(item["time"], float) and item["time"] > 0
    assert item["kernel_objects"] == job["miopen_find_compile_result"][0]["kernel_objects"]


def test_compile_gives_one_item_per_solver_tried_with_failures_and_checkable_kernels(tmp_path: Path) -> None:
    solvers = fin.solvers_of(fin_run("get_solvers", [fin.get_solvers_job()]))
    conv = [s.name for s in solvers if s.config_type == "convolution"]
    assert len(conv) >= 20 and {"ConvBinWinograd3x3U", "GemmFwdRest", "ConvDirectNaiveConvFwd"} <= set(conv)
    assert {s.config_type for s in solvers} == {"convolution", "batch_norm"}
    for step, flag in (("miopen_find_compile", "find_compiled"), ("miopen_perf_compile", "perf_compiled")):
        result = fin_run(step, [job_for(step, LINES[2])])
        assert result.ok, result.reason
        items = result.results[0][fin.RESULT_KEY[step]]
        assert [i["solver_name"] for i in items] == conv  # every conv solver, when none is named
        failed = [i for i in items if not i[flag]]
        passed = [i for i in items if i[flag]]
        assert failed and passed
        assert all(i["reason"] and i["reason"] != "Success" for i in failed)
        for item in passed:
            assert item["reason"] == "Success" and item["kernel_objects"] and "tunable" in item and "params" in item
            assert ("workspace" in item) == (step == "miopen_find_compile")
            for obj in item["kernel_objects"]:
                row = kernel_row(KernelObject.from_fin(obj), "gfx90a:sramecc+:xnack-")  # decodes, checks md5/size
                assert row.uncompressed_size == obj["uncompressed_size"] > 0
        # A named solver: that one only.
        (item,) = fin_run(step, [job_for(step, LINES[2], solver="ConvBinWinogradRxS")]).results[0][fin.RESULT_KEY[step]]
        assert item["solver_name"] == "ConvBinWinogradRxS"
    # Winograd 3x3 applies to a 3x3 stride-1 FP32 problem (a W one here), not to a strided one.
    apply = fin_run("applicability", [job_for("applicability", line) for line in LINES])
    per_line = [r["applicable_solvers"] for r in apply.results]
    assert "ConvWinograd3x3MultipassWrW<3-4>" in per_line[2]
    assert not [name for name in per_line[4] if "Winograd" in name]
    assert all(
        "ConvDirectNaiveConv" + {1: "Fwd", 2: "Bwd", 4: "Wrw"}[r["direction"]] in r["applicable_solvers"]
        for r in apply.results
    )


def test_db_key_is_tunas_problem_key(tmp_path: Path) -> None:
    lines = list(LINES)
    if RESNET50.exists():
        lines += [line for line in RESNET50.read_text().splitlines() if "-F" in line][:30]
    jobs, problems = [], []
    for index, line in enumerate(lines):
        problem, obj = conv_object(line)
        problems.append(problem)
        jobs.append(
            fin.problem_job(
                "miopen_find_compile", index, obj, arch="gfx908", num_cu=120, direction=fin.direction_flag(obj)
            )
        )
    result = fin_run("miopen_find_compile", jobs)
    assert result.ok, result.reason
    for problem, answer in zip(problems, result.results, strict=True):
        assert answer["db_key"] == problem_key(problem), problem


def test_eval_is_deterministic_with_miopen_enums_and_the_zero_time_knob(tmp_path: Path) -> None:
    compiled = fin_run("miopen_find_compile", [job_for("miopen_find_compile", LINES[3])]).results[0]
    entries = [
        {
            "solver_name": i["solver_name"],
            "find_compiled": i["find_compiled"],
            "kernel_objects": i.get("kernel_objects", []),
        }
        for i in compiled["miopen_find_compile_result"]
    ]
    job = job_for("miopen_find_eval", LINES[3], compiled=entries)
    assert job["steps"] == ["alloc_buf", "fill_buf", "miopen_find_eval"]
    first, second = (fin_run("miopen_find_eval", [job]).results[0] for _ in range(2))
    assert first["miopen_find_eval_result"] == second["miopen_find_eval_result"]
    items = first["miopen_find_eval_result"]
    assert len(items) == len(entries)
    good = [i for i in items if i["evaluated"]]
    assert good and all(i["time"] > 0 for i in good)
    # NHWC (1), FP16 (0), backward data (1).
    assert {(i["layout"], i["data_type"], i["direction"]) for i in good} == {(1, 0, 1)}
    zero = fin_run("miopen_find_eval", [job], FAKE_FIN_ZERO_TIME="1").results[0]["miopen_find_eval_result"]
    assert all(i["time"] == 0 for i in zero if i["evaluated"])
    unknown = fin_run("miopen_find_eval", [job], FAKE_FIN_UNKNOWN_SOLVER="1").results[0]
    assert unknown["miopen_find_eval_result"][0]["solver_name"] not in {e["solver_name"] for e in entries}


def test_batch_norm_has_applicability_and_find_compile_only(tmp_path: Path) -> None:
    (problem,) = parse_line("./bin/MIOpenDriver bnormfp16 -n 256 -c 64 -H 56 -W 56 -m 1 --forw 1 -b 0 -s 1 -r 1")
    assert isinstance(problem, BnProblem)
    row = {**problem.config_row(), "id": 3}
    obj = fin.config_object(row, problem.input_tensor(), config_type="batch_norm")
    assert obj["cmd"] == "bnormfp16"
    direction = fin.direction_flag(obj, "batch_norm")
    assert direction == 1
    applicable = fin_run(
        "applicability",
        [fin.problem_job("applicability", 3, obj, arch="gfx90a", num_cu=104, direction=direction)],
    )
    assert fin.applicable_of(applicable)[3] == ["BnFwdTrainingSpatialSingle", "BnFwdTrainingSpatialMultiple"]
    compiled = fin_run(
        "miopen_find_compile",
        [fin.problem_job("miopen_find_compile", 3, obj, arch="gfx90a", num_cu=104, direction=direction)],
    )
    assert compiled.ok
    assert compiled.results[0]["db_key"].startswith("bn")
    assert sum(i["find_compiled"] for i in compiled.results[0]["miopen_find_compile_result"]) == 2
    refused = fin_run(
        "miopen_perf_compile",
        [fin.problem_job("miopen_perf_compile", 3, obj, arch="gfx90a", num_cu=104, direction=direction)],
    )
    assert not refused.ok and "not supported for batch norm" in refused.reason


# -- the runner ---------------------------------------------------------------------------------


@pytest.fixture
def private_tmp(tmp_path: Path) -> Iterator[Path]:
    """tempfile's folder pointed at an empty folder, to see what the runner leaves behind."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    saved = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = saved


FAULTS = [
    ({"FAKE_FIN_EXIT": "3"}, r"^fin exited with status 3: MIOpen Error: .*Code object build failed\.$", "stderr"),
    ({"FAKE_FIN_EMPTY": "1"}, r"^fin exited 0 but wrote an empty output file", None),
    ({"FAKE_FIN_GARBAGE": "1"}, r"^fin's output is not JSON: ", None),
    ({"FAKE_FIN_HANG": "1"}, r"^fin timed out after 1\.5 s and was killed$", "stdout"),
    ({"FAKE_FIN_CRASH": "1"}, r"^fin was killed by signal 11 \(SIGSEGV\)$", "stdout"),
]


@pytest.mark.parametrize(("knobs", "reason", "tail"), FAULTS, ids=[next(iter(f[0])) for f in FAULTS])
def test_runner_turns_each_fin_failure_into_a_one_line_reason(
    private_tmp: Path, knobs: dict[str, str], reason: str, tail: str | None
) -> None:
    env = fin.fin_env("miopen_find_compile", base=base_env(**knobs), work_dir=private_tmp / "work")
    result = fin.run_fin(
        "miopen_find_compile", [job_for("miopen_find_compile", LINES[0])], rocm_path=ROCM, timeout_s=1.5, env=env
    )
    assert not result.ok and not result.results
    assert "\n" not in result.reason
    assert re.search(reason, result.reason), result.reason
    assert result.retryable == ("FAKE_FIN_HANG" in knobs or "FAKE_FIN_CRASH" in knobs)
    if tail == "stderr":
        assert "Code object build failed" in result.stderr
    elif tail == "stdout":
        assert result.stdout.startswith("fin: ")
    assert sorted(p.name for p in private_tmp.iterdir()) == []  # input and output removed


def test_runner_refuses_output_of_the_wrong_shape_and_an_invalid_group_count(private_tmp: Path) -> None:
    work = private_tmp / "work"
    bad = job_for("miopen_find_compile", LINES[0])
    bad["config"]["group_count"] = 3  # does not divide 1024 channels: fin exits 0, file empty
    result = fin.run_fin(
        "miopen_find_compile", [bad], rocm_path=ROCM, timeout_s=30, env=fin.fin_env("x", work_dir=work)
    )
    assert not result.ok and result.exit_status == 0
    assert result.reason.startswith("fin exited 0 but wrote an empty output file")
    assert fin.check_output('[{"process_env": []}]', "miopen_find_compile", 1) == (
        "fin's output holds 0 job result(s) for 1 job(s)"
    )
    assert fin.check_output('[{"process_env": []}, {"db_key": "x"}]', "miopen_find_eval", 1) == (
        "fin's job result 1 has no miopen_find_eval_result list"
    )
    assert fin.check_output('{"process_env": []}', "get_solvers", 1).startswith("fin's output is not [")
    missing = fin.run_fin("get_solvers", [fin.get_solvers_job()], rocm_path=private_tmp, timeout_s=5)
    assert not missing.ok and missing.reason.startswith("fin could not start: ")


def test_fin_runs_with_the_step_environment_and_evals_see_only_their_gpu(tmp_path: Path) -> None:
    record = tmp_path / "record"
    record.mkdir()
    work = tmp_path / "work"
    parent = base_env(FAKE_FIN_RECORD=str(record), HIP_VISIBLE_DEVICES="0,1", ROCR_VISIBLE_DEVICES="0,1")
    compile_env = fin.fin_env(
        "miopen_find_compile", find_mode=3, blacklist=["MIOPEN_DEBUG_CONV_FFT"], work_dir=work, base=parent
    )
    compiled = fin.run_fin(
        "miopen_find_compile", [job_for("miopen_find_compile", LINES[2])], rocm_path=ROCM, timeout_s=60, env=compile_env
    )
    entries = [
        {"solver_name": i["solver_name"], "find_compiled": True, "kernel_objects": i["kernel_objects"]}
        for i in compiled.results[0]["miopen_find_compile_result"]
        if i["find_compiled"]
    ]
    eval_env = fin.fin_env("miopen_find_eval", gpu_id=1, work_dir=work, base=parent)
    evaluated = fin.run_fin(
        "miopen_find_eval",
        [job_for("miopen_find_eval", LINES[2], compiled=entries)],
        rocm_path=ROCM,
        timeout_s=60,
        env=eval_env,
    )
    assert evaluated.ok and all(i["evaluated"] for i in evaluated.results[0]["miopen_find_eval_result"])
    calls = [json.loads(line) for line in (record / "fin_calls.jsonl").read_text().splitlines()]
    assert [c["steps"] for c in calls] == [["miopen_find_compile"], ["miopen_find_eval"]]
    first, second = (c["env"] for c in calls)
    assert first == {
        "MIOPEN_LOG_LEVEL": "4",
        "MIOPEN_SQLITE_KERN_CACHE": "ON",
        "MIOPEN_DEBUG_IMPLICIT_GEMM_FIND_ALL_SOLUTIONS": "1",
        "MIOPEN_FIND_MODE": "3",
        "MIOPEN_DEBUG_CONV_FFT": "0",
        "MIOPEN_USER_DB_PATH": str(work / "thread-0" / "config" / "miopen"),
        "MIOPEN_CUSTOM_CACHE_DIR": str(work / "thread-0" / "cache"),
    }
    assert second["HIP_VISIBLE_DEVICES"] == second["ROCR_VISIBLE_DEVICES"] == "1"
    assert second["MIOPEN_USER_DB_PATH"] == str(work / "thread-1" / "config" / "miopen")
    assert calls[1]["input"][0]["arch"] == "gfx90a:sramecc+:xnack-"
    assert calls[1]["argv"][1::2] == ["-i", "-o"]


def test_run_step_compiles_then_evaluates_on_its_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith(KNOB_PREFIX)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FAKE_FIN_RECORD", str(tmp_path))
    _, obj = conv_object(LINES[0])
    common: dict[str, Any] = {"arch": "gfx90a", "num_cu": 104, "rocm_path": ROCM, "work_dir": tmp_path / "w"}
    compiled = fin.run_step("miopen_perf_compile", 11, obj, solver="ConvAsm1x1UV2", **common)
    assert compiled.ok, compiled.reason
    (item,) = compiled.results[0]["miopen_perf_compile_result"]
    assert item["perf_compiled"] and item["params"]
    entry = {"solver_name": item["solver_name"], "perf_compiled": True, "kernel_objects": item["kernel_objects"]}
    evaluated = fin.run_step("miopen_perf_eval", 11, obj, gpu_id=1, compiled=[entry], **common)
    assert evaluated.ok, evaluated.reason
    (result,) = evaluated.results[0]["miopen_perf_eval_result"]
    assert result["evaluated"] and result["time"] > 0 and result["params"] == item["params"]
    calls = [json.loads(line) for line in (tmp_path / "fin_calls.jsonl").read_text().splitlines()]
    assert [c["env"].get("HIP_VISIBLE_DEVICES") for c in calls] == [None, "1"]
    assert calls[0]["input"][0]["solvers"] == ["ConvAsm1x1UV2"] and calls[0]["input"][0]["direction"] == 1


def test_worker_folders_of_dead_processes_are_swept(private_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = private_tmp / f"tuna-fin-worker-abc-{dead.pid}"
    (left / "thread-0" / "cache").mkdir(parents=True)
    alive = private_tmp / f"tuna-fin-worker-def-{os.getppid()}"
    alive.mkdir()
    monkeypatch.setattr(fin, "_worker_dir", None)
    mine = fin.worker_dir()
    assert mine.parent == private_tmp and mine.name.endswith(f"-{os.getpid()}")
    assert not left.exists() and alive.is_dir()
    env = fin.fin_env("miopen_find_eval", gpu_id=2, base={})
    assert env["MIOPEN_USER_DB_PATH"] == str(mine / "thread-2" / "config" / "miopen")
    assert env["HIP_VISIBLE_DEVICES"] == "2"


def test_item_failure_sees_what_fin_reports_as_success() -> None:
    kernels: list[Any] = []
    ok = {"solver_name": "S", "evaluated": True, "time": 0.5, "kernel_objects": kernels, "reason": "Success"}
    assert fin.item_failure("miopen_find_eval", ok) is None
    assert fin.item_failure("miopen_find_eval", {**ok, "time": 0.0}) == (
        "S: evaluated with time 0.0 ms, not a usable measurement"
    )
    assert fin.item_failure("miopen_perf_eval", {**ok, "time": -1}) is not None
    assert fin.item_failure("miopen_find_eval", {**ok, "evaluated": False, "reason": "Not Applicable"}) == (
        "S: Not Applicable"
    )
    compiled = {"solver_name": "S", "find_compiled": True, "kernel_objects": kernels}
    assert fin.item_failure("miopen_find_compile", compiled) is None
    assert fin.item_failure("miopen_find_compile", {"solver_name": "S", "find_compiled": True}) == (
        "S: find_compiled but no kernel_objects"
    )
    assert fin.item_failure("miopen_perf_compile", {"solver_name": "S", "perf_compiled": False}) == (
        "S: no reason given"
    )


def test_target_ids() -> None:
    assert [fin.target_id(a) for a in ("gfx1030", "gfx900", "gfx90a", "gfx942")] == [
        "gfx1030",
        "gfx900:xnack-",
        "gfx90a:sramecc+:xnack-",
        "gfx942:sramecc+:xnack-",
    ]


# -- the commands -------------------------------------------------------------------------------


def solver_rows(env: TunaEnv) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in env.query("SELECT id, solver, tunable, config_type, is_dynamic, valid FROM solver ORDER BY id")
    ]


def test_update_solvers_mirrors_fin_and_is_idempotent(tuna_env: TunaEnv) -> None:
    tuna_env.ok("miopen", "--add_tables")
    assert tuna_env.ok("miopen", "--update_solvers").strip() == (
        "Solvers from fin: 35; added 35, updated 0, marked invalid 0"
    )
    first = solver_rows(tuna_env)
    listed = fin.solvers_of(fin_run("get_solvers", [fin.get_solvers_job()]))
    assert [(r[0], r[1], bool(r[2]), r[3], bool(r[4]), bool(r[5])) for r in first] == sorted(
        (s.id, s.name, s.tunable, s.config_type, s.dynamic, True) for s in listed
    )
    assert tuna_env.ok("miopen", "--update_solvers").strip().endswith("added 0, updated 35, marked invalid 0")
    assert solver_rows(tuna_env) == first
    dropped = tuna_env.ok("miopen", "--update_solvers", extra_env={"FAKE_FIN_DROP_SOLVERS": "fft,GemmFwdRest"})
    assert dropped.strip().endswith("added 0, updated 33, marked invalid 2")
    now = {r[1]: r for r in solver_rows(tuna_env)}
    assert {n for n, r in now.items() if not r[5]} == {"fft", "GemmFwdRest"}
    assert "GemmFwdRest" not in tuna_env.ok("miopen", "--list_solvers")
    assert tuna_env.ok("miopen", "--update_solvers").strip().endswith("marked invalid 0")
    assert solver_rows(tuna_env) == first
    line = one_line_error(tuna_env.run("miopen", "--update_solvers", extra_env={"FAKE_FIN_GARBAGE": "1"}), EXIT_ERROR)
    assert "fin get_solvers failed: fin's output is not JSON" in line
    assert solver_rows(tuna_env) == first


def test_update_solvers_keeps_the_id_of_a_solver_made_by_name_and_follows_a_rename(tuna_env: TunaEnv) -> None:
    tuna_env.ok("miopen", "--add_tables")
    # import_db makes solvers by name with ids of its own; an older MIOpen named id 14 otherwise.
    tuna_env.query_commit(
        "INSERT INTO solver (id, solver, tunable, config_type, is_dynamic, valid) VALUES "
        "(500, 'ConvAsm1x1UV2', 0, 'convolution', 0, 1), (14, 'ConvBinWinograd3x3U_old', 0, 'convolution', 0, 1), "
        "(3, 'ConvRemovedLongAgo', 1, 'convolution', 0, 1)"
    )
    proc = tuna_env.run("miopen", "--update_solvers")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Solvers from fin: 35; added 33, updated 2, marked invalid 1"
    assert "solver ConvAsm1x1UV2 keeps id 500 (fin's id is 3)" in proc.stderr
    rows = {r[0]: r for r in solver_rows(tuna_env)}
    assert rows[500][1:] == ("ConvAsm1x1UV2", 1, "convolution", 0, 1)
    assert rows[14][1] == "ConvBinWinograd3x3U" and rows[14][5] == 1
    assert rows[3][1:] == ("ConvRemovedLongAgo", 1, "convolution", 0, 0)
    assert len(rows) == 36


def prepared(env: TunaEnv, *import_args: str) -> int:
    """Tables, resnet50's configs tagged r50, fin's solvers and a session; its id."""
    if not RESNET50.exists():
        pytest.skip(f"no {RESNET50} (set TUNA_SHARED_DATA)")
    env.ok("miopen", "--add_tables")
    env.ok("miopen", "import_configs", "-f", str(RESNET50), "-t", "r50", *import_args)
    env.ok("miopen", "--update_solvers")
    return int(env.ok("miopen", "--init_session", "-l", "tune", "-a", "gfx90a", "-n", "104").strip())


def applicability_rows(env: TunaEnv, session_id: int) -> list[tuple[int, int]]:
    return [
        (int(c), int(s))
        for c, s in env.query(
            "SELECT config, solver FROM conv_solver_applicability WHERE session = :s AND applicable = 1 "
            "ORDER BY config, solver",
            s=session_id,
        )
    ]


def test_update_applicability_over_processes_writes_fins_answer_and_again_the_same(tuna_env: TunaEnv) -> None:
    session = prepared(tuna_env, "-b", "16,32,64")  # 3 x resnet50: more than one block of 100
    configs = tuna_env.query("SELECT COUNT(*) FROM conv_config")[0][0]
    assert configs > 100
    tmp = tuna_env.home / "tmp"
    tmp.mkdir()
    two = {"SLURM_CPUS_ON_NODE": "2", "TMPDIR": str(tmp)}
    out = tuna_env.ok("miopen", "--update_applicability", "--session_id", str(session), extra_env=two)
    assert list(tmp.iterdir()) == []  # fin's files and the processes' MIOpen folders removed
    rows = applicability_rows(tuna_env, session)
    assert f"{configs} configs asked, {len(rows)} applicable (config, solver) pairs" in out
    assert out.strip().endswith(f"session total applicable={len(rows)}")
    # Every config has its direction's naive solver; Winograd 3x3 only on 3x3 stride-1 problems.
    names = dict(tuna_env.query("SELECT id, solver FROM solver"))
    by_config: dict[int, set[str]] = {}
    for config, solver in rows:
        by_config.setdefault(config, set()).add(names[solver])
    assert len(by_config) == configs
    shapes = {
        int(i): (d, fh, fw, sh, sw)
        for i, d, fh, fw, sh, sw in tuna_env.query(
            "SELECT c.id, c.direction, w.dim3, w.dim4, c.conv_stride_h, c.conv_stride_w FROM conv_config c "
            "JOIN tensor w ON w.id = c.weight_tensor"
        )
    }
    naive = {"F": "ConvDirectNaiveConvFwd", "B": "ConvDirectNaiveConvBwd", "W": "ConvDirectNaiveConvWrw"}
    for config, solvers in by_config.items():
        direction, fh, fw, sh, sw = shapes[config]
        assert naive[direction] in solvers
        if "ConvBinWinograd3x3U" in solvers:
            assert (fh, fw, sh, sw) == (3, 3, 1, 1) and direction != "W"
    again = tuna_env.run(
        "miopen",
        "--update_applicability",
        "--session_id",
        str(session),
        extra_env={**two, "FAKE_FIN_UNKNOWN_SOLVER": "1"},
    )
    assert again.returncode == 0, again.stderr
    assert applicability_rows(tuna_env, session) == rows
    assert list(tmp.iterdir()) == []
    warnings = [line for line in again.stderr.splitlines() if "ConvFakeSolverNotInGetSolvers" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "skipped" in warnings[0]
    # A failing fin: one line, exit 70, rows as they were.
    before = snapshot(tuna_env)
    failed = tuna_env.run(
        "miopen", "--update_applicability", "--session_id", str(session), extra_env={**two, "FAKE_FIN_EXIT": "3"}
    )
    assert failed.returncode == EXIT_ERROR
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "block(s) failed, their rows unchanged" in errors[0]
    assert "fin exited with status 3" in errors[0]
    assert snapshot(tuna_env) == before


def test_update_applicability_with_a_tag_and_its_refusals(tuna_env: TunaEnv) -> None:
    session = prepared(tuna_env)
    extra = tuna_env.ok(
        "miopen",
        "import_configs",
        "-d",
        "./bin/MIOpenDriver conv -n 2 -c 8 -H 7 -W 7 -k 8 -y 3 -x 3 -p 1 -q 1 -u 1 -v 1 -l 1 -j 1 -g 1 -F 1",
        "-t",
        "other",
    )
    assert "New configs added: 1" in extra
    tuna_env.ok("miopen", "--update_applicability", "--session_id", str(session), "-l", "other")
    (config,) = {c for c, _ in applicability_rows(tuna_env, session)}
    assert tuna_env.query("SELECT config FROM conv_config_tags WHERE tag = 'other'")[0][0] == config
    line = one_line_error(tuna_env.run("miopen", "--update_applicability"), EXIT_BAD_INPUT)
    assert "session_id must be specified with this operation" in line
    line = one_line_error(tuna_env.run("miopen", "--update_applicability", "--session_id", "99"), 3)
    assert "no session with id 99" in line


def job_rows(env: TunaEnv, session_id: int) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in env.query(
            "SELECT config, solver, state, reason, fin_step FROM conv_job WHERE session = :s "
            "ORDER BY config, solver, fin_step",
            s=session_id,
        )
    ]


def test_load_job_counts_filters_idempotence_and_errors(tuna_env: TunaEnv) -> None:
    session = prepared(tuna_env)
    tuna_env.ok("miopen", "--update_applicability", "--session_id", str(session))
    pairs = applicability_rows(tuna_env, session)
    names = {int(i): str(n) for i, n in tuna_env.query("SELECT id, solver FROM solver")}
    tunable = {str(n) for (n,) in tuna_env.query("SELECT solver FROM solver WHERE tunable = 1")}
    s = str(session)
    steps = "miopen_find_eval,miopen_find_compile"  # any order: stored as one set
    out = tuna_env.ok("miopen", "load_job", "--session_id", s, "-t", "r50", "-l", "find", "--fin_steps", steps)
    assert out == f"New jobs added: {len(pairs)}\n"
    jobs = job_rows(tuna_env, session)
    assert sorted((c, n) for c, n, *_ in jobs) == sorted((c, names[v]) for c, v in pairs)
    assert {(state, reason, step) for _, _, state, reason, step in jobs} == {
        ("new", "find", "miopen_find_compile,miopen_find_eval")
    }
    again = tuna_env.ok("miopen", "load_job", "--session_id", s, "--all_configs", "-l", "find", "--fin_steps", steps)
    assert again == "New jobs added: 0\n"
    assert job_rows(tuna_env, session) == jobs
    perf = tuna_env.ok(
        "miopen",
        "load_job",
        "--session_id",
        s,
        "--all_configs",
        "--tunable",
        "--fin_steps",
        "miopen_perf_compile,miopen_perf_eval",
    )
    expected = sum(1 for _, v in pairs if names[v] in tunable)
    assert perf == f"New jobs added: {expected}\n" and expected > 0
    wino = tuna_env.ok("miopen", "load_job", "--session_id", s, "-t", "r50", "-A", "miopenConvolutionAlgoWinograd")
    expected = sum(1 for _, v in pairs if "Winograd" in names[v])
    assert wino == f"New jobs added: {expected}\n" and expected > 0
    named = tuna_env.ok("miopen", "load_job", "--session_id", s, "--all_configs", "-s", "GemmFwdRest,GemmBwdRest")
    expected = sum(1 for _, v in pairs if names[v] in ("GemmFwdRest", "GemmBwdRest"))
    assert named == f"New jobs added: {expected}\n" and expected > 0
    dynamic = tuna_env.ok("miopen", "load_job", "--session_id", s, "--all_configs", "-d", "-c", "convfp16")
    assert dynamic == "New jobs added: 0\n"  # resnet50 is FP32
    before = snapshot(tuna_env)
    refusals = [
        (
            ["-s", "GemmFwdRest,NoSuchSolver,Other", "--all_configs"],
            "Invalid solver(s) for convolution: NoSuchSolver, Other",
        ),
        (["-t", "nope"], "no convolution config is tagged 'nope'"),
        (["--fin_steps", "miopen_find_compile,bogus", "--all_configs"], "unknown fin step(s): bogus"),
        (["-A", "miopenConvolutionAlgoFFT", "-s", "fft", "--all_configs"], "not allowed with argument"),
        (["-c", "bnorm", "--all_configs"], "-c bnorm is not a convolution command"),
        ([], "load_job needs the configs: -t TAG or --all_configs"),
    ]
    for args, message in refusals:
        line = one_line_error(tuna_env.run("miopen", "load_job", "--session_id", s, *args), EXIT_BAD_INPUT)
        assert message in line, line
    line = one_line_error(tuna_env.run("miopen", "load_job", "--all_configs"), EXIT_BAD_INPUT)
    assert "load_job needs --session_id S" in line
    assert snapshot(tuna_env) == before


def test_exec_runs_a_command_here_and_shows_its_output(embedded_env: TunaEnv) -> None:
    ok = embedded_env.run("miopen", "-e", "echo out; echo err >&2")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "out\n", "err\n")
    failed = embedded_env.run("miopen", "--exec", "echo partial; exit 3")
    assert failed.returncode == EXIT_ERROR and failed.stdout == "partial\n"
    assert failed.stderr.strip() == "error: -e: the command exited with status 3"
    line = one_line_error(embedded_env.run("miopen", "-e", "true", "--list_solvers"), EXIT_BAD_INPUT)
    assert "not allowed with argument" in line


def test_batch_norm_applicability_and_jobs(tuna_env: TunaEnv) -> None:
    lines = SHARED_DATA / "miopen" / "configs" / "batch_norm.txt"
    if not lines.exists():
        pytest.skip(f"no {lines} (set TUNA_SHARED_DATA)")
    tuna_env.ok("miopen", "--add_tables")
    tuna_env.ok("miopen", "import_configs", "-C", "batch_norm", "-f", str(lines), "-t", "bn")
    tuna_env.ok("miopen", "--update_solvers")
    session = tuna_env.ok("miopen", "--init_session", "-l", "bn", "-a", "gfx90a", "-n", "104").strip()
    tuna_env.ok("miopen", "--update_applicability", "--session_id", session, "-C", "batch_norm")
    rows = tuna_env.query(
        "SELECT s.solver, c.forw, c.back, c.mode FROM bn_solver_applicability a JOIN solver s ON s.id = a.solver "
        "JOIN bn_config c ON c.id = a.config WHERE a.session = :s",
        s=int(session),
    )
    configs = tuna_env.query("SELECT COUNT(*) FROM bn_config")[0][0]
    assert rows and len({tuple(r[1:]) for r in rows}) <= configs
    for name, forw, back, mode in rows:
        assert name.startswith("BnBwd" if back else "BnFwdInference" if forw == 2 else "BnFwdTraining"), name
        assert ("PerActivation" in name) == (mode == 0) or name == "BnFwdInference"
    assert tuna_env.query("SELECT COUNT(*) FROM conv_solver_applicability")[0][0] == 0
    out = tuna_env.ok(
        "miopen",
        "load_job",
        "-C",
        "batch_norm",
        "--session_id",
        session,
        "-t",
        "bn",
        "--fin_steps",
        "miopen_find_compile",
    )
    assert out == f"New jobs added: {len(rows)}\n"
    assert tuna_env.query("SELECT COUNT(*) FROM bn_job")[0][0] == len(rows)


def test_update_applicability_blocks_in_parallel_do_not_deadlock_on_mariadb(services_env: TunaEnv) -> None:
    """Sixteen blocks over two processes: InnoDB's gap locks of a range DELETE made
    neighbouring blocks deadlock (3 of 16 failed in a measured run) before old rows were
    deleted by primary key."""
    network = SHARED_DATA / "miopen" / "networks" / "all.txt"
    if not network.exists():
        pytest.skip(f"no {network} (set TUNA_SHARED_DATA)")
    env = services_env
    env.ok("miopen", "--add_tables")
    env.ok("miopen", "import_configs", "-f", str(network), "-t", "all", "-b", "16,64")
    env.ok("miopen", "--update_solvers")
    session = env.ok("miopen", "--init_session", "-l", "all", "-a", "gfx90a", "-n", "104").strip()
    configs = env.query("SELECT COUNT(*) FROM conv_config")[0][0]
    assert configs > 1500
    for _ in range(2):
        proc = env.run(
            "miopen", "--update_applicability", "--session_id", session, extra_env={"SLURM_CPUS_ON_NODE": "2"}
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"{configs} configs asked" in proc.stdout
        with_rows = env.query(
            "SELECT COUNT(DISTINCT config) FROM conv_solver_applicability WHERE session = :s", s=int(session)
        )[0][0]
        assert with_rows == configs


def test_a_block_whose_process_dies_is_run_again(embedded_env: TunaEnv) -> None:
    """A worker process of --update_applicability killed mid-block (OOM killer, an operator)
    breaks the whole pool: its blocks run again in new processes, and every row lands."""
    env = embedded_env
    session = prepared(env, "-b", "16,32")
    configs = env.query("SELECT COUNT(*) FROM conv_config")[0][0]
    run = env.start(
        "miopen",
        "--update_applicability",
        "--session_id",
        str(session),
        extra_env={"SLURM_CPUS_ON_NODE": "2", "FAKE_FIN_SLEEP": "2", "FAKE_FIN_ONLY_STEP": "applicability"},
    )
    # A pool process is the parent of a running fin.
    pool = env.wait_for(
        lambda: next(
            (
                pid
                for pid in descendants(run.pid)
                if any("bin/fin" in cmdline(child) for child in descendants(pid) if child != pid)
            ),
            None,
        ),
        what="a pool process running fin",
    )
    os.kill(pool, signal.SIGKILL)
    env.wait_for(lambda: run.poll() is not None, what="update_applicability to finish", timeout=120)
    log = env.log_of(run)
    assert run.returncode == 0, log
    assert "a worker process died; " in log and "run again in new processes" in log
    assert f"{configs} configs asked" in log


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
