"""MIOpenDriver lines, problem keys and rows (reference/miopen.md §8.5-§8.7, §13.1, §13.6).

The shared-data tests read MITuna's own driver lines and MIOpen's shipped find-dbs from
../shared/data and skip when it is absent. Exact messages are kept whole, on one line each.
"""

# ruff: noqa: E501

from __future__ import annotations

import collections
import contextlib
import dataclasses
import re
import time
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from tuna.errors import BadInput
from tuna.miopen.driver import driver_string, parse_driver, parse_line
from tuna.miopen.keys import parse_key, problem_key
from tuna.miopen.problem import BnProblem, ConvProblem, DriverError, bn_from_rows, config_md5, conv_from_rows

MIOPEN_DATA = SHARED_DATA / "miopen"
RESNET_B = "./bin/MIOpenDriver conv -n 128 -c 1024 -H 14 -W 14 -k 2048 -y 1 -x 1 -p 0 -q 0 -u 2 -v 2 -l 1 -j 1 -m conv -g 1 -F 2 -t 1"


def one(line: str) -> ConvProblem:
    problems = parse_line(line)
    assert len(problems) == 1
    assert isinstance(problems[0], ConvProblem)
    return problems[0]


def one_bn(line: str) -> BnProblem:
    problems = parse_line(line)
    assert len(problems) == 1
    assert isinstance(problems[0], BnProblem)
    return problems[0]


def round_trips(problem: ConvProblem | BnProblem) -> None:
    """The canonical string parses back to the same problem, and so do its rows."""
    assert parse_line(driver_string(problem)) == [problem]
    if isinstance(problem, ConvProblem):
        assert conv_from_rows(problem.config_row(), problem.input_tensor(), problem.weight_tensor()) == problem
        assert parse_key(problem_key(problem)) == problem
    else:
        assert bn_from_rows(problem.config_row(), problem.input_tensor()) == problem


# §8.6: MITuna's verified examples.


def test_canonical_string_and_rows_of_mitunas_example() -> None:
    p = one(RESNET_B)
    assert p.direction == "B"
    assert driver_string(p) == (
        "./bin/MIOpenDriver conv --batchsize 128 --spatial_dim 2 --pad_h 0 --pad_w 0 --pad_d 0 --conv_stride_h 2 "
        "--conv_stride_w 2 --conv_stride_d 0 --dilation_h 1 --dilation_w 1 --dilation_d 0 --group_count 1 --mode conv "
        "--pad_mode default --trans_output_pad_h 0 --trans_output_pad_w 0 --trans_output_pad_d 0 --out_layout NCHW "
        "--in_layout NCHW --fil_layout NCHW --in_d 1 --in_h 14 --in_w 14 --fil_d 1 --fil_h 1 --fil_w 1 "
        "--in_channels 1024 --out_channels 2048 --forw 2"
    )
    tensor = ("dim0", "dim1", "dim2", "dim3", "dim4", "layout", "num_dims", "data_type")
    assert tuple(p.input_tensor()[c] for c in tensor) == (1, 1024, 1, 14, 14, "NCHW", 2, "FP32")
    assert tuple(p.weight_tensor()[c] for c in tensor) == (2048, 1024, 1, 1, 1, "NCHW", 2, "FP32")
    assert problem_key(p) == "2048-7-7-1x1-1024-14-14-128-0x0-2x2-1x1-0-NCHW-FP32-B"
    round_trips(p)


def test_batch_norm_canonical_string_keeps_save_and_layout() -> None:
    # MITuna dropped -s (its string says --save 0); tuna keeps it and always writes --layout.
    p = one_bn("./bin/MIOpenDriver bnormfp16 -n 256 -c 64 -H 56 -W 56 -m 1 --forw 1 -b 0 -s 1 -r 1")
    assert driver_string(p) == (
        "./bin/MIOpenDriver bnormfp16 --batchsize 256 --alpha 1 --beta 0 --forw 1 --back 0 --mode 1 --run 1 "
        "--in_h 56 --in_w 56 --in_channels 64 --save 1 --layout NCHW"
    )
    assert (p.direction, p.save, p.run, p.data_type) == ("F", 1, 1, "FP16")
    round_trips(p)
    # MITuna's own stored string (with --in_d 1 and --verify) still reads as the 2-D problem.
    mituna = (
        "./bin/MIOpenDriver bnormfp16 --batchsize 256 --alpha 1 --beta 0 --forw 1 --back 0 --mode 1 --run 1 "
        "--in_d 1 --in_h 56 --in_w 56 --in_channels 64 --save 0 --verify 1"
    )
    assert one_bn(mituna) == dataclasses.replace(p, save=0)


def test_long_form_nhwc_line() -> None:
    p = one(
        "./bin/MIOpenDriver convbfp16 -n 32 -H 54 -W 54 -c 32 -k 32 --in_layout NHWC --out_layout NHWC "
        "--fil_layout NHWC -V 0 -F 1"
    )
    assert (p.in_layout, p.fil_layout, p.out_layout, p.direction, p.command) == (
        "NHWC",
        "NHWC",
        "NHWC",
        "F",
        "convbfp16",
    )
    assert (p.fil_h, p.fil_w, p.spatial_dim) == (3, 3, 2)
    # §8.5: NHWC puts D, H, W in dim1..dim3 and C in dim4.
    assert [p.input_tensor()[f"dim{i}"] for i in range(5)] == [1, 1, 54, 54, 32]
    assert problem_key(p) == "32-54-54-3x3-32-52-52-32-0x0-1x1-1x1-0-NHWC-NHWC-NHWC-BF16-F"
    round_trips(p)


def test_defaults_are_mitunas() -> None:
    p = one("./bin/MIOpenDriver conv -F 1")
    assert (p.batchsize, p.in_channels, p.in_h, p.in_w, p.out_channels, p.fil_h, p.fil_w) == (32, 3, 32, 32, 32, 3, 3)
    assert (p.pad_h, p.conv_stride_h, p.dilation_h, p.group_count, p.in_layout) == (0, 1, 1, 1, "NCHW")
    # A 2-D problem stores MITuna's depth values, so its identity matches MITuna's rows.
    assert (p.in_d, p.fil_d, p.pad_d, p.conv_stride_d, p.dilation_d) == (1, 1, 0, 0, 0)


def test_three_d_defaults_are_real_strides_and_dilations() -> None:
    # MITuna left conv_stride_d and dilation_d at 0 in 3-D unless given (§11.15).
    p = one("./bin/MIOpenDriver conv --spatial_dim 3 -F 1")
    assert (p.in_layout, p.conv_stride_d, p.dilation_d, p.pad_d, p.in_d, p.fil_d) == ("NCDHW", 1, 1, 0, 1, 1)
    assert p.weight_tensor()["num_dims"] == 3
    round_trips(p)


# §13.6: the lines MIOpen logs.


def test_miopen_logged_convolution_lines() -> None:
    p = one(
        "MIOpen(HIP): Command [LogCmdConvolution] ./bin/MIOpenDriver convfp16 -n 64 -c 128 -H 28 -W 28 -k 128 -y 3 "
        "-x 3 -p 1 -q 1 -u 1 -v 1 -l 1 -j 1 --in_layout NHWC --fil_layout NHWC --out_layout NHWC -m conv -g 1 "
        "-F 1 -t 1 -S 5"
    )
    assert problem_key(p) == "128-28-28-3x3-128-28-28-64-1x1-1x1-1x1-0-NHWC-NHWC-NHWC-FP16-F"
    p3 = one(
        "./bin/MIOpenDriver conv -n 2 -c 16 --in_d 8 -H 32 -W 32 -k 32 --fil_d 3 -y 3 -x 3 --pad_d 1 -p 1 -q 1 "
        "--conv_stride_d 2 -u 1 -v 1 --dilation_d 1 -l 1 -j 1 -m conv -g 4 -F 4 -t 1 --spatial_dim 3"
    )
    assert p3.in_layout == "NCDHW" and p3.out_d == 4
    assert problem_key(p3) == "32-4-32-32-3x3x3-16-8-32-32-2-1x1x1-2x1x1-1x1x1-0-NCDHW-FP32-W_g4"
    round_trips(p)
    round_trips(p3)


def test_miopen_logged_batch_norm_lines() -> None:
    p = one_bn("./bin/MIOpenDriver bnormfp16 -n 16 -c 64 -H 32 -W 32 -m 1 --forw 2 -b 0 --layout NHWC")
    assert (p.direction, p.layout, p.spatial_dim) == ("B", "NHWC", 2)
    assert [p.input_tensor()[f"dim{i}"] for i in range(5)] == [1, 1, 32, 32, 64]
    w = one_bn("./bin/MIOpenDriver bnorm -n 2 -c 8 -D 4 -H 16 -W 16 -m 0 --forw 0 -b 1 --layout NCDHW")
    assert (w.direction, w.spatial_dim, w.in_d) == ("W", 3, 4)
    assert "--in_d 4" in driver_string(w)
    # -D alone (no layout) means a 5-D tensor, as MIOpenDriver reads it.
    assert one_bn("./bin/MIOpenDriver bnorm -n 2 -c 8 -D 4 -H 16 -W 16 --forw 1").layout == "NCDHW"
    for q in (p, w):
        round_trips(q)


# Directions.


@pytest.mark.parametrize(
    ("flag", "letters"),
    [("-F 1", "F"), ("-F 2", "B"), ("-F 4", "W"), ("-F 3", "FB"), ("-F 6", "BW"), ("-F 7", "FBW"), ("-F 0", "FBW"),
     ("", "FBW"), ("-F 1.", "F"), ("--forw 4", "W")],
)  # fmt: skip
def test_directions(flag: str, letters: str) -> None:
    problems = parse_line(f"./bin/MIOpenDriver conv -n 8 -c 16 -k 16 {flag}")
    assert "".join(p.direction for p in problems) == letters


@pytest.mark.parametrize(
    ("api", "letter"),
    [
        ("miopenConvolutionForward", "F"),
        ("miopenConvolutionBackwardData", "B"),
        ("miopenConvolutionBackwardWeights", "W"),
    ],
)
def test_direction_from_api_name(api: str, letter: str) -> None:
    # MITuna refused these lines (no -F): resnet50_pytorch.txt, resnext101_pytorch.txt.
    problems = parse_line(f"{api}: ./bin/MIOpenDriver conv -n 8 -c 16 -k 16 -t 1")
    assert [p.direction for p in problems] == [letter]


def test_batch_norm_forward_and_backward_gives_two_problems() -> None:
    problems = parse_line("./bin/MIOpenDriver bnorm -n 8 -c 16 -H 4 -W 4 --forw 1 -b 1")
    assert [(p.direction, p.forw, p.back) for p in problems] == [("F", 1, 0), ("W", 0, 1)]


# Transposed convolutions are stored as the problem MIOpen looks up (§13.1).


def test_transposed_forward_is_stored_as_backward_data() -> None:
    line = "./bin/MIOpenDriver conv -n 16 -c 64 -H 14 -W 14 -k 32 -y 3 -x 3 -p 1 -q 1 -u 2 -v 2 -m trans -Y 1 -X 1"
    forward = one(line + " -F 1")
    # The transposed output is 28x28 with 32 channels; MIOpen runs it as backward data.
    assert (forward.direction, forward.in_channels, forward.in_h, forward.out_channels, forward.out_h) == (
        "B",
        32,
        28,
        64,
        14,
    )
    assert problem_key(forward) == "64-14-14-3x3-32-28-28-16-1x1-2x2-1x1-0-NCHW-FP32-B"
    assert forward.config_row()["mode"] == "conv"
    assert one(line + " -F 2").direction == "F"
    assert one(line + " -F 4").direction == "W"
    # The same problem written as an ordinary convolution is the same config.
    assert forward == one("./bin/MIOpenDriver conv -n 16 -c 32 -H 28 -W 28 -k 64 -y 3 -x 3 -p 1 -q 1 -u 2 -v 2 -F 2")
    round_trips(forward)


def test_transposed_layouts_swap_with_the_tensors() -> None:
    p = one("./bin/MIOpenDriver conv -n 1 -c 8 -k 4 --in_layout NHWC -m trans -F 1")
    assert (p.in_layout, p.out_layout) == ("NCHW", "NHWC")


# §13.1: the problem key.


@pytest.mark.parametrize(
    "key",
    [
        "2048-7-7-1x1-1024-14-14-128-0x0-2x2-1x1-0-NCHW-FP32-B",
        "64-75-75-3x3-64-75-75-512-1x1-1x1-1x1-0-NHWC-NHWC-NHWC-FP16-W",
        "1024-1-14-14-1x3x3-1024-1-14-14-128-0x1x1-1x1x1-1x1x1-0-NCDHW-FP32-W_g32",
        "16-8-32-32-3x3x3-32-4-32-32-2-1x1x1-2x1x1-1x1x1-0-NDHWC-NDHWC-NDHWC-BF16-F",
        "1024-14-14-1x1-2048-7-7-1-0x0-2x2-1x1-0-NCHW-INT8INT8INT32-F",
        "1024-14-14-1x1-2048-7-7-1-0x0-2x2-1x1-0-NCHW-FP16-F_g4_ciFP8_cwBF8",
        "1024-14-14-1x1-2048-7-7-1-0x0-2x2-1x1-0-NCHW-FP16-F_coFP8",
        "1024-1-1-7x7-256-1-1-800-0x0-1x1-1x1-0-NCHW-FP32-B",  # shipped by MIOpen; Ho/Wo do not follow
        "32-28-28-3x3-64-28-28-8-1x1-1x1-1x1-1-NCHW-FP32-F",
    ],
)
def test_key_round_trip(key: str) -> None:
    assert problem_key(parse_key(key)) == key
    assert problem_key(one(key + "=ConvAsm1x1UV2:1.5,0,miopenConvolutionBwdDataAlgoDirect")) == key


def test_key_fields_belong_to_miopens_problem_tensors() -> None:
    # For B and W the first group, layout and type are the convolution's output side.
    b = parse_key("2048-7-7-1x1-1024-14-14-128-0x0-2x2-1x1-0-NCHW-NCHW-NHWC-FP32-B")
    assert (b.in_channels, b.in_h, b.out_channels, b.out_h) == (1024, 14, 2048, 7)
    assert (b.in_layout, b.fil_layout, b.out_layout) == ("NHWC", "NCHW", "NCHW")
    f = parse_key("1024-14-14-1x1-2048-7-7-128-0x0-2x2-1x1-0-NHWC-NCHW-NCHW-FP32-F")
    assert (f.in_channels, f.in_layout, f.out_layout) == (1024, "NHWC", "NCHW")
    mixed = one("./bin/MIOpenDriver conv -n 128 -c 1024 -H 14 -W 14 -k 2048 -y 1 -x 1 -u 2 -v 2 --in_layout NHWC -F 2")
    assert problem_key(mixed) == "2048-7-7-1x1-1024-14-14-128-0x0-2x2-1x1-0-NCHW-NCHW-NHWC-FP32-B"
    assert mixed == b
    types = parse_key("1024-14-14-1x1-2048-7-7-1-0x0-2x2-1x1-0-NCHW-INT8INT8FP32-F")
    assert (types.in_type, types.wei_type, types.out_type) == ("INT8", "INT8", "FP32")
    assert parse_key("1024-14-14-1x1-2048-7-7-1-0x0-2x2-1x1-0-NCHW-FP32-F_g2").group_count == 2


def test_key_problems_that_rows_cannot_hold_are_refused_with_the_reason() -> None:
    cases = {
        "1024-14-14-1x1-2048-7-7-1-0x0-2x2-1x1-0-NCHW-INT8INT8INT32-F": "output type INT32 differs from input type INT8",
        "1024-14-14-1x1-2048-7-7-1-0x0-2x2-1x1-0-NCHW-FP16-F_coFP8": "cast types (_ci/_cw/_co)",
        "32-28-28-3x3-64-28-28-8-1x1-1x1-1x1-1-NCHW-FP32-F": "bias 1 (MIFin builds every convolution problem with bias 0)",
        "1024-14-14-1x1-2048-7-7-1-0x0-2x2-1x1-0-NCHW-INT8FP16INT8-F": "weight type FP16 differs from input type INT8",
        "1024-1-1-7x7-256-1-1-800-0x0-1x1-1x1-0-NCHW-FP32-B": (
            "output size 1x1x1 does not follow from the input (a convolution gives 1x-5x-5)"
        ),
    }
    for key, reason in cases.items():
        p = parse_key(key)
        with pytest.raises(DriverError) as err:
            p.config_row()
        assert (err.value.kind, str(err.value)) == ("not_storable", f"cannot store this problem as a config: {reason}")
    int32 = parse_key("1024-14-14-1x1-2048-7-7-1-0x0-2x2-1x1-0-NCHW-INT32-F")
    with pytest.raises(DriverError, match="^no MIOpenDriver command for data type INT32$"):
        driver_string(int32)
    with pytest.raises(DriverError, match="^no MIOpenDriver batch-norm command for data type INT8$"):
        driver_string(dataclasses.replace(one_bn("./bin/MIOpenDriver bnorm -n 2 -c 2 --forw 1"), data_type="INT8"))


# Rows and identity (§8.5, §3.6).


def test_rows_round_trip_and_refuse_inconsistent_rows() -> None:
    p = one("./bin/MIOpenDriver conv -n 4 -c 8 -H 10 -W 12 -k 16 -y 3 -x 5 --in_layout NHWC --fil_layout NHWC -F 1")
    config, inp, wei = p.config_row(), p.input_tensor(), p.weight_tensor()
    assert conv_from_rows(config, inp, wei) == p
    with pytest.raises(DriverError, match="^input and weight tensors have different data types$"):
        conv_from_rows(config, inp, {**wei, "data_type": "FP16"})
    with pytest.raises(DriverError, match="^weight tensor dim1 differs from the input tensor's channels$"):
        conv_from_rows(config, inp, {**wei, "dim1": 9})
    with pytest.raises(DriverError, match="^tensor layout 'NHWC' does not fit num_dims 3$"):
        conv_from_rows(config, {**inp, "num_dims": 3}, wei)
    with pytest.raises(DriverError, match="^direction 'X' is not F, B or W$"):
        conv_from_rows({**config, "direction": "X"}, inp, wei)
    # A MITuna row holding a transposed convolution reads as its lookup form.
    trans = conv_from_rows({**config, "mode": "trans"}, inp, wei)
    assert (trans.direction, trans.in_channels, trans.out_channels) == ("B", 16, 8)


def test_config_md5_is_a_pure_function_of_values_without_mituna_collisions() -> None:
    p = one(RESNET_B)
    config, inp, wei = p.config_row(), p.input_tensor(), p.weight_tensor()
    # Pinned: the same value on every database and in every release (the text it hashes is
    # MITuna's column order, each value followed by "|", tensors by value).
    assert config_md5(config, inp, wei) == "596aa886bd886c02d3fdae21ae589396"
    assert config_md5(dict(config), dict(inp), dict(wei)) == config_md5(config, inp, wei)
    # MITuna's trigger concatenates without separators: batch 1 + spatial 22 == batch 12 + spatial 2.
    assert config_md5({**config, "batchsize": 1, "spatial_dim": 22}, inp, wei) != config_md5(
        {**config, "batchsize": 12, "spatial_dim": 2}, inp, wei
    )
    other = one(RESNET_B.replace("-F 2", "-F 1"))
    assert config_md5(other.config_row(), other.input_tensor(), other.weight_tensor()) != config_md5(config, inp, wei)


# Every refusal, one message each.

C = "./bin/MIOpenDriver conv -n 16 -c 64 -H 14 -W 14 -k 32 -y 3 -x 3"
BN = "./bin/MIOpenDriver bnorm -n 32 -c 64 -H 28 -W 28"
K = "2048-7-7-1x1-1024-14-14-128-0x0-2x2-1x1-0-NCHW-FP32-B"
ALL_COMMANDS = "conv, convfp16, convbfp16, convint8, convfp64, bnorm, bnormfp16, bnormbfp16"
REFUSALS = [
    ("   ", "empty", "empty line"),
    ("pool -n 1", "not_a_driver_line", "not a MIOpenDriver line or problem key: 'pool -n 1'"),
    (" 64 -c 64 -H 56", "not_a_driver_line", "not a MIOpenDriver line or problem key: '64 -c 64 -H 56'"),
    ("./bin/MIOpenDriver", "no_command", "MIOpenDriver line without a command"),
    ("./bin/MIOpenDriver pool -n 64 -m max", "unsupported_command",
     f"unsupported MIOpenDriver command 'pool' (tuna takes {ALL_COMMANDS})"),
    (C + " --time 1 -Q 3", "unknown_parameter", "Unknown parameter: '-Q'"),
    (C + " --in_layout=NHWC", "unknown_parameter", "Unknown parameter: '--in_layout=NHWC'"),
    (BN + " --forw 1 --in_layout NCHW", "unknown_parameter", "Unknown parameter: '--in_layout'"),
    (C + " conv -F 1", "stray_token", "unexpected token 'conv': flags and values must alternate"),
    (C + " -F", "missing_value", "-F has no value"),
    (C + " -F 1 -H 14 --in_h 15", "conflicting_flag", "--in_h 15 contradicts -H 14 given before"),
    (C + " -p 3;4 -F 1", "bad_value", "-p: '3;4' is not an integer"),
    (C + " -p 5% -F 1", "bad_value", "-p: '5%' is not an integer"),
    (C + " -p '1' -F 1", "bad_value", "-p: \"'1'\" is not an integer"),
    (C + " -p 1:2 -F 1", "bad_value", "-p: '1:2' is not an integer"),
    (C + " -p p=1 -F 1", "bad_value", "-p: 'p=1' is not an integer"),
    (C + " -F 1.5", "bad_value", "-F: '1.5' is not an integer"),
    (C + " -F 8", "bad_direction",
     "-F 8 is not a direction (1 forward, 2 backward data, 4 backward weights, a sum, or 0 for all)"),
    ("miopenConvolutionForward: " + C + " -F 2", "direction_conflict",
     "-F 2 contradicts the API name's direction F"),
    (C + " --spatial_dim 4 -F 1", "bad_spatial_dim", "spatial_dim must be 2 or 3, got 4"),
    (C + " --in_d 4 -F 1", "depth_in_2d", "in_d 4 needs spatial_dim 3 (a 2-D problem has no depth)"),
    (C + " --conv_stride_d 2 -F 1", "depth_in_2d", "conv_stride_d 2 needs spatial_dim 3 (a 2-D problem has no depth)"),
    (C + " --in_layout NH:WC -F 1", "bad_layout", "in_layout 'NH:WC' is not a 2-D layout (NCHW, NHWC)"),
    (C + ' --fil_layout "NHWC" -F 1', "bad_layout", "fil_layout '\"NHWC\"' is not a 2-D layout (NCHW, NHWC)"),
    (C + " --out_layout NCDHW -F 1", "bad_layout", "out_layout 'NCDHW' is not a 2-D layout (NCHW, NHWC)"),
    (C + " --spatial_dim 3 --in_layout NHWC -F 1", "bad_layout", "in_layout 'NHWC' is not a 3-D layout (NCDHW, NDHWC)"),
    (C + " -m 'conv' -F 1", "bad_mode", "mode \"'conv'\" is not conv or trans"),
    (C + " -z same -F 1", "pad_mode",
     "pad_mode 'same' is refused: MIOpen derives its own pads and output size for it; give the pads with -p/-q instead"),
    (C + " -g 3 -F 1", "group_count", "group_count 3 does not divide in_channels 64"),
    (C.replace("-k 32", "-k 30") + " -g 4 -F 1", "group_count", "group_count 4 does not divide out_channels 30"),
    (C.replace("-n 16", "-n 0") + " -F 1", "out_of_range", "batchsize must be at least 1, got 0"),
    (C + " -p -1 -F 1", "out_of_range", "pad_h must be at least 0, got -1"),
    (C + " -u 0 -F 1", "out_of_range", "conv_stride_h must be at least 1, got 0"),
    (C + " -Y 1 -F 1", "trans_pad", "trans_output_pad_* applies only to a transposed convolution (-m trans)"),
    (C + " -m trans -u 2 -v 2 -Y 2 -F 1", "trans_pad", "trans_output_pad_h 2 must be smaller than conv_stride_h 2"),
    (C + " -% 1 --spatial_dim 3 -m trans -F 1", "trans_pad", "trans_output_pad_d 1 must be smaller than conv_stride_d 1"),
    (C.replace("-y 3", "-y 31") + " -F 1", "empty_output",
     "the filter does not fit the padded input along h: the output would be -16"),
    (C.replace("-H 14", "-H 1") + " -m trans -p 2 -F 1", "empty_output", "the transposed output would be -1 along h"),
    (BN + " --forw 0 -b 0", "needs_direction", "needs direction: --forw 0 with -b 0 names no batch-norm pass"),
    (BN + " --forw 3", "bad_direction", "--forw must be 0, 1 (training) or 2 (inference), got 3"),
    (BN + " -b 2", "bad_direction", "-b/--back must be 0 or 1, got 2"),
    (BN + " -m 2", "bad_mode", "batch-norm mode must be 0 (per activation) or 1 (spatial), got 2"),
    (BN + " -r 2", "out_of_range", "run must be 0 or 1, got 2"),
    (BN + " -s 2", "out_of_range", "save must be 0 or 1, got 2"),
    (BN + " --layout NDHWC -D 0", "out_of_range", "in_d must be at least 1, got 0"),
    (BN + " --layout NCHW -D 4", "depth_in_2d", "in_d 4 needs a 3-D layout (NCDHW or NDHWC)"),
    (BN + " --layout N%CHW", "bad_layout", "layout 'N%CHW' is not a 3-D layout (NCDHW, NDHWC)"),
    (BN + " -A 1.0", "bad_value", "-A: '1.0' is not an integer"),
    (K.replace("-B", "-X"), "bad_key", "problem key direction 'X' is not F, B or W"),
    (K + "_g1", "key_not_canonical", "problem key suffix _g1: MIOpen writes no suffix for one group"),
    (K + "_g2x", "bad_key", "problem key suffix '_g2x' is not _g<G>[_ci<T>][_cw<T>][_co<T>]"),
    (K + "-1", "bad_key", "problem key has 16 fields; a 2-D key has 15 or 17"),
    (K.replace("FP32", "FP32FP32FP32"), "key_not_canonical", "problem key type FP32FP32FP32: MIOpen writes FP32 for equal types"),
    (K.replace("FP32", "FP32FP16"), "bad_key",
     "problem key type 'FP32FP16' is not one or three of FP32, FP16, BF16, INT8, INT32, INT64, FP64, FP8, BF8"),
    (K.replace("NCHW", "NHWC"), "key_not_canonical",
     "problem key layout NHWC: MIOpen writes NHWC-NHWC-NHWC and never looks up a single non-default layout"),
    (K.replace("NCHW", "NCHW-NCHW-NCHW"), "key_not_canonical", "problem key layout NCHW-NCHW-NCHW: MIOpen writes NCHW once"),
    (K.replace("NCHW", "NCHW-NCHW-NCDHW"), "bad_layout", "in_layout 'NCDHW' is not a 2-D layout (NCHW, NHWC)"),
    (K.replace("0x0-", "0x0x0-"), "bad_key", "problem key field pad '0x0x0' is not NxN"),
    (K.replace("-7-7-", "-7-a-"), "bad_key", "problem key field #3 'a' is not N"),
    (K.replace("-0-NCHW", "-2-NCHW"), "bad_key", "problem key bias 2 is not 0 or 1"),
    (K.replace("2048-", "2048:") + "=x", "key_chars",
     f"problem key '{K.replace('2048-', '2048:')}' holds characters MIOpen's keys cannot: ':'"),
    ("2048-7-7-1x1-'1024'-14-14-128-0x0-2x2-1x1-0-NCHW-FP32-B=", "key_chars",
     "problem key \"2048-7-7-1x1-'1024'-14-14-128-0x0-2x2-1x1-0-NCHW-FP32-B\" holds characters MIOpen's keys cannot: \"'\""),
    ("2048-7-7-1x1-1024-14-14-128-0x0-2x2-1x1-0-NCHW-FP32-B_g2;x", "key_chars",
     "problem key '2048-7-7-1x1-1024-14-14-128-0x0-2x2-1x1-0-NCHW-FP32-B_g2;x' holds characters MIOpen's keys cannot: ';'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("line", "kind", "message"), REFUSALS, ids=[f"{k}-{i}" for i, (_, k, _) in enumerate(REFUSALS)]
)
def test_refusals_are_one_precise_line(line: str, kind: str, message: str) -> None:
    with pytest.raises(DriverError) as err:
        parse_line(line)
    assert isinstance(err.value, BadInput)  # go_fish prints it as one line and exits 2
    assert (err.value.kind, str(err.value)) == (kind, message)
    assert "\n" not in str(err.value)


def test_every_refusal_kind_is_tested() -> None:
    tested = {kind for _, kind, _ in REFUSALS} | {"not_storable", "bad_row", "bad_type"}
    raised = set()
    # The parser's own modules; import_configs' refusals are tested in test_miopen_cli.py.
    for name in ("driver.py", "problem.py", "keys.py"):
        path = Path(__file__).parents[1] / "tuna" / "miopen" / name
        raised |= set(re.findall(r'DriverError\(\s*"(\w+)"', path.read_text()))
    assert raised and raised <= tested, raised - tested


def test_bad_type_and_direct_driver_call() -> None:
    with pytest.raises(DriverError, match="^not a MIOpenDriver line or problem key: 'conv -n 1'$"):
        parse_driver("conv -n 1")
    row = one(RESNET_B).input_tensor()
    p = one(RESNET_B)
    with pytest.raises(DriverError) as err:
        conv_from_rows(p.config_row(), {**row, "data_type": "FP12"}, {**p.weight_tensor(), "data_type": "FP12"})
    assert str(err.value) == "data type 'FP12' is not one of FP32, FP16, BF16, INT8, INT32, INT64, FP64, FP8, BF8"
    bn = one_bn(BN + " --forw 1")
    with pytest.raises(DriverError, match="^batch-norm data type 'INT8' has no MIOpenDriver command$"):
        bn_from_rows(bn.config_row(), {**bn.input_tensor(), "data_type": "INT8"})
    with pytest.raises(DriverError, match="^needs direction: exactly one of forw 1, forw 2 or back 1$"):
        bn_from_rows({**bn.config_row(), "back": 1}, bn.input_tensor())
    with pytest.raises(DriverError, match="^tensor layout 'NCHW' does not fit num_dims 4$"):
        bn_from_rows(bn.config_row(), {**bn.input_tensor(), "num_dims": 4})


# MITuna's own driver lines and MIOpen's shipped find-dbs.

#: What every line of networks/*.txt and configs/*.txt gives, by reason.
EXPECTED_COUNTS = {
    "parsed": 1915,
    "empty": 48,
    "unsupported_command": 84,
    "missing_value": 2,
    "not_a_driver_line": 1,
}
EXPECTED_LINES = {
    ("all.txt", 762): "-t has no value",
    # A line cut before its command; the message shows its first 80 characters.
    ("all.txt", 1341): "not a MIOpenDriver line or problem key: '64 -c 64 -H 56 -W 56 -k 64 -y 3 -x 3 -p 1 -q 1 -u 1 "
    "-v 1 -l 1 -j 1 -m conv -g 1 ...'",
    ("inception4.txt", 39): f"unsupported MIOpenDriver command 'pool' (tuna takes {ALL_COMMANDS})",
}


def shared_files(pattern: str) -> list[Path]:
    files = sorted(MIOPEN_DATA.glob(pattern))
    if not files:
        pytest.skip(f"no {pattern} under {MIOPEN_DATA} (the shared data is absent)")
    return files


def test_every_shared_driver_line_parses_or_is_refused_with_its_reason() -> None:
    files = shared_files("networks/*.txt") + shared_files("configs/*.txt")
    counts: collections.Counter[str] = collections.Counter()
    problems = 0
    seen = {}
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            try:
                parsed = parse_line(line)
            except DriverError as err:
                counts[err.kind] += 1
                seen[(path.name, number)] = str(err)
                continue
            counts["parsed"] += 1
            problems += len(parsed)
            for p in parsed:
                round_trips(p)
    print(f"\nshared driver lines: {dict(counts)}, problems {problems}")
    assert dict(counts) == EXPECTED_COUNTS
    assert problems == 2749
    for where, message in EXPECTED_LINES.items():
        assert seen[where] == message


def test_all_txt_parses_quickly() -> None:
    lines = shared_files("networks/all.txt")[0].read_text().splitlines()
    assert len(lines) == 1370
    start = time.perf_counter()
    for line in lines:
        with contextlib.suppress(DriverError):
            parse_line(line)
    elapsed = time.perf_counter() - start
    print(f"\nall.txt: {len(lines)} lines in {elapsed * 1000:.0f} ms")
    assert elapsed < 1.0


def test_every_shipped_find_db_key_round_trips() -> None:
    counts: collections.Counter[str] = collections.Counter()
    for path in shared_files("real/*.fdb.txt"):
        for line in path.read_text().splitlines():
            key = line.split("=", 1)[0]
            p = parse_key(key)
            assert problem_key(p) == key
            counts["storable" if p.storable_reason() is None else "keys only"] += 1
    print(f"\nshipped find-db keys: {dict(counts)}")
    assert counts == {"storable": 3994, "keys only": 6}
