"""The conv2d layer suite, the op suite, and the timing code behind
``python -m fastconv bench`` and the pytest benchmarks in ``benchmarks/``.

The op suite (:data:`OP_CASES`) times the other ops the same way: conv2d's
gradients on layers c, d and g of the layer suite, conv_transpose2d, pooling
and unpooling, in GFLOP/s for the conv ops and in GB/s (bytes of the arrays
read and written) for the others, with the issue's speed bars
(:data:`SPEED_BARS`) checked on the ratios torch/auto.

Timing rules, the same for every implementation:

- JIT compilation stays out of the timings: each implementation is called at
  least twice (and for at least ``WARMUP_S`` seconds) before it is timed; the
  compile time is measured on its own, in a fresh process
  (:func:`cold_compile_time`, :func:`warm_compile_time`).
- A cell is the median (and minimum) of plain calls timed with
  ``time.perf_counter``, as many as fit in ``BUDGET_S`` seconds, at least
  ``MIN_CALLS``. Every call allocates its output, as a user's call does, for
  fastconv and torch alike; :func:`configure_allocator` first makes glibc keep
  freed memory, so that no library page-faults a fresh buffer on every call
  (benchmarks/RESULTS.md, "Measurements behind the design", 1).
- torch runs on as many threads as Numba.
- The reference is timed on a smaller batch (``Layer.reference_batch``,
  ``OpCase.reference_batch``): its
  Python loops take about 3 us per output value, so a full layer takes
  seconds to minutes. Its GFLOP/s are comparable with the other columns, its
  milliseconds are not; "ref/auto" compares it with ``auto`` timed on that
  same batch. Where one image alone takes over a second (layer i) it is not
  timed.

This module imports numba only inside functions, and torch only when torch
is benchmarked.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, TypeVar

import numpy as np

import fastconv

from . import config, dispatch, plans, reference
from .ops import TABLE as KERNEL_OPS

#: Seconds of timed calls per cell (implementation x layer).
BUDGET_S = 1.0
#: Timed calls per cell: at least this many, even where one call exceeds the budget...
MIN_CALLS = 5
#: ... and at most this many, for calls of a few microseconds.
MAX_CALLS = 1000
#: Warm-up before timing: at least two calls and at least this many seconds,
#: so that the first call's compilation (or cache load) and the other library's
#: spinning thread pool are both behind us.
WARMUP_S = 0.2

#: Timed calls per cell in quick mode (smoke tests): (reference, others).
QUICK_CALLS = (1, 2)


@dataclass(frozen=True)
class Layer:
    """One conv2d problem: NCHW float32 input, K filters of R x S, with bias."""

    id: str
    batch: int
    channels: int
    height: int
    width: int
    filters: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    #: Batch the reference is timed on; None: not timed (too slow even for one image).
    reference_batch: int | None = None

    @property
    def description(self) -> str:
        """E.g. ``N8 C64 56x56, K128 3x3 s2 p1``."""
        text = f"N{self.batch} C{self.channels} {self.height}x{self.width}, K{self.filters} "
        text += f"{self.kernel}x{self.kernel}"
        if self.stride != 1:
            text += f" s{self.stride}"
        if self.padding:
            text += f" p{self.padding}"
        if self.groups == self.channels == self.filters:
            text += " depthwise"
        elif self.groups != 1:
            text += f" groups={self.groups}"
        return text

    @property
    def kwargs(self) -> dict[str, int]:
        """Keyword arguments of ``conv2d`` (fastconv, reference and torch alike)."""
        return {"stride": self.stride, "padding": self.padding, "groups": self.groups}

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.filters, self.channels // self.groups, self.kernel, self.kernel)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        out_h, out_w = fastconv.conv_output_size(
            (self.height, self.width), self.kernel, self.stride, self.padding
        )
        return (self.batch, self.filters, out_h, out_w)

    @property
    def flops(self) -> int:
        """``2 * N * K * H_out * W_out * C/groups * R * S`` (the bias is not counted).

        >>> LAYERS[0].flops == 2 * 64 * 6 * 24 * 24 * 1 * 5 * 5
        True
        """
        n, k, out_h, out_w = self.output_shape
        return 2 * n * k * out_h * out_w * (self.channels // self.groups) * self.kernel**2

    def problem(self) -> dict[str, Any]:
        """The problem fastconv's dispatcher decides ``conv2d`` on this layer on, as
        :mod:`fastconv.functional` builds it (``_ConvGeometry.problem()``)."""
        pad = (self.padding, self.padding)
        return {"input_shape": self.input_shape, "weight_shape": self.weight_shape,
                "stride": (self.stride, self.stride), "padding": (pad, pad),
                "dilation": (1, 1), "groups": self.groups, "dtype": np.dtype(np.float32)}

    def dispatched(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        """``(op, problem)`` of each algorithm choice a ``conv2d`` call on this layer makes."""
        return (("conv2d", self.problem()),)

    def with_batch(self, batch: int) -> Layer:
        """The same layer on ``batch`` images."""
        return dataclasses.replace(self, batch=batch)

    def reference_case(self) -> Layer | None:
        """The layer on the batch the reference is timed on, or None."""
        return None if self.reference_batch is None else self.with_batch(self.reference_batch)

    def make_inputs(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(input, weight, bias)`` in float32 from a seeded generator; unit-variance outputs."""
        rng = np.random.default_rng(seed)
        fan_in = (self.channels // self.groups) * self.kernel**2
        x = rng.standard_normal(self.input_shape, dtype=np.float32)
        w = rng.standard_normal(self.weight_shape, dtype=np.float32) * np.float32(fan_in**-0.5)
        b = rng.standard_normal(self.filters, dtype=np.float32)
        return x, w, b


#: The standard suite; benchmarks/RESULTS.md lists torch's speed on each.
LAYERS: tuple[Layer, ...] = (
    Layer("a", 64, 1, 28, 28, 6, 5, reference_batch=16),
    Layer("b", 64, 6, 12, 12, 16, 5, reference_batch=32),
    Layer("c", 8, 64, 56, 56, 64, 3, padding=1, reference_batch=1),
    Layer("d", 8, 128, 28, 28, 128, 3, padding=1, reference_batch=1),
    Layer("e", 8, 256, 14, 14, 256, 3, padding=1, reference_batch=1),
    Layer("f", 8, 64, 56, 56, 128, 3, stride=2, padding=1, reference_batch=1),
    Layer("g", 8, 256, 14, 14, 64, 1, reference_batch=4),
    Layer("h", 8, 128, 28, 28, 128, 3, padding=1, groups=128, reference_batch=1),
    Layer("i", 8, 3, 224, 224, 64, 7, stride=2, padding=3),
)


def _pick(spec: str, known: Sequence[str], what: str) -> list[str]:
    """The names in the comma-separated ``spec``, in the order of ``known``."""
    wanted = [part.strip() for part in spec.split(",") if part.strip()]
    unknown = [name for name in wanted if name not in known]
    if unknown or not wanted:
        raise ValueError(
            f"unknown {what} {', '.join(map(repr, unknown)) or repr(spec)}; "
            f"choose from {','.join(known)}"
        )
    return [name for name in known if name in wanted]


def select_layers(ids: str | None) -> list[Layer]:
    """The layers named in a comma-separated list of ids (None: all), in suite order.

    >>> [layer.id for layer in select_layers("h,a")]
    ['a', 'h']
    """
    if ids is None:
        return list(LAYERS)
    wanted = _pick(ids, [layer.id for layer in LAYERS], "layer id")
    return [layer for layer in LAYERS if layer.id in wanted]


# --- implementations -----------------------------------------------------------


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def implementation_names(
    op: str = "conv2d", *, include_torch: bool | None = None
) -> tuple[str, ...]:
    """``reference``, each fastconv algorithm of ``op`` by name, ``auto``, and ``torch``
    (by default only where it is installed), in the order of the table."""
    algorithms = [
        name
        for name in fastconv.available_algorithms(op)
        if name not in ("auto", "reference")
    ]
    if include_torch is None:
        include_torch = torch_installed()
    return ("reference", *algorithms, "auto", *(("torch",) if include_torch else ()))


def select_implementations(names: str | None) -> list[str]:
    """The implementations named in a comma-separated list (None: all available for
    conv2d), checked against those of both suites."""
    if names is None:
        return list(implementation_names())
    known = implementation_names(include_torch=True) + op_implementation_names(include_torch=True)
    wanted = _pick(names, list(dict.fromkeys(known)), "algorithm")
    if "torch" in wanted and not torch_installed():
        raise ValueError("torch is not installed; install it with pip install 'fastconv[bench]'")
    return wanted


def _torch():
    """torch, set to as many threads as Numba uses; ImportError where it is missing."""
    import numba
    import torch

    torch.set_num_threads(numba.get_num_threads())
    return torch


def prepare(layer: Layer, impl: str) -> Callable[[], object]:
    """A no-argument function that runs ``impl`` on ``layer``'s inputs, as a user
    would call it (allocating the output)."""
    x, w, b = layer.make_inputs()
    kwargs = layer.kwargs
    if impl == "reference":
        return lambda: reference.conv2d(x, w, b, **kwargs)
    if impl == "torch":
        torch = _torch()
        xt, wt, bt = (torch.from_numpy(a) for a in (x, w, b))
        conv2d = torch.nn.functional.conv2d
        return lambda: conv2d(xt, wt, bt, **kwargs)
    if impl not in fastconv.available_algorithms("conv2d"):
        raise ValueError(f"unknown implementation {impl!r}; choose from {implementation_names()}")
    return lambda: fastconv.conv2d(x, w, b, **kwargs, algorithm=impl)


def refusal(case: Layer | OpCase, impl: str) -> str | None:
    """Why fastconv's dispatcher refuses ``impl`` on ``case`` (a :class:`Layer` or an
    :class:`OpCase`), in its words, or None where it runs it. Decided from the problem
    (:func:`fastconv.dispatch.unsupported_reason`) without calling anything: such a cell
    is not timed (``-`` in the tables) and has no benchmark in ``benchmarks/``.

    >>> refusal(LAYERS[1], "winograd")  # doctest: +ELLIPSIS
    "algorithm 'winograd' cannot compute this conv2d: winograd needs a 3x3 kernel, ..."
    >>> refusal(LAYERS[2], "winograd"), refusal(LAYERS[1], "auto")
    (None, None)
    """
    if impl in ("reference", "torch"):
        return None
    for op, problem in case.dispatched():
        if impl not in dispatch.available_algorithms(op):
            return f"fastconv has no algorithm {impl!r} for {op}"
        reason = dispatch.unsupported_reason(op, "cpu", impl, **problem)
        if reason is not None:
            return f"algorithm {impl!r} cannot compute this {op}: {reason}"
    return None


def algorithm_of(layer: Layer, impl: str) -> str:
    """The kernel that runs for ``impl``: the chooser's pick for ``auto``, else ``impl``."""
    if impl != "auto":
        return impl
    name, _ = dispatch.select("conv2d", "cpu", "auto", **layer.problem())
    return name


# --- timing ----------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    calls: int


def warm_up(fn: Callable[[], object], *, calls: int = 2, seconds: float = WARMUP_S) -> float:
    """Call ``fn`` at least ``calls`` times and for at least ``seconds``; return
    the duration of the last call, an estimate of one warm call."""
    start = time.perf_counter()
    done = 0
    while True:
        before = time.perf_counter()
        fn()
        after = time.perf_counter()
        done += 1
        if done >= calls and after - start >= seconds:
            return after - before


def calls_for(per_call_s: float, budget_s: float = BUDGET_S) -> int:
    """Timed calls that fit in ``budget_s``, clamped to ``[MIN_CALLS, MAX_CALLS]``."""
    fit = int(budget_s / per_call_s) if per_call_s > 0 else MAX_CALLS
    return max(MIN_CALLS, min(MAX_CALLS, fit))


def time_calls(
    fn: Callable[[], object],
    *,
    repeat: int | None = None,
    budget_s: float = BUDGET_S,
    warmup_s: float = WARMUP_S,
) -> Timing:
    """Warm ``fn`` up, then time ``repeat`` calls (default: as many as fit in
    ``budget_s``) with the garbage collector paused."""
    per_call = warm_up(fn, seconds=warmup_s)
    calls = repeat if repeat is not None else calls_for(per_call, budget_s)
    times = []
    collecting = gc.isenabled()
    gc.disable()
    try:
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    finally:
        if collecting:
            gc.enable()
    return Timing(statistics.median(times), min(times), calls)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_allocator: str | None = None


def configure_allocator() -> str:
    """Make glibc's malloc reuse freed memory instead of returning it to the
    system, and say what the allocator is.

    By default large buffers are mapped fresh and page-faulted on every call,
    which can cost more than a convolution (torch on layer i: 27.5 ms instead
    of 10.2 ms). With mmap off and trimming at 1 GiB every library's output
    buffer comes back warm after the warm-up. Process-wide, applied once.
    """
    global _allocator
    if _allocator is None:
        _allocator = "system default"
        if platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL(None)
            if libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30):
                _allocator = "glibc malloc without mmap, trim threshold 1 GiB (same for all)"
    return _allocator


# --- the suite -----------------------------------------------------------------------


@dataclass
class Row:
    """One timed cell. ``vs_torch`` is torch's median over this one on the same
    case (> 1: faster than torch); None where torch was not timed on it."""

    layer: str
    batch: int
    reduced: bool  # timed on ``reference_batch`` images, not the layer's own batch
    impl: str
    algorithm: str
    median_ms: float
    min_ms: float
    calls: int
    gflops: float
    vs_torch: float | None = None


_Case = TypeVar("_Case", "Layer", "OpCase")


def batches(case: _Case, implementations: Sequence[str]) -> list[tuple[_Case, bool, list[str]]]:
    """``(case, reduced, implementations)`` to time for ``case`` (a :class:`Layer` or an
    :class:`OpCase`): the full case, and the reference with ``auto`` beside it on the
    reference batch.

    >>> [(c.batch, reduced, names) for c, reduced, names in batches(LAYERS[2], ["reference"])]
    [(8, False, []), (1, True, ['reference'])]
    """
    full = [name for name in implementations if name != "reference"]
    small = case.reference_case() if "reference" in implementations else None
    if small is None:
        return [(case, False, full)]
    if small.batch == case.batch:
        return [(case, False, ["reference", *full])]
    companions = ["auto"] if "auto" in implementations else []
    return [(case, False, full), (small, True, ["reference", *companions])]


def _time_cell(
    fn: Callable[[], object], impl: str, *, quick: bool, repeat: int | None, budget_s: float
) -> Timing:
    """Time one cell as :func:`run` and :func:`run_ops` do."""
    calls = repeat
    if calls is None and quick:
        calls = QUICK_CALLS[impl != "reference"]
    return time_calls(fn, repeat=calls, budget_s=budget_s, warmup_s=0.0 if quick else WARMUP_S)


def _versus_torch(timed: Sequence[Row | OpRow]) -> None:
    """Set each row's ``vs_torch`` from the torch row among ``timed`` (one case)."""
    torch_ms = next((row.median_ms for row in timed if row.impl == "torch"), None)
    for row in timed:
        row.vs_torch = None if torch_ms is None else torch_ms / row.median_ms


def run(
    layers: Iterable[Layer] = LAYERS,
    implementations: Sequence[str] | None = None,
    *,
    quick: bool = False,
    repeat: int | None = None,
    budget_s: float = BUDGET_S,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Time ``implementations`` (default: all available) on ``layers``; algorithms
    that cannot run a layer (:func:`refusal`) are left out.

    ``quick``: two warm-up calls and ``QUICK_CALLS`` timed ones per cell, for
    smoke tests. ``repeat``: exactly this many timed calls per cell.
    ``progress`` is told what is about to be timed.
    """
    if implementations is None:
        implementations = implementation_names()
    configure_allocator()
    rows: list[Row] = []
    for layer in layers:
        for case, reduced, names in batches(layer, implementations):
            timed = []
            for name in names:
                if progress is not None:
                    progress(f"layer {layer.id} N={case.batch} {name}")
                refused = refusal(case, name)
                if refused is not None:
                    if progress is not None:
                        progress(f"layer {layer.id} {name}: not timed, {refused}")
                    continue
                fn = prepare(case, name)
                timing = _time_cell(fn, name, quick=quick, repeat=repeat, budget_s=budget_s)
                timed.append(Row(
                    layer=layer.id, batch=case.batch, reduced=reduced, impl=name,
                    algorithm=algorithm_of(case, name), median_ms=timing.median_s * 1e3,
                    min_ms=timing.min_s * 1e3, calls=timing.calls,
                    gflops=case.flops / timing.median_s / 1e9,
                ))
            _versus_torch(timed)
            rows.extend(timed)
    return rows


# --- the op suite ----------------------------------------------------------------------
#
# The other ops on problems of the same size as the conv2d layers: conv2d's
# gradients on layers c, d and g, a transposed convolution, and pooling and
# unpooling, each against the reference and PyTorch.


@dataclass(frozen=True)
class Window:
    """A square pooling window: ``kernel x kernel``, ``stride``, ``padding`` on every side."""

    kernel: int
    stride: int
    padding: int = 0

    @property
    def description(self) -> str:
        """E.g. ``3x3 s2 p1``.

        >>> Window(3, 2, 1).description, Window(2, 2).description
        ('3x3 s2 p1', '2x2 s2')
        """
        return f"{self.kernel}x{self.kernel} s{self.stride}" + (
            f" p{self.padding}" if self.padding else "")

    @property
    def id(self) -> str:
        """The description without spaces, e.g. ``3x3s2p1``."""
        return self.description.replace(" ", "")

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The pooled shape of an ``(N, C, H, W)`` input."""
        size = fastconv.conv_output_size(shape[2:], self.kernel, self.stride, self.padding)
        return (*shape[:2], *size)


class Bound(NamedTuple):
    """An :class:`OpCase`'s inputs, made once, and the calls of each implementation on them."""

    #: Floating-point operations (conv ops) or bytes read and written (the others) of one call.
    work: float
    #: ``algorithm -> call`` of the fastconv function.
    fastconv: Callable[[str], Callable[[], object]]
    reference: Callable[[], object]
    #: ``torch module -> call`` on tensors that share the inputs' memory.
    torch: Callable[[Any], Callable[[], object]]

    def prepare(self, impl: str) -> Callable[[], object]:
        """A no-argument call of ``impl``, which allocates its result as a user's call does."""
        if impl == "reference":
            return self.reference
        if impl == "torch":
            return self.torch(_torch())
        return self.fastconv(impl)


@dataclass(frozen=True)
class OpCase:
    """One problem of the op suite: ``op`` on a conv ``layer`` (conv ops) or on an NCHW
    ``shape`` with a pooling ``window`` (pooling: the input; unpooling: the pooled input)."""

    op: str
    name: str
    layer: Layer | None = None
    shape: tuple[int, int, int, int] | None = None
    window: Window | None = None
    #: Batch the reference is timed on; None: not timed.
    reference_batch: int | None = None

    @property
    def id(self) -> str:
        """``op|name``, the benchmark group and the ``--cases`` name."""
        return f"{self.op}|{self.name}"

    @property
    def spec(self) -> _OpSpec:
        return _OP_SPECS[self.op]

    @property
    def batch(self) -> int:
        return self.layer.batch if self.layer is not None else self.shape[0]

    @property
    def unit(self) -> str:
        return self.spec.unit

    @property
    def description(self) -> str:
        return self.spec.describe(self)

    def with_batch(self, batch: int) -> OpCase:
        if self.layer is not None:
            return dataclasses.replace(self, layer=self.layer.with_batch(batch))
        return dataclasses.replace(self, shape=(batch, *self.shape[1:]))

    def reference_case(self) -> OpCase | None:
        return None if self.reference_batch is None else self.with_batch(self.reference_batch)

    def available(self) -> bool:
        """Whether this fastconv has the op: its function, and its kernel ops in the op table
        (:data:`fastconv.ops.TABLE`)."""
        return hasattr(fastconv, self.spec.function) and all(
            op in KERNEL_OPS for op in self.spec.kernel_ops)

    def implementation_names(self, *, include_torch: bool | None = None) -> tuple[str, ...]:
        """:func:`implementation_names` of this case's op; only ``auto`` while this
        fastconv lacks the op."""
        if not self.available():
            return ("auto",)
        return implementation_names(self.spec.algorithms, include_torch=include_torch)

    def dispatched(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        """``(op, problem)`` of each algorithm choice that fastconv's call of this case makes
        with the algorithm it is given, as :mod:`fastconv.functional` builds them; none for
        pooling and unpooling (no algorithm of theirs refuses a problem)."""
        if self.layer is None:
            return ()
        conv = self.layer.problem()
        if self.op == "conv_transpose2d":
            # grad_input's kernel on the layer's output, with the transposed convolution's
            # weight (C_in, C_out/groups, R, S): the layer's weight
            return (("conv2d_grad_input", {**conv, "input_shape": self.layer.output_shape}),)
        if self.op == "conv_transpose2d_backward":
            # grad_input is the layer's conv2d of grad_output, grad_weight its weight gradient
            return (("conv2d", conv), ("conv2d_grad_weight", conv))
        return ((self.spec.algorithms, conv),)

    def bind(self, seed: int = 0) -> Bound:
        """Make the inputs (seeded) and bind every implementation to them."""
        return self.spec.bind(self, np.random.default_rng(seed))

    def probe(self, impl: str, fn: Callable[[], object]) -> str:
        """The kernel that runs for ``impl``: for ``auto``, the dispatcher's picks in a
        call of ``fn`` (``a+b`` where it picked several), else ``impl``."""
        if impl != "auto":
            return impl
        kernel_ops = [op for op, _ in self.dispatched()] or [self.spec.algorithms]
        return "+".join(dict.fromkeys(name for op, name in trace_dispatch(fn)
                                      if op in kernel_ops))


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def _tie_free(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """float32 values that all differ (exact integers below 2**24), so that every
    max-pool window has one maximum and the indices are the same for every library."""
    return rng.permutation(math.prod(shape)).astype(np.float32).reshape(shape)


def _nbytes(*arrays_or_shapes: np.ndarray | tuple[int, ...], itemsize: int = 4) -> int:
    """Bytes of arrays, or of float32 arrays of the given shapes."""
    return sum(a.nbytes if isinstance(a, np.ndarray) else math.prod(a) * itemsize
               for a in arrays_or_shapes)


def _tensors(torch, *arrays: np.ndarray) -> list:
    return [torch.from_numpy(a) for a in arrays]


def _bind_conv_grad(case: OpCase, rng: np.random.Generator) -> Bound:
    """grad_input, or grad_weight with grad_bias, of conv2d on ``case.layer``."""
    layer = case.layer
    x, w, _ = layer.make_inputs()
    dy = _normal(rng, layer.output_shape)
    input_grad = case.op == "grad_input"
    needs = {"needs_input_grad": input_grad, "needs_weight_grad": not input_grad,
             "needs_bias_grad": not input_grad}

    def torch_call(torch):
        dy_t, x_t, w_t = _tensors(torch, dy, x, w)
        pair = [layer.stride] * 2, [layer.padding] * 2, [1, 1]
        mask = list(needs.values())
        backward = torch.ops.aten.convolution_backward
        return lambda: backward(dy_t, x_t, w_t, [layer.filters], *pair, False, [0, 0],
                                layer.groups, mask)

    return Bound(
        work=layer.flops,
        fastconv=lambda algorithm: lambda: fastconv.conv2d_backward(
            dy, x, w, **layer.kwargs, **needs, algorithm=algorithm),
        # the reference computes grad_input and grad_weight in one loop
        reference=lambda: reference.conv2d_backward(dy, x, w, **layer.kwargs),
        torch=torch_call,
    )


def _bind_conv_transpose(case: OpCase, rng: np.random.Generator) -> Bound:
    """conv_transpose2d, or its backward (all three gradients), as the adjoint of the
    conv2d ``case.layer``: its input is that layer's output, its output the layer's input."""
    layer = case.layer
    _, w, _ = layer.make_inputs()  # (C_in, C_out, R, S) for the transposed convolution
    x = _normal(rng, layer.output_shape)
    b = _normal(rng, (layer.channels,))
    kwargs = {"stride": layer.stride, "padding": layer.padding}
    if case.op == "conv_transpose2d":
        return Bound(
            work=layer.flops,
            fastconv=lambda algorithm: lambda: fastconv.conv_transpose2d(
                x, w, b, **kwargs, algorithm=algorithm),
            reference=lambda: reference.conv_transpose2d(x, w, b, **kwargs),
            torch=lambda torch: partial(torch.nn.functional.conv_transpose2d,
                                        *_tensors(torch, x, w, b), **kwargs),
        )
    dy = _normal(rng, layer.input_shape)

    def torch_call(torch):
        args = _tensors(torch, dy, x, w)
        pair = [layer.stride] * 2, [layer.padding] * 2, [1, 1]
        backward = torch.ops.aten.convolution_backward
        return lambda: backward(*args, [layer.channels], *pair, True, [0, 0], 1, [True] * 3)

    return Bound(
        work=2 * layer.flops,  # grad_input (a conv2d) and grad_weight (a correlation)
        fastconv=lambda algorithm: lambda: fastconv.conv_transpose2d_backward(
            dy, x, w, **kwargs, algorithm=algorithm),
        reference=lambda: reference.conv_transpose2d_backward(dy, x, w, **kwargs),
        torch=torch_call,
    )


def _bind_pool(case: OpCase, rng: np.random.Generator) -> Bound:
    """max_pool2d or avg_pool2d, forward or backward, on ``case.shape``."""
    k, s, p = case.window.kernel, case.window.stride, case.window.padding
    x = _tie_free(rng, case.shape)
    out_shape = case.window.output_shape(case.shape)
    if case.op in ("max_pool2d", "avg_pool2d"):
        forward = getattr(fastconv, case.op)
        return Bound(
            work=_nbytes(x, out_shape),
            fastconv=lambda algorithm: lambda: forward(x, k, s, p, algorithm=algorithm),
            reference=lambda: getattr(reference, case.op)(x, k, s, p),
            torch=lambda torch: partial(getattr(torch.nn.functional, case.op),
                                        torch.from_numpy(x), k, s, p),
        )
    dy = _normal(rng, out_shape)
    if case.op == "avg_pool2d_backward":
        return Bound(
            work=_nbytes(dy, x),
            fastconv=lambda algorithm: lambda: fastconv.avg_pool2d_backward(
                dy, x.shape, k, s, p, algorithm=algorithm),
            reference=lambda: reference.avg_pool2d_backward(dy, x.shape, k, s, p),
            torch=lambda torch: partial(torch.ops.aten.avg_pool2d_backward,
                                        *_tensors(torch, dy, x), [k, k], [s, s], [p, p],
                                        False, True, None),
        )
    _, indices = fastconv.max_pool2d(x, k, s, p, return_indices=True)
    return Bound(
        work=_nbytes(dy, indices, x),
        fastconv=lambda algorithm: lambda: fastconv.max_pool2d_backward(
            dy, indices, x.shape, algorithm=algorithm),
        reference=lambda: reference.max_pool2d_backward(dy, indices, x.shape),
        torch=lambda torch: partial(torch.ops.aten.max_pool2d_with_indices_backward,
                                    *_tensors(torch, dy, x), [k, k], [s, s], [p, p], [1, 1],
                                    False, torch.from_numpy(indices)),
    )


def _bind_max_unpool(case: OpCase, rng: np.random.Generator) -> Bound:
    """max_unpool2d or its backward: ``case.shape`` is the pooled shape, the indices
    those of ``case.window``'s max_pool2d of a tie-free input."""
    k, s = case.window.kernel, case.window.stride
    full_shape = (*case.shape[:2], case.shape[2] * s, case.shape[3] * s)
    pooled, indices = fastconv.max_pool2d(_tie_free(rng, full_shape), k, s, return_indices=True)
    if case.op == "max_unpool2d":
        size = full_shape[2:]
        return Bound(
            work=_nbytes(pooled, indices, full_shape),
            fastconv=lambda algorithm: lambda: fastconv.max_unpool2d(
                pooled, indices, k, s, output_size=size, algorithm=algorithm),
            reference=lambda: reference.max_unpool2d(pooled, indices, k, s, output_size=size),
            torch=lambda torch: partial(torch.nn.functional.max_unpool2d,
                                        *_tensors(torch, pooled, indices), k, s,
                                        output_size=size),
        )
    dy = _normal(rng, full_shape)

    def torch_call(torch):
        # what autograd runs for max_unpool2d (max_pool_double_backward): a gather
        dy_t, indices_t = _tensors(torch, dy, indices)
        flat = (*indices.shape[:2], -1)
        return lambda: dy_t.view(flat).gather(2, indices_t.view(flat)).view(indices_t.shape)

    return Bound(
        work=_nbytes(dy, indices, pooled),
        fastconv=lambda algorithm: lambda: fastconv.max_unpool2d_backward(
            dy, indices, algorithm=algorithm),
        reference=lambda: reference.max_unpool2d_backward(dy, indices),
        torch=torch_call,
    )


def _bind_repeat_unpool(case: OpCase, rng: np.random.Generator) -> Bound:
    """repeat_unpool2d by ``case.window.stride`` or its backward; ``case.shape`` is the
    small (pooled) shape."""
    scale = case.window.stride
    n, c, h, w = case.shape
    big = (n, c, h * scale, w * scale)
    if case.op == "repeat_unpool2d":
        x = _normal(rng, case.shape)

        def torch_call(torch):
            x_t = torch.from_numpy(x)
            return lambda: x_t.repeat_interleave(scale, 2).repeat_interleave(scale, 3)

        return Bound(
            work=_nbytes(x, big),
            fastconv=lambda algorithm: lambda: fastconv.repeat_unpool2d(
                x, scale, algorithm=algorithm),
            reference=lambda: reference.repeat_unpool2d(x, scale),
            torch=torch_call,
        )
    dy = _normal(rng, big)

    def torch_backward(torch):
        return partial(torch.ops.aten.upsample_nearest2d_backward, torch.from_numpy(dy),
                       big[2:], case.shape, float(scale), float(scale))

    return Bound(
        work=_nbytes(dy, case.shape),
        fastconv=lambda algorithm: lambda: fastconv.repeat_unpool2d_backward(
            dy, scale, algorithm=algorithm),
        reference=lambda: reference.repeat_unpool2d_backward(dy, scale),
        torch=torch_backward,
    )


def _conv_text(case: OpCase) -> str:
    return case.layer.description


def _transpose_text(case: OpCase) -> str:
    layer = case.layer
    _, filters, out_h, out_w = layer.output_shape
    text = (f"N{layer.batch} C{filters} {out_h}x{out_w} -> C{layer.channels} "
            f"{layer.height}x{layer.width}, {layer.kernel}x{layer.kernel} s{layer.stride} "
            f"p{layer.padding}")
    return text + (", with bias" if case.op == "conv_transpose2d" else ", all three gradients")


def _shape_text(shape: tuple[int, ...]) -> str:
    n, c, h, w = shape
    return f"N{n} C{c} {h}x{w}"


def _pool_text(case: OpCase) -> str:
    return f"{_shape_text(case.shape)}, {case.window.description}"


def _unpool_text(case: OpCase) -> str:
    s = case.window.stride
    _, _, h, w = case.shape
    how = f"indices of max_pool2d {case.window.description}" if "max" in case.op else f"scale {s}"
    return f"{_shape_text(case.shape)} -> {h * s}x{w * s} ({how})"


class _OpSpec(NamedTuple):
    """What an op of the suite is timed with."""

    #: The fastconv function; the op is left out while fastconv lacks it.
    function: str
    #: The dispatcher's op whose algorithms name the implementations.
    algorithms: str
    #: The unit of ``work`` per second: GFLOP/s or GB/s.
    unit: str
    #: The PyTorch call it is compared with.
    torch: str
    bind: Callable[[OpCase, np.random.Generator], Bound]
    describe: Callable[[OpCase], str]
    #: The other kernel ops (:data:`fastconv.ops.TABLE`) a call of ``function`` runs.
    runs_also: tuple[str, ...] = ()

    @property
    def kernel_ops(self) -> tuple[str, ...]:
        """Every kernel op a call of ``function`` runs: ``algorithms`` first."""
        return (self.algorithms, *self.runs_also)


_CONVOLUTION = "aten.convolution_backward"
_OP_SPECS: dict[str, _OpSpec] = {
    "grad_input": _OpSpec("conv2d_backward", "conv2d_grad_input", "GFLOP/s",
                          f"{_CONVOLUTION}, output_mask [T, F, F]", _bind_conv_grad, _conv_text),
    "grad_weight": _OpSpec("conv2d_backward", "conv2d_grad_weight", "GFLOP/s",
                           f"{_CONVOLUTION}, output_mask [F, T, T]", _bind_conv_grad, _conv_text,
                           ("conv2d_grad_bias",)),
    "conv_transpose2d": _OpSpec("conv_transpose2d", "conv2d_grad_input", "GFLOP/s",
                                "F.conv_transpose2d", _bind_conv_transpose, _transpose_text),
    "conv_transpose2d_backward": _OpSpec(
        "conv_transpose2d_backward", "conv2d_grad_weight", "GFLOP/s",
        f"{_CONVOLUTION}, transposed", _bind_conv_transpose, _transpose_text,
        ("conv2d", "conv2d_grad_bias")),
    "max_pool2d": _OpSpec("max_pool2d", "max_pool2d", "GB/s", "F.max_pool2d", _bind_pool,
                          _pool_text),
    "max_pool2d_backward": _OpSpec("max_pool2d_backward", "max_pool2d_backward", "GB/s",
                                   "aten.max_pool2d_with_indices_backward", _bind_pool,
                                   _pool_text),
    "avg_pool2d": _OpSpec("avg_pool2d", "avg_pool2d", "GB/s", "F.avg_pool2d", _bind_pool,
                          _pool_text),
    "avg_pool2d_backward": _OpSpec("avg_pool2d_backward", "avg_pool2d_backward", "GB/s",
                                   "aten.avg_pool2d_backward", _bind_pool, _pool_text),
    "max_unpool2d": _OpSpec("max_unpool2d", "max_unpool2d", "GB/s", "F.max_unpool2d",
                            _bind_max_unpool, _unpool_text),
    "max_unpool2d_backward": _OpSpec("max_unpool2d_backward", "max_unpool2d_backward", "GB/s",
                                     "gather (what autograd runs)", _bind_max_unpool,
                                     _unpool_text),
    # torch's repeat_interleave (on H, then W) ran in a third of F.interpolate(mode="nearest")'s
    # time here; the gradient of either is upsample_nearest2d_backward, 6x faster than
    # summing a (N, C, H, s, W, s) view
    "repeat_unpool2d": _OpSpec("repeat_unpool2d", "repeat_unpool2d", "GB/s",
                               "repeat_interleave on H, then W", _bind_repeat_unpool,
                               _unpool_text),
    "repeat_unpool2d_backward": _OpSpec("repeat_unpool2d_backward", "repeat_unpool2d_backward",
                                        "GB/s", "aten.upsample_nearest2d_backward",
                                        _bind_repeat_unpool, _unpool_text),
}

#: Layers of :data:`LAYERS` whose gradients are timed.
BACKWARD_LAYERS = "c,d,g"
#: The pooled input, and its windows.
POOL_SHAPE = (8, 64, 56, 56)
POOL_WINDOWS = (Window(2, 2), Window(3, 2, 1))
#: The unpooled input (a 2x2/s2 max_pool2d of POOL_SHAPE).
UNPOOL_SHAPE = (8, 64, 28, 28)
#: conv_transpose2d N8 C128 16x16 -> C64 32x32, 4x4 s2 p1, as the conv2d it is the adjoint of.
TRANSPOSE_LAYER = Layer("t", 8, 64, 32, 32, 128, 4, stride=2, padding=1)

#: The op suite. The reference's loops over output values run on a reduced batch (one
#: call took 1.3 s for grad c on N=1 here, 0.25 s for max_pool2d 3x3 on N=1, 0.15 s for
#: conv_transpose2d on N=1); the other pooling references take 0.2 s at most on N=8.
OP_CASES: tuple[OpCase, ...] = (
    *(OpCase(op, layer.id, layer=layer, reference_batch=layer.reference_batch)
      for op in ("grad_input", "grad_weight") for layer in select_layers(BACKWARD_LAYERS)),
    *(OpCase(op, window.id, shape=POOL_SHAPE, window=window,
             reference_batch=2 if op == "max_pool2d" else POOL_SHAPE[0])
      for op in ("max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward")
      for window in POOL_WINDOWS),
    OpCase("conv_transpose2d", "N8C128", layer=TRANSPOSE_LAYER, reference_batch=2),
    OpCase("conv_transpose2d_backward", "N8C128", layer=TRANSPOSE_LAYER, reference_batch=2),
    *(OpCase(op, name, shape=UNPOOL_SHAPE, window=Window(2, 2), reference_batch=UNPOOL_SHAPE[0])
      for op, name in (("max_unpool2d", "2x2s2"), ("max_unpool2d_backward", "2x2s2"),
                       ("repeat_unpool2d", "x2"), ("repeat_unpool2d_backward", "x2"))),
)

#: The issue's speed bars: (name, ops, minimum of torch ms / auto ms over their cases).
SPEED_BARS: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("backward (grad_input, grad_weight+bias)", ("grad_input", "grad_weight"), 0.5),
    ("pooling forward", ("max_pool2d", "avg_pool2d"), 10.0),
    ("pooling backward", ("max_pool2d_backward", "avg_pool2d_backward"), 1.0),
)


def select_op_cases(spec: str | None = None) -> list[OpCase]:
    """The cases named in a comma-separated list of ops (all their cases) or case ids
    ``op|name`` (None: all), in suite order, including those this fastconv lacks.

    >>> [case.id for case in select_op_cases("grad_weight|g,grad_input")]
    ['grad_input|c', 'grad_input|d', 'grad_input|g', 'grad_weight|g']
    """
    if spec is None:
        return list(OP_CASES)
    known = list(dict.fromkeys([case.op for case in OP_CASES] + [case.id for case in OP_CASES]))
    wanted = _pick(spec, known, "op or case")
    return [case for case in OP_CASES if case.op in wanted or case.id in wanted]


def kernel_op_benchmarks() -> dict[str, tuple[str, ...]]:
    """Each kernel op of :data:`fastconv.ops.TABLE` with the benchmarks that run it: the
    layer suite's layers (``layer a``) and the op suite's case ids (``op|name``). An op
    with none is benchmarked nowhere (``tests/test_ops.py`` fails on it).

    >>> kernel_op_benchmarks()["conv2d_grad_bias"][:2]
    ('grad_weight|c', 'grad_weight|d')
    """
    found: dict[str, list[str]] = {name: [] for name in KERNEL_OPS}
    for layer in LAYERS:
        for op, _ in layer.dispatched():
            found.setdefault(op, []).append(f"layer {layer.id}")
    for case in OP_CASES:
        for op in case.spec.kernel_ops:
            found.setdefault(op, []).append(case.id)
    return {op: tuple(ids) for op, ids in found.items()}


def op_implementation_names(*, include_torch: bool | None = None) -> tuple[str, ...]:
    """Every implementation name of the op suite, in the order of the table."""
    names = [name for case in OP_CASES
             for name in case.implementation_names(include_torch=include_torch)]
    algorithms = sorted(set(names) - {"reference", "auto", "torch"})
    return tuple(name for name in ("reference", *algorithms, "auto", "torch") if name in names)


def trace_dispatch(fn: Callable[[], object]) -> list[tuple[str, str]]:
    """Run ``fn`` once and return the ``(op, algorithm)`` the dispatcher picked, in order."""
    picked: list[tuple[str, str]] = []
    choose = dispatch.choose

    def spy(op: str, device: str, algorithm: str, **problem: Any):
        choice = choose(op, device, algorithm, **problem)
        picked.append((op, choice.algorithm))
        return choice

    dispatch.choose = spy  # the functional modules look it up on each call
    plans.clear()  # a cached plan would not ask the dispatcher
    try:
        fn()
    finally:
        dispatch.choose = choose
    return picked


def op_benchmarks(ops: Iterable[str]) -> list[tuple[str, OpCase, str, bool]]:
    """``(id, case, implementation, reduced)`` for each pytest benchmark of ``ops``'
    cases: every implementation on the full case, and the reference beside ``auto`` on
    its reference batch (``reduced``), as :func:`run_ops` times them; none where fastconv
    refuses the implementation (:func:`refusal`).

    >>> [(id, reduced) for id, *_, reduced in op_benchmarks(["grad_input"])][-2:]
    [('grad_input-g-reference-N4', True), ('grad_input-g-auto-N4', True)]
    """
    params = []
    for op_case in OP_CASES:
        if op_case.op not in ops:
            continue
        names = op_case.implementation_names(include_torch=True)
        for case, reduced, impls in batches(op_case, names):
            suffix = f"-N{case.batch}" if reduced else ""
            params += [(f"{case.op}-{case.name}-{impl}{suffix}", case, impl, reduced)
                       for impl in impls if refusal(case, impl) is None]
    return params


@dataclass
class OpRow:
    """One timed cell of the op suite, like :class:`Row`; ``rate`` is in ``unit``
    (GFLOP/s for the conv ops, GB/s of bytes read and written for the others)."""

    op: str
    case: str
    batch: int
    reduced: bool  # timed on the case's ``reference_batch``
    impl: str
    algorithm: str
    median_ms: float
    min_ms: float
    calls: int
    rate: float
    unit: str
    vs_torch: float | None = None

    @property
    def id(self) -> str:
        return f"{self.op}|{self.case}"


def run_ops(
    cases: Iterable[OpCase] | None = None,
    implementations: Sequence[str] | None = None,
    *,
    quick: bool = False,
    repeat: int | None = None,
    budget_s: float = BUDGET_S,
    progress: Callable[[str], None] | None = None,
) -> list[OpRow]:
    """Time ``implementations`` (default: all available for each case) on ``cases``
    (default: the op suite), as :func:`run` does; cases whose op this fastconv lacks,
    and algorithms that cannot run a case, are left out."""
    configure_allocator()
    rows: list[OpRow] = []
    for op_case in OP_CASES if cases is None else cases:
        if not op_case.available():
            continue
        names = op_case.implementation_names()
        if implementations is not None:
            names = tuple(name for name in names if name in implementations)
        for case, reduced, impls in batches(op_case, names):
            bound = case.bind()
            timed = []
            for name in impls:
                if progress is not None:
                    progress(f"{case.id} N={case.batch} {name}")
                refused = refusal(case, name)
                if refused is not None:
                    if progress is not None:
                        progress(f"{case.id} {name}: not timed, {refused}")
                    continue
                fn = bound.prepare(name)
                algorithm = case.probe(name, fn)
                timing = _time_cell(fn, name, quick=quick, repeat=repeat, budget_s=budget_s)
                timed.append(OpRow(
                    op=case.op, case=case.name, batch=case.batch, reduced=reduced, impl=name,
                    algorithm=algorithm, median_ms=timing.median_s * 1e3,
                    min_ms=timing.min_s * 1e3, calls=timing.calls,
                    rate=bound.work / timing.median_s / 1e9, unit=case.unit,
                ))
            _versus_torch(timed)
            rows.extend(timed)
    return rows


# --- the table -----------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _numba_cache() -> str:
    import numba

    if not config.CACHE:
        return "off (FASTCONV_CACHE)"
    if numba.config.CACHE_DIR:
        return f"on, in NUMBA_CACHE_DIR={numba.config.CACHE_DIR}"
    here = os.path.join(os.path.dirname(__file__), "cpu", "__pycache__")
    if os.access(os.path.dirname(here), os.W_OK):
        return f"on, next to the sources ({here})"
    return "on, in numba's per-user cache directory (the sources are read-only)"


def machine_info() -> dict[str, object]:
    """CPU, threads, versions, BLAS and allocator: what a timing depends on."""
    import numba

    from .cpu import blas

    try:
        threading_layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        threading_layer = "not started yet"
    torch = sys.modules.get("torch")
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "fastconv": fastconv.__version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
        "llvmlite": _version("llvmlite"),
        "torch": _version("torch"),
        "numba_threads": numba.get_num_threads(),
        "threading_layer": threading_layer,
        "threading_layer_requested": numba.config.THREADING_LAYER,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "blas": blas.SOURCE,
        "numba_cache": _numba_cache(),
        "allocator": _allocator or "system default",
    }


#: A cell whose median exceeds its minimum by this factor is marked noisy.
NOISY = 1.5


def _ms(row: Row) -> str:
    value = row.median_ms
    text = f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.1f}"
    return text + ("!" if value > NOISY * row.min_ms else "")


def _rate(value: float) -> str:
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if value < 100 else f"{value:.0f}x"


def _grid(lines: list[list[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(line[i]) for line in lines) for i in range(len(right))]
    return [
        "  ".join(
            cell.rjust(width) if flush_right else cell.ljust(width)
            for cell, width, flush_right in zip(line, widths, right, strict=True)
        ).rstrip()
        for line in lines
    ]


def geometric_mean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


class _Shown:
    """What a table's line shows per case (``key`` of a row): each implementation's row on
    the full case, except the reference, which runs on its reference batch; ``auto`` timed
    on that batch gives ref/auto."""

    def __init__(self, rows: Sequence[Row | OpRow], key: Callable[[Any], str]) -> None:
        self.cells: dict[str, dict[str, Any]] = {}
        self.auto_beside_ref: dict[str, Any] = {}
        for row in rows:
            cells = self.cells.setdefault(key(row), {})
            if not row.reduced or row.impl == "reference":
                cells[row.impl] = row
            elif row.impl == "auto":
                self.auto_beside_ref[key(row)] = row

    def versus_torch(self, case: str, impl: str = "auto") -> float | None:
        row = self.cells[case].get(impl)
        return row.vs_torch if row else None

    def versus_reference(self, case: str) -> float | None:
        ref = self.cells[case].get("reference")
        auto = self.cells[case].get("auto")
        if ref and ref.reduced:
            auto = self.auto_beside_ref.get(case)
        return ref.median_ms / auto.median_ms if ref and auto else None


def _machine_lines(machine: dict[str, object]) -> list[str]:
    torch_threads = f" ({machine['torch_threads']} threads)" if machine.get("torch_threads") else ""
    return [
        (
            f"CPU: {machine['cpu']}, {machine['cores']} cores; numba {machine['numba']} "
            f"({machine['numba_threads']} threads, {machine['threading_layer']} layer); "
            f"numpy {machine['numpy']}; torch {machine['torch'] or 'not installed'}{torch_threads}"
        ),
        f"BLAS: {machine['blas']}; allocator: {machine['allocator']}",
    ]


def _footnotes(
    rows: Sequence[Row | OpRow], impls: Iterable[str], rate: str = "GFLOP/s"
) -> list[str]:
    text = []
    if any(row.median_ms > NOISY * row.min_ms for row in rows):
        text.append(f"! median over {NOISY}x the fastest call: the machine was busy, rerun")
    if "reference" in impls:
        text.append("* the reference runs on the batch named above: its ms are for that batch,")
        text.append(f"  its {rate} comparable; ref/auto times auto on that batch; '-': too slow")
    return text


def format_table(rows: Sequence[Row], machine: dict[str, object] | None = None) -> str:
    """A plain-text table: one line per layer, ms and GFLOP/s per implementation,
    torch/auto and reference/auto; then the layers, a summary and the machine."""
    if machine is None:
        machine = machine_info()
    order = implementation_names(include_torch=True)
    impls = sorted({row.impl for row in rows}, key=order.index)
    shown = _Shown(rows, lambda row: row.layer)
    layer_ids = list(shown.cells)
    ratios = []
    if "auto" in impls and "torch" in impls:
        ratios.append(("torch/", shown.versus_torch))
    if "auto" in impls and "reference" in impls:
        ratios.append(("ref/", shown.versus_reference))
    groups, heads = [""], ["layer"]
    for impl in impls:
        groups += [impl + ("*" if impl == "reference" else ""), ""]
        heads += ["ms", "GFLOP/s"] + (["picks"] if impl == "auto" else [])
        groups += [""] if impl == "auto" else []
    groups += [name for name, _ in ratios]
    heads += ["auto"] * len(ratios)
    right = [head not in ("layer", "picks") for head in heads]
    lines = []
    for layer_id in layer_ids:
        line = [layer_id]
        for impl in impls:
            row = shown.cells[layer_id].get(impl)
            line += [_ms(row), _rate(row.gflops)] if row else ["-", "-"]
            if impl == "auto":
                line.append(row.algorithm if row else "-")
        line += [_ratio(ratio(layer_id)) for _, ratio in ratios]
        lines.append(line)

    suite = {layer.id: layer for layer in LAYERS}
    legend = []
    for layer_id in layer_ids:
        ref = shown.cells[layer_id].get("reference")
        note = f"; reference on N={ref.batch}" if ref and ref.reduced else ""
        description = suite[layer_id].description if layer_id in suite else "?"
        legend.append(f"  {layer_id}  {description}{note}")
    text = [
        "fastconv conv2d forward, float32 NCHW with bias: median ms of timed calls after warm-up",
        *_machine_lines(machine),
        "",
        *_grid([groups, heads, *lines], right),
        "",
        "layers (N images, C channels HxW, K filters RxS, stride s, padding p):",
        *legend,
        "GFLOP/s = 2*N*K*Ho*Wo*C/groups*R*S / median; torch/auto > 1: fastconv's auto is faster",
        *_footnotes(rows, impls),
    ]
    summary = []
    versus = {i: r for i in layer_ids if (r := shown.versus_torch(i)) is not None}
    if versus:
        worst = min(versus, key=versus.__getitem__)
        summary.append(
            f"torch/auto geometric mean {_ratio(geometric_mean(list(versus.values())))} over "
            f"{len(versus)} layers, minimum {_ratio(versus[worst])} (layer {worst})"
        )
    speedups = {i: r for i in layer_ids if (r := shown.versus_reference(i)) is not None}
    if speedups:
        layer_id = "a" if "a" in speedups else next(iter(speedups))
        summary.append(
            f"reference/auto on layer {layer_id} {_ratio(speedups[layer_id])} "
            f"(both on N={shown.cells[layer_id]['reference'].batch})"
        )
    if summary:
        text.append("summary: " + "; ".join(summary))
    return "\n".join(text)


def speed_bars(rows: Sequence[OpRow]) -> list[dict[str, object]]:
    """For each of :data:`SPEED_BARS` with timed cases: the minimum of torch/auto over its
    cases, the case where it is lowest, and whether it reaches the bar."""
    bars = []
    for name, ops, bar in SPEED_BARS:
        versus = {row.id: row.vs_torch for row in rows if row.op in ops and row.impl == "auto"
                  and not row.reduced and row.vs_torch is not None}
        if versus:
            worst = min(versus, key=versus.__getitem__)
            bars.append({"name": name, "bar": bar, "minimum": versus[worst], "case": worst,
                         "cases": len(versus), "met": versus[worst] >= bar})
    return bars


def format_op_table(rows: Sequence[OpRow], machine: dict[str, object] | None = None) -> str:
    """The op suite's table, like :func:`format_table`: one grid per unit (GFLOP/s for
    the conv ops, GB/s for pooling and unpooling), a line per case with ms and rate per
    implementation and, per fastconv algorithm, torch/ (torch's ms over its ms); then
    the cases, and a line per speed bar."""
    if machine is None:
        machine = machine_info()
    order = op_implementation_names(include_torch=True)
    text = [
        "fastconv ops, float32 NCHW (conv2d gradients, conv_transpose2d, pooling, unpooling): "
        + "median ms of timed calls after warm-up",
        *_machine_lines(machine),
    ]
    if not rows:
        return "\n".join([*text, "", "no case timed"])
    specs = {case.id: case for case in OP_CASES}
    legend = []
    for unit in dict.fromkeys(row.unit for row in rows):
        unit_rows = [row for row in rows if row.unit == unit]
        impls = sorted({row.impl for row in unit_rows}, key=order.index)
        shown = _Shown(unit_rows, lambda row: row.id)
        versus_reference = "auto" in impls and "reference" in impls
        groups, heads = [""], ["case"]
        for impl in impls:
            groups += [impl + ("*" if impl == "reference" else ""), ""]
            heads += ["ms", unit]
            extra = (["picks"] if impl == "auto" else []) + (
                ["torch/"] if "torch" in impls and impl not in ("reference", "torch") else [])
            groups += [""] * len(extra)
            heads += extra
        if versus_reference:
            groups.append("ref/")
            heads.append("auto")
        lines = []
        for case_id, cells in shown.cells.items():
            line = [case_id]
            for impl in impls:
                row = cells.get(impl)
                line += [_ms(row), _rate(row.rate)] if row else ["-", "-"]
                if impl == "auto":
                    line.append(row.algorithm if row else "-")
                if "torch" in impls and impl not in ("reference", "torch"):
                    line.append(_ratio(row.vs_torch if row else None))
            if versus_reference:
                line.append(_ratio(shown.versus_reference(case_id)))
            lines.append(line)
            case = specs[case_id]
            ref = cells.get("reference")
            note = f"; reference on N={ref.batch}" if ref and ref.reduced else ""
            legend.append([f"  {case_id}", f"{case.description}{note}; torch: {case.spec.torch}"])
        right = [head not in ("case", "picks") for head in heads]
        text += ["", *_grid([groups, heads, *lines], right)]
    text += [
        "",
        "cases (N images, C channels HxW, K filters RxS, stride s, padding p) and torch's call:",
        *_grid(legend, [False, False]),
        "GFLOP/s = 2*N*K*Ho*Wo*C/groups*R*S of the conv2d (conv_transpose2d: of the conv2d it is",
        "  the adjoint of; its backward: twice that) / median; the reference computes grad_input",
        "  and grad_weight in one loop, timed in each case",
        "GB/s = bytes of the arrays read (input, gradient, indices) and written (result) / median",
        "torch/ > 1: that fastconv column is faster than torch",
        *_footnotes(rows, {row.impl for row in rows}, "rates"),
    ]
    for bar in speed_bars(rows):
        cases = f"{bar['cases']} case" + ("s" if bar["cases"] != 1 else "")
        text.append(
            f"speed bar, {bar['name']}: torch/auto >= {bar['bar']:g}x: minimum "
            f"{_ratio(bar['minimum'])} ({bar['case']}, over {cases}): "
            + ("met" if bar["met"] else "NOT MET")
        )
    return "\n".join(text)


def rows_to_json(
    rows: Sequence[Row],
    machine: dict[str, object],
    *,
    op_rows: Sequence[OpRow] | None = None,
    **extra: object,
) -> str:
    """``{"machine": ..., "rows": [...], "op_rows": [...], "speed_bars": [...], **extra}``
    as indented JSON: ``rows`` of the conv2d suite, ``op_rows`` of the op suite and its
    speed bars where it ran."""
    document: dict[str, object] = {"machine": machine,
                                   "rows": [dataclasses.asdict(row) for row in rows]}
    if op_rows is not None:
        document["op_rows"] = [dataclasses.asdict(row) for row in op_rows]
        document["speed_bars"] = speed_bars(op_rows)
    document.update(extra)
    return json.dumps(document, indent=2)



def plot_rows(
    rows: Sequence[Row],
    path: str | os.PathLike[str],
    machine: dict[str, object] | None = None,
    *,
    op_rows: Sequence[OpRow] | None = None,
) -> None:
    """Save a bar chart of the suites' results as a PNG (needs matplotlib): a panel of
    GFLOP/s per layer and implementation for ``rows`` (the conv2d suite), and one per
    case for ``op_rows`` (the op suite) of each fastconv implementation's speed relative
    to torch (torch ms / ms), or of its rates where torch was not timed. Log scales: the
    reference is about 1000x slower. A panel is left out where its rows are empty."""
    from matplotlib.figure import Figure

    if machine is None:
        machine = machine_info()
    panels = []
    if rows:
        cells = _Shown(rows, lambda row: row.layer).cells
        panels.append(({case: {impl: row.gflops for impl, row in shown.items()}
                        for case, shown in cells.items()},
                       "conv2d forward, float32 (reference on its smaller batch)", "GFLOP/s"))
    if op_rows:
        cells = _Shown(op_rows, lambda row: row.id).cells
        if any(row.vs_torch is not None for row in op_rows):
            panels.append(({case: {impl: row.vs_torch for impl, row in shown.items()
                                   if impl != "torch" and row.vs_torch is not None}
                            for case, shown in cells.items()},
                           "op suite: speed relative to torch (> 1: faster than torch)",
                           "torch ms / ms"))
        else:
            panels.append(({case: {impl: row.rate for impl, row in shown.items()}
                            for case, shown in cells.items()},
                           "op suite", "GFLOP/s (conv ops) or GB/s (the others)"))
    if not panels:
        raise ValueError("no rows to plot")
    # the tables' order: reference, the algorithms, auto, torch
    rank = {"reference": 0, "auto": 2, "torch": 3}
    impls = sorted(dict.fromkeys(impl for cells, *_ in panels for shown in cells.values()
                                 for impl in shown), key=lambda impl: rank.get(impl, 1))
    palette = [f"C{index}" for index in range(10)]
    colours = {impl: palette[index % len(palette)] for index, impl in enumerate(impls)}
    widest = max(len(cells) for cells, *_ in panels)
    figure = Figure(figsize=(max(8.0, 0.7 * widest), 4.5 * len(panels)), layout="constrained")
    for axes, (cells, title, unit) in zip(figure.subplots(len(panels), squeeze=False)[:, 0],
                                          panels, strict=True):
        shown = [impl for impl in impls if any(impl in cell for cell in cells.values())]
        width = 0.8 / len(shown)
        for index, impl in enumerate(shown):
            offset = (index - (len(shown) - 1) / 2) * width
            bars = [(x + offset, cell[impl]) for x, cell in enumerate(cells.values())
                    if impl in cell]
            axes.bar(*zip(*bars, strict=True), width, label=impl, color=colours[impl])
        if unit == "torch ms / ms":
            axes.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        axes.set_yscale("log")
        axes.set_xticks(range(len(cells)), list(cells), rotation=30 if widest > 9 else 0,
                        ha="right" if widest > 9 else "center")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.grid(axis="y", which="major", alpha=0.3)
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.suptitle(
        f"fastconv {machine['fastconv']} vs torch {machine['torch'] or '(not installed)'}: "
        f"{machine['cpu']}, {machine['numba_threads']} threads"
    )
    figure.savefig(path, format="png", dpi=100)

# --- compile time --------------------------------------------------------------------

# Runs in a fresh interpreter: the backend's import (numba, BLAS lookup), then
# fastconv.warmup(), which compiles every kernel or loads it from the cache.
_COMPILE_CHILD = """
import json, time
start = time.perf_counter()
import fastconv, fastconv.cpu
imported = time.perf_counter()
kernels = fastconv.warmup()
done = time.perf_counter()
print(json.dumps({"import_s": imported - start, "warmup_s": done - imported, "kernels": kernels}))
"""


@dataclass(frozen=True)
class CompileTiming:
    """Seconds of ``fastconv.warmup()`` in a fresh process (compile or cache load
    of every kernel), of importing the backend before it, and per kernel."""

    warmup_s: float
    import_s: float
    kernels: dict[str, float]
    cache: str


def compile_time(cache_dir: str | None = None) -> CompileTiming:
    """Run ``fastconv.warmup()`` in a fresh interpreter with Numba's cache in
    ``cache_dir`` (None: wherever this environment puts it)."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    child = subprocess.run(
        [sys.executable, "-c", _COMPILE_CHILD],
        env=env, capture_output=True, text=True, check=False,
    )
    if child.returncode != 0:
        raise RuntimeError(f"fastconv.warmup() failed in a subprocess:\n{child.stderr}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    return CompileTiming(
        warmup_s=result["warmup_s"], import_s=result["import_s"], kernels=result["kernels"],
        cache=cache_dir or "default",
    )


def cold_compile_time() -> CompileTiming:
    """JIT compile time: warm-up with an empty, temporary Numba cache."""
    with tempfile.TemporaryDirectory(prefix="fastconv-numba-cache-") as cache_dir:
        timing = compile_time(cache_dir)
    return dataclasses.replace(timing, cache="empty")


def warm_compile_time() -> CompileTiming:
    """Cache-load time: warm-up in a second process after a first one filled
    this environment's cache (equal to the compile time with FASTCONV_CACHE=0)."""
    compile_time()
    return compile_time()
