"""``go_fish.py <lib> --session_id S`` on a GPU host: register the host, start the
session's Celery workers, keep the host's heartbeat, and stop them on a signal.

A step marked ``per_gpu`` gets one single-process worker per GPU, pinned by
``HIP_VISIBLE_DEVICES``/``ROCR_VISIBLE_DEVICES``; any other step gets one worker for the
host whose pool processes spread over its GPUs (see :mod:`tuna.worker`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

from tuna.celery_app.naming import queue_name, worker_name
from tuna.config import Settings
from tuna.db.engine import Database
from tuna.errors import ServiceUnavailable
from tuna.library import SessionInfo, Step
from tuna.machine import LocalMachine, discover, heartbeat, mark_stopped, register_machine
from tuna.runner import GPU_ENV

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    queue: str
    concurrency: int
    env: dict[str, str] = field(default_factory=dict)


def worker_specs(step: Step, session: SessionInfo, settings: Settings, local: LocalMachine) -> list[WorkerSpec]:
    queue = queue_name(step.queue_kind, settings.db_name, session.id)
    if step.per_gpu:
        return [
            WorkerSpec(
                worker_name(local.hostname, session.id, gpu),
                queue,
                1,
                {"TUNA_GPU_ID": str(gpu), **{name: str(gpu) for name in GPU_ENV}},
            )
            for gpu in local.gpus
        ]
    processes = settings.cpus_on_node or os.cpu_count() or 1
    return [
        WorkerSpec(worker_name(local.hostname, session.id), queue, processes, {"TUNA_AVAIL_GPUS": local.avail_gpus})
    ]


def worker_command(spec: WorkerSpec, settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tuna.worker",
        "worker",
        "-n",
        f"{spec.name}@%h",
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


class _Stop:
    """First signal: warm shutdown (running jobs finish or go back). Second: kill."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.count += 1


def start_workers(step: Step, session: SessionInfo, settings: Settings, db: Database) -> int:
    """Run the session's workers on this host until they exit; returns an exit code."""
    local = discover(settings.rocm_path)
    specs = worker_specs(step, session, settings, local)
    with db.begin() as conn:
        machine_id = register_machine(conn, local, worker_processes=sum(s.concurrency for s in specs))
    stop = _Stop()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs = []
    try:
        for spec in specs:
            env = {**os.environ, **spec.env, "TUNA_MACHINE_ID": str(machine_id)}
            procs.append(subprocess.Popen(worker_command(spec, settings), env=env, start_new_session=True))
            log.info(
                "session %s: started worker %s on %s (%d processes)",
                session.id,
                spec.name,
                spec.queue,
                spec.concurrency,
            )
        _supervise(procs, stop, settings, db, machine_id)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        try:
            with db.begin() as conn:
                mark_stopped(conn, machine_id)
        except ServiceUnavailable:
            pass
    codes = [proc.returncode for proc in procs]
    return 0 if all(code == 0 for code in codes) else 1


def _supervise(
    procs: list[subprocess.Popen[bytes]], stop: _Stop, settings: Settings, db: Database, machine_id: int
) -> None:
    signalled = 0
    last_beat = time.monotonic()
    while any(proc.poll() is None for proc in procs):
        if stop.count > signalled:
            signalled = stop.count
            sig = signal.SIGTERM if signalled == 1 else signal.SIGKILL
            log.warning("stopping workers (%s)", "warm: running jobs finish" if signalled == 1 else "cold")
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            procs[0].wait(timeout=0.2)
        if time.monotonic() - last_beat >= settings.worker_heartbeat_s:
            last_beat = time.monotonic()
            try:
                with db.begin() as conn:
                    heartbeat(conn, machine_id)
            except ServiceUnavailable as exc:
                log.warning("heartbeat not recorded: %s", exc)
