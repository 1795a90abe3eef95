"""Direct convolution on register-tiled micro-kernels: the ``direct`` algorithm's
path for at least :data:`MIN_GROUP_K` filters per group (conv2d at any stride,
grad_input at any stride, grad_weight at stride 1).

The input is laid out as in :mod:`.direct`: a task copies the padded input
rows of a band of output rows, every channel of its group, onto the padded row
pitch ``W_pad`` (an unpadded stride-1 1x1 layer's C-contiguous input is already
so laid out and is read in place, but for a task whose last vector would read
past the end of the input), so output ``(i, j)`` of the band sits at ``p = i * W_pad + j``
and tap ``(r, s)`` reads ``strip[c, p + r * dh * W_pad + s * dw]``. Every tap is
then the same run of consecutive positions shifted by a constant, which is what
:func:`.microkernels.weights_x_positions` needs: it keeps 8 filters x 48
positions (float32; 24 in float64) of sums in registers over all channels and
taps of the group and stores them once; over many channels, in passes of a few
channels each (:func:`channels_per_pass`), each pass going on from the last one's
sums, so that what a block of positions reads of those channels stays in the L1 for
the next block, which reads the same rows at the next positions. The filters are
packed per call
(``(groups, blocks of 8, channels * taps, 8)``, zeros past the last filter; in
parallel tasks, a block each, when there are many). The last positions of a band
run two vectors at a time (:func:`.microkernels.weights_x_pair`), then one
(:func:`.microkernels.weights_x_vector`); positions past the band and the ``W_pad -
W_out`` junk columns of each row are computed and dropped when the sums are written
out with the bias (:func:`.epilogue.store_row`, which applies the activation's floor;
without junk columns, a filter's rows in one run).
Where that junk is a larger share of the vectors (:func:`dense_pays`: 3x3 layers on
28x28 and 14x14 planes, conv_transpose2d's phases), the strip is laid out dense
instead: each channel's rows copied once per column shift of the taps onto the
output's own row pitch (:func:`_column_copies`), where tap ``(r, s)`` of output ``p
= i * W_out + j`` is value ``p + r * W_out`` of copy ``s``, and no junk is computed.
Where that junk and the padding of the last block of 8 filters would be enough more
of the work than the padding of a block of filters (:func:`by_filters`: few filters on
a small plane on 512-bit vectors; on 256-bit ones, 32 or more filters on planes of
28x28 and smaller), the sums run by filters instead: the filters packed a block of
vectors to a block, :func:`.microkernels.positions_x_filters` computes a few real
outputs x a block of filters at a time (12 x 16 on 512-bit vectors, 3 x 32 on 256-bit
ones, float32; there in passes of channels whose packed filters stay in the L1,
:func:`filters_per_pass`), each output's vectors of filters get the bias and the
floor, and squares of outputs x filters are transposed into the planes
(:func:`.epilogue.store_by_filters`).

A task is one image, one group, a run of filter blocks and one band of output
rows; the filter blocks are split over tasks only when there are fewer images,
groups and bands than threads. A strided layer's strip holds the
``stride_h * stride_w`` phases of the band's input rows (:func:`_phase_rows`),
in each of which every tap is again a constant shift of the positions.

grad_input (:func:`conv2d_grad_input_blocked`) is the same kernel on the
flipped, channel-swapped filters, packed as they are read: at stride 1 one
convolution of grad_output; at a stride, one stride-1 convolution per phase of
the input with the taps that reach that phase (packed straight from the weight),
each into a contiguous plane of its own, which :func:`_weave_phases` then writes
into grad_input in one pass (two stride-2 column phases on SIMD vectors,
:func:`.strips.weave_row`). Where the phases are alike (as many taps, planes of
one shape: conv_transpose2d's 4x4 stride-2 layers), they run as one call, each
phase's filters a run of blocks with taps of their own on one padded copy of
grad_output, each phase's outputs stored straight into its rows and columns of
grad_input (:func:`_fused_phases_runner`, :func:`_store_woven`).

The weight gradient (:func:`conv2d_grad_weight_blocked`) packs, per block of
images, the padded input planes (at a column stride dealt into their column
phases, so that every tap of output ``(i, j)`` is a constant offset from ``i *
stride_h * row + j``) and the output gradient position-major (``(image,
block of filters, position, filter)``, each group's filters padded with zeros to
blocks of one or two vectors; :func:`.simd.transpose` turns a square of lanes at a
time).
:func:`.microkernels.taps_x_filters` then sums, over every position, 12 taps
(12 input values broadcast, the next 12 of the filter's flat gradient) by a
block of filters (two vectors loaded; one, :func:`.microkernels.taps_x_vector`,
where blocks of two would pad more, :func:`grad_weight_vectors`), the sums in
registers. A task owns a
chunk of tiles of 12 taps and a block of filters over one slice of the images,
sized so that the slice's packed gradient stays in cache while the task's tiles
go over it; the slices' partial sums are added in a fixed order, so the result does
not depend on the timing of the threads. The padding and the zero filters meet
real values, so an input that is not finite can give ``0 * Inf = NaN`` where the
definition has no term: such a result is computed again by the exact direct
kernel.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
from numba import prange
from numba.extending import overload

from .. import activations, config
from . import prepared, simd, strips, threads, workspace
from ._jit import jit_options, kernel
from .epilogue import store_by_filters, store_row
from .finite import _nonfinite_in, all_finite
from .microkernels import (
    BLOCK_K,
    BLOCK_P,
    BLOCK_Q,
    TAIL_Q,
    filters_block,
    positions_x_filters,
    tail_x_filters,
    taps_x_filters,
    taps_x_vector,
    weights_x_run,
)
from .strips import _padded_rows, weave_row

#: Fewest filters per group for which the blocked path pays: with fewer, most of
#: each block of :data:`~.microkernels.BLOCK_K` filters would be padding.
MIN_GROUP_K = 4


@kernel()
def _pack_filter_block(weight, packed, g, b):
    """packed[g, b, c * taps + t, kk] = filter ``b * 8 + kk`` of group g, channel c, tap t
    (row-major), zero past the group's last filter: one block of the packed filters.
    (grad_input's convolution packs its flipped, channel-swapped filters with
    :func:`_pack_flipped_block`.)"""
    out_channels = weight.shape[0]
    groups, _, depth, block = packed.shape
    filters = out_channels // groups
    flat = weight.reshape(out_channels, depth)
    dst = packed[g, b]
    full = min(block, filters - b * block)
    if full < block:
        dst[:, :] = 0
    for kk in range(full):  # each filter read in order, written every block-th value
        row = g * filters + b * block + kk
        for d in range(depth):
            dst[d, kk] = flat[row, d]


@kernel()
def _pack_flipped_block(weight, packed, g, b, tap_map):
    """One block of the filters :func:`_pack_filter_block` makes of
    :func:`.identities.transpose_flip` (weight, groups), read from ``weight`` itself:
    grad_input's stride-1 convolution, whose filter ``b * 8 + kk`` of group g is input
    channel ``b * 8 + kk`` of ``weight``, its channels ``weight``'s filters, its taps
    reversed. ``tap_map`` ``(sets, T)``: the filters are ``sets`` runs of ``weight``'s
    input channels, run ``s`` on the taps ``tap_map[s]`` of ``weight``'s ``R * S``
    (row-major), a strided grad_input's phases; ``[[0 .. R * S - 1]]`` for all of them."""
    out_channels, group_channels, kh, kw = weight.shape
    groups, _, _, block = packed.shape
    n_sets, taps = tap_map.shape
    per_group = out_channels // groups  # the channels of that convolution, per group
    size = kh * kw
    src = weight.reshape(out_channels, group_channels * size)
    dst = packed[g, b]
    full = min(block, n_sets * group_channels - b * block)
    if full < block:
        dst[:, :] = 0
    if n_sets == 1 and taps == size:
        # every tap in order (grad_input at stride 1): read as they lie, twice as fast as
        # through the map (a 256 x 256 x 3 x 3 weight, one thread: 0.39 against 0.84 ms)
        # (flat indices, not a view of each row: no reference counting in the loops)
        flat, dst_flat = weight.reshape(weight.size), dst.reshape(dst.size)
        whole = full - full % simd.lanes(dst_flat)
        for k in range(per_group):
            # the block's channels of filter k: full * taps values in a row; the packed
            # (taps, block) square of channel k in a row too, its taps reversed
            at = (g * per_group + k) * group_channels * taps + b * block * taps
            square = (k * taps + taps - 1) * block
            if taps == 1:  # a 1x1 weight: both are one run, copied on vectors
                for kk in range(0, whole, simd.lanes(dst_flat)):
                    simd.store(dst_flat, square + kk, simd.load(flat, at + kk))
                for kk in range(whole, full):
                    dst_flat[square + kk] = flat[at + kk]
                continue
            for kk in range(full):
                for t in range(taps):
                    dst_flat[square - t * block + kk] = flat[at + kk * taps + t]
        return
    for k in range(per_group):
        # the block's channels of filter k, each read at its set's taps (slower than
        # the reads in order above)
        row, square = g * per_group + k, k * taps + taps - 1
        for kk in range(full):
            f = b * block + kk
            at, tap_set = (f % group_channels) * size, f // group_channels
            for t in range(taps):
                dst[square - t, kk] = src[row, at + tap_map[tap_set, t]]


@kernel()
def _pack_block(weight, packed, g, b, flipped, tap_map):
    """Block ``b`` of group g of the packed filters: :func:`_pack_flipped_block` if
    ``flipped``, else :func:`_pack_filter_block`."""
    if flipped:
        _pack_flipped_block(weight, packed, g, b, tap_map)
    else:
        _pack_filter_block(weight, packed, g, b)


@kernel(parallel=True)
def _pack_blocks(weight, packed, flipped, tap_map, part, parts):
    """Every block of :func:`_pack_block`, a task each: the filters of a large weight
    packed before :func:`_conv2d_forward_blocked` runs (bit :data:`IN_TASKS`), and the
    flipped filters that :func:`forward_runner` keeps between calls."""
    groups, n_blocks = packed.shape[0], packed.shape[1]
    n_tasks = groups * n_blocks
    for block in prange(part * n_tasks // parts, (part + 1) * n_tasks // parts):
        _pack_block(weight, packed, block // n_blocks, block % n_blocks, flipped, tap_map)


@kernel()
def _phase_rows(buffer, at, x, source, n, channel, first, n_rows, pad_left, pitch, stride_h,
                stride_w):
    """The zero-padded plane ``x[n, channel]`` split into its ``stride_h * stride_w``
    phases: phase ``(a, b)`` holds padded rows ``first + q * stride_h + a`` (``first``
    counts from the first image row) and padded columns ``u * stride_w + b``, row ``q <
    n_rows`` at ``buffer[at + (a * stride_w + b) * n_rows * pitch + q * pitch + u]``,
    ``u < pitch``; zeros outside the image. In a phase, every tap of a strided
    convolution is again a run of consecutive positions shifted by a constant. Rows
    are dealt by :func:`.strips.deal_rows` at a column stride of 2 (on SIMD vectors),
    copied by :func:`.strips.copy_row` at 1, else dealt by :func:`.strips.deal_phases`
    (``source``: :func:`.strips.flat` (x)), a phase's rows inside the image in one call,
    which writes the image's columns only: the padding columns stay zero from the
    buffer's first clearing (the caller's), and rows outside the image are written with
    zeros (a per-row bound on the columns, two divisions a phase, took most of the time
    of a 56-wide row's deal)."""
    height = x.shape[2]
    for a in range(stride_h):
        # the phase's rows first + q * stride_h + a inside the image: q_lo <= q < q_hi
        q_lo = min(n_rows, max(0, -((first + a) // stride_h)))
        q_hi = max(q_lo, min(n_rows, -((first + a - height) // stride_h)))
        # (deal_rows and copy_row themselves at strides 2 and 1: through deal_phases' inlined
        # branches a 14x14 plane's stride-2 deal took 270 against 210 ns, a 7x7 plane's
        # stride-1 copy 100 against 75 ns, one thread of a Zen 2)
        dst = at + (a * stride_w * n_rows + q_lo) * pitch
        if q_hi > q_lo and stride_w == 2:
            strips.deal_rows(source, x, n, channel, first + q_lo * stride_h + a, q_hi - q_lo,
                             stride_h, buffer, dst, dst + n_rows * pitch, pitch, pad_left)
        elif q_hi > q_lo and stride_w == 1:
            for q in range(q_hi - q_lo):
                strips.copy_row(source, x, n, channel, first + (q_lo + q) * stride_h + a,
                                buffer, dst + q * pitch + pad_left)
        elif q_hi > q_lo:
            strips.deal_phases(source, x, n, channel, first + q_lo * stride_h + a,
                               q_hi - q_lo, stride_h, buffer, dst, pitch, n_rows * pitch,
                               stride_w, pad_left)
        for b in range(stride_w if q_lo > 0 or q_hi < n_rows else 0):
            # the rows outside the image: two runs of zeros (slices, which vectorise, where
            # a loop over buffer[dst + u] checked each index for wraparound)
            phase = at + (a * stride_w + b) * n_rows * pitch
            if q_lo > 0:
                buffer[phase : phase + q_lo * pitch] = 0
            if q_hi < n_rows:
                buffer[phase + q_hi * pitch : phase + n_rows * pitch] = 0


@kernel()
def _column_copies(strip, copies, at, slots, phases, phase_rows, n_rows, pitch, out_w,
                   n_shift):
    """The dense layout of a channel's strip (its ``phases`` phases of ``phase_rows`` rows
    on ``pitch``): per phase, ``n_shift`` copies of its first ``n_rows`` rows on the
    output's row pitch ``out_w`` from ``copies[at]`` on, copy ``s`` from column ``s`` on,
    so that tap ``(r, s)`` of output ``(i, j)`` is value ``i * out_w + j`` of its phase's
    copy ``s`` shifted by ``r`` rows: every position computed is an output (on ``pitch``
    the ``pitch - out_w`` junk columns of each row are computed too). Copy ``s``'s row
    ``q`` is the ``out_w`` values from column ``s`` of the strip's row ``q``, read on into
    the next row past its end, as the taps on ``pitch`` read. Only the copies the taps
    read are made, one after another: ``slots[phase * n_shift + s]`` (-1: not read)."""
    lanes = simd.lanes(strip)
    for phase in range(phases):
        for s in range(n_shift):
            slot = slots[phase * n_shift + s]
            if slot < 0:
                continue
            src0 = phase * phase_rows * pitch + s
            dst0 = at + slot * phase_rows * out_w
            for q in range(n_rows):
                src, dst = src0 + q * pitch, dst0 + q * out_w
                # whole vectors: the last one's overrun is the next row's start (written
                # after it) or the plane's overrun
                for j in range(0, out_w, lanes):
                    simd.store(copies, dst + j, simd.load(strip, src + j))


@kernel()
def _store_rows(sums, sums_pitch, pos_pitch, n_k, rows, bias, has_bias, floor, out_flat, out,
                n, k0, i_first):
    """The sums of a block of ``n_k`` filters over ``rows`` output rows (``pos_pitch``
    apart, the filters ``sums_pitch`` apart) stored with the bias and the floor into
    ``out[n, k0 + kk, i_first + i]`` (:func:`.epilogue.store_row`); on the output's own
    row pitch (dense strips, a 1x1 layer read in place) as one run of rows."""
    n_runs, run = (1, rows * out.shape[3]) if pos_pitch == out.shape[3] else (rows, out.shape[3])
    for kk in range(n_k):
        offset = bias[k0 + kk] if has_bias else 0
        for r in range(n_runs):
            store_row(sums, kk * sums_pitch + r * pos_pitch, out_flat, out, n, k0 + kk,
                      i_first + r, run, offset, floor)


@kernel()
def _store_woven(sums, sums_pitch, pos_pitch, n_k, rows, out_w, bias, has_bias, floor, woven,
                 weave, tap_set, c0, n, k0, i_first):
    """The sums of a block of ``n_k`` filters (set ``tap_set``'s channels ``c0 ..``) over
    ``rows`` output rows of its phase plane, stored with the bias and the floor into the
    rows ``i * weave[s, 2] + weave[s, 0]`` and columns ``j * weave[s, 3] + weave[s, 1]``
    of ``woven`` (C-contiguous) that are inside it: the weave of a strided grad_input's
    phases done by the stores."""
    channels, height, width = woven.shape[1], woven.shape[2], woven.shape[3]
    flat = woven.reshape(woven.size)
    y0, x0 = weave[tap_set, 0], weave[tap_set, 1]
    step_y, step_x = weave[tap_set, 2], weave[tap_set, 3]
    count = min(out_w, (width - x0 + step_x - 1) // step_x)
    lanes = simd.lanes(sums)
    low = simd.splat(floor, sums)
    paired = step_x == 2 and x0 < 2
    for kk in range(n_k):
        offset = bias[k0 + kk] if has_bias else 0
        shift = simd.splat(offset, sums)
        for i in range(rows):
            y = (i_first + i) * step_y + y0
            if y >= height:
                break
            src = kk * sums_pitch + i * pos_pitch
            row = ((n * channels + c0 + kk) * height + y) * width
            if paired:
                # a vector of the phase's values doubled (weave) and stored into its
                # parity's lanes of two vectors of the row
                for j in range(0, count, lanes):
                    value = simd.maximum(simd.add(simd.load_first(sums, src + j,
                                                                  min(lanes, count - j)),
                                                  shift), low)
                    # the lanes within the row and this phase's count of columns
                    at, end = row + 2 * j, min(width - 2 * j, 2 * (count - j))
                    simd.store_parity(flat, at, simd.weave(value, value, False), x0,
                                      min(lanes, end))
                    if end > lanes:
                        simd.store_parity(flat, at + lanes, simd.weave(value, value, True), x0,
                                          min(lanes, end - lanes))
                continue
            dst = row + x0
            for j in range(count):
                value = sums[src + j] + offset
                flat[dst + j * step_x] = floor if value < floor else value


#: The bits of :func:`_conv2d_forward_blocked`'s ``packing``: filters packed by parallel
#: tasks; the weight of a transposed convolution, packed flipped; the sums computed by
#: filters (:func:`.microkernels.positions_x_filters`, filters packed a vector to a block);
#: a C-contiguous input of an unpadded stride-1 1x1 convolution read in place (see
#: :func:`forward_runner`); the strips laid out dense (:func:`_column_copies`); each set's
#: outputs stored into the rows and columns of its phase of ``woven`` (a strided
#: grad_input's phases in one call, :func:`_fused_phases_runner`); the filters packed
#: already (kept between calls, :func:`forward_runner`).
IN_TASKS, FLIPPED, BY_FILTERS, IN_PLACE, DENSE, WOVEN, PACKED = 1, 2, 4, 8, 16, 32, 64


def _flat_or(flat, strip):
    """``flat`` (:func:`.strips.flat` (x)) where it is one run of values, else ``strip``:
    what a task of :func:`_conv2d_forward_blocked` reads in place."""


@overload(_flat_or, inline="always", jit_options=jit_options())
def _flat_or_overload(flat, strip):
    if flat.ndim == 1 and flat.layout == "C" and flat.dtype == strip.dtype:
        return lambda flat, strip: flat
    return lambda flat, strip: strip


@kernel(parallel=True)
def _conv2d_forward_blocked(x, weight, packed, bias, has_bias, floor, out, woven, weave,
                            packing, pad_top, pad_left, stride, pitch, phase_rows,
                            taps, slots, tap_map, band, plane, n_shift, dense_plane, k_runs,
                            per_pass, scratch, part, parts):
    """out[n, k] = max(floor, bias[k] + sum_{c, r, s} weight[k, c, r, s]
    * x_padded[n, c, i*sh + r*dh, j*sw + s*dw]) (``floor``: the activation's, see
    :func:`fastconv.activations.floor`), ``band`` output rows per task.
    A channel's strip (``plane`` values) holds the band's input rows on ``pitch``: the
    padded rows themselves with stride 1 (``stride`` None), else (``stride`` the tuple
    ``(sh, sw)``) the ``sh * sw`` phases of :func:`_phase_rows`, ``phase_rows`` rows
    each. None is a type of its own to Numba, which leaves the phases' code out of the
    stride-1 kernel it compiles for it (:func:`forward_runner`). ``packing``: bit :data:`IN_TASKS`,
    the filters packed in parallel tasks, a block each (worth a second fork of the
    threads only for many filters, :data:`PACK_TASKS_MIN_VALUES`); the caller packs them
    so (:func:`_pack_blocks`), or on its thread before a call of several parts, and sets
    :data:`PACKED`, else the call packs them first; bit :data:`FLIPPED`, ``weight`` is
    the weight (or the taps of it) whose transposed convolution this is (grad_input),
    packed flipped
    (:func:`_pack_flipped_block`); bit :data:`PACKED`, ``packed`` holds them already;
    a flipped weight is scanned first, and one that is not all finite returns False with
    nothing written (the padding's zeros would meet its Inf). Otherwise returns True.
    ``taps``: ``(sets, R * S)``, where in a channel's strip each tap of each set of
    filters reads (:func:`_tap_table`), the filters in ``sets`` equal runs of blocks;
    ``slots``: the dense copies' places (the same). ``tap_map``: which of a flipped weight's
    taps each set's are (:func:`_pack_flipped_block`). With bit :data:`DENSE`, a task
    makes each channel's strip into up to ``n_shift`` copies per phase on the output's
    row pitch, ``dense_plane`` values a channel (:func:`_column_copies`), and reads those
    instead. ``per_pass``: channels per pass of the reduction
    (:func:`.microkernels.weights_x_run`, :func:`channels_per_pass`; by filters
    :func:`filters_per_pass`). With bit
    :data:`WOVEN` (by
    positions only), set ``s``'s output ``(k, i, j)`` goes to ``woven[n, k - s * K / sets,
    i * weave[s, 2] + weave[s, 0], j * weave[s, 3] + weave[s, 1]]`` where that is inside
    ``woven`` (C-contiguous), and ``out`` (whose shape gives the sets' planes) is not
    written."""
    n_img, channels = x.shape[0], x.shape[1]
    groups, n_blocks = packed.shape[0], packed.shape[1]
    flipped = packing & FLIPPED != 0
    if flipped and _nonfinite_in(weight.reshape(weight.size), np.int64(0), weight.size):
        return False
    if not packing & PACKED:  # (else kept from an earlier call, or packed by the caller)
        for block in range(groups * n_blocks):
            _pack_block(weight, packed, block // n_blocks, block % n_blocks, flipped, tap_map)
    group_channels = channels // groups
    out_channels, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
    x_flat, out_flat = strips.flat(x), strips.flat(out)  # rows by offset, not by view
    x_source, x_plane = _flat_or(x_flat, scratch[0]), x.shape[2] * x.shape[3]
    per_group = out_channels // groups
    per_run = (n_blocks + k_runs - 1) // k_runs
    n_bands = (out_h + band - 1) // band
    n_tasks = n_img * groups * k_runs * n_bands
    n_chunks = scratch.shape[0]
    lanes = simd.WIDTH_BYTES // x.itemsize
    block = packed.shape[3]  # filters in one packed block
    by_filters = packing & BY_FILTERS != 0
    dense = packing & DENSE != 0
    pos_pitch = out_w if dense else pitch  # from one output row's positions to the next
    # dense: one channel's strip at a time, made into that channel's copies
    strip_len = plane if dense else group_channels * plane
    dense_len = group_channels * dense_plane
    # the sums of a block of filters: rows of positions of BLOCK_K filters (sums_pitch
    # apart), or by filters, a block of filters per output (n_blocked of them), and a
    # spare square for a partial square's transpose
    sums_pitch = ((band - 1) * pos_pitch + out_w + lanes - 1) // lanes * lanes
    n_blocked = -(-(band * out_w) // BLOCK_Q) * BLOCK_Q
    spare = n_blocked * block
    if stride is None:
        stride_h = stride_w = 1
    else:
        stride_h, stride_w = stride
    n_sets = taps.shape[0]
    set_blocks = n_blocks // n_sets
    for chunk in prange(part * n_chunks // parts, (part + 1) * n_chunks // parts):
        strip = scratch[chunk, :strip_len]
        copies = scratch[chunk, strip_len : strip_len + dense_len]
        sums = scratch[chunk, strip_len + dense_len :]
        strip[:] = 0
        copies[:] = 0
        # where the by-filters blocks' outputs are in the strip (0 past the band's last)
        offsets = np.zeros(n_blocked if by_filters else 0, np.intp)
        last_copy, last_first, last_rows, last_count = -1, 0, 0, -1
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            band_index = task % n_bands
            run = (task // n_bands) % k_runs
            copy = task // (n_bands * k_runs)  # (image, group): the strip it needs
            n, g = copy // groups, copy % groups
            i_first = band_index * band
            rows = min(band, out_h - i_first)
            first = i_first * stride_h - pad_top
            n_rows = rows + phase_rows - band
            n_positions = (rows - 1) * pos_pitch + out_w
            # an unpadded layer's input read in place, its channels x_plane apart: by
            # positions a 1x1 layer's, but for a task whose last vector would read past
            # the end of x; by filters (reads of single values, none past the image) a
            # stride-1 layer's of any kernel, the band's input rows from row i_first on
            if by_filters:
                at = (n * channels + g * group_channels) * x_plane + i_first * x.shape[3]
                in_place = packing & IN_PLACE != 0
            else:
                at = (n * channels + g * group_channels) * x_plane + i_first * out_w
                in_place = (packing & IN_PLACE != 0
                            and at + (group_channels - 1) * x_plane + n_positions + lanes
                            <= x_source.size)
            source_at = at
            if in_place:
                pass
            elif copy != last_copy or first != last_first or n_rows != last_rows:
                for c in range(group_channels):
                    at = 0 if dense else c * plane
                    if stride is None:
                        _padded_rows(strip, at, x, n, g * group_channels + c, first,
                                     n_rows, pad_left, pitch,
                                     first != last_first or n_rows != last_rows, x_flat)
                    else:
                        _phase_rows(strip, at, x, x_flat, n, g * group_channels + c,
                                    first, phase_rows, pad_left, pitch, stride_h, stride_w)
                    if dense:
                        _column_copies(strip, copies, c * dense_plane, slots,
                                       stride_h * stride_w, phase_rows, n_rows, pitch, out_w,
                                       n_shift)
                last_copy, last_first, last_rows = copy, first, n_rows
            count = rows * out_w
            whole = count - count % BLOCK_Q  # (by filters: the rest in blocks of TAIL_Q)
            if by_filters and count != last_count:
                for q in range(n_blocked):
                    offsets[q] = q // out_w * pitch + q % out_w if q < count else 0
                last_count = count
            weights = packed[g]
            for b in range(run * per_run, min(n_blocks, (run + 1) * per_run)):
                block_weights = weights[b].reshape(-1)
                block_taps = taps[b // set_blocks]
                n_k = min(block, per_group - b * block)
                k0 = g * per_group + b * block
                if by_filters:
                    source = x_source[source_at:] if in_place else strip
                    apart = x_plane if in_place else plane  # from one channel to the next
                    for c0 in range(0, group_channels, per_pass):
                        depth = min(per_pass, group_channels - c0)
                        for q in range(0, whole, BLOCK_Q):
                            positions_x_filters(source, block_weights, sums, q * block, offsets,
                                                q, apart, c0, depth, block_taps, c0 > 0)
                        for q in range(whole, count, TAIL_Q):
                            tail_x_filters(source, block_weights, sums, q * block, offsets, q,
                                           apart, c0, depth, block_taps, c0 > 0)
                    # squares of outputs x filters transposed into the planes, with the
                    # bias and floor
                    for f in range(0, n_k, lanes):
                        n_f = min(lanes, n_k - f)
                        for q in range(0, count, lanes):
                            store_by_filters(sums, q * block + f, block, min(lanes, count - q),
                                             n_f, out_flat, out, n, k0 + f,
                                             i_first * out_w + q, spare, bias, has_bias, floor)
                else:
                    if in_place:  # (the run's first position offsets its sums too)
                        weights_x_run(x_source[at:], block_weights, sums, np.int64(0),
                                      n_positions, x_plane, group_channels, block_taps,
                                      sums_pitch, per_pass)
                    elif dense:
                        weights_x_run(copies, block_weights, sums, np.int64(0), n_positions,
                                      dense_plane, group_channels, block_taps, sums_pitch,
                                      per_pass)
                    else:
                        weights_x_run(strip, block_weights, sums, np.int64(0), n_positions,
                                      plane, group_channels, block_taps, sums_pitch, per_pass)
                    if packing & WOVEN:
                        _store_woven(sums, sums_pitch, pos_pitch, n_k, rows, out_w, bias,
                                     has_bias, floor, woven, weave, b // set_blocks,
                                     k0 - b // set_blocks * (per_group // n_sets), n, k0,
                                     i_first)
                    else:
                        _store_rows(sums, sums_pitch, pos_pitch, n_k, rows, bias, has_bias,
                                    floor, out_flat, out, n, k0, i_first)
    return True


def applies(weight_shape, stride, groups: int) -> bool:
    """Whether :func:`conv2d_blocked` computes this convolution (``weight_shape``: its
    weight's): at least :data:`MIN_GROUP_K` filters per group (any stride: strided
    layers run on the phases of their input)."""
    return weight_shape[0] // groups >= MIN_GROUP_K


def use_percent(out_h: int, out_w: int, kw: int, dilation_w: int, itemsize: int,
                stride_w: int = 1, width: int = 0, work_per_copy: int = 0,
                fits: bool = True) -> int:
    """The percentage of the positions computed on a whole plane that are outputs (the
    rest are the junk columns of the row pitch and the last vector's overrun); ``width``
    is the padded input width (needed with a stride). With ``work_per_copy`` (filters
    per group x taps per copy of a dense strip, :func:`dense_copies`) and ``fits``
    (:func:`dense_fits`), on the output's own pitch where the dense layout pays
    (:func:`dense_pays`)."""
    lanes = simd.WIDTH_BYTES // itemsize
    pitch = out_w + dilation_w * (kw - 1) if stride_w == 1 else -(-width // stride_w)
    computed = (out_h - 1) * pitch + out_w
    if work_per_copy and dense_pays(out_h, out_w, pitch, lanes, work_per_copy, fits):
        computed = out_h * out_w
    return 100 * out_h * out_w // (-(-computed // lanes) * lanes)


def dense_copies(kh: int, kw: int, stride, dilation) -> int:
    """How many copies of a channel's strip the dense layout makes: one per (row phase,
    column phase, column shift in the phase) of the taps."""
    return len({(r * dilation[0] % stride[0], s * dilation[1] % stride[1],
                 s * dilation[1] // stride[1]) for r in range(kh) for s in range(kw)})


def dense_fits(channels: int, kh: int, kw: int, stride, dilation, out_h: int, out_w: int,
               itemsize: int, block_taps: tuple[int, int] | None = None) -> bool:
    """Whether the dense layout's strips suit the caches: a whole plane's strip
    (``channels`` per group times :func:`dense_copies` planes of the output's size) fits
    in one core's L2 (:data:`L2_BYTES`), and the values one block of positions reads over
    its reduction (a vector run per tap and channel, where on the padded pitch the taps
    of a row share one run) fit in the L1 (:data:`L1_BYTES`) wherever they do on the
    pitch. ``block_taps``: the rows and columns of a block of filters' own taps where
    they are fewer than the kernel's (sets of filters on shifts of their own, see
    :func:`forward_runner`). Dense strips read from memory, or a block's reduction
    pushed out of the L1, cost more than the junk columns they save."""
    step = BLOCK_P * simd.WIDTH_BYTES // itemsize
    strip = channels * dense_copies(kh, kw, stride, dilation) * out_h * out_w * itemsize
    rows, cols = block_taps or (kh, kw)
    dense_block = channels * rows * cols * step * itemsize
    pitch_block = channels * rows * min(stride[1], cols) * (
        step + dilation[1] * (cols - 1) // stride[1]) * itemsize
    return strip <= L2_BYTES and (dense_block <= L1_BYTES or pitch_block > L1_BYTES)


def dense_work_per_copy(per_group: int, kh: int, kw: int, stride, dilation) -> int:
    """The multiply-adds per position and channel that each copy of a dense strip serves
    (filters per group x taps / :func:`dense_copies`): what :func:`dense_pays` weighs."""
    return per_group * kh * kw // dense_copies(kh, kw, stride, dilation)


#: When the blocked forward lays its strips out dense (:func:`dense_pays`): the least
#: percentage of the vectors of positions on the padded row pitch it must save, and the
#: fewest multiply-adds per position and channel (filters per group x taps) per copy
#: of the strip. Measured on two threads, float32, N8, pitch / dense, ms: C32 -> 64
#: 3x3 p1 on 28x28 (7.5 % fewer vectors, 192 per copy) 1.15 / 1.09; C256 -> 256 on
#: 14x14 (7 %, 768) 9.6 / 9.1; conv_transpose2d C128 16x16 -> 64 4x4 s2 (its fused
#: phases: 6 %, 768) 2.80 / 2.71; C16 -> 16 on 28x28 (7.5 %, 48) 0.176 / 0.166-0.184;
#: a stride-2 grad_input's phases (C64 28x28 -> 128, 64 or 128 per copy) 1.77 / 1.90;
#: C64 -> 128 3x3 s2 on 56x56 (4 %, its phases' copies) 4.55 / 4.89. That was a Zen 4
#: (1 MiB of L2 per core, 512-bit vectors). On a Zen 2 (512 KiB, 256-bit vectors) the
#: dense strips lost where a plane's outgrew the L2 (float32, N8, direct, pitch / dense,
#: ms: C128 -> 128 on 28x28, 1.2 MB of dense strip, 12.3 / 16.0; C256 -> 256 on 14x14,
#: 602 KB, 12.7 / 16.1) and where a block's reads fit the L1 on the pitch but not dense
#: (conv_transpose2d's phases, 2x2 taps over 128 channels, 25 / 49 KB: 4.51 / 5.17; one
#: thread, a C128 -> 256 2x2 layer on 17x17: 7.24 / 7.94), and won elsewhere (C256 ->
#: 256 on 7x7, 150 KB, 4.24 / 3.92; C512 -> 512 on 4x4 8.99 / 6.75; C32 -> 64 on 8x8
#: at N32 0.604 / 0.564): :func:`dense_fits`.
DENSE_MIN_SAVING_PERCENT = 5
DENSE_MIN_WORK_PER_COPY = 160


def _cache_bytes(level: int, default: int) -> int:
    """One core's data (or unified) cache of ``level`` in bytes, from Linux's sysfs;
    ``default`` where it cannot be read."""
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for index in sorted(root.glob("index*")):
            if ((index / "level").read_text().strip() == str(level)
                    and (index / "type").read_text().strip() in ("Unified", "Data")):
                size = (index / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return default


#: One core's L1 data cache and L2 cache (:func:`dense_fits`).
L1_BYTES = _cache_bytes(1, 32 << 10)
L2_BYTES = _cache_bytes(2, 1 << 20)


def dense_pays(out_h: int, out_w: int, pitch: int, lanes: int, work_per_copy: int,
               fits: bool) -> bool:
    """Whether the blocked forward lays its strips out dense (:func:`_column_copies`):
    where the positions on the output's own row pitch take at least
    :data:`DENSE_MIN_SAVING_PERCENT` % fewer vectors than on the padded pitch for a whole
    plane, each copy of the strip serves at least :data:`DENSE_MIN_WORK_PER_COPY`
    multiply-adds per position and channel (``work_per_copy``), and its strips suit the
    caches (``fits``, :func:`dense_fits`). The copies cost a pass
    over the strip per column shift of the taps (at a stride, per column phase and
    shift), which a plane whose junk columns are a few percent of its positions, or a
    convolution of few filters and taps, does not win back."""
    if work_per_copy < DENSE_MIN_WORK_PER_COPY or not fits:
        return False
    on_pitch = -(-((out_h - 1) * pitch + out_w) // lanes)
    dense = -(-(out_h * out_w) // lanes)
    return 100 * (on_pitch - dense) >= DENSE_MIN_SAVING_PERCENT * on_pitch


#: The blocked forward's form, for tests: None chooses by :func:`by_filters`; "positions"
#: or "filters" forces one.
FORWARD_FORM: str | None = None
#: The dense layout for tests and measurement: None where it applies, False never.
DENSE_FORM: bool | None = None


#: On 512-bit vectors, how much more of the filters form's multiply-adds must be
#: outputs' than the positions form's for :func:`by_filters` to choose it. Measured on
#: two threads of an AVX-512 Xeon, by positions / by filters, float32: LeNet's C6 12x12 ->
#: 16 5x5 (1.5 times more outputs) 163 / 131 us, C6 14x14 -> 16 121 / 102 us (1.44), C32
#: 14x14 -> 32 5x5 (1.31) 488 / 426 us; C32 -> 64 8x8 3x3 (1.25) 477 / 472 us at batch 32,
#: 41.7 / 42.8 us at batch 1; C16 -> 32 16x16 3x3 (1.13) 34.5 / 37.2 us at batch 1.
BY_FILTERS_MIN_GAIN = 1.3
#: ... and for a reduction of at least :data:`BY_FILTERS_MIN_DEPTH` multiply-adds per
#: output (C/groups x R x S, more than one tap), from this many times more: since a run's
#: last outputs take blocks of 4 (:data:`.microkernels.TAIL_Q`), not of 12. Measured on a
#: Zen 4, two threads, float32, by positions / by filters (ms, the better of two runs;
#: the ratio of outputs in brackets): N8 C512 3x3 on 7x7 11.58 / 10.05 (1.32), at N1
#: 1.84 / 1.73, N8 C256 on 7x7 2.79 / 2.45; on 14x14 (1.06) N8 C256 9.19 / 8.51, N1 1.25 /
#: 1.14, C128 2.31 / 2.11, C64 -> 128 1.18 / 1.13; on 28x28 (1.09) C128 8.94 / 8.44; N32
#: C32 -> 48 5x5 on 14x14 (1.06) 2.41 / 2.22; C256 -> 512 3x3 s2 on 14x14 (1.32) 5.81 /
#: 5.04; C96 on 14x14 (864 deep) 1.46 / 1.30; grad_input (the flipped weight's forward)
#: of N8 C512 on 7x7 12.27 / 10.13, C256 on 14x14 9.36 / 8.39, C128 on 28x28 9.10 / 8.67.
#: Tied: C128 -> 64 on 28x28 4.65 / 4.64. Lost, less deep: 576, C64 -> 32 on 28x28 1.22 /
#: 1.41 (but C64 -> 128 on 14x14 1.18 / 1.13), 288, C32 -> 32 on 28x28 0.64 / 0.82, C32 ->
#: 64 on 32x32 1.53 / 1.95; 144, C16 -> 32 on 32x32 1.51 / 1.68; nearer than 1.06: C64
#: -> 64 on 56x56 (1.04) 8.71 / 8.76, C64 -> 128 3x3 s2 on 56x56 (1.04) 4.57 / 5.29; one
#: tap: C256 -> 64 1x1 on 14x14 (1.06) 0.29 / 0.33; where the positions form's dense
#: layout leaves no junk (C64 -> 64 16x16 and 28x28, C128 -> 256 16x16: 0.94-0.97).
BY_FILTERS_MIN_GAIN_DEEP = 1.06
BY_FILTERS_MIN_DEPTH = 768
#: On 256-bit vectors, how many times more of the by-filters form's multiply-adds must
#: be outputs' than of the positions form's for :func:`by_filters` to choose it: between
#: the layers measured (:func:`by_filters`) that lost or tied (1.02-1.04 times more; they
#: ran 0.90-1.02x) and those that gained (C128 -> 128 on 28x28, 1.075 times more: 1.07x).
BY_FILTERS_MIN_GAIN_256 = 1.06


def by_filters(out_h: int, out_w: int, per_group: int, depth: int, kw: int, dilation_w: int,
               itemsize: int, stride_w: int = 1, width: int = 0, work_per_copy: int = 0,
               fits: bool = True, form: str | None = None, taps: int = 1) -> bool:
    """Whether the blocked forward computes its sums by filters (a group's filters a block
    of vectors at a time x a few outputs, :func:`.microkernels.positions_x_filters`)
    rather than by positions (8 filters x vectors of positions on the row pitch): where
    enough more of its multiply-adds are outputs' (counting the positions form's junk
    columns and its last block of 8 filters' padding, and the filters form's last
    block's padding; ``work_per_copy``: as for :func:`use_percent`, the positions on the
    dense layout's pitch where it pays). ``form`` (default :data:`FORWARD_FORM`):
    "filters" or "positions" forces one.

    On 512-bit vectors (12 outputs x 16 filters, float32) at least
    :data:`BY_FILTERS_MIN_GAIN` times more, or :data:`BY_FILTERS_MIN_GAIN_DEEP` times
    more for a reduction (``depth`` = C/groups * R * S, over ``taps`` = R * S > 1 taps)
    of at least :data:`BY_FILTERS_MIN_DEPTH`. On 256-bit
    vectors (3 outputs x 32 filters) at least :data:`BY_FILTERS_MIN_GAIN_256` times more:
    there the two forms' kernels run about alike per multiply-add (measured on a Zen 3,
    two threads, by filters / by positions: N8 C64 56x56 -> 128 3x3 s2 p1 0.99-1.04, C64
    -> 64 3x3 p1 1.00, N8 C32 112x112 -> 64 3x3 s2 0.94, 7x7 s2 C3 -> 64 on 224x224
    0.89-0.92) and the filters form wins where the positions form computes more junk:
    C128 -> 128 on 28x28 1.07, C256 -> 256 on 14x14 1.10-1.11, C512 -> 512 on 7x7 1.06,
    N32 C32 -> 32 14x14 5x5 1.21, C128 -> 256 on 28x28 3x3 s2 1.08-1.11, C256 -> 512 on
    14x14 s2 1.07, N32 C16 -> 32 on 16x16 1.00-1.06, on 4x4 (the demo's second layer)
    1.35-1.44; and loses where its block of 32 filters is mostly padding (LeNet's C6 12x12
    -> 16 5x5 0.73, C1 28x28 -> 6 5x5 0.34, C1 8x8 -> 16 3x3 0.77)."""
    form = FORWARD_FORM if form is None else form
    if form is not None:
        return form == "filters"
    block = filters_block(itemsize)
    positions = use_percent(out_h, out_w, kw, dilation_w, itemsize, stride_w, width,
                            work_per_copy, fits) * (
        per_group / (-(-per_group // BLOCK_K) * BLOCK_K))
    filters = 100 * per_group / (-(-per_group // block) * block)
    if not simd.WIDE:
        return filters >= BY_FILTERS_MIN_GAIN_256 * positions
    deep = depth >= BY_FILTERS_MIN_DEPTH and taps > 1
    return filters >= (BY_FILTERS_MIN_GAIN_DEEP if deep else BY_FILTERS_MIN_GAIN) * positions


@functools.lru_cache(maxsize=512)
def _forward_layout(x_shape, out_shape, filters_shape, stride, padding, dilation, groups,
                    itemsize, n_threads, budget, band_rows, form, dense_form, block_taps=None):
    """Everything the blocked forward kernel needs besides its arrays, for one problem:
    (packed filters' shape, band, pitch, phase rows, plane, k_runs, scratch shape,
    serial, packing, n_shift, dense_plane). ``block_taps``: as for :func:`dense_fits`.
    Cached: the thread count, the scratch budget, the band rule and the forced forms are
    part of the key."""
    n_img, _, _, width = x_shape
    filters, channels, kh, kw = filters_shape  # of the convolution that runs, all groups
    out_h, out_w = out_shape[2], out_shape[3]
    (_, _), (left, right) = padding
    phases = stride[0] * stride[1]
    pitch = -(-(width + left + right) // stride[1])
    reach = dilation[0] * (kh - 1) // stride[0]  # phase rows below a band's last row
    lanes = simd.WIDTH_BYTES // itemsize
    step = BLOCK_P * lanes
    per_group = filters // groups
    # dense: the positions on the output's own row pitch, each channel's strip copied once
    # per (phase and) column shift of its taps (no junk columns computed)
    copies = dense_copies(kh, kw, stride, dilation)
    work_per_copy = dense_work_per_copy(per_group, kh, kw, stride, dilation)
    fits = dense_fits(channels, kh, kw, stride, dilation, out_h, out_w, itemsize, block_taps)
    filters_form = by_filters(out_h, out_w, per_group, channels * kh * kw, kw, dilation[1],
                              itemsize, stride[1], width + left + right,
                              0 if dense_form is False else work_per_copy, fits, form,
                              taps=kh * kw)
    block = filters_block(itemsize) if filters_form else BLOCK_K
    n_blocks = -(-per_group // block)
    # a band of b rows: per channel (b + reach) rows of each phase and the overrun of the
    # last block of positions; the sums: BLOCK_K rows, or by filters a block of filters
    # per output (up to a whole block of BLOCK_Q outputs) and a spare square of lanes x
    # lanes for the transposes
    n_shift = dilation[1] * (kw - 1) // stride[1] + 1
    dense = not filters_form and (dense_form if dense_form is not None else dense_pays(
        out_h, out_w, pitch, lanes, work_per_copy, fits))
    pos_pitch = out_w if dense else pitch
    if filters_form:
        sums_fixed, sums_row = block * (out_w + BLOCK_Q) + lanes * lanes, block * out_w
    else:
        sums_fixed, sums_row = BLOCK_K * (pos_pitch + step), BLOCK_K * pos_pitch
    if dense:  # a channel's strip, every channel's copies
        fixed = phases * (1 + reach) * pitch + step + channels * (copies * (1 + reach) * out_w
                                                                  + step)
        per_row = phases * pitch + channels * copies * out_w
    else:
        fixed, per_row = channels * (phases * (1 + reach) * pitch + step), channels * phases * pitch
    band = band_rows(out_h, fixed + sums_fixed, per_row + sums_row, itemsize)
    phase_rows = band + reach
    plane = phases * phase_rows * pitch + step
    dense_plane = copies * phase_rows * out_w + step if dense else 0
    units = n_img * groups * -(-out_h // band)
    k_runs = max(1, min(n_blocks, -(-n_threads // units)))
    chunks = max(1, min(n_threads, units * k_runs))
    if filters_form:
        sums = -(-(band * out_w) // BLOCK_Q) * BLOCK_Q * block + lanes * lanes
    else:
        sums = BLOCK_K * -(-((band - 1) * pos_pitch + out_w) // lanes) * lanes
    serial = chunks == 1 or n_img * out_h * out_w * filters * channels * kh * kw <= max(
        threads.SERIAL_MAX_WORK, FORWARD_SERIAL_MAX_WORK)
    packing = IN_TASKS if not serial and groups * n_blocks * block * channels * kh * kw >= (
        PACK_TASKS_MIN_VALUES) else 0
    if filters_form:
        packing |= BY_FILTERS
    if dense:
        packing |= DENSE
    return ((groups, n_blocks, channels * kh * kw, block), band, pitch, phase_rows, plane,
            k_runs, (chunks, (plane if dense else channels * plane) + channels * dense_plane
                     + sums), serial, packing,
            n_shift, dense_plane)


def _tap_table(kh: int, kw: int, stride, dilation, shifts, phase_rows: int, pitch: int,
               out_w: int, n_shift: int, dense: bool):
    """Where in a channel's strip each tap reads, for :func:`_conv2d_forward_blocked`:
    ``taps[s, t]``, the offset of tap ``t = r * S + c`` of the filters of set ``s``
    from its output's position (the set reads its taps ``shifts[s]`` (rows, columns)
    further on in the padded input: the phases of a strided grad_input in one call,
    :func:`grad_input_runner`; a convolution's one set is ``(0, 0)``): its phase's
    rows, then its row and column shift in the phase, on ``pitch``, or dense, on the
    output's ``out_w`` in its copy. ``slots[phase * n_shift + shift]``: that copy's
    place among the copies a dense strip makes (-1: not read; all -1 but dense)."""
    stride_h, stride_w = stride
    places = [[(r * dilation[0] + row_shift, c * dilation[1] + col_shift)
               for r in range(kh) for c in range(kw)] for row_shift, col_shift in shifts]
    slots = np.full(stride_h * stride_w * n_shift, -1, np.intp)
    if dense:
        read = sorted({((row % stride_h) * stride_w + col % stride_w) * n_shift
                       + col // stride_w for tap_set in places for row, col in tap_set})
        slots[read] = np.arange(len(read))
    taps = np.empty((len(shifts), kh * kw), np.intp)
    for s, tap_set in enumerate(places):
        for t, (row, col) in enumerate(tap_set):
            phase = (row % stride_h) * stride_w + col % stride_w
            if dense:
                taps[s, t] = (slots[phase * n_shift + col // stride_w] * phase_rows
                              + row // stride_h) * out_w
            else:
                taps[s, t] = (phase * phase_rows + row // stride_h) * pitch + col // stride_w
    return taps, slots


#: One pass of the blocked forward's reduction (:func:`channels_per_pass`) reads, per
#: block of positions, at most this share of the L1 (1 / 4): what it reads then stays
#: there for the next blocks, which read the same rows at the next positions. Measured
#: on a Zen 2 (32 KiB L1d, 256-bit vectors), float32, N8, two threads, the passes'
#: channels against all in one, GFLOP/s alternating in one process: C64 -> 128 3x3 s2 on
#: 56x56 (13 64-byte lines a channel per block) 8: 135, 16: 128, all: 123; C64 -> 64
#: 3x3 on 56x56 (7 lines) 8: 168, 16: 167, all: 157; C128 -> 128 on 28x28 and C256 ->
#: 256 on 14x14 within 3 % from 16 channels a pass to all (benchmarks/RESULTS.md, "The
#: reduction in passes of a few channels").
PASS_L1_SHARE = 4
#: Fewest channels in a pass: each pass loads and stores its block's sums once more.
MIN_PASS = 8


@functools.lru_cache(maxsize=512)
def channels_per_pass(taps: tuple[tuple[int, ...], ...], channels: int, itemsize: int) -> int:
    """Channels per pass of the blocked forward's reduction over a block of positions
    (:func:`.microkernels.weights_x_run`): as many as keep the cache lines one block
    reads in a channel (three vectors from each of a set's ``taps``, the offsets of
    :func:`_tap_table`; the set that reads most) within ``L1_BYTES /``
    :data:`PASS_L1_SHARE`, at least :data:`MIN_PASS`, split into equal passes. On
    512-bit vectors a set of one tap (a 1x1 layer) reads nothing again at the next
    positions: all its channels go in one pass. On 256-bit vectors a block is two halves
    of four filters (:func:`.microkernels._halves_x_positions`), the second reading
    the lines the first read: a 1x1 layer's passes keep them in the L1 too (a Zen 3,
    N8, two threads, best ms of the blocked forward, one pass against passes of 64:
    C256 -> 64 on 14x14 0.51 -> 0.41, C512 -> 1024 on 14x14 15.9 -> 11.7, C256 -> 1024
    on 28x28 29.7 -> 21.0, C128 -> 512 on 28x28 7.6 -> 6.7; 7x7 planes and 64 channels
    within 1 %)."""
    if max(len(tap_set) for tap_set in taps) == 1 and simd.WIDTH_BYTES >= 64:
        return channels
    step = BLOCK_P * simd.WIDTH_BYTES // itemsize
    line = 64 // itemsize
    lines = max(len({v // line for o in tap_set for v in (*range(o, o + step, line), o + step - 1)})
                for tap_set in taps)
    most = max(MIN_PASS, L1_BYTES // PASS_L1_SHARE // (lines * 64))
    passes = -(-channels // most)
    return -(-channels // passes)


#: Bytes of packed filters one pass of the by-filters reduction reads (taps x a block of
#: filters per channel) on 256-bit vectors, so that they stay in the L1 over all the
#: positions while the input streams past. Measured on a Zen 3 core (32 KB L1), N8 C64
#: 56x56 -> K128 3x3 s2 p1 by blocks of 3 positions x 32 filters: passes of 8 and 16
#: channels (9 and 18 KB) 92 GFLOP/s, all 64 (73 KB) 53.
FILTERS_PASS_BYTES = 18 << 10


def filters_per_pass(n_taps: int, channels: int, block: int, itemsize: int) -> int:
    """Channels per pass of the blocked forward's reduction by filters
    (:func:`.microkernels.positions_x_filters`): on 256-bit vectors as many as keep a
    pass's packed filters within :data:`FILTERS_PASS_BYTES`, split into equal passes;
    on 512-bit vectors all of them (one pass, as measured when that form was chosen; on
    deep layers too, where passes within 9-36 KB of packed filters measured alike: C256
    -> 512 3x3 s2 on 14x14, C512 3x3 on 7x7 and C256 on 14x14, N8, and N1 C512 on 7x7, a
    Zen 4, 2026-12-07)."""
    if simd.WIDE:
        return channels
    most = max(1, FILTERS_PASS_BYTES // (n_taps * block * itemsize))
    passes = -(-channels // most)
    return -(-channels // passes)


#: Most multiply-adds of a blocked forward call run on the calling thread. Waking the
#: pool for a call of one image costs more than the second thread gives below it
#: (measured on two threads, calling thread alone / both: C32->64 8x8 3x3 at 1.18M
#: multiply-adds 26.3 / 31.4 us, C16->32 16x16 3x3 at 1.18M 19.7 / 24.2 us; C16->16
#: 32x32 3x3 at 2.36M 32.7 / 30.5 us). Tests set it to 0 to run the parallel splits on
#: small cases.
FORWARD_SERIAL_MAX_WORK = 1 << 21

#: Fewest packed filter values (K rounded up to blocks of 8, times C/groups * R * S) for
#: which a parallel call packs them in parallel tasks: below it the second fork of the
#: threads costs more than the packing (C16->32 16x16 3x3: 4608 values, 34.8 us packed
#: serially, 40.0 in tasks; C32->64 8x8 3x3: 18432 values, 39.7 -> 30.9 us in tasks).
PACK_TASKS_MIN_VALUES = 8192

#: Fewest packed values of a flipped weight that :func:`forward_runner` keeps between calls
#: (:mod:`.prepared`): conv_transpose2d N8 C128 16x16 4x4 s2 (131072 values) 3.47-3.60 ->
#: 3.28-3.45 ms kept (a Zen 2, alternating processes). From 2^16 until 2026-12-07, when
#: a 1x1 grad_input of 64 x 256 (16384 values) had read 0.416-0.422 -> 0.435-0.457 ms
#: kept on a Zen 2, its lookup and numpy's compare (25 us) costing more than its
#: packing; with the compare now ``memcmp``'s, on a Zen 4 (the suite's grad_input g, N8,
#: two threads, best of alternating medians, packed per call / kept): 320 / 304 and 375
#: / 347 us with the same weight, 322 / 303 and 365 / 353 with one changed every call
#: (the compare stops at the first byte that differs; the packing is a launch of its own,
#: 20-27 us of the call). As many values as the packing's own tasks start from.
KEEP_FLIPPED_MIN_VALUES = PACK_TASKS_MIN_VALUES
#: ... and of a forward weight (packed in order, about half as costly a value): from
#: 2^17 values. Measured on a Zen 3, float32, two threads, best ms, packing alone /
#: the whole call: C256 -> 256 3x3 on 14x14 at N1 (589824 values) 0.27 / 1.73 (16 %),
#: C192 -> 384 3x3 s2 on 14x14 (663552) 0.28 / 3.86, C128 -> 256 3x3 s2 on 28x28
#: (294912) 0.13 / 6.23, C128 -> 128 3x3 on 28x28 (147456) 0.067 / 10.9, the compare
#: that replaces it about a third of the packing.
KEEP_MIN_VALUES = 1 << 17


#: An empty bias per dtype, for calls without one.
_NO_BIAS = {np.dtype(np.float32): np.zeros(0, np.float32),
            np.dtype(np.float64): np.zeros(0, np.float64)}


def conv2d_blocked(x, weight, bias, out, stride, padding, dilation, groups: int, *,
                   activation: str | None = None) -> None:
    """Host side of the blocked kernel; arguments as normalised by
    :func:`fastconv.conv2d`."""
    forward_runner(x.shape, weight.shape, out.shape, x.dtype, stride, padding, dilation,
                   groups, activation)(x, weight, bias, out)


def forward_runner(x_shape, weight_shape, out_shape, dtype, stride, padding, dilation,
                   groups: int, activation: str | None = None, *, flipped: bool = False,
                   shifts: tuple[tuple[int, int], ...] = ((0, 0),), tap_map=None,
                   weave=None):
    """:func:`conv2d_blocked` for one problem, its layout worked out once (for this
    thread count and scratch budget): ``run(x, weight, bias, out)``, ``bias`` an array
    of the filters' count or None. What a cached plan of :func:`fastconv.conv2d` keeps. With
    ``flipped``, ``weight_shape`` is the convolution's and ``run`` takes the weight of
    its transposed convolution (grad_input), packed flipped; it returns
    False, having written nothing, for a weight that is not all finite; ``tap_map``
    (``(sets, R * S)``, default all taps in order) says which of that weight's taps each
    set of filters has (:func:`_pack_flipped_block`). ``shifts``: the
    filters in that many equal sets, set ``s`` reading the input ``shifts[s]`` (rows,
    columns) further on (see :func:`_conv2d_forward_blocked`; stride 1, one group):
    ``padding`` must then pad the input for every set. ``weave`` (``(sets, 4)``: first
    row, first column, row step, column step): where the sums run by positions, ``run``
    also takes ``target``, a C-contiguous array into whose rows and columns each set's
    outputs are stored (``out`` then only gives the planes' shape and is not written),
    and ``run.woven`` is True."""
    dtype = np.dtype(dtype)
    filters, channels, kh, kw = weight_shape
    # the layout sees the kernel that covers every set's taps
    reach_h = max(r for r, _ in shifts) + dilation[0] * (kh - 1) + 1
    reach_w = max(c for _, c in shifts) + dilation[1] * (kw - 1) + 1
    covering = ((filters, channels, kh, kw), dilation) if len(shifts) == 1 else (
        (filters, channels, reach_h, reach_w), (1, 1))
    # each set of filters must be whole blocks: the positions form's blocks of 8 are
    # (:func:`_phases_fuse`), the by-filters form's may straddle two sets
    form = FORWARD_FORM
    if len(shifts) > 1 and filters // len(shifts) % filters_block(dtype.itemsize):
        form = "positions"
    (packed_shape, band, pitch, phase_rows, plane, k_runs, scratch_shape, serial, packing,
     n_shift, dense_plane) = (
        _forward_layout(tuple(x_shape), tuple(out_shape), covering[0], stride, padding,
                        covering[1], groups, dtype.itemsize, threads.count(),
                        config.DIRECT_TILE_BYTES, strips.band_rows, form,
                        DENSE_FORM, None if len(shifts) == 1 else (kh, kw)))
    packed_shape = (*packed_shape[:2], channels * kh * kw, packed_shape[3])
    n_parts = 1 if serial else min(scratch_shape[0], threads.count())
    floor, no_bias, borrow = activations.floor(activation, dtype), _NO_BIAS[dtype], workspace.borrow
    (top, _), (left, _) = padding
    taps, slots = _tap_table(kh, kw, stride, dilation, shifts, phase_rows, pitch, out_shape[3],
                             n_shift, packing & DENSE != 0)
    if packing & BY_FILTERS:
        per_pass = filters_per_pass(kh * kw, channels, packed_shape[3], dtype.itemsize)
    else:
        per_pass = channels_per_pass(tuple(tuple(int(o) for o in row) for row in taps),
                                     channels, dtype.itemsize)
    if tap_map is None:
        tap_map = np.arange(kh * kw, dtype=np.intp)[None]
    # stride 1 as None: a kernel compiled without the phases' code (a stride-1 layer's
    # first call compiles 1-2 s less of it, measured with the demo's layers on a Zen 4)
    unit = tuple(stride) == (1, 1)
    scalars = (packing | (FLIPPED if flipped else 0), top, left,
               None if unit else (int(stride[0]), int(stride[1])), pitch,
               phase_rows, taps, slots, tap_map, band, plane, n_shift, dense_plane, k_runs,
               per_pass)

    # an unpadded stride-1 convolution reads a C-contiguous x in place (no copy of its
    # planes into the strips): by positions a 1x1 one, by filters any
    whole_planes = (stride == (1, 1) and padding == ((0, 0), (0, 0)) and len(shifts) == 1
                    and (kh == kw == 1 or packing & BY_FILTERS != 0))
    bits, rest = scalars[0], scalars[1:]
    woven = weave is not None and not packing & BY_FILTERS
    bits_in_place = bits | IN_PLACE if whole_planes else bits
    weave = np.asarray(weave if woven else _NO_WEAVE, np.intp)
    # a flipped weight's packing (grad_input's, conv_transpose2d's) reads it out of order:
    # 5-6 % of conv_transpose2d's call on a Zen 2; a forward weight's, in order, up to 16 %
    # of a deep layer's call at a batch of one. For many filters the packed filters are
    # kept while the weight holds the same bytes (.prepared; a training step packs once
    # per call, as before), where the packing costs more than the compare
    kept_size = math.prod(packed_shape)  # (the bounds read at each call: the warm-up's)
    kept_kind = "blocked flipped filters" if flipped else "blocked filters"
    tap_key = (tap_map.shape, tap_map.tobytes())

    in_tasks = packing & IN_TASKS != 0
    pack_parts = min(threads.count(), packed_shape[0] * packed_shape[1])

    def pack(weight, packed):
        threads.launch(_pack_blocks, pack_parts, weight, packed, flipped, tap_map)

    def run(x, weight, bias, out, target=None) -> bool:
        call_bits = 0 if target is None else WOVEN
        if kept_size >= (KEEP_FLIPPED_MIN_VALUES if flipped else KEEP_MIN_VALUES):
            packed = prepared.get(kept_kind, weight, packed_shape, pack, tap_key)
            call_bits |= PACKED
        else:
            packed = borrow(packed_shape, dtype, "packed")
            if n_parts > 1:  # packed before the parts run (each reads every block), in
                # tasks for many filters
                threads.launch(_pack_blocks, n_parts if in_tasks else 1, weight, packed,
                               flipped, tap_map)
                call_bits |= PACKED
        args = (x, weight, packed, no_bias if bias is None else bias, bias is not None, floor,
                out, out if target is None else target, weave,
                (bits_in_place if x.flags.c_contiguous else bits) | call_bits, *rest,
                borrow(scratch_shape, dtype))
        if n_parts == 1:  # (threads.launch's first case, without its call)
            return _conv2d_forward_blocked(*args, 0, 1)
        return all(threads.launch(_conv2d_forward_blocked, n_parts, *args))

    run.woven = woven  # type: ignore[attr-defined]
    return run


#: The ``weave`` of a call that stores into ``out`` itself.
_NO_WEAVE = np.zeros((1, 4), np.intp)


@kernel()
def _pack_plane(x, source, n, channel, pad_top, pad_left, row_len, phase_len, stride_w, n_rows,
                dst):
    """dst = the plane ``x[n, channel]`` zero-padded (its rows from padded row
    ``pad_top``, its columns from padded column ``pad_left``), padded row ``t`` at
    ``dst[t * row_len:]`` and, at a column stride, dealt into its ``stride_w`` column
    phases: padded column ``u`` at ``(u % stride_w) * phase_len + u // stride_w`` of its
    row. Rows from ``n_rows`` on (which no output reads) are left out. ``source``:
    :func:`.strips.flat` (x); rows copied or dealt by :func:`.strips.deal_phases`
    (``stride_w`` None: 1, the dealing's code left out of the compiled kernel)."""
    dst[:] = 0
    inside = max(0, min(x.shape[2], n_rows - pad_top))
    strips.deal_phases(source, x, n, channel, 0, inside, 1, dst, pad_top * row_len, row_len,
                       phase_len, stride_w, pad_left)


@kernel(parallel=True)
def _conv2d_grad_weight_blocked(x, grads, out_h, out_w, xs, gt, partials, taps, grad_weight,
                                groups, pad_top, pad_left, row_len, phase_len, stride_h,
                                stride_w, n_rows, vectors, n_splits, n_tile_chunks, accumulate,
                                in_place, step, part, parts):
    """grad_weight[k, c, r, s] (+)= sum_{n, i, j} grad_out[n, k, i, j] * x_padded[n, c, i * sh
    + r * dh, j * sw + s * dw] over the images of ``x`` (``grads``: their grad_out,
    C-contiguous and flat), packed first: ``xs[n, c]`` the padded input planes, a padded row
    every ``row_len`` values, dealt into ``stride_w`` column phases of ``phase_len``
    (:func:`_pack_plane`; ``stride_w`` None for 1), so that output ``(i, j)`` reads every
    tap at a constant offset from ``i * stride_h * row_len + j`` (``in_place``: no
    padding and a column stride of 1, where ``xs`` is ``x`` itself and nothing is
    copied); ``gt[n]`` the output gradient, each group's filters padded with zeros to
    blocks of ``vectors`` vectors and stored block by block, in a block position by
    position (a block's filters of one position consecutive; transposed a square of lanes
    at a time), so that a task reads its block's gradient in order. ``taps`` rows
    are tiles of 12 consecutive taps of a filter, in the order of its flat gradient
    (channel, row, column), as offsets in the group's planes (the last tile padded with taps
    at offset 0, their sums dropped). A task of the second loop computes one of
    ``n_tile_chunks`` chunks of tiles by one block of filters over one of ``n_splits``
    slices of the images into ``partials``; the third adds the slices in order.
    ``accumulate`` adds to what ``grad_weight`` holds. ``step``: which of the three loops
    runs (0, 1 or 2: each needs every part of the one before), or -1 for all three.
    Returns whether every value of ``grad_weight`` is now finite (one scan at the end of
    this kernel: a numpy scan after it, in a training step where its code is not in the
    caches, cost more); a call of several parts returns True (the third loop, which
    scans, runs as one part)."""
    n_img, channels, x_plane = xs.shape
    out_channels, group_channels, kh, kw = grad_weight.shape
    per_group = out_channels // groups
    lanes = simd.lanes(xs)
    block = vectors * lanes
    padded_k = gt.shape[2] // groups
    n_kblocks = padded_k // block
    n_tiles = taps.shape[0]
    positions = out_h * out_w
    g_step = gt.shape[2]
    g_flat = gt.reshape(-1)
    squares = groups * (padded_k // lanes)  # lanes filters of a group, all positions
    x_source = strips.flat(x)  # rows by offset, not by view
    n_tasks = n_img * (channels + squares) if step <= 0 else 0
    for task in prange(part * n_tasks // parts, (part + 1) * n_tasks // parts):
        n, q = task // (channels + squares), task % (channels + squares)
        if q < channels:
            if not in_place:
                _pack_plane(x, x_source, n, q, pad_top, pad_left, row_len, phase_len,
                            stride_w, n_rows, xs[n, q])
            continue
        g, k0 = (q - channels) // (padded_k // lanes), (q - channels) % (padded_k // lanes) * lanes
        count = max(0, min(lanes, per_group - k0))
        src = (n * out_channels + g * per_group + k0) * positions
        # block-major: a block's filters of one position, then the next position's
        dst = n * positions * g_step + (g * padded_k + k0 // block * block) * positions + (
            k0 % block)
        full = positions - positions % lanes
        for p in range(0, full, lanes):
            simd.transpose(grads, src + p, positions, count, g_flat, dst + p * block, block)
        for p in range(full, positions):
            for kk in range(lanes):
                g_flat[dst + p * block + kk] = grads[src + kk * positions + p] if kk < count else 0
    x_flat = xs.reshape(-1)
    chunk = -(-n_img // n_splits)
    per_chunk = -(-n_tiles // n_tile_chunks)
    pitch = stride_h * row_len  # from one output row to the next
    n_tasks = groups * n_kblocks * n_tile_chunks * n_splits if step in (-1, 1) else 0
    for task in prange(part * n_tasks // parts, (part + 1) * n_tasks // parts):
        split = task % n_splits
        tiles = task // n_splits % n_tile_chunks
        kb = task // (n_splits * n_tile_chunks) % n_kblocks
        g = task // (n_splits * n_tile_chunks * n_kblocks)
        first = split * chunk
        count = max(0, min(chunk, n_img - first))
        offsets = np.empty(12, np.intp)
        # the tiles of a chunk one after another over the same images, whose packed
        # gradient stays in cache
        for tile in range(tiles * per_chunk, min(n_tiles, (tiles + 1) * per_chunk)):
            for t in range(12):
                offsets[t] = taps[tile, t] + g * group_channels * x_plane
            out = partials[((g * n_kblocks + kb) * n_tiles + tile) * n_splits + split]
            if vectors == 2:
                taps_x_filters(x_flat, g_flat, out, offsets, first, count, channels * x_plane,
                               out_h, out_w, pitch, (g * padded_k + kb * block) * positions,
                               positions * g_step, block)
            else:
                taps_x_vector(x_flat, g_flat, out, offsets, first, count, channels * x_plane,
                              out_h, out_w, pitch, (g * padded_k + kb * block) * positions,
                              positions * g_step, block)
    gw = strips.flat(grad_weight)
    row = 12 * block  # a task's partial sums: (tap, filter)
    gw_filter = group_channels * kh * kw
    n_tasks = groups * n_kblocks * n_tiles if step in (-1, 2) else 0
    square = np.empty(lanes * lanes if n_tasks else 0, gt.dtype)  # (_rows_of_filters)
    for task in prange(part * n_tasks // parts, (part + 1) * n_tasks // parts):
        tile = task % n_tiles
        kb = (task // n_tiles) % n_kblocks
        g = task // (n_tiles * n_kblocks)
        sums = partials[task * n_splits]
        for split in range(1, n_splits):  # the slices' sums, added in order
            more = partials[task * n_splits + split]
            for v in range(0, row, lanes):
                simd.store(sums, v, simd.add(simd.load(sums, v), simd.load(more, v)))
        n_k = min(block, per_group - kb * block)
        k0 = g * per_group + kb * block
        n_taps = min(12, gw_filter - tile * 12)
        if _rows_of_filters(sums, block, n_k, k0 * gw_filter + tile * 12, gw_filter, n_taps,
                            gw, accumulate, square):
            continue
        for t in range(n_taps):  # a strided weight gradient, value by value
            q = tile * 12 + t
            c, r, s = q // (kh * kw), q // kw % kh, q % kw
            for kk in range(n_k):
                total = sums[t * block + kk]
                if accumulate:
                    total += grad_weight[k0 + kk, c, r, s]
                grad_weight[k0 + kk, c, r, s] = total
    return parts > 1 or _all_finite(gw, grad_weight)


def _rows_of_filters(sums, block, n_k, first, pitch, n_taps, gw, accumulate, square):
    """gw[first + kk * pitch + i] (+)= sums[i * block + kk] for i < n_taps, kk < n_k: a
    task's sums of up to 12 consecutive taps of each of its filters, stored filter by
    filter: up to a vector of taps x a vector of filters transposed into ``square`` (lanes
    x lanes values; :func:`.simd.transpose`), then each filter's taps stored as the first
    lanes of a vector. Stored value by value (before 2026-12-07), they were a third of a
    batch-1 deep layer's call (N1 C256 3x3 on 14x14, 590K values: 0.52 of 1.57 ms on one
    thread; 0.24 now). Returns False, having done nothing, where ``gw`` is not a flat
    array (a strided weight gradient: the caller's loop stores it)."""


def _rows_of_filters_flat(sums, block, n_k, first, pitch, n_taps, gw, accumulate, square):
    lanes = simd.lanes(sums)
    for f in range(0, n_k, lanes):
        for t in range(0, n_taps, lanes):
            count = min(lanes, n_taps - t)
            simd.transpose(sums, t * block + f, block, count, square, 0, lanes)
            for q in range(min(lanes, n_k - f)):
                at = first + (f + q) * pitch + t
                taps = simd.load(square, q * lanes)
                if accumulate:
                    taps = simd.add(taps, simd.load_first(gw, at, count))
                simd.store_first(gw, at, taps, count)
    return True


@overload(_rows_of_filters, jit_options=jit_options())
def _rows_of_filters_overload(sums, block, n_k, first, pitch, n_taps, gw, accumulate, square):
    if simd._contiguous_1d(gw):
        return _rows_of_filters_flat
    return lambda sums, block, n_k, first, pitch, n_taps, gw, accumulate, square: False


def _all_finite(gw, grad_weight):
    """Whether every value of ``grad_weight`` is finite (``gw``: :func:`.strips.flat` of
    it): one scan of the flat array, else a loop."""


def _all_finite_loop(gw, grad_weight):
    for value in np.nditer(grad_weight):
        if not np.isfinite(value.item()):
            return False
    return True


@overload(_all_finite, jit_options=jit_options())
def _all_finite_overload(gw, grad_weight):
    if simd._contiguous_1d(gw):
        return lambda gw, grad_weight: not _nonfinite_in(gw, np.int64(0), gw.size)
    return _all_finite_loop


#: Fewest values of a weight gradient whose sums (the third loop of
#: :func:`_conv2d_grad_weight_blocked`, each task's 12 taps x a block of filters stored into
#: the gradient's rows) are stored by all the threads, then scanned in parallel
#: (:func:`.finite.all_finite`); below, the calling thread stores and scans them. At a
#: batch of one they were a third of a deep layer's call: N1 C256 3x3 on 14x14 (590K
#: values), Zen 4, 0.52 of 1.57 ms on one thread.
GRAD_WEIGHT_PARALLEL_SUMS_MIN = 1 << 16
#: Most multiply-adds (in one block of images) the weight gradient runs on the calling
#: thread: its three parallel loops (packing, runs, sums) wake the pool three times, which
#: costs more than the work below about this (measured on two threads: (4, 3, 32, 32) with
#: 16 filters, 1.8M multiply-adds, 90 us parallel and 66 us serial; 4.7M break even).
GRAD_WEIGHT_SERIAL_MAX_WORK = 1 << 22
#: Most bytes of packed planes and gradient the weight gradient packs at once (a block of
#: images); it runs block after block above this.
GRAD_WEIGHT_BLOCK_BYTES = 32 << 20


def grad_weight_vectors(per_group: int, lanes: int) -> int:
    """Vectors of filters per block of the blocked weight gradient: one
    (:func:`.microkernels.taps_x_vector`) for at most a vector of filters, else two
    (:func:`.microkernels.taps_x_filters`), but on 512-bit vectors one where blocks of two
    would pad the group's filters more than blocks of one. There the one-vector block
    (12 sums, 13 loads per 12 multiply-adds) ran as fast as the pair where both compute
    the same filters, and faster where the pair computes zeros: measured on a Zen 4, two
    threads, float32, blocks of two / of one (ms): N32 C32 -> 48 5x5 on 14x14 3.04-3.07 /
    2.28-2.38 (a quarter of the pair's filters padding), N8 C64 -> 48 3x3 on 28x28
    2.21-2.79 / 1.64-2.23, C128 -> 128 on 28x28 8.49-8.94 / 8.47-8.68, N1 C256 on 14x14
    1.66-1.68 / 1.67-2.05. On 256-bit vectors (the same Zen 4 running them,
    ``FASTCONV_SIMD_BITS=256``) it was mixed: C64 -> 40 on 28x28 1.70 / 2.07-2.09, N32 C32
    -> 20 5x5 1.63-1.98 / 1.53-1.55."""
    pair = 2 * lanes
    if per_group <= lanes or (
            simd.WIDE and -(-per_group // pair) * pair > -(-per_group // lanes) * lanes):
        return 1
    return 2


@functools.lru_cache(maxsize=512)
def _grad_weight_layout(x_shape, grad_out_shape, weight_shape, stride, padding, dilation,
                        groups, itemsize, n_threads=1, budget=0, block_bytes=0):
    """Everything the blocked weight gradient needs besides its arrays, for one problem
    (``n_threads`` threads of ``budget`` cache bytes each, blocks of images of at most
    ``block_bytes`` packed, or one image): (the packed planes' row
    length, phase length and rows, values per input plane, filters per group padded to
    blocks, vectors per block, the taps array, values per image, images per block,
    image slices, tile chunks, serial)."""
    n_img, channels, _, width = x_shape
    out_h, out_w = grad_out_shape[2], grad_out_shape[3]
    out_channels, group_channels, kh, kw = weight_shape
    (stride_h, stride_w), (dilation_h, dilation_w) = stride, dilation
    lanes = simd.WIDTH_BYTES // itemsize
    # a padded row dealt into stride_w column phases of phase_len values each
    phase_len = -(-(width + sum(padding[1])) // stride_w)
    row_len = stride_w * phase_len
    n_rows = (out_h - 1) * stride_h + dilation_h * (kh - 1) + 1  # the rows outputs read
    x_plane = n_rows * row_len
    if in_place(padding, stride):  # the planes of x as they are
        x_plane = x_shape[2] * width
    per_group = out_channels // groups
    vectors = grad_weight_vectors(per_group, lanes)
    padded_k = -(-per_group // (vectors * lanes)) * vectors * lanes
    # every tap of a filter, in the order of its flat gradient, at its offset from the
    # position it is read for; dummy taps (offset 0) fill the last tile of 12
    offsets = [c * x_plane + r * dilation_h * row_len
               + (s * dilation_w) % stride_w * phase_len + (s * dilation_w) // stride_w
               for c in range(group_channels) for r in range(kh) for s in range(kw)]
    offsets += [0] * (-len(offsets) % 12)
    taps = np.array(offsets, np.intp).reshape(-1, 12)
    taps.setflags(write=False)
    per_image = channels * x_plane + out_h * out_w * groups * padded_k
    per_block = max(1, min(n_img, block_bytes // itemsize // per_image))
    # slices of images whose packed gradient fits half a thread's budget (it stays in
    # cache while a task runs its tiles over it), then chunks of tiles and more slices
    # until there are two tasks per thread
    blocks = groups * (padded_k // (vectors * lanes))
    n_tiles = taps.shape[0]
    fit = max(1, budget // 2 // itemsize // (out_h * out_w * vectors * lanes))
    n_splits = -(-per_block // fit)
    n_tile_chunks = max(1, min(n_tiles, -(-2 * n_threads // (blocks * n_splits))))
    n_splits = min(per_block, max(n_splits, -(-2 * n_threads // (blocks * n_tile_chunks))))
    serial = n_threads == 1 or per_block * out_h * out_w * out_channels * group_channels * (
        kh * kw) <= GRAD_WEIGHT_SERIAL_MAX_WORK
    return (row_len, phase_len, n_rows, x_plane, padded_k, vectors, taps, per_image, per_block,
            n_splits, n_tile_chunks, serial)


def grad_weight_applies(x_shape, grad_out_shape, weight_shape, stride, padding, dilation,
                        groups: int, itemsize: int) -> bool:
    """Whether :func:`conv2d_grad_weight_blocked` computes this weight gradient: at least
    :data:`MIN_GROUP_K` filters per group, and one image's packed planes and gradient
    within :data:`GRAD_WEIGHT_BLOCK_BYTES`."""
    if weight_shape[0] // groups < MIN_GROUP_K:
        return False
    per_image = _grad_weight_layout(x_shape, grad_out_shape, weight_shape, stride, padding,
                                    dilation, groups, itemsize)[7]
    return per_image * itemsize <= GRAD_WEIGHT_BLOCK_BYTES


def conv2d_grad_weight_blocked(x, grad_out, grad_weight, stride, padding, dilation,
                               groups: int) -> bool:
    """Host side of the blocked weight gradient (see :func:`grad_weight_applies`), in
    blocks of as many images as :data:`GRAD_WEIGHT_BLOCK_BYTES` holds; whether the result
    is all finite."""
    return grad_weight_runner(x.shape, grad_out.shape, grad_weight.shape, x.dtype, stride,
                              padding, dilation, groups)(x, grad_out, grad_weight)


def in_place(padding, stride) -> bool:
    """Whether the blocked weight gradient reads ``x``'s planes as they are: no padding
    and a column stride of 1 (1x1 layers, valid convolutions), where its packed planes
    would be a copy of them."""
    return stride[1] == 1 and all(pad == 0 for pair in padding for pad in pair)


def grad_weight_runner(x_shape, grad_out_shape, weight_shape, dtype, stride, padding, dilation,
                       groups: int):
    """:func:`conv2d_grad_weight_blocked` for one problem, its layout worked out once:
    ``run(x, grad_out, grad_weight)``, which returns whether the result is all finite."""
    dtype = np.dtype(dtype)
    (row_len, phase_len, n_rows, x_plane, padded_k, vectors, taps, _, per_block, n_splits,
     n_tile_chunks, serial) = _grad_weight_layout(
        tuple(x_shape), tuple(grad_out_shape), tuple(weight_shape), tuple(stride), padding,
        tuple(dilation), groups, dtype.itemsize, threads.count(), config.DIRECT_TILE_BYTES,
        GRAD_WEIGHT_BLOCK_BYTES)
    n_img, channels = x_shape[0], x_shape[1]
    out_h, out_w = grad_out_shape[2], grad_out_shape[3]
    lanes = simd.WIDTH_BYTES // dtype.itemsize
    tasks = groups * (padded_k // (vectors * lanes)) * taps.shape[0] * n_splits
    # small calls on the calling thread: waking the pool costs more than the work
    n_parts = 1 if serial else threads.count()
    borrow = workspace.borrow
    blocks = [(first, min(per_block, n_img - first)) for first in range(0, n_img, per_block)]
    # a column stride of 1 as None: the kernel compiled for it leaves out the columns'
    # dealing (:func:`_pack_plane`)
    scalars = (groups, padding[0][0], padding[1][0], row_len, phase_len, stride[0],
               None if stride[1] == 1 else int(stride[1]), n_rows, vectors)

    unpacked = in_place(padding, stride)
    parallel_sums = math.prod(weight_shape) >= GRAD_WEIGHT_PARALLEL_SUMS_MIN

    def run(x, grad_out, grad_weight) -> bool:
        finite = True
        for first, images in blocks:
            block = x if images == n_img else x[first : first + images]
            xs = (block.reshape(images, channels, x_plane) if unpacked
                  else borrow((images, channels, x_plane), dtype))
            gt = borrow((images, out_h * out_w, groups * padded_k), dtype, "packed")
            partials = borrow((tasks, 12 * vectors * lanes), dtype, "partials")
            grads = np.ascontiguousarray(
                grad_out if images == n_img else grad_out[first : first + images]).reshape(-1)
            args = (block, grads, out_h, out_w, xs, gt, partials, taps, grad_weight, *scalars,
                    min(n_splits, images), n_tile_chunks, first > 0, unpacked)
            kernel = _conv2d_grad_weight_blocked
            if n_parts == 1:  # (threads.launch's first case, without its call)
                finite = kernel(*args, -1, 0, 1)
                continue
            # each loop needs every part of the one before; the sums, a short loop, run on
            # this thread and scan the result, but for a large weight, whose sums are
            # stored in parts and then scanned in parallel
            threads.launch(kernel, n_parts, *args, 0)
            threads.launch(kernel, n_parts, *args, 1)
            if parallel_sums and grad_weight.flags.c_contiguous:
                threads.launch(kernel, n_parts, *args, 2)
                finite = all_finite(grad_weight)
            else:
                finite = kernel(*args, 2, 0, 1)
        return finite

    return run


def _phase_axis(size: int, out_size: int, kernel: int, stride: int, pad: int, dilation: int,
                residue: int):
    """One axis of the input gradient's phase ``residue``: the positions ``y`` of the input
    with ``(y + pad) % stride == residue`` take taps ``r`` with ``r * dilation % stride ==
    residue`` only, a stride-1 transposed convolution of grad_out with those taps.
    Returns ``(first y, count, taps, their dilation, grad_out's first and end index,
    padding before and after)``, or None when the phase holds no position; ``taps`` is
    empty when no tap reaches it."""
    first = (residue - pad) % stride
    count = len(range(first, size, stride))
    if count == 0:
        return None
    taps = [r for r in range(kernel) if r * dilation % stride == residue]
    if not taps:
        return first, count, taps, 1, 0, 0, 0, 0
    shift = (first + pad) // stride  # output row of the phase's first position, less e_0
    step = (taps[1] - taps[0]) * dilation // stride if len(taps) > 1 else 1
    e_first = (taps[0] * dilation - residue) // stride
    reach = (len(taps) - 1) * step
    # phase position m' reads grad_out[m' + reach - before + t * step], t < len(taps)
    before = reach - shift + e_first
    lo, hi = max(0, -before), min(out_size, count + reach - before)
    if hi <= lo:
        return first, count, [], 1, 0, 0, 0, 0
    return first, count, taps, step, lo, hi, lo + before, count + reach - before - hi


@functools.lru_cache(maxsize=512)
def _phases(in_size, out_size, kernel, stride, padding, dilation):
    """The (rows, columns) of every phase of the input that holds a position
    (:func:`_phase_axis` per axis), for one problem."""
    rows = [_phase_axis(in_size[0], out_size[0], kernel[0], stride[0], padding[0][0],
                        dilation[0], a) for a in range(stride[0])]
    cols = [_phase_axis(in_size[1], out_size[1], kernel[1], stride[1], padding[1][0],
                        dilation[1], b) for b in range(stride[1])]
    return tuple((r, c) for r in rows for c in cols if r is not None and c is not None)


def grad_input_applies(weight_shape) -> bool:
    """Whether :func:`conv2d_grad_input_blocked` computes this input gradient: at least
    :data:`MIN_GROUP_K` channels per group (the filters of the convolution that runs)."""
    return weight_shape[1] >= MIN_GROUP_K


def conv2d_grad_input_blocked(grad_out, weight, grad_in, stride, padding, dilation,
                              groups: int) -> bool:
    """grad_in = conv_transpose2d(grad_out, weight) for a weight with at least
    :data:`MIN_GROUP_K` channels per group, any stride: split into the ``sh * sw`` phases
    of the input (positions ``(y, x)`` with ``((y + pad_top) % sh, (x + pad_left) % sw)``
    fixed), each a stride-1 transposed convolution of grad_out with the taps that reach
    it (:func:`_phase_axis`), run by the blocked kernel on those taps of the weight,
    packed flipped; with stride 1, one phase. Returns False, ``grad_in`` unwritten, when
    a phase's taps are not all finite (those convolutions would meet an Inf tap with the
    padding's zeros): the caller's exact path must then compute ``grad_in``."""
    return grad_input_runner(grad_out.shape, weight.shape, grad_in.shape, grad_out.dtype,
                             stride, padding, dilation, groups)(grad_out, weight, grad_in)


@kernel(entry=True)
def _weave_phases(planes, starts, heights, widths, row_phase, col_phase, woven, image_planes,
                  grad_in):
    """grad_in[n, c, y, x] = the value of phase ``(a, b) = (row_phase[y, 0], col_phase[x,
    0])`` at ``(i, j) = (row_phase[y, 1], col_phase[x, 1])``, which is ``planes[starts[a,
    b] + ((n * image_planes + c) * heights[a] + i) * widths[b] + j]`` (``image_planes``:
    C, each phase's planes apart; or, the phases of one call, planes ``(n, phase, c)``,
    C times the phases, the phases ``C * h * w`` apart). ``woven``: columns 0 and 1
    are the first of two stride-2 column phases, whose rows :func:`.strips.weave_row`
    puts together on vectors. On the calling thread: on two threads it took 0.07 instead
    of 0.10 ms on a (8, 64, 32, 32) grad_input, and it would then have compiled a second
    time with Numba's parallel passes (about two seconds; threaded kernels have run as
    parts of one compiled function since, :mod:`.threads`)."""
    n_img, channels, height, width = grad_in.shape
    target = strips.flat(grad_in)
    first, second = col_phase[0, 0], col_phase[min(1, width - 1), 0]
    for index in range(n_img * channels):
        n, c = index // channels, index % channels
        plane = n * image_planes + c
        for y in range(height):
            a, i = row_phase[y, 0], row_phase[y, 1]
            if woven:
                even = starts[a, first] + (plane * heights[a] + i) * widths[first]
                odd = starts[a, second] + (plane * heights[a] + i) * widths[second]
                weave_row(target, grad_in, n, c, y, planes, even, odd)
                continue
            for x in range(width):
                b, j = col_phase[x, 0], col_phase[x, 1]
                grad_in[n, c, y, x] = planes[starts[a, b] + (plane * heights[a] + i) * widths[b]
                                             + j]


def _phase_maps(phases, size, shape):
    """For one axis: ``(map, counts, index of each phase)``: ``map[y] = (phase, position
    in it)`` for every position ``y < size``, ``counts`` the positions of each phase."""
    firsts = sorted({phase[0] for phase in phases})
    counts = [len(range(first, size, shape)) for first in firsts]
    where = np.empty((size, 2), np.intp)
    for a, first in enumerate(firsts):
        where[first::shape, 0] = a
        where[first::shape, 1] = np.arange(counts[a])
    return where, counts, {first: a for a, first in enumerate(firsts)}


def grad_input_runner(grad_out_shape, weight_shape, grad_in_shape, dtype, stride, padding,
                      dilation, groups: int):
    """:func:`conv2d_grad_input_blocked` for one problem, its phases and their layouts
    worked out once: ``run(grad_out, weight, grad_in, bias=None)``, which returns False
    for a weight that is not all finite (see there). ``bias`` (one value per channel of
    grad_in: conv_transpose2d's) is added as each phase stores its outputs. At a stride,
    each phase is computed into a
    C-contiguous plane of its own (the kernel's stores on vectors) and
    :func:`_weave_phases` then writes ``grad_in`` from them in one pass; where the phases
    are alike (:func:`_phases_fuse`), all of them in one kernel call."""
    dtype = np.dtype(dtype)
    whole = stride == (1, 1)
    n_img, channels, height, width = grad_in_shape
    kh, kw = weight_shape[2], weight_shape[3]
    every = slice(None)
    phases = _phases(tuple(grad_in_shape[2:]), tuple(grad_out_shape[2:]), (kh, kw), stride,
                     padding, dilation)
    row_phase, heights, row_of = _phase_maps([rows for rows, _ in phases], height, stride[0])
    col_phase, widths, col_of = _phase_maps([cols for _, cols in phases], width, stride[1])
    starts = np.zeros((len(heights), len(widths)), np.intp)
    woven = stride[1] == 2 and len(widths) == 2 and width >= 2
    if not whole and _phases_fuse(phases, grad_out_shape, channels, groups):
        return _fused_phases_runner(phases, grad_out_shape, weight_shape, grad_in_shape, dtype,
                                    starts, row_of, col_of,
                                    (row_phase, col_phase, woven, stride))
    # per phase: (where its plane starts, its shape, grad_out's crop, its forward runner,
    # which packs the phase's taps of the weight)
    steps: list[tuple[int, Any, Any, Any]] = []
    total = 0
    for rows, cols in phases:
        y0, count_h, taps_h, step_h, lo_h, hi_h, top, bottom = rows
        x0, count_w, taps_w, step_w, lo_w, hi_w, left, right = cols
        shape = (n_img, channels, count_h, count_w)
        starts[row_of[y0], col_of[x0]] = total
        step_at, total = total, total + n_img * channels * count_h * count_w
        if not taps_h or not taps_w:
            steps.append((step_at, shape, None, None))
            continue
        crop = None
        if (lo_h, hi_h, lo_w, hi_w) != (0, grad_out_shape[2], 0, grad_out_shape[3]):
            crop = (every, every, slice(lo_h, hi_h), slice(lo_w, hi_w))
        forward = forward_runner(
            (*grad_out_shape[:2], hi_h - lo_h, hi_w - lo_w),
            (channels, weight_shape[0] // groups, len(taps_h), len(taps_w)),
            shape, dtype, (1, 1), ((top, bottom), (left, right)), (step_h, step_w), groups,
            flipped=True,
            tap_map=np.array([[r * kw + c for r in taps_h for c in taps_w]], np.intp))
        steps.append((step_at, shape, crop, forward))
    heights_a, widths_a = np.array(heights, np.intp), np.array(widths, np.intp)
    if whole and steps[0][3] is not None:
        # stride 1: one phase, every tap, written into grad_in itself (the common case:
        # nothing to borrow or weave per call)
        crop, forward = steps[0][2], steps[0][3]

        def run_whole(grad_out, weight, grad_in, bias=None) -> bool:
            source = grad_out if crop is None else np.ascontiguousarray(grad_out[crop])
            return forward(source, weight, bias, grad_in)

        return run_whole
    # per phase: (its plane in the phases' buffer, its shape, crop, forward runner)
    phase_steps = [(slice(at, at + math.prod(shape)), shape, crop, forward)
                   for at, shape, crop, forward in steps]

    def run(grad_out, weight, grad_in, bias=None) -> bool:
        planes = workspace.borrow((0 if whole else total,), dtype, "phases")
        for where, shape, crop, forward in phase_steps:
            target = grad_in if whole else planes[where].reshape(shape)
            if forward is None:
                target[...] = 0 if bias is None else bias[:, None, None]
                continue
            source = grad_out if crop is None else np.ascontiguousarray(grad_out[crop])
            if not forward(source, weight, bias, target):
                return False
        if not whole:
            _weave_phases(planes, starts, heights_a, widths_a, row_phase, col_phase, woven,
                          channels, grad_in)
        return True

    return run


def _phases_fuse(phases, grad_out_shape, channels: int, groups: int) -> bool:
    """Whether the phases of a strided grad_input run as one kernel call: one group, at
    least two phases, every phase with taps, all of one shape, as many taps on the same
    dilation, none cropping grad_out, and the channels of grad_input (each phase's
    filters) whole blocks of 8 filters (the positions form's blocks: where the by-filters
    blocks would straddle two phases, the call runs by positions, :func:`forward_runner`)."""
    if groups != 1 or len(phases) < 2 or channels % BLOCK_K:
        return False
    for axis, size in ((0, grad_out_shape[2]), (1, grad_out_shape[3])):
        kinds = {(p[axis][1], len(p[axis][2]), p[axis][3]) for p in phases}
        if len(kinds) != 1 or any(not p[axis][2] or p[axis][4:6] != (0, size)
                                  for p in phases):
            return False
    return True


def _fused_phases_runner(phases, grad_out_shape, weight_shape, grad_in_shape, dtype, starts,
                         row_of, col_of, weave):
    """The phases of :func:`grad_input_runner` in one call of the blocked kernel: the
    filters of every phase side by side (``phases * channels`` of them, each phase's
    packed from its taps of the weight, ``tap_map`` of :func:`_pack_flipped_block`),
    grad_out padded once for all of them, each phase's filters reading it from a shift
    of their own (``shifts`` of :func:`_conv2d_forward_blocked`), each phase's outputs
    stored straight into its rows and columns of grad_in (:func:`_store_woven`; by
    filters, or into a grad_in that is not C-contiguous, into planes ``(n, phase, c)``
    that :func:`_weave_phases` then weaves). Saves each phase's copy of grad_out into
    the strips and its fork of the threads, and the weave's pass over grad_in."""
    n_img, channels, _, _ = grad_in_shape
    kw = weight_shape[3]
    n_sets = len(phases)
    rows0, cols0 = phases[0]
    count_h, count_w, dilation = rows0[1], cols0[1], (rows0[3], cols0[3])
    top = max(rows[6] for rows, _ in phases)
    bottom = max(rows[7] for rows, _ in phases)
    left = max(cols[6] for _, cols in phases)
    # a set that pads more on the right than the rest reads on into the next row's left
    # padding: zeros in every row of a strip (after its last row, the strip's overrun)
    right = max(0, max(cols[7] for _, cols in phases) - left)
    shifts = tuple((top - rows[6], left - cols[6]) for rows, cols in phases)
    tap_map = np.array([[r * kw + c for r in rows[2] for c in cols[2]]
                        for rows, cols in phases], np.intp)
    plane = channels * count_h * count_w
    for s, (rows, cols) in enumerate(phases):
        starts[row_of[rows[0]], col_of[cols[0]]] = s * plane
    planes_shape = (n_img, n_sets * channels, count_h, count_w)
    row_phase, col_phase, woven, stride = weave
    # each phase's rows and columns of grad_in: its first, then every stride-th
    forward = forward_runner(grad_out_shape,
                             (n_sets * channels, weight_shape[0], len(rows0[2]), len(cols0[2])),
                             planes_shape, dtype, (1, 1), ((top, bottom), (left, right)),
                             dilation, 1, flipped=True, shifts=shifts, tap_map=tap_map,
                             weave=[(rows[0], cols[0], *stride) for rows, cols in phases])
    heights = np.full(len(set(row_of.values())), count_h, np.intp)
    widths = np.full(len(set(col_of.values())), count_w, np.intp)

    def run(grad_out, weight, grad_in, bias=None) -> bool:
        # (where the stores weave, the planes only give the kernel their shape)
        planes = workspace.borrow(planes_shape, dtype, "phases")
        tiled = None if bias is None else np.tile(bias, n_sets)
        if forward.woven and grad_in.flags.c_contiguous:
            return forward(grad_out, weight, tiled, planes, grad_in)
        if not forward(grad_out, weight, tiled, planes):
            return False
        _weave_phases(planes.reshape(-1), starts, heights, widths, row_phase, col_phase, woven,
                      n_sets * channels, grad_in)
        return True

    return run
