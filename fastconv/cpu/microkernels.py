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
project's AVX-512 machine it runs at about one core's peak from L1 (see
benchmarks/RESULTS.md); on an AVX2 CPU LLVM splits each vector in two and the
block spills some sums, correct but slower. :func:`weights_x_vector` is the same
block one vector wide, for the last positions of a plane.

:func:`filters_x_taps` is the dot-product form for a weight gradient: 8 filters
by 3 taps, each sum a vector of partial sums over positions, added up across
the lanes once at the end (8 + 3 loads and 24 multiply-adds per step).
"""

from __future__ import annotations

from . import simd
from ._jit import kernel

#: Output channels in one block: eight broadcast weights per reduction step.
BLOCK_K = 8
#: Vectors of output positions in one block.
BLOCK_P = 3


@kernel()
def weights_x_positions(source, weights, out, first, pitch, depth, taps, out_pitch):
    """Block of sums by a reduction over ``depth`` planes and ``taps``:

        out[kk * out_pitch + first + p]
            = sum_{c < depth, t} weights[(c * len(taps) + t) * 8 + kk]
                                 * source[c * pitch + taps[t] + first + p]

    for ``kk < 8`` and ``p < 3 * lanes``. ``source`` holds ``depth`` planes
    ``pitch`` apart; ``taps`` are offsets within a plane (a convolution's taps on
    its padded row pitch make every output position ``p`` read ``source`` at
    ``p`` plus a constant, so three consecutive vectors serve every tap)."""
    lanes = simd.lanes(source)
    n_taps = taps.size
    a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = a30 = a31 = a32 = simd.zeros(source)
    a40 = a41 = a42 = a50 = a51 = a52 = a60 = a61 = a62 = a70 = a71 = a72 = simd.zeros(source)
    for c in range(depth):
        plane = c * pitch + first
        for t in range(n_taps):
            at = plane + taps[t]
            x0 = simd.load(source, at)
            x1 = simd.load(source, at + lanes)
            x2 = simd.load(source, at + 2 * lanes)
            w = (c * n_taps + t) * 8
            v = simd.splat(weights[w], source)
            a00, a01, a02 = simd.fma(v, x0, a00), simd.fma(v, x1, a01), simd.fma(v, x2, a02)
            v = simd.splat(weights[w + 1], source)
            a10, a11, a12 = simd.fma(v, x0, a10), simd.fma(v, x1, a11), simd.fma(v, x2, a12)
            v = simd.splat(weights[w + 2], source)
            a20, a21, a22 = simd.fma(v, x0, a20), simd.fma(v, x1, a21), simd.fma(v, x2, a22)
            v = simd.splat(weights[w + 3], source)
            a30, a31, a32 = simd.fma(v, x0, a30), simd.fma(v, x1, a31), simd.fma(v, x2, a32)
            v = simd.splat(weights[w + 4], source)
            a40, a41, a42 = simd.fma(v, x0, a40), simd.fma(v, x1, a41), simd.fma(v, x2, a42)
            v = simd.splat(weights[w + 5], source)
            a50, a51, a52 = simd.fma(v, x0, a50), simd.fma(v, x1, a51), simd.fma(v, x2, a52)
            v = simd.splat(weights[w + 6], source)
            a60, a61, a62 = simd.fma(v, x0, a60), simd.fma(v, x1, a61), simd.fma(v, x2, a62)
            v = simd.splat(weights[w + 7], source)
            a70, a71, a72 = simd.fma(v, x0, a70), simd.fma(v, x1, a71), simd.fma(v, x2, a72)
    for kk, (b0, b1, b2) in enumerate(((a00, a01, a02), (a10, a11, a12), (a20, a21, a22),
                                       (a30, a31, a32), (a40, a41, a42), (a50, a51, a52),
                                       (a60, a61, a62), (a70, a71, a72))):
        at = kk * out_pitch + first
        simd.store(out, at, b0)
        simd.store(out, at + lanes, b1)
        simd.store(out, at + 2 * lanes, b2)


@kernel()
def weights_x_vector(source, weights, out, first, pitch, depth, taps, out_pitch):
    """:func:`weights_x_positions` for one vector of positions (``lanes``, 16 in
    float32): the tail of a plane, where a block of three would mostly compute positions
    past its end. Eight sums in registers: one load and eight broadcasts per step."""
    n_taps = taps.size
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = simd.zeros(source)
    for c in range(depth):
        plane = c * pitch + first
        for t in range(n_taps):
            x = simd.load(source, plane + taps[t])
            w = (c * n_taps + t) * 8
            a0 = simd.fma(simd.splat(weights[w], source), x, a0)
            a1 = simd.fma(simd.splat(weights[w + 1], source), x, a1)
            a2 = simd.fma(simd.splat(weights[w + 2], source), x, a2)
            a3 = simd.fma(simd.splat(weights[w + 3], source), x, a3)
            a4 = simd.fma(simd.splat(weights[w + 4], source), x, a4)
            a5 = simd.fma(simd.splat(weights[w + 5], source), x, a5)
            a6 = simd.fma(simd.splat(weights[w + 6], source), x, a6)
            a7 = simd.fma(simd.splat(weights[w + 7], source), x, a7)
    for kk, acc in enumerate((a0, a1, a2, a3, a4, a5, a6, a7)):
        simd.store(out, kk * out_pitch + first, acc)


@kernel()
def filters_x_taps(grads, source, totals, grads_first, grads_pitch, source_first, taps,
                   n_images, grads_image, source_image, n_vectors):
    """Block of dot products over ``n_images`` images and ``n_vectors * lanes`` positions:

        totals[kk * 3 + tt] = sum_{n, p} grads[grads_first + n * grads_image
                                               + kk * grads_pitch + p]
                                         * source[source_first + n * source_image
                                                  + taps[tt] + p]

    for ``kk < 8`` and ``tt < 3`` (a convolution's weight gradient on the padded row
    pitch: ``grads`` the output gradient rows of 8 filters, ``source`` the padded input
    plane of one channel, ``taps`` three tap offsets)."""
    lanes = simd.lanes(source)
    t0, t1, t2 = taps[0], taps[1], taps[2]
    a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = a30 = a31 = a32 = simd.zeros(source)
    a40 = a41 = a42 = a50 = a51 = a52 = a60 = a61 = a62 = a70 = a71 = a72 = simd.zeros(source)
    for n in range(n_images):
        g = grads_first + n * grads_image
        x = source_first + n * source_image
        for p in range(0, n_vectors * lanes, lanes):
            x0 = simd.load(source, x + t0 + p)
            x1 = simd.load(source, x + t1 + p)
            x2 = simd.load(source, x + t2 + p)
            v = simd.load(grads, g + p)
            a00, a01, a02 = simd.fma(v, x0, a00), simd.fma(v, x1, a01), simd.fma(v, x2, a02)
            v = simd.load(grads, g + grads_pitch + p)
            a10, a11, a12 = simd.fma(v, x0, a10), simd.fma(v, x1, a11), simd.fma(v, x2, a12)
            v = simd.load(grads, g + 2 * grads_pitch + p)
            a20, a21, a22 = simd.fma(v, x0, a20), simd.fma(v, x1, a21), simd.fma(v, x2, a22)
            v = simd.load(grads, g + 3 * grads_pitch + p)
            a30, a31, a32 = simd.fma(v, x0, a30), simd.fma(v, x1, a31), simd.fma(v, x2, a32)
            v = simd.load(grads, g + 4 * grads_pitch + p)
            a40, a41, a42 = simd.fma(v, x0, a40), simd.fma(v, x1, a41), simd.fma(v, x2, a42)
            v = simd.load(grads, g + 5 * grads_pitch + p)
            a50, a51, a52 = simd.fma(v, x0, a50), simd.fma(v, x1, a51), simd.fma(v, x2, a52)
            v = simd.load(grads, g + 6 * grads_pitch + p)
            a60, a61, a62 = simd.fma(v, x0, a60), simd.fma(v, x1, a61), simd.fma(v, x2, a62)
            v = simd.load(grads, g + 7 * grads_pitch + p)
            a70, a71, a72 = simd.fma(v, x0, a70), simd.fma(v, x1, a71), simd.fma(v, x2, a72)
    for kk, (b0, b1, b2) in enumerate(((a00, a01, a02), (a10, a11, a12), (a20, a21, a22),
                                       (a30, a31, a32), (a40, a41, a42), (a50, a51, a52),
                                       (a60, a61, a62), (a70, a71, a72))):
        totals[kk * 3] = simd.total(b0)
        totals[kk * 3 + 1] = simd.total(b1)
        totals[kk * 3 + 2] = simd.total(b2)
