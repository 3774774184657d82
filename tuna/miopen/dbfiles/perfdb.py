"""Perf-db files: MIOpen's SQLite schema (``<base>.db``) and the text ``<base>.db.txt``.

SQLite (src/include/miopen/sqlite_db.hpp, src/sqlite_db.cpp): table ``config`` with ``id``
and 24 columns (3 TEXT: layout, data_type, direction; 21 INT), a unique index ``idx_config``
over them, and table ``perf_db(id, solver, config, params)`` with unique index
``idx_perf_db(solver, config)``. MIOpen finds a problem's tuning parameters with
``SELECT solver, params FROM perf_db INNER JOIN config ON perf_db.config = config.id WHERE
(...)`` over all 24 columns, every value bound as text, so the integer columns must have
INT affinity for the comparison to match; ``lookup_perf_sqlite`` runs exactly that query.

Text (what a stock MIOpen reads at run time; tools/sqlite2txt): one line per config,
``<21 integers and layout, data_type, direction joined by 'x'>=Solver:params;Solver:params``,
e.g. ``2x2048x7x7x1x1x1x1x1024x128x0x0x0x2x2x0x1x1x0x0x1xNCHWxFP32xB=ConvAsm1x1UV2:32,1,...``.

A config row comes from a find-db key field by field (``in`` is the key's first group, which
for B and W problems is the convolution's output side; layout is the first layout token).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from tuna.miopen.dbfiles.checks import check_name, check_params
from tuna.miopen.dbfiles.errors import DbFileError
from tuna.miopen.dbfiles.problem_key import DATA_TYPE_TOKEN, DIRECTIONS, LAYOUTS, ConvProblem, check_problem_key

# MIOpen opens a SQLite database file only from this size on (src/sqlite_db.cpp).
MIN_SQLITE_BYTES = 512

TEXT_COLUMNS = ("layout", "data_type", "direction")
INT_COLUMNS = (
    "spatial_dim",
    "in_channels",
    "in_h",
    "in_w",
    "in_d",
    "fil_h",
    "fil_w",
    "fil_d",
    "out_channels",
    "batchsize",
    "pad_h",
    "pad_w",
    "pad_d",
    "conv_stride_h",
    "conv_stride_w",
    "conv_stride_d",
    "dilation_h",
    "dilation_w",
    "dilation_d",
    "bias",
    "group_count",
)
CONFIG_COLUMNS = TEXT_COLUMNS + INT_COLUMNS

CONFIG_DDL = (
    "CREATE TABLE IF NOT EXISTS `config` (`id` INTEGER PRIMARY KEY ASC"
    + "".join(f",`{c}` TEXT NOT NULL" for c in TEXT_COLUMNS)
    + "".join(f",`{c}` INT NOT NULL" for c in INT_COLUMNS)
    + ");"
    + f"CREATE UNIQUE INDEX IF NOT EXISTS `idx_config` ON config( {','.join(TEXT_COLUMNS)}, {','.join(INT_COLUMNS)} );"
)
PERF_DB_DDL = (
    "CREATE TABLE  IF NOT EXISTS `perf_db` (`id` INTEGER PRIMARY KEY ASC,`solver` TEXT NOT NULL,"
    "`config` INTEGER NOT NULL,`params` TEXT NOT NULL);"
    "CREATE UNIQUE INDEX IF NOT EXISTS `idx_perf_db` ON perf_db(solver, config);"
)
# The statement MIOpen prepares in SQLitePerfDb::FindRecordUnsafe, columns in its Visit order.
LOOKUP_SQL = (
    "SELECT solver, params FROM perf_db INNER JOIN config ON perf_db.config = config.id WHERE ( "
    + " AND ".join(f"({c} = ? )" for c in CONFIG_COLUMNS)
    + " );"
)


@dataclass(frozen=True)
class PerfConfig:
    """One row of MIOpen's perf-db ``config`` table (without its id)."""

    layout: str
    data_type: str
    direction: str
    spatial_dim: int
    in_channels: int
    in_h: int
    in_w: int
    in_d: int
    fil_h: int
    fil_w: int
    fil_d: int
    out_channels: int
    batchsize: int
    pad_h: int
    pad_w: int
    pad_d: int
    conv_stride_h: int
    conv_stride_w: int
    conv_stride_d: int
    dilation_h: int
    dilation_w: int
    dilation_d: int
    bias: int
    group_count: int

    @classmethod
    def from_problem(cls, problem: ConvProblem) -> PerfConfig:
        """The row of ``problem``: ``in`` is the key's first group (the output side for B and W)."""
        p = problem
        forward = p.direction == "F"
        first = (p.in_channels, p.in_d, p.in_h, p.in_w) if forward else (p.out_channels, p.out_d, p.out_h, p.out_w)
        second = p.out_channels if forward else p.in_channels
        layout = p.in_layout if forward else p.out_layout
        types = (p.in_type, p.wei_type, p.out_type) if forward else (p.out_type, p.wei_type, p.in_type)
        data_type = types[0] if len(set(types)) == 1 else "".join(types)
        two_d = p.spatial_dim == 2
        return cls(
            layout=layout,
            data_type=data_type,
            direction=p.direction,
            spatial_dim=p.spatial_dim,
            in_channels=first[0],
            in_h=first[2],
            in_w=first[3],
            in_d=1 if two_d else first[1],
            fil_h=p.fil_h,
            fil_w=p.fil_w,
            fil_d=1 if two_d else p.fil_d,
            out_channels=second,
            batchsize=p.batchsize,
            pad_h=p.pad_h,
            pad_w=p.pad_w,
            pad_d=0 if two_d else p.pad_d,
            conv_stride_h=p.conv_stride_h,
            conv_stride_w=p.conv_stride_w,
            conv_stride_d=0 if two_d else p.conv_stride_d,
            dilation_h=p.dilation_h,
            dilation_w=p.dilation_w,
            dilation_d=0 if two_d else p.dilation_d,
            bias=p.bias,
            group_count=p.group_count,
        )

    @classmethod
    def from_key(cls, key: str) -> PerfConfig:
        """The config row MIOpen uses for the problem of find-db key ``key``."""
        return cls.from_problem(check_problem_key(key))

    def text_key(self) -> str:
        """The key of this config in a text perf-db (integers first, then the three names)."""
        return "x".join(str(getattr(self, c)) for c in INT_COLUMNS + TEXT_COLUMNS)

    def check(self) -> PerfConfig:
        """Refuse a row MIOpen would never produce for a problem, so never look up."""
        where = f"perf-db config {self.text_key()!r}"
        if self.direction not in DIRECTIONS:
            raise DbFileError(f"{where}: direction {self.direction!r} is not F, B or W")
        if not isinstance(self.data_type, str) or not DATA_TYPE_TOKEN.fullmatch(self.data_type):
            raise DbFileError(f"{where}: data type {self.data_type!r} is not a MIOpen type name")
        for name in INT_COLUMNS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DbFileError(f"{where}: {name} {value!r} is not a non-negative integer")
        if self.spatial_dim not in (2, 3):
            raise DbFileError(f"{where}: spatial_dim {self.spatial_dim} is not 2 or 3")
        if self.layout not in LAYOUTS[self.spatial_dim]:
            raise DbFileError(f"{where}: layout {self.layout!r} is not a {self.spatial_dim}-D tensor layout")
        two_d = {"in_d": 1, "fil_d": 1, "pad_d": 0, "conv_stride_d": 0, "dilation_d": 0}
        if self.spatial_dim == 2:
            for name, value in two_d.items():
                if getattr(self, name) != value:
                    raise DbFileError(f"{where}: a 2-D problem has {name} {value} in MIOpen, not {getattr(self, name)}")
        return self


@dataclass(frozen=True)
class PerfEntry:
    """One solver's tuning parameters for one config."""

    config: PerfConfig
    solver: str
    params: str


@dataclass
class PerfDbWriteStats:
    configs: int = 0
    entries: int = 0
    duplicates_dropped: int = 0


def _checked(entries: Iterable[PerfEntry]) -> tuple[dict[PerfConfig, dict[str, str]], PerfDbWriteStats]:
    """Group entries by config; the first entry of a (config, solver) wins, later ones are counted."""
    stats = PerfDbWriteStats()
    grouped: dict[PerfConfig, dict[str, str]] = {}
    for entry in entries:
        solvers = grouped.get(entry.config)
        if solvers is None:
            solvers = grouped[entry.config] = {}
            entry.config.check()
        check_name("solver name", entry.solver)
        check_params(f"params of solver {entry.solver!r}", entry.params)
        if entry.solver in solvers:
            stats.duplicates_dropped += 1
            continue
        solvers[entry.solver] = entry.params
        stats.entries += 1
    stats.configs = len(grouped)
    return grouped, stats


def write_perf_sqlite(path: str | os.PathLike[str], entries: Iterable[PerfEntry]) -> PerfDbWriteStats:
    """Write a new SQLite perf-db in MIOpen's schema; an existing file is replaced whole."""
    grouped, stats = _checked(entries)
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    placeholders = ",".join("?" * len(CONFIG_COLUMNS))
    with sqlite3.connect(partial) as con:
        con.executescript(CONFIG_DDL + PERF_DB_DDL)
        con.executemany(
            f"INSERT INTO config (id, {','.join(CONFIG_COLUMNS)}) VALUES (?, {placeholders})",
            ((number, *astuple(config)) for number, config in enumerate(grouped, start=1)),
        )
        con.executemany(
            "INSERT INTO perf_db (config, solver, params) VALUES (?, ?, ?)",
            (
                (number, solver, params)
                for number, solvers in enumerate(grouped.values(), start=1)
                for solver, params in sorted(solvers.items())
            ),
        )
    con.close()
    os.replace(partial, target)
    return stats


def _open_perf_sqlite(path: str | os.PathLike[str]) -> sqlite3.Connection:
    file = Path(path)
    if not file.is_file():
        raise DbFileError(f"perf-db {file} does not exist")
    if file.stat().st_size < MIN_SQLITE_BYTES:
        raise DbFileError(f"perf-db {file} is smaller than {MIN_SQLITE_BYTES} bytes: MIOpen treats it as absent")
    con = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
    try:
        for table, needed in (("config", CONFIG_COLUMNS), ("perf_db", ("solver", "config", "params"))):
            have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
            missing = [c for c in needed if c not in have]
            if missing:
                raise DbFileError(f"perf-db {file}: table {table} lacks {', '.join(missing)} (not MIOpen's schema)")
    except sqlite3.DatabaseError as error:
        con.close()
        raise DbFileError(f"perf-db {file} is not a SQLite database: {error}") from None
    except DbFileError:
        con.close()
        raise
    return con


def read_perf_sqlite(path: str | os.PathLike[str]) -> list[PerfEntry]:
    """Every (config, solver, params) of a SQLite perf-db, in perf_db id order."""
    con = _open_perf_sqlite(path)
    try:
        rows = con.execute(
            f"SELECT solver, params, {','.join('config.' + c for c in CONFIG_COLUMNS)} "
            "FROM perf_db INNER JOIN config ON perf_db.config = config.id ORDER BY perf_db.id"
        ).fetchall()
    finally:
        con.close()
    return [PerfEntry(PerfConfig(*row[2:]), row[0], row[1]) for row in rows]


def lookup_perf_sqlite(path: str | os.PathLike[str], config: PerfConfig) -> dict[str, str]:
    """Solver -> params, found by MIOpen's own query with every value bound as text."""
    con = _open_perf_sqlite(path)
    try:
        rows = con.execute(LOOKUP_SQL, [str(v) for v in astuple(config)]).fetchall()
    finally:
        con.close()
    # MIOpen's DbRecord::SetValues: a later row for the same solver replaces the earlier one.
    return {solver: params for solver, params in rows}


def format_perf_text(entries: Iterable[PerfEntry]) -> tuple[str, PerfDbWriteStats]:
    """The text perf-db: one line per config, lines and solvers sorted."""
    grouped, stats = _checked(entries)
    lines = sorted(
        config.text_key() + "=" + ";".join(f"{s}:{p}" for s, p in sorted(solvers.items())) + "\n"
        for config, solvers in grouped.items()
    )
    return "".join(lines), stats


def write_perf_text(path: str | os.PathLike[str], entries: Iterable[PerfEntry]) -> PerfDbWriteStats:
    text, stats = format_perf_text(entries)
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, target)
    return stats


def parse_perf_text_key(text_key: str) -> PerfConfig:
    parts = text_key.split("x")
    if len(parts) != len(CONFIG_COLUMNS):
        raise DbFileError(f"perf-db key {text_key!r} has {len(parts)} fields, not {len(CONFIG_COLUMNS)}")
    ints, names = parts[: len(INT_COLUMNS)], parts[len(INT_COLUMNS) :]
    if not all(p.isdigit() for p in ints):
        raise DbFileError(f"perf-db key {text_key!r}: its first {len(INT_COLUMNS)} fields must be integers")
    values: dict[str, Any] = dict(zip(INT_COLUMNS, map(int, ints))) | dict(zip(TEXT_COLUMNS, names))
    return PerfConfig(**values).check()


def parse_perf_text(text: str) -> dict[str, dict[str, str]]:
    """Text key -> {solver: params}, read as MIOpen reads it (first line of a key, first ID of a line)."""
    records: dict[str, dict[str, str]] = {}
    for line in text.split("\n"):
        key, equals, contents = line.partition("=")
        if not equals or not key or key in records:
            continue
        solvers: dict[str, str] = {}
        for item in contents.split(";"):
            solver, colon, params = item.partition(":")
            if colon and solver not in solvers:
                solvers[solver] = params
        records[key] = solvers
    return records


def read_perf_text(path: str | os.PathLike[str]) -> list[PerfEntry]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DbFileError(f"cannot read perf-db {os.fspath(path)}: {error}") from None
    return [
        PerfEntry(parse_perf_text_key(key), solver, params)
        for key, solvers in parse_perf_text(text).items()
        for solver, params in solvers.items()
    ]


def lookup_perf_text(records: Mapping[str, Mapping[str, str]], config: PerfConfig) -> dict[str, str]:
    """What MIOpen finds in a parsed text perf-db for ``config``: it looks the key up verbatim."""
    return dict(records.get(config.text_key(), {}))
