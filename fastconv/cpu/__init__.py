"""CPU backend: Numba kernels, registered with :mod:`fastconv.dispatch` on import.

Imported on first use by the dispatcher, never by ``import fastconv``.
"""

from __future__ import annotations

import numpy as np

from .. import config, reference
from ..dispatch import register, register_chooser
from . import direct, im2col, reductions  # noqa: F401  (registers the kernels)


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


@register_chooser("conv2d", "cpu")
@register_chooser("conv2d_grad_input", "cpu")
@register_chooser("conv2d_grad_weight", "cpu")
def _choose_conv2d(*, weight_shape, **_):
    """Direct loops when one output needs few multiply-adds, else im2col + GEMM.

    The same rule serves the gradients: each is a convolution of the same depth.
    """
    _, group_channels, kh, kw = weight_shape
    if group_channels * kh * kw <= config.AUTO_DIRECT_MAX_DEPTH:
        return "direct"
    return "im2col"


@register_chooser("conv2d_grad_bias", "cpu")
def _choose_grad_bias(**_):
    return "direct"
