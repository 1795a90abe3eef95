"""Sums over batch and space: the bias gradients."""

from __future__ import annotations

import math

from numba import prange

from ..dispatch import register
from . import threads
from ._jit import kernel
from .pool import parts


@kernel(parallel=True)
def _channel_sums(grad_out, sums, part, parts):
    """sums[k] = sum_{n, i, j} grad_out[n, k, i, j], one channel per task, in a fixed order."""
    n_img, channels = grad_out.shape[0], grad_out.shape[1]
    plane = grad_out.shape[2] * grad_out.shape[3]
    for k in prange(part * channels // parts, (part + 1) * channels // parts):
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
    threads.launch(_channel_sums, parts(grad_out.size), grad_out, grad_bias)


def _prepare_grad_bias(arrays, params):
    """:func:`conv2d_grad_bias`'s runner for a cached plan: the kernel chosen once."""
    (grad_out_shape, _), _ = arrays
    n_parts = parts(math.prod(grad_out_shape))

    def run(grad_out, grad_bias):
        if n_parts == 1:  # (threads.launch's first case, without its call)
            _channel_sums(grad_out, grad_bias, 0, 1)
        else:
            threads.launch(_channel_sums, n_parts, grad_out, grad_bias)
        return False

    return run


conv2d_grad_bias.prepare = _prepare_grad_bias  # type: ignore[attr-defined]
