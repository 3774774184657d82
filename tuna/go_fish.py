"""``go_fish.py LIBRARY [options]``: tuna's command line, dispatching to a library.

The operations, in the order they are checked: ``--shutdown_workers``, ``--add_tables``,
the library's own (``--init_session`` ...), ``--status``, and with ``--session_id S``:
``--enqueue_only`` (head node), ``--execute`` (single-shot, no broker), or neither
(start this host's workers).
"""

from __future__ import annotations

import argparse
import logging
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
from tuna.errors import (
    EXIT_BAD_INPUT,
    EXIT_CONFIG,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_JOBS_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_SCHEMA,
    EXIT_TEMPFAIL,
    EXIT_UNAVAILABLE,
    BadInput,
)
from tuna.gpuhost import start_workers
from tuna.headnode import HeadNode
from tuna.library import Library, SessionInfo, Step, get_library, library_names
from tuna.local import execute_locally
from tuna.progress import format_counts
from tuna.status import print_status

log = logging.getLogger(__name__)

DESCRIPTION = "Tune GPU kernels on a cluster: tables, sessions, head node and workers."
EPILOG = f"""exit status:
  {EXIT_OK:<4}success; after --enqueue_only or --execute: every job of the run completed
  {EXIT_JOBS_FAILED:<4}--enqueue_only or --execute ended with failed (e.g. errored) jobs; the most
      common reasons are logged at the end. A worker launch: a worker exited with an error
  {EXIT_BAD_INPUT:<4}bad input: an unknown flag or YAML key, a missing label, contradicting -a/-n
  {EXIT_NOT_FOUND:<4}not found: e.g. an unknown session id
  {EXIT_SCHEMA:<4}the tables are missing or older than the code (--add_tables, alembic upgrade head)
  {EXIT_UNAVAILABLE:<4}the database, broker or result backend cannot be reached
  {EXIT_ERROR:<4}any other error (one line on stderr; --debug shows the traceback)
  {EXIT_TEMPFAIL:<4}try again later: another claimer holds the same scope, or the database stayed busy
  {EXIT_CONFIG:<4}a malformed environment variable
  {EXIT_INTERRUPTED:<4}interrupted (Ctrl-C, SIGTERM)"""


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
    parser = OneLineParser(
        prog="go_fish.py",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    libraries = parser.add_subparsers(dest="library", metavar="LIBRARY", parser_class=OneLineParser)
    libraries.required = True
    for name in library_names():
        library = get_library(name)
        sub = libraries.add_parser(
            name,
            help=f"the {name} library",
            description=library.__doc__,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_core_arguments(sub)
        library.add_arguments(sub)
    return parser


def yaml_argv(parser: argparse.ArgumentParser, library: str, path: str) -> list[list[str]]:
    """Command lines from a YAML file: top-level keys are flags for every step; a key whose
    value is a mapping is one step, run in file order if it has ``enabled: true``.

    Every key must be an option of the library's command: a typo or a key of another tool
    is refused, never dropped. A step that is not enabled is skipped with a notice, and a
    file whose steps are all skipped is refused, so that the keys left over never make up
    a different command (``session_id: 1`` alone starts a worker)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise BadInput(f"{path} is not valid YAML{where}") from None
    if not data:
        raise BadInput(f"nothing to do: {path} holds no options")
    if not isinstance(data, dict):
        raise BadInput(f"{path} must hold a mapping of option names to values")
    known = option_names(library_parser(parser, library))
    for key, value in data.items():
        check_key(known, library, path, key)
        if isinstance(value, dict):
            check_enabled(path, key, value.get("enabled", False))
            for inner, inner_value in value.items():
                if inner != "enabled":
                    check_key(known, library, path, inner, within=key)
                if isinstance(inner_value, (dict, list)):
                    raise BadInput(f"{path}: {key}.{inner} must be a single value")
        elif isinstance(value, list):
            raise BadInput(f"{path}: {key} must be a single value or a step (a mapping)")
    common = {k: v for k, v in data.items() if not isinstance(v, dict)}
    steps = {k: v for k, v in data.items() if isinstance(v, dict)}
    runs = [
        {**common, key: True, **{k: v for k, v in step.items() if k != "enabled"}}
        for key, step in steps.items()
        if step.get("enabled", False)
    ]
    if steps and not runs:
        raise BadInput(f"nothing to do: no step in {path} says enabled: true ({', '.join(steps)})")
    for key, step in steps.items():
        if not step.get("enabled", False):
            log.warning("%s: step %s is skipped: it does not say enabled: true", path, key)
    return [[library, *flags(run)] for run in (runs or [common])]


def library_parser(parser: argparse.ArgumentParser, library: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub: argparse.ArgumentParser = action.choices[library]
            return sub
    raise AssertionError("go_fish.py's parser has no library subcommands")


def option_names(parser: argparse.ArgumentParser) -> set[str]:
    """The keys a YAML file may use: the command's long options, without the dashes."""
    names = {name[2:] for action in parser._actions for name in action.option_strings if name.startswith("--")}
    return names - {"help", "yaml"}


def check_key(known: set[str], library: str, path: str, key: object, *, within: str | None = None) -> None:
    if isinstance(key, str) and key in known:
        return
    shown = f"{within}.{key}" if within else str(key)
    raise BadInput(f"unknown key {shown!r} in {path}: go_fish.py {library} has no option --{key}")


def check_enabled(path: str, key: str, enabled: object) -> None:
    if not isinstance(enabled, bool):
        raise BadInput(f"{path}: {key}.enabled must be true or false, not {enabled!r}")


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
    return [parser.parse_args(run) for run in yaml_argv(parser, args.library, args.yaml)]


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
        counts = execute_locally(
            library, step, session, settings, db, label=args.label, options=library.run_options(args)
        )
        return ended(session, step, counts)
    app = make_app(settings)
    if args.enqueue_only:
        head = HeadNode(library, step, session, settings, db, app, label=args.label, options=library.run_options(args))
        return ended(session, step, head.run())
    check_broker(app, settings.broker_url_safe)
    return start_workers(library, step, session, settings)


def ended(session: SessionInfo, step: Step, counts: dict[str, int]) -> int:
    """The last line of a run, and whether every job of it completed."""
    print(f"session {session.id}: {format_counts(counts)}")
    return EXIT_JOBS_FAILED if counts.get(step.failed) else EXIT_OK


def shutdown(settings: Settings, session_id: int | None) -> int:
    app = make_app(settings)
    check_broker(app, settings.broker_url_safe)
    names = session_workers(app, settings.db_name, session_id) if session_id is not None else None
    stopped = shutdown_workers(app, names)
    print(f"Shutdown sent to {len(stopped)} worker(s)" + (f": {', '.join(stopped)}" if stopped else ""))
    return 0


def cli() -> int:
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(cli())
