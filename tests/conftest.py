"""Fixtures: a fresh tuna environment per test, on the embedded default or real services.

``tuna_env`` is parametrized over both backends (Optuna's StorageTestCase habit): the
embedded default (SQLite + filesystem broker + file results under a temp TUNA_HOME) and
the real MariaDB, RabbitMQ and Redis on this machine, with a fresh database name per
test so that queue names, task ids and rows never collide. A service that is down skips
its tests locally, and fails them when CI is set.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tuna.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
ROCM = ROOT / "tests" / "fixtures" / "rocm"
# ../shared/data next to the checkout; TUNA_SHARED_DATA for a checkout elsewhere (a worktree).
SHARED_DATA = Path(os.environ.get("TUNA_SHARED_DATA") or ROOT.parent / "shared" / "data")
MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306"
SERVICES = {"MariaDB": ("127.0.0.1", 3306), "RabbitMQ": ("127.0.0.1", 5672), "Redis": ("127.0.0.1", 6379)}
DEFAULT_TIMEOUT_S = 120


def services_down() -> list[str]:
    down = []
    for name, address in SERVICES.items():
        try:
            socket.create_connection(address, timeout=1).close()
        except OSError:
            down.append(name)
    return down


def require_services() -> None:
    down = services_down()
    if down:
        message = f"services down: {', '.join(down)} (.ci/run starts them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class TunaEnv:
    """One isolated tuna installation: its environment, and helpers to run commands in it."""

    kind: str
    vars: dict[str, str]
    home: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def settings(self) -> Any:
        return load_settings(self.vars)

    def run(
        self,
        *args: str,
        script: str = "go_fish.py",
        timeout: float = DEFAULT_TIMEOUT_S,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a tuna command as a user would, and return its exit code and output."""
        return subprocess.run(
            [sys.executable, str(ROOT / script), *args],
            env={**self.vars, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.home,
        )

    def ok(self, *args: str, **kwargs: Any) -> str:
        proc = self.run(*args, **kwargs)
        assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def start(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start a long-running tuna command (worker launch, head node) in the background."""
        with open(self.home / f"proc-{len(self.procs)}.log", "w") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "go_fish.py"), *args],
                env={**self.vars, **(extra_env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=self.home,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def log_of(self, proc: subprocess.Popen[str]) -> str:
        return (self.home / f"proc-{self.procs.index(proc)}.log").read_text()

    def start_worker(self, session_id: int, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = self.start("example", "--session_id", str(session_id), extra_env=extra_env)
        self.wait_for(lambda: self.worker_ready(proc), what="the worker to be ready")
        return proc

    def worker_ready(self, proc: subprocess.Popen[str]) -> bool:
        assert proc.poll() is None, f"worker exited early:\n{self.log_of(proc)}"
        return " ready." in self.log_of(proc)

    def engine(self) -> sa.Engine:
        return sa.create_engine(self.settings.db_url)

    def query(self, sql: str, **params: Any) -> list[Any]:
        engine = self.engine()
        try:
            with engine.connect() as conn:
                return list(conn.execute(sa.text(sql), params))
        finally:
            engine.dispose()

    def query_commit(self, sql: str, **params: Any) -> None:
        engine = self.engine()
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(sql), params)
        finally:
            engine.dispose()

    def states(self, session_id: int) -> dict[str, int]:
        rows = self.query("SELECT state, COUNT(*) FROM job WHERE session = :s GROUP BY state", s=session_id)
        return {str(state): int(n) for state, n in rows}

    @staticmethod
    def wait_for(check: Callable[[], Any], *, what: str, timeout: float = 60.0, every: float = 0.05) -> Any:
        """Poll ``check`` until it returns something truthy, or fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(every)
        pytest.fail(f"timed out after {timeout} s waiting for {what}")

    def setup_session(self, jobs: int = 1, label: str = "seed") -> int:
        """Tables, a session and ``jobs`` new jobs; returns the session id."""
        self.ok("example", "--add_tables")
        session_id = int(self.ok("example", "--init_session", "-l", label).strip())
        args = ["-l", label, "--session_id", str(session_id)]
        if jobs > 1:
            args += ["--count", str(jobs)]
        out = self.ok(*args, script="tuna/example/load_job.py")
        assert out.strip() == f"New jobs added: {jobs}"
        return session_id

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                kill_tree(proc)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (whatever session or group they are in)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    """Signal a launcher and everything it started: a host that dies at once."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    if sig == signal.SIGKILL:
        proc.wait(timeout=30)


def with_group(proc: subprocess.Popen[str], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def base_vars(home: Path) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "VIRTUAL_ENV", "PYTHONPATH", "CI")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update({"TUNA_HOME": str(home), "ROCM_PATH": str(ROCM), "TUNA_LOGLEVEL": "INFO"})
    return env


def make_env(kind: str, tmp_path: Path) -> Iterator[TunaEnv]:
    home = tmp_path / "tuna_home"
    home.mkdir()
    env = base_vars(home)
    db_name = None
    if kind == "services":
        require_services()
        db_name = f"tuna_test_{uuid.uuid4().hex[:10]}"
        env.update(
            {
                "TUNA_DB_HOSTNAME": "127.0.0.1",
                "TUNA_DB_USER_NAME": "root",
                "TUNA_DB_NAME": db_name,
                "TUNA_CELERY_BROKER_HOST": "127.0.0.1",
                "TUNA_CELERY_BROKER_USER": "guest",
                "TUNA_CELERY_BROKER_PWD": "guest",
                "TUNA_CELERY_BACKEND_HOST": "127.0.0.1",
            }
        )
    tuna = TunaEnv(kind, env, home)
    try:
        yield tuna
    finally:
        tuna.stop_all()
        if db_name:
            engine = sa.create_engine(MYSQL_URL)
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{db_name}`"))
            engine.dispose()


@pytest.fixture(params=["embedded", "services"])
def tuna_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TunaEnv]:
    yield from make_env(request.param, tmp_path)


@pytest.fixture
def services_env(tmp_path: Path) -> Iterator[TunaEnv]:
    yield from make_env("services", tmp_path)


@pytest.fixture
def embedded_env(tmp_path: Path) -> Iterator[TunaEnv]:
    yield from make_env("embedded", tmp_path)
