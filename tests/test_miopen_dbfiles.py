"""MIOpen's find-db, perf-db and kernel-db files, read and written as MIOpen reads them.

The real files are samples of what MIOpen ships (../shared/data/miopen/real) and a real fin
output; those tests skip, with the reason, where the shared data is absent.
"""

from __future__ import annotations

import base64
import bz2
import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from tuna.miopen.dbfiles import (
    DbFileError,
    FindDbEntry,
    KernelBlobError,
    KernelObject,
    PerfConfig,
    PerfEntry,
    check_problem_key,
    db_basename,
    find_db_name,
    format_find_db,
    format_perf_text,
    kernel_db_name,
    kernel_objects_in_fin_output,
    load_kernel,
    lookup_perf_sqlite,
    lookup_perf_text,
    parse_db_filename,
    parse_find_db,
    parse_perf_text,
    perf_db_name,
    read_find_db,
    read_kernel_db,
    read_perf_sqlite,
    read_perf_text,
    write_find_db,
    write_kernel_db,
    write_perf_sqlite,
    write_perf_text,
)
from tuna.miopen.dbfiles.perfdb import LOOKUP_SQL

# TUNA_SHARED_DATA points a checkout that is not beside ../shared (a git worktree) at the data.
SHARED = Path(os.environ.get("TUNA_SHARED_DATA", SHARED_DATA))
REAL = SHARED / "miopen" / "real"
FIN = SHARED / "miopen" / "fin"
needs_real = pytest.mark.skipif(
    not REAL.is_dir() or not FIN.is_dir(), reason=f"shared MIOpen data not found at {SHARED / 'miopen'}"
)

KEY_F = "1-1-1-3x3-2-3-3-256-0x0-1x1-1x1-0-NCHW-FP32-F"
KEY_B = "2048-7-7-1x1-1024-14-14-128-0x0-2x2-1x1-0-NCHW-FP32-B"
FWD_DIRECT = "miopenConvolutionFwdAlgoDirect"
FWD_GEMM = "miopenConvolutionFwdAlgoGEMM"


def reference_fastest(line: str) -> tuple[str, list[tuple[str, float, int, str]]]:
    """Independent of the module: a line's entries in current form, the 4 fastest positive ones."""
    key, _, contents = line.partition("=")
    entries = {}
    for item in contents.split(";"):
        ident, _, values = item.partition(":")
        parts = values.split(",")
        if ident.startswith("miopen"):  # legacy: algorithm:Solver,time,workspace,algorithm,unused
            solver, time, workspace, algorithm = parts[0], float(parts[1]), int(parts[2]), ident
        else:
            solver, time, workspace, algorithm = ident, float(parts[0]), int(parts[1]), parts[2]
        entries.setdefault(solver, (solver, time, workspace, algorithm))
    positive = sorted((e for e in entries.values() if e[1] > 0), key=lambda e: (e[1], e[0]))
    return key, positive[:4]


def as_tuples(entries: list[FindDbEntry]) -> list[tuple[str, float, int, str]]:
    return [(e.solver, e.time, e.workspace, e.algorithm) for e in entries]


# ---------------------------------------------------------------------------- find-db, real files


@needs_real
@pytest.mark.parametrize(
    ("path", "form"),
    [
        (REAL / "gfx90a68.HIP.fdb.txt", "current"),
        (REAL / "gfx906_60.HIP.fdb.txt", "legacy"),
        (FIN / "old_gfx90a68.HIP.fdb.txt", "legacy"),
        (FIN / "usr_gfx90a68.HIP.fdb.txt", "legacy"),
    ],
    ids=lambda value: value.name if isinstance(value, Path) else value,
)
def test_real_find_db_round_trip_keeps_four_fastest_positive(tmp_path: Path, path: Path, form: str) -> None:
    original = read_find_db(path)
    assert original.skipped == []
    assert (original.legacy_entries > 0, original.current_entries > 0) == (form == "legacy", form == "current")

    out = tmp_path / path.name
    stats = write_find_db(out, original.records)
    written = out.read_text()
    back = parse_find_db(written)

    assert back.skipped == [] and back.legacy_entries == 0
    expected = dict(reference_fastest(line) for line in path.read_text().splitlines() if line)
    expected = {key: entries for key, entries in expected.items() if entries}
    assert {key: as_tuples(entries) for key, entries in back.records.items()} == expected
    assert stats.keys == len(expected) and stats.entries == sum(map(len, expected.values()))
    for line in written.splitlines():
        for item in line.partition("=")[2].split(";"):
            solver, values = item.split(":")
            time, workspace, algorithm = values.split(",")
            assert float(time) > 0 and not solver.startswith("miopen") and algorithm.startswith("miopen")
    assert written.splitlines() == sorted(written.splitlines())


@needs_real
def test_real_current_find_db_drops_zero_times_and_legacy_keeps_four_of_five(tmp_path: Path) -> None:
    current = read_find_db(REAL / "gfx90a68.HIP.fdb.txt")
    _, stats = format_find_db(current.records)
    assert stats.dropped_not_positive == 42  # fin's "Invoker returned time = 0" entries in the shipped file
    legacy = read_find_db(REAL / "gfx906_60.HIP.fdb.txt")
    _, stats = format_find_db(legacy.records)
    assert stats.dropped_beyond_fastest == 4  # four keys hold five solvers


# ---------------------------------------------------------------------------- find-db, MIOpen's reading rules


def test_find_db_reader_follows_miopen() -> None:
    text = "\n".join(
        [
            "",
            f"{KEY_F}=miopenConvolutionFwdAlgoGEMM:GemmFwd1x1_0_1,0.5,64,miopenConvolutionFwdAlgoDirect,x;"
            f"ConvDirect:0.25,0,{FWD_DIRECT};ConvDirect:0.1,0,{FWD_DIRECT};Broken;"
            "ConvBad:0.2,0,miopenConvolutionBwdDataAlgoGEMM",
            f"{KEY_F}=Other:0.1,0,{FWD_DIRECT}",
            "no key here",
            f"{KEY_F.replace('NCHW', 'NHWC')}=A:1,0,{FWD_DIRECT}",
        ]
    )
    db = parse_find_db(text)
    assert as_tuples(db.records[KEY_F]) == [
        ("GemmFwd1x1_0_1", 0.5, 64, FWD_GEMM),  # legacy: the algorithm is the ID, not the 4th value
        ("ConvDirect", 0.25, 0, FWD_DIRECT),  # the first of a repeated solver
    ]
    assert list(db.records) == [KEY_F]
    reasons = [(s.line, s.reason) for s in db.skipped]
    assert [line for line, _ in reasons] == [2, 2, 2, 3, 4, 5]
    assert "duplicate solver 'ConvDirect'" in reasons[0][1]
    assert "has no ':'" in reasons[1][1]
    assert "Bad algorithm" in reasons[2][1]
    assert "duplicate key" in reasons[3][1]
    assert "NHWC-NHWC-NHWC" in reasons[5][1]


def test_find_db_never_writes_a_time_miopen_reads_as_zero_or_worse() -> None:
    bad_times = [0.0, -1.0, -0.0, float("nan"), float("inf"), 1e-40, 1e39]
    records = {
        KEY_F: [FindDbEntry(f"S{i}", t, 0, FWD_DIRECT) for i, t in enumerate(bad_times)]
        + [FindDbEntry("Good", 2.5, 0, FWD_DIRECT)],
        KEY_B: [FindDbEntry("Zero", 0.0, 0, "miopenConvolutionBwdDataAlgoDirect")],
    }
    text, stats = format_find_db(records)
    assert text == f"{KEY_F}=Good:2.5,0,{FWD_DIRECT}\n"
    assert (stats.dropped_not_positive, stats.keys_left_empty, stats.keys) == (len(bad_times) + 1, 1, 1)


def test_find_db_keeps_four_fastest_with_ties_by_solver_name() -> None:
    entries = [
        FindDbEntry(name, time, 0, FWD_DIRECT) for name, time in [("E", 5), ("D", 1), ("C", 1), ("B", 3), ("A", 4)]
    ]
    entries.append(FindDbEntry("B", 0.5, 8, FWD_GEMM))  # the same solver twice: the faster result stays
    text, _ = format_find_db({KEY_F: entries})
    assert text == f"{KEY_F}=B:0.5,8,{FWD_GEMM};C:1.0,0,{FWD_DIRECT};D:1.0,0,{FWD_DIRECT};A:4.0,0,{FWD_DIRECT}\n"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (KEY_F.replace("NCHW", "NHWC"), "MIOpen writes NHWC-NHWC-NHWC"),
        (KEY_F + "_g1", "writes no suffix for one group"),
        (KEY_F.replace("NCHW", "NCHW-NCHW-NCHW"), "MIOpen writes NCHW once"),
        (KEY_F.replace("FP32", "FP32FP32FP32"), "MIOpen writes FP32 for equal types"),
        (KEY_F + "_x2", "is not _g<G>"),
        ("1-1-1-3x3-2-3-3-256-0x0-1x1-1x1-0-NCHW-FP32-X", "direction 'X'"),
        ("a=b-1-1-3x3-2-3-3-256-0x0-1x1-1x1-0-NCHW-FP32-F", "holds characters MIOpen's keys cannot: '='"),
        ("1-1-1-3x3-2-3-3-256-0x0-1x1-0-NCHW-FP32-F", "14 fields"),
    ],
)
def test_find_db_refuses_a_key_miopen_cannot_look_up(key: str, message: str) -> None:
    with pytest.raises(DbFileError) as error:
        format_find_db({key: [FindDbEntry("S", 1.0, 0, FWD_DIRECT)]})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_problem_keys_miopen_writes_are_accepted() -> None:
    for key in [
        "1024-14-14-1x1-256-14-14-256-0x0-1x1-1x1-0-NHWC-NHWC-NHWC-FP16-W",
        "1024-1-14-14-1x3x3-1024-1-14-14-128-0x1x1-1x1x1-1x1x1-0-NCDHW-FP32-W_g32",
        "16-14-14-3x3-16-14-14-1-1x1-1x1-1x1-0-NCHW-INT8INT8INT32-F_g2_ciFP8_coBF8",
        "576-4-4-1x1-192-4-4-8-1x1-2x2-3x3-0-NHWC-NCHW-NCHW-FP32-F",
    ]:
        check_problem_key(key)


@pytest.mark.parametrize("solver", ["Conv'Quote", 'Conv"Dq', "Conv%d", "ConvOclBwdWrW2<1>", "Conv[4]"])
def test_find_db_names_with_quotes_and_percent_pass_unharmed(solver: str) -> None:
    text, _ = format_find_db({KEY_F: [FindDbEntry(solver, 0.125, 7, FWD_DIRECT)]})
    assert as_tuples(parse_find_db(text).records[KEY_F]) == [(solver, 0.125, 7, FWD_DIRECT)]


@pytest.mark.parametrize(("char", "why"), [(":", "first ':'"), (";", "on ';'"), ("=", "first '='"), (",", "on ','")])
@pytest.mark.parametrize("field", ["solver", "algorithm"])
def test_find_db_refuses_separators_inside_names(char: str, why: str, field: str) -> None:
    entry = FindDbEntry("Conv" + char + "X", 1.0, 0, FWD_DIRECT)
    if field == "algorithm":
        entry = FindDbEntry("Conv", 1.0, 0, FWD_DIRECT + char)
    with pytest.raises(DbFileError) as error:
        format_find_db({KEY_F: [entry]})
    text = str(error.value)
    assert f"contains {char!r}" in text and why in text and "\n" not in text


def test_find_db_refuses_white_space_and_wrong_direction_algorithm() -> None:
    with pytest.raises(DbFileError, match="does not trim"):
        format_find_db({KEY_F: [FindDbEntry("Conv X", 1.0, 0, FWD_DIRECT)]})
    with pytest.raises(DbFileError, match="Bad algorithm"):
        format_find_db({KEY_F: [FindDbEntry("Conv", 1.0, 0, "miopenConvolutionBwdWeightsAlgoGEMM")]})
    with pytest.raises(DbFileError, match="byte count"):
        format_find_db({KEY_F: [FindDbEntry("Conv", 1.0, -1, FWD_DIRECT)]})


def test_write_find_db_leaves_no_file_on_error(tmp_path: Path) -> None:
    out = tmp_path / "gfx90a68.HIP.fdb.txt"
    with pytest.raises(DbFileError):
        write_find_db(out, {KEY_F: [FindDbEntry("a;b", 1.0, 0, FWD_DIRECT)]})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- perf-db


def schema(path: Path) -> dict[str, object]:
    con = sqlite3.connect(path)
    try:
        tables = {
            name: [(c[1], c[2], c[3], c[5]) for c in con.execute(f"PRAGMA table_info({name})")]
            for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        indexes = {
            name: (table, [c[2] for c in con.execute(f"PRAGMA index_info({name})")], unique)
            for name, table, unique in con.execute(
                "SELECT m.name, m.tbl_name, l.[unique] FROM sqlite_master m, pragma_index_list(m.tbl_name) l "
                "WHERE m.type = 'index' AND l.name = m.name"
            )
        }
    finally:
        con.close()
    return {"tables": tables, "indexes": indexes}


@needs_real
def test_real_perf_db_round_trip_through_miopen_lookup(tmp_path: Path) -> None:
    original = REAL / "gfx906_60.db"
    entries = read_perf_sqlite(original)
    assert len(entries) == 571 and len({e.config for e in entries}) == 400
    out = tmp_path / "gfx906_60.db"
    stats = write_perf_sqlite(out, entries)
    assert (stats.configs, stats.entries, stats.duplicates_dropped) == (400, 571, 0)
    assert schema(out) == schema(original)
    for entry in entries:
        found = lookup_perf_sqlite(out, entry.config)
        assert found[entry.solver] == entry.params
        assert found == lookup_perf_sqlite(original, entry.config)

    text_path = tmp_path / "gfx906_60.db.txt"
    write_perf_text(text_path, entries)
    records = parse_perf_text(text_path.read_text())
    assert len(records) == 400
    for entry in entries:
        assert lookup_perf_text(records, entry.config)[entry.solver] == entry.params
    assert sorted(read_perf_text(text_path), key=repr) == sorted(entries, key=repr)


def test_perf_lookup_binds_text_so_int_columns_matter(tmp_path: Path) -> None:
    config = PerfConfig.from_key(KEY_B)
    good = tmp_path / "good.db"
    write_perf_sqlite(good, [PerfEntry(config, "ConvAsm1x1UV2", "32,1,16,2,1,1,2,4,4,1")])
    assert lookup_perf_sqlite(good, config) == {"ConvAsm1x1UV2": "32,1,16,2,1,1,2,4,4,1"}
    # The same rows in integer columns declared without a type (no affinity): MIOpen's
    # text-bound query compares '128' with 128 and finds nothing.
    bad = tmp_path / "bad.db"
    con = sqlite3.connect(bad)
    con.executescript(
        "CREATE TABLE config (id INTEGER PRIMARY KEY, "
        + ", ".join(c if i > 2 else f"{c} TEXT" for i, c in enumerate(config.__dict__))
        + "); CREATE TABLE perf_db (id INTEGER PRIMARY KEY, solver TEXT, config INTEGER, params TEXT);"
    )
    con.execute(f"INSERT INTO config VALUES (1, {','.join('?' * 24)})", list(config.__dict__.values()))
    con.execute("INSERT INTO perf_db VALUES (1, 'ConvAsm1x1UV2', 1, 'p')")
    con.commit()
    assert con.execute(LOOKUP_SQL, [str(v) for v in config.__dict__.values()]).fetchall() == []
    con.close()


def test_perf_config_from_keys_and_text_key() -> None:
    config = PerfConfig.from_key(KEY_B)
    assert config.text_key() == "2x2048x7x7x1x1x1x1x1024x128x0x0x0x2x2x0x1x1x0x0x1xNCHWxFP32xB"
    nhwc = PerfConfig.from_key("1024-14-14-1x1-256-28-28-256-0x0-2x2-1x1-0-NHWC-NCHW-NCHW-INT8INT8INT32-W_g4")
    assert (nhwc.layout, nhwc.data_type, nhwc.direction, nhwc.group_count) == ("NHWC", "INT8INT8INT32", "W", 4)
    three_d = PerfConfig.from_key("1024-1-14-14-1x3x3-1024-1-14-14-128-0x1x1-1x1x1-1x1x1-0-NCDHW-FP32-W_g32")
    assert (three_d.in_d, three_d.fil_d, three_d.pad_d, three_d.conv_stride_d, three_d.dilation_d) == (1, 1, 0, 1, 1)
    assert three_d.text_key().startswith("3x1024x14x14x1x3x3x1x1024x128x1x1x0x1x1x1x1x1x1x0x32xNCDHW")


@pytest.mark.parametrize(
    "params", ["DeviceConv2dFwdXdl_Input_N_Hi_Wi_C<256, 128, 128, 4, Default>", "a'b", 'q"q', "50%", "[3] x"]
)
def test_perf_params_with_quotes_spaces_and_percent_pass_unharmed(tmp_path: Path, params: str) -> None:
    config = PerfConfig.from_key(KEY_F)
    entry = PerfEntry(config, "ConvCkIgemmFwd", params)
    write_perf_sqlite(tmp_path / "p.db", [entry])
    assert lookup_perf_sqlite(tmp_path / "p.db", config) == {"ConvCkIgemmFwd": params}
    text, _ = format_perf_text([entry])
    assert lookup_perf_text(parse_perf_text(text), config) == {"ConvCkIgemmFwd": params}


@pytest.mark.parametrize("char", [":", ";", "=", "\n"])
def test_perf_params_with_separators_are_refused(tmp_path: Path, char: str) -> None:
    entry = PerfEntry(PerfConfig.from_key(KEY_F), "ConvCkIgemmFwd", f"1{char}2")
    with pytest.raises(DbFileError) as error:
        write_perf_sqlite(tmp_path / "p.db", [entry])
    assert f"contains {char!r}" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "p.db").exists()


def test_perf_config_refuses_rows_miopen_never_looks_up() -> None:
    config = PerfConfig.from_key(KEY_F)
    for change, message in [
        ({"in_d": 0}, "a 2-D problem has in_d 1"),
        ({"layout": "NC;HW"}, "not a 2-D tensor layout"),
        ({"data_type": "FP33"}, "not a MIOpen type name"),
        ({"direction": "X"}, "not F, B or W"),
    ]:
        bad = PerfConfig(**(config.__dict__ | change))
        with pytest.raises(DbFileError, match=message):
            format_perf_text([PerfEntry(bad, "S", "1")])


def test_perf_sqlite_small_or_foreign_files_are_refused(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.db"
    tiny.write_bytes(b"x" * 100)
    with pytest.raises(DbFileError, match="smaller than 512 bytes"):
        read_perf_sqlite(tiny)
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.executescript("CREATE TABLE config (id INTEGER PRIMARY KEY, layout TEXT); CREATE TABLE perf_db (x INT);")
    con.close()
    with pytest.raises(DbFileError, match="not MIOpen's schema"):
        read_perf_sqlite(other)


# ---------------------------------------------------------------------------- kernel-db


@needs_real
def test_kernel_db_from_real_fin_output_matches_md5_and_size(tmp_path: Path) -> None:
    output = json.loads((FIN / "fin_output_find_eval.json").read_text())
    kernels = list(kernel_objects_in_fin_output(output))
    assert len(kernels) == 1
    out = tmp_path / kernel_db_name("gfx906:sram-ecc+:xnack-", 60)
    stats = write_kernel_db(out, kernels, "gfx906:sram-ecc+:xnack-")
    assert (stats.written, stats.refused) == (1, [])
    assert out.name == "gfx906_60.kdb"
    assert schema(out) == {
        "tables": {
            "kern_db": [
                ("id", "INTEGER", 0, 1),
                ("kernel_name", "TEXT", 1, 0),
                ("kernel_args", "TEXT", 1, 0),
                ("kernel_blob", "BLOB", 1, 0),
                ("kernel_hash", "TEXT", 1, 0),
                ("uncompressed_size", "INT", 1, 0),
            ]
        },
        "indexes": {"idx_kern_db": ("kern_db", ["kernel_name", "kernel_args"], 1)},
    }
    (row,) = read_kernel_db(out)
    fin_kernel = kernels[0]
    assert row.kernel_name == "conv1x1u_stride2.s.o"
    assert row.kernel_args == fin_kernel.comp_options + " -mcpu=gfx906"
    # MIOpen's check: bzip2-decompress into exactly uncompressed_size bytes, compare the md5.
    code = bz2.decompress(row.kernel_blob)
    assert len(code) == row.uncompressed_size == 145576
    assert hashlib.md5(code).hexdigest() == row.kernel_hash == "9afa6cbaa2e2c982366ad27e15620ee5"
    assert code[:4] == b"\x7fELF"
    assert load_kernel(out, row.kernel_name, row.kernel_args) == code


def fin_kernel(code: bytes, **change: object) -> KernelObject:
    values = {
        "kernel_file": "k.s",
        "comp_options": "-DX=1",
        "blob": base64.b64encode(bz2.compress(code, 9)).decode(),
        "md5_sum": hashlib.md5(code).hexdigest(),
        "uncompressed_size": len(code),
    } | change
    return KernelObject.from_fin(values)


def test_kernel_db_refuses_blobs_miopen_would_reject(tmp_path: Path) -> None:
    code = b"\x7fELF" + bytes(range(256)) * 8
    packed = bz2.compress(code, 9)
    cases = {
        "md5": fin_kernel(code, md5_sum="0" * 32, kernel_file="a.s"),
        "size": fin_kernel(code, uncompressed_size=len(code) - 1, kernel_file="b.s"),
        "bigger": fin_kernel(code, uncompressed_size=len(code) + 1, kernel_file="c.s"),
        "base64": fin_kernel(code, blob="not base64!", kernel_file="d.s"),
        "bzip2": fin_kernel(code, blob=base64.b64encode(b"plain").decode(), kernel_file="e.s"),
        "trailing": fin_kernel(code, blob=base64.b64encode(packed + packed).decode(), kernel_file="f.s"),
        "quote": fin_kernel(code, comp_options="-DNAME='x'", kernel_file="g.s"),
    }
    failed = KernelObject.from_fin(
        {
            "kernel_file": "h.s",
            "comp_options": "",
            "blob": "",
            "md5_sum": "Failed to compress kernel",
            "uncompressed_size": 0,
        }
    )
    good = fin_kernel(code)
    mlir = fin_kernel(code, kernel_file="igemm.mlir")
    out = tmp_path / "gfx90a68.kdb"
    stats = write_kernel_db(out, [good, *cases.values(), failed, good, mlir], "gfx90a:sramecc+:xnack-")
    assert (stats.written, stats.duplicates, stats.dropped_uncompressed) == (2, 1, 1)
    assert len(stats.refused) == len(cases)
    for reason, needle in zip(
        stats.refused,
        [
            "md5",
            "more than uncompressed_size",
            "not uncompressed_size",
            "not base64",
            "not bzip2",
            "after its bzip2",
            "contain '",
        ],
    ):
        assert reason.startswith("kernel ") and needle in reason and "\n" not in reason
    names = {(r.kernel_name, r.kernel_args) for r in read_kernel_db(out)}
    assert names == {("k.s.o", "-DX=1 -mcpu=gfx90a"), ("igemm.mlir.o", "-DX=1")}
    with pytest.raises(KernelBlobError, match="md5"):
        write_kernel_db(tmp_path / "strict.kdb", [cases["md5"]], "gfx90a", strict=True)


def test_kernel_lookup_detects_corruption_like_miopen(tmp_path: Path) -> None:
    out = tmp_path / "gfx90a68.kdb"
    write_kernel_db(out, [fin_kernel(b"code" * 100)], "gfx90a")
    con = sqlite3.connect(out)
    con.execute("UPDATE kern_db SET kernel_hash = ?", ("0" * 32,))
    con.commit()
    con.close()
    with pytest.raises(KernelBlobError, match="Possible database corruption"):
        load_kernel(out, "k.s.o", "-DX=1 -mcpu=gfx90a")
    assert load_kernel(out, "k.s.o", "-DX=1") is None


# ---------------------------------------------------------------------------- file names


@pytest.mark.parametrize(
    ("target", "num_cu", "base"),
    [
        ("gfx90a:sramecc+:xnack-", 104, "gfx90a68"),
        ("gfx942", 304, "gfx942130"),
        ("gfx1030", 36, "gfx1030_36"),
        ("gfx906:sram-ecc+:xnack-", 60, "gfx906_60"),
        ("gfx908", 120, "gfx90878"),
        ("gfx90a", 110, "gfx90a6e"),
        ("gfx1100", 96, "gfx110060"),
        ("gfx90a:xnack+", 64, "gfx90a_xnack_64"),
        ("gfx90a", 170, "gfx90aaa"),
    ],
)
def test_file_names_both_ways(target: str, num_cu: int, base: str) -> None:
    assert db_basename(target, num_cu) == base
    assert find_db_name(target, num_cu) == base + ".HIP.fdb.txt"
    assert find_db_name(target, num_cu, opencl=True) == base + ".OpenCL.fdb.txt"
    assert perf_db_name(target, num_cu, sqlite=False) == base + ".db.txt"
    for name, kind in [
        (find_db_name(target, num_cu), "find"),
        (perf_db_name(target, num_cu, sqlite=True), "perf_sqlite"),
        (perf_db_name(target, num_cu, sqlite=False), "perf_text"),
        (kernel_db_name(target, num_cu), "kernel"),
    ]:
        parsed = parse_db_filename(Path("/some/dir") / name)
        assert (parsed.arch, parsed.num_cu, parsed.kind) == (target.split(":")[0], num_cu, kind)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("gfx908_70.db", "above 64 in hex"),
        ("gfx90a_68.HIP.fdb.txt", "above 64 in hex"),
        ("gfx90a40.kdb", "64 or less in decimal"),
        ("gfx906_060.db", "leading zeros"),
        ("gfx906_0.db", "not a positive number"),
        ("resnet.db", "not a MIOpen database name"),
        ("gfx906_60.sqlite", "does not end in"),
    ],
)
def test_file_names_miopen_would_never_open_are_refused(name: str, message: str) -> None:
    with pytest.raises(DbFileError, match=message):
        parse_db_filename(name)


@pytest.mark.parametrize("char", [":", ";", "=", ",", " "])
def test_perf_solver_names_with_separators_are_refused(char: str) -> None:
    with pytest.raises(DbFileError) as error:
        format_perf_text([PerfEntry(PerfConfig.from_key(KEY_F), f"Conv{char}X", "1,2")])
    assert f"contains {char!r}" in str(error.value) and "\n" not in str(error.value)
