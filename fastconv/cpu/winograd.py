"""Winograd F(4x4, 3x3): 3x3, stride-1 convolution and its gradients with 2.25
instead of 9 multiplies per output and input channel (Lavin and Gray, 2016), on
the interpolation points 0, 1, -1, 1/2, -2 (see :data:`B_T`).

For each 4x4 output tile, the 6x6 input patch ``d`` that covers it and each
filter ``g``: ``y = A^T [(G g G^T) * (B^T d B)] A``, with ``*`` element-wise.
Summed over input channels, each of the 36 element positions ``e`` becomes
one matrix product ``M[e] = U[e] @ V[e]`` of the transformed filters
``U[e] (K x C)`` by the transformed patches ``V[e] (C x tiles)``. ``U`` is packed
in blocks of 8 filters for the register-tiled micro-kernels
(:func:`.microkernels.weights_x_positions`: 8 filters x 48 tiles of sums in
registers, each ``U`` value broadcast against vectors of tiles) and kept for the
next call while the weight holds the same bytes (:mod:`.prepared`).

One parallel task takes a block of tile rows: it transforms their patches
into ``V`` in its own buffer, computes the 36 products, and transforms them
back into the output, so the whole working set of a block stays in cache
(measured 2x faster here than three passes over whole tensors;
benchmarks/RESULTS.md, "Measurements behind the design", 3). The weight
gradient's products (``Z[e] @ V[e]^T``) are OpenBLAS GEMMs on one BLAS thread.
Transforms run over all tiles of the block at once, on explicit SIMD vectors
(:mod:`.simd`): each input row is copied into a zero-bordered row and dealt
into its column phases (``4 * j + u``: two rounds of :func:`.simd.deinterleave`),
so tile ``j`` is element ``j`` of phase ``u``; the output rows are put back
together by two rounds of :func:`.simd.weave`.

The transforms add rounding: on a 64-channel layer, float32 results differ from
the exact sum by 9e-7 of the output's rms (rms) and 1.2e-5 at most, against
3e-7 and 3e-6 for direct summation (``benchmarks/accuracy.py``).

Non-finite values: the transforms mix the 36 values of a patch, so one NaN or
Inf in the input would turn whole 4x4 output tiles into NaN where the exact
sum has NaN or +-Inf at the outputs whose 3x3 windows hold it, and a
non-finite weight would spread over every filter transform. The results keep
the exact sum's pattern (which NaN, which +Inf, which -Inf) as follows:

- a NaN or Inf in the weight or the bias (checked first, a pass over the
  weight): the whole call runs :mod:`.im2col`;
- in the input: every output that the exact sum makes non-finite is non-finite
  in the Winograd result too (each patch value reaches each of its outputs
  through a nonzero product of B^T, U and A^T coefficients, and the GEMM
  multiplies zeros too), so the kernel notes each tile row whose stored outputs
  are not all finite (a sum per tile row and filter over values still in cache:
  0-3% of the call on dense 3x3 layers, within the timing noise) and the host
  recomputes those tile rows by im2col: a NaN costs a few tile rows, a finite
  input nothing (the same check catches a transform that overflows where the
  exact sum does not);
- grad_weight: the same holds for each of its taps, so when the Winograd
  grad_weight is not all finite the call is recomputed by im2col.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange
from numba.extending import overload

from .. import activations, config
from ..dispatch import register
from . import blas, identities, im2col, prepared, simd, strips, threads, workspace
from ._jit import inlined_options, kernel
from .finite import all_finite
from .microkernels import BLOCK_K, weights_x_run

#: B^T (6x6), G (6x3) and A^T (4x6) of F(4x4, 3x3) on the interpolation points
#: 0, 1, -1, 1/2, -2 and infinity. The usual points (0, +-1, +-2, infinity; Lavin and
#: Gray) round more: B^T holds 4s and 5s and A^T an 8 that scale the rounding of every
#: product. Swapping 2 for 1/2 (Barabasz et al., "Error analysis and improving the
#: accuracy of Winograd convolution for deep neural networks", 2020) measured 1.6x
#: less rms and 2.4x less largest float32 error on a 64-channel layer here
#: (``benchmarks/RESULTS.md``, "float32 accuracy"), at the same cost per transform.
B_T = np.array([
    [1, -3 / 2, -2, 3 / 2, 1, 0],
    [0, -1, 1 / 2, 5 / 2, 1, 0],
    [0, 1, -5 / 2, 1 / 2, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 1 / 2, -1, -1 / 2, 1, 0],
    [0, 1, -3 / 2, -2, 3 / 2, 1],
], dtype=np.float64)
G = np.array([
    [1, 0, 0],
    [1 / 3, 1 / 3, 1 / 3],
    [-1 / 3, 1 / 3, -1 / 3],
    [-16 / 15, -8 / 15, -4 / 15],
    [1 / 15, -2 / 15, 4 / 15],
    [0, 0, 1],
], dtype=np.float64)
A_T = np.array([
    [1, 1, 1, 1, 1, 0],
    [0, 1, -1, 1 / 2, -2, 0],
    [0, 1, 1, 1 / 4, 4, 0],
    [0, 1, -1, 1 / 8, -8, 1],
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
def _filter_transform(taps, g, transformed, part, parts):
    """transformed[a * 6 + b, k, :] = sum_{r, s} G[a, r] G[b, s] taps[k, r * R + s, :]:
    ``G w G^T`` for every filter, vectorised over the input channels (``taps``
    is the weight laid out as ``(K, R * R, C/groups)``, ``g`` is G, ``(6, R)``: 3x3
    here, 5x5 for :mod:`.winograd_5x5`). A task takes a block of
    filters and writes one of the 36 planes of ``transformed`` at a time, so
    that it streams into one place, not 36 (their 4 KiB-aligned strides would
    collide in the cache)."""
    out_channels, group_channels = taps.shape[0], taps.shape[2]
    size = g.shape[1]
    block = 8
    n_blocks = (out_channels + block - 1) // block
    for first in prange(part * n_blocks // parts, (part + 1) * n_blocks // parts):
        for a in range(ALPHA):
            for b in range(ALPHA):
                for k in range(first * block, min((first + 1) * block, out_channels)):
                    dst = transformed[a * ALPHA + b, k]
                    for c in range(group_channels):
                        dst[c] = 0
                    for r in range(size):
                        for s in range(size):
                            coefficient = g[a, r] * g[b, s]
                            if coefficient != 0:
                                src = taps[k, r * size + s]
                                for c in range(group_channels):
                                    dst[c] += coefficient * src[c]


@kernel()
def _b_transform(src, at, step, dst, dst_at, dst_step, n, b_t):
    """``o = B^T i`` on six vectors of length ``n``, ``i_r = src[at + r * step :]`` and
    ``o_r = dst[dst_at + r * dst_step :]``: :func:`b_transform_pairs` with ``odd = step``
    and ``pair = 2 * step``."""
    b_transform_pairs(src, at, step, 2 * step, dst, dst_at, dst_step, n, b_t)


@kernel()
def b_transform_pairs(src, at, odd, pair, dst, dst_at, dst_step, n, b_t):
    """``o = B^T i`` on six vectors of length ``n``, ``i_r = src[at + (r % 2) * odd + (r //
    2) * pair :]`` (rows in two interleaved planes ``odd`` apart, as
    :mod:`.winograd_5x5` keeps a row's even and odd input rows) and ``o_r = dst[dst_at + r
    * dst_step :]`` (offsets, not views: a view per vector cost a
    reference count's atomic increment and decrement, on a counter both threads share),
    one pass: explicit SIMD vectors
    (:mod:`.simd`; LLVM does not vectorise the plain loop over twelve slices of one
    buffer, which would need more run-time overlap checks than it makes), then the last
    ``n % lanes`` values one by one. The coefficients are read from ``b_t`` so that
    they have the data's dtype (a float literal would promote float32 arithmetic to
    float64)."""
    half, one_half, two, five_halves = b_t[1, 2], b_t[0, 3], b_t[3, 3], b_t[1, 3]
    lanes = simd.lanes(src)
    v_half, v_one_half = simd.splat(half, src), simd.splat(one_half, src)
    v_two, v_five_halves = simd.splat(two, src), simd.splat(five_halves, src)
    v_minus_half, v_minus_two = simd.splat(-half, src), simd.splat(-two, src)
    v_minus_five_halves = simd.splat(-five_halves, src)
    whole = n // lanes * lanes
    for t in range(0, whole, lanes):
        i, o = at + t, dst_at + t
        a0, a1, a2 = simd.load(src, i), simd.load(src, i + odd), simd.load(src, i + pair)
        a3, a4 = simd.load(src, i + odd + pair), simd.load(src, i + 2 * pair)
        a5 = simd.load(src, i + odd + 2 * pair)
        d31, d42 = simd.sub(a3, a1), simd.sub(a4, a2)
        simd.store(dst, o, simd.fma(v_one_half, d31,
                                    simd.fma(v_minus_two, a2, simd.add(a0, a4))))
        simd.store(dst, o + dst_step, simd.fma(v_five_halves, a3,
                                               simd.fma(v_half, a2, simd.sub(a4, a1))))
        simd.store(dst, o + 2 * dst_step, simd.fma(
            v_half, a3, simd.fma(v_minus_five_halves, a2, simd.add(a4, a1))))
        simd.store(dst, o + 3 * dst_step, simd.fma(v_two, d31, d42))
        simd.store(dst, o + 4 * dst_step, simd.fma(v_minus_half, d31, d42))
        simd.store(dst, o + 5 * dst_step, simd.fma(
            v_one_half, d42, simd.fma(v_minus_two, a3, simd.add(a5, a1))))
    for t in range(whole, n):
        i, o = at + t, dst_at + t
        a0, a1, a2 = src[i], src[i + odd], src[i + pair]
        a3, a4, a5 = src[i + odd + pair], src[i + 2 * pair], src[i + odd + 2 * pair]
        d31, d42 = a3 - a1, a4 - a2
        dst[o] = a0 + a4 - two * a2 + one_half * d31
        dst[o + dst_step] = a4 - a1 + half * a2 + five_halves * a3
        dst[o + 2 * dst_step] = a4 + a1 - five_halves * a2 + half * a3
        dst[o + 3 * dst_step] = d42 + two * d31
        dst[o + 4 * dst_step] = d42 - half * d31
        dst[o + 5 * dst_step] = a5 + a1 - two * a3 + one_half * d42


@kernel()
def _a_coefficients(a_t):
    """A^T's coefficients besides 0 and 1, in the data's dtype: 1/2, 1/4, 1/8 (the point
    1/2's powers) and 2, 4, 8 (the point -2's, sign apart)."""
    return a_t[1, 3], a_t[2, 3], a_t[3, 3], -a_t[1, 4], a_t[2, 4], -a_t[3, 4]


@kernel()
def _a_vectors(a_t, like):
    """:func:`_a_coefficients` as vectors of ``like``'s dtype: 1/2, 1/4, 1/8, -2, 4, -8."""
    half, quarter, eighth, two, four, eight = _a_coefficients(a_t)
    return (simd.splat(half, like), simd.splat(quarter, like), simd.splat(eighth, like),
            simd.splat(-two, like), simd.splat(four, like), simd.splat(-eight, like))


@kernel()
def _a_transform(src, at, step, dst, dst_at, dst_step, n, a_t, offset):
    """``o = A^T i + offset`` on six vectors of length ``n`` (``i_r = src[at + r * step :]``,
    ``o_r = dst[dst_at + r * dst_step :]``), one pass (SIMD vectors, then the last values
    one by one, as :func:`_b_transform`)."""
    half, quarter, eighth, two, four, eight = _a_coefficients(a_t)
    v_half, v_quarter, v_eighth, v_minus_two, v_four, v_minus_eight = _a_vectors(a_t, src)
    lanes = simd.lanes(src)
    v_offset = simd.splat(offset, src)
    whole = n // lanes * lanes
    for t in range(0, whole, lanes):
        i, o = at + t, dst_at + t
        a0, a1, a2 = simd.load(src, i), simd.load(src, i + step), simd.load(src, i + 2 * step)
        a3, a4 = simd.load(src, i + 3 * step), simd.load(src, i + 4 * step)
        a5 = simd.load(src, i + 5 * step)
        plus12, minus12 = simd.add(a1, a2), simd.sub(a1, a2)
        simd.store(dst, o, simd.add(simd.add(a0, plus12),
                                    simd.add(simd.add(a3, a4), v_offset)))
        simd.store(dst, o + dst_step, simd.fma(v_minus_two, a4,
                                               simd.fma(v_half, a3, simd.add(minus12, v_offset))))
        simd.store(dst, o + 2 * dst_step, simd.fma(
            v_four, a4, simd.fma(v_quarter, a3, simd.add(plus12, v_offset))))
        simd.store(dst, o + 3 * dst_step, simd.fma(v_minus_eight, a4, simd.fma(
            v_eighth, a3, simd.add(simd.add(minus12, a5), v_offset))))
    for t in range(whole, n):
        i, o = at + t, dst_at + t
        a1, a2, a3, a4 = src[i + step], src[i + 2 * step], src[i + 3 * step], src[i + 4 * step]
        plus12, minus12 = a1 + a2, a1 - a2
        dst[o] = src[i] + plus12 + a3 + a4 + offset
        dst[o + dst_step] = minus12 + half * a3 - two * a4 + offset
        dst[o + 2 * dst_step] = plus12 + quarter * a3 + four * a4 + offset
        dst[o + 3 * dst_step] = minus12 + eighth * a3 - eight * a4 + src[i + 5 * step] + offset


@kernel()
def _deal_tiles(padded, at, count, available, out, first, step, phases):
    """``out[first + u * step + j] = padded[at + 4 * j + u]`` for ``j < count`` and ``u <
    phases`` (2 or 4): the column phases of tiles ``4 j .. 4 j + 3`` of a row, ``4 *
    lanes`` values at a time by two rounds of :func:`.simd.deinterleave` (masked loads,
    stores of the first lanes: ``available`` values of ``padded`` from ``at`` may be
    read)."""
    lanes = simd.lanes(padded)
    for j in range(0, count, lanes):
        base, left, n = at + TILE * j, available - TILE * j, min(lanes, count - j)
        v0 = simd.load_first(padded, base, left)
        v1 = simd.load_first(padded, base + lanes, left - lanes)
        v2 = simd.load_first(padded, base + 2 * lanes, left - 2 * lanes)
        v3 = simd.load_first(padded, base + 3 * lanes, left - 3 * lanes)
        even0, even1 = simd.deinterleave(v0, v1, False), simd.deinterleave(v2, v3, False)
        odd0, odd1 = simd.deinterleave(v0, v1, True), simd.deinterleave(v2, v3, True)
        o = first + j
        simd.store_first(out, o, simd.deinterleave(even0, even1, False), n)
        simd.store_first(out, o + step, simd.deinterleave(odd0, odd1, False), n)
        if phases == 4:
            simd.store_first(out, o + 2 * step, simd.deinterleave(even0, even1, True), n)
            simd.store_first(out, o + 3 * step, simd.deinterleave(odd0, odd1, True), n)


def store_tiles(y, at, step, count, target, out, n, k, row, floor, tile):
    """``out[n, k, row, tile * j + b] = max(floor, y[at + b * step + j])`` for ``j < count``
    (whole tiles; ``b < tile``, 4 or 2: :mod:`.winograd_5x5`'s) and the sum of those
    values before the floor (NaN or +-Inf where any is). ``y``: 1-D contiguous;
    ``target``: :func:`.strips.flat` (out). On :mod:`.simd` vectors (rounds of
    :func:`.simd.weave`, ``tile * lanes`` values at a time) where ``out`` is
    C-contiguous; else value by value."""


def _store_tiles_vectors(y, at, step, count, target, out, n, k, row, floor, tile):
    lanes = simd.lanes(y)
    low = simd.splat(floor, y)
    sums = simd.zeros(y)
    dst = strips.row_start(out, n, k, row)
    for j in range(0, count, lanes):
        m = min(lanes, count - j)
        left, at_j = tile * m, dst + tile * j
        v0, v1 = simd.load_first(y, at + j, m), simd.load_first(y, at + step + j, m)
        if tile == 2:
            sums = simd.add(sums, simd.add(v0, v1))
            v0, v1 = simd.maximum(v0, low), simd.maximum(v1, low)
            simd.store_first(target, at_j, simd.weave(v0, v1, False), left)
            simd.store_first(target, at_j + lanes, simd.weave(v0, v1, True), left - lanes)
            continue
        v2, v3 = simd.load_first(y, at + 2 * step + j, m), simd.load_first(y, at + 3 * step + j, m)
        sums = simd.add(sums, simd.add(simd.add(v0, v1), simd.add(v2, v3)))
        v0, v1 = simd.maximum(v0, low), simd.maximum(v1, low)
        v2, v3 = simd.maximum(v2, low), simd.maximum(v3, low)
        even_lo, even_hi = simd.weave(v0, v2, False), simd.weave(v0, v2, True)
        odd_lo, odd_hi = simd.weave(v1, v3, False), simd.weave(v1, v3, True)
        simd.store_first(target, at_j, simd.weave(even_lo, odd_lo, False), left)
        simd.store_first(target, at_j + lanes, simd.weave(even_lo, odd_lo, True), left - lanes)
        simd.store_first(target, at_j + 2 * lanes, simd.weave(even_hi, odd_hi, False),
                         left - 2 * lanes)
        simd.store_first(target, at_j + 3 * lanes, simd.weave(even_hi, odd_hi, True),
                         left - 3 * lanes)
    return simd.total(sums)


def _store_tiles_loop(y, at, step, count, target, out, n, k, row, floor, tile):
    total = 0.0  # only its finiteness counts
    for j in range(count):
        for b in range(tile):
            value = y[at + b * step + j]
            out[n, k, row, tile * j + b] = floor if value < floor else value
            total += value
    return total


@overload(store_tiles, jit_options=inlined_options())
def _store_tiles(y, at, step, count, target, out, n, k, row, floor, tile):
    if simd.vectors_fit(y, target):
        return _store_tiles_vectors
    return _store_tiles_loop


@kernel(counted=False)
def store_tile_row(y, at, step, target, out, n, k, top, floor, tile):
    """``out[n, k, top + a, tile * j + b] = max(floor, y[at + (tile * a + b) * step + j])``
    for the tiles of one tile row (the rows and columns inside ``out``: whole tiles by
    :func:`store_tiles`, a last partial tile value by value); returns the sum of the
    stored values before the floor, NaN or +-Inf where any is (in any order of
    addition). Without reference counts: called per tile row and filter, its three
    arrays' atomic increments and decrements would stay in the loop."""
    out_h, out_w = out.shape[2], out.shape[3]
    full = out_w // tile
    total = 0.0  # only its finiteness counts
    for a in range(min(tile, out_h - top)):
        row, at_a = top + a, at + a * tile * step
        total += store_tiles(y, at_a, step, full, target, out, n, k, row, floor, tile)
        for b in range(out_w - tile * full):
            value = y[at_a + b * step + full]
            out[n, k, row, tile * full + b] = floor if value < floor else value
            total += value
    return total


@kernel(counted=False)
def store_block(y, step, target, out, k, q_first, q_last, tiles_h, tiles_w, floor, tile,
                nonfinite):
    """Filter ``k``'s outputs of the block of tile rows ``q_first <= q < q_last`` (tile row
    ``q`` of the block at ``(q - q_first) * tiles_w`` in ``y``, its values ``step`` apart),
    each by :func:`store_tile_row`; ``nonfinite[q]`` is set where tile row ``q``'s values
    are not all finite. What each Winograd forward stores per filter and block."""
    for q in range(q_first, q_last):
        total = store_tile_row(y, (q - q_first) * tiles_w, step, target, out, q // tiles_h, k,
                               (q % tiles_h) * tile, floor, tile)
        if not math.isfinite(total):
            nonfinite[q] = True


@kernel()
def _input_transform(x, source, c, q_first, q_last, tiles_h, tiles_w, pad_top, pad_left, b_t,
                     patches, half, v, pitch):
    """V[a*6+b, c, t] = (B^T d B)[a, b] for the 6x6 input patch d of each tile t of the
    tile rows ``q_first <= q < q_last`` (V laid out ``(36, C, pitch)`` in ``v``, zeros in
    the columns from ``n_tiles`` to ``pitch``; ``source``: :func:`.strips.flat` (x)):
    each input row is copied into a zero-bordered row (the first ``4 * tiles_w + 2``
    values of ``half``, free until the row pass) and split into its six column phases
    (tile j reads columns 4j .. 4j+5), then B^T is applied along the rows and the
    columns of all the block's tiles at once."""
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    n_tiles = (q_last - q_first) * tiles_w
    zero = b_t[1, 0]
    span = TILE * tiles_w + 2  # >= pad_left + width: the output covers the padded row
    padded = half[:span]
    for k in range(pad_left):
        padded[k] = zero
    for k in range(pad_left + width, span):
        padded[k] = zero
    for q in range(q_first, q_last):
        n = q // tiles_h
        top = (q % tiles_h) * TILE - pad_top
        first = (q - q_first) * tiles_w
        for a in range(ALPHA):
            row = top + a
            # patches[at + u * n_tiles + j] = x_padded[row, 4 j + u]: six phases of one row
            at = a * ALPHA * n_tiles + first
            if row < 0 or row >= height:
                for u in range(ALPHA):
                    for j in range(tiles_w):
                        patches[at + u * n_tiles + j] = zero
                continue
            strips.copy_row(source, x, n, c, row, padded, pad_left)
            # phases 4 and 5 are phases 0 and 1 of the row four columns on
            _deal_tiles(padded, np.int64(0), tiles_w, span, patches, at, n_tiles, 4)
            _deal_tiles(padded, np.int64(TILE), tiles_w, span - TILE, patches, at + 4 * n_tiles,
                        n_tiles, 2)
    # rows: half[a', u] = sum_a B^T[a', a] patches[a, u]; then columns
    for u in range(ALPHA):
        _b_transform(patches, u * n_tiles, ALPHA * n_tiles, half, u * n_tiles, ALPHA * n_tiles,
                     n_tiles, b_t)
    for a in range(ALPHA):
        _b_transform(half, a * ALPHA * n_tiles, n_tiles, v, (a * ALPHA * channels + c) * pitch,
                     channels * pitch, n_tiles, b_t)
    if pitch > n_tiles:  # the products' last vectors read them: zeros, not stale values
        for e in range(ALPHA * ALPHA):
            at = (e * channels + c) * pitch
            for t in range(n_tiles, pitch):
                v[at + t] = zero


@kernel()
def _block_buffers(scratch, channels, m_rows, max_tiles, max_pitch):
    """One thread's scratch split into the block buffers: the transformed patches V
    ``(36, C, pitch)``, the products M (or the transformed gradients Z) ``(36, m_rows,
    pitch)``, and two ``36 * tiles`` work buffers for the transforms."""
    e_count = ALPHA * ALPHA
    v_end = e_count * channels * max_pitch
    m_end = v_end + e_count * m_rows * max_pitch
    return (scratch[:v_end], scratch[v_end:m_end],
            scratch[m_end : m_end + e_count * max_tiles],
            scratch[m_end + e_count * max_tiles : m_end + 2 * e_count * max_tiles])


def buffer_size(channels: int, m_rows: int, max_tiles: int, max_pitch: int) -> int:
    """Values of one thread's scratch for :func:`_block_buffers`."""
    return ALPHA * ALPHA * ((channels + m_rows) * max_pitch + 2 * max_tiles)


@kernel(entry=True)
def _pitch(n_tiles, lanes):
    """V's and M's row length for ``n_tiles`` tiles: whole vectors of ``lanes``."""
    return (n_tiles + lanes - 1) // lanes * lanes


@kernel()
def _products(packed, v, m, e, groups, group_channels, n_tiles, pitch, taps):
    """M[e] = U[e] @ V[e] per group on the register-tiled micro-kernels
    (:mod:`.microkernels`): for each block of 8 filters, 48 tiles at a time, then two or
    one vectors of them. ``packed[e, g, b]``: the block's filters, channel-major (8 per
    channel); M's rows are the groups' filters padded to blocks of 8, ``pitch`` apart;
    V's rows ``pitch`` apart, whole vectors readable. ``taps``: a 1-element scratch.
    :func:`products_over` with every channel."""
    products_over(packed, v, m, e, groups, group_channels, group_channels, n_tiles, pitch,
                  taps)


@kernel()
def products_over(packed, v, m, e, groups, group_channels, used, n_tiles, pitch, taps):
    """:func:`_products` over the first ``used`` of each group's ``group_channels`` rows
    of V[e] (the others' products are zero: :mod:`.winograd_s2`'s phases whose kernel has
    one tap along an axis, at the point infinity)."""
    n_kblocks = packed.shape[2]
    m_rows = groups * n_kblocks * BLOCK_K
    channels = groups * group_channels
    for g in range(groups):
        for b in range(n_kblocks):
            weights = packed[e, g, b]
            base_m = (e * m_rows + (g * n_kblocks + b) * BLOCK_K) * pitch
            # the micro-kernels read V at c * pitch + taps[0] + first, write M at first
            taps[0] = (e * channels + g * group_channels) * pitch - base_m
            weights_x_run(v, weights, m, base_m, n_tiles, pitch, used, taps, pitch, used)


@kernel(parallel=True)
def _conv2d_forward_winograd(x, packed, bias, has_bias, floor, out, pad_top, pad_left, groups,
                             rows_per_block, b_t, a_t, scratch, nonfinite, part, parts):
    """out = max(floor, conv2d(x, weight, bias)) for a 3x3 stride-1 kernel, ``packed`` =
    its filter transform packed for :func:`_products` (:func:`transform_filters`); see
    the module docstring. ``nonfinite[q]`` (False on entry) is set where tile row
    ``q = n * tiles_h + t`` has a NaN or Inf before the clamp."""
    n_img, channels, height, width = x.shape
    out_channels = out.shape[1]
    out_h, out_w = out.shape[2], out.shape[3]
    group_channels = channels // groups
    per_group = out_channels // groups
    n_kblocks = packed.shape[2]
    m_rows = groups * n_kblocks * BLOCK_K
    tiles_h = (out_h + TILE - 1) // TILE
    tiles_w = (out_w + TILE - 1) // TILE
    n_tile_rows = n_img * tiles_h
    max_tiles = rows_per_block * tiles_w
    lanes = simd.lanes(scratch)
    max_pitch = _pitch(max_tiles, lanes)
    n_chunks = scratch.shape[0]
    e_count = ALPHA * ALPHA
    target = strips.flat(out)  # rows by offset, not by view
    source = strips.flat(x)
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        v, m, patches, half = _block_buffers(scratch[chunk], channels, m_rows, max_tiles,
                                             max_pitch)
        taps = np.empty(1, np.intp)
        # the chunk's share of the tile rows, in blocks of rows_per_block (block_rows)
        last = (chunk + 1) * n_tile_rows // n_chunks
        for q_first in range(chunk * n_tile_rows // n_chunks, last, rows_per_block):
            q_last = min(q_first + rows_per_block, last)
            n_tiles = (q_last - q_first) * tiles_w
            pitch = _pitch(n_tiles, lanes)
            # input transform: V[a*6+b, c, t] = (B^T d B)[a, b] for the patch d of tile t
            for c in range(channels):
                _input_transform(x, source, c, q_first, q_last, tiles_h, tiles_w, pad_top,
                                 pad_left, b_t, patches, half, v, pitch)
            # M[e] = U[e] @ V[e], per group
            for e in range(e_count):
                _products(packed, v, m, e, groups, group_channels, n_tiles, pitch, taps)
            # output transform: y = A^T M A per filter, stored with the bias
            zero = a_t[0, 5]
            for k in range(out_channels):
                b_k = bias[k] if has_bias else zero
                step = ALPHA * m_rows * pitch
                row_k = (k // per_group) * n_kblocks * BLOCK_K + k % per_group
                for b in range(ALPHA):
                    _a_transform(m, (b * m_rows + row_k) * pitch, step, half, b * n_tiles,
                                 ALPHA * n_tiles, n_tiles, a_t, zero)
                for a in range(TILE):
                    _a_transform(half, a * ALPHA * n_tiles, n_tiles, patches,
                                 a * TILE * n_tiles, n_tiles, n_tiles, a_t, b_k)
                store_block(patches, n_tiles, target, out, k, q_first, q_last, tiles_h, tiles_w,
                            floor, TILE, nonfinite)


def transform_filters(weight: np.ndarray, groups: int, flipped: bool = False, *,
                      g: np.ndarray = G, kind: str = "winograd") -> np.ndarray:
    """``U = G w G^T`` for every filter, packed for :func:`_products` as ``(36, groups,
    blocks, C/groups * 8)``: block ``b`` of group ``g`` holds its 8 filters' values
    channel by channel (zeros past the group's last filter). With ``flipped``, of the
    weight of grad_input's convolution (:func:`.identities.transpose_flip`) instead.
    ``g``: G, ``(6, R)`` for an R x R kernel (:mod:`.winograd_5x5` passes its own, and its
    ``kind`` to keep its transforms apart). Kept for the next call while ``weight`` holds
    the same bytes (:mod:`.prepared`)."""
    out_channels = weight.shape[1] * groups if flipped else weight.shape[0]
    group_channels = weight.shape[0] // groups if flipped else weight.shape[1]
    per_group = out_channels // groups
    shape = (ALPHA * ALPHA, groups, -(-per_group // BLOCK_K), group_channels * BLOCK_K)

    def build(weight, packed):
        if flipped:
            weight = identities.transpose_flip(weight, groups)
        # reused across calls: a fresh buffer page-faults (5-10 MB for deep layers)
        size = g.shape[1] * g.shape[1]
        taps = workspace.borrow((out_channels, size, group_channels), weight.dtype,
                                "winograd taps")
        np.copyto(taps, weight.reshape(out_channels, group_channels, size).transpose(0, 2, 1))
        # (not the slot "winograd filters": packed is that slot's buffer past the budget)
        transformed = workspace.borrow((ALPHA * ALPHA, out_channels, group_channels),
                                       weight.dtype, "winograd unpacked")
        n_parts = threads.count()
        threads.launch(_filter_transform, n_parts, taps, g.astype(weight.dtype), transformed)
        threads.launch(_pack_products, n_parts, transformed, packed)

    slot = f"{kind} grad_input filters" if flipped else f"{kind} filters"
    return prepared.get(slot, weight, shape, build, groups)


@kernel(parallel=True)
def _pack_products(transformed, packed, part, parts):
    """packed[e, g, b, c * 8 + kk] = transformed[e, g * per_group + b * 8 + kk, c] (zero
    where ``b * 8 + kk >= per_group``): the layout :func:`_products` reads."""
    e_count, groups, n_kblocks = packed.shape[0], packed.shape[1], packed.shape[2]
    out_channels, group_channels = transformed.shape[1], transformed.shape[2]
    per_group = out_channels // groups
    zero = transformed[0, 0, 0] - transformed[0, 0, 0]
    for e in prange(part * e_count // parts, (part + 1) * e_count // parts):
        for g in range(groups):
            for b in range(n_kblocks):
                dst = packed[e, g, b]
                for kk in range(BLOCK_K):
                    k = b * BLOCK_K + kk
                    if k < per_group:
                        src = transformed[e, g * per_group + k]
                        for c in range(group_channels):
                            dst[c * BLOCK_K + kk] = src[c]
                    else:
                        for c in range(group_channels):
                            dst[c * BLOCK_K + kk] = zero


def _strided():
    """:mod:`.winograd_s2`, Winograd at stride 2, which builds on this module (imported
    here, at the first call: a module-level import would make a cycle)."""
    from . import winograd_s2

    return winograd_s2


def _five():
    """:mod:`.winograd_5x5`, F(2x2, 5x5), which builds on this module (imported at the
    first call, as :func:`_strided`)."""
    from . import winograd_5x5

    return winograd_5x5


def unsupported_any_stride(*, weight_shape, stride, dilation, groups=1, **_) -> str | None:
    """Why none of F(4x4, 3x3), F(2x2, 5x5) (:mod:`.winograd_5x5`) and F(4x4, 2x2) on the
    stride phases (:mod:`.winograd_s2`) can compute this conv2d, or None if one can."""
    if (unsupported(weight_shape=weight_shape, stride=stride, dilation=dilation) is None
            or _five().unsupported(weight_shape=weight_shape, stride=stride,
                                   dilation=dilation) is None
            or _strided().unsupported(weight_shape=weight_shape, stride=stride,
                                      dilation=dilation, groups=groups) is None):
        return None
    return (f"winograd needs a 3x3 or 5x5 kernel with stride 1, or a 3x3 or 4x4 kernel with "
            f"stride 2 and groups 1, and dilation 1; got kernel {tuple(weight_shape[2:])}, "
            f"stride {stride}, dilation {dilation}, groups {groups}")


@register("conv2d", "cpu", "winograd", unsupported=unsupported_any_stride)
def conv2d_winograd(x, weight, bias, out, stride, padding, dilation, groups, activation=None, *,
                    gemm=None):
    """Host side of Winograd F(4x4, 3x3), of F(2x2, 5x5) for 5x5 kernels
    (:func:`.winograd_5x5.conv2d`), and at stride 2 of F(4x4, 2x2) on the stride phases
    (:func:`.winograd_s2.conv2d`); arguments as normalised by :func:`fastconv.conv2d`.

    A NaN or Inf in the weight or bias sends the call to im2col; tile rows whose
    outputs are not all finite are recomputed by im2col (see the module docstring)."""
    if stride != (1, 1) or weight.shape[2:] == (5, 5):
        module = _strided() if stride != (1, 1) else _five()
        module.conv2d(x, weight, bias, out, stride, padding, dilation, groups, activation,
                      gemm=gemm)
        return
    if not (all_finite(weight) and (bias is None or all_finite(bias))):
        im2col.conv2d_im2col(x, weight, bias, out, stride, padding, dilation, groups, activation,
                             gemm=gemm)
        return
    _conv2d_winograd(x, transform_filters(weight, groups), lambda: weight, bias, out, padding,
                     groups, gemm, activation)


def _conv2d_winograd(x, packed, conv_weight, bias, out, padding, groups, gemm,
                     activation=None):
    """Winograd with the packed filter transform of a finite weight and bias; then the
    tile rows whose outputs are not all finite again, by im2col on ``conv_weight()``
    (with ``gemm``)."""
    n_img, channels = x.shape[:2]
    out_channels = out.shape[1]
    out_h, out_w = out.shape[2:]
    tiles_h, tiles_w = -(-out_h // TILE), -(-out_w // TILE)
    n_threads = threads.count()
    rows_per_block = block_rows(n_img, channels, out_channels, out_h, out_w, x.itemsize,
                                n_threads, aligned=True)
    n_chunks = max(1, min(n_threads, -(-(n_img * tiles_h) // rows_per_block)))
    max_tiles = rows_per_block * tiles_w
    m_rows = groups * packed.shape[2] * BLOCK_K
    scratch = workspace.borrow(
        (n_chunks, buffer_size(channels, m_rows, max_tiles,
                               _pitch(max_tiles, simd.WIDTH_BYTES // x.itemsize))),
        x.dtype)
    has_bias = bias is not None
    nonfinite = np.zeros((n_img, tiles_h), np.bool_)
    threads.launch(
        _conv2d_forward_winograd, threads.parts_for(n_chunks, out, channels // groups * 9), x,
        packed, bias if has_bias else np.zeros(0, x.dtype), has_bias,
        activations.floor(activation, x.dtype), out, padding[0][0], padding[1][0], groups,
        rows_per_block, B_T.astype(x.dtype), A_T.astype(x.dtype), scratch,
        nonfinite.reshape(-1))
    for n, first, last in _runs(nonfinite):
        _recompute_tile_rows(x, conv_weight(), bias, out, n, first, last, padding, groups, gemm,
                             activation)


def _runs(flags):
    """``(n, first, last)`` for each run ``flags[n, first:last]`` of consecutive Trues."""
    for n in np.flatnonzero(flags.any(axis=1)):
        edges = np.flatnonzero(np.diff(np.concatenate(([0], flags[n].astype(np.int8), [0]))))
        for first, last in edges.reshape(-1, 2):
            yield int(n), int(first), int(last)


def _recompute_tile_rows(x, weight, bias, out, n, first, last, padding, groups, gemm,
                         activation):
    """Tile rows ``first <= t < last`` of image ``n`` by im2col: output rows
    ``[r0, r1)`` read input rows ``[r0 - pad_top, r1 + 2 - pad_top)``, zero-padded
    where they leave the input."""
    r0, r1 = TILE * first, min(TILE * last, out.shape[2])
    top, bottom = r0 - padding[0][0], r1 + 2 - padding[0][0]
    lo, hi = max(0, top), min(x.shape[2], bottom)
    band = np.empty((1, out.shape[1], r1 - r0, out.shape[3]), out.dtype)
    im2col.conv2d_im2col(np.ascontiguousarray(x[n : n + 1, :, lo:hi]), weight, bias, band,
                         (1, 1), ((lo - top, bottom - hi), padding[1]), (1, 1), groups,
                         activation, gemm=gemm)
    out[n, :, r0:r1] = band[0]


def unsupported_grad_input(*, weight_shape, stride, padding, dilation, groups=1,
                           **_) -> str | None:
    """Why grad_input cannot be the Winograd convolution of grad_output (see
    :mod:`.identities`; 5x5 kernels :func:`.winograd_5x5.unsupported_grad_input`; at
    stride 2 :func:`.winograd_s2.unsupported_grad_input`), or None if it can."""
    if stride == (2, 2) and weight_shape[2:] != (5, 5):
        return _strided().unsupported_grad_input(weight_shape=weight_shape, stride=stride,
                                                 padding=padding, dilation=dilation,
                                                 groups=groups)
    if weight_shape[2:] == (5, 5):
        return _five().unsupported_grad_input(weight_shape=weight_shape, stride=stride,
                                              padding=padding, dilation=dilation)
    reason = unsupported(weight_shape=weight_shape, stride=stride, dilation=dilation)
    if reason is None and max(max(p) for p in padding) > 2:
        reason = f"winograd needs padding <= 2 for grad_input, got {padding}"
    return reason


@register("conv2d_grad_input", "cpu", "winograd", unsupported=unsupported_grad_input)
def conv2d_grad_input_winograd(grad_out, weight, grad_in, stride, padding, dilation, groups, *,
                               gemm=None):
    """grad_in = conv2d(grad_out, flipped and transposed weight) with stride 1, by Winograd.

    With a non-finite weight, im2col's grad_input instead: the convolution's zero
    padding would multiply the weight where the transposed convolution has no term
    (0 * Inf = NaN). 5x5 kernels by F(2x2, 5x5) (:func:`.winograd_5x5.conv2d_grad_input`),
    stride 2 by F(4x4, 2x2) on the phases of grad_in
    (:func:`.winograd_s2.conv2d_grad_input`)."""
    if stride != (1, 1):
        _strided().conv2d_grad_input(grad_out, weight, grad_in, stride, padding, dilation,
                                     groups, gemm=gemm)
        return
    if weight.shape[2:] == (5, 5):
        _five().conv2d_grad_input(grad_out, weight, grad_in, stride, padding, dilation, groups,
                                  gemm=gemm)
        return
    if not all_finite(weight):
        im2col.conv2d_grad_input_im2col(grad_out, weight, grad_in, stride, padding, dilation,
                                        groups, gemm=gemm)
        return
    conv_pads = identities.grad_input_as_conv_padding(
        grad_in.shape[2:], grad_out.shape[2:], weight.shape[2:], stride, padding, dilation)
    _conv2d_winograd(grad_out, transform_filters(weight, groups, flipped=True),
                     lambda: identities.transpose_flip(weight, groups), None, grad_in, conv_pads,
                     groups, gemm)


def _prepare_grad_input(arrays, params):
    """:func:`conv2d_grad_input_winograd`'s runner for a cached plan at stride 2, which
    adds conv_transpose2d's bias as it stores (None elsewhere: the host function)."""
    stride, padding, dilation, groups = params
    if stride == (1, 1):
        return None
    strided = _strided()

    def run(grad_out, weight, grad_in, bias=None):
        """grad_in (+ ``bias``, conv_transpose2d's, added as the outputs are stored)."""
        strided.conv2d_grad_input(grad_out, weight, grad_in, stride, padding, dilation, groups,
                                  bias=bias)

    run.adds_bias = True  # type: ignore[attr-defined]
    return run


conv2d_grad_input_winograd.prepare = _prepare_grad_input  # type: ignore[attr-defined]


# --- the weight gradient ------------------------------------------------------------------
#
# With Z = A dY A^T (A = (A^T)^T, 6x4) for each 4x4 tile dY of grad_output, the forward
# formula y = A^T (U * V) A gives dL/dU = Z * V per tile, so
# grad_weight[k, c] = G^T (sum over tiles of Z[k] * V[c]) G: per element e, the sum over
# tiles is one GEMM, Z[e] (K x tiles) @ V[e]^T (tiles x C).


@kernel()
def _a_expand(src, at, step, dst, dst_at, dst_step, n, a_t):
    """``o = A i`` (A = (A^T)^T, 6x4) on four vectors of length ``n`` (``i_r = src[at + r *
    step :]``, ``o_r = dst[dst_at + r * dst_step :]``), one pass (SIMD vectors, then the
    last values one by one, as :func:`_b_transform`)."""
    half, quarter, eighth, two, four, eight = _a_coefficients(a_t)
    v_half, v_quarter, v_eighth, v_minus_two, v_four, v_minus_eight = _a_vectors(a_t, src)
    lanes = simd.lanes(src)
    whole = n // lanes * lanes
    for t in range(0, whole, lanes):
        i, o = at + t, dst_at + t
        y0, y1 = simd.load(src, i), simd.load(src, i + step)
        y2, y3 = simd.load(src, i + 2 * step), simd.load(src, i + 3 * step)
        even, odd = simd.add(y0, y2), simd.add(y1, y3)
        simd.store(dst, o, y0)
        simd.store(dst, o + dst_step, simd.add(even, odd))
        simd.store(dst, o + 2 * dst_step, simd.sub(even, odd))
        simd.store(dst, o + 3 * dst_step, simd.fma(v_eighth, y3, simd.fma(
            v_quarter, y2, simd.fma(v_half, y1, y0))))
        simd.store(dst, o + 4 * dst_step, simd.fma(v_minus_eight, y3, simd.fma(
            v_four, y2, simd.fma(v_minus_two, y1, y0))))
        simd.store(dst, o + 5 * dst_step, y3)
    for t in range(whole, n):
        i, o = at + t, dst_at + t
        y0, y1, y2, y3 = src[i], src[i + step], src[i + 2 * step], src[i + 3 * step]
        even, odd = y0 + y2, y1 + y3
        dst[o] = y0
        dst[o + dst_step] = even + odd
        dst[o + 2 * dst_step] = even - odd
        dst[o + 3 * dst_step] = y0 + half * y1 + quarter * y2 + eighth * y3
        dst[o + 4 * dst_step] = y0 - two * y1 + four * y2 - eight * y3
        dst[o + 5 * dst_step] = y3


@kernel()
def _grad_output_transform(grad_out, source, k, q_first, q_last, tiles_h, tiles_w, a_t, patches,
                           half, z):
    """Z[a*6+b, k, t] = (A dY A^T)[a, b] for the 4x4 tile dY of ``grad_out[n, k]`` of each
    tile t of the block (zeros past the output's edge); Z is ``(36, K, n_tiles)`` in ``z``.
    ``grad_out`` is C-contiguous, ``source`` its :func:`.strips.flat`."""
    out_channels, out_h, out_w = grad_out.shape[1], grad_out.shape[2], grad_out.shape[3]
    n_tiles = (q_last - q_first) * tiles_w
    zero = a_t[0, 5]
    full = out_w // TILE
    for q in range(q_first, q_last):
        n = q // tiles_h
        first = (q - q_first) * tiles_w
        for a in range(TILE):
            row = (q % tiles_h) * TILE + a
            at = a * TILE * n_tiles + first
            if row >= out_h:
                for b in range(TILE):
                    for j in range(tiles_w):
                        patches[at + b * n_tiles + j] = zero
                continue
            row_at = strips.row_start(grad_out, n, k, row)
            _deal_tiles(source, row_at, full, out_w, patches, at, n_tiles, 4)
            for j in range(full, tiles_w):
                for b in range(TILE):
                    column = TILE * j + b
                    value = source[row_at + column] if column < out_w else zero
                    patches[at + b * n_tiles + j] = value
    # rows: half[a', b] = sum_a A[a', a] dY[a, b]; then columns into Z
    for b in range(TILE):
        _a_expand(patches, b * n_tiles, TILE * n_tiles, half, b * n_tiles, TILE * n_tiles,
                  n_tiles, a_t)
    for a in range(ALPHA):
        _a_expand(half, a * TILE * n_tiles, n_tiles, z, (a * ALPHA * out_channels + k) * n_tiles,
                  out_channels * n_tiles, n_tiles, a_t)


@kernel(parallel=True)
def _conv2d_grad_weight_winograd(x, grad_out, pad_top, pad_left, groups, rows_per_block, b_t,
                                 a_t, scratch, partial, gemm, set_blas_threads, part, parts):
    """partial[chunk, e, k, c] = sum over the chunk's tiles of Z[e, k, t] * V[e, c, t]:
    each thread sums its own blocks (race-free; the host adds the partial sums in a
    fixed order)."""
    n_img, channels = x.shape[0], x.shape[1]
    out_channels, out_h, out_w = grad_out.shape[1], grad_out.shape[2], grad_out.shape[3]
    group_channels = channels // groups
    per_group = out_channels // groups
    tiles_h = (out_h + TILE - 1) // TILE
    tiles_w = (out_w + TILE - 1) // TILE
    n_tile_rows = n_img * tiles_h
    n_blocks = (n_tile_rows + rows_per_block - 1) // rows_per_block
    max_tiles = rows_per_block * tiles_w
    n_chunks = scratch.shape[0]
    e_count = ALPHA * ALPHA
    source = strips.flat(grad_out)
    x_source = strips.flat(x)
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        saved_threads = set_blas_threads(1)
        v, z, patches, half = _block_buffers(scratch[chunk], channels, out_channels, max_tiles,
                                             max_tiles)
        sums = partial[chunk]
        for e in range(e_count):
            for k in range(out_channels):
                for c in range(group_channels):
                    sums[e, k, c] = 0
        for block in range(chunk * n_blocks // n_chunks, (chunk + 1) * n_blocks // n_chunks):
            q_first = block * rows_per_block
            q_last = min(q_first + rows_per_block, n_tile_rows)
            n_tiles = (q_last - q_first) * tiles_w
            for c in range(channels):
                _input_transform(x, x_source, c, q_first, q_last, tiles_h, tiles_w, pad_top,
                                 pad_left, b_t, patches, half, v, n_tiles)
            for k in range(out_channels):
                _grad_output_transform(grad_out, source, k, q_first, q_last, tiles_h, tiles_w,
                                       a_t, patches, half, z)
            for e in range(e_count):
                for g in range(groups):
                    gemm(blas.ROW_MAJOR, blas.NO_TRANS, blas.TRANS, per_group, group_channels,
                         n_tiles, 1.0,
                         blas.pointer(z, (e * out_channels + g * per_group) * n_tiles), n_tiles,
                         blas.pointer(v, (e * channels + g * group_channels) * n_tiles), n_tiles,
                         1.0,
                         blas.pointer(sums, (e * out_channels + g * per_group) * group_channels),
                         group_channels)
        set_blas_threads(saved_threads)


@kernel(parallel=True)
def _filter_transform_adjoint(partial, g, taps, part, parts):
    """taps[k, r*3 + s, :] = sum_{a, b} G[a, r] G[b, s] sum_chunk partial[chunk, a*6+b, k, :]:
    ``G^T S G`` per filter, summed over the threads' partial sums in chunk order."""
    n_chunks, out_channels, group_channels = partial.shape[0], partial.shape[2], partial.shape[3]
    for k in prange(part * out_channels // parts, (part + 1) * out_channels // parts):
        for r in range(3):
            for s in range(3):
                dst = taps[k, r * 3 + s]
                for c in range(group_channels):
                    dst[c] = 0
                for chunk in range(n_chunks):
                    for a in range(ALPHA):
                        for b in range(ALPHA):
                            coefficient = g[a, r] * g[b, s]
                            if coefficient != 0:
                                src = partial[chunk, a * ALPHA + b, k]
                                for c in range(group_channels):
                                    dst[c] += coefficient * src[c]


def block_rows(n_img, channels, out_channels, out_h, out_w, item, n_threads,
               points=ALPHA * ALPHA, tile=TILE, aligned=False):
    """Tile rows per block: the byte budget (``points`` transformed values per ``tile`` x
    ``tile`` output tile and channel), at least WINOGRAD_MIN_TILES tiles, and a multiple
    of the thread count in blocks.

    ``aligned`` (the forwards, whose threads each take an equal share of the tile rows in
    blocks of this many): instead of the multiple of the thread count, the rows of a
    whole number of vectors of tiles where a multiple of them lies between half the rows
    and 1.5 times them (the products run on whole vectors of tiles: on 28x28 outputs, 7
    tiles a row, blocks of 14 rows computed 112 tiles for 98, blocks of 16 none), and no
    more than a thread's share."""
    tiles_h, tiles_w = -(-out_h // tile), -(-out_w // tile)
    per_row = points * (channels + out_channels) * tiles_w * item
    rows_per_block = max(1, config.WINOGRAD_TILE_BYTES // per_row,
                         -(-config.WINOGRAD_MIN_TILES // tiles_w))
    if aligned:
        lanes = simd.WIDTH_BYTES // item
        step = lanes // math.gcd(lanes, tiles_w)
        down, up = rows_per_block // step * step, -(-rows_per_block // step) * step
        if 2 * down >= rows_per_block:
            rows_per_block = down
        elif 2 * up <= 3 * rows_per_block:
            rows_per_block = up
        return max(1, min(rows_per_block, -(-(n_img * tiles_h) // n_threads)))
    n_blocks = -(-(n_img * tiles_h) // rows_per_block)
    n_blocks = -(-n_blocks // n_threads) * n_threads
    return -(-(n_img * tiles_h) // n_blocks)


@register("conv2d_grad_weight", "cpu", "winograd", unsupported=unsupported)
def conv2d_grad_weight_winograd(x, grad_out, grad_weight, stride, padding, dilation, groups, *,
                                gemm=None):
    """grad_weight of a 3x3 stride-1 convolution by Winograd F(4x4, 3x3); recomputed by
    im2col when it is not all finite (a NaN or Inf in a tile reaches all nine taps
    through the transforms; see the module docstring)."""
    n_img, channels = x.shape[:2]
    out_channels, group_channels = grad_weight.shape[:2]
    out_h, out_w = grad_out.shape[2:]
    n_threads = threads.count()
    rows_per_block = block_rows(n_img, channels, out_channels, out_h, out_w, x.itemsize,
                                n_threads)
    n_chunks = max(1, min(n_threads, -(-(n_img * -(-out_h // TILE)) // rows_per_block)))
    max_tiles = rows_per_block * -(-out_w // TILE)
    scratch = workspace.borrow(
        (n_chunks, buffer_size(channels, out_channels, max_tiles, max_tiles)), x.dtype)
    partial = workspace.borrow((n_chunks, ALPHA * ALPHA, out_channels, group_channels), x.dtype,
                               "winograd partial")
    parts = threads.parts_for(n_chunks, grad_weight, n_img * out_h * out_w)
    threads.launch(
        _conv2d_grad_weight_winograd, parts, x, np.ascontiguousarray(grad_out), padding[0][0],
        padding[1][0], groups, rows_per_block, B_T.astype(x.dtype), A_T.astype(x.dtype),
        scratch, partial, gemm if gemm is not None else blas.gemm_for(x.dtype),
        blas.SET_THREADS_LOCAL)
    taps = workspace.borrow((out_channels, 9, group_channels), x.dtype, "winograd taps")
    threads.launch(_filter_transform_adjoint, n_threads, partial, G.astype(x.dtype), taps)
    grad_weight[...] = taps.transpose(0, 2, 1).reshape(grad_weight.shape)
    if not all_finite(grad_weight):
        im2col.conv2d_grad_weight_im2col(x, grad_out, grad_weight, stride, padding, dilation,
                                         groups, gemm=gemm)
