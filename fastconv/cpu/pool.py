"""Pooling and unpooling: JIT loops over the windows, one task per ``(n, c)`` plane.

Kernels see the batch as a stack of planes ``(N * C, H, W)``. Pooling windows
are separable: the rows of a window that lie inside the input
(:func:`.windows.valid_range` per tap) are reduced into one padded row
buffer, then kw shifted copies of that buffer are reduced, so every inner
loop is a unit-stride loop over a row in L1 and the input is read once.
Each task writes only its own plane, so every parallel loop is race-free by
construction, the scatter-adds of overlapping windows in the backward
passes included.

Index arrays hold flat positions ``h * W + w`` within a plane, as in
PyTorch. The kernels that read them check each index and report the first
bad one per plane instead of writing out of bounds; the public functions
turn that report into a ValueError.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ..dispatch import register
from . import threads
from ._jit import kernel
from .windows import valid_range


@kernel()
def _tap_ranges(kernel_size, stride, pad, dilation, length, out_length):
    """``lo[t], hi[t]``: the outputs whose tap ``t`` reads inside the input."""
    lo = np.empty(kernel_size, np.int64)
    hi = np.empty(kernel_size, np.int64)
    for t in range(kernel_size):
        lo[t], hi[t] = valid_range(t * dilation - pad, stride, length, out_length)
    return lo, hi


@kernel()
def _window_sizes(out_length, length, kernel_size, stride, pad, count_include_pad, dtype):
    """Per output, PyTorch's avg-pool divisor along one axis: the window clipped to the
    padded input (``count_include_pad``) or to the input itself. In the data's dtype
    (small ints are exact), so that the division is one of that dtype, as in PyTorch."""
    sizes = np.empty(out_length, dtype)
    for o in range(out_length):
        start = o * stride - pad
        end = min(start + kernel_size, length + pad)
        if not count_include_pad:
            start = max(start, 0)
            end = min(end, length)
        sizes[o] = end - start
    return sizes


@kernel()
def _divisors(height, width, out_h, out_w, kh, kw, stride_h, stride_w, pad_h, pad_w,
              count_include_pad, divisor_override, dtype):
    """Row and column factors of the avg-pool divisor."""
    if divisor_override != 0:
        return np.full(out_h, divisor_override, dtype), np.ones(out_w, dtype)
    return (_window_sizes(out_h, height, kh, stride_h, pad_h, count_include_pad, dtype),
            _window_sizes(out_w, width, kw, stride_w, pad_w, count_include_pad, dtype))


# --- row primitives: unit-stride loops that vectorise -----------------------------------
#
# Each ``_*_of(dst, a, b)`` has an in-place twin ``_*_into(dst, b)``: with dst and a
# the same array LLVM's overlap check fails and the loop runs scalar.


@kernel()
def _copy(dst, src, count):
    for q in range(count):
        dst[q] = src[q]


@kernel()
def _max_of(dst, a, b, count):
    """dst = max(a, b) elementwise; NaN wins, as in PyTorch's max-pool."""
    for q in range(count):
        u = a[q]
        v = b[q]
        dst[q] = v if (v > u) | (v != v) else u


@kernel()
def _max_into(dst, b, count):
    for q in range(count):
        u = dst[q]
        v = b[q]
        dst[q] = v if (v > u) | (v != v) else u


@kernel()
def _wins(v, k, b, kb):
    """Whether tap ``(v, k)`` (value, flat position) beats ``(b, kb)`` in PyTorch's
    row-major scan with ``take if v > best or isnan(v)``: a NaN beats any number and
    an earlier NaN; a larger number wins; of equal numbers the earlier position."""
    v_nan = v != v
    b_nan = b != b
    return (v_nan & (~b_nan | (k > kb))) | (~v_nan & ~b_nan & ((v > b) | ((v == b) & (k < kb))))


@kernel()
def _argmax_of(dst, dst_index, a, a_index, b, b_index, count):
    for q in range(count):
        u = a[q]
        ku = a_index[q]
        v = b[q]
        kv = b_index[q]
        take = _wins(v, kv, u, ku)
        dst[q] = v if take else u
        dst_index[q] = kv if take else ku


@kernel()
def _argmax_into(dst, dst_index, b, b_index, count):
    for q in range(count):
        u = dst[q]
        ku = dst_index[q]
        v = b[q]
        kv = b_index[q]
        take = _wins(v, kv, u, ku)
        dst[q] = v if take else u
        dst_index[q] = kv if take else ku


@kernel()
def _sum_of(dst, a, b, count):
    for q in range(count):
        dst[q] = a[q] + b[q]


@kernel()
def _add_into(dst, b, count):
    for q in range(count):
        dst[q] += b[q]


@kernel()
def _every(dst, src, count, stride):
    """dst[j] = src[j * stride]; the common strides get a constant, so they vectorise."""
    if stride == 1:
        for j in range(count):
            dst[j] = src[j]
    elif stride == 2:
        for j in range(count):
            dst[j] = src[2 * j]
    else:
        for j in range(count):
            dst[j] = src[j * stride]


@kernel()
def _every_divided(dst, src, count, stride, row_divisor, col_divisors):
    """dst[j] = src[j * stride] / (row_divisor * col_divisors[j])."""
    if stride == 1:
        for j in range(count):
            dst[j] = src[j] / (row_divisor * col_divisors[j])
    elif stride == 2:
        for j in range(count):
            dst[j] = src[2 * j] / (row_divisor * col_divisors[j])
    else:
        for j in range(count):
            dst[j] = src[j * stride] / (row_divisor * col_divisors[j])


@kernel()
def _padded_row_length(out_w, stride_w, kw, dilation_w, pad_w, width):
    """Length of a row buffer that holds the input row at offset ``pad_w`` and every tap
    of every window (a ceil_mode window may run past the right padding)."""
    return max((out_w - 1) * stride_w + dilation_w * (kw - 1) + 1, pad_w + width)


# --- the horizontal pass: one padded row of vertical results -> one output row ------------
#
# Windows of 2 or 3 taps at stride 2 (the common pooling layers) get one loop with
# constant offsets (``_*_pairs``, ``_*_triples``); any other window reduces kw shifted
# copies of the row at every start, then keeps every stride-th start. The kernels
# choose in their own body: LLVM inlines these one-loop helpers, not a helper that
# holds all the variants, and a call per row costs as much as the row.


@kernel()
def _horizontal_kind(kw, stride, dilation):
    """2 or 3 for a window that the pair/triple loops handle, else 0 (generic)."""
    return kw if dilation == 1 and stride == 2 and (kw == 2 or kw == 3) else 0


@kernel()
def _max_pairs(dst, column, count):
    for j in range(count):
        a = column[2 * j]
        b = column[2 * j + 1]
        dst[j] = b if (b > a) | (b != b) else a


@kernel()
def _max_triples(dst, column, count):
    for j in range(count):
        a = column[2 * j]
        b = column[2 * j + 1]
        c = column[2 * j + 2]
        m = b if (b > a) | (b != b) else a
        dst[j] = c if (c > m) | (c != c) else m


@kernel()
def _argmax_pairs(dst, dst_at, column, column_at, count):
    for j in range(count):
        a = column[2 * j]
        ka = column_at[2 * j]
        b = column[2 * j + 1]
        kb = column_at[2 * j + 1]
        take = _wins(b, kb, a, ka)
        dst[j] = b if take else a
        dst_at[j] = kb if take else ka


@kernel()
def _argmax_triples(dst, dst_at, column, column_at, count):
    for j in range(count):
        a = column[2 * j]
        ka = column_at[2 * j]
        b = column[2 * j + 1]
        kb = column_at[2 * j + 1]
        c = column[2 * j + 2]
        kc = column_at[2 * j + 2]
        take = _wins(b, kb, a, ka)
        m = b if take else a
        km = kb if take else ka
        take = _wins(c, kc, m, km)
        dst[j] = c if take else m
        dst_at[j] = kc if take else km


@kernel()
def _mean_pairs(dst, column, count, row_divisor, col_divisors):
    for j in range(count):
        dst[j] = (column[2 * j] + column[2 * j + 1]) / (row_divisor * col_divisors[j])


@kernel()
def _mean_triples(dst, column, count, row_divisor, col_divisors):
    for j in range(count):
        total = column[2 * j] + column[2 * j + 1] + column[2 * j + 2]
        dst[j] = total / (row_divisor * col_divisors[j])


# --- pooling forward ------------------------------------------------------------------
#
# Separable windows: for output row i, reduce the window's input rows into a padded
# row buffer (``column``, the vertical pass: unit-stride loops over input rows, which
# read the input once), then reduce that row's windows (the horizontal pass, above).
# Every buffer is one row and stays in L1.


@kernel(parallel=True)
def _max_pool2d_forward_direct(x, out, kh, kw, stride_h, stride_w, pad_h, pad_w,
                               dilation_h, dilation_w, part, parts):
    """out[p, i, j] = max over taps (r, s) of x[p, i*sh + r*dh - ph, j*sw + s*dw - pw] inside
    the input; NaN if the window holds one."""
    planes, height, width = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    row_lo, row_hi = _tap_ranges(kh, stride_h, pad_h, dilation_h, height, out_h)
    span = (out_w - 1) * stride_w + 1
    length = _padded_row_length(out_w, stride_w, kw, dilation_w, pad_w, width)
    kind = _horizontal_kind(kw, stride_w, dilation_w)
    for p in prange(part * planes // parts, (part + 1) * planes // parts):
        column = np.full(length, -np.inf, x.dtype)  # the padding stays -inf
        inner = column[pad_w : pad_w + width]
        window_max = np.empty(span, x.dtype)
        for i in range(out_h):
            seen = 0
            for r in range(kh):
                if row_lo[r] <= i < row_hi[r]:
                    src = x[p, i * stride_h + r * dilation_h - pad_h]
                    if seen == 0:
                        first = src
                    elif seen == 1:
                        _max_of(inner, first, src, width)
                    else:
                        _max_into(inner, src, width)
                    seen += 1
            if seen == 1:
                _copy(inner, first, width)
            if kind == 2:
                _max_pairs(out[p, i], column, out_w)
            elif kind == 3:
                _max_triples(out[p, i], column, out_w)
            elif kw == 1:
                _every(out[p, i], column, out_w, stride_w)
            else:
                _max_of(window_max, column, column[dilation_w:], span)
                for s in range(2, kw):
                    _max_into(window_max, column[s * dilation_w :], span)
                _every(out[p, i], window_max, out_w, stride_w)


@kernel(parallel=True)
def _max_pool2d_indices_forward_direct(x, out, indices, kh, kw, stride_h, stride_w, pad_h,
                                       pad_w, dilation_h, dilation_w, nowhere, part, parts):
    """The forward pass above, carrying each maximum's flat position ``h * W + w``; see
    :func:`_wins`. The row buffers hold positions in the integer type of ``nowhere``,
    its largest value, which the padding carries so that it never wins a tie."""
    planes, height, width = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    row_lo, row_hi = _tap_ranges(kh, stride_h, pad_h, dilation_h, height, out_h)
    span = (out_w - 1) * stride_w + 1
    length = _padded_row_length(out_w, stride_w, kw, dilation_w, pad_w, width)
    kind = _horizontal_kind(kw, stride_w, dilation_w)
    for p in prange(part * planes // parts, (part + 1) * planes // parts):
        column = np.full(length, -np.inf, x.dtype)
        column_at = np.full(length, nowhere)
        inner = column[pad_w : pad_w + width]
        inner_at = column_at[pad_w : pad_w + width]
        window_max = np.empty(span, x.dtype)
        window_at = np.empty(span, column_at.dtype)
        for i in range(out_h):
            seen = 0
            for r in range(kh):
                if row_lo[r] <= i < row_hi[r]:
                    row = i * stride_h + r * dilation_h - pad_h
                    src = x[p, row]
                    base = row * width
                    if seen:  # a later row wins only if larger or NaN
                        for q in range(width):
                            v = src[q]
                            u = inner[q]
                            k = inner_at[q]
                            take = (v > u) | (v != v)
                            inner[q] = v if take else u
                            inner_at[q] = base + q if take else k
                    else:
                        for q in range(width):
                            inner[q] = src[q]
                            inner_at[q] = base + q
                    seen += 1
            if kind == 2:
                _argmax_pairs(out[p, i], indices[p, i], column, column_at, out_w)
            elif kind == 3:
                _argmax_triples(out[p, i], indices[p, i], column, column_at, out_w)
            elif kw == 1:
                _every(out[p, i], column, out_w, stride_w)
                _every(indices[p, i], column_at, out_w, stride_w)
            else:
                _argmax_of(window_max, window_at, column, column_at, column[dilation_w:],
                           column_at[dilation_w:], span)
                for s in range(2, kw):
                    _argmax_into(window_max, window_at, column[s * dilation_w :],
                                 column_at[s * dilation_w :], span)
                _every(out[p, i], window_max, out_w, stride_w)
                _every(indices[p, i], window_at, out_w, stride_w)


@kernel()
def _planes_of(array):
    """A C-contiguous ``(N, C, H, W)`` array as ``(N * C, H, W)``, inside a kernel."""
    return array.reshape(array.shape[0] * array.shape[1], array.shape[2], array.shape[3])


@kernel(parallel=True)
def _max_pool2d_2x2_forward(x4, out4, part, parts):
    """The most common max pooling, 2x2 / stride 2 / no padding with every window inside
    the input: one pass, no row buffers (the general kernel allocates two per plane,
    which costs more than pooling a small plane). NaN wins, as in the general kernel.
    Takes the C-contiguous 4-D arrays (their planes seen here: no views to make on the
    host)."""
    x, out = _planes_of(x4), _planes_of(out4)
    planes = x.shape[0]
    out_h, out_w = out.shape[1], out.shape[2]
    for p in prange(part * planes // parts, (part + 1) * planes // parts):
        for i in range(out_h):
            top = x[p, 2 * i]
            bottom = x[p, 2 * i + 1]
            dst = out[p, i]
            for j in range(out_w):
                # the general kernel's order (rows, then columns) with its NaN-wins
                # select, branch-free so that it vectorises
                a, b = top[2 * j], bottom[2 * j]
                left = b if (b > a) | (b != b) else a
                a, b = top[2 * j + 1], bottom[2 * j + 1]
                right = b if (b > a) | (b != b) else a
                dst[j] = right if (right > left) | (right != right) else left


@kernel(parallel=True)
def _max_pool2d_2x2_indices_forward(x4, out4, indices4, part, parts):
    """:func:`_max_pool2d_2x2_forward` carrying each maximum's flat position ``h * W +
    w``: the four taps in PyTorch's row-major scan, ``take if v > best or isnan(v)``
    (no row buffers: the general kernel allocates four per plane). 4-D arrays."""
    x, out, indices = _planes_of(x4), _planes_of(out4), _planes_of(indices4)
    planes, width = x.shape[0], x.shape[2]
    out_h, out_w = out.shape[1], out.shape[2]
    for p in prange(part * planes // parts, (part + 1) * planes // parts):
        for i in range(out_h):
            top = x[p, 2 * i]
            bottom = x[p, 2 * i + 1]
            dst = out[p, i]
            at = indices[p, i]
            first = 2 * i * width
            for j in range(out_w):
                # branch-free selects, so that the loop vectorises
                best, k = top[2 * j], first + 2 * j
                v = top[2 * j + 1]
                take = (v > best) | (v != v)
                best = v if take else best
                k = first + 2 * j + 1 if take else k
                v = bottom[2 * j]
                take = (v > best) | (v != v)
                best = v if take else best
                k = first + width + 2 * j if take else k
                v = bottom[2 * j + 1]
                take = (v > best) | (v != v)
                best = v if take else best
                k = first + width + 2 * j + 1 if take else k
                dst[j] = best
                at[j] = k


def _is_2x2(x_shape, out_shape, kernel_size, stride, padding, dilation) -> bool:
    """Whether the pooling is 2x2 / stride 2 / no padding with every window inside."""
    return (kernel_size == (2, 2) and stride == (2, 2) and padding == (0, 0)
            and dilation == (1, 1) and 2 * out_shape[2] <= x_shape[2]
            and 2 * out_shape[3] <= x_shape[3])


@register("max_pool2d", "cpu", "direct")
def max_pool2d_direct(x, out, indices, kernel_size, stride, padding, dilation, ceil_mode):
    """Host side; ``x``, ``out`` and ``indices`` (or None) are C-contiguous 4-D arrays
    (``ceil_mode`` is in ``out``'s shape already)."""
    _max_pool2d_runner(x.shape, out.shape, indices is not None, kernel_size, stride, padding,
                       dilation)(x, out, indices)


def _max_pool2d_runner(x_shape, out_shape, with_indices: bool, kernel_size, stride, padding,
                       dilation):
    """``run(x, out, indices)`` of :func:`max_pool2d_direct` for one problem."""
    size, x3, out3 = math.prod(x_shape), _planes(x_shape), _planes(out_shape)
    if _is_2x2(x_shape, out_shape, kernel_size, stride, padding, dilation):
        if with_indices:
            return _bound(_max_pool2d_2x2_indices_forward, size, None)
        return _without_indices(_bound(_max_pool2d_2x2_forward, size, None))
    window = (*kernel_size, *stride, *padding, *dilation)
    if not with_indices:
        return _without_indices(_bound(_max_pool2d_forward_direct, size, (x3, out3), *window))
    # 32-bit positions vectorise alongside float32 values; a plane of 2**31 values needs 64
    small = x_shape[2] * x_shape[3] < np.iinfo(np.int32).max
    nowhere = np.int32(np.iinfo(np.int32).max) if small else np.int64(np.iinfo(np.int64).max)
    return _bound(_max_pool2d_indices_forward_direct, size, (x3, out3, out3), *window, nowhere)


def _without_indices(run):
    def run_without(x, out, _indices):
        run(x, out)

    return run_without


max_pool2d_direct.prepare = (  # type: ignore[attr-defined]
    lambda arrays, params: _max_pool2d_runner(arrays[0][0], arrays[1][0], arrays[2] is not None,
                                              *params[:4]))


@kernel(parallel=True)
def _avg_pool2d_forward_direct(x, out, kh, kw, stride_h, stride_w, pad_h, pad_w,
                               count_include_pad, divisor_override, part, parts):
    """out[p, i, j] = sum of the window's taps inside the input / divisor[i, j], where the
    divisor is ``divisor_override`` if non-zero, else PyTorch's window size (separable:
    rows x columns, see :func:`_window_sizes`)."""
    planes, height, width = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    row_lo, row_hi = _tap_ranges(kh, stride_h, pad_h, np.int64(1), height, out_h)
    row_div, col_div = _divisors(height, width, out_h, out_w, kh, kw, stride_h, stride_w,
                                 pad_h, pad_w, count_include_pad, divisor_override, x.dtype)
    span = (out_w - 1) * stride_w + 1
    length = _padded_row_length(out_w, stride_w, kw, np.int64(1), pad_w, width)
    kind = _horizontal_kind(kw, stride_w, np.int64(1))
    for p in prange(part * planes // parts, (part + 1) * planes // parts):
        column = np.zeros(length, x.dtype)  # the padding stays 0
        inner = column[pad_w : pad_w + width]
        window_sum = np.empty(span, x.dtype)
        for i in range(out_h):
            seen = 0
            for r in range(kh):
                if row_lo[r] <= i < row_hi[r]:
                    src = x[p, i * stride_h + r - pad_h]
                    if seen == 0:
                        first = src
                    elif seen == 1:
                        _sum_of(inner, first, src, width)
                    else:
                        _add_into(inner, src, width)
                    seen += 1
            if seen == 1:
                _copy(inner, first, width)
            if kind == 2:
                _mean_pairs(out[p, i], column, out_w, row_div[i], col_div)
            elif kind == 3:
                _mean_triples(out[p, i], column, out_w, row_div[i], col_div)
            else:
                if kw == 1:
                    _copy(window_sum, column, span)
                else:
                    _sum_of(window_sum, column, column[1:], span)
                    for s in range(2, kw):
                        _add_into(window_sum, column[s:], span)
                _every_divided(out[p, i], window_sum, out_w, stride_w, row_div[i], col_div)


@kernel(parallel=True)
def _avg_pool2d_2x2_forward(x4, out4, divisor, part, parts):
    """The most common layer, 2x2 / stride 2 / no padding with every window inside
    the input: one pass, each output from its two input rows with constant offsets
    (LLVM vectorises the interleaved loads), no intermediate row buffer. 4-D arrays."""
    x, out = _planes_of(x4), _planes_of(out4)
    planes = x.shape[0]
    out_h, out_w = out.shape[1], out.shape[2]
    for p in prange(part * planes // parts, (part + 1) * planes // parts):
        for i in range(out_h):
            top = x[p, 2 * i]
            bottom = x[p, 2 * i + 1]
            dst = out[p, i]
            for j in range(out_w):
                dst[j] = (top[2 * j] + top[2 * j + 1] + bottom[2 * j] + bottom[2 * j + 1]) / divisor


@register("avg_pool2d", "cpu", "direct")
def avg_pool2d_direct(x, out, kernel_size, stride, padding, ceil_mode, count_include_pad,
                      divisor_override):
    """Host side; ``divisor_override`` is None or a non-zero int (0 means None in the kernel)."""
    _avg_pool2d_runner(x.shape, out.shape, x.dtype, kernel_size, stride, padding, ceil_mode,
                       count_include_pad, divisor_override)(x, out)


def _avg_pool2d_runner(x_shape, out_shape, dtype, kernel_size, stride, padding, _ceil_mode,
                       count_include_pad, divisor_override):
    """``run(x, out)`` of :func:`avg_pool2d_direct` for one problem."""
    size, x3, out3 = math.prod(x_shape), _planes(x_shape), _planes(out_shape)
    if (kernel_size == (2, 2) and stride == (2, 2) and padding == (0, 0)
            and 2 * out_shape[2] <= x_shape[2] and 2 * out_shape[3] <= x_shape[3]):
        divisor = np.dtype(dtype).type(divisor_override or 4)
        return _bound(_avg_pool2d_2x2_forward, size, None, divisor)
    return _bound(_avg_pool2d_forward_direct, size, (x3, out3), *kernel_size, *stride, *padding,
                  count_include_pad, divisor_override or 0)


avg_pool2d_direct.prepare = (  # type: ignore[attr-defined]
    lambda arrays, params: _avg_pool2d_runner(arrays[0][0], arrays[1][0], arrays[0][1],
                                              *params))


@kernel(parallel=True)
def _avg_pool2d_backward_direct(grad_out, grad_in, kh, kw, stride_h, stride_w, pad_h, pad_w,
                                count_include_pad, divisor_override, part, parts):
    """grad_in[p] = sum over windows (i, j) of grad_out[p, i, j] / divisor[i, j] sent to every
    tap of the window inside the input.

    The forward pass transposed, step by step: spread each output row's shares to the
    window starts (the transpose of keeping every stride-th start), add them to the kw
    taps of each window in a padded row (the horizontal sum), and add the input part of
    that row to each of the window's input rows (the vertical sum)."""
    planes, height, width = grad_in.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    row_lo, row_hi = _tap_ranges(kh, stride_h, pad_h, np.int64(1), height, out_h)
    row_div, col_div = _divisors(height, width, out_h, out_w, kh, kw, stride_h, stride_w,
                                 pad_h, pad_w, count_include_pad, divisor_override,
                                 grad_in.dtype)
    span = (out_w - 1) * stride_w + 1
    length = _padded_row_length(out_w, stride_w, kw, np.int64(1), pad_w, width)
    for p in prange(part * planes // parts, (part + 1) * planes // parts):
        plane = grad_in[p]
        for h in range(height):
            for w in range(width):
                plane[h, w] = 0
        starts = np.zeros(span, grad_in.dtype)  # positions between the strided starts stay 0
        column = np.empty(length, grad_in.dtype)
        inner = column[pad_w : pad_w + width]
        for i in range(out_h):
            dy = grad_out[p, i]
            for j in range(out_w):
                starts[j * stride_w] = dy[j] / (row_div[i] * col_div[j])
            _copy(column, starts, span)
            for q in range(span, length):
                column[q] = 0
            for s in range(1, kw):
                _add_into(column[s:], starts, span)
            for r in range(kh):
                if row_lo[r] <= i < row_hi[r]:
                    _add_into(plane[i * stride_h + r - pad_h], inner, width)


@register("avg_pool2d_backward", "cpu", "direct")
def avg_pool2d_backward_direct(grad_out, grad_in, kernel_size, stride, padding, ceil_mode,
                               count_include_pad, divisor_override):
    """Host side; ``grad_in`` is overwritten."""
    _avg_pool2d_backward_runner(grad_out.shape, grad_in.shape, kernel_size, stride, padding,
                                ceil_mode, count_include_pad, divisor_override)(grad_out, grad_in)


def _avg_pool2d_backward_runner(grad_out_shape, grad_in_shape, kernel_size, stride, padding,
                                _ceil_mode, count_include_pad, divisor_override):
    return _bound(_avg_pool2d_backward_direct, math.prod(grad_in_shape),
                  (_planes(grad_out_shape), _planes(grad_in_shape)), *kernel_size, *stride,
                  *padding, count_include_pad, divisor_override or 0)


avg_pool2d_backward_direct.prepare = (  # type: ignore[attr-defined]
    lambda arrays, params: _avg_pool2d_backward_runner(arrays[0][0], arrays[1][0], *params))


@kernel()
def _first_bad(first_bad, per_plane):
    """The flat position in the index array of the first out-of-range index (the first
    plane's ``first_bad[p] >= 0``, ``per_plane`` indices a plane), or -1."""
    for p in range(first_bad.shape[0]):
        if first_bad[p] >= 0:
            return p * per_plane + first_bad[p]
    return -1


@kernel(parallel=True)
def _scatter_direct(values, indices, out, accumulate, part, parts):
    """out[p] = 0, then out[p, indices[p, k]] += values[p, k] (``accumulate``: max-pool's
    gradient, where a position that is the maximum of overlapping windows gets their sum)
    or = values[p, k] in order of k (unpooling: a repeated index keeps the value of the
    last k, fastconv's rule; the CUDA kernel keeps the same one). An index outside the
    plane is skipped; returns the flat position of the first such index in ``indices``,
    or -1 (found here, not by numpy afterwards: in a training step, where numpy's
    reduction code is not in the caches, a reduction over a few hundred values took
    5-14 us)."""
    planes, length = out.shape
    first_bad = np.full(planes, -1, np.int64)  # -1 too in the other parts' planes
    for p in prange(part * planes // parts, (part + 1) * planes // parts):
        plane = out[p]
        for q in range(length):
            plane[q] = 0
        source = values[p]
        where = indices[p]
        bad = -1
        for k in range(where.shape[0]):
            q = where[k]
            if 0 <= q < length:
                plane[q] = plane[q] + source[k] if accumulate else source[k]
            elif bad < 0:
                bad = k
        first_bad[p] = bad
    return _first_bad(first_bad, indices.shape[1])


@kernel(parallel=True)
def _max_unpool2d_backward_direct(grad_out, indices, grad_in, part, parts):
    """grad_in[p, k] = grad_out[p, indices[p, k]]: a gather, the transpose of the unpooling
    scatter. Returns the first out-of-range index as :func:`_scatter_direct` does (its
    value is 0)."""
    planes, length = grad_out.shape
    first_bad = np.full(planes, -1, np.int64)  # -1 too in the other parts' planes
    for p in prange(part * planes // parts, (part + 1) * planes // parts):
        dy = grad_out[p]
        where = indices[p]
        dx = grad_in[p]
        bad = -1
        for k in range(where.shape[0]):
            q = where[k]
            if 0 <= q < length:
                dx[k] = dy[q]
            else:
                dx[k] = 0
                if bad < 0:
                    bad = k
        first_bad[p] = bad
    return _first_bad(first_bad, indices.shape[1])


@register("max_pool2d_backward", "cpu", "direct")
def max_pool2d_backward_direct(grad_out, indices, grad_in):
    """Host side; returns the flat position of the first out-of-range index, or -1."""
    return _scatter_runner(grad_out.shape, grad_in.shape, True)(grad_out, indices, grad_in)


@register("max_unpool2d", "cpu", "direct")
def max_unpool2d_direct(x, indices, out):
    """Host side; returns the flat position of the first out-of-range index, or -1."""
    return _scatter_runner(x.shape, out.shape, False)(x, indices, out)


def _scatter_runner(values_shape, out_shape, accumulate: bool):
    """``run(values, indices, out)`` of :func:`_scatter_direct` for one problem."""
    flat = _flat(values_shape)
    return _bound(_scatter_direct, math.prod(out_shape), (flat, flat, _flat(out_shape)),
                  accumulate, first_bad=True)


max_pool2d_backward_direct.prepare = (  # type: ignore[attr-defined]
    lambda arrays, params: _scatter_runner(arrays[0][0], arrays[2][0], True))
max_unpool2d_direct.prepare = (  # type: ignore[attr-defined]
    lambda arrays, params: _scatter_runner(arrays[0][0], arrays[2][0], False))


@register("max_unpool2d_backward", "cpu", "direct")
def max_unpool2d_backward_direct(grad_out, indices, grad_in):
    """Host side; returns the flat position of the first out-of-range index, or -1."""
    return _max_unpool2d_backward_runner(grad_out.shape, indices.shape)(grad_out, indices,
                                                                       grad_in)


def _max_unpool2d_backward_runner(grad_out_shape, indices_shape):
    flat = _flat(indices_shape)
    return _bound(_max_unpool2d_backward_direct, math.prod(grad_out_shape),
                  (_flat(grad_out_shape), flat, flat), first_bad=True)


max_unpool2d_backward_direct.prepare = (  # type: ignore[attr-defined]
    lambda arrays, params: _max_unpool2d_backward_runner(arrays[0][0], arrays[1][0]))


@kernel(parallel=True)
def _repeat_unpool2d_forward_direct(x, out, scale_h, scale_w, part, parts):
    """out[p, i*sh + a, j*sw + b] = x[p, i, j]: each value fills a sh x sw block."""
    planes, height, width = x.shape
    out_w = out.shape[2]
    for p in prange(part * planes // parts, (part + 1) * planes // parts):
        for i in range(height):
            first = out[p, i * scale_h]
            values = x[p, i]
            for b in range(scale_w):
                dst = first[b:]
                for j in range(width):
                    dst[j * scale_w] = values[j]
            for a in range(1, scale_h):
                copy = out[p, i * scale_h + a]
                for q in range(out_w):
                    copy[q] = first[q]


@kernel(parallel=True)
def _repeat_unpool2d_backward_direct(grad_out, grad_in, scale_h, scale_w, part, parts):
    """grad_in[p, i, j] = sum of grad_out over the block it was copied to."""
    planes, height, width = grad_in.shape
    for p in prange(part * planes // parts, (part + 1) * planes // parts):
        for i in range(height):
            total = grad_in[p, i]
            for j in range(width):
                total[j] = 0
            for a in range(scale_h):
                row = grad_out[p, i * scale_h + a]
                for b in range(scale_w):
                    src = row[b:]
                    for j in range(width):
                        total[j] += src[j * scale_w]


@register("repeat_unpool2d", "cpu", "direct")
def repeat_unpool2d_direct(x, out, scale):
    _bound(_repeat_unpool2d_forward_direct, out.size, (_planes(x.shape), _planes(out.shape)),
           *scale)(x, out)


@register("repeat_unpool2d_backward", "cpu", "direct")
def repeat_unpool2d_backward_direct(grad_out, grad_in, scale):
    _bound(_repeat_unpool2d_backward_direct, grad_out.size,
           (_planes(grad_out.shape), _planes(grad_in.shape)), *scale)(grad_out, grad_in)


#: Largest array (elements) a pooling kernel runs on the calling thread: below it,
#: waking the pool costs more than the loops (max_pool2d 2x2 on (1, 4, 8, 8): 1.9 us
#: parallel, 0.3 us serial; 16384 float32 values take a few microseconds to pool; on
#: fastconv's worker threads, max_pool2d 3x3 stride 2 padding 1 on a Zen 2 VM: 4096
#: values 19 us on one thread, 23 us on two; 16384: 52 against 41 us).
SERIAL_MAX_ELEMENTS = 1 << 14


def parts(size: int) -> int:
    """How many parts :func:`.threads.launch` splits a pooling call whose largest array
    has ``size`` values into: one for a small call (waking the workers costs more than
    the loops), else one per Numba thread."""
    return 1 if size <= SERIAL_MAX_ELEMENTS else threads.count()


def _bound(kernel, size: int, views: tuple | None, *scalars, first_bad: bool = False):
    """``run(*arrays)``: ``kernel`` in :func:`parts` (``size``) parts (:func:`.threads.launch`)
    on the C-contiguous arrays seen with the shapes ``views`` (None: as they are), then
    ``scalars``. Returns None, or with ``first_bad``, the first part's flat position of
    an index out of range that found one, or -1 (see :func:`_scatter_direct`)."""
    n_parts = parts(size)
    if n_parts == 1:  # threads.launch's first case, without its call
        call, scalars = kernel, (*scalars, 0, 1)
    elif first_bad:
        def call(*args):
            return next((at for at in threads.launch(kernel, n_parts, *args) if at >= 0), -1)
    else:
        def call(*args):
            threads.launch(kernel, n_parts, *args)
    if views is None:  # a kernel that takes the 4-D arrays as they are
        def run(*arrays):
            return call(*arrays, *scalars)

        return run
    if len(views) == 2:
        first, second = views

        def run2(a, b):
            return call(a.reshape(first), b.reshape(second), *scalars)

        return run2
    first, second, third = views

    def run3(a, b, c):
        return call(a.reshape(first), b.reshape(second), c.reshape(third), *scalars)

    return run3


def _planes(shape):
    """The shape ``(N * C, H, W)`` of an ``(N, C, H, W)`` array's planes."""
    return (shape[0] * shape[1], shape[2], shape[3])


def _flat(shape):
    """The shape ``(N * C, H * W)`` of an ``(N, C, H, W)`` array's planes, each flat."""
    return (shape[0] * shape[1], shape[2] * shape[3])
