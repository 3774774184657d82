"""The database subcommands of ``go_fish.py miopen``: export_db, update_golden, import_db,
merge_db (reference/miopen.md §2.7, §2.8, §2.11).

``add_db_subcommands`` adds them to the library's subparsers; each sets ``func(args,
settings) -> int``. Errors are :class:`tuna.errors.TunaError` (one line, non-zero exit).
stdout carries only what a script consumes: the paths written, and import/golden summaries.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from tuna.config import Settings
from tuna.errors import BadInput

log = logging.getLogger(__name__)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


# go_fish's miopen parser has -a, -n and --session_id too (§2.2): a subcommand's own default
# must not hide a value given before the subcommand name, so these default to "not set".
_SHARED: dict[str, Any] = {"default": argparse.SUPPRESS}


def _shared(args: argparse.Namespace, name: str) -> Any:
    return getattr(args, name, None)


def _conv_only(args: argparse.Namespace, command: str) -> None:
    config_type = getattr(args, "config_type", None) or "convolution"
    if config_type != "convolution":
        raise BadInput(f"{command} works on convolution tables only (MIOpen's databases hold convolutions)")


def _report_dropped(dropped: dict[str, int]) -> None:
    for reason, count in sorted(dropped.items()):
        print(f"left out {count}: {reason}", file=sys.stderr)


def run_export_db(args: argparse.Namespace, settings: Settings) -> int:
    from tuna.miopen.export_db import export_db

    _conv_only(args, "export_db")
    kind = "kernel" if args.kern_db else "perf" if args.perf_db else "find"
    stats = export_db(
        settings,
        kind,
        session_id=_shared(args, "session_id"),
        golden_v=args.golden_v,
        arch=_shared(args, "arch"),
        num_cu=_shared(args, "num_cu"),
        opencl=args.opencl,
        config_tag=args.config_tag,
        filename=args.filename,
        output_dir=args.output_dir,
    )
    _report_dropped(stats.dropped)
    log.info("export_db: %d rows read, %d entries written in %.2f s", stats.rows, stats.written, stats.seconds)
    for path in stats.files:
        print(path)
    return 0


def run_update_golden(args: argparse.Namespace, settings: Settings) -> int:
    from tuna.miopen.golden import create_perf_table, update_golden

    _conv_only(args, "update_golden")
    if args.create_perf_table and args.base_golden_v is None and _shared(args, "session_id") is None:
        print(create_perf_table(settings, args.golden_v))
        return 0
    stats = update_golden(
        settings,
        args.golden_v,
        base_golden_v=args.base_golden_v,
        session_id=_shared(args, "session_id"),
        overwrite=args.overwrite,
    )
    print(stats.line())
    if args.create_perf_table:
        print(create_perf_table(settings, args.golden_v))
    return 0


def run_import_db(args: argparse.Namespace, settings: Settings) -> int:
    from tuna.miopen.import_db import import_db

    stats = import_db(
        settings,
        args.target,
        session_id=_shared(args, "session_id"),
        rocm_v=args.rocm_v,
        miopen_v=args.miopen_v,
        arch=_shared(args, "arch"),
        num_cu=_shared(args, "num_cu"),
    )
    lines = stats.lines(args.target)
    print(lines[0])
    for line in lines[1:]:
        print(line, file=sys.stderr)
    return 0


def run_merge_db(args: argparse.Namespace, settings: Settings) -> int:
    from tuna.miopen.merge_db import merge_db

    kinds = [k for k, on in (("perf", args.perf_db), ("find", args.find_db), ("kernel", args.bin_cache)) if on]
    if len(kinds) != 1:
        raise BadInput("Must specify one of perf_db, find_db, or bin_cache (-p, -f or -b)")
    paths = merge_db(args.master, args.target, kinds[0], keep_keys=args.keep_keys, output_dir=args.output_dir)
    for path in paths:
        print(path)
    return 0


def add_export_db(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "export_db", help="write the find-db, perf-db or kernel-db MIOpen reads"
    )
    # Exactly one of --session_id and --golden_v: checked by the command, as --session_id
    # may also come before the subcommand name.
    parser.add_argument("--session_id", type=_positive, help="export this session's results", **_SHARED)
    parser.add_argument("--golden_v", type=_positive, help="export this golden version (needs -a)")
    parser.add_argument("-a", "--arch", help="arch of the golden rows, e.g. gfx90a", **_SHARED)
    parser.add_argument(
        "-n", "--num_cu", type=_positive, help="CU count of the golden rows (default: each one)", **_SHARED
    )
    parser.add_argument("--config_tag", help="only configs with this tag")
    parser.add_argument("-c", "--opencl", action="store_true", help="the OpenCL backend's rows and file name")
    parser.add_argument("--filename", help="base file name instead of MIOpen's <arch><CUs>")
    parser.add_argument("-d", "--output_dir", default="tuna_1.0.0", help="directory of the files (%(default)s)")
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("-k", "--kern_db", action="store_true", help="kernel-db <base>.kdb")
    kind.add_argument("-f", "--find_db", action="store_true", help="find-db <base>.HIP.fdb.txt")
    kind.add_argument("-p", "--perf_db", action="store_true", help="perf-db <base>.db and <base>.db.txt")
    parser.set_defaults(func=run_export_db)
    return parser


def add_update_golden(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "update_golden",
        help="promote a session (and/or a golden version) to a golden version",
        description=(
            "Copy --base_golden_v's rows, then --session_id's, into --golden_v, matched by (config, solver, "
            "arch, num_cu, backend). A newer source overrides an older one: its time (with workspace and "
            "algorithm) where it has a positive time, its params where it has params; an existing target "
            "needs -o and keeps its rows that neither source has."
        ),
    )
    parser.add_argument("--golden_v", type=_positive, required=True, help="target golden version")
    parser.add_argument("--base_golden_v", type=_positive, help="copy this golden version first")
    parser.add_argument(
        "--session_id", type=_positive, help="then this session's results, which override it", **_SHARED
    )
    parser.add_argument("-o", "--overwrite", action="store_true", help="update an existing golden version")
    parser.add_argument(
        "--create_perf_table",
        action="store_true",
        help="(re)create conv_gv<V-2><V-1><V>: fastest time per config in the last three versions",
    )
    parser.set_defaults(func=run_update_golden)
    return parser


def add_import_db(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "import_db", help="import a MIOpen find-db or perf-db file into a session"
    )
    add_import_options(parser)
    parser.set_defaults(func=run_import_db)
    return parser


def add_import_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-t", "--target", required=True, help="find-db (.fdb.txt) or perf-db (.db, .db.txt) file")
    parser.add_argument(
        "--session_id", type=_positive, help="import into this session (default: create one)", **_SHARED
    )
    parser.add_argument("--rocm_v", help="ROCm version of the created session")
    parser.add_argument("--miopen_v", help="MIOpen version of the created session")
    parser.add_argument("-a", "--arch", help="arch, when the file name is not MIOpen's", **_SHARED)
    parser.add_argument(
        "-n", "--num_cu", type=_positive, help="CU count, when the file name is not MIOpen's", **_SHARED
    )


def add_merge_db(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "merge_db", help="merge a MIOpen database file into another one"
    )
    add_merge_options(parser)
    parser.set_defaults(func=run_merge_db)
    return parser


def add_merge_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--master", required=True, help="master file (or directory of gfx* files)")
    parser.add_argument("-t", "--target", required=True, help="file whose records are merged in")
    parser.add_argument("-p", "--perf_db", action="store_true", help="perf-db files (.db or .db.txt)")
    parser.add_argument("-f", "--find_db", action="store_true", help="find-db files (.fdb.txt)")
    parser.add_argument("-b", "--bin_cache", action="store_true", help="kernel-db files (.kdb)")
    parser.add_argument("--keep_keys", action="store_true", help="merge a key's entries instead of replacing them")
    parser.add_argument("-d", "--output_dir", default=".", help="directory of the merged file (%(default)s)")


def add_db_subcommands(subparsers: Any) -> None:
    add_export_db(subparsers)
    add_update_golden(subparsers)
    add_import_db(subparsers)
    add_merge_db(subparsers)
