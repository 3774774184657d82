"""The Example library: each job runs ``rocminfo`` on a GPU host and stores its output."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Connection

from tuna.config import Settings
from tuna.db.engine import Database
from tuna.db.schema import check_schema
from tuna.errors import BadInput
from tuna.example import tables
from tuna.example.sessions import SessionValues, add_session, get_session
from tuna.library import JobRun, Library, SessionInfo, Step, WorkerContext
from tuna.machine import discover, rocm_version, rocminfo_path
from tuna.runner import run_command

log = logging.getLogger(__name__)

#: Compute-unit counts MITuna accepts for ``-n``.
NUM_CU_CHOICES = (36, 56, 60, 64, 104, 110, 120, 228, 304)
ADD_TABLES_HINT = "./go_fish.py example --add_tables"

EXAMPLE_STEP = Step(
    name="example",
    queue_kind="compile",
    claim_from="new",
    running="running",
    done="completed",
    failed="errored",
)


def add_arch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-a", "--arch", help="GPU architecture, e.g. gfx90a (default: from rocminfo)")
    parser.add_argument(
        "-n",
        "--num_cu",
        type=int,
        choices=NUM_CU_CHOICES,
        metavar="NUM_CU",
        help=f"compute units, one of {', '.join(map(str, NUM_CU_CHOICES))} (default: from rocminfo)",
    )


def check_arch(session: SessionInfo, arch: str | None, num_cu: int | None) -> None:
    """-a/-n, where given, must be the session's own."""
    if arch is not None and arch != session.arch:
        raise BadInput(f"-a {arch} contradicts session {session.id}, whose arch is {session.arch}")
    if num_cu is not None and num_cu != session.num_cu:
        raise BadInput(f"-n {num_cu} contradicts session {session.id}, whose num_cu is {session.num_cu}")


class ExampleLibrary(Library):
    name = "example"
    session_table = tables.session_example
    job_table = tables.job
    tables = (tables.session_example, tables.job)
    steps = (EXAMPLE_STEP,)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--init_session",
            action="store_true",
            help="create a tuning session for this host's GPU (needs -l); prints its id",
        )
        add_arch_arguments(parser)
        parser.add_argument("--docker_name", default="miopentuna", help="docker image recorded in the session")
        parser.add_argument("--ticket", default="N/A", help="ticket recorded in the session")

    def get_session(self, conn: Connection, session_id: int) -> SessionInfo:
        return get_session(conn, session_id)

    def check_session(self, conn: Connection, session: SessionInfo, args: argparse.Namespace) -> None:
        check_arch(session, getattr(args, "arch", None), getattr(args, "num_cu", None))

    def run_command(self, args: argparse.Namespace, settings: Settings) -> int | None:
        if not args.init_session:
            return None
        if not args.label:
            raise BadInput("--init_session needs a label: -l LABEL")
        if len(args.label) > 60:
            raise BadInput(f"label is {len(args.label)} characters; at most 60 fit in session_example.reason")
        arch, num_cu = args.arch, args.num_cu
        if arch is None or num_cu is None:
            local = discover(settings.rocm_path)
            arch, num_cu = arch or local.arch, num_cu or local.num_cu
        values = SessionValues(
            arch=arch,
            num_cu=num_cu,
            rocm_v=rocm_version(settings.rocm_path),
            reason=args.label,
            ticket=args.ticket,
            docker=args.docker_name,
        )
        db = Database(settings)
        check_schema(db, self.tables, command_hint=ADD_TABLES_HINT)
        with db.begin() as conn:
            session_id, created = add_session(conn, values)
        if created:
            log.info("Added new session_id: %d", session_id)
        else:
            log.info("Session for these values already exists: %d", session_id)
        print(session_id)
        return 0

    def payload_columns(self, step: Step) -> Sequence[str]:
        return ("reason", "session")

    def job_payload(self, step: Step, job: Mapping[str, Any], session: SessionInfo) -> dict[str, Any]:
        # Only what the worker uses: the whole row would cost bytes on every message.
        return {
            "job": {"id": job["id"], "reason": job["reason"], "session": job["session"]},
            "operation": step.queue_kind,
            "arch": session.arch,
            "num_cu": session.num_cu,
        }

    def run_job(self, step: Step, payload: Mapping[str, Any], ctx: WorkerContext) -> JobRun:
        binary = rocminfo_path(ctx.rocm_path)
        if not binary.exists():
            return JobRun(ok=False, result="", reason=f"rocminfo not found at {binary}")
        ran = run_command([str(binary)], timeout_s=ctx.job_time_limit_s)
        if ran.ok:
            return JobRun(ok=True, result=ran.stdout.strip(), exit_status=0)
        # A crash or a hang of rocminfo is the host's trouble, not the job's: try again.
        return JobRun(ok=False, result="", exit_status=ran.exit_status, reason=ran.reason, retryable=True)
