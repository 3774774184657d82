"""``export_db``: the find-db, perf-db and kernel-db files MIOpen reads, from a session's
results or a golden version (reference/miopen.md §2.7, §9, §13.2-§13.4).

Selection (§9.2): valid rows of conv_find_db (``--session_id``; arch and CUs from the
session) or conv_golden (``--golden_v`` with ``-a``, and ``-n`` or else one file per CU
count the version holds), of the chosen backend (``-c``), optionally only configs tagged
``--config_tag``. Where two rows give the same (key, solver) the most recently updated wins.
The key is the row's ``fdb_key`` (kept verbatim from MIOpen's files) or, when it has none,
the key of its config.

* ``-f``: ``<base>.HIP.fdb.txt`` (``.OpenCL.fdb.txt``) in MIOpen's current entry form, each
  key with its four fastest solvers by (time, name); only positive times (§13.2).
* ``-p``: ``<base>.db`` (SQLite, MIOpen's schema) and ``<base>.db.txt`` (the text a stock
  MIOpen reads, §13.3), from rows with params of tunable solvers. Perf-only rows (no time)
  are exported too (§11.11).
* ``-k``: ``<base>.kdb``: for each key the kernels of its fastest row's kernel group, every
  blob decompressed and checked against md5 and size before it is written (§13.4).

Keys, names or values MIOpen could not look up or read are left out, each reason counted on
stderr; stdout gets the path of each file written and nothing else.
"""

from __future__ import annotations

import base64
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tuna.config import Settings
from tuna.db.engine import Database
from tuna.errors import BadInput
from tuna.miopen import tables as t
from tuna.miopen.dbfiles import (
    DbFileError,
    FindDbEntry,
    KernelObject,
    PerfConfig,
    PerfEntry,
    db_basename,
    write_find_db,
    write_kernel_db,
    write_perf_sqlite,
    write_perf_text,
)
from tuna.miopen.dbfiles.checks import check_name, check_params
from tuna.miopen.dbfiles.finddb import format_entry, usable_time
from tuna.miopen.dbfiles.problem_key import check_problem_key
from tuna.miopen.dbstore import chunks, keys_of_configs, session_row

log = logging.getLogger(__name__)

DEFAULT_DIR = "tuna_1.0.0"  # MITuna's output directory, in the current directory
STREAM_ROWS = 20000


@dataclass
class Selection:
    """Which rows: a session's find-db rows, or one (version, arch, num_cu) of the golden table."""

    table: sa.Table
    where: list[Any]
    arch: str
    num_cu: int


@dataclass
class ExportStats:
    files: list[Path] = field(default_factory=list)
    rows: int = 0
    written: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def selections(
    conn: sa.Connection,
    *,
    session_id: int | None,
    golden_v: int | None,
    arch: str | None,
    num_cu: int | None,
    opencl: bool,
    config_tag: str | None,
) -> list[Selection]:
    if (session_id is None) == (golden_v is None):
        raise BadInput("export_db needs exactly one of --session_id or --golden_v")
    found: list[Selection] = []
    if session_id is not None:
        session = session_row(conn, session_id)
        for given, have, what in ((arch, session["arch"], "arch"), (num_cu, session["num_cu"], "num_cu")):
            if given is not None and given != have:
                raise BadInput(f"session {session_id} is {what} {have}, not {given}: leave -a/-n out with --session_id")
        table = t.conv_find_db
        where = [table.c.session == session_id]
        found.append(Selection(table, where, str(session["arch"]), int(session["num_cu"])))
    else:
        if arch is None:
            raise BadInput("--golden_v needs -a/--arch: the golden table holds every arch")
        table = t.conv_golden
        base = [table.c.golden_miopen_v == golden_v, table.c.arch == arch]
        counts = [num_cu] if num_cu is not None else None
        if counts is None:
            query = sa.select(table.c.num_cu).where(*base, table.c.valid == sa.true()).distinct()
            counts = sorted(conn.execute(query).scalars())
            if not counts:
                raise BadInput(f"golden version {golden_v} has no rows for arch {arch}")
        found += [Selection(table, [*base, table.c.num_cu == n], arch, n) for n in counts]
    for sel in found:
        table = sel.table
        sel.where += [table.c.valid == sa.true(), table.c.opencl == opencl]
        if config_tag is not None:
            tags = t.conv_config_tags
            sel.where.append(table.c.config.in_(sa.select(tags.c.config).where(tags.c.tag == config_tag)))
    return found


def _stream(conn: sa.Connection, query: sa.Select[Any]) -> Iterator[Any]:
    # Server-side cursor: rows arrive in batches, never all at once in memory.
    result = conn.execution_options(yield_per=STREAM_ROWS).execute(query)
    yield from result


class _Keys:
    """fdb_key, or the config's key when the row has none; each key checked once."""

    def __init__(self, conn: sa.Connection, stats: ExportStats) -> None:
        self.conn = conn
        self.stats = stats
        self.checked: dict[str, str | None] = {}
        self.reasons: dict[str, str] = {}

    def good(self, key: str) -> str | None:
        """The key's direction, or None (the row counted under the key's reason)."""
        if key not in self.checked:
            try:
                self.checked[key] = check_problem_key(key).direction
            except DbFileError as error:
                self.checked[key] = None
                self.reasons[key] = str(error)
        direction = self.checked[key]
        if direction is None:
            self.stats.dropped[self.reasons[key]] += 1
        return direction

    def resolve(self, rows: list[tuple[Any, ...]]) -> Iterator[tuple[str, str, tuple[Any, ...]]]:
        """(key, direction, row) for rows whose key MIOpen can look up; row[0] is fdb_key, row[1] config."""
        missing = {row[1] for row in rows if row[0] is None}
        by_config = keys_of_configs(self.conn, missing) if missing else {}
        for row in rows:
            key = row[0] if row[0] is not None else by_config.get(row[1])
            if key is None:
                self.stats.dropped["row without a key"] += 1
                continue
            direction = self.good(key)
            if direction is None:
                continue
            yield key, direction, row


def _latest(
    rows: Iterator[tuple[str, str, tuple[Any, ...]]], solver_at: int
) -> Iterator[tuple[str, str, tuple[Any, ...]]]:
    """The first (most recently updated) row of each (key, solver)."""
    seen: set[tuple[str, str]] = set()
    for key, direction, row in rows:
        pair = (key, row[solver_at])
        if pair in seen:
            continue
        seen.add(pair)
        yield key, direction, row


def _base(sel: Selection, filename: str | None) -> str:
    if filename is not None:
        if not filename or "/" in filename or filename in (".", ".."):
            raise BadInput(f"--filename {filename!r} must be a plain file name without a directory")
        return filename
    try:
        return db_basename(sel.arch, sel.num_cu)
    except DbFileError as error:
        raise BadInput(f"cannot name the file: {error}; give --filename") from None


def export_find(conn: sa.Connection, sel: Selection, path: Path, stats: ExportStats) -> None:
    src, solver = sel.table, t.solver
    query = (
        sa.select(src.c.fdb_key, src.c.config, solver.c.solver, src.c.kernel_time, src.c.workspace_sz, src.c.alg_lib)
        .join(solver, solver.c.id == src.c.solver)
        .where(*sel.where, src.c.kernel_time > 0, src.c.workspace_sz >= 0)
        .order_by(src.c.update_ts.desc(), src.c.id.desc())
    )
    keys = _Keys(conn, stats)
    # (key, solver) -> (position in update order, entry): the most recent row wins.
    best: dict[tuple[str, str], tuple[int, FindDbEntry]] = {}
    unkeyed: list[tuple[Any, ...]] = []

    def take(index: int, key: str, direction: str, row: tuple[Any, ...]) -> None:
        pair = (key, row[2])
        if pair in best and best[pair][0] < index:
            return
        entry = FindDbEntry(row[2], float(row[3]), int(row[4]), row[5] or "")
        if not usable_time(entry.time):
            stats.dropped["times MIOpen would not read as positive"] += 1
            return
        try:
            format_entry(direction, entry)
        except DbFileError as error:
            stats.dropped[str(error)] += 1
            return
        best[pair] = (index, entry)

    # No other statement may run on the connection while the server-side cursor is open:
    # rows without a stored key are resolved after the stream.
    for index, row in enumerate(_stream(conn, query)):
        stats.rows += 1
        if row[0] is None:
            unkeyed.append((*row, index))
            continue
        direction = keys.good(row[0])
        if direction is None:
            continue
        take(index, row[0], direction, row)
    for key, direction, row in keys.resolve(unkeyed):
        take(row[6], key, direction, row)
    records: dict[str, list[FindDbEntry]] = {}
    for (key, _solver), (_index, entry) in best.items():
        records.setdefault(key, []).append(entry)
    written = write_find_db(path, records)
    stats.written += written.entries
    if written.dropped_beyond_fastest:
        log.info("kept the 4 fastest solvers per key: %d slower entries left out", written.dropped_beyond_fastest)
    if written.keys_left_empty:
        stats.dropped["keys without a usable entry"] += written.keys_left_empty


def export_perf(conn: sa.Connection, sel: Selection, base: Path, stats: ExportStats) -> list[Path]:
    src, solver = sel.table, t.solver
    query = (
        sa.select(src.c.fdb_key, src.c.config, solver.c.solver, src.c.params)
        .join(solver, solver.c.id == src.c.solver)
        .where(*sel.where, src.c.params != "", solver.c.tunable == sa.true())
        .order_by(src.c.update_ts.desc(), src.c.id.desc())
    )
    rows = []
    for row in _stream(conn, query):
        stats.rows += 1
        rows.append(row)
    keys = _Keys(conn, stats)
    configs: dict[str, PerfConfig] = {}
    entries: list[PerfEntry] = []
    for key, _direction, row in _latest(keys.resolve(rows), 2):
        try:
            check_name("solver name", row[2])
            check_params(f"params of solver {row[2]!r}", row[3])
        except DbFileError as error:
            stats.dropped[str(error)] += 1
            continue
        if key not in configs:
            configs[key] = PerfConfig.from_key(key)
        entries.append(PerfEntry(configs[key], row[2], row[3]))
    sqlite_path = base.with_name(base.name + ".db")
    text_path = base.with_name(base.name + ".db.txt")
    written = write_perf_sqlite(sqlite_path, entries)
    write_perf_text(text_path, entries)
    stats.written += written.entries
    if written.duplicates_dropped:
        stats.dropped["(config, solver) pairs given by two keys (first kept)"] += written.duplicates_dropped
    return [sqlite_path, text_path]


def stored_kernel(name: str, args: str, blob: bytes, md5: str, size: int) -> KernelObject:
    """A kernel_cache row as fin's kernel object: the blob is kept as fin's base64 text
    (MITuna's way); raw bzip2 bytes are accepted too."""
    data = bytes(blob)
    text = base64.b64encode(data).decode() if data.startswith(b"BZh") else data.decode("ascii", "replace")
    file = name[:-2] if name.endswith(".o") else name
    return KernelObject(file, args, text, md5, int(size))


def export_kernels(conn: sa.Connection, sel: Selection, path: Path, stats: ExportStats) -> None:
    src, solver = sel.table, t.solver
    query = (
        sa.select(src.c.fdb_key, src.c.config, solver.c.solver, src.c.kernel_time, src.c.kernel_group)
        .join(solver, solver.c.id == src.c.solver)
        .where(*sel.where, src.c.kernel_time > 0, src.c.kernel_group.is_not(None))
        .order_by(src.c.update_ts.desc(), src.c.id.desc())
    )
    rows = list(_stream(conn, query))
    stats.rows += len(rows)
    fastest: dict[str, tuple[float, str, int]] = {}
    for key, _direction, row in _latest(_Keys(conn, stats).resolve(rows), 2):
        candidate = (float(row[3]), row[2], int(row[4]))
        if key not in fastest or candidate < fastest[key]:
            fastest[key] = candidate
    groups = sorted({group for _, _, group in fastest.values()})
    cache = t.conv_kernel_cache
    kernels: list[KernelObject] = []
    for part in chunks(groups):
        query = (
            sa.select(
                cache.c.kernel_name,
                cache.c.kernel_args,
                cache.c.kernel_blob,
                cache.c.kernel_hash,
                cache.c.uncompressed_size,
            )
            .where(cache.c.kernel_group.in_(part), cache.c.valid == sa.true())
            .order_by(cache.c.id)
        )
        kernels += [stored_kernel(*row) for row in conn.execute(query)]
    written = write_kernel_db(path, kernels, sel.arch)
    stats.written += written.written
    for reason in written.refused:
        stats.dropped[reason] += 1
    if written.dropped_uncompressed:
        stats.dropped["kernels fin could not compress"] += written.dropped_uncompressed


def export_db(
    settings: Settings,
    kind: str,
    *,
    session_id: int | None = None,
    golden_v: int | None = None,
    arch: str | None = None,
    num_cu: int | None = None,
    opencl: bool = False,
    config_tag: str | None = None,
    filename: str | None = None,
    output_dir: str | Path = DEFAULT_DIR,
) -> ExportStats:
    """Write the files of ``kind`` (find, perf or kernel); returns their paths and counts."""
    started = time.monotonic()
    stats = ExportStats()
    database = Database(settings)
    try:
        with database.begin() as conn:
            sels = selections(
                conn,
                session_id=session_id,
                golden_v=golden_v,
                arch=arch,
                num_cu=num_cu,
                opencl=opencl,
                config_tag=config_tag,
            )
            if filename is not None and len(sels) > 1:
                counts = ", ".join(str(s.num_cu) for s in sels)
                raise BadInput(f"golden version {golden_v} holds CU counts {counts}: give -n with --filename")
            out = Path(output_dir)
            out.mkdir(parents=True, exist_ok=True)
            for sel in sels:
                base = out / _base(sel, filename)
                if kind == "find":
                    path = base.with_name(base.name + (".OpenCL.fdb.txt" if opencl else ".HIP.fdb.txt"))
                    export_find(conn, sel, path, stats)
                    stats.files.append(path)
                elif kind == "perf":
                    stats.files += export_perf(conn, sel, base, stats)
                elif kind == "kernel":
                    path = base.with_name(base.name + ".kdb")
                    export_kernels(conn, sel, path, stats)
                    stats.files.append(path)
                else:
                    raise BadInput(f"unknown export kind {kind!r}")
    finally:
        database.dispose()
    stats.seconds = time.monotonic() - started
    if stats.written == 0:
        log.warning("export_db: the selection gave no entry MIOpen could use; the files written are empty")
    return stats
