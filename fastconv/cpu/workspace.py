"""Reusable scratch buffers for kernels.

A fresh buffer above glibc's mmap threshold page-faults on every call, which
costs as much as a small convolution; kernels borrow one buffer per dtype and
thread of the caller instead, grown when a larger one is needed.
"""

from __future__ import annotations

import threading

import numpy as np

_local = threading.local()


def borrow(shape: tuple[int, ...], dtype: np.dtype, slot: str = "scratch") -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape``, valid until the next borrow
    of the same ``slot`` and dtype on this thread (a kernel that needs two buffers at
    once borrows them from two slots)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    buffers = _local.__dict__.setdefault("buffers", {})
    buffer = buffers.get((slot, dtype))
    if buffer is None or buffer.size < size:
        buffer = np.empty(max(size, 1), dtype=dtype)
        buffers[slot, dtype] = buffer
    return buffer[:size].reshape(shape)
