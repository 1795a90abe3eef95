"""Pooling and unpooling on the GPU: one thread per output value, grid-stride.

These ops are memory-bound, so each kernel reads and writes every value once,
with the fastest-varying thread index walking the output width (coalesced
stores, neighbouring loads). Kernels see arrays flattened; ``p`` numbers the
``N * C`` planes.

- max_pool2d: each thread scans its window row by row with the CPU's rule (the
  first tap inside the input, then a tap replaces the best when larger or NaN),
  so values, ties and NaN indices match the CPU bit for bit.
- avg_pool2d: the sum of the window's taps inside the input over PyTorch's
  divisor; its backward is a gather: each input value sums ``grad / divisor``
  over the windows that contain it, found by inverting
  ``i * sh - ph <= h < i * sh - ph + kh``.
- repeat_unpool2d and its backward: a copy and a block sum, gathers both.
- max_unpool2d_backward: a gather through the indices.
- max_unpool2d: a scatter. To keep the CPU's "a repeated index keeps the later
  value" without a race, each output position first takes the atomic max of the
  (plane-local) positions that point at it, then every output gathers its value.
- max_pool2d_backward: a scatter-add through the indices with atomic adds (the
  indices alone do not say which windows overlap, so there is no gather). A
  position that is the maximum of one or two windows gets the same bits every
  run (``0 + a + b == 0 + b + a``); one that is the maximum of three or more
  windows may differ in the last bits between runs.

The kernels that read indices skip an index outside its plane and report the
flat position of the first one (an atomic min into a one-value device array,
read back by the host: the only synchronisation here); the public functions
turn that into a ValueError.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from ..dispatch import register
from ._jit import configure, device_array, fill, flat, jit, launch, scalar_type, to_host, unravel

#: "No bad index": larger than any flat position.
_NO_BAD = np.iinfo(np.int64).max


# --- pooling ---------------------------------------------------------------------------


@functools.cache
def _max_pool2d_forward(with_indices):
    @jit
    def kernel(x, out, indices, height, width, out_h, out_w, kh, kw, stride_h, stride_w,
               pad_h, pad_w, dilation_h, dilation_w):
        plane = height * width
        for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            p, i, j = unravel(e, out_h, out_w)
            first = p * plane
            best = x[first]  # replaced by the first tap inside the input
            where = -1
            for r in range(kh):
                h = i * stride_h - pad_h + r * dilation_h
                if 0 <= h < height:
                    for s in range(kw):
                        w = j * stride_w - pad_w + s * dilation_w
                        if 0 <= w < width:
                            value = x[first + h * width + w]
                            if where < 0 or value > best or value != value:
                                best = value
                                where = h * width + w
            out[e] = best
            if with_indices:
                indices[e] = where

    return kernel


@register("max_pool2d", "cuda", "direct")
def max_pool2d_direct(x, out, indices, kernel_size, stride, padding, dilation, ceil_mode):
    """Host side; ``indices`` is an int64 device array or None."""
    kernel = _max_pool2d_forward(indices is not None)
    launch(kernel, out.size)(flat(x), flat(out), flat(out if indices is None else indices),
                             *x.shape[2:], *out.shape[2:], *kernel_size, *stride, *padding,
                             *dilation)


@functools.cache
def _avg_pool2d_forward(dtype):
    value_type = scalar_type(dtype)

    @jit
    def kernel(x, out, height, width, out_h, out_w, kh, kw, stride_h, stride_w, pad_h, pad_w,
               count_include_pad, divisor_override):
        for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            p, i, j = unravel(e, out_h, out_w)
            first = p * height * width
            # the window clipped to the padded input, then to the input
            top = i * stride_h - pad_h
            left = j * stride_w - pad_w
            bottom = min(top + kh, height + pad_h)
            right = min(left + kw, width + pad_w)
            h0, h1 = max(top, 0), min(bottom, height)
            w0, w1 = max(left, 0), min(right, width)
            total = value_type(0)
            for h in range(h0, h1):
                for w in range(w0, w1):
                    total += x[first + h * width + w]
            if divisor_override != 0:
                divisor = divisor_override
            elif count_include_pad:
                divisor = (bottom - top) * (right - left)
            else:
                divisor = (h1 - h0) * (w1 - w0)
            out[e] = total / value_type(divisor)

    return kernel


@register("avg_pool2d", "cuda", "direct")
def avg_pool2d_direct(x, out, kernel_size, stride, padding, ceil_mode, count_include_pad,
                      divisor_override):
    """Host side; ``divisor_override`` is None or a non-zero int (0 means None in the kernel)."""
    kernel = _avg_pool2d_forward(x.dtype)
    launch(kernel, out.size)(flat(x), flat(out), *x.shape[2:], *out.shape[2:], *kernel_size,
                             *stride, *padding, count_include_pad, divisor_override or 0)


@functools.cache
def _avg_pool2d_backward(dtype):
    value_type = scalar_type(dtype)

    @jit
    def kernel(grad_out, grad_in, height, width, out_h, out_w, kh, kw, stride_h, stride_w,
               pad_h, pad_w, count_include_pad, divisor_override):
        for e in range(cuda.grid(1), grad_in.size, cuda.gridsize(1)):
            p, h, w = unravel(e, height, width)
            first = p * out_h * out_w
            # windows i with i*sh - ph <= h < i*sh - ph + kh (ceil by floor division)
            i_lo = max((h + pad_h - kh + stride_h) // stride_h, 0)
            i_hi = min((h + pad_h) // stride_h, out_h - 1)
            j_lo = max((w + pad_w - kw + stride_w) // stride_w, 0)
            j_hi = min((w + pad_w) // stride_w, out_w - 1)
            acc = value_type(0)
            for i in range(i_lo, i_hi + 1):
                top = i * stride_h - pad_h
                bottom = min(top + kh, height + pad_h)
                rows = bottom - top if count_include_pad else min(bottom, height) - max(top, 0)
                for j in range(j_lo, j_hi + 1):
                    left = j * stride_w - pad_w
                    right = min(left + kw, width + pad_w)
                    if divisor_override != 0:
                        divisor = divisor_override
                    elif count_include_pad:
                        divisor = rows * (right - left)
                    else:
                        divisor = rows * (min(right, width) - max(left, 0))
                    acc += grad_out[first + i * out_w + j] / value_type(divisor)
            grad_in[e] = acc

    return kernel


@register("avg_pool2d_backward", "cuda", "direct")
def avg_pool2d_backward_direct(grad_out, grad_in, kernel_size, stride, padding, ceil_mode,
                               count_include_pad, divisor_override):
    """Host side; every value of ``grad_in`` is written (a deterministic gather)."""
    kernel = _avg_pool2d_backward(grad_in.dtype)
    launch(kernel, grad_in.size)(flat(grad_out), flat(grad_in), *grad_in.shape[2:],
                                 *grad_out.shape[2:], *kernel_size, *stride, *padding,
                                 count_include_pad, divisor_override or 0)


# --- kernels that read indices -------------------------------------------------------------


def _bad_index_report():
    """A one-value device array holding "no bad index yet"."""
    report = device_array(1, np.int64)
    configure(fill, 1, 1)(report, _NO_BAD)
    return report


def _first_bad(report):
    """The flat position of the first bad index, or -1 (waits for the kernels)."""
    value = int(to_host(report)[0])
    return -1 if value == _NO_BAD else value


@jit
def _scatter_add(values, indices, out, values_plane, out_plane, report):
    """out[p].flat[indices[p, o]] += values[p, o] (atomic); out starts at 0."""
    for e in range(cuda.grid(1), indices.size, cuda.gridsize(1)):
        q = indices[e]
        if 0 <= q < out_plane:
            cuda.atomic.add(out, (e // values_plane) * out_plane + q, values[e])
        else:
            cuda.atomic.min(report, 0, e)


@register("max_pool2d_backward", "cuda", "direct")
def max_pool2d_backward_direct(grad_out, indices, grad_in):
    """Host side; returns the flat position of the first out-of-range index, or -1.
    Atomic adds: a position that is the maximum of three or more windows may differ in
    the last bits between runs."""
    report = _bad_index_report()
    launch(fill, grad_in.size)(flat(grad_in), grad_in.dtype.type(0))
    launch(_scatter_add, indices.size)(flat(grad_out), flat(indices), flat(grad_in),
                                       indices.shape[2] * indices.shape[3],
                                       grad_in.shape[2] * grad_in.shape[3], report)
    return _first_bad(report)


@jit
def _claim(indices, owner, values_plane, out_plane, report):
    """owner[p, q] = the last o with indices[p, o] == q (atomic max; -1 where none)."""
    for e in range(cuda.grid(1), indices.size, cuda.gridsize(1)):
        q = indices[e]
        if 0 <= q < out_plane:
            p = e // values_plane
            cuda.atomic.max(owner, p * out_plane + q, e - p * values_plane)
        else:
            cuda.atomic.min(report, 0, e)


@jit
def _gather_owned(values, owner, out, values_plane, out_plane):
    """out[p, q] = values[p, owner[p, q]], or 0 where no index points at q."""
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        o = owner[e]
        if o >= 0:
            out[e] = values[(e // out_plane) * values_plane + o]
        else:
            out[e] = 0


@register("max_unpool2d", "cuda", "direct")
def max_unpool2d_direct(x, indices, out):
    """Host side; returns the flat position of the first out-of-range index, or -1.
    Deterministic: of equal indices the later value stays, as on the CPU."""
    report = _bad_index_report()
    owner = device_array(out.size, np.int64)
    values_plane, out_plane = x.shape[2] * x.shape[3], out.shape[2] * out.shape[3]
    launch(fill, owner.size)(owner, np.int64(-1))
    launch(_claim, indices.size)(flat(indices), owner, values_plane, out_plane, report)
    launch(_gather_owned, out.size)(flat(x), owner, flat(out), values_plane, out_plane)
    return _first_bad(report)


@jit
def _gather_indexed(grad_out, indices, grad_in, in_plane, out_plane, report):
    """grad_in[p, o] = grad_out[p].flat[indices[p, o]] (0 for a bad index)."""
    for e in range(cuda.grid(1), indices.size, cuda.gridsize(1)):
        q = indices[e]
        if 0 <= q < out_plane:
            grad_in[e] = grad_out[(e // in_plane) * out_plane + q]
        else:
            grad_in[e] = 0
            cuda.atomic.min(report, 0, e)


@register("max_unpool2d_backward", "cuda", "direct")
def max_unpool2d_backward_direct(grad_out, indices, grad_in):
    """Host side; returns the flat position of the first out-of-range index, or -1."""
    report = _bad_index_report()
    launch(_gather_indexed, indices.size)(flat(grad_out), flat(indices), flat(grad_in),
                                          indices.shape[2] * indices.shape[3],
                                          grad_out.shape[2] * grad_out.shape[3], report)
    return _first_bad(report)


# --- repeat unpooling ----------------------------------------------------------------------


@jit
def _repeat_forward(x, out, height, width, scale_h, scale_w):
    """out[p, y, x] = x[p, y // sh, x // sw]."""
    out_h, out_w = height * scale_h, width * scale_w
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        p, row, col = unravel(e, out_h, out_w)
        out[e] = x[(p * height + row // scale_h) * width + col // scale_w]


@register("repeat_unpool2d", "cuda", "direct")
def repeat_unpool2d_direct(x, out, scale):
    launch(_repeat_forward, out.size)(flat(x), flat(out), *x.shape[2:], *scale)


@functools.cache
def _repeat_backward(dtype):
    value_type = scalar_type(dtype)

    @jit
    def kernel(grad_out, grad_in, width, scale_h, scale_w):
        out_w = width * scale_w
        for e in range(cuda.grid(1), grad_in.size, cuda.gridsize(1)):
            row, j = e // width, e % width  # row = p * H + i
            # the block's top-left value: output row row * sh, column j * sw
            first = row * scale_h * out_w + j * scale_w
            total = value_type(0)
            for a in range(scale_h):
                for b in range(scale_w):
                    total += grad_out[first + a * out_w + b]
            grad_in[e] = total

    return kernel


@register("repeat_unpool2d_backward", "cuda", "direct")
def repeat_unpool2d_backward_direct(grad_out, grad_in, scale):
    launch(_repeat_backward(grad_in.dtype), grad_in.size)(flat(grad_out), flat(grad_in),
                                                          grad_in.shape[3], *scale)
