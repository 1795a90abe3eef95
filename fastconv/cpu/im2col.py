"""im2col + GEMM: convolution as a matrix product over unrolled windows.

For one image and group, ``out[k, p] = sum_q weight2d[k, q] * col[q, p]``
where ``q = (c, r, s)`` enumerates the window taps (``C/groups * R * S``
rows) and ``p`` the output positions. The columns are built one tile of
whole output rows at a time into a per-thread buffer that stays in L2, and
the GEMM runs on it at once, on that thread, with BLAS held to one thread.
A 1x1, stride-1, unpadded convolution is already a GEMM on the input and
builds no columns.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .. import config
from ..dispatch import register
from . import blas, workspace
from ._jit import kernel
from .windows import valid_range


@kernel()
def _im2col_tile(x, n, c_first, group_channels, kh, kw, row_first, row_last, out_w,
                 stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, col):
    """col[(c, r, s), (i - row_first) * out_w + j] = x_padded[n, c_first + c, i*sh + r*dh, j*sw + s*dw]
    for output rows ``row_first <= i < row_last``."""
    height, width = x.shape[2], x.shape[3]
    n_cols = (row_last - row_first) * out_w
    for c in range(group_channels):
        plane = x[n, c_first + c]
        for r in range(kh):
            for s in range(kw):
                q = (c * kh + r) * kw + s
                offset = s * dilation_w - pad_left
                lo, hi = valid_range(offset, stride_w, width, out_w)
                for i in range(row_first, row_last):
                    dst = col[q * n_cols + (i - row_first) * out_w : q * n_cols + (i - row_first + 1) * out_w]
                    row = i * stride_h - pad_top + r * dilation_h
                    if row < 0 or row >= height or lo >= hi:
                        dst[:] = 0
                        continue
                    dst[:lo] = 0
                    dst[hi:] = 0
                    taps = plane[row, lo * stride_w + offset :]
                    for j in range(hi - lo):
                        dst[lo + j] = taps[j * stride_w]


@kernel(parallel=True)
def _conv2d_forward_im2col(x, weight2d, bias, has_bias, out, kh, kw, stride_h, stride_w,
                           pad_top, pad_left, dilation_h, dilation_w, groups, tile_rows,
                           workspace, gemm, set_blas_threads):
    """out[n, g*Kg:(g+1)*Kg, tile] = weight2d[g] @ im2col(x[n, group g], tile), tile by tile."""
    n_img, channels, height, width = x.shape
    out_channels, depth = weight2d.shape
    out_h, out_w = out.shape[2], out.shape[3]
    group_channels = channels // groups
    per_group = out_channels // groups
    n_tiles = (out_h + tile_rows - 1) // tile_rows
    n_tasks = n_img * groups * n_tiles
    n_chunks = workspace.shape[0]
    plain_gemm = (kh == 1 and kw == 1 and stride_h == 1 and stride_w == 1 and pad_top == 0
                  and pad_left == 0 and out_h == height and out_w == width)
    for chunk in prange(n_chunks):
        saved_threads = set_blas_threads(1)
        col = workspace[chunk]
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            n = task // (groups * n_tiles)
            g = (task // n_tiles) % groups
            row_first = (task % n_tiles) * tile_rows
            row_last = min(row_first + tile_rows, out_h)
            n_cols = (row_last - row_first) * out_w
            if plain_gemm:
                b_ptr = blas.pointer(x, (n * channels + g * group_channels) * height * width
                                     + row_first * width)
                ldb = height * width
            else:
                _im2col_tile(x, n, g * group_channels, group_channels, kh, kw, row_first,
                             row_last, out_w, stride_h, stride_w, pad_top, pad_left,
                             dilation_h, dilation_w, col)
                b_ptr = blas.pointer(col, 0)
                ldb = n_cols
            k_first = g * per_group
            gemm(blas.ROW_MAJOR, blas.NO_TRANS, blas.NO_TRANS, per_group, n_cols, depth, 1.0,
                 blas.pointer(weight2d, k_first * depth), depth, b_ptr, ldb, 0.0,
                 blas.pointer(out, (n * out_channels + k_first) * out_h * out_w + row_first * out_w),
                 out_h * out_w)
            if has_bias:
                for k in range(k_first, k_first + per_group):
                    out[n, k, row_first:row_last, :] += bias[k]
        set_blas_threads(saved_threads)


def tile_rows_for(depth: int, out_h: int, out_w: int, item: int) -> int:
    """Whole output rows per tile so that the tile's columns fill IM2COL_TILE_BYTES."""
    return max(1, min(out_h, config.IM2COL_TILE_BYTES // max(1, depth * out_w * item)))


@register("conv2d", "cpu", "im2col")
def conv2d_im2col(x, weight, bias, out, stride, padding, dilation, groups, *, gemm=None):
    """Host side of im2col + GEMM; ``gemm`` overrides the BLAS function pointer (tests)."""
    n_img, _, _, _ = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    out_h, out_w = out.shape[2], out.shape[3]
    depth = group_channels * kh * kw
    tile_rows = tile_rows_for(depth, out_h, out_w, x.itemsize)
    n_tasks = n_img * groups * (-(-out_h // tile_rows))
    n_chunks = max(1, min(numba.get_num_threads(), n_tasks))
    scratch = workspace.borrow((n_chunks, depth * tile_rows * out_w), x.dtype)
    has_bias = bias is not None
    _conv2d_forward_im2col(
        x, weight.reshape(out_channels, depth), bias if has_bias else np.zeros(0, x.dtype),
        has_bias, out, kh, kw, stride[0], stride[1], padding[0][0], padding[1][0],
        dilation[0], dilation[1], groups, tile_rows, scratch,
        gemm if gemm is not None else blas.gemm_for(x.dtype), blas.SET_THREADS_LOCAL,
    )
