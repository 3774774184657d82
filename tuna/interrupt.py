"""Stopping a long-running command on SIGINT or SIGTERM, reliably."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

#: Longest stretch a deferred stop waits in :meth:`StopSignals.sleep` before it is noticed.
SLEEP_SLICE_S = 0.1


class StopSignals:
    """SIGINT and SIGTERM stop the head node, whatever the process inherited, at a safe point.

    The handler is installed explicitly because a process started in the background of a
    non-interactive shell inherits SIGINT *ignored*, and Python then keeps it ignored: such
    a head node ran on to the end and exited 0.

    The first signal is only recorded; the loop raises KeyboardInterrupt at its next
    :meth:`check` or :meth:`sleep`. An exception raised by the handler itself can land
    anywhere: inside a connection pool or a queue while it holds its internal lock, which
    then stays taken, and the clean-up that gives the in-flight jobs back waits on it for
    ever; or in a driver's ``__del__``, where it is swallowed. Every call the loop makes is
    bounded by a timeout, so the stop is noticed within seconds. A second signal raises at
    once, for a user who will not wait.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        self.signum = signum

    def check(self) -> None:
        """Raise KeyboardInterrupt if a stop signal came."""
        if self.signum is not None:
            raise KeyboardInterrupt(signal.Signals(self.signum).name)

    def sleep(self, seconds: float) -> None:
        """Sleep, but raise KeyboardInterrupt within a slice of a stop signal."""
        deadline = time.monotonic() + seconds
        while True:
            self.check()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, SLEEP_SLICE_S))

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
