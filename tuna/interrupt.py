"""Stopping a long-running command on SIGINT or SIGTERM, reliably."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class StopSignals:
    """SIGINT and SIGTERM stop the head node, whatever the process inherited.

    The handler is installed explicitly because a process started in the background of a
    non-interactive shell inherits SIGINT *ignored*, and Python then keeps it ignored: such
    a head node ran on to the end and exited 0. The signal is also recorded, because the
    KeyboardInterrupt the handler raises can be swallowed where the interpreter ignores
    exceptions (a ``__del__`` of a driver object, a weakref callback): the loop re-raises it.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def check(self) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(signal.Signals(self.signum).name)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The handler on SIGINT and SIGTERM for the duration; the previous ones after."""
        previous = {}
        if threading.current_thread() is threading.main_thread():  # only it may set handlers
            previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
