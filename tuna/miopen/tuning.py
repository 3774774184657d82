"""The MIOpen tuning cycle through MIFin: steps, claims, payloads, the worker's run and the
head node's result processing (reference/miopen.md §4.2, §4.5-§4.8, §5, §13.5).

States (§4.2), with §11's bugs fixed:

* compile: ``new`` → ``compile_start`` → ``compiled`` when at least one solver compiled,
  else ``errored`` with the summary. A failed fin run (non-zero exit, empty or garbage
  output, §11.3) is a failure, never ``compiled``.
* eval: ``compiled`` (and ``new`` for jobs that have no compile step of their own) →
  ``eval_start`` → ``evaluated``; a failure goes back to ``compiled`` until the job has
  failed three times (MITuna's ``retries < 2`` rule), then ``errored``.
* An interrupted attempt returns to the state it was claimed from (the core's
  ``claimed_from``), not to ``new`` (§11.2).

The worker (:func:`run_job`) runs fin on the payload and checks each item (§13.5: time ≤ 0
is a failed evaluation). The head node (:func:`store_results`) turns a successful outcome
into find_db, kernel_cache and job_cache_fin rows after checking every solver name, the
problem key and every kernel blob; a job whose output cannot be stored fails with the
reason (§11.5), and no other job is touched. Clean-up after an eval removes that job's own
rows only (§11.24).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tuna.db.tables import job_attempt
from tuna.errors import BadInput
from tuna.library import JobRun, SessionInfo, Step, WorkerContext
from tuna.machine import LocalMachine, rocm_version
from tuna.miopen import fin
from tuna.miopen import tables as t
from tuna.miopen.dbfiles import KernelObject, kernel_row
from tuna.miopen.dbfiles.errors import DbFileError
from tuna.miopen.dbstore import keys_of_configs
from tuna.miopen.sessions import miopen_version

log = logging.getLogger(__name__)

#: MITuna retries a failed eval while retries < 2: three attempts in all.
EVAL_MAX_RETRIES = 3
FIN_STEP_NAMES = (*fin.COMPILE_STEPS, *fin.EVAL_STEPS)
BN_PREFIX = "bn_"
_TENSOR = ("id", "dim0", "dim1", "dim2", "dim3", "dim4", "layout", "num_dims", "data_type")


@dataclasses.dataclass(frozen=True)
class Family:
    """The tables of one problem kind (conv_*, bn_*)."""

    config_type: str
    config: sa.Table
    job: sa.Table
    find_db: sa.Table
    kernel_cache: sa.Table
    job_cache_fin: sa.Table


CONV = Family("convolution", t.conv_config, t.conv_job, t.conv_find_db, t.conv_kernel_cache, t.conv_job_cache_fin)
BN = Family("batch_norm", t.bn_config, t.bn_job, t.bn_find_db, t.bn_kernel_cache, t.bn_job_cache_fin)


def fin_step_of(step: Step) -> str:
    """The fin step a tuna step runs: ``bn_miopen_find_compile`` runs ``miopen_find_compile``."""
    return step.name.removeprefix(BN_PREFIX)


def family_of(step: Step) -> Family:
    return BN if step.name.startswith(BN_PREFIX) else CONV


def is_eval(step: Step) -> bool:
    return fin_step_of(step) in fin.EVAL_STEPS


def make_step(name: str) -> Step:
    """A step with its states, job table, claim sources, retry cap and host needs."""
    fin_step = name.removeprefix(BN_PREFIX)
    table = BN.job if name.startswith(BN_PREFIX) else CONV.job
    if fin_step in fin.COMPILE_STEPS:
        base = Step(name, "compile", "new", "compile_start", "compiled", "errored")
        extra: dict[str, Any] = {"job_table": table, "needs_gpu": False}
    else:
        base = Step(name, "eval", "compiled", "eval_start", "evaluated", "errored", per_gpu=True)
        # A job with no compile step of its own is evaluated from `new` (what another job
        # compiled for its config); one with a compile step waits for it (claim_filter).
        extra = {
            "job_table": table,
            "also_claim_from": ("new",),
            "max_retries": EVAL_MAX_RETRIES,
            "waits_on": ("new", "compile_start"),
            "needs_gpu": True,
        }
    return dataclasses.replace(base, **extra)


# -- claims --------------------------------------------------------------------------------


def _has_fin_step(table: sa.Table, name: str) -> sa.ColumnElement[bool]:
    # fin_step is a comma list (MySQL SET); compare as text so the bound pattern is not
    # taken for a set of steps.
    text = sa.literal(",") + sa.cast(table.c.fin_step, sa.String(255)) + sa.literal(",")
    return text.like(f"%,{name},%")


def claim_filter(step: Step, table: sa.Table) -> list[Any]:
    fin_step = fin_step_of(step)
    clauses: list[Any] = [_has_fin_step(table, fin_step), table.c.valid.is_(True)]
    if fin_step in fin.EVAL_STEPS:
        clauses.append(table.c.retries < EVAL_MAX_RETRIES)
        compile_step = "miopen_find_compile" if fin_step == "miopen_find_eval" else "miopen_perf_compile"
        # `new` only for jobs whose own compile step will never run.
        clauses.append(sa.or_(table.c.state != "new", sa.not_(_has_fin_step(table, compile_step))))
    return clauses


def wait_filter(step: Step, table: sa.Table) -> list[Any]:
    """The jobs an eval step may still get: its claim filter without the clause that holds
    back `new` jobs whose compile step is still to run (the eval waits for those)."""
    fin_step = fin_step_of(step)
    clauses: list[Any] = [_has_fin_step(table, fin_step), table.c.valid.is_(True)]
    if fin_step in fin.EVAL_STEPS:
        clauses.append(table.c.retries < EVAL_MAX_RETRIES)
    return clauses


def claim_order(step: Step, table: sa.Table) -> list[Any]:
    return [table.c.retries, table.c.config, table.c.id]


# -- payloads (head node, inside the claim's transaction) -----------------------------------


def _configs(conn: Connection, fam: Family, config_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """config id → fin's config object (§5.1)."""
    cfg = fam.config
    inp = t.tensor.alias("inp")
    cols: list[Any] = [cfg, *[inp.c[c].label(f"i_{c}") for c in _TENSOR]]
    wei = t.tensor.alias("wei") if fam is CONV else None
    if wei is not None:
        cols += [wei.c[c].label(f"w_{c}") for c in _TENSOR]
    query = sa.select(*cols).join(inp, inp.c.id == cfg.c.input_tensor)
    if wei is not None:
        query = query.join(wei, wei.c.id == cfg.c.weight_tensor)
    found: dict[int, dict[str, Any]] = {}
    for row in conn.execute(query.where(cfg.c.id.in_(sorted(set(config_ids))))).mappings():
        config = {c.name: row[c.name] for c in cfg.c}
        i = {c: row[f"i_{c}"] for c in _TENSOR}
        w = {c: row[f"w_{c}"] for c in _TENSOR} if wei is not None else None
        found[int(row["id"])] = fin.config_object(config, i, w, config_type=fam.config_type)
    return found


def _kernel(row: Any) -> dict[str, Any]:
    blob = row["kernel_blob"]
    return {
        "kernel_file": row["kernel_name"],
        "comp_options": row["kernel_args"],
        "blob": blob.decode("ascii", "replace") if isinstance(blob, bytes) else str(blob),
        "md5_sum": row["kernel_hash"],
        "uncompressed_size": int(row["uncompressed_size"]),
    }


def _find_compiled(conn: Connection, fam: Family, session_id: int, config_id: int, solver: str) -> list[dict[str, Any]]:
    """The find eval's input (§5.5): the session's compiled find_db rows of the config."""
    fdb, sol, kc = fam.find_db, t.solver, fam.kernel_cache
    query = (
        sa.select(fdb.c.kernel_group, sol.c.solver)
        .join(sol, sol.c.id == fdb.c.solver)
        .where(
            fdb.c.session == session_id,
            fdb.c.config == config_id,
            fdb.c.valid.is_(True),
            fdb.c.opencl.is_(False),
            fdb.c.workspace_sz != -1,
        )
        .order_by(sol.c.solver)
    )
    if solver:
        query = query.where(sol.c.solver == solver)
    rows = conn.execute(query).all()
    groups = [int(r.kernel_group) for r in rows if r.kernel_group is not None]
    kernels: dict[int, list[dict[str, Any]]] = {}
    if groups:
        krows = conn.execute(
            sa.select(kc).where(kc.c.kernel_group.in_(groups), kc.c.valid.is_(True)).order_by(kc.c.id)
        ).mappings()
        for k in krows:
            kernels.setdefault(int(k["kernel_group"]), []).append(_kernel(k))
    return [
        {"solver_name": r.solver, "find_compiled": True, "kernel_objects": kernels.get(int(r.kernel_group or -1), [])}
        for r in rows
    ]


def _perf_compiled(conn: Connection, fam: Family, job_id: int) -> list[dict[str, Any]]:
    """The perf eval's input (§5.5): the job's own compiled kernels, per solver."""
    jc, sol = fam.job_cache_fin, t.solver
    query = sa.select(jc, sol.c.solver.label("solver_name")).join(sol, sol.c.id == jc.c.solver_id)
    per_solver: dict[str, list[dict[str, Any]]] = {}
    for k in conn.execute(query.where(jc.c.job_id == job_id, jc.c.valid.is_(True)).order_by(jc.c.id)).mappings():
        per_solver.setdefault(str(k["solver_name"]), []).append(_kernel(k))
    return [
        {"solver_name": name, "perf_compiled": True, "kernel_objects": kernels}
        for name, kernels in sorted(per_solver.items())
    ]


def job_payloads(
    conn: Connection,
    step: Step,
    session: SessionInfo,
    rows: Sequence[Mapping[str, Any]],
    options: Mapping[str, Any],
) -> list[dict[str, Any]]:
    fam = family_of(step)
    fin_step = fin_step_of(step)
    configs = _configs(conn, fam, [int(r["config"]) for r in rows])
    payloads = []
    for row in rows:
        config_id = int(row["config"])
        solver = str(row.get("solver") or "")
        payload: dict[str, Any] = {
            "job_id": int(row["id"]),
            "fin_step": fin_step,
            "config_id": config_id,
            "config": configs.get(config_id),
            "config_type": fam.config_type,
            "solver": solver,
            "arch": session.arch,
            "num_cu": session.num_cu,
            "session_id": session.id,
            "find_mode": int(options.get("find_mode", 1)),
            "blacklist": list(options.get("blacklist") or ()),
            "dynamic_only": bool(options.get("dynamic_solvers_only", False)),
        }
        if fin_step == "miopen_find_eval":
            payload["compiled"] = _find_compiled(conn, fam, session.id, config_id, solver)
        elif fin_step == "miopen_perf_eval":
            payload["compiled"] = _perf_compiled(conn, fam, int(row["id"]))
        payloads.append(payload)
    return payloads


# -- the worker ------------------------------------------------------------------------------


def _legacy(reason: str) -> bool:
    return "Legacy" in reason


def statuses(fin_step: str, items: Sequence[Any]) -> list[tuple[str, bool, str]]:
    """(solver, success, reason) per item of fin's result list (§4.7.1, §13.5)."""
    found = []
    for item in items:
        if not isinstance(item, dict):
            found.append(("?", False, "an item that is not an object"))
            continue
        name = str(item.get("solver_name") or "?")
        failure = fin.item_failure(fin_step, item)
        if failure is None:
            found.append((name, True, str(item.get("reason") or "Success")))
        else:
            text = failure.removeprefix(f"{name}: ")
            found.append((name, _legacy(text), text))
    return found


def summary(found: Sequence[tuple[str, bool, str]]) -> tuple[bool, str]:
    """Job success and its summary text (§4.7.3)."""
    if not found:
        return False, ""
    ok = any(success for _, success, _ in found)
    reasons = {reason for _, _, reason in found}
    if len(reasons) == 1:
        return ok, reasons.pop()
    return ok, "".join(f" ({name}: {reason})" for name, _, reason in found).strip()


def run_job(step: Step, payload: Mapping[str, Any], ctx: WorkerContext) -> JobRun:
    fin_step = fin_step_of(step)
    config = payload.get("config")
    eval_step = fin_step in fin.EVAL_STEPS
    if not isinstance(config, dict):
        return JobRun(ok=False, result="", reason=f"config {payload.get('config_id')} is gone from the database")
    compiled = payload.get("compiled")
    if eval_step and not compiled:
        return JobRun(
            ok=False,
            result="",
            reason=f"nothing compiled for config {payload['config_id']} in session {payload['session_id']}"
            + (f" and solver {payload['solver']}" if payload.get("solver") else "")
            + ": run the compile step first",
        )
    gpu_id = ctx.gpu_id if eval_step else -1
    try:
        job = fin.problem_job(
            fin_step,
            int(payload["config_id"]),
            config,
            arch=str(payload["arch"]),
            num_cu=int(payload["num_cu"]),
            direction=fin.direction_flag(config, str(payload["config_type"])),
            dynamic_only=bool(payload.get("dynamic_only")),
            solver=str(payload.get("solver") or "") or None,
            compiled=compiled if eval_step else None,
        )
    except (KeyError, ValueError) as error:
        return JobRun(ok=False, result="", reason=f"cannot make fin's input: {error}")
    env = fin.fin_env(
        fin_step,
        find_mode=int(payload.get("find_mode", 1)),
        blacklist=payload.get("blacklist") or (),
        gpu_id=gpu_id,
        base={**os.environ, **ctx.env},
    )
    done = fin.run_fin(fin_step, [job], rocm_path=ctx.rocm_path, timeout_s=ctx.job_time_limit_s, env=env)
    if not done.ok:
        # A hang or a crash is the host's; an eval failure follows the eval retry rule.
        return JobRun(
            ok=False,
            result="",
            exit_status=done.exit_status,
            reason=done.reason,
            retryable=done.retryable or eval_step,
        )
    out = done.results[0]
    items = out.get(fin.RESULT_KEY[fin_step]) or []
    found = statuses(fin_step, items)
    ok, text = summary(found)
    if not ok:
        reason = text or f"{fin_step}: fin returned no results"
        return JobRun(ok=False, result="", exit_status=0, reason=reason, retryable=eval_step)
    result = {
        "db_key": out.get("db_key"),
        "gpu_id": gpu_id,
        "summary": text,
        "items": [i for i in items if isinstance(i, dict)],
    }
    return JobRun(ok=True, result=json.dumps(result, separators=(",", ":")), exit_status=0)


# -- the head node: storing results (§4.7) ---------------------------------------------------


class Unstorable(Exception):
    """A job's output that cannot be stored: the job fails with this reason."""


@dataclasses.dataclass
class _Planned:
    """What one job's output will write, all checked before anything is written."""

    job_id: int
    config: int
    session: int
    summary: str
    fdb: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # with "kernels"
    cache: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _solver_ids(conn: Connection) -> dict[str, int]:
    sol = t.solver
    return {str(r.solver): int(r.id) for r in conn.execute(sa.select(sol.c.id, sol.c.solver))}


def _kernels(item: Mapping[str, Any], target: str, where: str) -> list[dict[str, Any]]:
    rows = []
    for raw in item.get("kernel_objects") or []:
        try:
            kernel = KernelObject.from_fin(raw)
            if kernel.md5_sum == "Failed to compress kernel" and kernel.uncompressed_size == 0:
                continue  # fin could not compress it: nothing MIOpen could load (§13.4)
            kernel_row(kernel, target)
        except DbFileError as error:
            raise Unstorable(f"{where}: {error}") from None
        rows.append(
            {
                "kernel_name": kernel.kernel_file,
                "kernel_args": kernel.comp_options,
                "kernel_blob": kernel.blob.encode("ascii"),
                "kernel_hash": kernel.md5_sum,
                "uncompressed_size": kernel.uncompressed_size,
            }
        )
    return rows


def _plan(
    step: Step,
    job: Mapping[str, Any],
    result: Mapping[str, Any],
    solver_ids: Mapping[str, int],
    expected_key: str | None,
    target: str,
) -> _Planned:
    fin_step = fin_step_of(step)
    items = result.get("items")
    if not isinstance(items, list):
        raise Unstorable("the outcome holds no fin result items")
    found = statuses(fin_step, items)
    ok, text = summary(found)
    if not ok:
        raise Unstorable(text or "fin returned no results")
    plan = _Planned(int(job["id"]), int(job["config"]), int(job["session"]), text)
    db_key = result.get("db_key")
    for item, (name, success, _) in zip(items, found, strict=True):
        if not success:
            continue
        if name not in solver_ids:
            raise Unstorable(f"fin named solver {name!r}, which is not in the solver table (run --update_solvers)")
        if fin.item_failure(fin_step, item) is not None:
            continue  # a "Legacy" failure counts for the summary but stores nothing
        kernels = _kernels(item, target, f"solver {name}")
        if fin_step == "miopen_perf_compile":
            plan.cache += [{**k, "solver_id": solver_ids[name]} for k in kernels]
            continue
        if not isinstance(db_key, str) or not db_key:
            raise Unstorable("fin's result has no db_key")
        if expected_key is not None and db_key != expected_key:
            raise Unstorable(f"fin's db_key {db_key} is not the config's problem key {expected_key}")
        time_ms = item.get("time") if fin_step in fin.EVAL_STEPS else None
        params = item.get("params")
        plan.fdb.append(
            {
                "solver": solver_ids[name],
                "fdb_key": db_key,
                "params": "" if params is None else str(params),
                "kernel_time": float(time_ms) if time_ms is not None else -1.0,
                "workspace_sz": int(item.get("workspace") or 0),
                "alg_lib": str(item.get("algorithm") or "") or None,
                "kernels": kernels,
            }
        )
    return plan


def _write(conn: Connection, step: Step, plan: _Planned) -> None:
    fam = family_of(step)
    fdb, kc = fam.find_db, fam.kernel_cache
    for row in plan.fdb:
        kernels = row.pop("kernels")
        existing = conn.execute(
            sa.select(fdb.c.id, fdb.c.kernel_group).where(
                fdb.c.session == plan.session,
                fdb.c.config == plan.config,
                fdb.c.solver == row["solver"],
                fdb.c.opencl.is_(False),
            )
        ).first()
        if existing is None:
            inserted = conn.execute(
                sa.insert(fdb).values(**row, config=plan.config, session=plan.session, opencl=False, valid=True)
            ).inserted_primary_key
            assert inserted is not None
            fdb_id = int(inserted[0])
            group = fdb_id
            conn.execute(sa.update(fdb).where(fdb.c.id == fdb_id).values(kernel_group=group))
        else:
            fdb_id = int(existing.id)
            group = int(existing.kernel_group) if existing.kernel_group is not None else fdb_id
            conn.execute(sa.update(fdb).where(fdb.c.id == fdb_id).values(**row, valid=True, kernel_group=group))
        if kernels:
            # New kernels replace the group's; an eval that reports none keeps the compile's.
            conn.execute(sa.delete(kc).where(kc.c.kernel_group == group))
            conn.execute(sa.insert(kc), [{**k, "kernel_group": group, "valid": True} for k in kernels])
    if fin_step_of(step) == "miopen_perf_compile":
        jc = fam.job_cache_fin
        conn.execute(sa.delete(jc).where(jc.c.job_id == plan.job_id))
        if plan.cache:
            conn.execute(sa.insert(jc), [{**k, "job_id": plan.job_id, "valid": True} for k in plan.cache])
    if is_eval(step):
        # §4.8 for this job only: its perf-compile kernels are spent.
        jc = fam.job_cache_fin
        conn.execute(sa.delete(jc).where(jc.c.job_id == plan.job_id))
    job = fam.job
    conn.execute(sa.update(job).where(job.c.id == plan.job_id).values(result=plan.summary))


def store_results(conn: Connection, step: Step, outcomes: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """Write the rows of each applied successful outcome; job id → reason for those that
    cannot be stored (nothing of theirs is written)."""
    done = [o for o in outcomes if o.get("ok") and o.get("state", step.done) == step.done]
    if not done:
        return {}
    fam = family_of(step)
    job = fam.job
    ids = [int(o["job_id"]) for o in done]
    jobs = {
        int(r.id): dict(r._mapping)
        for r in conn.execute(sa.select(job.c.id, job.c.config, job.c.session).where(job.c.id.in_(ids)))
    }
    solver_ids = _solver_ids(conn)
    keys: dict[int, str] = {}
    if fam is CONV:
        try:
            keys = keys_of_configs(conn, {int(j["config"]) for j in jobs.values()})
        except BadInput as error:
            log.warning("problem keys: %s", error)
    sessions = {
        int(r.id): str(r.arch)
        for r in conn.execute(
            sa.select(t.session.c.id, t.session.c.arch).where(
                t.session.c.id.in_({int(j["session"]) for j in jobs.values()})
            )
        )
    }
    failures: dict[int, str] = {}
    for outcome in done:
        job_id = int(outcome["job_id"])
        row = jobs.get(job_id)
        if row is None:
            continue
        try:
            try:
                result = json.loads(str(outcome.get("result") or ""))
            except ValueError:
                raise Unstorable("the worker's result is not JSON (cut on the way?)") from None
            if not isinstance(result, dict):
                raise Unstorable("the worker's result is not an object")
            target = fin.target_id(sessions.get(int(row["session"]), ""))
            plan = _plan(step, row, result, solver_ids, keys.get(int(row["config"])), target)
        except Unstorable as error:
            failures[job_id] = str(error)
            log.warning("job %d: %s", job_id, error)
            continue
        _write(conn, step, plan)
    return failures


# -- the host check --------------------------------------------------------------------------


def check_host(step: Step, session: SessionInfo, host: LocalMachine, rocm_path: Path) -> None:
    """Refuse a host that contradicts the session (MITuna checked only a process's first
    task, §11.7): its ROCm and MIOpen versions, and for an eval its GPU's arch and CUs."""
    path = rocm_path
    rocm_v = rocm_version(path)
    if str(session.row.get("rocm_v", rocm_v)) != rocm_v:
        raise BadInput(f"this host has ROCm {rocm_v}; session {session.id} was made with {session.row['rocm_v']}")
    miopen_v = miopen_version(path)
    if str(session.row.get("miopen_v", miopen_v)) != miopen_v:
        raise BadInput(f"this host has MIOpen {miopen_v}; session {session.id} was made with {session.row['miopen_v']}")
    if not is_eval(step):
        return
    arch, num_cu = host.arch, host.num_cu
    if arch != session.arch or num_cu != session.num_cu:
        raise BadInput(
            f"this host's GPU is {arch} with {num_cu} CUs; session {session.id} tunes {session.arch} "
            f"with {session.num_cu} CUs"
        )


# -- --status ----------------------------------------------------------------------------------


def status_lines(conn: Connection, step: Step, session: SessionInfo) -> list[str]:
    """The MIOpen part of ``--status``: jobs per fin step set and state, and the attempts
    of ``step`` per host and GPU (from the attempt records, not from worker names)."""
    table = family_of(step).job
    c = table.c
    lines = []
    counts = conn.execute(
        sa.select(c.fin_step, c.state, sa.func.count())
        .where(c.session == session.id, c.valid.is_(True))
        .group_by(c.fin_step, c.state)
        .order_by(c.fin_step, c.state)
    ).all()
    per_steps: dict[str, list[str]] = {}
    for fin_steps, state, n in counts:
        per_steps.setdefault(str(fin_steps), []).append(f"{state} {n}")
    for fin_steps, parts in per_steps.items():
        lines.append(f"{table.name} jobs of {fin_steps}: {', '.join(parts)}")
    a = job_attempt.c
    hosts = conn.execute(
        sa.select(a.hostname, a.gpu_id, a.outcome, sa.func.count())
        .where(a.session == session.id, a.step == step.name, a.job_table == table.name)
        .group_by(a.hostname, a.gpu_id, a.outcome)
        .order_by(a.hostname, a.gpu_id, a.outcome)
    ).all()
    per_host: dict[tuple[str, int], list[str]] = {}
    for hostname, gpu_id, outcome, n in hosts:
        per_host.setdefault((str(hostname or "?"), int(gpu_id)), []).append(f"{outcome} {n}")
    for (hostname, gpu_id), parts in per_host.items():
        where = f"{hostname} GPU {gpu_id}" if gpu_id >= 0 else f"{hostname} (no GPU)"
        lines.append(f"{step.name} attempts on {where}: {', '.join(parts)}")
    return lines
