"""Merge MIOpen database files: python -m tuna.miopen.subcmd.merge_db -m MASTER -t TARGET (-p|-f|-b)

The same code as ``go_fish.py miopen merge_db``; kept as MITuna's stand-alone script.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tuna.cli import run_cli
from tuna.config import load_settings
from tuna.miopen.dbcommands import add_merge_options, run_merge_db


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="merge_db", description=__doc__.splitlines()[0])
    add_merge_options(parser)
    parser.add_argument("--debug", action="store_true", help="print a traceback on error")
    args = parser.parse_args(argv)
    return run_merge_db(args, load_settings())


if __name__ == "__main__":
    sys.exit(run_cli(main))
