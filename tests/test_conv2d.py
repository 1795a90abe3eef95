"""fastconv.conv2d: every algorithm x the case table x dtypes, against the reference
(the spec) and against PyTorch (an independent oracle), plus memory layouts,
``out=``, array-likes, empty batches and hypothesis-generated configurations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import reference
from tests.cases import (
    CONV2D_CASES,
    DTYPES,
    Conv2dCase,
    algorithm_case_params,
    case_for,
    expected_output_shape,
    explicit_padding,
    make_inputs,
    no_whole_planes,
    relayout,
    supports,
    tolerance,
)

#: Every registered algorithm, "auto" included: each is checked by name.
ALGORITHMS = list(fastconv.available_algorithms("conv2d"))
FAST_ALGORITHMS = [a for a in ALGORITHMS if a not in ("auto", "reference")]
DTYPE_IDS = [np.dtype(d).name for d in DTYPES]


def test_algorithm_list_is_not_empty():
    # the matrix below would silently shrink if the registry lost a kernel
    assert {"auto", "direct", "im2col", "reference"} <= set(ALGORITHMS)


def assert_close(actual, expected, dtype):
    np.testing.assert_allclose(actual, expected, **tolerance(dtype))


def torch_conv2d(x, w, b, stride=1, padding=0, dilation=1, groups=1):
    """``torch.nn.functional.conv2d`` on numpy arrays. Torch takes int, pair, "valid" and
    stride-1 "same" itself; other forms (asymmetric, "same" with stride > 1) are
    applied as explicit zero padding with np.pad, which is their documented meaning."""
    torch = pytest.importorskip("torch")
    x = np.array(x)
    w = np.array(w)
    stride_pair = tuple(stride) if isinstance(stride, (tuple, list)) else (stride, stride)
    asymmetric = isinstance(padding, (tuple, list)) and any(
        isinstance(p, (tuple, list)) for p in padding
    )
    if asymmetric or (padding == "same" and stride_pair != (1, 1)):
        pads = explicit_padding(padding, x.shape[-2:], w.shape[-2:], stride, dilation)
        x = np.pad(x, [(0, 0)] * (x.ndim - 2) + [tuple(p) for p in pads])
        padding = 0
    elif isinstance(padding, list):
        padding = tuple(padding)
    with warnings.catch_warnings():
        # torch warns that stride-1 "same" with an even kernel copies the input
        warnings.simplefilter("ignore", UserWarning)
        y = torch.nn.functional.conv2d(
            torch.from_numpy(x), torch.from_numpy(w),
            None if b is None else torch.from_numpy(np.array(b)),
            stride=stride_pair,
            padding=padding,
            dilation=tuple(dilation) if isinstance(dilation, (tuple, list)) else dilation,
            groups=groups,
        )
    return y.numpy()


# --- the case table -------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm, case", algorithm_case_params(ALGORITHMS, CONV2D_CASES))
def test_matches_reference(algorithm, case, dtype, rng):
    x, w, b = make_inputs(case, dtype, rng)
    y = fastconv.conv2d(x, w, b, **case.kwargs, algorithm=algorithm)
    assert y.dtype == np.dtype(dtype)
    assert y.shape == expected_output_shape(case)
    assert_close(y, reference.conv2d(x, w, b, **case.kwargs), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm, case", algorithm_case_params(ALGORITHMS, CONV2D_CASES))
def test_matches_torch(algorithm, case, dtype, rng):
    x, w, b = make_inputs(case, dtype, rng)
    expected = torch_conv2d(x, w, b, **case.kwargs)
    y = fastconv.conv2d(x, w, b, **case.kwargs, algorithm=algorithm)
    assert y.dtype == np.dtype(dtype)
    assert y.shape == expected.shape
    assert_close(y, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm, case", algorithm_case_params(ALGORITHMS, CONV2D_CASES))
def test_relu_epilogue_matches_torch_relu(algorithm, case, dtype, rng):
    # activation="relu" is applied by each kernel as it stores: torch.relu of the output
    torch = pytest.importorskip("torch")
    x, w, b = make_inputs(case, dtype, rng)
    expected = torch.relu(torch.from_numpy(torch_conv2d(x, w, b, **case.kwargs))).numpy()
    y = fastconv.conv2d(x, w, b, **case.kwargs, algorithm=algorithm, activation="relu")
    assert y.dtype == np.dtype(dtype) and y.shape == expected.shape
    assert_close(y, expected, dtype)
    assert_close(y, reference.conv2d(x, w, b, **case.kwargs, activation="relu"), dtype)
    assert not (y < 0).any()


def test_relu_epilogue_on_large_multi_tile_layers(rng):
    # shapes that reach every CPU kernel's blocked, multi-tile and multi-thread paths,
    # with unequal last tiles: the clamp is at every store, not only the first tile's
    torch = pytest.importorskip("torch")
    layers = [((3, 64, 30, 29), (64, 64, 3, 3), 1, 1, 1),   # auto: Winograd
              ((2, 16, 37, 33), (32, 16, 3, 3), 1, 1, 1),   # blocked direct
              ((2, 24, 20, 21), (40, 24, 3, 3), 2, 1, 1),   # strided
              ((2, 8, 19, 17), (8, 1, 5, 5), 1, 2, 8),      # depthwise
              ((2, 96, 9, 11), (80, 96, 1, 1), 1, 0, 1)]    # 1x1
    for x_shape, w_shape, stride, padding, groups in layers:
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
        b = rng.standard_normal(w_shape[0]).astype(np.float32)
        expected = torch.relu(torch.nn.functional.conv2d(
            torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride, padding,
            1, groups)).numpy()
        for algorithm in ALGORITHMS:
            if algorithm == "reference" or (algorithm == "winograd"
                                            and (w_shape[2:] != (3, 3) or stride != 1)):
                continue
            y = fastconv.conv2d(x, w, b, stride, padding, 1, groups, algorithm=algorithm,
                                activation="relu")
            np.testing.assert_allclose(y, expected, rtol=0, atol=3e-5 * np.abs(expected).max(),
                                       err_msg=f"{algorithm} {x_shape} {w_shape}")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_relu_epilogue_keeps_nan_and_clamps_minus_inf(algorithm):
    # torch.relu: NaN stays NaN, -inf becomes 0, +inf stays
    x = np.zeros((1, 1, 6, 6), np.float32)
    x[0, 0, 0, 0], x[0, 0, 5, 5] = np.nan, -np.inf
    x[0, 0, 3, 0] = np.inf
    w = np.ones((1, 1, 3, 3), np.float32)
    y = fastconv.conv2d(x, w, padding=1, algorithm=algorithm, activation="relu")
    plain = reference.conv2d(x, w, padding=1)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(plain))
    assert (y[plain == -np.inf] == 0).all() and (y[plain == np.inf] == np.inf).all()
    finite = np.isfinite(plain)
    np.testing.assert_array_equal(y[finite], np.maximum(plain[finite], 0))


@pytest.mark.parametrize("activation, error", [
    ("gelu", ValueError), ("ReLU", ValueError), (1, TypeError), (True, TypeError)])
def test_unknown_activation_is_refused(activation, error):
    x, w = np.ones((1, 1, 3, 3), np.float32), np.ones((1, 1, 3, 3), np.float32)
    with pytest.raises(error, match=r"activation must be None or 'relu', got"):
        fastconv.conv2d(x, w, activation=activation)


def test_torch_oracle_pads_same_with_stride_at_the_end():
    # The oracle's own padding rule, checked once by hand: n=6, k=3, s=2 -> out 3,
    # total (3-1)*2 + 3 - 6 = 1, so no pad on top/left and one on bottom/right.
    assert explicit_padding("same", (6, 6), (3, 3), 2, 1) == ((0, 1), (0, 1))
    x = np.arange(36.0).reshape(1, 1, 6, 6)
    w = np.zeros((1, 1, 3, 3))
    w[0, 0, 0, 0] = 1.0  # picks the window's top-left tap: x_padded[2i, 2j]
    y = fastconv.conv2d(x, w, padding="same", stride=2)
    np.testing.assert_array_equal(y[0, 0], x[0, 0, ::2, ::2])
    np.testing.assert_array_equal(torch_conv2d(x, w, None, stride=2, padding="same"), y)


# --- memory layouts and argument kinds --------------------------------------------

LAYOUT_CASES = [c for c in CONV2D_CASES if c.id in ("3x3_s2_p1", "groups2", "pad_asym")]


@pytest.mark.parametrize("layout", ["strided", "transposed", "fortran", "reversed"])
@pytest.mark.parametrize("algorithm, case", algorithm_case_params(ALGORITHMS, LAYOUT_CASES))
def test_any_memory_layout(algorithm, case, layout, rng):
    dtype = np.float32
    x, w, b = make_inputs(case, dtype, rng)
    expected = reference.conv2d(x, w, b, **case.kwargs)
    xv, wv = relayout(x, layout, rng), relayout(w, layout, rng)
    bv = relayout(b, "strided", rng) if b is not None else None
    assert_close(fastconv.conv2d(xv, wv, bv, **case.kwargs, algorithm=algorithm), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_read_only_inputs(algorithm, dtype, rng):
    case = case_for(algorithm, "3x3_s2_p1", "3x3_p1")
    x, w, b = make_inputs(case, dtype, rng)
    expected = reference.conv2d(x, w, b, **case.kwargs)
    for array in (x, w, b):
        array.setflags(write=False)
    y = fastconv.conv2d(x, w, b, **case.kwargs, algorithm=algorithm)
    assert y.flags.writeable
    assert_close(y, expected, dtype)


@pytest.mark.parametrize("algorithm, case", algorithm_case_params(
    ALGORITHMS, [c for c in CONV2D_CASES
                 if c.id in ("3x3_p1", "1x1", "depthwise_x2_s2", "unbatched_3x3")]))
def test_inputs_are_not_modified(algorithm, case, rng):
    x, w, b = make_inputs(case, np.float64, rng)
    copies = [a.copy() for a in (x, w, b)]
    fastconv.conv2d(x, w, b, **case.kwargs, algorithm=algorithm)
    out = np.empty(expected_output_shape(case))
    fastconv.conv2d(x, w, b, **case.kwargs, algorithm=algorithm, out=out)
    for before, after in zip(copies, (x, w, b), strict=False):
        np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_output_is_a_fresh_array(algorithm, rng):
    case = case_for(algorithm, "1x1", "3x3_p1")
    x, w, b = make_inputs(case, np.float32, rng)
    y = fastconv.conv2d(x, w, b, **case.kwargs, algorithm=algorithm)
    assert not np.shares_memory(y, x) and not np.shares_memory(y, w)
    assert y.flags.c_contiguous and y.flags.writeable


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_output_dtype_follows_input(dtype, rng):
    case = next(c for c in CONV2D_CASES if c.id == "3x3_p1")
    x, w, b = make_inputs(case, dtype, rng)
    for algorithm in ALGORITHMS:
        assert fastconv.conv2d(x, w, b, **case.kwargs, algorithm=algorithm).dtype == dtype
        assert fastconv.conv2d(x, w, **case.kwargs, algorithm=algorithm).dtype == dtype


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_array_likes(algorithm, rng):
    case = case_for(algorithm, "groups2", "3x3_p1")
    x, w, b = make_inputs(case, np.float64, rng)
    expected = reference.conv2d(x, w, b, **case.kwargs)
    y = fastconv.conv2d(x.tolist(), w.tolist(), b.tolist(), **case.kwargs, algorithm=algorithm)
    assert isinstance(y, np.ndarray) and y.dtype == np.float64
    assert_close(y, expected, np.float64)
    # tuples, and a mix of lists and arrays
    y = fastconv.conv2d(tuple(x.tolist()), w, tuple(b.tolist()), **case.kwargs,
                        algorithm=algorithm)
    assert_close(y, expected, np.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_empty_batch(algorithm, dtype):
    x = np.zeros((0, 4, 9, 8), dtype)
    w = np.ones((6, 2, 3, 3), dtype)
    b = np.ones(6, dtype)
    stride = 2 if supports(algorithm, Conv2dCase("s2", 0, 4, 9, 8, 6, 3, 3, stride=2,
                                                  groups=2)) else 1
    shape = (0, 6, 5, 4) if stride == 2 else (0, 6, 9, 8)
    y = fastconv.conv2d(x, w, b, stride=stride, padding=1, groups=2, algorithm=algorithm)
    assert y.shape == shape
    assert y.dtype == dtype
    out = np.empty(shape, dtype)
    assert fastconv.conv2d(x, w, b, stride=stride, padding=1, groups=2, algorithm=algorithm,
                           out=out) is out


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_nan_and_inf_propagate_like_the_definition(algorithm):
    # config.FASTMATH leaves out the no-NaN/no-Inf flags so that they propagate
    x = np.zeros((1, 2, 7, 7), np.float32)
    x[0, 0, 1, 2] = np.nan
    x[0, 1, 5, 5] = np.inf
    w = np.ones((3, 2, 3, 3), np.float32)
    w[1] = 0.0  # 0 * nan is nan, 0 * inf is nan
    with np.errstate(invalid="ignore"):  # the reference's numpy warns on 0 * inf
        y = fastconv.conv2d(x, w, padding=1, algorithm=algorithm)
        expected = reference.conv2d(x, w, padding=1)
    # every algorithm, Winograd included (it recomputes tile rows with non-finite sums)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(expected))
    assert np.isnan(y[0, 1, 1, 2]) and np.isinf(y[0, 0, 5, 5]) and y[0, 0, 3, 0] == 0


# --- out= ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm, case", algorithm_case_params(
    ALGORITHMS, [c for c in CONV2D_CASES if c.id in
                 ("3x3_s2_p1", "3x3_p1", "1x1", "depthwise_3x3", "unbatched_3x3", "deep_c24")]))
def test_out_c_contiguous(algorithm, case, dtype, rng):
    x, w, b = make_inputs(case, dtype, rng)
    out = np.full(expected_output_shape(case), np.nan, dtype)  # stale values must not leak
    y = fastconv.conv2d(x, w, b, **case.kwargs, algorithm=algorithm, out=out)
    assert y is out
    assert_close(out, reference.conv2d(x, w, b, **case.kwargs), dtype)


@pytest.mark.parametrize("algorithm, case", algorithm_case_params(
    ALGORITHMS, [c for c in CONV2D_CASES if c.id in ("3x3_s2_p1", "3x3_p1", "unbatched_3x3")]))
def test_out_non_contiguous_view(algorithm, case, rng):
    dtype = np.float64
    x, w, b = make_inputs(case, dtype, rng)
    shape = expected_output_shape(case)
    sentinel = -12345.0
    big = np.full((*shape[:-1], 2 * shape[-1]), sentinel, dtype)
    out = big[..., 1::2]
    assert not out.flags.c_contiguous
    y = fastconv.conv2d(x, w, b, **case.kwargs, algorithm=algorithm, out=out)
    assert y is out
    assert_close(out, reference.conv2d(x, w, b, **case.kwargs), dtype)
    assert np.all(big[..., 0::2] == sentinel), "wrote outside the out view"

    transposed = np.full(shape[::-1], np.nan, dtype).T  # Fortran-ordered out
    y = fastconv.conv2d(x, w, b, **case.kwargs, algorithm=algorithm, out=transposed)
    assert y is transposed
    assert_close(transposed, out, dtype)


# --- hypothesis ---------------------------------------------------------------------


@st.composite
def conv2d_configs(draw, winograd=False):
    """A random valid conv2d problem: shapes, every argument form, dtype and a data seed
    (``winograd``: only the 3x3, stride-1, dilation-1 problems Winograd computes)."""
    groups = draw(st.integers(1, 3))
    c = groups * draw(st.integers(1, 3))
    k = groups * draw(st.integers(1, 3))
    if winograd:
        r, s, stride, dilation = 3, 3, 1, 1
    else:
        r, s = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        stride = draw(st.one_of(st.integers(1, 3),
                                st.tuples(st.integers(1, 3), st.integers(1, 3))))
        dilation = draw(st.one_of(st.integers(1, 3),
                                  st.tuples(st.integers(1, 3), st.integers(1, 3))))
    pad = st.integers(0, 3)
    padding = draw(st.one_of(
        pad, st.tuples(pad, pad), st.tuples(st.tuples(pad, pad), st.tuples(pad, pad)),
        st.sampled_from(["valid", "same"]),
    ))
    d_h, d_w = dilation if isinstance(dilation, tuple) else (dilation, dilation)
    if padding == "same":
        min_h, min_w = 1, 1
    else:
        (top, bottom), (left, right) = explicit_padding(padding, (1, 1), (r, s), stride, dilation)
        min_h = max(1, d_h * (r - 1) + 1 - top - bottom)
        min_w = max(1, d_w * (s - 1) + 1 - left - right)
    h = draw(st.integers(min_h, min_h + 8))
    w = draw(st.integers(min_w, min_w + 8))
    n = draw(st.sampled_from([None, 1, 2, 3]))
    case = Conv2dCase("hypothesis", n, c, h, w, k, r, s, stride=stride, padding=padding,
                      dilation=dilation, groups=groups, bias=draw(st.booleans()))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    return case, dtype, seed


@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a != "reference"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_hypothesis_matches_reference(algorithm, data):
    general = supports(algorithm, Conv2dCase("5x5_s2", 1, 1, 9, 9, 1, 5, 5, stride=2))
    case, dtype, seed = data.draw(conv2d_configs(winograd=not general))
    x, w, b = make_inputs(case, dtype, np.random.default_rng(seed))
    y = fastconv.conv2d(x, w, b, **case.kwargs, algorithm=algorithm)
    assert y.dtype == np.dtype(dtype)
    assert y.shape == expected_output_shape(case)
    assert_close(y, reference.conv2d(x, w, b, **case.kwargs), dtype)


@settings(max_examples=40, deadline=None)
@given(config=conv2d_configs())
def test_hypothesis_reference_matches_torch(config):
    """The spec itself, and the test's padding oracle, against PyTorch."""
    case, dtype, seed = config
    x, w, b = make_inputs(case, dtype, np.random.default_rng(seed))
    expected = torch_conv2d(x, w, b, **case.kwargs)
    for algorithm in ("reference", "auto"):
        y = fastconv.conv2d(x, w, b, **case.kwargs, algorithm=algorithm)
        assert y.shape == expected.shape
        assert_close(y, expected, dtype)


# --- zero input channels and PyTorch's one-element argument forms -----------------------------


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("batch", [(2,), ()], ids=["batched", "unbatched"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_zero_input_channels_give_the_bias(algorithm, batch, groups, rng):
    # C = 0: each output is a sum over no channels plus its bias, (N, K, H_out, W_out) of
    # bias[k] (zeros without a bias), which is what the reference computes. PyTorch 2.13
    # returns an empty (N, 0, H_out, W_out) tensor here, dropping K: fastconv keeps K.
    x = np.zeros((*batch, 0, 7, 6), np.float32)
    if algorithm == "winograd":  # its only problems: 3x3, stride 1
        w, args, shape = np.zeros((4, 0, 3, 3), np.float32), (1, 1, 1, groups), (4, 7, 6)
    else:
        w, args, shape = np.zeros((4, 0, 3, 2), np.float32), (2, (1, 0), 1, groups), (4, 4, 3)
    shape = (*batch, *shape)
    b = rng.uniform(-1, 1, 4).astype(np.float32)
    y = fastconv.conv2d(x, w, b, *args, algorithm=algorithm)
    assert y.shape == shape and y.dtype == np.float32
    np.testing.assert_array_equal(y, np.broadcast_to(b[:, None, None], shape))
    np.testing.assert_array_equal(y, reference.conv2d(x, w, b, *args))
    assert not fastconv.conv2d(x, w, None, *args, algorithm=algorithm).any()
    out = np.full(shape, 9.0, np.float32)
    assert fastconv.conv2d(x, w, b, *args, algorithm=algorithm, out=out) is out
    np.testing.assert_array_equal(out, y)
    grad_output = rng.uniform(-1, 1, shape).astype(np.float32)
    gx, gw, gb = fastconv.conv2d_backward(grad_output, x, w, *args, algorithm=algorithm)
    assert gx.shape == x.shape and gw.shape == w.shape and gx.dtype == gw.dtype == np.float32
    np.testing.assert_allclose(gb, grad_output.reshape(-1, *shape[-3:]).sum(axis=(0, 2, 3)),
                               rtol=1e-5, atol=1e-6)
    assert fastconv.conv2d_backward(grad_output, x, w, *args, needs_input_grad=False,
                                    needs_bias_grad=False)[::2] == (None, None)


def test_zero_input_channels_shapes_match_torch_where_torch_keeps_k():
    torch = pytest.importorskip("torch")
    # the spatial size and the errors are PyTorch's: an empty batch of zero channels
    for padding in (0, 1, "same"):
        y = torch.nn.functional.conv2d(torch.zeros(0, 0, 5, 5), torch.zeros(3, 0, 3, 3),
                                       padding=padding)
        assert fastconv.conv2d(np.zeros((0, 0, 5, 5)), np.zeros((3, 0, 3, 3)),
                               padding=padding).shape[2:] == tuple(y.shape[2:])
    with pytest.raises(RuntimeError):
        torch.nn.functional.conv2d(torch.zeros(1, 0, 2, 2), torch.zeros(3, 0, 3, 3))
    with pytest.raises(ValueError, match="larger than the padded input"):
        fastconv.conv2d(np.zeros((1, 0, 2, 2)), np.zeros((3, 0, 3, 3)))


@pytest.mark.parametrize("kwargs, same", [
    (dict(stride=(2,)), dict(stride=2)),
    (dict(stride=[2]), dict(stride=2)),
    (dict(padding=(1,)), dict(padding=1)),
    (dict(dilation=(2,)), dict(dilation=2)),
    (dict(stride=(np.int64(2),), padding=[np.int32(1)]), dict(stride=2, padding=1)),
])
def test_one_element_tuples_mean_both_axes_as_in_torch(kwargs, same, rng):
    x = rng.uniform(-1, 1, (2, 3, 9, 8)).astype(np.float32)
    w = rng.uniform(-1, 1, (4, 3, 3, 3)).astype(np.float32)
    y = fastconv.conv2d(x, w, **kwargs)
    np.testing.assert_array_equal(y, fastconv.conv2d(x, w, **same))
    assert_close(y, torch_conv2d(x, w, None, **kwargs), np.float32)
    dy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    for got, want in zip(fastconv.conv2d_backward(dy, x, w, **kwargs),
                         fastconv.conv2d_backward(dy, x, w, **same), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape, wshape, kwargs", [
    ((3, 6, 25, 19), (12, 1, 3, 3), dict(stride=2, padding=1, groups=6)),
    ((2, 4, 17, 21), (4, 1, 5, 5), dict(stride=(2, 3), padding=2, dilation=(2, 1), groups=4)),
    ((2, 3, 30, 30), (3, 1, 7, 7), dict(stride=2, padding=((3, 1), (2, 3)), groups=3)),
    # stride 1, any kernel but 3x3: its rows copied, each filter four vectors at a time
    ((2, 5, 23, 29), (10, 1, 5, 5), dict(padding=2, groups=5)),
    ((2, 3, 14, 40), (3, 1, 1, 7), dict(padding=(0, 6), dilation=(1, 2), groups=3)),
], ids=["3x3_s2_x2", "5x5_s23_dil21", "7x7_s2_asym", "5x5_s1_x2", "1x7_s1_dil2"])
def test_depthwise_phases_in_bands_on_threads(shape, wshape, kwargs, dtype, monkeypatch, rng):
    # the direct algorithm's depthwise kernel for strided layers and kernels other than
    # 3x3 (the input's rows, at a stride dealt into phases; each filter's taps in one
    # pass): bands of 3 output rows, the last shorter, spread over every thread, with
    # the bias and the ReLU floor; against the reference
    from fastconv.cpu import strips, threads

    bands = []

    def three_rows(n_rows, fixed, per_row, item):
        bands.append(min(n_rows, 3))
        return bands[-1]

    monkeypatch.setattr(strips, "band_rows", three_rows)
    monkeypatch.setattr(threads, "SERIAL_MAX_WORK", 0)
    no_whole_planes(monkeypatch)  # (5x5_s1_x2 would run on whole planes)
    fastconv.clear_plans()
    x = rng.uniform(-1.0, 1.0, shape).astype(dtype)
    w = rng.uniform(-1.0, 1.0, wshape).astype(dtype)
    b = rng.uniform(-1.0, 1.0, wshape[0]).astype(dtype)
    for activation in (None, "relu"):
        y = fastconv.conv2d(x, w, b, **kwargs, algorithm="direct", activation=activation)
        assert_close(y, reference.conv2d(x, w, b, **kwargs, activation=activation), dtype)
        assert y.shape[2] % 3 != 0  # a last band shorter than the others
    assert bands == [3, 3]  # the depthwise kernel ran, in bands
    fastconv.clear_plans()
