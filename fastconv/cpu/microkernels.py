"""Register-tiled micro-kernels on :mod:`.simd` vectors.

A micro-kernel keeps a block of output sums in vector registers for a whole
reduction and touches memory only to read its operands and, once, to store the
block, which is what lets a convolution run at the machine's multiply-add peak
instead of at the speed of the loads and stores of an accumulator array.

:func:`weights_x_positions` is the block of :data:`BLOCK_K` output channels by
:data:`BLOCK_P` vectors of consecutive output positions (``BLOCK_P * lanes``
positions, 48 in float32): per reduction step it loads three vectors of input,
broadcasts eight weights and issues 24 fused multiply-adds, so 24 of the 32
AVX-512 registers hold sums and no step waits on another's result. On this
project's AVX-512 machines it runs at about one core's peak from L1 (see
benchmarks/RESULTS.md). On a CPU without AVX-512 the vectors are 256 bits
(:mod:`.simd`) and 24 sums do not fit in AVX2's 16 registers: there
``weights_x_positions`` is two blocks of four filters x three vectors
(:func:`_half_x_positions`: 12 sums, three loads and four broadcasts per step, and a
prefetch of the tap's line two blocks on, :data:`PREFETCH_BLOCKS`; inlined into
:func:`weights_x_run`, see :func:`_halves_x_positions`), and
``taps_x_filters`` two blocks of six taps (94-98 % and 91-94 % of a Zen 2 core's
peak, against 57 % and 31 % for the blocks of 24 on 512-bit vectors, which spill).
:func:`weights_x_pair` and :func:`weights_x_vector` are the same block two and one
vector wide, for the last positions of a plane (two one-vector calls are bound by
their broadcasts: one load and eight broadcasts per eight multiply-adds). Each can
start from the sums already stored (``accumulate``): :func:`weights_x_run` runs a
reduction over many planes in passes of a few planes over all the positions.

:func:`taps_x_filters` is the weight gradient's block, the other way round:
the output gradient packed position-major so that a vector holds 32 filters
(float32; 16 in float64) of one position, and each input value (one of 12
taps, each at its own offset from the position, so any stride or dilation has
its taps in full tiles) broadcast against it. Per position: 2 loads, 12
broadcasts and 24 multiply-adds into 24 registers, summed over every position
of the images and stored once. :func:`taps_x_vector` is the same one vector of
filters wide, for layers of at most 16 filters per group.

:func:`positions_x_filters` is the forward by filters: on 512-bit vectors a vector
of filters (16 in float32) loaded per reduction step and 12 input values broadcast
against it, one for each of 12 output positions at offsets of their own; on 256-bit
vectors three input values broadcast and four vectors of filters (32 in float32)
loaded one after the other, each multiplied by the three (12 sums, what AVX2's 16
registers hold beside them: 92 GFLOP/s on a Zen 3 core at 102 peak, on a strided
layer's phases). It computes only real outputs, where :func:`weights_x_positions`
computes the row pitch's junk columns too, so it is the form for small planes (an
8x8 output on a row pitch of 12 is two thirds outputs).
"""

from __future__ import annotations

from . import simd
from ._jit import kernel

#: Output channels in one block: eight broadcast weights per reduction step.
BLOCK_K = 8
#: Vectors of output positions in one block.
BLOCK_P = 3
#: On 256-bit vectors each step of a block of four filters also prefetches a cache line
#: of its tap this many blocks of positions on (:func:`_half_x_positions`): a strided
#: layer's nine taps read six runs of a channel's strip, more streams than the hardware
#: prefetchers follow. Measured on a Zen 2, float32, the blocked forward alternating
#: processes against the code without it, min ms of six runs each: N8 C64 56x56 -> K128
#: 3x3 s2 p1 6.38-6.77 against 6.61-6.81 on two threads, 12.42-13.19 against 12.66-13.59
#: on one; 7x7 s2 C3 -> 64 on 224x224 11.59-11.83 against 11.88-11.99 (three runs); 3x3
#: p1 C64 -> 64 on 56x56, C128 -> 128 on 28x28, C256 -> 256 on 14x14 within 2 % either
#: way. One line a step (the first half's) and 1, 3 or 4 blocks on did no better.
PREFETCH_BLOCKS = 2


@kernel()
def _row_of_sums(out, at, count):
    """The ``count`` (2 or 3) vectors of sums at ``at``, a filter's row of a block (a
    pair's third is its second again): where a pass of a micro-kernel over the next
    planes of a reduction starts. (``at`` is worked out by the caller: a literal row
    number here compiled the function once per row, 16 compiles in the demo.)"""
    lanes = simd.lanes(out)
    return (simd.load(out, at), simd.load(out, at + lanes),
            simd.load(out, at + (2 * lanes if count > 2 else lanes)))


@kernel(inline=True)
def _weights_x_positions(source, weights, out, first, pitch, depth, taps, out_pitch, accumulate):
    """Block of sums by a reduction over ``depth`` planes and ``taps``:

        out[kk * out_pitch + first + p]
            = sum_{c < depth, t} weights[(c * len(taps) + t) * 8 + kk]
                                 * source[c * pitch + taps[t] + first + p]

    for ``kk < 8`` and ``p < 3 * lanes``. ``source`` holds ``depth`` planes
    ``pitch`` apart; ``taps`` are offsets within a plane (a convolution's taps on
    its padded row pitch make every output position ``p`` read ``source`` at
    ``p`` plus a constant, so three consecutive vectors serve every tap). With
    ``accumulate``, the sums start from what ``out`` holds (the next planes of a
    reduction split in passes, :func:`weights_x_run`), else from zero."""
    lanes = simd.lanes(source)
    n_taps = taps.size
    a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = a30 = a31 = a32 = simd.zeros(source)
    a40 = a41 = a42 = a50 = a51 = a52 = a60 = a61 = a62 = a70 = a71 = a72 = simd.zeros(source)
    if accumulate:
        a00, a01, a02 = _row_of_sums(out, first, 3)
        a10, a11, a12 = _row_of_sums(out, first + out_pitch, 3)
        a20, a21, a22 = _row_of_sums(out, first + 2 * out_pitch, 3)
        a30, a31, a32 = _row_of_sums(out, first + 3 * out_pitch, 3)
        a40, a41, a42 = _row_of_sums(out, first + 4 * out_pitch, 3)
        a50, a51, a52 = _row_of_sums(out, first + 5 * out_pitch, 3)
        a60, a61, a62 = _row_of_sums(out, first + 6 * out_pitch, 3)
        a70, a71, a72 = _row_of_sums(out, first + 7 * out_pitch, 3)
    for c in range(depth):
        plane = c * pitch + first
        for t in range(n_taps):
            at = plane + taps[t]
            x0 = simd.load(source, at)
            x1 = simd.load(source, at + lanes)
            x2 = simd.load(source, at + 2 * lanes)
            w = (c * n_taps + t) * 8
            v = simd.broadcast(weights, w)
            a00, a01, a02 = simd.fma(v, x0, a00), simd.fma(v, x1, a01), simd.fma(v, x2, a02)
            v = simd.broadcast(weights, w + 1)
            a10, a11, a12 = simd.fma(v, x0, a10), simd.fma(v, x1, a11), simd.fma(v, x2, a12)
            v = simd.broadcast(weights, w + 2)
            a20, a21, a22 = simd.fma(v, x0, a20), simd.fma(v, x1, a21), simd.fma(v, x2, a22)
            v = simd.broadcast(weights, w + 3)
            a30, a31, a32 = simd.fma(v, x0, a30), simd.fma(v, x1, a31), simd.fma(v, x2, a32)
            v = simd.broadcast(weights, w + 4)
            a40, a41, a42 = simd.fma(v, x0, a40), simd.fma(v, x1, a41), simd.fma(v, x2, a42)
            v = simd.broadcast(weights, w + 5)
            a50, a51, a52 = simd.fma(v, x0, a50), simd.fma(v, x1, a51), simd.fma(v, x2, a52)
            v = simd.broadcast(weights, w + 6)
            a60, a61, a62 = simd.fma(v, x0, a60), simd.fma(v, x1, a61), simd.fma(v, x2, a62)
            v = simd.broadcast(weights, w + 7)
            a70, a71, a72 = simd.fma(v, x0, a70), simd.fma(v, x1, a71), simd.fma(v, x2, a72)
    for kk, (b0, b1, b2) in enumerate(((a00, a01, a02), (a10, a11, a12), (a20, a21, a22),
                                       (a30, a31, a32), (a40, a41, a42), (a50, a51, a52),
                                       (a60, a61, a62), (a70, a71, a72))):
        at = kk * out_pitch + first
        simd.store(out, at, b0)
        simd.store(out, at + lanes, b1)
        simd.store(out, at + 2 * lanes, b2)


@kernel(inline=True)
def _weights_x_pair(source, weights, out, first, pitch, depth, taps, out_pitch, accumulate):
    """:func:`weights_x_positions` for two vectors of positions (32 in float32): a
    plane's last positions when more than one vector of them is left. Sixteen sums in
    registers: two loads and eight broadcasts per step, so it stays bound by the
    multiply-adds where two one-vector calls are bound by the broadcasts."""
    lanes = simd.lanes(source)
    n_taps = taps.size
    a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = simd.zeros(source)
    a40 = a41 = a50 = a51 = a60 = a61 = a70 = a71 = simd.zeros(source)
    if accumulate:
        a00, a01, _ = _row_of_sums(out, first, 2)
        a10, a11, _ = _row_of_sums(out, first + out_pitch, 2)
        a20, a21, _ = _row_of_sums(out, first + 2 * out_pitch, 2)
        a30, a31, _ = _row_of_sums(out, first + 3 * out_pitch, 2)
        a40, a41, _ = _row_of_sums(out, first + 4 * out_pitch, 2)
        a50, a51, _ = _row_of_sums(out, first + 5 * out_pitch, 2)
        a60, a61, _ = _row_of_sums(out, first + 6 * out_pitch, 2)
        a70, a71, _ = _row_of_sums(out, first + 7 * out_pitch, 2)
    for c in range(depth):
        plane = c * pitch + first
        for t in range(n_taps):
            at = plane + taps[t]
            x0 = simd.load(source, at)
            x1 = simd.load(source, at + lanes)
            w = (c * n_taps + t) * 8
            v = simd.broadcast(weights, w)
            a00, a01 = simd.fma(v, x0, a00), simd.fma(v, x1, a01)
            v = simd.broadcast(weights, w + 1)
            a10, a11 = simd.fma(v, x0, a10), simd.fma(v, x1, a11)
            v = simd.broadcast(weights, w + 2)
            a20, a21 = simd.fma(v, x0, a20), simd.fma(v, x1, a21)
            v = simd.broadcast(weights, w + 3)
            a30, a31 = simd.fma(v, x0, a30), simd.fma(v, x1, a31)
            v = simd.broadcast(weights, w + 4)
            a40, a41 = simd.fma(v, x0, a40), simd.fma(v, x1, a41)
            v = simd.broadcast(weights, w + 5)
            a50, a51 = simd.fma(v, x0, a50), simd.fma(v, x1, a51)
            v = simd.broadcast(weights, w + 6)
            a60, a61 = simd.fma(v, x0, a60), simd.fma(v, x1, a61)
            v = simd.broadcast(weights, w + 7)
            a70, a71 = simd.fma(v, x0, a70), simd.fma(v, x1, a71)
    for kk, (b0, b1) in enumerate(((a00, a01), (a10, a11), (a20, a21), (a30, a31),
                                   (a40, a41), (a50, a51), (a60, a61), (a70, a71))):
        at = kk * out_pitch + first
        simd.store(out, at, b0)
        simd.store(out, at + lanes, b1)


@kernel()
def weights_x_vector(source, weights, out, first, pitch, depth, taps, out_pitch, accumulate):
    """:func:`weights_x_positions` for one vector of positions (``lanes``, 16 in
    float32): the tail of a plane, where a block of three would mostly compute positions
    past its end. Eight sums in registers: one load and eight broadcasts per step."""
    n_taps = taps.size
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = simd.zeros(source)
    if accumulate:
        a0, a1 = simd.load(out, first), simd.load(out, out_pitch + first)
        a2, a3 = simd.load(out, 2 * out_pitch + first), simd.load(out, 3 * out_pitch + first)
        a4, a5 = simd.load(out, 4 * out_pitch + first), simd.load(out, 5 * out_pitch + first)
        a6, a7 = simd.load(out, 6 * out_pitch + first), simd.load(out, 7 * out_pitch + first)
    for c in range(depth):
        plane = c * pitch + first
        for t in range(n_taps):
            x = simd.load(source, plane + taps[t])
            w = (c * n_taps + t) * 8
            a0 = simd.fma(simd.broadcast(weights, w), x, a0)
            a1 = simd.fma(simd.broadcast(weights, w + 1), x, a1)
            a2 = simd.fma(simd.broadcast(weights, w + 2), x, a2)
            a3 = simd.fma(simd.broadcast(weights, w + 3), x, a3)
            a4 = simd.fma(simd.broadcast(weights, w + 4), x, a4)
            a5 = simd.fma(simd.broadcast(weights, w + 5), x, a5)
            a6 = simd.fma(simd.broadcast(weights, w + 6), x, a6)
            a7 = simd.fma(simd.broadcast(weights, w + 7), x, a7)
    for kk, acc in enumerate((a0, a1, a2, a3, a4, a5, a6, a7)):
        simd.store(out, kk * out_pitch + first, acc)


@kernel()
def _taps_x_filters(source, grads, out, taps, first_image, n_images, source_image, out_h, out_w,
                    pitch, grads_first, grads_image, grads_step):
    """Block of 12 taps x 2 vectors of filters, each a sum over positions:

        out[(t * 2 + v) * lanes + l]
            = sum_{first_image <= n < first_image + n_images, i < out_h, j < out_w}
                source[taps[t] + n * source_image + i * pitch + j]
                * grads[grads_first + n * grads_image + (i * out_w + j) * grads_step
                        + v * lanes + l]

    for ``t < 12``, ``v < 2``, ``l < lanes``: a convolution's weight gradient,
    ``source`` the padded input planes (at a stride, dealt into column phases: output
    column ``j`` is always ``j`` values on), ``taps`` where each of 12 taps reads from a
    position's value, ``grads`` the output gradient packed position-major (a position's
    filters consecutive). Per position: 2 loads, 12 broadcasts and 24 multiply-adds
    into 24 registers."""
    lanes = simd.lanes(source)
    t0, t1, t2, t3, t4, t5 = taps[0], taps[1], taps[2], taps[3], taps[4], taps[5]
    t6, t7, t8, t9, t10, t11 = taps[6], taps[7], taps[8], taps[9], taps[10], taps[11]
    a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = simd.zeros(source)
    a40 = a41 = a50 = a51 = a60 = a61 = a70 = a71 = simd.zeros(source)
    a80 = a81 = a90 = a91 = aa0 = aa1 = ab0 = ab1 = simd.zeros(source)
    for n in range(first_image, first_image + n_images):
        for i in range(out_h):
            x = n * source_image + i * pitch
            g = grads_first + n * grads_image + i * out_w * grads_step
            for _ in range(out_w):
                v0, v1 = simd.load(grads, g), simd.load(grads, g + lanes)
                b = simd.broadcast(source, x + t0)
                a00, a01 = simd.fma(b, v0, a00), simd.fma(b, v1, a01)
                b = simd.broadcast(source, x + t1)
                a10, a11 = simd.fma(b, v0, a10), simd.fma(b, v1, a11)
                b = simd.broadcast(source, x + t2)
                a20, a21 = simd.fma(b, v0, a20), simd.fma(b, v1, a21)
                b = simd.broadcast(source, x + t3)
                a30, a31 = simd.fma(b, v0, a30), simd.fma(b, v1, a31)
                b = simd.broadcast(source, x + t4)
                a40, a41 = simd.fma(b, v0, a40), simd.fma(b, v1, a41)
                b = simd.broadcast(source, x + t5)
                a50, a51 = simd.fma(b, v0, a50), simd.fma(b, v1, a51)
                b = simd.broadcast(source, x + t6)
                a60, a61 = simd.fma(b, v0, a60), simd.fma(b, v1, a61)
                b = simd.broadcast(source, x + t7)
                a70, a71 = simd.fma(b, v0, a70), simd.fma(b, v1, a71)
                b = simd.broadcast(source, x + t8)
                a80, a81 = simd.fma(b, v0, a80), simd.fma(b, v1, a81)
                b = simd.broadcast(source, x + t9)
                a90, a91 = simd.fma(b, v0, a90), simd.fma(b, v1, a91)
                b = simd.broadcast(source, x + t10)
                aa0, aa1 = simd.fma(b, v0, aa0), simd.fma(b, v1, aa1)
                b = simd.broadcast(source, x + t11)
                ab0, ab1 = simd.fma(b, v0, ab0), simd.fma(b, v1, ab1)
                x += 1
                g += grads_step
    for t, acc in enumerate((a00, a01, a10, a11, a20, a21, a30, a31, a40, a41, a50, a51,
                             a60, a61, a70, a71, a80, a81, a90, a91, aa0, aa1, ab0, ab1)):
        simd.store(out, t * lanes, acc)


@kernel(inline=True)
def _half_x_positions(source, weights, out, first, pitch, depth, taps, out_pitch, accumulate,
                      half, count):
    """:func:`weights_x_positions`' sums of the four filters ``half * 4 + kk`` (``kk < 4``)
    for ``count`` (2 or 3) vectors of positions: 12 sums, three loads and four
    broadcasts per step, what AVX2's 16 registers hold."""
    lanes = simd.lanes(source)
    n_taps = taps.size
    a00 = a01 = a02 = a10 = a11 = a12 = simd.zeros(source)
    a20 = a21 = a22 = a30 = a31 = a32 = simd.zeros(source)
    if accumulate:
        a00, a01, a02 = _row_of_sums(out, first + half * 4 * out_pitch, count)
        a10, a11, a12 = _row_of_sums(out, first + (half * 4 + 1) * out_pitch, count)
        a20, a21, a22 = _row_of_sums(out, first + (half * 4 + 2) * out_pitch, count)
        a30, a31, a32 = _row_of_sums(out, first + (half * 4 + 3) * out_pitch, count)
    third = 2 * lanes if count > 2 else lanes  # the second vector again for a pair
    # the block of positions PREFETCH_BLOCKS on: its three vectors of a tap begin in two
    # cache lines, one prefetched by each half
    ahead = PREFETCH_BLOCKS * BLOCK_P * lanes + half * (64 // source.itemsize)
    for c in range(depth):
        plane = c * pitch + first
        for t in range(n_taps):
            at = plane + taps[t]
            simd.prefetch(source, at + ahead)
            x0 = simd.load(source, at)
            x1 = simd.load(source, at + lanes)
            x2 = simd.load(source, at + third)
            w = (c * n_taps + t) * 8 + half * 4
            v = simd.broadcast(weights, w)
            a00, a01, a02 = simd.fma(v, x0, a00), simd.fma(v, x1, a01), simd.fma(v, x2, a02)
            v = simd.broadcast(weights, w + 1)
            a10, a11, a12 = simd.fma(v, x0, a10), simd.fma(v, x1, a11), simd.fma(v, x2, a12)
            v = simd.broadcast(weights, w + 2)
            a20, a21, a22 = simd.fma(v, x0, a20), simd.fma(v, x1, a21), simd.fma(v, x2, a22)
            v = simd.broadcast(weights, w + 3)
            a30, a31, a32 = simd.fma(v, x0, a30), simd.fma(v, x1, a31), simd.fma(v, x2, a32)
    for kk, (b0, b1, b2) in enumerate(((a00, a01, a02), (a10, a11, a12), (a20, a21, a22),
                                       (a30, a31, a32))):
        at = (half * 4 + kk) * out_pitch + first
        simd.store(out, at, b0)
        simd.store(out, at + lanes, b1)
        if count > 2:
            simd.store(out, at + 2 * lanes, b2)


@kernel(inline=True)
def _halves_x_positions(source, weights, out, first, pitch, depth, taps, out_pitch, accumulate):
    """:func:`_weights_x_positions` as two blocks of four filters.

    These blocks (and the pair's) are inlined into their caller, :func:`weights_x_run`:
    called, each took its four arrays field by field, some 35 arguments, once per block of
    positions and pass of channels, where a pass of 8 channels of 3x3 taps is 72 steps of
    12 multiply-adds a half. Measured on a Zen 2, float32, the blocked forward against the
    calls (min ms, alternating processes, three runs each, two threads): N8 C64 56x56 ->
    K128 3x3 s2 p1 5.59-5.78 against 6.30-6.33; C128 -> 128 on 28x28 3x3 p1 10.49-10.54
    against 11.05-11.19; C64 -> 64 on 56x56 10.25-10.50 against 10.97-11.19; 7x7 s2 C3 ->
    64 on 224x224 11.00-11.03 against 11.42-11.68; one thread, the strided layer
    79.4-79.8 against 69.9-71.6 GFLOP/s. The 512-bit blocks (:func:`_weights_x_positions`,
    :func:`_weights_x_pair`) are inlined too: on a Zen 4 (AVX-512), float32, one thread,
    both versions at once one per core, min ms of two pairs, against them as calls: N8 C64
    56x56 -> K128 3x3 s2 p1 9.28-9.57 against 9.62-9.84, 7x7 s2 C3 -> 64 on 224x224
    18.78-18.92 against 19.24-19.38, C128 -> 128 3x3 p1 on 28x28 (direct) 17.96-18.09
    against 18.37-18.44, conv_transpose2d 4x4 s2 C128 -> 64 on 16x16 5.27-5.34 against
    5.58-5.78 (the demo's first compile the same, 14.62 and 13.81 s against 15.20 and
    13.95). (With 512-bit vectors forced on the Zen 2, where they spill, inlining them
    was no faster.)"""
    for half in range(2):
        _half_x_positions(source, weights, out, first, pitch, depth, taps, out_pitch, accumulate,
                          half, 3)


@kernel(inline=True)
def _halves_x_pair(source, weights, out, first, pitch, depth, taps, out_pitch, accumulate):
    """:func:`_weights_x_pair` as two blocks of four filters."""
    for half in range(2):
        _half_x_positions(source, weights, out, first, pitch, depth, taps, out_pitch, accumulate,
                          half, 2)


@kernel()
def _six_taps_x_filters(source, grads, out, taps, first_image, n_images, source_image, out_h,
                        out_w, pitch, grads_first, grads_image, grads_step, half):
    """:func:`taps_x_filters`' sums of the six taps ``half * 6 + t`` (``t < 6``): 12 sums,
    two loads and six broadcasts per position, what AVX2's 16 registers hold."""
    lanes = simd.lanes(source)
    base = half * 6
    t0, t1, t2 = taps[base], taps[base + 1], taps[base + 2]
    t3, t4, t5 = taps[base + 3], taps[base + 4], taps[base + 5]
    a00 = a01 = a10 = a11 = a20 = a21 = simd.zeros(source)
    a30 = a31 = a40 = a41 = a50 = a51 = simd.zeros(source)
    for n in range(first_image, first_image + n_images):
        for i in range(out_h):
            x = n * source_image + i * pitch
            g = grads_first + n * grads_image + i * out_w * grads_step
            for _ in range(out_w):
                v0, v1 = simd.load(grads, g), simd.load(grads, g + lanes)
                b = simd.broadcast(source, x + t0)
                a00, a01 = simd.fma(b, v0, a00), simd.fma(b, v1, a01)
                b = simd.broadcast(source, x + t1)
                a10, a11 = simd.fma(b, v0, a10), simd.fma(b, v1, a11)
                b = simd.broadcast(source, x + t2)
                a20, a21 = simd.fma(b, v0, a20), simd.fma(b, v1, a21)
                b = simd.broadcast(source, x + t3)
                a30, a31 = simd.fma(b, v0, a30), simd.fma(b, v1, a31)
                b = simd.broadcast(source, x + t4)
                a40, a41 = simd.fma(b, v0, a40), simd.fma(b, v1, a41)
                b = simd.broadcast(source, x + t5)
                a50, a51 = simd.fma(b, v0, a50), simd.fma(b, v1, a51)
                x += 1
                g += grads_step
    for t, acc in enumerate((a00, a01, a10, a11, a20, a21, a30, a31, a40, a41, a50, a51)):
        simd.store(out, (2 * base + t) * lanes, acc)


@kernel()
def _halves_taps_x_filters(source, grads, out, taps, first_image, n_images, source_image, out_h,
                           out_w, pitch, grads_first, grads_image, grads_step):
    """:func:`_taps_x_filters` as two blocks of six taps."""
    for half in range(2):
        _six_taps_x_filters(source, grads, out, taps, first_image, n_images, source_image,
                            out_h, out_w, pitch, grads_first, grads_image, grads_step, half)


#: The blocks of 24 sums where the registers hold them (AVX-512), else their halves.
if simd.WIDE:
    weights_x_positions, weights_x_pair = _weights_x_positions, _weights_x_pair
    taps_x_filters = _taps_x_filters
else:
    weights_x_positions, weights_x_pair = _halves_x_positions, _halves_x_pair
    taps_x_filters = _halves_taps_x_filters


@kernel()
def taps_x_vector(source, grads, out, taps, first_image, n_images, source_image, out_h, out_w,
                  pitch, grads_first, grads_image, grads_step):
    """:func:`taps_x_filters` one vector of filters wide: ``out[t * lanes + l]`` (12 sums
    in registers; per position one load, 12 broadcasts)."""
    lanes = simd.lanes(source)
    t0, t1, t2, t3, t4, t5 = taps[0], taps[1], taps[2], taps[3], taps[4], taps[5]
    t6, t7, t8, t9, t10, t11 = taps[6], taps[7], taps[8], taps[9], taps[10], taps[11]
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = aa = ab = simd.zeros(source)
    for n in range(first_image, first_image + n_images):
        for i in range(out_h):
            x = n * source_image + i * pitch
            g = grads_first + n * grads_image + i * out_w * grads_step
            for _ in range(out_w):
                v0 = simd.load(grads, g)
                a0 = simd.fma(simd.broadcast(source, x + t0), v0, a0)
                a1 = simd.fma(simd.broadcast(source, x + t1), v0, a1)
                a2 = simd.fma(simd.broadcast(source, x + t2), v0, a2)
                a3 = simd.fma(simd.broadcast(source, x + t3), v0, a3)
                a4 = simd.fma(simd.broadcast(source, x + t4), v0, a4)
                a5 = simd.fma(simd.broadcast(source, x + t5), v0, a5)
                a6 = simd.fma(simd.broadcast(source, x + t6), v0, a6)
                a7 = simd.fma(simd.broadcast(source, x + t7), v0, a7)
                a8 = simd.fma(simd.broadcast(source, x + t8), v0, a8)
                a9 = simd.fma(simd.broadcast(source, x + t9), v0, a9)
                aa = simd.fma(simd.broadcast(source, x + t10), v0, aa)
                ab = simd.fma(simd.broadcast(source, x + t11), v0, ab)
                x += 1
                g += grads_step
    for t, acc in enumerate((a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, aa, ab)):
        simd.store(out, t * lanes, acc)


@kernel()
def _twelve_x_filters(source, weights, out, at_out, offsets, first, pitch, c0, depth, taps,
                      accumulate):
    """:func:`positions_x_filters` on 512-bit vectors: 12 output positions x one vector of
    filters (16 in float32), per reduction step one vector of the filters' weights
    loaded, 12 input values broadcast, 12 multiply-adds into 12 registers."""
    lanes = simd.lanes(source)
    n_taps = taps.size
    o0, o1, o2, o3 = offsets[first], offsets[first + 1], offsets[first + 2], offsets[first + 3]
    o4, o5, o6, o7 = offsets[first + 4], offsets[first + 5], offsets[first + 6], offsets[first + 7]
    o8, o9, o10, o11 = (offsets[first + 8], offsets[first + 9], offsets[first + 10],
                        offsets[first + 11])
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = aa = ab = simd.zeros(source)
    if accumulate:
        a0, a1, a2, a3 = (simd.load(out, at_out), simd.load(out, at_out + lanes),
                          simd.load(out, at_out + 2 * lanes), simd.load(out, at_out + 3 * lanes))
        a4, a5, a6, a7 = (simd.load(out, at_out + 4 * lanes), simd.load(out, at_out + 5 * lanes),
                          simd.load(out, at_out + 6 * lanes), simd.load(out, at_out + 7 * lanes))
        a8, a9, aa, ab = (simd.load(out, at_out + 8 * lanes), simd.load(out, at_out + 9 * lanes),
                          simd.load(out, at_out + 10 * lanes),
                          simd.load(out, at_out + 11 * lanes))
    w = c0 * n_taps * lanes
    for c in range(c0, c0 + depth):
        plane = c * pitch
        for t in range(n_taps):
            at = plane + taps[t]
            v = simd.load(weights, w)
            a0 = simd.fma(simd.broadcast(source, at + o0), v, a0)
            a1 = simd.fma(simd.broadcast(source, at + o1), v, a1)
            a2 = simd.fma(simd.broadcast(source, at + o2), v, a2)
            a3 = simd.fma(simd.broadcast(source, at + o3), v, a3)
            a4 = simd.fma(simd.broadcast(source, at + o4), v, a4)
            a5 = simd.fma(simd.broadcast(source, at + o5), v, a5)
            a6 = simd.fma(simd.broadcast(source, at + o6), v, a6)
            a7 = simd.fma(simd.broadcast(source, at + o7), v, a7)
            a8 = simd.fma(simd.broadcast(source, at + o8), v, a8)
            a9 = simd.fma(simd.broadcast(source, at + o9), v, a9)
            aa = simd.fma(simd.broadcast(source, at + o10), v, aa)
            ab = simd.fma(simd.broadcast(source, at + o11), v, ab)
            w += lanes
    for q, acc in enumerate((a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, aa, ab)):
        simd.store(out, at_out + q * lanes, acc)


@kernel()
def _four_x_filters(source, weights, out, at_out, offsets, first, pitch, c0, depth, taps,
                    accumulate):
    """:func:`_twelve_x_filters` for the last positions of a run (:data:`TAIL_Q`): 4
    positions x one vector of filters. Four chains of multiply-adds wait on their
    latency (four steps each), so a step of 4 sums takes about as long as one of 12 at
    the peak: what a run of ``12 m + r`` positions then costs is that of ``12 m + 4 *
    ceil(r / 4)``, not ``12 (m + 1)`` (an 8x8 plane: 64 against 72, a 7x7 one 52
    against 60)."""
    lanes = simd.lanes(source)
    n_taps = taps.size
    o0, o1 = offsets[first], offsets[first + 1]
    o2, o3 = offsets[first + 2], offsets[first + 3]
    a0 = a1 = a2 = a3 = simd.zeros(source)
    if accumulate:
        a0, a1 = simd.load(out, at_out), simd.load(out, at_out + lanes)
        a2, a3 = simd.load(out, at_out + 2 * lanes), simd.load(out, at_out + 3 * lanes)
    w = c0 * n_taps * lanes
    for c in range(c0, c0 + depth):
        for t in range(n_taps):
            at = c * pitch + taps[t]
            v = simd.load(weights, w)
            a0, a1 = (simd.fma(simd.broadcast(source, at + o0), v, a0),
                      simd.fma(simd.broadcast(source, at + o1), v, a1))
            a2, a3 = (simd.fma(simd.broadcast(source, at + o2), v, a2),
                      simd.fma(simd.broadcast(source, at + o3), v, a3))
            w += lanes
    for q, acc in enumerate((a0, a1, a2, a3)):
        simd.store(out, at_out + q * lanes, acc)


@kernel(inline=True)
def _three_x_filter_vectors(source, weights, out, at_out, offsets, first, pitch, c0, depth,
                            taps, accumulate):
    """:func:`positions_x_filters` on 256-bit vectors: 3 output positions x four vectors of
    filters (32 in float32), per reduction step three input values broadcast and four
    vectors of weights loaded one at a time, each multiplied by the three: 12 sums, the
    three broadcasts and one vector of weights, AVX2's 16 registers (the four weight
    vectors held at once spilled the sums, 56 GFLOP/s against 92 on a Zen 3 core)."""
    lanes = simd.lanes(source)
    n_taps = taps.size
    block = 4 * lanes
    o0, o1, o2 = offsets[first], offsets[first + 1], offsets[first + 2]
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = a20 = a21 = a22 = a23 = simd.zeros(source)
    if accumulate:
        a00, a01 = simd.load(out, at_out), simd.load(out, at_out + lanes)
        a02, a03 = simd.load(out, at_out + 2 * lanes), simd.load(out, at_out + 3 * lanes)
        a10, a11 = simd.load(out, at_out + block), simd.load(out, at_out + block + lanes)
        a12 = simd.load(out, at_out + block + 2 * lanes)
        a13 = simd.load(out, at_out + block + 3 * lanes)
        a20, a21 = simd.load(out, at_out + 2 * block), simd.load(out, at_out + 2 * block + lanes)
        a22 = simd.load(out, at_out + 2 * block + 2 * lanes)
        a23 = simd.load(out, at_out + 2 * block + 3 * lanes)
    w = c0 * n_taps * block
    for c in range(c0, c0 + depth):
        plane = c * pitch
        for t in range(n_taps):
            at = plane + taps[t]
            b0 = simd.broadcast(source, at + o0)
            b1 = simd.broadcast(source, at + o1)
            b2 = simd.broadcast(source, at + o2)
            v = simd.load(weights, w)
            a00, a10, a20 = simd.fma(b0, v, a00), simd.fma(b1, v, a10), simd.fma(b2, v, a20)
            v = simd.load(weights, w + lanes)
            a01, a11, a21 = simd.fma(b0, v, a01), simd.fma(b1, v, a11), simd.fma(b2, v, a21)
            v = simd.load(weights, w + 2 * lanes)
            a02, a12, a22 = simd.fma(b0, v, a02), simd.fma(b1, v, a12), simd.fma(b2, v, a22)
            v = simd.load(weights, w + 3 * lanes)
            a03, a13, a23 = simd.fma(b0, v, a03), simd.fma(b1, v, a13), simd.fma(b2, v, a23)
            w += block
    for q, (v0, v1, v2, v3) in enumerate(((a00, a01, a02, a03), (a10, a11, a12, a13),
                                          (a20, a21, a22, a23))):
        at = at_out + q * block
        simd.store(out, at, v0)
        simd.store(out, at + lanes, v1)
        simd.store(out, at + 2 * lanes, v2)
        simd.store(out, at + 3 * lanes, v3)


#: The by-filters block, ``positions_x_filters(source, weights, out, at_out, offsets, first,
#: pitch, c0, depth, taps, accumulate)``: :data:`BLOCK_Q` output positions x
#: :data:`FILTER_VECTORS` vectors of filters, the forward's other way round::
#:
#:     out[at_out + q * block + f]
#:         (+)= sum_{c0 <= c < c0 + depth, t} source[c * pitch + taps[t] + offsets[first + q]]
#:                                          * weights[(c * len(taps) + t) * block + f]
#:
#: for ``q < BLOCK_Q`` and ``f < block = FILTER_VECTORS * lanes`` (added to the sums there
#: with ``accumulate``). The positions are any (``offsets``), so a plane narrower than a
#: vector computes no junk columns, and at a stride each input value is read where it
#: lies. 512-bit vectors: 12 positions x 16 filters (float32, :func:`_twelve_x_filters`);
#: 256-bit: 3 x 32 (:func:`_three_x_filter_vectors`). ``tail_x_filters``, the same for
#: :data:`TAIL_Q` positions, runs a run's last positions after its whole blocks: on
#: 512-bit vectors 4 (:func:`_four_x_filters`), on 256-bit the block itself (3).
if simd.WIDE:
    positions_x_filters, tail_x_filters = _twelve_x_filters, _four_x_filters
    BLOCK_Q, TAIL_Q, FILTER_VECTORS = 12, 4, 1
else:
    positions_x_filters = tail_x_filters = _three_x_filter_vectors
    BLOCK_Q, TAIL_Q, FILTER_VECTORS = 3, 3, 4


def filters_block(itemsize: int) -> int:
    """Filters in one block of :func:`positions_x_filters` for items of ``itemsize``
    bytes: :data:`FILTER_VECTORS` vectors of the target's width."""
    return FILTER_VECTORS * simd.WIDTH_BYTES // itemsize


@kernel()
def weights_x_run(source, weights, out, first, count, pitch, depth, taps, out_pitch, chunk):
    """:func:`weights_x_positions` over the ``count`` positions from ``first``: blocks of
    three vectors, then the last positions two vectors (:func:`weights_x_pair`), then one
    (:func:`weights_x_vector`) at a time. The last vector may run past ``count``: its
    source values must be readable and its sums may be dropped. The reduction runs in
    passes of ``chunk`` planes over all the positions, each pass adding to the sums of
    the last: a block's reads of a few planes stay in L1 from one block of positions to
    the next, where those of all the planes would not (:func:`.blocked.channels_per_pass`).
    Each pass goes on from where the last stopped: the same multiply-adds in the same
    order."""
    lanes = simd.lanes(source)
    step = BLOCK_P * lanes
    n_taps = taps.size
    for c0 in range(0, depth, chunk):
        planes = source[c0 * pitch :]
        block = weights[c0 * n_taps * BLOCK_K :]
        n = min(chunk, depth - c0)
        more = c0 > 0
        for p in range(0, count - step + 1, step):
            weights_x_positions(planes, block, out, first + p, pitch, n, taps, out_pitch, more)
        p = count // step * step
        while p < count:
            if count - p > lanes:
                weights_x_pair(planes, block, out, first + p, pitch, n, taps, out_pitch, more)
                p += 2 * lanes
            else:
                weights_x_vector(planes, block, out, first + p, pitch, n, taps, out_pitch,
                                 more)
                p += lanes
