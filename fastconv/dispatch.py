"""The kernel registry and the choice of algorithm.

Kernels register themselves under ``(op, device, algorithm)``::

    @register("conv2d", "cpu", "im2col")
    def _conv2d_im2col(x, weight, bias, out, stride, padding, dilation, groups): ...

and each ``(op, device)`` registers one chooser that ``algorithm="auto"``
asks for a name, given the problem's shapes. The public functions in
:mod:`fastconv.functional` only call :func:`select`, so a new backend or a new
algorithm (Winograd, a fused epilogue) is added by registering it, without
editing the API.

Backends are imported on first use, so ``import fastconv`` neither imports
Numba nor compiles anything.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

#: The package that registers each device's kernels when imported.
BACKENDS: dict[str, str] = {"cpu": "fastconv.cpu", "cuda": "fastconv.cuda.backend"}

#: Every op that has kernels, with the device names it may run on.
OPS: tuple[str, ...] = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias",
                        "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
                        "max_unpool2d", "max_unpool2d_backward", "repeat_unpool2d",
                        "repeat_unpool2d_backward")

_KERNELS: dict[tuple[str, str, str], Callable[..., Any]] = {}
_CHOOSERS: dict[tuple[str, str], Callable[..., str]] = {}
_UNSUPPORTED: dict[tuple[str, str, str], Callable[..., str | None]] = {}
_LOADED: set[str] = set()

#: Devices whose kernels cannot run in this process, each with a function that makes
#: the error saying why (the CPU in a child forked after its parent used GNU OpenMP:
#: fastconv.cpu.threads); a new error each call, so no traceback piles up on one object.
BLOCKED: dict[str, Callable[[], Exception]] = {}


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
    """Decorator: register the function that ``algorithm="auto"`` asks for a name."""

    def decorate(chooser: Callable[..., str]) -> Callable[..., str]:
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


def select(op: str, device: str, algorithm: str, **problem: Any) -> tuple[str, Callable[..., Any]]:
    """Return ``(name, kernel)`` for ``algorithm`` (``"auto"`` asks the chooser).

    ``problem`` holds the shapes and parameters the chooser decides on.
    """
    if not isinstance(algorithm, str):
        raise TypeError(f"algorithm must be a str, got {algorithm!r}")
    names = available_algorithms(op, device)
    if algorithm not in names:
        raise ValueError(
            f"unknown algorithm {algorithm!r} for {op} on {device}; available: {', '.join(names)}"
        )
    if device in BLOCKED:
        raise BLOCKED[device]()
    if algorithm == "auto":
        algorithm = _CHOOSERS[op, device](**problem)
    reason = unsupported_reason(op, device, algorithm, **problem)
    if reason is not None:
        raise ValueError(f"algorithm {algorithm!r} cannot compute this {op}: {reason}")
    return algorithm, _KERNELS[op, device, algorithm]
