"""Winograd F(2x2, 5x5) (``fastconv.cpu.winograd_5x5``): conv2d and grad_input of 5x5
stride-1 kernels by ``algorithm="winograd"``, and ``auto``'s choice of it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import config, reference
from fastconv.cpu import winograd, winograd_5x5
from tests.cases import assert_same_pattern
from tests.test_conv2d import torch_conv2d
from tests.test_conv_backward import torch_conv2d_grads
from tests.test_winograd_s2 import _winograd_tolerance, assert_non_finite_forward

DTYPES = [np.float32, np.float64]


def test_transform_is_the_five_tap_correlation():
    # y = A^T [(G g) * (B^T d)] is the correlation of 6 inputs with 5 taps, in float64, on
    # the stride-1 module's B^T (the same six points)
    rng = np.random.default_rng(0)
    assert winograd_5x5.B_T is winograd.B_T
    for _ in range(5):
        d, g = rng.standard_normal(6), rng.standard_normal(5)
        y = winograd_5x5.A_T @ ((winograd_5x5.G @ g) * (winograd_5x5.B_T @ d))
        np.testing.assert_allclose(y, [d[i : i + 5] @ g for i in range(2)], rtol=0,
                                   atol=1e-13)


# N, C, K, H, W, padding, groups: the smallest input, odd sizes (a last tile cut by the
# edge), one channel, rows wider than a vector of tiles (W_out > 32), asymmetric and
# large padding, groups, small images whose Winograd blocks span several images and start
# inside one, and enough tile rows for unequal blocks on both threads
CASES = [
    (1, 1, 1, 5, 5, 0, 1),
    (2, 3, 5, 9, 11, 2, 1),
    (2, 4, 9, 17, 13, 1, 1),
    (1, 2, 3, 6, 70, 2, 1),
    (3, 5, 7, 12, 9, ((4, 0), (1, 3)), 1),
    (2, 8, 12, 10, 12, 2, 2),
    (9, 3, 5, 7, 7, 2, 1),
    (13, 4, 6, 6, 10, 1, 1),
    (4, 6, 10, 38, 36, 2, 1),
]


def _case_id(case):
    n, c, k, h, w, p, g = case
    return f"N{n}C{c}K{k}_{h}x{w}_p{p}_g{g}".replace(" ", "")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_conv2d_and_grad_input_match_reference_and_torch(case, dtype, rng):
    n, c, k, h, w, padding, groups = case
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((k, c // groups, 5, 5)).astype(dtype)
    bias = rng.standard_normal(k).astype(dtype)
    before = x.copy(), weight.copy(), bias.copy()
    kwargs = {"padding": padding, "groups": groups}
    got = fastconv.conv2d(x, weight, bias, algorithm="winograd", **kwargs)
    tol = _winograd_tolerance(dtype, c // groups * 25)
    np.testing.assert_allclose(got, reference.conv2d(x, weight, bias, **kwargs), **tol)
    np.testing.assert_allclose(got, torch_conv2d(x, weight, bias, **kwargs), **tol)
    dy = rng.standard_normal(got.shape).astype(dtype)
    gx = fastconv.conv2d_backward(dy, x, weight, algorithm="winograd", needs_weight_grad=False,
                                  needs_bias_grad=False, **kwargs)[0]
    expected = reference.conv2d_backward(dy, x, weight, **kwargs)[0]
    tol = _winograd_tolerance(dtype, k // groups * 25)
    np.testing.assert_allclose(gx, expected, **tol)
    np.testing.assert_allclose(gx, torch_conv2d_grads(dy, x, weight, **kwargs)[0], **tol)
    for array, copy in zip((x, weight, bias), before, strict=True):
        np.testing.assert_array_equal(array, copy)  # inputs untouched


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_relu_non_contiguous_input_and_no_bias(dtype, rng):
    # a strided view of the input (rows copied value by value), the ReLU applied as the
    # tiles are stored, no bias
    full = rng.standard_normal((3, 4, 19, 46)).astype(dtype)
    x = full[:, :, :, ::2]
    weight = rng.standard_normal((6, 4, 5, 5)).astype(dtype)
    got = fastconv.conv2d(x, weight, padding=2, algorithm="winograd", activation="relu")
    expected = np.maximum(reference.conv2d(np.ascontiguousarray(x), weight, padding=2), 0)
    np.testing.assert_allclose(got, expected, **_winograd_tolerance(dtype, 100))


def test_large_layer_on_both_threads_with_unequal_blocks(rng):
    # 7 images x 15 tile rows in blocks the threads share unequally; the weight changes
    # between calls (its kept transform must be rebuilt), grad_input too
    x = rng.standard_normal((7, 40, 30, 34)).astype(np.float32)
    weight = rng.standard_normal((48, 40, 5, 5)).astype(np.float32)
    dy = rng.standard_normal((7, 48, 30, 34)).astype(np.float32)
    for _ in range(2):
        got = fastconv.conv2d(x, weight, padding=2, algorithm="winograd")
        gx = fastconv.conv2d_backward(dy, x, weight, padding=2, algorithm="winograd",
                                      needs_weight_grad=False, needs_bias_grad=False)[0]
        expected = torch_conv2d(x.astype(np.float64), weight.astype(np.float64), None,
                                padding=2)
        assert np.abs(got - expected).max() <= 2e-5 * np.abs(expected).max()
        expected = reference.conv2d_backward(dy.astype(np.float64), x.astype(np.float64),
                                             weight.astype(np.float64), padding=2)[0]
        assert np.abs(gx - expected).max() <= 2e-5 * np.abs(expected).max()
        weight *= -0.5


@pytest.mark.parametrize("where", ["input", "weight", "bias"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_values_land_where_the_sum_puts_them(where, value, rng):
    x, weight, got = assert_non_finite_forward(where, value, rng, 5, padding=2)
    if where == "bias":
        return
    dy = rng.standard_normal(got.shape).astype(np.float32)
    if where == "input":  # grad_input's input is grad_output
        dy[0, 1].flat[5] = value
    gx = fastconv.conv2d_backward(dy, x, weight, padding=2, algorithm="winograd",
                                  needs_weight_grad=False, needs_bias_grad=False)[0]
    with np.errstate(invalid="ignore"):
        expected = reference.conv2d_backward(dy, x, weight, padding=2)[0]
    assert_same_pattern(gx, expected, **_winograd_tolerance(np.float32, 125))
    assert not np.isfinite(gx).all()


def test_refuses_what_it_cannot_compute():
    x = np.zeros((1, 4, 12, 12), np.float32)
    for w_shape, kwargs in [((4, 4, 5, 5), {"stride": 2}), ((4, 4, 5, 5), {"dilation": 2}),
                            ((4, 4, 7, 7), {}), ((4, 4, 5, 3), {})]:
        with pytest.raises(ValueError, match=r"winograd needs a 3x3 or 5x5 kernel with "
                                             r"stride 1"):
            fastconv.conv2d(x, np.zeros(w_shape, np.float32), **kwargs, algorithm="winograd")
    # grad_input's convolution pads by 4 - padding: padding 5 has none
    dy = np.zeros((1, 4, 18, 18), np.float32)
    with pytest.raises(ValueError, match=r"winograd needs padding <= 4 for a 5x5 grad_input"):
        fastconv.conv2d_backward(dy, x, np.zeros((4, 4, 5, 5), np.float32), padding=5,
                                 algorithm="winograd", needs_weight_grad=False,
                                 needs_bias_grad=False)


def test_auto_takes_5x5_layers_with_channels_and_tiles_enough():
    def chosen(x_shape, w_shape, op="conv2d", **kwargs):
        x, w = np.zeros(x_shape, np.float32), np.zeros(w_shape, np.float32)
        if op == "conv2d":
            return fastconv.explain(fastconv.conv2d, x, w, **kwargs)["algorithm"]
        dy = np.zeros((x_shape[0], w_shape[0], *x_shape[2:]), np.float32)
        kernels = fastconv.explain(fastconv.conv2d_backward, dy, x, w, **kwargs)["kernels"]
        return kernels[0]["algorithm"]

    for op in ("conv2d", "grad_input"):
        assert chosen((32, 32, 14, 14), (48, 32, 5, 5), op, padding=2) == "winograd"
        assert chosen((1, 64, 28, 28), (64, 64, 5, 5), op, padding=2) == "winograd"
        assert chosen((8, 16, 32, 32), (32, 16, 5, 5), op, padding=2) == "winograd"
        # too few channels (LeNet's layers), too few channel pairs (16 x 16), too few
        # tiles (one 14x14 image)
        assert chosen((64, 6, 12, 12), (16, 6, 5, 5), op, padding=2) != "winograd"
        assert chosen((8, 16, 28, 28), (16, 16, 5, 5), op, padding=2) != "winograd"
        assert chosen((1, 32, 14, 14), (48, 32, 5, 5), op, padding=2) != "winograd"
    assert config.AUTO_WINOGRAD_5X5_MIN_CHANNELS == 16
    assert config.AUTO_WINOGRAD_5X5_MIN_CHANNEL_PAIRS == 512
    assert config.AUTO_WINOGRAD_5X5_MIN_TILES == 128


@st.composite
def _problems(draw):
    n, c, k = draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.integers(1, 17))
    pads = [draw(st.integers(0, 4)) for _ in range(4)]
    h = draw(st.integers(max(1, 5 - pads[0] - pads[1]), 30))
    w = draw(st.integers(max(1, 5 - pads[2] - pads[3]), 60))
    dtype = draw(st.sampled_from(DTYPES))
    return n, c, k, h, w, ((pads[0], pads[1]), (pads[2], pads[3])), dtype, draw(
        st.integers(0, 2**32 - 1))


@settings(max_examples=30, deadline=None)
@given(_problems())
def test_random_problems_match_torch(problem):
    n, c, k, h, w, padding, dtype, seed = problem
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((k, c, 5, 5)).astype(dtype)
    bias = rng.standard_normal(k).astype(dtype)
    got = fastconv.conv2d(x, weight, bias, padding=padding, algorithm="winograd")
    np.testing.assert_allclose(got, torch_conv2d(x, weight, bias, padding=padding),
                               **_winograd_tolerance(dtype, c * 25))
    dy = rng.standard_normal(got.shape).astype(dtype)
    gx = fastconv.conv2d_backward(dy, x, weight, padding=padding, algorithm="winograd",
                                  needs_weight_grad=False, needs_bias_grad=False)[0]
    np.testing.assert_allclose(gx, torch_conv2d_grads(dy, x, weight, padding=padding)[0],
                               **_winograd_tolerance(dtype, k * 25))
