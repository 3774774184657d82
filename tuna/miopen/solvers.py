"""Solvers and their applicability, from MIFin: ``--update_solvers`` and
``--update_applicability`` (reference/miopen.md §2.4, §5.2, §5.3).

``--update_solvers`` makes the ``solver`` table say what fin's ``get_solvers`` says: a
solver's id is MIOpen's id, its name, tunability, kind and dynamism are fin's, and a solver
fin no longer lists gets ``valid = 0``. A solver that another command created by name
(``import_db`` meets solver names in MIOpen's files) keeps its id, so that rows pointing at
it stay right.

``--update_applicability`` runs fin's ``applicability`` on the session's configs in blocks of
:data:`BLOCK` configs, spread over local processes, and replaces each block's rows of
``*_solver_applicability`` for the session in one transaction: a block is either all old or
all new, and a second run gives the same rows. Solver names the solver table does not know
are skipped, with one warning per name.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tuna.config import Settings
from tuna.db.engine import Database, mysql_error_code
from tuna.errors import TunaError
from tuna.miopen import fin
from tuna.miopen import tables as t
from tuna.miopen.sessions import get_session
from tuna.runner import run_command

log = logging.getLogger(__name__)

BLOCK = 100  # configs per fin call and per transaction (MITuna's block size)
INSERT_CHUNK = 5000
RETRIES = 5
RETRY_CODES = {1205, 1213}  # MySQL: lock wait timeout, deadlock
PROGRESS_EVERY_S = 10.0
#: Rounds of process pools: a block whose process died is run once more.
POOL_ROUNDS = 2
_TENSOR_COLUMNS = ("dim0", "dim1", "dim2", "dim3", "dim4", "layout", "num_dims", "data_type")


class FinFailed(TunaError):
    """fin did not give a usable answer."""


# -- --update_solvers ---------------------------------------------------------------------------


@dataclass
class SolverUpdate:
    listed: int = 0
    added: int = 0
    updated: int = 0
    invalidated: int = 0
    kept_ids: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"Solvers from fin: {self.listed}; added {self.added}, updated {self.updated}, "
            f"marked invalid {self.invalidated}"
        )


def fetch_solvers(settings: Settings) -> list[fin.FinSolver]:
    with tempfile.TemporaryDirectory(prefix="tuna-fin-work-") as work:
        result = fin.run_fin(
            "get_solvers",
            [fin.get_solvers_job()],
            rocm_path=settings.rocm_path,
            timeout_s=settings.time_limit_s(fin.DEFAULT_TIME_LIMIT_S),
            env=fin.fin_env("get_solvers", work_dir=Path(work)),
        )
    if not result.ok:
        raise FinFailed(f"fin get_solvers failed: {result.reason}")
    try:
        solvers = fin.solvers_of(result)
    except ValueError as error:
        raise FinFailed(str(error)) from None
    if not solvers:
        raise FinFailed("fin get_solvers listed no solver")
    names = [s.name for s in solvers]
    ids = [s.id for s in solvers]
    if len(set(names)) != len(names) or len(set(ids)) != len(ids):
        raise FinFailed("fin get_solvers listed a solver name or id twice")
    return solvers


def update_solvers(settings: Settings, db: Database) -> SolverUpdate:
    """Upsert fin's solvers into the solver table; those it does not list become invalid."""
    solvers = fetch_solvers(settings)
    s = t.solver
    stats = SolverUpdate(listed=len(solvers))
    with db.begin() as conn:
        rows = {int(r.id): r for r in conn.execute(sa.select(s.c.id, s.c.solver, s.c.valid))}
        by_name = {str(r.solver): i for i, r in rows.items()}
        updates: list[dict[str, Any]] = []
        inserts: list[dict[str, Any]] = []
        matched: set[int] = set()
        for solver in solvers:
            values = {
                "solver": solver.name,
                "tunable": solver.tunable,
                "config_type": solver.config_type,
                "is_dynamic": solver.dynamic,
                "valid": True,
            }
            row_id = by_name.get(solver.name)
            if row_id is None and solver.id in rows and rows[solver.id].solver not in {x.name for x in solvers}:
                row_id = solver.id  # MIOpen renamed the solver with this id
            if row_id is not None:
                if row_id != solver.id:
                    stats.kept_ids.append(f"{solver.name} keeps id {row_id} (fin's id is {solver.id})")
                matched.add(row_id)
                updates.append({"row_id": row_id, **values})
            else:
                free = solver.id not in rows and solver.id not in {i["id"] for i in inserts if "id" in i}
                inserts.append({"id": solver.id, **values} if free else values)
        if updates:
            conn.execute(s.update().where(s.c.id == sa.bindparam("row_id")), updates)
        for row in inserts:  # explicit ids: one statement each, a few dozen at most
            conn.execute(s.insert().values(**row))
        gone = [i for i, r in rows.items() if i not in matched and r.valid]
        for start in range(0, len(gone), 500):
            conn.execute(s.update().where(s.c.id.in_(gone[start : start + 500])).values(valid=False))
        stats.added, stats.updated, stats.invalidated = len(inserts), len(updates), len(gone)
    for note in stats.kept_ids:
        log.warning("solver %s", note)
    return stats


# -- --update_applicability ---------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """The tables of one config type."""

    config_type: str
    config: sa.Table
    tags: sa.Table
    applicability: sa.Table

    @classmethod
    def of(cls, config_type: str) -> Family:
        if config_type == "batch_norm":
            return cls(config_type, t.bn_config, t.bn_config_tags, t.bn_solver_applicability)
        return cls(config_type, t.conv_config, t.conv_config_tags, t.conv_solver_applicability)


@dataclass
class BlockOutcome:
    configs: int
    rows: int = 0
    unknown: set[str] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)  # configs fin cannot be asked about
    error: str = ""


def local_processes() -> int:
    """Processes to spread work over: SLURM_CPUS_ON_NODE when set, else the CPU count."""
    raw = os.environ.get("SLURM_CPUS_ON_NODE", "")
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return max(1, os.cpu_count() or 1)


def config_ids(conn: sa.Connection, family: Family, tag: str | None) -> list[int]:
    cfg = family.config
    query = sa.select(cfg.c.id).where(cfg.c.valid == sa.true()).order_by(cfg.c.id)
    if tag is not None:
        tags = family.tags
        query = query.where(cfg.c.id.in_(sa.select(tags.c.config).where(tags.c.tag == tag, tags.c.valid == sa.true())))
    return [int(i) for i in conn.execute(query).scalars()]


def config_objects(conn: sa.Connection, family: Family, ids: Sequence[int]) -> dict[int, dict[str, Any] | str]:
    """config id -> fin's config object (§5.1), or why there is none."""
    cfg, inp = family.config, t.tensor.alias("inp")
    columns = [inp.c[c].label(f"i_{c}") for c in _TENSOR_COLUMNS]
    query = sa.select(cfg, *columns).join(inp, inp.c.id == cfg.c.input_tensor)
    wei = None
    if family.config_type == "convolution":
        wei = t.tensor.alias("wei")
        query = query.add_columns(*[wei.c[c].label(f"w_{c}") for c in _TENSOR_COLUMNS]).join(
            wei, wei.c.id == cfg.c.weight_tensor
        )
    found: dict[int, dict[str, Any] | str] = {}
    for row in conn.execute(query.where(cfg.c.id.in_(list(ids)))).mappings():
        own = {c.name: row[c.name] for c in cfg.columns}
        i = {c: row[f"i_{c}"] for c in _TENSOR_COLUMNS}
        w = {c: row[f"w_{c}"] for c in _TENSOR_COLUMNS} if wei is not None else None
        try:
            found[int(row["id"])] = fin.config_object(own, i, w, config_type=family.config_type)
        except ValueError as error:
            found[int(row["id"])] = str(error)
    return found


_block_db: Database | None = None


def _database(settings: Settings) -> Database:
    global _block_db
    if _block_db is None:
        _block_db = Database(settings)
    return _block_db


def applicability_block(
    settings: Settings,
    session_id: int,
    config_type: str,
    ids: Sequence[int],
    solver_ids: dict[str, int],
    work_root: Path,
) -> BlockOutcome:
    """Ask fin about one block of configs and replace the block's applicability rows.

    MIOpen's user-db and cache go to this process's folder under ``work_root``, which the
    parent removes: a pool process ends without running exit handlers."""
    family = Family.of(config_type)
    outcome = BlockOutcome(configs=len(ids))
    db = _database(settings)
    with db.begin() as conn:
        session = get_session(conn, session_id)
        objects = config_objects(conn, family, ids)
    jobs = []
    for config_id in ids:
        obj = objects.get(config_id)
        if not isinstance(obj, dict):
            outcome.skipped.append(f"config {config_id}: {obj or 'gone'}")
            continue
        jobs.append(
            fin.problem_job(
                "applicability",
                config_id,
                obj,
                arch=session.arch,
                num_cu=session.num_cu,
                direction=fin.direction_flag(obj, config_type),
            )
        )
    answer: dict[int, list[str]] = {}
    if jobs:
        result = fin.run_fin(
            "applicability",
            jobs,
            rocm_path=settings.rocm_path,
            timeout_s=settings.time_limit_s(fin.DEFAULT_TIME_LIMIT_S),
            env=fin.fin_env("applicability", work_dir=work_root / f"process-{os.getpid()}"),
        )
        if not result.ok:
            outcome.error = f"configs {ids[0]}..{ids[-1]}: {result.reason}"
            return outcome
        answer = fin.applicable_of(result)
    asked = {int(j["config_tuna_id"]) for j in jobs}
    rows = []
    for config_id, names in answer.items():
        if config_id not in asked:
            continue  # fin echoing a config it was not asked about: not ours to write
        for name in dict.fromkeys(names):
            solver_id = solver_ids.get(name)
            if solver_id is None:
                outcome.unknown.add(name)
                continue
            rows.append({"session": session_id, "config": config_id, "solver": solver_id, "applicable": True})
    replace_rows(db, family.applicability, session_id, sorted(asked), rows)
    outcome.rows = len(rows)
    return outcome


def replace_rows(
    db: Database, app: sa.Table, session_id: int, configs: Sequence[int], rows: Sequence[dict[str, Any]]
) -> None:
    """Replace the session's applicability rows of ``configs`` (those fin answered for; a
    config it was not asked about keeps what it had) by ``rows``, in one transaction.

    Old rows are deleted by primary key: a DELETE over the (session, config) range takes
    InnoDB gap locks that deadlock with the inserts of the blocks next to it. A deadlock or
    a clash with a concurrent run is retried from the start."""
    for attempt in range(1, RETRIES + 1):
        try:
            with db.begin() as conn:
                old: list[int] = []
                for start in range(0, len(configs), 500):
                    part = configs[start : start + 500]
                    old += conn.execute(
                        sa.select(app.c.id).where(app.c.session == session_id, app.c.config.in_(part))
                    ).scalars()
                for start in range(0, len(old), 1000):
                    conn.execute(sa.delete(app).where(app.c.id.in_(old[start : start + 1000])))
                for start in range(0, len(rows), INSERT_CHUNK):
                    conn.execute(app.insert(), list(rows[start : start + INSERT_CHUNK]))
            return
        except (sa.exc.OperationalError, sa.exc.IntegrityError) as error:
            retry = isinstance(error, sa.exc.IntegrityError) or mysql_error_code(error) in RETRY_CODES
            if not retry or attempt == RETRIES:
                raise
            log.info("applicability rows of configs %d..%d: %s; retrying", configs[0], configs[-1], one_line(error))
            time.sleep(random.uniform(0.05, 0.5) * attempt)


def one_line(error: BaseException) -> str:
    """An exception as one line: a database error by its driver's message, without the SQL."""
    cause = getattr(error, "orig", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"[:300]


@dataclass
class ApplicabilityReport:
    configs: int = 0
    rows: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unknown: set[str] = field(default_factory=set)
    counts: dict[bool, int] = field(default_factory=dict)
    seconds: float = 0.0


def update_applicability(
    settings: Settings,
    db: Database,
    session_id: int,
    *,
    config_type: str = "convolution",
    tag: str | None = None,
    processes: int | None = None,
) -> ApplicabilityReport:
    clock = time.monotonic()
    family = Family.of(config_type)
    with db.begin() as conn:
        get_session(conn, session_id)
        ids = config_ids(conn, family, tag)
        s = t.solver
        solver_ids = {
            str(name): int(i)
            for i, name in conn.execute(
                sa.select(s.c.id, s.c.solver).where(s.c.valid == sa.true(), s.c.config_type == config_type)
            )
        }
    report = ApplicabilityReport()
    if not ids:
        log.warning("no valid %s configs%s: nothing to do", config_type, f" tagged {tag!r}" if tag else "")
    if not solver_ids and ids:
        raise FinFailed(f"the solver table has no valid {config_type} solver: run --update_solvers first")
    blocks = [ids[i : i + BLOCK] for i in range(0, len(ids), BLOCK)]
    workers = max(1, min(processes or local_processes(), len(blocks)))
    # The children open their own connections: none of ours may cross the fork.
    db.dispose()
    work_root = Path(tempfile.mkdtemp(prefix="tuna-fin-work-"))
    try:
        if blocks:
            _run_blocks(settings, session_id, config_type, blocks, solver_ids, work_root, workers, report)
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    for reason in report.skipped:
        log.warning("not asked: %s", reason)
    app = family.applicability
    with db.begin() as conn:
        counted = conn.execute(
            sa.select(app.c.applicable, sa.func.count()).where(app.c.session == session_id).group_by(app.c.applicable)
        ).all()
    report.counts = {bool(a): int(n) for a, n in counted}
    report.seconds = time.monotonic() - clock
    return report


def _run_blocks(
    settings: Settings,
    session_id: int,
    config_type: str,
    blocks: list[list[int]],
    solver_ids: dict[str, int],
    work_root: Path,
    workers: int,
    report: ApplicabilityReport,
) -> None:
    total = sum(len(b) for b in blocks)
    warned: set[str] = set()
    last = time.monotonic()
    # A block whose process died (killed, out of memory) is run again once, in a new pool:
    # its rows are replaced as a whole, so a second run is safe.
    for round_ in range(POOL_ROUNDS):
        lost: list[list[int]] = []
        if not blocks:
            return
        with ProcessPoolExecutor(max_workers=min(workers, len(blocks)), mp_context=get_context("fork")) as pool:
            pending: dict[Future[BlockOutcome], list[int]] = {
                pool.submit(applicability_block, settings, session_id, config_type, block, solver_ids, work_root): block
                for block in blocks
            }
            while pending:
                finished, _ = wait(pending, timeout=PROGRESS_EVERY_S, return_when=FIRST_COMPLETED)
                for future in finished:
                    block = pending.pop(future)
                    try:
                        outcome = future.result()
                    except BrokenProcessPool as error:
                        if round_ + 1 < POOL_ROUNDS:
                            lost.append(block)
                        else:
                            report.failed.append(one_line(error))
                        continue
                    except Exception as error:  # one block's bug is that block's failure
                        report.failed.append(one_line(error))
                        continue
                    report.configs += outcome.configs
                    report.rows += outcome.rows
                    report.skipped += outcome.skipped
                    if outcome.error:
                        report.failed.append(outcome.error)
                    for name in sorted(outcome.unknown - warned):
                        log.warning("fin names solver %r, which the solver table does not hold: skipped", name)
                        warned.add(name)
                    report.unknown |= outcome.unknown
                if time.monotonic() - last >= PROGRESS_EVERY_S and pending:
                    last = time.monotonic()
                    log.info(
                        "update_applicability: %d of %d configs, %d blocks left", report.configs, total, len(pending)
                    )
        if lost:
            log.warning(
                "update_applicability: a worker process died; %d block(s) run again in new processes", len(lost)
            )
        blocks = lost


# -- -e/--exec ------------------------------------------------------------------------------------


def run_exec(command: str, settings: Settings) -> int:
    """Run ``command`` through the shell on this host and show its output (§2.4)."""
    limit = settings.time_limit_s(fin.DEFAULT_TIME_LIMIT_S)
    done = run_command(["/bin/sh", "-c", command], timeout_s=limit, env=dict(os.environ))
    if done.stdout:
        print(done.stdout, end="" if done.stdout.endswith("\n") else "\n", flush=True)
    if done.stderr:
        print(done.stderr, end="" if done.stderr.endswith("\n") else "\n", file=sys.stderr, flush=True)
    if done.timed_out:
        raise TunaError(f"-e: the command timed out after {limit:g} s and was killed")
    if done.exit_status != 0:
        raise TunaError(f"-e: the command exited with status {done.exit_status}")
    return 0
