"""Winograd F(4x4, 2x2) on the phases of grad_input (``fastconv.cpu.winograd_s2``'s
second half): the grad_input of 3x3, 4x4, 3x4 and 4x3 stride-2 convolutions and the
conv_transpose2d that is the same map, by ``algorithm="winograd"`` and by ``auto``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import config, reference
from fastconv.cpu import winograd_s2
from tests.cases import assert_same_pattern
from tests.test_winograd_s2 import DTYPES, _winograd_tolerance

_ONLY_INPUT = {"needs_weight_grad": False, "needs_bias_grad": False}


def _pairs(padding):
    """((top, bottom), (left, right)) of an int or of that form."""
    return ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding


def torch_grad_input(dy, x_shape, weight, padding):
    """grad_input of a stride-2 ``torch.nn.functional.conv2d`` by autograd, on the input
    zero-padded explicitly (any asymmetric padding), in float64."""
    torch = pytest.importorskip("torch")
    (top, bottom), (left, right) = _pairs(padding)
    n, c, h, w = x_shape
    x = torch.zeros((n, c, h + top + bottom, w + left + right), dtype=torch.float64,
                    requires_grad=True)
    y = torch.nn.functional.conv2d(x, torch.from_numpy(weight.astype(np.float64)), stride=2)
    y.backward(torch.from_numpy(dy.astype(np.float64)))
    return x.grad.numpy()[:, :, top : top + h, left : left + w]


def _grad_input(dy, x, weight, padding, algorithm="winograd"):
    return fastconv.conv2d_backward(dy, x, weight, stride=2, padding=padding,
                                    algorithm=algorithm, **_ONLY_INPUT)[0]


# conv2d's view, N, C, K, H, W, kernel, padding (top and left at most 1): one channel,
# odd sizes (phases of unequal length, tiles cut by the edge), padding 0 (the phases'
# patches start alike), asymmetric padding that reaches past a tile at the bottom and
# right, rows of more than a vector of 8x8 tiles (150 wide: two rounds of the woven
# store), rectangular kernels, channels that leave part of a block of 8 rows, and tile
# rows enough for unequal blocks on both threads
CASES = [
    (1, 1, 1, 8, 8, 3, 1),
    (2, 3, 5, 9, 11, 3, 1),
    (2, 3, 5, 9, 11, 4, 1),
    (2, 4, 9, 17, 13, 3, 0),
    (2, 4, 9, 17, 13, 4, ((1, 2), (0, 3))),
    (1, 2, 3, 5, 6, 4, ((0, 3), (1, 2))),
    (3, 5, 7, 40, 150, 3, 1),
    (3, 6, 10, 62, 30, (3, 4), 1),
    (5, 8, 17, 36, 36, (4, 3), ((1, 0), (1, 0))),
    (2, 9, 3, 16, 16, 4, 1),
]


def _case_id(case):
    n, c, k, h, w, r, p = case
    return f"N{n}C{c}K{k}_{h}x{w}_{r}_p{p}".replace(" ", "")


def _case_arrays(case, dtype, rng):
    n, c, k, h, w, r, padding = case
    kh, kw = (r, r) if isinstance(r, int) else r
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((k, c, kh, kw)).astype(dtype)
    out_h = (h + sum(_pairs(padding)[0]) - kh) // 2 + 1
    out_w = (w + sum(_pairs(padding)[1]) - kw) // 2 + 1
    dy = rng.standard_normal((n, k, out_h, out_w)).astype(dtype)
    return x, weight, dy, padding


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_grad_input_matches_reference_and_torch(case, dtype, rng):
    x, weight, dy, padding = _case_arrays(case, dtype, rng)
    before = dy.copy(), weight.copy()
    got = _grad_input(dy, x, weight, padding)
    tol = _winograd_tolerance(dtype, weight.shape[0] * 4)
    expected = reference.conv2d_backward(dy, x, weight, stride=2, padding=padding)[0]
    np.testing.assert_allclose(got, expected, **tol)
    np.testing.assert_allclose(got, torch_grad_input(dy, x.shape, weight, padding), **tol)
    for array, copy in zip((dy, weight), before, strict=True):
        np.testing.assert_array_equal(array, copy)  # inputs untouched


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_conv_transpose2d_with_bias_and_output_padding(dtype, rng):
    # the bias added by the output transform, an odd output (output_padding), a
    # non-contiguous input
    full = rng.standard_normal((3, 12, 11, 26)).astype(dtype)
    x = full[:, :, :, ::2]
    weight = rng.standard_normal((12, 10, 4, 4)).astype(dtype)
    bias = rng.standard_normal(10).astype(dtype)
    got = fastconv.conv_transpose2d(x, weight, bias, stride=2, padding=1, output_padding=1,
                                    algorithm="winograd")
    expected = reference.conv_transpose2d(np.ascontiguousarray(x), weight, bias, stride=2,
                                          padding=1, output_padding=1)
    assert got.shape == (3, 10, 23, 27)
    np.testing.assert_allclose(got, expected, **_winograd_tolerance(dtype, 48))


def test_into_a_non_contiguous_result(rng):
    # the host function computes into a C-contiguous buffer and copies it into a view
    x, weight, dy, padding = _case_arrays((2, 5, 6, 14, 19, 4, 1), np.float64, rng)
    full = np.full((2, 5, 14, 38), 7.0)
    view = full[:, :, :, ::2]
    winograd_s2.conv2d_grad_input(dy, weight, view, (2, 2), _pairs(padding), (1, 1), 1)
    expected = reference.conv2d_backward(dy, x, weight, stride=2, padding=padding)[0]
    np.testing.assert_allclose(view, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(full[:, :, :, 1::2], 7.0)


def test_large_layer_on_both_threads_with_unequal_blocks(rng):
    # 7 images x 4 tile rows of 8x8 tiles in blocks the threads share unequally; the
    # weight changes between calls, and the padding's parity too (each its own kept
    # transform)
    x = rng.standard_normal((7, 64, 15, 17)).astype(np.float32)
    weight = rng.standard_normal((64, 72, 4, 4)).astype(np.float32)
    bias = rng.standard_normal(72).astype(np.float32)
    for padding in (1, 0, 1):
        got = fastconv.conv_transpose2d(x, weight, bias, stride=2, padding=padding,
                                        algorithm="winograd")
        expected = reference.conv_transpose2d(x.astype(np.float64), weight.astype(np.float64),
                                              bias.astype(np.float64), stride=2,
                                              padding=padding)
        assert np.abs(got - expected).max() <= 2e-5 * np.abs(expected).max()
        weight *= -0.5


@pytest.mark.parametrize("where", ["grad_output", "weight", "bias"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_values_land_where_the_sum_puts_them(where, value, rng):
    # the transforms would spread a NaN or Inf over whole tiles: im2col computes the call
    # (again), and the result has the exact sum's pattern
    x = rng.standard_normal((2, 6, 9, 9)).astype(np.float32)
    weight = rng.standard_normal((6, 5, 4, 4)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    {"grad_output": x[1, 2], "weight": weight[3, 1], "bias": bias}[where].flat[2] = value
    got = fastconv.conv_transpose2d(x, weight, bias, stride=2, padding=1, algorithm="winograd")
    with np.errstate(invalid="ignore"):
        expected = reference.conv_transpose2d(x, weight, bias, stride=2, padding=1)
    assert_same_pattern(got, expected, **_winograd_tolerance(np.float32, 24))
    assert not np.isfinite(got).all()


def test_refuses_what_it_cannot_compute():
    x = np.zeros((1, 4, 9, 9), np.float32)
    for w_shape, kwargs, message in [
            ((4, 4, 4, 4), {"padding": 2}, r"top and left padding of at most 1"),
            ((4, 4, 3, 3), {"dilation": 2}, r"winograd at stride 2 needs"),
            ((4, 2, 3, 3), {"groups": 2}, r"winograd at stride 2 needs"),
            ((4, 4, 2, 2), {}, r"winograd at stride 2 needs")]:
        with pytest.raises(ValueError, match=message):
            fastconv.conv_transpose2d(x, np.zeros(w_shape, np.float32), stride=2, **kwargs,
                                      algorithm="winograd")


def test_auto_takes_it_where_it_measured_faster():
    def chosen(op, *arrays, **kwargs):
        kernels = fastconv.explain(op, *(np.zeros(a, np.float32) for a in arrays),
                                   stride=2, padding=1, **kwargs)["kernels"]
        return {k["op"]: k["algorithm"] for k in kernels}["conv2d_grad_input"]

    ct, backward = fastconv.conv_transpose2d, fastconv.conv2d_backward
    # conv_transpose2d 4x4 (the suite's; a batch of 32; 8x8 -> 16x16 inputs of 256 channels)
    assert chosen(ct, (8, 128, 16, 16), (128, 64, 4, 4)) == "winograd"
    assert chosen(ct, (32, 128, 16, 16), (128, 64, 4, 4)) == "winograd"
    assert chosen(ct, (8, 256, 8, 8), (256, 128, 4, 4)) == "winograd"
    # too few tiles: a batch of one 32x32 result (16 tiles), 4x4 -> 8x8 inputs; too
    # little work (AUTO_WINOGRAD_STRIDED_GRAD_INPUT_MIN_WORK): 64 channels on 8x8 inputs
    assert chosen(ct, (1, 128, 16, 16), (128, 64, 4, 4)) != "winograd"
    assert chosen(ct, (8, 512, 4, 4), (512, 256, 4, 4)) != "winograd"
    assert chosen(ct, (8, 64, 8, 8), (64, 32, 4, 4)) != "winograd"
    assert config.AUTO_WINOGRAD_STRIDED_GRAD_INPUT_MIN_WORK == 1 << 27
    # a 3x3 stride-2 conv2d's grad_input (the suite's f) from 28x28 conv2d outputs on,
    # not on 14x14 ones
    assert chosen(backward, (8, 128, 28, 28), (8, 64, 56, 56), (128, 64, 3, 3),
                  **_ONLY_INPUT) == "winograd"
    assert chosen(backward, (8, 256, 14, 14), (8, 128, 28, 28), (256, 128, 3, 3),
                  **_ONLY_INPUT) != "winograd"


def test_auto_conv_transpose2d_adds_the_bias_as_it_stores(rng):
    # auto's plan for the suite's layer runs the Winograd runner with the bias
    x = rng.standard_normal((8, 128, 16, 16)).astype(np.float32)
    weight = rng.standard_normal((128, 64, 4, 4)).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32)
    got = fastconv.conv_transpose2d(x, weight, bias, stride=2, padding=1)
    expected = reference.conv_transpose2d(x.astype(np.float64), weight.astype(np.float64),
                                          bias.astype(np.float64), stride=2, padding=1)
    assert np.abs(got - expected).max() <= 2e-5 * np.abs(expected).max()


@st.composite
def _problems(draw):
    n, c, k = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 17))
    kh, kw = draw(st.sampled_from([3, 4])), draw(st.sampled_from([3, 4]))
    pads = [draw(st.integers(0, 1)), draw(st.integers(0, 3)), draw(st.integers(0, 1)),
            draw(st.integers(0, 3))]
    h = draw(st.integers(max(1, kh - pads[0] - pads[1]), 40))
    w = draw(st.integers(max(1, kw - pads[2] - pads[3]), 80))
    dtype = draw(st.sampled_from(DTYPES))
    return (n, c, k, h, w, (kh, kw), ((pads[0], pads[1]), (pads[2], pads[3]))), dtype, draw(
        st.integers(0, 2**32 - 1))


@settings(max_examples=40, deadline=None)
@given(_problems())
def test_random_problems_match_torch(problem):
    case, dtype, seed = problem
    x, weight, dy, padding = _case_arrays(case, dtype, np.random.default_rng(seed))
    got = _grad_input(dy, x, weight, padding)
    np.testing.assert_allclose(got, torch_grad_input(dy, x.shape, weight, padding),
                               **_winograd_tolerance(dtype, weight.shape[0] * 4))
