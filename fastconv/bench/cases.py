"""The benchmark problems: the conv2d layer suite (:data:`LAYERS`) and the op suite
(:data:`OP_CASES`), together the one case table (:data:`CASES`) that ``python -m
fastconv bench`` (CPU and GPU), ``benchmarks/`` and ``benchmarks/gpu_check.py`` draw
from.

A case is an :class:`OpCase`: an op (``conv2d``, ``grad_input``, ``max_pool2d``, ...)
on a conv :class:`Layer` or on an NCHW shape with a pooling :class:`Window`. It is
named ``op:name`` (``conv2d:c``, ``max_pool2d:3x3s2p1``), the name ``--cases``
takes on every device. What each implementation runs on a case is
:mod:`fastconv.bench.implementations`'.

This module imports numpy and fastconv's pure-Python parts only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

import fastconv

from .. import ops


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

#: Seconds of the reference per output value (its Python loops), and the most one of its
#: calls may take on a custom layer's reference batch.
_REFERENCE_S_PER_VALUE = 3e-6
_REFERENCE_CALL_S = 0.25


def custom_layer(shape: str, id: str | None = None) -> Layer:
    """A layer from ``N,C,H,W,K,R[,stride,pad,groups]`` (:func:`fastconv.tune.parse_shape`'s
    form), named by its numbers (``n8c64h56w56k64r3p1``; stride, padding and groups where
    not 1, 0 and 1) unless ``id`` is given. The reference is timed on as many images as
    take about a quarter of a second, and not at all where one takes over a second.

    >>> layer = custom_layer("8,64,56,56,64,3,1,1")
    >>> layer.id, layer.description, layer.reference_batch
    ('n8c64h56w56k64r3p1', 'N8 C64 56x56, K64 3x3 p1', 1)
    """
    from ..tune import parse_shape

    n, c, h, w, k, r, stride, pad, groups = parse_shape(shape)
    if stride < 1:
        raise ValueError(f"the stride must be >= 1, got {shape!r}")
    if groups < 1 or c % groups or k % groups:
        raise ValueError(f"groups must divide C and K, got C={c}, K={k}, groups={groups}")
    if id is None:
        id = f"n{n}c{c}h{h}w{w}k{k}r{r}" + (f"s{stride}" if stride != 1 else "") + (
            f"p{pad}" if pad else "") + (f"g{groups}" if groups != 1 else "")
    layer = Layer(id, n, c, h, w, k, r, stride, pad, groups)
    if h + 2 * pad < r or w + 2 * pad < r:
        raise ValueError(f"the {r}x{r} kernel is larger than the padded {h}x{w} input")
    per_image = _REFERENCE_S_PER_VALUE * math.prod(layer.output_shape[1:])
    if per_image > 1.0:
        return layer
    return dataclasses.replace(layer, reference_batch=max(1, min(n, int(_REFERENCE_CALL_S
                                                                          / per_image))))


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


@dataclass(frozen=True)
class OpCase:
    """One problem: ``op`` on a conv ``layer`` (conv ops) or on an NCHW ``shape`` with a
    pooling ``window`` (pooling: the input; unpooling: the pooled input)."""

    op: str
    name: str
    layer: Layer | None = None
    shape: tuple[int, int, int, int] | None = None
    window: Window | None = None
    #: Batch the reference is timed on; None: not timed.
    reference_batch: int | None = None

    def __post_init__(self) -> None:
        if self.op not in SPECS:
            raise ValueError(f"case {self.op}:{self.name}: op must be one of "
                             f"{', '.join(SPECS)}, got {self.op!r}")
        if (self.layer is None) == (self.shape is None):
            raise ValueError(f"case {self.op}:{self.name}: give a layer or a shape")

    @property
    def id(self) -> str:
        """``op:name``: the name ``--cases`` takes and the tables show."""
        return f"{self.op}:{self.name}"

    @property
    def conv(self) -> Layer:
        """The conv layer of a conv op's case."""
        if self.layer is None:
            raise ValueError(f"case {self.id} has no conv layer")
        return self.layer

    @property
    def nchw(self) -> tuple[int, int, int, int]:
        """The NCHW shape of a pooling or unpooling case."""
        if self.shape is None:
            raise ValueError(f"case {self.id} has no NCHW shape")
        return self.shape

    @property
    def pool(self) -> Window:
        """The window of a pooling or unpooling case."""
        if self.window is None:
            raise ValueError(f"case {self.id} has no pooling window")
        return self.window

    @property
    def spec(self) -> OpSpec:
        return SPECS[self.op]

    @property
    def batch(self) -> int:
        return self.layer.batch if self.layer is not None else self.nchw[0]

    @property
    def unit(self) -> str:
        return self.spec.unit

    @property
    def description(self) -> str:
        return self.spec.describe(self)

    def with_batch(self, batch: int) -> OpCase:
        if self.layer is not None:
            return dataclasses.replace(self, layer=self.layer.with_batch(batch))
        n, c, h, w = self.nchw
        return dataclasses.replace(self, shape=(batch, c, h, w))

    def reference_case(self) -> OpCase | None:
        return None if self.reference_batch is None else self.with_batch(self.reference_batch)

    def available(self) -> bool:
        """Whether this fastconv has the op: its function, and its kernel ops in the op table
        (:data:`fastconv.ops.TABLE`)."""
        return hasattr(fastconv, self.spec.function) and all(
            op in ops.TABLE for op in self.spec.kernel_ops)

    def implementation_names(self, *, include_torch: bool | None = None,
                             device: str = "cpu") -> tuple[str, ...]:
        """:func:`~fastconv.bench.implementations.implementation_names` of this case's op on
        ``device``; only ``auto`` while this fastconv lacks the op."""
        from .implementations import implementation_names

        if not self.available():
            return ("auto",)
        return implementation_names(self.spec.algorithms, include_torch=include_torch,
                                    device=device)

    def dispatched(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        """``(op, problem)`` of each algorithm choice that fastconv's call of this case makes
        with the algorithm it is given, as :mod:`fastconv.functional` builds them; none for
        pooling and unpooling (no algorithm of theirs refuses a problem)."""
        if self.layer is None:
            return ()
        conv = self.layer.problem()
        if self.op == "conv_transpose2d":
            # grad_input's kernel, with the transposed convolution's weight (C_in,
            # C_out/groups, R, S): the layer's weight, and the conv2d's input (the
            # transposed convolution's output): the layer's input
            return (("conv2d_grad_input", conv),)
        if self.op == "conv_transpose2d_backward":
            # grad_input is the layer's conv2d of grad_output, grad_weight its weight gradient
            return (("conv2d", conv), ("conv2d_grad_weight", conv))
        return ((self.spec.algorithms, conv),)

    def bind(self, seed: int = 0):
        """Make the inputs (seeded) and bind every implementation to them on the host
        (:func:`fastconv.bench.implementations.bind`)."""
        from .implementations import bind

        return bind(self, seed)

    def probe(self, impl: str, fn: Callable[[], object]) -> str:
        """The kernel that runs for ``impl`` (:func:`fastconv.bench.implementations.probe`)."""
        from .implementations import probe

        return probe(self, impl, fn)


def conv2d_case(layer: Layer) -> OpCase:
    """``conv2d`` forward on ``layer`` as a case of the table (``conv2d:<id>``)."""
    return OpCase("conv2d", layer.id, layer=layer, reference_batch=layer.reference_batch)


def tie_free(shape: tuple[int, ...], dtype: Any = np.float32,
             rng: np.random.Generator | None = None) -> np.ndarray:
    """Distinct values of ``dtype`` (a random permutation of quarter steps around 0, exact
    in float32 below 2**25 elements), so that every max-pool window has one maximum, the
    indices are the same for every library, and a small step moves no maximum.

    >>> a = tie_free((2, 3, 4, 4), rng=np.random.default_rng(0))
    >>> a.dtype, len(np.unique(a)) == a.size, float(a.min()), float(a.max())
    (dtype('float32'), True, -12.0, 11.75)
    """
    if rng is None:
        rng = np.random.default_rng(0)
    size = math.prod(shape)
    return ((rng.permutation(size) - size // 2) * 0.25).reshape(shape).astype(dtype)


def _conv_text(case: OpCase) -> str:
    return case.conv.description


def _transpose_text(case: OpCase) -> str:
    layer = case.conv
    _, filters, out_h, out_w = layer.output_shape
    text = (f"N{layer.batch} C{filters} {out_h}x{out_w} -> C{layer.channels} "
            f"{layer.height}x{layer.width}, {layer.kernel}x{layer.kernel} s{layer.stride} "
            f"p{layer.padding}")
    return text + (", with bias" if case.op == "conv_transpose2d" else ", all three gradients")


def _shape_text(shape: tuple[int, ...]) -> str:
    n, c, h, w = shape
    return f"N{n} C{c} {h}x{w}"


def _pool_text(case: OpCase) -> str:
    return f"{_shape_text(case.nchw)}, {case.pool.description}"


def _unpool_text(case: OpCase) -> str:
    s = case.pool.stride
    _, _, h, w = case.nchw
    how = f"indices of max_pool2d {case.pool.description}" if "max" in case.op else f"scale {s}"
    return f"{_shape_text(case.nchw)} -> {h * s}x{w * s} ({how})"


class OpSpec(NamedTuple):
    """What an op of the table is: its function, algorithms, unit and torch's call."""

    #: The fastconv function; the op is left out while fastconv lacks it.
    function: str
    #: The dispatcher's op whose algorithms name the implementations.
    algorithms: str
    #: The unit of ``work`` per second: GFLOP/s or GB/s.
    unit: str
    #: The PyTorch call it is compared with.
    torch: str
    describe: Callable[[OpCase], str]
    #: The other kernel ops (:data:`fastconv.ops.TABLE`) a call of ``function`` runs.
    runs_also: tuple[str, ...] = ()

    @property
    def kernel_ops(self) -> tuple[str, ...]:
        """Every kernel op a call of ``function`` runs: ``algorithms`` first."""
        return (self.algorithms, *self.runs_also)


_CONVOLUTION = "aten.convolution_backward"
#: conv2d forward, the layer suite's op.
CONV2D_SPEC = OpSpec("conv2d", "conv2d", "GFLOP/s", "F.conv2d", _conv_text)
#: The op suite's ops.
OP_SPECS: dict[str, OpSpec] = {
    "grad_input": OpSpec("conv2d_backward", "conv2d_grad_input", "GFLOP/s",
                         f"{_CONVOLUTION}, output_mask [T, F, F]", _conv_text),
    "grad_weight": OpSpec("conv2d_backward", "conv2d_grad_weight", "GFLOP/s",
                          f"{_CONVOLUTION}, output_mask [F, T, T]", _conv_text,
                          ("conv2d_grad_bias",)),
    "conv_transpose2d": OpSpec("conv_transpose2d", "conv2d_grad_input", "GFLOP/s",
                               "F.conv_transpose2d", _transpose_text),
    "conv_transpose2d_backward": OpSpec(
        "conv_transpose2d_backward", "conv2d_grad_weight", "GFLOP/s",
        f"{_CONVOLUTION}, transposed", _transpose_text, ("conv2d", "conv2d_grad_bias")),
    "max_pool2d": OpSpec("max_pool2d", "max_pool2d", "GB/s", "F.max_pool2d", _pool_text),
    "max_pool2d_backward": OpSpec("max_pool2d_backward", "max_pool2d_backward", "GB/s",
                                  "aten.max_pool2d_with_indices_backward", _pool_text),
    "avg_pool2d": OpSpec("avg_pool2d", "avg_pool2d", "GB/s", "F.avg_pool2d", _pool_text),
    "avg_pool2d_backward": OpSpec("avg_pool2d_backward", "avg_pool2d_backward", "GB/s",
                                  "aten.avg_pool2d_backward", _pool_text),
    "max_unpool2d": OpSpec("max_unpool2d", "max_unpool2d", "GB/s", "F.max_unpool2d",
                           _unpool_text),
    "max_unpool2d_backward": OpSpec("max_unpool2d_backward", "max_unpool2d_backward", "GB/s",
                                    "gather (what autograd runs)", _unpool_text),
    # torch's repeat_interleave (on H, then W) ran in a third of F.interpolate(mode="nearest")'s
    # time here; the gradient of either is upsample_nearest2d_backward, 6x faster than
    # summing a (N, C, H, s, W, s) view
    "repeat_unpool2d": OpSpec("repeat_unpool2d", "repeat_unpool2d", "GB/s",
                              "repeat_interleave on H, then W", _unpool_text),
    "repeat_unpool2d_backward": OpSpec("repeat_unpool2d_backward", "repeat_unpool2d_backward",
                                       "GB/s", "aten.upsample_nearest2d_backward",
                                       _unpool_text),
}
#: Every op of the table.
SPECS: dict[str, OpSpec] = {"conv2d": CONV2D_SPEC, **OP_SPECS}

#: Layers of :data:`LAYERS` whose gradients are timed.
BACKWARD_LAYERS = "c,d,g"
#: The pooled input, and its windows.
POOL_SHAPE = (8, 64, 56, 56)
POOL_WINDOWS = (Window(2, 2), Window(3, 2, 1))
#: The unpooled input (a 2x2/s2 max_pool2d of POOL_SHAPE).
UNPOOL_SHAPE = (8, 64, 28, 28)
#: conv_transpose2d N8 C128 16x16 -> C64 32x32, 4x4 s2 p1, as the conv2d it is the adjoint of.
TRANSPOSE_LAYER = Layer("t", 8, 64, 32, 32, 128, 4, stride=2, padding=1)

#: The layer suite as cases: conv2d forward on each of :data:`LAYERS`.
CONV2D_CASES: tuple[OpCase, ...] = tuple(conv2d_case(layer) for layer in LAYERS)

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

#: The one case table: the layer suite, then the op suite. The GPU check times the same
#: cases at its own batch (:mod:`fastconv.bench.gpu`).
CASES: tuple[OpCase, ...] = (*CONV2D_CASES, *OP_CASES)


def select_cases(spec: str | None, cases: Sequence[OpCase] = CASES) -> list[OpCase]:
    """The cases of ``cases`` named in ``spec``: comma-separated ops (all their cases) or
    case ids ``op:name`` (None: all), in table order. ``op|name``, the old form of an id,
    is still taken.

    >>> [case.id for case in select_cases("grad_weight:g,grad_input,conv2d:h")]
    ['conv2d:h', 'grad_input:c', 'grad_input:d', 'grad_input:g', 'grad_weight:g']
    >>> select_cases("conv2d|a") == select_cases("conv2d:a")
    True
    """
    if spec is None:
        return list(cases)
    wanted = [part.strip().replace("|", ":", 1) for part in spec.split(",") if part.strip()]
    known = {case.op for case in cases} | {case.id for case in cases}
    unknown = [name for name in wanted if name not in known]
    if unknown or not wanted:
        ops_here = ", ".join(dict.fromkeys(case.op for case in cases))
        example = cases[0].id if cases else "conv2d:c"
        raise ValueError(
            f"unknown case {', '.join(map(repr, unknown)) or repr(spec)}; give ops "
            f"({ops_here}) or cases op:name such as {example}"
        )
    return [case for case in cases if case.op in wanted or case.id in wanted]


def select_op_cases(spec: str | None = None) -> list[OpCase]:
    """:func:`select_cases` of the op suite (:data:`OP_CASES`), including the cases whose
    op this fastconv lacks.

    >>> [case.id for case in select_op_cases("grad_weight:g,grad_input")]
    ['grad_input:c', 'grad_input:d', 'grad_input:g', 'grad_weight:g']
    """
    return select_cases(spec, OP_CASES)
