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
block spills some sums, correct but slower. :func:`weights_x_pair` and
:func:`weights_x_vector` are the same block two and one vector wide, for the last
positions of a plane (two one-vector calls are bound by their broadcasts: one load
and eight broadcasts per eight multiply-adds).

:func:`runs_x_filters` is the weight gradient's block, the other way round:
the output gradient packed position-major so that a vector holds 32 filters
(float32; 16 in float64) of one position, and each input value (one of 12
taps: 4 runs of 3 consecutive taps) broadcast against it. Per position: 2
loads, 12 broadcasts and 24 multiply-adds into 24 registers, summed over every
position of the images and stored once. :func:`runs_x_vector` is the same one
vector of filters wide, for layers of at most 16 filters per group.
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
def weights_x_pair(source, weights, out, first, pitch, depth, taps, out_pitch):
    """:func:`weights_x_positions` for two vectors of positions (32 in float32): a
    plane's last positions when more than one vector of them is left. Sixteen sums in
    registers: two loads and eight broadcasts per step, so it stays bound by the
    multiply-adds where two one-vector calls are bound by the broadcasts."""
    lanes = simd.lanes(source)
    n_taps = taps.size
    a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = simd.zeros(source)
    a40 = a41 = a50 = a51 = a60 = a61 = a70 = a71 = simd.zeros(source)
    for c in range(depth):
        plane = c * pitch + first
        for t in range(n_taps):
            at = plane + taps[t]
            x0 = simd.load(source, at)
            x1 = simd.load(source, at + lanes)
            w = (c * n_taps + t) * 8
            v = simd.splat(weights[w], source)
            a00, a01 = simd.fma(v, x0, a00), simd.fma(v, x1, a01)
            v = simd.splat(weights[w + 1], source)
            a10, a11 = simd.fma(v, x0, a10), simd.fma(v, x1, a11)
            v = simd.splat(weights[w + 2], source)
            a20, a21 = simd.fma(v, x0, a20), simd.fma(v, x1, a21)
            v = simd.splat(weights[w + 3], source)
            a30, a31 = simd.fma(v, x0, a30), simd.fma(v, x1, a31)
            v = simd.splat(weights[w + 4], source)
            a40, a41 = simd.fma(v, x0, a40), simd.fma(v, x1, a41)
            v = simd.splat(weights[w + 5], source)
            a50, a51 = simd.fma(v, x0, a50), simd.fma(v, x1, a51)
            v = simd.splat(weights[w + 6], source)
            a60, a61 = simd.fma(v, x0, a60), simd.fma(v, x1, a61)
            v = simd.splat(weights[w + 7], source)
            a70, a71 = simd.fma(v, x0, a70), simd.fma(v, x1, a71)
    for kk, (b0, b1) in enumerate(((a00, a01), (a10, a11), (a20, a21), (a30, a31),
                                   (a40, a41), (a50, a51), (a60, a61), (a70, a71))):
        at = kk * out_pitch + first
        simd.store(out, at, b0)
        simd.store(out, at + lanes, b1)


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
def runs_x_filters(source, grads, out, runs, first_image, n_images, source_image, out_h, out_w,
                   pitch, grads_first, grads_image, grads_step):
    """Block of 4 runs x 3 taps x 2 vectors of filters, each a sum over positions:

        out[((r * 3 + s) * 2 + v) * lanes + l]
            = sum_{first_image <= n < first_image + n_images, i < out_h, j < out_w}
                source[runs[r] + n * source_image + i * pitch + j + s]
                * grads[grads_first + n * grads_image + (i * out_w + j) * grads_step
                        + v * lanes + l]

    for ``r < 4``, ``s < 3``, ``v < 2``, ``l < lanes``: a convolution's weight gradient,
    ``source`` the padded input planes on their row pitch, ``runs`` the offsets of four
    runs of three consecutive taps, ``grads`` the output gradient packed position-major
    (a position's filters consecutive). Per position: 2 loads, 12 broadcasts and 24
    multiply-adds into 24 registers."""
    lanes = simd.lanes(source)
    o0, o1, o2, o3 = runs[0], runs[1], runs[2], runs[3]
    a000 = a001 = a010 = a011 = a020 = a021 = simd.zeros(source)
    a100 = a101 = a110 = a111 = a120 = a121 = simd.zeros(source)
    a200 = a201 = a210 = a211 = a220 = a221 = simd.zeros(source)
    a300 = a301 = a310 = a311 = a320 = a321 = simd.zeros(source)
    for n in range(first_image, first_image + n_images):
        for i in range(out_h):
            x = n * source_image + i * pitch
            g = grads_first + n * grads_image + i * out_w * grads_step
            for _ in range(out_w):
                v0, v1 = simd.load(grads, g), simd.load(grads, g + lanes)
                b = simd.broadcast(source, x + o0)
                a000, a001 = simd.fma(b, v0, a000), simd.fma(b, v1, a001)
                b = simd.broadcast(source, x + o0 + 1)
                a010, a011 = simd.fma(b, v0, a010), simd.fma(b, v1, a011)
                b = simd.broadcast(source, x + o0 + 2)
                a020, a021 = simd.fma(b, v0, a020), simd.fma(b, v1, a021)
                b = simd.broadcast(source, x + o1)
                a100, a101 = simd.fma(b, v0, a100), simd.fma(b, v1, a101)
                b = simd.broadcast(source, x + o1 + 1)
                a110, a111 = simd.fma(b, v0, a110), simd.fma(b, v1, a111)
                b = simd.broadcast(source, x + o1 + 2)
                a120, a121 = simd.fma(b, v0, a120), simd.fma(b, v1, a121)
                b = simd.broadcast(source, x + o2)
                a200, a201 = simd.fma(b, v0, a200), simd.fma(b, v1, a201)
                b = simd.broadcast(source, x + o2 + 1)
                a210, a211 = simd.fma(b, v0, a210), simd.fma(b, v1, a211)
                b = simd.broadcast(source, x + o2 + 2)
                a220, a221 = simd.fma(b, v0, a220), simd.fma(b, v1, a221)
                b = simd.broadcast(source, x + o3)
                a300, a301 = simd.fma(b, v0, a300), simd.fma(b, v1, a301)
                b = simd.broadcast(source, x + o3 + 1)
                a310, a311 = simd.fma(b, v0, a310), simd.fma(b, v1, a311)
                b = simd.broadcast(source, x + o3 + 2)
                a320, a321 = simd.fma(b, v0, a320), simd.fma(b, v1, a321)
                x += 1
                g += grads_step
    for t, acc in enumerate((a000, a001, a010, a011, a020, a021,
                            a100, a101, a110, a111, a120, a121,
                            a200, a201, a210, a211, a220, a221,
                            a300, a301, a310, a311, a320, a321)):
        simd.store(out, t * lanes, acc)


@kernel()
def runs_x_vector(source, grads, out, runs, first_image, n_images, source_image, out_h, out_w,
                  pitch, grads_first, grads_image, grads_step):
    """:func:`runs_x_filters` one vector of filters wide: ``out[(r * 3 + s) * lanes + l]``
    (12 sums in registers; per position one load, 12 broadcasts)."""
    lanes = simd.lanes(source)
    o0, o1, o2, o3 = runs[0], runs[1], runs[2], runs[3]
    a000 = a010 = a020 = a100 = a110 = a120 = simd.zeros(source)
    a200 = a210 = a220 = a300 = a310 = a320 = simd.zeros(source)
    for n in range(first_image, first_image + n_images):
        for i in range(out_h):
            x = n * source_image + i * pitch
            g = grads_first + n * grads_image + i * out_w * grads_step
            for _ in range(out_w):
                v0 = simd.load(grads, g)
                b = simd.broadcast(source, x + o0)
                a000 = simd.fma(b, v0, a000)
                b = simd.broadcast(source, x + o0 + 1)
                a010 = simd.fma(b, v0, a010)
                b = simd.broadcast(source, x + o0 + 2)
                a020 = simd.fma(b, v0, a020)
                b = simd.broadcast(source, x + o1)
                a100 = simd.fma(b, v0, a100)
                b = simd.broadcast(source, x + o1 + 1)
                a110 = simd.fma(b, v0, a110)
                b = simd.broadcast(source, x + o1 + 2)
                a120 = simd.fma(b, v0, a120)
                b = simd.broadcast(source, x + o2)
                a200 = simd.fma(b, v0, a200)
                b = simd.broadcast(source, x + o2 + 1)
                a210 = simd.fma(b, v0, a210)
                b = simd.broadcast(source, x + o2 + 2)
                a220 = simd.fma(b, v0, a220)
                b = simd.broadcast(source, x + o3)
                a300 = simd.fma(b, v0, a300)
                b = simd.broadcast(source, x + o3 + 1)
                a310 = simd.fma(b, v0, a310)
                b = simd.broadcast(source, x + o3 + 2)
                a320 = simd.fma(b, v0, a320)
                x += 1
                g += grads_step
    for t, acc in enumerate((a000, a010, a020, a100, a110, a120,
                            a200, a210, a220, a300, a310, a320)):
        simd.store(out, t * lanes, acc)

