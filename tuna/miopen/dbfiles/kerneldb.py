"""Kernel-db (``<base>.kdb``): MIOpen's SQLite cache of compiled code objects, built from fin's.

Table and index as MIOpen creates them (src/include/miopen/kern_db.hpp)::

    kern_db(id INTEGER PRIMARY KEY ASC, kernel_name TEXT, kernel_args TEXT, kernel_blob BLOB,
            kernel_hash TEXT, uncompressed_size INT)   all NOT NULL
    UNIQUE INDEX idx_kern_db(kernel_name, kernel_args)

MIOpen looks a kernel up by ``kernel_name`` = program file + ``.o`` and ``kernel_args`` =
compile options + `` -mcpu=<arch>`` (no ``-mcpu`` for ``.mlir`` programs; src/hip/handlehip.cpp),
pasting both into its SQL between single quotes, so a ``'`` in either can never be found.
It bzip2-decompresses the blob into exactly ``uncompressed_size`` bytes (0 means stored raw)
and throws "Possible database corruption" unless the lowercase hex md5 equals ``kernel_hash``.

fin sends each kernel as ``{kernel_file, comp_options, blob, md5_sum, uncompressed_size}`` with
blob = base64(bzip2(code object)); every blob is decoded, decompressed and checked here before a
row is written, and a kernel fin could not compress (md5 "Failed to compress kernel") is dropped.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import hashlib
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuna.miopen.dbfiles.errors import DbFileError, KernelBlobError
from tuna.miopen.dbfiles.names import db_id

FIN_COMPRESS_FAILED = "Failed to compress kernel"
KERN_DB_DDL = (
    "CREATE TABLE IF NOT EXISTS `kern_db` (`id` INTEGER PRIMARY KEY ASC,`kernel_name` TEXT NOT NULL,"
    "`kernel_args` TEXT NOT NULL,`kernel_blob` BLOB NOT NULL,`kernel_hash` TEXT NOT NULL,"
    "`uncompressed_size` INT NOT NULL);"
    "CREATE UNIQUE INDEX IF NOT EXISTS `idx_kern_db` ON kern_db(kernel_name, kernel_args);"
)
MIN_SQLITE_BYTES = 512


@dataclass(frozen=True)
class KernelObject:
    """A compiled kernel as fin reports it (and as tuna stores it)."""

    kernel_file: str
    comp_options: str
    blob: str  # base64 of the bzip2-compressed code object
    md5_sum: str  # md5 of the uncompressed code object
    uncompressed_size: int

    @classmethod
    def from_fin(cls, item: Mapping[str, Any]) -> KernelObject:
        try:
            return cls(
                kernel_file=str(item["kernel_file"]),
                comp_options=str(item["comp_options"]),
                blob=str(item["blob"]),
                md5_sum=str(item["md5_sum"]),
                uncompressed_size=int(item["uncompressed_size"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise KernelBlobError(f"fin kernel object lacks a usable field: {error}") from None


@dataclass(frozen=True)
class KernelRow:
    """One ``kern_db`` row, verified the way MIOpen will check it when it loads the kernel."""

    kernel_name: str
    kernel_args: str
    kernel_blob: bytes
    kernel_hash: str
    uncompressed_size: int


@dataclass
class KernelDbWriteStats:
    written: int = 0
    duplicates: int = 0
    dropped_uncompressed: int = 0
    refused: list[str] = field(default_factory=list)


def kernel_objects_in_fin_output(output: Any) -> Iterator[KernelObject]:
    """Every kernel object anywhere in a fin output (compile results, eval results, echoed input)."""
    stack = [output]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for name, value in node.items():
                if name == "kernel_objects" and isinstance(value, list):
                    yield from (KernelObject.from_fin(item) for item in value)
                else:
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(reversed(node))


def unpack_code_object(blob: bytes, size: int) -> bytes:
    """Decompress one bzip2 stream, as MIOpen's BZ2_bzBuffToBuffDecompress does."""
    decompressor = bz2.BZ2Decompressor()
    try:
        code = decompressor.decompress(blob, max_length=size + 1)
    except (OSError, EOFError) as error:
        raise KernelBlobError(f"blob is not bzip2 data ({error})") from None
    if len(code) > size:
        raise KernelBlobError(f"blob decompresses to more than uncompressed_size {size} bytes")
    if not decompressor.eof:
        raise KernelBlobError(f"blob is a truncated bzip2 stream ({len(code)} of {size} bytes)")
    if decompressor.unused_data:
        raise KernelBlobError(f"blob has {len(decompressor.unused_data)} bytes after its bzip2 stream")
    return code


def kernel_row(kernel: KernelObject, target: str) -> KernelRow:
    """The row MIOpen looks up for ``kernel`` on ``target``; raise KernelBlobError when it would reject it."""
    name = kernel.kernel_file + ".o"
    args = kernel.comp_options
    if not kernel.kernel_file.endswith(".mlir") and " -mcpu=" not in args:
        args += " -mcpu=" + db_id(target).split("_", 1)[0]
    where = f"kernel {name}"
    for what, text in (("name", name), ("arguments", args)):
        if "'" in text:
            raise KernelBlobError(f"{where}: its {what} contain ', which breaks MIOpen's quoted lookup")
    try:
        packed = base64.b64decode(kernel.blob, validate=True)
    except (binascii.Error, ValueError) as error:
        raise KernelBlobError(f"{where}: blob is not base64 ({error})") from None
    size = kernel.uncompressed_size
    if size < 0:
        raise KernelBlobError(f"{where}: uncompressed_size {size} is negative")
    try:
        code = packed if size == 0 else unpack_code_object(packed, size)
    except KernelBlobError as error:
        raise KernelBlobError(f"{where}: {error}") from None
    if size and len(code) != size:
        raise KernelBlobError(f"{where}: blob decompresses to {len(code)} bytes, not uncompressed_size {size}")
    digest = hashlib.md5(code).hexdigest()
    if digest != kernel.md5_sum.lower():
        raise KernelBlobError(f"{where}: md5 of the code object is {digest}, not {kernel.md5_sum}")
    return KernelRow(name, args, packed, digest, size)


def write_kernel_db(
    path: str | os.PathLike[str], kernels: Iterable[KernelObject], target: str, *, strict: bool = False
) -> KernelDbWriteStats:
    """Write a new kernel-db of the verified kernels; the first of a (name, args) pair wins.

    A kernel MIOpen would reject is left out and its one-line reason kept in ``refused``
    (with ``strict``, the first one raises KernelBlobError and nothing is written).
    """
    stats = KernelDbWriteStats()
    rows: dict[tuple[str, str], KernelRow] = {}
    for kernel in kernels:
        if kernel.md5_sum == FIN_COMPRESS_FAILED:
            stats.dropped_uncompressed += 1
            continue
        try:
            row = kernel_row(kernel, target)
        except KernelBlobError as error:
            if strict:
                raise
            stats.refused.append(str(error))
            continue
        if (row.kernel_name, row.kernel_args) in rows:
            stats.duplicates += 1
            continue
        rows[row.kernel_name, row.kernel_args] = row
    target_path = Path(path)
    partial = target_path.with_name(target_path.name + ".partial")
    partial.unlink(missing_ok=True)
    with sqlite3.connect(partial) as con:
        con.executescript(KERN_DB_DDL)
        con.executemany(
            "INSERT INTO kern_db (kernel_name, kernel_args, kernel_blob, kernel_hash, uncompressed_size) "
            "VALUES (?, ?, ?, ?, ?)",
            [(r.kernel_name, r.kernel_args, r.kernel_blob, r.kernel_hash, r.uncompressed_size) for r in rows.values()],
        )
    con.close()
    os.replace(partial, target_path)
    stats.written = len(rows)
    return stats


def _open_kernel_db(path: str | os.PathLike[str]) -> sqlite3.Connection:
    file = Path(path)
    if not file.is_file() or file.stat().st_size < MIN_SQLITE_BYTES:
        raise DbFileError(f"kernel-db {file} is missing or smaller than {MIN_SQLITE_BYTES} bytes: MIOpen ignores it")
    return sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)


def read_kernel_db(path: str | os.PathLike[str]) -> list[KernelRow]:
    con = _open_kernel_db(path)
    try:
        rows = con.execute(
            "SELECT kernel_name, kernel_args, kernel_blob, kernel_hash, uncompressed_size FROM kern_db ORDER BY id"
        ).fetchall()
    finally:
        con.close()
    return [KernelRow(*row) for row in rows]


def load_kernel(path: str | os.PathLike[str], kernel_name: str, kernel_args: str) -> bytes | None:
    """The code object MIOpen would load, by its query and checks (KernDb::FindRecordUnsafe); None if absent.

    MIOpen pastes name and arguments between quotes; binding them finds the same row for every
    text without a quote, and a text with one is refused as MIOpen could never find it.
    """
    if "'" in kernel_name or "'" in kernel_args:
        raise DbFileError("MIOpen cannot look up a kernel whose name or arguments contain '")
    con = _open_kernel_db(path)
    try:
        found = con.execute(
            "SELECT kernel_blob, kernel_hash, uncompressed_size FROM kern_db WHERE "
            "(kernel_name = ?) AND (kernel_args = ?);",
            (kernel_name, kernel_args),
        ).fetchone()
    finally:
        con.close()
    if found is None:
        return None
    blob, digest, size = bytes(found[0]), found[1], found[2]
    code = blob if size == 0 else unpack_code_object(blob, size)
    if hashlib.md5(code).hexdigest() != digest:
        raise KernelBlobError("Possible database corruption")
    return code
