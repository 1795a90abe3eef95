"""The weight gradient of layers with few taps per filter (a first layer's 3 channels x
3x3: 27), as dot products over the positions.

``grad_weight[k, t] = sum over images and positions p of grad_out[n, k, p] * col[t, p]``,
where ``col[t, p]`` is input tap ``t = (c, r, s)`` of output position ``p`` (zero in the
padding). The blocked weight gradient (:mod:`.blocked`) broadcasts input values against
vectors of filters, which needs grad_output laid position-major: a transpose of every
value of it, for only ``2 * taps`` flops per value here (54 on a 3x3 first layer), so that
the transposes cost more than the sums. Here both operands are read as rows of positions,
as they lie: a task builds the columns of a band of output rows of one image (``col``,
im2col's :func:`._im2col_tile`, a few KB per row for few channels) and
:func:`_dots` keeps 4 filters x 6 taps of sums in vectors over the band's positions
(each step: 4 vectors of grad_output rows, 6 of column rows, 24 multiply-adds), adding
them into the task's sums in memory once per band; the lanes are added up at the end.
The threads take bands of images in turn and their sums are added in a fixed order.

Padding is multiplied as zeros: where grad_output holds Inf or NaN, ``0 * Inf`` can
give a NaN the definition does not have, so a result that is not all finite is computed
again by the exact loops (:func:`conv2d_grad_weight_few_taps` says so).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .. import config
from . import simd, threads, workspace
from ._jit import kernel
from .blocked import L2_BYTES
from .im2col import _im2col_tile, _im2col_tile_strided

#: Filters and taps whose sums one step keeps in vectors (4 x 6 = 24 of them; the
#: kernels below are written for these).
DOT_FILTERS = 4
DOT_TAPS = 6
#: Output positions a task's band aims at: its columns (taps x positions) and
#: grad_output's rows stay in the L2 while every block of filters and taps goes over them.
BAND_POSITIONS = 1024


@kernel(inline=True)
def _times_taps(y, x0, x1, x2, x3, x4, x5, a0, a1, a2, a3, a4, a5):
    """``a0 + y * x0``, ..., ``a5 + y * x5``: one filter's vector against 6 taps'."""
    return (simd.fma(y, x0, a0), simd.fma(y, x1, a1), simd.fma(y, x2, a2),
            simd.fma(y, x3, a3), simd.fma(y, x4, a4), simd.fma(y, x5, a5))


@kernel(inline=True)
def _dots(grad, rows, col, t0, ld, taps, count, sums, at):
    """``sums[at + v * lanes:]`` += the lane sums, over positions ``[0, count)`` of the
    band, of 4 filters x 6 taps: filter ``rows[f]``'s row of ``grad`` (``rows``: its
    first position's index; a filter past the last reuses filter 0's row) times tap ``t0 +
    j``'s row of ``col`` (leading dimension ``ld``; a tap at or past ``taps`` reuses tap
    ``t0``'s row). Sum ``f * 6 + j`` is vector ``v``."""
    c0 = t0 * ld
    c1 = (t0 + 1 if t0 + 1 < taps else t0) * ld
    c2 = (t0 + 2 if t0 + 2 < taps else t0) * ld
    c3 = (t0 + 3 if t0 + 3 < taps else t0) * ld
    c4 = (t0 + 4 if t0 + 4 < taps else t0) * ld
    c5 = (t0 + 5 if t0 + 5 < taps else t0) * ld
    g0, g1, g2, g3 = rows[0], rows[1], rows[2], rows[3]
    a00 = a01 = a02 = a03 = a04 = a05 = simd.zeros(sums)
    a10 = a11 = a12 = a13 = a14 = a15 = simd.zeros(sums)
    a20 = a21 = a22 = a23 = a24 = a25 = simd.zeros(sums)
    a30 = a31 = a32 = a33 = a34 = a35 = simd.zeros(sums)
    lanes = simd.lanes(sums)
    for p in range(0, count, lanes):
        m = count - p  # the last step's masked loads read its m positions, zeros after
        x0 = simd.load_first(col, c0 + p, m)
        x1 = simd.load_first(col, c1 + p, m)
        x2 = simd.load_first(col, c2 + p, m)
        x3 = simd.load_first(col, c3 + p, m)
        x4 = simd.load_first(col, c4 + p, m)
        x5 = simd.load_first(col, c5 + p, m)
        a00, a01, a02, a03, a04, a05 = _times_taps(
            simd.load_first(grad, g0 + p, m), x0, x1, x2, x3, x4, x5, a00, a01, a02, a03, a04, a05)
        a10, a11, a12, a13, a14, a15 = _times_taps(
            simd.load_first(grad, g1 + p, m), x0, x1, x2, x3, x4, x5, a10, a11, a12, a13, a14, a15)
        a20, a21, a22, a23, a24, a25 = _times_taps(
            simd.load_first(grad, g2 + p, m), x0, x1, x2, x3, x4, x5, a20, a21, a22, a23, a24, a25)
        a30, a31, a32, a33, a34, a35 = _times_taps(
            simd.load_first(grad, g3 + p, m), x0, x1, x2, x3, x4, x5, a30, a31, a32, a33, a34, a35)
    for v, acc in enumerate((a00, a01, a02, a03, a04, a05, a10, a11, a12, a13, a14, a15,
                             a20, a21, a22, a23, a24, a25, a30, a31, a32, a33, a34, a35)):
        i = at + v * lanes
        simd.store(sums, i, simd.add(simd.load(sums, i), acc))


@kernel(parallel=True)
def _few_taps_grad_weight(x, grad_out, sums, kh, kw, stride_h, stride_w, pad_top, pad_left,
                          dilation_h, dilation_w, band_rows, phase_len, scratch, part, parts):
    """Each chunk's ``sums[chunk]`` (blocks of 4 filters x 6 taps of vectors, zeroed here)
    over its bands: a band is ``band_rows`` output rows of one image, the chunks take
    the ``N * bands`` bands in turn."""
    n_img, channels = x.shape[0], x.shape[1]
    out_channels, out_h, out_w = grad_out.shape[1], grad_out.shape[2], grad_out.shape[3]
    taps = channels * kh * kw
    plane = out_h * out_w
    n_bands = (out_h + band_rows - 1) // band_rows
    n_tasks = n_img * n_bands
    n_chunks = sums.shape[0]
    t_blocks = (taps + 5) // 6
    k_blocks = (out_channels + 3) // 4
    block = 24 * simd.lanes(sums)
    grad = grad_out.reshape(-1)
    rows = np.empty(4, np.int64)
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        mine = sums[chunk]
        mine[:] = 0
        col = scratch[chunk, : taps * band_rows * out_w]
        rows_buffer = scratch[chunk, taps * band_rows * out_w :]
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            n = task // n_bands
            row_first = (task % n_bands) * band_rows
            row_last = min(row_first + band_rows, out_h)
            count = (row_last - row_first) * out_w
            if stride_w == 1:
                _im2col_tile(x, n, np.int64(0), channels, kh, kw, row_first, row_last, out_w,
                             stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
                             col, np.int64(0), count)
            else:  # each input row dealt into its column phases first: contiguous copies
                _im2col_tile_strided(x, n, np.int64(0), channels, kh, kw, row_first, row_last,
                                     out_w, stride_h, stride_w, pad_top, pad_left, dilation_h,
                                     dilation_w, phase_len, rows_buffer, col, np.int64(0),
                                     count)
            for kb in range(k_blocks):
                for f in range(4):
                    k = kb * 4 + f if kb * 4 + f < out_channels else 0
                    rows[f] = (n * out_channels + k) * plane + row_first * out_w
                for tb in range(t_blocks):
                    _dots(grad, rows, col, tb * 6, count, taps, count, mine,
                          (kb * t_blocks + tb) * block)


@kernel(entry=True)
def _add_lanes(sums, grad_weight):
    """grad_weight[k, t] = the sum over chunks and lanes of sum ``(k % 4) * 6 + t % 6`` of
    block ``(k // 4, t // 6)``, added in chunk order."""
    out_channels, taps = grad_weight.shape
    lanes = simd.lanes(sums)
    t_blocks = (taps + 5) // 6
    for k in range(out_channels):
        for t in range(taps):
            at = (((k // 4) * t_blocks + t // 6) * 24 + (k % 4) * 6 + t % 6) * lanes
            total = simd.total(simd.load(sums[0], at))
            for chunk in range(1, sums.shape[0]):
                total += simd.total(simd.load(sums[chunk], at))
            grad_weight[k, t] = total


def pays(grad_out_shape, weight_shape, groups: int, itemsize: int) -> bool:
    """Whether ``direct`` computes this weight gradient here rather than on the blocked
    kernel: one group, at most ``AUTO_FEW_TAPS_MAX`` taps per filter, at least
    ``AUTO_FEW_TAPS_MIN_WORK`` multiply-adds (its fixed cost is larger), and either fewer
    filters than a vector has lanes (most of the blocked kernel's vectors of filters would
    be padding) or an image's grad_output larger than one core's L2 (its transposes then
    go to memory). Measured: :data:`fastconv.config.AUTO_FEW_TAPS_MAX`.

    >>> pays((2, 64, 224, 224), (64, 3, 3, 3), 1, 4), pays((32, 16, 32, 32), (16, 3, 3, 3), 1, 4)
    (True, False)
    """
    out_channels, channels, kh, kw = weight_shape
    lanes = simd.WIDTH_BYTES // itemsize
    taps = channels * kh * kw
    outputs = out_channels * grad_out_shape[2] * grad_out_shape[3]
    return (groups == 1 and taps <= config.AUTO_FEW_TAPS_MAX
            and grad_out_shape[0] * outputs * taps >= config.AUTO_FEW_TAPS_MIN_WORK
            and (out_channels < lanes or outputs * itemsize > L2_BYTES))


def conv2d_grad_weight_few_taps(x, grad_out, grad_weight, stride, padding, dilation) -> bool:
    """Host side (where it pays: :func:`pays`); whether the result is all finite (if not,
    the caller computes it again exactly)."""
    n_img = x.shape[0]
    out_channels, channels, kh, kw = grad_weight.shape
    out_h, out_w = grad_out.shape[2:]
    taps = channels * kh * kw
    band_rows = max(1, min(out_h, BAND_POSITIONS // out_w))
    n_tasks = n_img * -(-out_h // band_rows)
    n_chunks = max(1, min(threads.count(), n_tasks))
    lanes = simd.WIDTH_BYTES // x.itemsize
    blocks = -(-out_channels // DOT_FILTERS) * -(-taps // DOT_TAPS)
    sums = np.empty((n_chunks, blocks * DOT_FILTERS * DOT_TAPS * lanes), x.dtype)
    # at a column stride, the input rows of a band dealt into their column phases
    phase_len = -(-((out_w - 1) * stride[1] + dilation[1] * (kw - 1) + 1) // stride[1])
    dealt = ((band_rows - 1) * stride[0] + dilation[0] * (kh - 1) + 1) * stride[1] * phase_len
    scratch = workspace.borrow((n_chunks, taps * band_rows * out_w + dealt), x.dtype)
    threads.launch(_few_taps_grad_weight,
                   threads.parts_for(n_chunks, grad_weight, n_img * out_h * out_w),
                   x, np.ascontiguousarray(grad_out), sums, kh, kw, stride[0], stride[1],
                   padding[0][0], padding[1][0], dilation[0], dilation[1], band_rows, phase_len,
                   scratch)
    flat = grad_weight.reshape(out_channels, taps)
    _add_lanes(sums, flat)
    return bool(np.isfinite(flat).all())
