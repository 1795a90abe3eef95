"""Finiteness scans, for the kernels whose fast routes are exact only on finite values.

Winograd's transforms mix a whole patch, and the stride-1 shortcuts of the direct and
im2col kernels multiply padded zeros (or the zeros of a row pitch's junk columns) by the
data, where a NaN or Inf gives a ``0 * Inf = NaN`` that the definition does not have.
Those kernels scan a small array first (the weight) or their result afterwards, and take
the definition's route where it is not all finite.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from . import threads
from ._jit import kernel

#: Values one finiteness check sums before it tests for NaN (and may stop).
_SCAN_BLOCK = 4096
#: Values per thread below which a scan runs on the calling thread: a parallel launch
#: costs 10-20 us, a block sum about 1 us.
_PARALLEL_MIN = 16 * _SCAN_BLOCK


@kernel(entry=True)
def _nonfinite_in(flat, first, last):
    """Whether ``flat[first:last]`` holds a NaN or an Inf. A sum that meets one is NaN or
    +-Inf in any order of addition, so each block is summed as one vectorised loop (a
    finite sum that overflows only costs a false alarm) and the scan stops at the first
    non-finite block sum. (A ``v - v`` or ``v * 0`` test would not do: reassociation may
    fold ``(s + v) - v`` to ``s``.)"""
    for start in range(first, last, _SCAN_BLOCK):
        block = flat[start : min(start + _SCAN_BLOCK, last)]
        total = block[0]
        for i in range(1, block.size):  # over the block's slice: 4x faster than over flat
            total += block[i]
        if not math.isfinite(total):
            return True
    return False


@kernel(parallel=True)
def _any_nonfinite(flat, n_chunks, part, parts):
    """Whether ``flat`` holds a NaN or an Inf: :func:`_nonfinite_in` on ``n_chunks`` equal
    chunks in parallel."""
    n = flat.shape[0]
    found = np.zeros(n_chunks, np.bool_)
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        found[chunk] = _nonfinite_in(flat, chunk * n // n_chunks, (chunk + 1) * n // n_chunks)
    return found.any()


def all_finite(array: np.ndarray) -> bool:
    """Whether the C-contiguous ``array`` holds no NaN and no Inf (one pass: in parallel
    for large arrays, on the calling thread for small ones such as a weight)."""
    flat = array.reshape(-1)
    n_chunks = min(threads.count(), flat.size // _PARALLEL_MIN)
    if n_chunks <= 1:
        return not _nonfinite_in(flat, 0, flat.size)
    return not any(threads.launch(_any_nonfinite, n_chunks, flat, n_chunks))


def warm(dtype) -> bool:
    """:func:`all_finite` on zeros of ``dtype``, enough of them for its threaded scan where
    there are threads (:func:`fastconv.warmup`)."""
    return all_finite(np.zeros(threads.count() * _PARALLEL_MIN, dtype))


@kernel()
def finite_values(values):
    """Whether ``values`` (an array of any shape and layout) holds no NaN and no Inf: a
    serial test of each value, for small arrays inside a kernel."""
    for v in values.flat:
        if not math.isfinite(v):
            return False
    return True
