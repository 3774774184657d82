"""What every tuna command does at its edge: logging, one-line errors, exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from types import FrameType
from typing import NoReturn

from tuna.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, TunaError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: logging.getLevelNamesMapping() would do, but it needs Python 3.11.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def setup_logging() -> None:
    level = (os.environ.get("TUNA_LOGLEVEL") or "INFO").upper()
    logging.basicConfig(
        level=level if level in LOG_LEVELS else "INFO",
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    # Celery and kombu narrate every connection at INFO; the head node's summary is enough.
    for noisy in ("celery", "amqp", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # kombu warns that the embedded filesystem transport has no hostname: true, and noise.
    logging.getLogger("kombu").setLevel(logging.ERROR)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main``; a :class:`TunaError` becomes one line on stderr and its exit code.

    A traceback is printed only with ``--debug``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    setup_logging()
    # SIGTERM (a scheduler, kill) gets the same orderly stop as Ctrl-C. SIGINT is set too:
    # started in the background of a non-interactive shell, a process inherits it ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        return main(args)
    except TunaError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
