"""MIOpen's file names for its find-db, perf-db and kernel-db, in both directions.

MIOpen opens ``<DbId><CUs><extension>`` (``Handle::GetDbBasename``): the CU count follows
``_`` in decimal when it is at most 64 (``gfx906_60``) and follows the DbId directly in
lowercase hex, without leading zeros, when it is above 64 (``gfx90a68`` = 104 CUs,
``gfx942130`` = 304). The DbId is the arch, plus ``_xnack`` when the device reports
``xnack+`` (``_nosramecc`` / ``_sramecc`` exist in MIOpen's rule too; src/target_properties.cpp).

Extensions: find-db ``.HIP.fdb.txt`` (``.OpenCL.fdb.txt``), perf-db ``.db.txt`` (text, what a
stock MIOpen reads) or ``.db`` (SQLite), kernel-db ``.kdb``.

Reading a name back needs to know where the arch ends when hex digits follow it. Every AMD
GPU arch is ``gfx`` + major (6-9, or 10-19) + one decimal minor + one hex stepping
(gfx803, gfx90a, gfx942, gfx1030, gfx1100), which makes the split unique without a list of
known arches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

from tuna.miopen.dbfiles.errors import DbFileError

MAX_DECIMAL_CUS = 64

EXTENSIONS = {
    ".HIP.fdb.txt": ("find", "HIP"),
    ".OpenCL.fdb.txt": ("find", "OpenCL"),
    ".db.txt": ("perf_text", None),
    ".db": ("perf_sqlite", None),
    ".kdb": ("kernel", None),
}

_ARCH = r"gfx(?:[6-9]|1[0-9])[0-9][0-9a-f]"
_FEATURES = r"(?:_nosramecc|_sramecc)?(?:_xnack)?"
_BASENAME = re.compile(rf"(?P<arch>{_ARCH})(?P<features>{_FEATURES})(?:_(?P<dec>[0-9]+)|(?P<hex>[0-9a-f]+))")


@dataclass(frozen=True)
class DbFileName:
    """What a MIOpen database file name says: arch, features, CU count, kind and backend."""

    arch: str
    num_cu: int
    db_id: str
    kind: str | None = None  # find, perf_text, perf_sqlite, kernel
    backend: str | None = None  # HIP or OpenCL for a find-db


def db_id(target: str) -> str:
    """MIOpen's DbId for a target id such as ``gfx90a:sramecc+:xnack-``.

    MIOpen ignores the reported sramecc state for the DbId (it uses gfx906/gfx908's default,
    which adds no suffix), so only ``xnack+`` changes the name.
    """
    name = target.split(":", 1)[0]
    if not re.fullmatch(_ARCH, name):
        raise DbFileError(f"{target!r} is not an AMD GPU arch (gfx followed by its version, e.g. gfx90a)")
    return name + ("_xnack" if ":xnack+" in target else "")


def db_basename(target: str, num_cu: int) -> str:
    """``<DbId><CUs>`` as MIOpen builds it: ``gfx906_60``, ``gfx90a68``, ``gfx942130``."""
    if num_cu < 1:
        raise DbFileError(f"CU count {num_cu} is not a positive number")
    suffix = f"_{num_cu}" if num_cu <= MAX_DECIMAL_CUS else format(num_cu, "x")
    return db_id(target) + suffix


def find_db_name(target: str, num_cu: int, *, opencl: bool = False) -> str:
    return db_basename(target, num_cu) + (".OpenCL.fdb.txt" if opencl else ".HIP.fdb.txt")


def perf_db_name(target: str, num_cu: int, *, sqlite: bool) -> str:
    """``.db.txt`` is what an installed MIOpen reads; ``.db`` is the SQLite it is built from."""
    return db_basename(target, num_cu) + (".db" if sqlite else ".db.txt")


def kernel_db_name(target: str, num_cu: int) -> str:
    return db_basename(target, num_cu) + ".kdb"


def parse_db_basename(base: str) -> DbFileName:
    """Arch and CU count from ``<DbId><CUs>``, refusing names MIOpen would never open."""
    match = _BASENAME.fullmatch(base)
    if match is None:
        raise DbFileError(
            f"{base!r} is not a MIOpen database name: expected <arch>_<CUs> (gfx906_60) or "
            "<arch><CUs in hex> above 64 CUs (gfx90a68)"
        )
    arch, features = match["arch"], match["features"]
    if match["dec"] is not None:
        text, num_cu = match["dec"], int(match["dec"])
        if num_cu > MAX_DECIMAL_CUS:
            raise DbFileError(
                f"{base!r}: MIOpen writes a CU count above {MAX_DECIMAL_CUS} in hex, without '_' "
                f"({arch}{features}{num_cu:x})"
            )
    else:
        text, num_cu = match["hex"], int(match["hex"], 16)
        if num_cu <= MAX_DECIMAL_CUS:
            raise DbFileError(
                f"{base!r}: MIOpen writes a CU count of {MAX_DECIMAL_CUS} or less in decimal after '_' "
                f"({arch}{features}_{num_cu})"
            )
    if text != str(num_cu) and text != format(num_cu, "x"):
        raise DbFileError(f"{base!r}: MIOpen writes CU counts without leading zeros")
    if num_cu < 1:
        raise DbFileError(f"{base!r}: CU count {num_cu} is not a positive number")
    return DbFileName(arch=arch, num_cu=num_cu, db_id=arch + features)


def parse_db_filename(path: str | PurePath) -> DbFileName:
    """Arch, CU count, kind and backend from a file name such as ``gfx90a68.HIP.fdb.txt``."""
    name = PurePath(path).name
    for extension in sorted(EXTENSIONS, key=len, reverse=True):
        if name.endswith(extension):
            kind, backend = EXTENSIONS[extension]
            parsed = parse_db_basename(name[: -len(extension)])
            return DbFileName(parsed.arch, parsed.num_cu, parsed.db_id, kind, backend)
    raise DbFileError(f"{name!r} does not end in {', '.join(EXTENSIONS)}")
