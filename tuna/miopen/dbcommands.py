"""The subcommands that read and write MIOpen's own databases (export_db, import_db,
merge_db, update_golden): added to ``go_fish.py miopen`` by :func:`add_db_subcommands`.

Each subparser sets ``func=callable(args, settings) -> int`` with ``set_defaults``; the
library dispatches any subcommand through ``args.func``. An option whose dest is also a
top-level one (``-a``, ``-n``, ``--session_id``, ``-C``) takes ``default=argparse.SUPPRESS``,
so that the subcommand's value wins only when given (reference/miopen.md §2.3).
"""

from __future__ import annotations

import argparse


def add_db_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the database subcommands to ``go_fish.py miopen``'s subparsers."""
