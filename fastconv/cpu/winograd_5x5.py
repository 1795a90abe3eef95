"""Winograd F(2x2, 5x5): 5x5, stride-1 convolution and its grad_input with 9
instead of 25 multiplies per output and input channel (2.78x fewer).

Each 2x2 output tile reads a 6x6 input patch ``d``; with the filter ``g``,
``y = A^T [(G g G^T) * (B^T d B)] A``. The six interpolation points are
:mod:`.winograd`'s (0, 1, -1, 1/2, -2 and infinity), so ``B^T`` and its
transform (:func:`.winograd._b_transform`) are that module's; only ``G`` (6x5)
and ``A^T`` (2x6) are this one's. Summed over input channels, each of the 36
element positions is one matrix product of the transformed filters by the
transformed patches, run on the register-tiled micro-kernels
(:func:`.winograd._products`) with the filters transformed and packed once per
weight (:func:`.winograd.transform_filters`, kept while the weight holds the same
bytes). One parallel task takes a block of tile rows, as in :mod:`.winograd`:
each input row of a tile row is copied into a zero-bordered row and dealt into
the six column phases of its tiles (tile ``j`` reads columns ``2 j .. 2 j + 5``:
one round of :func:`.simd.deinterleave` at three offsets), transformed, multiplied
and transformed back, and each output row woven from its two column phases
(:func:`.simd.weave`).

grad_input is the convolution of grad_output with the flipped, transposed weight
(:mod:`.identities`), a 5x5 stride-1 convolution too.

Rounding: float32 results differ from the exact sum by 1.1e-6 of the output's rms
and 7.9e-6 of it at most on a C32 -> 48 layer (N32, 14x14), against 4.8e-7 and 5.7e-6
for the direct kernel and 3.4e-7 and 3.9e-6 for PyTorch (``benchmarks/RESULTS.md``,
"5x5 layers by Winograd F(2x2, 5x5)"): about 3x PyTorch's rms, F(4x4, 3x3)'s 6x.

Non-finite values: a weight or bias that is not all finite, or an output tile row
that is not (checked as the tiles are stored), sends the whole call to im2col,
whose results keep the exact sum's pattern of NaN and Inf (the transforms would
spread a NaN over whole tiles).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .. import activations
from . import identities, im2col, simd, strips, threads, winograd, workspace
from ._jit import kernel
from .finite import all_finite
from .microkernels import BLOCK_K

TILE = 2
ALPHA = winograd.ALPHA  # 6
B_T = winograd.B_T
#: G of F(2, 5) on the points 0, 1, -1, 1/2, -2 and infinity: with :data:`B_T` and
#: :data:`A_T`, ``y = A^T [(G g) * (B^T d)]`` is the correlation of d (6 values) with g (5).
G = np.array([
    [1, 0, 0, 0, 0],
    [1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3],
    [-1 / 3, 1 / 3, -1 / 3, 1 / 3, -1 / 3],
    [-16 / 15, -8 / 15, -4 / 15, -2 / 15, -1 / 15],
    [1 / 15, -2 / 15, 4 / 15, -8 / 15, 16 / 15],
    [0, 0, 0, 0, 1],
], dtype=np.float64)
A_T = np.array([
    [1, 1, 1, 1, 1, 0],
    [0, 1, -1, 1 / 2, -2, 1],
], dtype=np.float64)


def unsupported(*, weight_shape, stride, dilation, **_) -> str | None:
    """Why F(2x2, 5x5) cannot compute this conv2d, or None if it can."""
    if weight_shape[2:] != (5, 5) or stride != (1, 1) or dilation != (1, 1):
        return (f"winograd F(2x2, 5x5) needs a 5x5 kernel, stride 1 and dilation 1; got "
                f"kernel {tuple(weight_shape[2:])}, stride {stride}, dilation {dilation}")
    return None


def unsupported_grad_input(*, weight_shape, stride, padding, dilation, **_) -> str | None:
    """Why grad_input cannot be the F(2x2, 5x5) convolution of grad_output, or None."""
    reason = unsupported(weight_shape=weight_shape, stride=stride, dilation=dilation)
    if reason is None and max(max(p) for p in padding) > 4:
        reason = f"winograd needs padding <= 4 for a 5x5 grad_input, got {padding}"
    return reason


@kernel()
def _a_transform(src, at, step, dst, dst_at, dst_step, n, a_t, offset):
    """``o = A^T i + offset``: two vectors from six, of length ``n`` (a whole number of
    :mod:`.simd` vectors; ``i_r = src[at + r * step :]``, ``o_r = dst[dst_at + r *
    dst_step :]``). The coefficients are read from ``a_t``, in the data's dtype."""
    lanes = simd.lanes(src)
    v_half, v_minus_two = simd.splat(a_t[1, 3], src), simd.splat(a_t[1, 4], src)
    v_offset = simd.splat(offset, src)
    for t in range(0, n, lanes):
        i, o = at + t, dst_at + t
        a0, a1, a2 = simd.load(src, i), simd.load(src, i + step), simd.load(src, i + 2 * step)
        a3, a4 = simd.load(src, i + 3 * step), simd.load(src, i + 4 * step)
        a5 = simd.load(src, i + 5 * step)
        plus12, minus12 = simd.add(a1, a2), simd.sub(a1, a2)
        simd.store(dst, o, simd.add(simd.add(a0, plus12), simd.add(simd.add(a3, a4), v_offset)))
        simd.store(dst, o + dst_step, simd.fma(v_minus_two, a4, simd.fma(
            v_half, a3, simd.add(simd.add(minus12, a5), v_offset))))


@kernel(entry=True)
def _span(tiles_w, pad_left, width):
    """Values of the zero-bordered row: every tile's six columns, and the whole row."""
    return max(TILE * tiles_w + 4, pad_left + width)


@kernel()
def _deal_pairs(padded, shift, count, available, out, first, step):
    """``out[first + j] = padded[shift + 2 j]`` and ``out[first + step + j] = padded[shift +
    2 j + 1]`` for ``j < count``: two column phases of a zero-bordered row, ``2 * lanes``
    values at a time by one round of :func:`.simd.deinterleave` (``available`` values of
    ``padded`` may be read)."""
    lanes = simd.lanes(padded)
    for j in range(0, count, lanes):
        base, left, n = shift + 2 * j, available - shift - 2 * j, min(lanes, count - j)
        v0 = simd.load_first(padded, base, left)
        v1 = simd.load_first(padded, base + lanes, left - lanes)
        simd.store_first(out, first + j, simd.deinterleave(v0, v1, False), n)
        simd.store_first(out, first + step + j, simd.deinterleave(v0, v1, True), n)


@kernel(entry=True)
def _rows_plane(rows_per_block, tiles_h, tiles_w, lanes):
    """Values of one plane of the dealt rows (:func:`_input_transform`): a block's tiles,
    two more tile rows for each image it reaches into, and a vector of slack for the
    transform's last vector."""
    segments = (rows_per_block + tiles_h - 1) // tiles_h + 1
    return winograd._pitch(rows_per_block * tiles_w + 2 * tiles_w * segments + lanes, lanes)


@kernel()
def _input_transform(x, source, c, q_first, q_last, tiles_h, tiles_w, pad_top, pad_left, b_t,
                     padded, rows, plane, half, half_pitch, v, pitch):
    """V[a*6+b, c, t] = (B^T d B)[a, b] for the 6x6 input patch d of each tile t of the
    tile rows ``q_first <= q < q_last`` (V laid out ``(36, C, pitch)`` in ``v``).

    Each input row a block reads is copied once into the zero-bordered ``padded`` and
    dealt into the six column phases of its tiles, ``rows[(2 u + p) * plane + base + rho
    * tiles_w + j] = x_padded[2 (i0 + rho) + p, 2 j + u]`` for the block's run of tile
    rows ``i0 ..`` of one image (``base``: the run's first tile plus two tile rows per run
    before it). Input row ``a`` of tile ``t`` of the run is then row ``rho = t // tiles_w
    + a // 2`` of plane ``a % 2``: at a fixed offset from ``t``, so that B^T along the
    rows (into ``half``, rows ``half_pitch`` apart) runs on whole vectors of the run's
    tiles, then B^T along the columns on the block's."""
    height, width = x.shape[2], x.shape[3]
    channels = x.shape[1]
    lanes = simd.lanes(padded)
    zero = b_t[1, 0]
    span = padded.size
    for k in range(pad_left):
        padded[k] = zero
    for k in range(pad_left + width, span):
        padded[k] = zero
    q, first, run = q_first, 0, 0
    while q < q_last:
        n, i0 = q // tiles_h, q % tiles_h
        n_rows = min(tiles_h - i0, q_last - q)
        base = first + 2 * run * tiles_w
        top = i0 * TILE - pad_top
        for rho in range(2 * n_rows + ALPHA - TILE):
            row = top + rho
            at = (rho % 2) * plane + base + (rho // 2) * tiles_w
            if row < 0 or row >= height:
                for u in range(ALPHA):
                    for j in range(tiles_w):
                        rows[at + 2 * u * plane + j] = zero
                continue
            strips.copy_row(source, x, n, c, row, padded, pad_left)
            # phases 2 u and 2 u + 1 are phases 0 and 1 of the row 2 u columns on
            for u in range(0, ALPHA, 2):
                _deal_pairs(padded, u, tiles_w, span, rows, at + 2 * u * plane, 2 * plane)
        # rows: half[a', u] = sum_a B^T[a', a] d[a, u] for the run's tiles (whole vectors:
        # the last one's extra values land where the next run's go, or past the block's)
        count = (n_rows * tiles_w + lanes - 1) // lanes * lanes
        for u in range(ALPHA):
            winograd.b_transform_pairs(rows, 2 * u * plane + base, plane, tiles_w, half,
                                       u * half_pitch + first, ALPHA * half_pitch, count, b_t)
        q += n_rows
        first += n_rows * tiles_w
        run += 1
    # columns into V
    for a in range(ALPHA):
        winograd._b_transform(half, a * ALPHA * half_pitch, half_pitch, v,
                              (a * ALPHA * channels + c) * pitch, channels * pitch, pitch, b_t)


@kernel()
def _block_buffers(scratch, channels, m_rows, max_pitch, plane, span):
    """One thread's scratch: V ``(36, C, pitch)``, M ``(36, m_rows, pitch)``, the dealt rows
    ``(12, plane)``, the rows' transforms ``(36, pitch + lanes)`` and the zero-bordered
    row (``span`` values)."""
    e_count = ALPHA * ALPHA
    lanes = simd.lanes(scratch)
    v_end = e_count * channels * max_pitch
    m_end = v_end + e_count * m_rows * max_pitch
    r_end = m_end + 2 * ALPHA * plane
    h_end = r_end + e_count * (max_pitch + lanes)
    return (scratch[:v_end], scratch[v_end:m_end], scratch[m_end:r_end], scratch[r_end:h_end],
            scratch[h_end : h_end + span])


def buffer_size(channels: int, m_rows: int, max_pitch: int, plane: int, span: int,
                lanes: int) -> int:
    """Values of one thread's scratch for :func:`_block_buffers`."""
    return (ALPHA * ALPHA * ((channels + m_rows) * max_pitch + max_pitch + lanes)
            + 2 * ALPHA * plane + span)


@kernel(parallel=True)
def _conv2d_forward(x, packed, bias, has_bias, floor, out, pad_top, pad_left, groups,
                    rows_per_block, b_t, a_t, scratch, nonfinite, part, parts):
    """out = max(floor, conv2d(x, weight, bias)) for a 5x5 stride-1 kernel, ``packed`` =
    its filter transform (:func:`.winograd.transform_filters` with :data:`G`); see the
    module docstring. ``nonfinite[q]`` is set where tile row ``q`` has a NaN or Inf."""
    n_img, channels = x.shape[0], x.shape[1]
    out_channels, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
    group_channels = channels // groups
    per_group = out_channels // groups
    n_kblocks = packed.shape[2]
    m_rows = groups * n_kblocks * BLOCK_K
    tiles_h = (out_h + TILE - 1) // TILE
    tiles_w = (out_w + TILE - 1) // TILE
    n_tile_rows = n_img * tiles_h
    lanes = simd.lanes(scratch)
    max_pitch = winograd._pitch(rows_per_block * tiles_w, lanes)
    n_chunks = scratch.shape[0]
    e_count = ALPHA * ALPHA
    target = strips.flat(out)
    source = strips.flat(x)
    zero = a_t[0, 5]
    plane = _rows_plane(rows_per_block, tiles_h, tiles_w, lanes)
    span = _span(tiles_w, pad_left, x.shape[3])
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        v, m, rows, half, padded = _block_buffers(scratch[chunk], channels, m_rows, max_pitch,
                                                  plane, span)
        taps = np.empty(1, np.intp)
        # the chunk's share of the tile rows, in blocks (winograd.block_rows)
        last = (chunk + 1) * n_tile_rows // n_chunks
        for q_first in range(chunk * n_tile_rows // n_chunks, last, rows_per_block):
            q_last = min(q_first + rows_per_block, last)
            n_tiles = (q_last - q_first) * tiles_w
            pitch = winograd._pitch(n_tiles, lanes)
            for c in range(channels):
                _input_transform(x, source, c, q_first, q_last, tiles_h, tiles_w, pad_top,
                                 pad_left, b_t, padded, rows, plane, half, pitch + lanes, v,
                                 pitch)
            for e in range(e_count):
                winograd._products(packed, v, m, e, groups, group_channels, n_tiles, pitch,
                                   taps)
            for k in range(out_channels):
                b_k = bias[k] if has_bias else zero
                row_k = (k // per_group) * n_kblocks * BLOCK_K + k % per_group
                # rows: half[a', b] = sum_a A^T[a', a] M[a, b]; then columns, with the bias
                for b in range(ALPHA):
                    _a_transform(m, (b * m_rows + row_k) * pitch, ALPHA * m_rows * pitch, half,
                                 b * pitch, ALPHA * pitch, pitch, a_t, zero)
                for a in range(TILE):
                    _a_transform(half, a * ALPHA * pitch, pitch, rows, a * TILE * pitch,
                                 pitch, pitch, a_t, b_k)
                winograd.store_block(rows, pitch, target, out, k, q_first, q_last, tiles_h,
                                     tiles_w, floor, TILE, nonfinite)


def transform_filters(weight: np.ndarray, groups: int, flipped: bool = False) -> np.ndarray:
    """:func:`.winograd.transform_filters` with this module's :data:`G`."""
    return winograd.transform_filters(weight, groups, flipped, g=G, kind="winograd 5x5")


def conv2d(x, weight, bias, out, stride, padding, dilation, groups, activation=None, *,
           gemm=None):
    """Host side of :func:`.winograd.conv2d_winograd` for 5x5 kernels; arguments as
    normalised by :func:`fastconv.conv2d`. A weight or bias that is not all finite, or an
    output tile row that is not, sends the call to im2col (see the module docstring)."""
    if all_finite(weight) and (bias is None or all_finite(bias)):
        if _conv2d(x, transform_filters(weight, groups), bias, out, padding, groups,
                   activation):
            return
    im2col.conv2d_im2col(x, weight, bias, out, stride, padding, dilation, groups, activation,
                         gemm=gemm)


def conv2d_grad_input(grad_out, weight, grad_in, stride, padding, dilation, groups, *,
                      gemm=None):
    """Host side of :func:`.winograd.conv2d_grad_input_winograd` for 5x5 kernels:
    grad_in = conv2d(grad_out, flipped and transposed weight), by F(2x2, 5x5); a weight
    that is not all finite, or a result that is not, by im2col's grad_input."""
    if all_finite(weight):
        conv_pads = identities.grad_input_as_conv_padding(
            grad_in.shape[2:], grad_out.shape[2:], weight.shape[2:], stride, padding, dilation)
        if _conv2d(grad_out, transform_filters(weight, groups, flipped=True), None, grad_in,
                   conv_pads, groups):
            return
    im2col.conv2d_grad_input_im2col(grad_out, weight, grad_in, stride, padding, dilation,
                                    groups, gemm=gemm)


def _conv2d(x, packed, bias, out, padding, groups, activation=None):
    """The Winograd call; whether its outputs are all finite."""
    n_img, channels = x.shape[:2]
    out_channels, out_h, out_w = out.shape[1:]
    tiles_h, tiles_w = -(-out_h // TILE), -(-out_w // TILE)
    n_threads = threads.count()
    rows_per_block = winograd.block_rows(n_img, channels, out_channels, out_h, out_w,
                                        x.itemsize, n_threads, tile=TILE, aligned=True)
    n_chunks = max(1, min(n_threads, -(-(n_img * tiles_h) // rows_per_block)))
    max_pitch = winograd._pitch(rows_per_block * tiles_w, simd.WIDTH_BYTES // x.itemsize)
    m_rows = groups * packed.shape[2] * BLOCK_K
    lanes = simd.WIDTH_BYTES // x.itemsize
    scratch = workspace.borrow(
        (n_chunks, buffer_size(channels, m_rows, max_pitch,
                               _rows_plane(rows_per_block, tiles_h, tiles_w, lanes),
                               _span(tiles_w, padding[1][0], x.shape[3]), lanes)),
        x.dtype)
    has_bias = bias is not None
    nonfinite = np.zeros(n_img * tiles_h, np.bool_)
    threads.launch(
        _conv2d_forward, threads.parts_for(n_chunks, out, channels // groups * 25), x, packed,
        bias if has_bias else np.zeros(0, x.dtype), has_bias,
        activations.floor(activation, x.dtype), out, padding[0][0], padding[1][0], groups,
        rows_per_block, B_T.astype(x.dtype), A_T.astype(x.dtype), scratch, nonfinite)
    return not nonfinite.any()
