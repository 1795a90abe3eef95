"""The kernel registry and the choice of algorithm.

Kernels register themselves under ``(op, device, algorithm)``::

    @register("conv2d", "cpu", "im2col")
    def _conv2d_im2col(x, weight, bias, out, stride, padding, dilation, groups,
                       activation=None): ...

(the arguments of :mod:`fastconv.ops`'s table; a conv2d kernel gets ``activation``
only when the caller asks for one, so one written without it still runs every call
that has none) and each ``(op, device)`` registers one chooser that ``algorithm="auto"``
asks for ``(name, reason)``, given the problem's shapes (or, with autotuning
on, :mod:`fastconv.tune` times the candidates). The public functions in
:mod:`fastconv.functional` only call :func:`select`, so a new backend or a new
algorithm (Winograd, a fused epilogue) is added by registering it, without
editing the API.

Backends are imported on first use, so ``import fastconv`` neither imports
Numba nor compiles anything.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from . import ops

#: The package that registers each device's kernels when imported.
BACKENDS: dict[str, str] = {"cpu": "fastconv.cpu", "cuda": "fastconv.cuda.backend"}

#: Every op that has kernels: the names of :data:`fastconv.ops.TABLE`, in its order.
OPS: tuple[str, ...] = ops.NAMES

_KERNELS: dict[tuple[str, str, str], Callable[..., Any]] = {}
_CHOOSERS: dict[tuple[str, str], Callable[..., str]] = {}
_UNSUPPORTED: dict[tuple[str, str, str], Callable[..., str | None]] = {}
_LOADED: set[str] = set()


def _forget_plans() -> None:
    """A new kernel or chooser may change what a cached plan would run."""
    plans = sys.modules.get("fastconv.plans")
    if plans is not None:
        plans.clear()


def register(
    op: str,
    device: str,
    algorithm: str,
    *,
    unsupported: Callable[..., str | None] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``kernel`` as ``algorithm`` of ``op`` on ``device``.

    A kernel that handles only some problems (Winograd: 3x3, stride 1) passes
    ``unsupported(**problem)``, which returns why it cannot run a problem, or
    None if it can.
    """
    if algorithm == "auto":
        raise ValueError("'auto' is reserved for the chooser and cannot name a kernel")

    def decorate(kernel: Callable[..., Any]) -> Callable[..., Any]:
        _forget_plans()
        _KERNELS[op, device, algorithm] = kernel
        if unsupported is not None:
            _UNSUPPORTED[op, device, algorithm] = unsupported
        else:
            _UNSUPPORTED.pop((op, device, algorithm), None)
        return kernel

    return decorate


def unsupported_reason(op: str, device: str, algorithm: str, **problem: Any) -> str | None:
    """Why ``algorithm`` cannot run this problem, or None if it can."""
    check = _UNSUPPORTED.get((op, device, algorithm))
    return None if check is None else check(**problem)


def register_chooser(op: str, device: str) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Decorator: register the function that ``algorithm="auto"`` asks for a name: it
    returns ``(name, reason)``, the reason one sentence saying which rule fired (or
    just the name)."""

    def decorate(chooser: Callable[..., str]) -> Callable[..., str]:
        _forget_plans()
        _CHOOSERS[op, device] = chooser
        return chooser

    return decorate


def _load(device: str) -> None:
    if device in _LOADED:
        return
    if device not in BACKENDS:
        raise ValueError(f"device must be one of {sorted(BACKENDS)}, got {device!r}")
    importlib.import_module(BACKENDS[device])
    _LOADED.add(device)


def available_algorithms(op: str, device: str = "cpu") -> tuple[str, ...]:
    """Names accepted as ``algorithm=`` for ``op`` on ``device``, ``"auto"`` first.

    >>> available_algorithms("conv2d")
    ('auto', 'direct', 'im2col', 'reference', 'winograd')
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {list(OPS)}, got {op!r}")
    _load(device)
    names = sorted(name for (o, d, name) in _KERNELS if o == op and d == device)
    return ("auto", *names) if (op, device) in _CHOOSERS else tuple(names)


class Choice(NamedTuple):
    """An algorithm the dispatcher picked, and why."""

    algorithm: str
    kernel: Callable[..., Any]
    #: "requested" (named by the caller), "heuristic" (the chooser's shape rules),
    #: "measured" (timed in this process) or "cache" (from the tuning file)
    source: str
    reason: str
    device: str = "cpu"


def choose(op: str, device: str, algorithm: str, *, arrays: tuple = (), params: tuple = (),
           **problem: Any) -> Choice:
    """The kernel for ``algorithm`` (``"auto"`` asks the chooser, or the autotuner when
    it is on), with its source and reason.

    ``problem`` holds the shapes and parameters the chooser decides on;
    ``arrays`` (each kernel array argument's ``(shape, dtype)`` or None) and
    ``params`` (the kernel's other arguments) let the autotuner time the
    candidates on scratch arrays.
    """
    if not isinstance(algorithm, str):
        raise TypeError(f"algorithm must be a str, got {algorithm!r}")
    names = available_algorithms(op, device)
    if algorithm not in names:
        raise ValueError(
            f"unknown algorithm {algorithm!r} for {op} on {device}; available: {', '.join(names)}"
        )
    if algorithm != "auto":
        source, reason = "requested", f"algorithm={algorithm!r} was asked for"
    else:
        chosen = _CHOOSERS[op, device](**problem)
        algorithm, reason = ((chosen, "the registered chooser's choice")
                             if isinstance(chosen, str) else chosen)
        source = "heuristic"
        if device == "cpu" and arrays:
            tuned = _tuned(op, device, names, arrays, params, problem)
            if tuned is not None:
                algorithm, source, reason = tuned
    why_not = unsupported_reason(op, device, algorithm, **problem)
    if why_not is not None:
        raise ValueError(f"algorithm {algorithm!r} cannot compute this {op}: {why_not}")
    return Choice(algorithm, _KERNELS[op, device, algorithm], source, reason, device)


def _tuned(op, device, names, arrays, params, problem):
    """The autotuner's ``(algorithm, source, reason)``, or None (autotuning off, a
    single candidate, or nothing cached while measuring is not allowed)."""
    from . import tune

    if not tune.autotune_enabled():
        return None
    candidates = {name: _KERNELS[op, device, name] for name in names
                  if name not in ("auto", "reference")
                  and unsupported_reason(op, device, name, **problem) is None}
    if len(candidates) < 2:
        return None
    key = tune.problem_key(op, arrays, params)
    found = tune.lookup(key)
    if found is not None and found[0] in candidates:
        return found
    return tune.measure(op, key, candidates, arrays, params)


def select(op: str, device: str, algorithm: str, **problem: Any) -> tuple[str, Callable[..., Any]]:
    """Return ``(name, kernel)`` for ``algorithm`` (``"auto"`` asks the chooser); see
    :func:`choose`."""
    choice = choose(op, device, algorithm, **problem)
    return choice.algorithm, choice.kernel
