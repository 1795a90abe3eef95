"""Compile kernels ahead of the first call."""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np

from . import dispatch, functional, ops


def warmup(dtypes: Iterable[object] = (np.float32, np.float64)) -> dict[str, float]:
    """Compile (or load from the on-disk cache) every CPU kernel for ``dtypes``: the
    warm-up call of each op of :data:`fastconv.ops.TABLE` (tiny inputs, stride 1 and 2,
    with and without indices) with each of its algorithms.

    The first call of a kernel otherwise compiles it, which takes seconds; a
    later process loads the cached machine code in milliseconds. Returns the
    seconds spent per ``"op/algorithm/dtype"``.

    >>> import fastconv
    >>> timings = fastconv.warmup(dtypes=[np.float32])
    >>> sorted(key for key in timings if key.startswith("conv2d/"))
    ['conv2d/direct/float32', 'conv2d/im2col/float32', 'conv2d/winograd/float32']
    """
    timings: dict[str, float] = {}
    for dtype in dtypes:
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtypes must hold float32 or float64, got {dtype}")
        for op in ops.TABLE.values():
            for algorithm in dispatch.available_algorithms(op.name):
                if algorithm in ("auto", "reference"):
                    continue
                start = time.perf_counter()
                op.warm_up(functional, dtype, algorithm)
                timings[f"{op.name}/{algorithm}/{dtype}"] = time.perf_counter() - start
    return timings
