"""The CUDA kernels (:mod:`fastconv.cuda`): every op x algorithm x float32/float64 against
:mod:`fastconv.reference`, called through the registry (``dispatch.select(op, "cuda",
...)``) with Numba device arrays, as the public functions will call them.

Without a GPU they run under Numba's CUDA simulator (tests/conftest.py, which also
shrinks the GEMM tiles), with 32 threads per block and at most 2 blocks so that
several blocks and the grid-stride loops run. Every simulated thread is a Python
thread: shapes stay tiny. Outputs start as NaN, so a value a kernel forgets to write
fails the comparison.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv.cuda
from fastconv import config, dispatch, reference, shapes
from tests.cases import sum_tolerance, tolerance
from tests.pool_cases import tie_free, uniform

if not fastconv.cuda.is_available():
    pytest.skip("numba.cuda finds neither a GPU nor the simulator", allow_module_level=True)

from numba import cuda  # noqa: E402

from fastconv.cuda import conv as cuda_conv  # noqa: E402

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]
CONV_ALGORITHMS = ["direct", "implicit_gemm", "reference"]


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    monkeypatch.setattr(config, "CUDA_THREADS", 32)
    monkeypatch.setattr(config, "CUDA_MAX_BLOCKS", 2)
    # weight gradients: splits of >= 16 positions, so that most cases below split
    monkeypatch.setattr(cuda_conv, "_MIN_SPLIT_TERMS", 16)


def run(op, algorithm, problem, *args):
    """Call ``op``'s CUDA kernel ``algorithm`` on device copies of the numpy arguments;
    returns the kernel's result and host copies of every argument after the call."""
    _, kernel = dispatch.select(op, "cuda", algorithm, **problem)
    device = [cuda.to_device(a) if isinstance(a, np.ndarray) else a for a in args]
    result = kernel(*device)
    return result, [d.copy_to_host() if hasattr(d, "copy_to_host") else d for d in device]


def nans(shape, dtype):
    return np.full(shape, np.nan, dtype)


# --- convolution ----------------------------------------------------------------------------

#: (id, input shape, weight shape, stride, padding ((top, bottom), (left, right)), dilation,
#: groups, bias)
CONV_CASES = [
    ("3x3_p1", (2, 3, 5, 5), (4, 3, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, True),
    ("groups2_s21_asym_dil12", (2, 4, 6, 5), (6, 2, 3, 2), (2, 1), ((1, 0), (0, 2)), (1, 2), 2,
     True),
    ("depthwise_x2", (1, 3, 5, 6), (6, 1, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 3, False),
    # stride 2 over 5 leaves input rows no window reads (grad_input 0 there); one split
    ("1x1_s2_unsplit", (1, 5, 5, 5), (3, 5, 1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1), 1, False),
    # padding beyond the kernel: grad_input's stride-1 identity would pad by < 0
    ("pad_gt_kernel", (1, 2, 3, 4), (3, 2, 2, 2), (1, 1), ((3, 2), (2, 3)), (1, 1), 1, True),
    # several GEMM row and column tiles and many reduction chunks (the tiles are 8 here)
    ("deep_3x3", (1, 10, 4, 4), (9, 10, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, True),
]
CONV_IDS = [case[0] for case in CONV_CASES]


def conv_problem(case, dtype):
    _, x_shape, w_shape, stride, padding, dilation, groups, _ = case
    return dict(input_shape=x_shape, weight_shape=w_shape, stride=stride, padding=padding,
                dilation=dilation, groups=groups, dtype=np.dtype(dtype))


def conv_data(case, dtype, rng):
    """``(x, weight, bias or None, grad_output)`` for ``case``, uniform in [-1, 1]."""
    _, x_shape, w_shape, stride, padding, dilation, groups, with_bias = case
    x = uniform(x_shape, dtype, rng)
    w = uniform(w_shape, dtype, rng)
    b = uniform(w_shape[:1], dtype, rng) if with_bias else None
    out_size = [shapes.output_length(x_shape[2 + a], w_shape[2 + a], stride[a], padding[a],
                                     dilation[a]) for a in range(2)]
    dy = uniform((x_shape[0], w_shape[0], *out_size), dtype, rng)
    return x, w, b, dy


def conv_params(case):
    return case[3], case[4], case[5], case[6]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm", CONV_ALGORITHMS)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv2d(case, algorithm, dtype, rng):
    x, w, b, dy = conv_data(case, dtype, rng)
    expected = reference.conv2d(x, w, b, *conv_params(case))
    _, (_, _, _, out, *_) = run("conv2d", algorithm, conv_problem(case, dtype), x, w, b,
                            nans(dy.shape, dtype), *conv_params(case))
    np.testing.assert_allclose(out, expected, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm", CONV_ALGORITHMS)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv2d_relu_epilogue(case, algorithm, dtype, rng):
    x, w, b, dy = conv_data(case, dtype, rng)
    expected = reference.conv2d(x, w, b, *conv_params(case), activation="relu")
    assert (expected == 0).any() and (expected > 0).any()
    _, (_, _, _, out, *_) = run("conv2d", algorithm, conv_problem(case, dtype), x, w, b,
                                nans(dy.shape, dtype), *conv_params(case), "relu")
    np.testing.assert_allclose(out, expected, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm", CONV_ALGORITHMS)
@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv2d_gradients(case, algorithm, dtype, rng):
    x, w, _, dy = conv_data(case, dtype, rng)
    grad_x, grad_w, _ = reference.conv2d_backward(dy, x, w, *conv_params(case))
    problem = conv_problem(case, dtype)
    _, (_, _, got_x, *_) = run("conv2d_grad_input", algorithm, problem, dy, w,
                               nans(x.shape, dtype), *conv_params(case))
    np.testing.assert_allclose(got_x, grad_x, **tolerance(dtype))
    _, (_, _, got_w, *_) = run("conv2d_grad_weight", algorithm, problem, x, dy,
                               nans(w.shape, dtype), *conv_params(case))
    positions = dy.size // dy.shape[1]
    np.testing.assert_allclose(got_w, grad_w, **sum_tolerance(dtype, positions))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm", ["direct", "reference"])
def test_conv2d_grad_bias(algorithm, dtype, rng):
    dy = uniform((3, 5, 4, 7), dtype, rng)
    _, (_, got) = run("conv2d_grad_bias", algorithm, {}, dy, nans(5, dtype))
    np.testing.assert_allclose(got, dy.sum(axis=(0, 2, 3)), **sum_tolerance(dtype, 3 * 4 * 7))


def test_weight_gradient_splits_cover_every_position():
    splits, split_len = cuda_conv._splits(50, 4, 1024)  # _MIN_SPLIT_TERMS is 16 here
    assert (splits, split_len) == (3, 17)
    assert cuda_conv._splits(9, 4, 1024) == (1, 9)
    assert cuda_conv._splits(10_000, 1 << 20, 1024) == (1, 10_000)


@pytest.mark.parametrize(("op", "algorithm"), [
    ("conv2d_grad_weight", "direct"), ("conv2d_grad_weight", "implicit_gemm"),
    ("conv2d_grad_bias", "direct")])
def test_reductions_are_deterministic(op, algorithm, rng):
    # float32 sums of many terms in several splits and blocks: any change of order
    # would show in the last bits
    case = ("big", (3, 4, 6, 6), (4, 4, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, False)
    x, w, _, dy = conv_data(case, np.float32, rng)
    if op == "conv2d_grad_bias":
        args, output = (dy, nans(4, np.float32)), 1
    else:
        args, output = (x, dy, nans(w.shape, np.float32), *conv_params(case)), 2
    problem = conv_problem(case, np.float32)
    first = run(op, algorithm, problem, *args)[1][output]
    second = run(op, algorithm, problem, *args)[1][output]
    assert not np.isnan(first).any()
    assert first.tobytes() == second.tobytes()


@pytest.mark.parametrize(("op", "weight_shape", "stride", "expected"), [
    ("conv2d", (8, 1, 3, 3), (1, 1), "direct"),  # depthwise
    ("conv2d", (8, 3, 3, 3), (1, 1), "direct"),  # depth 27 <= AUTO_DIRECT_MAX_DEPTH
    ("conv2d", (8, 16, 3, 3), (2, 2), "implicit_gemm"),
    ("conv2d_grad_input", (8, 16, 3, 3), (1, 1), "implicit_gemm"),
    ("conv2d_grad_input", (8, 16, 3, 3), (2, 2), "direct"),
    ("conv2d_grad_weight", (8, 16, 3, 3), (2, 2), "implicit_gemm"),
    ("conv2d_grad_weight", (8, 1, 5, 5), (1, 1), "direct"),
])
def test_conv_choice(op, weight_shape, stride, expected):
    groups = 8 if weight_shape[1] == 1 else 1
    problem = dict(input_shape=(2, weight_shape[1] * groups, 9, 9), weight_shape=weight_shape,
                   stride=stride, padding=((1, 1), (1, 1)), dilation=(1, 1), groups=groups,
                   dtype=np.dtype(np.float32))
    assert dispatch.select(op, "cuda", "auto", **problem)[0] == expected


def test_every_op_has_auto_direct_and_reference():
    for op in dispatch.OPS:
        names = set(dispatch.available_algorithms(op, "cuda"))
        assert {"auto", "direct", "reference"} <= names, op
        assert ("implicit_gemm" in names) == (op in ("conv2d", "conv2d_grad_input",
                                                     "conv2d_grad_weight")), op


# --- pooling -------------------------------------------------------------------------------

#: (id, input shape, kernel_size, stride, padding, dilation, ceil_mode)
POOL_CASES = [
    ("3x3_s2_p1_ceil", (2, 2, 7, 6), (3, 3), (2, 2), (1, 1), (1, 1), True),  # overlapping
    ("2x3_s12_p01_dil21", (1, 3, 7, 8), (2, 3), (1, 2), (0, 1), (2, 1), False),
    ("2x2", (2, 2, 6, 5), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ("3x2_s21_p10_ceil", (1, 2, 8, 5), (3, 2), (2, 1), (1, 0), (1, 1), True),
]
POOL_IDS = [case[0] for case in POOL_CASES]
AVG_CASES = [case for case in POOL_CASES if case[5] == (1, 1)]
AVG_OPTIONS = {"include_pad": (True, None), "exclude_pad": (False, None),
               "divisor_3": (True, 3)}


def pool_out_shape(case):
    _, shape, kernel, stride, padding, dilation, ceil = case
    return (*shape[:2], *(shapes.output_length(shape[2 + a], kernel[a], stride[a],
                                               (padding[a], padding[a]), dilation[a], ceil)
                          for a in range(2)))


def pool_problem(case, dtype):
    return dict(input_shape=case[1], dtype=np.dtype(dtype))


def max_pool_reference(x, case):
    _, _, kernel, stride, padding, dilation, ceil = case
    return reference.max_pool2d(x, kernel, stride, padding, dilation, ceil, return_indices=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm", ["direct", "reference"])
@pytest.mark.parametrize("with_indices", [True, False], ids=["indices", "no_indices"])
@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_max_pool2d(case, with_indices, algorithm, dtype, rng):
    x = tie_free(case[1], dtype, rng)
    expected, where = max_pool_reference(x, case)
    indices = np.full(expected.shape, -7, np.int64) if with_indices else None
    _, (_, out, got_where, *_) = run("max_pool2d", algorithm, pool_problem(case, dtype), x,
                                     nans(expected.shape, dtype), indices, *case[2:7])
    np.testing.assert_array_equal(out, expected)
    if with_indices:
        np.testing.assert_array_equal(got_where, where)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_max_pool2d_ties_and_nan_as_the_cpu(dtype, rng):
    # ties keep the first maximum, -inf windows report their first tap, a NaN wins and
    # the last NaN's index is kept
    case = POOL_CASES[0]
    x = rng.integers(-2, 2, case[1]).astype(dtype)
    x[0, 0, 1:3, 1:3] = -np.inf
    x[0, 1, 2, 2] = x[0, 1, 3, 3] = x[1, 0, 0, 0] = np.nan
    expected, where = max_pool_reference(x, case)
    _, (_, out, got_where, *_) = run("max_pool2d", "direct", pool_problem(case, dtype), x,
                                     nans(expected.shape, dtype),
                                     np.empty(expected.shape, np.int64), *case[2:7])
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(got_where, where)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm", ["direct", "reference"])
@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_max_pool2d_backward(case, algorithm, dtype, rng):
    # overlapping windows send several gradients to one position
    _, where = max_pool_reference(tie_free(case[1], dtype, rng), case)
    dy = uniform(where.shape, dtype, rng)
    expected = reference.max_pool2d_backward(dy, where, case[1])
    bad, (_, _, got) = run("max_pool2d_backward", algorithm, pool_problem(case, dtype), dy,
                           where, nans(case[1], dtype))
    assert bad == -1
    np.testing.assert_allclose(got, expected, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm", ["direct", "reference"])
@pytest.mark.parametrize("option", list(AVG_OPTIONS))
@pytest.mark.parametrize("case", AVG_CASES, ids=[case[0] for case in AVG_CASES])
def test_avg_pool2d_and_backward(case, option, algorithm, dtype, rng):
    _, shape, kernel, stride, padding, _, ceil = case
    include_pad, divisor = AVG_OPTIONS[option]
    window = (kernel, stride, padding)
    x = uniform(shape, dtype, rng)
    expected = reference.avg_pool2d(x, *window, ceil, include_pad, divisor)
    problem = pool_problem(case, dtype)
    _, (_, out, *_) = run("avg_pool2d", algorithm, problem, x, nans(expected.shape, dtype),
                          *window, ceil, include_pad, divisor)
    np.testing.assert_allclose(out, expected, **tolerance(dtype))
    dy = uniform(expected.shape, dtype, rng)
    expected_dx = reference.avg_pool2d_backward(dy, shape, *window, ceil, include_pad, divisor)
    _, (_, got, *_) = run("avg_pool2d_backward", algorithm, problem, dy, nans(shape, dtype),
                          *window, ceil, include_pad, divisor)
    np.testing.assert_allclose(got, expected_dx, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm", ["direct", "reference"])
def test_max_unpool2d_and_backward(algorithm, dtype, rng):
    # the pooled maxima of a 7 x 5 input (odd: the last row and column are not pooled),
    # plus repeated indices with different values (the later value stays)
    case = ("2x2", (2, 3, 7, 5), (2, 2), (2, 2), (0, 0), (1, 1), False)
    x, where = max_pool_reference(tie_free(case[1], dtype, rng), case)
    where[0, 1, 1, :] = where[0, 1, 0, 0]
    where[1, 2, 2, 1] = where[1, 2, 0, 1]
    expected = reference.max_unpool2d(x, where, 2, output_size=case[1])
    problem = dict(input_shape=x.shape, out_size=case[1][2:], dtype=np.dtype(dtype))
    bad, (_, _, out) = run("max_unpool2d", algorithm, problem, x, where, nans(case[1], dtype))
    assert bad == -1
    np.testing.assert_array_equal(out, expected)
    dy = uniform(case[1], dtype, rng)
    bad, (_, _, got) = run("max_unpool2d_backward", algorithm, problem, dy, where,
                           nans(x.shape, dtype))
    assert bad == -1
    np.testing.assert_array_equal(got, reference.max_unpool2d_backward(dy, where))


@pytest.mark.parametrize("op", ["max_pool2d_backward", "max_unpool2d", "max_unpool2d_backward"])
def test_first_bad_index_is_reported(op, rng):
    values = uniform((2, 3, 2, 3), np.float64, rng)
    where = rng.integers(0, 12, values.shape)
    where[1, 0, 1, 2] = 12  # flat position 1*18 + 0*6 + 1*3 + 2 = 23: the first bad one
    where[1, 2, 0, 0] = -1
    big = nans((2, 3, 3, 4), np.float64)
    problem = dict(input_shape=values.shape, dtype=values.dtype)
    args = {"max_pool2d_backward": (values, where, big), "max_unpool2d": (values, where, big),
            "max_unpool2d_backward": (uniform(big.shape, np.float64, rng), where,
                                      nans(values.shape, np.float64))}[op]
    assert run(op, "direct", problem, *args)[0] == 23
    where[1, 0, 1, 2] = 11
    where[1, 2, 0, 0] = 0
    assert run(op, "direct", problem, *args)[0] == -1


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm", ["direct", "reference"])
def test_repeat_unpool2d_and_backward(algorithm, dtype, rng):
    x = uniform((2, 2, 3, 4), dtype, rng)
    scale = (2, 3)
    problem = dict(input_shape=x.shape, scale=scale, dtype=np.dtype(dtype))
    expected = reference.repeat_unpool2d(x, scale)
    _, (_, out, _) = run("repeat_unpool2d", algorithm, problem, x, nans(expected.shape, dtype),
                         scale)
    np.testing.assert_array_equal(out, expected)
    dy = uniform(expected.shape, dtype, rng)
    _, (_, got, _) = run("repeat_unpool2d_backward", algorithm, problem, dy,
                         nans(x.shape, dtype), scale)
    np.testing.assert_allclose(got, reference.repeat_unpool2d_backward(dy, scale),
                               **tolerance(dtype))
