"""Depthwise layers on whole planes (``fastconv.cpu.direct``'s ``_conv2d_depthwise_planes``
and ``_depthwise_planes_grad_weight``): stride 1, an odd kernel, padding that keeps the
input's size, planes from one vector to ``DEPTHWISE_PLANE_BYTES``.

Each case runs on every thread (``SERIAL_MAX_WORK`` 0), most with odd task counts (images
x channels) that two threads share unevenly, records that the whole-plane kernels
really ran (forward, grad_input through the flipped forward, grad_weight), and compares
every result with the reference and, in float64, with PyTorch. The masks that zero a
filter column's sums at a row's border are checked with NaN and Inf inputs (the forward
is exact there); an Inf weight tap and an Inf input value in the weight gradient go to
the other kernels, as their docstrings say.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv.cpu import direct, simd, threads
from tests.cases import DTYPES, assert_same_pattern, sum_tolerance, tolerance

PLANES = (direct._conv2d_depthwise_planes, direct._depthwise_planes_grad_weight)


@pytest.fixture
def launched(monkeypatch):
    """Every call on the threads; the whole-plane kernels that ran, in order."""
    monkeypatch.setattr(threads, "SERIAL_MAX_WORK", 0)
    fastconv.clear_plans()
    ran = []
    launch = threads.launch
    monkeypatch.setattr(threads, "launch", lambda kernel, *args: (
        ran.append(kernel.py_func.__name__) if kernel in PLANES else None,
        launch(kernel, *args))[1])
    yield ran
    fastconv.clear_plans()


def _inputs(shape, wshape, dtype, rng):
    x = rng.uniform(-1, 1, shape).astype(dtype)
    w = rng.uniform(-1, 1, wshape).astype(dtype)
    b = rng.uniform(-1, 1, wshape[0]).astype(dtype)
    dy = rng.uniform(-1, 1, (shape[0], wshape[0], *shape[2:])).astype(dtype)
    return x, w, b, dy


def _torch_grads(x, w, b, dy, kwargs):
    torch = pytest.importorskip("torch")
    tx, tw, tb = (torch.from_numpy(a.astype(np.float64)).requires_grad_() for a in (x, w, b))
    y = torch.nn.functional.conv2d(tx, tw, tb, **kwargs)
    y.backward(torch.from_numpy(dy.astype(np.float64)))
    return y.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()


def _lanes(dtype) -> int:
    return simd.WIDTH_BYTES // np.dtype(dtype).itemsize


CASES = {
    # (input shape, weight shape, conv2d arguments)
    "3x3_7x9": ((5, 6, 7, 9), (6, 1, 3, 3), dict(padding=1, groups=6)),
    "3x3_dil2_x2": ((3, 5, 9, 8), (10, 1, 3, 3), dict(padding=2, dilation=2, groups=5)),
    "5x5_7x7": ((3, 7, 7, 7), (7, 1, 5, 5), dict(padding=2, groups=7)),
    "5x5_11x13_x2": ((3, 4, 11, 13), (8, 1, 5, 5), dict(padding=2, groups=4)),
    "5x3_dil12_x3": ((2, 3, 6, 10), (9, 1, 5, 3), dict(padding=(2, 2), dilation=(1, 2),
                                                      groups=3)),
    "3x3_one_vector": ((3, 5, 2, None), (5, 1, 3, 3), dict(padding=1, groups=5)),
}


def _shape(case, dtype):
    shape, wshape, kwargs = CASES[case]
    if shape[3] is None:  # a plane of exactly one vector
        shape = (*shape[:3], _lanes(dtype) // shape[2])
    return shape, wshape, kwargs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_whole_planes_match_reference_and_torch(case, dtype, launched, rng):
    shape, wshape, kwargs = _shape(case, dtype)
    x, w, b, dy = _inputs(shape, wshape, dtype, rng)
    y = fastconv.conv2d(x, w, b, **kwargs, algorithm="direct")
    relu = fastconv.conv2d(x, w, b, **kwargs, algorithm="direct", activation="relu")
    gx, gw, gb = fastconv.conv2d_backward(dy, x, w, **kwargs, algorithm="direct")
    # the forward twice, grad_input (the flipped filters, one channel a group: m = 1), and
    # the weight gradient
    per_group = wshape[0] // shape[1]
    assert launched == (["_conv2d_depthwise_planes"] * (2 + (per_group == 1))
                        + ["_depthwise_planes_grad_weight"])
    want_y = reference.conv2d(x, w, b, **kwargs)
    want = reference.conv2d_backward(dy, x, w, **kwargs)
    tol = tolerance(dtype)
    np.testing.assert_allclose(y, want_y, **tol)
    np.testing.assert_allclose(relu, np.maximum(want_y, 0), **tol)
    np.testing.assert_allclose(gx, want[0], **tol)
    sums = sum_tolerance(dtype, shape[0] * shape[2] * shape[3])
    np.testing.assert_allclose(gw, want[1], **sums)
    np.testing.assert_allclose(gb, want[2], **sums)
    if dtype == np.float64:
        for got, oracle in zip((y, gx, gw, gb), _torch_grads(x, w, b, dy, kwargs), strict=True):
            np.testing.assert_allclose(got, oracle, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["3x3_7x9", "5x3_dil12_x3"])
def test_whole_planes_non_finite(case, dtype, launched, rng):
    # NaN and Inf inputs at a row's first and last columns: the columns of the filter
    # that would read them across the border keep their zeros (the forward is exact); an
    # Inf weight tap goes to the banded kernels (the padding's zeros meet it there as in
    # the definition); in the weight gradient a NaN output gradient lands where the
    # definition puts it and an Inf input value goes to the exact loops
    shape, wshape, kwargs = _shape(case, dtype)
    x, w, b, dy = _inputs(shape, wshape, dtype, rng)
    x[1, 2, 3, 0], x[1, 2, 4, -1], x[0, 1, 0, 0] = np.inf, np.nan, -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        y = fastconv.conv2d(x, w, b, **kwargs, algorithm="direct")
        assert_same_pattern(y, reference.conv2d(x, w, b, **kwargs), **tolerance(dtype))
        assert launched == ["_conv2d_depthwise_planes"]
        w_inf = w.copy()
        w_inf[1, 0, 0, 0] = np.inf
        y = fastconv.conv2d(x[:, :, ::-1].copy(), w_inf, b, **kwargs, algorithm="direct")
        assert_same_pattern(y, reference.conv2d(x[:, :, ::-1], w_inf, b, **kwargs),
                            **tolerance(dtype))
        assert launched == ["_conv2d_depthwise_planes"]
        x = rng.uniform(-1, 1, shape).astype(dtype)
        for step in ("finite", "nan_grad", "inf_input"):
            if step == "nan_grad":
                dy[1, 2, 3, 1] = np.nan
            if step == "inf_input":
                x[1, 1, 2, -1] = np.inf
            got = fastconv.conv2d_backward(dy, x, w, **kwargs, algorithm="direct",
                                           needs_input_grad=False, needs_bias_grad=False)[1]
            want = reference.conv2d_backward(dy, x, w, **kwargs)[1]
            assert_same_pattern(got, want, **sum_tolerance(dtype, shape[0] * shape[2] * shape[3]))
    assert launched.count("_depthwise_planes_grad_weight") == 3


@pytest.mark.parametrize("kwargs, shape", [
    (dict(padding=1, groups=4), (2, 4, 1, 3)),  # a plane shorter than a vector
    (dict(padding=((1, 1), (0, 2)), groups=4), (2, 4, 6, 7)),  # asymmetric padding
    (dict(padding=0, groups=4), (2, 4, 6, 7)),  # the output smaller than the input
    (dict(stride=2, padding=1, groups=4), (2, 4, 6, 7)),
])
def test_other_depthwise_layers_stay_on_the_banded_kernels(kwargs, shape, launched, rng):
    x, w, b, _ = _inputs(shape, (4, 1, 3, 3), np.float32, rng)
    y = fastconv.conv2d(x, w, b, **kwargs, algorithm="direct")
    np.testing.assert_allclose(y, reference.conv2d(x, w, b, **kwargs), **tolerance(np.float32))
    assert launched == []


@pytest.mark.parametrize("dtype", DTYPES)
def test_transposed_output_padding_stays_on_the_banded_kernels(dtype, launched, rng):
    # conv_transpose2d with output_padding: its backward's grad_input and grad_weight are
    # conv2d and conv2d_grad_weight of the output gradient, whose "same" padding keeps
    # the size, with the input one row and column short of it (a weight gradient on whole
    # planes read the output gradient on the wrong pitch; found by the fuzz test)
    x = rng.uniform(-1, 1, (2, 4, 5, 6)).astype(dtype)
    w = rng.uniform(-1, 1, (4, 1, 3, 3)).astype(dtype)  # conv2d's: 2 filters per channel
    kwargs = dict(stride=1, padding=2, output_padding=1, groups=2, dilation=2)
    y = fastconv.conv_transpose2d(x, w, **kwargs, algorithm="direct")
    dy = rng.uniform(-1, 1, y.shape).astype(dtype)
    got = fastconv.conv_transpose2d_backward(dy, x, w, **kwargs, algorithm="direct")
    want = reference.conv_transpose2d_backward(dy, x, w, **kwargs)
    np.testing.assert_allclose(got[0], want[0], **tolerance(dtype))
    sums = sum_tolerance(dtype, dy.shape[0] * dy.shape[2] * dy.shape[3])
    np.testing.assert_allclose(got[1], want[1], **sums)
    assert "_depthwise_planes_grad_weight" not in launched


def test_plane_budget_sends_larger_planes_to_the_bands(monkeypatch, launched, rng):
    x, w, b, _ = _inputs((2, 3, 12, 12), (3, 1, 3, 3), np.float32, rng)
    monkeypatch.setattr(direct, "DEPTHWISE_PLANE_BYTES", 12 * 12 * 4 - 1)
    fastconv.conv2d(x, w, b, padding=1, groups=3, algorithm="direct")
    assert launched == []
    monkeypatch.setattr(direct, "DEPTHWISE_PLANE_BYTES", 12 * 12 * 4)
    fastconv.clear_plans()
    fastconv.conv2d(x, w, b, padding=1, groups=3, algorithm="direct")
    assert launched == ["_conv2d_depthwise_planes"]


def test_keep_zeroes_lanes_bit_by_bit():
    from numba import njit

    @njit
    def kept(values, masks, out):
        simd.store(out, 0, simd.keep(simd.load(values, 0), simd.load(masks, 0)))

    for dtype, bits in ((np.float32, np.int32), (np.float64, np.int64)):
        lanes = _lanes(dtype)
        values = np.resize(np.array([np.inf, np.nan, -0.0, 1.5, -np.inf], dtype), lanes)
        masks = np.where(np.arange(lanes) % 3 == 0, -1, 0).astype(bits).view(dtype)
        out = np.full(lanes, 7, dtype)
        kept(values, masks, out)
        want = np.where(np.arange(lanes) % 3 == 0, values, 0).astype(dtype)
        assert out.view(bits).tolist() == want.view(bits).tolist()
