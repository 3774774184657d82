"""Find-db text files (``<base>.HIP.fdb.txt``): read both entry forms, write MIOpen's current one.

A line is ``KEY=ENTRY;ENTRY;...``. MIOpen (src/readonlyramdb.cpp, src/db_record.cpp) skips
empty lines, splits at the first ``=``, keeps the first line of a duplicated key, splits
entries on ``;`` and each entry at its first ``:``, and ignores a repeated ID in one line.
Two entry forms exist:

* current (what MIOpen writes): ``Solver:time,workspace,algorithm``
* legacy: ``algorithm:Solver,time,workspace,algorithm,<ignored>``; MIOpen recognises it by an
  ID that is an algorithm name and converts it to ``Solver:time,workspace,<ID>``.

The algorithm must belong to the key's direction (else MIOpen throws "Bad algorithm"), and
MIOpen sorts a key's entries by time with 0 before every positive time, so an entry whose
time is not a positive single-precision number is never written. Each key keeps at most its
four fastest solvers (the export rule), ties broken by solver name.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tuna.miopen.dbfiles.checks import check_name
from tuna.miopen.dbfiles.errors import DbFileError
from tuna.miopen.dbfiles.problem_key import check_problem_key

KEEP_FASTEST = 4
# MIOpen reads the time into a C++ float: outside this range it is 0, denormal or infinite.
FLOAT32_MIN = 1.1754943508222875e-38
FLOAT32_MAX = 3.4028234663852886e38
MAX_WORKSPACE = 2**64 - 1  # std::size_t

_FWD = "miopenConvolutionFwdAlgo"
_BWD = "miopenConvolutionBwdDataAlgo"
_WRW = "miopenConvolutionBwdWeightsAlgo"
ALGORITHMS: dict[str, frozenset[str]] = {
    "F": frozenset(_FWD + a for a in ("GEMM", "Direct", "FFT", "Winograd", "ImplicitGEMM")),
    "B": frozenset(
        [_BWD + a for a in ("GEMM", "Direct", "FFT", "Winograd", "ImplicitGEMM")] + ["miopenTransposeBwdDataAlgoGEMM"]
    ),
    "W": frozenset(_WRW + a for a in ("GEMM", "Direct", "Winograd", "ImplicitGEMM")),
}
_ANY_ALGORITHM = ALGORITHMS["F"] | ALGORITHMS["B"] | ALGORITHMS["W"]
_DECIMAL = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


@dataclass(frozen=True)
class FindDbEntry:
    """One solver's result for a key: kernel time in ms, workspace in bytes, MIOpen algorithm."""

    solver: str
    time: float
    workspace: int
    algorithm: str


@dataclass(frozen=True)
class Skipped:
    """A line or entry that MIOpen would skip or fail on, with the reason."""

    line: int
    reason: str


@dataclass
class FindDb:
    """A find-db as MIOpen sees it: per key (in file order) its entries, as read."""

    records: dict[str, list[FindDbEntry]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    legacy_entries: int = 0
    current_entries: int = 0


@dataclass
class FindDbWriteStats:
    keys: int = 0
    entries: int = 0
    dropped_not_positive: int = 0
    dropped_beyond_fastest: int = 0
    dropped_duplicate_solver: int = 0
    keys_left_empty: int = 0


def _key_direction(key: str) -> str:
    return key.partition("_")[0].rsplit("-", 1)[-1]


def _parse_entry(item: str, direction: str) -> tuple[FindDbEntry, bool]:
    """One ``ID:VALUES`` item; returns the entry and whether it was in the legacy form."""
    ident, colon, values = item.partition(":")
    if not colon:
        raise DbFileError(f"entry {item!r} has no ':'")
    legacy = ident in _ANY_ALGORITHM
    parts = values.split(",")
    if legacy:
        # MIOpen needs at least three commas here and takes the algorithm from the ID.
        if len(parts) < 4:
            raise DbFileError(f"legacy entry {item!r} needs algorithm:Solver,time,workspace,algorithm")
        solver, time_text, workspace_text, algorithm = parts[0], parts[1], parts[2], ident
    else:
        if len(parts) < 3:
            raise DbFileError(f"entry {item!r} needs Solver:time,workspace,algorithm")
        solver, (time_text, workspace_text, algorithm) = ident, parts[:3]
    if not solver:
        raise DbFileError(f"entry {item!r} has an empty solver name")
    if not _DECIMAL.fullmatch(time_text):
        raise DbFileError(f"entry {item!r}: time {time_text!r} is not a number")
    time = float(time_text)
    if not workspace_text.isdigit():
        raise DbFileError(f"entry {item!r}: workspace {workspace_text!r} is not a byte count")
    if algorithm not in ALGORITHMS.get(direction, ()):
        raise DbFileError(f"entry {item!r}: algorithm {algorithm!r} is not of direction {direction} (Bad algorithm)")
    return FindDbEntry(solver, time, int(workspace_text), algorithm), legacy


def parse_find_db(text: str, *, check_keys: bool = True) -> FindDb:
    """Read a find-db the way MIOpen does; what MIOpen would skip or fail on goes to ``skipped``.

    With ``check_keys`` a key MIOpen would never look up (see problem_key) is skipped too.
    """
    db = FindDb()
    for number, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        key, equals, contents = line.partition("=")
        if not equals or not key:
            db.skipped.append(Skipped(number, "no key before '='"))
            continue
        if key in db.records:
            db.skipped.append(Skipped(number, f"duplicate key {key!r}: MIOpen uses its first line"))
            continue
        if check_keys:
            try:
                check_problem_key(key)
            except DbFileError as error:
                db.skipped.append(Skipped(number, str(error)))
                continue
        direction = _key_direction(key)
        entries: list[FindDbEntry] = []
        seen: set[str] = set()
        for item in contents.split(";"):
            if not item:
                continue
            try:
                entry, legacy = _parse_entry(item, direction)
            except DbFileError as error:
                db.skipped.append(Skipped(number, str(error)))
                continue
            if entry.solver in seen:
                db.skipped.append(Skipped(number, f"duplicate solver {entry.solver!r}: MIOpen uses the first"))
                continue
            seen.add(entry.solver)
            entries.append(entry)
            if legacy:
                db.legacy_entries += 1
            else:
                db.current_entries += 1
        db.records[key] = entries
    return db


def read_find_db(path: str | os.PathLike[str], *, check_keys: bool = True) -> FindDb:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DbFileError(f"cannot read find-db {os.fspath(path)}: {error}") from None
    return parse_find_db(text, check_keys=check_keys)


def usable_time(time: float) -> bool:
    """True when MIOpen reads ``time`` as a positive time (single precision, not 0, not infinite)."""
    return math.isfinite(time) and FLOAT32_MIN <= time <= FLOAT32_MAX


def fastest_entries(
    entries: Iterable[FindDbEntry], keep: int = KEEP_FASTEST, stats: FindDbWriteStats | None = None
) -> list[FindDbEntry]:
    """The ``keep`` fastest entries with a usable time, one per solver, by (time, solver)."""
    stats = stats if stats is not None else FindDbWriteStats()
    best: dict[str, FindDbEntry] = {}
    for entry in entries:
        if not usable_time(entry.time):
            stats.dropped_not_positive += 1
            continue
        known = best.get(entry.solver)
        if known is not None:
            stats.dropped_duplicate_solver += 1
            if (known.time, known.workspace) <= (entry.time, entry.workspace):
                continue
        best[entry.solver] = entry
    ordered = sorted(best.values(), key=lambda e: (e.time, e.solver))
    stats.dropped_beyond_fastest += max(0, len(ordered) - keep)
    return ordered[:keep]


def format_entry(key_direction: str, entry: FindDbEntry) -> str:
    """``Solver:time,workspace,algorithm``, after checking MIOpen can read each part back."""
    check_name("solver name", entry.solver)
    check_name("algorithm", entry.algorithm)
    if entry.algorithm not in ALGORITHMS[key_direction]:
        raise DbFileError(
            f"algorithm {entry.algorithm!r} of solver {entry.solver!r} is not one of direction "
            f"{key_direction}: MIOpen would throw 'Bad algorithm'"
        )
    if isinstance(entry.workspace, bool) or not 0 <= entry.workspace <= MAX_WORKSPACE:
        raise DbFileError(f"workspace {entry.workspace!r} of solver {entry.solver!r} is not a byte count")
    # repr is the shortest text that reads back as the same double; MIOpen reads it as float.
    return f"{entry.solver}:{float(entry.time)!r},{int(entry.workspace)},{entry.algorithm}"


def format_find_db(
    records: Mapping[str, Iterable[FindDbEntry]], *, keep: int = KEEP_FASTEST
) -> tuple[str, FindDbWriteStats]:
    """The find-db text for ``records``: keys sorted, each with its ``keep`` fastest usable entries.

    A key or name MIOpen could not look up or parse raises DbFileError; entries with a time
    MIOpen would not read as positive are dropped and counted.
    """
    stats = FindDbWriteStats()
    lines = []
    for key in sorted(records):
        problem = check_problem_key(key)
        chosen = fastest_entries(records[key], keep, stats)
        if not chosen:
            stats.keys_left_empty += 1
            continue
        lines.append(key + "=" + ";".join(format_entry(problem.direction, entry) for entry in chosen) + "\n")
        stats.keys += 1
        stats.entries += len(chosen)
    return "".join(lines), stats


def write_find_db(
    path: str | os.PathLike[str], records: Mapping[str, Iterable[FindDbEntry]], *, keep: int = KEEP_FASTEST
) -> FindDbWriteStats:
    """Write the find-db atomically (a reader never sees half a file); nothing is written on error."""
    text, stats = format_find_db(records, keep=keep)
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, target)
    return stats
