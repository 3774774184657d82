"""The MIOpen library: convolution and batch-norm problems, their tables, sessions and configs.

This part makes the schema (``--add_tables``), sessions (``--init_session``), the solver list
(``--list_solvers``) and config import (``import_configs``) work; the database subcommands
come from :mod:`tuna.miopen.dbcommands`. The four MIFin steps run through the core's head
node and workers (``--fin_steps STEP --session_id S``); their states, payloads, the worker's
fin run and the result processing are in :mod:`tuna.miopen.tuning`.

One operation at a time, as in MITuna (reference/miopen.md §2.2): ``--add_tables``,
``--init_session``, ``--list_solvers`` and ``--status`` exclude each other. ``--fin_steps``
is not in that group: tuna's ``--status`` and ``--execute`` work on one step, named by it.
``--update_solvers``, ``--update_applicability`` (:mod:`tuna.miopen.solvers`) and ``-e`` run
MIFin and commands on this host; ``load_job`` (:mod:`tuna.miopen.load_job`) makes the jobs.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tuna.cli import OneLineParser
from tuna.config import Settings
from tuna.db.engine import Database
from tuna.db.schema import check_schema
from tuna.errors import BadInput
from tuna.library import JobRun, Library, SessionInfo, Step, WorkerContext
from tuna.machine import LocalMachine, discover, rocm_version
from tuna.miopen import import_configs as importer
from tuna.miopen import tables, tuning
from tuna.miopen.dbcommands import add_db_subcommands
from tuna.miopen.load_job import add_load_job
from tuna.miopen.problem import BN_COMMANDS, CONV_COMMANDS
from tuna.miopen.sessions import SessionValues, add_session, get_session, miopen_version

log = logging.getLogger(__name__)

ADD_TABLES_HINT = "./go_fish.py miopen --add_tables"
SCHEMA_REVISION = "miopen_0001"
CONFIG_TYPES = ("convolution", "batch_norm")
BLACKLIST = (
    "MIOPEN_DEBUG_CONV_FFT",
    "MIOPEN_DEBUG_CONV_DIRECT",
    "MIOPEN_DEBUG_CONV_GEMM",
    "MIOPEN_DEBUG_CONV_WINOGRAD",
    "MIOPEN_DEBUG_CONV_IMPLICIT_GEMM",
    "MIOPEN_DEBUG_CONV_SCGEMM",
)
# MIOpen's arch names: gfx + major (6-9 or 10-19) + a decimal minor + a hex stepping
# (gfx803, gfx90a, gfx942, gfx1030, gfx1201), the rule its database file names rest on.
ARCH = re.compile(r"gfx(?:[6-9]|1[0-9])[0-9][0-9a-f]")
TEXT_LIMITS = {"label": 60, "ticket": 64, "docker_name": 128}


#: The fin steps a user names with --fin_steps; batch norm's jobs (bn_job) have their own
#: step of the same fin step, ``bn_miopen_find_compile`` (fin's BN does no other, §13.5).
STEP_NAMES = ("miopen_find_compile", "miopen_find_eval", "miopen_perf_compile", "miopen_perf_eval")
STEPS = (*(tuning.make_step(name) for name in STEP_NAMES), tuning.make_step("bn_miopen_find_compile"))


def arch_name(text: str) -> str:
    if not ARCH.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a MIOpen arch name (gfx and its version: gfx90a, gfx1030)")
    return text


def compute_units(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of compute units")
    return value


def blacklist(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",")]
    for name in names:
        if name not in BLACKLIST:
            raise argparse.ArgumentTypeError(f"Incorrect blacklist value: {name!r} (one of {', '.join(BLACKLIST)})")
    return names


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def check_text(flag: str, value: str | None, limit: int) -> None:
    """A name stored in a column: not empty, no edge spaces or control characters, fits."""
    if value is None:
        return
    if not value.strip():
        raise BadInput(f"{flag} is empty")
    if value != value.strip():
        raise BadInput(f"{flag} {value!r} starts or ends with spaces (MariaDB would not tell it from the trimmed name)")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise BadInput(f"{flag} {value!r} holds a control character")
    if len(value) > limit:
        raise BadInput(f"{flag} is {len(value)} characters; at most {limit} fit")


class MIOpenLibrary(Library):
    """MIOpen: convolution and batch-norm configs, sessions and MIOpen's databases."""

    name = "miopen"
    session_table = tables.session
    job_table = tables.conv_job
    tables = tables.TABLES
    steps = STEPS
    schema_revision = SCHEMA_REVISION

    # -- command line -------------------------------------------------------------------
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        # One operation at a time (reference/miopen.md §2.2), the core's flags included.
        ops = parser.add_mutually_exclusive_group()
        for flag in ("--add_tables", "--status"):
            ops._group_actions.append(parser._option_string_actions[flag])
        ops.add_argument(
            "--init_session",
            action="store_true",
            help="create a tuning session (needs -l); prints its id",
        )
        ops.add_argument("--list_solvers", action="store_true", help="print the solver table: id - name")
        ops.add_argument("--update_solvers", action="store_true", help="fill the solver table from MIFin's get_solvers")
        ops.add_argument(
            "--update_applicability",
            action="store_true",
            help="record which solvers apply to each config (needs --session_id; -l TAG: only configs tagged TAG)",
        )
        ops.add_argument("-e", "--exec", metavar="CMD", dest="exec_cmd", help="run CMD on this host, show its output")
        parser.add_argument(
            "--fin_steps", choices=STEP_NAMES, metavar="STEP", help=f"the tuning step: {', '.join(STEP_NAMES)}"
        )
        parser.add_argument("-a", "--arch", type=arch_name, help="GPU arch, e.g. gfx90a (default: from rocminfo)")
        parser.add_argument("-n", "--num_cu", type=compute_units, help="compute units (default: from rocminfo)")
        parser.add_argument(
            "-C",
            "--config_type",
            choices=CONFIG_TYPES,
            default="convolution",
            help="convolution (default), batch_norm",
        )
        parser.add_argument("--docker_name", default="miopentuna", help="docker image recorded in the session")
        parser.add_argument("--ticket", default="N/A", help="ticket recorded in the session")
        parser.add_argument(
            "--find_mode", type=int, choices=(1, 3), default=1, help="MIOPEN_FIND_MODE for fin (1 or 3; default 1)"
        )
        parser.add_argument(
            "--dynamic_solvers_only", action="store_true", help="compile and evaluate dynamic solvers only"
        )
        parser.add_argument(
            "-B", "--blacklist", type=blacklist, metavar="NAMES", help="solver groups to turn off: MIOPEN_DEBUG_CONV_*"
        )
        subparsers = cast(
            "argparse._SubParsersAction[argparse.ArgumentParser]",
            parser.add_subparsers(
                dest="subcommand", metavar="SUBCOMMAND", parser_class=OneLineParser, title="subcommands"
            ),
        )
        add_import_configs(subparsers)
        add_load_job(subparsers)
        add_db_subcommands(subparsers)

    def run_command(self, args: argparse.Namespace, settings: Settings) -> int | None:
        func = getattr(args, "func", None)
        if func is not None:
            code: int = func(args, settings)
            return code
        if args.init_session:
            return self.init_session(args, settings)
        if args.list_solvers:
            return self.list_solvers(settings)
        if args.update_solvers:
            return self.update_solvers(settings)
        if args.update_applicability:
            return self.update_applicability(args, settings)
        if args.status and args.session_id is not None:
            return self.status(args, settings)
        if args.exec_cmd is not None:
            from tuna.miopen.solvers import run_exec

            return run_exec(args.exec_cmd, settings)
        return None

    def status(self, args: argparse.Namespace, settings: Settings) -> int:
        """The core's --status for the step, then MIOpen's lines: jobs per fin step set and
        state, and the step's attempts per host and GPU."""
        from tuna.status import print_status

        db = Database(settings)
        self.check_schema(db)
        with db.begin() as conn:
            session = self.get_session(conn, args.session_id)
            self.check_session(conn, session, args)
        step = self.select_step(args)
        code = print_status(self, step, session, settings, db, label=args.label)
        with db.begin() as conn:
            for line in tuning.status_lines(conn, step, session):
                print(line)
        return code

    def init_session(self, args: argparse.Namespace, settings: Settings) -> int:
        if not args.label:
            raise BadInput("--init_session needs a label: -l LABEL")
        for flag in ("label", "ticket", "docker_name"):
            check_text(f"--{flag}", getattr(args, flag), TEXT_LIMITS[flag])
        arch, num_cu = args.arch, args.num_cu
        if arch is None or num_cu is None:
            local = discover(settings.rocm_path)
            arch, num_cu = arch or local.arch, num_cu or local.num_cu
        values = SessionValues(
            arch=arch,
            num_cu=num_cu,
            rocm_v=rocm_version(settings.rocm_path),
            miopen_v=miopen_version(settings.rocm_path),
            reason=args.label,
            ticket=args.ticket,
            docker=args.docker_name,
        )
        db = Database(settings)
        self.check_schema(db)
        with db.begin() as conn:
            session_id, created = add_session(conn, values)
        if created:
            log.info("Added new session_id: %d", session_id)
        else:
            log.info("Session for these values already exists: %d", session_id)
        print(session_id)
        return 0

    def list_solvers(self, settings: Settings) -> int:
        db = Database(settings)
        self.check_schema(db)
        solver = tables.solver
        with db.begin() as conn:
            rows = conn.execute(
                sa.select(solver.c.id, solver.c.solver).where(solver.c.valid == sa.true()).order_by(solver.c.id)
            ).all()
        if not rows:
            log.info("the solver table is empty: solvers come from MIFin (--update_solvers, not implemented yet)")
        for solver_id, name in rows:
            print(f"{solver_id:>4} - {name}")
        return 0

    def update_solvers(self, settings: Settings) -> int:
        from tuna.miopen.solvers import update_solvers

        db = Database(settings)
        self.check_schema(db)
        print(update_solvers(settings, db).line())
        return 0

    def update_applicability(self, args: argparse.Namespace, settings: Settings) -> int:
        from tuna.miopen.solvers import FinFailed, update_applicability

        if args.session_id is None:
            raise BadInput("session_id must be specified with this operation: --update_applicability --session_id S")
        db = Database(settings)
        self.check_schema(db)
        with db.begin() as conn:
            self.check_session(conn, get_session(conn, args.session_id), args)
        report = update_applicability(settings, db, args.session_id, config_type=args.config_type, tag=args.label)
        applicable = report.counts.get(True, 0)
        print(
            f"Applicability for session {args.session_id}: {report.configs} configs asked, "
            f"{report.rows} applicable (config, solver) pairs written in {report.seconds:.1f} s; "
            f"session total applicable={applicable}"
        )
        if report.failed:
            raise FinFailed(
                f"update_applicability: {len(report.failed)} block(s) failed, their rows unchanged; "
                f"first: {report.failed[0]}"
            )
        return 0

    def check_schema(self, db: Database) -> None:
        check_schema(db, self.tables, command_hint=ADD_TABLES_HINT, revision=self.schema_revision)

    def get_session(self, conn: Connection, session_id: int) -> SessionInfo:
        return get_session(conn, session_id)

    def check_session(self, conn: Connection, session: SessionInfo, args: argparse.Namespace) -> None:
        if args.arch is not None and args.arch != session.arch:
            raise BadInput(f"-a {args.arch} contradicts session {session.id}, whose arch is {session.arch}")
        if args.num_cu is not None and args.num_cu != session.num_cu:
            raise BadInput(f"-n {args.num_cu} contradicts session {session.id}, whose num_cu is {session.num_cu}")

    def select_step(self, args: argparse.Namespace) -> Step:
        if not args.fin_steps:
            raise BadInput(f"--session_id needs --fin_steps STEP, one of {', '.join(STEP_NAMES)}")
        if getattr(args, "config_type", "convolution") == "batch_norm":
            if args.fin_steps != "miopen_find_compile":
                raise BadInput(
                    f"-C batch_norm: fin tunes batch norm with miopen_find_compile only, not {args.fin_steps}"
                )
            return self.step(tuning.BN_PREFIX + args.fin_steps)
        return self.step(args.fin_steps)

    # -- head node ----------------------------------------------------------------------
    def run_options(self, args: argparse.Namespace) -> dict[str, Any]:
        return {
            "find_mode": int(getattr(args, "find_mode", 1) or 1),
            "blacklist": list(getattr(args, "blacklist", None) or ()),
            "dynamic_solvers_only": bool(getattr(args, "dynamic_solvers_only", False)),
        }

    def claim_filter(self, step: Step, table: sa.Table, session: SessionInfo) -> list[Any]:
        return tuning.claim_filter(step, table)

    def wait_filter(self, step: Step, table: sa.Table, session: SessionInfo) -> list[Any]:
        return tuning.wait_filter(step, table)

    def claim_order(self, step: Step, table: sa.Table) -> list[Any]:
        return tuning.claim_order(step, table)

    def job_payloads(
        self,
        conn: Connection,
        step: Step,
        session: SessionInfo,
        rows: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any],
    ) -> list[dict[str, Any]]:
        return tuning.job_payloads(conn, step, session, rows, options)

    def store_results_without_commit(
        self, conn: Connection, step: Step, outcomes: Sequence[Mapping[str, Any]]
    ) -> Mapping[int, str]:
        return tuning.store_results(conn, step, outcomes)

    def status_lines(self, conn: Connection, step: Step, session: SessionInfo) -> list[str]:
        """Lines ``--status`` adds for MIOpen: jobs per fin step and state, attempts per host and GPU."""
        return tuning.status_lines(conn, step, session)

    def check_host(self, step: Step, session: SessionInfo, host: LocalMachine, rocm_path: Path) -> None:
        tuning.check_host(step, session, host, rocm_path)

    # -- GPU host -----------------------------------------------------------------------
    def run_job(self, step: Step, payload: Mapping[str, Any], ctx: WorkerContext) -> JobRun:
        return tuning.run_job(step, payload, ctx)


# -- import_configs ------------------------------------------------------------------------


def add_import_configs(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = subparsers.add_parser(
        "import_configs",
        help="import driver lines or problem keys as configs; tag them, add frameworks, models, benchmarks",
        description="Import MIOpenDriver lines (or find-db/perf-db keys) as configs.",
    )
    # Given here, -C overrides the top-level -C; absent, the top-level value stands (§2.3).
    sub.add_argument("-C", "--config_type", choices=CONFIG_TYPES, default=argparse.SUPPRESS)
    what = sub.add_mutually_exclusive_group()
    what.add_argument("--add_framework", metavar="NAME", help="add a framework (needs --fw_version)")
    what.add_argument("--add_model", metavar="NAME", help="add a model (needs --md_version)")
    what.add_argument("--print_models", action="store_true", help="print every model and its version")
    what.add_argument(
        "--add_benchmark", action="store_true", help="import the lines as benchmarks of -m/-F (and their configs)"
    )
    source = sub.add_mutually_exclusive_group()
    source.add_argument("-f", "--file_name", metavar="FILE", help="a file of driver lines or problem keys")
    source.add_argument("-d", "--driver", metavar="LINE", help="one driver line")
    sub.add_argument("-b", "--batches", metavar="N,N", help="import each line once per batch size")
    commands = (*CONV_COMMANDS, *BN_COMMANDS)
    sub.add_argument("-c", "--command", choices=commands, metavar="CMD", help=f"precision: {', '.join(commands)}")
    sub.add_argument("-t", "--tag", help="tag every imported config")
    sub.add_argument("-T", "--tag_only", action="store_true", help="only tag configs already imported")
    sub.add_argument("--mark_recurrent", action="store_true", help="mark the tagged configs recurrent")
    sub.add_argument("-F", "--framework", metavar="NAME", help="framework of the benchmark")
    sub.add_argument("--fw_version", type=non_negative, metavar="V", help="framework version")
    sub.add_argument("-m", "--model", metavar="NAME", help="model of the benchmark")
    sub.add_argument("--md_version", type=non_negative, metavar="V", help="model version")
    sub.add_argument("-g", "--gpu_count", type=compute_units, metavar="N", help="GPUs of the benchmark (default 1)")
    sub.set_defaults(func=run_import_configs)


def run_import_configs(args: argparse.Namespace, settings: Settings) -> int:
    check_text("-t/--tag", args.tag, 128)
    for flag, value in (("--add_framework", args.add_framework), ("-F/--framework", args.framework)):
        check_text(flag, value, 64)
    for flag, value in (("--add_model", args.add_model), ("-m/--model", args.model)):
        check_text(flag, value, 64)
    library = MIOpenLibrary()
    if args.add_framework is not None:
        if args.fw_version is None:
            raise BadInput("--add_framework needs --fw_version V")
        return add_named(library, settings, tables.framework, "framework", args.add_framework, args.fw_version)
    if args.add_model is not None:
        if args.md_version is None:
            raise BadInput("--add_model needs --md_version V")
        return add_named(library, settings, tables.model, "model", args.add_model, args.md_version)
    if args.print_models:
        return print_models(library, settings)
    return import_file(library, args, settings)


def add_named(library: MIOpenLibrary, settings: Settings, table: sa.Table, column: str, name: str, version: int) -> int:
    db = Database(settings)
    library.check_schema(db)
    with db.begin() as conn:
        ids, added = importer.get_or_insert(
            conn, table, (column, "version"), {(name, float(version)): {column: name, "version": float(version)}}
        )
    (row_id,) = ids.values()
    what = f"{name!r} version {version}"
    print(
        f"Added {column} {what}: id {row_id}" if added else f"{column.capitalize()} {what} already exists: id {row_id}"
    )
    return 0


def print_models(library: MIOpenLibrary, settings: Settings) -> int:
    db = Database(settings)
    library.check_schema(db)
    model = tables.model
    with db.begin() as conn:
        rows = conn.execute(sa.select(model.c.model, model.c.version).order_by(model.c.id)).all()
    for name, version in rows:
        print(f"model {name} version {version:g}")
    return 0


def import_file(library: MIOpenLibrary, args: argparse.Namespace, settings: Settings) -> int:
    if args.file_name is None and args.driver is None:
        raise BadInput(
            "import_configs needs -f FILE or -d LINE (or one of --add_framework, --add_model, --print_models)"
        )
    if args.add_benchmark:
        missing = [f for f, v in (("-F", args.framework), ("-m", args.model)) if v is None]
        if missing:
            raise BadInput(f"--add_benchmark needs {' and '.join(missing)}: the framework and model benchmarked")
    if args.framework is not None and args.fw_version is None:
        raise BadInput("-F/--framework needs --fw_version V")
    if args.model is not None and args.md_version is None:
        raise BadInput("-m/--model needs --md_version V")
    if args.tag_only and args.tag is None:
        raise BadInput("-T/--tag_only needs the tag: -t TAG")
    batches = importer.parse_batches(args.batches)
    data_type = importer.command_type(args.command, args.config_type)
    lines = importer.source_lines(args.file_name, args.driver)
    db = Database(settings)
    library.check_schema(db)
    with db.begin() as conn:
        names = importer.resolve_names(conn, args, benchmark=args.add_benchmark)
        report = importer.import_lines(
            conn,
            lines,
            config_type=args.config_type,
            names=names,
            data_type=data_type,
            batches=batches,
            tag_only=args.tag_only,
            benchmark=args.add_benchmark,
            warn=args.driver is None,
        )
        if args.driver is not None and report.refused:
            # One line given, one line refused: an error, not a count.
            raise BadInput(f"-d: {report.refused[0].message}")
    importer.print_report(
        report,
        tag_only=args.tag_only,
        tagging=args.tag is not None or args.mark_recurrent,
        benchmark=args.add_benchmark,
    )
    return 0
