"""Direct convolution: JIT loops over the definition.

Fast where one output needs few multiply-adds (few channels per group, small
kernels: depthwise and first layers), where building GEMM columns costs more
than the arithmetic they feed.

Each task takes one image, one group and a block of output channels. It
copies one input channel at a time into a zero-bordered plane in its own
buffer (so no index ever leaves the input), and accumulates every tap as one
long vectorised loop. With stride 1 the outputs are computed on the padded
plane's row pitch: output ``(i, j)`` sits at ``i * W_pad + j`` and tap
``(r, s)`` reads ``plane[i * W_pad + j + r * dh * W_pad + s * dw]``, a plain
shifted slice; the ``W_pad - W_out`` junk columns per row are dropped when
the result is written out.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .. import config
from ..dispatch import register
from . import identities, workspace
from ._jit import kernel


@kernel()
def _to_pitch(buffer, rows, offset, pitch):
    """buffer[offset + i * pitch + j] = rows[i, j]: a plane copied into a buffer of a
    wider row pitch (the zero border or junk columns around it stay as they are)."""
    height, width = rows.shape
    for i in range(height):
        dst = buffer[offset + i * pitch :]
        src = rows[i]
        for j in range(width):
            dst[j] = src[j]


@kernel(parallel=True)
def _conv2d_forward_direct(x, weight, bias, has_bias, out, stride_h, stride_w, pad_top, pad_left,
                           padded_h, padded_w, dilation_h, dilation_w, groups, block_k, scratch):
    """out[n, k] = bias[k]
    + sum_{c, r, s} weight[k, c, r, s] * x_padded[n, c, i*sh + r*dh, j*sw + s*dw]."""
    n_img, _, height, width = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    out_h, out_w = out.shape[2], out.shape[3]
    per_group = out_channels // groups
    n_blocks = (per_group + block_k - 1) // block_k
    n_tasks = n_img * groups * n_blocks
    n_chunks = scratch.shape[0]
    unit_stride = stride_h == 1 and stride_w == 1
    pitch = padded_w if unit_stride else out_w
    acc_len = (out_h - 1) * pitch + out_w
    plane_len = padded_h * padded_w
    for chunk in prange(n_chunks):
        plane = scratch[chunk, :plane_len]
        plane[:] = 0
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            n = task // (groups * n_blocks)
            g = (task // n_blocks) % groups
            k_first = g * per_group + (task % n_blocks) * block_k
            n_k = min(block_k, (g + 1) * per_group - k_first)
            acc = scratch[chunk, plane_len : plane_len + n_k * acc_len]
            acc[:] = 0
            for c in range(group_channels):
                _to_pitch(plane, x[n, g * group_channels + c], pad_top * padded_w + pad_left,
                          padded_w)
                for kk in range(n_k):
                    a = acc[kk * acc_len : (kk + 1) * acc_len]
                    w_k = weight[k_first + kk, c]
                    for r in range(kh):
                        row_shift = r * dilation_h * padded_w
                        if unit_stride and kw == 3:
                            # a row of three taps in one pass: one load and store of a[j]
                            t0 = plane[row_shift:]
                            t1 = plane[row_shift + dilation_w :]
                            t2 = plane[row_shift + 2 * dilation_w :]
                            w0, w1, w2 = w_k[r, 0], w_k[r, 1], w_k[r, 2]
                            for j in range(acc_len):
                                a[j] += w0 * t0[j] + w1 * t1[j] + w2 * t2[j]
                            continue
                        if unit_stride and kw == 5:
                            t0 = plane[row_shift:]
                            t1 = plane[row_shift + dilation_w :]
                            t2 = plane[row_shift + 2 * dilation_w :]
                            t3 = plane[row_shift + 3 * dilation_w :]
                            t4 = plane[row_shift + 4 * dilation_w :]
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
                                taps = plane[shift : shift + acc_len]
                                for j in range(acc_len):
                                    a[j] += w * taps[j]
                            else:
                                for i in range(out_h):
                                    taps = plane[i * stride_h * padded_w + shift :]
                                    dst = a[i * out_w : (i + 1) * out_w]
                                    for j in range(out_w):
                                        dst[j] += w * taps[j * stride_w]
            for kk in range(n_k):
                b = bias[k_first + kk] if has_bias else 0
                for i in range(out_h):
                    src = acc[kk * acc_len + i * pitch : kk * acc_len + i * pitch + out_w]
                    dst = out[n, k_first + kk, i]
                    for j in range(out_w):
                        dst[j] = src[j] + b


@register("conv2d", "cpu", "direct")
def conv2d_direct(x, weight, bias, out, stride, padding, dilation, groups):
    """Host side of the direct kernel; arguments as normalised by :func:`fastconv.conv2d`."""
    n_img, _, height, width = x.shape
    out_channels = weight.shape[0]
    out_h, out_w = out.shape[2], out.shape[3]
    (top, bottom), (left, right) = padding
    padded_h, padded_w = height + top + bottom, width + left + right
    block_k = min(config.DIRECT_BLOCK_K, out_channels // groups)
    pitch = padded_w if stride == (1, 1) else out_w
    n_tasks = n_img * groups * (-(-(out_channels // groups) // block_k))
    n_chunks = max(1, min(numba.get_num_threads(), n_tasks))
    scratch = workspace.borrow(
        (n_chunks, padded_h * padded_w + block_k * ((out_h - 1) * pitch + out_w)), x.dtype
    )
    has_bias = bias is not None
    _conv2d_forward_direct(
        x, weight, bias if has_bias else np.zeros(0, x.dtype), has_bias, out,
        stride[0], stride[1], top, left, padded_h, padded_w, dilation[0], dilation[1],
        groups, block_k, scratch,
    )


@kernel(parallel=True)
def _conv2d_grad_input_direct(grad_out, weight, grad_in, stride_h, stride_w, pad_top, pad_left,
                              padded_h, padded_w, dilation_h, dilation_w, groups, scratch):
    """grad_in[n, c] = sum_{k, r, s, i, j} weight[k, c, r, s] * grad_out[n, k, i, j] sent to
    x_padded position (i*sh + r*dh, j*sw + s*dw), then cropped.

    A task owns one input plane ``(n, c)``: it scatters into a zero-bordered
    buffer of the padded plane, so no two tasks write the same memory.
    """
    n_img, channels, height, width = grad_in.shape
    out_channels, group_channels, kh, kw = weight.shape
    out_h, out_w = grad_out.shape[2], grad_out.shape[3]
    per_group = out_channels // groups
    n_tasks = n_img * channels
    n_chunks = scratch.shape[0]
    for chunk in prange(n_chunks):
        plane = scratch[chunk, : padded_h * padded_w]
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            n = task // channels
            c_in = task % channels
            g = c_in // group_channels
            c = c_in % group_channels
            plane[:] = 0
            for k in range(g * per_group, (g + 1) * per_group):
                for r in range(kh):
                    for s in range(kw):
                        w = weight[k, c, r, s]
                        for i in range(out_h):
                            dst = plane[(i * stride_h + r * dilation_h) * padded_w
                                        + s * dilation_w :]
                            src = grad_out[n, k, i]
                            if stride_w == 1:
                                for j in range(out_w):
                                    dst[j] += w * src[j]
                            else:
                                for j in range(out_w):
                                    dst[j * stride_w] += w * src[j]
            for row in range(height):
                src = plane[(row + pad_top) * padded_w + pad_left :]
                dst = grad_in[n, c_in, row]
                for j in range(width):
                    dst[j] = src[j]


@kernel(parallel=True)
def _conv2d_grad_weight_direct(x, grad_out, grad_weight, stride_h, stride_w, pad_top, pad_left,
                               padded_h, padded_w, dilation_h, dilation_w, groups, scratch):
    """grad_weight[k, c, r, s]
    = sum_{n, i, j} grad_out[n, k, i, j] * x_padded[n, c_in, i*sh + r*dh, j*sw + s*dw].

    A task owns one filter ``k`` (all its channels and taps), so the sums over
    images and positions run in a fixed order and need no reduction buffers.
    With stride 1, ``grad_out[n, k]`` is laid on the padded plane's row pitch
    (zeros in the junk columns), so each tap is one dot product of two
    contiguous slices, as in the forward kernel.
    """
    n_img, channels, height, width = x.shape
    out_channels, group_channels, kh, kw = grad_weight.shape
    out_h, out_w = grad_out.shape[2], grad_out.shape[3]
    per_group = out_channels // groups
    n_chunks = scratch.shape[0]
    unit_stride = stride_h == 1 and stride_w == 1
    plane_len = padded_h * padded_w
    pitched_len = (out_h - 1) * padded_w + out_w
    for chunk in prange(n_chunks):
        plane = scratch[chunk, :plane_len]
        pitched = scratch[chunk, plane_len : plane_len + pitched_len]
        plane[:] = 0
        pitched[:] = 0
        for k in range(chunk * out_channels // n_chunks, (chunk + 1) * out_channels // n_chunks):
            g = k // per_group
            grad_weight[k] = 0
            for n in range(n_img):
                if unit_stride:
                    _to_pitch(pitched, grad_out[n, k], 0, padded_w)
                for c in range(group_channels):
                    _to_pitch(plane, x[n, g * group_channels + c],
                              pad_top * padded_w + pad_left, padded_w)
                    for r in range(kh):
                        for s in range(kw):
                            shift = r * dilation_h * padded_w + s * dilation_w
                            total = 0.0
                            if unit_stride:
                                taps = plane[shift : shift + pitched_len]
                                for j in range(pitched_len):
                                    total += pitched[j] * taps[j]
                            else:
                                for i in range(out_h):
                                    taps = plane[i * stride_h * padded_w + shift :]
                                    dy = grad_out[n, k, i]
                                    for j in range(out_w):
                                        total += dy[j] * taps[j * stride_w]
                            grad_weight[k, c, r, s] += total


def _padded_scratch(x_shape, padding, n_tasks, dtype, extra=0):
    """Padded plane size and a per-thread scratch of one padded plane plus ``extra``."""
    (top, bottom), (left, right) = padding
    padded_h, padded_w = x_shape[2] + top + bottom, x_shape[3] + left + right
    n_chunks = max(1, min(numba.get_num_threads(), n_tasks))
    return padded_h, padded_w, workspace.borrow((n_chunks, padded_h * padded_w + extra), dtype)


@register("conv2d_grad_input", "cpu", "direct")
def conv2d_grad_input_direct(grad_out, weight, grad_in, stride, padding, dilation, groups):
    """grad_in = conv_transpose2d(grad_out, weight): with stride 1, the forward direct
    kernel on flipped weights (see :mod:`.identities`); otherwise scatter loops."""
    conv_pads = identities.grad_input_as_conv_padding(
        grad_in.shape[2:], grad_out.shape[2:], weight.shape[2:], stride, padding, dilation)
    if conv_pads is not None:
        conv2d_direct(grad_out, identities.transpose_flip(weight, groups), None, grad_in,
                      (1, 1), conv_pads, dilation, groups)
        return
    # windows reach at most padded row (out - 1) * stride + dilation * (k - 1) < H + pads
    padded_h, padded_w, scratch = _padded_scratch(
        grad_in.shape, padding, grad_in.shape[0] * grad_in.shape[1], grad_in.dtype)
    _conv2d_grad_input_direct(
        grad_out, weight, grad_in, stride[0], stride[1], padding[0][0], padding[1][0], padded_h,
        padded_w, dilation[0], dilation[1], groups, scratch,
    )


@register("conv2d_grad_weight", "cpu", "direct")
def conv2d_grad_weight_direct(x, grad_out, grad_weight, stride, padding, dilation, groups):
    """grad_weight = correlation of x with grad_out, by loops."""
    out_h, out_w = grad_out.shape[2:]
    pitched = (out_h - 1) * (x.shape[3] + sum(padding[1])) + out_w
    padded_h, padded_w, scratch = _padded_scratch(x.shape, padding, grad_weight.shape[0], x.dtype,
                                                  pitched)
    _conv2d_grad_weight_direct(
        x, grad_out, grad_weight, stride[0], stride[1], padding[0][0], padding[1][0], padded_h,
        padded_w, dilation[0], dilation[1], groups, scratch,
    )
