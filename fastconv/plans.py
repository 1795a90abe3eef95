"""The plan cache: what a call has validated and chosen, kept for the next call like it.

The first call of a public op with a given *problem key* checks every
argument, asks the dispatcher for an algorithm and builds a *plan*: a small
closure that holds the kernel, the normalised parameters and the output
shape, and runs them. A later call with the same key finds the plan with a
few dict lookups and runs it, skipping the checks, the argument
normalisation and the choice.

The key holds everything the checks looked at, so a cache hit never accepts
what a miss would refuse:

- each array argument's exact type (``numpy.ndarray``, no subclass), shape,
  strides (its layout: C-contiguous or not) and dtype (float32/float64 for
  values, an integer dtype for indices);
- every other argument by value *and* type: ints, strings, None, bools and
  tuples and lists of these (``stride=True`` or ``stride=1.0`` never meet the
  plan of ``stride=1``; a list is copied into the key, so changing it later
  changes nothing); any other form (a numpy integer, a float) takes the full
  path each time, with the same result;
- for ``algorithm="auto"``, what the choice depends on: autotuning on or off,
  Numba's thread count, and the ``config.AUTO_*`` thresholds.

Calls with ``out=``, ``device=`` or GPU arrays are not cached (their placement
does work per call). The cache is bounded (``FASTCONV_PLAN_CACHE_SIZE``
plans, least recently used dropped first), thread-safe, emptied in a child
process after ``fork`` and by :func:`clear`, which ``fastconv.clear_plans()``
calls.
"""

from __future__ import annotations

import contextlib
import operator
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import config, tune

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_TRUE, _FALSE = object(), object()  # bools in a key: True == 1 must not meet stride=1
_LIST = object()  # a list's elements in a key, marked as a list


def max_plans() -> int:
    """Most plans kept (``config.PLAN_CACHE_SIZE``); the least recently used goes first."""
    return config.PLAN_CACHE_SIZE


class _Uncacheable(Exception):
    """An argument form the key does not cover: the call takes the full path."""


def _param(value: Any) -> Any:
    kind = type(value)
    if kind is int or kind is str or value is None:
        return value
    if kind is bool:
        return _TRUE if value else _FALSE
    if kind is tuple:
        return tuple(map(_param, value))
    if kind is list:  # the torch bridge's int[] arguments: kept apart from tuples
        return (_LIST, *map(_param, value))
    raise _Uncacheable


def thread_count() -> int:
    """Numba's thread count for this thread (:func:`fastconv.cpu.threads.count`: without
    the lock ``numba.get_num_threads`` takes; importing it first makes TBB loadable before
    Numba's pool starts)."""
    global _count
    if _count is None:
        from .cpu.threads import count

        _count = count
    return _count()


_count: Callable[[], int] | None = None


#: The ``config.AUTO_*`` thresholds, read in one C call.
_AUTO_THRESHOLDS = operator.attrgetter(
    "AUTO_DIRECT_MAX_DEPTH", "AUTO_DIRECT_MAX_WORK", "AUTO_WINOGRAD_MIN_CHANNELS",
    "AUTO_WINOGRAD_MIN_TILES", "AUTO_WINOGRAD_MIN_CHANNEL_PLANE", "AUTO_BLOCKED_MIN_USE_PERCENT",
    "AUTO_BLOCKED_MAX_CHANNELS", "AUTO_BLOCKED_SMALL_PLANE_CHANNELS")


def _choice_state(algorithm: Any) -> tuple:
    """What ``algorithm="auto"`` decides on besides the problem."""
    if algorithm != "auto":
        return ()
    tuned = tune._enabled
    return (config.AUTOTUNE if tuned is None else tuned, thread_count(),
            _AUTO_THRESHOLDS(config))


def key(op: str, values: tuple, indices: tuple, params: tuple, algorithm: Any) -> tuple | None:
    """The problem key of a host call of ``op``, or None when the call cannot be cached.

    ``values`` are the float array arguments (None allowed: a missing bias),
    ``indices`` the integer ones, ``params`` every other argument but
    ``algorithm``.
    """
    try:
        parts: list = [op, _param(algorithm)]
        for array in values:
            if array is None:
                parts.append(None)
            elif type(array) is np.ndarray and array.dtype in _FLOATS:
                parts.append((array.shape, array.strides, array.dtype))
            else:
                return None
        for array in indices:
            if type(array) is not np.ndarray or array.dtype.kind not in "iu":
                return None
            parts.append((array.shape, array.strides, array.dtype))
        for value in params:
            kind = type(value)
            parts.append(value if kind is int or kind is str or value is None
                         else _param(value))
        parts.append(_choice_state(algorithm))
        return tuple(parts)
    except _Uncacheable:
        return None
    except TypeError:  # an unhashable or odd value inside a tuple
        return None


class Explained(Exception):  # noqa: N818 - not an error: how explain() gets the plan
    """Raised by :meth:`_Cache.put` while :func:`explaining`: carries the plan a call
    built, so the call stops before running it."""

    def __init__(self, plan: Callable[..., Any]) -> None:
        super().__init__("explained")
        self.plan = plan


_explaining = 0  # threads inside explaining(); the thread-local says which
_explain = threading.local()
building = threading.local()  # .op: the op of this thread's last new plan (fastconv._notice)


@contextlib.contextmanager
def explaining() -> Iterator[None]:
    """Within this context (on this thread) a public op builds its plan without the
    cache and raises :class:`Explained` with it instead of running it."""
    global _explaining
    with _lock:
        _explaining += 1
    before = getattr(_explain, "on", False)
    _explain.on = True
    try:
        yield
    finally:
        _explain.on = before
        with _lock:
            _explaining -= 1


_lock = threading.Lock()


class _Cache:
    def __init__(self) -> None:
        self._plans: OrderedDict[tuple, Callable[..., Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, problem: tuple | None) -> Callable[..., Any] | None:
        if problem is None or (_explaining and getattr(_explain, "on", False)):
            return None
        plan = self._plans.get(problem)
        if plan is None:
            self.misses += 1
            return None
        self.hits += 1
        try:
            self._plans.move_to_end(problem)
        except KeyError:  # dropped by another thread meanwhile: the plan still runs
            pass
        return plan

    def put(self, problem: tuple | None, plan: Callable[..., Any]) -> Callable[..., Any]:
        if _explaining and getattr(_explain, "on", False):
            raise Explained(plan)
        building.op = None if problem is None else problem[0]
        if problem is not None and getattr(plan, "cacheable", True) and max_plans() > 0:
            with self._lock:
                self._plans[problem] = plan
                self._plans.move_to_end(problem)
                while len(self._plans) > max_plans():
                    self._plans.popitem(last=False)
        return plan

    def clear(self) -> int:
        with self._lock:
            count = len(self._plans)
            self._plans.clear()
            self.hits = self.misses = 0
        return count

    def __len__(self) -> int:
        return len(self._plans)


CACHE = _Cache()
get = CACHE.get
put = CACHE.put


def clear() -> int:
    """Drop every plan; return how many there were."""
    return CACHE.clear()


def info() -> dict[str, int]:
    """Plans kept, the bound, and hits and misses since the last :func:`clear`."""
    return {"plans": len(CACHE), "max_plans": max_plans(), "hits": CACHE.hits,
            "misses": CACHE.misses}


if hasattr(os, "register_at_fork"):
    # a forked child may be refused CPU kernels (fastconv.cpu.threads) or run a
    # different thread count: it starts with no plans, and a fresh lock
    def _after_fork_in_child() -> None:
        CACHE._lock = threading.Lock()
        CACHE._plans.clear()

    os.register_at_fork(after_in_child=_after_fork_in_child)
