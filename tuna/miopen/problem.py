"""Convolution and batch-norm problems as values, and the table rows that hold them.

A :class:`ConvProblem` is always stored in the form MIOpen looks it up by: a transposed
convolution is turned into the ordinary convolution MIOpen runs for it (reference/miopen.md
§13.1), so ``mode`` is ``conv`` and the direction is the one in MIOpen's problem key.

Rows follow MITuna's encoding (reference/miopen.md §8.5): an input tensor has dim0 = 1
(the batch lives in the config), NCHW/NCDHW put C in dim1 and D, H, W in dim2..dim4,
NHWC/NDHWC put D, H, W in dim1..dim3 and C in dim4; a weight tensor is (K, C, fil_d, fil_h,
fil_w) whatever its layout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tuna.errors import BadInput


class DriverError(BadInput):
    """A driver line, problem key or row that tuna cannot turn into a problem.

    ``kind`` names the failure (one per distinct message), so an import can count refusals
    by reason.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


DIRECTION_LETTER = {1: "F", 2: "B", 4: "W"}
DIRECTION_FLAG = {letter: flag for flag, letter in DIRECTION_LETTER.items()}

#: Driver command → data type, for convolutions and batch norm (reference/miopen.md §8.2).
CONV_COMMANDS = {"conv": "FP32", "convfp16": "FP16", "convbfp16": "BF16", "convint8": "INT8", "convfp64": "FP64"}
BN_COMMANDS = {"bnorm": "FP32", "bnormfp16": "FP16", "bnormbfp16": "BF16"}
CONV_COMMAND_OF = {data_type: cmd for cmd, data_type in CONV_COMMANDS.items()}
BN_COMMAND_OF = {data_type: cmd for cmd, data_type in BN_COMMANDS.items()}

#: Type names MIOpen writes in problem keys (src/conv/problem_description.cpp).
DATA_TYPES = ("FP32", "FP16", "BF16", "INT8", "INT32", "INT64", "FP64", "FP8", "BF8")
LAYOUTS = {2: ("NCHW", "NHWC"), 3: ("NCDHW", "NDHWC")}
DEFAULT_LAYOUT = {2: "NCHW", 3: "NCDHW"}

TensorRow = dict[str, Any]


def tensor_row(channels: int, d: int, h: int, w: int, layout: str, data_type: str) -> TensorRow:
    """An activation tensor's row; the batch is not part of it."""
    num_dims = len(layout) - 2
    dims = (1, channels, d, h, w) if layout.index("C") == 1 else (1, d, h, w, channels)
    row: TensorRow = {f"dim{i}": v for i, v in enumerate(dims)}
    row.update(layout=layout, num_dims=num_dims, data_type=data_type)
    return row


def tensor_values(row: Mapping[str, Any]) -> tuple[int, int, int, int, str]:
    """(channels, d, h, w, layout) of an activation tensor row."""
    layout = str(row["layout"])
    dims = [int(row[f"dim{i}"]) for i in range(5)]
    if layout not in LAYOUTS.get(int(row["num_dims"]), ()):
        raise DriverError("bad_row", f"tensor layout {layout!r} does not fit num_dims {row['num_dims']}")
    if layout.index("C") == 1:
        return dims[1], dims[2], dims[3], dims[4], layout
    return dims[4], dims[1], dims[2], dims[3], layout


@dataclass(frozen=True)
class ConvProblem:
    """One convolution problem, in MIOpen's lookup form.

    ``out_*`` are the output sizes: computed for a driver line, and kept as written for a
    problem key (MIOpen does not check them, and ships keys where they do not follow).
    ``out_type`` and the ``cast_*`` types exist only in keys: rows cannot hold them.
    """

    direction: str
    spatial_dim: int
    batchsize: int
    in_channels: int
    in_d: int
    in_h: int
    in_w: int
    out_channels: int
    out_d: int
    out_h: int
    out_w: int
    fil_d: int
    fil_h: int
    fil_w: int
    pad_d: int
    pad_h: int
    pad_w: int
    conv_stride_d: int
    conv_stride_h: int
    conv_stride_w: int
    dilation_d: int
    dilation_h: int
    dilation_w: int
    group_count: int
    in_layout: str
    fil_layout: str
    out_layout: str
    in_type: str
    wei_type: str
    out_type: str
    bias: int = 0
    cast_in: str | None = None
    cast_wei: str | None = None
    cast_out: str | None = None

    @property
    def data_type(self) -> str:
        return self.in_type

    def storable_reason(self) -> str | None:
        """Why the config tables cannot hold this problem, or None when they can."""
        if self.out_type != self.in_type:
            return f"output type {self.out_type} differs from input type {self.in_type}"
        if self.cast_in or self.cast_wei or self.cast_out:
            return "cast types (_ci/_cw/_co)"
        if self.bias:
            return "bias 1 (MIFin builds every convolution problem with bias 0)"
        if self.wei_type != self.in_type:
            return f"weight type {self.wei_type} differs from input type {self.in_type}"
        if (self.out_d, self.out_h, self.out_w) != expected_output(self):
            return (
                f"output size {self.out_d}x{self.out_h}x{self.out_w} does not follow from the input "
                f"(a convolution gives {'x'.join(map(str, expected_output(self)))})"
            )
        return None

    def check_storable(self) -> None:
        reason = self.storable_reason()
        if reason:
            raise DriverError("not_storable", f"cannot store this problem as a config: {reason}")

    @property
    def command(self) -> str:
        self.check_storable()
        if self.in_type not in CONV_COMMAND_OF:
            raise DriverError("not_storable", f"no MIOpenDriver command for data type {self.in_type}")
        return CONV_COMMAND_OF[self.in_type]

    def input_tensor(self) -> TensorRow:
        self.check_storable()
        return tensor_row(self.in_channels, self.in_d, self.in_h, self.in_w, self.in_layout, self.in_type)

    def weight_tensor(self) -> TensorRow:
        self.check_storable()
        dims = (self.out_channels, self.in_channels, self.fil_d, self.fil_h, self.fil_w)
        row: TensorRow = {f"dim{i}": v for i, v in enumerate(dims)}
        row.update(layout=self.fil_layout, num_dims=self.spatial_dim, data_type=self.wei_type)
        return row

    def config_row(self) -> dict[str, Any]:
        """conv_config's own columns (without the tensor ids, md5 and driver)."""
        self.check_storable()
        return {
            "batchsize": self.batchsize,
            "spatial_dim": self.spatial_dim,
            "pad_h": self.pad_h,
            "pad_w": self.pad_w,
            "pad_d": self.pad_d,
            "conv_stride_h": self.conv_stride_h,
            "conv_stride_w": self.conv_stride_w,
            "conv_stride_d": self.conv_stride_d,
            "dilation_h": self.dilation_h,
            "dilation_w": self.dilation_w,
            "dilation_d": self.dilation_d,
            "group_count": self.group_count,
            "mode": "conv",
            "pad_mode": "default",
            "trans_output_pad_h": 0,
            "trans_output_pad_w": 0,
            "trans_output_pad_d": 0,
            "direction": self.direction,
            "out_layout": self.out_layout,
        }


def output_size(size: int, fil: int, pad: int, stride: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (fil - 1) - 1) // stride + 1


def expected_output(p: ConvProblem) -> tuple[int, int, int]:
    d = output_size(p.in_d, p.fil_d, p.pad_d, p.conv_stride_d, p.dilation_d) if p.spatial_dim == 3 else 1
    h = output_size(p.in_h, p.fil_h, p.pad_h, p.conv_stride_h, p.dilation_h)
    w = output_size(p.in_w, p.fil_w, p.pad_w, p.conv_stride_w, p.dilation_w)
    return d, h, w


def conv_from_rows(
    config: Mapping[str, Any], input_tensor: Mapping[str, Any], weight_tensor: Mapping[str, Any]
) -> ConvProblem:
    """The problem a conv_config row and its two tensor rows describe."""
    channels, d, h, w, in_layout = tensor_values(input_tensor)
    spatial_dim = int(config["spatial_dim"])
    values: dict[str, Any] = {
        "direction": str(config["direction"]),
        "spatial_dim": spatial_dim,
        "batchsize": int(config["batchsize"]),
        "in_channels": channels,
        "in_d": d,
        "in_h": h,
        "in_w": w,
        "out_channels": int(weight_tensor["dim0"]),
        "fil_d": int(weight_tensor["dim2"]),
        "fil_h": int(weight_tensor["dim3"]),
        "fil_w": int(weight_tensor["dim4"]),
        "in_layout": in_layout,
        "fil_layout": str(weight_tensor["layout"]),
        "out_layout": str(config["out_layout"]),
        "data_type": str(input_tensor["data_type"]),
    }
    for name in ("pad", "conv_stride", "dilation", "trans_output_pad"):
        for axis in "dhw":
            values[f"{name}_{axis}"] = int(config[f"{name}_{axis}"])
    for name in ("group_count",):
        values[name] = int(config[name])
    values["mode"] = str(config["mode"])
    values["pad_mode"] = str(config["pad_mode"])
    if str(weight_tensor["data_type"]) != values["data_type"]:
        raise DriverError("bad_row", "input and weight tensors have different data types")
    if int(weight_tensor["dim1"]) != channels:
        raise DriverError("bad_row", "weight tensor dim1 differs from the input tensor's channels")
    return conv_problem(values)


# Columns of MITuna's md5 trigger, in its order (reference/miopen.md §3.6).
_IDENTITY_COLUMNS = (
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
    "direction",
)
_TENSOR_COLUMNS = ("dim0", "dim1", "dim2", "dim3", "dim4", "layout", "num_dims", "data_type")


def config_md5(config: Mapping[str, Any], input_tensor: Mapping[str, Any], weight_tensor: Mapping[str, Any]) -> str:
    """The identity of a conv_config row: a pure function of its values.

    MITuna's trigger hashes the same columns run together without separators (so batch 1 with
    a value 22 and batch 12 with 2 collide, §11.16) and names the tensors by id. Here every
    value is followed by ``|`` and the tensors are named by their values, so the md5 is the
    same in every database, whatever ids its tensors got.
    """
    parts = [str(config[c]) for c in _IDENTITY_COLUMNS]
    parts += [str(input_tensor[c]) for c in _TENSOR_COLUMNS]
    parts += [str(weight_tensor[c]) for c in _TENSOR_COLUMNS]
    parts.append(str(config["out_layout"]))
    return hashlib.md5("".join(p + "|" for p in parts).encode()).hexdigest()


@dataclass(frozen=True)
class BnProblem:
    """One batch-norm problem: ``forw`` 1 is forward training (F), ``forw`` 2 forward
    inference (B), ``back`` 1 backward (W), exactly one of them (MITuna's letters)."""

    spatial_dim: int
    batchsize: int
    in_channels: int
    in_d: int
    in_h: int
    in_w: int
    layout: str
    data_type: str
    mode: int
    forw: int
    back: int
    run: int = 0
    save: int = 0
    alpha: int = 1
    beta: int = 0

    @property
    def direction(self) -> str:
        return DIRECTION_LETTER[self.forw + 4 * self.back]

    @property
    def command(self) -> str:
        if self.data_type not in BN_COMMAND_OF:
            raise DriverError("not_storable", f"no MIOpenDriver batch-norm command for data type {self.data_type}")
        return BN_COMMAND_OF[self.data_type]

    def input_tensor(self) -> TensorRow:
        return tensor_row(self.in_channels, self.in_d, self.in_h, self.in_w, self.layout, self.data_type)

    def config_row(self) -> dict[str, Any]:
        """bn_config's own columns (without input_tensor and driver)."""
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "forw": self.forw,
            "verify": 1,
            "back": self.back,
            "mode": self.mode,
            "batchsize": self.batchsize,
            "run": self.run,
            "save": self.save,
            "in_layout": self.layout,
        }


def bn_from_rows(config: Mapping[str, Any], input_tensor: Mapping[str, Any]) -> BnProblem:
    channels, d, h, w, layout = tensor_values(input_tensor)
    values: dict[str, Any] = {
        name: int(config[name]) for name in ("alpha", "beta", "forw", "back", "mode", "batchsize", "run", "save")
    }
    values.update(in_channels=channels, in_d=d, in_h=h, in_w=w, layout=layout, data_type=str(input_tensor["data_type"]))
    values["spatial_dim"] = int(input_tensor["num_dims"])
    return bn_problem(values)


def _at_least(values: Mapping[str, Any], names: tuple[str, ...], low: int) -> None:
    for name in names:
        if values[name] < low:
            raise DriverError("out_of_range", f"{name} must be at least {low}, got {values[name]}")


def _check_layout(name: str, layout: str, spatial_dim: int) -> None:
    if layout not in LAYOUTS[spatial_dim]:
        allowed = ", ".join(LAYOUTS[spatial_dim])
        raise DriverError("bad_layout", f"{name} {layout!r} is not a {spatial_dim}-D layout ({allowed})")


# The depth fields a 2-D problem may carry, with the values MITuna stores for them.
_TWO_D_DEPTH = {
    "in_d": ((1,), 1),
    "fil_d": ((1,), 1),
    "pad_d": ((0,), 0),
    "trans_output_pad_d": ((0,), 0),
    "conv_stride_d": ((0, 1), 0),
    "dilation_d": ((0, 1), 0),
}


def conv_problem(values: Mapping[str, Any], *, check_output: bool = True) -> ConvProblem:
    """Validate a convolution's values (driver names) and put it in MIOpen's lookup form.

    ``values`` holds every field of a driver line after defaults: direction letter,
    spatial_dim, the sizes, pads, strides, dilations, trans_output_pad_*, group_count,
    mode, pad_mode, the three layouts and data_type. ``check_output=False`` is for problem
    keys, which carry their own output sizes.
    """
    v = dict(values)
    spatial_dim = v["spatial_dim"]
    if spatial_dim not in (2, 3):
        raise DriverError("bad_spatial_dim", f"spatial_dim must be 2 or 3, got {spatial_dim}")
    if v["direction"] not in DIRECTION_FLAG:
        raise DriverError("bad_direction", f"direction {v['direction']!r} is not F, B or W")
    if spatial_dim == 2:
        for name, (allowed, stored) in _TWO_D_DEPTH.items():
            if v[name] not in allowed:
                raise DriverError("depth_in_2d", f"{name} {v[name]} needs spatial_dim 3 (a 2-D problem has no depth)")
            v[name] = stored
    for name in ("in_layout", "fil_layout", "out_layout"):
        _check_layout(name, v[name], spatial_dim)
    if v["mode"] not in ("conv", "trans"):
        raise DriverError("bad_mode", f"mode {v['mode']!r} is not conv or trans")
    if v["pad_mode"] != "default":
        raise DriverError(
            "pad_mode",
            f"pad_mode {v['pad_mode']!r} is refused: MIOpen derives its own pads and output size for it; "
            "give the pads with -p/-q instead",
        )
    axes = "dhw" if spatial_dim == 3 else "hw"
    _at_least(v, ("batchsize", "in_channels", "out_channels", "group_count"), 1)
    _at_least(v, tuple(f"{n}_{a}" for n in ("in", "fil", "conv_stride", "dilation") for a in axes), 1)
    _at_least(v, tuple(f"{n}_{a}" for n in ("pad", "trans_output_pad") for a in axes), 0)
    for side in ("in_channels", "out_channels"):
        if v[side] % v["group_count"]:
            raise DriverError("group_count", f"group_count {v['group_count']} does not divide {side} {v[side]}")
    if v["mode"] == "trans":
        v = _untranspose(v, axes)
    elif any(v[f"trans_output_pad_{a}"] for a in axes):
        raise DriverError("trans_pad", "trans_output_pad_* applies only to a transposed convolution (-m trans)")
    out = {}
    for a in axes:
        out[a] = output_size(v[f"in_{a}"], v[f"fil_{a}"], v[f"pad_{a}"], v[f"conv_stride_{a}"], v[f"dilation_{a}"])
        if out[a] < 1 and check_output:
            raise DriverError(
                "empty_output", f"the filter does not fit the padded input along {a}: the output would be {out[a]}"
            )
    if v["data_type"] not in DATA_TYPES:
        raise DriverError("bad_type", f"data type {v['data_type']!r} is not one of {', '.join(DATA_TYPES)}")
    return ConvProblem(
        direction=v["direction"],
        spatial_dim=spatial_dim,
        batchsize=v["batchsize"],
        in_channels=v["in_channels"],
        in_d=v["in_d"],
        in_h=v["in_h"],
        in_w=v["in_w"],
        out_channels=v["out_channels"],
        out_d=out.get("d", 1),
        out_h=out["h"],
        out_w=out["w"],
        fil_d=v["fil_d"],
        fil_h=v["fil_h"],
        fil_w=v["fil_w"],
        pad_d=v["pad_d"],
        pad_h=v["pad_h"],
        pad_w=v["pad_w"],
        conv_stride_d=v["conv_stride_d"],
        conv_stride_h=v["conv_stride_h"],
        conv_stride_w=v["conv_stride_w"],
        dilation_d=v["dilation_d"],
        dilation_h=v["dilation_h"],
        dilation_w=v["dilation_w"],
        group_count=v["group_count"],
        in_layout=v["in_layout"],
        fil_layout=v["fil_layout"],
        out_layout=v["out_layout"],
        in_type=v["data_type"],
        wei_type=v["data_type"],
        out_type=v["data_type"],
    )


_TRANSPOSED_DIRECTION = {"F": "B", "B": "F", "W": "W"}


def _untranspose(v: dict[str, Any], axes: str) -> dict[str, Any]:
    """The ordinary convolution MIOpen runs, and looks up, for a transposed one.

    MIOpen runs a transposed forward as the backward-data pass of the convolution whose
    input is the transposed output (src/convolution_api.cpp), and so on: F and B swap, W
    stays, input and output swap. The output padding only sizes the transposed output.
    """
    u = dict(v, mode="conv", direction=_TRANSPOSED_DIRECTION[v["direction"]])
    for a in axes:
        stride, out_pad = v[f"conv_stride_{a}"], v[f"trans_output_pad_{a}"]
        if out_pad >= stride:
            raise DriverError(
                "trans_pad", f"trans_output_pad_{a} {out_pad} must be smaller than conv_stride_{a} {stride}"
            )
        size = (v[f"in_{a}"] - 1) * stride - 2 * v[f"pad_{a}"] + v[f"dilation_{a}"] * (v[f"fil_{a}"] - 1) + 1 + out_pad
        if size < 1:
            raise DriverError("empty_output", f"the transposed output would be {size} along {a}")
        u[f"in_{a}"] = size
        u[f"trans_output_pad_{a}"] = 0
    u["in_channels"], u["out_channels"] = v["out_channels"], v["in_channels"]
    u["in_layout"], u["out_layout"] = v["out_layout"], v["in_layout"]
    return u


def bn_problems(values: Mapping[str, Any]) -> list[BnProblem]:
    """Validate a batch-norm line's values; ``--forw 1 -b 1`` gives two problems."""
    v = dict(values)
    if v["forw"] not in (0, 1, 2):
        raise DriverError("bad_direction", f"--forw must be 0, 1 (training) or 2 (inference), got {v['forw']}")
    if v["back"] not in (0, 1):
        raise DriverError("bad_direction", f"-b/--back must be 0 or 1, got {v['back']}")
    if v["forw"] == 0 and v["back"] == 0:
        raise DriverError("needs_direction", "needs direction: --forw 0 with -b 0 names no batch-norm pass")
    wanted = []
    if v["forw"]:
        wanted.append((v["forw"], 0))
    if v["back"]:
        wanted.append((0, 1))
    return [bn_problem({**v, "forw": forw, "back": back}) for forw, back in wanted]


def bn_problem(values: Mapping[str, Any]) -> BnProblem:
    v = dict(values)
    spatial_dim = v["spatial_dim"]  # 2 or 3: from the layout, -D or the tensor row
    _check_layout("layout", v["layout"], spatial_dim)
    if spatial_dim == 2 and v["in_d"] != 1:
        raise DriverError("depth_in_2d", f"in_d {v['in_d']} needs a 3-D layout (NCDHW or NDHWC)")
    _at_least(v, ("batchsize", "in_channels", "in_d", "in_h", "in_w"), 1)
    if v["mode"] not in (0, 1):
        raise DriverError("bad_mode", f"batch-norm mode must be 0 (per activation) or 1 (spatial), got {v['mode']}")
    for flag in ("run", "save"):
        if v[flag] not in (0, 1):
            raise DriverError("out_of_range", f"{flag} must be 0 or 1, got {v[flag]}")
    if (v["forw"], v["back"]) not in ((1, 0), (2, 0), (0, 1)):
        raise DriverError("needs_direction", "needs direction: exactly one of forw 1, forw 2 or back 1")
    if v["data_type"] not in BN_COMMAND_OF:
        raise DriverError("bad_type", f"batch-norm data type {v['data_type']!r} has no MIOpenDriver command")
    fields = BnProblem.__dataclass_fields__
    return BnProblem(**{name: v[name] for name in fields})
