"""A job's command as one contained process tree (Linux): it ends when its time limit or
its runner ends, whatever its children do.

* The command runs in a new session and process group.
* The process that runs jobs is a child subreaper, so a helper that escaped the group
  (``setsid``, a double fork) is re-parented to it instead of to init, and is found and
  killed when the job ends.
* Output is read until the command itself has exited and a short grace has passed, never
  until end-of-file: an escaped helper may hold the pipes open for as long as it lives.
* The command's exit is seen through a pidfd in the same ``poll`` as its pipes (a waiter
  thread where the kernel has none), so nothing sleeps between short jobs.
* When the process that runs jobs dies, however it died, its *sentinel* (a small child
  forked once, which sees the death as end-of-file on a pipe) kills every process that
  carries this process's tag in its environment (:data:`TAG`): the command, its group and
  any helper, wherever it was re-parented to. A death signal set per command would do
  part of this, but only from a ``preexec_fn``, which turns every spawn into a full fork
  of the job process: measured 2.5 times the cost of a short job.

A process that runs jobs runs one at a time and starts no other children meanwhile:
every process that appears below it during a job is that job's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tuna.children import become_subreaper, descendants, request_death_signal

log = logging.getLogger(__name__)

#: How long pipes are still read after the command exited (or was killed) while something
#: else holds them open; only a command that leaves processes behind ever waits for it.
DRAIN_GRACE_S = 0.25
#: How long killed leftovers may take to disappear before the job is given up on them.
REAP_LIMIT_S = 5.0
_READ_SIZE = 1 << 16

#: Environment variable that marks every process started for this process's jobs.
TAG = "TUNA_JOB_RUNNER"

_contained_pid = 0
_sentinel_pipes: list[int] = []


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    leftovers: int
    """Processes the command left running after it exited, killed with the job."""


def contain_this_process() -> None:
    """Make this process the reaper of its jobs' orphans, and give it a sentinel that
    kills them if it dies (once per process)."""
    global _contained_pid
    me = os.getpid()
    if _contained_pid == me:
        return
    with contextlib.suppress(OSError):  # not Linux ≥3.4: the sentinel still holds
        become_subreaper()
    os.environ[TAG] = str(me)
    _start_sentinel(me)
    _contained_pid = me


def guard_job_process(parent: int) -> None:
    """Initializer of a pool process that runs jobs for ``parent``: it dies with
    ``parent``, however that died, and its sentinel then kills its jobs."""
    request_death_signal(signal.SIGKILL, parent=parent)
    contain_this_process()


def _start_sentinel(owner: int) -> None:
    read_fd, write_fd = os.pipe()  # close-on-exec: only ``owner`` holds the write end
    if os.fork() != 0:
        os.close(read_fd)
        _sentinel_pipes.append(write_fd)  # kept open for the life of this process
        return
    # The sentinel: only os-level calls from here on (the fork may have copied held locks).
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a terminal's Ctrl-C is for its owner
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, read_fd)
        os.closerange(read_fd + 1, 1 << 16)
        while os.read(read_fd, 1):
            pass
        kill_tagged(owner)
    finally:
        os._exit(0)


def kill_tagged(owner: int) -> int:
    """SIGKILL every process whose environment carries ``owner``'s tag; returns how many."""
    mark = f"\0{TAG}={owner}\0".encode()
    killed = 0
    for _ in range(3):  # a process that forked meanwhile leaves a tagged child: go again
        found = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    environ = b"\0" + f.read()
            except OSError:
                continue
            if mark in environ:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(entry), signal.SIGKILL)
                    found += 1
        killed += found
        if not found:
            break
    return killed


class _ExitWatch:
    """A file descriptor that becomes readable when ``pid`` exits; the pid stays unreaped
    (a zombie), so that its process group id cannot be reused while we still kill by it."""

    def __init__(self, pid: int) -> None:
        self.fd = -1
        self._write = -1
        try:
            self.fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # Python <3.9 or Linux <5.3: a waiter thread
            self.fd, self._write = os.pipe()
            threading.Thread(target=self._wait, args=(pid,), name="tuna-exit-watch", daemon=True).start()

    def _wait(self, pid: int) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        os.close(self._write)

    def close(self) -> None:
        os.close(self.fd)


def run(argv: Sequence[str], *, timeout_s: float, env: Mapping[str, str] | None = None) -> Finished:
    """Run ``argv`` contained; raises what ``Popen`` raises when it cannot start."""
    contain_this_process()
    me = os.getpid()
    before = set(_children(me))
    proc = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=None if env is None else {**env, TAG: str(me)},
    )
    try:
        out, err, timed_out, leftovers = _collect(proc, time.monotonic() + timeout_s, before, argv[0])
        leftovers += _kill_leftovers(proc, before, argv[0])
    except BaseException:  # a soft time limit or shutdown: leave nothing behind
        _kill_leftovers(proc, before, argv[0])
        proc.wait()
        raise
    finally:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    return Finished(proc.wait(), out, err, timed_out, leftovers)


def _collect(
    proc: subprocess.Popen[bytes], deadline: float, before: set[int], name: str
) -> tuple[bytes, bytes, bool, int]:
    assert proc.stdout is not None and proc.stderr is not None
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    chunks: dict[int, list[bytes]] = {out_fd: [], err_fd: []}
    watch = _ExitWatch(proc.pid)
    poller = select.poll()
    for fd in (out_fd, err_fd, watch.fd):
        poller.register(fd, select.POLLIN)
    reading = {out_fd, err_fd}
    exited = timed_out = killed = False
    leftovers = 0
    stop_at = deadline
    try:
        while reading or not exited:
            left = stop_at - time.monotonic()
            if left <= 0:
                if not exited:  # past the time limit
                    timed_out = True
                    _kill_tree(proc, before)
                    stop_at = float("inf")  # its exit comes now
                    continue
                if killed:  # leftovers killed and a grace passed: stop reading
                    break
                leftovers = _kill_leftovers(proc, before, name)  # they hold the pipes
                killed, stop_at = True, time.monotonic() + DRAIN_GRACE_S
                continue
            for fd, _event in poller.poll(None if left == float("inf") else max(1, int(left * 1000 + 1))):
                if fd == watch.fd:
                    exited = True
                    poller.unregister(fd)
                    stop_at = time.monotonic() + DRAIN_GRACE_S
                    continue
                data = os.read(fd, _READ_SIZE)
                if data:
                    chunks[fd].append(data)
                else:
                    reading.discard(fd)
                    poller.unregister(fd)
    finally:
        watch.close()
    return b"".join(chunks[out_fd]), b"".join(chunks[err_fd]), timed_out, leftovers


def _kill_tree(proc: subprocess.Popen[bytes], before: set[int]) -> None:
    """SIGKILL the command's group and everything new below this process."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in _new_below(proc, before):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _new_below(proc: subprocess.Popen[bytes], before: set[int]) -> list[int]:
    found = []
    for child in _children(os.getpid()):
        if child not in before:
            found.append(child)
            found.extend(descendants(child))
    return found


def _kill_leftovers(proc: subprocess.Popen[bytes], before: set[int], name: str) -> int:
    """Kill and reap what the job left below this process; returns how many there were."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # safe: the command is not reaped yet
    killed: set[int] = set()
    limit = time.monotonic() + REAP_LIMIT_S
    while time.monotonic() < limit:
        # Orphans of a killed helper are re-parented to us as they die: go round again.
        mine = [pid for pid in _children(os.getpid()) if pid not in before and pid != proc.pid]
        if not mine:
            break
        for pid in [*mine, *(d for child in mine for d in descendants(child))]:
            if _running(pid):  # not a zombie waiting to be reaped (a shell's here-document writer)
                killed.add(pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for pid in mine:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    if killed:
        log.warning("%s left %d process(es) running after it ended; killed them", name, len(killed))
    return len(killed)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    # tuna.children.children without pathlib: this runs twice per job.
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/task/{task}/children", "rb") as f:
            found.extend(map(int, f.read().split()))
    return found
