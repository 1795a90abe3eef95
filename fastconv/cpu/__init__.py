"""CPU backend: Numba kernels, registered with :mod:`fastconv.dispatch` on import.

Imported on first use by the dispatcher, never by ``import fastconv``.
"""

from __future__ import annotations

from .. import config, reference
from ..dispatch import register, register_chooser
from . import direct, im2col  # noqa: F401  (registers the kernels)


@register("conv2d", "cpu", "reference")
def _conv2d_reference(x, weight, bias, out, stride, padding, dilation, groups):
    out[...] = reference.conv2d(x, weight, bias, stride, padding, dilation, groups)


@register_chooser("conv2d", "cpu")
def _choose_conv2d(*, input_shape, weight_shape, stride, dilation, groups, **_):
    """Direct loops when one output needs few multiply-adds, else im2col + GEMM."""
    _, group_channels, kh, kw = weight_shape
    if group_channels * kh * kw <= config.AUTO_DIRECT_MAX_DEPTH:
        return "direct"
    return "im2col"
