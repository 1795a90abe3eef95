"""Compile kernels ahead of the first call."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np

from . import dispatch
from .functional import conv as _conv
from .functional import pool as _pool


def _calls(dtype: np.dtype) -> dict[str, Callable[[str], object]]:
    """One call per op on tiny inputs, by algorithm name; together they reach every
    kernel (stride 1 and 2, with and without indices)."""
    x = np.arange(2 * 2 * 6 * 6, dtype=dtype).reshape(2, 2, 6, 6) % 7
    w = np.ones((2, 2, 3, 3), dtype)
    b = np.ones(2, dtype)
    y1 = np.ones((2, 2, 6, 6), dtype)
    y2 = np.ones((2, 2, 3, 3), dtype)
    pooled, where = _pool.max_pool2d(x, 2, return_indices=True, algorithm="reference")
    only_input = dict(needs_weight_grad=False, needs_bias_grad=False)

    def strided(op: str, algorithm: str) -> bool:
        return dispatch.unsupported_reason(op, "cpu", algorithm, weight_shape=w.shape,
                                           stride=(2, 2), padding=((1, 1), (1, 1)),
                                           dilation=(1, 1)) is None

    return {
        "conv2d": lambda a: (_conv.conv2d(x, w, b, padding=1, algorithm=a),
                             strided("conv2d", a)
                             and _conv.conv2d(x, w, stride=2, padding=1, algorithm=a)),
        "conv2d_grad_input": lambda a: (
            _conv.conv2d_backward(y1, x, w, padding=1, algorithm=a, **only_input),
            strided("conv2d_grad_input", a)
            and _conv.conv2d_backward(y2, x, w, stride=2, padding=1, algorithm=a, **only_input)),
        "conv2d_grad_weight": lambda a: (
            _conv.conv2d_backward(y1, x, w, padding=1, algorithm=a, needs_input_grad=False),
            strided("conv2d_grad_weight", a)
            and _conv.conv2d_backward(y2, x, w, stride=2, padding=1, algorithm=a,
                                      needs_input_grad=False)),
        "conv2d_grad_bias": lambda a: _conv.conv2d_backward(
            y1, x, w, padding=1, needs_input_grad=False, needs_weight_grad=False),
        "max_pool2d": lambda a: (_pool.max_pool2d(x, 2, algorithm=a),
                                 _pool.max_pool2d(x, 3, 2, 1, return_indices=True, algorithm=a)),
        "max_pool2d_backward": lambda a: _pool.max_pool2d_backward(pooled, where, x.shape,
                                                                   algorithm=a),
        "avg_pool2d": lambda a: (_pool.avg_pool2d(x, 2, algorithm=a),
                                 _pool.avg_pool2d(x, 3, 2, 1, algorithm=a)),
        "avg_pool2d_backward": lambda a: _pool.avg_pool2d_backward(pooled, x.shape, 2,
                                                                   algorithm=a),
        "max_unpool2d": lambda a: _pool.max_unpool2d(pooled, where, 2, algorithm=a),
        "max_unpool2d_backward": lambda a: _pool.max_unpool2d_backward(x, where, algorithm=a),
        "repeat_unpool2d": lambda a: _pool.repeat_unpool2d(pooled, 2, algorithm=a),
        "repeat_unpool2d_backward": lambda a: _pool.repeat_unpool2d_backward(x, 2, algorithm=a),
    }


def warmup(dtypes: Iterable[object] = (np.float32, np.float64)) -> dict[str, float]:
    """Compile (or load from the on-disk cache) every CPU kernel for ``dtypes``.

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
        for op, call in _calls(dtype).items():
            for algorithm in dispatch.available_algorithms(op):
                if algorithm in ("auto", "reference"):
                    continue
                start = time.perf_counter()
                call(algorithm)
                timings[f"{op}/{algorithm}/{dtype}"] = time.perf_counter() - start
    return timings
