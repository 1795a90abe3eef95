"""Slow, obviously correct loops: the executable specification of every op.

Each function follows the lecture's definition word for word, with Python
loops over output positions and numpy only for the multiply-and-sum over one
window. Every fast kernel is tested against these, and the benchmarks time
them as the "naive" baseline. Arguments take the same forms as the public
functions; validation is left to those.
"""

from __future__ import annotations

import numpy as np

from . import shapes


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation of ``input (N, C, H, W)`` or ``(C, H, W)`` with
    ``weight (K, C/groups, R, S)``, plus ``bias (K,)``.

    For each output channel ``k``, position ``(i, j)`` and image ``n``: take the
    window of the zero-padded input that starts at ``(i * stride_h, j * stride_w)``
    with taps ``dilation`` apart, multiply it element-wise with ``weight[k]``
    over the channels of ``k``'s group, sum, and add ``bias[k]``.

    >>> x = np.arange(9.0).reshape(1, 3, 3)
    >>> conv2d(x, np.ones((1, 1, 2, 2))).tolist()
    [[[8.0, 12.0], [20.0, 24.0]]]
    """
    unbatched = input.ndim == 3
    x = input[None] if unbatched else input
    n_img, channels, height, width = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    stride = shapes.pair(stride, "stride")
    dilation = shapes.pair(dilation, "dilation")
    (top, bottom), (left, right) = shapes.padding2d(
        padding, (height, width), (kh, kw), stride, dilation
    )
    out_h = shapes.output_length(height, kh, stride[0], (top, bottom), dilation[0])
    out_w = shapes.output_length(width, kw, stride[1], (left, right), dilation[1])
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    per_group = out_channels // groups
    out = np.zeros((n_img, out_channels, out_h, out_w), dtype=np.result_type(x, weight))
    for n in range(n_img):
        for k in range(out_channels):
            first = (k // per_group) * group_channels
            for i in range(out_h):
                for j in range(out_w):
                    top_row, left_col = i * stride[0], j * stride[1]
                    window = padded[
                        n,
                        first : first + group_channels,
                        top_row : top_row + dilation[0] * (kh - 1) + 1 : dilation[0],
                        left_col : left_col + dilation[1] * (kw - 1) + 1 : dilation[1],
                    ]
                    out[n, k, i, j] = np.sum(window * weight[k])
            if bias is not None:
                out[n, k] += bias[k]
    return out[0] if unbatched else out


def _window(i, j, stride, dilation, kernel_size):
    """Slices of the padded input that output position (i, j) reads."""
    rows = slice(i * stride[0], i * stride[0] + dilation[0] * (kernel_size[0] - 1) + 1, dilation[0])
    cols = slice(j * stride[1], j * stride[1] + dilation[1] * (kernel_size[1] - 1) + 1, dilation[1])
    return rows, cols


def conv2d_backward(grad_output, input, weight, stride=1, padding=0, dilation=1, groups=1):
    """Gradients of ``conv2d(input, weight, bias)`` given ``grad_output = dL/d out``.

    Every output value was ``sum(window * weight[k]) + bias[k]``, so its
    gradient flows back along the same window: the window's inputs receive
    ``grad_output[n, k, i, j] * weight[k]``, ``weight[k]`` receives
    ``grad_output[n, k, i, j] * window`` and ``bias[k]`` receives
    ``grad_output[n, k, i, j]``. Returns ``(grad_input, grad_weight, grad_bias)``.
    """
    unbatched = input.ndim == 3
    x = input[None] if unbatched else input
    dy = grad_output[None] if unbatched else grad_output
    _, _, height, width = x.shape
    out_channels, group_channels, kh, kw = weight.shape
    stride = shapes.pair(stride, "stride")
    dilation = shapes.pair(dilation, "dilation")
    (top, bottom), (left, right) = shapes.padding2d(
        padding, (height, width), (kh, kw), stride, dilation
    )
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    grad_padded = np.zeros_like(padded)
    grad_weight = np.zeros_like(weight)
    per_group = out_channels // groups
    for n in range(dy.shape[0]):
        for k in range(out_channels):
            channels = slice((k // per_group) * group_channels, (k // per_group + 1) * group_channels)
            for i in range(dy.shape[2]):
                for j in range(dy.shape[3]):
                    rows, cols = _window(i, j, stride, dilation, (kh, kw))
                    grad_padded[n, channels, rows, cols] += dy[n, k, i, j] * weight[k]
                    grad_weight[k] += dy[n, k, i, j] * padded[n, channels, rows, cols]
    grad_input = grad_padded[:, :, top : top + height, left : left + width]
    grad_bias = dy.sum(axis=(0, 2, 3))
    return (grad_input[0] if unbatched else grad_input), grad_weight, grad_bias


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, output_size=None):
    """Transposed convolution of ``input (N, C_in, H, W)`` with ``weight (C_in, C_out/groups, R, S)``.

    The lecture's deconvolution: each input value stamps ``input[n, c, i, j] *
    weight[c]`` onto the output window that starts at ``(i * stride, j * stride)``
    (taps ``dilation`` apart), overlapping stamps add up, ``padding`` is then
    cropped from each border and ``bias`` added. The output is
    ``(H - 1) * stride - pad_top - pad_bottom + dilation * (R - 1) + output_padding + 1``
    high; ``output_size`` picks ``output_padding``.
    """
    unbatched = input.ndim == 3
    x = input[None] if unbatched else input
    n_img, in_channels, height, width = x.shape
    _, per_group, kh, kw = weight.shape
    stride = shapes.pair(stride, "stride")
    dilation = shapes.pair(dilation, "dilation")
    (top, bottom), (left, right) = shapes.padding2d(padding, (1, 1), (1, 1), (1, 1), (1, 1))
    if output_size is not None:
        out_h, out_w = output_size[-2:]
    else:
        extra = shapes.pair(output_padding, "output_padding", minimum=0)
        out_h = (height - 1) * stride[0] - top - bottom + dilation[0] * (kh - 1) + extra[0] + 1
        out_w = (width - 1) * stride[1] - left - right + dilation[1] * (kw - 1) + extra[1] + 1
    full_h = max(out_h + top + bottom, (height - 1) * stride[0] + dilation[0] * (kh - 1) + 1)
    full_w = max(out_w + left + right, (width - 1) * stride[1] + dilation[1] * (kw - 1) + 1)
    full = np.zeros((n_img, per_group * groups, full_h, full_w), np.result_type(x, weight))
    group_in = in_channels // groups
    for n in range(n_img):
        for c in range(in_channels):
            channels = slice((c // group_in) * per_group, (c // group_in + 1) * per_group)
            for i in range(height):
                for j in range(width):
                    rows, cols = _window(i, j, stride, dilation, (kh, kw))
                    full[n, channels, rows, cols] += x[n, c, i, j] * weight[c]
    out = full[:, :, top : top + out_h, left : left + out_w].copy()
    if bias is not None:
        out += bias[None, :, None, None]
    return out[0] if unbatched else out


def conv_transpose2d_backward(grad_output, input, weight, stride=1, padding=0, output_padding=0,
                              groups=1, dilation=1, output_size=None):
    """Gradients of ``conv_transpose2d``: each stamp ``input[n, c, i, j] * weight[c]``
    sends back ``sum(grad_window * weight[c])`` to the input value and
    ``input[n, c, i, j] * grad_window`` to ``weight[c]``; ``grad_bias`` sums
    ``grad_output`` over N, H, W. Returns ``(grad_input, grad_weight, grad_bias)``.
    """
    unbatched = input.ndim == 3
    x = input[None] if unbatched else input
    dy = grad_output[None] if unbatched else grad_output
    n_img, in_channels, height, width = x.shape
    _, per_group, kh, kw = weight.shape
    stride = shapes.pair(stride, "stride")
    dilation = shapes.pair(dilation, "dilation")
    (top, bottom), (left, right) = shapes.padding2d(padding, (1, 1), (1, 1), (1, 1), (1, 1))
    full_h = max(dy.shape[2] + top + bottom, (height - 1) * stride[0] + dilation[0] * (kh - 1) + 1)
    full_w = max(dy.shape[3] + left + right, (width - 1) * stride[1] + dilation[1] * (kw - 1) + 1)
    grad_full = np.zeros((n_img, dy.shape[1], full_h, full_w), dy.dtype)
    grad_full[:, :, top : top + dy.shape[2], left : left + dy.shape[3]] = dy
    grad_input = np.zeros_like(x)
    grad_weight = np.zeros_like(weight)
    group_in = in_channels // groups
    for n in range(n_img):
        for c in range(in_channels):
            channels = slice((c // group_in) * per_group, (c // group_in + 1) * per_group)
            for i in range(height):
                for j in range(width):
                    rows, cols = _window(i, j, stride, dilation, (kh, kw))
                    window = grad_full[n, channels, rows, cols]
                    grad_input[n, c, i, j] = np.sum(window * weight[c])
                    grad_weight[c] += x[n, c, i, j] * window
    grad_bias = dy.sum(axis=(0, 2, 3))
    return (grad_input[0] if unbatched else grad_input), grad_weight, grad_bias
