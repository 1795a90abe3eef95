"""Winograd F(4x4, 2x2) on the stride phases: 3x3 and 4x4 convolutions at stride 2, and
their grad_input (conv_transpose2d's forward) on the phases of its result (the second
half of this module: the same points and transforms, the phases on the other side).

A stride-2 convolution reads each input phase (even or odd rows, even or odd
columns) with a kernel of at most 2x2 taps: with ``r = 2 q + p``,

    y[k, i, j] = sum_{c, p_r, p_c} sum_{q_r, q_c} P[c, p_r, p_c][i + q_r, j + q_c]
                 * w[k, c, 2 q_r + p_r, 2 q_c + p_c]

where ``P[c, p_r, p_c][a, b] = x_padded[c, 2 a + p_r, 2 b + p_c]`` (taps past the
kernel's edge are zero). That is a stride-1 2x2 convolution over ``4 C`` channels,
which Winograd F(4x4, 2x2) computes with 25 instead of 64 multiplies per 4x4
output tile and channel: 6.25 C per output against 16 C for a 4x4 kernel summed
directly (2.56x fewer, the 4x4 stride-2 convolution of conv_transpose2d's
grad_input). A 3x3 kernel's phases of its middle row or column have one tap along
that axis, whose transform is zero at the point infinity: the products of those
transform rows and columns leave those phases out (:func:`_used`, on V's rows in
the order of :func:`_slot`), 81 C multiplies a tile instead of 100 C, 5.06 C per
output against 9 C summed directly (1.78x fewer).

The phases are never stored: the input transform reads each input row of a tile
row (ten rows per four output rows), deals its columns into their ten phases
(``8 j + 2 u + p_c``: three rounds of :func:`.simd.deinterleave`) and transforms
them, so the rest is :mod:`.winograd`'s forward with five points instead of six:
the products on the register-tiled micro-kernels (:func:`.winograd.products_over`),
the output transform and the stores of whole tiles (:func:`.winograd.store_block`).

Interpolation points 0, 1, -1, 1/2 and infinity (:data:`B_T`, :data:`G`,
:data:`A_T`). Rounding: in float32, 1.9e-6 of the output's rms and 3.5e-5 at most on
a C64 -> 128 4x4 layer (N8, 32x32), against 5.6e-7 and 6.3e-6 for the direct kernel
and 2.8e-7 and 2.2e-6 for PyTorch (``benchmarks/RESULTS.md``, "Stride-2 layers by
Winograd on their phases").

Non-finite values: the transforms mix a patch's values (a NaN would spread over
whole tiles), so a weight or bias that is not all finite sends the call to
im2col, and so does an output that is not all finite (the tile rows are checked
as they are stored, as in :mod:`.winograd`): the whole call is then computed
again by im2col, whose results keep the exact sum's pattern of NaN and Inf.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from .. import activations
from . import im2col, prepared, simd, strips, threads, winograd, workspace
from ._jit import kernel
from .finite import all_finite
from .microkernels import BLOCK_K

TILE = 4
ALPHA = 5

#: F(4, 2) on the points 0, 1, -1, 1/2 and infinity (Toom-Cook): y = A^T [(G g) * (B^T d)].
B_T = np.array([
    [1, -2, -1, 2, 0],
    [0, -1 / 2, 1 / 2, 1, 0],
    [0, 1 / 2, -3 / 2, 1, 0],
    [0, -1, 0, 1, 0],
    [0, 1 / 2, -1, -1 / 2, 1],
], dtype=np.float64)
G = np.array([
    [1, 0],
    [1, 1],
    [-1 / 3, 1 / 3],
    [-8 / 3, -4 / 3],
    [0, 1],
], dtype=np.float64)
A_T = np.array([
    [1, 1, 1, 1, 0],
    [0, 1, -1, 1 / 2, 0],
    [0, 1, 1, 1 / 4, 0],
    [0, 1, -1, 1 / 8, 1],
], dtype=np.float64)

#: input rows and columns one tile reads: 2 * (4 + 2 - 1)
SPAN = 2 * ALPHA


def unsupported(*, weight_shape, stride, dilation, groups=1, **_) -> str | None:
    """Why Winograd on the stride phases cannot compute this conv2d, or None if it can."""
    if (stride != (2, 2) or dilation != (1, 1) or groups != 1
            or not all(3 <= r <= 4 for r in weight_shape[2:])):
        return (f"winograd at stride 2 needs a 3x3 to 4x4 kernel, stride 2, dilation 1 and "
                f"groups 1; got kernel {tuple(weight_shape[2:])}, stride {stride}, "
                f"dilation {dilation}, groups {groups}")
    return None


@kernel()
def _b_transform(src, at, step, dst, dst_at, dst_step, n, b_t):
    """``o = B^T i`` on five vectors of length ``n`` (a whole number of :mod:`.simd`
    vectors; ``i_r = src[at + r * step :]``, ``o_r = dst[dst_at + r * dst_step :]``).
    The coefficients are read from ``b_t``, in the data's dtype."""
    lanes = simd.lanes(src)
    v_half, v_two = simd.splat(b_t[1, 2], src), simd.splat(b_t[0, 3], src)
    v_minus_half = simd.splat(b_t[1, 1], src)
    v_minus_three_halves = simd.splat(b_t[2, 2], src)
    for t in range(0, n, lanes):
        i, o = at + t, dst_at + t
        a0, a1, a2 = simd.load(src, i), simd.load(src, i + step), simd.load(src, i + 2 * step)
        a3, a4 = simd.load(src, i + 3 * step), simd.load(src, i + 4 * step)
        d31 = simd.sub(a3, a1)
        simd.store(dst, o, simd.fma(v_two, d31, simd.sub(a0, a2)))
        simd.store(dst, o + dst_step, simd.fma(v_half, simd.sub(a2, a1), a3))
        simd.store(dst, o + 2 * dst_step, simd.fma(v_minus_three_halves, a2,
                                                   simd.fma(v_half, a1, a3)))
        simd.store(dst, o + 3 * dst_step, d31)
        simd.store(dst, o + 4 * dst_step, simd.fma(v_minus_half, d31, simd.sub(a4, a2)))


@kernel()
def _a_transform(src, at, step, dst, dst_at, dst_step, n, a_t, offset):
    """``o = A^T i + offset`` on five vectors of length ``n`` (whole vectors, as
    :func:`_b_transform`)."""
    lanes = simd.lanes(src)
    v_half, v_quarter = simd.splat(a_t[1, 3], src), simd.splat(a_t[2, 3], src)
    v_eighth = simd.splat(a_t[3, 3], src)
    v_offset = simd.splat(offset, src)
    for t in range(0, n, lanes):
        i, o = at + t, dst_at + t
        a0, a1, a2 = simd.load(src, i), simd.load(src, i + step), simd.load(src, i + 2 * step)
        a3, a4 = simd.load(src, i + 3 * step), simd.load(src, i + 4 * step)
        plus12, minus12 = simd.add(a1, a2), simd.sub(a1, a2)
        simd.store(dst, o, simd.add(simd.add(a0, plus12), simd.add(a3, v_offset)))
        simd.store(dst, o + dst_step, simd.fma(v_half, a3, simd.add(minus12, v_offset)))
        simd.store(dst, o + 2 * dst_step, simd.fma(v_quarter, a3, simd.add(plus12, v_offset)))
        simd.store(dst, o + 3 * dst_step, simd.fma(v_eighth, a3, simd.add(
            simd.add(minus12, a4), v_offset)))


@kernel(entry=True)
def _span(tiles_w, pad_left, width):
    """Values of the zero-bordered row: the ten phases of every tile, and the whole row."""
    return max(2 * TILE * tiles_w + 2, pad_left + width)


@kernel()
def _deal_phases(padded, count, available, out, even, odd, step):
    """The ten column phases of one zero-bordered row: ``out[even + u * step + j] =
    padded[8 j + 2 u]`` and ``out[odd + u * step + j] = padded[8 j + 2 u + 1]`` for ``u <
    5`` and ``j < count`` (``available`` values of ``padded`` may be read); ``8 * lanes``
    values at a time by three rounds of :func:`.simd.deinterleave`, phases 8 and 9
    (u = 4) those of 0 and 1 one tile on (:func:`.simd.shift_in`)."""
    lanes = simd.lanes(padded)
    zero = padded[0] - padded[0]
    for j in range(0, count, lanes):
        base, left, n = 8 * j, available - 8 * j, min(lanes, count - j)
        v0 = simd.load_first(padded, base, left)
        v1 = simd.load_first(padded, base + lanes, left - lanes)
        v2 = simd.load_first(padded, base + 2 * lanes, left - 2 * lanes)
        v3 = simd.load_first(padded, base + 3 * lanes, left - 3 * lanes)
        v4 = simd.load_first(padded, base + 4 * lanes, left - 4 * lanes)
        v5 = simd.load_first(padded, base + 5 * lanes, left - 5 * lanes)
        v6 = simd.load_first(padded, base + 6 * lanes, left - 6 * lanes)
        v7 = simd.load_first(padded, base + 7 * lanes, left - 7 * lanes)
        # residues mod 2, then mod 4, then mod 8
        e0, e1 = simd.deinterleave(v0, v1, False), simd.deinterleave(v2, v3, False)
        e2, e3 = simd.deinterleave(v4, v5, False), simd.deinterleave(v6, v7, False)
        o0, o1 = simd.deinterleave(v0, v1, True), simd.deinterleave(v2, v3, True)
        o2, o3 = simd.deinterleave(v4, v5, True), simd.deinterleave(v6, v7, True)
        r0a, r0b = simd.deinterleave(e0, e1, False), simd.deinterleave(e2, e3, False)
        r1a, r1b = simd.deinterleave(o0, o1, False), simd.deinterleave(o2, o3, False)
        r2a, r2b = simd.deinterleave(e0, e1, True), simd.deinterleave(e2, e3, True)
        r3a, r3b = simd.deinterleave(o0, o1, True), simd.deinterleave(o2, o3, True)
        p0, p1 = simd.deinterleave(r0a, r0b, False), simd.deinterleave(r1a, r1b, False)
        simd.store_first(out, even + j, p0, n)
        simd.store_first(out, odd + j, p1, n)
        simd.store_first(out, even + step + j, simd.deinterleave(r2a, r2b, False), n)
        simd.store_first(out, odd + step + j, simd.deinterleave(r3a, r3b, False), n)
        simd.store_first(out, even + 2 * step + j, simd.deinterleave(r0a, r0b, True), n)
        simd.store_first(out, odd + 2 * step + j, simd.deinterleave(r1a, r1b, True), n)
        simd.store_first(out, even + 3 * step + j, simd.deinterleave(r2a, r2b, True), n)
        simd.store_first(out, odd + 3 * step + j, simd.deinterleave(r3a, r3b, True), n)
        # phases 8 and 9 of tile j: phases 0 and 1 of tile j + 1
        next_at = base + 8 * lanes
        next0 = padded[next_at] if next_at < available else zero
        next1 = padded[next_at + 1] if next_at + 1 < available else zero
        simd.store_first(out, even + 4 * step + j, simd.shift_in(p0, simd.splat(next0, p0)), n)
        simd.store_first(out, odd + 4 * step + j, simd.shift_in(p1, simd.splat(next1, p1)), n)


@kernel()
def _input_transform(x, source, c, q_first, q_last, tiles_h, tiles_w, pad_top, pad_left, b_t,
                     patches, half, v, pitch):
    """V[a*5+b, slot * C + c, t] = (B^T d B)[a, b] for the 5x5 patch ``d`` of phase
    ``(p_r, p_c)`` of channel ``c`` under each tile ``t`` of the tile rows ``q_first <= q
    < q_last`` (V laid out ``(25, 4 C, pitch)`` in ``v``; ``slot``: :func:`_slot`). Tile
    ``(i, j)``'s patches read input rows and columns ``8 i - pad .. 8 i - pad + 9``; each
    input row is copied into a zero-bordered row (the first values of ``half``, free
    until the row pass) and dealt into its ten column phases: ``patches[(2 p_r + p_c) * 25 * pitch +
    (a * 5 + u) * pitch + t] = x_padded[8 i + 2 a + p_r, 8 j + 2 u + p_c]``. The
    columns from ``n_tiles`` to ``pitch`` keep the zeros of :func:`_clear_tails`, so
    the transforms run on whole vectors."""
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    depth = 4 * channels
    zero = b_t[1, 0]
    span = _span(tiles_w, pad_left, width)
    padded = half[:span]
    for k in range(pad_left):
        padded[k] = zero
    for k in range(pad_left + width, span):
        padded[k] = zero
    plane = ALPHA * ALPHA * pitch  # one phase's patches: (a, u, t)
    for q in range(q_first, q_last):
        n = q // tiles_h
        top = (q % tiles_h) * 2 * TILE - pad_top
        first = (q - q_first) * tiles_w
        for rho in range(SPAN):
            row = top + rho
            at = 2 * (rho % 2) * plane + (rho // 2) * ALPHA * pitch + first
            if row < 0 or row >= height:
                for p_c in range(2):
                    for u in range(ALPHA):
                        for j in range(tiles_w):
                            patches[at + p_c * plane + u * pitch + j] = zero
                continue
            strips.copy_row(source, x, n, c, row, padded, pad_left)
            _deal_phases(padded, tiles_w, span, patches, at, at + plane, pitch)
    for s in range(4):
        base = s * plane
        # rows: half[a', u] = sum_a B^T[a', a] patches[a, u]; then columns into V
        for u in range(ALPHA):
            _b_transform(patches, base + u * pitch, ALPHA * pitch, half, u * pitch,
                         ALPHA * pitch, pitch, b_t)
        for a in range(ALPHA):
            _b_transform(half, a * ALPHA * pitch, pitch, v,
                         (a * ALPHA * depth + _slot(a, s) * channels + c) * pitch,
                         depth * pitch, pitch, b_t)


@kernel()
def _slot(a, s):
    """Where phase ``s = 2 p_r + p_c`` goes among V's rows of transform row ``a``: the
    phases in the order (0, 0), (1, 0), (0, 1), (1, 1), but at ``a = 4`` (the point
    infinity) (0, 0), (0, 1), (1, 0), (1, 1), so that the phases a 3-tap kernel reaches
    with both its end taps come first where the others' transforms are zero
    (:func:`_used`)."""
    return s if a == ALPHA - 1 else 2 * (s % 2) + s // 2


@kernel()
def _used(e, kh, kw, channels):
    """How many of V[e]'s first rows (C a phase, :func:`_slot`'s order) the products of
    element ``e = a * 5 + b`` need: along an axis of 3 taps, the phase of the middle tap
    has one tap, whose transform G g is zero at the point infinity (row 4 of :data:`G`),
    so at ``a = 4`` only the phases of the kernel's even rows count and at ``b = 4`` only
    those of its even columns: 4 C, 2 C or C of them (3x3 kernels: 81 C a tile instead
    of 100 C)."""
    a, b = e // ALPHA, e % ALPHA
    last = ALPHA - 1
    if a < last and b < last:
        return 4 * channels
    if a < last:
        return 2 * (kw - 2) * channels
    if b < last:
        return 2 * (kh - 2) * channels
    # (4, 4): the phases (0, 0), (0, 1) come first; a 4x3 kernel's (0, 0), (1, 0) do not
    return (kw - 2) * channels if kh == 3 else 4 * channels


@kernel()
def _clear_tails(patches, n_tiles, pitch):
    """Zeros in the columns ``n_tiles .. pitch`` of every row of the patches."""
    zero = patches[0] - patches[0]
    for r in range(4 * ALPHA * ALPHA):
        for t in range(n_tiles, pitch):
            patches[r * pitch + t] = zero


@kernel()
def _block_buffers(scratch, depth, m_rows, max_pitch):
    """One thread's scratch: V ``(25, 4 C, pitch)``, M ``(25, m_rows, pitch)``, the
    phases' patches ``(4, 25, pitch)`` and a work buffer of ``25 * pitch`` values and at
    least the zero-bordered row's."""
    e_count = ALPHA * ALPHA
    v_end = e_count * depth * max_pitch
    m_end = v_end + e_count * m_rows * max_pitch
    p_end = m_end + 4 * e_count * max_pitch
    return scratch[:v_end], scratch[v_end:m_end], scratch[m_end:p_end], scratch[p_end:]


def buffer_size(depth: int, m_rows: int, max_pitch: int, span: int) -> int:
    """Values of one thread's scratch for :func:`_block_buffers` (``span``: the
    zero-bordered row's)."""
    return ALPHA * ALPHA * (depth + m_rows + 4) * max_pitch + max(ALPHA * ALPHA * max_pitch,
                                                                  span)


@kernel(parallel=True)
def _conv2d_forward(x, packed, bias, has_bias, floor, out, pad_top, pad_left, kh, kw,
                    rows_per_block, b_t, a_t, scratch, nonfinite, part, parts):
    """out = max(floor, conv2d(x, weight, bias)) at stride 2, ``packed`` = the filter
    transform of the weight's phases (:func:`transform_filters`); see the module
    docstring. ``nonfinite[q]`` is set where tile row ``q`` has a NaN or Inf."""
    n_img, channels = x.shape[0], x.shape[1]
    depth = 4 * channels
    out_channels, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
    n_kblocks = packed.shape[2]
    m_rows = n_kblocks * BLOCK_K
    tiles_h = (out_h + TILE - 1) // TILE
    tiles_w = (out_w + TILE - 1) // TILE
    n_tile_rows = n_img * tiles_h
    lanes = simd.lanes(scratch)
    max_pitch = winograd._pitch(rows_per_block * tiles_w, lanes)
    n_chunks = scratch.shape[0]
    e_count = ALPHA * ALPHA
    target = strips.flat(out)
    source = strips.flat(x)
    zero = a_t[0, 4]
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        v, m, patches, half = _block_buffers(scratch[chunk], depth, m_rows, max_pitch)
        taps = np.empty(1, np.intp)
        # the chunk's share of the tile rows, in blocks (winograd.block_rows)
        last = (chunk + 1) * n_tile_rows // n_chunks
        for q_first in range(chunk * n_tile_rows // n_chunks, last, rows_per_block):
            q_last = min(q_first + rows_per_block, last)
            n_tiles = (q_last - q_first) * tiles_w
            pitch = winograd._pitch(n_tiles, lanes)
            _clear_tails(patches, n_tiles, pitch)
            for c in range(channels):
                _input_transform(x, source, c, q_first, q_last, tiles_h, tiles_w, pad_top,
                                 pad_left, b_t, patches, half, v, pitch)
            for e in range(e_count):
                # (one group as an int64, not a literal: products_over compiles once for
                # this kernel and winograd's)
                winograd.products_over(packed, v, m, e, np.int64(1), depth,
                                       _used(e, kh, kw, channels), n_tiles, pitch, taps)
            for k in range(out_channels):
                b_k = bias[k] if has_bias else zero
                # rows: half[a', b] = sum_a A^T[a', a] M[a, b]; then columns, with the bias
                for b in range(ALPHA):
                    _a_transform(m, (b * m_rows + k) * pitch, ALPHA * m_rows * pitch, half,
                                 b * pitch, ALPHA * pitch, pitch, a_t, zero)
                for a in range(TILE):
                    _a_transform(half, a * ALPHA * pitch, pitch, patches, a * TILE * pitch,
                                 pitch, pitch, a_t, b_k)
                winograd.store_block(patches, pitch, target, out, k, q_first, q_last, tiles_h,
                                     tiles_w, floor, TILE, nonfinite)


@kernel(parallel=True)
def _filter_transform(weight, g, packed, part, parts):
    """packed[a*5+b, 0, k // 8, (slot * C + c) * 8 + k % 8] = (G w' G^T)[a, b] for the
    phase ``w'[q_r, q_c] = w[k, c, 2 q_r + p_r, 2 q_c + p_c]`` of each filter (zero past
    the kernel and past the last filter; ``slot``: :func:`_slot` of ``a`` and the
    phase). A task takes a share of the channels; each block of 8 filters of a channel
    is first copied out filter-minor, so that the loops over the block's filters run on
    contiguous values."""
    out_channels, channels, kh, kw = weight.shape
    n_kblocks = packed.shape[2]
    zero = g[0, 0] - g[0, 0]
    for c in prange(part * channels // parts, (part + 1) * channels // parts):
        taps = np.empty((4, 4, BLOCK_K), weight.dtype)
        half = np.empty((ALPHA, 2, BLOCK_K), weight.dtype)  # G w' per phase
        for kb in range(n_kblocks):
            for r in range(4):
                for s in range(4):
                    for kk in range(BLOCK_K):
                        k = kb * BLOCK_K + kk
                        inside = r < kh and s < kw and k < out_channels
                        taps[r, s, kk] = weight[k, c, r, s] if inside else zero
            for p_r in range(2):
                for p_c in range(2):
                    for a in range(ALPHA):
                        g0, g1 = g[a, 0], g[a, 1]
                        for q_c in range(2):
                            top, bottom = taps[p_r, 2 * q_c + p_c], taps[2 + p_r, 2 * q_c + p_c]
                            for kk in range(BLOCK_K):
                                half[a, q_c, kk] = g0 * top[kk] + g1 * bottom[kk]
                    for a in range(ALPHA):
                        d = _slot(a, 2 * p_r + p_c) * channels + c
                        for b in range(ALPHA):
                            dst = packed[a * ALPHA + b, 0, kb]
                            g0, g1 = g[b, 0], g[b, 1]
                            for kk in range(BLOCK_K):
                                dst[d * BLOCK_K + kk] = g0 * half[a, 0, kk] + g1 * half[a, 1, kk]


def transform_filters(weight: np.ndarray) -> np.ndarray:
    """``U = G w' G^T`` of each filter's phases ``w'[c, p_r, p_c][q_r, q_c] = w[c, 2 q_r +
    p_r, 2 q_c + p_c]`` (zero past the kernel), packed for :func:`.winograd._products` as
    ``(25, 1, blocks, 4 C * 8)``; kept while ``weight`` holds the same bytes
    (:mod:`.prepared`)."""
    out_channels, channels = weight.shape[:2]
    shape = (ALPHA * ALPHA, 1, -(-out_channels // BLOCK_K), 4 * channels * BLOCK_K)

    def build(weight, packed):
        threads.launch(_filter_transform, threads.count(), weight, G.astype(weight.dtype),
                       packed)

    return prepared.get("winograd stride-2 filters", weight, shape, build)


def conv2d(x, weight, bias, out, stride, padding, dilation, groups, activation=None, *,
           gemm=None):
    """Host side of :func:`.winograd.conv2d_winograd` at stride 2; arguments as normalised
    by :func:`fastconv.conv2d`. A weight or bias that is not all finite, or an output
    tile row that is not, sends the call to im2col (see the module docstring)."""
    if all_finite(weight) and (bias is None or all_finite(bias)):
        packed = transform_filters(weight)
        if _conv2d(x, packed, bias, out, padding, activation, weight.shape[2:]):
            return
    im2col.conv2d_im2col(x, weight, bias, out, stride, padding, dilation, groups, activation,
                         gemm=gemm)


def _conv2d(x, packed, bias, out, padding, activation, kernel_size):
    """The Winograd call (``kernel_size``: ``(R, S)``); whether its outputs are all
    finite."""
    n_img, channels = x.shape[:2]
    out_channels, out_h, out_w = out.shape[1:]
    tiles_h, tiles_w = -(-out_h // TILE), -(-out_w // TILE)
    n_threads = threads.count()
    rows_per_block = winograd.block_rows(n_img, 4 * channels, out_channels, out_h, out_w,
                                        x.itemsize, n_threads, points=ALPHA * ALPHA,
                                        aligned=True)
    n_chunks = max(1, min(n_threads, -(-(n_img * tiles_h) // rows_per_block)))
    max_pitch = winograd._pitch(rows_per_block * tiles_w, simd.WIDTH_BYTES // x.itemsize)
    scratch = workspace.borrow(
        (n_chunks, buffer_size(4 * channels, packed.shape[2] * BLOCK_K, max_pitch,
                               _span(tiles_w, padding[1][0], x.shape[3]))),
        x.dtype)
    has_bias = bias is not None
    nonfinite = np.zeros(n_img * tiles_h, np.bool_)
    threads.launch(
        _conv2d_forward, threads.parts_for(n_chunks, out, channels * math.prod(kernel_size)), x,
        packed, bias if has_bias else np.zeros(0, x.dtype), has_bias,
        activations.floor(activation, x.dtype), out, padding[0][0], padding[1][0],
        kernel_size[0], kernel_size[1], rows_per_block, B_T.astype(x.dtype),
        A_T.astype(x.dtype), scratch, nonfinite)
    return not nonfinite.any()


# --- grad_input (conv_transpose2d) on the phases of its result ------------------------------
#
# grad_input of a stride-2 convolution, gx[u] = sum_{i, r: 2 i + r = u + pad} w[r] gy[i]
# (one axis shown), splits over the phases of gx: with u = 2 m + p, r = rho + 2 q where
# rho = (p + pad) % 2, and delta = (p + pad) // 2,
#
#     gx[2 m + p] = sum_{t < 2} h[t] gy[m + delta - 1 + t],   h[t] = w[rho + 2 - 2 t]
#
# (zero past the kernel): each phase of gx is a stride-1 2x2 correlation of gy, which
# F(4x4, 2x2) computes on the same 5x5 patches as the forward's phases (25 multiplies per
# 4x4 tile of a phase against 64 summed directly for a 4x4 kernel). The four phases'
# tiles are woven into 8x8 tiles of gx as they are stored.


@kernel()
def _grad_output_patches(grad_out, source, k, q_first, q_last, tiles_h, tiles_w, padded, span,
                         patches, pitch, zero):
    """``patches[(a * 6 + u) * pitch + t] = grad_out[n, k, 4 i - 1 + a, 4 j - 1 + u]``
    (zero outside grad_out) for ``a, u < 6`` and tile ``t = (q - q_first) * tiles_w + j``
    of each tile row ``q = n * tiles_h + i`` of the block: the 6x6 patches that hold the
    5x5 ones of all four phases. Each row is copied into the zero-bordered ``padded``
    (``span`` values, one zero first) and dealt into its six column phases
    (:func:`.winograd._deal_tiles`)."""
    out_h, out_w = grad_out.shape[2], grad_out.shape[3]
    padded[0] = zero
    for j in range(1 + out_w, span):
        padded[j] = zero
    for q in range(q_first, q_last):
        n = q // tiles_h
        top = (q % tiles_h) * TILE - 1
        first = (q - q_first) * tiles_w
        for a in range(ALPHA + 1):
            row, at = top + a, a * (ALPHA + 1) * pitch + first
            if row < 0 or row >= out_h:
                for u in range(ALPHA + 1):
                    for j in range(tiles_w):
                        patches[at + u * pitch + j] = zero
                continue
            strips.copy_row(source, grad_out, n, k, row, padded, 1)
            winograd._deal_tiles(padded, np.int64(0), tiles_w, span, patches, at, pitch, 4)
            winograd._deal_tiles(padded, np.int64(TILE), tiles_w, span - TILE, patches,
                                 at + 4 * pitch, pitch, 2)


@kernel()
def _woven_row(y, at, step, count, target, dst):
    """``target[dst + 8 j + b] = y[at + b * step + j]`` for ``b < 8``, ``j < count``: three
    rounds of :func:`.simd.weave`, ``8 * lanes`` values at a time; returns their sum (NaN or
    +-Inf where any value is)."""
    lanes = simd.lanes(y)
    sums = simd.zeros(y)
    for j in range(0, count, lanes):
        m = min(lanes, count - j)
        left, at_j, i = 8 * m, dst + 8 * j, at + j
        u0, u1 = simd.load_first(y, i, m), simd.load_first(y, i + step, m)
        u2, u3 = simd.load_first(y, i + 2 * step, m), simd.load_first(y, i + 3 * step, m)
        u4, u5 = simd.load_first(y, i + 4 * step, m), simd.load_first(y, i + 5 * step, m)
        u6, u7 = simd.load_first(y, i + 6 * step, m), simd.load_first(y, i + 7 * step, m)
        sums = simd.add(sums, simd.add(simd.add(simd.add(u0, u1), simd.add(u2, u3)),
                                       simd.add(simd.add(u4, u5), simd.add(u6, u7))))
        # columns b and b + 4, then b, b + 2, b + 4, b + 6, then all eight in order
        e0, e1 = simd.weave(u0, u4, False), simd.weave(u1, u5, False)
        e2, e3 = simd.weave(u2, u6, False), simd.weave(u3, u7, False)
        f0, f1 = simd.weave(e0, e2, False), simd.weave(e1, e3, False)
        simd.store_first(target, at_j, simd.weave(f0, f1, False), left)
        simd.store_first(target, at_j + lanes, simd.weave(f0, f1, True), left - lanes)
        f0, f1 = simd.weave(e0, e2, True), simd.weave(e1, e3, True)
        simd.store_first(target, at_j + 2 * lanes, simd.weave(f0, f1, False), left - 2 * lanes)
        simd.store_first(target, at_j + 3 * lanes, simd.weave(f0, f1, True), left - 3 * lanes)
        e0, e1 = simd.weave(u0, u4, True), simd.weave(u1, u5, True)
        e2, e3 = simd.weave(u2, u6, True), simd.weave(u3, u7, True)
        f0, f1 = simd.weave(e0, e2, False), simd.weave(e1, e3, False)
        simd.store_first(target, at_j + 4 * lanes, simd.weave(f0, f1, False), left - 4 * lanes)
        simd.store_first(target, at_j + 5 * lanes, simd.weave(f0, f1, True), left - 5 * lanes)
        f0, f1 = simd.weave(e0, e2, True), simd.weave(e1, e3, True)
        simd.store_first(target, at_j + 6 * lanes, simd.weave(f0, f1, False), left - 6 * lanes)
        simd.store_first(target, at_j + 7 * lanes, simd.weave(f0, f1, True), left - 7 * lanes)
    return simd.total(sums)


@kernel(counted=False)
def _store_woven_block(y, step, target, out, c, q_first, q_last, tiles_h, tiles_w, nonfinite):
    """``out[n, c, 8 i + a, 8 j + b] = y[(8 a + b) * step + t]`` for tile ``t = (q - q_first)
    * tiles_w + j`` of each tile row ``q = n * tiles_h + i`` of the block, inside ``out``
    (C-contiguous; ``target``: its :func:`.strips.flat`); ``nonfinite[q]`` set where tile
    row ``q``'s values are not all finite."""
    out_h, out_w = out.shape[2], out.shape[3]
    full = out_w // (2 * TILE)
    for q in range(q_first, q_last):
        n, top = q // tiles_h, (q % tiles_h) * 2 * TILE
        first = (q - q_first) * tiles_w
        total = 0.0
        for a in range(min(2 * TILE, out_h - top)):
            at = a * 2 * TILE * step + first
            dst = strips.row_start(out, n, c, top + a)
            total += _woven_row(y, at, step, full, target, dst)
            for b in range(out_w - 2 * TILE * full):
                value = y[at + b * step + full]
                target[dst + 2 * TILE * full + b] = value
                total += value
        if not math.isfinite(total):
            nonfinite[q] = True


@kernel(entry=True)
def _grad_output_span(tiles_w, width):
    """Values of grad_input's zero-bordered row of grad_output: one zero, the row, and the
    six column phases of every tile."""
    return max(TILE * tiles_w + 2, 1 + width)


#: Rows of ``max_pitch`` values in one thread's work buffers after V and M
#: (:func:`_grad_input_buffers`): the 6x6 patches, the two row passes (5 x 6 each) and
#: the 8x8 tile of the output transform.
_PATCH_ROWS, _HALF_ROWS, _TILE_ROWS = 36, 60, 4 * TILE * TILE


@kernel()
def _grad_input_buffers(scratch, depth, m_rows, max_pitch, span):
    """One thread's scratch: the four phases' V ``(4, 25, K, pitch)`` and M ``(4, 25,
    m_rows, pitch)``, the patches, the row passes, the 8x8 tile buffer and the
    zero-bordered row (:func:`grad_input_buffer_size` values)."""
    e_count = ALPHA * ALPHA
    v_end = 4 * e_count * depth * max_pitch
    m_end = v_end + 4 * e_count * m_rows * max_pitch
    p_end = m_end + _PATCH_ROWS * max_pitch
    h_end = p_end + _HALF_ROWS * max_pitch
    t_end = h_end + _TILE_ROWS * max_pitch
    return (scratch[:v_end], scratch[v_end:m_end], scratch[m_end:p_end], scratch[p_end:h_end],
            scratch[h_end:t_end], scratch[t_end : t_end + span])


@kernel(parallel=True)
def _conv2d_grad_input(grad_out, packed, bias, has_bias, grad_in, pad_top, pad_left, kh, kw,
                       rows_per_block, b_t, a_t, scratch, nonfinite, part, parts):
    """grad_in (+ ``bias``) of a stride-2 convolution with a kernel of at most 4x4 and
    padding of at most 1 at the top and left, on the phases of grad_in (see above):
    ``packed[s]`` the filter transform of phase ``s = 2 p_r + p_c``
    (:func:`transform_phase_filters`). Per block of tile rows (8x8 tiles of grad_in, 4x4
    of each phase): each channel of grad_out's 6x6 patches, cut into the four phases'
    5x5 ones and transformed into their V ``(25, K, pitch)``; each phase's products into
    its M ``(25, C rows, pitch)``; then per channel the four phases' output transforms
    into one 8x8 tile buffer, stored woven."""
    n_img, depth = grad_out.shape[0], grad_out.shape[1]
    channels, height, width = grad_in.shape[1], grad_in.shape[2], grad_in.shape[3]
    m_rows = packed.shape[3] * BLOCK_K
    tiles_h = (height + 2 * TILE - 1) // (2 * TILE)
    tiles_w = (width + 2 * TILE - 1) // (2 * TILE)
    n_tile_rows = n_img * tiles_h
    lanes = simd.lanes(scratch)
    max_pitch = winograd._pitch(rows_per_block * tiles_w, lanes)
    n_chunks = scratch.shape[0]
    e_count = ALPHA * ALPHA
    target = strips.flat(grad_in)
    source = strips.flat(grad_out)
    zero = a_t[0, 4]
    span = _grad_output_span(tiles_w, grad_out.shape[3])
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        v, m, patches, half, tile, padded = _grad_input_buffers(scratch[chunk], depth, m_rows,
                                                                max_pitch, span)
        taps = np.empty(1, np.intp)
        last = (chunk + 1) * n_tile_rows // n_chunks
        for q_first in range(chunk * n_tile_rows // n_chunks, last, rows_per_block):
            q_last = min(q_first + rows_per_block, last)
            n_tiles = (q_last - q_first) * tiles_w
            pitch = winograd._pitch(n_tiles, lanes)
            for r in range(_PATCH_ROWS):  # zeros past the tiles: the transforms read them
                for t in range(n_tiles, pitch):
                    patches[r * pitch + t] = zero
            for k in range(depth):
                # the 6x6 patches from row and column -1 of each tile's; phase (p_r, p_c)'s
                # 5x5 ones (p + pad) // 2 rows and columns on
                _grad_output_patches(grad_out, source, k, q_first, q_last, tiles_h, tiles_w,
                                     padded, span, patches, pitch, zero)
                for o_r in range(2):
                    for u in range(ALPHA + 1):
                        _b_transform(patches, (o_r * (ALPHA + 1) + u) * pitch,
                                     (ALPHA + 1) * pitch, half,
                                     (o_r * ALPHA * (ALPHA + 1) + u) * pitch,
                                     (ALPHA + 1) * pitch, pitch, b_t)
                for s in range(4):
                    o_r, o_c = (s // 2 + pad_top) // 2, (s % 2 + pad_left) // 2
                    for a in range(ALPHA):
                        _b_transform(half, ((o_r * ALPHA + a) * (ALPHA + 1) + o_c) * pitch,
                                     pitch, v, ((s * e_count + a * ALPHA) * depth + k) * pitch,
                                     depth * pitch, pitch, b_t)
            for s in range(4):
                v_s = v[s * e_count * depth * pitch :]
                m_s = m[s * e_count * m_rows * pitch :]
                # a phase with one tap along an axis (a 3-tap axis's, where rho = 1): its
                # filters' transform is zero at the point 0 there (row 0 of G), and so are
                # its products
                one_r = kh == 3 and (s // 2 + pad_top) % 2 == 1
                one_c = kw == 3 and (s % 2 + pad_left) % 2 == 1
                for e in range(e_count):
                    if (one_r and e < ALPHA) or (one_c and e % ALPHA == 0):
                        m_s[e * m_rows * pitch : (e + 1) * m_rows * pitch] = zero
                    else:
                        winograd.products_over(packed[s], v_s, m_s, e, np.int64(1), depth,
                                               depth, n_tiles, pitch, taps)
            for c in range(channels):
                b_c = bias[c] if has_bias else zero
                for s in range(4):
                    p_r, p_c = s // 2, s % 2
                    base = s * e_count * m_rows * pitch
                    # rows: half[a', b] = sum_a A^T[a', a] M[a, b]; columns into the 8x8
                    # tile: phase (p_r, p_c)'s (a, b) at (2 a + p_r, 2 b + p_c)
                    for b in range(ALPHA):
                        _a_transform(m, base + (b * m_rows + c) * pitch,
                                     ALPHA * m_rows * pitch, half, b * pitch, ALPHA * pitch,
                                     pitch, a_t, zero)
                    for a in range(TILE):
                        _a_transform(half, a * ALPHA * pitch, pitch, tile,
                                     ((2 * a + p_r) * 2 * TILE + p_c) * pitch, 2 * pitch,
                                     pitch, a_t, b_c)
                _store_woven_block(tile, pitch, target, grad_in, c, q_first, q_last, tiles_h,
                                   tiles_w, nonfinite)


@kernel(parallel=True)
def _phase_filter_transform(weight, g, pad_top, pad_left, packed, part, parts):
    """packed[s, a*5+b, 0, c // 8, k * 8 + c % 8] = (G h G^T)[a, b] for phase ``s = 2 p_r +
    p_c`` of grad_input, ``h[t_r, t_c] = w[k, c, rho_r + 2 - 2 t_r, rho_c + 2 - 2 t_c]``
    with ``rho = (p + pad) % 2`` (zero past the kernel and past the last channel). A
    task takes a share of grad_out's channels ``k``."""
    depth, channels, kh, kw = weight.shape
    n_cblocks = packed.shape[3]
    zero = g[0, 0] - g[0, 0]
    for k in prange(part * depth // parts, (part + 1) * depth // parts):
        h = np.empty((2, 2), weight.dtype)
        half = np.empty((ALPHA, 2), weight.dtype)
        for s in range(4):
            rho_r, rho_c = (s // 2 + pad_top) % 2, (s % 2 + pad_left) % 2
            for c in range(n_cblocks * BLOCK_K):
                for t_r in range(2):
                    for t_c in range(2):
                        r, q = rho_r + 2 - 2 * t_r, rho_c + 2 - 2 * t_c
                        h[t_r, t_c] = weight[k, c, r, q] if (
                            c < channels and r < kh and q < kw) else zero
                for a in range(ALPHA):
                    for t_c in range(2):
                        half[a, t_c] = g[a, 0] * h[0, t_c] + g[a, 1] * h[1, t_c]
                for a in range(ALPHA):
                    for b in range(ALPHA):
                        packed[s, a * ALPHA + b, 0, c // BLOCK_K, k * BLOCK_K + c % BLOCK_K] = (
                            g[b, 0] * half[a, 0] + g[b, 1] * half[a, 1])


def transform_phase_filters(weight: np.ndarray, padding) -> np.ndarray:
    """The filter transform of grad_input's four phases (:func:`_phase_filter_transform`),
    ``(4, 25, 1, blocks of 8 channels, K * 8)``; kept while ``weight`` holds the same bytes
    (:mod:`.prepared`), one per parity of the top and left padding."""
    depth, channels = weight.shape[:2]
    pad_top, pad_left = padding[0][0], padding[1][0]
    shape = (4, ALPHA * ALPHA, 1, -(-channels // BLOCK_K), depth * BLOCK_K)

    def build(weight, packed):
        threads.launch(_phase_filter_transform, threads.count(), weight,
                       G.astype(weight.dtype), pad_top % 2, pad_left % 2, packed)

    return prepared.get(f"winograd stride-2 grad_input filters {pad_top % 2}{pad_left % 2}",
                        weight, shape, build)


def unsupported_grad_input(*, weight_shape, stride, padding, dilation, groups=1,
                           **_) -> str | None:
    """Why grad_input cannot run on Winograd F(4x4, 2x2) on the phases of its result, or
    None if it can."""
    reason = unsupported(weight_shape=weight_shape, stride=stride, dilation=dilation,
                         groups=groups)
    if reason is None and max(padding[0][0], padding[1][0]) > 1:
        reason = (f"winograd at stride 2 needs a top and left padding of at most 1 for "
                  f"grad_input, got {padding}")
    return reason


def conv2d_grad_input(grad_out, weight, grad_in, stride, padding, dilation, groups, *,
                      gemm=None, bias=None):
    """Host side of grad_input (+ ``bias``, conv_transpose2d's) at stride 2 on its phases;
    a weight or bias that is not all finite, or a result with a NaN or Inf, is computed
    (again) by im2col's grad_input, whose results keep the exact sum's NaN and Inf."""
    if all_finite(weight) and (bias is None or all_finite(bias)):
        packed = transform_phase_filters(weight, padding)
        target = grad_in if grad_in.flags.c_contiguous else np.empty(grad_in.shape,
                                                                     grad_in.dtype)
        if _grad_input(np.ascontiguousarray(grad_out), packed, bias, target, padding,
                       weight.shape[2:]):
            if target is not grad_in:
                grad_in[...] = target
            return
    im2col.conv2d_grad_input_im2col(grad_out, weight, grad_in, stride, padding, dilation,
                                    groups, gemm=gemm)
    if bias is not None:
        grad_in += bias[:, None, None]


def grad_input_buffer_size(depth: int, m_rows: int, max_pitch: int, span: int) -> int:
    """Values of one thread's scratch for :func:`_grad_input_buffers`."""
    return ((4 * ALPHA * ALPHA * (depth + m_rows) + _PATCH_ROWS + _HALF_ROWS + _TILE_ROWS)
            * max_pitch + span)


def _grad_input(grad_out, packed, bias, grad_in, padding, kernel_size):
    """The Winograd call (``kernel_size``: ``(R, S)``); whether its results are all
    finite."""
    n_img, depth = grad_out.shape[:2]
    channels, height, width = grad_in.shape[1:]
    tiles_h, tiles_w = -(-height // (2 * TILE)), -(-width // (2 * TILE))
    n_threads = threads.count()
    m_rows = packed.shape[3] * BLOCK_K
    rows_per_block = winograd.block_rows(n_img, depth, 4 * m_rows, -(-height // 2),
                                        -(-width // 2), grad_out.itemsize, n_threads,
                                        points=ALPHA * ALPHA, aligned=True)
    n_chunks = max(1, min(n_threads, -(-(n_img * tiles_h) // rows_per_block)))
    max_pitch = winograd._pitch(rows_per_block * tiles_w, simd.WIDTH_BYTES // grad_out.itemsize)
    span = _grad_output_span(tiles_w, grad_out.shape[3])
    scratch = workspace.borrow(
        (n_chunks, grad_input_buffer_size(depth, m_rows, max_pitch, span)), grad_out.dtype)
    has_bias = bias is not None
    nonfinite = np.zeros(n_img * tiles_h, np.bool_)
    threads.launch(
        _conv2d_grad_input, threads.parts_for(n_chunks, grad_in, depth * 4), grad_out, packed,
        bias if has_bias else np.zeros(0, grad_out.dtype), has_bias, grad_in, padding[0][0],
        padding[1][0], kernel_size[0], kernel_size[1], rows_per_block,
        B_T.astype(grad_out.dtype), A_T.astype(grad_out.dtype), scratch, nonfinite)
    return not nonfinite.any()
