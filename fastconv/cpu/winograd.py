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
    is the weight laid out as ``(K, 9, C/groups)``)."""
    out_channels, group_channels = taps.shape[0], taps.shape[2]
    for k in prange(out_channels):
        for a in range(ALPHA):
            for b in range(ALPHA):
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
def _apply_rows(matrix, source, n_in, target, n_out, n_cols, length):
    """target[(o * n_cols + col) * length + t] = sum_i matrix[o, i] * source[(i * n_cols + col) * length + t]
    for ``o < n_out``, ``col < n_cols``, ``t < length``: a small matrix applied to
    rows of vectors, skipping its zeros."""
    for o in range(n_out):
        for col in range(n_cols):
            dst = target[(o * n_cols + col) * length : (o * n_cols + col + 1) * length]
            for t in range(length):
                dst[t] = 0
            for i in range(n_in):
                coefficient = matrix[o, i]
                if coefficient != 0:
                    src = source[(i * n_cols + col) * length :]
                    for t in range(length):
                        dst[t] += coefficient * src[t]


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
            for c in range(channels):
                for q in range(q_first, q_last):
                    n = q // tiles_h
                    top = (q % tiles_h) * TILE - pad_top
                    for a in range(ALPHA):
                        row = top + a
                        for u in range(ALPHA):
                            start = (a * ALPHA + u) * n_tiles + (q - q_first) * tiles_w
                            dst = patches[start : start + tiles_w]
                            lo, hi = valid_range(u - pad_left, TILE, width, tiles_w)
                            if row < 0 or row >= height or lo >= hi:
                                for j in range(tiles_w):
                                    dst[j] = 0
                                continue
                            for j in range(lo):
                                dst[j] = 0
                            for j in range(hi, tiles_w):
                                dst[j] = 0
                            taps = x[n, c, row, lo * TILE + u - pad_left :]
                            for j in range(hi - lo):
                                dst[lo + j] = taps[j * TILE]
                # rows: half[a', u] = sum_a B^T[a', a] patches[a, u]; then columns
                _apply_rows(b_t, patches, ALPHA, half, ALPHA, ALPHA, n_tiles)
                for a in range(ALPHA):
                    for b in range(ALPHA):
                        dst = v[((a * ALPHA + b) * channels + c) * n_tiles :]
                        for t in range(n_tiles):
                            dst[t] = 0
                        for u in range(ALPHA):
                            coefficient = b_t[b, u]
                            if coefficient != 0:
                                src = half[(a * ALPHA + u) * n_tiles :]
                                for t in range(n_tiles):
                                    dst[t] += coefficient * src[t]
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
                b_k = bias[k] if has_bias else 0
                for a in range(TILE):
                    for b in range(ALPHA):
                        dst = half[(a * ALPHA + b) * n_tiles : (a * ALPHA + b + 1) * n_tiles]
                        for t in range(n_tiles):
                            dst[t] = 0
                        for i in range(ALPHA):
                            coefficient = a_t[a, i]
                            if coefficient != 0:
                                src = m[((i * ALPHA + b) * out_channels + k) * n_tiles :]
                                for t in range(n_tiles):
                                    dst[t] += coefficient * src[t]
                for a in range(TILE):
                    for b in range(TILE):
                        dst = patches[(a * TILE + b) * n_tiles : (a * TILE + b + 1) * n_tiles]
                        for t in range(n_tiles):
                            dst[t] = b_k
                        for i in range(ALPHA):
                            coefficient = a_t[b, i]
                            if coefficient != 0:
                                src = half[(a * ALPHA + i) * n_tiles :]
                                for t in range(n_tiles):
                                    dst[t] += coefficient * src[t]
                for q in range(q_first, q_last):
                    n = q // tiles_h
                    for a in range(TILE):
                        row = (q % tiles_h) * TILE + a
                        if row >= out_h:
                            break
                        for b in range(TILE):
                            count = (out_w - b + TILE - 1) // TILE
                            src = patches[(a * TILE + b) * n_tiles + (q - q_first) * tiles_w :]
                            dst = out[n, k, row, b:]
                            for j in range(count):
                                dst[j * TILE] = src[j]
        set_blas_threads(saved_threads)


def transform_filters(weight: np.ndarray, groups: int) -> np.ndarray:
    """``U = G w G^T`` for every filter, as ``(36, K, C/groups)``."""
    out_channels, group_channels = weight.shape[:2]
    taps = np.ascontiguousarray(weight.reshape(out_channels, group_channels, 9).transpose(0, 2, 1))
    transformed = np.empty((ALPHA * ALPHA, out_channels, group_channels), weight.dtype)
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
    rows_per_block = max(1, config.WINOGRAD_TILE_BYTES // per_row)
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
