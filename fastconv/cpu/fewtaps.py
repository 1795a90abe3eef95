"""The weight gradient of layers with few taps per filter (a first layer's 3 channels x
3x3: 27), as dot products over the positions.

``grad_weight[k, t] = sum over images and positions p of grad_out[n, k, p] * col[t, p]``,
where ``col[t, p]`` is input tap ``t = (c, r, s)`` of output position ``p`` (zero in the
padding). The blocked weight gradient (:mod:`.blocked`) broadcasts input values against
vectors of filters, which needs grad_output laid position-major: a transpose of every
value of it, for only ``2 * taps`` flops per value here (54 on a 3x3 first layer), so that
the transposes cost more than the sums. Here both operands are read as rows of positions,
as they lie: a task copies the input rows of a band of output rows of one image,
zero-padded, at a column stride dealt into their column phases (a few KB per row for few
channels), so that tap ``t`` of an output row is a run of that copy at a fixed offset
from the row's (an unpadded 1x1 layer at stride 1 reads x itself, the band's positions
one run per channel), and :func:`_dots` keeps 4 filters x 6 taps of sums in vectors over
the band's positions (each step: 4 vectors of grad_output rows, 6 of tap runs, 24
multiply-adds), adding them into the task's sums in memory once per band; the lanes are
added up at the end. The threads take bands of images in turn and their sums are added
in a fixed order. (Until 2026-12-07 a task built im2col's columns of the band, ``col[t,
p]`` itself: a copy of every tap of every position, 30 % of MobileNetV2's first layer's
time.)

Padding is multiplied as zeros: where grad_output holds Inf or NaN, ``0 * Inf`` can
give a NaN the definition does not have, so a result that is not all finite is computed
again by the exact loops (:func:`conv2d_grad_weight_few_taps` says so).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .. import config
from . import simd, strips, threads, workspace
from ._jit import kernel
from .blocked import L2_BYTES

#: Filters and taps whose sums one step keeps in vectors (4 x 6 = 24 of them; the
#: kernels below are written for these).
DOT_FILTERS = 4
DOT_TAPS = 6
#: Output positions a task's band aims at: its columns (taps x positions) and
#: grad_output's rows stay in the L2 while every block of filters and taps goes over them.
BAND_POSITIONS = 1024


@kernel(inline=True)
def _times_taps(y, x, a):
    """``a[u] + y * x[u]`` for the 6 taps ``u``: one filter's vector against 6 taps' (tuples
    of vectors, the sums kept in registers)."""
    return (simd.fma(y, x[0], a[0]), simd.fma(y, x[1], a[1]), simd.fma(y, x[2], a[2]),
            simd.fma(y, x[3], a[3]), simd.fma(y, x[4], a[4]), simd.fma(y, x[5], a[5]))


#: The empty ``x_flat`` of :func:`_few_taps_grad_weight` (not in place), per dtype.
_NO_ROWS = {np.dtype(np.float32): np.zeros(0, np.float32),
            np.dtype(np.float64): np.zeros(0, np.float64)}


@kernel(inline=True)
def _dots(grad, rows, src, taps_at, t0, taps, n_rows, out_w, pitch, sums, at):
    """``sums[at + v * lanes:]`` += the lane sums, over the band's ``n_rows`` output rows
    of ``out_w`` positions, of 4 filters x 6 taps: filter ``f``'s gradient at ``grad[rows[f]
    + i * out_w + j]`` (a filter past the last reuses filter 0's row) times tap ``t0 + u``'s
    input at ``src[taps_at[t0 + u] + i * pitch + j]`` (a tap at or past ``taps`` reuses
    tap ``t0``) for output row ``i`` and column ``j``. Sum ``f * 6 + u`` is vector ``v``."""
    c0 = taps_at[t0]
    c1 = taps_at[t0 + 1] if t0 + 1 < taps else c0
    c2 = taps_at[t0 + 2] if t0 + 2 < taps else c0
    c3 = taps_at[t0 + 3] if t0 + 3 < taps else c0
    c4 = taps_at[t0 + 4] if t0 + 4 < taps else c0
    c5 = taps_at[t0 + 5] if t0 + 5 < taps else c0
    zero = simd.zeros(sums)
    f0 = f1 = f2 = f3 = (zero, zero, zero, zero, zero, zero)  # each filter's 6 sums
    lanes = simd.lanes(sums)
    for i in range(n_rows):
        g0, g1, g2, g3 = rows[0] + i * out_w, rows[1] + i * out_w, rows[2] + i * out_w, (
            rows[3] + i * out_w)
        row = i * pitch
        for p in range(0, out_w, lanes):
            m = out_w - p  # the row's last step's masked loads read its m positions
            x = (simd.load_first(src, c0 + row + p, m), simd.load_first(src, c1 + row + p, m),
                 simd.load_first(src, c2 + row + p, m), simd.load_first(src, c3 + row + p, m),
                 simd.load_first(src, c4 + row + p, m), simd.load_first(src, c5 + row + p, m))
            f0 = _times_taps(simd.load_first(grad, g0 + p, m), x, f0)
            f1 = _times_taps(simd.load_first(grad, g1 + p, m), x, f1)
            f2 = _times_taps(simd.load_first(grad, g2 + p, m), x, f2)
            f3 = _times_taps(simd.load_first(grad, g3 + p, m), x, f3)
    for v, acc in enumerate((*f0, *f1, *f2, *f3)):
        i = at + v * lanes
        simd.store(sums, i, simd.add(simd.load(sums, i), acc))


@kernel(parallel=True)
def _few_taps_grad_weight(x, grad_out, sums, kh, kw, stride_h, stride_w, pad_top, pad_left,
                          dilation_h, dilation_w, band_rows, phase_len, x_flat, scratch,
                          part, parts):
    """Each chunk's ``sums[chunk]`` (blocks of 4 filters x 6 taps of vectors, zeroed here)
    over its bands: a band is ``band_rows`` output rows of one image, the chunks take
    the ``N * bands`` bands in turn. A band's input rows (every channel's) are copied
    zero-padded into the chunk's ``scratch``, at a column stride dealt into their column
    phases (:func:`.strips.deal_phases`), so that every tap of an output row is a
    contiguous run of it, read in place by :func:`_dots`. One kernel for every stride:
    compiled for stride 1 apart, as :mod:`.blocked`'s are, it compiled :func:`_dots`
    twice (3.8-4.2 s against 3.1-3.2 s with an empty cache). ``x_flat``: ``x`` itself,
    flat, for an unpadded 1x1 layer at stride 1, whose taps are its channels' planes,
    each band one run of them read where they are (else empty)."""
    n_img, channels, height = x.shape[0], x.shape[1], x.shape[2]
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
    source = strips.flat(x)
    row_len = stride_w * phase_len
    in_rows = (band_rows - 1) * stride_h + dilation_h * (kh - 1) + 1  # a band's input rows
    channel_len = in_rows * row_len
    rows = np.empty(4, np.int64)
    taps_at = np.empty(taps, np.int64)  # where each tap of a band's first position is
    in_place = x_flat.size > 0
    here = np.empty(taps, np.int64)  # (in place: where each tap's run is in x)
    x_plane = height * x.shape[3]
    for t in range(taps):
        c, r, s = t // (kh * kw), t // kw % kh, t % kw
        taps_at[t] = (c * channel_len + r * dilation_h * row_len
                      + (s * dilation_w) % stride_w * phase_len + (s * dilation_w) // stride_w)
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        mine = sums[chunk]
        mine[:] = 0
        dealt = scratch[chunk, : channels * channel_len]
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            n = task // n_bands
            row_first = (task % n_bands) * band_rows
            n_rows = min(band_rows, out_h - row_first)
            first = row_first * stride_h - pad_top  # the band's first input row
            if in_place:  # the band's rows of every channel: one run each, in x
                for t in range(taps):
                    here[t] = (n * channels + t) * x_plane + row_first * out_w
            else:
                inside = max(0, min(height, first + in_rows) - max(0, first))
                dealt[:] = 0
                for c in range(channels):  # (at stride 1 the rows copied)
                    strips.deal_phases(source, x, n, c, max(0, first), inside, 1, dealt,
                                       c * channel_len + max(0, -first) * row_len, row_len,
                                       phase_len, stride_w, pad_left)
            # (in place: the band's positions as one row; one call of _dots, whose code
            # is inlined at each call)
            src, at, n_runs, run, pitch = ((x_flat, here, 1, n_rows * out_w, 0) if in_place
                                           else (dealt, taps_at, n_rows, out_w,
                                                 stride_h * row_len))
            for kb in range(k_blocks):
                for f in range(4):
                    k = kb * 4 + f if kb * 4 + f < out_channels else 0
                    rows[f] = (n * out_channels + k) * plane + row_first * out_w
                for tb in range(t_blocks):
                    _dots(grad, rows, src, at, tb * 6, taps, n_runs, run, pitch, mine,
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


def reason(grad_out_shape, weight_shape, groups: int, itemsize: int) -> str | None:
    """Why ``direct`` computes this weight gradient here rather than on the blocked
    kernel, or None where it does not: one group, at least ``AUTO_FEW_TAPS_MIN_WORK``
    multiply-adds (its fixed cost is larger), and at most ``AUTO_FEW_TAPS_ANY_SIZE_MAX``
    taps per filter, or up to ``AUTO_FEW_TAPS_MAX`` where the blocked kernel is slow:
    fewer filters than a vector has lanes (most of its vectors of filters would be
    padding) or an image's grad_output larger than one core's L2 (its transposes then go
    to memory). Measured: :data:`fastconv.config.AUTO_FEW_TAPS_MAX`.

    >>> reason((32, 16, 32, 32), (16, 3, 3, 3), 1, 4) is not None
    True
    >>> reason((32, 64, 32, 32), (64, 32, 1, 1), 1, 4) is None  # 32 taps, in the L2
    True
    """
    out_channels, channels, kh, kw = weight_shape
    lanes = simd.WIDTH_BYTES // itemsize
    taps = channels * kh * kw
    outputs = out_channels * grad_out_shape[2] * grad_out_shape[3]
    if (groups != 1 or taps > config.AUTO_FEW_TAPS_MAX
            or grad_out_shape[0] * outputs * taps < config.AUTO_FEW_TAPS_MIN_WORK):
        return None
    start = f"{taps} <= AUTO_FEW_TAPS_"
    if taps <= config.AUTO_FEW_TAPS_ANY_SIZE_MAX:
        why = f"ANY_SIZE_MAX = {config.AUTO_FEW_TAPS_ANY_SIZE_MAX} taps per filter"
    elif out_channels < lanes:
        why = (f"MAX = {config.AUTO_FEW_TAPS_MAX} taps per filter with {out_channels} "
               "filters, fewer than a vector's lanes")
    elif outputs * itemsize > L2_BYTES:
        why = (f"MAX = {config.AUTO_FEW_TAPS_MAX} taps per filter with an image's "
               "grad_output larger than one core's L2")
    else:
        return None
    return (start + why + ": dot products of grad_output's rows with the input's tap rows "
            "(no transposes of grad_output)")


def pays(grad_out_shape, weight_shape, groups: int, itemsize: int) -> bool:
    """Whether ``direct`` computes this weight gradient here (:func:`reason`).

    >>> pays((2, 64, 224, 224), (64, 3, 3, 3), 1, 4), pays((2, 64, 8, 8), (64, 3, 3, 3), 1, 4)
    (True, False)
    """
    return reason(grad_out_shape, weight_shape, groups, itemsize) is not None


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
    # a band's input rows, zero-padded, at a column stride dealt into their column phases
    # (each phase_len long: every padded column of a row, as strips.deal_phases writes)
    phase_len = -(-(x.shape[3] + padding[1][0] + padding[1][1]) // stride[1])
    in_rows = (band_rows - 1) * stride[0] + dilation[0] * (kh - 1) + 1
    # an unpadded 1x1 layer at stride 1 reads x's rows where they are: no copies
    in_place = (kh == kw == 1 and tuple(stride) == (1, 1) and x.flags.c_contiguous
                and all(pad == 0 for pair in padding for pad in pair))
    scratch = workspace.borrow(
        (n_chunks, 0 if in_place else channels * in_rows * stride[1] * phase_len), x.dtype)
    threads.launch(_few_taps_grad_weight,
                   threads.parts_for(n_chunks, grad_weight, n_img * out_h * out_w),
                   x, np.ascontiguousarray(grad_out), sums, kh, kw, stride[0], stride[1],
                   padding[0][0], padding[1][0],
                   dilation[0], dilation[1], band_rows, phase_len,
                   x.reshape(-1) if in_place else _NO_ROWS[x.dtype], scratch)
    flat = grad_weight.reshape(out_channels, taps)
    _add_lanes(sums, flat)
    return bool(np.isfinite(flat).all())
