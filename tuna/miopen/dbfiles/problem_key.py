"""MIOpen's convolution problem key, the text before ``=`` in a find-db line.

MIOpen writes it from its problem description (src/conv/problem_description.cpp,
``ProblemDescription::Serialize``)::

    2-D  C-H-W-FyxFx-K-Ho-Wo-N-PhxPw-ShxSw-DhxDw-BIAS-LAYOUT-TYPE-DIR[_g<G>][_ci<T>][_cw<T>][_co<T>]
    3-D  C-D-H-W-FdxFyxFx-K-Do-Ho-Wo-N-PdxPhxPw-SdxShxSw-DdxDhxDw-BIAS-LAYOUT-TYPE-DIR[...]

The C/H/W group and the first layout token are MIOpen's problem "in" tensor, which for a
backward-data or backward-weights problem is the convolution's output side; this module keeps
every field in its position and never swaps them. LAYOUT is one token only when all three
tensors are NCHW (2-D) or NCDHW (3-D), else three (in, weights, out); TYPE is one name when
the three types are equal, else three names run together. ``_g`` appears only for G != 1.

MIOpen looks a key up by exact string, so a key is accepted only when it is written exactly
as MIOpen writes it: parsing then formatting gives the same text back.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from tuna.miopen.dbfiles.errors import DbFileError

DATA_TYPES = ("FP32", "FP16", "BF16", "INT8", "INT32", "INT64", "FP64", "FP8", "BF8")
DIRECTIONS = ("F", "B", "W")
_LAYOUTS_2D = frozenset(
    ["".join(p) for p in itertools.permutations("NCHW")]
    + ["NCHWc4", "NCHWc8", "CHWNc4", "CHWNc8"]  # MIOpen's vectorized INT8 layouts
)
_LAYOUTS_3D = frozenset("".join(p) for p in itertools.permutations("NCDHW"))
LAYOUTS = {2: _LAYOUTS_2D, 3: _LAYOUTS_3D}
_DEFAULT_LAYOUT = {2: "NCHW", 3: "NCDHW"}

_NUMBER = re.compile(r"0|[1-9][0-9]*")
_TYPE_NAME = "|".join(DATA_TYPES)
DATA_TYPE_TOKEN = _TYPES = re.compile(rf"({_TYPE_NAME})(?:({_TYPE_NAME})({_TYPE_NAME}))?")
_SUFFIX = re.compile(rf"(?:_g([0-9]+))?(?:_ci({_TYPE_NAME}))?(?:_cw({_TYPE_NAME}))?(?:_co({_TYPE_NAME}))?")


@dataclass(frozen=True)
class ProblemKey:
    """Every field of a problem key, named after MIOpen's getters (``in`` is the key's first group).

    For 2-D problems the depth fields hold what MIOpen reports for them: in_d, fil_d and out_d 1,
    pad_d, conv_stride_d and dilation_d 0.
    """

    spatial_dim: int
    in_channels: int
    in_d: int
    in_h: int
    in_w: int
    fil_d: int
    fil_h: int
    fil_w: int
    out_channels: int
    out_d: int
    out_h: int
    out_w: int
    batchsize: int
    pad_d: int
    pad_h: int
    pad_w: int
    conv_stride_d: int
    conv_stride_h: int
    conv_stride_w: int
    dilation_d: int
    dilation_h: int
    dilation_w: int
    bias: int
    layouts: tuple[str, str, str]
    data_types: tuple[str, str, str]
    direction: str
    group_count: int = 1
    cast_types: tuple[str | None, str | None, str | None] = (None, None, None)

    @property
    def data_type(self) -> str:
        """The TYPE token: one name, or the three names run together when they differ."""
        first, weights, out = self.data_types
        return first if first == weights == out else first + weights + out


def _bad(key: str, reason: str) -> DbFileError:
    return DbFileError(f"not a MIOpen problem key: {key!r} ({reason})")


def _number(key: str, token: str, what: str) -> int:
    if not _NUMBER.fullmatch(token):
        raise _bad(key, f"{what} {token!r} is not a decimal number as MIOpen writes it")
    return int(token)


def _triple(key: str, token: str, what: str, dims: int) -> tuple[int, int, int]:
    parts = token.split("x")
    if len(parts) != dims:
        raise _bad(key, f"{what} {token!r} needs {dims} values joined by 'x'")
    values = [_number(key, part, what) for part in parts]
    if dims == 2:
        return (-1, values[0], values[1])
    return (values[0], values[1], values[2])


def _layouts(key: str, tokens: list[str], dims: int) -> tuple[str, str, str]:
    allowed = LAYOUTS[dims]
    for token in tokens:
        if token not in allowed:
            raise _bad(key, f"layout {token!r} is not a {dims}-D layout")
    default = _DEFAULT_LAYOUT[dims]
    if len(tokens) == 1:
        if tokens[0] != default:
            raise _bad(
                key,
                f"a single layout token is written only for {default}; MIOpen writes "
                f"{tokens[0]}-{tokens[0]}-{tokens[0]}",
            )
        return (default, default, default)
    if tokens == [default] * 3:
        raise _bad(key, f"MIOpen writes a uniform {default} problem with one layout token")
    return (tokens[0], tokens[1], tokens[2])


def parse_problem_key(key: str) -> ProblemKey:
    """Parse a find-db key; raise DbFileError with one line when MIOpen would never write it."""
    main, sep, suffix = key.partition("_")
    match = _SUFFIX.fullmatch(sep + suffix)
    if match is None:
        raise _bad(key, f"unknown suffix {sep + suffix!r}; MIOpen writes only _g<G>, _ci, _cw, _co")
    group_text, *casts = match.groups()
    group_count = 1
    if group_text is not None:
        group_count = _number(key, group_text, "group count")
        if group_count == 1:
            raise _bad(key, "MIOpen never writes _g1")
    fields = main.split("-")
    if len(fields) < 4:
        raise _bad(key, f"{len(fields)} fields")
    dims = 2 if "x" in fields[3] else 3
    expected = (15, 17) if dims == 2 else (17, 19)
    if len(fields) not in expected:
        raise _bad(key, f"{len(fields)} fields; a {dims}-D key has {expected[0]} or {expected[1]}")
    layout_count = 1 if len(fields) == expected[0] else 3
    if dims == 2:
        in_c, in_h, in_w, fil, out_c, out_h, out_w, n, pad, stride, dil, bias = fields[:12]
        in_d = out_d = "1"
    else:
        in_c, in_d, in_h, in_w, fil, out_c, out_d, out_h, out_w, n, pad, stride, dil, bias = fields[:14]
    rest = fields[len(fields) - layout_count - 2 :]
    layouts = _layouts(key, rest[:layout_count], dims)
    type_token, direction = rest[layout_count], rest[layout_count + 1]
    types = _TYPES.fullmatch(type_token)
    if types is None:
        raise _bad(key, f"data type {type_token!r} is not one of {', '.join(DATA_TYPES)} or three of them")
    data_types = (types[1], types[2] or types[1], types[3] or types[1])
    if types[2] is not None and data_types[0] == data_types[1] == data_types[2]:
        raise _bad(key, f"MIOpen writes equal data types as one name ({data_types[0]})")
    if direction not in DIRECTIONS:
        raise _bad(key, f"direction {direction!r} is not F, B or W")
    fil_d, fil_h, fil_w = _triple(key, fil, "filter", dims)
    pad_d, pad_h, pad_w = _triple(key, pad, "padding", dims)
    stride_d, stride_h, stride_w = _triple(key, stride, "stride", dims)
    dil_d, dil_h, dil_w = _triple(key, dil, "dilation", dims)
    if dims == 2:
        fil_d, pad_d, stride_d, dil_d = 1, 0, 0, 0
    return ProblemKey(
        spatial_dim=dims,
        in_channels=_number(key, in_c, "input channels"),
        in_d=_number(key, in_d, "input depth"),
        in_h=_number(key, in_h, "input height"),
        in_w=_number(key, in_w, "input width"),
        fil_d=fil_d,
        fil_h=fil_h,
        fil_w=fil_w,
        out_channels=_number(key, out_c, "output channels"),
        out_d=_number(key, out_d, "output depth"),
        out_h=_number(key, out_h, "output height"),
        out_w=_number(key, out_w, "output width"),
        batchsize=_number(key, n, "batch size"),
        pad_d=pad_d,
        pad_h=pad_h,
        pad_w=pad_w,
        conv_stride_d=stride_d,
        conv_stride_h=stride_h,
        conv_stride_w=stride_w,
        dilation_d=dil_d,
        dilation_h=dil_h,
        dilation_w=dil_w,
        bias=_number(key, bias, "bias"),
        layouts=layouts,
        data_types=data_types,
        direction=direction,
        group_count=group_count,
        cast_types=(casts[0], casts[1], casts[2]),
    )


def format_problem_key(problem: ProblemKey) -> str:
    """The key MIOpen writes and looks up for ``problem``."""
    p = problem

    def dhw(sep: str, d: int, h: int, w: int) -> str:
        return f"{d}{sep}{h}{sep}{w}" if p.spatial_dim == 3 else f"{h}{sep}{w}"

    default = _DEFAULT_LAYOUT[p.spatial_dim]
    layout = default if p.layouts == (default, default, default) else "-".join(p.layouts)
    parts = [
        str(p.in_channels),
        dhw("-", p.in_d, p.in_h, p.in_w),
        dhw("x", p.fil_d, p.fil_h, p.fil_w),
        str(p.out_channels),
        dhw("-", p.out_d, p.out_h, p.out_w),
        str(p.batchsize),
        dhw("x", p.pad_d, p.pad_h, p.pad_w),
        dhw("x", p.conv_stride_d, p.conv_stride_h, p.conv_stride_w),
        dhw("x", p.dilation_d, p.dilation_h, p.dilation_w),
        str(p.bias),
        layout,
        p.data_type,
        p.direction,
    ]
    text = "-".join(parts)
    if p.group_count != 1:
        text += f"_g{p.group_count}"
    for tag, cast in zip(("ci", "cw", "co"), p.cast_types):
        if cast is not None:
            text += f"_{tag}{cast}"
    return text


def check_problem_key(key: str) -> ProblemKey:
    """Parse ``key`` and make sure MIOpen would write (and so look up) exactly this text."""
    problem = parse_problem_key(key)
    canonical = format_problem_key(problem)
    if canonical != key:
        raise _bad(key, f"MIOpen writes this problem as {canonical!r}")
    return problem
