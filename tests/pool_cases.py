"""The table of small pooling cases of the pooling tests (the benchmarks time the
problems of :mod:`fastconv.bench.cases`), and their input makers: :func:`tie_free` is
the benchmarks' own.

Each case is small (spatial size <= 16) so that :mod:`fastconv.reference`
checks it in milliseconds. Together they cover overlapping and
non-overlapping windows, square and non-square kernels 1x1 to 5x5, strides
1-3 and pairs, ``stride=None``, padding up to half the kernel, dilation
(max-pool only), ``ceil_mode`` with and without a partial last window, odd
sizes, a window as large as the input, one-row inputs, C = 1 and unbatched
input. The avg-pool options (``count_include_pad``, ``divisor_override``) are
crossed with every case by the tests.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import numpy as np

from fastconv.bench.cases import tie_free

__all__ = ["AVG_CASES", "AVG_OPTIONS", "CASE_IDS", "POOL_CASES", "PoolCase", "tie_free",
           "uniform"]

Pair = Union[int, "tuple[int, int]"]


class PoolCase(NamedTuple):
    """One pooling problem: input ``(n, c, h, w)`` (``n=None``: unbatched ``(c, h, w)``)."""

    id: str
    n: int | None
    c: int
    h: int
    w: int
    kernel_size: Pair
    stride: Pair | None = None
    padding: Pair = 0
    dilation: Pair = 1
    ceil_mode: bool = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        chw = (self.c, self.h, self.w)
        return chw if self.n is None else (self.n, *chw)

    @property
    def pool_kwargs(self) -> dict:
        """Keyword arguments shared by max_pool2d and avg_pool2d (no dilation)."""
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    ceil_mode=self.ceil_mode)

    @property
    def max_kwargs(self) -> dict:
        return dict(self.pool_kwargs, dilation=self.dilation)

    @property
    def dilated(self) -> bool:
        return _two(self.dilation) != (1, 1)


def _two(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


P = PoolCase
POOL_CASES: list[PoolCase] = [
    # non-overlapping windows (stride = kernel)
    P("2x2", 2, 3, 8, 8, 2),
    P("2x2_odd_floor", 2, 2, 7, 9, 2),
    P("2x2_odd_ceil", 2, 2, 7, 9, 2, ceil_mode=True),
    P("3x3_s3", 1, 2, 13, 13, 3, 3),
    P("3x3_s3_ceil", 1, 2, 14, 13, 3, 3, ceil_mode=True),
    P("2x3_pair", 1, 3, 8, 9, (2, 3)),
    P("1x1_s2", 1, 2, 7, 7, 1, 2),
    # overlapping windows (stride < kernel)
    P("2x2_s1", 2, 2, 7, 7, 2, 1),
    P("3x3_s1_p1", 1, 2, 8, 9, 3, 1, 1),
    P("3x3_s2_p1", 2, 3, 11, 11, 3, 2, 1),
    P("3x3_s2_p1_ceil", 1, 2, 10, 10, 3, 2, 1, ceil_mode=True),
    P("4x4_s3_p2_ceil", 1, 2, 12, 12, 4, 3, 2, ceil_mode=True),
    P("5x5_s2_p2", 1, 2, 15, 15, 5, 2, 2),
    P("3x2_s21_p10", 1, 2, 9, 8, (3, 2), (2, 1), (1, 0)),
    P("2x3_s12_p01_ceil", 1, 2, 8, 11, (2, 3), (1, 2), (0, 1), ceil_mode=True),
    # gaps between windows (stride > kernel)
    P("2x2_s3", 1, 2, 11, 10, 2, 3),
    P("2x2_s3_ceil", 1, 2, 11, 10, 2, 3, ceil_mode=True),
    # sizes at the edges
    P("kernel_eq_input", 2, 2, 5, 5, 5),
    P("odd_7x5_s3_p1_ceil", 1, 3, 7, 5, 3, 3, 1, ceil_mode=True),
    P("one_row", 2, 2, 1, 9, (1, 3), (1, 2)),
    P("c1_3x3_s2", 3, 1, 9, 9, 3, 2),
    P("unbatched_3x3_s2_p1", None, 3, 9, 10, 3, 2, 1),
    P("unbatched_2x2", None, 2, 6, 6, 2),
    # dilation (max_pool2d only)
    P("dil2_3x3_p1", 1, 2, 11, 11, 3, 1, 1, dilation=2),
    P("dil2_2x2_s2", 1, 2, 9, 9, 2, 2, dilation=2),
    P("dil23_s2_p1_ceil", 1, 2, 12, 13, 3, 2, 1, dilation=(2, 3), ceil_mode=True),
    P("unbatched_dil3_s2", None, 2, 10, 10, 2, 2, dilation=3),
]

CASE_IDS = [case.id for case in POOL_CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS), "case ids must be unique"

#: Cases avg_pool2d takes (it has no dilation).
AVG_CASES = [case for case in POOL_CASES if not case.dilated]

#: avg_pool2d options crossed with every case: count_include_pad, divisor_override.
AVG_OPTIONS = {
    "include_pad": dict(count_include_pad=True, divisor_override=None),
    "exclude_pad": dict(count_include_pad=False, divisor_override=None),
    "divisor_3": dict(count_include_pad=True, divisor_override=3),
}


def uniform(shape: tuple[int, ...], dtype: object, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, shape).astype(dtype)
