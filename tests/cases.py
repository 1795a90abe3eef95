"""The table of small conv2d cases of the correctness tests (the benchmarks and the GPU
check time the problems of :mod:`fastconv.bench.cases` instead).

Each case is small (spatial size <= 20) so that :mod:`fastconv.reference`
(Python loops) checks it in milliseconds, and together the cases cover every
argument form ``fastconv.conv2d`` accepts: kernels 1x1 to 7x7 and non-square,
strides 1-3 and pairs, every padding form (int, pair, asymmetric
``((top, bottom), (left, right))``, ``"valid"``, ``"same"`` with stride and
dilation), dilation 1-3, groups (grouped, depthwise, depthwise multiplier 2),
with and without bias, batch 1, unbatched input, C = 1 and odd sizes.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Union

import numpy as np

Padding = Union[int, str, "tuple[int, int]", "tuple[tuple[int, int], tuple[int, int]]"]


class Conv2dCase(NamedTuple):
    """One conv2d problem: input ``(n, c, h, w)`` (``n=None``: unbatched ``(c, h, w)``),
    weight ``(k, c // groups, r, s)``, optional bias ``(k,)``."""

    id: str
    n: int | None
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    stride: int | tuple[int, int] = 1
    padding: Padding = 0
    dilation: int | tuple[int, int] = 1
    groups: int = 1
    bias: bool = True

    @property
    def input_shape(self) -> tuple[int, ...]:
        chw = (self.c, self.h, self.w)
        return chw if self.n is None else (self.n, *chw)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.k, self.c // self.groups, self.r, self.s)

    @property
    def kwargs(self) -> dict:
        """Keyword arguments for ``fastconv.conv2d`` / ``fastconv.reference.conv2d``."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)

    @property
    def depth(self) -> int:
        """Multiply-adds per output value: ``C/groups * R * S``."""
        return self.c // self.groups * self.r * self.s


C = Conv2dCase
CONV2D_CASES: list[Conv2dCase] = [
    # kernel sizes, square
    C("1x1", 2, 4, 8, 8, 6, 1, 1),
    C("1x1_s2_odd", 2, 4, 9, 7, 4, 1, 1, stride=2),
    C("1x1_pad1", 1, 3, 7, 7, 2, 1, 1, padding=1),
    C("2x2", 2, 2, 7, 7, 3, 2, 2),
    C("3x3_p1", 2, 3, 10, 10, 4, 3, 3, padding=1),
    C("3x3_valid_nobias", 2, 3, 9, 11, 5, 3, 3, padding="valid", bias=False),
    C("3x3_s2_p1", 2, 4, 11, 11, 4, 3, 3, stride=2, padding=1),
    C("3x3_s3", 1, 2, 13, 13, 3, 3, 3, stride=3),
    C("4x4_s2_p1", 1, 2, 10, 10, 3, 4, 4, stride=2, padding=1),
    C("5x5_c1_p2", 2, 1, 12, 12, 6, 5, 5, padding=2),
    C("5x5_s2_p2", 1, 3, 15, 15, 4, 5, 5, stride=2, padding=2),
    C("6x6_s3", 1, 2, 17, 17, 2, 6, 6, stride=3),
    C("7x7_s2_p3", 1, 3, 19, 19, 4, 7, 7, stride=2, padding=3),
    C("7x7_valid", 1, 2, 9, 9, 2, 7, 7),
    C("kernel_eq_input", 2, 2, 5, 5, 3, 5, 5),
    # non-square kernels and stride pairs
    C("1x3_pad01", 2, 3, 9, 10, 4, 1, 3, padding=(0, 1)),
    C("3x1_pad10", 1, 3, 10, 9, 4, 3, 1, padding=(1, 0)),
    C("5x2_s21_pad21", 1, 2, 11, 8, 3, 5, 2, stride=(2, 1), padding=(2, 1)),
    C("2x5_s12", 1, 2, 8, 13, 3, 2, 5, stride=(1, 2)),
    C("3x3_s31", 1, 3, 14, 9, 2, 3, 3, stride=(3, 1), padding=1),
    C("1xS_on_1row", 2, 2, 1, 15, 3, 1, 4, stride=(1, 3)),
    C("tall_input", 1, 2, 20, 3, 2, 3, 2, padding=(1, 0)),
    # padding forms
    C("pad_pair_2_1", 1, 2, 9, 9, 3, 3, 3, padding=(2, 1)),
    C("pad_asym", 2, 2, 9, 8, 3, 3, 3, padding=((0, 2), (1, 0))),
    C("pad_asym_large_s2", 1, 2, 7, 9, 2, 3, 3, stride=2, padding=((3, 0), (0, 4))),
    C("pad_list_form", 1, 2, 8, 8, 2, 3, 3, padding=[[1, 2], [2, 1]]),
    C("same_s1_odd", 1, 3, 9, 11, 4, 3, 3, padding="same"),
    C("same_s1_even_kernel", 1, 2, 8, 9, 3, 4, 2, padding="same"),
    C("same_s2", 2, 2, 11, 10, 3, 3, 3, stride=2, padding="same"),
    C("same_s3_5x5", 1, 2, 13, 14, 3, 5, 5, stride=3, padding="same"),
    C("same_s1_dil2", 1, 2, 10, 9, 2, 3, 3, padding="same", dilation=2),
    C("same_s2_dil23", 1, 2, 12, 13, 2, 3, 3, stride=2, padding="same", dilation=(2, 3)),
    C("same_kernel_gt_input", 1, 2, 5, 4, 2, 7, 7, padding="same"),
    C("same_s3_1x1", 1, 2, 11, 10, 2, 1, 1, stride=3, padding="same"),
    # dilation
    C("dil2_p2", 2, 2, 11, 11, 3, 3, 3, padding=2, dilation=2),
    C("dil3_valid", 1, 2, 15, 15, 2, 3, 3, dilation=3),
    C("dil12_2x3", 1, 3, 9, 12, 2, 2, 3, dilation=(1, 2), padding=(0, 1)),
    C("dil2_s2_p1", 1, 2, 13, 12, 3, 3, 3, stride=2, padding=1, dilation=2),
    # groups
    C("groups2", 2, 4, 9, 9, 6, 3, 3, padding=1, groups=2),
    C("groups2_s2_dil2_nobias", 1, 6, 12, 11, 4, 3, 3, stride=2, padding=2, dilation=2,
      groups=2, bias=False),
    C("groups3_1x1", 2, 6, 7, 7, 9, 1, 1, groups=3),
    C("depthwise_3x3", 2, 6, 9, 9, 6, 3, 3, padding=1, groups=6),
    C("depthwise_x2_s2", 1, 4, 11, 10, 8, 3, 3, stride=2, padding=1, groups=4),
    C("depthwise_5x5_nobias", 1, 5, 10, 10, 5, 5, 5, padding=2, groups=5, bias=False),
    C("depthwise_same_s2", 1, 3, 9, 9, 3, 3, 3, stride=2, padding="same", groups=3),
    # the one-pass depthwise kernel: a multiplier, dilation, asymmetric padding, a plane
    # wider than one vector with a tail
    C("depthwise_x2_dil21_asym", 2, 3, 11, 19, 6, 3, 3, padding=((2, 1), (0, 2)),
      dilation=(2, 1), groups=3),
    C("depthwise_5x5_dil12", 1, 4, 13, 21, 4, 5, 5, padding=(2, 4), dilation=(1, 2),
      groups=4),
    # batch and channel extremes
    C("batch1_c1_k1", 1, 1, 7, 7, 1, 3, 3),
    C("unbatched_3x3", None, 3, 8, 9, 4, 3, 3, padding=1),
    C("unbatched_depthwise_same_s2", None, 4, 9, 11, 4, 3, 3, stride=2, padding="same",
      groups=4),
    C("unbatched_c1_nobias", None, 1, 6, 6, 2, 2, 2, bias=False),
    C("deep_c24", 1, 24, 10, 10, 8, 3, 3, padding=1),
]

CASE_IDS = [case.id for case in CONV2D_CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS), "case ids must be unique"

DTYPES = [np.float32, np.float64]

#: Tolerances for comparing a fast path with an oracle (reference or PyTorch)
#: computed in the same dtype. Data are uniform in [-1, 1] and a case sums at
#: most a few hundred products (CASES_MAX_DEPTH), so outputs are O(10) and the
#: two summation orders differ by a few ulps of that: ~1e-6 in float32 and
#: ~1e-14 in float64. The bounds below leave a 10-100x margin and still catch
#: any wrong tap, which moves an output by O(0.1).
TOLERANCES: dict[type, dict[str, float]] = {
    np.float32: dict(rtol=1e-4, atol=1e-4),
    np.float64: dict(rtol=1e-10, atol=1e-12),
}

CASES_MAX_DEPTH = max(case.depth for case in CONV2D_CASES)
assert CASES_MAX_DEPTH <= 256, "deeper cases need a looser float32 atol"


def tolerance(dtype: object) -> dict[str, float]:
    """``rtol``/``atol`` keyword arguments for ``np.testing.assert_allclose``."""
    return TOLERANCES[np.dtype(dtype).type]


def assert_same_pattern(actual, expected, **tol):
    """NaN, +Inf and -Inf at the same positions, and close finite values elsewhere."""
    for name, test in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        wrong = np.argwhere(test(actual) != test(expected))
        assert wrong.size == 0, (
            f"{name} at {len(wrong)} positions where the other has none or vice versa "
            f"(e.g. {tuple(wrong[0])}): {test(actual).sum()} here, {test(expected).sum()} expected")
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], **tol)


def make_inputs(case: Conv2dCase, dtype: object, rng: np.random.Generator):
    """Fresh random ``(x, w, b)`` for ``case`` in ``dtype``, uniform in [-1, 1]
    (``b`` is None for a case without bias)."""
    x = rng.uniform(-1.0, 1.0, case.input_shape).astype(dtype)
    w = rng.uniform(-1.0, 1.0, case.weight_shape).astype(dtype)
    b = rng.uniform(-1.0, 1.0, case.k).astype(dtype) if case.bias else None
    return x, w, b


def explicit_padding(padding, size, kernel, stride, dilation):
    """``((top, bottom), (left, right))`` for any padding form, derived here from the
    documented rules rather than from ``fastconv.shapes`` (an independent oracle).

    ``"same"``: output ``ceil(n / s)``, total ``(out - 1) * s + d * (k - 1) + 1 - n``
    (at least 0), split evenly with the odd extra pad at the end.
    """
    two = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        pads = []
        for n, k, s, d in zip(size, two(kernel), two(stride), two(dilation), strict=False):
            out = math.ceil(n / s)
            total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(padding, (tuple, list)) and all(isinstance(p, (tuple, list)) for p in padding):
        return tuple(tuple(p) for p in padding)
    ph, pw = two(padding)
    return (ph, ph), (pw, pw)


def case_padding(case: Conv2dCase):
    """:func:`explicit_padding` of a case."""
    return explicit_padding(case.padding, (case.h, case.w), (case.r, case.s), case.stride,
                            case.dilation)


def expected_output_shape(case: Conv2dCase) -> tuple[int, ...]:
    """Output shape from the formula ``floor((n + p_total - d*(k-1) - 1) / s) + 1``."""
    pads = case_padding(case)
    two = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    out = tuple(
        (n + sum(p) - d * (k - 1) - 1) // s + 1
        for n, p, k, s, d in zip((case.h, case.w), pads, (case.r, case.s), two(case.stride),
                                 two(case.dilation), strict=False)
    )
    return (case.k, *out) if case.n is None else (case.n, case.k, *out)


def sum_tolerance(dtype: object, n_terms: int) -> dict[str, float]:
    """:func:`tolerance` for values that each sum ``n_terms`` products, such as a weight
    gradient (``N * H_out * W_out`` terms) or a bias gradient: the table's atol is set for
    sums of up to CASES_MAX_DEPTH terms, and rounding grows with the length of the sum, so
    atol grows in proportion beyond it."""
    tol = tolerance(dtype)
    return {"rtol": tol["rtol"], "atol": tol["atol"] * max(1.0, n_terms / CASES_MAX_DEPTH)}


def supports(algorithm: str, case: Conv2dCase, op: str = "conv2d") -> bool:
    """Whether ``algorithm`` computes ``case`` (Winograd: 3x3 kernels at stride 1, and for
    conv2d 3x3 and 4x4 kernels of one group at stride 2; dilation 1; asking it for another
    problem is an error, tested in test_dispatch.py)."""
    import fastconv
    from fastconv import dispatch, shapes

    if algorithm not in fastconv.available_algorithms(op):
        return False
    kernel = (case.r, case.s)
    stride = shapes.pair(case.stride, "stride")
    dilation = shapes.pair(case.dilation, "dilation")
    padding = shapes.padding2d(case.padding, (case.h, case.w), kernel, stride, dilation)
    return dispatch.unsupported_reason(
        op, "cpu", algorithm, weight_shape=case.weight_shape, stride=stride, dilation=dilation,
        padding=padding, groups=case.groups,
    ) is None


def algorithm_case_params(algorithms, cases):
    """``pytest.param(algorithm, case)`` for every pair where the algorithm supports the case."""
    import pytest

    return [pytest.param(a, c, id=f"{a}-{c.id}") for a in algorithms for c in cases
            if supports(a, c)]


def case_for(algorithm: str, *ids: str) -> Conv2dCase:
    """The first case among ``ids`` that ``algorithm`` supports."""
    by_id = {case.id: case for case in CONV2D_CASES}
    return next(by_id[i] for i in ids if supports(algorithm, by_id[i]))


def general_algorithms(*ops: str) -> list[str]:
    """The algorithms every one of ``ops`` has and that handle every problem (no
    ``unsupported`` check: Winograd is tested on the cases it supports, on its own)."""
    import fastconv
    from fastconv import dispatch

    names = [set(fastconv.available_algorithms(op)) for op in ops]
    return [a for a in fastconv.available_algorithms(ops[0])
            if all(a in n for n in names)
            and not any((op, "cpu", a) in dispatch._UNSUPPORTED for op in ops)]


def relayout(array: np.ndarray, layout: str, rng) -> np.ndarray:
    """The same values as ``array`` in another memory layout."""
    if layout == "strided":  # every other element of a larger array
        big = rng.uniform(-1, 1, tuple(2 * n for n in array.shape)).astype(array.dtype)
        view = big[tuple(slice(None, None, 2) for _ in array.shape)]
        view[...] = array
    elif layout == "transposed":  # C-order copy of the transpose, transposed back
        axes = tuple(reversed(range(array.ndim)))
        view = np.ascontiguousarray(array.transpose(axes)).transpose(axes)
    elif layout == "fortran":
        view = np.asfortranarray(array)
    elif layout == "reversed":  # negative strides
        view = np.ascontiguousarray(array[..., ::-1])[..., ::-1]
    else:
        raise AssertionError(layout)
    assert np.array_equal(view, array)
    if array.ndim > 1:
        assert not view.flags.c_contiguous
    return view


def no_whole_planes(monkeypatch) -> None:
    """Stride-1 depthwise layers on the direct algorithm's banded kernels, not on whole
    planes (see tests/test_depthwise_planes.py): for tests of the banded kernels."""
    from fastconv.cpu import direct

    monkeypatch.setattr(direct, "DEPTHWISE_PLANE_BYTES", 0)
    monkeypatch.setattr(direct, "DEPTHWISE_WIDE_PLANE_BYTES", 0)
