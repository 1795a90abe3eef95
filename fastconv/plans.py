"""The plan cache: what a call has validated and chosen, kept for the next call like it.

The first call of a public op with a given *problem key* checks every
argument, asks the dispatcher for an algorithm and builds a *plan*: a small
closure that holds the kernel, the normalised parameters and the output
shape, and runs them. A later call with the same key finds the plan with a
few dict lookups and runs it, skipping the checks, the argument
normalisation and the choice.

The key holds everything the checks looked at, so a cache hit never accepts
what a miss would refuse:

- each array argument's exact type, shape, strides (its layout: C-contiguous
  or not) and dtype; a plan is kept only for numpy arrays (no subclass) of
  float32/float64 values and integer indices (:func:`cacheable`, checked on a
  miss), so a hit has arrays that passed;
- every other argument by value *and* type: ints, strings, None, bools and
  tuples and lists of these (``stride=True`` or ``stride=1.0`` never meet the
  plan of ``stride=1``; a list is copied into the key, so changing it later
  changes nothing); any other form (a numpy integer, a float) takes the full
  path each time, with the same result;
- :func:`state`: the settings' generation (any change of a
  ``fastconv.config`` value, the ``AUTO_*`` thresholds included), autotuning
  on or off, and Numba's thread count.

Calls with ``device=`` or GPU arrays are not cached (their placement does work per
call). conv2d's ``out=`` is keyed as an array argument; its plan checks per call what a
key cannot hold (that ``out`` is writeable and shares no memory with an input). The
cache is bounded (``FASTCONV_PLAN_CACHE_SIZE`` plans, least recently used dropped first,
as a second-chance clock approximates it: a hit marks its plan instead of moving it),
thread-safe, emptied in a child process after ``fork`` and by :func:`clear`, which
``fastconv.clear_plans()`` calls.
"""

from __future__ import annotations

import contextlib
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


class NotKeyed(Exception):  # noqa: N818 - a signal, caught where keys are built
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
    raise NotKeyed


def param(value: Any) -> Any:
    """An argument as a key holds it: itself when it is an int, a str or None (or a pair
    of ints), else its typed form (bools and lists marked apart from ints and tuples);
    raises :class:`NotKeyed` for a form the key does not cover (a numpy integer, a
    float)."""
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int \
            and type(value[1]) is int:
        return value
    return _param(value)


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


def state() -> tuple:
    """What a plan depends on besides its arguments, the last part of every key: the
    settings' generation (``fastconv.config`` counts every change of a setting: the
    ``AUTO_*`` thresholds, tile sizes), autotuning set on or off, and Numba's thread
    count on this thread (a kernel's tiling and scratch are sized by it)."""
    return config._generation, tune._enabled, thread_count()


#: What building a key raises for an argument it does not cover: the call then takes
#: the full path (an argument without ``shape``, a numpy integer, a float size).
NOT_KEYED = (AttributeError, NotKeyed)


def key(op: str, values: tuple, indices: tuple, params: tuple, algorithm: Any) -> tuple | None:
    """The problem key of a call of ``op``, or None when the call cannot be cached.

    ``values`` are the float array arguments (None allowed: a missing bias),
    ``indices`` the integer ones, ``params`` every other argument but
    ``algorithm``. Each array stands in the key as its type, shape, strides and
    dtype; whether they make a host call that may be cached is checked on a miss
    (:func:`cacheable`), so a hit costs no checks. The hot ops build the same tuple
    inline (:mod:`fastconv.functional`).
    """
    try:
        parts: list = [op, algorithm if type(algorithm) is str else param(algorithm)]
        for array in (*values, *indices):
            if array is None:
                parts.append(None)
            else:
                parts += (type(array), array.shape, array.strides, array.dtype)
        for value in params:
            parts.append(value if type(value) is int or value is None else param(value))
        return (*parts, *state())
    except NOT_KEYED:
        return None


def cacheable(problem: tuple | None, values: tuple, indices: tuple = ()) -> tuple | None:
    """``problem`` when the call it keys may be cached, else None: every value array a
    numpy array (no subclass) of float32 or float64 (None allowed), every index array
    one of an integer dtype. Checked on a miss only: a key holds each array's type and
    dtype, so a later hit has arrays that passed."""
    if problem is None:
        return None
    for array in values:
        if array is not None and (type(array) is not np.ndarray or array.dtype not in _FLOATS):
            return None
    for array in indices:
        if type(array) is not np.ndarray or array.dtype.kind not in "iu":
            return None
    return problem


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
        try:
            plan = self._plans.get(problem)
        except TypeError:  # an unhashable argument (algorithm=[...]): the full path
            return None
        if plan is None:
            self.misses += 1
            return None
        self.hits += 1
        # used since the eviction last passed it (moving it to the end here would hash
        # the key a second time on every hit)
        plan.recent = True  # type: ignore[attr-defined]
        return plan

    def put(self, problem: tuple | None, plan: Callable[..., Any]) -> Callable[..., Any]:
        if _explaining and getattr(_explain, "on", False):
            raise Explained(plan)
        building.op = None if problem is None else problem[0]
        if problem is not None and getattr(plan, "cacheable", True) and max_plans() > 0:
            with self._lock:
                try:
                    self._plans[problem] = plan
                except TypeError:  # unhashable: the call runs, nothing is kept
                    return plan
                self._plans.move_to_end(problem)
                self._evict(max_plans(), problem)
        return plan

    def _evict(self, bound: int, new: tuple) -> None:
        """Drop plans, oldest first, until ``bound`` are left, never the ``new`` one; a
        plan used since it was last passed over goes to the end instead, once (least
        recently used first, as a second-chance clock approximates it)."""
        plans = self._plans
        while len(plans) > bound:
            problem, plan = plans.popitem(last=False)
            if problem == new or getattr(plan, "recent", False):
                plan.recent = False  # type: ignore[attr-defined]
                plans[problem] = plan

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
