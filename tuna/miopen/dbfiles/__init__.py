"""The files MIOpen reads at run time: find-db, perf-db (SQLite and text) and kernel-db.

Pure functions over plain dataclasses, no tuna database: the exporters and importers of the
MIOpen library call them. Each module's docstring gives its format as MIOpen reads it.
"""

from tuna.miopen.dbfiles.errors import DbFileError, KernelBlobError
from tuna.miopen.dbfiles.finddb import (
    FindDb,
    FindDbEntry,
    FindDbWriteStats,
    fastest_entries,
    format_find_db,
    parse_find_db,
    read_find_db,
    write_find_db,
)
from tuna.miopen.dbfiles.kerneldb import (
    KernelObject,
    KernelRow,
    kernel_objects_in_fin_output,
    kernel_row,
    load_kernel,
    read_kernel_db,
    write_kernel_db,
)
from tuna.miopen.dbfiles.names import (
    DbFileName,
    db_basename,
    find_db_name,
    kernel_db_name,
    parse_db_basename,
    parse_db_filename,
    perf_db_name,
)
from tuna.miopen.dbfiles.perfdb import (
    PerfConfig,
    PerfEntry,
    format_perf_text,
    lookup_perf_sqlite,
    lookup_perf_text,
    parse_perf_text,
    read_perf_sqlite,
    read_perf_text,
    write_perf_sqlite,
    write_perf_text,
)
from tuna.miopen.dbfiles.problem_key import check_problem_key, format_problem_key

__all__ = [
    "DbFileError",
    "DbFileName",
    "FindDb",
    "FindDbEntry",
    "FindDbWriteStats",
    "KernelBlobError",
    "KernelObject",
    "KernelRow",
    "PerfConfig",
    "PerfEntry",
    "check_problem_key",
    "db_basename",
    "fastest_entries",
    "find_db_name",
    "format_find_db",
    "format_perf_text",
    "format_problem_key",
    "kernel_db_name",
    "kernel_objects_in_fin_output",
    "kernel_row",
    "load_kernel",
    "lookup_perf_sqlite",
    "lookup_perf_text",
    "parse_db_basename",
    "parse_db_filename",
    "parse_find_db",
    "parse_perf_text",
    "perf_db_name",
    "read_find_db",
    "read_kernel_db",
    "read_perf_sqlite",
    "read_perf_text",
    "write_find_db",
    "write_kernel_db",
    "write_perf_sqlite",
    "write_perf_text",
]
