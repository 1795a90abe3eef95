"""CPU backend: Numba kernels, registered with :mod:`fastconv.dispatch` on import.

Imported on first use by the dispatcher, never by ``import fastconv``.
"""

from __future__ import annotations

import numpy as np

from .. import config, dispatch, reference, shapes
from ..dispatch import register, register_chooser

# importing registers the kernels; threads makes TBB loadable before a kernel starts
# Numba's thread pool
from . import direct, im2col, pool, reductions, threads, winograd  # noqa: F401


@register("conv2d", "cpu", "reference")
def _conv2d_reference(x, weight, bias, out, stride, padding, dilation, groups):
    out[...] = reference.conv2d(x, weight, bias, stride, padding, dilation, groups)


@register("conv2d_grad_input", "cpu", "reference")
def _conv2d_grad_input_reference(grad_out, weight, grad_in, stride, padding, dilation, groups):
    zeros = np.zeros(grad_in.shape, grad_in.dtype)
    grad_in[...] = reference.conv2d_backward(grad_out, zeros, weight, stride, padding, dilation,
                                             groups)[0]


@register("conv2d_grad_weight", "cpu", "reference")
def _conv2d_grad_weight_reference(x, grad_out, grad_weight, stride, padding, dilation, groups):
    zeros = np.zeros(grad_weight.shape, grad_weight.dtype)
    grad_weight[...] = reference.conv2d_backward(grad_out, x, zeros, stride, padding, dilation,
                                                 groups)[1]


def _choose_conv(op, weight_shape, problem):
    """Direct loops when one output needs few multiply-adds; Winograd for 3x3 stride-1
    layers with enough channels on both sides to amortise its transforms; else
    im2col + GEMM. The gradients are convolutions of the same depth and follow
    the same rule. Returns ``(name, reason)``."""
    out_channels, group_channels, kh, kw = weight_shape
    depth = group_channels * kh * kw
    if depth <= config.AUTO_DIRECT_MAX_DEPTH:
        return "direct", (f"each output needs C/groups*R*S = {depth} <= "
                          f"AUTO_DIRECT_MAX_DEPTH = {config.AUTO_DIRECT_MAX_DEPTH} multiply-adds, "
                          f"too few to pay for building GEMM columns")
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


@register_chooser("conv2d", "cpu")
def _choose_conv2d(*, weight_shape, **problem):
    return _choose_conv("conv2d", weight_shape, problem)


@register_chooser("conv2d_grad_input", "cpu")
def _choose_conv2d_grad_input(*, weight_shape, **problem):
    return _choose_conv("conv2d_grad_input", weight_shape, problem)


@register_chooser("conv2d_grad_weight", "cpu")
def _choose_conv2d_grad_weight(*, weight_shape, **problem):
    return _choose_conv("conv2d_grad_weight", weight_shape, problem)


@register_chooser("conv2d_grad_bias", "cpu")
def _choose_grad_bias(**_):
    return "direct", "grad_bias has one kernel: a sum over N, H and W"


# --- pooling and unpooling: the reference loops, and one choice (the direct loops) ---


def _ceil_mode(x_shape, out_shape, kernel_size, stride, padding, dilation=(1, 1)):
    """Whether ``out_shape`` needs ``ceil_mode`` (the windows and divisors are otherwise
    the same, so that is all the reference needs to know)."""
    return any(
        out_shape[2 + a] != shapes.output_length(x_shape[2 + a], kernel_size[a], stride[a],
                                                 (padding[a], padding[a]), dilation[a])
        for a in range(2)
    )


def _first_bad(indices, plane_size):
    """Flat position of the first index outside ``[0, plane_size)``, or -1: the report the
    direct kernels make, for the reference loops, which assume valid indices."""
    bad = np.flatnonzero((indices < 0) | (indices >= plane_size))
    return int(bad[0]) if bad.size else -1


@register("max_pool2d", "cpu", "reference")
def _max_pool2d_reference(x, out, indices, kernel_size, stride, padding, dilation):
    ceil = _ceil_mode(x.shape, out.shape, kernel_size, stride, padding, dilation)
    out[...], where = reference.max_pool2d(x, kernel_size, stride, padding, dilation, ceil,
                                           return_indices=True)
    if indices is not None:
        indices[...] = where


@register("max_pool2d_backward", "cpu", "reference")
def _max_pool2d_backward_reference(grad_out, indices, grad_in):
    bad = _first_bad(indices, grad_in.shape[2] * grad_in.shape[3])
    if bad < 0:
        grad_in[...] = reference.max_pool2d_backward(grad_out, indices, grad_in.shape)
    return bad


@register("avg_pool2d", "cpu", "reference")
def _avg_pool2d_reference(x, out, kernel_size, stride, padding, count_include_pad,
                          divisor_override):
    ceil = _ceil_mode(x.shape, out.shape, kernel_size, stride, padding)
    out[...] = reference.avg_pool2d(x, kernel_size, stride, padding, ceil, count_include_pad,
                                    divisor_override)


@register("avg_pool2d_backward", "cpu", "reference")
def _avg_pool2d_backward_reference(grad_out, grad_in, kernel_size, stride, padding,
                                   count_include_pad, divisor_override):
    ceil = _ceil_mode(grad_in.shape, grad_out.shape, kernel_size, stride, padding)
    grad_in[...] = reference.avg_pool2d_backward(grad_out, grad_in.shape, kernel_size, stride,
                                                 padding, ceil, count_include_pad,
                                                 divisor_override)


@register("max_unpool2d", "cpu", "reference")
def _max_unpool2d_reference(x, indices, out):
    bad = _first_bad(indices, out.shape[2] * out.shape[3])
    if bad < 0:
        out[...] = reference.max_unpool2d(x, indices, 1, output_size=out.shape)
    return bad


@register("max_unpool2d_backward", "cpu", "reference")
def _max_unpool2d_backward_reference(grad_out, indices, grad_in):
    bad = _first_bad(indices, grad_out.shape[2] * grad_out.shape[3])
    if bad < 0:
        grad_in[...] = reference.max_unpool2d_backward(grad_out, indices)
    return bad


@register("repeat_unpool2d", "cpu", "reference")
def _repeat_unpool2d_reference(x, out, scale):
    out[...] = reference.repeat_unpool2d(x, scale)


@register("repeat_unpool2d_backward", "cpu", "reference")
def _repeat_unpool2d_backward_reference(grad_out, grad_in, scale):
    grad_in[...] = reference.repeat_unpool2d_backward(grad_out, scale)


@register_chooser("max_pool2d", "cpu")
@register_chooser("max_pool2d_backward", "cpu")
@register_chooser("avg_pool2d", "cpu")
@register_chooser("avg_pool2d_backward", "cpu")
@register_chooser("max_unpool2d", "cpu")
@register_chooser("max_unpool2d_backward", "cpu")
@register_chooser("repeat_unpool2d", "cpu")
@register_chooser("repeat_unpool2d_backward", "cpu")
def _choose_pool(**_):
    """Pooling has one fast path: the direct loops over each plane."""
    return "direct", "pooling and unpooling have one fast kernel: direct loops over each plane"
