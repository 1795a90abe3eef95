"""Compile kernels ahead of the first call."""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np

from . import dispatch
from .functional import conv2d


def warmup(dtypes: Iterable[object] = (np.float32, np.float64)) -> dict[str, float]:
    """Compile (or load from the on-disk cache) every CPU kernel for ``dtypes``.

    The first call of a kernel otherwise compiles it, which takes seconds; a
    later process loads the cached machine code in milliseconds. Returns the
    seconds spent per ``"op/algorithm/dtype"``.

    >>> import fastconv
    >>> timings = fastconv.warmup(dtypes=[np.float32])
    >>> sorted(timings)
    ['conv2d/direct/float32', 'conv2d/im2col/float32']
    """
    timings: dict[str, float] = {}
    for dtype in dtypes:
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtypes must hold float32 or float64, got {dtype}")
        x = np.zeros((1, 2, 5, 5), dtype)
        w = np.zeros((2, 2, 3, 3), dtype)
        b = np.zeros(2, dtype)
        for algorithm in dispatch.available_algorithms("conv2d"):
            if algorithm in ("auto", "reference"):
                continue
            start = time.perf_counter()
            conv2d(x, w, b, algorithm=algorithm)
            conv2d(x, w, algorithm=algorithm)
            timings[f"conv2d/{algorithm}/{dtype}"] = time.perf_counter() - start
    return timings
