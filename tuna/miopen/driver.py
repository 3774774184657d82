"""MIOpenDriver command lines ⇄ problems, and the canonical driver string of a config.

No database here, and none in the two modules it rests on: :mod:`tuna.miopen.problem` (the
problem values, their table rows and the config identity :func:`config_md5`) and
:mod:`tuna.miopen.keys` (MIOpen's problem key). This module re-exports what a caller needs
from both, so ``tuna.miopen.driver`` is the one import for lines, keys, rows and identity.

Accepted lines (reference/miopen.md §8, §13.6): MITuna's flags in short and long form, the
lines MIOpen logs (``-t 1``, ``-S``, layouts only when not NCHW, batch norm with
``--layout`` and ``-D``), anything before ``MIOpenDriver`` ignored except MIOpen's API name
(``miopenConvolutionBackwardData: ./bin/MIOpenDriver ...``), which gives the direction
when the line has no ``-F``. A flag always takes the next token as its value, as
MIOpenDriver does. Where MIOpenDriver's defaults and MITuna's differ, MITuna's apply
(batch 32, 3x3 filter, 32x32 input), except the direction: a line without ``-F`` and
without an API name means what MIOpenDriver runs for it, ``-F 0``, all three directions.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuna.miopen.keys import parse_key, problem_key
from tuna.miopen.problem import (
    BN_COMMANDS,
    CONV_COMMANDS,
    DEFAULT_LAYOUT,
    DIRECTION_FLAG,
    DIRECTION_LETTER,
    BnProblem,
    ConvProblem,
    DriverError,
    bn_from_rows,
    bn_problems,
    config_md5,
    conv_from_rows,
    conv_problem,
)

__all__ = [
    "BnProblem",
    "ConvProblem",
    "DriverError",
    "Problem",
    "bn_from_rows",
    "config_md5",
    "conv_from_rows",
    "driver_string",
    "parse_driver",
    "parse_key",
    "parse_line",
    "problem_key",
]

Problem = ConvProblem | BnProblem

_INT = re.compile(r"-?[0-9]+\.?")


@dataclass(frozen=True)
class Flag:
    name: str  # the attribute, MITuna's column name ("" for an ignored short-only flag)
    kind: str  # "int", "str" or "ignored" (a run option, not part of the problem)


def _flags(table: list[tuple[str, str, str]]) -> dict[str, Flag]:
    flags: dict[str, Flag] = {}
    for short, long, kind in table:
        flag = Flag(long, kind)
        if short:
            flags["-" + short] = flag
        if long:
            flags["--" + long] = flag
    return flags


# (short, long, kind). Short forms are MITuna's and MIOpenDriver's (driver/conv_driver.hpp).
CONV_FLAGS = _flags(
    [
        ("F", "forw", "int"),
        ("n", "batchsize", "int"),
        ("c", "in_channels", "int"),
        ("H", "in_h", "int"),
        ("W", "in_w", "int"),
        ("!", "in_d", "int"),
        ("k", "out_channels", "int"),
        ("y", "fil_h", "int"),
        ("x", "fil_w", "int"),
        ("@", "fil_d", "int"),
        ("p", "pad_h", "int"),
        ("q", "pad_w", "int"),
        ("$", "pad_d", "int"),
        ("u", "conv_stride_h", "int"),
        ("v", "conv_stride_w", "int"),
        ("#", "conv_stride_d", "int"),
        ("l", "dilation_h", "int"),
        ("j", "dilation_w", "int"),
        ("^", "dilation_d", "int"),
        ("g", "group_count", "int"),
        ("m", "mode", "str"),
        ("z", "pad_mode", "str"),
        ("Y", "trans_output_pad_h", "int"),
        ("X", "trans_output_pad_w", "int"),
        ("%", "trans_output_pad_d", "int"),
        ("_", "spatial_dim", "int"),
        ("I", "in_layout", "str"),
        ("O", "out_layout", "str"),
        ("f", "fil_layout", "str"),
        ("i", "iter", "ignored"),
        ("t", "time", "ignored"),
        ("V", "verify", "ignored"),
        ("s", "search", "ignored"),
        ("b", "bias", "ignored"),  # the bias pass is its own problem; MIFin forces bias 0
        ("w", "wall", "ignored"),
        ("S", "solution", "ignored"),
        ("Z", "", "ignored"),  # MITuna skips it; it has no long form
    ]
)

BN_FLAGS = _flags(
    [
        ("n", "batchsize", "int"),
        ("c", "in_channels", "int"),
        ("H", "in_h", "int"),
        ("W", "in_w", "int"),
        ("D", "in_d", "int"),
        ("!", "in_d", "int"),
        ("m", "mode", "int"),
        ("F", "forw", "int"),
        ("b", "back", "int"),
        ("r", "run", "int"),
        ("s", "save", "int"),
        ("A", "alpha", "int"),
        ("B", "beta", "int"),
        ("L", "layout", "str"),
        ("V", "verify", "ignored"),
        ("i", "iter", "ignored"),
        ("t", "time", "ignored"),
        ("w", "wall", "ignored"),
    ]
)

CONV_DEFAULTS: dict[str, Any] = {
    "batchsize": 32,
    "spatial_dim": 2,
    "in_channels": 3,
    "in_d": 1,
    "in_h": 32,
    "in_w": 32,
    "out_channels": 32,
    "fil_d": 1,
    "fil_h": 3,
    "fil_w": 3,
    "pad_d": 0,
    "pad_h": 0,
    "pad_w": 0,
    "conv_stride_d": 1,
    "conv_stride_h": 1,
    "conv_stride_w": 1,
    "dilation_d": 1,
    "dilation_h": 1,
    "dilation_w": 1,
    "group_count": 1,
    "mode": "conv",
    "pad_mode": "default",
    "trans_output_pad_d": 0,
    "trans_output_pad_h": 0,
    "trans_output_pad_w": 0,
}
BN_DEFAULTS: dict[str, Any] = {
    "batchsize": 32,
    "in_channels": 1,
    "in_h": 1,
    "in_w": 1,
    "mode": 0,
    "forw": 1,
    "back": 0,
    "run": 0,
    "save": 0,
    "alpha": 1,
    "beta": 0,
}

_API_DIRECTION = re.compile(r"miopenConvolution(Forward|BackwardData|BackwardWeights)")
_API_LETTER = {"Forward": "F", "BackwardData": "B", "BackwardWeights": "W"}
_ALL_DIRECTIONS = ("F", "B", "W")


def parse_line(line: str) -> list[Problem]:
    """The problems of one input line: a MIOpenDriver line, or a find-db/perf-db key.

    A convolution line with ``-F 0``, a sum of directions or no direction gives one problem
    per direction; a batch-norm line with ``--forw 1 -b 1`` gives two.
    """
    text = line.strip()
    if "MIOpenDriver" in text:
        return parse_driver(text)
    if not text:
        raise DriverError("empty", "empty line")
    key = text.split("=", 1)[0]
    # A key is one token starting with a digit; a line cut before its command is not.
    if "=" in text or (text[0].isdigit() and not any(c.isspace() for c in key)):
        return [parse_key(key)]
    raise DriverError("not_a_driver_line", f"not a MIOpenDriver line or problem key: {_show(text)}")


def parse_driver(line: str) -> list[Problem]:
    """The problems of one MIOpenDriver line (see the module docstring)."""
    prefix, sep, rest = line.partition("MIOpenDriver")
    if not sep:
        raise DriverError("not_a_driver_line", f"not a MIOpenDriver line or problem key: {_show(line)}")
    tokens = rest.split()
    if not tokens:
        raise DriverError("no_command", "MIOpenDriver line without a command")
    cmd = tokens[0]
    if cmd in CONV_COMMANDS:
        api = _API_DIRECTION.search(prefix)
        return _conv_line(cmd, tokens[1:], _API_LETTER[api.group(1)] if api else None)
    if cmd in BN_COMMANDS:
        return _bn_line(cmd, tokens[1:])
    known = ", ".join([*CONV_COMMANDS, *BN_COMMANDS])
    raise DriverError("unsupported_command", f"unsupported MIOpenDriver command {_show(cmd)} (tuna takes {known})")


def _show(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _read_flags(tokens: list[str], flags: dict[str, Flag]) -> dict[str, Any]:
    given: dict[str, Any] = {}
    seen_as: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("-") or token in ("-", "--"):
            raise DriverError("stray_token", f"unexpected token {_show(token)}: flags and values must alternate")
        flag = flags.get(token)
        if flag is None:
            raise DriverError("unknown_parameter", f"Unknown parameter: {_show(token)}")
        if i + 1 >= len(tokens):
            raise DriverError("missing_value", f"{token} has no value")
        raw = tokens[i + 1]
        i += 2
        if flag.kind == "ignored":
            continue
        value = _value(token, raw, flag.kind)
        if flag.name in given and given[flag.name] != value:
            raise DriverError(
                "conflicting_flag",
                f"{token} {raw} contradicts {seen_as[flag.name]} {given[flag.name]} given before",
            )
        given[flag.name] = value
        seen_as[flag.name] = token
    return given


def _value(token: str, raw: str, kind: str) -> Any:
    if kind == "str":
        return raw
    # MIOpenDriver reads integers with atoi, so "1." (seen in MITuna's msra.txt) is 1.
    if not _INT.fullmatch(raw):
        raise DriverError("bad_value", f"{token}: {_show(raw)} is not an integer")
    return int(raw.rstrip("."))


def _directions(forw: int | None, api: str | None) -> tuple[str, ...]:
    if forw is None:
        return (api,) if api else _ALL_DIRECTIONS
    if not 0 <= forw <= 7:
        raise DriverError(
            "bad_direction",
            f"-F {forw} is not a direction (1 forward, 2 backward data, 4 backward weights, a sum, or 0 for all)",
        )
    letters = _ALL_DIRECTIONS if forw == 0 else tuple(DIRECTION_LETTER[b] for b in (1, 2, 4) if forw & b)
    if api and letters != (api,):
        raise DriverError("direction_conflict", f"-F {forw} contradicts the API name's direction {api}")
    return letters


def _conv_line(cmd: str, tokens: list[str], api: str | None) -> list[Problem]:
    given = _read_flags(tokens, CONV_FLAGS)
    values = {**CONV_DEFAULTS, **given, "data_type": CONV_COMMANDS[cmd]}
    spatial_dim = values["spatial_dim"]
    default_layout = DEFAULT_LAYOUT.get(spatial_dim, "NCHW")
    for name in ("in_layout", "fil_layout", "out_layout"):
        values.setdefault(name, default_layout)
    problems: list[Problem] = []
    for letter in _directions(given.get("forw"), api):
        problems.append(conv_problem({**values, "direction": letter}))
    return problems


def _bn_line(cmd: str, tokens: list[str]) -> list[Problem]:
    given = _read_flags(tokens, BN_FLAGS)
    values = {**BN_DEFAULTS, **given, "data_type": BN_COMMANDS[cmd]}
    layout = given.get("layout")
    if layout is not None:
        values["spatial_dim"] = 3 if len(layout) == 5 else 2
    else:
        # MIOpen logs -D only for a 5-D tensor; MITuna's own strings carry --in_d 1 for 2-D.
        values["spatial_dim"] = 3 if given.get("in_d", 1) > 1 else 2
        values["layout"] = DEFAULT_LAYOUT[values["spatial_dim"]]
    values.setdefault("in_d", 1)
    return list(bn_problems(values))


_CONV_ORDER = (
    "batchsize",
    "spatial_dim",
    "pad_h",
    "pad_w",
    "pad_d",
    "conv_stride_h",
    "conv_stride_w",
    "conv_stride_d",
    "dilation_h",
    "dilation_w",
    "dilation_d",
    "group_count",
    "mode",
    "pad_mode",
    "trans_output_pad_h",
    "trans_output_pad_w",
    "trans_output_pad_d",
    "out_layout",
    "in_layout",
    "fil_layout",
    "in_d",
    "in_h",
    "in_w",
    "fil_d",
    "fil_h",
    "fil_w",
    "in_channels",
    "out_channels",
)


def conv_driver_string(problem: ConvProblem) -> str:
    """MITuna's canonical string (reference/miopen.md §8.6), without --verify/--iter."""
    cmd = problem.command
    values = {**problem.config_row(), **vars(problem)}
    parts = [f"./bin/MIOpenDriver {cmd}"]
    parts += [f"--{name} {values[name]}" for name in _CONV_ORDER]
    parts.append(f"--forw {DIRECTION_FLAG[problem.direction]}")
    return " ".join(parts)


def bn_driver_string(problem: BnProblem) -> str:
    """MITuna's batch-norm order, with ``-s`` honoured, ``--in_d`` only in 3-D (MIOpenDriver
    takes any depth as 3-D) and ``--layout`` always."""
    parts = [f"./bin/MIOpenDriver {problem.command}"]
    names = ["batchsize", "alpha", "beta", "forw", "back", "mode", "run"]
    names += ["in_d"] if problem.spatial_dim == 3 else []
    names += ["in_h", "in_w", "in_channels", "save", "layout"]
    parts += [f"--{name} {getattr(problem, name)}" for name in names]
    return " ".join(parts)


def driver_string(problem: Problem) -> str:
    """The canonical driver string of a config: parses back to the same problem."""
    build: Callable[[Any], str] = conv_driver_string if isinstance(problem, ConvProblem) else bn_driver_string
    return build(problem)
