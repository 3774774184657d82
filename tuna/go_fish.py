"""``go_fish.py LIBRARY [options]``: tuna's command line, dispatching to a library.

The operations, in the order they are checked: ``--shutdown_workers``, ``--add_tables``,
the library's own (``--init_session`` ...), ``--status``, and with ``--session_id S``:
``--enqueue_only`` (head node), ``--execute`` (single-shot, no broker), or neither
(start this host's workers).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tuna.celery_app import make_app
from tuna.celery_app.control import check_broker, session_workers, shutdown_workers
from tuna.cli import OneLineParser, run_cli
from tuna.config import Settings, load_settings
from tuna.db.engine import Database
from tuna.db.schema import check_schema, create_tables
from tuna.errors import BadInput
from tuna.gpuhost import start_workers
from tuna.headnode import HeadNode
from tuna.library import Library, get_library, library_names
from tuna.local import execute_locally
from tuna.progress import format_counts
from tuna.status import print_status

DESCRIPTION = "Tune GPU kernels on a cluster: tables, sessions, head node and workers."


def add_core_arguments(parser: argparse.ArgumentParser) -> None:
    ops = parser.add_argument_group("operations")
    ops.add_argument("--add_tables", action="store_true", help="create the library's tables (idempotent)")
    ops.add_argument("--session_id", type=int, metavar="S", help="the tuning session to work on")
    ops.add_argument(
        "--enqueue_only",
        action="store_true",
        help="head node: enqueue the session's jobs and drain their results until none is left",
    )
    ops.add_argument(
        "--execute",
        action="store_true",
        help="run the session's new jobs on this host in local processes, no broker, then exit",
    )
    ops.add_argument(
        "--shutdown_workers",
        action="store_true",
        help="stop every worker, or with --session_id only that session's",
    )
    ops.add_argument("--status", action="store_true", help="jobs per state, live workers, throughput, ETA")
    parser.add_argument("-l", "--label", help="session label for --init_session; job filter otherwise")
    parser.add_argument("--yaml", metavar="FILE", help="read the options from a YAML file instead")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="go_fish.py", description=DESCRIPTION)
    libraries = parser.add_subparsers(dest="library", metavar="LIBRARY", parser_class=OneLineParser)
    libraries.required = True
    for name in library_names():
        library = get_library(name)
        sub = libraries.add_parser(name, help=f"the {name} library", description=library.__doc__)
        add_core_arguments(sub)
        library.add_arguments(sub)
    return parser


def yaml_argv(library: str, path: str) -> list[list[str]]:
    """Command lines from a YAML file: top-level keys are flags for every step; a key whose
    value is a mapping with ``enabled: true`` is one step, run in file order."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise BadInput(f"{path} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path} must hold a mapping of option names to values")
    common = {k: v for k, v in data.items() if not isinstance(v, dict)}
    steps = [(k, v) for k, v in data.items() if isinstance(v, dict) and v.get("enabled")]
    runs = [{**common, key: True, **{k: v for k, v in step.items() if k != "enabled"}} for key, step in steps]
    return [[library, *flags(run)] for run in (runs or [common])]


def flags(options: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in options.items():
        if value is True:
            argv.append(f"--{key}")
        elif value not in (False, None):
            argv += [f"--{key}", str(value)]
    return argv


def parse(argv: Sequence[str]) -> list[argparse.Namespace]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.yaml is None:
        return [args]
    # Only the library, --yaml FILE and --debug may be on the command line: compare with
    # what those alone parse to, whatever spelling (--yaml=FILE) or order was used.
    alone = parser.parse_args([args.library, "--yaml", args.yaml])
    if {**vars(args), "debug": False} != {**vars(alone), "debug": False}:
        raise BadInput("command-line options are not accepted with --yaml; put them in the file")
    return [parser.parse_args(run) for run in yaml_argv(args.library, args.yaml)]


def main(argv: Sequence[str] | None = None) -> int:
    code = 0
    for args in parse(list(sys.argv[1:] if argv is None else argv)):
        code = run(get_library(args.library), args, load_settings())
        if code:
            break
    return code


def run(library: Library, args: argparse.Namespace, settings: Settings) -> int:
    if args.enqueue_only and args.execute:
        raise BadInput("--enqueue_only and --execute exclude each other")
    if args.shutdown_workers:
        return shutdown(settings, args.session_id)
    db = Database(settings)
    hint = f"./go_fish.py {library.name} --add_tables"
    if args.add_tables:
        created = create_tables(db, library.tables, revision=library.schema_revision)
        print(f"Created tables: {', '.join(created)}" if created else "All tables already exist")
        return 0
    handled = library.run_command(args, settings)
    if handled is not None:
        return handled
    if args.session_id is None:
        raise BadInput(f"nothing to do: give --add_tables, --session_id S, or see ./go_fish.py {library.name} --help")
    check_schema(db, library.tables, command_hint=hint, revision=library.schema_revision)
    with db.begin() as conn:
        session = library.get_session(conn, args.session_id)
        library.check_session(conn, session, args)
    step = library.select_step(args)
    if args.status:
        return print_status(library, step, session, settings, db, label=args.label)
    if args.execute:
        counts = execute_locally(library, step, session, settings, db, label=args.label)
        print(f"session {session.id}: {format_counts(counts)}")
        return 0
    app = make_app(settings)
    if args.enqueue_only:
        counts = HeadNode(library, step, session, settings, db, app, label=args.label).run()
        print(f"session {session.id}: {format_counts(counts)}")
        return 0
    check_broker(app, settings.broker_url_safe)
    return start_workers(step, session, settings, db)


def shutdown(settings: Settings, session_id: int | None) -> int:
    app = make_app(settings)
    check_broker(app, settings.broker_url_safe)
    names = session_workers(app, session_id) if session_id is not None else None
    stopped = shutdown_workers(app, names)
    print(f"Shutdown sent to {len(stopped)} worker(s)" + (f": {', '.join(stopped)}" if stopped else ""))
    return 0


def cli() -> int:
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
