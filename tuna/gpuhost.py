"""``go_fish.py <lib> --session_id S`` on a GPU host: register the host, start the
session's Celery workers, keep their heartbeat, restart a worker that dies, and stop them
on a signal or once the session has no work left.

A step marked ``per_gpu`` gets one single-process worker per GPU, pinned by
``HIP_VISIBLE_DEVICES``/``ROCR_VISIBLE_DEVICES``; any other step gets one worker for the
host whose pool processes spread over its GPUs (see :mod:`tuna.worker`). A step that does
not need a GPU (``needs_gpu=False``, a build step) also runs on a host without one: one
host-wide worker, nothing pinned. The library may refuse the host first
(:meth:`tuna.library.Library.check_host`).

The launcher and its workers live and die together. The launcher is a child subreaper,
so every process below it stays below it even when its parent dies; whenever it exits,
it kills whatever is left there. If the launcher itself is killed, the kernel sends each
Celery worker a death signal, each pool process gets one from its worker, and a pool
process that dies so kills its running job's process group (:mod:`tuna.worker`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from sqlalchemy.engine import Connection

from tuna.celery_app.naming import queue_name, worker_name
from tuna.children import become_subreaper, children, descendants
from tuna.config import Settings
from tuna.db.engine import Database
from tuna.errors import EXIT_INTERRUPTED, BadInput
from tuna.heartbeat import Heartbeat, describe_db_error, launcher_database, pending_states, session_has_work
from tuna.library import Library, SessionInfo, Step
from tuna.machine import (
    LocalMachine,
    WorkerNode,
    discover,
    mark_workers_stopped,
    register_machine,
    register_worker,
    running_worker_pid,
)
from tuna.machine import worker_started as record_worker_start
from tuna.runner import GPU_ENV
from tuna.workerproc import WorkerGaveUp, WorkerProcess, WorkerSpec

log = logging.getLogger(__name__)

#: How often the launcher looks at its workers and signals.
SUPERVISE_EVERY_S = 0.2
#: How long the launcher waits for the processes below it to go after killing them.
KILL_WAIT_S = 10.0


def worker_specs(
    step: Step, session: SessionInfo, settings: Settings, local: LocalMachine, machine_id: int
) -> list[WorkerSpec]:
    queue = queue_name(step.queue_kind, settings.db_name, session.id)
    host, db_name = local.hostname, settings.db_name
    machine = {"TUNA_MACHINE_ID": str(machine_id)}
    if step.per_gpu and local.gpus:
        return [
            WorkerSpec(
                worker_name(host, db_name, session.id, gpu),
                host,
                queue,
                1,
                {**machine, "TUNA_GPU_ID": str(gpu), **{name: str(gpu) for name in GPU_ENV}},
            )
            for gpu in local.gpus
        ]
    processes = settings.cpus_on_node or os.cpu_count() or 1
    env = {**machine, "TUNA_AVAIL_GPUS": local.avail_gpus}
    return [WorkerSpec(worker_name(host, db_name, session.id), host, queue, processes, env)]


class _Stop:
    """First signal: warm shutdown (running jobs finish or go back). Second: kill."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.count += 1


def start_workers(library: Library, step: Step, session: SessionInfo, settings: Settings) -> int:
    """Run the session's workers on this host until they are done; returns an exit code.

    Raises :class:`WorkerGaveUp` when a worker died more often than the restart limit allows.
    """
    # A host whose rocminfo fails is refused here, and one without GPUs unless the step builds.
    local = discover(settings.rocm_path, need_gpu=step.needs_gpu)
    library.check_host(step, session, local, settings.rocm_path)  # before anything is registered
    db = launcher_database(settings)
    table, states = library.table_of(step), pending_states(library, step)
    where = library.wait_filter(step, table, session)
    with db.begin() as conn:
        if not session_has_work(conn, table, session.id, states, where):
            log.info(
                "session %s: no job is %s for step %s; no worker started",
                session.id,
                " or ".join(sorted(states)),
                step.name,
            )
            return 0
        machine_id = register_machine(conn, local)
    become_subreaper()
    launcher = Launcher(
        worker_specs(step, session, settings, local, machine_id), step, session, settings, db, machine_id
    )
    return launcher.run(lambda conn: session_has_work(conn, table, session.id, states, where))


class Launcher:
    def __init__(
        self,
        specs: list[WorkerSpec],
        step: Step,
        session: SessionInfo,
        settings: Settings,
        db: Database,
        machine_id: int,
    ) -> None:
        self.workers = [WorkerProcess(spec, settings) for spec in specs]
        self.step = step
        self.session = session
        self.settings = settings
        self.db = db
        self.machine_id = machine_id
        self.stopping = 0  # 1: warm stop asked, 2: cold
        self.gave_up: str | None = None

    def run(self, has_work: Callable[[Connection], bool]) -> int:
        stop = _Stop()
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        heartbeat: Heartbeat | None = None
        try:
            with self.db.begin() as conn:
                for w in self.workers:
                    refuse_a_second_launcher(conn, w.spec.nodename, self.settings.worker_dead_after_s)
                    node = WorkerNode(
                        w.spec.nodename, self.settings.db_name, self.session.id, self.step.name, w.spec.concurrency
                    )
                    w.worker_id = register_worker(
                        conn, self.machine_id, w.spec.hostname, node, dead_after_s=self.settings.worker_dead_after_s
                    )
            for w in self.workers:
                self._start(w)
            heartbeat = Heartbeat(
                self.db,
                self.settings,
                session_id=self.session.id,
                machine_id=self.machine_id,
                worker_ids=lambda: [w.worker_id for w in self.workers if not w.finished],
                has_work=has_work,
            )
            heartbeat.start()
            self._supervise(stop, heartbeat)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if heartbeat is not None:
                heartbeat.stop()
            self._kill_everything_below()
            self._mark_stopped([w.worker_id for w in self.workers if w.worker_id])
        if self.gave_up:
            raise WorkerGaveUp(self.gave_up)
        return EXIT_INTERRUPTED if self.stopping == 2 else 0

    def _start(self, w: WorkerProcess) -> None:
        pid = w.start()
        log.info(
            "session %s: started worker %s on %s (%d processes)%s",
            self.session.id,
            w.spec.nodename,
            w.spec.queue,
            w.spec.concurrency,
            f"; its log: {w.log_path}" if w.log_path else "",
        )
        try:
            with self.db.begin() as conn:
                record_worker_start(conn, w.worker_id, pid)
        except Exception as exc:  # the heartbeat keeps the row alive anyway
            log.warning(
                "session %s: worker %s's start not recorded: %s",
                self.session.id,
                w.spec.nodename,
                describe_db_error(exc),
            )

    def _supervise(self, stop: _Stop, heartbeat: Heartbeat) -> None:
        while not all(w.finished for w in self.workers):
            if stop.count and not self.stopping:
                log.warning("stopping workers (warm: running jobs finish)")
                self._warm_stop()
            if stop.count > 1 and self.stopping < 2:
                log.warning("stopping workers (cold)")
                self.stopping = 2
                return  # the teardown kills everything below the launcher
            if heartbeat.session_over.is_set() and not self.stopping:
                log.info(
                    "session %s: no job left to run for step %s; stopping the workers", self.session.id, self.step.name
                )
                self._warm_stop()
            now = time.monotonic()
            for w in self.workers:
                self._look_after(w, now, heartbeat)
            _reap_orphans({w.proc.pid for w in self.workers if w.proc is not None})
            time.sleep(SUPERVISE_EVERY_S)

    def _look_after(self, w: WorkerProcess, now: float, heartbeat: Heartbeat) -> None:
        if w.finished:
            return
        if w.proc is None:
            if w.restart_at is not None and now >= w.restart_at:
                self._start(w)
            return
        code = w.exited()
        if code is None:
            return
        if self.stopping or code == 0:  # stopped by us, by a head node, or --shutdown_workers
            w.finished = True
            self._mark_stopped([w.worker_id])
            return
        if heartbeat.work_seen is False:
            log.warning("worker %s died after its session ran out of work; not restarted", w.spec.nodename)
            w.finished = True
            self._mark_stopped([w.worker_id])
            return
        self.gave_up = w.died(code, now)
        if self.gave_up:
            log.error("%s", self.gave_up)
            self._warm_stop()

    def _warm_stop(self) -> None:
        self.stopping = max(self.stopping, 1)
        for w in self.workers:
            if w.proc is None:
                w.finished = True  # a restart that was pending
            w.signal(signal.SIGTERM)

    def _kill_everything_below(self) -> None:
        """Nothing of a stopped launcher keeps running: Celery workers, pool processes,
        jobs and whatever those started. All of it is below the subreaper launcher."""
        me = os.getpid()
        deadline = time.monotonic() + KILL_WAIT_S
        while time.monotonic() < deadline:
            below = descendants(me)
            if not below:
                return
            for pid in below:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            for w in self.workers:
                if w.proc is not None:
                    with contextlib.suppress(Exception):
                        w.proc.wait(timeout=1)
                    w.proc = None
            _reap_orphans(set())
            time.sleep(0.05)
        log.warning("processes still below the launcher after %.0f s: %s", KILL_WAIT_S, descendants(me))

    def _mark_stopped(self, worker_ids: list[int]) -> None:
        try:
            with self.db.begin() as conn:
                mark_workers_stopped(conn, self.machine_id, worker_ids, dead_after_s=self.settings.worker_dead_after_s)
        except Exception as exc:  # the rows then simply go silent
            log.warning("session %s: workers' stop not recorded: %s", self.session.id, describe_db_error(exc))


def refuse_a_second_launcher(conn: Connection, nodename: str, dead_after_s: float) -> None:
    """Two launchers of one session on one host would share a node name: the second's
    worker could not start, and its stop would mark the first's worker stopped."""
    pid = running_worker_pid(conn, nodename, dead_after_s=dead_after_s)
    if pid is None or not _alive(pid):
        return  # none, or its launcher died without a word: this one takes over
    raise BadInput(f"worker {nodename} is already running on this host (pid {pid}); stop its launcher first")


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie waiting to be collected."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def _reap_orphans(keep: set[int]) -> None:
    """Collect the exit status of processes re-parented to this subreaper, so that none
    lingers as a zombie; the launcher's own Celery workers are left to their Popen."""
    for pid in children(os.getpid()):
        if pid not in keep:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
