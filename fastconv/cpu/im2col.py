"""im2col + GEMM: convolution as a matrix product over unrolled windows.

For one image and group, ``out[k, p] = sum_q weight2d[k, q] * col[q, p]``
where ``q = (c, r, s)`` enumerates the window taps (``C/groups * R * S``
rows) and ``p`` the output positions. The columns are built one tile of
whole output rows at a time into a per-thread buffer that stays in L2, and
the GEMM runs on it at once, on that thread, with BLAS held to one thread.
A 1x1, stride-1, unpadded convolution is already a GEMM on the input and
builds no columns; a 1x1 one at a stride copies each input it reads once into
its columns (the split into column phases pays only where taps share inputs: a
ResNet shortcut, C64 -> 128 at stride 2 on 56x56, ran 3.3 ms split, 1.0 ms not).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .. import activations, config
from ..dispatch import register
from . import blas, identities, threads, workspace
from ._jit import kernel
from .blocked import L2_BYTES
from .epilogue import store_row
from .finite import all_finite
from .strips import copy_run, flat
from .windows import valid_range


@kernel()
def _im2col_tile(x, n, c_first, group_channels, kh, kw, row_first, row_last, out_w,
                 stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, col, first_col, ld):
    """col[(c, r, s) * ld + first_col + (i - row_first) * out_w + j]
    = x_padded[n, c_first + c, i*sh + r*dh, j*sw + s*dw]
    for output rows ``row_first <= i < row_last``."""
    height, width = x.shape[2], x.shape[3]
    for c in range(group_channels):
        plane = x[n, c_first + c]
        for r in range(kh):
            for s in range(kw):
                q = (c * kh + r) * kw + s
                offset = s * dilation_w - pad_left
                lo, hi = valid_range(offset, stride_w, width, out_w)
                for i in range(row_first, row_last):
                    start = q * ld + first_col + (i - row_first) * out_w
                    row = i * stride_h - pad_top + r * dilation_h
                    if row < 0 or row >= height or lo >= hi:
                        for j in range(out_w):
                            col[start + j] = 0
                        continue
                    for j in range(lo):
                        col[start + j] = 0
                    for j in range(hi, out_w):
                        col[start + j] = 0
                    dst = col[start + lo : start + hi]
                    taps = plane[row, lo * stride_w + offset :]
                    if stride_w == 1:
                        for j in range(hi - lo):
                            dst[j] = taps[j]
                    else:
                        for j in range(hi - lo):
                            dst[j] = taps[j * stride_w]


@kernel()
def _im2col_tile_unit_stride(x, n, c_first, group_channels, kh, kw, row_first, row_last, out_w,
                             pad_top, pad_left, pitch, dilation_h, dilation_w, rows, col,
                             first_col, ld):
    """Stride 1: output ``(i, j)`` gets column ``(i - row_first) * pitch + j``, with
    ``pitch`` the padded width, so each tap's row of columns is one contiguous
    slice of the padded input rows, copied in one loop. The ``pitch - out_w``
    columns after each output row are junk, dropped when the result is stored.

    ``rows`` receives the padded input rows the tile reads, one channel at a time.
    """
    height, width = x.shape[2], x.shape[3]
    n_rows = row_last - row_first + dilation_h * (kh - 1)
    n_cols = (row_last - row_first - 1) * pitch + out_w
    for c in range(group_channels):
        plane = x[n, c_first + c]
        for t in range(n_rows):
            dst = rows[t * pitch : (t + 1) * pitch]
            source_row = row_first + t - pad_top
            if source_row < 0 or source_row >= height:
                for j in range(pitch):
                    dst[j] = 0
                continue
            src = plane[source_row]
            for j in range(pad_left):
                dst[j] = 0
            for j in range(width):
                dst[pad_left + j] = src[j]
            for j in range(pad_left + width, pitch):
                dst[j] = 0
        for r in range(kh):
            for s in range(kw):
                start = ((c * kh + r) * kw + s) * ld + first_col
                dst = col[start : start + n_cols]
                src = rows[r * dilation_h * pitch + s * dilation_w :]
                for j in range(n_cols):
                    dst[j] = src[j]


@kernel()
def _im2col_tile_strided(x, n, c_first, group_channels, kh, kw, row_first, row_last, out_w,
                         stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
                         phase_len, rows, col, first_col, ld):
    """As :func:`_im2col_tile` for stride > 1, without gathers: the padded input rows
    the tile reads are first split by column phase, ``rows[t, p, m] =
    x_padded[row_first * sh + t, m * sw + p]``, so that tap ``s`` of output
    column ``j`` (padded column ``j * sw + s * dw``) is element ``j + (s * dw) // sw``
    of phase ``(s * dw) % sw``: each copy into ``col`` is contiguous.
    """
    height, width = x.shape[2], x.shape[3]
    n_rows = (row_last - row_first - 1) * stride_h + dilation_h * (kh - 1) + 1
    row_len = stride_w * phase_len
    for c in range(group_channels):
        plane = x[n, c_first + c]
        for t in range(n_rows):
            dst = rows[t * row_len : (t + 1) * row_len]
            source_row = row_first * stride_h + t - pad_top
            if source_row < 0 or source_row >= height:
                for m in range(row_len):
                    dst[m] = 0
                continue
            src = plane[source_row]
            for p in range(stride_w):
                phase = dst[p * phase_len : (p + 1) * phase_len]
                lo, hi = valid_range(p - pad_left, stride_w, width, phase_len)
                for m in range(lo):
                    phase[m] = 0
                taps = src[lo * stride_w + p - pad_left :]
                for m in range(hi - lo):
                    phase[lo + m] = taps[m * stride_w]
                for m in range(hi, phase_len):
                    phase[m] = 0
        for r in range(kh):
            for s in range(kw):
                start = ((c * kh + r) * kw + s) * ld + first_col
                p = (s * dilation_w) % stride_w
                shift = (s * dilation_w) // stride_w
                for i in range(row_first, row_last):
                    t = (i - row_first) * stride_h + r * dilation_h
                    src = rows[t * row_len + p * phase_len + shift :]
                    dst = col[start + (i - row_first) * out_w : start + (i - row_first + 1) * out_w]
                    for j in range(out_w):
                        dst[j] = src[j]


@kernel(parallel=True)
def _conv2d_forward_im2col(x, weight2d, transposed, bias, has_bias, floor, out, kh, kw, stride_h,
                           stride_w, pad_top, pad_left, pitch, phase_len, dilation_h, dilation_w,
                           groups, tile_rows, tile_images, k_blocks, scratch, gemm,
                           set_blas_threads, part, parts):
    """out[n, g*Kg:(g+1)*Kg, tile] = weight2d[g] @ im2col(x[n, group g], tile), tile by tile.
    With ``transposed`` (a 1x1 layer's grad_input), ``weight2d`` is the weight whose
    transpose this convolution's is, ``(groups * depth, Kg)``: the GEMM reads group ``g``'s
    block of it transposed, where a copy of the transpose took a third of the call.

    A tile is ``tile_rows`` output rows of one image, or ``tile_images`` whole
    images side by side (small images, where one image is too narrow a GEMM).
    Each thread builds the tile's columns in its slice of ``scratch``, runs
    the GEMM into scratch too, and stores the result with the bias added, clamped from
    below at ``floor`` (:func:`fastconv.activations.floor`). Where there are fewer tiles
    than threads (a batch of one), each tile's filters are split into ``k_blocks`` runs,
    a task each (:func:`filter_blocks`; the columns are then built once per run).
    Output row ``i`` of a tile starts at column ``(i - row_first) * pitch``:
    ``pitch`` is the padded width for stride 1 (:func:`_im2col_tile_unit_stride`)
    and ``out_w`` otherwise.
    """
    n_img, channels, height, width = x.shape
    out_channels, depth = weight2d.shape
    if transposed:
        out_channels, depth = weight2d.shape[1] * groups, weight2d.shape[0] // groups
    out_h, out_w = out.shape[2], out.shape[3]
    group_channels = channels // groups
    per_group = out_channels // groups
    # group g's filters: rows g * Kg.. of weight2d, or transposed its columns of rows g * depth..
    trans_a, lda = (blas.TRANS, per_group) if transposed else (blas.NO_TRANS, depth)
    n_tiles = (out_h + tile_rows - 1) // tile_rows
    n_image_blocks = (n_img + tile_images - 1) // tile_images
    n_tasks = n_image_blocks * groups * n_tiles * k_blocks
    n_chunks = scratch.shape[0]
    unit_stride = stride_h == 1 and stride_w == 1
    plain_gemm = (kh == 1 and kw == 1 and unit_stride and pad_top == 0 and pad_left == 0
                  and out_h == height and out_w == width and tile_images == 1)
    max_cols = tile_images * ((tile_rows - 1) * pitch + out_w)
    out_flat = flat(out)
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        saved_threads = set_blas_threads(1)
        col = scratch[chunk, : depth * max_cols]
        result = scratch[chunk, depth * max_cols : (depth + per_group) * max_cols]
        rows = scratch[chunk, (depth + per_group) * max_cols :]
        for split_task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            task, kb = split_task // k_blocks, split_task % k_blocks
            # this task's filters of the group: [k_lo, k_hi), runs of whole vectors
            k_lo = kb * per_group // k_blocks // 16 * 16
            k_hi = per_group if kb == k_blocks - 1 else (kb + 1) * per_group // k_blocks // 16 * 16
            n_first = (task // (groups * n_tiles)) * tile_images
            n_last = min(n_first + tile_images, n_img)
            g = (task // n_tiles) % groups
            row_first = (task % n_tiles) * tile_rows
            row_last = min(row_first + tile_rows, out_h)
            n_cols = (row_last - row_first - 1) * pitch + out_w
            ld = (n_last - n_first) * n_cols
            k_first = g * per_group
            if plain_gemm:
                b_ptr = blas.pointer(x, (n_first * channels + g * group_channels) * height * width
                                     + row_first * width)
                ldb = height * width
            else:
                for n in range(n_first, n_last):
                    first_col = (n - n_first) * n_cols
                    if unit_stride:
                        _im2col_tile_unit_stride(x, n, g * group_channels, group_channels, kh, kw,
                                                 row_first, row_last, out_w, pad_top, pad_left,
                                                 pitch, dilation_h, dilation_w, rows, col,
                                                 first_col, ld)
                    elif kh * kw == 1:  # each input read once: no phases to split
                        _im2col_tile(x, n, g * group_channels, group_channels, kh, kw,
                                     row_first, row_last, out_w, stride_h, stride_w, pad_top,
                                     pad_left, dilation_h, dilation_w, col, first_col, ld)
                    else:
                        _im2col_tile_strided(x, n, g * group_channels, group_channels, kh, kw,
                                             row_first, row_last, out_w, stride_h, stride_w,
                                             pad_top, pad_left, dilation_h, dilation_w,
                                             phase_len, rows, col, first_col, ld)
                b_ptr = blas.pointer(col, 0)
                ldb = ld
            # filter k_lo's row of weight2d, or (transposed) its column
            a_at = k_first * depth + (k_lo if transposed else k_lo * depth)
            gemm(blas.ROW_MAJOR, trans_a, blas.NO_TRANS, k_hi - k_lo, ld, depth, 1.0,
                 blas.pointer(weight2d, a_at), lda, b_ptr, ldb, 0.0,
                 blas.pointer(result, k_lo * ld), ld)
            for n in range(n_first, n_last):
                for k in range(k_lo, k_hi):
                    b = bias[k_first + k] if has_bias else 0
                    at = k * ld + (n - n_first) * n_cols - row_first * pitch
                    for i in range(row_first, row_last):
                        store_row(result, at + i * pitch, out_flat, out, n, k_first + k, i,
                                  out.shape[3], b, floor)
        set_blas_threads(saved_threads)


def tiling(depth: int, per_group: int, n_img: int, out_h: int, pitch: int, item: int,
           n_threads: int, plain_gemm: bool) -> tuple[int, int]:
    """``(tile_rows, tile_images)`` whose columns and results fill about IM2COL_TILE_BYTES,
    with at least IM2COL_MIN_COLUMNS columns where the image allows (a narrower
    GEMM runs well below the machine's peak).

    Whole output rows of one image, or, when a whole image is smaller than the
    budget, several images (leaving at least one task per thread). A plain
    GEMM reads the input in place and keeps to one image per task.
    """
    row_bytes = (depth + per_group) * pitch * item
    tile_rows = max(config.IM2COL_TILE_BYTES // max(1, row_bytes),
                    -(-config.IM2COL_MIN_COLUMNS // pitch))
    tile_rows = max(1, min(out_h, tile_rows))
    tile_images = 1
    if tile_rows == out_h and not plain_gemm:
        tile_images = max(config.IM2COL_TILE_BYTES // (row_bytes * out_h),
                          -(-config.IM2COL_MIN_COLUMNS // (pitch * out_h)))
        tile_images = max(1, min(tile_images, -(-n_img // n_threads)))
        # as many image blocks as a multiple of the thread count, so no thread idles
        blocks = -(-n_img // tile_images)
        blocks = -(-blocks // n_threads) * n_threads
        tile_images = -(-n_img // blocks)
    return tile_rows, tile_images


def filter_blocks(n_tasks: int, per_group: int, n_threads: int) -> int:
    """Runs of filters each tile's GEMM is split into: one where the tiles keep every
    thread busy, else enough for the threads, each run at least
    :data:`MIN_FILTERS_PER_TASK` filters (a batch of one image of a deep layer: one
    tile, one GEMM on one thread, otherwise).

    >>> filter_blocks(8, 256, 2), filter_blocks(1, 2048, 2), filter_blocks(1, 48, 2)
    (1, 2, 1)
    """
    if n_tasks >= n_threads:
        return 1
    return max(1, min(-(-n_threads // n_tasks), per_group // MIN_FILTERS_PER_TASK))


#: Fewest filters a task's share of a split GEMM has (:func:`filter_blocks`).
MIN_FILTERS_PER_TASK = 32


@register("conv2d", "cpu", "im2col")
def conv2d_im2col(x, weight, bias, out, stride, padding, dilation, groups, activation=None, *,
                  gemm=None, transposed=False):
    """Host side of im2col + GEMM; ``gemm`` overrides the BLAS function pointer (tests).
    With ``transposed``, ``weight`` is a 1x1 weight ``(K, C/g, 1, 1)`` and the convolution
    the one of its per-group transpose (a 1x1 layer's grad_input), read in place."""
    n_img, _, _, width = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    if transposed:
        out_channels, group_channels = group_channels * groups, out_channels // groups
    out_h, out_w = out.shape[2], out.shape[3]
    depth = group_channels * kh * kw
    per_group = out_channels // groups
    n_threads = threads.count()
    (top, _), (left, right) = padding
    pitch = width + left + right if stride == (1, 1) else out_w
    plain_gemm = (kh, kw, stride, padding) == (1, 1, (1, 1), ((0, 0), (0, 0)))
    tile_rows, tile_images = tiling(depth, per_group, n_img, out_h, pitch, x.itemsize, n_threads,
                                    plain_gemm)
    n_tasks = -(-n_img // tile_images) * groups * (-(-out_h // tile_rows))
    k_blocks = filter_blocks(n_tasks, per_group, n_threads)
    n_tasks *= k_blocks
    n_chunks = max(1, min(n_threads, n_tasks))
    max_cols = tile_images * ((tile_rows - 1) * pitch + out_w)
    # input rows a tile reads: padded rows, or (stride > 1) rows split into column phases
    phase_len = -(-((out_w - 1) * stride[1] + dilation[1] * (kw - 1) + 1) // stride[1])
    rows = max((tile_rows + dilation[0] * (kh - 1)) * pitch,
               ((tile_rows - 1) * stride[0] + dilation[0] * (kh - 1) + 1) * stride[1] * phase_len)
    scratch = workspace.borrow((n_chunks, (depth + per_group) * max_cols + rows), x.dtype)
    has_bias = bias is not None
    threads.launch(
        _conv2d_forward_im2col, threads.parts_for(n_chunks, out, depth), x,
        weight.reshape(weight.shape[0], -1), transposed,
        bias if has_bias else np.zeros(0, x.dtype), has_bias,
        activations.floor(activation, x.dtype), out, kh, kw, stride[0], stride[1], top, left,
        pitch, phase_len, dilation[0], dilation[1], groups, tile_rows, tile_images, k_blocks,
        scratch, gemm if gemm is not None else blas.gemm_for(x.dtype), blas.SET_THREADS_LOCAL)


@kernel()
def _col2im_tile(col, first_col, ld, grad_in, n, c_first, group_channels, kh, kw, row_first,
                 row_last, out_w, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w):
    """The adjoint of :func:`_im2col_tile`: add every column entry back to the input
    position it was copied from (padding positions are dropped)."""
    height, width = grad_in.shape[2], grad_in.shape[3]
    for c in range(group_channels):
        plane = grad_in[n, c_first + c]
        for r in range(kh):
            for s in range(kw):
                q = (c * kh + r) * kw + s
                offset = s * dilation_w - pad_left
                lo, hi = valid_range(offset, stride_w, width, out_w)
                if lo >= hi:
                    continue
                for i in range(row_first, row_last):
                    row = i * stride_h - pad_top + r * dilation_h
                    if row < 0 or row >= height:
                        continue
                    src = col[q * ld + first_col + (i - row_first) * out_w + lo :]
                    dst = plane[row, lo * stride_w + offset :]
                    if stride_w == 1:
                        for j in range(hi - lo):
                            dst[j] += src[j]
                    else:
                        for j in range(hi - lo):
                            dst[j * stride_w] += src[j]


@kernel(parallel=True)
def _conv2d_grad_input_col2im(grad_out, weight2d, grad_in, kh, kw, stride_h, stride_w, pad_top,
                              pad_left, dilation_h, dilation_w, groups, tile_rows, scratch, gemm,
                              set_blas_threads, part, parts):
    """grad_in[n, group g] = col2im(weight2d[g]^T @ grad_out[n, g]), tile by tile.

    A task is one image and group, whose grad_in slice no other task touches,
    so the scatter-adds of overlapping windows need no synchronisation.
    """
    n_img, channels = grad_in.shape[0], grad_in.shape[1]
    out_channels, depth = weight2d.shape
    out_h, out_w = grad_out.shape[2], grad_out.shape[3]
    plane = out_h * out_w
    group_channels = channels // groups
    per_group = out_channels // groups
    n_tasks = n_img * groups
    n_chunks = scratch.shape[0]
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        saved_threads = set_blas_threads(1)
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            n = task // groups
            g = task % groups
            grad_in[n, g * group_channels : (g + 1) * group_channels] = 0
            for row_first in range(0, out_h, tile_rows):
                row_last = min(row_first + tile_rows, out_h)
                n_cols = (row_last - row_first) * out_w
                col = scratch[chunk, : depth * n_cols]
                gemm(blas.ROW_MAJOR, blas.TRANS, blas.NO_TRANS, depth, n_cols, per_group, 1.0,
                     blas.pointer(weight2d, g * per_group * depth), depth,
                     blas.pointer(grad_out, (n * out_channels + g * per_group) * plane
                                  + row_first * out_w), plane,
                     0.0, blas.pointer(col, 0), n_cols)
                _col2im_tile(col, 0, n_cols, grad_in, n, g * group_channels, group_channels, kh,
                             kw, row_first, row_last, out_w, stride_h, stride_w, pad_top,
                             pad_left, dilation_h, dilation_w)
        set_blas_threads(saved_threads)


@kernel()
def _zero_junk_columns(matrix, n_rows, ld, tile_rows, pitch, out_w):
    """Zero the junk columns of ``n_rows`` rows of ``ld`` columns laid out on ``pitch``:
    columns ``t * pitch + out_w .. (t + 1) * pitch`` after each of the ``tile_rows - 1``
    output rows that another row follows."""
    for q in range(n_rows):
        for t in range(tile_rows - 1):
            junk = matrix[q * ld + t * pitch + out_w : q * ld + (t + 1) * pitch]
            for j in range(pitch - out_w):
                junk[j] = 0


@kernel(parallel=True)
def _conv2d_grad_weight_im2col(x, grad_out, grad_weight2d, kh, kw, stride_h, stride_w, pad_top,
                               pad_left, pitch, dilation_h, dilation_w, groups, tile_rows, scratch,
                               partial, gathered, gemm, set_blas_threads, part, parts):
    """grad_weight2d[g] = sum_n grad_out[n, g] @ im2col(x[n, group g])^T.

    With ``gathered`` > 0 (an unpadded stride-1 1x1 layer of one group on small planes,
    C-contiguous), a chunk computes its share of ``grad_weight2d``'s columns (input
    channels) over all the images, ``gathered`` images per GEMM: their planes of
    ``grad_out`` and of its channels of ``x`` copied side by side in its scratch, so that
    the GEMM's reduction runs over those images' positions at once (one image's few
    positions per GEMM read and wrote the whole sum matrix per image); no partial sums.

    With stride 1 the columns are built on the padded row ``pitch`` as in the
    forward kernel, and the tile of grad_out is copied onto the same pitch. The
    junk columns are the GEMM's reduction dimension here, so every tile writes
    zeros into them in both operands (:func:`_zero_junk_columns`): a tile's
    layout depends on its height (the last tile of an image is shorter), so
    the buffers' junk columns hold the previous tile's values, and junk input
    columns hold real input values, whose Inf times a zero would be NaN. Each
    thread sums its tiles into its own ``partial[chunk]``; the partial sums are
    added serially at the end (race-free, and the same order every run).
    """
    n_img, channels, height, width = x.shape
    out_channels, depth = grad_weight2d.shape
    out_h, out_w = grad_out.shape[2], grad_out.shape[3]
    plane = out_h * out_w
    group_channels = channels // groups
    per_group = out_channels // groups
    n_tiles = (out_h + tile_rows - 1) // tile_rows
    n_tasks = n_img * groups * n_tiles
    n_chunks = scratch.shape[0]
    unit_stride = stride_h == 1 and stride_w == 1
    plain_gemm = (kh == 1 and kw == 1 and unit_stride and pad_top == 0 and pad_left == 0
                  and out_h == height and out_w == width)
    max_cols = (tile_rows - 1) * pitch + out_w
    if gathered > 0:
        x_flat, grad_flat = flat(x), flat(grad_out)
        n_batches = (n_img + gathered - 1) // gathered
        for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
            saved_threads = set_blas_threads(1)
            c_first, c_last = chunk * depth // n_chunks, (chunk + 1) * depth // n_chunks
            for batch in range(n_batches):
                n_first = batch * gathered
                n_last = min(n_img, n_first + gathered)
                total = (n_last - n_first) * plane
                a = scratch[chunk, : out_channels * total]
                b = scratch[chunk, out_channels * total : (out_channels + c_last - c_first) * total]
                for n in range(n_first, n_last):
                    at = (n - n_first) * plane
                    for k in range(out_channels):
                        copy_run(grad_flat, (n * out_channels + k) * plane, a, k * total + at,
                                 plane)
                    for c in range(c_first, c_last):
                        copy_run(x_flat, (n * channels + c) * plane, b,
                                 (c - c_first) * total + at, plane)
                gemm(blas.ROW_MAJOR, blas.NO_TRANS, blas.TRANS, out_channels, c_last - c_first,
                     total, 1.0, blas.pointer(a, 0), total, blas.pointer(b, 0), total,
                     1.0 if batch > 0 else 0.0, blas.pointer(grad_weight2d, c_first), depth)
            set_blas_threads(saved_threads)
        return
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        saved_threads = set_blas_threads(1)
        sums = partial[chunk]
        sums[:] = 0
        col = scratch[chunk, : depth * max_cols]
        pitched = scratch[chunk, depth * max_cols : (depth + per_group) * max_cols]
        rows = scratch[chunk, (depth + per_group) * max_cols :]
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            n = task // (groups * n_tiles)
            g = (task // n_tiles) % groups
            row_first = (task % n_tiles) * tile_rows
            row_last = min(row_first + tile_rows, out_h)
            n_cols = (row_last - row_first - 1) * pitch + out_w
            a_ptr = blas.pointer(grad_out, (n * out_channels + g * per_group) * plane
                                 + row_first * out_w)
            lda = plane
            if plain_gemm:
                b_ptr = blas.pointer(x, (n * channels + g * group_channels) * height * width
                                     + row_first * width)
                ldb = height * width
            elif unit_stride:
                _im2col_tile_unit_stride(x, n, g * group_channels, group_channels, kh, kw,
                                         row_first, row_last, out_w, pad_top, pad_left, pitch,
                                         dilation_h, dilation_w, rows, col, np.int64(0), n_cols)
                for k in range(per_group):
                    for i in range(row_first, row_last):
                        dst = pitched[k * n_cols + (i - row_first) * pitch :]
                        src = grad_out[n, g * per_group + k, i]
                        for j in range(out_w):
                            dst[j] = src[j]
                n_rows = row_last - row_first
                _zero_junk_columns(pitched, per_group, n_cols, n_rows, pitch, out_w)
                _zero_junk_columns(col, depth, n_cols, n_rows, pitch, out_w)
                a_ptr = blas.pointer(pitched, 0)
                lda = n_cols
                b_ptr = blas.pointer(col, 0)
                ldb = n_cols
            else:
                _im2col_tile(x, n, g * group_channels, group_channels, kh, kw, row_first,
                             row_last, out_w, stride_h, stride_w, pad_top, pad_left,
                             dilation_h, dilation_w, col, np.int64(0), n_cols)
                b_ptr = blas.pointer(col, 0)
                ldb = n_cols
            gemm(blas.ROW_MAJOR, blas.NO_TRANS, blas.TRANS, per_group, depth, n_cols, 1.0,
                 a_ptr, lda, b_ptr, ldb, 1.0, blas.pointer(sums, g * per_group * depth), depth)
        set_blas_threads(saved_threads)
    if parts == 1:  # else the caller adds them, once every part has ended
        _add_partials(partial, grad_weight2d)


@kernel(entry=True)
def _add_partials(partial, total):
    """total = the sum of ``partial``'s first axis, in order."""
    total[:] = 0
    for chunk in range(partial.shape[0]):
        total += partial[chunk]


@register("conv2d_grad_input", "cpu", "im2col")
def conv2d_grad_input_im2col(grad_out, weight, grad_in, stride, padding, dilation, groups, *,
                             gemm=None):
    """grad_in = conv_transpose2d(grad_out, weight): with stride 1 and a finite weight, the
    forward im2col kernel on flipped weights (see :mod:`.identities`; a 1x1 weight read
    transposed by the GEMM, not copied); otherwise GEMM +
    col2im. (That convolution multiplies every weight tap by the zero padding around
    grad_out, where the transposed convolution has no term: a NaN or Inf tap would put
    ``0 * Inf = NaN`` on the border.)"""
    kernel_size = weight.shape[2:]
    conv_pads = identities.grad_input_as_conv_padding(
        grad_in.shape[2:], grad_out.shape[2:], kernel_size, stride, padding, dilation)
    if conv_pads is not None and all_finite(weight):
        one_by_one = kernel_size == (1, 1) and weight.flags.c_contiguous
        conv2d_im2col(grad_out, weight if one_by_one else identities.transpose_flip(weight, groups),
                      None, grad_in, (1, 1), conv_pads, dilation, groups, gemm=gemm,
                      transposed=one_by_one)
        return
    n_img, channels = grad_in.shape[:2]
    out_channels, group_channels, kh, kw = weight.shape
    out_h, out_w = grad_out.shape[2:]
    depth = group_channels * kh * kw
    tile_rows, _ = tiling(depth, 0, n_img, out_h, out_w, grad_out.itemsize, 1, True)
    n_chunks = max(1, min(threads.count(), n_img * groups))
    scratch = workspace.borrow((n_chunks, depth * tile_rows * out_w), grad_out.dtype)
    threads.launch(
        _conv2d_grad_input_col2im, threads.parts_for(n_chunks, grad_in, out_channels * kh * kw),
        grad_out, weight.reshape(out_channels, depth),
        grad_in, kh, kw, stride[0], stride[1], padding[0][0], padding[1][0], dilation[0],
        dilation[1], groups, tile_rows, scratch,
        gemm if gemm is not None else blas.gemm_for(grad_out.dtype), blas.SET_THREADS_LOCAL)


@register("conv2d_grad_weight", "cpu", "im2col")
def conv2d_grad_weight_im2col(x, grad_out, grad_weight, stride, padding, dilation, groups, *,
                              gemm=None):
    """grad_weight = correlation of x with grad_out, as GEMMs on im2col tiles."""
    n_img, _, _, width = x.shape
    out_channels, group_channels, kh, kw = grad_weight.shape
    out_h, out_w = grad_out.shape[2:]
    depth = group_channels * kh * kw
    per_group = out_channels // groups
    (_, _), (left, right) = padding
    pitch = width + left + right if stride == (1, 1) else out_w
    plane = out_h * out_w
    gathered = _gathered_images(x, grad_out, kh, kw, stride, padding, groups)
    if gathered:
        # chunks of the input channels, each over every image, gathered images at a time
        n_chunks = max(1, min(threads.count(), depth // GATHER_MIN_CHANNELS))
        tile_rows = out_h
        scratch = workspace.borrow(
            (n_chunks, (out_channels + -(-depth // n_chunks)) * gathered * plane), x.dtype)
        partial = np.empty((n_chunks, 0, 0), x.dtype)
    else:
        tile_rows, _ = tiling(depth, per_group, n_img, out_h, pitch, x.itemsize, 1, True)
        n_tasks = n_img * groups * (-(-out_h // tile_rows))
        n_chunks = max(1, min(threads.count(), n_tasks))
        max_cols = (tile_rows - 1) * pitch + out_w
        rows = (tile_rows + dilation[0] * (kh - 1)) * pitch
        scratch = workspace.borrow((n_chunks, (depth + per_group) * max_cols + rows), x.dtype)
        partial = np.empty((n_chunks, out_channels, depth), x.dtype)
    grad_weight2d = grad_weight.reshape(out_channels, depth)
    results = threads.launch(
        _conv2d_grad_weight_im2col,
        threads.parts_for(n_chunks, grad_weight, n_img * out_h * out_w), x, grad_out,
        grad_weight2d, kh, kw, stride[0], stride[1], padding[0][0], padding[1][0], pitch,
        dilation[0], dilation[1], groups, tile_rows, scratch, partial, gathered,
        gemm if gemm is not None else blas.gemm_for(x.dtype), blas.SET_THREADS_LOCAL)
    if len(results) > 1 and not gathered:  # each part left its partial sums
        _add_partials(partial, grad_weight2d)


#: Fewest input channels in a chunk of the gathered 1x1 weight gradient.
GATHER_MIN_CHANNELS = 16
#: The 1x1 weight gradient gathers images where a plane has at most this many positions
#: and the sums (filters x channels) outgrow one core's L2, so that each image's GEMM
#: reads and writes them from the L3. Measured on a Zen 2 (512 KiB L2), float32, two
#: threads, per image / gathered (ms, alternating processes, glibc malloc without mmap;
#: the VM's speed moved between the two hours): N8 C2048 -> 512 7x7 7.49-7.61 / 6.46-7.05,
#: later 7.01-7.05 / 5.92-6.07; C512 -> 2048 7x7 7.47-8.33 / 7.30-7.43, 7.65-7.94 /
#: 6.60-7.10; N4 C960 -> 320 7x7 1.22-1.32 / 1.05-1.06, 0.95-0.96 / 0.88-0.89; C320 ->
#: 1280 7x7 1.66-1.73 / 1.54-1.67, 1.36-1.38 / 1.24-1.28; N32 C512 -> 512 4x4 2.73-2.82 /
#: 2.64-2.65, 2.55-2.70 / 2.27. Where the sums fit in the L2 or the planes are
#: larger, the copies cost more than the GEMMs gain: N8 C256 -> 64 14x14 0.72-0.75 /
#: 0.83-0.86; C1024 -> 256 14x14 5.40-5.41 / 6.00-6.19; N32 C64 -> 128 8x8 0.36 / 0.45.
GATHER_MAX_PLANE = 64


def _gathered_images(x, grad_out, kh: int, kw: int, stride, padding, groups: int) -> int:
    """Images per GEMM of the gathered 1x1 weight gradient (see
    :func:`_conv2d_grad_weight_im2col`), 0 where it does not apply: an unpadded stride-1
    1x1 layer of one group, both arrays C-contiguous, planes of at most
    :data:`GATHER_MAX_PLANE` positions and sums larger than one core's L2 (as many
    images as make ``IM2COL_MIN_COLUMNS`` columns; one image too: the per-image path
    would run its one GEMM on one thread, 1.5 against 0.82 ms on N1 C512 -> 2048 7x7 on a
    Zen 4's two threads)."""
    plane = grad_out.shape[2] * grad_out.shape[3]
    if ((kh, kw, stride, padding, groups) != (1, 1, (1, 1), ((0, 0), (0, 0)), 1)
            or not gathers(plane, grad_out.shape[1] * x.shape[1], x.itemsize)
            or not (x.flags.c_contiguous and grad_out.flags.c_contiguous)):
        return 0
    return min(x.shape[0], -(-config.IM2COL_MIN_COLUMNS // plane))


def gathers(plane: int, sums: int, itemsize: int) -> bool:
    """Whether an unpadded stride-1 1x1 weight gradient of one group with planes of
    ``plane`` positions and ``sums`` (filters x channels) values of ``itemsize`` bytes
    gathers its images (:func:`_gathered_images`), a batch of one included (its channels
    then split over the threads, as every batch's are).

    >>> gathers(7 * 7, 2048 * 512, 4), gathers(14 * 14, 1024 * 256, 4)
    (True, False)
    """
    return plane <= GATHER_MAX_PLANE and sums * itemsize > L2_BYTES
