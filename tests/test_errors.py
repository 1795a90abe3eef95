"""fastconv.conv2d rejects every bad argument at the API with a ValueError or
TypeError that names the argument, the value received and the form expected,
and leaves its arguments untouched."""

from __future__ import annotations

import re

import numpy as np
import pytest

import fastconv


def base(rng, dtype=np.float32):
    """Valid arguments: input (1, 4, 6, 6), weight (2, 4, 3, 3), bias (2,)."""
    return dict(
        input=rng.uniform(-1, 1, (1, 4, 6, 6)).astype(dtype),
        weight=rng.uniform(-1, 1, (2, 4, 3, 3)).astype(dtype),
        bias=rng.uniform(-1, 1, 2).astype(dtype),
    )


def read_only(array):
    array.setflags(write=False)
    return array


def overlapping_out(a):
    """A 1x1 convolution whose ``out`` is the input itself."""
    a["weight"] = np.ones((4, 4, 1, 1), np.float32)
    a["bias"] = None
    return dict(a, out=a["input"])


def case(error, match, make=None, **overrides):
    """A bad call: ``overrides`` replace the valid arguments, then ``make`` (if given)
    maps the argument dict to the final one."""
    return error, match, make, overrides


F32, F64 = np.float32, np.float64
zeros = np.zeros
#: The start of every padding message: the forms padding accepts.
PAD = r"padding must be an int, a pair \(pad_h, pad_w\), \(\(top, bottom\), \(left, right\)\), " \
      r"'valid' or 'same'"
#: The start of every non-float dtype message.
DTYPE = r"must have dtype float32 or float64, got"


def _int_pair_errors(name):
    """stride/dilation: every non-positive or non-int form."""
    expected = rf"{name} must be an int or a pair of ints, each positive, got "
    bad = [("0", 0, ValueError), ("negative", -1, ValueError), ("pair_0", (1, 0), ValueError),
           ("pair_negative", (-1, 2), ValueError), ("triple", (1, 1, 1), ValueError),
           ("single", (2,), ValueError), ("bool", True, TypeError), ("false", False, TypeError),
           ("float", 2.0, TypeError), ("pair_float", (1, 1.5), TypeError),
           ("none", None, TypeError), ("str", "1", TypeError)]
    return {f"{name}_{label}": case(error, expected + re.escape(repr(value)), **{name: value})
            for label, value, error in bad}


ERRORS = {
    # --- shapes ---
    "input_2d": case(
        ValueError, r"input must be 4-D \(N, C, H, W\) or 3-D \(C, H, W\), got shape \(6, 6\)",
        input=zeros((6, 6), F32)),
    "input_5d": case(
        ValueError, r"input must be 4-D.*got shape \(1, 1, 4, 6, 6\)",
        input=zeros((1, 1, 4, 6, 6), F32)),
    "weight_3d": case(
        ValueError, r"weight must be 4-D \(K, C/groups, R, S\), got shape \(4, 3, 3\)",
        weight=zeros((4, 3, 3), F32)),
    "weight_5d": case(
        ValueError, r"weight must be 4-D.*\(2, 4, 3, 3, 1\)",
        weight=zeros((2, 4, 3, 3, 1), F32)),
    "channel_mismatch": case(
        ValueError, r"weight\.shape\[1\] must be C/groups = 4/1 = 4.*\(2, 3, 3, 3\)",
        weight=zeros((2, 3, 3, 3), F32)),
    "group_channel_mismatch": case(
        ValueError, r"weight\.shape\[1\] must be C/groups = 4/2 = 2.*\(2, 4, 3, 3\)",
        groups=2),
    "groups_not_dividing_K": case(
        ValueError, r"groups=2 must divide.*output channels K=3",
        weight=zeros((3, 2, 3, 3), F32), bias=None, groups=2),
    "groups_not_dividing_C": case(
        ValueError, r"groups=3 must divide.*input channels C=4",
        weight=zeros((3, 1, 3, 3), F32), bias=None, groups=3),
    "groups_0": case(ValueError, r"groups must be a positive int, got 0", groups=0),
    "groups_negative": case(ValueError, r"groups must be a positive int, got -1", groups=-1),
    "groups_bool": case(TypeError, r"groups must be a positive int, got True", groups=True),
    "groups_float": case(TypeError, r"groups must be a positive int, got 2\.0", groups=2.0),
    "bias_length": case(
        ValueError, r"bias must have shape \(K,\) = \(2,\), got \(3,\)", bias=zeros(3, F32)),
    "bias_2d": case(
        ValueError, r"bias must have shape \(K,\) = \(2,\), got \(2, 1\)", bias=zeros((2, 1), F32)),
    "bias_0d": case(
        ValueError, r"bias must have shape \(K,\) = \(2,\), got \(\)", bias=np.float32(1.0)),
    # --- stride and dilation ---
    **_int_pair_errors("stride"),
    **_int_pair_errors("dilation"),
    # --- padding ---
    "padding_negative": case(ValueError, PAD + r", each value >= 0; got -1", padding=-1),
    "padding_pair_negative": case(ValueError, PAD + r".*; got \(1, -1\)", padding=(1, -1)),
    "padding_top_bottom_negative": case(
        ValueError, r"padding\[0\] \(top, bottom\) must be .*non-negative, got \(0, -1\)",
        padding=((0, -1), (0, 0))),
    "padding_left_right_negative": case(
        ValueError, r"padding\[1\] \(left, right\) must be .*non-negative, got \(-2, 0\)",
        padding=((0, 0), (-2, 0))),
    "padding_triple": case(ValueError, PAD + r".*; got \(1, 1, 1\)", padding=(1, 1, 1)),
    "padding_single": case(ValueError, PAD + r".*; got \(1,\)", padding=(1,)),
    "padding_nested_triple": case(
        ValueError, r"padding\[0\] \(top, bottom\).*got \(0, 1, 2\)",
        padding=((0, 1, 2), (0, 0))),
    "padding_one_nested_pair": case(ValueError, PAD + r".*; got \(\(1, 1\),\)",
                                    padding=((1, 1),)),
    "padding_three_nested_pairs": case(
        ValueError, PAD + r".*; got \(\(1, 1\), \(1, 1\), \(1, 1\)\)",
        padding=((1, 1), (1, 1), (1, 1))),
    "padding_float": case(TypeError, PAD + r".*; got 1\.5", padding=1.5),
    "padding_bool": case(TypeError, PAD + r".*; got True", padding=True),
    "padding_none": case(TypeError, PAD + r".*; got None", padding=None),
    "padding_unknown_string": case(ValueError, PAD + r"; got unknown string 'full'",
                                   padding="full"),
    "padding_upper_case": case(ValueError, PAD + r"; got unknown string 'SAME'", padding="SAME"),
    # --- kernel larger than the padded input ---
    "kernel_larger": case(
        ValueError, r"kernel of size \(7, 7\).*larger than the padded input \(6, 6\)",
        weight=zeros((2, 4, 7, 7), F32)),
    "kernel_larger_one_axis": case(
        ValueError, r"kernel of size \(3, 7\).*larger than the padded input \(6, 6\)",
        weight=zeros((2, 4, 3, 7), F32)),
    "kernel_larger_by_dilation": case(
        ValueError, r"dilation \(3, 3\) spans \(7, 7\), larger than the padded input \(6, 6\)",
        dilation=3),
    "kernel_larger_than_padded": case(
        ValueError, r"kernel of size \(9, 9\).*larger than the padded input \(8, 8\)",
        weight=zeros((2, 4, 9, 9), F32), padding=1),
    "kernel_larger_valid": case(
        ValueError, r"larger than the padded input \(6, 6\)",
        weight=zeros((2, 4, 1, 7), F32), padding="valid"),
    # --- empty dimensions ---
    "input_C_0": case(
        ValueError, r"input must have non-empty C, H and W, got shape \(1, 0, 6, 6\)",
        input=zeros((1, 0, 6, 6), F32), weight=zeros((2, 0, 3, 3), F32)),
    "input_H_0": case(
        ValueError, r"input must have non-empty C, H and W, got shape \(1, 4, 0, 6\)",
        input=zeros((1, 4, 0, 6), F32)),
    "input_W_0_unbatched": case(
        ValueError, r"input must have non-empty C, H and W, got shape \(4, 6, 0\)",
        input=zeros((4, 6, 0), F32)),
    "kernel_0": case(
        ValueError, r"weight must have no empty dimension, got shape \(2, 4, 0, 3\)",
        weight=zeros((2, 4, 0, 3), F32)),
    "weight_K_0": case(
        ValueError, r"weight must have no empty dimension, got shape \(0, 4, 3, 3\)",
        weight=zeros((0, 4, 3, 3), F32), bias=None),
    # --- dtypes ---
    "input_int64": case(
        TypeError, rf"input {DTYPE} int64.*input\.astype\(np\.float32\)",
        input=zeros((1, 4, 6, 6), np.int64)),
    "input_uint8": case(
        TypeError, rf"input {DTYPE} uint8.*astype\(np\.float32\)",
        input=zeros((1, 4, 6, 6), np.uint8)),
    "input_bool": case(
        TypeError, rf"input {DTYPE} bool.*astype\(np\.float32\)",
        input=zeros((1, 4, 6, 6), bool)),
    "input_int_list": case(
        TypeError, rf"input {DTYPE} int64.*astype\(np\.float32\)",
        input=zeros((1, 4, 6, 6), np.int64).tolist()),
    "weight_int32": case(
        TypeError, rf"weight {DTYPE} int32.*weight\.astype\(np\.float32\)",
        weight=zeros((2, 4, 3, 3), np.int32)),
    "bias_int32": case(
        TypeError, rf"bias {DTYPE} int32.*bias\.astype\(np\.float32\)",
        bias=zeros(2, np.int32)),
    "input_complex64": case(
        TypeError, rf"input {DTYPE} complex64.*complex",
        input=zeros((1, 4, 6, 6), np.complex64)),
    "weight_complex128": case(
        TypeError, rf"weight {DTYPE} complex128",
        weight=zeros((2, 4, 3, 3), np.complex128)),
    "input_float16": case(
        TypeError, rf"input {DTYPE} float16.*astype\(np\.float32\)",
        input=zeros((1, 4, 6, 6), np.float16)),
    "weight_float16": case(
        TypeError, rf"weight {DTYPE} float16", weight=zeros((2, 4, 3, 3), np.float16)),
    "input_str": case(TypeError, rf"input {DTYPE} <U", input="abc"),
    "weight_f64_input_f32": case(
        TypeError,
        r"weight has dtype float64 but input has dtype float32.*weight\.astype\(np\.float32\)",
        weight=zeros((2, 4, 3, 3), F64)),
    "input_f64_weight_f32": case(
        TypeError, r"weight has dtype float32 but input has dtype float64.*astype\(np\.float64\)",
        input=zeros((1, 4, 6, 6), F64)),
    "bias_f64_input_f32": case(
        TypeError,
        r"bias has dtype float64 but input has dtype float32.*bias\.astype\(np\.float32\)",
        bias=zeros(2, F64)),
    "bias_list_input_f32": case(
        TypeError, r"bias has dtype float64 but input has dtype float32", bias=[0.0, 0.0]),
    # --- not arrays ---
    "input_none": case(
        TypeError, r"input must be a numpy\.ndarray of float32 or float64, got NoneType",
        input=None),
    "input_dict": case(
        TypeError, r"input must be a numpy\.ndarray of float32 or float64, got dict", input={}),
    "input_ragged": case(
        TypeError, r"input must be a numpy\.ndarray of float32 or float64, got list",
        input=[[[1.0, 2.0], [3.0]]]),
    "weight_none": case(
        TypeError, r"weight must be a numpy\.ndarray of float32 or float64, got NoneType",
        weight=None),
    # --- out ---
    "out_shape": case(
        ValueError,
        r"out must have shape \(1, 2, 4, 4\) and dtype float32, got shape \(1, 2, 3, 3\)",
        out=zeros((1, 2, 3, 3), F32)),
    "out_batched_for_unbatched": case(
        ValueError, r"out must have shape \(2, 4, 4\).*got shape \(1, 2, 4, 4\)",
        input=zeros((4, 6, 6), F32), out=zeros((1, 2, 4, 4), F32)),
    "out_dtype": case(
        ValueError, r"out must have shape \(1, 2, 4, 4\) and dtype float32, got .*dtype float64",
        out=zeros((1, 2, 4, 4), F64)),
    "out_read_only": case(
        ValueError, r"out must be writeable, got a read-only array",
        out=read_only(zeros((1, 2, 4, 4), F32))),
    "out_list": case(
        TypeError,
        r"out must be a numpy\.ndarray of shape \(1, 2, 4, 4\) and dtype float32, got list",
        out=zeros((1, 2, 4, 4), F32).tolist()),
    "out_is_input": case(
        ValueError, r"out must not share memory with an input", make=overlapping_out),
    "out_overlaps_bias": case(
        ValueError, r"out must not share memory with an input",
        make=lambda a: dict(a, out=(o := zeros((1, 2, 4, 4), F32)), bias=o[0, 0, 0, :2])),
    # --- algorithm ---
    "algorithm_unknown": case(
        ValueError,
        r"unknown algorithm 'fft' for conv2d on cpu; available: "
        + re.escape(", ".join(fastconv.available_algorithms("conv2d"))),
        algorithm="fft"),
    "algorithm_upper_case": case(
        ValueError, r"unknown algorithm 'DIRECT'.*available: auto, ", algorithm="DIRECT"),
    "algorithm_int": case(TypeError, r"algorithm must be a str, got 3", algorithm=3),
    "algorithm_none": case(TypeError, r"algorithm must be a str, got None", algorithm=None),
    "algorithm_bytes": case(
        TypeError, r"algorithm must be a str, got b'direct'", algorithm=b"direct"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_error(name, rng):
    error, match, make, overrides = ERRORS[name]
    kwargs = {**base(rng), **overrides}
    if make is not None:
        kwargs = make(kwargs)
    before = {key: value.copy() for key, value in kwargs.items() if isinstance(value, np.ndarray)}
    with pytest.raises(error, match=match):
        fastconv.conv2d(**kwargs)
    for key, value in before.items():
        np.testing.assert_array_equal(kwargs[key], value, err_msg=f"{key} was modified")


@pytest.mark.parametrize("algorithm", fastconv.available_algorithms("conv2d"))
def test_errors_do_not_depend_on_the_algorithm(algorithm, rng):
    kwargs = base(rng)
    with pytest.raises(ValueError, match=r"stride must be .*positive, got 0"):
        fastconv.conv2d(**kwargs, stride=0, algorithm=algorithm)
    with pytest.raises(TypeError, match=r"astype\(np\.float32\)"):
        fastconv.conv2d(kwargs["input"].astype(np.int32), kwargs["weight"], algorithm=algorithm)


def test_out_is_untouched_when_arguments_are_bad(rng):
    kwargs = base(rng)
    out = np.full((1, 2, 4, 4), 7.0, np.float32)
    with pytest.raises(ValueError):
        fastconv.conv2d(**kwargs, out=out, groups=2)
    with pytest.raises(ValueError):
        fastconv.conv2d(**kwargs, out=out, algorithm="nope")
    assert np.all(out == 7.0)
