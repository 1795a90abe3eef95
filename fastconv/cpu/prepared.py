"""Weights prepared for a kernel, kept while the weight's bytes stay the same.

Winograd multiplies by transformed filters (``G w G^T``, four times the
weight's size). Transforming them on every call costs as much as a tenth of a
deep layer's convolution, and writing them afresh evicts the cache the products
then need (measured on a 256-channel 14x14 layer: 9.8 -> 7.7 ms per call with
the transform kept). The direct kernel keeps a large weight's packed filters the
same way (grad_input's and conv_transpose2d's flipped ones, whose packing reads the
weight out of order, :data:`.blocked.KEEP_FLIPPED_MIN_VALUES`, and the forward's,
:data:`.blocked.KEEP_MIN_VALUES`). A layer at inference
calls with the same weight every time; a training step changes it between calls.

:func:`get` keeps a prepared array per weight buffer (its address, layout and
dtype) together with a copy of the weight's bytes it was built from, and
returns the kept array only while the weight holds exactly those bytes (a
compare, :func:`same_bytes`: about a hundredth of the transform, but a fifth of a
batch-1 call of a deep layer, whose weight is large for its work); otherwise it rebuilds in place. A
weight found changed on :data:`CHANGING` calls in a row (a training loop) is
rebuilt on every call without the compare and the copy, and compared again
every :data:`CHANGING_CHECK` calls, so that training pays what it paid without
the cache and inference after it gets the kept transform back.
Kept arrays of each thread total at most ``config.PREPARED_WEIGHTS_BYTES``
(least recently used dropped first), and at most :data:`SAME_SHAPE` of one
kind and shape (a trainer that rebinds its weight each step brings a new buffer
each time: its arrays are recycled, not allocated afresh); a larger one is built
into a scratch buffer per call, as without the cache. :func:`release`
(``fastconv.release_workspace()``) drops them all.
"""

from __future__ import annotations

import ctypes
import math
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from .. import config
from . import workspace
from .perthread import PerThread

#: Most kept arrays of one kind and shape (a network's layers of one shape each keep
#: theirs; beyond, the least recently used one's arrays are rebuilt for the new weight).
SAME_SHAPE = 8


#: A weight found changed on this many calls in a row is taken as one that a trainer
#: updates every step: it is rebuilt on each call without the compare and the copy,
#: and compared again only every CHANGING_CHECK calls (to notice it stopped changing).
CHANGING = 2
CHANGING_CHECK = 16


class _Entry:
    __slots__ = ("source", "value", "calls", "changes", "stale")

    def __init__(self, source: np.ndarray, value: np.ndarray) -> None:
        self.source = source  # the weight's bytes the value was built from, unless stale
        self.value = value
        self.calls = 0
        self.changes = 0  # calls in a row that found the weight changed
        self.stale = False  # value built without copying the weight into source

    @property
    def nbytes(self) -> int:
        return self.source.nbytes + self.value.nbytes


class _Kept:
    """One thread's prepared arrays, least recently used first."""

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple, _Entry] = OrderedDict()

    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self.entries.values())


#: every live thread's prepared arrays; a thread's entry goes when the thread ends
_registry: PerThread[_Kept] = PerThread(_Kept)


def _memcmp() -> Callable[..., int] | None:
    """The C library's ``memcmp`` (the process's own symbols on POSIX, ``msvcrt`` on
    Windows), or None where ctypes cannot find it."""
    try:
        function = ctypes.CDLL(None).memcmp
    except (AttributeError, OSError, TypeError):
        try:
            function = ctypes.cdll.msvcrt.memcmp
        except (AttributeError, OSError):
            return None
    function.restype = ctypes.c_int
    function.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
    return function


_MEMCMP = _memcmp()


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two C-contiguous arrays of one size hold the same bytes (a compare of bits:
    -0.0 is not 0.0, and a NaN equals itself). The C library's ``memcmp``, one pass over
    both without a temporary: numpy's ``array_equal`` on the weight's bits as ``uint32``
    writes a boolean per value and reduces it, 0.72 ms of a 2.4 ms call at inference on a
    C512 3x3 layer at batch 1 (9.4 MB of weight) against 0.24 ms for ``memcmp`` alone
    (Zen 4). Without it, ``array_equal`` on the widest unsigned words the size allows.
    Arrays of other sizes, or not C-contiguous, are not compared: False."""
    if not (a.flags.c_contiguous and b.flags.c_contiguous and a.nbytes == b.nbytes):
        return False
    if _MEMCMP is not None:
        return _MEMCMP(a.ctypes.data, b.ctypes.data, a.nbytes) == 0
    word = 8 if a.nbytes % 8 == 0 else a.itemsize
    return bool(np.array_equal(a.reshape(-1).view(f"u{word}"), b.reshape(-1).view(f"u{word}")))


def get(kind: str, weight: np.ndarray, shape: tuple[int, ...],
        build: Callable[[np.ndarray, np.ndarray], None], *params: object) -> np.ndarray:
    """The array of ``shape`` (``weight``'s dtype) that ``build(weight, out)`` fills,
    from the last call with this ``kind``, weight buffer and ``params`` if ``weight``
    still holds the same bytes, else built now. Read-only for the caller; valid until
    the next call of :func:`get` on this thread. Past the budget, the array is the
    workspace slot ``kind`` (:func:`.workspace.borrow`), which ``build`` must not borrow."""
    value_bytes = math.prod(shape) * weight.itemsize  # (np.prod: 5 us more per call)
    if (value_bytes + weight.nbytes > config.PREPARED_WEIGHTS_BYTES
            or not weight.flags.c_contiguous):  # a copy per call would never be met again
        out = workspace.borrow(shape, weight.dtype, kind)  # build must not borrow slot kind
        build(weight, out)
        return out
    key = (kind, weight.ctypes.data, weight.shape, weight.dtype.str, shape, params)
    mine = getattr(_registry.local, "value", None) or _registry.mine()
    with _registry.lock:  # release() may empty the entries meanwhile
        entry = mine.entries.get(key)
        if entry is not None:
            mine.entries.move_to_end(key)
    if entry is not None:
        entry.calls += 1
        if entry.changes >= CHANGING and entry.calls % CHANGING_CHECK:
            # changed on every call lately: no compare, no copy, so the value is no longer
            # built from entry.source (a buffer may return to those bytes later)
            entry.stale = True
            build(weight, entry.value)
            return entry.value
        if not entry.stale and same_bytes(entry.source, weight):
            entry.changes = 0
            return entry.value
        # a periodic compare (or a change): compare again on the next call, which finds
        # the weight unchanged once training stopped
        entry.changes = entry.changes + 1 if entry.changes < CHANGING else CHANGING - 1
        entry.stale = True  # until the build below completes (it may raise)
        np.copyto(entry.source, weight)  # the same buffer, new values: a training step
        build(weight, entry.value)
        entry.stale = False
        return entry.value
    with _registry.lock:
        alike = [k for k in mine.entries if k[0] == kind and k[2:] == key[2:]]
        # a trainer that rebinds its weights (w = w - lr * g) brings a new buffer each
        # step: past SAME_SHAPE entries, the least recently used one's arrays serve it
        entry = mine.entries.pop(alike[0]) if len(alike) >= SAME_SHAPE else None
    if entry is None:
        entry = _Entry(weight.copy(), np.empty(shape, weight.dtype))
    else:
        np.copyto(entry.source, weight)
        entry.calls = entry.changes = 0
        entry.stale = False
    build(weight, entry.value)
    with _registry.lock:
        while mine.entries and mine.nbytes() + entry.nbytes > config.PREPARED_WEIGHTS_BYTES:
            mine.entries.popitem(last=False)
        mine.entries[key] = entry
    return entry.value


def kept_bytes() -> int:
    """Bytes of the prepared arrays (and their weights' copies) kept, all threads together."""
    with _registry.lock:
        return sum(kept.nbytes() for kept in _registry)


def release() -> int:
    """Drop every thread's prepared arrays and return their bytes. A call running
    meanwhile keeps the array it was given until it returns."""
    with _registry.lock:
        freed = sum(kept.nbytes() for kept in _registry)
        for kept in _registry:
            kept.entries.clear()
    return freed
