"""Winograd F(4x4, 3x3): 3x3, stride-1 convolution with 2.25 instead of 9
multiplies per output and input channel (Lavin and Gray, 2016).

For each 4x4 output tile, the 6x6 input patch ``d`` that covers it and each
filter ``g``: ``y = A^T [(G g G^T) * (B^T d B)] A``, with ``*`` element-wise.
Summed over input channels, each of the 36 element positions ``e`` becomes
one matrix product ``M[e] = U[e] @ V[e]`` of the transformed filters
``U[e] (K x C)`` by the transformed patches ``V[e] (C x tiles)``.

One parallel task takes a block of tile rows: it transforms their patches
into ``V`` in its own buffer, runs the 36 GEMMs (on one BLAS thread), and
transforms the products back into the output, so the whole working set of a
block stays in cache (measured 2x faster here than three passes over whole
tensors, ../shared/CALIBRATION.md). Transforms run over all tiles of the
block at once, as vector loops: the patch columns of a tile row are gathered
by phase (``4 * j + u``), so tile ``j`` is element ``j`` of phase ``u``.

The transforms add rounding: float32 results differ from direct summation
by about 1e-6 relative (L2), 1e-5 at most on unit-scale data.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .. import config
from ..dispatch import register
from . import blas, identities, workspace
from ._jit import kernel
from .windows import valid_range

#: B^T (6x6), G (6x3) and A^T (4x6) of F(4x4, 3x3).
B_T = np.array([
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
], dtype=np.float64)
G = np.array([
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
], dtype=np.float64)
A_T = np.array([
    [1, 1, 1, 1, 1, 0],
    [0, 1, -1, 2, -2, 0],
    [0, 1, 1, 4, 4, 0],
    [0, 1, -1, 8, -8, 1],
], dtype=np.float64)

TILE = 4
ALPHA = 6


def unsupported(*, weight_shape, stride, dilation, **_) -> str | None:
    """Why Winograd F(4x4, 3x3) cannot compute this conv2d, or None if it can."""
    if weight_shape[2:] != (3, 3) or stride != (1, 1) or dilation != (1, 1):
        return (f"winograd needs a 3x3 kernel, stride 1 and dilation 1; got kernel "
                f"{tuple(weight_shape[2:])}, stride {stride}, dilation {dilation}")
    return None


@kernel(parallel=True)
def _filter_transform(taps, g, transformed):
    """transformed[a * 6 + b, k, :] = sum_{r, s} G[a, r] G[b, s] taps[k, r * 3 + s, :]:
    ``G w G^T`` for every filter, vectorised over the input channels (``taps``
    is the weight laid out as ``(K, 9, C/groups)``). A task takes a block of
    filters and writes one of the 36 planes of ``transformed`` at a time, so
    that it streams into one place, not 36 (their 4 KiB-aligned strides would
    collide in the cache)."""
    out_channels, group_channels = taps.shape[0], taps.shape[2]
    block = 8
    for first in prange((out_channels + block - 1) // block):
        for a in range(ALPHA):
            for b in range(ALPHA):
                for k in range(first * block, min((first + 1) * block, out_channels)):
                    dst = transformed[a * ALPHA + b, k]
                    for c in range(group_channels):
                        dst[c] = 0
                    for r in range(3):
                        for s in range(3):
                            coefficient = g[a, r] * g[b, s]
                            if coefficient != 0:
                                src = taps[k, r * 3 + s]
                                for c in range(group_channels):
                                    dst[c] += coefficient * src[c]


@kernel()
def _b_transform(i0, i1, i2, i3, i4, i5, o0, o1, o2, o3, o4, o5, n, b_t):
    """``o = B^T i`` on six vectors of length ``n``, one pass; the coefficients are read
    from ``b_t`` so that they have the data's dtype (a float literal would promote
    float32 arithmetic to float64)."""
    four, five, two = b_t[0, 0], -b_t[0, 2], b_t[4, 1]
    for t in range(n):
        a0, a1, a2, a3, a4, a5 = i0[t], i1[t], i2[t], i3[t], i4[t], i5[t]
        o0[t] = four * a0 - five * a2 + a4
        o1[t] = a3 + a4 - four * (a1 + a2)
        o2[t] = four * (a1 - a2) + a4 - a3
        o3[t] = two * (a3 - a1) + a4 - a2
        o4[t] = two * (a1 - a3) + a4 - a2
        o5[t] = four * a1 - five * a3 + a5


@kernel()
def _a_transform(i0, i1, i2, i3, i4, i5, o0, o1, o2, o3, n, a_t, offset):
    """``o = A^T i + offset`` on six vectors of length ``n``, one pass."""
    two, four, eight = a_t[1, 3], a_t[2, 3], a_t[3, 3]
    for t in range(n):
        a1, a2, a3, a4 = i1[t], i2[t], i3[t], i4[t]
        plus12, minus12, plus34, minus34 = a1 + a2, a1 - a2, a3 + a4, a3 - a4
        o0[t] = i0[t] + plus12 + plus34 + offset
        o1[t] = minus12 + two * minus34 + offset
        o2[t] = plus12 + four * plus34 + offset
        o3[t] = minus12 + eight * minus34 + i5[t] + offset


@kernel(parallel=True)
def _conv2d_forward_winograd(x, transformed, bias, has_bias, out, pad_top, pad_left, groups,
                             rows_per_block, b_t, a_t, scratch, gemm, set_blas_threads):
    """out = conv2d(x, weight, bias) for a 3x3 stride-1 kernel, ``transformed`` = its
    filter transform ``(36, K, C/groups)``; see the module docstring."""
    n_img, channels, height, width = x.shape
    out_channels = out.shape[1]
    out_h, out_w = out.shape[2], out.shape[3]
    group_channels = channels // groups
    per_group = out_channels // groups
    tiles_h = (out_h + TILE - 1) // TILE
    tiles_w = (out_w + TILE - 1) // TILE
    n_tile_rows = n_img * tiles_h
    n_blocks = (n_tile_rows + rows_per_block - 1) // rows_per_block
    max_tiles = rows_per_block * tiles_w
    n_chunks = scratch.shape[0]
    e_count = ALPHA * ALPHA
    for chunk in prange(n_chunks):
        saved_threads = set_blas_threads(1)
        v = scratch[chunk, : e_count * channels * max_tiles]
        m = scratch[chunk, e_count * channels * max_tiles : e_count * (channels + out_channels) * max_tiles]
        rest = scratch[chunk, e_count * (channels + out_channels) * max_tiles :]
        patches = rest[: e_count * max_tiles]
        half = rest[e_count * max_tiles : 2 * e_count * max_tiles]
        for block in range(chunk * n_blocks // n_chunks, (chunk + 1) * n_blocks // n_chunks):
            q_first = block * rows_per_block
            q_last = min(q_first + rows_per_block, n_tile_rows)
            n_tiles = (q_last - q_first) * tiles_w
            # input transform: V[a*6+b, c, t] = (B^T d B)[a, b] for the patch d of tile t
            zero = a_t[0, 5]
            for c in range(channels):
                for q in range(q_first, q_last):
                    n = q // tiles_h
                    top = (q % tiles_h) * TILE - pad_top
                    first = (q - q_first) * tiles_w
                    for a in range(ALPHA):
                        row = top + a
                        # p[u][j] = x_padded[row, 4 j + u]: six phases of one row
                        p0 = patches[(a * ALPHA) * n_tiles + first :]
                        p1 = p0[n_tiles:]
                        p2 = p0[2 * n_tiles :]
                        p3 = p0[3 * n_tiles :]
                        p4 = p0[4 * n_tiles :]
                        p5 = p0[5 * n_tiles :]
                        if row < 0 or row >= height:
                            for j in range(tiles_w):
                                p0[j] = p1[j] = p2[j] = p3[j] = p4[j] = p5[j] = zero
                            continue
                        source = x[n, c, row]
                        # tiles whose six columns are all inside the input, then the rest
                        inner_first = min((pad_left + TILE - 1) // TILE, tiles_w)
                        inner_last = max(min((width - ALPHA + pad_left) // TILE + 1, tiles_w),
                                         inner_first)
                        taps = source[inner_first * TILE - pad_left :]
                        for j in range(inner_last - inner_first):
                            p0[inner_first + j] = taps[TILE * j]
                            p1[inner_first + j] = taps[TILE * j + 1]
                            p2[inner_first + j] = taps[TILE * j + 2]
                            p3[inner_first + j] = taps[TILE * j + 3]
                            p4[inner_first + j] = taps[TILE * j + 4]
                            p5[inner_first + j] = taps[TILE * j + 5]
                        for j in range(tiles_w):
                            if inner_first <= j < inner_last:
                                continue
                            for u in range(ALPHA):
                                column = TILE * j + u - pad_left
                                value = source[column] if 0 <= column < width else zero
                                patches[(a * ALPHA + u) * n_tiles + first + j] = value
                # rows: half[a', u] = sum_a B^T[a', a] patches[a, u]; then columns
                for u in range(ALPHA):
                    src = patches[u * n_tiles :]
                    dst = half[u * n_tiles :]
                    step = ALPHA * n_tiles
                    _b_transform(src, src[step:], src[2 * step :], src[3 * step :],
                                 src[4 * step :], src[5 * step :], dst, dst[step:],
                                 dst[2 * step :], dst[3 * step :], dst[4 * step :],
                                 dst[5 * step :], n_tiles, b_t)
                for a in range(ALPHA):
                    src = half[a * ALPHA * n_tiles :]
                    dst = v[(a * ALPHA * channels + c) * n_tiles :]
                    step = channels * n_tiles
                    _b_transform(src, src[n_tiles:], src[2 * n_tiles :], src[3 * n_tiles :],
                                 src[4 * n_tiles :], src[5 * n_tiles :], dst, dst[step:],
                                 dst[2 * step :], dst[3 * step :], dst[4 * step :],
                                 dst[5 * step :], n_tiles, b_t)
            # M[e] = U[e] @ V[e], per group
            for e in range(e_count):
                for g in range(groups):
                    gemm(blas.ROW_MAJOR, blas.NO_TRANS, blas.NO_TRANS, per_group, n_tiles,
                         group_channels, 1.0,
                         blas.pointer(transformed, (e * out_channels + g * per_group) * group_channels),
                         group_channels,
                         blas.pointer(v, (e * channels + g * group_channels) * n_tiles), n_tiles,
                         0.0, blas.pointer(m, (e * out_channels + g * per_group) * n_tiles), n_tiles)
            # output transform: y = A^T M A per filter, stored with the bias
            for k in range(out_channels):
                b_k = bias[k] if has_bias else zero
                step = ALPHA * out_channels * n_tiles
                for b in range(ALPHA):
                    src = m[(b * out_channels + k) * n_tiles :]
                    dst = half[b * n_tiles :]
                    _a_transform(src, src[step:], src[2 * step :], src[3 * step :],
                                 src[4 * step :], src[5 * step :], dst, dst[ALPHA * n_tiles :],
                                 dst[2 * ALPHA * n_tiles :], dst[3 * ALPHA * n_tiles :], n_tiles,
                                 a_t, zero)
                for a in range(TILE):
                    src = half[a * ALPHA * n_tiles :]
                    dst = patches[a * TILE * n_tiles :]
                    _a_transform(src, src[n_tiles:], src[2 * n_tiles :], src[3 * n_tiles :],
                                 src[4 * n_tiles :], src[5 * n_tiles :], dst, dst[n_tiles:],
                                 dst[2 * n_tiles :], dst[3 * n_tiles :], n_tiles, a_t, b_k)
                full = out_w // TILE
                for q in range(q_first, q_last):
                    n = q // tiles_h
                    for a in range(TILE):
                        row = (q % tiles_h) * TILE + a
                        if row >= out_h:
                            break
                        y0 = patches[a * TILE * n_tiles + (q - q_first) * tiles_w :]
                        y1 = y0[n_tiles:]
                        y2 = y0[2 * n_tiles :]
                        y3 = y0[3 * n_tiles :]
                        dst = out[n, k, row]
                        for j in range(full):
                            dst[TILE * j] = y0[j]
                            dst[TILE * j + 1] = y1[j]
                            dst[TILE * j + 2] = y2[j]
                            dst[TILE * j + 3] = y3[j]
                        for b in range(out_w - TILE * full):
                            dst[TILE * full + b] = y0[b * n_tiles + full]
        set_blas_threads(saved_threads)


def transform_filters(weight: np.ndarray, groups: int) -> np.ndarray:
    """``U = G w G^T`` for every filter, as ``(36, K, C/groups)``, in a buffer that the
    next call on this thread reuses."""
    out_channels, group_channels = weight.shape[:2]
    # both buffers are reused across calls: fresh ones page-fault (5-10 MB for deep layers)
    taps = workspace.borrow((out_channels, 9, group_channels), weight.dtype, "winograd taps")
    np.copyto(taps, weight.reshape(out_channels, group_channels, 9).transpose(0, 2, 1))
    transformed = workspace.borrow((ALPHA * ALPHA, out_channels, group_channels), weight.dtype,
                                   "winograd filters")
    _filter_transform(taps, G.astype(weight.dtype), transformed)
    return transformed


@register("conv2d", "cpu", "winograd", unsupported=unsupported)
def conv2d_winograd(x, weight, bias, out, stride, padding, dilation, groups, *, gemm=None):
    """Host side of Winograd F(4x4, 3x3); arguments as normalised by :func:`fastconv.conv2d`."""
    n_img, channels = x.shape[:2]
    out_channels = weight.shape[0]
    out_h, out_w = out.shape[2:]
    tiles_h, tiles_w = -(-out_h // TILE), -(-out_w // TILE)
    n_threads = numba.get_num_threads()
    per_row = ALPHA * ALPHA * (channels + out_channels) * tiles_w * x.itemsize
    rows_per_block = max(1, config.WINOGRAD_TILE_BYTES // per_row,
                         -(-config.WINOGRAD_MIN_TILES // tiles_w))
    # a multiple of the thread count in blocks, so that no thread idles
    n_blocks = -(-(n_img * tiles_h) // rows_per_block)
    n_blocks = -(-n_blocks // n_threads) * n_threads
    rows_per_block = -(-(n_img * tiles_h) // n_blocks)
    n_chunks = max(1, min(n_threads, -(-(n_img * tiles_h) // rows_per_block)))
    max_tiles = rows_per_block * tiles_w
    scratch = workspace.borrow(
        (n_chunks, ALPHA * ALPHA * (channels + out_channels + 2) * max_tiles), x.dtype
    )
    has_bias = bias is not None
    _conv2d_forward_winograd(
        x, transform_filters(weight, groups), bias if has_bias else np.zeros(0, x.dtype),
        has_bias, out, padding[0][0], padding[1][0], groups, rows_per_block,
        B_T.astype(x.dtype), A_T.astype(x.dtype), scratch,
        gemm if gemm is not None else blas.gemm_for(x.dtype), blas.SET_THREADS_LOCAL,
    )


def unsupported_grad_input(*, weight_shape, stride, padding, dilation, **_) -> str | None:
    """Why grad_input cannot be the Winograd convolution of grad_output (see
    :mod:`.identities`), or None if it can."""
    reason = unsupported(weight_shape=weight_shape, stride=stride, dilation=dilation)
    if reason is None and max(max(p) for p in padding) > 2:
        reason = f"winograd needs padding <= 2 for grad_input, got {padding}"
    return reason


@register("conv2d_grad_input", "cpu", "winograd", unsupported=unsupported_grad_input)
def conv2d_grad_input_winograd(grad_out, weight, grad_in, stride, padding, dilation, groups, *,
                               gemm=None):
    """grad_in = conv2d(grad_out, flipped and transposed weight) with stride 1, by Winograd."""
    conv_pads = identities.grad_input_as_conv_padding(
        grad_in.shape[2:], grad_out.shape[2:], weight.shape[2:], stride, padding, dilation)
    conv2d_winograd(grad_out, identities.transpose_flip(weight, groups), None, grad_in, (1, 1),
                    conv_pads, (1, 1), groups, gemm=gemm)
