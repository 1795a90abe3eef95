"""Convolution on the GPU: direct kernels and a tiled implicit GEMM, with ``numba.cuda``.

Host wrappers take C-contiguous 4-D device arrays and plain ints, exactly as the
CPU kernels (:mod:`fastconv.cpu`); every kernel sees its arrays flattened and
does the index arithmetic itself. Launches go to the default stream; nothing
here synchronises. Kernels are compiled on first launch (per dtype, since
their constants and shared tiles are typed), never at import.

Notation: x ``(N, C, H, W)``, weight ``(K, C_g, R, S)`` with ``C_g = C / groups``
and ``K_g = K / groups``, y ``(N, K, H_out, W_out)``; output ``(i, j)`` reads
the tap ``(r, s)`` at ``(i*sh - pad_top + r*dh, j*sw - pad_left + s*dw)``, and
taps outside x read 0.

**direct** (one thread per output value, grid-stride; the fastest-varying
index walks the output width, so a warp reads and writes neighbouring
columns):

- forward: ``y[n, k, i, j] = bias[k] + sum_{c, r, s} w[k, c, r, s] * x[n, g*C_g + c, ...]``.
- grad_input, a gather (the transposed convolution without scatter-adds):
  ``dx[n, c, h, w] = sum_{k in c's group, r, s} w[k, c - g*C_g, r, s] * dy[n, k, i, j]``
  over the taps with ``h + pad_top - r*dh = i*sh`` and ``w + pad_left - s*dw = j*sw``
  for some output ``(i, j)``.
- grad_weight: ``dw[k, c, r, s] = sum_{n, i, j} dy[n, k, i, j] * x[n, g*C_g + c, ...]``,
  one thread per (split, weight value): the ``N * H_out * W_out`` sum is cut into
  a fixed number of contiguous splits written to a workspace, then summed in split
  order, so every run adds the same numbers in the same order (no atomics).
- grad_bias: one block per channel, each thread sums a fixed stride of the
  channel, then a tree reduction in shared memory (float64, as on the CPU).

**implicit_gemm**: per group, a GEMM ``out (M x P) = A (M x D) @ B (D x P)``
whose operands are gathered on the fly, never materialised:

==============  ===========  ====================  ==========================
mode            M (rows)     P (columns)           D (reduction)
==============  ===========  ====================  ==========================
forward         K_g          N * H_out * W_out     C_g * R * S   (A = weight, B = x)
grad_input      C_g          N * H * W             K_g * R * S   (A = weight^T, B = dy)
grad_weight     K_g          C_g * R * S           N * H_out * W_out (A = dy, B = x)
==============  ===========  ====================  ==========================

grad_input's B is the transposed gather above: ``dy[n, k, i, j]`` where
``i = (h + pad_top - r*dh) / sh`` divides exactly (with stride 1: a convolution
of dy with the flipped, channel-swapped weight and padding ``dh*(R-1) - pad_top``,
the identity of :mod:`fastconv.cpu.identities`; with stride > 1 the GEMM also
runs the ``1 - 1/(sh*sw)`` of its taps that read nothing). grad_weight splits D
as the direct kernel does and sums the splits in order.

A block computes a ``CUDA_GEMM_TILE x CUDA_GEMM_TILE`` tile of ``out``, each of its
``(CUDA_GEMM_TILE / CUDA_GEMM_THREAD_TILE)**2`` threads a ``CUDA_GEMM_THREAD_TILE``
square of it in registers, reading D in chunks of ``CUDA_GEMM_TILE_K`` through two
shared-memory buffers: while the block multiplies one chunk, each thread already
holds its share of the next chunk's global loads in registers (one barrier per
chunk). Out-of-range rows, columns and taps load as 0, so the inner loop has no
branches. Blocks walk the tiles grid-stride (``CUDA_MAX_BLOCKS``), row tiles
fastest: the blocks that run together gather the same columns (x, the large
operand) and read them from L2, and the weights fit in L2 whole.
Each kernel is compiled for its dtype, kernel size and stride (compile-time
constants: no runtime divisions by them).
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import cuda

from .. import activations, config
from ..dispatch import register
from . import simulated
from ._jit import configure, device_array, flat, jit, launch, scalar_type, unravel

# --- direct kernels -------------------------------------------------------------------


def _geometry(x_shape, weight_shape, out_size, stride, padding, dilation, groups):
    """The int arguments every conv kernel takes after its arrays: the sizes of x, y
    and the weight, then stride, the top and left padding, dilation and groups."""
    return (*x_shape, weight_shape[0], *out_size, *weight_shape[2:], *stride,
            padding[0][0], padding[1][0], *dilation, groups)


@functools.cache
def _conv2d_forward_direct(dtype):
    zero = scalar_type(dtype)(0)

    @jit
    def kernel(x, weight, bias, has_bias, floor, out, n_img, channels, height, width,
               out_channels, out_h, out_w, kh, kw, stride_h, stride_w, pad_top, pad_left,
               dilation_h, dilation_w, groups):
        group_channels = channels // groups
        per_group = out_channels // groups
        plane = height * width
        taps = kh * kw
        total = n_img * out_channels * out_h * out_w
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            t, i, j = unravel(e, out_h, out_w)  # t = n * K + k
            n, k = t // out_channels, t % out_channels
            x_first = (n * channels + (k // per_group) * group_channels) * plane
            w_first = k * group_channels * taps
            acc = zero
            for r in range(kh):
                h = i * stride_h - pad_top + r * dilation_h
                if 0 <= h < height:
                    for s in range(kw):
                        w = j * stride_w - pad_left + s * dilation_w
                        if 0 <= w < width:
                            src = x_first + h * width + w
                            tap = w_first + r * kw + s
                            for c in range(group_channels):
                                acc += weight[tap + c * taps] * x[src + c * plane]
            if has_bias:
                acc += bias[k]
            out[e] = floor if acc < floor else acc

    return kernel


@register("conv2d", "cuda", "direct")
def conv2d_direct(x, weight, bias, out, stride, padding, dilation, groups, activation=None):
    """Host side; ``bias`` is a device array or None; ``activation`` as
    :func:`fastconv.conv2d` (the clamp of :func:`fastconv.activations.floor`)."""
    kernel = _conv2d_forward_direct(x.dtype)
    launch(kernel, out.size)(
        flat(x), flat(weight), flat(out if bias is None else bias), bias is not None,
        activations.floor(activation, np.dtype(x.dtype)), flat(out),
        *_geometry(x.shape, weight.shape, out.shape[2:], stride, padding, dilation, groups))


@functools.cache
def _conv2d_grad_input_direct(dtype):
    zero = scalar_type(dtype)(0)

    @jit
    def kernel(grad_out, weight, grad_in, n_img, channels, height, width, out_channels, out_h,
               out_w, kh, kw, stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w,
               groups):
        group_channels = channels // groups
        per_group = out_channels // groups
        out_plane = out_h * out_w
        taps = kh * kw
        total = n_img * channels * height * width
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            t, h, w = unravel(e, height, width)  # t = n * C + c
            n, c = t // channels, t % channels
            g = c // group_channels
            dy_first = (n * out_channels + g * per_group) * out_plane
            # weight[g*K_g + k, c - g*C_g, r, s], k = 0: ((g*K_g)*C_g + c - g*C_g) * taps
            w_first = (g * per_group * group_channels + c - g * group_channels) * taps
            acc = zero
            for r in range(kh):
                # the output row i whose tap r reads row h: h + pad_top - r*dh = i*sh
                top = h + pad_top - r * dilation_h
                i = top // stride_h
                if top < 0 or i * stride_h != top or i >= out_h:
                    continue
                for s in range(kw):
                    left = w + pad_left - s * dilation_w
                    j = left // stride_w
                    if left < 0 or j * stride_w != left or j >= out_w:
                        continue
                    src = dy_first + i * out_w + j
                    tap = w_first + r * kw + s
                    for k in range(per_group):
                        acc += (weight[tap + k * group_channels * taps]
                                * grad_out[src + k * out_plane])
            grad_in[e] = acc

    return kernel


@register("conv2d_grad_input", "cuda", "direct")
def conv2d_grad_input_direct(grad_out, weight, grad_in, stride, padding, dilation, groups):
    """Host side; every value of ``grad_in`` is written (a deterministic gather)."""
    kernel = _conv2d_grad_input_direct(grad_in.dtype)
    launch(kernel, grad_in.size)(
        flat(grad_out), flat(weight), flat(grad_in),
        *_geometry(grad_in.shape, weight.shape, grad_out.shape[2:], stride, padding, dilation,
                   groups))


# --- the weight gradient's fixed split of N * H_out * W_out ------------------------------

#: Fewest output positions one split of a weight-gradient sum covers.
_MIN_SPLIT_TERMS = 256

#: Threads the direct weight gradient aims for (one per split and weight value): enough
#: to fill an H100 (132 SMs x 2048).
_DIRECT_WEIGHT_THREADS = 1 << 18

#: Blocks the implicit-GEMM weight gradient aims for (tiles x splits).
_GEMM_WEIGHT_BLOCKS = 1024


def _splits(positions, items, target):
    """``(splits, split_len)``: cut ``positions`` terms into contiguous splits of
    ``split_len`` (the last may be shorter, none is empty) so that ``items`` (threads
    or tiles per split) x splits approaches ``target``, each split at least
    ``_MIN_SPLIT_TERMS`` long. Depends on the shapes only, so the sums are reproducible."""
    splits = max(1, min(-(-target // items), positions // _MIN_SPLIT_TERMS))
    split_len = -(-positions // splits)
    return -(-positions // split_len), split_len


@jit
def _sum_splits(partial, out, splits):
    """out[e] = sum over s, in order, of partial[s * out.size + e]."""
    size = out.size
    for e in range(cuda.grid(1), size, cuda.gridsize(1)):
        acc = partial[e]
        for s in range(1, splits):
            acc += partial[s * size + e]
        out[e] = acc


def _with_splits(grad_weight, splits, run):
    """``run(partial)`` writes each split's sums to ``partial`` (splits x weight values);
    then ``grad_weight`` gets their sum. One split writes ``grad_weight`` directly."""
    if splits == 1:
        run(flat(grad_weight))
        return
    partial = device_array(splits * grad_weight.size, grad_weight.dtype)
    run(partial)
    launch(_sum_splits, grad_weight.size)(partial, flat(grad_weight), splits)


@functools.cache
def _conv2d_grad_weight_direct(dtype):
    zero = scalar_type(dtype)(0)

    @jit
    def kernel(x, grad_out, partial, split_len, n_img, channels, height, width, out_channels,
               out_h, out_w, kh, kw, stride_h, stride_w, pad_top, pad_left, dilation_h,
               dilation_w, groups):
        group_channels = channels // groups
        per_group = out_channels // groups
        plane = height * width
        out_plane = out_h * out_w
        positions = n_img * out_plane
        for e in range(cuda.grid(1), partial.size, cuda.gridsize(1)):
            # e = split * (K * C_g * R * S) + ((k * C_g + c) * R + r) * S + s
            t, r, s = unravel(e, kh, kw)
            t, k, c = unravel(t, out_channels, group_channels)  # t = split
            first = t * split_len
            x_channel = ((k // per_group) * group_channels + c) * plane
            row_shift = r * dilation_h - pad_top
            col_shift = s * dilation_w - pad_left
            n = first // out_plane
            i = (first - n * out_plane) // out_w
            j = first - n * out_plane - i * out_w
            acc = zero
            for _ in range(first, min(first + split_len, positions)):
                h = i * stride_h + row_shift
                w = j * stride_w + col_shift
                if 0 <= h < height and 0 <= w < width:
                    acc += (grad_out[((n * out_channels + k) * out_h + i) * out_w + j]
                            * x[n * channels * plane + x_channel + h * width + w])
                j += 1  # the next position, without a division
                if j == out_w:
                    j = 0
                    i += 1
                    if i == out_h:
                        i = 0
                        n += 1
            partial[e] = acc

    return kernel


@register("conv2d_grad_weight", "cuda", "direct")
def conv2d_grad_weight_direct(x, grad_out, grad_weight, stride, padding, dilation, groups):
    """Host side; every value of ``grad_weight`` is written; deterministic."""
    positions = grad_out.shape[0] * grad_out.shape[2] * grad_out.shape[3]
    splits, split_len = _splits(positions, grad_weight.size, _DIRECT_WEIGHT_THREADS)
    kernel = _conv2d_grad_weight_direct(x.dtype)
    geometry = _geometry(x.shape, grad_weight.shape, grad_out.shape[2:], stride, padding,
                         dilation, groups)
    _with_splits(grad_weight, splits, lambda partial: launch(kernel, partial.size)(
        flat(x), flat(grad_out), partial, split_len, *geometry))


# --- grad_bias ----------------------------------------------------------------------------

#: Shared-memory slots of the block reduction: the largest CUDA block.
_MAX_BLOCK = 1024


@jit
def _channel_sums(grad_out, grad_bias, n_img, channels, plane):
    """grad_bias[k] = sum_{n, q} grad_out[n, k, q], one block per channel: thread t sums
    q = t, t + threads, ... of every image in float64, then a tree reduction in a fixed
    order (the same bits every run for a given CUDA_THREADS)."""
    partial = cuda.shared.array(_MAX_BLOCK, numba.float64)
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    for k in range(cuda.blockIdx.x, channels, cuda.gridDim.x):
        acc = numba.float64(0)
        for n in range(n_img):
            first = (n * channels + k) * plane
            for q in range(tid, plane, threads):
                acc += grad_out[first + q]
        partial[tid] = acc
        cuda.syncthreads()
        step = 1
        while step < threads:
            if tid % (2 * step) == 0 and tid + step < threads:
                partial[tid] += partial[tid + step]
            step *= 2
            cuda.syncthreads()
        if tid == 0:
            grad_bias[k] = partial[0]


@register("conv2d_grad_bias", "cuda", "direct")
def conv2d_grad_bias(grad_out, grad_bias):
    """Host side; ``grad_bias`` (K,) is overwritten; deterministic."""
    n_img, channels, out_h, out_w = grad_out.shape
    blocks = min(channels, config.CUDA_MAX_BLOCKS)
    configure(_channel_sums, blocks, config.CUDA_THREADS)(flat(grad_out), grad_bias, n_img,
                                                          channels, out_h * out_w)


# --- implicit GEMM -----------------------------------------------------------------------

#: Tile shapes (they size shared memory, so they are read once).
_TILE = config.CUDA_GEMM_TILE
_TILE_K = config.CUDA_GEMM_TILE_K
_THREAD_TILE = config.CUDA_GEMM_THREAD_TILE

#: Blocks per SM the register use of a GEMM block leaves room for (launch bounds), by
#: itemsize: float64 accumulators need twice the registers, and capping them for two
#: blocks per SM spilled 160-330 bytes per thread (ptxas, sm_90).
_GEMM_MIN_BLOCKS_PER_SM = {4: 2, 8: 1}

#: Static shared memory a block may use.
_SHARED_BYTES = 48 * 1024

#: Alignment of the shared tiles: 16 bytes lets a thread's row of the tile be one
#: vector load (the simulator takes no alignment).
_ALIGNMENT = None if simulated() else 16


def _gemm_threads():
    """Threads per implicit-GEMM block, after checking that the tile shapes fit together."""
    side, rest = divmod(_TILE, _THREAD_TILE)
    threads = side * side
    if rest or (_TILE * _TILE_K) % threads or threads > _MAX_BLOCK:
        raise ValueError(
            f"FASTCONV_CUDA_GEMM_TILE={_TILE} must be a multiple of "
            f"FASTCONV_CUDA_GEMM_THREAD_TILE={_THREAD_TILE}, with (TILE / THREAD_TILE)**2 "
            f"<= {_MAX_BLOCK} threads dividing TILE * CUDA_GEMM_TILE_K={_TILE_K}"
        )
    return threads


@functools.cache
def _implicit_gemm(dtype, mode, window, stride):
    """The implicit-GEMM kernel of ``mode`` ("forward", "grad_input", "grad_weight") for
    ``dtype``, the ``(R, S)`` ``window`` and ``stride``. They are compile-time constants:
    each kernel keeps one gather, and its divisions by R * S, S and the stride become
    multiplications and shifts."""
    forward, grad_input = mode == "forward", mode == "grad_input"
    value_type = scalar_type(dtype)
    zero = value_type(0)
    tile, tile_k, per_thread = _TILE, _TILE_K, _THREAD_TILE
    side = tile // per_thread  # threads along each side of the tile
    threads = _gemm_threads()
    slots = tile * tile_k // threads  # values of each operand chunk one thread loads
    # rows of 16-byte multiples, so that a thread reads its per_thread consecutive values
    # as one vector load; the transposed stores then hit a bank at most twice
    pitch = tile + 4
    acc_size = per_thread * per_thread
    window_h, window_w = window
    step_h, step_w = stride

    shared = 2 * 2 * tile_k * pitch * np.dtype(dtype).itemsize  # two double-buffered tiles
    if shared > _SHARED_BYTES:
        raise ValueError(
            f"FASTCONV_CUDA_GEMM_TILE={tile} and FASTCONV_CUDA_GEMM_TILE_K={tile_k} need "
            f"{shared} bytes of shared memory per block for {np.dtype(dtype)}, over the "
            f"{_SHARED_BYTES}-byte limit; make them smaller")

    @jit(launch_bounds=(threads, _GEMM_MIN_BLOCKS_PER_SM[np.dtype(dtype).itemsize]))
    def kernel(a_src, b_src, bias, has_bias, floor, out, splits, split_len, n_img, channels,
               height,
               width, out_channels, out_h, out_w, kh, kw, stride_h, stride_w, pad_top,
               pad_left, dilation_h, dilation_w, groups):
        a_tile = cuda.shared.array((2, tile_k, pitch), value_type, alignment=_ALIGNMENT)
        b_tile = cuda.shared.array((2, tile_k, pitch), value_type, alignment=_ALIGNMENT)
        acc = cuda.local.array(acc_size, value_type)
        a_row = cuda.local.array(per_thread, value_type)
        b_row = cuda.local.array(per_thread, value_type)
        a_next = cuda.local.array(slots, value_type)
        b_next = cuda.local.array(slots, value_type)
        # per B slot, fixed for a tile: where its column's gather starts
        col_first = cuda.local.array(slots, numba.int64)
        col_top = cuda.local.array(slots, numba.int32)  # spatial offsets: few registers
        col_left = cuda.local.array(slots, numba.int32)
        kh = window_h  # the constants, in place of the arguments
        kw = window_w
        stride_h = step_h
        stride_w = step_w

        tid = cuda.threadIdx.x
        ty = tid // side
        tx = tid - ty * side
        group_channels = channels // groups
        per_group = out_channels // groups
        taps = kh * kw
        plane = height * width
        out_plane = out_h * out_w
        if forward:
            rows, cols, depth = per_group, n_img * out_plane, group_channels * taps
        elif grad_input:
            rows, cols, depth = group_channels, n_img * plane, per_group * taps
        else:
            rows, cols, depth = per_group, group_channels * taps, n_img * out_plane
        row_tiles = (rows + tile - 1) // tile
        col_tiles = (cols + tile - 1) // tile
        n_tiles = splits * groups * row_tiles * col_tiles
        for tile_index in range(cuda.blockIdx.x, n_tiles, cuda.gridDim.x):
            row0 = (tile_index % row_tiles) * tile
            rest = tile_index // row_tiles
            col0 = (rest % col_tiles) * tile
            rest //= col_tiles
            g = rest % groups
            split = rest // groups
            d_first = split * split_len
            d_end = min(d_first + split_len, depth)

            # B slot l holds column e % tile and reduction index e // tile of a chunk
            # (grad_weight: column e // tile_k, reduction e % tile_k, so that a warp
            # reads consecutive positions of x)
            for slot in range(slots):
                e = tid + slot * threads
                col = col0 + (e // tile_k if not (forward or grad_input) else e % tile)
                col_first[slot] = -1
                if col < cols:
                    if forward:  # column = output position (n, i, j)
                        n = col // out_plane
                        i = (col - n * out_plane) // out_w
                        col_first[slot] = (n * channels + g * group_channels) * plane
                        col_top[slot] = i * stride_h - pad_top
                        col_left[slot] = (col - n * out_plane - i * out_w) * stride_w - pad_left
                    elif grad_input:  # column = input position (n, h, w)
                        n = col // plane
                        h = (col - n * plane) // width
                        col_first[slot] = (n * out_channels + g * per_group) * out_plane
                        col_top[slot] = h + pad_top
                        col_left[slot] = col - n * plane - h * width + pad_left
                    else:  # column = weight tap (c, r, s)
                        c = col // taps
                        r = (col - c * taps) // kw
                        col_first[slot] = (g * group_channels + c) * plane
                        col_top[slot] = r * dilation_h - pad_top
                        col_left[slot] = (col - c * taps - r * kw) * dilation_w - pad_left

            for a in range(acc_size):
                acc[a] = zero
            n_chunks = (d_end - d_first + tile_k - 1) // tile_k
            # step t loads chunk t into registers, multiplies chunk t - 1 from shared
            # memory, then stores chunk t into the other buffer: one barrier per chunk
            for step in range(n_chunks + 1):
                if step < n_chunks:
                    d0 = d_first + step * tile_k
                    for slot in range(slots):  # A: row e // tile_k, reduction e % tile_k
                        e = tid + slot * threads
                        m = row0 + e // tile_k
                        d = d0 + e % tile_k
                        value = zero
                        if m < rows and d < d_end:
                            if forward:  # weight[g*K_g + m, d]
                                value = a_src[(g * per_group + m) * depth + d]
                            elif grad_input:  # weight[g*K_g + k, m, r, s], d = (k, r, s)
                                k = d // taps
                                value = a_src[((g * per_group + k) * group_channels + m) * taps
                                              + d - k * taps]
                            else:  # dy[n, g*K_g + m, q], d = (n, q)
                                n = d // out_plane
                                value = a_src[(n * out_channels + g * per_group + m) * out_plane
                                              + d - n * out_plane]
                        a_next[slot] = value
                    for slot in range(slots):
                        e = tid + slot * threads
                        first = col_first[slot]
                        d = d0 + (e // tile if forward or grad_input else e % tile_k)
                        value = zero
                        if first >= 0 and d < d_end:
                            if forward:  # x[n, g*C_g + c, top + r*dh, left + s*dw]
                                c = d // taps
                                r = (d - c * taps) // kw
                                h = col_top[slot] + r * dilation_h
                                w = col_left[slot] + (d - c * taps - r * kw) * dilation_w
                                if 0 <= h < height and 0 <= w < width:
                                    value = b_src[first + c * plane + h * width + w]
                            elif grad_input:  # dy[n, g*K_g + k, i, j], i*sh = h + pt - r*dh
                                k = d // taps
                                r = (d - k * taps) // kw
                                top = col_top[slot] - r * dilation_h
                                left = col_left[slot] - (d - k * taps - r * kw) * dilation_w
                                i = top // stride_h
                                j = left // stride_w
                                if (top >= 0 and left >= 0 and i * stride_h == top
                                        and j * stride_w == left and i < out_h and j < out_w):
                                    value = b_src[first + k * out_plane + i * out_w + j]
                            else:  # x[n, g*C_g + c, i*sh + r*dh - pt, j*sw + s*dw - pl]
                                n = d // out_plane
                                i = (d - n * out_plane) // out_w
                                h = i * stride_h + col_top[slot]
                                w = (d - n * out_plane - i * out_w) * stride_w + col_left[slot]
                                if 0 <= h < height and 0 <= w < width:
                                    value = b_src[n * channels * plane + first + h * width + w]
                        b_next[slot] = value
                if step > 0:
                    buffer = (step - 1) & 1
                    for d in range(tile_k):
                        for a in range(per_thread):
                            a_row[a] = a_tile[buffer, d, ty * per_thread + a]
                        for b in range(per_thread):
                            b_row[b] = b_tile[buffer, d, tx * per_thread + b]
                        for a in range(per_thread):
                            for b in range(per_thread):
                                acc[a * per_thread + b] += a_row[a] * b_row[b]
                if step < n_chunks:
                    buffer = step & 1
                    for slot in range(slots):
                        e = tid + slot * threads
                        a_tile[buffer, e % tile_k, e // tile_k] = a_next[slot]
                        if forward or grad_input:
                            b_tile[buffer, e // tile, e % tile] = b_next[slot]
                        else:
                            b_tile[buffer, e % tile_k, e // tile_k] = b_next[slot]
                cuda.syncthreads()

            for a in range(per_thread):
                m = row0 + ty * per_thread + a
                if m >= rows:
                    continue
                for b in range(per_thread):
                    col = col0 + tx * per_thread + b
                    if col >= cols:
                        continue
                    value = acc[a * per_thread + b]
                    if forward:  # y[n, g*K_g + m, q]
                        n = col // out_plane
                        k = g * per_group + m
                        if has_bias:
                            value += bias[k]
                        if value < floor:
                            value = floor
                        out[(n * out_channels + k) * out_plane + col - n * out_plane] = value
                    elif grad_input:  # dx[n, g*C_g + m, q]
                        n = col // plane
                        out[(n * channels + g * group_channels + m) * plane + col - n * plane] = (
                            value)
                    else:  # partial[split, g*K_g + m, (c, r, s)]
                        out[(split * out_channels + g * per_group + m) * cols + col] = value

    return kernel


def _launch_gemm(mode, a_src, b_src, bias, out, geometry, splits=1, split_len=None,
                 activation=None):
    """One implicit-GEMM launch: a block per tile (grid-stride past CUDA_MAX_BLOCKS).
    Without splits, the whole reduction is one split; ``activation`` (forward only) as
    :func:`fastconv.conv2d`."""
    n_img, channels, height, width, out_channels, out_h, out_w, kh, kw = geometry[:9]
    groups = geometry[-1]
    group_channels, per_group = channels // groups, out_channels // groups
    rows, cols, depth = {
        "forward": (per_group, n_img * out_h * out_w, group_channels * kh * kw),
        "grad_input": (group_channels, n_img * height * width, per_group * kh * kw),
        "grad_weight": (per_group, group_channels * kh * kw, n_img * out_h * out_w),
    }[mode]
    tiles = splits * groups * -(-rows // _TILE) * -(-cols // _TILE)
    stride = geometry[9:11]
    kernel = _implicit_gemm(out.dtype, mode, (kh, kw), stride)
    configure(kernel, min(tiles, config.CUDA_MAX_BLOCKS), _gemm_threads())(
        a_src, b_src, out if bias is None else bias, bias is not None,
        activations.floor(activation, np.dtype(out.dtype)), out, splits,
        depth if split_len is None else split_len, *geometry)


@register("conv2d", "cuda", "implicit_gemm")
def conv2d_implicit_gemm(x, weight, bias, out, stride, padding, dilation, groups,
                         activation=None):
    """Host side; ``bias`` is a device array or None."""
    geometry = _geometry(x.shape, weight.shape, out.shape[2:], stride, padding, dilation, groups)
    _launch_gemm("forward", flat(weight), flat(x), bias, flat(out), geometry,
                 activation=activation)


@register("conv2d_grad_input", "cuda", "implicit_gemm")
def conv2d_grad_input_implicit_gemm(grad_out, weight, grad_in, stride, padding, dilation,
                                    groups):
    """Host side; every value of ``grad_in`` is written. Any stride: with stride > 1 the
    GEMM runs every tap and keeps the 1/(sh*sw) that land on an output."""
    geometry = _geometry(grad_in.shape, weight.shape, grad_out.shape[2:], stride, padding,
                         dilation, groups)
    _launch_gemm("grad_input", flat(weight), flat(grad_out), None, flat(grad_in), geometry)


@register("conv2d_grad_weight", "cuda", "implicit_gemm")
def conv2d_grad_weight_implicit_gemm(x, grad_out, grad_weight, stride, padding, dilation,
                                     groups):
    """Host side; every value of ``grad_weight`` is written; deterministic."""
    out_channels, group_channels, kh, kw = grad_weight.shape
    tiles = groups * -(-(out_channels // groups) // _TILE) * -(-(group_channels * kh * kw) // _TILE)
    positions = grad_out.shape[0] * grad_out.shape[2] * grad_out.shape[3]
    splits, split_len = _splits(positions, tiles, _GEMM_WEIGHT_BLOCKS)
    geometry = _geometry(x.shape, grad_weight.shape, grad_out.shape[2:], stride, padding,
                         dilation, groups)
    _with_splits(grad_weight, splits, lambda partial: _launch_gemm(
        "grad_weight", flat(grad_out), flat(x), None, partial, geometry, splits, split_len))
