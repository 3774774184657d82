"""Keeping a process's descendants from outliving it (Linux).

A GPU host must never keep running work that nobody will collect: a launcher's Celery
worker, the worker's pool processes, and the commands those run all go when their parent
goes. Two kernel features do this, both through ``prctl(2)``:

* a *death signal*: the kernel sends it to a process when its parent exits, however the
  parent died (SIGKILL included);
* a *child subreaper*: orphans anywhere below the process are re-parented to it instead of
  to init, so that it can still find and kill a command's escaped helpers.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

_libc: ctypes.CDLL | None = None


def _prctl(option: int, value: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def become_subreaper() -> None:
    """Orphans among this process's descendants become its children, not init's."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def request_death_signal(sig: int = signal.SIGKILL, *, parent: int | None = None) -> None:
    """Have the kernel send ``sig`` to this process when its parent exits.

    ``parent`` is the pid the caller expects as its parent: if that parent already died
    before the request was made (the race the kernel cannot close), the signal is sent now.
    Call it in the child, e.g. from ``Popen(preexec_fn=...)`` or a pool initializer.
    """
    _prctl(_PR_SET_PDEATHSIG, sig)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (empty if it is gone)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        with contextlib.suppress(OSError, ValueError):
            found.extend(int(child) for child in (task / "children").read_text().split())
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before their children."""
    found: list[int] = []
    frontier = children(pid)
    while frontier:
        found.extend(frontier)
        frontier = [grandchild for child in frontier for grandchild in children(child)]
    return found


def kill_descendants(pid: int, sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to every process below ``pid``; returns how many were signalled."""
    sent = 0
    for child in descendants(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, sig)
            sent += 1
    return sent
