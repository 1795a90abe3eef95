"""Zero-padded row strips: the scratch layout the direct kernels read their input from.

A direct task copies the padded input rows that a band of output rows reads
into a strip on the padded row pitch, so no tap ever indexes outside the input;
:func:`band_rows` sizes bands within ``config.DIRECT_TILE_BYTES``.
"""

from __future__ import annotations

from numba.core import types
from numba.extending import overload, register_jitable

from .. import config
from . import simd
from ._jit import inlined_options, jit_options, kernel, uncounted_options


def band_rows(n_rows: int, fixed: int, per_row: int, item: int) -> int:
    """Rows per band (at least 1, at most ``n_rows``) for a scratch of ``fixed + per_row *
    (rows - 1)`` values of ``item`` bytes each, within ``config.DIRECT_TILE_BYTES``."""
    budget = config.DIRECT_TILE_BYTES // item
    return max(1, min(n_rows, 1 + (budget - fixed) // max(1, per_row)))


@kernel()
def _to_pitch(buffer, rows, offset, pitch):
    """buffer[offset + i * pitch + j] = rows[i, j]: a plane copied into a buffer of a
    wider row pitch (the junk columns around it stay as they are)."""
    height, width = rows.shape
    for i in range(height):
        dst = buffer[offset + i * pitch :]
        src = rows[i]
        for j in range(width):
            dst[j] = src[j]


@kernel()
def _padded_rows(buffer, at, x, n, channel, first, n_rows, pad_left, pitch, clear, source):
    """Rows ``first .. first + n_rows`` of the zero-padded plane ``x[n, channel]`` on
    ``pitch`` (``first`` counts from the first image row and may be negative):
    ``x[n, channel, first + q, j]`` at ``buffer[at + q * pitch + pad_left + j]``, and, if
    ``clear``, zeros in the rows outside the image (without, they must be zero already:
    the last copy had the same rows). The padding columns are never written: they stay
    zero from the buffer's first clearing. Indexes ``x`` and ``buffer`` in place (a view
    per row costs more than a short row's copy). ``source``: :func:`flat` (x), or ``x``
    itself (copied value by value)."""
    height, width = x.shape[2], x.shape[3]
    inside_first = max(0, -first)
    inside_last = max(inside_first, min(n_rows, height - first))
    for q in range(inside_first, inside_last):
        copy_row(source, x, n, channel, first + q, buffer, at + q * pitch + pad_left)
    if clear:
        for q in range(n_rows):
            if q < inside_first or q >= inside_last:
                dst = at + q * pitch + pad_left
                for j in range(width):
                    buffer[dst + j] = 0


@register_jitable(**uncounted_options())
def row_start(array, n, channel, row):
    """Where row ``array[n, channel, row]`` of a C-contiguous 4-D array starts in
    :func:`flat` (array)."""
    return ((n * array.shape[1] + channel) * array.shape[2] + row) * array.shape[3]


def copy_run(source, src, buffer, at, count):
    """``buffer[at : at + count] = source[src : src + count]`` on :mod:`.simd` vectors
    (both 1-D contiguous, apart): a run shorter than a vector in one masked vector, else
    whole vectors, the last one ending the run (overlapping the one before: a masked tail
    slows the loop, see :mod:`.epilogue`). (A slice assignment between arrays would do
    it too, but compiles Numba's shape-mismatch message: string formatting, about 4 s of
    the warm-up's compile for one kernel.)"""


@overload(copy_run, jit_options=inlined_options())
def _copy_run(source, src, buffer, at, count):
    def impl(source, src, buffer, at, count):
        lanes = simd.lanes(buffer)
        if count < lanes:
            if count > 0:
                simd.store_first(buffer, at, simd.load_first(source, src, count), count)
            return
        for j in range(0, count - lanes, lanes):
            simd.store(buffer, at + j, simd.load(source, src + j))
        simd.store(buffer, at + count - lanes, simd.load(source, src + count - lanes))

    return impl


def flat(x):
    """``x.reshape(x.size)`` if ``x`` is C-contiguous, else ``x`` itself: what
    :func:`copy_row` copies from. Taken once per kernel call: a reshape per row costs
    more than a short row's copy."""


@overload(flat, jit_options=jit_options())
def _flat(x):
    if x.layout == "C":
        return lambda x: x.reshape(x.size)
    return lambda x: x


def copy_row(source, x, n, channel, row, buffer, at):
    """``buffer[at : at + W] = x[n, channel, row]`` (``x``: 4-D; ``buffer``: 1-D
    contiguous; ``source``: :func:`flat` (x)): on :mod:`.simd` vectors (a row shorter
    than one, masked) when ``x`` is C-contiguous; else value by value."""


def _copy_vectors(source, x, n, channel, row, buffer, at):
    copy_run(source, row_start(x, n, channel, row), buffer, at, x.shape[3])


def _copy_loop(source, x, n, channel, row, buffer, at):
    for j in range(x.shape[3]):
        buffer[at + j] = x[n, channel, row, j]


@overload(copy_row, jit_options=inlined_options())
def _copy_row(source, x, n, channel, row, buffer, at):
    if simd.vectors_fit(source, buffer):
        return _copy_vectors
    return _copy_loop


def deal_rows(source, x, n, channel, row, count, row_step, buffer, first, second, dst_step,
              pad_left):
    """Rows ``row + i * row_step`` (``i < count``) of ``x[n, channel]`` dealt into the two
    stride-2 phases of their zero-padded rows: padded column ``2 * u + b`` of row ``i`` at
    ``buffer[(first, second)[b] + i * dst_step + u]``, for the image's columns only (the
    padding is the caller's). ``source``: :func:`flat` (x). On :mod:`.simd` vectors (two
    loads, two shuffles, two stores per ``2 * lanes`` values) when ``x`` is C-contiguous;
    else value by value. A run of rows a call: a call per row (its arrays passed field by
    field, their reference counts taken) cost more than a short row's deal."""


def _deal_vectors(source, x, n, channel, row, count, row_step, buffer, first, second, dst_step,
                  pad_left):
    width = x.shape[3]
    lanes = simd.lanes(buffer)
    # column c + 2m of a chunk starting at an even c: phase pad_left % 2, u = (c +
    # pad_left) // 2 + m; column c + 2m + 1: the other phase, u = (c + pad_left + 1) // 2 + m
    even_at = (second if pad_left % 2 else first) + pad_left // 2
    odd_at = (first if pad_left % 2 else second) + (pad_left + 1) // 2
    src = row_start(x, n, channel, row)
    src_step = row_step * width
    whole = width - width % (2 * lanes)
    tail = width - whole
    # the tail's counts: the lanes of its two loads, of its even and odd values
    low_n = min(lanes, tail)
    high_n = tail - lanes
    even_n = (tail + 1) // 2
    odd_n = tail // 2
    # rows shorter than two vectors: the tail alone, a loop of its own (with the loop of
    # no vectors in its body seven 14-wide rows took 64 ns on a Zen 2, alone 50 ns; the
    # offsets and counts worked out once, not per row)
    for q in range(count if whole == 0 else 0):
        short = src + q * src_step
        first_half = simd.load_first(source, short, low_n)
        second_half = simd.load_first(source, short + lanes, high_n)
        simd.store_first(buffer, even_at + q * dst_step,
                         simd.deinterleave(first_half, second_half, False), even_n)
        simd.store_first(buffer, odd_at + q * dst_step,
                         simd.deinterleave(first_half, second_half, True), odd_n)
    for i in range(count if whole > 0 else 0):
        at = src + i * src_step
        even = even_at + i * dst_step
        odd = odd_at + i * dst_step
        for c in range(0, whole, 2 * lanes):
            low = simd.load(source, at + c)
            high = simd.load(source, at + c + lanes)
            simd.store(buffer, even + c // 2, simd.deinterleave(low, high, False))
            simd.store(buffer, odd + c // 2, simd.deinterleave(low, high, True))
        if tail:  # the row's last values, masked
            last_low = simd.load_first(source, at + whole, low_n)
            last_high = simd.load_first(source, at + whole + lanes, high_n)
            simd.store_first(buffer, even + whole // 2,
                             simd.deinterleave(last_low, last_high, False), even_n)
            simd.store_first(buffer, odd + whole // 2,
                             simd.deinterleave(last_low, last_high, True), odd_n)


def _deal_loop(source, x, n, channel, row, count, row_step, buffer, first, second, dst_step,
               pad_left):
    for i in range(count):
        for col in range(x.shape[3]):
            padded = col + pad_left
            buffer[(second if padded % 2 else first) + i * dst_step + padded // 2] = x[
                n, channel, row + i * row_step, col]


@overload(deal_rows, jit_options=uncounted_options())
def _deal_rows(source, x, n, channel, row, count, row_step, buffer, first, second, dst_step,
               pad_left):
    # (not inlined: inlined into an inlined caller, its loops made Numba warn of a
    # variable not in scope)
    if simd.vectors_fit(source, buffer):
        return _deal_vectors
    return _deal_loop


def deal_phases(source, x, n, channel, row, count, row_step, buffer, at, dst_step, step, stride,
                pad_left):
    """Rows ``row + i * row_step`` (``i < count``) of ``x[n, channel]`` dealt into the
    ``stride`` column phases of their zero-padded rows: padded column ``u * stride + b``
    of row ``i`` at ``buffer[at + i * dst_step + b * step + u]``, for the image's columns
    only (the padding is the caller's). ``source``: :func:`flat` (x). At stride 2 on
    vectors (:func:`deal_rows`); at other strides value by value; at stride 1 the rows
    copied on vectors (:func:`copy_row`). A stride of 1 passed as None is known as Numba
    compiles the caller, whose code then holds only the rows' copies (the blocked
    kernels); an integer stride takes every branch (:mod:`.fewtaps`, one kernel for every
    stride)."""


def _deal_phases_inline(source, x, n, channel, row, count, row_step, buffer, at, dst_step, step,
                        stride, pad_left):
    if stride == 1:
        for i in range(count):
            copy_row(source, x, n, channel, row + i * row_step, buffer,
                     at + i * dst_step + pad_left)
        return
    if stride == 2:
        deal_rows(source, x, n, channel, row, count, row_step, buffer, at, at + step, dst_step,
                  pad_left)
        return
    width = x.shape[3]
    for i in range(count):
        for b in range(stride):
            col = (b - pad_left) % stride  # the first image column of phase b
            dst = at + i * dst_step + b * step + (pad_left + col) // stride
            for m in range((width - col + stride - 1) // stride):
                buffer[dst + m] = x[n, channel, row + i * row_step, col + m * stride]


def _copy_rows_inline(source, x, n, channel, row, count, row_step, buffer, at, dst_step, step,
                      stride, pad_left):
    for i in range(count):
        copy_row(source, x, n, channel, row + i * row_step, buffer, at + i * dst_step + pad_left)


# (Numba's inlining, not LLVM's (inlined_options): a helper compiled with other flags
# than its callers' makes Numba compile what it calls again, for those flags; from here,
# deal_rows and copy_row, about 0.9 s of the demo's first step)
@overload(deal_phases, inline="always", jit_options=jit_options())
def _deal_phases(source, x, n, channel, row, count, row_step, buffer, at, dst_step, step, stride,
                 pad_left):
    if isinstance(stride, types.NoneType):
        return _copy_rows_inline
    return _deal_phases_inline


def weave_row(target, out, n, channel, row, planes, even, odd):
    """``out[n, channel, row, 2 * m] = planes[even + m]`` and ``out[n, channel, row, 2 * m
    + 1] = planes[odd + m]``: a row put back together from its two stride-2 column
    phases, the inverse of :func:`deal_rows` (``target``: :func:`flat` (out); ``planes``:
    1-D contiguous). On :mod:`.simd` vectors (two loads, two shuffles, two stores per
    ``2 * lanes`` values; a row of at least ``2 * lanes`` values ends in a pair that
    overlaps the one before, a shorter one is masked loads and stores) when ``out`` is
    C-contiguous; else value by value."""


def _weave_vectors(target, out, n, channel, row, planes, even, odd):
    width = out.shape[3]
    lanes = simd.lanes(planes)
    at = row_start(out, n, channel, row)
    if width < 2 * lanes:  # a short row: its phases' masked loads, woven, masked stores
        first = simd.load_first(planes, even, (width + 1) // 2)
        second = simd.load_first(planes, odd, width // 2)
        simd.store_first(target, at, simd.weave(first, second, False), min(width, lanes))
        if width > lanes:
            simd.store_first(target, at + lanes, simd.weave(first, second, True),
                             width - lanes)
        return
    m = 0
    while 2 * (m + lanes) <= width:
        first, second = simd.load(planes, even + m), simd.load(planes, odd + m)
        simd.store(target, at + 2 * m, simd.weave(first, second, False))
        simd.store(target, at + 2 * m + lanes, simd.weave(first, second, True))
        m += lanes
    if m > 0 and 2 * m < width - 1:
        # the last pair of vectors ends at the row's last pair of columns, over columns
        # the loop stored (a row of 28 left 12 of them to the values' loop)
        m = width // 2 - lanes
        first, second = simd.load(planes, even + m), simd.load(planes, odd + m)
        simd.store(target, at + 2 * m, simd.weave(first, second, False))
        simd.store(target, at + 2 * m + lanes, simd.weave(first, second, True))
        m = width // 2
    for col in range(2 * m, width):
        target[at + col] = planes[(odd if col % 2 else even) + col // 2]


def _weave_loop(target, out, n, channel, row, planes, even, odd):
    for col in range(out.shape[3]):
        out[n, channel, row, col] = planes[(odd if col % 2 else even) + col // 2]


@overload(weave_row, jit_options=inlined_options())
def _weave_row(target, out, n, channel, row, planes, even, odd):
    if simd.vectors_fit(target, planes):
        return _weave_vectors
    return _weave_loop
