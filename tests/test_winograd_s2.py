"""Winograd F(4x4, 2x2) on the stride phases (``fastconv.cpu.winograd_s2``): conv2d of 3x3
and 4x4 kernels at stride 2 by ``algorithm="winograd"``, and ``auto``'s choice of it for
4x4 stride-2 layers (conv_transpose2d's grad_input)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import config, reference
from fastconv.cpu import winograd_s2
from tests.cases import assert_same_pattern, tolerance
from tests.test_conv2d import torch_conv2d

DTYPES = [np.float32, np.float64]


def _winograd_tolerance(dtype, depth):
    """Winograd rounds more than a direct sum: float32 within a few 1e-6 of the output's
    scale per sqrt of the depth, as benchmarks/accuracy.py measures."""
    tol = tolerance(dtype)
    if np.dtype(dtype) == np.float32:
        return {"rtol": 1e-4, "atol": 2e-5 * max(1.0, np.sqrt(depth))}
    return tol


def test_transform_is_the_two_tap_correlation():
    # y = A^T [(G g) * (B^T d)] is the correlation of 5 inputs with 2 taps, in float64
    rng = np.random.default_rng(0)
    for _ in range(5):
        d, g = rng.standard_normal(5), rng.standard_normal(2)
        y = winograd_s2.A_T @ ((winograd_s2.G @ g) * (winograd_s2.B_T @ d))
        np.testing.assert_allclose(y, [d[i] * g[0] + d[i + 1] * g[1] for i in range(4)],
                                   rtol=0, atol=1e-13)


# N, C, K, H, W, kernel, padding: odd sizes (tiles cut by the edge), one channel, rows
# wider than a vector of tiles (W_out > 64: two rounds of the column deal), padding that
# reaches past a whole tile, asymmetric padding, enough tile rows for unequal blocks on
# both threads
CASES = [
    (1, 1, 1, 8, 8, 3, 1),
    (2, 3, 5, 9, 11, 3, 1),
    (2, 3, 5, 9, 11, 4, 1),
    (2, 4, 9, 17, 13, 3, 0),
    (2, 4, 9, 17, 13, 4, 2),
    (1, 2, 3, 5, 6, 4, 3),
    (3, 5, 7, 40, 70, 3, 1),
    (2, 3, 4, 13, 150, 4, 1),
    (3, 6, 10, 62, 30, 4, ((2, 1), (0, 3))),
    (5, 8, 17, 36, 36, 3, ((1, 0), (1, 0))),
]


def _case_id(case):
    n, c, k, h, w, r, p = case
    return f"N{n}C{c}K{k}_{h}x{w}_{r}x{r}_p{p}".replace(" ", "")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference_and_torch(case, dtype, rng):
    n, c, k, h, w, r, padding = case
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((k, c, r, r)).astype(dtype)
    bias = rng.standard_normal(k).astype(dtype)
    before = x.copy(), weight.copy(), bias.copy()
    got = fastconv.conv2d(x, weight, bias, stride=2, padding=padding, algorithm="winograd")
    tol = _winograd_tolerance(dtype, c * r * r)
    np.testing.assert_allclose(got, reference.conv2d(x, weight, bias, stride=2,
                                                     padding=padding), **tol)
    np.testing.assert_allclose(got, torch_conv2d(x, weight, bias, stride=2, padding=padding),
                               **tol)
    for array, copy in zip((x, weight, bias), before, strict=True):
        np.testing.assert_array_equal(array, copy)  # inputs untouched


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_relu_non_contiguous_input_and_no_bias(dtype, rng):
    # a strided view of the input (rows copied value by value), the ReLU applied as the
    # tiles are stored, no bias
    full = rng.standard_normal((3, 4, 19, 46)).astype(dtype)
    x = full[:, :, :, ::2]
    weight = rng.standard_normal((6, 4, 4, 4)).astype(dtype)
    got = fastconv.conv2d(x, weight, stride=2, padding=1, algorithm="winograd",
                          activation="relu")
    expected = np.maximum(reference.conv2d(np.ascontiguousarray(x), weight, stride=2,
                                           padding=1), 0)
    np.testing.assert_allclose(got, expected, **_winograd_tolerance(dtype, 64))


def test_large_layer_on_both_threads_with_unequal_blocks(rng):
    # 8 images x 4 tile rows = 32 tile rows in blocks the threads share unequally; the
    # weight changes between calls (its kept transform must be rebuilt)
    x = rng.standard_normal((7, 64, 30, 34)).astype(np.float32)
    weight = rng.standard_normal((72, 64, 4, 4)).astype(np.float32)
    for _ in range(2):
        got = fastconv.conv2d(x, weight, stride=2, padding=1, algorithm="winograd")
        expected = torch_conv2d(x.astype(np.float64), weight.astype(np.float64), None,
                                stride=2, padding=1)
        scale = np.abs(expected).max()
        assert np.abs(got - expected).max() <= 2e-5 * scale
        weight *= -0.5


@pytest.mark.parametrize("where", ["input", "weight", "bias"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_values_land_where_the_sum_puts_them(where, value, rng):
    assert_non_finite_forward(where, value, rng, 4, stride=2, padding=1)


def assert_non_finite_forward(where, value, rng, size, **conv):
    """A NaN or Inf would spread over whole tiles through the transforms: im2col
    recomputes the call, and the result has the exact sum's pattern. ``value`` put in
    ``where`` (the input, weight or bias) of a 3 -> 5 channel layer of ``size`` x ``size``
    kernels on 18x18; returns ``(x, weight, output)``."""
    x = rng.standard_normal((2, 3, 18, 18)).astype(np.float32)
    weight = rng.standard_normal((5, 3, size, size)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    {"input": x[1, 2], "weight": weight[3, 1], "bias": bias}[where].flat[2] = value
    got = fastconv.conv2d(x, weight, bias, **conv, algorithm="winograd")
    with np.errstate(invalid="ignore"):
        expected = reference.conv2d(x, weight, bias, **conv)
    assert_same_pattern(got, expected, **_winograd_tolerance(np.float32, 3 * size * size))
    assert not np.isfinite(got).all()
    return x, weight, got


def test_refuses_what_it_cannot_compute():
    x = np.zeros((1, 4, 9, 9), np.float32)
    for w_shape, kwargs in [((4, 4, 5, 5), {"stride": 2}), ((4, 4, 3, 3), {"stride": 3}),
                            ((4, 2, 3, 3), {"stride": 2, "groups": 2}),
                            ((4, 4, 3, 3), {"stride": 2, "dilation": 2}),
                            ((4, 4, 2, 2), {"stride": 2})]:
        with pytest.raises(ValueError, match=r"winograd needs a 3x3 or 5x5 kernel with stride 1, "
                                             r"or a 3x3 or 4x4 kernel with stride 2"):
            fastconv.conv2d(x, np.zeros(w_shape, np.float32), **kwargs, algorithm="winograd")


def test_auto_takes_stride_2_layers_with_channels_and_tiles_enough():
    def chosen(x_shape, w_shape, **kwargs):
        x, w = np.zeros(x_shape, np.float32), np.zeros(w_shape, np.float32)
        return fastconv.explain(fastconv.conv2d, x, w, **kwargs)["algorithm"]

    assert chosen((8, 64, 32, 32), (128, 64, 4, 4), stride=2, padding=1) == "winograd"
    # 3x3 at stride 2 (the suite's f): from 64 channels on planes of 28x28 outputs
    assert chosen((8, 64, 56, 56), (128, 64, 3, 3), stride=2, padding=1) == "winograd"
    # too few channels (an RGB first layer; 3x3: 32), too few tiles (a batch of one 16x16
    # output), 3x3 on a plane of 14x14 outputs, dilation or groups it does not compute
    assert chosen((8, 3, 64, 64), (64, 3, 4, 4), stride=2, padding=1) != "winograd"
    assert chosen((8, 32, 56, 56), (64, 32, 3, 3), stride=2, padding=1) != "winograd"
    assert chosen((1, 64, 32, 32), (128, 64, 4, 4), stride=2, padding=1) != "winograd"
    assert chosen((8, 64, 28, 28), (128, 64, 3, 3), stride=2, padding=1) != "winograd"
    assert chosen((8, 64, 56, 56), (128, 64, 3, 3), stride=2, padding=2,
                  dilation=2) != "winograd"
    assert chosen((8, 64, 56, 56), (128, 32, 3, 3), stride=2, padding=1,
                  groups=2) != "winograd"
    assert config.AUTO_WINOGRAD_STRIDED_MIN_TILES == 32
    assert config.AUTO_WINOGRAD_STRIDED_3X3_MIN_CHANNELS == 64
    assert config.AUTO_WINOGRAD_STRIDED_3X3_MIN_PLANE == 28 * 28


def test_conv_transpose2d_backward_grad_input_through_auto(rng):
    # conv_transpose2d's grad_input is the 4x4 stride-2 conv2d of grad_output: auto's
    # Winograd, against the reference's gradients
    x = rng.standard_normal((2, 32, 16, 16)).astype(np.float32)
    weight = rng.standard_normal((32, 16, 4, 4)).astype(np.float32)
    dy = rng.standard_normal((2, 16, 32, 32)).astype(np.float32)
    kernels = fastconv.explain(fastconv.conv_transpose2d_backward, dy, x, weight, stride=2,
                               padding=1)["kernels"]
    assert kernels[0]["op"] == "conv2d" and kernels[0]["algorithm"] == "winograd"
    gx, gw, gb = fastconv.conv_transpose2d_backward(dy, x, weight, stride=2, padding=1)
    ex, ew, eb = reference.conv_transpose2d_backward(dy, x, weight, stride=2, padding=1)
    np.testing.assert_allclose(gx, ex, **_winograd_tolerance(np.float32, 256))
    np.testing.assert_allclose(gw, ew, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(gb, eb, rtol=1e-5, atol=1e-3)


@st.composite
def _problems(draw):
    n, c, k = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 17))
    # 3 or 4 taps along each axis (3x4 and 4x3 too: the products' prefixes differ there)
    kh, kw = draw(st.sampled_from([3, 4])), draw(st.sampled_from([3, 4]))
    pads = [draw(st.integers(0, 3)) for _ in range(4)]
    h = draw(st.integers(max(1, kh - pads[0] - pads[1]), 40))
    w = draw(st.integers(max(1, kw - pads[2] - pads[3]), 80))
    dtype = draw(st.sampled_from(DTYPES))
    return n, c, k, h, w, (kh, kw), ((pads[0], pads[1]), (pads[2], pads[3])), dtype, draw(
        st.integers(0, 2**32 - 1))


@settings(max_examples=40, deadline=None)
@given(_problems())
def test_random_problems_match_torch(problem):
    n, c, k, h, w, (kh, kw), padding, dtype, seed = problem
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((k, c, kh, kw)).astype(dtype)
    bias = rng.standard_normal(k).astype(dtype)
    got = fastconv.conv2d(x, weight, bias, stride=2, padding=padding, algorithm="winograd")
    np.testing.assert_allclose(got, torch_conv2d(x, weight, bias, stride=2, padding=padding),
                               **_winograd_tolerance(dtype, c * kh * kw))


@pytest.mark.parametrize("kernel", [(3, 4), (4, 3)], ids=["3x4", "4x3"])
def test_rectangular_kernels(kernel, rng):
    # the products' prefixes at the point infinity differ by axis (winograd_s2._used)
    x = rng.standard_normal((2, 5, 17, 19)).astype(np.float64)
    weight = rng.standard_normal((6, 5, *kernel)).astype(np.float64)
    got = fastconv.conv2d(x, weight, stride=2, padding=1, algorithm="winograd")
    np.testing.assert_allclose(got, reference.conv2d(x, weight, stride=2, padding=1),
                               rtol=1e-10, atol=1e-10)
