"""Pooling and unpooling: every op x algorithm x the case table x dtypes against the
reference (the spec) and against PyTorch (an independent oracle, gradients through
torch.autograd), gradients by finite differences, the tie and NaN rules, the
lecture's examples, memory layouts, hypothesis-generated configurations and errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import reference
from tests.cases import DTYPES, tolerance
from tests.pool_cases import (
    AVG_CASES,
    AVG_OPTIONS,
    CASE_IDS,
    POOL_CASES,
    PoolCase,
    tie_free,
    uniform,
)

OPS = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
       "max_unpool2d", "max_unpool2d_backward", "repeat_unpool2d", "repeat_unpool2d_backward"]
#: Every registered algorithm, "auto" included; every pooling op has the same ones.
ALGORITHMS = list(fastconv.available_algorithms("max_pool2d"))
DTYPE_IDS = [np.dtype(d).name for d in DTYPES]
AVG_IDS = [case.id for case in AVG_CASES]


def test_every_op_has_auto_direct_and_reference():
    for op in OPS:
        assert fastconv.available_algorithms(op) == ("auto", "direct", "reference"), op


def assert_close(actual, expected, dtype):
    assert actual.dtype == np.dtype(dtype)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, **tolerance(dtype))


# --- PyTorch as the oracle ---------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch")


def _t(array, grad=False):
    tensor = _torch().from_numpy(np.ascontiguousarray(array))
    return tensor.requires_grad_() if grad else tensor


def torch_max_pool2d(x, case, grad_output=None):
    """``(out, indices, grad_input)`` from torch: grad_input through autograd, if asked."""
    F = _torch().nn.functional
    xt = _t(x, grad=grad_output is not None)
    out, indices = F.max_pool2d(xt, return_indices=True, **case.max_kwargs)
    if grad_output is None:
        return out.numpy(), indices.numpy(), None
    out.backward(_t(grad_output))
    return out.detach().numpy(), indices.numpy(), xt.grad.numpy()


def torch_avg_pool2d(x, case, options, grad_output=None):
    F = _torch().nn.functional
    xt = _t(x, grad=grad_output is not None)
    out = F.avg_pool2d(xt, **case.pool_kwargs, **options)
    if grad_output is None:
        return out.numpy(), None
    out.backward(_t(grad_output))
    return out.detach().numpy(), xt.grad.numpy()


def torch_max_unpool2d(x, indices, kernel_size, stride=None, padding=0, output_size=None,
                       grad_output=None):
    F = _torch().nn.functional
    xt = _t(x, grad=grad_output is not None)
    out = F.max_unpool2d(xt, _t(indices), kernel_size, stride, padding, output_size)
    if grad_output is None:
        return out.numpy(), None
    out.backward(_t(grad_output))
    return out.detach().numpy(), xt.grad.numpy()


def torch_nearest(x, scale, grad_output=None):
    """Nearest-neighbour upsampling by integer factors, through F.interpolate."""
    F = _torch().nn.functional
    unbatched = x.ndim == 3
    xt = _t(x[None] if unbatched else x, grad=grad_output is not None)
    factor = tuple(float(s) for s in (scale if isinstance(scale, tuple) else (scale, scale)))
    out = F.interpolate(xt, scale_factor=factor, mode="nearest")
    result = out.detach().numpy()
    if grad_output is None:
        return (result[0] if unbatched else result), None
    out.backward(_t(grad_output[None] if unbatched else grad_output))
    grad = xt.grad.numpy()
    return (result[0] if unbatched else result), (grad[0] if unbatched else grad)


# --- max_pool2d ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", POOL_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_max_pool2d_matches_reference(algorithm, case, dtype, rng):
    x = tie_free(case.input_shape, dtype, rng)
    expected, expected_indices = reference.max_pool2d(x, **case.max_kwargs, return_indices=True)
    out, indices = fastconv.max_pool2d(x, **case.max_kwargs, return_indices=True,
                                       algorithm=algorithm)
    assert out.dtype == np.dtype(dtype) and indices.dtype == np.int64
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_array_equal(fastconv.max_pool2d(x, **case.max_kwargs, algorithm=algorithm),
                                  expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", POOL_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_max_pool2d_and_backward_match_torch(algorithm, case, dtype, rng):
    x = tie_free(case.input_shape, dtype, rng)
    out, indices = fastconv.max_pool2d(x, **case.max_kwargs, return_indices=True,
                                       algorithm=algorithm)
    grad_output = uniform(out.shape, dtype, rng)
    expected, expected_indices, expected_grad = torch_max_pool2d(x, case, grad_output)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(indices, expected_indices)
    grad = fastconv.max_pool2d_backward(grad_output, indices, x.shape, algorithm=algorithm)
    assert_close(grad, expected_grad, dtype)
    assert_close(grad, reference.max_pool2d_backward(grad_output, indices, x.shape), dtype)


def test_max_pool2d_ties_go_to_the_first_maximum_in_row_major_order():
    x = np.array([[[[1.0, 3.0, 3.0, 0.0],
                    [3.0, 2.0, 3.0, 3.0],
                    [5.0, 5.0, 7.0, 7.0],
                    [5.0, 5.0, 7.0, 7.0]]]])
    for algorithm in ALGORITHMS:
        out, indices = fastconv.max_pool2d(x, 2, return_indices=True, algorithm=algorithm)
        np.testing.assert_array_equal(out[0, 0], [[3.0, 3.0], [5.0, 7.0]])
        # (0, 1) before (1, 0); (0, 2) before (1, 2), (1, 3); then the top-left of each block
        np.testing.assert_array_equal(indices[0, 0], [[1, 2], [8, 10]])
        out, indices = fastconv.max_pool2d(x, 3, stride=1, padding=1, return_indices=True,
                                           algorithm=algorithm)
        overlapping = PoolCase("", 1, 1, 4, 4, 3, 1, 1)
        np.testing.assert_array_equal(indices, torch_max_pool2d(x, overlapping)[1])
    # all-equal windows and all -inf windows report their first tap inside the input
    flat = np.full((1, 2, 5, 5), -np.inf)
    flat[0, 1] = 2.0
    case = PoolCase("", 1, 2, 5, 5, 3, 2, 1, ceil_mode=True)
    for algorithm in ALGORITHMS:
        out, indices = fastconv.max_pool2d(flat, **case.max_kwargs, return_indices=True,
                                           algorithm=algorithm)
        np.testing.assert_array_equal(indices[0, 0], [[0, 1, 3], [5, 6, 8], [15, 16, 18]])
        np.testing.assert_array_equal(indices[0, 1], indices[0, 0])
        expected, expected_indices, _ = torch_max_pool2d(flat, case)
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(indices, expected_indices)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_max_pool2d_nan_wins_and_reports_the_last_nan(algorithm, dtype):
    nan = np.nan
    x = np.array([[[1.0, nan, 3.0, nan, 0.0, 1.0],
                   [nan, 2.0, 5.0, 5.0, 9.0, -np.inf],
                   [0.0, 0.0, 1.0, 1.0, nan, 2.0],
                   [0.0, 0.0, 1.0, 1.0, 4.0, 4.0]]], dtype)
    out, indices = fastconv.max_pool2d(x, 2, return_indices=True, algorithm=algorithm)
    np.testing.assert_array_equal(out, [[[nan, nan, 9.0], [0.0, 1.0, nan]]])
    # PyTorch's CPU kernel takes a tap when `v > best or isnan(v)`: the last NaN stays
    np.testing.assert_array_equal(indices, [[[6, 3, 10], [12, 14, 16]]])
    expected, expected_indices, _ = torch_max_pool2d(x, PoolCase("", None, 1, 4, 6, 2))
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(indices, expected_indices)
    # a NaN after a larger number and before an equal one, in an overlapping 3x3 window
    out, indices = fastconv.max_pool2d(x, 3, stride=1, padding=1, return_indices=True,
                                       algorithm=algorithm)
    expected, expected_indices, _ = torch_max_pool2d(x, PoolCase("", None, 1, 4, 6, 3, 1, 1))
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(indices, expected_indices)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_avg_pool2d_propagates_nan_and_inf(algorithm):
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 3, 3] = np.inf
    out = fastconv.avg_pool2d(x, 2, algorithm=algorithm)
    assert np.isnan(out[0, 0, 0, 0]) and np.isinf(out[0, 0, 1, 1])
    assert out[0, 0, 0, 1] == 0 and out[0, 0, 1, 0] == 0


# --- avg_pool2d ----------------------------------------------------------------------------


@pytest.mark.parametrize("options", list(AVG_OPTIONS))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", AVG_CASES, ids=AVG_IDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_avg_pool2d_and_backward_match_reference(algorithm, case, dtype, options, rng):
    kwargs = dict(case.pool_kwargs, **AVG_OPTIONS[options])
    x = uniform(case.input_shape, dtype, rng)
    out = fastconv.avg_pool2d(x, **kwargs, algorithm=algorithm)
    assert_close(out, reference.avg_pool2d(x, **kwargs), dtype)
    grad_output = uniform(out.shape, dtype, rng)
    grad = fastconv.avg_pool2d_backward(grad_output, x.shape, **kwargs, algorithm=algorithm)
    assert_close(grad, reference.avg_pool2d_backward(grad_output, x.shape, **kwargs), dtype)


@pytest.mark.parametrize("options", list(AVG_OPTIONS))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", AVG_CASES, ids=AVG_IDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_avg_pool2d_and_backward_match_torch(algorithm, case, dtype, options, rng):
    kwargs = dict(case.pool_kwargs, **AVG_OPTIONS[options])
    x = uniform(case.input_shape, dtype, rng)
    out = fastconv.avg_pool2d(x, **kwargs, algorithm=algorithm)
    grad_output = uniform(out.shape, dtype, rng)
    expected, expected_grad = torch_avg_pool2d(x, case, AVG_OPTIONS[options], grad_output)
    assert_close(out, expected, dtype)
    grad = fastconv.avg_pool2d_backward(grad_output, x.shape, **kwargs, algorithm=algorithm)
    assert_close(grad, expected_grad, dtype)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_avg_pool2d_ceil_mode_divisor_is_the_window_clipped_to_the_padded_input(algorithm):
    # 5 x 5 input, 2x2 windows at stride 2, ceil_mode: the last row and column of windows
    # start at 4 and run past the input (no padding to count): divisor 2 or 1, not 4.
    x = np.arange(25.0).reshape(1, 5, 5)
    out = fastconv.avg_pool2d(x, 2, ceil_mode=True, algorithm=algorithm)
    np.testing.assert_array_equal(out[0, :, 2], [(4 + 9) / 2, (14 + 19) / 2, 24.0])
    # 6 x 6 input, 3x3 at stride 2, padding 1, ceil_mode: the first window counts its
    # padding (9 taps, 4 inside); the last starts at 5 and is clipped at the right
    # padding (2 x 2 taps, 1 inside), counted with count_include_pad, not without.
    x = np.arange(36.0).reshape(1, 6, 6)
    out = fastconv.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True, algorithm=algorithm)
    assert out.shape == (1, 4, 4)
    assert out[0, 0, 0] == (0 + 1 + 6 + 7) / 9 and out[0, 3, 3] == 35 / 4
    out = fastconv.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True,
                              count_include_pad=False, algorithm=algorithm)
    assert out[0, 0, 0] == (0 + 1 + 6 + 7) / 4 and out[0, 3, 3] == 35.0
    case = PoolCase("", None, 1, 6, 6, 3, 2, 1, ceil_mode=True)
    for include in (True, False):
        expected, _ = torch_avg_pool2d(x, case, dict(count_include_pad=include))
        out = fastconv.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True,
                                  count_include_pad=include, algorithm=algorithm)
        np.testing.assert_allclose(out, expected, rtol=1e-15)


# --- gradients by central finite differences (float64) ------------------------------------


def numeric_gradient(f, x, grad_output, eps=1e-3):
    """d/dx sum(grad_output * f(x)), one input value at a time."""
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        grad[index] = np.sum(grad_output * (f(x + step) - f(x - step))) / (2 * eps)
    return grad


FD_CASES = [c for c in POOL_CASES if c.id in
            ("2x2_s1", "3x3_s2_p1_ceil", "2x3_s12_p01_ceil", "2x2_s3_ceil", "unbatched_2x2")]


@pytest.mark.parametrize("case", FD_CASES, ids=lambda c: c.id)
def test_avg_pool2d_backward_is_the_finite_difference_gradient(case, rng):
    for options in AVG_OPTIONS.values():
        kwargs = dict(case.pool_kwargs, **options)
        x = uniform((1, *case.input_shape[-3:]) if case.n else case.input_shape, np.float64, rng)
        grad_output = uniform(fastconv.avg_pool2d(x, **kwargs).shape, np.float64, rng)
        expected = numeric_gradient(lambda v, kwargs=kwargs: fastconv.avg_pool2d(v, **kwargs), x,
                                    grad_output)
        grad = fastconv.avg_pool2d_backward(grad_output, x.shape, **kwargs)
        np.testing.assert_allclose(grad, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("case", FD_CASES + [c for c in POOL_CASES if c.id == "dil2_3x3_p1"],
                         ids=lambda c: c.id)
def test_max_pool2d_backward_is_the_finite_difference_gradient(case, rng):
    # tie-free values at least 0.25 apart: a step of 1e-3 moves no maximum
    x = tie_free((1, *case.input_shape[-3:]) if case.n else case.input_shape, np.float64, rng)
    out, indices = fastconv.max_pool2d(x, **case.max_kwargs, return_indices=True)
    grad_output = uniform(out.shape, np.float64, rng)
    expected = numeric_gradient(lambda v: fastconv.max_pool2d(v, **case.max_kwargs), x,
                                grad_output)
    grad = fastconv.max_pool2d_backward(grad_output, indices, x.shape)
    np.testing.assert_allclose(grad, expected, rtol=1e-8, atol=1e-10)


def test_unpool_backwards_are_the_finite_difference_gradients(rng):
    x = tie_free((2, 3, 6, 8), np.float64, rng)
    pooled, indices = fastconv.max_pool2d(x, 2, return_indices=True)
    grad_output = uniform(x.shape, np.float64, rng)
    expected = numeric_gradient(lambda v: fastconv.max_unpool2d(v, indices, 2), pooled,
                                grad_output)
    np.testing.assert_allclose(fastconv.max_unpool2d_backward(grad_output, indices), expected,
                               rtol=1e-8, atol=1e-10)
    for scale in (2, (3, 2)):
        small = uniform((1, 2, 3, 4), np.float64, rng)
        grad_output = uniform(fastconv.repeat_unpool2d(small, scale).shape, np.float64, rng)
        expected = numeric_gradient(lambda v, scale=scale: fastconv.repeat_unpool2d(v, scale),
                                    small, grad_output)
        np.testing.assert_allclose(fastconv.repeat_unpool2d_backward(grad_output, scale),
                                   expected, rtol=1e-8, atol=1e-10)


# --- max_unpool2d ---------------------------------------------------------------------------


def _unpool_problem(case, dtype, rng):
    """A positive tie-free input, pooled with ``case``, and the pooled values and indices
    (positive, so that max-pooling the unpooled zeros finds the same maxima)."""
    x = tie_free(case.input_shape, dtype, rng)
    x -= x.min() - 1
    pooled, indices = fastconv.max_pool2d(x, **case.max_kwargs, return_indices=True)
    return x, pooled, indices


UNPOOL_CASES = [c for c in POOL_CASES if not c.dilated and not c.ceil_mode]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", UNPOOL_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_max_unpool2d_and_backward_match_torch_and_reference(algorithm, case, dtype, rng):
    x, pooled, indices = _unpool_problem(case, dtype, rng)
    kwargs = dict(kernel_size=case.kernel_size, stride=case.stride, padding=case.padding)
    out = fastconv.max_unpool2d(pooled, indices, **kwargs, output_size=x.shape,
                                algorithm=algorithm)
    assert out.shape == x.shape
    # every maximum is back where it was found, and nothing else is
    np.testing.assert_array_equal(out, np.where(out != 0, x, 0))
    np.testing.assert_array_equal(fastconv.max_pool2d(out, **case.max_kwargs), pooled)
    grad_output = uniform(x.shape, dtype, rng)
    expected, expected_grad = torch_max_unpool2d(pooled, indices, **kwargs,
                                                 output_size=x.shape[-2:],
                                                 grad_output=grad_output)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, reference.max_unpool2d(pooled, indices, **kwargs,
                                                              output_size=x.shape))
    grad = fastconv.max_unpool2d_backward(grad_output, indices, algorithm=algorithm)
    np.testing.assert_array_equal(grad, expected_grad)
    np.testing.assert_array_equal(grad, reference.max_unpool2d_backward(grad_output, indices))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_max_unpool2d_default_size_and_repeated_indices(algorithm, rng):
    x = uniform((2, 3, 4, 5), np.float32, rng)
    # distinct indices per plane, all inside the smallest output below (8 x 10) ...
    indices = np.stack([rng.choice(np.arange(8, 80), 20, replace=False) for _ in range(6)])
    indices = indices.reshape(x.shape)
    indices[0, 0, 0, :2] = 7  # ... but one repeated: the later value stays (fastconv's rule)
    for kwargs in (dict(kernel_size=3, stride=2, padding=0), dict(kernel_size=(3, 5), stride=(2, 2),
                                                                    padding=(0, 1))):
        out = fastconv.max_unpool2d(x, indices, **kwargs, algorithm=algorithm)
        expected, _ = torch_max_unpool2d(x, indices, **kwargs)
        assert out.shape == expected.shape == (2, 3, 9, 11)
        np.testing.assert_array_equal(out, expected)
        assert out[0, 0].flat[7] == x[0, 0, 0, 1]
    # output_size within stride of the default, in each accepted form
    for size in ((10, 12), (1, 3, 10, 12), [2, 3, 10, 12], (3, 8, 10)):
        out = fastconv.max_unpool2d(x, indices, 3, 2, output_size=size, algorithm=algorithm)
        assert out.shape == (2, 3, *size[-2:])
        expected, _ = torch_max_unpool2d(x, indices, 3, 2, output_size=tuple(size[-2:]))
        np.testing.assert_array_equal(out, expected)


# --- repeat_unpool2d --------------------------------------------------------------------------

SCALES = [1, 2, 3, (2, 3), (1, 2)]
REPEAT_SHAPES = [(2, 3, 4, 5), (1, 1, 1, 3), (3, 4, 5)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", REPEAT_SHAPES, ids=str)
@pytest.mark.parametrize("scale", SCALES, ids=str)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_repeat_unpool2d_and_backward_match_torch_and_reference(algorithm, scale, shape, dtype,
                                                                rng):
    x = uniform(shape, dtype, rng)
    out = fastconv.repeat_unpool2d(x, scale, algorithm=algorithm)
    sh, sw = scale if isinstance(scale, tuple) else (scale, scale)
    np.testing.assert_array_equal(out, np.repeat(np.repeat(x, sh, axis=-2), sw, axis=-1))
    np.testing.assert_array_equal(out, reference.repeat_unpool2d(x, scale))
    grad_output = uniform(out.shape, dtype, rng)
    expected, expected_grad = torch_nearest(x, scale, grad_output)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(
        out, _t(x).repeat_interleave(sh, dim=-2).repeat_interleave(sw, dim=-1).numpy())
    grad = fastconv.repeat_unpool2d_backward(grad_output, scale, algorithm=algorithm)
    assert_close(grad, expected_grad, dtype)
    assert_close(grad, reference.repeat_unpool2d_backward(grad_output, scale), dtype)


# --- the lecture's examples ------------------------------------------------------------------

LECTURE_X = np.array([[1, 0, 1, 0], [2, 1, 3, 2], [1, 2, 0, 4], [2, 2, 3, 0]], np.float32)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_lecture_max_pooling_example(algorithm):
    x = LECTURE_X[None, None]
    out = fastconv.max_pool2d(x, 2, stride=1, algorithm=algorithm)
    np.testing.assert_array_equal(out[0, 0], [[2, 3, 3], [2, 3, 4], [2, 3, 4]])
    # the seed README's errata: the bottom-right window holds the 4 (the slide shows 3)
    out = fastconv.max_pool2d(x, 2, stride=2, algorithm=algorithm)
    np.testing.assert_array_equal(out[0, 0], [[2, 3], [2, 4]])
    np.testing.assert_array_equal(fastconv.avg_pool2d(x, 2, algorithm=algorithm)[0, 0],
                                  [[1.0, 1.5], [1.75, 1.75]])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm", ["auto", "direct"])
def test_unpooling_round_trip_14_to_28(algorithm, dtype, rng):
    x = tie_free((2, 3, 28, 28), dtype, rng)
    x -= x.min() - 1  # positive: the zeros unpooling adds are never a maximum
    pooled, indices = fastconv.max_pool2d(x, 2, return_indices=True, algorithm=algorithm)
    assert pooled.shape == (2, 3, 14, 14)
    unpooled = fastconv.max_unpool2d(pooled, indices, 2, algorithm=algorithm)
    assert unpooled.shape == (2, 3, 28, 28)
    # one value per 2x2 block survives, at its maximum; the rest are zeros
    blocks = unpooled.reshape(2, 3, 14, 2, 14, 2)
    assert np.all(np.count_nonzero(blocks, axis=(3, 5)) == 1)
    np.testing.assert_array_equal(unpooled, np.where(unpooled != 0, x, 0))
    np.testing.assert_array_equal(fastconv.max_pool2d(unpooled, 2, algorithm=algorithm), pooled)
    expected, _ = torch_max_unpool2d(pooled, indices, 2)
    np.testing.assert_array_equal(unpooled, expected)
    repeated = fastconv.repeat_unpool2d(pooled, 2, algorithm=algorithm)
    assert repeated.shape == (2, 3, 28, 28)
    np.testing.assert_array_equal(repeated[:, :, ::2, 1::2], pooled)
    np.testing.assert_array_equal(fastconv.max_pool2d(repeated, 2, algorithm=algorithm), pooled)
    np.testing.assert_array_equal(fastconv.avg_pool2d(repeated, 2, algorithm=algorithm), pooled)


# --- memory layouts, inputs untouched, empty batches ---------------------------------------


def _relayout(array, layout, rng):
    """The same values as ``array`` in another memory layout (see test_conv2d)."""
    if layout == "strided":
        big = np.zeros(tuple(2 * n for n in array.shape), array.dtype)
        view = big[tuple(slice(None, None, 2) for _ in array.shape)]
        view[...] = array
    elif layout == "fortran":
        view = np.asfortranarray(array)
    elif layout == "reversed":
        view = np.ascontiguousarray(array[..., ::-1])[..., ::-1]
    else:
        raise AssertionError(layout)
    assert np.array_equal(view, array) and not view.flags.c_contiguous
    return view


def _all_ops(x, case, grad_pool, grad_unpool):
    """Every op on the pooling problem ``case``, as a dict of results."""
    kw = case.pool_kwargs
    out, indices = fastconv.max_pool2d(x, **case.max_kwargs, return_indices=True)
    return {
        "max_pool2d": out,
        "max_pool2d_backward": fastconv.max_pool2d_backward(grad_pool, indices, x.shape),
        "avg_pool2d": fastconv.avg_pool2d(x, **kw, count_include_pad=False),
        "avg_pool2d_backward": fastconv.avg_pool2d_backward(grad_pool, x.shape, **kw),
        "max_unpool2d": fastconv.max_unpool2d(grad_pool, indices, case.kernel_size, case.stride,
                                              case.padding, output_size=x.shape),
        "max_unpool2d_backward": fastconv.max_unpool2d_backward(grad_unpool, indices),
        "repeat_unpool2d": fastconv.repeat_unpool2d(x, (2, 3)),
        "repeat_unpool2d_backward": fastconv.repeat_unpool2d_backward(grad_unpool[..., :6, :4],
                                                                      2),
    }


LAYOUT_CASE = next(c for c in POOL_CASES if c.id == "3x3_s2_p1")


@pytest.mark.parametrize("layout", ["strided", "fortran", "reversed"])
def test_any_memory_layout_and_inputs_untouched(layout, rng):
    case = LAYOUT_CASE
    x = tie_free(case.input_shape, np.float32, rng)
    pooled_shape = fastconv.max_pool2d(x, **case.max_kwargs).shape
    grad_pool = uniform(pooled_shape, np.float32, rng)
    grad_unpool = uniform(case.input_shape, np.float32, rng)
    expected = _all_ops(x, case, grad_pool, grad_unpool)
    views = [_relayout(a, layout, rng) for a in (x, grad_pool, grad_unpool)]
    copies = [v.copy() for v in views]
    for name, result in _all_ops(*views[:1], case, *views[1:]).items():
        np.testing.assert_array_equal(result, expected[name], err_msg=name)
    # index arrays in other layouts and dtypes too
    _, indices = fastconv.max_pool2d(x, **case.max_kwargs, return_indices=True)
    for other in (_relayout(indices, layout, rng), indices.astype(np.int32)):
        np.testing.assert_array_equal(
            fastconv.max_pool2d_backward(grad_pool, other, x.shape),
            expected["max_pool2d_backward"])
    for view, before in zip(views, copies, strict=False):
        np.testing.assert_array_equal(view, before)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_inputs_are_not_modified(algorithm, rng):
    case = next(c for c in POOL_CASES if c.id == "2x2_s1")
    x = tie_free(case.input_shape, np.float64, rng)
    out, indices = fastconv.max_pool2d(x, **case.max_kwargs, return_indices=True)
    grad_pool = uniform(out.shape, np.float64, rng)
    grad_unpool = uniform(x.shape, np.float64, rng)
    arrays = (x, out, indices, grad_pool, grad_unpool)
    copies = [a.copy() for a in arrays]
    for a in arrays:
        a.setflags(write=False)  # a write would raise
    kw = dict(kernel_size=case.kernel_size, stride=case.stride)
    fastconv.max_pool2d(x, **kw, return_indices=True, algorithm=algorithm)
    fastconv.max_pool2d_backward(grad_pool, indices, x.shape, algorithm=algorithm)
    fastconv.avg_pool2d(x, **kw, algorithm=algorithm)
    fastconv.avg_pool2d_backward(grad_pool, x.shape, **kw, algorithm=algorithm)
    fastconv.max_unpool2d(out, indices, **kw, output_size=x.shape, algorithm=algorithm)
    fastconv.max_unpool2d_backward(grad_unpool, indices, algorithm=algorithm)
    fastconv.repeat_unpool2d(x, 2, algorithm=algorithm)
    fastconv.repeat_unpool2d_backward(grad_unpool[..., :6, :4], 2, algorithm=algorithm)
    for before, after in zip(copies, arrays, strict=False):
        np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_results_are_fresh_and_array_likes_are_accepted(algorithm):
    x = LECTURE_X[None, None].astype(np.float64)
    out, indices = fastconv.max_pool2d(x.tolist(), 2, return_indices=True, algorithm=algorithm)
    assert out.dtype == np.float64 and out.flags.c_contiguous and out.flags.writeable
    np.testing.assert_array_equal(fastconv.max_unpool2d(out.tolist(), indices.tolist(), 2,
                                                        algorithm=algorithm),
                                  fastconv.max_unpool2d(out, indices, 2))
    repeated = fastconv.repeat_unpool2d(x, 1, algorithm=algorithm)
    assert not np.shares_memory(repeated, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_empty_batch(algorithm, dtype):
    x = np.zeros((0, 3, 9, 8), dtype)
    out, indices = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True, algorithm=algorithm)
    assert out.shape == indices.shape == (0, 3, 5, 4) and out.dtype == dtype
    assert fastconv.max_pool2d_backward(out, indices, x.shape, algorithm=algorithm).shape == x.shape
    assert fastconv.avg_pool2d(x, 3, 2, 1, algorithm=algorithm).shape == (0, 3, 5, 4)
    assert fastconv.avg_pool2d_backward(out, x.shape, 3, 2, 1, algorithm=algorithm).shape == x.shape
    assert fastconv.max_unpool2d(out, indices, 3, 2, 1, algorithm=algorithm).shape == (0, 3, 9, 7)
    assert fastconv.max_unpool2d_backward(x, indices, algorithm=algorithm).shape == out.shape
    assert fastconv.repeat_unpool2d(x, 2, algorithm=algorithm).shape == (0, 3, 18, 16)
    assert fastconv.repeat_unpool2d_backward(x, (3, 2), algorithm=algorithm).shape == (0, 3, 3, 4)


# --- output sizes, checked by an independent formula ----------------------------------------


def _expected_length(n, k, s, p, d, ceil):
    """PyTorch's pooling_output_shape, written out here."""
    span = n + 2 * p - d * (k - 1) - 1
    out = (span + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= n + p:
        out -= 1
    return out


@pytest.mark.parametrize("case", POOL_CASES, ids=CASE_IDS)
def test_output_size(case):
    two = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    k, p, d = two(case.kernel_size), two(case.padding), two(case.dilation)
    s = k if case.stride is None else two(case.stride)
    size = tuple(_expected_length(n, k[a], s[a], p[a], d[a], case.ceil_mode)
                 for a, n in enumerate((case.h, case.w)))
    x = np.zeros(case.input_shape, np.float32)
    assert fastconv.max_pool2d(x, **case.max_kwargs).shape[-2:] == size
    assert fastconv.conv_output_size((case.h, case.w), case.kernel_size, s, case.padding,
                                     case.dilation, case.ceil_mode) == size


# --- hypothesis -------------------------------------------------------------------------------


@st.composite
def pool_configs(draw, dilation=True):
    """A random valid pooling problem (every argument form), its dtype and a data seed."""
    def pair(low, high):
        return st.one_of(st.integers(low, high), st.tuples(st.integers(low, high),
                                                           st.integers(low, high)))
    two = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    kernel = draw(pair(1, 4))
    stride = draw(st.one_of(st.none(), pair(1, 3)))
    k = two(kernel)
    padding = draw(st.one_of(st.integers(0, min(k) // 2),
                             st.tuples(st.integers(0, k[0] // 2), st.integers(0, k[1] // 2))))
    spacing = draw(pair(1, 3)) if dilation else 1
    p, d = two(padding), two(spacing)
    low = [max(1, d[a] * (k[a] - 1) + 1 - 2 * p[a]) for a in range(2)]  # room for one window
    h = draw(st.integers(low[0], low[0] + 8))
    w = draw(st.integers(low[1], low[1] + 8))
    case = PoolCase("hypothesis", draw(st.sampled_from([None, 1, 2])), draw(st.integers(1, 3)),
                    h, w, kernel, stride, padding, spacing, draw(st.booleans()))
    return case, draw(st.sampled_from(DTYPES)), draw(st.integers(0, 2**32 - 1))


def _all_windows_touch_input(case):
    two = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    k, p, d = two(case.kernel_size), two(case.padding), two(case.dilation)
    s = k if case.stride is None else two(case.stride)
    for a, n in enumerate((case.h, case.w)):
        for o in range(_expected_length(n, k[a], s[a], p[a], d[a], case.ceil_mode)):
            if not any(0 <= o * s[a] - p[a] + t * d[a] < n for t in range(k[a])):
                return False
    return True


@settings(max_examples=60, deadline=None)
@given(config=pool_configs())
def test_hypothesis_max_pool2d_matches_torch(config):
    case, dtype, seed = config
    rng = np.random.default_rng(seed)
    x = tie_free(case.input_shape, dtype, rng)
    if not _all_windows_touch_input(case):
        with pytest.raises(ValueError, match=r"reads only padding"):
            fastconv.max_pool2d(x, **case.max_kwargs)
        return
    out, indices = fastconv.max_pool2d(x, **case.max_kwargs, return_indices=True)
    grad_output = uniform(out.shape, dtype, rng)
    expected, expected_indices, expected_grad = torch_max_pool2d(x, case, grad_output)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(indices, expected_indices)
    assert_close(fastconv.max_pool2d_backward(grad_output, indices, x.shape), expected_grad, dtype)


@settings(max_examples=60, deadline=None)
@given(config=pool_configs(dilation=False), options=st.sampled_from(list(AVG_OPTIONS)))
def test_hypothesis_avg_pool2d_matches_torch(config, options):
    case, dtype, seed = config
    rng = np.random.default_rng(seed)
    kwargs = dict(case.pool_kwargs, **AVG_OPTIONS[options])
    x = uniform(case.input_shape, dtype, rng)
    out = fastconv.avg_pool2d(x, **kwargs)
    grad_output = uniform(out.shape, dtype, rng)
    expected, expected_grad = torch_avg_pool2d(x, case, AVG_OPTIONS[options], grad_output)
    assert_close(out, expected, dtype)
    assert_close(fastconv.avg_pool2d_backward(grad_output, x.shape, **kwargs), expected_grad,
                 dtype)


# --- errors -------------------------------------------------------------------------------------

F32 = np.float32
X = np.zeros((1, 2, 6, 6), F32)
Y = np.zeros((1, 2, 3, 3), F32)
IDX = np.zeros((1, 2, 3, 3), np.int64)
DTYPE = r"must have dtype float32 or float64, got"


def err(function, error, match, **kwargs):
    return function, error, match, kwargs


mp, mpb, ap, apb = (fastconv.max_pool2d, fastconv.max_pool2d_backward, fastconv.avg_pool2d,
                    fastconv.avg_pool2d_backward)
mu, mub, ru, rub = (fastconv.max_unpool2d, fastconv.max_unpool2d_backward,
                    fastconv.repeat_unpool2d, fastconv.repeat_unpool2d_backward)
INT_PAIR = r"{} must be an int or a pair of ints, each positive, got {}"

ERRORS = {
    # --- input arrays ---
    "mp_input_2d": err(mp, ValueError, r"input must be 4-D \(N, C, H, W\) or 3-D \(C, H, W\), "
                       r"got shape \(6, 6\)", input=np.zeros((6, 6), F32), kernel_size=2),
    "mp_input_5d": err(mp, ValueError, r"input must be 4-D.*\(1, 1, 2, 6, 6\)",
                       input=np.zeros((1, 1, 2, 6, 6), F32), kernel_size=2),
    "mp_input_H_0": err(mp, ValueError, r"input must have non-empty C, H and W, got shape "
                        r"\(1, 2, 0, 6\)", input=np.zeros((1, 2, 0, 6), F32), kernel_size=2),
    "mp_input_int": err(mp, TypeError, rf"input {DTYPE} int64.*astype\(np\.float32\)",
                        input=np.zeros((1, 2, 6, 6), np.int64), kernel_size=2),
    "ap_input_float16": err(ap, TypeError, rf"input {DTYPE} float16",
                            input=np.zeros((1, 2, 6, 6), np.float16), kernel_size=2),
    "ap_input_none": err(ap, TypeError, r"input must be a numpy\.ndarray of float32 or float64, "
                         r"got NoneType", input=None, kernel_size=2),
    "ru_input_complex": err(ru, TypeError, rf"input {DTYPE} complex64",
                            input=np.zeros((2, 3, 3), np.complex64), scale=2),
    # --- kernel_size, stride, dilation ---
    "mp_kernel_0": err(mp, ValueError, INT_PAIR.format("kernel_size", "0"), input=X,
                       kernel_size=0),
    "mp_kernel_triple": err(mp, ValueError, INT_PAIR.format("kernel_size", r"\(2, 2, 2\)"),
                            input=X, kernel_size=(2, 2, 2)),
    "mp_kernel_float": err(mp, TypeError, INT_PAIR.format("kernel_size", r"2\.0"), input=X,
                           kernel_size=2.0),
    "mp_kernel_none": err(mp, TypeError, INT_PAIR.format("kernel_size", "None"), input=X,
                          kernel_size=None),
    "mp_stride_0": err(mp, ValueError, INT_PAIR.format("stride", "0"), input=X, kernel_size=2,
                       stride=0),
    "mp_stride_bool": err(mp, TypeError, INT_PAIR.format("stride", "True"), input=X,
                          kernel_size=2, stride=True),
    "mp_dilation_negative": err(mp, ValueError, INT_PAIR.format("dilation", r"\(1, -1\)"),
                                input=X, kernel_size=2, dilation=(1, -1)),
    "ap_stride_pair_0": err(ap, ValueError, INT_PAIR.format("stride", r"\(1, 0\)"), input=X,
                            kernel_size=2, stride=(1, 0)),
    # --- padding ---
    "mp_padding_negative": err(mp, ValueError, r"padding must be an int or a pair of ints, each "
                               r"non-negative, got -1", input=X, kernel_size=2, padding=-1),
    "mp_padding_over_half": err(mp, ValueError, r"padding must be at most half of kernel_size "
                                r"\(pad <= kernel_size // 2.*got padding=2 "
                                r"with kernel_size=\(3, 3\)",
                                input=X, kernel_size=3, padding=2),
    "ap_padding_over_half_w": err(ap, ValueError, r"padding must be at most half of kernel_size"
                                  r".*got padding=\(1, 2\) with kernel_size=\(2, 3\)",
                                  input=X, kernel_size=(2, 3), padding=(1, 2)),
    "mp_padding_same": err(mp, TypeError, r"padding must be an int or a pair of ints.*'same'",
                           input=X, kernel_size=3, padding="same"),
    # --- windows ---
    "mp_kernel_larger": err(mp, ValueError, r"kernel_size \(7, 7\) with dilation \(1, 1\) spans "
                            r"\(7, 7\), larger than the padded input \(6, 6\)", input=X,
                            kernel_size=7),
    "mp_kernel_larger_dilated": err(mp, ValueError, r"spans \(7, 7\), larger than the padded "
                                    r"input \(6, 6\)", input=X, kernel_size=3, dilation=3),
    "ap_kernel_larger_one_axis": err(ap, ValueError, r"kernel_size \(1, 9\).*larger than the "
                                     r"padded input \(6, 8\)", input=X, kernel_size=(1, 9),
                                     padding=(0, 1)),
    "mp_window_in_padding": err(mp, ValueError, r"window 0 along H reads only padding: its taps "
                                r"-1, 2, \.\.\. \(kernel_size 2, dilation 3, padding 1\) skip over "
                                r"the input of length 2",
                                input=np.zeros((1, 1, 2, 2), F32), kernel_size=2, dilation=3,
                                padding=1),
    # --- flags and options ---
    "mp_ceil_mode_int": err(mp, TypeError, r"ceil_mode must be a bool, got 1", input=X,
                            kernel_size=2, ceil_mode=1),
    "mp_return_indices_str": err(mp, TypeError, r"return_indices must be a bool, got 'yes'",
                                 input=X, kernel_size=2, return_indices="yes"),
    "ap_count_include_pad_none": err(ap, TypeError, r"count_include_pad must be a bool, got None",
                                     input=X, kernel_size=2, count_include_pad=None),
    "ap_divisor_0": err(ap, ValueError, r"divisor_override must be None or a non-zero int "
                        r"\(of magnitude below 2\*\*63\), got 0", input=X, kernel_size=2,
                        divisor_override=0),
    "ap_divisor_float": err(ap, TypeError, r"divisor_override must be None or a non-zero int.*"
                            r"got 1\.5", input=X, kernel_size=2, divisor_override=1.5),
    "mp_algorithm_unknown": err(mp, ValueError, r"unknown algorithm 'fast' for max_pool2d on cpu; "
                                r"available: auto, direct, reference", input=X, kernel_size=2,
                                algorithm="fast"),
    "rub_algorithm_int": err(rub, TypeError, r"algorithm must be a str, got 1",
                             grad_output=X, scale=2, algorithm=1),
    # --- max_pool2d_backward ---
    "mpb_indices_float": err(mpb, TypeError, r"indices must be an integer array \(int64, as "
                             r"max_pool2d\(\.\.\., return_indices=True\) returns\), got ndarray of "
                             r"dtype float32", grad_output=Y, indices=Y, input_shape=X.shape),
    "mpb_indices_bool": err(mpb, TypeError, r"indices must be an integer array.*dtype bool",
                            grad_output=Y, indices=IDX.astype(bool), input_shape=X.shape),
    "mpb_indices_shape": err(mpb, ValueError, r"indices must have the shape of grad_output, "
                             r"\(1, 2, 3, 3\), got \(1, 2, 3, 2\)", grad_output=Y,
                             indices=IDX[..., :2], input_shape=X.shape),
    "mpb_index_too_large": err(mpb, ValueError, r"indices holds 36 at \(0, 1, 2, 0\), outside "
                               r"\[0, 36\): each index must be a flat position h \* W \+ w in a "
                               r"6 x 6 plane of the pooled input", grad_output=Y,
                               indices=np.where(np.arange(18).reshape(1, 2, 3, 3) == 15, 36, 0),
                               input_shape=X.shape),
    "mpb_index_negative": err(mpb, ValueError, r"indices holds -1 at \(0, 0, 0, 0\), outside "
                              r"\[0, 36\)", grad_output=Y, indices=IDX - 1, input_shape=X.shape),
    "mpb_input_shape_nc": err(mpb, ValueError, r"input_shape must have grad_output's N, C and be "
                              r"4-D, got input_shape \(1, 3, 6, 6\) for grad_output of shape "
                              r"\(1, 2, 3, 3\)", grad_output=Y, indices=IDX,
                              input_shape=(1, 3, 6, 6)),
    "mpb_input_shape_3d": err(mpb, ValueError, r"input_shape must have grad_output's N, C",
                              grad_output=Y, indices=IDX, input_shape=(2, 6, 6)),
    "mpb_input_shape_short": err(mpb, ValueError, r"input_shape must be a shape \(N, C, H, W\) "
                                 r"or \(C, H, W\).*got \(6, 6\)", grad_output=Y, indices=IDX,
                                 input_shape=(6, 6)),
    "mpb_input_shape_float": err(mpb, TypeError, r"input_shape must be a shape.*got "
                                 r"\(1, 2, 6\.0, 6\)", grad_output=Y, indices=IDX,
                                 input_shape=(1, 2, 6.0, 6)),
    "mpb_grad_int": err(mpb, TypeError, rf"grad_output {DTYPE} int64", grad_output=IDX,
                        indices=IDX, input_shape=X.shape),
    # --- avg_pool2d_backward ---
    "apb_grad_shape": err(apb, ValueError, r"grad_output must have the shape of avg_pool2d's "
                          r"output for input_shape \(1, 2, 6, 6\), \(1, 2, 3, 3\), got "
                          r"\(1, 2, 2, 2\)", grad_output=Y[..., :2, :2], input_shape=X.shape,
                          kernel_size=2),
    "apb_grad_batched_for_unbatched": err(apb, ValueError, r"grad_output must have the shape.*"
                                          r"\(2, 3, 3\), got \(1, 2, 3, 3\)", grad_output=Y,
                                          input_shape=(2, 6, 6), kernel_size=2),
    "apb_input_shape_zero": err(apb, ValueError, r"input_shape must be a shape.*C, H, W >= 1, "
                                r"each at most 2\*\*31 - 1, got \(1, 2, 0, 6\)", grad_output=Y,
                                input_shape=(1, 2, 0, 6), kernel_size=2),
    "apb_kernel_larger": err(apb, ValueError, r"larger than the padded input_shape \(6, 6\)",
                             grad_output=Y, input_shape=X.shape, kernel_size=8),
    # --- max_unpool2d ---
    "mu_indices_shape": err(mu, ValueError, r"indices must have the shape of input, "
                            r"\(1, 2, 3, 3\), got \(2, 3, 3\)", input=Y, indices=IDX[0],
                            kernel_size=2),
    "mu_indices_float": err(mu, TypeError, r"indices must be an integer array.*float64",
                            input=Y, indices=IDX.astype(np.float64), kernel_size=2),
    "mu_indices_list_of_floats": err(mu, TypeError, r"indices must be an integer array.*got "
                                     r"list of dtype float64", input=Y,
                                     indices=[[[[0.5] * 3] * 3] * 2], kernel_size=2),
    "mu_index_out_of_range": err(mu, ValueError, r"indices holds 36 at \(0, 0, 0, 1\), outside "
                                 r"\[0, 36\).*in a 6 x 6 plane of the output", input=Y,
                                 indices=np.where(np.arange(18).reshape(1, 2, 3, 3) == 1, 36, 0),
                                 kernel_size=2),
    "mu_index_beyond_output_size": err(mu, ValueError, r"indices holds 30 .*outside \[0, 30\)",
                                       input=Y, indices=IDX + 30, kernel_size=2,
                                       output_size=(5, 6)),
    "mu_output_size_unreachable": err(mu, ValueError, r"output_size \(8, 6\) is not reachable: "
                                      r".*each size must lie within stride of \(6, 6\), in "
                                      r"\[5, 7\] x \[5, 7\]", input=Y, indices=IDX,
                                      kernel_size=2, output_size=(8, 6)),
    "mu_output_size_length": err(mu, ValueError, r"output_size must be \(H_out, W_out\) or a "
                                 r"3-D/4-D shape ending in them, got \(6,\)", input=Y,
                                 indices=IDX, kernel_size=2, output_size=(6,)),
    "mu_output_size_int": err(mu, ValueError, r"output_size must be \(H_out, W_out\).*got 6",
                              input=Y, indices=IDX, kernel_size=2, output_size=6),
    "mu_output_cropped_away": err(mu, ValueError, r"max_unpool2d output would be \(-1, -1\): "
                                  r"padding \(2, 2\) crops more", input=Y[..., :1, :1],
                                  indices=IDX[..., :1, :1], kernel_size=3, padding=2),
    # --- max_unpool2d_backward ---
    "mub_indices_leading": err(mub, ValueError, r"indices must be 4-D with grad_output's leading "
                               r"sizes \(1, 2\).*got shape \(1, 3, 3, 3\)", grad_output=X,
                               indices=np.zeros((1, 3, 3, 3), np.int64)),
    "mub_indices_ndim": err(mub, ValueError, r"indices must be 4-D.*got shape \(2, 3, 3\)",
                            grad_output=X, indices=IDX[0]),
    "mub_indices_dtype": err(mub, TypeError, r"indices must be an integer array.*NoneType",
                             grad_output=X, indices=None),
    "mub_index_out_of_range": err(mub, ValueError, r"indices holds 99 at \(0, 1, 2, 2\), outside "
                                  r"\[0, 36\).*plane of grad_output", grad_output=X,
                                  indices=np.where(np.arange(18).reshape(1, 2, 3, 3) == 17, 99,
                                                   0)),
    # --- repeat_unpool2d ---
    "ru_scale_0": err(ru, ValueError, INT_PAIR.format("scale", "0"), input=Y, scale=0),
    "ru_scale_float": err(ru, TypeError, INT_PAIR.format("scale", r"1\.5"), input=Y, scale=1.5),
    "ru_scale_triple": err(ru, ValueError, INT_PAIR.format("scale", r"\(2, 2, 2\)"), input=Y,
                           scale=(2, 2, 2)),
    "rub_not_multiple": err(rub, ValueError, r"grad_output's height and width \(6, 6\) must be "
                            r"multiples of scale \(4, 3\), got grad_output of shape "
                            r"\(1, 2, 6, 6\)", grad_output=X, scale=(4, 3)),
    "rub_grad_2d": err(rub, ValueError, r"grad_output must be 4-D \(N, C, H, W\) or 3-D",
                       grad_output=np.zeros((6, 6), F32), scale=2),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_error(name):
    function, error, match, kwargs = ERRORS[name]
    before = {k: v.copy() for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    with pytest.raises(error, match=match):
        function(**kwargs)
    for key, value in before.items():
        np.testing.assert_array_equal(kwargs[key], value, err_msg=f"{key} was modified")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bad_indices_are_reported_by_every_algorithm(algorithm):
    bad = IDX.copy()
    bad[0, 1, 1, 1] = -5
    pattern = re.escape("indices holds -5 at (0, 1, 1, 1)")
    with pytest.raises(ValueError, match=pattern):
        fastconv.max_pool2d_backward(Y, bad, X.shape, algorithm=algorithm)
    with pytest.raises(ValueError, match=pattern):
        fastconv.max_unpool2d(Y, bad, 2, algorithm=algorithm)
    with pytest.raises(ValueError, match=pattern):
        fastconv.max_unpool2d_backward(X, bad, algorithm=algorithm)


# --- fuzzing against PyTorch: every small configuration, PyTorch's errors included -------------


def _fuzz_pool_configs(seed, count):
    """Random small pooling problems: a window that may be larger than the input (PyTorch
    computes it with ceil_mode when the window starts inside the input or its padding),
    stride None or a pair, padding up to half the kernel, dilation, ceil_mode, unbatched
    and empty batches, sizes from 1."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        k = tuple(int(v) for v in rng.integers(1, 5, 2))
        stride = None if rng.random() < 0.25 else tuple(int(v) for v in rng.integers(1, 5, 2))
        padding = tuple(int(rng.integers(0, k[a] // 2 + 1)) for a in range(2))
        dilation = tuple(int(v) for v in rng.integers(1, 4, 2))
        n = [None, 0, 1, 2][int(rng.integers(0, 4))]
        case = PoolCase("fuzz", n, int(rng.integers(1, 3)), int(rng.integers(1, 8)),
                        int(rng.integers(1, 8)), k, stride, padding, dilation,
                        bool(rng.random() < 0.5))
        yield case, DTYPES[int(rng.integers(0, 2))], int(rng.integers(0, 2**32))


def _overhangs(case):
    """Whether a window is larger than the padded input (only ceil_mode computes that)."""
    two = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    k, p, d = two(case.kernel_size), two(case.padding), two(case.dilation)
    return any(d[a] * (k[a] - 1) + 1 > n + 2 * p[a] for a, n in enumerate((case.h, case.w)))


def _torch_or_error(function):
    """``function()``'s result, or None where PyTorch refuses the problem."""
    try:
        return function()
    except RuntimeError:
        return None


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_fuzz_max_pool2d_and_backward_match_torch(algorithm):
    checked = overhanging = 0
    for case, dtype, seed in _fuzz_pool_configs(1, 1500):
        rng = np.random.default_rng(seed)
        x = tie_free(case.input_shape, dtype, rng)
        expected = _torch_or_error(lambda: torch_max_pool2d(x, case))  # noqa: B023
        if expected is None:  # PyTorch: "Output size is too small"
            with pytest.raises(ValueError, match=r"larger than the padded input"):
                fastconv.max_pool2d(x, **case.max_kwargs, algorithm=algorithm)
            continue
        if not _all_windows_touch_input(case):
            # PyTorch is wrong here: a dilated window whose taps all fall in the padding gets
            # -inf and an index that is not in the window (often outside the plane; its
            # backward then writes out of bounds). fastconv refuses such a window instead.
            with pytest.raises(ValueError, match=r"reads only padding"):
                fastconv.max_pool2d(x, **case.max_kwargs, algorithm=algorithm)
            continue
        out, indices = fastconv.max_pool2d(x, **case.max_kwargs, return_indices=True,
                                           algorithm=algorithm)
        grad_output = uniform(out.shape, dtype, rng)
        expected_out, expected_indices, expected_grad = torch_max_pool2d(x, case, grad_output)
        np.testing.assert_array_equal(out, expected_out, err_msg=str(case))
        np.testing.assert_array_equal(indices, expected_indices, err_msg=str(case))
        grad = fastconv.max_pool2d_backward(grad_output, indices, x.shape, algorithm=algorithm)
        assert_close(grad, expected_grad, dtype)
        checked += 1
        overhanging += _overhangs(case)
    assert checked > 50 and overhanging > 5


FUZZ_AVG_OPTIONS = [dict(count_include_pad=True, divisor_override=None),
                    dict(count_include_pad=False, divisor_override=None),
                    dict(count_include_pad=False, divisor_override=3),
                    dict(count_include_pad=True, divisor_override=-2)]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_fuzz_avg_pool2d_and_backward_match_torch(algorithm):
    checked = overhanging = 0
    for i, (case, dtype, seed) in enumerate(
            _fuzz_pool_configs(2, 1500)):
        case = case._replace(dilation=1)
        options = FUZZ_AVG_OPTIONS[i % len(FUZZ_AVG_OPTIONS)]
        rng = np.random.default_rng(seed)
        x = uniform(case.input_shape, dtype, rng)
        kwargs = dict(case.pool_kwargs, **options)
        if _torch_or_error(lambda: torch_avg_pool2d(x, case, options)) is None:  # noqa: B023
            with pytest.raises(ValueError, match=r"larger than the padded input"):
                fastconv.avg_pool2d(x, **kwargs, algorithm=algorithm)
            with pytest.raises(ValueError, match=r"larger than the padded input_shape"):
                fastconv.avg_pool2d_backward(x, x.shape, **kwargs, algorithm=algorithm)
            continue
        out = fastconv.avg_pool2d(x, **kwargs, algorithm=algorithm)
        grad_output = uniform(out.shape, dtype, rng)
        expected, expected_grad = torch_avg_pool2d(x, case, options, grad_output)
        assert_close(out, expected, dtype)
        grad = fastconv.avg_pool2d_backward(grad_output, x.shape, **kwargs, algorithm=algorithm)
        assert_close(grad, expected_grad, dtype)
        checked += 1
        overhanging += _overhangs(case)
    assert checked > 50 and overhanging > 5


# --- PyTorch's argument forms -------------------------------------------------------------------

#: (keyword arguments, the same in plain ints/pairs): the forms PyTorch 2.13's max_pool2d and
#: avg_pool2d accept (its OpInfo samples use them).
TORCH_FORMS = [
    (dict(kernel_size=(3,), stride=(2,), padding=(1,)), dict(kernel_size=3, stride=2, padding=1)),
    (dict(kernel_size=[3], stride=[1]), dict(kernel_size=3, stride=1)),
    (dict(kernel_size=(3, 2), stride=()), dict(kernel_size=(3, 2), stride=(3, 2))),
    (dict(kernel_size=2, stride=[]), dict(kernel_size=2, stride=2)),
    (dict(kernel_size=(np.int64(3),), stride=(np.int32(2),), padding=(np.uint8(1),)),
     dict(kernel_size=3, stride=2, padding=1)),
    (dict(kernel_size=3, stride=2, ceil_mode=True), dict(kernel_size=3, stride=2,
                                                         ceil_mode=np.bool_(True))),
]


@pytest.mark.parametrize("forms, plain", TORCH_FORMS, ids=lambda v: repr(v)[:40])
def test_torch_argument_forms(forms, plain, rng):
    torch = _torch()
    F = torch.nn.functional
    x = tie_free((2, 3, 9, 8), np.float64, rng)
    xt = torch.from_numpy(x)
    out, indices = fastconv.max_pool2d(x, **forms, return_indices=True)
    expected, expected_indices = F.max_pool2d(xt, **forms, return_indices=True)
    np.testing.assert_array_equal(out, expected.numpy())
    np.testing.assert_array_equal(indices, expected_indices.numpy())
    np.testing.assert_array_equal(out, fastconv.max_pool2d(x, **plain))
    dilated = dict(forms, dilation=(1,))
    np.testing.assert_array_equal(fastconv.max_pool2d(x, **dilated),
                                  F.max_pool2d(xt, **dilated).numpy())
    for options in (dict(count_include_pad=False), dict(divisor_override=-2)):
        avg = fastconv.avg_pool2d(x, **forms, **options)
        np.testing.assert_allclose(avg, F.avg_pool2d(xt, **forms, **options).numpy(),
                                   rtol=1e-12)
        np.testing.assert_array_equal(avg, fastconv.avg_pool2d(x, **plain, **options))
        grad = fastconv.avg_pool2d_backward(np.ones_like(avg), x.shape, **forms, **options)
        np.testing.assert_array_equal(
            grad, fastconv.avg_pool2d_backward(np.ones_like(avg), x.shape, **plain, **options))


def test_return_indices_takes_0_and_1_as_torch_does_but_not_ceil_mode():
    x = np.arange(16.0).reshape(1, 4, 4)
    out, indices = fastconv.max_pool2d(x, 2, return_indices=1)
    np.testing.assert_array_equal(indices, [[[5, 7], [13, 15]]])
    assert isinstance(fastconv.max_pool2d(x, 2, return_indices=np.int64(0)), np.ndarray)
    for value in (2, -1, "yes", None, 1.0):
        with pytest.raises(TypeError, match="return_indices must be a bool"):
            fastconv.max_pool2d(x, 2, return_indices=value)
    # PyTorch 2.13: "argument 'ceil_mode' must be bool, not int" (and count_include_pad too)
    with pytest.raises(TypeError, match="ceil_mode must be a bool, got 1"):
        fastconv.avg_pool2d(x, 2, ceil_mode=1)
    with pytest.raises(TypeError, match="count_include_pad must be a bool, got 0"):
        fastconv.avg_pool2d(x, 2, count_include_pad=0)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=(2,)), dict(kernel_size=2, stride=()),
                                    dict(kernel_size=2, stride=[]),
                                    dict(kernel_size=2, padding=(0,))])
def test_max_unpool2d_refuses_the_forms_torch_refuses(kwargs, rng):
    torch = _torch()
    x = tie_free((1, 2, 6, 6), np.float32, rng)
    pooled, indices = fastconv.max_pool2d(x, 2, return_indices=True)
    with pytest.raises((RuntimeError, IndexError)):
        torch.nn.functional.max_unpool2d(_t(pooled), _t(indices), **kwargs)
    with pytest.raises(ValueError, match=r"(kernel_size|stride|padding) must be an int or a pair"):
        fastconv.max_unpool2d(pooled, indices, **kwargs)


def test_ceil_mode_window_larger_than_the_input():
    # PyTorch computes a ceil_mode window that overhangs the (padded) input by less than
    # the stride: a 3-row window on 2 rows (the example)
    x = np.arange(14.0).reshape(1, 1, 2, 7).astype(np.float32)
    out, indices = fastconv.max_pool2d(x, 3, ceil_mode=True, return_indices=True)
    assert out.tolist() == [[[[9.0, 12.0, 13.0]]]] and indices.tolist() == [[[[9, 12, 13]]]]
    assert fastconv.conv_output_size((2, 7), 3, 3, ceil_mode=True) == (1, 3)
    assert reference.max_pool2d(x, 3, ceil_mode=True).tolist() == out.tolist()
    avg = fastconv.avg_pool2d(x, 3, ceil_mode=True)  # divisor: the window clipped to the input
    np.testing.assert_allclose(avg, [[[[(0 + 1 + 2 + 7 + 8 + 9) / 6, (3 + 4 + 5 + 10 + 11 + 12) / 6,
                                        (6 + 13) / 2]]]])
    with pytest.raises(ValueError, match=r"larger than the padded input \(2, 7\).* by stride or "
                                         r"more \(ceil_mode computes a window that overhangs it"):
        fastconv.max_pool2d(x, 3, stride=1, ceil_mode=True)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_max_unpool2d_repeated_indices_keep_the_last_in_row_major_order(algorithm, rng):
    # fastconv's own rule (PyTorch promises no order): of the (i, j) of one plane that hold
    # the same index, the value of the last in row-major order stays
    x = uniform((2, 3, 4, 5), np.float64, rng)
    indices = rng.integers(0, 6, x.shape)  # many repeats among the first 6 of 4 x 5 places
    out = fastconv.max_unpool2d(x, indices, 1, algorithm=algorithm)  # (4, 5) planes
    expected = np.zeros((2, 3, 20))
    for n, c in np.ndindex(2, 3):
        for flat in range(20):
            expected[n, c, indices[n, c].flat[flat]] = x[n, c].flat[flat]
    np.testing.assert_array_equal(out.reshape(2, 3, 20), expected)
