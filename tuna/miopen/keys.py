"""MIOpen's problem key (find-db and perf-db), both ways: reference/miopen.md §13.1.

2-D ``C-H-W-FyxFx-K-Ho-Wo-N-PhxPw-ShxSw-DhxDw-BIAS-LAYOUT-TYPE-DIR[_g<G>][_ci<T>][_cw<T>][_co<T>]``,
3-D adds D, Fd, Do, Pd, Sd, Dd. The groups belong to MIOpen's problem tensors: F is (x, w, y),
B is (dy, w, dx), W is (dy, dw, x), so for B and W the first C/H/W group and the first
layout and type are the convolution's output side. LAYOUT is one token when all three
tensors have the default layout (NCHW, NCDHW), else three; TYPE is one name when the three
types are equal, else three names run together. Only the key forms MIOpen writes are
accepted, so that a key read and written back is the key MIOpen looks up.
"""

from __future__ import annotations

import dataclasses
import re

from tuna.miopen.problem import DATA_TYPES, DEFAULT_LAYOUT, ConvProblem, DriverError, conv_problem

_TYPE = "|".join(sorted(DATA_TYPES, key=len, reverse=True))
_TYPES = re.compile(rf"({_TYPE})")
_SUFFIX = re.compile(rf"(?:_g([0-9]+))?(?:_ci({_TYPE}))?(?:_cw({_TYPE}))?(?:_co({_TYPE}))?")
_KEY_CHARS = re.compile(r"[0-9A-Za-z_-]+")


def _ints(token: str, count: int, what: str) -> list[int]:
    parts = token.split("x")
    if len(parts) != count or not all(p.isdigit() for p in parts):
        shape = "x".join(["N"] * count)
        raise DriverError("bad_key", f"problem key field {what} {token!r} is not {shape}")
    return [int(p) for p in parts]


def _types(token: str) -> list[str]:
    names = _TYPES.findall(token)
    if "".join(names) != token or len(names) not in (1, 3):
        raise DriverError("bad_key", f"problem key type {token!r} is not one or three of {', '.join(DATA_TYPES)}")
    if len(names) == 3 and len(set(names)) == 1:
        raise DriverError("key_not_canonical", f"problem key type {token}: MIOpen writes {names[0]} for equal types")
    return names * 3 if len(names) == 1 else names


def parse_key(key: str) -> ConvProblem:
    """The convolution problem of a find-db/perf-db key (the text before ``=``)."""
    key = key.strip()
    if not _KEY_CHARS.fullmatch(key):
        bad = "".join(sorted(set(re.sub(r"[0-9A-Za-z_-]", "", key))))
        raise DriverError("key_chars", f"problem key {key[:80]!r} holds characters MIOpen's keys cannot: {bad!r}")
    base, _, suffix = key.partition("_")
    suffix = "_" + suffix if suffix else ""
    extra = _SUFFIX.fullmatch(suffix)
    if extra is None:
        raise DriverError("bad_key", f"problem key suffix {suffix!r} is not _g<G>[_ci<T>][_cw<T>][_co<T>]")
    group, cast_in, cast_wei, cast_out = extra.groups()
    if group is not None and int(group) == 1:
        raise DriverError("key_not_canonical", "problem key suffix _g1: MIOpen writes no suffix for one group")
    fields = base.split("-")
    three_d = len(fields) > 4 and fields[4].count("x") == 2
    dims = 3 if three_d else 2
    lead = 10 if three_d else 8  # fields before the pads
    if len(fields) not in (lead + 7, lead + 9):
        raise DriverError(
            "bad_key", f"problem key has {len(fields)} fields; a {dims}-D key has {lead + 7} or {lead + 9}"
        )
    direction = fields[-1]
    if direction not in ("F", "B", "W"):
        raise DriverError("bad_key", f"problem key direction {direction!r} is not F, B or W")
    layouts = fields[lead + 4 : -2]
    types = _types(fields[-2])
    if len(layouts) == 1:
        if layouts[0] != DEFAULT_LAYOUT[dims]:
            raise DriverError(
                "key_not_canonical",
                f"problem key layout {layouts[0]}: MIOpen writes {'-'.join([layouts[0]] * 3)} and never looks "
                "up a single non-default layout",
            )
        layouts = layouts * 3
    elif len(set(layouts)) == 1 and layouts[0] == DEFAULT_LAYOUT[dims]:
        raise DriverError(
            "key_not_canonical", f"problem key layout {'-'.join(layouts)}: MIOpen writes {layouts[0]} once"
        )
    numbers = [_ints(f, 1, f"#{i + 1}")[0] for i, f in enumerate(fields) if i < lead and i != dims + 1]
    filt = _ints(fields[dims + 1], dims, "filter")
    pads, strides, dilations = (_ints(fields[lead + i], dims, n) for i, n in enumerate(("pad", "stride", "dilation")))
    bias = _ints(fields[lead + 3], 1, "bias")[0]
    if bias not in (0, 1):
        raise DriverError("bad_key", f"problem key bias {bias} is not 0 or 1")
    first, second = numbers[: dims + 1], numbers[dims + 1 : 2 * dims + 2]
    batch = numbers[-1]
    # Problem-tensor order: F is (in, w, out); B and W are (out, w, in).
    if direction == "F":
        x, y = first, second
        in_layout, fil_layout, out_layout = layouts
        in_type, wei_type, out_type = types
    else:
        x, y = second, first
        out_layout, fil_layout, in_layout = layouts
        out_type, wei_type, in_type = types
    if not three_d:
        x, y = [x[0], 1, *x[1:]], [y[0], 1, *y[1:]]
        filt, pads, strides, dilations = [1, *filt], [0, *pads], [0, *strides], [0, *dilations]
    values = {
        "direction": direction,
        "spatial_dim": dims,
        "batchsize": batch,
        "in_channels": x[0],
        "out_channels": y[0],
        "group_count": int(group) if group else 1,
        "mode": "conv",
        "pad_mode": "default",
        "in_layout": in_layout,
        "fil_layout": fil_layout,
        "out_layout": out_layout,
        "data_type": in_type,
    }
    for i, axis in enumerate("dhw"):
        values.update(
            {
                f"in_{axis}": x[i + 1],
                f"fil_{axis}": filt[i],
                f"pad_{axis}": pads[i],
                f"conv_stride_{axis}": strides[i],
                f"dilation_{axis}": dilations[i],
                f"trans_output_pad_{axis}": 0,
            }
        )
    if wei_type not in DATA_TYPES or out_type not in DATA_TYPES:
        raise DriverError("bad_key", f"problem key type {fields[-2]!r} is not known")
    problem = conv_problem(values, check_output=False)
    return dataclasses.replace(
        problem,
        out_d=y[1],
        out_h=y[2],
        out_w=y[3],
        wei_type=wei_type,
        out_type=out_type,
        bias=bias,
        cast_in=cast_in,
        cast_wei=cast_wei,
        cast_out=cast_out,
    )


def problem_key(p: ConvProblem) -> str:
    """The key MIOpen looks ``p`` up by in its find-db and perf-db."""
    three_d = p.spatial_dim == 3
    x = [p.in_channels, p.in_d, p.in_h, p.in_w] if three_d else [p.in_channels, p.in_h, p.in_w]
    y = [p.out_channels, p.out_d, p.out_h, p.out_w] if three_d else [p.out_channels, p.out_h, p.out_w]

    def axes(name: str) -> str:
        return "x".join(str(getattr(p, f"{name}_{a}")) for a in ("dhw" if three_d else "hw"))

    layouts = [p.in_layout, p.fil_layout, p.out_layout]
    types = [p.in_type, p.wei_type, p.out_type]
    if p.direction == "F":
        first, second = x, y
    else:
        first, second = y, x
        layouts.reverse()
        types.reverse()
    layout = layouts[0] if set(layouts) == {DEFAULT_LAYOUT[p.spatial_dim]} else "-".join(layouts)
    data_type = types[0] if len(set(types)) == 1 else "".join(types)
    fields = [
        *first,
        axes("fil"),
        *second,
        p.batchsize,
        axes("pad"),
        axes("conv_stride"),
        axes("dilation"),
        p.bias,
        layout,
        data_type,
        p.direction,
    ]
    key = "-".join(str(f) for f in fields)
    if p.group_count != 1:
        key += f"_g{p.group_count}"
    for tag, cast in (("ci", p.cast_in), ("cw", p.cast_wei), ("co", p.cast_out)):
        if cast:
            key += f"_{tag}{cast}"
    return key
