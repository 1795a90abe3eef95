"""Direct convolution: JIT loops over the definition.

The ``direct`` algorithm's host functions send convolutions with at least
4 filters per group to the register-tiled kernels of :mod:`.blocked` (conv2d
and grad_input at any stride, grad_weight at stride 1); the loops here serve
the rest: depthwise and other layers of 1-3 filters per group, a non-finite
weight's grad_input, and grad_weight at a stride or beyond the blocked kernel's
scratch. They are fast where one output needs few multiply-adds (few channels
per group, small kernels), where building GEMM columns costs more than the
arithmetic they feed.

Each task takes one image, one group, a block of output channels and a band
of output rows. It copies the ``(b - 1) * stride + dilation * (R - 1) + 1``
padded input rows that its ``b`` output rows read, one input channel at a time,
into a zero-bordered strip in its own buffer (so no index ever leaves the
input), and accumulates every tap as one long vectorised loop. With stride 1
the outputs are computed on the padded row pitch: output ``(i, j)`` of the
band sits at ``i * W_pad + j`` and tap ``(r, s)`` reads
``strip[i * W_pad + j + r * dh * W_pad + s * dw]``, a plain shifted slice; the
``W_pad - W_out`` junk columns per row are dropped when the result is written
out (grad_weight, whose sums run over them, recomputes a filter whose result is
not all finite without them: see :func:`_conv2d_grad_weight_direct`).

Depthwise layers (one channel per group) compute each filter's sums in one pass
over its taps instead, on explicit vectors of :mod:`.simd`, then store them with the
bias. At stride 1 with the output the input's size and small planes
(:func:`_on_planes`), on whole planes: a task copies one plane between zeros and
computes each filter on the plane's own row pitch, a filter column's sums zeroed where
they read across a row's border (:func:`.simd.keep` of a mask), each plane stored as one
run (:func:`_conv2d_depthwise_planes`; its weight gradient
:func:`_depthwise_planes_grad_weight`, with grad_input through the flipped forward:
0.45-0.89 of the time of the banded kernels below on MobileNet's 3x3 layers). Else, 3x3
at stride 1 on the padded rows (:func:`_taps_3x3`, 1.4-2x faster than a
pass per kernel row over an accumulator); any other kernel, and any kernel at a
stride, in :func:`_conv2d_depthwise_phases`, which copies the band's input rows
(at a stride, deals them into their ``stride_h * stride_w`` phases first,
:func:`.blocked._phase_rows`, in each of which every tap is again a shifted run of the
positions) and sums each filter's taps at their offsets there (:func:`_taps_at`, four
vectors of positions at a time). On the loops below, a MobileNet's 3x3 stride-2 layers
ran at a third of torch's speed, and 5x5 and 7x7 layers at 1.2-1.6x the time they take
there. Their weight gradient runs on the same strips
(:func:`_depthwise_grad_weight_phases`): each tap's sum is a dot product of the strip
at the tap's offset with the filter's output gradient laid on the strip's pitch
(:func:`_taps_dot`), at stride 1 on small planes several images' planes one after the
other in one strip (``DEPTHWISE_STACK_BYTES``); their grad_input at a stride runs phase
by phase of the input (:func:`_depthwise_grad_input_phases`): each phase a stride-1
correlation of the output gradient's strip with the taps that reach that phase, the
phases' rows woven together as they are stored.

Bands keep each thread's scratch within ``config.DIRECT_TILE_BYTES`` whatever
the image height (:func:`.strips.band_rows`); the default budget holds a whole plane of
common layers, which then run in one band, and a band is at least one output
row, so only very wide images go over it (one window of padded input rows and
one output row per channel of the block).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import prange

from .. import activations, config
from ..dispatch import register
from . import blocked, fewtaps, identities, simd, strips, threads, workspace
from ._jit import kernel
from .epilogue import store_row
from .finite import all_finite, finite_values
from .strips import _padded_rows, _to_pitch, flat


@kernel()
def _taps_3x3(source, row_step, dw, w, sums, n):
    """sums[p] = sum_{r, s} w[r, s] * source[p + r * row_step + s * dw] for p < n: a 3x3
    filter over one channel on the padded row pitch, each position in one pass over its
    taps, a full vector (:mod:`.simd`) at a time. The last vector runs past ``n``: it
    reads up to ``lanes - 1`` values past the taps of position ``n - 1`` and writes as
    far past ``sums[n - 1]`` (both arrays keep that slack)."""
    lanes = simd.lanes(source)
    w00, w01, w02 = simd.splat(w[0, 0], source), simd.splat(w[0, 1], source), simd.splat(
        w[0, 2], source)
    w10, w11, w12 = simd.splat(w[1, 0], source), simd.splat(w[1, 1], source), simd.splat(
        w[1, 2], source)
    w20, w21, w22 = simd.splat(w[2, 0], source), simd.splat(w[2, 1], source), simd.splat(
        w[2, 2], source)
    for p in range(0, n, lanes):
        a = simd.fma(w00, simd.load(source, p), simd.zeros(source))
        a = simd.fma(w01, simd.load(source, p + dw), a)
        a = simd.fma(w02, simd.load(source, p + 2 * dw), a)
        q = p + row_step
        a = simd.fma(w10, simd.load(source, q), a)
        a = simd.fma(w11, simd.load(source, q + dw), a)
        a = simd.fma(w12, simd.load(source, q + 2 * dw), a)
        q += row_step
        a = simd.fma(w20, simd.load(source, q), a)
        a = simd.fma(w21, simd.load(source, q + dw), a)
        a = simd.fma(w22, simd.load(source, q + 2 * dw), a)
        simd.store(sums, p, a)


@kernel()
def _taps_at(source, taps, w, sums, n):
    """sums[p] = sum_t w[t] * source[p + taps[t]] for p < n: one filter's taps at their
    own offsets in one channel's strip (its padded rows, at a stride their phases), each
    position in one pass over them, a vector at a time; the last vector runs past ``n``
    as in :func:`_taps_3x3`."""
    lanes = simd.lanes(source)
    if taps.size == 9:  # a 3x3 filter: its weights and offsets held in registers
        w0, w1, w2 = simd.broadcast(w, 0), simd.broadcast(w, 1), simd.broadcast(w, 2)
        w3, w4, w5 = simd.broadcast(w, 3), simd.broadcast(w, 4), simd.broadcast(w, 5)
        w6, w7, w8 = simd.broadcast(w, 6), simd.broadcast(w, 7), simd.broadcast(w, 8)
        t0, t1, t2, t3, t4 = taps[0], taps[1], taps[2], taps[3], taps[4]
        t5, t6, t7, t8 = taps[5], taps[6], taps[7], taps[8]
        for p in range(0, n, lanes):
            a = simd.fma(w0, simd.load(source, p + t0), simd.zeros(source))
            a = simd.fma(w1, simd.load(source, p + t1), a)
            a = simd.fma(w2, simd.load(source, p + t2), a)
            a = simd.fma(w3, simd.load(source, p + t3), a)
            a = simd.fma(w4, simd.load(source, p + t4), a)
            a = simd.fma(w5, simd.load(source, p + t5), a)
            a = simd.fma(w6, simd.load(source, p + t6), a)
            a = simd.fma(w7, simd.load(source, p + t7), a)
            a = simd.fma(w8, simd.load(source, p + t8), a)
            simd.store(sums, p, a)
        return
    # four vectors of positions at a time: four independent chains of multiply-adds
    # (one chain waits on each multiply-add's latency) sharing each tap's broadcast
    p = 0
    while p + 3 * lanes < n:
        a0 = a1 = a2 = a3 = simd.zeros(source)
        for t in range(taps.size):
            v, at = simd.broadcast(w, t), p + taps[t]
            a0 = simd.fma(v, simd.load(source, at), a0)
            a1 = simd.fma(v, simd.load(source, at + lanes), a1)
            a2 = simd.fma(v, simd.load(source, at + 2 * lanes), a2)
            a3 = simd.fma(v, simd.load(source, at + 3 * lanes), a3)
        simd.store(sums, p, a0)
        simd.store(sums, p + lanes, a1)
        simd.store(sums, p + 2 * lanes, a2)
        simd.store(sums, p + 3 * lanes, a3)
        p += 4 * lanes
    while p < n:
        a = simd.zeros(source)
        for t in range(taps.size):
            a = simd.fma(simd.broadcast(w, t), simd.load(source, p + taps[t]), a)
        simd.store(sums, p, a)
        p += lanes


@kernel()
def _taps_dot(source, taps, grads, n, out):
    """out[t] += sum_{p < n} grads[p] * source[p + taps[t]]: one band of a depthwise
    filter's weight gradient, ``grads`` the band's output gradient on the strip's row
    pitch (zeros in its junk columns, and from ``n`` for a vector's slack), ``source``
    the channel's strip as :func:`_taps_at` reads it. A 3x3 filter's nine sums in
    registers over one pass of the positions (a vector of ``grads`` loaded once for
    the nine taps); other filters a tap at a time, two vectors of positions a step."""
    lanes = simd.lanes(source)
    if taps.size == 9:
        z = simd.zeros(source)
        for t, acc in enumerate(_taps_dot9(source, taps, grads, n, (z, z, z, z, z, z, z, z, z))):
            out[t] += simd.total(acc)
        return
    for t in range(taps.size):
        at = taps[t]
        a0 = a1 = simd.zeros(source)
        p = 0
        while p + lanes < n:
            a0 = simd.fma(simd.load(grads, p), simd.load(source, p + at), a0)
            a1 = simd.fma(simd.load(grads, p + lanes), simd.load(source, p + at + lanes), a1)
            p += 2 * lanes
        if p < n:
            a0 = simd.fma(simd.load(grads, p), simd.load(source, p + at), a0)
        out[t] += simd.total(simd.add(a0, a1))


@kernel()
def _taps_dot9(source, taps, grads, n, sums):
    """The products of :func:`_taps_dot` for a 3x3 filter added onto ``sums``, its nine
    taps' vectors of sums, returned: a channel's sums held in registers from one image to
    the next and added up once (added up per band, the weight gradient of a C960 7x7
    layer took 1.37x as long on one thread of a Zen 2)."""
    lanes = simd.lanes(source)
    t0, t1, t2, t3, t4 = taps[0], taps[1], taps[2], taps[3], taps[4]
    t5, t6, t7, t8 = taps[5], taps[6], taps[7], taps[8]
    a0, a1, a2, a3, a4, a5, a6, a7, a8 = sums
    for p in range(0, n, lanes):
        g = simd.load(grads, p)
        a0 = simd.fma(g, simd.load(source, p + t0), a0)
        a1 = simd.fma(g, simd.load(source, p + t1), a1)
        a2 = simd.fma(g, simd.load(source, p + t2), a2)
        a3 = simd.fma(g, simd.load(source, p + t3), a3)
        a4 = simd.fma(g, simd.load(source, p + t4), a4)
        a5 = simd.fma(g, simd.load(source, p + t5), a5)
        a6 = simd.fma(g, simd.load(source, p + t6), a6)
        a7 = simd.fma(g, simd.load(source, p + t7), a7)
        a8 = simd.fma(g, simd.load(source, p + t8), a8)
    return a0, a1, a2, a3, a4, a5, a6, a7, a8


@kernel(parallel=True)
def _conv2d_depthwise_phases(x, taps_w, bias, has_bias, floor, out, pad_top, pad_left,
                             stride_h, stride_w, pitch, phase_rows, taps, band, scratch, part,
                             parts):
    """out[n, k] = max(floor, bias[k] + sum_{r, s} w[k, r, s] * x_padded[n, k // m, i*sh +
    r*dh, j*sw + s*dw]) for a layer of one channel per group (``m`` = K / C filters each)
    at a stride: ``taps_w`` the weight as ``(K, R * S)``; a task, one image, one channel
    and a band of ``band`` output rows, deals the band's padded input rows into their
    ``sh * sw`` phases (:func:`.blocked._phase_rows`, ``phase_rows`` rows of ``pitch``
    values each), where tap ``t`` of output ``p = i * pitch + j`` is value ``p +
    taps[t]`` (:func:`.blocked._tap_table`), sums each filter there in one pass
    (:func:`_taps_at`) and stores its rows with the bias and the floor."""
    n_img, channels = x.shape[0], x.shape[1]
    out_channels, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
    per_group = out_channels // channels
    n_bands = (out_h + band - 1) // band
    n_tasks = n_img * channels * n_bands
    n_chunks = scratch.shape[0]
    # the phases and a vector of slack (the last vector's reads past the last position)
    strip_len = stride_h * stride_w * phase_rows * pitch + simd.WIDTH_BYTES // x.itemsize
    x_flat, out_flat = flat(x), flat(out)  # rows by offset, not by view
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        strip = scratch[chunk, :strip_len]
        sums = scratch[chunk, strip_len:]
        strip[:] = 0  # the padding columns stay zero: every task writes the same columns
        zero = strip[0]  # a zero of the data's type
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            n, c = task // (channels * n_bands), task // n_bands % channels
            i_first = task % n_bands * band
            rows = min(band, out_h - i_first)
            blocked._phase_rows(strip, np.int64(0), x, x_flat, n, c, i_first * stride_h - pad_top,
                                phase_rows, pad_left, pitch, stride_h, stride_w)
            for kk in range(per_group):
                k = c * per_group + kk
                _taps_at(strip, taps, taps_w[k], sums, (rows - 1) * pitch + out_w)
                b = bias[k] if has_bias else zero
                for i in range(rows):
                    store_row(sums, i * pitch, out_flat, out, n, k, i_first + i, out_w, b,
                              floor)


@kernel(parallel=True)
def _depthwise_grad_weight_phases(x, grad_out, taps_gw, pad_top, pad_left, stride_h, stride_w,
                                  pitch, phase_rows, taps, band, images, scratch, part, parts):
    """taps_gw[k, t] = sum_{n, i, j} grad_out[n, k, i, j] * x_padded[n, k // m, i*sh +
    r*dh, j*sw + s*dw] (``t = r * S + s``) for a layer of one channel per group (``m`` =
    K / C filters each): the strip of :func:`_conv2d_depthwise_phases` (a band's input
    rows, at a stride dealt into their phases; tap ``t`` of output ``p = i * pitch + j``
    at ``p + taps[t]``) and the band's rows of each filter's output gradient on the same
    pitch (:func:`_taps_dot`). A task owns a channel and its filters, so each sum runs
    over the images and bands in one fixed order. With ``images`` > 1 (stride 1, whole
    planes in one band: small planes) that many images' planes lie one after the other
    in the strip, ``phase_rows * pitch`` values apart, and one pass of the dot products
    runs over all of them: the rows between two planes hold zeros of the output
    gradient. The junk columns' zeros meet input values there (``0 * Inf = NaN``): the
    caller computes a result that is not all finite again."""
    n_img, channels = x.shape[0], x.shape[1]
    out_channels, out_h, out_w = grad_out.shape[1], grad_out.shape[2], grad_out.shape[3]
    per_group = out_channels // channels
    n_chunks = scratch.shape[0]
    lanes = simd.WIDTH_BYTES // x.itemsize
    plane = phase_rows * pitch  # an image's place in the strip, with images > 1
    strip_len = stride_h * stride_w * phase_rows * pitch * images + lanes
    x_flat = flat(x)  # rows by offset, not by view
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        strip = scratch[chunk, :strip_len]
        pitched = scratch[chunk, strip_len:]
        strip[:] = 0  # the padding columns stay zero: every band writes the same columns
        pitched[:] = 0  # and so do the junk columns and the rows between planes
        # a 3x3 filter, one a channel: its nine sums in registers over every image and band
        in_registers = taps.size == 9 and per_group == 1
        for c in range(chunk * channels // n_chunks, (chunk + 1) * channels // n_chunks):
            for kk in range(per_group):
                taps_gw[c * per_group + kk] = 0
            z = simd.zeros(strip)
            sums = (z, z, z, z, z, z, z, z, z)
            for n_first in range(0, n_img, images):
                n_here = min(images, n_img - n_first)
                for i_first in range(0, out_h, band):
                    rows = min(band, out_h - i_first)
                    for q in range(n_here):
                        blocked._phase_rows(strip, np.int64(q * plane), x, x_flat, n_first + q,
                                            c, i_first * stride_h - pad_top, phase_rows,
                                            pad_left, pitch, stride_h, stride_w)
                    count = (n_here - 1) * plane + (rows - 1) * pitch + out_w
                    for kk in range(per_group):
                        k = c * per_group + kk
                        for q in range(n_here):
                            _to_pitch(pitched, grad_out[n_first + q, k, i_first : i_first + rows],
                                      q * plane, pitch)
                        pitched[count : count + lanes] = 0  # a taller band's or group's rows
                        if in_registers:
                            sums = _taps_dot9(strip, taps, pitched, count, sums)
                        else:
                            _taps_dot(strip, taps, pitched, count, taps_gw[k])
            if in_registers:
                for t, acc in enumerate(sums):
                    taps_gw[c, t] = simd.total(acc)


@kernel(parallel=True)
def _depthwise_grad_input_phases(grad_out, taps_w, grad_in, first_row, pad_left, stride_h,
                                 stride_w, pitch, strip_rows, taps, counts, band, floor,
                                 scratch, part, parts):
    """grad_in[n, c, a + i*sh, b + j*sw] = sum_{kk < m, t < counts[q]} taps_w[c*m + kk, q,
    t] * grad_out_padded[n, c*m + kk] at tap ``taps[q, t]`` of position ``(i, j)``, ``q = a
    * sw + b``: the grad_input of a layer of one channel per group (``m`` = K / C filters
    each) at a stride, phase by phase of the input (rows ``a + i * sh``, columns ``b + j *
    sw``), each phase a stride-1 correlation of grad_out with the taps that reach it
    (:func:`_grad_input_phases`). A task, one image, one input channel and a band of
    ``band`` rows of phase 0, copies each of its filters' grad_out rows into a strip
    (``strip_rows`` rows from row ``i_first + first_row``, ``pad_left`` zero columns
    before each row, on ``pitch``), where tap ``t`` of phase ``q`` of position ``p = i *
    pitch + j`` is value ``p + taps[q, t]``, sums each phase's taps there in one pass
    (:func:`_taps_at`) and stores the phases' rows woven together (two column phases on
    vectors, :func:`.strips.weave_row`). ``floor``: -inf of the data's type."""
    n_img, channels, in_h, in_w = grad_in.shape
    per_group = grad_out.shape[1] // channels
    n_bands = ((in_h + stride_h - 1) // stride_h + band - 1) // band
    n_tasks = n_img * channels * n_bands
    n_chunks = scratch.shape[0]
    lanes = simd.WIDTH_BYTES // grad_out.itemsize
    strip_len = strip_rows * pitch + lanes  # a vector of slack: the last vector's reads
    plane = band * pitch + lanes  # a phase's sums, the last vector's stores past the rows
    phases = stride_h * stride_w
    one = np.int64(1)  # not a literal: _phase_rows compiles once (see _jit.jit_options)
    source, target = flat(grad_out), flat(grad_in)  # rows by offset, not by view
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        strip = scratch[chunk, :strip_len]
        sums = scratch[chunk, strip_len : strip_len + phases * plane]
        extra = scratch[chunk, strip_len + phases * plane :]  # a filter's sums, m > 1
        strip[:] = 0  # the padding columns stay zero: every task writes the same columns
        zero = strip[0]  # a zero of the data's type
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            n, c = task // (channels * n_bands), task // n_bands % channels
            i_first = task % n_bands * band
            for kk in range(per_group):
                k = c * per_group + kk
                blocked._phase_rows(strip, np.int64(0), grad_out, source, n, k,
                                    i_first + first_row, strip_rows, pad_left, pitch, one, one)
                for q in range(phases):
                    rows = min(band, (in_h - q // stride_w + stride_h - 1) // stride_h - i_first)
                    cols = (in_w - q % stride_w + stride_w - 1) // stride_w
                    if rows <= 0 or cols <= 0:
                        continue
                    count, at = (rows - 1) * pitch + cols, q * plane
                    if counts[q] == 0:  # no tap reaches the phase (a dilation of the stride)
                        sums[at : at + count] = 0
                    elif kk == 0:
                        _taps_at(strip, taps[q, : counts[q]], taps_w[k, q, : counts[q]],
                                 sums[at : at + plane], count)
                    else:
                        _taps_at(strip, taps[q, : counts[q]], taps_w[k, q, : counts[q]],
                                 extra, count)
                        for p in range(count):
                            sums[at + p] += extra[p]
            for a in range(stride_h):
                for i in range(min(band, (in_h - a + stride_h - 1) // stride_h - i_first)):
                    row, at = a + (i_first + i) * stride_h, a * stride_w * plane + i * pitch
                    if stride_w == 1:
                        store_row(sums, at, target, grad_in, n, c, row, in_w, zero, floor)
                    elif stride_w == 2:
                        strips.weave_row(target, grad_in, n, c, row, sums, at, at + plane)
                    else:
                        for col in range(in_w):
                            grad_in[n, c, row, col] = sums[at + col % stride_w * plane
                                                           + col // stride_w]


@kernel(inline=True, counted=False)
def _plane_taps(strip, front, taps, masks, w, at, target, dst, hw, bias, low):
    """``target[dst + p] = max(low, bias + sum_s keep(sum_r w[at + r * S + s] *
    strip[front + p + taps[s, r]], masks[s * M + p]))`` for ``p < hw`` (``M = masks.size //
    S``): one filter over a channel's plane laid on its own row pitch in ``strip``, column
    by column of the filter (a column's taps read the row before's or after's values at
    the plane's left or right border, where its mask zeroes the column's sum), four
    vectors of positions a step for a larger filter on a plane of as many. The last vector
    (step) ends the plane, overlapping the one before (``hw >= lanes``). A 3x3 filter's
    middle column is not masked: its mask is all set (the padding is symmetric,
    :func:`_on_planes`)."""
    lanes = simd.lanes(strip)
    kw, kh = taps.shape
    pitch = masks.size // kw
    last = hw - lanes
    p = 0
    if kh == 3 and kw == 3:  # the weights and offsets in registers
        w00, w01, w02 = simd.broadcast(w, at), simd.broadcast(w, at + 1), simd.broadcast(w, at + 2)
        w10, w11, w12 = (simd.broadcast(w, at + 3), simd.broadcast(w, at + 4),
                         simd.broadcast(w, at + 5))
        w20, w21, w22 = (simd.broadcast(w, at + 6), simd.broadcast(w, at + 7),
                         simd.broadcast(w, at + 8))
        t00, t01, t02 = taps[0, 0], taps[0, 1], taps[0, 2]
        t10, t11, t12 = taps[1, 0], taps[1, 1], taps[1, 2]
        t20, t21, t22 = taps[2, 0], taps[2, 1], taps[2, 2]
        while True:
            q = front + p
            z = simd.zeros(strip)
            c0 = simd.fma(w00, simd.load(strip, q + t00), simd.fma(
                w10, simd.load(strip, q + t01), simd.fma(w20, simd.load(strip, q + t02), z)))
            c1 = simd.fma(w01, simd.load(strip, q + t10), simd.fma(
                w11, simd.load(strip, q + t11), simd.fma(w21, simd.load(strip, q + t12), z)))
            c2 = simd.fma(w02, simd.load(strip, q + t20), simd.fma(
                w12, simd.load(strip, q + t21), simd.fma(w22, simd.load(strip, q + t22), z)))
            a = simd.add(simd.add(simd.keep(c0, simd.load(masks, p)), c1),
                         simd.keep(c2, simd.load(masks, 2 * pitch + p)))
            simd.store(target, dst + p, simd.maximum(simd.add(a, bias), low))
            if p == last:
                return
            p = min(p + lanes, last)
    # larger filters: four vectors of positions a step, each weight broadcast once for
    # them (the last step ends the plane, overlapping the one before), then one at a time
    # on planes of fewer positions
    block = 4 * lanes
    while hw >= block:
        q = front + p
        a0, a1, a2, a3 = bias, bias, bias, bias
        for s in range(kw):
            c0 = c1 = c2 = c3 = simd.zeros(strip)
            for r in range(kh):
                v, t = simd.broadcast(w, at + r * kw + s), q + taps[s, r]
                c0 = simd.fma(v, simd.load(strip, t), c0)
                c1 = simd.fma(v, simd.load(strip, t + lanes), c1)
                c2 = simd.fma(v, simd.load(strip, t + 2 * lanes), c2)
                c3 = simd.fma(v, simd.load(strip, t + 3 * lanes), c3)
            m = s * pitch + p
            a0 = simd.add(a0, simd.keep(c0, simd.load(masks, m)))
            a1 = simd.add(a1, simd.keep(c1, simd.load(masks, m + lanes)))
            a2 = simd.add(a2, simd.keep(c2, simd.load(masks, m + 2 * lanes)))
            a3 = simd.add(a3, simd.keep(c3, simd.load(masks, m + 3 * lanes)))
        simd.store(target, dst + p, simd.maximum(a0, low))
        simd.store(target, dst + p + lanes, simd.maximum(a1, low))
        simd.store(target, dst + p + 2 * lanes, simd.maximum(a2, low))
        simd.store(target, dst + p + 3 * lanes, simd.maximum(a3, low))
        if p == hw - block:
            return
        p = min(p + block, hw - block)
    while True:
        q = front + p
        a = bias
        for s in range(kw):
            column = simd.zeros(strip)
            for r in range(kh):
                column = simd.fma(simd.broadcast(w, at + r * kw + s),
                                  simd.load(strip, q + taps[s, r]), column)
            a = simd.add(a, simd.keep(column, simd.load(masks, s * pitch + p)))
        simd.store(target, dst + p, simd.maximum(a, low))
        if p == last:
            return
        p = min(p + lanes, last)


@kernel(inline=True, counted=False)
def _plane_into_strip(source, at, strip, front, hw):
    """``strip[front : front + hw] = source[at : at + hw]`` on vectors, the last one
    ending the plane (``hw >= lanes``)."""
    lanes = simd.lanes(strip)
    last = hw - lanes
    for p in range(0, last, lanes):
        simd.store(strip, front + p, simd.load(source, at + p))
    simd.store(strip, front + last, simd.load(source, at + last))


@kernel(parallel=True)
def _conv2d_depthwise_planes(x, taps_w, bias, has_bias, floor, out, taps, masks, front,
                             scratch, part, parts):
    """out[n, k] = max(floor, bias[k] + sum_{r, s} w[k, r, s] * x_padded[n, k // m, i +
    r*dh, j + s*dw]) for a layer of one channel per group (``m`` = K / C filters each) at
    stride 1 whose output keeps its input's size (:func:`_on_planes`). ``x`` and ``out``
    C-contiguous; ``taps_w`` the weight flat. A task, one image and one channel, copies
    the plane between the zeros of a strip (``front`` values before it, its rows above
    and below the plane) and computes each filter on the plane's own pitch
    (:func:`_plane_taps`; tap ``(r, s)`` of output ``p = i * W + j`` at ``front + p +
    taps[s, r]``), stored as one run: no per-row copies or stores."""
    n_img, channels, height, width = x.shape
    out_channels = out.shape[1]
    per_group = out_channels // channels
    hw = height * width
    n_tasks = n_img * channels
    n_chunks = scratch.shape[0]
    taps_per_filter = taps.size
    x_flat, out_flat = flat(x), flat(out)  # planes by offset, not by view
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        strip = scratch[chunk]
        strip[:] = 0  # the zeros around the plane stay: every task writes the same values
        zero = strip[0]  # a zero of the data's type
        low = simd.splat(floor, strip)
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            n, c = task // channels, task % channels
            _plane_into_strip(x_flat, (n * channels + c) * hw, strip, front, hw)
            for k in range(c * per_group, (c + 1) * per_group):
                _plane_taps(strip, front, taps, masks, taps_w, k * taps_per_filter, out_flat,
                            (n * out_channels + k) * hw, hw,
                            simd.splat(bias[k] if has_bias else zero, strip), low)


@kernel(parallel=True)
def _depthwise_planes_grad_weight(x, grad_out, taps_gw, taps, masks, front, scratch, part,
                                  parts):
    """taps_gw[k, r * S + s] = sum_{n, i, j} grad_out[n, k, i, j] * x_padded[n, k // m, i
    + r*dh, j + s*dw] for the layers of :func:`_conv2d_depthwise_planes`, on its strips: a
    task owns a channel and its filters (each sum over the images in one fixed order),
    and each tap's sum is a dot product of the plane's output gradient, its mask taken
    for the tap's column, with the strip at the tap's offset; the last vector of a plane
    reads its output gradient masked (zeros past the plane). A 3x3 filter, one a
    channel, keeps its nine sums in registers over every image. Input values read
    across a row's border meet masked zeros there (``0 * Inf = NaN``): the caller
    computes a result that is not all finite again."""
    n_img, channels, height, width = x.shape
    out_channels = grad_out.shape[1]
    per_group = out_channels // channels
    hw = height * width
    kw, kh = taps.shape
    pitch = masks.size // kw
    n_chunks = scratch.shape[0]
    lanes = simd.lanes(x)
    whole = hw - hw % lanes  # the plane's positions in whole vectors
    x_flat, g_flat = flat(x), flat(grad_out)  # planes by offset, not by view
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        strip = scratch[chunk]
        strip[:] = 0  # the zeros around the plane stay: every image writes the same values
        for c in range(chunk * channels // n_chunks, (chunk + 1) * channels // n_chunks):
            if kh == 3 and kw == 3 and per_group == 1:
                t00, t01, t02 = taps[0, 0], taps[0, 1], taps[0, 2]
                t10, t11, t12 = taps[1, 0], taps[1, 1], taps[1, 2]
                t20, t21, t22 = taps[2, 0], taps[2, 1], taps[2, 2]
                a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = simd.zeros(strip)
                for n in range(n_img):
                    _plane_into_strip(x_flat, (n * channels + c) * hw, strip, front, hw)
                    at = (n * out_channels + c) * hw
                    for p in range(0, hw, lanes):
                        g = (simd.load(g_flat, at + p) if p < whole
                             else simd.load_first(g_flat, at + p, hw - p))
                        g0 = simd.keep(g, simd.load(masks, p))  # (the middle column: unmasked)
                        g2 = simd.keep(g, simd.load(masks, 2 * pitch + p))
                        q = front + p
                        a00 = simd.fma(g0, simd.load(strip, q + t00), a00)
                        a01 = simd.fma(g0, simd.load(strip, q + t01), a01)
                        a02 = simd.fma(g0, simd.load(strip, q + t02), a02)
                        a10 = simd.fma(g, simd.load(strip, q + t10), a10)
                        a11 = simd.fma(g, simd.load(strip, q + t11), a11)
                        a12 = simd.fma(g, simd.load(strip, q + t12), a12)
                        a20 = simd.fma(g2, simd.load(strip, q + t20), a20)
                        a21 = simd.fma(g2, simd.load(strip, q + t21), a21)
                        a22 = simd.fma(g2, simd.load(strip, q + t22), a22)
                # taps[s, r]: tap t = r * 3 + s
                taps_gw[c, 0], taps_gw[c, 3], taps_gw[c, 6] = (
                    simd.total(a00), simd.total(a01), simd.total(a02))
                taps_gw[c, 1], taps_gw[c, 4], taps_gw[c, 7] = (
                    simd.total(a10), simd.total(a11), simd.total(a12))
                taps_gw[c, 2], taps_gw[c, 5], taps_gw[c, 8] = (
                    simd.total(a20), simd.total(a21), simd.total(a22))
                continue
            for k in range(c * per_group, (c + 1) * per_group):
                taps_gw[k] = 0
            for n in range(n_img):
                _plane_into_strip(x_flat, (n * channels + c) * hw, strip, front, hw)
                for k in range(c * per_group, (c + 1) * per_group):
                    at = (n * out_channels + k) * hw
                    for s in range(kw):
                        for r in range(kh):
                            # two chains of multiply-adds (one waits on each one's latency)
                            t, m = front + taps[s, r], s * pitch
                            acc0 = acc1 = simd.zeros(strip)
                            p = 0
                            while p + 2 * lanes <= whole:
                                acc0 = simd.fma(simd.keep(simd.load(g_flat, at + p),
                                                          simd.load(masks, m + p)),
                                                simd.load(strip, t + p), acc0)
                                acc1 = simd.fma(simd.keep(simd.load(g_flat, at + p + lanes),
                                                          simd.load(masks, m + p + lanes)),
                                                simd.load(strip, t + p + lanes), acc1)
                                p += 2 * lanes
                            for q in range(p, hw, lanes):
                                g = (simd.load(g_flat, at + q) if q < whole
                                     else simd.load_first(g_flat, at + q, hw - q))
                                acc0 = simd.fma(simd.keep(g, simd.load(masks, m + q)),
                                                simd.load(strip, t + q), acc0)
                            taps_gw[k, r * kw + s] += simd.total(simd.add(acc0, acc1))


@kernel(parallel=True)
def _conv2d_forward_direct(x, weight, bias, has_bias, floor, out, stride_h, stride_w, pad_top,
                           pad_left, padded_w, dilation_h, dilation_w, groups, block_k, band,
                           scratch, part, parts):
    """out[n, k] = max(floor, bias[k]
    + sum_{c, r, s} weight[k, c, r, s] * x_padded[n, c, i*sh + r*dh, j*sw + s*dw]),
    ``band`` output rows per task (``floor``: :func:`fastconv.activations.floor`)."""
    n_img = x.shape[0]
    out_channels, group_channels, kh, kw = weight.shape
    out_h, out_w = out.shape[2], out.shape[3]
    per_group = out_channels // groups
    n_blocks = (per_group + block_k - 1) // block_k
    n_bands = (out_h + band - 1) // band
    n_tasks = n_img * groups * n_blocks * n_bands
    n_chunks = scratch.shape[0]
    unit_stride = stride_h == 1 and stride_w == 1
    pitch = padded_w if unit_stride else out_w
    window = dilation_h * (kh - 1) + 1  # input rows one output row reads
    strip_len = ((band - 1) * stride_h + window) * padded_w
    # one channel per group, stride 1, 3x3 (depthwise layers): each filter's sums in one
    # pass over its taps (not one pass per kernel row over an accumulator)
    one_pass = group_channels == 1 and unit_stride and kh == 3 and kw == 3
    x_flat, out_flat = flat(x), flat(out)  # rows by offset, not by view
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        strip = scratch[chunk, :strip_len]
        strip[:] = 0
        zero = strip[0]  # a zero of the data's type (a literal 0 would promote to float64)
        last_first, last_rows = 0, 0  # rows of the last copy: its zero rows can stay
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            plane_task = task // n_bands
            n = plane_task // (groups * n_blocks)
            g = (plane_task // n_blocks) % groups
            k_first = g * per_group + (plane_task % n_blocks) * block_k
            n_k = min(block_k, (g + 1) * per_group - k_first)
            i_first = (task % n_bands) * band
            rows = min(band, out_h - i_first)
            first = i_first * stride_h - pad_top
            n_rows = (rows - 1) * stride_h + window
            acc_len = (rows - 1) * pitch + out_w
            if one_pass:
                _padded_rows(strip, np.int64(0), x, n, g, first, n_rows, pad_left, padded_w,
                             first != last_first or n_rows != last_rows, x_flat)
                last_first, last_rows = first, n_rows
                # the strip and the sums, with the vector of slack the host leaves after them
                source = scratch[chunk]
                sums = source[strip_len:]
                for kk in range(n_k):
                    k = k_first + kk
                    _taps_3x3(source, dilation_h * padded_w, dilation_w, weight[k, 0], sums,
                              acc_len)
                    b = bias[k] if has_bias else zero
                    for i in range(rows):
                        store_row(sums, i * pitch, out_flat, out, n, k, i_first + i, out_w, b,
                                  floor)
                continue
            acc = scratch[chunk, strip_len : strip_len + n_k * acc_len]
            acc[:] = 0
            for c in range(group_channels):
                _padded_rows(strip, np.int64(0), x, n, g * group_channels + c, first, n_rows,
                             pad_left, padded_w, first != last_first or n_rows != last_rows,
                             x_flat)
                last_first, last_rows = first, n_rows
                for kk in range(n_k):
                    a = acc[kk * acc_len : (kk + 1) * acc_len]
                    w_k = weight[k_first + kk, c]
                    for r in range(kh):
                        row_shift = r * dilation_h * padded_w
                        if unit_stride and kw == 3:
                            # a row of three taps in one pass: one load and store of a[j]
                            t0 = strip[row_shift:]
                            t1 = strip[row_shift + dilation_w :]
                            t2 = strip[row_shift + 2 * dilation_w :]
                            w0, w1, w2 = w_k[r, 0], w_k[r, 1], w_k[r, 2]
                            for j in range(acc_len):
                                a[j] += w0 * t0[j] + w1 * t1[j] + w2 * t2[j]
                            continue
                        if unit_stride and kw == 5:
                            t0 = strip[row_shift:]
                            t1 = strip[row_shift + dilation_w :]
                            t2 = strip[row_shift + 2 * dilation_w :]
                            t3 = strip[row_shift + 3 * dilation_w :]
                            t4 = strip[row_shift + 4 * dilation_w :]
                            w0, w1, w2, w3, w4 = (w_k[r, 0], w_k[r, 1], w_k[r, 2], w_k[r, 3],
                                                  w_k[r, 4])
                            for j in range(acc_len):
                                a[j] += (w0 * t0[j] + w1 * t1[j] + w2 * t2[j] + w3 * t3[j]
                                         + w4 * t4[j])
                            continue
                        for s in range(kw):
                            w = w_k[r, s]
                            shift = row_shift + s * dilation_w
                            if unit_stride:
                                taps = strip[shift : shift + acc_len]
                                for j in range(acc_len):
                                    a[j] += w * taps[j]
                            else:
                                for i in range(rows):
                                    taps = strip[i * stride_h * padded_w + shift :]
                                    dst = a[i * out_w : (i + 1) * out_w]
                                    for j in range(out_w):
                                        dst[j] += w * taps[j * stride_w]
            for kk in range(n_k):
                b = bias[k_first + kk] if has_bias else 0
                for i in range(rows):
                    store_row(acc, kk * acc_len + i * pitch, out_flat, out, n, k_first + kk,
                              i_first + i, out_w, b, floor)


#: Values of scratch after the sums: the one-pass kernels' last vector (16 float32).
_SLACK = 16


def _chunks(n_tasks: int) -> int:
    """Scratch rows: one per thread that gets a task."""
    return max(1, min(threads.count(), n_tasks))


@register("conv2d", "cpu", "direct")
def conv2d_direct(x, weight, bias, out, stride, padding, dilation, groups, activation=None):
    """Host side of the direct kernel; arguments as normalised by :func:`fastconv.conv2d`.
    At least 4 filters per group go to the register-blocked kernel of :mod:`.blocked`."""
    if blocked.applies(weight.shape, stride, groups):
        blocked.conv2d_blocked(x, weight, bias, out, stride, padding, dilation, groups,
                               activation=activation)
        return
    if (weight.shape[1] == 1 and _on_planes(x, out, weight.shape[2:], stride, padding, dilation)
            and all_finite(weight)):
        _depthwise_planes(x, weight, bias, out, dilation, activation)
        return
    if weight.shape[1] == 1 and (stride != (1, 1) or weight.shape[2:] != (3, 3)):
        _depthwise_phases(x, weight, bias, out, stride, padding, dilation, activation)
        return
    n_img, _, _, width = x.shape
    out_channels, _, kh, _ = weight.shape
    out_h, out_w = out.shape[2], out.shape[3]
    (top, _), (left, right) = padding
    padded_w = width + left + right
    block_k = max(1, min(config.DIRECT_BLOCK_K, out_channels // groups))
    pitch = padded_w if stride == (1, 1) else out_w
    # a band of b rows: ((b - 1) * sh + window) input rows and block_k accumulators
    window = dilation[0] * (kh - 1) + 1
    band = strips.band_rows(out_h, window * padded_w + block_k * out_w,
                            stride[0] * padded_w + block_k * pitch, x.itemsize)
    n_tasks = n_img * groups * (-(-(out_channels // groups) // block_k)) * (-(-out_h // band))
    chunks = _chunks(n_tasks)
    scratch = workspace.borrow(
        (chunks,
         ((band - 1) * stride[0] + window) * padded_w + block_k * ((band - 1) * pitch + out_w)
         + _SLACK),
        x.dtype,
    )
    has_bias = bias is not None
    threads.launch(
        _conv2d_forward_direct, threads.parts_for(chunks, out, weight[0].size), x, weight,
        bias if has_bias else np.zeros(0, x.dtype), has_bias,
        activations.floor(activation, x.dtype), out, stride[0], stride[1], top, left, padded_w,
        dilation[0], dilation[1], groups, block_k, band, scratch)


def _phase_layout(x, kernel_size, out_hw, stride, padding, dilation):
    """``(pitch, band, phase_rows, taps, strip)`` of the depthwise kernels' strips: a
    band of ``band`` output rows reads ``phase_rows`` rows of each of the ``sh * sw``
    phases of its input rows, ``pitch`` values each, ``strip`` values in all with a
    vector of slack; output ``p = i * pitch + j`` reads tap ``t`` at ``p + taps[t]``
    (:func:`.blocked._tap_table`). A band's phases and its rows of sums (or of output
    gradient) on the pitch fill at most the scratch budget of :func:`.strips.band_rows`."""
    (kh, kw), (out_h, out_w) = kernel_size, out_hw
    (left, right) = padding[1]
    phases = stride[0] * stride[1]
    pitch = -(-(x.shape[3] + left + right) // stride[1])
    reach = dilation[0] * (kh - 1) // stride[0]  # phase rows below a band's last row
    lanes = simd.WIDTH_BYTES // x.itemsize
    # a band of b rows: (b + reach) rows of each phase, and the sums of b rows
    band = strips.band_rows(out_h, phases * (1 + reach) * pitch + out_w + 2 * lanes,
                            (phases + 1) * pitch, x.itemsize)
    phase_rows = band + reach
    taps = np.ascontiguousarray(blocked._tap_table(kh, kw, stride, dilation, ((0, 0),),
                                                   phase_rows, pitch, out_w, 1, False)[0][0])
    # read-only as :func:`_grad_input_phases`' (cached) taps are: :func:`_taps_at`, which
    # both reach, compiles once for the two (Numba types a read-only array apart)
    taps.setflags(write=False)
    return pitch, band, phase_rows, taps, phases * phase_rows * pitch + lanes


def _depthwise_phases(x, weight, bias, out, stride, padding, dilation, activation):
    """Host side of :func:`_conv2d_depthwise_phases` (one channel per group)."""
    n_img, channels = x.shape[:2]
    out_channels, _, kh, kw = weight.shape
    out_h, out_w = out.shape[2], out.shape[3]
    top, left = padding[0][0], padding[1][0]
    pitch, band, phase_rows, taps, strip = _phase_layout(x, (kh, kw), (out_h, out_w), stride,
                                                         padding, dilation)
    lanes = simd.WIDTH_BYTES // x.itemsize
    chunks = _chunks(n_img * channels * -(-out_h // band))
    scratch = workspace.borrow((chunks, strip + (band - 1) * pitch + out_w + lanes), x.dtype)
    has_bias = bias is not None
    threads.launch(
        _conv2d_depthwise_phases, threads.parts_for(chunks, out, kh * kw), x,
        np.ascontiguousarray(weight.reshape(out_channels, kh * kw)),
        bias if has_bias else np.zeros(0, x.dtype), has_bias,
        activations.floor(activation, x.dtype), out, top, left, stride[0], stride[1], pitch,
        phase_rows, taps, band, scratch)


#: Depthwise layers at stride 1 whose output keeps the input's size run on whole planes
#: (:func:`_conv2d_depthwise_planes`, :func:`_depthwise_planes_grad_weight`) where a
#: plane is at least a vector and at most these bytes: 3x3 filters, and larger ones. (A
#: Zen 3, two threads, alternating in one process against the banded kernels, forward,
#: grad_input, grad_weight with the bias gradient, time on planes / time on bands: 3x3
#: on N8 C960 7x7 0.45, 0.47, 0.45, C576 14x14 0.61, 0.63, 0.52, C144 28x28 0.86, 0.87,
#: 0.72, 56x56 0.81, 0.86, 0.89, N8 C32 64x64 1.06, 1.01, 0.99, C32 112x112 at N4
#: 1.00, 0.99, 1.04; 5x5 on N8 C960 7x7 0.43, 0.42, 0.80, C576 14x14 0.72, 0.71, 0.79,
#: N32 C64 8x8 0.51, 0.54, 0.68, N8 C144 28x28 0.89, 0.85, 0.97, but 56x56 1.04, 1.05,
#: 1.21.)
DEPTHWISE_PLANE_BYTES = 16 * 1024
DEPTHWISE_WIDE_PLANE_BYTES = 4 * 1024


def _on_planes(x, out, kernel_size, stride, padding, dilation) -> bool:
    """Whether a layer of one channel per group runs on whole planes: stride 1, an odd
    kernel, padding ``dilation * (R - 1) / 2`` on every side and an output (``out``: the
    output or the output gradient) of the input's size (a weight gradient from
    conv_transpose2d's backward can have fewer rows: its output_padding), ``x`` and
    ``out`` C-contiguous, planes within :data:`DEPTHWISE_PLANE_BYTES` (3x3) or
    :data:`DEPTHWISE_WIDE_PLANE_BYTES`."""
    (kh, kw), (dh, dw) = kernel_size, dilation
    plane = x.shape[2] * x.shape[3] * x.itemsize
    budget = DEPTHWISE_PLANE_BYTES if kh == kw == 3 else DEPTHWISE_WIDE_PLANE_BYTES
    return (stride == (1, 1) and kh % 2 == 1 and kw % 2 == 1
            and padding == ((dh * (kh - 1) // 2,) * 2, (dw * (kw - 1) // 2,) * 2)
            and out.shape[2:] == x.shape[2:]
            and simd.WIDTH_BYTES <= plane <= budget
            and x.flags.c_contiguous and out.flags.c_contiguous)


@functools.lru_cache(maxsize=64)
def _plane_layout(height, width, kernel_size, dilation, dtype):
    """``(taps, masks, front, strip)`` of the whole-plane kernels: tap ``(r, s)`` of
    output ``p = i * W + j`` at ``strip[front + p + taps[s, r]]`` (the plane at ``front``
    of a strip of ``strip`` values, zeros around it); ``masks[s * (H * W + lanes) + p]``
    all bits set where column ``j`` of tap column ``s`` lies inside the plane, zero
    elsewhere and past the plane (:func:`.simd.keep`)."""
    (kh, kw), (dh, dw) = kernel_size, dilation
    top, left = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    taps = np.array([[(r * dh - top) * width + s * dw - left for r in range(kh)]
                     for s in range(kw)], np.int64)
    hw = height * width
    lanes = simd.WIDTH_BYTES // dtype.itemsize
    p = np.arange(hw + lanes)
    inside = np.array([(p < hw) & (0 <= p % width + s * dw - left) & (p % width + s * dw - left
                                                                       < width)
                       for s in range(kw)])
    masks = np.where(inside, -1, 0).astype(f"i{dtype.itemsize}").view(dtype).reshape(-1)
    front = top * width + left
    return taps, masks, front, front + hw + int(taps.max()) + lanes


def _depthwise_planes(x, weight, bias, out, dilation, activation):
    """Host side of :func:`_conv2d_depthwise_planes`."""
    n_img, channels = x.shape[:2]
    kh, kw = weight.shape[2:]
    taps, masks, front, strip = _plane_layout(x.shape[2], x.shape[3], (kh, kw), dilation,
                                              x.dtype)
    chunks = _chunks(n_img * channels)
    has_bias = bias is not None
    threads.launch(
        _conv2d_depthwise_planes, threads.parts_for(chunks, out, kh * kw), x,
        np.ascontiguousarray(weight).reshape(-1), bias if has_bias else np.zeros(0, x.dtype),
        has_bias, activations.floor(activation, x.dtype), out, taps, masks, front,
        workspace.borrow((chunks, strip), x.dtype))


def _axis_phases(size, out_size, kernel, stride, pad, dilation):
    """Per phase ``a < stride`` of an input axis (positions ``a + i * stride``): the taps
    ``r`` that reach it (:func:`.blocked._phase_axis`) with the grad_out offset ``e`` each
    reads there (position ``i`` takes ``grad_out[i + e]``, ``a + pad - r * dilation = e *
    stride``), and the phase's length; no taps where none reads a row of grad_out."""
    phases = [([], 0)] * stride
    for residue in range(stride):
        axis = blocked._phase_axis(size, out_size, kernel, stride, pad, dilation, residue)
        if axis is not None:
            first, count, taps = axis[:3]
            phases[first] = ([(r, (first + pad - r * dilation) // stride) for r in taps], count)
    return phases


@functools.lru_cache(maxsize=256)
def _grad_input_phases(in_hw, out_hw, kernel_size, stride, padding, dilation, itemsize,
                       per_group):
    """The layout of :func:`_depthwise_grad_input_phases` for these sizes: ``(first_row,
    pad_left, pitch, strip_rows, band, taps, counts, index, scratch)``: phase ``q``'s
    taps at ``taps[q, :counts[q]]``, the weight's values for them at ``index[q]`` of its
    ``R * S`` (its other entries 0), ``scratch`` values per thread."""
    rows = _axis_phases(in_hw[0], out_hw[0], kernel_size[0], stride[0], padding[0][0],
                        dilation[0])
    cols = _axis_phases(in_hw[1], out_hw[1], kernel_size[1], stride[1], padding[1][0],
                        dilation[1])
    row_offsets = [e for taps, _ in rows for _, e in taps] + [0]
    col_offsets = [e for taps, _ in cols for _, e in taps] + [0]
    top, left = min(row_offsets), min(col_offsets)  # <= 0: the strip's padding
    pitch = max(max(length for _, length in cols) + max(col_offsets) - left, out_hw[1] - left)
    lanes = simd.WIDTH_BYTES // itemsize
    phases = stride[0] * stride[1]
    sums = phases + (per_group > 1)
    reach = max(row_offsets) - top  # strip rows below a band's last row
    band = strips.band_rows(-(-in_hw[0] // stride[0]), (1 + reach + sums) * pitch
                            + (2 + sums) * lanes, (1 + sums) * pitch, itemsize)
    width = max(1, max(len(r) * len(c) for r, _ in rows for c, _ in cols))
    taps = np.zeros((phases, width), np.int64)
    index = np.zeros((phases, width), np.int64)
    counts = np.zeros(phases, np.int64)
    for a, (row_taps, _) in enumerate(rows):
        for b, (col_taps, _) in enumerate(cols):
            q = a * stride[1] + b
            for r, e in row_taps:
                for s, f in col_taps:
                    taps[q, counts[q]] = (e - top) * pitch + f - left
                    index[q, counts[q]] = r * kernel_size[1] + s
                    counts[q] += 1
    for array in (taps, index, counts):
        array.flags.writeable = False
    scratch = (band + reach) * pitch + lanes + sums * (band * pitch + lanes)
    return top, -left, pitch, band + reach, band, taps, counts, index, scratch


def _depthwise_grad_input(grad_out, weight, grad_in, stride, padding, dilation):
    """Host side of :func:`_depthwise_grad_input_phases` (one channel per group, a finite
    weight: the strip's zeros meet every tap)."""
    n_img, channels, in_h, in_w = grad_in.shape
    out_channels, _, kh, kw = weight.shape
    first_row, pad_left, pitch, strip_rows, band, taps, counts, index, scratch = (
        _grad_input_phases((in_h, in_w), grad_out.shape[2:], (kh, kw), stride, padding,
                           dilation, grad_in.itemsize, out_channels // channels))
    taps_w = np.ascontiguousarray(weight.reshape(out_channels, kh * kw)[:, index])
    phase_rows = -(-in_h // stride[0])  # phase 0's rows, in bands
    n_bands = -(-phase_rows // band)
    chunks = _chunks(n_img * channels * n_bands)
    depth = max(1, kh * kw * out_channels // (channels * len(counts)))  # taps per value
    threads.launch(
        _depthwise_grad_input_phases, threads.parts_for(chunks, grad_in, depth),
        grad_out, taps_w, grad_in, first_row, pad_left, stride[0], stride[1], pitch, strip_rows,
        taps, counts, band, activations.floor(None, grad_in.dtype),
        workspace.borrow((chunks, scratch), grad_in.dtype))


def _prepare_conv2d(arrays, params):
    """:func:`conv2d_direct`'s runner for a cached plan (``fastconv.functional``'s
    ``runner``): the blocked kernel's, its layout worked out once; None for the
    loops."""
    (x_shape, dtype), (w_shape, _), bias, (out_shape, _) = arrays
    stride, padding, dilation, groups, *activation = params
    if not blocked.applies(w_shape, stride, groups):
        return None
    return blocked.forward_runner(x_shape, w_shape, out_shape, dtype, stride, padding,
                                  dilation, groups, *activation)


conv2d_direct.prepare = _prepare_conv2d  # type: ignore[attr-defined]


@kernel(parallel=True)
def _conv2d_grad_input_direct(grad_out, weight, grad_in, stride_h, stride_w, pad_top, pad_left,
                              padded_w, dilation_h, dilation_w, groups, band, scratch, part, parts):
    """grad_in[n, c] = sum_{k, r, s, i, j} weight[k, c, r, s] * grad_out[n, k, i, j] sent to
    x_padded position (i*sh + r*dh, j*sw + s*dw), then cropped.

    A task owns a band of ``band`` rows of one input plane ``(n, c)``: it scatters
    into a zero-bordered buffer of those rows, the padded width wide, from the
    output rows ``i`` whose taps land in it, so no two tasks write the same memory.
    """
    n_img, channels, height, width = grad_in.shape
    out_channels, group_channels, kh, kw = weight.shape
    out_h, out_w = grad_out.shape[2], grad_out.shape[3]
    per_group = out_channels // groups
    n_bands = (height + band - 1) // band
    n_tasks = n_img * channels * n_bands
    n_chunks = scratch.shape[0]
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            n = task // (channels * n_bands)
            c_in = (task // n_bands) % channels
            g = c_in // group_channels
            c = c_in % group_channels
            row_first = (task % n_bands) * band
            rows = min(band, height - row_first)
            first = row_first + pad_top  # padded row of the band's first row
            plane = scratch[chunk, : rows * padded_w]
            plane[:] = 0
            for k in range(g * per_group, (g + 1) * per_group):
                for r in range(kh):
                    # output rows i with first <= i*sh + r*dh < first + rows
                    i_lo = max(0, -((r * dilation_h - first) // stride_h))
                    i_hi = min(out_h, (first + rows - 1 - r * dilation_h) // stride_h + 1)
                    for s in range(kw):
                        w = weight[k, c, r, s]
                        for i in range(i_lo, i_hi):
                            dst = plane[(i * stride_h + r * dilation_h - first) * padded_w
                                        + s * dilation_w :]
                            src = grad_out[n, k, i]
                            if stride_w == 1:
                                for j in range(out_w):
                                    dst[j] += w * src[j]
                            else:
                                for j in range(out_w):
                                    dst[j * stride_w] += w * src[j]
            for row in range(rows):
                src = plane[row * padded_w + pad_left :]
                dst = grad_in[n, c_in, row_first + row]
                for j in range(width):
                    dst[j] = src[j]


@kernel(parallel=True)
def _conv2d_grad_weight_direct(x, grad_out, grad_weight, stride_h, stride_w, pad_top, pad_left,
                               padded_w, dilation_h, dilation_w, groups, band, scratch, part,
                               parts):
    """grad_weight[k, c, r, s]
    = sum_{n, i, j} grad_out[n, k, i, j] * x_padded[n, c_in, i*sh + r*dh, j*sw + s*dw].

    A task owns one filter ``k`` (all its channels and taps), so the sums over
    images, bands of ``band`` output rows and positions run in a fixed order and
    need no reduction buffers. With stride 1, the band of ``grad_out[n, k]`` is
    laid on the padded row pitch (zeros in the junk columns), so each tap is one
    dot product of two contiguous slices, as in the forward kernel. Those zeros
    meet input values (the row's last columns, the next row's first), where a NaN
    or Inf gives ``0 * Inf = NaN`` for a tap that never reads it: a filter whose
    result is not all finite is computed again row by row over the ``out_w``
    output columns only (such a filter takes 3-4 times as long; a finite call costs
    one pass over each filter's taps).
    """
    n_img = x.shape[0]
    out_channels, group_channels, kh, kw = grad_weight.shape
    out_h, out_w = grad_out.shape[2], grad_out.shape[3]
    per_group = out_channels // groups
    n_bands = (out_h + band - 1) // band
    n_chunks = scratch.shape[0]
    unit_stride = stride_h == 1 and stride_w == 1
    window = dilation_h * (kh - 1) + 1  # input rows one output row reads
    strip_len = ((band - 1) * stride_h + window) * padded_w
    x_flat = flat(x)  # rows by offset, not by view
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        strip = scratch[chunk, :strip_len]
        pitched = scratch[chunk, strip_len:]
        strip[:] = 0
        pitched[:] = 0
        last_first, last_rows = 0, 0  # rows of the last copy: its zero rows can stay
        for k in range(chunk * out_channels // n_chunks, (chunk + 1) * out_channels // n_chunks):
            g = k // per_group
            # pass 0 on the padded pitch (stride 1), pass 1 row by row, only if pass 0
            # is not all finite
            for exact in range(0 if unit_stride else 1, 2):
                grad_weight[k] = 0
                for n in range(n_img):
                    for i_first in range(0, n_bands * band, band):
                        rows = min(band, out_h - i_first)
                        pitched_len = (rows - 1) * padded_w + out_w
                        if not exact:
                            _to_pitch(pitched, grad_out[n, k, i_first : i_first + rows],
                                      np.int64(0), padded_w)
                        first = i_first * stride_h - pad_top
                        n_rows = (rows - 1) * stride_h + window
                        for c in range(group_channels):
                            _padded_rows(strip, np.int64(0), x, n, g * group_channels + c, first,
                                         n_rows, pad_left, padded_w,
                                         first != last_first or n_rows != last_rows, x_flat)
                            last_first, last_rows = first, n_rows
                            for r in range(kh):
                                for s in range(kw):
                                    shift = r * dilation_h * padded_w + s * dilation_w
                                    total = 0.0
                                    if not exact:
                                        taps = strip[shift : shift + pitched_len]
                                        for j in range(pitched_len):
                                            total += pitched[j] * taps[j]
                                    else:
                                        for i in range(rows):
                                            taps = strip[i * stride_h * padded_w + shift :]
                                            dy = grad_out[n, k, i_first + i]
                                            for j in range(out_w):
                                                total += dy[j] * taps[j * stride_w]
                                    grad_weight[k, c, r, s] += total
                if exact or finite_values(grad_weight[k]):
                    break


@register("conv2d_grad_input", "cpu", "direct")
def conv2d_grad_input_direct(grad_out, weight, grad_in, stride, padding, dilation, groups):
    """grad_in = conv_transpose2d(grad_out, weight): for a finite weight, the blocked kernel
    (at least 4 channels per group, any stride: :func:`.blocked.conv2d_grad_input_blocked`)
    or, with stride 1, the forward direct kernel on flipped weights (see
    :mod:`.identities`; a layer of one channel per group at a stride phase by phase of
    the input, :func:`_depthwise_grad_input_phases`); otherwise scatter loops.
    (Those convolutions multiply every weight tap by the zero padding around grad_out,
    where the transposed convolution has no term: a NaN or Inf tap would put ``0 * Inf =
    NaN`` on the border.)"""
    if blocked.grad_input_applies(weight.shape) and blocked.conv2d_grad_input_blocked(
            grad_out, weight, grad_in, stride, padding, dilation, groups):
        # C/groups filters in that convolution: the blocked kernel, on the input's phases
        return
    if stride != (1, 1) and weight.shape[1] == 1 and all_finite(weight):
        _depthwise_grad_input(grad_out, weight, grad_in, stride, padding, dilation)
        return
    conv_pads = identities.grad_input_as_conv_padding(
        grad_in.shape[2:], grad_out.shape[2:], weight.shape[2:], stride, padding, dilation)
    if conv_pads is not None and all_finite(weight):
        conv2d_direct(grad_out, identities.transpose_flip(weight, groups), None, grad_in,
                      (1, 1), conv_pads, dilation, groups)
        return
    n_img, channels, height, width = grad_in.shape
    # windows reach at most padded column (out_w - 1) * sw + dw * (kw - 1) < W + pads
    padded_w = width + sum(padding[1])
    band = strips.band_rows(height, padded_w, padded_w, grad_in.itemsize)
    chunks = _chunks(n_img * channels * -(-height // band))
    scratch = workspace.borrow((chunks, band * padded_w), grad_in.dtype)
    threads.launch(
        _conv2d_grad_input_direct, threads.parts_for(chunks, grad_out, weight[0].size),
        grad_out, weight, grad_in, stride[0], stride[1], padding[0][0], padding[1][0], padded_w,
        dilation[0], dilation[1], groups, band, scratch)


def _prepare_grad_input(arrays, params):
    """:func:`conv2d_grad_input_direct`'s runner for a cached plan: the blocked kernel's
    (the host function itself for a weight that is not all finite)."""
    (grad_out_shape, dtype), (w_shape, _), (grad_in_shape, _) = arrays
    if not blocked.grad_input_applies(w_shape):
        return None
    run_blocked = blocked.grad_input_runner(grad_out_shape, w_shape, grad_in_shape, dtype,
                                            *params)

    def run(grad_out, weight, grad_in, bias=None):
        """grad_in (+ ``bias``, conv_transpose2d's, added as the outputs are stored)."""
        if not run_blocked(grad_out, weight, grad_in, bias):
            conv2d_grad_input_direct(grad_out, weight, grad_in, *params)
            if bias is not None:
                grad_in += bias[:, None, None]

    run.adds_bias = True  # type: ignore[attr-defined]
    return run


conv2d_grad_input_direct.prepare = _prepare_grad_input  # type: ignore[attr-defined]


@register("conv2d_grad_weight", "cpu", "direct")
def conv2d_grad_weight_direct(x, grad_out, grad_weight, stride, padding, dilation, groups):
    """grad_weight = correlation of x with grad_out, by loops: the dot products of
    :mod:`.fewtaps` where they pay, else the blocked kernel of :mod:`.blocked` where it
    applies (their result computed again here if not all finite)."""
    if fewtaps.pays(grad_out.shape, grad_weight.shape, groups, x.itemsize):
        if not fewtaps.conv2d_grad_weight_few_taps(x, grad_out, grad_weight, stride, padding,
                                                   dilation):
            _grad_weight_loops(x, grad_out, grad_weight, stride, padding, dilation, groups)
        return
    if blocked.grad_weight_applies(x.shape, grad_out.shape, grad_weight.shape, stride, padding,
                                   dilation, groups, x.itemsize):
        if blocked.conv2d_grad_weight_blocked(x, grad_out, grad_weight, stride, padding,
                                              dilation, groups):
            return
    if grad_weight.shape[1] == 1 and _depthwise_grad_weight(x, grad_out, grad_weight, stride,
                                                            padding, dilation):
        return
    _grad_weight_loops(x, grad_out, grad_weight, stride, padding, dilation, groups)


#: The depthwise weight gradient at stride 1 lays the planes of as many images one after
#: the other in one strip as keep the strip and the output gradient's rows within these
#: bytes (a thread's L1), where a whole plane is one band: one pass of the dot products
#: per channel and group of images instead of one per plane (a Zen 3, two threads, with
#: the bias gradient, alternating in one process: N8 C960 7x7 1.52 -> 1.30 ms, C576
#: 14x14 1.49 -> 1.36, N32 C64 8x8 0.50 -> 0.42; 56x56 planes, one image a strip, 0.66
#: either way).
DEPTHWISE_STACK_BYTES = 16 * 1024


def _depthwise_grad_weight(x, grad_out, grad_weight, stride, padding, dilation) -> bool:
    """Host side of :func:`_depthwise_planes_grad_weight` where the layer runs on whole
    planes (:func:`_on_planes`), else of :func:`_depthwise_grad_weight_phases` (one
    channel per group); False, with ``grad_weight`` written, where the result is not all
    finite (the exact loops then compute it again)."""
    channels = x.shape[1]
    out_channels, _, kh, kw = grad_weight.shape
    out_h, out_w = grad_out.shape[2:]
    chunks = _chunks(channels)
    parts = threads.parts_for(chunks, grad_weight, grad_out.shape[0] * out_h * out_w)
    taps_gw = np.empty((out_channels, kh * kw), x.dtype)
    if _on_planes(x, grad_out, (kh, kw), stride, padding, dilation):
        taps, masks, front, strip = _plane_layout(x.shape[2], x.shape[3], (kh, kw), dilation,
                                                  x.dtype)
        threads.launch(_depthwise_planes_grad_weight, parts, x, grad_out, taps_gw, taps, masks,
                       front, workspace.borrow((chunks, strip), x.dtype))
    else:
        pitch, band, phase_rows, taps, strip = _phase_layout(x, (kh, kw), (out_h, out_w),
                                                             stride, padding, dilation)
        lanes = simd.WIDTH_BYTES // x.itemsize
        # small planes: several images' planes in one strip, one pass of the dot products
        images = 1
        if stride == (1, 1) and band == out_h:
            images = max(1, min(x.shape[0], DEPTHWISE_STACK_BYTES // (2 * strip * x.itemsize)))
        plane = phase_rows * pitch
        scratch = workspace.borrow(
            (chunks,
             (strip - lanes) * images + lanes + (images - 1) * plane + band * pitch + lanes),
            x.dtype)
        threads.launch(_depthwise_grad_weight_phases, parts, x, grad_out, taps_gw,
                       padding[0][0], padding[1][0], stride[0], stride[1], pitch, phase_rows,
                       taps, band, images, scratch)
    grad_weight[...] = taps_gw.reshape(grad_weight.shape)
    return all_finite(taps_gw)


def _grad_weight_loops(x, grad_out, grad_weight, stride, padding, dilation, groups):
    """grad_weight = correlation of x with grad_out by the exact loops of
    :func:`_conv2d_grad_weight_direct` (overwritten)."""
    kh = grad_weight.shape[2]
    out_h, out_w = grad_out.shape[2:]
    padded_w = x.shape[3] + sum(padding[1])
    window = dilation[0] * (kh - 1) + 1
    # a band of b rows: ((b - 1) * sh + window) input rows and, with stride 1, b rows of
    # grad_out on the padded pitch
    unit_stride = stride == (1, 1)
    band = strips.band_rows(out_h, window * padded_w + unit_stride * out_w,
                            (stride[0] + unit_stride) * padded_w, x.itemsize)
    pitched = (band - 1) * padded_w + out_w if unit_stride else 0
    chunks = _chunks(grad_weight.shape[0])
    scratch = workspace.borrow(
        (chunks, ((band - 1) * stride[0] + window) * padded_w + pitched), x.dtype)
    parts = threads.parts_for(chunks, grad_weight,
                              grad_out.shape[0] * grad_out.shape[2] * grad_out.shape[3])
    threads.launch(_conv2d_grad_weight_direct, parts, x, grad_out, grad_weight, stride[0],
                   stride[1], padding[0][0], padding[1][0], padded_w, dilation[0], dilation[1],
                   groups, band, scratch)


def _prepare_grad_weight(arrays, params):
    """:func:`conv2d_grad_weight_direct`'s runner for a cached plan: the dot products of
    :mod:`.fewtaps` where they pay, else the blocked kernel's where it applies (the loops
    again for a result that is not all finite)."""
    (x_shape, dtype), (grad_out_shape, _), (w_shape, _) = arrays
    stride, padding, dilation, groups = params
    if fewtaps.pays(grad_out_shape, w_shape, groups, dtype.itemsize):
        def run_dots(x, grad_out, grad_weight):
            if not fewtaps.conv2d_grad_weight_few_taps(x, grad_out, grad_weight, stride,
                                                       padding, dilation):
                _grad_weight_loops(x, grad_out, grad_weight, *params)

        return run_dots
    if not blocked.grad_weight_applies(x_shape, grad_out_shape, w_shape, stride, padding,
                                       dilation, groups, dtype.itemsize):
        return None
    run_blocked = blocked.grad_weight_runner(x_shape, grad_out_shape, w_shape, dtype, stride,
                                             padding, dilation, groups)

    def run(x, grad_out, grad_weight):
        if not run_blocked(x, grad_out, grad_weight):
            _grad_weight_loops(x, grad_out, grad_weight, *params)

    return run


conv2d_grad_weight_direct.prepare = _prepare_grad_weight  # type: ignore[attr-defined]
