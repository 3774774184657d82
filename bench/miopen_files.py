#!/usr/bin/env python3
"""Speed of the MIOpen database files: parsing MIOpen's real find-db, writing 100,000 entries.

Prints, each the best of a few runs:
* parse of the 3,000-record find-db MIOpen ships for gfx90a (../shared/data/miopen/real),
  and of the 1,000-record legacy-form one for gfx906, when the shared data is present;
* format and write of a find-db of N entries (N/4 keys, four solvers each), and its parse;
* write of a SQLite perf-db and of a text perf-db of N entries, and N lookups through
  MIOpen's own query on a sample of them.

    python bench/miopen_files.py [--entries 100000] [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuna.miopen.dbfiles import (
    FindDbEntry,
    PerfConfig,
    PerfEntry,
    lookup_perf_sqlite,
    parse_find_db,
    read_find_db,
    write_find_db,
    write_perf_sqlite,
    write_perf_text,
)

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 3
LOOKUPS = 200
SOLVERS = ("ConvAsm1x1U", "ConvMlirIgemmFwd", "GemmFwd1x1_0_1", "ConvBinWinogradRxSf2x3")
ALGORITHMS = (
    "miopenConvolutionFwdAlgoDirect",
    "miopenConvolutionFwdAlgoImplicitGEMM",
    "miopenConvolutionFwdAlgoGEMM",
    "miopenConvolutionFwdAlgoWinograd",
)


def best(action: Callable[[], Any]) -> tuple[float, Any]:
    """The fastest of REPEATS runs, in seconds, and the last result."""
    times, result = [], None
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - start)
    return min(times), result


def synthetic_keys(count: int) -> list[str]:
    """Distinct, valid 2-D forward keys (channels x batch varied)."""
    return [f"{16 + i // 64}-14-14-3x3-{32 + i % 64}-14-14-8-1x1-1x1-1x1-0-NCHW-FP32-F" for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()

    real = args.shared / "miopen" / "real"
    for name in ("gfx90a68.HIP.fdb.txt", "gfx906_60.HIP.fdb.txt"):
        path = real / name
        if not path.is_file():
            print(f"{name}: not found under {real}, skipped")
            continue
        seconds, db = best(lambda path=path: read_find_db(path))
        entries = db.current_entries + db.legacy_entries
        print(f"parse {name}: {len(db.records)} records, {entries} entries in {seconds * 1000:.1f} ms")

    keys = synthetic_keys(args.entries // len(SOLVERS))
    records = {
        key: [
            FindDbEntry(solver, 0.01 * (k % 97 + 1) * (s + 1), 1024 * s, ALGORITHMS[s])
            for s, solver in enumerate(SOLVERS)
        ]
        for k, key in enumerate(keys)
    }
    with tempfile.TemporaryDirectory() as scratch:
        fdb = Path(scratch) / "gfx90a68.HIP.fdb.txt"
        seconds, stats = best(lambda: write_find_db(fdb, records))
        print(f"write find-db: {stats.entries} entries, {stats.keys} keys in {seconds:.2f} s")
        seconds, db = best(lambda: parse_find_db(fdb.read_text()))
        print(f"parse it back: {db.current_entries} entries in {seconds:.2f} s")

        perf = [
            PerfEntry(PerfConfig.from_key(key), solver, f"{k % 8},{k % 16},1,2,{s}")
            for k, key in enumerate(keys)
            for s, solver in enumerate(SOLVERS)
        ]
        pdb = Path(scratch) / "gfx90a68.db"
        seconds, pstats = best(lambda: write_perf_sqlite(pdb, perf))
        print(f"write SQLite perf-db: {pstats.entries} entries, {pstats.configs} configs in {seconds:.2f} s")
        seconds, tstats = best(lambda: write_perf_text(Path(scratch) / "gfx90a68.db.txt", perf))
        print(f"write text perf-db: {tstats.entries} entries in {seconds:.2f} s")
        sample = perf[:: max(1, len(perf) // LOOKUPS)][:LOOKUPS]
        start = time.perf_counter()
        found = sum(lookup_perf_sqlite(pdb, e.config).get(e.solver) == e.params for e in sample)
        seconds = time.perf_counter() - start
        print(f"MIOpen lookup query: {found}/{len(sample)} found, {seconds / len(sample) * 1000:.2f} ms each")


if __name__ == "__main__":
    main()
