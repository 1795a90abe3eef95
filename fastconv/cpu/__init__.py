"""CPU backend: Numba kernels, registered with :mod:`fastconv.dispatch` on import.

Imported on first use by the dispatcher, never by ``import fastconv``.
"""

from __future__ import annotations

from .. import config, dispatch, ops
from ..dispatch import register, register_chooser

# importing registers the kernels; threads makes TBB loadable before a kernel starts
# Numba's thread pool
from . import direct, im2col, pool, reductions, threads, winograd  # noqa: F401


def _choose_conv(op, weight_shape, problem):
    """Direct loops when one output needs few multiply-adds, or the whole call does;
    Winograd for 3x3 stride-1
    layers with enough channels on both sides to amortise its transforms; else
    im2col + GEMM. The gradients are convolutions of the same depth and follow
    the same rule. Returns ``(name, reason)``."""
    out_channels, group_channels, kh, kw = weight_shape
    depth = group_channels * kh * kw
    if depth <= config.AUTO_DIRECT_MAX_DEPTH:
        return "direct", (f"each output needs C/groups*R*S = {depth} <= "
                          f"AUTO_DIRECT_MAX_DEPTH = {config.AUTO_DIRECT_MAX_DEPTH} multiply-adds, "
                          f"too few to pay for building GEMM columns")
    shape = problem.get("input_shape")
    work = shape[0] * shape[2] * shape[3] * out_channels * depth if shape else None
    if work is not None and work <= config.AUTO_DIRECT_MAX_WORK:
        return "direct", (f"the whole call needs about N*H*W*K*C/groups*R*S = {work} <= "
                          f"AUTO_DIRECT_MAX_WORK = {config.AUTO_DIRECT_MAX_WORK} multiply-adds, "
                          f"too few to pay for a GEMM's packing")
    groups = problem.get("groups", 1)
    narrow = min(group_channels, out_channels // groups)
    fits = ("winograd" in dispatch.available_algorithms(op)
                and dispatch.unsupported_reason(op, "cpu", "winograd", weight_shape=weight_shape,
                                                **problem) is None)
    if narrow >= config.AUTO_WINOGRAD_MIN_CHANNELS and fits:
        return "winograd", (f"a 3x3 stride-1 layer with min(C, K)/groups = {narrow} >= "
                            f"AUTO_WINOGRAD_MIN_CHANNELS = {config.AUTO_WINOGRAD_MIN_CHANNELS} "
                            f"channels, enough to amortise Winograd's transforms")
    why = ("Winograd does not apply (not 3x3 with stride and dilation 1)" if not fits else
           f"min(C, K)/groups = {narrow} < AUTO_WINOGRAD_MIN_CHANNELS = "
           f"{config.AUTO_WINOGRAD_MIN_CHANNELS} channels is too few for Winograd")
    return "im2col", f"C/groups*R*S = {depth} multiply-adds per output and {why}"


def _conv_chooser(op):
    def choose(*, weight_shape, **problem):
        return _choose_conv(op, weight_shape, problem)

    choose.__name__ = choose.__qualname__ = f"_choose_{op}"
    return choose


#: The reason of the one-kernel chooser, for the ops that are not pooling or unpooling.
_ONE_KERNEL = {"conv2d_grad_bias": "grad_bias has one kernel: a sum over N, H and W"}
_POOL_KERNEL = "pooling and unpooling have one fast kernel: direct loops over each plane"


def _single_chooser(op):
    """The direct kernel: pooling and unpooling (and grad_bias) have one fast path, the
    direct loops over each plane."""
    reason = _ONE_KERNEL.get(op, _POOL_KERNEL if "pool" in op
                             else f"{op} has one fast kernel: the direct loops")

    def choose(**_):
        return "direct", reason

    choose.__name__ = choose.__qualname__ = f"_choose_{op}"
    return choose


_CHOOSERS = {"conv": _conv_chooser, "single": _single_chooser}

# every op of the table: its reference loops and its kind of chooser
for _op in ops.TABLE.values():
    if _op.reference_on_cpu:
        register(_op.name, "cpu", "reference")(_op.reference)
    register_chooser(_op.name, "cpu")(_CHOOSERS[_op.chooser](_op.name))
