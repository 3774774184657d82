"""Running MIFin (``$ROCM_PATH/bin/fin -i IN -o OUT``) and checking what it wrote.

reference/miopen.md §5 gives the input MITuna writes and §13.5 what fin really does with it.
Exit 0 does not mean usable output: fin exits 0 with an empty file for an invalid group count
or mode, so every output file is read and checked for the shape the step needs, and each way
of failing (exit status, signal, time limit, empty, not JSON, wrong shape) becomes a
:class:`FinResult` with ``ok`` false and a one-line ``reason``; stdout and stderr tails are
kept for the job's record.

The environment follows §1.1 (``MIOPEN_LOG_LEVEL``, ``MIOPEN_SQLITE_KERN_CACHE``,
``MIOPEN_FIND_MODE``, one ``<NAME>=0`` per blacklisted solver group, then the user-db and
cache folders), with one change (§11.8): the folders are per worker process and per GPU,
under that process's own temporary folder, not one ``thread-0`` folder shared by every
compile process of a node. An eval on GPU ``g`` also gets ``HIP_VISIBLE_DEVICES`` and
``ROCR_VISIBLE_DEVICES`` = ``g``.

Input and output files live in a private temporary folder, removed after each call.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuna.runner import run_command

#: Characters of fin's stdout and stderr kept with a result.
TAIL = 2000
DEFAULT_TIME_LIMIT_S = 600.0
COMPILE_STEPS = ("miopen_find_compile", "miopen_perf_compile")
EVAL_STEPS = ("miopen_find_eval", "miopen_perf_eval")
STEPS = ("get_solvers", "applicability", *COMPILE_STEPS, *EVAL_STEPS)
#: The list each step's job object must carry (§5.2-§5.5).
RESULT_KEY = {
    "get_solvers": "all_solvers",
    "applicability": "applicable_solvers",
    "miopen_find_compile": "miopen_find_compile_result",
    "miopen_perf_compile": "miopen_perf_compile_result",
    "miopen_find_eval": "miopen_find_eval_result",
    "miopen_perf_eval": "miopen_perf_eval_result",
}
#: The per-item success flag of each compile and eval step.
CHECK_FIELD = {
    "miopen_find_compile": "find_compiled",
    "miopen_perf_compile": "perf_compiled",
    "miopen_find_eval": "evaluated",
    "miopen_perf_eval": "evaluated",
}
CONV_DIRECTION = {"F": 1, "B": 2, "W": 4}
CONV_CMD = {"FP32": "conv", "FP16": "convfp16", "BF16": "convbfp16", "INT8": "convint8", "FP64": "convfp64"}
BN_CMD = {"FP32": "bnorm", "FP16": "bnormfp16", "BF16": "bnormbfp16"}
GPU_ENV = ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")
_HIDDEN_COLUMNS = ("md5", "input_tensor", "weight_tensor", "insert_ts", "update_ts")


# -- the input --------------------------------------------------------------------------------


def target_id(arch: str) -> str:
    """The target fin compiles for (§5.4), with MIOpen's spelling ``sramecc`` (§13.4)."""
    if arch == "gfx1030":
        return arch
    if arch == "gfx900":
        return "gfx900:xnack-"
    return f"{arch}:sramecc+:xnack-"


def _int(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value


def config_object(
    config: Mapping[str, Any],
    input_tensor: Mapping[str, Any],
    weight_tensor: Mapping[str, Any] | None = None,
    *,
    config_type: str = "convolution",
) -> dict[str, Any]:
    """The config object fin reads (§5.1): the config row's own columns plus the tensors' sizes,
    layouts and the driver command of their data type (the batch-norm one for batch norm,
    which MITuna got wrong in compile and eval, §11.26)."""
    obj: dict[str, Any] = {k: _int(v) for k, v in config.items() if k not in _HIDDEN_COLUMNS}
    layout = str(input_tensor["layout"])
    dims = [int(input_tensor[f"dim{i}"]) for i in range(5)]
    obj["in_layout"] = layout
    if layout.index("C") == 1:  # NCHW, NCDHW
        obj.update(in_channels=dims[1], in_d=dims[2], in_h=dims[3], in_w=dims[4])
    else:  # NHWC, NDHWC
        obj.update(in_d=dims[1], in_h=dims[2], in_w=dims[3], in_channels=dims[4])
    data_type = str(input_tensor["data_type"])
    if config_type == "batch_norm":
        if data_type not in BN_CMD:
            raise ValueError(f"batch norm has no MIOpenDriver command for data type {data_type}")
        obj["cmd"] = BN_CMD[data_type]
        return obj
    if weight_tensor is None:
        raise ValueError("a convolution config needs its weight tensor")
    obj.update(
        wei_layout=str(weight_tensor["layout"]),
        out_channels=int(weight_tensor["dim0"]),
        in_channels=int(weight_tensor["dim1"]),
        fil_d=int(weight_tensor["dim2"]),
        fil_h=int(weight_tensor["dim3"]),
        fil_w=int(weight_tensor["dim4"]),
    )
    if data_type not in CONV_CMD:
        raise ValueError(f"no MIOpenDriver convolution command for data type {data_type}")
    obj["cmd"] = CONV_CMD[data_type]
    return obj


def direction_flag(config: Mapping[str, Any], config_type: str = "convolution") -> int:
    """The top-level ``direction`` integer: F/B/W as 1/2/4 for a convolution (fin only echoes
    it); for batch norm the pass bitmask fin does use (1 forward training, 2 forward
    inference, 4 backward)."""
    if config_type == "batch_norm":
        if int(config.get("back", 0)):
            return 4
        return 2 if int(config.get("forw", 1)) == 2 else 1
    return CONV_DIRECTION[str(config["direction"])]


def get_solvers_job() -> dict[str, Any]:
    return {"steps": ["get_solvers"]}


def problem_job(
    step: str,
    config_id: int,
    config: Mapping[str, Any],
    *,
    arch: str,
    num_cu: int,
    direction: int,
    dynamic_only: bool = False,
    solver: str | None = None,
    compiled: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """One job of an applicability, compile or eval step (§5.3-§5.5).

    ``arch`` is the session's arch (gfx90a); compile and eval get its target id. ``solver``
    names the job's solver (compile and eval try only it); ``compiled`` is the eval step's
    list of ``{solver_name, find_compiled|perf_compiled, kernel_objects}``.
    """
    if step == "applicability":
        return {
            "steps": [step],
            "arch": arch,
            "num_cu": num_cu,
            "config_tuna_id": config_id,
            "config": dict(config),
            "direction": direction,
        }
    if step not in COMPILE_STEPS + EVAL_STEPS:
        raise ValueError(f"{step!r} is not a fin step with a problem")
    job: dict[str, Any] = {
        "steps": ["alloc_buf", "fill_buf", step] if step in EVAL_STEPS else [step],
        "arch": target_id(arch),
        "num_cu": num_cu,
        "config_tuna_id": config_id,
        "direction": direction,
        "dynamic_only": dynamic_only,
        "config": dict(config),
    }
    if solver:
        job["solvers"] = [solver]
    if step in EVAL_STEPS:
        if not compiled:
            raise ValueError(f"{step} needs the compiled solvers and their kernels")
        key = "miopen_find_compile_result" if step == "miopen_find_eval" else "miopen_perf_compile_result"
        job[key] = [dict(item) for item in compiled]
    return job


def write_input(path: Path, step: str, jobs: Sequence[Mapping[str, Any]]) -> None:
    """get_solvers and applicability as one compact object per line (MITuna's layout, which
    keeps thousands of configs small); compile and eval pretty-printed."""
    if step in ("get_solvers", "applicability"):
        text = "[\n" + ",\n".join(json.dumps(job, separators=(",", ":")) for job in jobs) + "\n]\n"
    else:
        text = json.dumps(list(jobs), indent=2) + "\n"
    path.write_text(text)


# -- the environment --------------------------------------------------------------------------

_worker_dir: Path | None = None
_WORKER_PREFIX = "tuna-fin-worker-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_worker_dirs(folder: Path | None = None) -> list[Path]:
    """Remove the worker folders of processes that are gone; the ones removed.

    A Celery or pool process can end without running exit handlers (os._exit), so its
    folder is left behind; the next worker process on the host removes it."""
    removed = []
    for path in Path(folder or tempfile.gettempdir()).glob(f"{_WORKER_PREFIX}*-*"):
        pid = path.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def worker_dir() -> Path:
    """This process's folder for MIOpen's user-db and cache (``<tmp>/tuna-fin-worker-*-<pid>``),
    removed when the process exits, or by :func:`sweep_worker_dirs` in a later process."""
    global _worker_dir
    if _worker_dir is None or not _worker_dir.is_dir() or not _worker_dir.name.endswith(f"-{os.getpid()}"):
        sweep_worker_dirs()
        _worker_dir = Path(tempfile.mkdtemp(prefix=_WORKER_PREFIX, suffix=f"-{os.getpid()}"))
        atexit.register(shutil.rmtree, _worker_dir, True)
    return _worker_dir


def fin_env(
    step: str,
    *,
    find_mode: int = 1,
    blacklist: Iterable[str] = (),
    gpu_id: int = -1,
    work_dir: Path | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment fin runs with for ``step`` (§1.1), on top of ``base`` (default: ours).

    An eval on GPU ``gpu_id`` >= 0 sees only that GPU; compile steps see none pinned.
    """
    env = dict(os.environ if base is None else base)
    for name in GPU_ENV:  # a compile must not inherit a pin; an eval gets its own below
        env.pop(name, None)
    env.update(
        {
            "MIOPEN_LOG_LEVEL": "4",
            "MIOPEN_SQLITE_KERN_CACHE": "ON",
            "MIOPEN_DEBUG_IMPLICIT_GEMM_FIND_ALL_SOLUTIONS": "1",
            "MIOPEN_FIND_MODE": str(find_mode),
        }
    )
    for name in blacklist:
        env[name.strip()] = "0"
    thread = (work_dir or worker_dir()) / f"thread-{max(gpu_id, 0)}"
    env["MIOPEN_USER_DB_PATH"] = str(thread / "config" / "miopen")
    env["MIOPEN_CUSTOM_CACHE_DIR"] = str(thread / "cache")
    if step in EVAL_STEPS and gpu_id >= 0:
        for name in GPU_ENV:
            env[name] = str(gpu_id)
    return env


# -- running and checking ---------------------------------------------------------------------


@dataclass(frozen=True)
class FinResult:
    """What one fin call gave: its job objects (element 0 dropped) or why there are none."""

    ok: bool
    results: list[dict[str, Any]] = field(default_factory=list)
    process_env: list[Any] = field(default_factory=list)
    reason: str = ""
    exit_status: int | None = None
    timed_out: bool = False
    stdout: str = ""
    stderr: str = ""

    @property
    def retryable(self) -> bool:
        """A failure of the run rather than of the problem (killed, hung): worth another try."""
        return self.timed_out or (self.exit_status is not None and self.exit_status < 0)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _failure(reason: str, **kwargs: Any) -> FinResult:
    return FinResult(ok=False, reason=reason, **kwargs)


def check_output(text: str, step: str, jobs: int) -> tuple[list[dict[str, Any]], list[Any]] | str:
    """The job objects and process_env of fin's output, or the one-line reason it is unusable."""
    if not text.strip():
        return "fin exited 0 but wrote an empty output file (an invalid group count or mode?)"
    try:
        data = json.loads(text)
    except ValueError as error:
        return f"fin's output is not JSON: {error}"
    if not isinstance(data, list) or not data or not isinstance(data[0], dict) or "process_env" not in data[0]:
        return 'fin\'s output is not [{"process_env": ...}, <job results>...]'
    results = data[1:]
    if len(results) != jobs:
        return f"fin's output holds {len(results)} job result(s) for {jobs} job(s)"
    key = RESULT_KEY[step]
    for index, item in enumerate(results):
        if not isinstance(item, dict):
            return f"fin's job result {index + 1} is not an object"
        # applicability: a job without the list is skipped by the caller (§5.3), not an error.
        if step != "applicability" and not isinstance(item.get(key), list):
            return f"fin's job result {index + 1} has no {key} list"
    env = data[0].get("process_env")
    return results, env if isinstance(env, list) else []


def run_fin(
    step: str,
    jobs: Sequence[Mapping[str, Any]],
    *,
    rocm_path: Path,
    timeout_s: float = DEFAULT_TIME_LIMIT_S,
    env: Mapping[str, str] | None = None,
) -> FinResult:
    """Run fin once on ``jobs`` (all of one ``step``) and check its output.

    ``env`` is the whole environment (:func:`fin_env`); default ``fin_env(step)``.
    """
    if step not in RESULT_KEY:
        raise ValueError(f"{step!r} is not a fin step ({', '.join(STEPS)})")
    fin = rocm_path / "bin" / "fin"
    folder = Path(tempfile.mkdtemp(prefix="tuna-fin-"))
    try:
        in_path, out_path = folder / "input.json", folder / "output.json"
        write_input(in_path, step, jobs)
        out_path.touch()
        done = run_command(
            [str(fin), "-i", str(in_path), "-o", str(out_path)],
            timeout_s=timeout_s,
            env=fin_env(step) if env is None else env,
        )
        tails: dict[str, Any] = {
            "exit_status": done.exit_status,
            "stdout": done.stdout[-TAIL:],
            "stderr": done.stderr[-TAIL:],
        }
        if done.timed_out:
            return _failure(f"fin timed out after {timeout_s:g} s and was killed", timed_out=True, **tails)
        if done.exit_status is None:
            return _failure(f"fin could not start: {done.reason} ({fin})", **tails)
        if done.exit_status < 0:
            return _failure(f"fin was killed by signal {-done.exit_status} ({_signal_name(done.exit_status)})", **tails)
        if done.exit_status != 0:
            why = _last_line(done.stderr) or _last_line(done.stdout)
            return _failure(f"fin exited with status {done.exit_status}" + (f": {why}" if why else ""), **tails)
        try:
            text = out_path.read_text(errors="replace")
        except OSError as error:
            return _failure(f"fin's output file cannot be read: {error}", **tails)
        checked = check_output(text, step, len(jobs))
        if isinstance(checked, str):
            return _failure(checked, **tails)
        results, process_env = checked
        return FinResult(ok=True, results=results, process_env=process_env, **tails)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _signal_name(status: int) -> str:
    try:
        return signal.Signals(-status).name
    except ValueError:
        return "unknown signal"


# -- reading results --------------------------------------------------------------------------


@dataclass(frozen=True)
class FinSolver:
    id: int
    name: str
    tunable: bool
    dynamic: bool
    config_type: str


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true")


def solvers_of(result: FinResult) -> list[FinSolver]:
    """The solver list of a get_solvers run (§5.2); raises ValueError on a malformed entry."""
    found = []
    for entry in result.results[0]["all_solvers"]:
        try:
            config_type = str(entry.get("type") or "convolution")
            if config_type not in ("convolution", "batch_norm"):
                raise ValueError(f"type {config_type!r}")
            found.append(
                FinSolver(
                    id=int(entry["id"]),
                    name=str(entry["name"]),
                    tunable=_flag(entry.get("tunable", 0)),
                    dynamic=_flag(entry.get("dynamic", 0)),
                    config_type=config_type,
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"fin's get_solvers entry {entry!r} is not usable: {error}") from None
    return found


def applicable_of(result: FinResult) -> dict[int, list[str]]:
    """config id -> applicable solver names; job objects without the list are skipped (§5.3)."""
    found: dict[int, list[str]] = {}
    for item in result.results:
        names = item.get("applicable_solvers")
        echoed = item.get("input")
        source: dict[str, Any] = echoed if isinstance(echoed, dict) else item
        config_id = source.get("config_tuna_id", item.get("config_tuna_id"))
        if not isinstance(names, list) or config_id is None:
            continue
        found.setdefault(int(config_id), []).extend(str(n) for n in names)
    return found


def run_step(
    step: str,
    config_id: int,
    config: Mapping[str, Any],
    *,
    arch: str,
    num_cu: int,
    rocm_path: Path,
    timeout_s: float = DEFAULT_TIME_LIMIT_S,
    config_type: str = "convolution",
    gpu_id: int = -1,
    find_mode: int = 1,
    blacklist: Iterable[str] = (),
    dynamic_only: bool = False,
    solver: str | None = None,
    compiled: Sequence[Mapping[str, Any]] | None = None,
    work_dir: Path | None = None,
) -> FinResult:
    """One compile or eval job through fin, as a worker runs it: the job object of
    :func:`problem_job` for ``config`` (a :func:`config_object`), the step's environment
    (:func:`fin_env`; an eval pinned to ``gpu_id``), the time limit, and the output checked.
    ``results`` then holds exactly one job object with the step's result list."""
    job = problem_job(
        step,
        config_id,
        config,
        arch=arch,
        num_cu=num_cu,
        direction=direction_flag(config, config_type),
        dynamic_only=dynamic_only,
        solver=solver,
        compiled=compiled,
    )
    env = fin_env(step, find_mode=find_mode, blacklist=blacklist, gpu_id=gpu_id, work_dir=work_dir)
    return run_fin(step, [job], rocm_path=rocm_path, timeout_s=timeout_s, env=env)


def item_failure(step: str, item: Mapping[str, Any]) -> str | None:
    """Why one compile or eval item of fin's result is not a success, or None when it is.

    fin reports some failures as successes: an eval item ``evaluated`` with a time <= 0
    (MIOpen would sort a 0 before every real time, §13.2, §13.5), and a success without its
    kernel objects, which nothing could be stored from (§11.5)."""
    flag = CHECK_FIELD[step]
    name = item.get("solver_name")
    if not isinstance(name, str) or not name:
        return "an item without a solver_name"
    if item.get(flag) is not True:
        reason = item.get("reason") or item.get("reson") or "no reason given"
        return f"{name}: {reason}"
    if not isinstance(item.get("kernel_objects"), list):
        return f"{name}: {flag} but no kernel_objects"
    if step in EVAL_STEPS:
        time_ms = item.get("time")
        if isinstance(time_ms, bool) or not isinstance(time_ms, (int, float)) or time_ms <= 0:
            return f"{name}: evaluated with time {time_ms!r} ms, not a usable measurement"
    return None
