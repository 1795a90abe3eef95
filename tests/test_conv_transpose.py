"""fastconv.conv_transpose2d and conv_transpose2d_backward: every algorithm x a case table
of their own x dtypes, against the reference (the spec) and against PyTorch (forward with
``nn.ConvTranspose2d``, whose ``output_size`` logic is torch's own, and every gradient by
autograd), plus output_size, layouts, empty batches, bad arguments, finite differences
and hypothesis-generated configurations.

Tolerances: outputs and grad_input sum few products per value and use
:func:`tests.cases.tolerance`; grad_weight and grad_bias sum N * H * W or
N * H_out * W_out terms and use :func:`tests.cases.sum_tolerance`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import config, reference
from tests.cases import (
    CONV2D_CASES,
    DTYPES,
    Padding,
    explicit_padding,
    general_algorithms,
    make_inputs,
    relayout,
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

#: The algorithms every kernel of the op has, for every problem (Winograd computes only
#: 3x3 stride-1 problems: tested on those on its own).
ALGORITHMS = general_algorithms("conv2d_grad_input", "conv2d_grad_weight", "conv2d")
DTYPE_IDS = [np.dtype(d).name for d in DTYPES]


def test_algorithm_lists():
    # conv_transpose2d runs conv2d's grad_input kernels; its backward runs conv2d's
    # forward and grad_weight kernels under the same names
    expected = {"auto", "direct", "im2col", "reference"}
    assert expected <= set(ALGORITHMS)
    assert expected <= set(fastconv.available_algorithms("conv2d"))
    assert expected <= set(fastconv.available_algorithms("conv2d_grad_weight"))


def _two(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class TransposeCase(NamedTuple):
    """One conv_transpose2d problem: input ``(n, c_in, h, w)`` (``n=None``: unbatched),
    weight ``(c_in, c_out // groups, r, s)``, optional bias ``(c_out,)``."""

    id: str
    n: int | None
    c_in: int
    h: int
    w: int
    c_out: int
    r: int
    s: int
    stride: int | tuple[int, int] = 1
    padding: Padding = 0
    output_padding: int | tuple[int, int] = 0
    groups: int = 1
    dilation: int | tuple[int, int] = 1
    bias: bool = True
    output_size: tuple[int, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        chw = (self.c_in, self.h, self.w)
        return chw if self.n is None else (self.n, *chw)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.c_in, self.c_out // self.groups, self.r, self.s)

    @property
    def kwargs(self) -> dict:
        return {"stride": self.stride, "padding": self.padding,
                "output_padding": self.output_padding, "groups": self.groups,
                "dilation": self.dilation, "output_size": self.output_size}

    @property
    def pads(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return explicit_padding(self.padding, (self.h, self.w), (self.r, self.s), self.stride,
                                self.dilation)

    @property
    def smallest(self) -> tuple[int, int]:
        """``(H - 1) * stride - pad_total + dilation * (R - 1) + 1`` per axis."""
        return tuple(
            (n - 1) * s - sum(p) + d * (k - 1) + 1
            for n, s, p, d, k in zip((self.h, self.w), _two(self.stride), self.pads,
                                     _two(self.dilation), (self.r, self.s), strict=False)
        )

    @property
    def output_shape(self) -> tuple[int, ...]:
        """From the documented formula: ``smallest + output_padding``, or ``output_size``."""
        if self.output_size is not None:
            size = tuple(self.output_size[-2:])
        else:
            size = tuple(m + op for m, op in zip(self.smallest, _two(self.output_padding),
                                                 strict=False))
        return (self.c_out, *size) if self.n is None else (self.n, self.c_out, *size)


T = TransposeCase
TRANSPOSE_CASES: list[TransposeCase] = [
    T("1x1", 2, 3, 5, 5, 4, 1, 1),
    T("3x3", 2, 3, 5, 6, 4, 3, 3),
    T("3x3_p1_nobias", 1, 2, 6, 5, 3, 3, 3, padding=1, bias=False),
    # the decoder layer N8 C128 16x16 -> 64 channels, 4x4 kernel, s2 p1, made small
    T("4x4_s2_p1", 2, 16, 6, 6, 8, 4, 4, stride=2, padding=1),
    T("3x3_s2_p1_op1", 2, 3, 5, 5, 2, 3, 3, stride=2, padding=1, output_padding=1),
    T("3x3_s3_op2", 1, 2, 4, 4, 3, 3, 3, stride=3, output_padding=2),
    T("2x2_s3_gaps", 1, 2, 4, 3, 2, 2, 2, stride=3),
    T("1x1_s2_op1", 2, 3, 4, 5, 2, 1, 1, stride=2, output_padding=1),
    T("s32_pad10_op21", 1, 2, 5, 4, 3, 3, 2, stride=(3, 2), padding=(1, 0),
      output_padding=(2, 1)),
    T("5x3_s2_pad21", 1, 3, 6, 6, 2, 5, 3, stride=2, padding=(2, 1)),
    T("pad_crops_most", 1, 2, 4, 4, 2, 3, 3, padding=2),
    T("nonsquare_5x2_s12", 1, 2, 4, 6, 3, 5, 2, stride=(1, 2), padding=(2, 0)),
    T("input_1x1_s2", 2, 3, 1, 1, 2, 4, 4, stride=2),
    T("c1_k1", 1, 1, 5, 5, 1, 3, 3),
    T("deep_c24_s2", 1, 24, 5, 5, 8, 3, 3, stride=2, padding=1),
    # output_size: a pair, and a full 4-D shape
    T("output_size_pair", 2, 2, 5, 5, 3, 3, 3, stride=2, padding=1, output_size=(10, 9)),
    T("output_size_4d", 1, 2, 4, 5, 3, 3, 3, stride=3, padding=1, output_size=(1, 3, 12, 13)),
    T("output_size_list_overrides_op", 1, 2, 4, 4, 2, 4, 4, stride=2, padding=1,
      output_padding=1, output_size=[8, 8]),
    # dilation; output_padding may reach up to max(stride, dilation) - 1
    T("dil2_p2", 2, 2, 5, 5, 3, 3, 3, padding=2, dilation=2),
    T("dil2_s1_op1", 1, 2, 5, 5, 2, 3, 3, dilation=2, output_padding=1),
    T("dil21_s2_op1", 1, 2, 4, 5, 2, 3, 2, stride=2, padding=1, dilation=(2, 1),
      output_padding=(1, 1)),
    T("dil3_s2_op2", 1, 2, 4, 4, 2, 2, 2, stride=2, dilation=3, output_padding=2),
    # groups
    T("groups2", 2, 4, 5, 5, 6, 3, 3, padding=1, groups=2),
    T("groups2_s2_op1_nobias", 1, 4, 4, 5, 4, 3, 3, stride=2, padding=1, output_padding=1,
      groups=2, bias=False),
    T("groups3_1x1", 2, 6, 4, 4, 3, 1, 1, groups=3),
    T("depthwise", 2, 4, 5, 5, 4, 3, 3, padding=1, groups=4),
    T("depthwise_x2_s2", 1, 3, 4, 4, 6, 4, 4, stride=2, padding=1, groups=3),
    # unbatched
    T("unbatched_s2", None, 3, 4, 5, 2, 3, 3, stride=2, padding=1),
    T("unbatched_output_size", None, 2, 4, 4, 3, 3, 3, stride=2, output_size=(10, 9)),
    T("unbatched_depthwise_nobias", None, 3, 5, 5, 3, 3, 3, groups=3, bias=False),
    # ((top, bottom), (left, right)): no torch form; the oracle crops torch's full output
    T("pad_asym_s2", 1, 2, 5, 5, 3, 3, 3, stride=2, padding=((0, 2), (1, 0))),
    T("pad_asym_op1", 1, 2, 4, 4, 2, 3, 3, stride=2, padding=((1, 0), (0, 1)),
      output_padding=1),
]
CASE_IDS = [c.id for c in TRANSPOSE_CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS), "case ids must be unique"


def transpose_cases(*ids: str) -> list[TransposeCase]:
    table = {case.id: case for case in TRANSPOSE_CASES}
    return [table[i] for i in ids]


def make_transpose_inputs(case: TransposeCase, dtype, rng):
    """Fresh ``(x, w, b, grad_output)``, uniform in [-1, 1] (``b`` None without bias)."""
    x = rng.uniform(-1.0, 1.0, case.input_shape).astype(dtype)
    w = rng.uniform(-1.0, 1.0, case.weight_shape).astype(dtype)
    b = rng.uniform(-1.0, 1.0, case.c_out).astype(dtype) if case.bias else None
    g = rng.uniform(-1.0, 1.0, case.output_shape).astype(dtype)
    return x, w, b, g


def assert_output_close(actual, expected, dtype):
    assert actual.dtype == np.dtype(dtype)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, **tolerance(dtype))


def torch_conv_transpose2d(case: TransposeCase, x, w, b, grad_output):
    """``(output, grad_input, grad_weight, grad_bias)`` from PyTorch (a zero bias where
    ``b`` is None, for grad_bias).

    Int and pair padding go to ``torch.nn.ConvTranspose2d`` (its forward takes
    ``output_size`` and picks the output padding itself); ``((top, bottom), (left, right))``
    has no torch form, so the full output (padding 0) is zero-extended at the bottom/right
    and cropped, which is that padding's documented meaning.
    """
    torch = pytest.importorskip("torch")
    tx = torch.from_numpy(np.array(x)).requires_grad_()
    tw = torch.from_numpy(np.array(w)).requires_grad_()
    tb = torch.from_numpy(np.zeros(case.c_out, x.dtype) if b is None else np.array(b))
    tb.requires_grad_()
    stride, dilation = _two(case.stride), _two(case.dilation)
    padding = case.padding
    if isinstance(padding, (tuple, list)) and all(isinstance(p, (tuple, list)) for p in padding):
        (top, _), (left, _) = padding
        out_h, out_w = case.output_shape[-2:]
        full = torch.nn.functional.conv_transpose2d(tx, tw, None, stride, 0, 0, case.groups,
                                                    dilation)
        extend = (0, max(0, left + out_w - full.shape[-1]), 0, max(0, top + out_h - full.shape[-2]))
        y = torch.nn.functional.pad(full, extend)[..., top:top + out_h, left:left + out_w]
        y = y + tb[:, None, None]
    else:
        layer = torch.nn.ConvTranspose2d(
            case.c_in, case.c_out, (case.r, case.s), stride, _two(padding),
            _two(case.output_padding), case.groups, True, dilation,
            dtype=tx.dtype,
        )
        layer.weight = torch.nn.Parameter(tw)
        layer.bias = torch.nn.Parameter(tb)
        output_size = None if case.output_size is None else list(case.output_size)
        y = layer(tx, output_size=output_size)
        tw, tb = layer.weight, layer.bias
    y.backward(torch.from_numpy(np.array(grad_output)))
    return y.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()


def test_case_table_shapes_match_torch(rng):
    # the table's own shape formula against torch, once per case
    for case in TRANSPOSE_CASES:
        x, w, b, g = make_transpose_inputs(case, np.float64, rng)
        assert torch_conv_transpose2d(case, x, w, b, g)[0].shape == case.output_shape, case.id


def test_torch_oracle_crops_like_torch_for_symmetric_padding(rng):
    # The asymmetric-padding oracle (crop of the full output), checked against
    # torch's own padding and output_padding where both apply.
    case = transpose_cases("3x3_s2_p1_op1")[0]
    x, w, b, g = make_transpose_inputs(case, np.float64, rng)
    as_pairs = case._replace(padding=((1, 1), (1, 1)))
    for a, e in zip(torch_conv_transpose2d(as_pairs, x, w, b, g),
                    torch_conv_transpose2d(case, x, w, b, g), strict=False):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)


# --- the case table -------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_forward_matches_reference(algorithm, case, dtype, rng):
    x, w, b, _ = make_transpose_inputs(case, dtype, rng)
    y = fastconv.conv_transpose2d(x, w, b, **case.kwargs, algorithm=algorithm)
    assert y.shape == case.output_shape
    assert_output_close(y, reference.conv_transpose2d(x, w, b, **case.kwargs), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_backward_matches_reference(algorithm, case, dtype, rng):
    x, w, _, g = make_transpose_inputs(case, dtype, rng)
    grads = fastconv.conv_transpose2d_backward(g, x, w, **case.kwargs, algorithm=algorithm)
    assert grads[0].shape == x.shape and grads[1].shape == w.shape
    assert grads[2].shape == (case.c_out,)
    expected = reference.conv_transpose2d_backward(g, x, w, **case.kwargs)
    assert_grads_close(grads, expected, dtype, g)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_matches_torch(algorithm, case, dtype, rng):
    x, w, b, g = make_transpose_inputs(case, dtype, rng)
    y, *grads = torch_conv_transpose2d(case, x, w, b, g)
    assert_output_close(fastconv.conv_transpose2d(x, w, b, **case.kwargs, algorithm=algorithm),
                        y, dtype)
    assert_grads_close(
        fastconv.conv_transpose2d_backward(g, x, w, **case.kwargs, algorithm=algorithm),
        grads, dtype, g)


@pytest.mark.parametrize("case", transpose_cases("4x4_s2_p1", "s32_pad10_op21", "groups2",
                                                 "dil3_s2_op2", "pad_asym_op1"),
                         ids=lambda c: c.id)
def test_im2col_in_tiles_of_one_row(case, monkeypatch, rng):
    # a 1-byte budget makes every im2col/col2im tile one row: the tile seams are exercised
    monkeypatch.setattr(config, "IM2COL_TILE_BYTES", 1)
    dtype = np.float64
    x, w, b, g = make_transpose_inputs(case, dtype, rng)
    y = fastconv.conv_transpose2d(x, w, b, **case.kwargs, algorithm="im2col")
    assert_output_close(y, reference.conv_transpose2d(x, w, b, **case.kwargs), dtype)
    grads = fastconv.conv_transpose2d_backward(g, x, w, **case.kwargs, algorithm="im2col")
    assert_grads_close(grads, reference.conv_transpose2d_backward(g, x, w, **case.kwargs),
                       dtype, g)


# --- output_size and output_padding -------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_output_size_reaches_every_valid_size(algorithm, rng):
    # stride (3, 2): three heights and two widths are reachable from one input
    base = T("every_size", 1, 2, 3, 4, 3, 3, 3, stride=(3, 2), padding=1)
    (min_h, min_w) = base.smallest
    for extra_h in range(3):
        for extra_w in range(2):
            size = (min_h + extra_h, min_w + extra_w)
            case = base._replace(output_size=size)
            x, w, b, g = make_transpose_inputs(case, np.float64, rng)
            expected = torch_conv_transpose2d(case, x, w, b, g)
            y = fastconv.conv_transpose2d(x, w, b, **case.kwargs, algorithm=algorithm)
            assert y.shape == (1, 3, *size)
            assert_output_close(y, expected[0], np.float64)
            grads = fastconv.conv_transpose2d_backward(g, x, w, **case.kwargs,
                                                       algorithm=algorithm)
            assert_grads_close(grads, expected[1:], np.float64, g)
            # the same size by output_padding
            by_padding = fastconv.conv_transpose2d(
                x, w, b, stride=(3, 2), padding=1, output_padding=(extra_h, extra_w),
                algorithm=algorithm)
            np.testing.assert_array_equal(by_padding, y)


@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
def test_output_size_forms(unbatched, rng):
    # (H, W) as tuple, list or numpy ints, and the full shape with batch and channels
    case = T("forms", None if unbatched else 2, 2, 4, 4, 3, 3, 3, stride=2, output_size=(10, 9))
    x, w, b, _ = make_transpose_inputs(case, np.float64, rng)
    expected = fastconv.conv_transpose2d(x, w, b, stride=2, output_size=(10, 9))
    assert expected.shape == case.output_shape
    full = (3, 10, 9) if unbatched else (2, 3, 10, 9)
    for form in ([10, 9], (np.int64(10), np.int32(9)), full, list(full)):
        y = fastconv.conv_transpose2d(x, w, b, stride=2, output_size=form)
        np.testing.assert_array_equal(y, expected, err_msg=repr(form))
        gx, gw, gb = fastconv.conv_transpose2d_backward(np.ones_like(expected), x, w, stride=2,
                                                        output_size=form)
        assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (3,)


def test_output_padding_beyond_stride_needs_dilation(rng):
    # output_padding < max(stride, dilation): with stride 1 and dilation 3, padding 2 is
    # allowed and adds two rows/columns of bias only
    x, w = rng.uniform(-1, 1, (1, 2, 4, 4)), rng.uniform(-1, 1, (2, 3, 2, 2))
    b = rng.uniform(-1, 1, 3)
    plain = fastconv.conv_transpose2d(x, w, b, dilation=3)
    padded = fastconv.conv_transpose2d(x, w, b, dilation=3, output_padding=2)
    assert padded.shape == (1, 3, plain.shape[2] + 2, plain.shape[3] + 2)
    np.testing.assert_array_equal(padded[:, :, :-2, :-2], plain)
    np.testing.assert_allclose(padded[0, :, -2:, :], np.broadcast_to(b[:, None, None],
                                                                     (3, 2, padded.shape[3])))


# --- identities with conv2d ---------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CONV2D_CASES if c.id in (
    "3x3_s2_p1", "same_s2_dil23", "groups2_s2_dil2_nobias", "pad_asym_large_s2",
    "depthwise_x2_s2", "unbatched_depthwise_same_s2", "1x1_s2_odd")], ids=lambda c: c.id)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_is_conv2d_grad_input(algorithm, case, rng):
    # conv_transpose2d(y, w) == conv2d_backward(y, x, w)[0] with the conv2d's arguments
    x, w, _ = make_inputs(case, np.float64, rng)
    y = fastconv.conv2d(x, w, **case.kwargs)
    y = rng.uniform(-1, 1, y.shape)
    pads = explicit_padding(case.padding, (case.h, case.w), (case.r, case.s), case.stride,
                            case.dilation)
    transposed = fastconv.conv_transpose2d(y, w, None, case.stride, pads, 0, case.groups,
                                           case.dilation, output_size=x.shape,
                                           algorithm=algorithm)
    grad_input = fastconv.conv2d_backward(y, x, w, **case.kwargs, algorithm=algorithm)[0]
    np.testing.assert_allclose(transposed, grad_input, **tolerance(np.float64))


# --- needs_* flags ------------------------------------------------------------------

@pytest.mark.parametrize("flags", NEEDS_FLAG_SETS, ids=flags_id)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_needs_flags(algorithm, flags, rng):
    case = transpose_cases("groups2_s2_op1_nobias")[0]
    x, w, _, g = make_transpose_inputs(case, np.float64, rng)
    got = fastconv.conv_transpose2d_backward(g, x, w, **case.kwargs, algorithm=algorithm,
                                             **dict(zip(NEEDS_FLAGS, flags, strict=False)))
    assert_needs_respected(got, reference.conv_transpose2d_backward(g, x, w, **case.kwargs),
                           flags)


# --- memory layouts, read-only and untouched inputs ------------------------------------


@pytest.mark.parametrize("layout", ["strided", "transposed", "fortran", "reversed"])
@pytest.mark.parametrize("case", transpose_cases("3x3_s2_p1_op1", "groups2", "unbatched_s2"),
                         ids=lambda c: c.id)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_any_memory_layout(algorithm, case, layout, rng):
    dtype = np.float32
    x, w, b, g = make_transpose_inputs(case, dtype, rng)
    xv, wv, gv = (relayout(a, layout, rng) for a in (x, w, g))
    bv = relayout(b, "strided", rng)
    y = fastconv.conv_transpose2d(xv, wv, bv, **case.kwargs, algorithm=algorithm)
    assert_output_close(y, reference.conv_transpose2d(x, w, b, **case.kwargs), dtype)
    assert y.flags.c_contiguous
    grads = fastconv.conv_transpose2d_backward(gv, xv, wv, **case.kwargs, algorithm=algorithm)
    assert_grads_close(grads, reference.conv_transpose2d_backward(g, x, w, **case.kwargs),
                       dtype, g)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_read_only_and_untouched_inputs(algorithm, dtype, rng):
    case = transpose_cases("depthwise_x2_s2")[0]
    x, w, b, g = make_transpose_inputs(case, dtype, rng)
    copies = [a.copy() for a in (x, w, b, g)]
    for array in (x, w, b, g):
        array.setflags(write=False)
    y = fastconv.conv_transpose2d(x, w, b, **case.kwargs, algorithm=algorithm)
    assert_output_close(y, reference.conv_transpose2d(x, w, b, **case.kwargs), dtype)
    grads = fastconv.conv_transpose2d_backward(g, x, w, **case.kwargs, algorithm=algorithm)
    assert_grads_close(grads, reference.conv_transpose2d_backward(g, x, w, **case.kwargs),
                       dtype, g)
    for result in (y, *grads):
        assert result.flags.writeable
        assert not any(np.shares_memory(result, a) for a in (x, w, b, g))
    for before, after in zip(copies, (x, w, b, g), strict=False):
        np.testing.assert_array_equal(after, before)


# --- batch shapes ---------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in TRANSPOSE_CASES if c.n is None], ids=lambda c: c.id)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_unbatched_is_batch_of_one(algorithm, case, rng):
    x, w, b, g = make_transpose_inputs(case, np.float64, rng)
    y = fastconv.conv_transpose2d(x, w, b, **case.kwargs, algorithm=algorithm)
    assert y.shape == case.output_shape and y.ndim == 3
    batched = fastconv.conv_transpose2d(x[None], w, b, **case.kwargs, algorithm=algorithm)
    np.testing.assert_allclose(y, batched[0], **tolerance(np.float64))
    grads = fastconv.conv_transpose2d_backward(g, x, w, **case.kwargs, algorithm=algorithm)
    assert grads[0].shape == x.shape
    bx, bw, bb = fastconv.conv_transpose2d_backward(g[None], x[None], w, **case.kwargs,
                                                    algorithm=algorithm)
    for a, e in zip(grads, (bx[0], bw, bb), strict=False):
        np.testing.assert_allclose(a, e, **tolerance(np.float64))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_empty_batch(algorithm, dtype):
    x = np.zeros((0, 4, 5, 4), dtype)
    w = np.ones((4, 3, 3, 3), dtype)
    b = np.ones(6, dtype)
    y = fastconv.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1, groups=2,
                                  algorithm=algorithm)
    assert y.shape == (0, 6, 10, 8) and y.dtype == dtype
    gx, gw, gb = fastconv.conv_transpose2d_backward(
        np.zeros((0, 6, 10, 8), dtype), x, w, stride=2, padding=1, output_padding=1, groups=2,
        algorithm=algorithm)
    assert gx.shape == x.shape and gx.dtype == dtype
    assert gw.shape == w.shape and gw.dtype == dtype
    assert gb.shape == (6,) and gb.dtype == dtype
    assert not gw.any() and not gb.any()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_same_bits_on_every_run(algorithm, rng):
    case = T("det", 4, 8, 7, 6, 6, 4, 4, stride=2, padding=1, groups=2)
    x, w, _, g = make_transpose_inputs(case, np.float32, rng)
    first = fastconv.conv_transpose2d_backward(g, x, w, **case.kwargs, algorithm=algorithm)
    other = transpose_cases("deep_c24_s2")[0]
    ox, ow, _, og = make_transpose_inputs(other, np.float32, rng)
    fastconv.conv_transpose2d_backward(og, ox, ow, **other.kwargs, algorithm=algorithm)
    second = fastconv.conv_transpose2d_backward(g, x, w, **case.kwargs, algorithm=algorithm)
    for name, a, b in zip(GRAD_NAMES, first, second, strict=False):
        np.testing.assert_array_equal(a, b, err_msg=name)


# --- finite differences ---------------------------------------------------------------

FD_CASES = [
    T("fd_s2_p1_op1", 2, 2, 3, 3, 2, 3, 3, stride=2, padding=1, output_padding=1),
    T("fd_groups_dil2", None, 4, 3, 4, 2, 2, 3, stride=(2, 1), groups=2, dilation=2),
    T("fd_output_size_asym", 1, 2, 3, 3, 3, 3, 2, stride=3, padding=((1, 0), (0, 1)),
      output_size=(10, 8)),
]


@pytest.mark.parametrize("case", FD_CASES, ids=lambda c: c.id)
def test_finite_differences(case, rng):
    # L = sum(conv_transpose2d(x, w, b) * G) is linear in each of x, w and b: central
    # differences are exact but for rounding
    x, w, b, g = make_transpose_inputs(case, np.float64, rng)

    def loss():
        return float(np.sum(reference.conv_transpose2d(x, w, b, **case.kwargs) * g))

    numeric = [numeric_gradient(loss, a) for a in (x, w, b)]
    for algorithm in ALGORITHMS:
        grads = fastconv.conv_transpose2d_backward(g, x, w, **case.kwargs, algorithm=algorithm)
        for name, a, e in zip(GRAD_NAMES, grads, numeric, strict=False):
            np.testing.assert_allclose(a, e, rtol=1e-7, atol=1e-9,
                                       err_msg=f"{name} ({algorithm})")


# --- bad arguments ------------------------------------------------------------------


def base_arguments(rng, dtype=np.float32):
    """Valid arguments: input (1, 2, 4, 4), weight (2, 3, 3, 3), bias (3,), stride 2,
    padding 1: the output is (1, 3, 7, 7) and output_size may be 7 or 8 per axis."""
    return {
        "input": rng.uniform(-1, 1, (1, 2, 4, 4)).astype(dtype),
        "weight": rng.uniform(-1, 1, (2, 3, 3, 3)).astype(dtype),
        "bias": rng.uniform(-1, 1, 3).astype(dtype),
        "stride": 2,
        "padding": 1,
    }


F32, F64 = np.float32, np.float64
zeros = np.zeros
UNREACHABLE = r"output_size {} is not reachable: .*each output size must lie in {}"
RANGE_7_8 = r"\[7, 8\] x \[7, 8\]"
OP_LIMIT = r"output_padding must be smaller than stride or dilation in each dimension, got "
PAD_FORMS = (r"padding of conv_transpose2d must be an int, a pair \(pad_h, pad_w\) or "
             r"\(\(top, bottom\), \(left, right\)\), got ")
GRAD_SHAPE = r"grad_output must have the shape of conv_transpose2d's output, "


def err(error, match, applies="both", **overrides):
    """A bad call for ``applies``: "forward", "backward" or "both" (the backward call drops
    bias and passes a grad_output of the valid output's shape)."""
    return error, match, applies, overrides


ERRORS = {
    # --- output_size ---
    "output_size_too_large": err(ValueError, UNREACHABLE.format(r"\(9, 8\)", RANGE_7_8),
                                 output_size=(9, 8)),
    "output_size_too_small": err(ValueError, UNREACHABLE.format(r"\(6, 7\)", RANGE_7_8),
                                 output_size=(6, 7)),
    "output_size_one_axis": err(ValueError, UNREACHABLE.format(r"\(7, 9\)", RANGE_7_8),
                                output_size=(7, 9)),
    "output_size_4d": err(ValueError, UNREACHABLE.format(r"\(1, 3, 10, 7\)", RANGE_7_8),
                          output_size=(1, 3, 10, 7)),
    "output_size_stride_1": err(ValueError, UNREACHABLE.format(r"\(5, 4\)", r"\[4, 4\] x \[4, 4\]"),
                                stride=1, output_size=(5, 4)),
    "output_size_stride_pair": err(
        ValueError, UNREACHABLE.format(r"\(13, 7\)", r"\[10, 12\] x \[7, 8\]"),
        stride=(3, 2), output_size=(13, 7)),
    "output_size_length_1": err(ValueError, r"output_size must be an int or a pair of ints.*\(8,\)",
                                output_size=(8,)),
    "output_size_length_5": err(ValueError, r"output_size must be an int or a pair of ints",
                                output_size=(1, 1, 3, 8, 8)),
    "output_size_float": err(TypeError, r"output_size must be an int or a pair of ints.*7\.5",
                             output_size=(7.5, 8)),
    "output_size_str": err(TypeError, r"output_size must be an int or a pair of ints",
                           output_size="88"),
    # --- output_padding ---
    "output_padding_eq_stride": err(
        ValueError, OP_LIMIT + r"output_padding=2 with stride \(2, 2\) and dilation \(1, 1\)",
        output_padding=2),
    "output_padding_one_axis": err(
        ValueError, OP_LIMIT + r"output_padding=\(0, 2\) with stride \(2, 2\)",
        output_padding=(0, 2)),
    "output_padding_eq_dilation": err(
        ValueError, OP_LIMIT + r"output_padding=2 with stride \(1, 1\) and dilation \(2, 2\)",
        stride=1, dilation=2, output_padding=2),
    "output_padding_negative": err(
        ValueError, r"output_padding must be an int or a pair of ints, each non-negative, got -1",
        output_padding=-1),
    "output_padding_float": err(TypeError, r"output_padding must be an int or a pair of ints",
                                output_padding=1.0),
    # --- padding ---
    "padding_same": err(ValueError, PAD_FORMS + r"'same'", padding="same"),
    "padding_valid": err(ValueError, PAD_FORMS + r"'valid'", padding="valid"),
    "padding_negative": err(ValueError, r"padding must be .*got -1", padding=-1),
    "padding_crops_everything": err(
        ValueError, r"conv_transpose2d output would be \(-1, -1\): padding", padding=5),
    # --- shapes, channels and groups ---
    "input_2d": err(ValueError, r"input must be 4-D \(N, C_in, H, W\) or 3-D \(C_in, H, W\), "
                    r"got shape \(4, 4\)", input=zeros((4, 4), F32)),
    "weight_3d": err(ValueError, r"weight must be 4-D \(C_in, C_out/groups, R, S\), "
                     r"got shape \(2, 3, 3\)", weight=zeros((2, 3, 3), F32)),
    "weight_in_conv2d_layout": err(
        ValueError, r"weight\.shape\[0\] must be the input channels C_in=2 .*"
        r"got weight of shape \(3, 2, 3, 3\)", weight=zeros((3, 2, 3, 3), F32)),
    "weight_empty": err(ValueError, r"weight must have no empty dimension.*\(2, 3, 0, 3\)",
                        weight=zeros((2, 3, 0, 3), F32)),
    "input_empty_channels": err(ValueError, r"input must have non-empty C_in, H and W",
                                input=zeros((1, 2, 0, 4), F32)),
    "groups_not_dividing_C_in": err(
        ValueError, r"groups=2 must divide the input channels C_in=3",
        input=zeros((1, 3, 4, 4), F32), weight=zeros((3, 3, 3, 3), F32), groups=2),
    "groups_0": err(ValueError, r"groups must be a positive int, got 0", groups=0),
    "groups_float": err(TypeError, r"groups must be a positive int, got 2\.0", groups=2.0),
    "stride_0": err(ValueError, r"stride must be an int or a pair of ints, each positive, got 0",
                    stride=0),
    "dilation_pair_0": err(ValueError, r"dilation must be .*positive, got \(1, 0\)",
                           dilation=(1, 0)),
    # --- bias (forward only) ---
    "bias_length": err(ValueError, r"bias must have shape \(C_out,\) = \(3,\), got \(2,\)",
                       "forward", bias=zeros(2, F32)),
    "bias_length_groups": err(ValueError, r"bias must have shape \(C_out,\) = \(6,\), got \(3,\)",
                              "forward", groups=2, input=zeros((1, 2, 4, 4), F32),
                              weight=zeros((2, 3, 3, 3), F32)),
    "bias_2d": err(ValueError, r"bias must be 1-D \(C_out,\), got shape \(3, 1\)",
                   "forward", bias=zeros((3, 1), F32)),
    "bias_f64": err(TypeError, r"bias has dtype float64 but input has dtype float32", "forward",
                    bias=zeros(3, F64)),
    # --- dtypes ---
    "input_int": err(TypeError, r"input must have dtype float32 or float64, got int64; convert "
                     r"it first, e\.g\. input\.astype\(np\.float32\)",
                     input=zeros((1, 2, 4, 4), np.int64)),
    "weight_int": err(TypeError, r"weight must have dtype float32 or float64, got int32.*"
                      r"weight\.astype\(np\.float32\)", weight=zeros((2, 3, 3, 3), np.int32)),
    "weight_f64": err(TypeError, r"weight has dtype float64 but (input|grad_output) has dtype "
                      r"float32.*weight\.astype\(np\.float32\)", weight=zeros((2, 3, 3, 3), F64)),
    "input_f64": err(TypeError, r"has dtype float(32|64) but (input|grad_output) has dtype",
                     input=zeros((1, 2, 4, 4), F64)),
    "input_complex": err(TypeError, r"input must have dtype float32 or float64, got complex64",
                         input=zeros((1, 2, 4, 4), np.complex64)),
    "input_none": err(TypeError, r"input must be a numpy\.ndarray.*got NoneType", input=None),
    # --- algorithm ---
    "algorithm_unknown": err(ValueError, r"unknown algorithm 'fft'.*available: auto, ",
                             algorithm="fft"),
    # --- grad_output (backward only) ---
    "grad_output_spatial": err(ValueError, GRAD_SHAPE + r"\(1, 3, 7, 7\), got \(1, 3, 8, 8\)",
                               "backward", grad_output=zeros((1, 3, 8, 8), F32)),
    "grad_output_for_output_padding": err(
        ValueError, GRAD_SHAPE + r"\(1, 3, 8, 8\), got \(1, 3, 7, 7\)", "backward",
        output_padding=1),
    "grad_output_for_output_size": err(
        ValueError, GRAD_SHAPE + r"\(1, 3, 8, 7\), got \(1, 3, 7, 7\)", "backward",
        output_size=(8, 7)),
    "grad_output_channels": err(ValueError, GRAD_SHAPE + r"\(1, 3, 7, 7\), got \(1, 2, 7, 7\)",
                                "backward", grad_output=zeros((1, 2, 7, 7), F32)),
    "grad_output_unbatched": err(ValueError, GRAD_SHAPE + r"\(1, 3, 7, 7\), got \(3, 7, 7\)",
                                 "backward", grad_output=zeros((3, 7, 7), F32)),
    "grad_output_batched_for_unbatched": err(
        ValueError, GRAD_SHAPE + r"\(3, 7, 7\), got \(1, 3, 7, 7\)", "backward",
        input=zeros((2, 4, 4), F32)),
    "grad_output_f64": err(TypeError, r"input has dtype float32 but grad_output has dtype "
                           r"float64", "backward", grad_output=zeros((1, 3, 7, 7), F64)),
    "grad_output_int": err(TypeError, r"grad_output must have dtype float32 or float64, got "
                           r"int64.*grad_output\.astype", "backward",
                           grad_output=zeros((1, 3, 7, 7), np.int64)),
    **{f"{name}_int": err(TypeError, rf"{name} must be a bool, got 1", "backward", **{name: 1})
       for name in NEEDS_FLAGS},
}


def _error_names(call: str) -> list[str]:
    return [name for name, (_, _, applies, _) in ERRORS.items() if applies in (call, "both")]


def _raises_and_leaves_arguments(function, kwargs, error, match):
    before = {key: value.copy() for key, value in kwargs.items() if isinstance(value, np.ndarray)}
    with pytest.raises(error, match=match):
        function(**kwargs)
    for key, value in before.items():
        np.testing.assert_array_equal(kwargs[key], value, err_msg=f"{key} was modified")


@pytest.mark.parametrize("name", _error_names("forward"))
def test_error_forward(name, rng):
    error, match, _, overrides = ERRORS[name]
    kwargs = {**base_arguments(rng), **overrides}
    _raises_and_leaves_arguments(fastconv.conv_transpose2d, kwargs, error, match)


@pytest.mark.parametrize("name", _error_names("backward"))
def test_error_backward(name, rng):
    error, match, _, overrides = ERRORS[name]
    kwargs = base_arguments(rng)
    del kwargs["bias"]
    kwargs = {"grad_output": rng.uniform(-1, 1, (1, 3, 7, 7)).astype(F32), **kwargs, **overrides}
    _raises_and_leaves_arguments(fastconv.conv_transpose2d_backward, kwargs, error, match)


def test_valid_base_arguments(rng):
    # the error table's starting point is itself valid, with the sizes its messages quote
    kwargs = base_arguments(rng)
    assert fastconv.conv_transpose2d(**kwargs).shape == (1, 3, 7, 7)
    for size in ((7, 7), (8, 8), (7, 8)):
        assert fastconv.conv_transpose2d(**kwargs, output_size=size).shape == (1, 3, *size)
    del kwargs["bias"]
    grads = fastconv.conv_transpose2d_backward(np.zeros((1, 3, 7, 7), F32), **kwargs)
    assert [g.shape for g in grads] == [(1, 2, 4, 4), (2, 3, 3, 3), (3,)]


# --- hypothesis ---------------------------------------------------------------------


@st.composite
def transpose_configs(draw):
    """A random valid transposed convolution: shapes, every argument form (output_padding
    or output_size), dtype and a data seed."""
    groups = draw(st.integers(1, 3))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    r, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    small = st.integers(1, 3)
    stride = draw(st.one_of(small, st.tuples(small, small)))
    dilation = draw(st.one_of(st.integers(1, 2), st.tuples(st.integers(1, 2), st.integers(1, 2))))
    pad = st.integers(0, 2)
    padding = draw(st.one_of(pad, st.tuples(pad, pad),
                             st.tuples(st.tuples(pad, pad), st.tuples(pad, pad))))
    n = draw(st.sampled_from([None, 1, 2]))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    case = T("hypothesis", n, c_in, h, w, c_out, r, s, stride=stride, padding=padding,
             groups=groups, dilation=dilation, bias=draw(st.booleans()))
    assume(min(case.smallest) >= 1)
    form = draw(st.sampled_from(["none", "output_padding", "output_size"]))
    if form == "output_padding":
        limits = [max(a, b) - 1 for a, b in zip(_two(stride), _two(dilation), strict=False)]
        case = case._replace(output_padding=(draw(st.integers(0, limits[0])),
                                             draw(st.integers(0, limits[1]))))
    elif form == "output_size":
        case = case._replace(output_size=tuple(
            m + draw(st.integers(0, s_ - 1))
            for m, s_ in zip(case.smallest, _two(stride), strict=False)))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    return case, dtype, seed


@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a != "reference"])
@settings(max_examples=30, deadline=None)
@given(config=transpose_configs())
def test_hypothesis_matches_reference(algorithm, config):
    case, dtype, seed = config
    x, w, b, g = make_transpose_inputs(case, dtype, np.random.default_rng(seed))
    y = fastconv.conv_transpose2d(x, w, b, **case.kwargs, algorithm=algorithm)
    assert y.shape == case.output_shape
    assert_output_close(y, reference.conv_transpose2d(x, w, b, **case.kwargs), dtype)
    grads = fastconv.conv_transpose2d_backward(g, x, w, **case.kwargs, algorithm=algorithm)
    assert_grads_close(grads, reference.conv_transpose2d_backward(g, x, w, **case.kwargs),
                       dtype, g)


@settings(max_examples=30, deadline=None)
@given(config=transpose_configs())
def test_hypothesis_reference_matches_torch(config):
    """The spec itself, and this file's torch oracle, against each other."""
    case, dtype, seed = config
    x, w, b, g = make_transpose_inputs(case, dtype, np.random.default_rng(seed))
    y, *expected = torch_conv_transpose2d(case, x, w, b, g)
    assert_output_close(reference.conv_transpose2d(x, w, b, **case.kwargs), y, dtype)
    assert_grads_close(reference.conv_transpose2d_backward(g, x, w, **case.kwargs), expected,
                       dtype, g)


# --- fuzzing against PyTorch: output_padding up to max(stride, dilation) - 1, output_size -------


def _fuzz_transpose_configs(seed, count):
    """Random small transposed convolutions; output_padding anywhere below stride or
    dilation (PyTorch's rule), sometimes given as output_size instead."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        s = tuple(int(v) for v in rng.integers(1, 4, 2))
        d = tuple(int(v) for v in rng.integers(1, 4, 2))
        k = tuple(int(v) for v in rng.integers(1, 4, 2))
        p = tuple(int(v) for v in rng.integers(0, 3, 2))
        op = tuple(int(rng.integers(0, max(s[a], d[a]))) for a in range(2))
        groups = int(rng.integers(1, 3))
        n = [None, 0, 1, 2][int(rng.integers(0, 4))]
        size = tuple(int(v) for v in rng.integers(1, 5, 2))
        shape = (*(() if n is None else (n,)), 2 * groups, *size)
        yield dict(stride=s, padding=p, output_padding=op, groups=groups, dilation=d), \
            shape, (2 * groups, int(rng.integers(1, 3)), *k), bool(rng.random() < 0.3), \
            int(rng.integers(0, 2**32))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_fuzz_forward_and_backward_match_torch(algorithm):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    checked = beyond_stride = 0
    for kwargs, shape, w_shape, as_size, seed in _fuzz_transpose_configs(3, 150):
        rng = np.random.default_rng(seed)
        x = rng.uniform(-1, 1, shape)
        w = rng.uniform(-1, 1, w_shape)
        b = rng.uniform(-1, 1, w_shape[1] * kwargs["groups"])
        xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        try:
            yt = F.conv_transpose2d(xt, wt, bt, **kwargs)
        except RuntimeError:  # PyTorch: padding crops more than the whole output
            yt = None
        if yt is None or 0 in yt.shape[-2:]:
            # PyTorch returns an empty array where padding crops exactly all of the output;
            # fastconv refuses that as it refuses more cropping (no op takes H or W = 0)
            with pytest.raises(ValueError, match=r"conv_transpose2d output would be"):
                fastconv.conv_transpose2d(x, w, b, **kwargs, algorithm=algorithm)
            continue
        call = dict(kwargs)
        if as_size:  # output_size in place of output_padding (within stride of the smallest)
            if any(op >= st for op, st in zip(kwargs["output_padding"], kwargs["stride"],
                                               strict=True)):
                continue
            call = dict(kwargs, output_padding=0, output_size=tuple(yt.shape[-2:]))
        y = fastconv.conv_transpose2d(x, w, b, **call, algorithm=algorithm)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
        dy = rng.uniform(-1, 1, y.shape)
        yt.backward(torch.tensor(dy))
        grads = fastconv.conv_transpose2d_backward(dy, x, w, **call, algorithm=algorithm)
        for got, want in zip(grads, (xt.grad, wt.grad, bt.grad), strict=True):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-10, atol=1e-10)
        checked += 1
        beyond_stride += any(op >= st for op, st in zip(kwargs["output_padding"],
                                                       kwargs["stride"], strict=True))
    assert checked > 60 and beyond_stride > 5


def test_zero_input_channels_are_refused_as_in_torch():
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError):
        torch.nn.functional.conv_transpose2d(torch.zeros(1, 0, 4, 4), torch.zeros(0, 2, 3, 3))
    with pytest.raises(ValueError, match=r"input must have non-empty C_in, H and W"):
        fastconv.conv_transpose2d(np.zeros((1, 0, 4, 4)), np.zeros((0, 2, 3, 3)))


@pytest.mark.parametrize("kwargs, same", [
    (dict(stride=(2,), output_padding=(1,)), dict(stride=2, output_padding=1)),
    (dict(padding=[1], dilation=(2,)), dict(padding=1, dilation=2)),
])
def test_one_element_tuples_mean_both_axes_as_in_torch(kwargs, same, rng):
    torch = pytest.importorskip("torch")
    x, w = rng.uniform(-1, 1, (1, 2, 4, 5)), rng.uniform(-1, 1, (2, 3, 3, 3))
    y = fastconv.conv_transpose2d(x, w, **kwargs)
    np.testing.assert_array_equal(y, fastconv.conv_transpose2d(x, w, **same))
    expected = torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(w), **kwargs)
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"output_size must be an int or a pair"):
        fastconv.conv_transpose2d(x, w, **kwargs, output_size=(y.shape[-1],))


#: Layers the blocked kernels compute by phases (at least MIN_GROUP_K output channels per
#: group), with phases that no tap reaches (stride 3, 2x2 kernel), uneven strides and groups.
BIAS_FUSED_CASES = [
    T("fused_gaps_s3", 2, 16, 5, 7, 12, 2, 2, stride=3),
    T("fused_4x4_s2_p1", 2, 16, 6, 6, 12, 4, 4, stride=2, padding=1),
    T("fused_s1", 1, 12, 5, 5, 8, 3, 3, padding=1),
    T("fused_s23_op12", 2, 16, 5, 7, 8, 3, 3, stride=(2, 3), padding=(1, 0),
      output_padding=(1, 2)),
    T("fused_groups2_s2", 2, 16, 5, 5, 8, 3, 3, stride=2, padding=1, groups=2),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", BIAS_FUSED_CASES, ids=lambda c: c.id)
def test_bias_added_by_the_blocked_phases(case, dtype, rng):
    """The blocked kernels add conv_transpose2d's bias as each phase stores its outputs
    (a phase no tap reaches gets the bias alone): the reference's result on the plan's
    first and later calls, and NaN and Inf where the reference has them, from a bias or
    from a weight (which takes the exact loops, then the bias)."""
    x, w, b, _ = make_transpose_inputs(case, dtype, rng)
    expected = reference.conv_transpose2d(x, w, b, **case.kwargs)
    for _ in range(2):
        y = fastconv.conv_transpose2d(x, w, b, **case.kwargs, algorithm="direct")
        assert_output_close(y, expected, dtype)
    bad_bias = b.copy()
    bad_bias[:3] = [np.nan, np.inf, -np.inf]
    bad_weight = w.copy()
    bad_weight[0, 0, 0, 0] = np.inf
    for weight, bias in ((w, bad_bias), (bad_weight, b)):
        y = fastconv.conv_transpose2d(x, weight, bias, **case.kwargs, algorithm="direct")
        expected = reference.conv_transpose2d(x, weight, bias, **case.kwargs)
        finite = np.isfinite(expected)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
        np.testing.assert_array_equal(y[~finite & ~np.isnan(expected)],
                                      expected[~finite & ~np.isnan(expected)])
        assert_output_close(y[finite], expected[finite], dtype)
