"""Direct convolution: JIT loops over the definition, no intermediate buffers.

Fast where one output needs few multiply-adds (few channels per group, small
kernels: depthwise and first layers), where building GEMM columns costs more
than the arithmetic they feed.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .. import config
from ..dispatch import register
from ._jit import kernel
from .windows import valid_range


@kernel(parallel=True)
def _conv2d_forward_direct(x, weight, bias, has_bias, out, stride_h, stride_w, pad_top, pad_left,
                           dilation_h, dilation_w, groups, block_k):
    """out[n, k] = bias[k] + sum_{c, r, s} weight[k, c, r, s] * x_padded[n, c, i*sh + r*dh, j*sw + s*dw].

    One task computes ``block_k`` output channels of one image and group, so
    each input row read serves several filters; padding is skipped through
    the valid range of each tap instead of being copied.
    """
    n_img, _, height, width = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    out_h, out_w = out.shape[2], out.shape[3]
    per_group = out_channels // groups
    n_blocks = (per_group + block_k - 1) // block_k
    for task in prange(n_img * groups * n_blocks):
        n = task // (groups * n_blocks)
        g = (task // n_blocks) % groups
        k_first = g * per_group + (task % n_blocks) * block_k
        k_last = min(k_first + block_k, (g + 1) * per_group)
        for k in range(k_first, k_last):
            out[n, k, :, :] = bias[k] if has_bias else 0
        for i in range(out_h):
            for r in range(kh):
                row = i * stride_h - pad_top + r * dilation_h
                if row < 0 or row >= height:
                    continue
                for c in range(group_channels):
                    x_row = x[n, g * group_channels + c, row]
                    for s in range(kw):
                        offset = s * dilation_w - pad_left
                        lo, hi = valid_range(offset, stride_w, width, out_w)
                        if lo >= hi:
                            continue
                        taps = x_row[lo * stride_w + offset :]
                        for k in range(k_first, k_last):
                            w = weight[k, c, r, s]
                            o = out[n, k, i, lo:hi]
                            for j in range(hi - lo):
                                o[j] += w * taps[j * stride_w]


@register("conv2d", "cpu", "direct")
def conv2d_direct(x, weight, bias, out, stride, padding, dilation, groups):
    """Host side of the direct kernel; arguments as normalised by :func:`fastconv.conv2d`."""
    has_bias = bias is not None
    _conv2d_forward_direct(
        x, weight, bias if has_bias else np.zeros(0, x.dtype), has_bias, out,
        stride[0], stride[1], padding[0][0], padding[1][0], dilation[0], dilation[1],
        groups, config.DIRECT_BLOCK_K,
    )
