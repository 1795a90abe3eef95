"""The kernel ops: one table that the registry, the backends, the warm-up and the
benchmarks all read.

Each :class:`Op` says how the kernels of one op are called (their arguments, in
order, and which of them they write), which reference loops stand for it
(``algorithm="reference"``, :mod:`fastconv.reference_kernels`), which kind of
chooser picks its algorithm for ``algorithm="auto"`` (each backend implements
each kind with its own rules), and how :func:`fastconv.warmup` compiles it.
From the table come :data:`fastconv.dispatch.OPS`, the reference and chooser
registrations of :mod:`fastconv.cpu` and :mod:`fastconv.cuda.backend`, the
arrays the CUDA backend copies back, the warm-up calls, and the check that the
benchmarks (:mod:`fastconv.bench`) reach every op. A new op is added here, its
kernels registered by the backends; a missing chooser kind, warm-up or
benchmark is caught by ``tests/test_ops.py``.

This module imports numpy and the reference loops only: neither Numba nor
:mod:`fastconv.functional` (a warm-up call is handed that module).

>>> TABLE["max_pool2d"].arguments[:3], TABLE["max_pool2d"].output_positions
(('x', 'out', 'indices'), (1, 2))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Any

import numpy as np

from . import reference, reference_kernels

#: The kinds of chooser an op may ask for: ``"conv"``, a convolution whose
#: algorithm depends on the layer's shape (each backend's shape rules), and
#: ``"single"``, the backend's one direct kernel.
CHOOSER_KINDS: tuple[str, ...] = ("conv", "single")

#: ``(functional module, dtype, algorithm) -> anything``: a warm-up call.
WarmUp = Callable[[ModuleType, np.dtype, str], object]


@dataclass(frozen=True)
class Op:
    """One kernel op: how its kernels are called, and what stands for it elsewhere."""

    #: The registry's name, e.g. ``"conv2d_grad_input"``.
    name: str
    #: The kernels' positional arguments, in order (arrays first, outputs among them).
    arguments: tuple[str, ...]
    #: The arguments a kernel writes.
    outputs: tuple[str, ...]
    #: The reference loops with the kernels' signature (``algorithm="reference"``).
    reference: Callable[..., Any]
    #: The kind of chooser ``algorithm="auto"`` asks (one of :data:`CHOOSER_KINDS`).
    chooser: str
    #: One warm-up call that reaches each kernel of the op for ``algorithm``.
    warm_up: WarmUp
    #: Whether the CPU lists ``"reference"`` for the op (grad_bias's one CPU kernel is
    #: the sum itself, so ``available_algorithms("conv2d_grad_bias")`` is ``auto,
    #: direct``); the CUDA backend offers the reference for every op.
    reference_on_cpu: bool = True

    def __post_init__(self) -> None:
        if self.chooser not in CHOOSER_KINDS:
            raise ValueError(f"{self.name}: chooser must be one of {CHOOSER_KINDS}, "
                             f"got {self.chooser!r}")
        missing = [name for name in self.outputs if name not in self.arguments]
        if missing or not self.outputs:
            raise ValueError(f"{self.name}: outputs {self.outputs} must be some of its "
                             f"arguments {self.arguments}")

    @property
    def output_positions(self) -> tuple[int, ...]:
        """The positions of :attr:`outputs` among :attr:`arguments`."""
        return tuple(self.arguments.index(name) for name in self.outputs)


# --- the warm-up calls: tiny inputs, stride 1 and 2, with and without indices ------------


class _Tiny:
    """The warm-up's inputs in ``dtype``: 2x2x6x6 and 2x4x6x6 inputs with 3x3 weights of 2
    and 4 filters (the loop kernels and the register-blocked ones, which take at least
    4 filters and 4 channels per group), their output gradients of stride 1 and 2, and
    a 2x2 max pooling with its indices."""

    def __init__(self, dtype: np.dtype) -> None:
        self.x = np.arange(2 * 2 * 6 * 6, dtype=dtype).reshape(2, 2, 6, 6) % 7
        self.w = np.ones((2, 2, 3, 3), dtype)
        self.b = np.ones(2, dtype)
        self.y1 = np.ones((2, 2, 6, 6), dtype)
        self.y2 = np.ones((2, 2, 3, 3), dtype)
        self.pooled, self.where = reference.max_pool2d(self.x, 2, return_indices=True)

    def convolutions(self) -> tuple:
        """``(x, weight, bias, grad_out stride 1, grad_out stride 2)`` of both sizes."""
        dtype = self.x.dtype
        x4 = np.arange(2 * 4 * 6 * 6, dtype=dtype).reshape(2, 4, 6, 6) % 5
        w4 = np.ones((4, 4, 3, 3), dtype)
        return ((self.x, self.w, self.b, self.y1, self.y2),
                (x4, w4, np.ones(4, dtype), np.ones((2, 4, 6, 6), dtype),
                 np.ones((2, 4, 3, 3), dtype)))

    def strided(self, op: str, algorithm: str, groups: int = 1) -> bool:
        """Whether ``algorithm`` of ``op`` takes stride 2 with ``groups`` (Winograd: the
        conv2d of one group only)."""
        from . import dispatch

        return dispatch.unsupported_reason(op, "cpu", algorithm, weight_shape=self.w.shape,
                                           stride=(2, 2), padding=((1, 1), (1, 1)),
                                           dilation=(1, 1), groups=groups) is None


_ONLY_INPUT = {"needs_weight_grad": False, "needs_bias_grad": False}


def _warm_conv2d(f: ModuleType, dtype: np.dtype, a: str) -> object:
    t = _Tiny(dtype)
    calls = [(f.conv2d(x, w, b, padding=1, algorithm=a),
              t.strided("conv2d", a) and f.conv2d(x, w, stride=2, padding=1, algorithm=a))
             for x, w, b, _, _ in t.convolutions()]
    # a depthwise layer at a stride (the direct algorithm's phases kernel), and at stride 1
    # keeping its size (direct: on whole planes)
    depthwise = np.ones((2, 1, 3, 3), dtype)
    return calls + [t.strided("conv2d", a, groups=2)
                    and f.conv2d(t.x, depthwise, stride=2, padding=1, groups=2, algorithm=a),
                    a == "direct" and f.conv2d(t.x, depthwise, padding=1, groups=2,
                                               algorithm=a),
                    # Winograd's 5x5 kernels (F(2x2, 5x5)), conv2d's and grad_input's
                    a == "winograd" and f.conv2d(t.x, np.ones((2, 2, 5, 5), dtype), padding=2,
                                                 algorithm=a)]


def _warm_conv2d_grad_input(f: ModuleType, dtype: np.dtype, a: str) -> object:
    t = _Tiny(dtype)

    def stride_one(x, w, y1):
        return f.conv2d_backward(y1, x, w, padding=1, algorithm=a, **_ONLY_INPUT)

    calls = [(stride_one(x, w, y1), t.strided("conv2d_grad_input", a)
              and f.conv2d_backward(y2, x, w, stride=2, padding=1, algorithm=a, **_ONLY_INPUT))
             for x, w, _, y1, y2 in t.convolutions()]
    if a == "direct":
        # a depthwise layer at a stride (the direct algorithm's phase-by-phase kernel)
        calls.append(f.conv2d_backward(t.y2, t.x, np.ones((2, 1, 3, 3), dtype), stride=2,
                                       padding=1, groups=2, algorithm=a, **_ONLY_INPUT))
        # the direct kernel packs a large weight's flipped filters apart and keeps them
        # between calls (cpu.blocked.KEEP_FLIPPED_MIN_VALUES): the tiny weights take that
        # path here too, so that its packing kernel compiles now
        from .cpu import blocked

        saved, blocked.KEEP_FLIPPED_MIN_VALUES = blocked.KEEP_FLIPPED_MIN_VALUES, 0
        try:
            calls += [stride_one(x, w, y1) for x, w, _, y1, _ in t.convolutions()]
        finally:
            blocked.KEEP_FLIPPED_MIN_VALUES = saved
    return calls


def _warm_conv2d_grad_weight(f: ModuleType, dtype: np.dtype, a: str) -> object:
    t = _Tiny(dtype)
    calls: list[object] = [
        (f.conv2d_backward(y1, x, w, padding=1, algorithm=a, needs_input_grad=False),
         t.strided("conv2d_grad_weight", a)
         and f.conv2d_backward(y2, x, w, stride=2, padding=1, algorithm=a,
                               needs_input_grad=False))
        for x, w, _, y1, y2 in t.convolutions()]
    if a == "direct":
        # direct's dot products for few taps (cpu.fewtaps), which take larger calls than
        # these, called as direct calls them, at stride 1 and 2 (no plan is left behind)
        from .cpu import fewtaps

        calls += [fewtaps.conv2d_grad_weight_few_taps(t.x, y, np.empty_like(t.w), (s, s),
                                                      ((1, 1), (1, 1)), (1, 1))
                  for y, s in ((t.y1, 1), (t.y2, 2))]
        # depthwise layers: keeping their size, on whole planes; smaller, the dot products
        # over each channel's strip
        depthwise = np.ones((2, 1, 3, 3), dtype)
        calls += [f.conv2d_backward(y, t.x, depthwise, padding=padding, groups=2,
                                    algorithm=a, needs_input_grad=False)
                  for y, padding in ((t.y1, 1), (t.y1[:, :, 1:-1, 1:-1], 0))]
        # the loops take 2 filters of more taps than AUTO_FEW_TAPS_MAX (36 against 32)
        x4 = t.convolutions()[1][0]
        calls.append(f.conv2d_backward(t.y1, x4, np.ones((2, 4, 3, 3), dtype), padding=1,
                                       algorithm=a, needs_input_grad=False))
        # a large weight's gradient is scanned by the threads (blocked's
        # GRAD_WEIGHT_PARALLEL_SUMS_MIN)
        from .cpu import finite

        calls.append(finite.warm(dtype))
    return calls


def _warm_conv2d_grad_bias(f: ModuleType, dtype: np.dtype, a: str) -> object:
    # conv2d_backward's algorithm= names grad_input's and grad_weight's: grad_bias runs
    # its one kernel ("auto")
    t = _Tiny(dtype)
    return f.conv2d_backward(t.y1, t.x, t.w, padding=1, needs_input_grad=False,
                             needs_weight_grad=False)


def _warm_max_pool2d(f: ModuleType, dtype: np.dtype, a: str) -> object:
    t = _Tiny(dtype)
    # 2x2 windows and others (kernels of their own), each with and without indices
    return [f.max_pool2d(t.x, *window, return_indices=indices, algorithm=a)
            for window in ((2,), (3, 2, 1)) for indices in (False, True)]


def _warm_max_pool2d_backward(f: ModuleType, dtype: np.dtype, a: str) -> object:
    t = _Tiny(dtype)
    return f.max_pool2d_backward(t.pooled, t.where, t.x.shape, algorithm=a)


def _warm_avg_pool2d(f: ModuleType, dtype: np.dtype, a: str) -> object:
    t = _Tiny(dtype)
    return f.avg_pool2d(t.x, 2, algorithm=a), f.avg_pool2d(t.x, 3, 2, 1, algorithm=a)


def _warm_avg_pool2d_backward(f: ModuleType, dtype: np.dtype, a: str) -> object:
    t = _Tiny(dtype)
    return f.avg_pool2d_backward(t.pooled, t.x.shape, 2, algorithm=a)


def _warm_max_unpool2d(f: ModuleType, dtype: np.dtype, a: str) -> object:
    t = _Tiny(dtype)
    return f.max_unpool2d(t.pooled, t.where, 2, algorithm=a)


def _warm_max_unpool2d_backward(f: ModuleType, dtype: np.dtype, a: str) -> object:
    t = _Tiny(dtype)
    return f.max_unpool2d_backward(t.x, t.where, algorithm=a)


def _warm_repeat_unpool2d(f: ModuleType, dtype: np.dtype, a: str) -> object:
    t = _Tiny(dtype)
    return f.repeat_unpool2d(t.pooled, 2, algorithm=a)


def _warm_repeat_unpool2d_backward(f: ModuleType, dtype: np.dtype, a: str) -> object:
    t = _Tiny(dtype)
    return f.repeat_unpool2d_backward(t.x, 2, algorithm=a)


# --- the table ------------------------------------------------------------------------------

_CONV = ("stride", "padding", "dilation", "groups")
_POOL = ("kernel_size", "stride", "padding")
_AVG = (*_POOL, "ceil_mode", "count_include_pad", "divisor_override")

_OPS: tuple[Op, ...] = (
    Op("conv2d", ("x", "weight", "bias", "out", *_CONV, "activation"), ("out",),
       reference_kernels.conv2d, "conv", _warm_conv2d),
    # a conv2d_grad_input kernel writes every value of grad_in (it gets an empty array)
    Op("conv2d_grad_input", ("grad_out", "weight", "grad_in", *_CONV), ("grad_in",),
       reference_kernels.conv2d_grad_input, "conv", _warm_conv2d_grad_input),
    Op("conv2d_grad_weight", ("x", "grad_out", "grad_weight", *_CONV), ("grad_weight",),
       reference_kernels.conv2d_grad_weight, "conv", _warm_conv2d_grad_weight),
    Op("conv2d_grad_bias", ("grad_out", "grad_bias"), ("grad_bias",),
       reference_kernels.conv2d_grad_bias, "single", _warm_conv2d_grad_bias,
       reference_on_cpu=False),
    Op("max_pool2d", ("x", "out", "indices", *_POOL, "dilation", "ceil_mode"),
       ("out", "indices"),
       reference_kernels.max_pool2d, "single", _warm_max_pool2d),
    Op("max_pool2d_backward", ("grad_out", "indices", "grad_in"), ("grad_in",),
       reference_kernels.max_pool2d_backward, "single", _warm_max_pool2d_backward),
    Op("avg_pool2d", ("x", "out", *_AVG), ("out",),
       reference_kernels.avg_pool2d, "single", _warm_avg_pool2d),
    Op("avg_pool2d_backward", ("grad_out", "grad_in", *_AVG), ("grad_in",),
       reference_kernels.avg_pool2d_backward, "single", _warm_avg_pool2d_backward),
    Op("max_unpool2d", ("x", "indices", "out"), ("out",),
       reference_kernels.max_unpool2d, "single", _warm_max_unpool2d),
    Op("max_unpool2d_backward", ("grad_out", "indices", "grad_in"), ("grad_in",),
       reference_kernels.max_unpool2d_backward, "single", _warm_max_unpool2d_backward),
    Op("repeat_unpool2d", ("x", "out", "scale"), ("out",),
       reference_kernels.repeat_unpool2d, "single", _warm_repeat_unpool2d),
    Op("repeat_unpool2d_backward", ("grad_out", "grad_in", "scale"), ("grad_in",),
       reference_kernels.repeat_unpool2d_backward, "single", _warm_repeat_unpool2d_backward),
)

#: Every kernel op by name, in the table's order.
TABLE: Mapping[str, Op] = MappingProxyType({op.name: op for op in _OPS})

#: The ops' names, in the table's order (:data:`fastconv.dispatch.OPS`).
NAMES: tuple[str, ...] = tuple(TABLE)
