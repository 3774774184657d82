"""Which characters MIOpen's text formats can carry in a field.

MIOpen splits a find-db or perf-db line at the first ``=``, its entries on ``;`` and each entry
at the first ``:`` (src/readonlyramdb.cpp, src/db_record.cpp), and find-db values on ``,``
(src/include/miopen/serializable.hpp). Nothing escapes these characters, so a field holding
one of them is refused rather than written into a line MIOpen would read differently.
"""

from __future__ import annotations

import re

from tuna.miopen.dbfiles.errors import DbFileError

# A name MIOpen looks up (solver id, algorithm) never has white space: MIOpen does not trim.
_NAME_FORBIDDEN = re.compile(r"[=;:,\s]")
# Perf-db params are a solver's own serialization; commas and spaces are part of it.
_PARAMS_FORBIDDEN = re.compile(r"[=;:\r\n]")

_WHY = {
    "=": "MIOpen splits a line into key and contents at the first '='",
    ";": "MIOpen splits a line's entries on ';'",
    ":": "MIOpen splits an entry into name and values at the first ':'",
    ",": "MIOpen splits values on ','",
}


def _reason(char: str) -> str:
    if char in _WHY:
        return _WHY[char]
    if char in "\r\n":
        return "MIOpen reads one record per line"
    return "MIOpen compares names exactly and does not trim white space"


def check_name(what: str, value: str) -> str:
    """Return ``value`` if it can be a solver or algorithm name in a MIOpen file, else raise."""
    if not value:
        raise DbFileError(f"{what} is empty")
    found = _NAME_FORBIDDEN.search(value)
    if found:
        raise DbFileError(f"{what} {value!r} contains {found.group()!r}: {_reason(found.group())}")
    return value


def check_params(what: str, value: str) -> str:
    """Return ``value`` if it can be a perf-db params string, else raise."""
    if not value:
        raise DbFileError(f"{what} is empty: MIOpen cannot deserialize empty tuning parameters")
    found = _PARAMS_FORBIDDEN.search(value)
    if found:
        raise DbFileError(f"{what} {value!r} contains {found.group()!r}: {_reason(found.group())}")
    return value
