"""NaN and Inf: every convolution algorithm and gradient, and pooling, put NaN, +Inf and -Inf
where PyTorch does, for a few non-finite values in the input, the weight or grad_output.

The oracle is PyTorch's native CPU kernels (``torch.backends.mkldnn.flags(enabled=False)``;
the ones PyTorch always runs in float64), which follow the definition: zero padding is
zeros, so a non-finite weight tap or grad_output value that meets a padded zero gives
``0 * Inf = NaN``, as in :mod:`fastconv.reference`. PyTorch's oneDNN kernels (float32,
most layer shapes) skip the padded taps instead and give +-Inf or a finite value at those
border positions; everywhere else the two agree (checked for a non-finite input below).

Winograd transforms mix a whole 6x6 patch, so it keeps the definition's pattern by
recomputing the tile rows (or, for grad_weight, the call) whose results are not all
finite, and by sending non-finite weights to im2col (see :mod:`fastconv.cpu.winograd`).
Shortcuts that multiply padded zeros or row-pitch junk columns by the data are taken only
where that cannot make a NaN: stride-1 grad_input as a convolution of the zero-padded
grad_output only for a finite weight (direct, im2col), and direct's stride-1 grad_weight
on the padded row pitch only where its result is finite (else row by row).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

import fastconv
from tests.cases import DTYPES, assert_same_pattern, sum_tolerance, tolerance

torch = pytest.importorskip("torch")
F = torch.nn.functional

# torch.backends.mkldnn.flags() warns about TF32 on Intel GPUs whenever it is entered
pytestmark = pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning")

ALGORITHMS = ("direct", "im2col", "winograd", "reference")
DTYPE_IDS = [np.dtype(d).name for d in DTYPES]


class Geometry(NamedTuple):
    id: str
    kernel: int
    stride: int
    padding: int

    @property
    def kwargs(self) -> dict:
        return dict(stride=self.stride, padding=self.padding)


GEOMETRIES = [
    Geometry("3x3", 3, 1, 0),
    Geometry("3x3_p1", 3, 1, 1),
    Geometry("3x3_s2_p1", 3, 2, 1),
    Geometry("5x5_p2", 5, 1, 2),
    Geometry("1x1", 1, 1, 0),
]

#: (op, result, where the non-finite values are): the results each placement reaches.
QUANTITIES = [
    ("conv2d", "output", "input"),
    ("conv2d", "output", "weight"),
    ("conv2d", "grad_input", "grad_output"),
    ("conv2d", "grad_input", "weight"),
    ("conv2d", "grad_weight", "input"),
    ("conv2d", "grad_weight", "grad_output"),
    ("conv_transpose2d", "output", "input"),
    ("conv_transpose2d", "output", "weight"),
    ("conv_transpose2d", "grad_input", "grad_output"),
    ("conv_transpose2d", "grad_input", "weight"),
    ("conv_transpose2d", "grad_weight", "input"),
    ("conv_transpose2d", "grad_weight", "grad_output"),
]

N, C, K, H, W = 2, 5, 6, 14, 13


def non_finite(array: np.ndarray, kind: str, positions) -> np.ndarray:
    """``array`` with NaN (``kind="nan"``) or alternately +Inf and -Inf (``"inf"``) at
    ``positions``; the Infs come in pairs of neighbours, so some windows hold both."""
    array = array.copy()
    for i, position in enumerate(positions):
        array[position] = np.nan if kind == "nan" else (np.inf if i % 2 == 0 else -np.inf)
    return array


def image_positions(shape):
    """A corner, two neighbours inside (a +Inf next to a -Inf), the last column and the
    last row: the edges catch padding and row-pitch junk columns, the pair catches
    Inf - Inf."""
    n, c, h, w = shape
    return [(0, 0, 0, 0), (0, 0, 0, 1), (0, c - 1, h // 2, w // 2), (0, c - 1, h // 2, w // 2 + 1),
            (n - 1, 1 % c, h // 3, w - 1), (n - 1, 2 % c, h - 1, 1)]


def weight_positions(shape):
    k, c, r, s = shape
    return [(0, 0, 0, 0), (1 % k, c - 1, r // 2, s // 2), (2 % k, 0, r - 1, s - 1),
            (2 % k, c - 1, r - 1, 0)]


def problem(op, geometry, where, kind, dtype, rng):
    """``(x, w, b, dy)``: random data in [-1, 1] with the non-finite values at ``where``,
    and the weights of the last channel of the weight's second axis all zero, so that
    some non-finite values reach some results only as 0 * NaN or 0 * Inf = NaN (through
    Winograd's and im2col's GEMMs too)."""
    r = geometry.kernel
    x = rng.uniform(-1, 1, (N, C, H, W)).astype(dtype)
    w_shape = (K, C, r, r) if op == "conv2d" else (C, K, r, r)
    w = rng.uniform(-1, 1, w_shape).astype(dtype)
    w[:, -1] = 0  # conv2d: from input channel C-1; conv_transpose2d: to output channel K-1
    b = rng.uniform(-1, 1, w_shape[0] if op == "conv2d" else K).astype(dtype)
    out_shape = torch_results(op, x, w, b, None, geometry)[0].shape
    dy = rng.uniform(-1, 1, out_shape).astype(dtype)
    if where == "input":
        x = non_finite(x, kind, image_positions(x.shape))
    elif where == "weight":
        w = non_finite(w, kind, weight_positions(w.shape))
    else:
        dy = non_finite(dy, kind, image_positions(dy.shape))
    return x, w, b, dy


def torch_results(op, x, w, b, dy, geometry):
    """PyTorch's native ``(output, grad_input, grad_weight)`` (no gradients when ``dy`` is
    None)."""
    with torch.backends.mkldnn.flags(enabled=False):
        xt = torch.from_numpy(x).requires_grad_()
        wt = torch.from_numpy(w).requires_grad_()
        function = F.conv2d if op == "conv2d" else F.conv_transpose2d
        y = function(xt, wt, torch.from_numpy(b), **geometry.kwargs)
        if dy is None:
            return (y.detach().numpy(),)
        y.backward(torch.from_numpy(dy))
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()


def fastconv_result(op, result, x, w, b, dy, geometry, algorithm):
    if result == "output":
        function = fastconv.conv2d if op == "conv2d" else fastconv.conv_transpose2d
        return function(x, w, b, algorithm=algorithm, **geometry.kwargs)
    backward = fastconv.conv2d_backward if op == "conv2d" else fastconv.conv_transpose2d_backward
    grads = backward(dy, x, w, needs_input_grad=result == "grad_input",
                     needs_weight_grad=result == "grad_weight", needs_bias_grad=False,
                     algorithm=algorithm, **geometry.kwargs)
    return grads[0] if result == "grad_input" else grads[1]


def _params():
    for op, result, where in QUANTITIES:
        for geometry in GEOMETRIES:
            for algorithm in ALGORITHMS:
                if algorithm == "winograd" and (geometry.kernel, geometry.stride) != (3, 1):
                    continue
                yield pytest.param(op, result, where, geometry, algorithm,
                                   id=f"{op}-{result}-{where}-{geometry.id}-{algorithm}")


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the reference's 0 * Inf
@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op, result, where, geometry, algorithm", list(_params()))
def test_pattern_matches_torch(op, result, where, geometry, algorithm, dtype, kind, rng):
    x, w, b, dy = problem(op, geometry, where, kind, dtype, rng)
    expected = torch_results(op, x, w, b, dy, geometry)[("output", "grad_input",
                                                         "grad_weight").index(result)]
    actual = fastconv_result(op, result, x, w, b, dy, geometry, algorithm)
    tol = (sum_tolerance(dtype, N * dy.shape[2] * dy.shape[3]) if result == "grad_weight"
           else tolerance(dtype))
    assert_same_pattern(actual, expected, **tol)


# --- the numbers, against PyTorch's default (oneDNN) path ------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("algorithm", ["winograd", "auto", "im2col", "direct"])
def test_one_non_finite_pixel_reaches_its_3x3_outputs_only(algorithm, value, rng):
    """One NaN/Inf pixel inside a 16-channel image reaches 16 * 9 = 144 outputs, NaN for a
    NaN, +-Inf for an Inf (Winograd used to give 256 NaN: its whole 4x4 output tile)."""
    x = rng.uniform(-1, 1, (2, 16, 20, 20)).astype(np.float32)
    w = rng.uniform(-1, 1, (16, 16, 3, 3)).astype(np.float32)
    x[1, 5, 9, 10] = value
    y = fastconv.conv2d(x, w, padding=1, algorithm=algorithm)
    assert np.count_nonzero(~np.isfinite(y)) == 144
    assert np.count_nonzero(np.isnan(y)) == (144 if np.isnan(value) else 0)
    # torch's default CPU path here (oneDNN); no padded zero meets the non-finite value
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()
    assert_same_pattern(y, expected, **tolerance(np.float32))


# --- Winograd: what the fallback recomputes ----------------------------------------------


def _count_im2col_rows(monkeypatch):
    """Record the output rows of each im2col call that Winograd makes."""
    from fastconv.cpu import im2col

    calls = []
    original = im2col.conv2d_im2col

    def spy(x, weight, bias, out, *args, **kwargs):
        calls.append(out.shape[2])
        return original(x, weight, bias, out, *args, **kwargs)

    monkeypatch.setattr(im2col, "conv2d_im2col", spy)
    return calls


@pytest.mark.parametrize("padding, recomputed", [(0, [8]), (1, [4])])
def test_winograd_recomputes_only_the_tile_rows_that_read_a_non_finite_value(
        padding, recomputed, monkeypatch, rng):
    calls = _count_im2col_rows(monkeypatch)
    x = rng.uniform(-1, 1, (3, 8, 30, 17))
    w = rng.uniform(-1, 1, (8, 8, 3, 3))
    fastconv.conv2d(x, w, padding=padding, algorithm="winograd")
    assert calls == []  # finite input: Winograd alone
    # input row 13 is read by output rows 11..13 (padding 0: tile rows 2 and 3, 8 rows)
    # or 12..14 (padding 1: tile row 3, 4 rows)
    x[1, 3, 13, 4] = np.nan
    y = fastconv.conv2d(x, w, padding=padding, algorithm="winograd")
    assert calls == recomputed
    expected = fastconv.conv2d(x, w, padding=padding, algorithm="reference")
    assert_same_pattern(y, expected, **tolerance(np.float64))


def test_winograd_sends_a_non_finite_weight_or_bias_to_im2col(monkeypatch, rng):
    calls = _count_im2col_rows(monkeypatch)
    x = rng.uniform(-1, 1, (1, 4, 9, 9))
    w = rng.uniform(-1, 1, (4, 4, 3, 3))
    b = rng.uniform(-1, 1, 4)
    fastconv.conv2d(x, w, b, algorithm="winograd")
    assert calls == []
    for weight, bias in ((non_finite(w, "nan", [(1, 2, 0, 1)]), b),
                         (w, non_finite(b, "inf", [(3,)]))):
        y = fastconv.conv2d(x, weight, bias, algorithm="winograd")
        assert_same_pattern(y, fastconv.conv2d(x, weight, bias, algorithm="reference"),
                            **tolerance(np.float64))
    assert calls == [7, 7]  # each the whole output, in one call


def test_winograd_overflow_in_its_transforms_is_recomputed():
    """float32 values near the top of the range: B^T d B scales a patch value by up to 16
    and overflows where the exact sum (one product per output here) stays finite."""
    x = np.zeros((1, 2, 8, 8), np.float32)
    x[0, 1, 3, 4] = 3e37
    w = np.ones((2, 2, 3, 3), np.float32)
    y = fastconv.conv2d(x, w, padding=1, algorithm="winograd")
    expected = fastconv.conv2d(x, w, padding=1, algorithm="direct")
    assert np.isfinite(expected).all()
    # Winograd's rounding error scales with its inputs, not its outputs
    scale = dict(rtol=1e-5, atol=3e37 * 1e-6)
    np.testing.assert_allclose(y, expected, **scale)
    winograd, direct = (
        fastconv.conv2d_backward(np.ones_like(y), x, w, padding=1, needs_input_grad=False,
                                 algorithm=algorithm)[1]
        for algorithm in ("winograd", "direct"))
    assert np.isfinite(direct).all()
    np.testing.assert_allclose(winograd, direct, **scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_all_finite_scan(dtype, rng):
    """Every size around the scan's block, every chunk count, each non-finite value at
    the first, a middle and the last position (reassociation once folded a v - v test
    to 0 and missed every Inf)."""
    from fastconv.cpu import finite, threads

    values = rng.uniform(-1, 1, (3, 4, 5)).astype(dtype)
    # finite_values: a whole array, a contiguous view and a strided view
    for index in ((), (1,), (slice(None), slice(None, None, 2), slice(1, None))):
        assert finite.finite_values(values[index])
        for value in (np.nan, np.inf, -np.inf):
            for corner in (0, -1):
                bad = values.copy()
                view = bad[index]
                view[(corner,) * view.ndim] = value
                assert not finite.finite_values(view), (index, value, corner)
    # all_finite scans on the calling thread below 2 * _PARALLEL_MIN values, else in parallel

    def any_nonfinite(data, n_chunks):
        """The parallel scan in n_chunks parts, each of which sees only its chunk."""
        parts = [finite._any_nonfinite(data, n_chunks, part, n_chunks)
                 for part in range(n_chunks)]
        assert any(parts) == any(threads.launch(finite._any_nonfinite, n_chunks, data,
                                                n_chunks))
        return any(parts)

    block = finite._SCAN_BLOCK
    for size in (1, 2, 7, 33, block - 1, block, block + 1, 3 * block + 5,
                 2 * finite._PARALLEL_MIN + 5):
        data = rng.uniform(-1, 1, size).astype(dtype)
        assert finite.all_finite(data)
        for n_chunks in range(1, min(size, 4) + 1):
            assert not any_nonfinite(data, n_chunks)
        for value in (np.nan, np.inf, -np.inf):
            for position in {0, size // 2, size - 1}:
                bad = data.copy()
                bad[position] = value
                assert not finite.all_finite(bad), (size, value, position)
                for n_chunks in range(1, min(size, 4) + 1):
                    assert any_nonfinite(bad, n_chunks), (size, n_chunks, value, position)
    assert finite.all_finite(np.zeros(0, dtype))
    assert not finite.all_finite(np.full((2, 3, 4, 5), np.nan, dtype))


# --- pooling --------------------------------------------------------------------------------

POOL_GEOMETRIES = [  # kernel, stride, padding, dilation, ceil_mode
    (2, 2, 0, 1, False),
    (3, 1, 1, 1, False),
    (3, 2, 1, 1, True),
    (3, 2, 1, 2, False),
]


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("algorithm", ["direct", "reference"])
@pytest.mark.parametrize("where", ["input", "grad_output"])
@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("geometry", POOL_GEOMETRIES, ids=lambda g: "k{}s{}p{}d{}c{:d}".format(*g))
def test_pooling_pattern_matches_torch(geometry, dtype, kind, where, algorithm, rng):
    """max_pool2d (values and indices: NaN wins, ties to the first), avg_pool2d, and their
    gradients, with a window of -Inf only and a window of NaN and +Inf next to each other."""
    kernel, stride, padding, dilation, ceil_mode = geometry
    x = rng.uniform(-1, 1, (2, 3, 9, 10)).astype(dtype)
    if where == "input":
        x = non_finite(x, kind, image_positions(x.shape))
        x[1, 1, 2:5, 2:5] = -np.inf
        x[1, 1, 6:8, 6:8] = np.nan
        x[1, 1, 6, 8] = np.inf
    xt = torch.from_numpy(x).requires_grad_()
    yt, it = F.max_pool2d(xt, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    dy = rng.uniform(-1, 1, yt.shape).astype(dtype)
    if where == "grad_output":
        dy = non_finite(dy, kind, image_positions(dy.shape))
    yt.backward(torch.from_numpy(dy))
    y, indices = fastconv.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode,
                                     return_indices=True, algorithm=algorithm)
    tol = tolerance(dtype)
    assert_same_pattern(y, yt.detach().numpy(), **tol)
    np.testing.assert_array_equal(indices, it.numpy())
    assert_same_pattern(fastconv.max_pool2d_backward(dy, indices, x.shape, algorithm=algorithm),
                        xt.grad.numpy(), **tol)
    if dilation != 1:
        return
    for count_include_pad in (True, False):
        args = (kernel, stride, padding, ceil_mode, count_include_pad)
        xt = torch.from_numpy(x).requires_grad_()
        yt = F.avg_pool2d(xt, *args)
        yt.backward(torch.from_numpy(dy))
        assert_same_pattern(fastconv.avg_pool2d(x, *args, algorithm=algorithm),
                            yt.detach().numpy(), **tol)
        assert_same_pattern(fastconv.avg_pool2d_backward(dy, x.shape, *args, algorithm=algorithm),
                            xt.grad.numpy(), **tol)
