"""Reusable scratch buffers for kernels.

A fresh buffer above glibc's mmap threshold page-faults on every call, which
costs as much as a small convolution; kernels borrow one buffer per slot, dtype
and calling thread instead, grown when a larger one is needed.

What stays allocated between calls is bounded: a buffer is kept for reuse only
while the kept buffers of all threads total at most
``config.WORKSPACE_KEEP_BYTES`` (read at each borrow); a larger one serves its
call and is freed when the call drops it. :func:`release`
(``fastconv.release_workspace()``) frees every kept buffer.
"""

from __future__ import annotations

import math

import numpy as np

from .. import config
from .perthread import PerThread


class _Buffers:
    """One thread's kept buffers, ``(slot, dtype) -> 1-D array``, and the last view
    handed out per ``(slot, dtype, shape)`` (a repeated borrow returns it again while
    its buffer is still the kept one: no slicing and reshaping per call)."""

    def __init__(self) -> None:
        self.kept: dict[tuple[str, np.dtype], np.ndarray] = {}
        self.views: dict[tuple[str, np.dtype, tuple[int, ...]], np.ndarray] = {}


#: every live thread's buffers; a thread's entry goes when the thread ends
_registry: PerThread[_Buffers] = PerThread(_Buffers)


def _kept_bytes() -> int:
    return sum(b.nbytes for buffers in _registry for b in buffers.kept.values())


def borrow(shape: tuple[int, ...], dtype: np.dtype, slot: str = "scratch") -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape``, valid until the next borrow
    of the same ``slot`` and dtype on this thread (a kernel that needs two buffers at
    once borrows them from two slots).

    The buffer is kept for the next borrow if the kept buffers of all threads then
    total at most ``config.WORKSPACE_KEEP_BYTES``; otherwise it lives as long as the
    returned array (the smaller buffer this slot kept before, if any, stays kept).
    """
    if not isinstance(dtype, np.dtype):
        dtype = np.dtype(dtype)
    mine = getattr(_registry.local, "value", None) or _registry.mine()
    view = mine.views.get((slot, dtype, shape))
    if view is not None and view.base is mine.kept.get((slot, dtype)):
        return view
    size = math.prod(shape)
    key = (slot, dtype)
    # only this thread adds to its buffers; release() may empty them meanwhile, and a
    # dict lookup is atomic, so the common case (a kept buffer large enough) needs no lock
    buffer = mine.kept.get(key)
    if buffer is None or buffer.size < size:
        buffer = np.empty(max(size, 1), dtype=dtype)
        with _registry.lock:
            old = mine.kept.get(key)
            others = _kept_bytes() - (0 if old is None else old.nbytes)
            if others + buffer.nbytes <= config.WORKSPACE_KEEP_BYTES:
                mine.kept[key] = buffer
    view = buffer[:size].reshape(shape)
    if mine.kept.get(key) is buffer and view.base is buffer:
        if len(mine.views) > 64:  # a thread that met many shapes: start afresh
            mine.views.clear()
        mine.views[slot, dtype, shape] = view
    return view


def kept_bytes() -> int:
    """Bytes of the buffers kept between calls, all threads together."""
    with _registry.lock:
        return _kept_bytes()


def release() -> int:
    """Drop every kept buffer of every thread and return their bytes. Thread-safe: a
    call running meanwhile keeps the buffer it borrowed until it returns."""
    with _registry.lock:
        freed = _kept_bytes()
        for buffers in _registry:
            buffers.kept.clear()
            buffers.views.clear()
    return freed
