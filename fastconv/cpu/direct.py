"""Direct convolution: JIT loops over the definition.

Fast where one output needs few multiply-adds (few channels per group, small
kernels: depthwise and first layers), where building GEMM columns costs more
than the arithmetic they feed.

Each task takes one image, one group and a block of output channels. It
copies one input channel at a time into a zero-bordered plane in its own
buffer (so no index ever leaves the input), and accumulates every tap as one
long vectorised loop. With stride 1 the outputs are computed on the padded
plane's row pitch: output ``(i, j)`` sits at ``i * W_pad + j`` and tap
``(r, s)`` reads ``plane[i * W_pad + j + r * dh * W_pad + s * dw]``, a plain
shifted slice; the ``W_pad - W_out`` junk columns per row are dropped when
the result is written out.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .. import config
from ..dispatch import register
from . import workspace
from ._jit import kernel


@kernel(parallel=True)
def _conv2d_forward_direct(x, weight, bias, has_bias, out, stride_h, stride_w, pad_top, pad_left,
                           padded_h, padded_w, dilation_h, dilation_w, groups, block_k, scratch):
    """out[n, k] = bias[k] + sum_{c, r, s} weight[k, c, r, s] * x_padded[n, c, i*sh + r*dh, j*sw + s*dw]."""
    n_img, _, height, width = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    out_h, out_w = out.shape[2], out.shape[3]
    per_group = out_channels // groups
    n_blocks = (per_group + block_k - 1) // block_k
    n_tasks = n_img * groups * n_blocks
    n_chunks = scratch.shape[0]
    unit_stride = stride_h == 1 and stride_w == 1
    pitch = padded_w if unit_stride else out_w
    acc_len = (out_h - 1) * pitch + out_w
    plane_len = padded_h * padded_w
    for chunk in prange(n_chunks):
        plane = scratch[chunk, :plane_len]
        plane[:] = 0
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            n = task // (groups * n_blocks)
            g = (task // n_blocks) % groups
            k_first = g * per_group + (task % n_blocks) * block_k
            n_k = min(block_k, (g + 1) * per_group - k_first)
            acc = scratch[chunk, plane_len : plane_len + n_k * acc_len]
            acc[:] = 0
            for c in range(group_channels):
                source = x[n, g * group_channels + c]
                for row in range(height):
                    dst = plane[(row + pad_top) * padded_w + pad_left :]
                    src = source[row]
                    for j in range(width):
                        dst[j] = src[j]
                for kk in range(n_k):
                    a = acc[kk * acc_len : (kk + 1) * acc_len]
                    for r in range(kh):
                        for s in range(kw):
                            w = weight[k_first + kk, c, r, s]
                            shift = r * dilation_h * padded_w + s * dilation_w
                            if unit_stride:
                                taps = plane[shift : shift + acc_len]
                                for j in range(acc_len):
                                    a[j] += w * taps[j]
                            else:
                                for i in range(out_h):
                                    taps = plane[i * stride_h * padded_w + shift :]
                                    dst = a[i * out_w : (i + 1) * out_w]
                                    for j in range(out_w):
                                        dst[j] += w * taps[j * stride_w]
            for kk in range(n_k):
                b = bias[k_first + kk] if has_bias else 0
                for i in range(out_h):
                    src = acc[kk * acc_len + i * pitch : kk * acc_len + i * pitch + out_w]
                    dst = out[n, k_first + kk, i]
                    for j in range(out_w):
                        dst[j] = src[j] + b


@register("conv2d", "cpu", "direct")
def conv2d_direct(x, weight, bias, out, stride, padding, dilation, groups):
    """Host side of the direct kernel; arguments as normalised by :func:`fastconv.conv2d`."""
    n_img, _, height, width = x.shape
    out_channels = weight.shape[0]
    out_h, out_w = out.shape[2], out.shape[3]
    (top, bottom), (left, right) = padding
    padded_h, padded_w = height + top + bottom, width + left + right
    block_k = min(config.DIRECT_BLOCK_K, out_channels // groups)
    pitch = padded_w if stride == (1, 1) else out_w
    n_tasks = n_img * groups * (-(-(out_channels // groups) // block_k))
    n_chunks = max(1, min(numba.get_num_threads(), n_tasks))
    scratch = workspace.borrow(
        (n_chunks, padded_h * padded_w + block_k * ((out_h - 1) * pitch + out_w)), x.dtype
    )
    has_bias = bias is not None
    _conv2d_forward_direct(
        x, weight, bias if has_bias else np.zeros(0, x.dtype), has_bias, out,
        stride[0], stride[1], top, left, padded_h, padded_w, dilation[0], dilation[1],
        groups, block_k, scratch,
    )
