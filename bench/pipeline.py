#!/usr/bin/env python3
"""End-to-end throughput of the real stack, against the ceiling of the bare work.

For each N: a fresh MariaDB database, N Example jobs, one worker (``go_fish.py example
--session_id S``, 2 prefork processes), and the head node (``--enqueue_only``) as a
separate process. Prints end-to-end jobs/s, the ceiling (the fake rocminfo run N times by
2 plain processes), their ratio, the head node's enqueue and drain rates (from its final
log line) and its peak RSS.

    python bench/pipeline.py 1000 5000          # real MariaDB, RabbitMQ, Redis
    python bench/pipeline.py --embedded 1000    # SQLite + filesystem broker + file results
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from multiprocessing import Pool
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
ROCM = ROOT / "tests" / "fixtures" / "rocm"
ROCMINFO = str(ROCM / "bin" / "rocminfo")
MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306"


def run_rocminfo(_: int) -> int:
    return subprocess.run([ROCMINFO], capture_output=True, check=True).returncode


def ceiling(n: int) -> float:
    """Jobs/s of the bare command, N runs over 2 plain processes."""
    with Pool(2) as pool:
        start = time.perf_counter()
        pool.map(run_rocminfo, range(n), chunksize=16)
        return n / (time.perf_counter() - start)


def environment(home: Path, db_name: str, *, embedded: bool) -> dict[str, str]:
    # Tuning knobs pass through (to compare settings); where the services are does not.
    knobs = ("TUNA_MAX_BUNDLE", "TUNA_BUNDLE_TARGET_S", "TUNA_CELERY_JOB_BATCH_SIZE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNA_", "SLURM_")) or k in knobs}
    env.update({"TUNA_HOME": str(home), "ROCM_PATH": str(ROCM), "TUNA_LOGLEVEL": "INFO", "SLURM_CPUS_ON_NODE": "2"})
    if not embedded:
        env.update(
            {
                "TUNA_DB_HOSTNAME": "127.0.0.1",
                "TUNA_DB_NAME": db_name,
                "TUNA_CELERY_BROKER_HOST": "127.0.0.1",
                "TUNA_CELERY_BACKEND_HOST": "127.0.0.1",
            }
        )
    return env


def tuna(env: dict[str, str], *args: str, script: str = "go_fish.py") -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise SystemExit(f"{script} {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def wait_ready(log: Path, proc: subprocess.Popen[bytes], deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if " ready." in log.read_text():
            return
        if proc.poll() is not None:
            raise SystemExit(f"worker exited:\n{log.read_text()}")
        time.sleep(0.05)
    raise SystemExit("worker not ready in time")


def one_run(n: int, *, embedded: bool) -> dict[str, float]:
    db_name = f"tuna_bench_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = environment(home, db_name, embedded=embedded)
        try:
            tuna(env, "example", "--add_tables")
            session = tuna(env, "example", "--init_session", "-l", "bench").strip()
            load_start = time.perf_counter()
            tuna(
                env,
                "-l",
                "bench",
                "--session_id",
                session,
                "--count",
                str(n),
                script="tuna/example/load_job.py",
            )
            load_s = time.perf_counter() - load_start
            log = home / "worker.log"
            with open(log, "w") as out:
                worker = subprocess.Popen(
                    [sys.executable, str(ROOT / "go_fish.py"), "example", "--session_id", session],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            wait_ready(log, worker)
            start = time.perf_counter()
            head = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "go_fish.py"),
                    "example",
                    "--session_id",
                    session,
                    "--enqueue_only",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            _, status, usage = os.wait4(head.pid, 0)
            elapsed = time.perf_counter() - start
            stderr = head.stderr.read() if head.stderr else ""
            head.returncode = os.waitstatus_to_exitcode(status)
            if head.returncode:
                raise SystemExit(f"head node failed:\n{stderr}")
            worker.wait(timeout=60)
            engine = sa.create_engine(f"{MYSQL_URL}/{db_name}" if not embedded else f"sqlite:///{home}/tuna.db")
            with engine.connect() as conn:
                done = conn.execute(sa.text("SELECT COUNT(*) FROM job WHERE state = 'completed'")).scalar_one()
            engine.dispose()
            rates = re.search(r"enqueue ([\d.]+) jobs/s, drain ([\d.]+) jobs/s", stderr)
            return {
                "jobs": n,
                "completed": done,
                "load_s": load_s,
                "e2e": n / elapsed,
                "enqueue": float(rates.group(1)) if rates else float("nan"),
                "drain": float(rates.group(2)) if rates else float("nan"),
                "head_rss_mib": usage.ru_maxrss / 1024,
            }
        finally:
            if not embedded:
                engine = sa.create_engine(MYSQL_URL)
                with engine.begin() as conn:
                    conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{db_name}`"))
                engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", type=int, default=[1000, 5000])
    parser.add_argument("--embedded", action="store_true", help="SQLite + filesystem broker instead of services")
    args = parser.parse_args()
    print(
        f"{'N':>7} {'done':>7} {'e2e/s':>8} {'ceiling/s':>10} {'ratio':>6} {'enqueue/s':>10} "
        f"{'drain/s':>9} {'head MiB':>9} {'load s':>7}"
    )
    for n in args.sizes:
        result = one_run(n, embedded=args.embedded)
        top = ceiling(n)
        print(
            f"{n:>7} {result['completed']:>7} {result['e2e']:>8.0f} {top:>10.0f} {result['e2e'] / top:>6.2f} "
            f"{result['enqueue']:>10.0f} {result['drain']:>9.0f} {result['head_rss_mib']:>9.1f} "
            f"{result['load_s']:>7.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
