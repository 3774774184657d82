#!/usr/bin/env python3
"""Speed of the MIOpen database commands on MariaDB (issue 10, acceptance 5).

Prints:
* import_db of the 3,000-record find-db MIOpen ships for gfx90a (../shared/data/miopen/real)
  into an empty database (configs, tensors and solvers created);
* export_db -f of a session of N find-db rows (N/4 configs, four solvers each; generated);
* export_db -p of the same rows, all tunable with params (SQLite .db and text .db.txt).

Each run uses its own database on the MariaDB at 127.0.0.1:3306 and drops it afterwards.

    python bench/miopen_db.py [--rows 100000] [--shared ../shared/data] [--url mysql+pymysql://root@127.0.0.1:3306]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tuna.config import load_settings
from tuna.db.engine import make_engine
from tuna.db.tables import machine
from tuna.db.tables import metadata as core_metadata
from tuna.miopen import tables as t
from tuna.miopen.dbstore import config_rows, ensure_configs, ensure_session, ensure_solvers
from tuna.miopen.export_db import export_db
from tuna.miopen.import_db import import_db
from tuna.miopen.keys import problem_key
from tuna.miopen.problem import conv_problem

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = ("ConvAsm1x1U", "ConvMlirIgemmFwd", "GemmFwd1x1_0_1", "ConvBinWinogradRxSf2x3")
ALGORITHMS = (
    "miopenConvolutionFwdAlgoDirect",
    "miopenConvolutionFwdAlgoImplicitGEMM",
    "miopenConvolutionFwdAlgoGEMM",
    "miopenConvolutionFwdAlgoWinograd",
)


def problems(count: int) -> list[Any]:
    out = []
    for i in range(count):
        values: dict[str, Any] = {
            "direction": "F",
            "spatial_dim": 2,
            "batchsize": 1 + i % 64,
            "in_channels": 16 * (1 + (i // 64) % 64),
            "in_d": 1,
            "in_h": 7 + (i // 4096) % 64,
            "in_w": 7 + (i // 4096) % 64,
            "out_channels": 64,
            "fil_d": 1,
            "fil_h": 3,
            "fil_w": 3,
            "mode": "conv",
            "pad_mode": "default",
            "group_count": 1,
            "in_layout": "NCHW",
            "fil_layout": "NCHW",
            "out_layout": "NCHW",
            "data_type": "FP32",
        }
        for a in "hw":
            values.update({f"pad_{a}": 1, f"conv_stride_{a}": 1, f"dilation_{a}": 1, f"trans_output_pad_{a}": 0})
        values.update(pad_d=0, conv_stride_d=0, dilation_d=0, trans_output_pad_d=0)
        out.append(conv_problem(values))
    return out


def generate(settings: Any, rows: int) -> int:
    engine = make_engine(settings.db_url)
    with engine.begin() as conn:
        session = ensure_session(conn, arch="gfx90a", num_cu=104, rocm_v="6.2", miopen_v="3.2", reason="bench")
        items = {p: config_rows(p) for p in problems(rows // len(SOLVERS))}
        ids = ensure_configs(conn, items.values())
        solvers = ensure_solvers(conn, SOLVERS, tunable=True)
        batch = []
        for n, (problem, item) in enumerate(items.items()):
            key = problem_key(problem)
            for s, name in enumerate(SOLVERS):
                batch.append(
                    {
                        "config": ids[item.md5],
                        "solver": solvers[name],
                        "session": session,
                        "opencl": False,
                        "fdb_key": key,
                        "kernel_time": 0.01 + ((n * 7 + s * 13) % 1000) / 100,
                        "workspace_sz": s * 1024,
                        "alg_lib": ALGORITHMS[s],
                        "params": f"{n % 16},{s},1,2",
                    }
                )
                if len(batch) >= 10000:
                    conn.execute(t.conv_find_db.insert(), batch)
                    batch.clear()
        if batch:
            conn.execute(t.conv_find_db.insert(), batch)
    engine.dispose()
    return session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--url", default="mysql+pymysql://root@127.0.0.1:3306")
    args = parser.parse_args()
    name = f"tuna_bench_miopen_{uuid.uuid4().hex[:8]}"
    server = sa.create_engine(args.url)
    with server.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    url = sa.make_url(f"{args.url}/{name}")
    home = Path(tempfile.mkdtemp(prefix="tuna_bench_"))
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    env.update(
        TUNA_HOME=str(home),
        TUNA_DB_HOSTNAME=url.host or "127.0.0.1",
        TUNA_DB_PORT=str(url.port or 3306),
        TUNA_DB_USER_NAME=url.username or "root",
        TUNA_DB_NAME=name,
    )
    settings = load_settings(env)
    try:
        engine = make_engine(settings.db_url)
        core_metadata.create_all(engine, tables=[machine])
        t.metadata.create_all(engine)
        engine.dispose()
        real = args.shared / "miopen" / "real" / "gfx90a68.HIP.fdb.txt"
        if real.is_file():
            started = time.monotonic()
            stats = import_db(settings, real, rocm_v="6.2", miopen_v="3.2")
            print(
                f"import_db {real.name}: {stats.records} entries of 3,000 keys, {stats.added} rows, "
                f"{time.monotonic() - started:.2f} s"
            )
        else:
            print(f"import_db: skipped, {real} not found")
        started = time.monotonic()
        session = generate(settings, args.rows)
        print(f"(generated {args.rows} find-db rows in {time.monotonic() - started:.1f} s)")
        out = home / "out"
        for kind in ("find", "perf"):
            stats = export_db(settings, kind, session_id=session, output_dir=out)
            files = ", ".join(p.name for p in stats.files)
            print(f"export_db {kind}: {stats.rows} rows -> {stats.written} entries ({files}), {stats.seconds:.2f} s")
    finally:
        shutil.rmtree(home, ignore_errors=True)
        with server.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        server.dispose()


if __name__ == "__main__":
    main()
