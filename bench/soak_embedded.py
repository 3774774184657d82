#!/usr/bin/env python3
"""Soak the embedded default: many back-to-back sessions, each with a fresh worker.

Each run: a fresh TUNA_HOME (SQLite + filesystem broker + file results), tables, a session,
JOBS Example jobs, a freshly started worker (``go_fish.py example --session_id S``, 2
prefork processes) and the head node (``--enqueue_only``). Optionally HOGS processes
spinning on the CPU the whole time (a busy machine is where issue 9's hang showed). Prints,
per run, its time, completed jobs, how the worker and head node ended and whether the
worker logged "Unrecoverable error"; then a summary. Figures, not pass/fail.

    nice python bench/soak_embedded.py                 # 50 runs of 60 jobs
    nice python bench/soak_embedded.py --runs 15 --hogs 2
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import ROOT, environment, tuna, wait_ready

from tuna.children import descendants

#: After the worker exits, the head node must finish within this (it sent the shutdown).
HEAD_AFTER_WORKER_S = 15.0


@dataclass
class Run:
    seconds: float
    completed: int
    worker: str  # "ok", "exit N", "died early", "killed"
    head: str  # "ok", "exit N", "hung", "timeout"
    unrecoverable: bool


def hog() -> None:
    while True:
        pass


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    for pid in [*descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def one_run(jobs: int, timeout_s: float) -> Run:
    with tempfile.TemporaryDirectory(prefix="tuna-soak-") as tmp:
        home = Path(tmp)
        env = environment(home, "unused", embedded=True)
        tuna(env, "example", "--add_tables")
        session = tuna(env, "example", "--init_session", "-l", "soak").strip()
        tuna(env, "-l", "soak", "--session_id", session, "--count", str(jobs), script="tuna/example/load_job.py")
        log = home / "worker.log"
        go_fish = [sys.executable, str(ROOT / "go_fish.py"), "example", "--session_id", session]
        with open(log, "w") as out:
            worker = subprocess.Popen(go_fish, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        procs = [worker]
        try:
            wait_ready(log, worker)
            start = time.monotonic()
            with open(home / "head.log", "w") as out:
                head = subprocess.Popen(
                    [*go_fish, "--enqueue_only"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            procs.append(head)
            deadline = start + timeout_s
            worker_gone_at = None
            head_state = "timeout"
            while time.monotonic() < deadline:
                if head.poll() is not None:
                    head_state = "ok" if head.returncode == 0 else f"exit {head.returncode}"
                    break
                if worker_gone_at is None and worker.poll() is not None:
                    worker_gone_at = time.monotonic()
                if worker_gone_at is not None and time.monotonic() - worker_gone_at > HEAD_AFTER_WORKER_S:
                    head_state = "hung"
                    break
                time.sleep(0.05)
            seconds = time.monotonic() - start
            if head_state == "ok":
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.wait(timeout=60)
            if worker.poll() is None:
                worker_state = "killed"
            elif worker_gone_at is not None and head_state != "ok":
                worker_state = "died early"
            else:
                worker_state = "ok" if worker.returncode == 0 else f"exit {worker.returncode}"
        finally:
            for proc in procs:
                kill_tree(proc)
        db = sqlite3.connect(home / "tuna.db")
        try:
            completed = db.execute("SELECT COUNT(*) FROM job WHERE state = 'completed'").fetchone()[0]
        finally:
            db.close()
        return Run(seconds, completed, worker_state, head_state, "Unrecoverable error" in log.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--hogs", type=int, default=0, help="CPU-spinning processes kept running meanwhile")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds one session may take")
    args = parser.parse_args()

    hogs = [multiprocessing.Process(target=hog, daemon=True) for _ in range(args.hogs)]
    for process in hogs:
        process.start()
    results: list[Run] = []
    try:
        print(f"{'run':>4} {'seconds':>8} {'done':>6} {'worker':>11} {'head':>8} unrecoverable", flush=True)
        for index in range(1, args.runs + 1):
            run = one_run(args.jobs, args.timeout)
            results.append(run)
            print(
                f"{index:>4} {run.seconds:>8.2f} {run.completed:>3}/{args.jobs:<2} {run.worker:>11} {run.head:>8} "
                f"{'YES' if run.unrecoverable else 'no'}",
                flush=True,
            )
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        for process in hogs:
            process.kill()
    if not results:
        return
    complete = sum(r.completed == args.jobs and r.head == "ok" for r in results)
    died = sum(r.worker not in ("ok",) for r in results)
    times = sorted(r.seconds for r in results if r.head == "ok")
    print(f"\n{complete} of {len(results)} sessions complete; workers not ending ok: {died}; ", end="")
    print(f"'Unrecoverable error' logged: {sum(r.unrecoverable for r in results)}; hogs: {args.hogs}")
    if times:
        print(
            f"seconds per completed session: median {statistics.median(times):.2f}, "
            f"min {times[0]:.2f}, max {times[-1]:.2f}"
        )


if __name__ == "__main__":
    main()
