"""fastconv.conv2d_backward: every algorithm x the case table x dtypes, against the reference
(the spec) and against PyTorch autograd (an independent oracle), plus the needs_* flags,
memory layouts, empty batches, finite differences, the adjoint identity with
conv_transpose2d, determinism and hypothesis-generated configurations.

Tolerances: grad_input sums at most C/groups * R * S products per value, as a forward
output does, and uses :func:`tests.cases.tolerance`; grad_weight and grad_bias sum
N * H_out * W_out terms per value and use :func:`tests.cases.sum_tolerance`, whose
float32 atol grows with that count.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings

import fastconv
from fastconv import config, reference, shapes
from tests.cases import (
    CASE_IDS,
    CONV2D_CASES,
    DTYPES,
    Conv2dCase,
    assert_same_pattern,
    expected_output_shape,
    explicit_padding,
    general_algorithms,
    make_inputs,
    no_whole_planes,
    relayout,
    sum_tolerance,
    supports,
    tolerance,
)
from tests.gradients import (
    GRAD_NAMES,
    NEEDS_FLAG_SETS,
    NEEDS_FLAGS,
    assert_grads_close,
    assert_needs_respected,
    flags_id,
    numeric_gradient,
)
from tests.test_conv2d import conv2d_configs

#: The algorithms every kernel of the op has, for every problem (Winograd computes only
#: 3x3 stride-1 problems: tested on those on its own).
ALGORITHMS = general_algorithms("conv2d_grad_input", "conv2d_grad_weight", "conv2d")
DTYPE_IDS = [np.dtype(d).name for d in DTYPES]


def test_algorithm_lists():
    # the matrix below would silently shrink if the registry lost a kernel
    expected = {"auto", "direct", "im2col", "reference"}
    assert expected <= set(ALGORITHMS)
    assert set(fastconv.available_algorithms("conv2d_grad_weight")) == set(
        fastconv.available_algorithms("conv2d_grad_input"))


def cases(*ids: str) -> list[Conv2dCase]:
    table = {case.id: case for case in CONV2D_CASES}
    return [table[i] for i in ids]


def make_grad_output(case: Conv2dCase, dtype, rng) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, expected_output_shape(case)).astype(dtype)


def torch_conv2d_grads(grad_output, x, w, stride=1, padding=0, dilation=1, groups=1):
    """``(grad_input, grad_weight, grad_bias)`` of ``torch.nn.functional.conv2d`` by autograd.

    Torch takes int, pair, "valid" and stride-1 "same" itself; other forms (asymmetric,
    "same" with stride > 1) are applied to the input with np.pad, which is their
    documented meaning, and the padded input's gradient is cropped back to the input.
    """
    torch = pytest.importorskip("torch")
    x, w = np.array(x), np.array(w)
    stride = tuple(stride) if isinstance(stride, (tuple, list)) else stride
    dilation = tuple(dilation) if isinstance(dilation, (tuple, list)) else dilation
    stride_pair = stride if isinstance(stride, tuple) else (stride, stride)
    crop = (slice(None),) * x.ndim
    asymmetric = isinstance(padding, (tuple, list)) and any(
        isinstance(p, (tuple, list)) for p in padding
    )
    if asymmetric or (padding == "same" and stride_pair != (1, 1)):
        (top, bottom), (left, right) = explicit_padding(padding, x.shape[-2:], w.shape[-2:],
                                                        stride, dilation)
        height, width = x.shape[-2:]
        x = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(top, bottom), (left, right)])
        crop = (Ellipsis, slice(top, top + height), slice(left, left + width))
        padding = 0
    elif isinstance(padding, list):
        padding = tuple(padding)
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(w).requires_grad_()
    tb = torch.zeros(w.shape[0], dtype=tx.dtype, requires_grad=True)
    with warnings.catch_warnings():
        # torch warns that stride-1 "same" with an even kernel copies the input
        warnings.simplefilter("ignore", UserWarning)
        y = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=padding,
                                       dilation=dilation, groups=groups)
    assert tuple(y.shape) == grad_output.shape
    y.backward(torch.from_numpy(np.array(grad_output)))
    return tx.grad.numpy()[crop], tw.grad.numpy(), tb.grad.numpy()


# --- the case table -------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CONV2D_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_matches_reference(algorithm, case, dtype, rng):
    x, w, _ = make_inputs(case, dtype, rng)
    g = make_grad_output(case, dtype, rng)
    grads = fastconv.conv2d_backward(g, x, w, **case.kwargs, algorithm=algorithm)
    assert grads[0].shape == x.shape and grads[1].shape == w.shape and grads[2].shape == (case.k,)
    assert_grads_close(grads, reference.conv2d_backward(g, x, w, **case.kwargs), dtype, g)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CONV2D_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_matches_torch(algorithm, case, dtype, rng):
    x, w, _ = make_inputs(case, dtype, rng)
    g = make_grad_output(case, dtype, rng)
    expected = torch_conv2d_grads(g, x, w, **case.kwargs)
    grads = fastconv.conv2d_backward(g, x, w, **case.kwargs, algorithm=algorithm)
    assert_grads_close(grads, expected, dtype, g)


@pytest.mark.parametrize("case", CONV2D_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("algorithm", [a for a in fastconv.available_algorithms(
    "conv2d_grad_input") if a != "auto"])
def test_grad_input_kernels_write_every_value(algorithm, case, rng):
    # conv2d_backward and conv_transpose2d give a grad_input kernel an uninitialised
    # array: each kernel must write every value (here: an array of NaN to start from)
    from fastconv import dispatch, shapes

    if not supports(algorithm, case, "conv2d_grad_input"):
        pytest.skip(f"{algorithm} does not compute {case.id}")
    x, w, _ = make_inputs(case, np.float64, rng)
    x4 = x if x.ndim == 4 else x[None]
    kwargs = case.kwargs
    stride = shapes.pair(kwargs.get("stride", 1), "stride")
    dilation = shapes.pair(kwargs.get("dilation", 1), "dilation")
    padding = shapes.padding2d(kwargs.get("padding", 0), x4.shape[2:], w.shape[2:], stride,
                               dilation)
    groups = kwargs.get("groups", 1)
    y = reference.conv2d(x4, w, None, stride, padding, dilation, groups)
    dy = rng.uniform(-1, 1, y.shape)
    expected = reference.conv2d_backward(dy, x4, w, stride, padding, dilation, groups)[0]
    _, kernel = dispatch.select("conv2d_grad_input", "cpu", algorithm, input_shape=x4.shape,
                                weight_shape=w.shape, stride=stride, padding=padding,
                                dilation=dilation, groups=groups, dtype=x4.dtype)
    grad_in = np.full(x4.shape, np.nan)
    kernel(dy, w, grad_in, stride, padding, dilation, groups)
    np.testing.assert_allclose(grad_in, expected, **tolerance(np.float64))


def test_torch_oracle_crops_the_padded_gradient():
    # The oracle's cropping, checked once by hand: a 1x1 kernel of weight 1 with
    # asymmetric padding sends grad_output straight back to the input positions it
    # read; padded positions are dropped.
    x = np.zeros((1, 1, 3, 4))
    w = np.ones((1, 1, 1, 1))
    g = np.arange(5.0 * 5.0).reshape(1, 1, 5, 5)
    gx, _, gb = torch_conv2d_grads(g, x, w, padding=((1, 1), (0, 1)))
    np.testing.assert_array_equal(gx[0, 0], g[0, 0, 1:4, 0:4])
    assert gb.tolist() == [g.sum()]
    for algorithm in ALGORITHMS:
        got = fastconv.conv2d_backward(g, x, w, padding=((1, 1), (0, 1)), algorithm=algorithm)
        np.testing.assert_array_equal(got[0], gx)


@pytest.mark.parametrize("case", cases("3x3_s2_p1", "same_s2_dil23", "groups2", "deep_c24",
                                       "pad_asym_large_s2", "1x1_pad1"),
                         ids=lambda c: c.id)
def test_im2col_in_tiles_of_one_row(case, monkeypatch, rng):
    # Small cases fit one im2col tile; a 1-byte budget makes every tile one output row,
    # so the gradients' tile loops and their seams are exercised too.
    monkeypatch.setattr(config, "IM2COL_TILE_BYTES", 1)
    dtype = np.float64
    x, w, _ = make_inputs(case, dtype, rng)
    g = make_grad_output(case, dtype, rng)
    grads = fastconv.conv2d_backward(g, x, w, **case.kwargs, algorithm="im2col")
    assert_grads_close(grads, reference.conv2d_backward(g, x, w, **case.kwargs), dtype, g)


# --- needs_* flags ------------------------------------------------------------------

@pytest.mark.parametrize("flags", NEEDS_FLAG_SETS, ids=flags_id)
@pytest.mark.parametrize("case", cases("3x3_s2_p1", "depthwise_x2_s2", "unbatched_3x3"),
                         ids=lambda c: c.id)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_needs_flags(algorithm, case, flags, rng):
    x, w, _ = make_inputs(case, np.float64, rng)
    g = make_grad_output(case, np.float64, rng)
    got = fastconv.conv2d_backward(g, x, w, **case.kwargs, algorithm=algorithm,
                                   **dict(zip(NEEDS_FLAGS, flags, strict=False)))
    assert_needs_respected(got, reference.conv2d_backward(g, x, w, **case.kwargs), flags)


def test_needs_flags_accept_numpy_bools(rng):
    case = cases("3x3_p1")[0]
    x, w, _ = make_inputs(case, np.float64, rng)
    g = make_grad_output(case, np.float64, rng)
    gx, gw, gb = fastconv.conv2d_backward(g, x, w, **case.kwargs, needs_input_grad=np.bool_(False),
                                          needs_weight_grad=np.bool_(True))
    assert gx is None and gw is not None and gb is not None


# --- memory layouts, read-only and untouched inputs ----------------------------------


@pytest.mark.parametrize("layout", ["strided", "transposed", "fortran", "reversed"])
@pytest.mark.parametrize("case", cases("3x3_s2_p1", "groups2", "pad_asym", "unbatched_3x3"),
                         ids=lambda c: c.id)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_any_memory_layout(algorithm, case, layout, rng):
    dtype = np.float32
    x, w, _ = make_inputs(case, dtype, rng)
    g = make_grad_output(case, dtype, rng)
    expected = reference.conv2d_backward(g, x, w, **case.kwargs)
    views = [relayout(a, layout, rng) for a in (g, x, w)]
    grads = fastconv.conv2d_backward(*views, **case.kwargs, algorithm=algorithm)
    assert_grads_close(grads, expected, dtype, g)
    for grad in grads:
        assert grad.flags.c_contiguous and grad.flags.writeable


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_read_only_inputs(algorithm, dtype, rng):
    case = cases("3x3_s2_p1")[0]
    x, w, _ = make_inputs(case, dtype, rng)
    g = make_grad_output(case, dtype, rng)
    expected = reference.conv2d_backward(g, x, w, **case.kwargs)
    for array in (g, x, w):
        array.setflags(write=False)
    grads = fastconv.conv2d_backward(g, x, w, **case.kwargs, algorithm=algorithm)
    assert_grads_close(grads, expected, dtype, g)
    assert all(grad.flags.writeable for grad in grads)


@pytest.mark.parametrize("case", cases("3x3_p1", "1x1", "depthwise_x2_s2", "unbatched_3x3",
                                       "same_s2"),
                         ids=lambda c: c.id)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_inputs_are_not_modified(algorithm, case, rng):
    x, w, _ = make_inputs(case, np.float64, rng)
    g = make_grad_output(case, np.float64, rng)
    copies = [a.copy() for a in (g, x, w)]
    grads = fastconv.conv2d_backward(g, x, w, **case.kwargs, algorithm=algorithm)
    for before, after in zip(copies, (g, x, w), strict=False):
        np.testing.assert_array_equal(after, before)
    for grad in grads:
        assert not any(np.shares_memory(grad, a) for a in (g, x, w))


# --- batch shapes ---------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CONV2D_CASES if c.n is None], ids=lambda c: c.id)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_unbatched_is_batch_of_one(algorithm, case, rng):
    dtype = np.float64
    x, w, _ = make_inputs(case, dtype, rng)
    g = make_grad_output(case, dtype, rng)
    gx, gw, gb = fastconv.conv2d_backward(g, x, w, **case.kwargs, algorithm=algorithm)
    assert gx.shape == x.shape == (case.c, case.h, case.w)
    bx, bw, bb = fastconv.conv2d_backward(g[None], x[None], w, **case.kwargs,
                                          algorithm=algorithm)
    np.testing.assert_allclose(gx, bx[0], **tolerance(dtype))
    np.testing.assert_allclose(gw, bw, **tolerance(dtype))
    np.testing.assert_allclose(gb, bb, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_empty_batch(algorithm, dtype):
    x = np.zeros((0, 4, 9, 8), dtype)
    w = np.ones((6, 2, 3, 3), dtype)
    g = np.zeros((0, 6, 5, 4), dtype)
    gx, gw, gb = fastconv.conv2d_backward(g, x, w, stride=2, padding=1, groups=2,
                                          algorithm=algorithm)
    assert gx.shape == (0, 4, 9, 8) and gx.dtype == dtype
    assert gw.shape == (6, 2, 3, 3) and gw.dtype == dtype
    assert gb.shape == (6,) and gb.dtype == dtype
    assert not gw.any() and not gb.any()


# --- finite differences ---------------------------------------------------------------

FD_CASES = [
    Conv2dCase("fd_s2_p1", 2, 2, 5, 4, 3, 3, 2, stride=2, padding=1),
    Conv2dCase("fd_asym_dil21", 1, 2, 5, 6, 2, 2, 3, padding=((1, 0), (0, 2)), dilation=(2, 1)),
    Conv2dCase("fd_groups_same_s2", None, 4, 5, 5, 4, 3, 3, stride=2, padding="same", groups=2),
    Conv2dCase("fd_s3_1x1", 1, 3, 7, 5, 2, 1, 1, stride=3),
]


@pytest.mark.parametrize("case", FD_CASES, ids=lambda c: c.id)
def test_finite_differences(case, rng):
    # L = sum(conv2d(x, w, b) * G) is linear in each of x, w and b, so central
    # differences are exact but for rounding (~1e-16 * |L| / step).
    x, w, b = make_inputs(case, np.float64, rng)
    g = make_grad_output(case, np.float64, rng)

    def loss():
        return float(np.sum(reference.conv2d(x, w, b, **case.kwargs) * g))

    numeric = [numeric_gradient(loss, a) for a in (x, w, b)]
    for algorithm in ALGORITHMS:
        grads = fastconv.conv2d_backward(g, x, w, **case.kwargs, algorithm=algorithm)
        for name, a, e in zip(GRAD_NAMES, grads, numeric, strict=False):
            np.testing.assert_allclose(a, e, rtol=1e-7, atol=1e-9,
                                       err_msg=f"{name} ({algorithm})")


# --- the adjoint identity -----------------------------------------------------------


@pytest.mark.parametrize("case", CONV2D_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_adjoint_of_conv_transpose2d(algorithm, case, rng):
    # <conv2d(x, w), y> == <x, conv_transpose2d(y, w)>: conv_transpose2d reads the
    # same weight as (C_in = K, C_out / groups = C / groups, R, S), takes the padding
    # as explicit pairs, and output_size picks x's size among those it can reach.
    x, w, _ = make_inputs(case, np.float64, rng)
    y = make_grad_output(case, np.float64, rng)
    pads = explicit_padding(case.padding, (case.h, case.w), (case.r, case.s), case.stride,
                            case.dilation)
    forward = fastconv.conv2d(x, w, stride=case.stride, padding=case.padding,
                              dilation=case.dilation, groups=case.groups, algorithm=algorithm)
    back = fastconv.conv_transpose2d(y, w, stride=case.stride, padding=pads,
                                     groups=case.groups, dilation=case.dilation,
                                     output_size=x.shape[-2:], algorithm=algorithm)
    assert back.shape == x.shape
    lhs, rhs = np.vdot(forward, y), np.vdot(x, back)
    scale = np.vdot(np.abs(forward), np.abs(y))
    assert abs(lhs - rhs) <= 1e-12 * scale, (lhs, rhs)


# --- determinism -------------------------------------------------------------------

DETERMINISM_CASES = [
    Conv2dCase("det_3x3", 4, 8, 12, 12, 8, 3, 3, padding=1),
    Conv2dCase("det_groups_s2", 5, 6, 13, 11, 9, 3, 3, stride=2, padding=1, groups=3),
]


@pytest.mark.parametrize("case", DETERMINISM_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_same_bits_on_every_run(algorithm, case, rng):
    dtype = np.float32
    x, w, _ = make_inputs(case, dtype, rng)
    g = make_grad_output(case, dtype, rng)
    first = fastconv.conv2d_backward(g, x, w, **case.kwargs, algorithm=algorithm)
    # another problem in between leaves other values in the shared scratch buffers
    other = cases("deep_c24")[0]
    ox, ow, _ = make_inputs(other, dtype, rng)
    fastconv.conv2d_backward(make_grad_output(other, dtype, rng), ox, ow, **other.kwargs,
                             algorithm=algorithm)
    second = fastconv.conv2d_backward(g, x, w, **case.kwargs, algorithm=algorithm)
    for name, a, b in zip(GRAD_NAMES, first, second, strict=False):
        np.testing.assert_array_equal(a, b, err_msg=name)


# --- bad arguments ------------------------------------------------------------------


def base_arguments(rng, dtype=np.float32):
    """Valid arguments: grad_output (1, 2, 4, 4), input (1, 4, 6, 6), weight (2, 4, 3, 3)."""
    return {
        "grad_output": rng.uniform(-1, 1, (1, 2, 4, 4)).astype(dtype),
        "input": rng.uniform(-1, 1, (1, 4, 6, 6)).astype(dtype),
        "weight": rng.uniform(-1, 1, (2, 4, 3, 3)).astype(dtype),
    }


F32, F64 = np.float32, np.float64
SHAPE = r"grad_output must have the shape of conv2d's output, "
ERRORS = {
    "grad_output_spatial": (ValueError, SHAPE + r"\(1, 2, 4, 4\), got \(1, 2, 5, 5\)",
                            {"grad_output": np.zeros((1, 2, 5, 5), F32)}),
    "grad_output_channels": (ValueError, SHAPE + r"\(1, 2, 4, 4\), got \(1, 3, 4, 4\)",
                             {"grad_output": np.zeros((1, 3, 4, 4), F32)}),
    "grad_output_batch": (ValueError, SHAPE + r"\(1, 2, 4, 4\), got \(2, 2, 4, 4\)",
                          {"grad_output": np.zeros((2, 2, 4, 4), F32)}),
    "grad_output_unbatched_for_batched": (
        ValueError, SHAPE + r"\(1, 2, 4, 4\), got \(2, 4, 4\)",
        {"grad_output": np.zeros((2, 4, 4), F32)}),
    "grad_output_batched_for_unbatched": (
        ValueError, SHAPE + r"\(2, 4, 4\), got \(1, 2, 4, 4\)",
        {"input": np.zeros((4, 6, 6), F32)}),
    "grad_output_for_stride": (ValueError, SHAPE + r"\(1, 2, 2, 2\), got \(1, 2, 4, 4\)",
                               {"stride": 2}),
    "grad_output_int": (
        TypeError,
        r"grad_output must have dtype float32 or float64, got int64.*grad_output\.astype",
        {"grad_output": np.zeros((1, 2, 4, 4), np.int64)}),
    "input_int": (TypeError, r"input must have dtype float32 or float64, got int32.*astype",
                  {"input": np.zeros((1, 4, 6, 6), np.int32)}),
    "grad_output_f64_input_f32": (
        TypeError, r"input has dtype float32 but grad_output has dtype float64",
        {"grad_output": np.zeros((1, 2, 4, 4), F64)}),
    "weight_f64": (TypeError, r"weight has dtype float64 but grad_output has dtype float32",
                   {"weight": np.zeros((2, 4, 3, 3), F64)}),
    "grad_output_none": (TypeError, r"grad_output must be a numpy\.ndarray.*got NoneType",
                         {"grad_output": None}),
    "channel_mismatch": (ValueError, r"weight\.shape\[1\] must be C/groups = 4/2 = 2",
                         {"groups": 2}),
    "stride_0": (ValueError, r"stride must be an int or a pair of ints, each positive, got 0",
                 {"stride": 0}),
    "padding_string": (ValueError, r"padding must be .*; got unknown string 'full'",
                       {"padding": "full"}),
    "kernel_larger": (ValueError, r"larger than the padded input \(6, 6\)", {"dilation": 3}),
    **{f"{name}_{label}": (TypeError, rf"{name} must be a bool, got {re.escape(repr(value))}",
                           {name: value})
       for name in NEEDS_FLAGS for label, value in (("int", 1), ("none", None), ("str", "yes"))},
    "algorithm_unknown": (ValueError, r"unknown algorithm 'fft' for conv2d_grad_input",
                          {"algorithm": "fft"}),
    "algorithm_int": (TypeError, r"algorithm must be a str, got 3", {"algorithm": 3}),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_error(name, rng):
    error, match, overrides = ERRORS[name]
    kwargs = {**base_arguments(rng), **overrides}
    before = {key: value.copy() for key, value in kwargs.items() if isinstance(value, np.ndarray)}
    with pytest.raises(error, match=match):
        fastconv.conv2d_backward(**kwargs)
    for key, value in before.items():
        np.testing.assert_array_equal(kwargs[key], value, err_msg=f"{key} was modified")


def test_weight_gradient_algorithm_is_checked(rng):
    # grad_weight alone still validates the algorithm name
    with pytest.raises(ValueError, match=r"unknown algorithm 'fft' for conv2d_grad_weight"):
        fastconv.conv2d_backward(**base_arguments(rng), needs_input_grad=False,
                                 algorithm="fft")


# --- hypothesis ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a != "reference"])
@settings(max_examples=30, deadline=None)
@given(config=conv2d_configs())
def test_hypothesis_matches_reference(algorithm, config):
    case, dtype, seed = config
    data = np.random.default_rng(seed)
    x, w, _ = make_inputs(case, dtype, data)
    g = make_grad_output(case, dtype, data)
    grads = fastconv.conv2d_backward(g, x, w, **case.kwargs, algorithm=algorithm)
    assert_grads_close(grads, reference.conv2d_backward(g, x, w, **case.kwargs), dtype, g)


# --- Winograd: 3x3 stride-1 layers (and 5x5 ones' grad_input) --------------------------------

WINOGRAD_CASES = [c for c in CONV2D_CASES
                  if supports("winograd", c, op="conv2d_grad_input")]


def test_winograd_covers_some_cases():
    assert len(WINOGRAD_CASES) >= 5


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=lambda c: c.id)
def test_winograd_gradients(case, dtype, rng):
    # (F(2x2, 5x5) computes 5x5 layers' grad_input, not their weight gradient)
    weight_grad = supports("winograd", case, op="conv2d_grad_weight")
    x, w, _ = make_inputs(case, dtype, rng)
    dy = rng.uniform(-1, 1, expected_output_shape(case)).astype(dtype)
    grads = fastconv.conv2d_backward(dy, x, w, **case.kwargs, algorithm="winograd",
                                     needs_weight_grad=weight_grad)
    expected = reference.conv2d_backward(dy, x, w, **case.kwargs)
    n_terms = int(np.prod(expected_output_shape(case))) // case.k
    np.testing.assert_allclose(grads[0], expected[0], **tolerance(dtype))
    if weight_grad:
        np.testing.assert_allclose(grads[1], expected[1], **sum_tolerance(dtype, n_terms))
    np.testing.assert_allclose(grads[2], expected[2], **sum_tolerance(dtype, n_terms))


def test_winograd_grad_weight_is_deterministic(rng):
    case = WINOGRAD_CASES[0]
    x, w, _ = make_inputs(case, np.float32, rng)
    dy = rng.uniform(-1, 1, expected_output_shape(case)).astype(np.float32)
    first = fastconv.conv2d_backward(dy, x, w, **case.kwargs, algorithm="winograd")[1]
    fastconv.conv2d_backward(dy[..., ::-1].copy(), x, w, **case.kwargs, algorithm="winograd")
    again = fastconv.conv2d_backward(dy, x, w, **case.kwargs, algorithm="winograd")[1]
    assert np.array_equal(first, again)


def test_winograd_refuses_strided_weight_gradients():
    # at stride 2 its grad_input runs (on the phases of grad_input), its grad_weight not
    x = np.zeros((1, 2, 6, 6), np.float32)
    w = np.zeros((2, 2, 3, 3), np.float32)
    dy = np.zeros((1, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="algorithm 'winograd' cannot compute this "
                                         "conv2d_grad_weight: winograd needs a 3x3 kernel, "
                                         "stride 1"):
        fastconv.conv2d_backward(dy, x, w, stride=2, padding=1, algorithm="winograd")
    grad_input = fastconv.conv2d_backward(dy, x, w, stride=2, padding=1, algorithm="winograd",
                                          needs_weight_grad=False, needs_bias_grad=False)[0]
    assert grad_input.shape == x.shape


def _depthwise_grad_weight_matches(x, w, dy, kwargs, dtype, *, inf_at):
    """The direct weight gradient of a depthwise layer against the reference: finite, then
    with a NaN in ``dy`` (it lands where the definition puts it), then also an Inf in
    ``x`` at ``inf_at`` (met by the zeros of the strips' junk columns and rows: the call
    goes to the exact loops)."""
    for case in ("finite", "nan_grad", "inf_input"):
        if case == "nan_grad":
            dy[1, 2, 3, 1] = np.nan
        if case == "inf_input":
            x[inf_at] = np.inf
        got = fastconv.conv2d_backward(dy, x, w, **kwargs, algorithm="direct",
                                       needs_input_grad=False, needs_bias_grad=False)[1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want = reference.conv2d_backward(dy, x, w, **kwargs)[1]
        assert_same_pattern(got, want, **sum_tolerance(dtype, dy.shape[0] * dy.shape[2]
                                                       * dy.shape[3]))


def _depthwise_in_bands(shape, wshape, kwargs, dtype, monkeypatch, rng):
    """``(x, w, dy)`` in [-1, 1] for a depthwise layer, with the direct kernels' bands set
    to 3 output rows (the last one shorter) and every call on the threads."""
    from fastconv.cpu import strips, threads

    monkeypatch.setattr(strips, "band_rows", lambda n_rows, *_: min(n_rows, 3))
    monkeypatch.setattr(threads, "SERIAL_MAX_WORK", 0)
    no_whole_planes(monkeypatch)
    fastconv.clear_plans()
    x = rng.uniform(-1, 1, shape).astype(dtype)
    w = rng.uniform(-1, 1, wshape).astype(dtype)
    dy = rng.uniform(-1, 1, reference.conv2d(x, w, **kwargs).shape).astype(dtype)
    return x, w, dy


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wshape, kwargs", [
    ((6, 1, 3, 3), dict(padding=1, groups=6)),
    ((12, 1, 5, 5), dict(padding=2, groups=6)),
    ((6, 1, 3, 3), dict(padding=((2, 0), (1, 3)), dilation=2, groups=6)),
], ids=["3x3_s1", "5x5_s1_x2", "3x3_dil2_asym"])
def test_depthwise_grad_weight_stacks_small_planes(wshape, kwargs, dtype, monkeypatch, rng):
    # stride 1, whole planes in one band: two images' planes one after the other in a
    # strip (5 images: groups of 2, 2 and 1), one pass of the dot products over both, the
    # rows between them zeros of grad_output, on every thread; a NaN in grad_output lands
    # where the definition puts it, and an Inf input value sends the call to the exact
    # loops (the zeros between the planes meet it)
    from fastconv.cpu import direct, threads

    monkeypatch.setattr(threads, "SERIAL_MAX_WORK", 0)
    no_whole_planes(monkeypatch)
    fastconv.clear_plans()
    x = rng.uniform(-1, 1, (5, 6, 7, 8)).astype(dtype)
    w = rng.uniform(-1, 1, wshape).astype(dtype)
    dy = rng.uniform(-1, 1, reference.conv2d(x, w, **kwargs).shape).astype(dtype)
    dilation = shapes.pair(kwargs.get("dilation", 1), "dilation")
    padding = shapes.padding2d(kwargs["padding"], x.shape[2:], wshape[2:], (1, 1), dilation)
    strip = direct._phase_layout(x, wshape[2:], dy.shape[2:], (1, 1), padding, dilation)[4]
    monkeypatch.setattr(direct, "DEPTHWISE_STACK_BYTES", 2 * 2 * strip * x.itemsize + 1)
    images = []
    launch = threads.launch
    monkeypatch.setattr(threads, "launch", lambda kernel, *args: (
        images.append(args[-2]) if kernel is direct._depthwise_grad_weight_phases else None,
        launch(kernel, *args))[1])
    _depthwise_grad_weight_matches(x, w, dy, kwargs, dtype, inf_at=(4, 4, 5, 6))
    assert images == [2, 2, 2]
    fastconv.clear_plans()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wshape, kwargs", [
    ((6, 1, 3, 3), dict(stride=2, padding=1, groups=6)),
    ((12, 1, 5, 5), dict(stride=2, padding=2, groups=6)),
    ((6, 1, 7, 7), dict(stride=(2, 3), padding=((3, 1), (2, 3)), dilation=(1, 2), groups=6)),
    ((12, 1, 2, 2), dict(stride=3, groups=6)),
    ((6, 1, 3, 3), dict(stride=2, padding=1, dilation=2, groups=6)),
    ((6, 1, 3, 3), dict(stride=2, padding=4, groups=6)),
    ((6, 1, 3, 1), dict(stride=(2, 1), padding=(1, 0), groups=6)),
    ((4, 1, 3, 3), dict(stride=2, padding=1)),
], ids=["3x3_s2", "5x5_s2_x2", "7x7_s23_dil12_asym", "2x2_s3_x2_tapless_phase",
        "3x3_s2_dil2_tapless_phases", "3x3_s2_pad4", "3x1_s21", "one_channel_4_filters"])
def test_strided_depthwise_grad_input_phase_by_phase(wshape, kwargs, dtype, monkeypatch, rng):
    # a layer of one channel per group at a stride: grad_input phase by phase of the
    # input, each a stride-1 correlation of grad_out with the taps that reach it (none
    # for some phases of a 2x2 kernel at stride 3 or a dilation of the stride), stored
    # woven (stride 2), by rows (stride 1) or value by value (stride 3); in bands of 3
    # rows on every thread; a NaN in grad_out lands where the definition puts it, and
    # an Inf weight tap goes to the scatter loops instead (the strip's zeros would meet
    # it)
    from fastconv.cpu import direct

    calls = []
    phases = direct._depthwise_grad_input
    monkeypatch.setattr(direct, "_depthwise_grad_input",
                        lambda *args: calls.append(args[1].shape) or phases(*args))
    channels = kwargs.get("groups", 1)
    x, w, dy = _depthwise_in_bands((2, channels, 23, 19), wshape, kwargs, dtype, monkeypatch,
                                   rng)
    assert x.shape[2] % 3 != 0  # grad_in's rows: the last band shorter
    dy[1, 0, 3, 2] = np.nan
    for weight in (w, np.where(np.arange(w.size).reshape(w.shape) == 1, np.inf, w)):
        weight = weight.astype(dtype)
        got = fastconv.conv2d_backward(dy, x, weight, **kwargs, algorithm="direct",
                                       needs_weight_grad=False, needs_bias_grad=False)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want = reference.conv2d_backward(dy, x, weight, **kwargs)[0]
        assert_same_pattern(got, want, **tolerance(dtype))
    assert calls == [wshape]  # the finite weight only
    fastconv.clear_plans()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wshape, kwargs", [
    ((6, 1, 3, 3), dict(padding=1, groups=6)),
    ((6, 1, 3, 3), dict(stride=(2, 1), padding=((2, 0), (1, 1)), dilation=(1, 2), groups=6)),
    ((12, 1, 3, 3), dict(stride=2, padding=1, groups=6)),
    ((6, 1, 5, 5), dict(stride=(2, 3), padding=((2, 1), (0, 3)), dilation=(1, 2), groups=6)),
    ((6, 1, 7, 7), dict(padding=3, groups=6)),
], ids=["3x3_s1", "3x3_s21_dil12_asym", "3x3_s2_x2", "5x5_s23_dil12_asym", "7x7_s1"])
def test_depthwise_grad_weight_in_bands_on_threads(wshape, kwargs, dtype, monkeypatch, rng):
    # a depthwise layer's weight gradient: each channel's strip (its phases at a stride)
    # and each filter's output gradient on its pitch, every tap a dot product (a 3x3
    # filter's nine at once, of one filter a channel in registers over every image and
    # band: 3x3_s1, 3x3_s21_dil12_asym), in bands of 3 rows, the last shorter, on every
    # thread; a NaN in grad_output lands where the definition puts it, and an Inf input
    # value (met by the junk columns' zeros) sends the call to the exact loops
    from fastconv.cpu import direct

    calls = []
    fast = direct._depthwise_grad_weight
    monkeypatch.setattr(direct, "_depthwise_grad_weight",
                        lambda *args: calls.append(fast(*args)) or calls[-1])
    x, w, dy = _depthwise_in_bands((3, 6, 22, 19), wshape, kwargs, dtype, monkeypatch, rng)
    assert dy.shape[2] % 3 != 0  # grad_out's rows: the last band shorter
    _depthwise_grad_weight_matches(x, w, dy, kwargs, dtype, inf_at=(2, 4, 5, 6))
    assert calls[0] is True  # the finite call ran the dot products alone
    assert len(calls) == 3
    fastconv.clear_plans()
