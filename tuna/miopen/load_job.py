"""``go_fish.py miopen load_job``: one job per applicable (config, solver) of a session
(reference/miopen.md §2.6).

The candidates are the session's ``*_solver_applicability`` rows with applicable = 1, for
valid configs (``-t TAG``: tagged TAG; ``--all_configs``: every one) and valid solvers of
the config type, narrowed by ``-A`` (an algorithm's solvers), ``-s`` (named solvers),
``--tunable``, ``--only_dynamic`` and ``-c`` (the configs of one precision). Each becomes a
``new`` job with reason = ``-l`` and the given fin steps. A job is the same job when its
(config, solver, session, fin steps) are (the job table's unique key, §11.10), so a second
run adds nothing; the insert is one bulk statement per chunk that skips existing rows, and
the count printed is the rows that appeared.

Unlike MITuna (§11.10): an unknown solver in ``-s`` is an error naming it and changes
nothing (MITuna silently dropped the filter when the first name was unknown), ``-c`` works,
and a ``-t`` tag no config carries is an error.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import sqlalchemy as sa

from tuna.config import Settings
from tuna.db.engine import Database
from tuna.errors import BadInput
from tuna.miopen import tables as t
from tuna.miopen.import_configs import insert_ignore
from tuna.miopen.problem import BN_COMMANDS, CONV_COMMANDS
from tuna.miopen.sessions import get_session

log = logging.getLogger(__name__)

ALGORITHMS = tuple(f"miopenConvolutionAlgo{name}" for name in ("GEMM", "Direct", "FFT", "Winograd", "ImplicitGEMM"))
CHUNK = 2000
_SHARED: dict[str, Any] = {"default": argparse.SUPPRESS}


def algorithm_of(solver: str) -> str:
    """The algorithm a MIOpen solver belongs to, from its name (MIOpen's naming: GemmFwdRest,
    fft, ConvBinWinograd3x3U, ConvHipImplicitGemmV4R1Fwd; every other conv solver is direct)."""
    lower = solver.lower()
    if lower.startswith("gemm"):
        return "miopenConvolutionAlgoGEMM"
    if lower.startswith("fft"):
        return "miopenConvolutionAlgoFFT"
    if "winograd" in lower:
        return "miopenConvolutionAlgoWinograd"
    if "implicitgemm" in lower:
        return "miopenConvolutionAlgoImplicitGEMM"
    return "miopenConvolutionAlgoDirect"


def fin_step_set(text: str) -> str:
    steps = [s.strip() for s in text.split(",")]
    steps = [s for s in steps if s]
    unknown = [s for s in steps if s not in t.FIN_STEPS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown fin step(s): {', '.join(unknown)} (one or more of {', '.join(t.FIN_STEPS)})"
        )
    return ",".join(s for s in t.FIN_STEPS if s in steps)


def add_load_job(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "load_job",
        help="add a job per applicable (config, solver) of a session",
        description="Add one new job per applicable (config, solver) of --session_id (see --update_applicability).",
    )
    parser.add_argument("-C", "--config_type", choices=("convolution", "batch_norm"), **_SHARED)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("-t", "--tag", help="the configs tagged TAG")
    which.add_argument("--all_configs", action="store_true", help="every valid config")
    solvers = parser.add_mutually_exclusive_group()
    solvers.add_argument("-A", "--algo", choices=ALGORITHMS, metavar="ALG", help=f"one of {', '.join(ALGORITHMS)}")
    solvers.add_argument("-s", "--solvers", metavar="S1,S2", help="only these solvers (names)")
    parser.add_argument("-d", "--only_dynamic", action="store_true", help="only dynamic solvers")
    parser.add_argument("--tunable", action="store_true", help="only tunable solvers")
    commands = (*CONV_COMMANDS, *BN_COMMANDS)
    parser.add_argument("-c", "--cmd", choices=commands, metavar="CMD", help=f"only configs of: {', '.join(commands)}")
    parser.add_argument("-l", "--label", help="reason recorded on the jobs (default: new)", **_SHARED)
    parser.add_argument(
        "--fin_steps",
        type=fin_step_set,
        default="not_fin",
        metavar="STEPS",
        help="comma-separated fin steps of the jobs (default not_fin), e.g. miopen_find_compile,miopen_find_eval",
    )
    parser.add_argument("--session_id", type=int, help="the session (required)", **_SHARED)
    parser.set_defaults(func=run_load_job)
    return parser


def _family(config_type: str) -> dict[str, sa.Table]:
    return t.bn if config_type == "batch_norm" else t.conv


def run_load_job(args: argparse.Namespace, settings: Settings) -> int:
    from tuna.miopen.library import MIOpenLibrary, check_text

    session_id = getattr(args, "session_id", None)
    if session_id is None:
        raise BadInput("load_job needs --session_id S")
    if args.tag is None and not args.all_configs:
        raise BadInput("load_job needs the configs: -t TAG or --all_configs")
    label = getattr(args, "label", None) or "new"
    check_text("-l/--label", label, 60)
    config_type = getattr(args, "config_type", None) or "convolution"
    if args.cmd is not None:
        wanted = CONV_COMMANDS if config_type == "convolution" else BN_COMMANDS
        if args.cmd not in wanted:
            raise BadInput(f"-c {args.cmd} is not a {config_type.replace('_', '-')} command ({', '.join(wanted)})")
    if not args.fin_steps:
        log.warning("--fin_steps is empty: the jobs get no fin step")
    db = Database(settings)
    MIOpenLibrary().check_schema(db)
    with db.begin() as conn:
        get_session(conn, session_id)
        added = load_jobs(
            conn,
            session_id,
            config_type=config_type,
            tag=args.tag,
            algo=args.algo,
            solvers=[s.strip() for s in args.solvers.split(",") if s.strip()] if args.solvers else None,
            only_dynamic=args.only_dynamic,
            tunable=args.tunable,
            cmd=args.cmd,
            label=label,
            fin_steps=args.fin_steps,
        )
    print(f"New jobs added: {added}")
    return 0


def load_jobs(
    conn: sa.Connection,
    session_id: int,
    *,
    config_type: str,
    tag: str | None,
    algo: str | None,
    solvers: list[str] | None,
    only_dynamic: bool,
    tunable: bool,
    cmd: str | None,
    label: str,
    fin_steps: str,
) -> int:
    """Insert the jobs; returns how many are new. Raises BadInput before writing anything."""
    family = _family(config_type)
    cfg = t.bn_config if config_type == "batch_norm" else t.conv_config
    app, job, tags, s = family["solver_applicability"], family["job"], family["config_tags"], t.solver
    if tag is not None:
        tagged = conn.execute(sa.select(sa.func.count()).select_from(tags).where(tags.c.tag == tag)).scalar_one()
        if not tagged:
            raise BadInput(f"no {config_type} config is tagged {tag!r} (import_configs -t {tag} tags them)")
    solver_filter: list[int] | None = None
    if solvers is not None:
        known = dict(
            conn.execute(
                sa.select(s.c.solver, s.c.id).where(
                    s.c.solver.in_(solvers), s.c.valid == sa.true(), s.c.config_type == config_type
                )
            ).all()
        )
        unknown = [name for name in solvers if name not in known]
        if unknown:
            raise BadInput(
                f"Invalid solver(s) for {config_type}: {', '.join(unknown)} (not valid in the solver table; "
                "see --list_solvers)"
            )
        solver_filter = [int(known[name]) for name in solvers]
    elif algo is not None:
        named = conn.execute(
            sa.select(s.c.id, s.c.solver).where(s.c.valid == sa.true(), s.c.config_type == config_type)
        ).all()
        solver_filter = [int(i) for i, name in named if algorithm_of(name) == algo]
        if not solver_filter:
            raise BadInput(f"no valid solver of algorithm {algo} in the solver table")
    query = (
        sa.select(app.c.config, s.c.solver)
        .join(s, s.c.id == app.c.solver)
        .join(cfg, cfg.c.id == app.c.config)
        .where(
            app.c.session == session_id,
            app.c.applicable == sa.true(),
            app.c.valid == sa.true(),
            s.c.valid == sa.true(),
            s.c.config_type == config_type,
            cfg.c.valid == sa.true(),
        )
    )
    if solver_filter is not None:
        query = query.where(s.c.id.in_(solver_filter))
    if tunable:
        query = query.where(s.c.tunable == sa.true())
    if only_dynamic:
        query = query.where(s.c.is_dynamic == sa.true())
    if tag is not None:
        query = query.where(cfg.c.id.in_(sa.select(tags.c.config).where(tags.c.tag == tag, tags.c.valid == sa.true())))
    if cmd is not None:
        data_type = {**CONV_COMMANDS, **BN_COMMANDS}[cmd]
        tensor = t.tensor
        query = query.where(cfg.c.input_tensor.in_(sa.select(tensor.c.id).where(tensor.c.data_type == data_type)))
    pairs = sorted({(int(c), str(n)) for c, n in conn.execute(query)})
    if not pairs:
        log.warning(
            "No applicable solvers found for session %d with these filters (did --update_applicability run?)",
            session_id,
        )
        return 0
    existing = {
        (int(c), str(n))
        for c, n in conn.execute(
            sa.select(job.c.config, job.c.solver).where(job.c.session == session_id, job.c.fin_step == fin_steps)
        )
    }
    rows = [
        {"config": c, "solver": n, "session": session_id, "state": "new", "reason": label, "fin_step": fin_steps}
        for c, n in pairs
        if (c, n) not in existing
    ]
    count = sa.select(sa.func.count()).select_from(job).where(job.c.session == session_id)
    before = conn.execute(count).scalar_one()
    for start in range(0, len(rows), CHUNK):
        conn.execute(insert_ignore(job), rows[start : start + CHUNK])
    return int(conn.execute(count).scalar_one() - before)
