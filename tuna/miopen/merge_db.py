"""``merge_db``: merge one MIOpen database file (target) into another (master), writing the
result under the master's name in the output directory (reference/miopen.md §9.6, §13).

* find-db (``-f``): both entry forms are read, and entries are matched by **solver** whatever
  form they came in (MITuna matched the text before ``:``, the algorithm in the legacy form,
  §11.12). Without ``--keep_keys`` a key of the target replaces the master's entries for
  that key; with it the entries are merged, the target's winning per solver. Written in
  MIOpen's current form, every solver kept, entries with a time MIOpen would not read as
  positive left out (counted on stderr).
* perf-db (``-p``, SQLite ``.db`` or text ``.db.txt``, either for either): configs are
  matched by value; without ``--keep_keys`` a config of the target replaces the master's
  solvers, with it solvers are merged, the target winning. Written in the master's format.
* kernel-db (``-b``): rows matched by (kernel_name, kernel_args), the target's replacing the
  master's; every blob is checked against its md5 and size before it is written.

The master's file name gives the arch (MIOpen's naming rule). A master directory merges the
target into each of its gfx* files of the kind. A merged ``gfx900_64`` find-db or perf-db is
also written as ``gfx803_36`` and ``gfx803_64`` (MITuna's aliases).
"""

from __future__ import annotations

import base64
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from tuna.errors import BadInput
from tuna.miopen.dbfiles import (
    DbFileError,
    FindDbEntry,
    KernelObject,
    PerfConfig,
    PerfEntry,
    parse_db_filename,
    read_find_db,
    read_kernel_db,
    read_perf_sqlite,
    read_perf_text,
    write_find_db,
    write_kernel_db,
    write_perf_sqlite,
    write_perf_text,
)
from tuna.miopen.dbfiles.finddb import usable_time

KINDS = {"find": ("find",), "perf": ("perf_sqlite", "perf_text"), "kernel": ("kernel",)}


_EXTENSIONS = {".fdb.txt": "find", ".db.txt": "perf_text", ".db": "perf_sqlite", ".kdb": "kernel"}


def _checked(path: Path, kind: str, *, miopen_name: bool) -> str:
    """The file's kind; the master must carry MIOpen's name (it names the result), the
    target only the extension of its kind."""
    if path.is_dir():
        raise BadInput(f"{path} is a directory: give a file (only the master may be a directory)")
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    if miopen_name:
        found = parse_db_filename(path).kind
    else:
        found = next((k for ext, k in _EXTENSIONS.items() if path.name.endswith(ext)), None)
    if found not in KINDS[kind]:
        raise BadInput(f"{path.name} is not a {kind}-db file (expected {', '.join(KINDS[kind])})")
    return str(found)


def _merge_maps(
    master: dict[str, dict[str, object]], target: dict[str, dict[str, object]], keep_keys: bool
) -> dict[str, dict[str, object]]:
    merged = {key: dict(values) for key, values in master.items()}
    for key, values in target.items():
        if keep_keys and key in merged:
            merged[key].update(values)
        else:
            merged[key] = dict(values)
    return merged


#: MITuna writes MIOpen's gfx803 files as copies of the merged gfx900_64 one (§9.6).
ALIASES = {"gfx900_64": ("gfx803_36", "gfx803_64")}
_ALIAS_NAMES = {alias for names in ALIASES.values() for alias in names}


def _masters(master: Path, kind: str) -> list[Path]:
    """The master file, or every gfx* file of ``kind`` in a master directory (aliases excepted)."""
    if not master.is_dir():
        return [master]
    found = []
    for path in sorted(master.iterdir()):
        if not path.name.startswith("gfx") or not path.is_file():
            continue
        try:
            name = parse_db_filename(path)
        except DbFileError:
            continue
        if name.kind in KINDS[kind] and path.name.split(".")[0] not in _ALIAS_NAMES:
            found.append(path)
    if not found:
        raise BadInput(f"{master} holds no gfx* {kind}-db file")
    return found


def merge_db(
    master: str | Path, target: str | Path, kind: str, *, keep_keys: bool = False, output_dir: str | Path = "."
) -> list[Path]:
    """Merge ``target`` into the master file (or each master of a directory); returns the files written."""
    target_path = Path(target)
    target_kind = _checked(target_path, kind, miopen_name=False)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for master_path in _masters(Path(master), kind):
        master_kind = _checked(master_path, kind, miopen_name=True)
        out = out_dir / master_path.name
        try:
            if kind == "find":
                _merge_find(master_path, target_path, out, keep_keys)
            elif kind == "perf":
                _merge_perf(master_path, master_kind, target_path, target_kind, out, keep_keys)
            else:
                _merge_kernels(master_path, target_path, out)
        except DbFileError as error:
            raise BadInput(str(error)) from None
        written.append(out)
        base, _, extension = master_path.name.partition(".")
        if kind != "kernel":
            for alias in ALIASES.get(base, ()):
                copy = out_dir / f"{alias}.{extension}"
                shutil.copyfile(out, copy)
                written.append(copy)
    return written


def _merge_find(master: Path, target: Path, out: Path, keep_keys: bool) -> None:
    maps = []
    for path in (master, target):
        db = read_find_db(path)
        for skipped in db.skipped:
            print(f"{path.name} line {skipped.line}: {skipped.reason}", file=sys.stderr)
        maps.append({key: {e.solver: e for e in entries} for key, entries in db.records.items()})
    merged = _merge_maps(maps[0], maps[1], keep_keys)  # type: ignore[arg-type]
    records: dict[str, list[FindDbEntry]] = {}
    dropped = 0
    for key, entries in merged.items():
        kept = [e for e in entries.values() if isinstance(e, FindDbEntry) and usable_time(e.time)]
        dropped += len(entries) - len(kept)
        records[key] = kept
    if dropped:
        print(f"left out {dropped}: entries with a time MIOpen would not read as positive", file=sys.stderr)
    write_find_db(out, records, keep=sys.maxsize)


def _perf_entries(path: Path, kind: str) -> list[PerfEntry]:
    return read_perf_sqlite(path) if kind == "perf_sqlite" else read_perf_text(path)


def _merge_perf(master: Path, master_kind: str, target: Path, target_kind: str, out: Path, keep_keys: bool) -> None:
    maps: list[dict[PerfConfig, dict[str, str]]] = []
    for path, kind in ((master, master_kind), (target, target_kind)):
        grouped: dict[PerfConfig, dict[str, str]] = {}
        for entry in _perf_entries(path, kind):
            grouped.setdefault(entry.config, {}).setdefault(entry.solver, entry.params)
        maps.append(grouped)
    merged = {config: dict(solvers) for config, solvers in maps[0].items()}
    for config, solvers in maps[1].items():
        if keep_keys and config in merged:
            merged[config].update(solvers)
        else:
            merged[config] = dict(solvers)
    entries = [PerfEntry(c, s, p) for c, solvers in merged.items() for s, p in sorted(solvers.items())]
    if master_kind == "perf_sqlite":
        write_perf_sqlite(out, entries)
    else:
        write_perf_text(out, entries)


def _as_objects(rows: Iterable[object]) -> list[KernelObject]:
    objects = []
    for row in rows:
        name = row.kernel_name  # type: ignore[attr-defined]
        objects.append(
            KernelObject(
                name[:-2] if name.endswith(".o") else name,
                row.kernel_args,  # type: ignore[attr-defined]
                base64.b64encode(row.kernel_blob).decode(),  # type: ignore[attr-defined]
                row.kernel_hash,  # type: ignore[attr-defined]
                row.uncompressed_size,  # type: ignore[attr-defined]
            )
        )
    return objects


def _merge_kernels(master: Path, target: Path, out: Path) -> None:
    arch = parse_db_filename(master).arch
    # The first of a (name, args) pair wins when writing: the target's rows go first.
    kernels = _as_objects(read_kernel_db(target)) + _as_objects(read_kernel_db(master))
    stats = write_kernel_db(out, kernels, arch)
    for reason in stats.refused:
        print(f"left out: {reason}", file=sys.stderr)
    if stats.duplicates:
        print(f"{stats.duplicates} kernels of the master replaced by the target's", file=sys.stderr)
