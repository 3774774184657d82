"""``import_db``: MIOpen's own find-db and perf-db files into a session's conv_find_db rows.

reference/miopen.md §9.7 and §13. The file name gives arch and CU count by MIOpen's naming
rule (any arch; ``-a``/``-n`` for a file named otherwise). Accepted:

* find-db text, both entry forms (``Solver:time,ws,alg`` and the legacy
  ``alg:Solver,time,ws,alg,x``): one conv_find_db row per (key, solver) with the key kept
  verbatim in ``fdb_key``; ``-OpenCL`` files give ``opencl`` 1. An entry whose time MIOpen
  would not read as positive is not imported (it could never be exported), nor a line MIOpen
  itself would skip; both are counted.
* perf-db, SQLite in MIOpen's schema (``.db``) or text (``.db.txt``): params of each
  (config, solver), on a new row with kernel_time and workspace -1 or on the session's
  existing row for the same config and solver. A perf-db row has no input size for B and W
  problems (its first group is the output side, §13.3); of the input sizes that give that
  output (stride > 1 allows several) an existing config is preferred, else the smallest,
  whose key gives back the very same perf-db row (MITuna's back-computation, §11.25, picks
  a config MIOpen never asked for).

Configs and tensors are found by identity (md5) or created; unknown solvers are created.
Rows are written in bulk, a few statements per thousand records.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tuna.config import Settings
from tuna.db.engine import Database
from tuna.errors import BadInput
from tuna.miopen import tables as t
from tuna.miopen.dbfiles import DbFileError, PerfConfig, PerfEntry, read_find_db, read_perf_sqlite, read_perf_text
from tuna.miopen.dbfiles.finddb import usable_time
from tuna.miopen.dbfiles.names import DbFileName, parse_db_filename
from tuna.miopen.dbfiles.problem_key import DATA_TYPE_TOKEN, check_problem_key
from tuna.miopen.dbstore import (
    ConfigRows,
    chunks,
    config_rows,
    ensure_configs,
    ensure_session,
    ensure_solvers,
    session_row,
)
from tuna.miopen.keys import problem_key
from tuna.miopen.problem import ConvProblem, DriverError, conv_from_rows, conv_problem

log = logging.getLogger(__name__)


@dataclass
class ImportStats:
    session: int = 0
    kind: str = ""
    records: int = 0
    added: int = 0
    updated: int = 0
    configs_before: int = 0
    configs_after: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def lines(self, path: str) -> list[str]:
        out = [
            f"{path}: {self.records} records read into session {self.session}: {self.added} rows added, "
            f"{self.updated} updated, {self.configs_after - self.configs_before} new configs"
        ]
        out += [f"skipped {count}: {reason}" for reason, count in sorted(self.skipped.items())]
        return out


def file_identity(path: Path, arch: str | None, num_cu: int | None) -> DbFileName:
    """Arch, CUs and kind from MIOpen's file name; ``-a``/``-n`` override them."""
    try:
        name = parse_db_filename(path)
    except DbFileError as error:
        kind = next((k for ext, k in _KINDS.items() if path.name.endswith(ext)), None)
        if kind is None:
            raise BadInput(
                f"{path.name} is not a find-db (.HIP.fdb.txt, .OpenCL.fdb.txt) or perf-db (.db, .db.txt) file"
            ) from None
        if arch is None or num_cu is None:
            raise BadInput(f"{error}; give -a/--arch and -n/--num_cu for a file named otherwise") from None
        return DbFileName(arch, num_cu, arch, kind[0], kind[1])
    return DbFileName(arch or name.arch, num_cu or name.num_cu, name.db_id, name.kind, name.backend)


_KINDS = {
    ".HIP.fdb.txt": ("find", "HIP"),
    ".OpenCL.fdb.txt": ("find", "OpenCL"),
    ".db.txt": ("perf_text", None),
    ".db": ("perf_sqlite", None),
}


def import_db(
    settings: Settings,
    path: str | Path,
    *,
    session_id: int | None = None,
    rocm_v: str | None = None,
    miopen_v: str | None = None,
    arch: str | None = None,
    num_cu: int | None = None,
) -> ImportStats:
    file = Path(path)
    if not file.is_file():
        raise BadInput(f"{file}: no such file")
    ident = file_identity(file, arch, num_cu)
    if ident.kind == "kernel":
        raise BadInput(f"{file}: import_db reads find-db and perf-db files, not kernel-db (use merge_db -b)")
    stats = ImportStats(kind=str(ident.kind))
    database = Database(settings)
    try:
        with database.begin() as conn:
            stats.configs_before = conn.execute(sa.select(sa.func.count()).select_from(t.conv_config)).scalar_one()
            if session_id is not None:
                row = session_row(conn, session_id)
                if (row["arch"], row["num_cu"]) != (ident.arch, ident.num_cu):
                    raise BadInput(
                        f"{file.name} is for {ident.arch} with {ident.num_cu} CUs, but session {session_id} is "
                        f"{row['arch']} with {row['num_cu']} CUs"
                    )
                stats.session = session_id
            else:
                if not rocm_v or not miopen_v:
                    raise BadInput("give --session_id, or --rocm_v and --miopen_v to create the import's session")
                stats.session = ensure_session(
                    conn,
                    arch=ident.arch,
                    num_cu=ident.num_cu,
                    rocm_v=rocm_v,
                    miopen_v=miopen_v,
                    reason="imported_find_db" if ident.kind == "find" else "imported_perf_db",
                )
            if ident.kind == "find":
                _import_find(conn, file, stats, opencl=ident.backend == "OpenCL")
            else:
                entries = read_perf_sqlite(file) if ident.kind == "perf_sqlite" else read_perf_text(file)
                _import_perf(conn, entries, stats)
            stats.configs_after = conn.execute(sa.select(sa.func.count()).select_from(t.conv_config)).scalar_one()
    finally:
        database.dispose()
    return stats


@dataclass
class _Row:
    key: str
    md5: str
    solver: str
    values: dict[str, Any]


def _import_find(conn: sa.Connection, file: Path, stats: ImportStats, *, opencl: bool) -> None:
    db = read_find_db(file)
    for skipped in db.skipped:
        stats.skipped[f"line {skipped.line}: {skipped.reason}"] += 1
    items: dict[str, ConfigRows] = {}
    rows: list[_Row] = []
    for key, entries in db.records.items():
        stats.records += len(entries)
        try:
            item = config_rows(check_problem_key(key))
        except (DriverError, DbFileError) as error:
            # Counted by reason, not by key: a file can hold thousands of keys alike.
            stats.skipped[f"entries of keys the config tables cannot hold: {error}"] += len(entries)
            continue
        items[item.md5] = item
        for entry in entries:
            if not usable_time(entry.time):
                stats.skipped["entries with a time MIOpen would not read as positive"] += 1
                continue
            values = {
                "fdb_key": key,
                "kernel_time": entry.time,
                "workspace_sz": entry.workspace,
                "alg_lib": entry.algorithm,
                "valid": True,
            }
            rows.append(_Row(key, item.md5, entry.solver, values))
    _write(conn, items, rows, stats, opencl=opencl, tunable=None)


def _write(
    conn: sa.Connection,
    items: dict[str, ConfigRows],
    rows: Sequence[_Row],
    stats: ImportStats,
    *,
    opencl: bool,
    tunable: bool | None,
    params_only: bool = False,
) -> None:
    config_ids = ensure_configs(conn, items.values())
    solver_ids = ensure_solvers(conn, (r.solver for r in rows), tunable=tunable)
    fdb = t.conv_find_db
    existing: dict[tuple[int, int], int] = {}
    for part in chunks(sorted(set(config_ids.values()))):
        query = sa.select(fdb.c.config, fdb.c.solver, fdb.c.id).where(
            fdb.c.session == stats.session, fdb.c.opencl == opencl, fdb.c.config.in_(part)
        )
        existing.update({(c, s): i for c, s, i in conn.execute(query)})
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    seen: dict[tuple[int, int], str] = {}
    for row in rows:
        pair = (config_ids[row.md5], solver_ids[row.solver])
        if pair in seen:
            # Two keys of one config (a shipped key with an odd output size beside the proper
            # one): the first read is kept, as MIOpen keeps the first line of a key.
            stats.skipped[f"solver {row.solver} again for the config of {seen[pair]} (first kept)"] += 1
            continue
        seen[pair] = row.key
        if pair in existing:
            values = {"params": row.values["params"]} if params_only else row.values
            updates.append({"b_id": existing[pair], **{f"b_{k}": v for k, v in values.items()}})
        else:
            inserts.append(
                {
                    "params": "",
                    **row.values,
                    "config": pair[0],
                    "solver": pair[1],
                    "session": stats.session,
                    "opencl": opencl,
                }
            )
    if inserts:
        conn.execute(fdb.insert(), inserts)
    if updates:
        names = [k[2:] for k in updates[0] if k != "b_id"]
        statement = (
            fdb.update()
            .where(fdb.c.id == sa.bindparam("b_id"))
            .values({**{n: sa.bindparam(f"b_{n}") for n in names}, "update_ts": sa.func.now()})
        )
        conn.execute(statement, updates)
    stats.added += len(inserts)
    stats.updated += len(updates)


def _split_types(data_type: str) -> list[str]:
    match = DATA_TYPE_TOKEN.fullmatch(data_type)
    if match is None:
        raise DriverError("bad_type", f"data type {data_type!r} is not a MIOpen type name")
    return [match[1], match[2] or match[1], match[3] or match[1]]


def perf_candidates(config: PerfConfig) -> list[ConvProblem]:
    """The problems whose key gives this perf-db row, smallest input first.

    For F the row holds the input, so there is one. For B and W it holds the output side
    (MIOpen's first group); every input size in [x0, x0 + stride) gives that output.
    """
    c = config
    types = _split_types(c.data_type)
    if len(set(types)) != 1:
        raise DriverError("not_storable", f"data type {c.data_type}: the config tables hold one type per problem")
    if c.bias:
        raise DriverError("not_storable", "bias 1 (MIFin builds every convolution problem with bias 0)")
    dims = c.spatial_dim
    axes = "dhw" if dims == 3 else "hw"
    base: dict[str, Any] = {
        "direction": c.direction,
        "spatial_dim": dims,
        "batchsize": c.batchsize,
        "group_count": c.group_count,
        "mode": "conv",
        "pad_mode": "default",
        "in_layout": c.layout,
        "fil_layout": c.layout,
        "out_layout": c.layout,
        "data_type": types[0],
    }
    for a in "dhw":
        for name in ("fil", "pad", "conv_stride", "dilation"):
            base[f"{name}_{a}"] = getattr(c, f"{name}_{a}")
        base[f"trans_output_pad_{a}"] = 0
        base[f"in_{a}"] = getattr(c, f"in_{a}")
    if c.direction == "F":
        return [conv_problem({**base, "in_channels": c.in_channels, "out_channels": c.out_channels})]
    base.update(in_channels=c.out_channels, out_channels=c.in_channels)
    ranges = []
    for a in axes:
        out, fil, pad = getattr(c, f"in_{a}"), getattr(c, f"fil_{a}"), getattr(c, f"pad_{a}")
        stride, dil = getattr(c, f"conv_stride_{a}"), getattr(c, f"dilation_{a}")
        smallest = (out - 1) * stride - 2 * pad + dil * (fil - 1) + 1
        if smallest < 1 or stride < 1:
            raise DriverError("empty_output", f"no input size gives output {out} along {a}")
        ranges.append(range(smallest, smallest + stride))
    found = []
    for sizes in itertools.product(*ranges):
        values = {**base, **{f"in_{a}": s for a, s in zip(axes, sizes)}}
        problem = conv_problem(values)
        if PerfConfig.from_problem(problem) == c:
            found.append(problem)
    if not found:
        raise DriverError("bad_row", "no convolution gives this perf-db row")
    return found


def _import_perf(conn: sa.Connection, entries: Sequence[PerfEntry], stats: ImportStats) -> None:
    stats.records = len(entries)
    cfg = t.conv_config
    candidates: dict[PerfConfig, list[ConfigRows]] = {}
    for entry in entries:
        if entry.config in candidates:
            continue
        try:
            candidates[entry.config] = [config_rows(p) for p in perf_candidates(entry.config)]
        except DriverError as error:
            candidates[entry.config] = []
            stats.skipped[f"perf-db config {entry.config.text_key()}: {error}"] += 1
    known: set[str] = set()
    several = [m.md5 for rows in candidates.values() if len(rows) > 1 for m in rows]
    for part in chunks(several):
        known.update(conn.execute(sa.select(cfg.c.md5).where(cfg.c.md5.in_(part))).scalars())
    items: dict[str, ConfigRows] = {}
    rows: list[_Row] = []
    for entry in entries:
        options = candidates[entry.config]
        if not options:
            continue
        chosen = next((m for m in options if m.md5 in known), options[0])
        items[chosen.md5] = chosen
        key = problem_key(_problem_of(chosen))
        values = {"fdb_key": key, "params": entry.params, "kernel_time": -1.0, "workspace_sz": -1, "valid": True}
        rows.append(_Row(key, chosen.md5, entry.solver, values))
    _write(conn, items, rows, stats, opencl=False, tunable=True, params_only=True)


def _problem_of(rows: ConfigRows) -> ConvProblem:
    return conv_from_rows(rows.config, rows.input_tensor, rows.weight_tensor)
