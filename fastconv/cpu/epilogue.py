"""The store of a kernel's sums into its output: bias added, the activation's floor
applied (``max(floor, sum + bias)``, see :func:`fastconv.activations.floor`), a row
at a time, or a run of rows where the sums lie on the output's own row pitch (a run
per filter; see benchmarks/RESULTS.md, "Stores of whole planes").

Every conv2d kernel that sums into scratch ends in this loop, so it is written once
(:func:`store_row`). On contiguous rows it runs on :mod:`.simd` vectors: a row shorter
than a vector as one masked load and store (a row of 8 outputs is one masked vector,
where a plain loop costs a scalar iteration per value), a longer one ending in a
vector that overlaps the one before (a masked tail there measured 8x slower on a
32-wide row: LLVM hoisted its mask and the loop lost more than the tail gained). On
a strided output row it is the plain loop. :func:`.simd.maximum` is the loop's
``floor if v < floor else v`` on vectors (one ``vmaxps``), keeping a NaN sum.
"""

from __future__ import annotations

from numba.extending import overload

from . import simd
from ._jit import inlined_options
from .strips import row_start


def store_row(src, at, target, out, n, k, i, count, offset, floor):
    """``out[n, k, i, j] = max(floor, src[at + j] + offset)`` for ``j < count``, where
    ``count`` past the row's width goes on across the rows that follow (value ``q`` of
    the plane from row ``i`` on: rows whose sums lie on the output's own row pitch,
    stored as one run). ``src``: 1-D contiguous; ``out``: 4-D; ``target``:
    :func:`.strips.flat` (out), taken once per kernel call: a view of each row costs
    more, in reference counting, than a short row's stores."""


def _store_vectors(src, at, target, out, n, k, i, count, offset, floor):
    dst_at = row_start(out, n, k, i)
    lanes = simd.lanes(src)
    bias = simd.splat(offset, src)
    low = simd.splat(floor, src)
    if count < lanes:  # one masked vector
        value = simd.maximum(simd.add(simd.load_first(src, at, count), bias), low)
        simd.store_first(target, dst_at, value, count)
        return
    for j in range(0, count - lanes, lanes):
        simd.store(target, dst_at + j,
                   simd.maximum(simd.add(simd.load(src, at + j), bias), low))
    # the last vector ends the run, overlapping the one before where count % lanes
    last = count - lanes
    simd.store(target, dst_at + last, simd.maximum(simd.add(simd.load(src, at + last), bias), low))


def _store_loop(src, at, target, out, n, k, i, count, offset, floor):
    width = out.shape[3]
    for q in range(0, count, width):
        for j in range(min(width, count - q)):
            value = src[at + q + j] + offset
            out[n, k, i + q // width, j] = floor if value < floor else value


@overload(store_row, jit_options=inlined_options())
def _store_row(src, at, target, out, n, k, i, count, offset, floor):
    if simd.vectors_fit(src, target):
        return _store_vectors
    return _store_loop


def store_by_filters(src, at, stride, count, n_k, target, out, n, k0, first, spare, bias,
                     has_bias, floor):
    """``out[n, k0 + kk]``'s plane, flat, ``[first + q] = max(floor, src[at + q * stride +
    kk] + bias[k0 + kk])`` (the bias where ``has_bias``) for ``q < count <= lanes``, ``kk <
    n_k <= lanes``: a square of sums computed by filters (position-major: a vector of
    filters per output, ``stride`` values from one output's filters to the next's)
    written transposed into the planes of ``out``, the bias and floor applied to each
    filter's row on its way (a pass of its own over the sums had taken 7 % of LeNet's
    5x5 layer on one thread). ``target``: :func:`.strips.flat` (out). Into a
    C-contiguous ``out``, one :func:`.simd.transpose` into ``src`` itself, ``lanes *
    lanes`` values from offset ``spare`` on (clear of the sums), and a vector store per
    filter, masked for fewer than ``lanes`` outputs (one call site of the transpose: a
    full square transposed straight into the planes measured no faster); into a strided
    ``out``, value by value."""


def _square_vectors(src, at, stride, count, n_k, target, out, n, k0, first, spare, bias,
                    has_bias, floor):
    lanes = simd.lanes(src)
    plane = out.shape[2] * out.shape[3]
    dst = row_start(out, n, k0, 0) + first
    low = simd.splat(floor, src)
    simd.transpose(src, at, stride, count, src, spare, lanes)
    for kk in range(n_k):
        row = simd.load(src, spare + kk * lanes)
        if has_bias:
            row = simd.add(row, simd.splat(bias[k0 + kk], src))
        row = simd.maximum(row, low)
        if count == lanes:
            simd.store(target, dst + kk * plane, row)
        else:
            simd.store_first(target, dst + kk * plane, row, count)


def _square_loop(src, at, stride, count, n_k, target, out, n, k0, first, spare, bias, has_bias,
                 floor):
    width = out.shape[3]
    for kk in range(n_k):
        shift = bias[k0 + kk] if has_bias else 0
        for q in range(count):
            i, j = divmod(first + q, width)
            value = src[at + q * stride + kk] + shift
            out[n, k0 + kk, i, j] = floor if value < floor else value


@overload(store_by_filters, jit_options=inlined_options())
def _store_by_filters(src, at, stride, count, n_k, target, out, n, k0, first, spare, bias,
                      has_bias, floor):
    if simd.vectors_fit(src, target):
        return _square_vectors
    return _square_loop
