#!/usr/bin/env python3
"""Speed of ``go_fish.py miopen import_configs`` on MariaDB: MITuna's all.txt (1,370 lines).

In a fresh database (dropped at the end), as an operator runs it:
* ``--add_tables``;
* the first import of all.txt as convolutions, tagged (every config new), then as batch
  norm (``-C batch_norm``);
* the same import again (every config known, every tag present).

Prints wall-clock seconds of each command, process start included, and what it printed.
The acceptance figure is the first import: under 10 s.

    python bench/miopen_import.py [--file ../shared/data/miopen/networks/all.txt] [--db-url mysql+pymysql://root@127.0.0.1:3306]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TUNA_SHARED_DATA") or ROOT.parent / "shared" / "data")


def run(env: dict[str, str], *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "go_fish.py"), "miopen", *args], env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return elapsed, proc.stdout


def summary(stdout: str) -> str:
    return "; ".join(line for line in stdout.splitlines() if not line.startswith("Refused ("))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=SHARED / "miopen" / "networks" / "all.txt")
    parser.add_argument("--db-url", default="mysql+pymysql://root@127.0.0.1:3306")
    args = parser.parse_args()
    if not args.file.exists():
        sys.exit(f"{args.file} not found (set TUNA_SHARED_DATA or --file)")
    url = make_url(args.db_url)
    name = f"tuna_bench_{uuid.uuid4().hex[:8]}"
    lines = len(args.file.read_text().splitlines())
    with tempfile.TemporaryDirectory() as home:
        env = {
            **os.environ,
            "TUNA_HOME": home,
            "TUNA_DB_HOSTNAME": url.host or "127.0.0.1",
            "TUNA_DB_PORT": str(url.port or 3306),
            "TUNA_DB_USER_NAME": url.username or "root",
            "TUNA_DB_USER_PASSWORD": url.password or "",
            "TUNA_DB_NAME": name,
            "TUNA_LOGLEVEL": "ERROR",
        }
        try:
            seconds, _ = run(env, "--help")
            print(f"process start (--help): {seconds:.2f} s")
            seconds, _ = run(env, "--add_tables")
            print(f"--add_tables: {seconds:.2f} s")
            for label, extra in (("first import", []), ("batch norm", ["-C", "batch_norm"]), ("again", [])):
                seconds, out = run(env, "import_configs", "-f", str(args.file), "-t", "bench", *extra)
                print(f"{label} of {args.file.name} ({lines} lines): {seconds:.2f} s  [{summary(out)}]")
        finally:
            engine = sa.create_engine(url)
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
            engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
