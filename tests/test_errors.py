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
           ("empty", (), ValueError), ("bool", True, TypeError), ("false", False, TypeError),
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
        ValueError, r"bias must be 1-D \(K,\), got shape \(2, 1\)", bias=zeros((2, 1), F32)),
    "bias_0d": case(
        ValueError, r"bias must be 1-D \(K,\), got shape \(\)", bias=np.float32(1.0)),
    "bias_python_float": case(
        TypeError, r"bias must be a 1-D \(K,\) array, got float 1\.0", bias=1.0),
    # --- stride and dilation ---
    **_int_pair_errors("stride"),
    **_int_pair_errors("dilation"),
    # --- padding ---
    "padding_negative": case(ValueError, PAD + r", each value >= 0 and at most 2\*\*31 - 1; "
                             r"got -1", padding=-1),
    "padding_pair_negative": case(ValueError, PAD + r".*; got \(1, -1\)", padding=(1, -1)),
    "padding_top_bottom_negative": case(
        ValueError, r"padding\[0\] \(top, bottom\) must be .*non-negative, got \(0, -1\)",
        padding=((0, -1), (0, 0))),
    "padding_left_right_negative": case(
        ValueError, r"padding\[1\] \(left, right\) must be .*non-negative, got \(-2, 0\)",
        padding=((0, 0), (-2, 0))),
    "padding_triple": case(ValueError, PAD + r".*; got \(1, 1, 1\)", padding=(1, 1, 1)),
    "padding_empty": case(ValueError, PAD + r".*; got \(\)", padding=()),
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
    "input_C_0_weight_C_4": case(
        ValueError, r"weight\.shape\[1\] must be C/groups = 0/1 = 0",
        input=zeros((1, 0, 6, 6), F32)),
    "input_C_0_kernel_larger": case(
        ValueError, r"kernel of size \(7, 7\).*larger than the padded input \(6, 6\)",
        input=zeros((1, 0, 6, 6), F32), weight=zeros((2, 0, 7, 7), F32)),
    "input_H_0": case(
        ValueError, r"input must have non-empty H and W, got shape \(1, 4, 0, 6\)",
        input=zeros((1, 4, 0, 6), F32)),
    "input_W_0_unbatched": case(
        ValueError, r"input must have non-empty H and W, got shape \(4, 6, 0\)",
        input=zeros((4, 6, 0), F32)),
    "kernel_0": case(
        ValueError, r"weight must have non-empty K, R and S, got shape \(2, 4, 0, 3\)",
        weight=zeros((2, 4, 0, 3), F32)),
    "weight_K_0": case(
        ValueError, r"weight must have non-empty K, R and S, got shape \(0, 4, 3, 3\)",
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
    "input_str": case(TypeError, r"input must be a 4-D \(N, C, H, W\) or 3-D \(C, H, W\) "
                      r"array, got str 'abc'", input="abc"),
    "input_str_array": case(TypeError, rf"input {DTYPE} <U", input=np.full((1, 4, 6, 6), "a")),
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
        TypeError, r"input must be a 4-D \(N, C, H, W\) or 3-D \(C, H, W\) array, got dict",
        input={}),
    "input_python_float": case(
        TypeError, r"input must be a 4-D \(N, C, H, W\) or 3-D \(C, H, W\) array, got float "
        r"3\.0", input=3.0),
    "input_numpy_scalar": case(
        ValueError, r"input must be 4-D \(N, C, H, W\) or 3-D \(C, H, W\), got shape \(\)",
        input=np.float32(3.0)),
    "input_flat_list": case(
        ValueError, r"input must be 4-D.*got shape \(3,\)", input=[1.0, 2.0, 3.0]),
    "weight_python_int": case(
        TypeError, r"weight must be a 4-D \(K, C/groups, R, S\) array, got int 3", weight=3),
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


# --- size-like integers: every op, every argument, out of range or of the wrong type ----------

_X = np.zeros((1, 2, 6, 6), F32)
_Y = np.zeros((1, 2, 3, 3), F32)
_IDX = np.zeros((1, 2, 3, 3), np.int64)
_W = np.zeros((2, 2, 3, 3), F32)
#: op name -> (function, valid keyword arguments, {size-like argument: a valid value}).
SIZE_ARGUMENTS = {
    "conv2d": (fastconv.conv2d, dict(input=_X, weight=_W),
               dict(stride=1, padding=1, dilation=1, groups=1)),
    "conv2d_backward": (fastconv.conv2d_backward,
                        dict(grad_output=np.zeros((1, 2, 4, 4), F32), input=_X, weight=_W),
                        dict(stride=1, padding=0, dilation=1, groups=1)),
    "conv_transpose2d": (fastconv.conv_transpose2d, dict(input=_Y, weight=_W),
                         dict(stride=2, padding=1, output_padding=1, groups=1, dilation=1,
                              output_size=(6, 6))),
    "conv_transpose2d_backward": (fastconv.conv_transpose2d_backward,
                                  dict(grad_output=np.zeros((1, 2, 6, 6), F32), input=_Y,
                                       weight=_W),
                                  dict(stride=2, padding=1, output_padding=1, groups=1,
                                       dilation=1, output_size=(6, 6))),
    "max_pool2d": (fastconv.max_pool2d, dict(input=_X),
                   dict(kernel_size=2, stride=2, padding=1, dilation=1)),
    "max_pool2d_backward": (fastconv.max_pool2d_backward, dict(grad_output=_Y, indices=_IDX),
                            dict(input_shape=(1, 2, 6, 6))),
    "avg_pool2d": (fastconv.avg_pool2d, dict(input=_X),
                   dict(kernel_size=2, stride=2, padding=1, divisor_override=3)),
    "avg_pool2d_backward": (fastconv.avg_pool2d_backward, dict(grad_output=_Y),
                            dict(input_shape=(1, 2, 6, 6), kernel_size=2, stride=2, padding=0,
                                 divisor_override=3)),
    "max_unpool2d": (fastconv.max_unpool2d, dict(input=_Y, indices=_IDX),
                     dict(kernel_size=2, stride=2, padding=0, output_size=(6, 6))),
    "repeat_unpool2d": (fastconv.repeat_unpool2d, dict(input=_Y), dict(scale=2)),
    "repeat_unpool2d_backward": (fastconv.repeat_unpool2d_backward, dict(grad_output=_X),
                                 dict(scale=2)),
}
SIZE_CASES = [(op, name) for op, (_, _, sizes) in SIZE_ARGUMENTS.items() for name in sizes]
HUGE = [2**70, 2**63, 2**62, 2**40, 2**31]


def _replace(value, number):
    """``value`` with every int entry replaced by ``number`` (one place for a shape)."""
    if isinstance(value, tuple):
        return (*value[:-1], number)
    return number


def _call(op, name, number):
    function, arrays, sizes = SIZE_ARGUMENTS[op]
    kwargs = dict(sizes, **{name: _replace(sizes[name], number)})
    if name == "output_size":  # output_size, not output_padding, sets the size
        kwargs.pop("output_padding", None)
    return function(**arrays, **kwargs)


@pytest.mark.parametrize("op, name", SIZE_CASES, ids=[f"{o}-{n}" for o, n in SIZE_CASES])
def test_size_like_integers_are_checked_at_the_api(op, name):
    valid = SIZE_ARGUMENTS[op][2][name]
    scalar = valid if isinstance(valid, int) else valid[-1]
    expected = _call(op, name, scalar)
    for number in HUGE:
        if name == "divisor_override" and number < 2**63:  # any int64 but 0, as in PyTorch
            result = _call(op, name, number)
            np.testing.assert_array_equal(result, np.zeros_like(expected))
            continue
        with pytest.raises(ValueError, match=re.escape(str(number))) as info:
            _call(op, name, number)
        message = str(info.value)
        shown = name if name != "output_size" or op.startswith("conv") else "output_size[-2:]"
        assert message.startswith(shown) and ("2**31 - 1" in message or "2**63" in message), \
            message
    negative = -1 if name != "divisor_override" else 0
    with pytest.raises(ValueError, match=rf"^{re.escape(name)}.*got .*{negative}"):
        _call(op, name, negative)
    with pytest.raises(TypeError, match=rf"^{re.escape(name)}.*True"):
        _call(op, name, True)
    # numpy integers are ints
    for kind in (np.int64, np.int32, np.uint8):
        result = _call(op, name, kind(scalar))
        for got, want in zip(result if isinstance(result, tuple) else (result,),
                             expected if isinstance(expected, tuple) else (expected,),
                             strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("call, name", [
    (lambda: fastconv.conv2d(_X, _W, padding=2**31 - 1), "padding=2147483647"),
    (lambda: fastconv.conv_transpose2d(_Y, _W, stride=2**31 - 1), "stride, dilation"),
    (lambda: fastconv.max_unpool2d(_Y, _IDX, 2**31 - 1), "kernel_size, stride"),
    (lambda: fastconv.repeat_unpool2d(_Y, 2**31 - 1), "scale=2147483647"),
    (lambda: fastconv.max_pool2d_backward(_Y, _IDX, (1, 2, 2**31 - 1, 2**31 - 1)),
     "input_shape"),
])
def test_results_too_large_for_any_array_name_the_argument(call, name):
    # each value is in range, but the result could not exist: a ValueError that names the
    # argument, not numpy's "array is too big"
    with pytest.raises(ValueError, match=r"would have shape .* more than any array can hold; "
                                         rf"check .*{re.escape(name)}"):
        call()


@pytest.mark.parametrize("call, name", [
    (lambda: fastconv.conv2d_backward(3.0, _X, _W), "grad_output"),
    (lambda: fastconv.conv_transpose2d(None, _W), "input"),
    (lambda: fastconv.conv_transpose2d(_Y, 2.0), "weight"),
    (lambda: fastconv.conv_transpose2d_backward(_X, _Y, "w"), "weight"),
    (lambda: fastconv.max_pool2d(1.5, 2), "input"),
    (lambda: fastconv.max_pool2d_backward(1.5, _IDX, _X.shape), "grad_output"),
    (lambda: fastconv.avg_pool2d(2, 2), "input"),
    (lambda: fastconv.avg_pool2d_backward(1.0, _X.shape, 2), "grad_output"),
    (lambda: fastconv.max_unpool2d(1.0, _IDX, 2), "input"),
    (lambda: fastconv.max_unpool2d(_Y, 3, 2), "indices"),
    (lambda: fastconv.max_unpool2d_backward(1.0, _IDX), "grad_output"),
    (lambda: fastconv.repeat_unpool2d(None, 2), "input"),
    (lambda: fastconv.repeat_unpool2d_backward(0.5, 2), "grad_output"),
])
def test_scalars_and_none_in_place_of_arrays(call, name):
    with pytest.raises(TypeError, match=rf"^{name} must be"):
        call()
