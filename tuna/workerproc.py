"""One Celery worker node as its launcher runs it: the command, the process, its log, and
the record of its deaths that decides whether it is started again.

With ``TUNA_LOG_DIR`` set, the worker writes to ``<TUNA_LOG_DIR>/<node name>.log``;
otherwise its output passes through the launcher to the launcher's stderr. Either way the
launcher can quote the last lines when the worker dies.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tuna.config import Settings
from tuna.errors import ConfigError, TunaError

log = logging.getLogger(__name__)

#: The launcher's pid, for the Celery worker to request its death signal against
#: (:mod:`tuna.worker` does it first thing, in the worker's main process).
LAUNCHER_PID_ENV = "TUNA_LAUNCHER_PID"
TAIL_LINES = 200
TAIL_BYTES = 65536
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0


class WorkerGaveUp(TunaError):
    """A Celery worker kept dying; the launcher stopped restarting it."""


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    """The node name's part before ``@`` (:func:`tuna.celery_app.naming.worker_name`)."""
    hostname: str
    queue: str
    concurrency: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def nodename(self) -> str:
        return f"{self.name}@{self.hostname}"


def worker_command(spec: WorkerSpec, settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tuna.worker",
        "worker",
        "-n",
        spec.nodename,
        "-Q",
        spec.queue,
        "-c",
        str(spec.concurrency),
        "-P",
        "prefork",
        "-l",
        settings.log_level,
        "--without-gossip",
        "--without-mingle",
    ]


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def cause_line(lines: list[str]) -> str:
    """The line of a worker's last output that names why it died: Celery's CRITICAL or
    ERROR line if there is one, else the last line."""
    lines = [line.strip() for line in lines if line.strip()]
    for marker in ("CRITICAL", "Unrecoverable error", "ERROR"):
        for line in reversed(lines):
            if marker in line:
                return line
    return lines[-1] if lines else "no output"


class WorkerProcess:
    """A Celery worker node of a launcher, started again after it dies (up to a limit)."""

    def __init__(self, spec: WorkerSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings
        self.log_path: Path | None = settings.log_dir / f"{spec.nodename}.log" if settings.log_dir else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.worker_id = 0
        self.finished = False
        self.restart_at: float | None = None
        self.restarts: collections.deque[float] = collections.deque()
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._forwarder: threading.Thread | None = None

    def start(self) -> int:
        """Start the Celery worker; returns its pid. Call from the launcher's main thread."""
        env = {**os.environ, **self.spec.env, LAUNCHER_PID_ENV: str(os.getpid())}
        out: IO[bytes] | int
        if self.log_path is not None:
            try:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                out = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps its own copy
            except OSError as exc:
                raise ConfigError("TUNA_LOG_DIR", f"cannot write {self.log_path}: {exc.strerror}") from None
        else:
            out = subprocess.PIPE
        self._tail.clear()
        try:
            # Its own session: a Ctrl-C on the terminal reaches the launcher only, which
            # decides between a warm and a cold stop.
            self.proc = subprocess.Popen(
                worker_command(self.spec, self.settings),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            if not isinstance(out, int):
                out.close()
        if self.proc.stdout is not None:
            self._forwarder = threading.Thread(
                target=self._forward, args=(self.proc.stdout,), name="tuna-worker-log", daemon=True
            )
            self._forwarder.start()
        self.restart_at = None
        return self.proc.pid

    def _forward(self, pipe: IO[bytes]) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in iter(pipe.readline, b""):
                self._tail.append(line.decode("utf-8", errors="replace"))
                with contextlib.suppress(OSError, ValueError):
                    sys.stderr.buffer.write(line)
                    sys.stderr.flush()
        with contextlib.suppress(OSError):
            pipe.close()

    def tail(self) -> list[str]:
        """The worker's last lines of output."""
        if self.log_path is None:
            if self._forwarder is not None:
                self._forwarder.join(timeout=2)  # the rest of a dead worker's output
            return list(self._tail)
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
                return f.read().decode("utf-8", errors="replace").splitlines()[-TAIL_LINES:]
        except OSError:
            return []

    def exited(self) -> int | None:
        """The exit code of a worker that has just ended (once), else None."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is not None:
            self.proc = None
        return code

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def died(self, code: int, now: float) -> str | None:
        """Record a death. Returns None and schedules a restart when the worker may be
        started again; otherwise returns the one line that explains giving up."""
        window = self.settings.worker_restart_window_s
        while self.restarts and now - self.restarts[0] > window:
            self.restarts.popleft()
        where = f" (log: {self.log_path})" if self.log_path else ""
        cause = f"{describe_exit(code)}: {cause_line(self.tail())}{where}"
        if len(self.restarts) >= self.settings.worker_max_restarts:
            self.finished = True
            return (
                f"worker {self.spec.nodename} died {len(self.restarts) + 1} times within {window:g} s; "
                f"not restarting it again. Last: {cause}"
            )
        delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** len(self.restarts)) * random.uniform(0.5, 1.0)
        self.restarts.append(now)
        self.restart_at = now + delay
        log.warning(
            "worker %s died (%s); restarting it in %.1f s (restart %d of at most %d within %g s)",
            self.spec.nodename,
            cause,
            delay,
            len(self.restarts),
            self.settings.worker_max_restarts,
            window,
        )
        return None
