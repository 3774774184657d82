"""The MIOpen database commands: import_db, update_golden, export_db, merge_db.

On both backends (tuna_env: SQLite and the real MariaDB). The round trips read MIOpen's own
files (../shared/data/miopen/real) and a real fin output, and skip with the reason where the
shared data is absent.

Every command runs as a user runs it, through ``go_fish.py miopen``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import SHARED_DATA, TunaEnv

from tuna.db.engine import make_engine
from tuna.miopen import tables as t
from tuna.miopen.dbcommands import add_db_subcommands
from tuna.miopen.dbfiles import (
    FindDbEntry,
    fastest_entries,
    kernel_objects_in_fin_output,
    load_kernel,
    lookup_perf_sqlite,
    lookup_perf_text,
    parse_perf_text,
    read_find_db,
    read_kernel_db,
    read_perf_sqlite,
)
from tuna.miopen.dbfiles.perfdb import PerfConfig

SHARED = Path(os.environ.get("TUNA_SHARED_DATA", SHARED_DATA))
REAL = SHARED / "miopen" / "real"
FIN = SHARED / "miopen" / "fin"
needs_real = pytest.mark.skipif(
    not REAL.is_dir() or not FIN.is_dir(), reason=f"shared MIOpen data not found at {SHARED / 'miopen'}"
)
KEY_F = "64-56-56-3x3-64-56-56-16-1x1-1x1-1x1-0-NCHW-FP32-F"
FWD_DIRECT = "miopenConvolutionFwdAlgoDirect"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(env: TunaEnv, *argv: str) -> Result:
    """One database subcommand, run as a user runs it: ``go_fish.py miopen <argv>``."""
    proc = env.run("miopen", *argv)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def ok(env: TunaEnv, *argv: str) -> str:
    result = run(env, *argv)
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def one_line_error(result: Result, text: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr


@pytest.fixture
def env(tuna_env: TunaEnv) -> TunaEnv:
    proc = tuna_env.run("miopen", "--add_tables")
    assert proc.returncode == 0, proc.stderr
    return tuna_env


def one(env: TunaEnv, sql: str, **params: Any) -> Any:
    return env.query(sql, **params)[0][0]


def session_of(stdout: str) -> int:
    return int(stdout.split(" into session ")[1].split(":")[0])


def expected_find(path: Path) -> dict[str, list[tuple[str, float, int, str]]]:
    """What MIOpen would use of a find-db: per key its 4 fastest positive-time solvers."""
    expected = {}
    for key, entries in read_find_db(path).records.items():
        kept = fastest_entries(entries)
        if kept:
            expected[key] = [(e.solver, e.time, e.workspace, e.algorithm) for e in kept]
    return expected


def exported_find(path: Path) -> dict[str, list[tuple[str, float, int, str]]]:
    db = read_find_db(path)
    assert db.skipped == [] and db.legacy_entries == 0
    return {k: [(e.solver, e.time, e.workspace, e.algorithm) for e in v] for k, v in db.records.items()}


@needs_real
def test_real_round_trip_import_golden_export(env: TunaEnv, tmp_path: Path) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    current = ok(env, "import_db", "-t", str(REAL / "gfx90a68.HIP.fdb.txt"), "--rocm_v", "6.2", "--miopen_v", "3.2")
    import_s = time.monotonic() - started
    assert import_s < 10, f"importing 3,000 find-db records took {import_s:.1f} s"
    s_90a = session_of(current)
    legacy = ok(env, "import_db", "-t", str(REAL / "gfx906_60.HIP.fdb.txt"), "--rocm_v", "6.2", "--miopen_v", "3.2")
    s_906 = session_of(legacy)
    ok(env, "import_db", "-t", str(REAL / "gfx906_60.db"), "--session_id", str(s_906))
    assert one(env, "SELECT arch, num_cu FROM session WHERE id = :s", s=s_90a) == "gfx90a"
    assert tuple(env.query("SELECT arch, num_cu FROM session WHERE id = :s", s=s_906)[0]) == ("gfx906", 60)

    assert "golden version 1: 9689 rows added" in ok(
        env, "update_golden", "--golden_v", "1", "--session_id", str(s_90a)
    )
    ok(env, "update_golden", "--golden_v", "2", "--session_id", str(s_906))

    paths = ok(env, "export_db", "--golden_v", "1", "-a", "gfx90a", "-f", "-d", str(out)).split()
    assert paths == [str(out / "gfx90a68.HIP.fdb.txt")]
    assert exported_find(out / "gfx90a68.HIP.fdb.txt") == expected_find(REAL / "gfx90a68.HIP.fdb.txt")
    paths = ok(env, "export_db", "--golden_v", "2", "-a", "gfx906", "-n", "60", "-f", "-d", str(out)).split()
    assert paths == [str(out / "gfx906_60.HIP.fdb.txt")]
    assert exported_find(out / "gfx906_60.HIP.fdb.txt") == expected_find(REAL / "gfx906_60.HIP.fdb.txt")
    text = (out / "gfx90a68.HIP.fdb.txt").read_text()
    assert text.endswith("\n") and "\n\n" not in text
    assert list(exported_find(out / "gfx90a68.HIP.fdb.txt")) == sorted(exported_find(out / "gfx90a68.HIP.fdb.txt"))

    paths = ok(env, "export_db", "--golden_v", "2", "-a", "gfx906", "-p", "-d", str(out)).split()
    assert paths == [str(out / "gfx906_60.db"), str(out / "gfx906_60.db.txt")]
    original = read_perf_sqlite(REAL / "gfx906_60.db")
    text_records = parse_perf_text((out / "gfx906_60.db.txt").read_text())
    for entry in original:
        assert lookup_perf_sqlite(out / "gfx906_60.db", entry.config).get(entry.solver) == entry.params, entry
        assert lookup_perf_text(text_records, entry.config).get(entry.solver) == entry.params, entry
    assert len(read_perf_sqlite(out / "gfx906_60.db")) == len(original)


@needs_real
def test_kernel_db_from_a_real_fin_output_decompresses_and_matches(env: TunaEnv, tmp_path: Path) -> None:
    output = json.loads((FIN / "fin_output_find_eval.json").read_text())
    job = output[1]
    key = job["db_key"]
    (tmp_path / "gfx906_60.HIP.fdb.txt").write_text(f"{key}=ConvAsm1x1UV2:1.0,0,miopenConvolutionBwdDataAlgoDirect\n")
    session = session_of(
        ok(env, "import_db", "-t", str(tmp_path / "gfx906_60.HIP.fdb.txt"), "--rocm_v", "6.2", "--miopen_v", "3.2")
    )
    result = job["miopen_find_eval_result"][0]
    kernels = list(kernel_objects_in_fin_output(output))
    assert kernels
    engine = make_engine(env.settings.db_url)
    with engine.begin() as conn:
        row = conn.execute(sa.select(t.conv_find_db.c.id).where(t.conv_find_db.c.session == session)).scalar_one()
        conn.execute(
            t.conv_find_db.update().where(t.conv_find_db.c.id == row),
            {"kernel_time": result["time"], "params": result["params"], "kernel_group": row},
        )
        conn.execute(
            t.conv_kernel_cache.insert(),
            [
                {
                    "kernel_name": k.kernel_file,
                    "kernel_args": k.comp_options,
                    "kernel_blob": k.blob.encode(),  # fin's base64 text, as MITuna stores it
                    "kernel_hash": k.md5_sum,
                    "uncompressed_size": k.uncompressed_size,
                    "kernel_group": row,
                }
                for k in kernels
            ],
        )
    engine.dispose()
    paths = ok(env, "export_db", "--session_id", str(session), "-k", "-d", str(tmp_path / "out")).split()
    assert paths == [str(tmp_path / "out" / "gfx906_60.kdb")]
    rows = read_kernel_db(paths[0])
    assert len(rows) == len({(k.kernel_file, k.comp_options) for k in kernels})
    for k in kernels:
        code = load_kernel(paths[0], k.kernel_file + ".o", k.comp_options + " -mcpu=gfx906")
        assert code is not None
        assert hashlib.md5(code).hexdigest() == k.md5_sum and len(code) == k.uncompressed_size
    with sqlite3.connect(paths[0]) as con:
        index = con.execute("SELECT sql FROM sqlite_master WHERE name = 'idx_kern_db'").fetchone()[0]
    assert "kernel_name, kernel_args" in index


def write_find(path: Path, records: dict[str, list[FindDbEntry]]) -> Path:
    lines = [
        key + "=" + ";".join(f"{e.solver}:{e.time},{e.workspace},{e.algorithm}" for e in es)
        for key, es in records.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def imported(env: TunaEnv, path: Path, *extra: str) -> int:
    return session_of(ok(env, "import_db", "-t", str(path), "--rocm_v", "6.2", "--miopen_v", "3.2", *extra))


def test_export_errors_are_one_line(env: TunaEnv, tmp_path: Path) -> None:
    one_line_error(run(env, "export_db", "--golden_v", "1", "-f"), "--golden_v needs -a/--arch")
    one_line_error(run(env, "export_db", "--golden_v", "7", "-a", "gfx90a", "-f"), "golden version 7 has no rows")
    one_line_error(run(env, "update_golden", "--golden_v", "1"), "needs --session_id and/or --base_golden_v")
    result = run(env, "export_db", "--session_id", "99", "-f", "-d", str(tmp_path))
    assert result.returncode == 3 and "no session with id 99" in result.stderr
    assert run(env, "export_db", "-f").returncode == 2  # argparse: one of --session_id/--golden_v


def test_update_golden_refuses_an_existing_version_and_session_results_override_base(
    env: TunaEnv, tmp_path: Path
) -> None:
    first = write_find(
        tmp_path / "gfx90a68.HIP.fdb.txt",
        {KEY_F: [FindDbEntry("ConvA", 2.0, 0, FWD_DIRECT), FindDbEntry("ConvB", 3.0, 0, FWD_DIRECT)]},
    )
    s1 = imported(env, first)
    ok(env, "update_golden", "--golden_v", "1", "--session_id", str(s1))
    one_line_error(run(env, "update_golden", "--golden_v", "1", "--session_id", str(s1)), "give -o/--overwrite")
    # A newer session: ConvA got faster; ConvB only tuned (perf-db row, no time).
    (tmp_path / "new").mkdir()
    newer = write_find(tmp_path / "new" / "gfx90a68.HIP.fdb.txt", {KEY_F: [FindDbEntry("ConvA", 1.5, 8, FWD_DIRECT)]})
    s2 = session_of(ok(env, "import_db", "-t", str(newer), "--rocm_v", "6.3", "--miopen_v", "3.3"))
    perf = tmp_path / "gfx90a68.db.txt"
    config = PerfConfig.from_key(KEY_F)
    perf.write_text(config.text_key() + "=ConvB:4,4,1\n")
    ok(env, "import_db", "-t", str(perf), "--session_id", str(s2))
    summary = ok(env, "update_golden", "--golden_v", "2", "--base_golden_v", "1", "--session_id", str(s2))
    assert "golden version 2: 2 rows added, 0 updated (read 2 base rows, 2 session rows)" in summary
    out = tmp_path / "out"
    ok(env, "export_db", "--golden_v", "2", "-a", "gfx90a", "-f", "-d", str(out))
    assert exported_find(out / "gfx90a68.HIP.fdb.txt") == {
        KEY_F: [("ConvA", 1.5, 8, FWD_DIRECT), ("ConvB", 3.0, 0, FWD_DIRECT)]
    }
    ok(env, "export_db", "--golden_v", "2", "-a", "gfx90a", "-p", "-d", str(out))
    assert lookup_perf_sqlite(out / "gfx90a68.db", config) == {"ConvB": "4,4,1"}
    # -o on an existing version: the session's row replaces the version's own.
    ok(env, "update_golden", "--golden_v", "1", "--session_id", str(s2), "-o")
    ok(env, "export_db", "--golden_v", "1", "-a", "gfx90a", "-f", "-d", str(out))
    assert exported_find(out / "gfx90a68.HIP.fdb.txt")[KEY_F][0] == ("ConvA", 1.5, 8, FWD_DIRECT)
    # MITuna's comparison table over versions V-2..V: fastest positive time per config.
    assert ok(env, "update_golden", "--golden_v", "2", "--create_perf_table").split() == ["conv_gv012"]
    rows = env.query("SELECT arch, num_cu, k1, k2, k3, gv4_5, gv5_6 FROM conv_gv012")
    assert [tuple(r) for r in rows] == [("gfx90a", 104, None, 1.5, 1.5, None, 0.0)]


def test_export_never_writes_a_time_of_zero_and_honours_config_tag(env: TunaEnv, tmp_path: Path) -> None:
    other = KEY_F.replace("-16-", "-32-")
    path = write_find(
        tmp_path / "gfx906_60.HIP.fdb.txt",
        {
            KEY_F: [FindDbEntry("ConvA", 1.0, 0, FWD_DIRECT), FindDbEntry("ConvB", 2.0, 0, FWD_DIRECT)],
            other: [FindDbEntry("ConvA", 1.0, 0, FWD_DIRECT)],
        },
    )
    session = imported(env, path)
    # A time of 0 as fin reports it, stored by a tuning run.
    env.query_commit(
        "UPDATE conv_find_db SET kernel_time = 0 WHERE fdb_key = :k AND solver = "
        "(SELECT id FROM solver WHERE solver = 'ConvA')",
        k=KEY_F,
    )
    config = one(env, "SELECT config FROM conv_find_db WHERE fdb_key = :k LIMIT 1", k=KEY_F)
    tag = "net'v1;a:b=c%d"
    env.query_commit("INSERT INTO conv_config_tags (config, tag) VALUES (:c, :t)", c=config, t=tag)
    out = tmp_path / "out"
    ok(env, "export_db", "--session_id", str(session), "-f", "-d", str(out))
    assert exported_find(out / "gfx906_60.HIP.fdb.txt") == {
        KEY_F: [("ConvB", 2.0, 0, FWD_DIRECT)],
        other: [("ConvA", 1.0, 0, FWD_DIRECT)],
    }
    ok(
        env,
        "export_db",
        "--session_id",
        str(session),
        "-f",
        "--config_tag",
        tag,
        "--filename",
        "tagged",
        "-d",
        str(out),
    )
    assert list(exported_find(out / "tagged.HIP.fdb.txt")) == [KEY_F]


def test_quotes_and_percent_pass_separators_are_refused_with_a_line(env: TunaEnv, tmp_path: Path) -> None:
    path = write_find(
        tmp_path / "gfx906_60.HIP.fdb.txt",
        {KEY_F: [FindDbEntry("Conv'Q\"%d", 1.0, 0, FWD_DIRECT), FindDbEntry("ConvB", 2.0, 0, FWD_DIRECT)]},
    )
    session = imported(env, path)
    # Names a tuning run could have stored that no MIOpen file can carry.
    engine = make_engine(env.settings.db_url)
    with engine.begin() as conn:
        config = conn.execute(sa.select(t.conv_find_db.c.config)).scalars().first()
        for name in ("Conv;Semi", "Conv=Eq"):
            solver = conn.execute(t.solver.insert().values(solver=name, tunable=True)).inserted_primary_key[0]
            conn.execute(
                t.conv_find_db.insert().values(
                    config=config,
                    solver=solver,
                    session=session,
                    opencl=False,
                    fdb_key=KEY_F,
                    kernel_time=0.5,
                    workspace_sz=0,
                    alg_lib=FWD_DIRECT,
                    params="1,2",
                )
            )
        conn.execute(t.solver.update().where(t.solver.c.solver == "Conv'Q\"%d"), {"tunable": True})
        conn.execute(
            t.conv_find_db.update().where(t.conv_find_db.c.kernel_time == 1.0), {"params": "a'b\"c%d<1, 2>[3]"}
        )
        conn.execute(t.conv_find_db.update().where(t.conv_find_db.c.kernel_time == 2.0), {"params": "1;2"})
    engine.dispose()
    out = tmp_path / "out"
    result = run(env, "export_db", "--session_id", str(session), "-f", "-d", str(out))
    assert result.returncode == 0 and result.stdout.split() == [str(out / "gfx906_60.HIP.fdb.txt")]
    assert "contains ';'" in result.stderr and "contains '='" in result.stderr
    assert exported_find(out / "gfx906_60.HIP.fdb.txt") == {
        KEY_F: [("Conv'Q\"%d", 1.0, 0, FWD_DIRECT), ("ConvB", 2.0, 0, FWD_DIRECT)]
    }
    result = run(env, "export_db", "--session_id", str(session), "-p", "-d", str(out))
    assert result.returncode == 0 and "params of solver 'ConvB'" in result.stderr
    assert lookup_perf_sqlite(out / "gfx906_60.db", PerfConfig.from_key(KEY_F)) == {"Conv'Q\"%d": "a'b\"c%d<1, 2>[3]"}


def test_import_refuses_files_it_cannot_place(env: TunaEnv, tmp_path: Path) -> None:
    odd = write_find(tmp_path / "usr_gfx90a68.HIP.fdb.txt", {KEY_F: [FindDbEntry("ConvA", 1.0, 0, FWD_DIRECT)]})
    one_line_error(run(env, "import_db", "-t", str(odd), "--rocm_v", "1", "--miopen_v", "1"), "give -a/--arch")
    session = imported(env, odd, "-a", "gfx942", "-n", "304")
    assert tuple(env.query("SELECT arch, num_cu FROM session WHERE id = :s", s=session)[0]) == ("gfx942", 304)
    good = write_find(tmp_path / "gfx906_60.HIP.fdb.txt", {KEY_F: [FindDbEntry("ConvA", 1.0, 0, FWD_DIRECT)]})
    one_line_error(run(env, "import_db", "-t", str(good), "--session_id", str(session)), "but session")
    one_line_error(run(env, "import_db", "-t", str(good)), "--rocm_v and --miopen_v")
    # Importing the same file twice changes no row count.
    again = imported(env, good)
    before = one(env, "SELECT COUNT(*) FROM conv_find_db")
    assert imported(env, good) == again and one(env, "SELECT COUNT(*) FROM conv_find_db") == before


@needs_real
def test_merge_db_matches_entries_by_solver_in_both_forms(tmp_path: Path) -> None:
    from tuna.miopen.merge_db import merge_db

    master = REAL / "gfx906_60.HIP.fdb.txt"
    records = read_find_db(master).records
    key = next(k for k, v in records.items() if len(v) >= 2)
    first = records[key][0]
    target = write_find(tmp_path / "new.HIP.fdb.txt", {key: [FindDbEntry(first.solver, 0.001, 0, first.algorithm)]})
    merged = exported_find(merge_db(master, target, "find", keep_keys=True, output_dir=tmp_path / "k")[0])
    assert merged[key][0] == (first.solver, 0.001, 0, first.algorithm)
    assert {e[0] for e in merged[key]} == {e.solver for e in records[key] if e.time > 0}
    assert len(merged) == len(records)
    replaced = exported_find(merge_db(master, target, "find", output_dir=tmp_path / "r")[0])
    assert replaced[key] == [(first.solver, 0.001, 0, first.algorithm)]

    perf = merge_db(REAL / "gfx906_60.db", REAL / "gfx906_60.db", "perf", output_dir=tmp_path / "p")[0]
    assert sorted(map(str, read_perf_sqlite(perf))) == sorted(map(str, read_perf_sqlite(REAL / "gfx906_60.db")))


def test_kernel_rows_miopen_would_reject_are_left_out(env: TunaEnv, tmp_path: Path) -> None:
    import bz2

    path = write_find(tmp_path / "gfx906_60.HIP.fdb.txt", {KEY_F: [FindDbEntry("ConvA", 1.0, 0, FWD_DIRECT)]})
    session = imported(env, path)
    code = b"\x7fELF" + bytes(range(200))
    good = base64.b64encode(bz2.compress(code, 9))
    engine = make_engine(env.settings.db_url)
    with engine.begin() as conn:
        row = conn.execute(sa.select(t.conv_find_db.c.id)).scalar_one()
        conn.execute(t.conv_find_db.update(), {"kernel_group": row})
        base = {"kernel_blob": good, "kernel_hash": hashlib.md5(code).hexdigest(), "uncompressed_size": len(code)}
        conn.execute(
            t.conv_kernel_cache.insert(),
            [
                {**base, "kernel_name": "ok.s", "kernel_args": "-Wa,-defsym,x=1", "kernel_group": row},
                {**base, "kernel_name": "quote.s", "kernel_args": "-DNAME='x'", "kernel_group": row},
                {**base, "kernel_name": "badmd5.s", "kernel_args": "", "kernel_hash": "0" * 32, "kernel_group": row},
                {**base, "kernel_name": "size.s", "kernel_args": "", "uncompressed_size": 10, "kernel_group": row},
            ],
        )
    engine.dispose()
    result = run(env, "export_db", "--session_id", str(session), "-k", "-d", str(tmp_path / "out"))
    assert result.returncode == 0, result
    rows = read_kernel_db(tmp_path / "out" / "gfx906_60.kdb")
    assert [(r.kernel_name, r.kernel_args) for r in rows] == [("ok.s.o", "-Wa,-defsym,x=1 -mcpu=gfx906")]
    assert "breaks MIOpen's quoted lookup" in result.stderr and "md5" in result.stderr


@needs_real
def test_one_key_grammar_for_driver_keys_and_database_files() -> None:
    from tuna.miopen.dbfiles import check_problem_key
    from tuna.miopen.keys import parse_key

    for name in ("gfx90a68.HIP.fdb.txt", "gfx906_60.HIP.fdb.txt"):
        for key in read_find_db(REAL / name).records:
            assert check_problem_key(key) == parse_key(key)


def test_opencl_rows_and_quoted_versions(env: TunaEnv, tmp_path: Path) -> None:
    path = write_find(tmp_path / "gfx1030_36.OpenCL.fdb.txt", {KEY_F: [FindDbEntry("ConvA", 1.25, 0, FWD_DIRECT)]})
    version = "6.2'rc;1:x=y%s"
    session = session_of(ok(env, "import_db", "-t", str(path), "--rocm_v", version, "--miopen_v", version))
    assert env.query("SELECT rocm_v, arch, num_cu FROM session WHERE id = :s", s=session)[0] == (version, "gfx1030", 36)
    assert one(env, "SELECT COUNT(*) FROM conv_find_db WHERE opencl = :o", o=True) == 1
    out = tmp_path / "out"
    assert ok(env, "export_db", "--session_id", str(session), "-f", "-c", "-d", str(out)).split() == [
        str(out / "gfx1030_36.OpenCL.fdb.txt")
    ]
    assert exported_find(out / "gfx1030_36.OpenCL.fdb.txt") == {KEY_F: [("ConvA", 1.25, 0, FWD_DIRECT)]}
    ok(env, "export_db", "--session_id", str(session), "-f", "-d", str(out))
    assert (out / "gfx1030_36.HIP.fdb.txt").read_text() == ""


def test_perf_rows_of_strided_backward_problems_find_the_config_of_their_key(env: TunaEnv, tmp_path: Path) -> None:
    # §11.25: MITuna back-computes input 13 for this row, a config MIOpen never asked for.
    key = "2048-7-7-1x1-1024-14-14-128-0x0-2x2-1x1-0-NCHW-FP32-B"
    bwd = "miopenConvolutionBwdDataAlgoDirect"
    session = imported(
        env, write_find(tmp_path / "gfx906_60.HIP.fdb.txt", {key: [FindDbEntry("ConvAsm1x1UV2", 2.5, 0, bwd)]})
    )
    perf = tmp_path / "gfx906_60.db.txt"
    perf.write_text(PerfConfig.from_key(key).text_key() + "=ConvAsm1x1UV2:32,1,16,2,1,1,2,4,4,1\n")
    assert "0 rows added, 1 updated, 0 new configs" in ok(
        env, "import_db", "-t", str(perf), "--session_id", str(session)
    )
    assert env.query("SELECT fdb_key, params, kernel_time FROM conv_find_db") == [(key, "32,1,16,2,1,1,2,4,4,1", 2.5)]
    # Alone, the row gets the smallest input whose key gives back the same perf-db row.
    other = tmp_path / "p" / "gfx906_60.db.txt"
    other.parent.mkdir()
    other.write_text(PerfConfig.from_key(key).text_key().replace("x128x", "x64x") + "=ConvAsm1x1UV2:1,2\n")
    ok(env, "import_db", "-t", str(other), "--session_id", str(session))
    new_key = one(env, "SELECT fdb_key FROM conv_find_db WHERE params = '1,2'")
    assert new_key == key.replace("-128-", "-64-").replace("-14-14-", "-13-13-")
    assert PerfConfig.from_key(new_key) == PerfConfig.from_key(key.replace("-128-", "-64-"))


def test_options_given_before_the_subcommand_are_kept(env: TunaEnv, tmp_path: Path) -> None:
    # go_fish's miopen parser has its own -a/-n/--session_id; a subcommand must not hide them.
    top = argparse.ArgumentParser()
    top.add_argument("-a", "--arch")
    top.add_argument("-n", "--num_cu", type=int)
    top.add_argument("--session_id", type=int)
    add_db_subcommands(top.add_subparsers(dest="subcommand", required=True))
    args = top.parse_args(["-a", "gfx90a", "--session_id", "4", "export_db", "--golden_v", "1", "-f"])
    assert (args.arch, args.session_id, args.golden_v) == ("gfx90a", 4, 1)
    args = top.parse_args(["export_db", "-a", "gfx906", "--golden_v", "1", "-f"])
    assert (args.arch, args.session_id) == ("gfx906", None)
    one_line_error(
        run(env, "export_db", "--session_id", "1", "--golden_v", "1", "-f"), "exactly one of --session_id or --golden_v"
    )


def test_stored_keys_miopen_cannot_look_up_are_left_out_with_a_line(env: TunaEnv, tmp_path: Path) -> None:
    path = write_find(tmp_path / "gfx906_60.HIP.fdb.txt", {KEY_F: [FindDbEntry("ConvA", 1.0, 0, FWD_DIRECT)]})
    session = imported(env, path)
    single_nhwc = KEY_F.replace("NCHW", "NHWC")
    env.query_commit("UPDATE conv_find_db SET fdb_key = :k", k=single_nhwc)
    result = run(env, "export_db", "--session_id", str(session), "-f", "-d", str(tmp_path / "out"))
    assert result.returncode == 0 and (tmp_path / "out" / "gfx906_60.HIP.fdb.txt").read_text() == ""
    assert "left out 1: not a MIOpen problem key" in result.stderr and "NHWC-NHWC-NHWC" in result.stderr
    # A row without a stored key is exported under its config's key.
    env.query_commit("UPDATE conv_find_db SET fdb_key = NULL")
    ok(env, "export_db", "--session_id", str(session), "-f", "-d", str(tmp_path / "out"))
    assert exported_find(tmp_path / "out" / "gfx906_60.HIP.fdb.txt") == {KEY_F: [("ConvA", 1.0, 0, FWD_DIRECT)]}


def test_golden_export_without_num_cu_writes_one_file_per_cu_count(env: TunaEnv, tmp_path: Path) -> None:
    for name, time_ms in (("gfx906_60", 1.0), ("gfx906_64", 2.0)):
        (tmp_path / name).mkdir()
        path = write_find(
            tmp_path / name / f"{name}.HIP.fdb.txt", {KEY_F: [FindDbEntry("ConvA", time_ms, 0, FWD_DIRECT)]}
        )
        session = imported(env, path)
        ok(env, "update_golden", "--golden_v", "3", "--session_id", str(session), "-o")
    out = tmp_path / "out"
    paths = ok(env, "export_db", "--golden_v", "3", "-a", "gfx906", "-f", "-d", str(out)).split()
    assert paths == [str(out / "gfx906_60.HIP.fdb.txt"), str(out / "gfx906_64.HIP.fdb.txt")]
    assert exported_find(out / "gfx906_64.HIP.fdb.txt") == {KEY_F: [("ConvA", 2.0, 0, FWD_DIRECT)]}
    one_line_error(
        run(env, "export_db", "--golden_v", "3", "-a", "gfx906", "-f", "--filename", "x", "-d", str(out)),
        "holds CU counts 60, 64: give -n",
    )


def test_merge_db_into_a_directory_of_masters_writes_each_and_the_aliases(tmp_path: Path) -> None:
    from tuna.miopen.merge_db import merge_db

    masters = tmp_path / "masters"
    masters.mkdir()
    for name in ("gfx900_64", "gfx906_60", "gfx803_36"):
        write_find(masters / f"{name}.HIP.fdb.txt", {KEY_F: [FindDbEntry("ConvA", 3.0, 0, FWD_DIRECT)]})
    (masters / "notes.txt").write_text("not a database\n")
    target = write_find(tmp_path / "t.HIP.fdb.txt", {KEY_F: [FindDbEntry("ConvB", 1.0, 0, FWD_DIRECT)]})
    out = tmp_path / "out"
    written = merge_db(masters, target, "find", keep_keys=True, output_dir=out)
    names = ["gfx900_64", "gfx803_36", "gfx803_64", "gfx906_60"]
    assert written == [out / f"{n}.HIP.fdb.txt" for n in names]
    for path in written:
        assert exported_find(path) == {KEY_F: [("ConvB", 1.0, 0, FWD_DIRECT), ("ConvA", 3.0, 0, FWD_DIRECT)]}


def test_merge_db_kernel_dbs_target_wins_and_type_flag_is_required(env: TunaEnv, tmp_path: Path) -> None:
    import bz2

    from tuna.miopen.dbfiles import KernelObject, write_kernel_db

    def kernel(code: bytes, args: str) -> KernelObject:
        blob = base64.b64encode(bz2.compress(code, 9)).decode()
        return KernelObject("conv.s", args, blob, hashlib.md5(code).hexdigest(), len(code))

    master, target = tmp_path / "gfx90a68.kdb", tmp_path / "new.kdb"
    write_kernel_db(master, [kernel(b"old" * 50, "-DA=1"), kernel(b"keep" * 50, "-DB=1")], "gfx90a")
    write_kernel_db(target, [kernel(b"new" * 50, "-DA=1")], "gfx90a")
    result = run(env, "merge_db", "-m", str(master), "-t", str(target), "-b", "-d", str(tmp_path / "out"))
    assert result.returncode == 0 and result.stdout.split() == [str(tmp_path / "out" / "gfx90a68.kdb")]
    merged = tmp_path / "out" / "gfx90a68.kdb"
    assert load_kernel(merged, "conv.s.o", "-DA=1 -mcpu=gfx90a") == b"new" * 50
    assert load_kernel(merged, "conv.s.o", "-DB=1 -mcpu=gfx90a") == b"keep" * 50
    one_line_error(run(env, "merge_db", "-m", str(master), "-t", str(target)), "Must specify one of perf_db")
