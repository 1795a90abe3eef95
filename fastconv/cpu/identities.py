"""The identities that turn one convolution problem into another.

With ``y = conv2d(x, w)`` (stride s, padding (p0, p1), dilation d, kernel k per axis):

- ``grad_x = conv_transpose2d(grad_y, w)``: every output tap ``y[i]`` sends
  ``w[r] * grad_y[i]`` back to ``x[i*s + r*d - p0]``.
- With ``s == 1`` that is a plain convolution of ``grad_y`` with the kernel
  flipped in space and with in/out channels swapped per group, padded by
  ``(d*(k-1) - p0, n_x - n_y + p0)`` (= ``d*(k-1) - p1`` for a conv2d input
  size): defined when both are >= 0. Kernels use it, for a finite weight,
  to compute ``grad_x`` with their fast forward path and no scatter-add (the
  padding zeros would meet an Inf or NaN weight tap, 0 * Inf = NaN, where the
  scatter has no product at all).
- With ``s > 1``, each phase ``a`` of ``grad_x`` (positions ``a + i*s``) is a
  stride-1 correlation of ``grad_y`` with the taps ``r`` that reach it
  (``a + p0 - r*d`` a multiple ``e*s``: position ``i`` takes ``w[r] * grad_y[i + e]``);
  a phase that no tap reaches is zero. The blocked kernels and the depthwise
  grad_input compute it so (:mod:`.blocked`, :mod:`.direct`).
"""

from __future__ import annotations

import functools

import numpy as np


def transpose_flip(weight: np.ndarray, groups: int) -> np.ndarray:
    """``(K, C/g, R, S) -> (C, K/g, R, S)``: per group, swap in/out channels and flip R, S."""
    out_channels, group_channels, kh, kw = weight.shape
    per_group = out_channels // groups
    w = weight.reshape(groups, per_group, group_channels, kh, kw)[:, :, :, ::-1, ::-1]
    return np.ascontiguousarray(w.transpose(0, 2, 1, 3, 4)).reshape(
        groups * group_channels, per_group, kh, kw
    )


@functools.lru_cache(maxsize=512)
def grad_input_as_conv_padding(input_size, output_size, kernel_size, stride, padding, dilation):
    """Padding of the stride-1 convolution of grad_y (``output_size``) that yields grad_x
    (``input_size``): ``(d*(k-1) - p0, n_in - n_out + p0)`` per axis, or None where
    the stride is > 1 or a padding would be negative (no plain convolution then).
    The trailing pad also covers rows that no window reaches (they get zeros)."""
    if stride != (1, 1):
        return None
    pads = tuple(
        (dilation[a] * (kernel_size[a] - 1) - padding[a][0],
         input_size[a] - output_size[a] + padding[a][0])
        for a in range(2)
    )
    if min(min(p) for p in pads) < 0:
        return None
    return pads
