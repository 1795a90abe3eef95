"""Sums over batch and space: the bias gradients."""

from __future__ import annotations

import math

from numba import prange
from numba.extending import overload

from ..dispatch import register
from . import threads
from ._jit import inlined_options, kernel
from .pool import parts
from .strips import flat


@kernel(counted=False)
def _plane_sum(values, at, count):
    """The sum of ``values[at : at + count]`` (float64 accumulation). The view of the
    plane is taken without reference counts: a view per plane in the kernel cost more
    than a small plane's sum (a C960 7x7 bias gradient 0.096 against 0.036 ms, two
    threads of a Zen 3; the same loop over offsets into the flat array, without a view,
    was not vectorised)."""
    plane = values[at : at + count]
    partial = 0.0
    for p in range(count):
        partial += plane[p]
    return partial


def _plane_total(source, grad_out, n, k):
    """The float64 sum of ``grad_out[n, k]``; ``source``: :func:`.strips.flat` (grad_out)."""


def _total_of_flat(source, grad_out, n, k):
    plane = grad_out.shape[2] * grad_out.shape[3]
    return _plane_sum(source, (n * grad_out.shape[1] + k) * plane, plane)


def _total_of_view(source, grad_out, n, k):
    partial = 0.0
    for value in grad_out[n, k].flat:
        partial += value
    return partial


@overload(_plane_total, jit_options=inlined_options())
def _plane_total_overload(source, grad_out, n, k):
    return _total_of_flat if source.ndim == 1 else _total_of_view


@kernel(parallel=True)
def _channel_sums(grad_out, sums, part, parts):
    """sums[k] = sum_{n, i, j} grad_out[n, k, i, j], one channel per task, in a fixed order."""
    n_img, channels = grad_out.shape[0], grad_out.shape[1]
    source = flat(grad_out)  # planes by offset, not by view (a C-contiguous grad_out)
    for k in prange(part * channels // parts, (part + 1) * channels // parts):
        total = 0.0
        for n in range(n_img):
            total += _plane_total(source, grad_out, n, k)
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
