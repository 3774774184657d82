"""The problem key as the database files need it, on top of :mod:`tuna.miopen.keys`.

The key grammar (reference/miopen.md §13.1) lives in one place, :mod:`tuna.miopen.keys`;
this module only turns its refusals into :class:`DbFileError` and adds the rule the files
need: a key is accepted only when writing its problem back gives the very same text,
because MIOpen looks keys up by exact string.
"""

from __future__ import annotations

import re

from tuna.miopen.dbfiles.errors import DbFileError
from tuna.miopen.keys import parse_key, problem_key
from tuna.miopen.problem import DATA_TYPES, LAYOUTS, ConvProblem, DriverError

DIRECTIONS = ("F", "B", "W")
_TYPE_NAME = "|".join(sorted(DATA_TYPES, key=len, reverse=True))
#: The TYPE token of a key: one name, or three run together.
DATA_TYPE_TOKEN = re.compile(rf"({_TYPE_NAME})(?:({_TYPE_NAME})({_TYPE_NAME}))?")

__all__ = ["DATA_TYPE_TOKEN", "DIRECTIONS", "LAYOUTS", "ConvProblem", "check_problem_key", "format_problem_key"]


def check_problem_key(key: str) -> ConvProblem:
    """The problem of ``key``; DbFileError (one line) unless MIOpen writes exactly this text."""
    try:
        problem = parse_key(key)
    except DriverError as error:
        raise DbFileError(f"not a MIOpen problem key: {error}") from None
    canonical = problem_key(problem)
    if canonical != key:
        raise DbFileError(f"not a MIOpen problem key: {key!r} (MIOpen writes this problem as {canonical!r})")
    return problem


def format_problem_key(problem: ConvProblem) -> str:
    return problem_key(problem)
