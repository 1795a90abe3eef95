"""Sums over batch and space: the bias gradients."""

from __future__ import annotations

import math

from numba import prange

from ..dispatch import register
from ._jit import kernel
from .pool import serial


@kernel(parallel=True)
def _channel_sums(grad_out, sums):
    """sums[k] = sum_{n, i, j} grad_out[n, k, i, j], one channel per task, in a fixed order."""
    n_img, channels = grad_out.shape[0], grad_out.shape[1]
    plane = grad_out.shape[2] * grad_out.shape[3]
    for k in prange(channels):
        total = 0.0
        for n in range(n_img):
            values = grad_out[n, k].reshape(plane)
            partial = 0.0
            for p in range(plane):
                partial += values[p]
            total += partial
        sums[k] = total


@register("conv2d_grad_bias", "cpu", "direct")
def conv2d_grad_bias(grad_out, grad_bias):
    """grad_bias[k] = sum of grad_out[:, k] (float64 accumulation); small sums without
    the thread pool (see ``pool.SERIAL_MAX_ELEMENTS``)."""
    sums = _channel_sums.serial if serial(grad_out.size) else _channel_sums
    sums(grad_out, grad_bias)


def _prepare_grad_bias(arrays, params):
    """:func:`conv2d_grad_bias`'s runner for a cached plan: the kernel chosen once."""
    (grad_out_shape, _), _ = arrays
    sums = _channel_sums.serial if serial(math.prod(grad_out_shape)) else _channel_sums

    def run(grad_out, grad_bias):
        sums(grad_out, grad_bias)
        return False

    return run


conv2d_grad_bias.prepare = _prepare_grad_bias  # type: ignore[attr-defined]
