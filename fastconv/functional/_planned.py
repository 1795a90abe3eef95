"""Pieces the ops' plans share (:mod:`fastconv.plans`): the cheap conversions a cached
plan makes of its arrays, and the record of what it chose."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..dispatch import Choice


def as_batched(array: np.ndarray, unbatched: bool, ready: bool) -> np.ndarray:
    """A value array as the kernels take it: 4-D (a batch axis of 1 in front of an
    unbatched one) and C-contiguous (``ready``: it already is)."""
    if unbatched:
        array = array[None]
    return array if ready else np.ascontiguousarray(array)


def as_contiguous(array: np.ndarray | None, ready: bool) -> np.ndarray | None:
    return array if ready or array is None else np.ascontiguousarray(array)


def as_indices(array: np.ndarray, unbatched: bool, ready: bool) -> np.ndarray:
    """An index array as the kernels take it: 4-D, C-contiguous int64."""
    if unbatched:
        array = array[None]
    return array if ready else np.ascontiguousarray(array, dtype=np.int64)


def indices_ready(array: np.ndarray) -> bool:
    return array.dtype == np.int64 and array.flags.c_contiguous


def kernel_arrays(dtype: np.dtype, *shapes: tuple[int, ...] | None) -> tuple:
    """Each kernel array argument as ``(shape, dtype)`` (or None): what the autotuner
    makes scratch arrays of."""
    return tuple(None if shape is None else (tuple(shape), dtype) for shape in shapes)


def runner(kernel: Callable[..., Any], arrays: tuple, params: tuple) -> Callable[..., Any]:
    """``kernel`` with its trailing ``params`` bound: ``run(*array_arguments)``. A host
    function with a ``prepare(arrays, params)`` attribute (``arrays`` as
    :func:`kernel_arrays` gives them) works out its tiling and scratch sizes for these
    shapes once, for a plan that runs it many times, and returns its own runner (or
    None where it has no such path)."""
    prepare = getattr(kernel, "prepare", None)
    prepared = None if prepare is None else prepare(arrays, params)
    if prepared is not None:
        return prepared

    def run(*args):
        return kernel(*args, *params)

    return run


def described(plan: Callable[..., Any], *choices: tuple[str, Choice],
              cacheable: bool = True) -> Callable[..., Any]:
    """``plan`` with ``plan.choices``: ``(kernel op, Choice)`` for each kernel it runs, the
    record :func:`fastconv.explain` reads; ``cacheable=False`` keeps it out of the plan
    cache (it runs on the arrays it was made from)."""
    plan.choices = choices  # type: ignore[attr-defined]
    plan.cacheable = cacheable  # type: ignore[attr-defined]
    return plan


def _identity(array):
    return array


def _converter(kind: str, array: Any, unbatched: bool) -> Callable[[Any], Any]:
    """How a cached plan turns an argument like ``array`` into what its kernels take:
    ``"values"`` a 4-D C-contiguous float array, ``"indices"`` a 4-D C-contiguous int64
    one (both with a batch axis added when ``unbatched``), ``"plain"`` a C-contiguous
    array as it is (a weight or a bias; None stays None)."""
    if kind == "plain":
        ready = array is None or array.flags.c_contiguous
        return _identity if ready else lambda a: as_contiguous(a, False)
    if kind == "values":
        ready = array.flags.c_contiguous
        if ready and not unbatched:
            return _identity
        return lambda a: as_batched(a, unbatched, ready)
    ready = indices_ready(array)
    if ready and not unbatched:
        return _identity
    return lambda a: as_indices(a, unbatched, ready)


def make_plan(place: Any, cacheable: bool, compute: Callable[..., Any], raw: tuple,
              converted: tuple, kinds: tuple[str, ...], unbatched: bool,
              *choices: tuple[str, Choice]) -> Callable[..., Any]:
    """The plan of an op: ``compute`` on its converted arrays (one to three of them).

    A host call that the cache may keep (``cacheable``) gets a plan that converts
    whatever arrays it is given, as :func:`_converter` says for ``kinds``; any other
    call gets one bound to ``converted``, the arrays this call's checks made.
    """
    from ..placement import HOST

    if not (cacheable and place is HOST):
        def bound(*_):
            return compute(*converted)

        return described(bound, *choices, cacheable=False)
    first, *rest = (_converter(k, a, unbatched) for k, a in zip(kinds, raw, strict=True))
    if not rest:
        if first is _identity:  # nothing to convert: the plan is compute itself
            return described(compute, *choices)

        def plan(a):
            return compute(first(a))

        return described(plan, *choices)
    if len(rest) == 1:
        (second,) = rest
        if first is second is _identity:
            return described(compute, *choices)

        def plan2(a, b):
            return compute(first(a), second(b))

        return described(plan2, *choices)
    second, third = rest
    if first is second is third is _identity:
        return described(compute, *choices)

    def plan3(a, b, c):
        return compute(first(a), second(b), third(c))

    return described(plan3, *choices)
