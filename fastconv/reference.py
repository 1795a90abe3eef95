"""Slow, obviously correct loops: the executable specification of every op.

Each function follows the lecture's definition word for word, with Python
loops over output positions and numpy only for the multiply-and-sum over one
window. Every fast kernel is tested against these, and the benchmarks time
them as the "naive" baseline. Arguments take the same forms as the public
functions; validation is left to those.
"""

from __future__ import annotations

import numpy as np

from . import activations, shapes


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           activation=None):
    """2-D cross-correlation of ``input (N, C, H, W)`` or ``(C, H, W)`` with
    ``weight (K, C/groups, R, S)``, plus ``bias (K,)``, then ``activation``.

    For each output channel ``k``, position ``(i, j)`` and image ``n``: take the
    window of the zero-padded input that starts at ``(i * stride_h, j * stride_w)``
    with taps ``dilation`` apart, multiply it element-wise with ``weight[k]``
    over the channels of ``k``'s group, sum, and add ``bias[k]``; with
    ``activation="relu"``, replace a negative result by 0 (a NaN stays NaN).

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
    activations.apply(out, activations.check(activation))
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
            channels = slice((k // per_group) * group_channels,
                             (k // per_group + 1) * group_channels)
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
    """Transposed convolution of ``input (N, C_in, H, W)``
    with ``weight (C_in, C_out/groups, R, S)``.

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


# --- pooling and unpooling ----------------------------------------------------------


def _planes(array):
    """``(N, C, H, W)`` or ``(C, H, W)`` as ``(N, C, H, W)``, and whether it was unbatched."""
    return (array[None], True) if array.ndim == 3 else (array, False)


def _pool_axes(size, kernel_size, stride, padding, dilation, ceil_mode):
    """Per axis: ``(kernel, stride, pad, dilation, out)``, with ``stride=None`` (or ``()``)
    meaning ``kernel_size``; with ``ceil_mode`` a window may overhang the padded input by
    less than ``stride`` (:func:`fastconv.shapes.output_length`)."""
    kernel = shapes.pair(kernel_size, "kernel_size")
    stride = shapes.pool_stride(stride, kernel)
    pad = shapes.pair(padding, "padding", minimum=0)
    dilation = shapes.pair(dilation, "dilation")
    return [
        (kernel[a], stride[a], pad[a], dilation[a],
         shapes.output_length(size[a], kernel[a], stride[a], (pad[a], pad[a]), dilation[a],
                              ceil_mode))
        for a in range(2)
    ]


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """The maximum of each window of ``input (N, C, H, W)`` or ``(C, H, W)``.

    Window ``(i, j)`` has taps ``(i * stride_h + r * dilation_h - pad_h,
    j * stride_w + s * dilation_w - pad_w)``; taps in the padding are left out
    (as if the padding were -inf). The taps are read row by row and a tap
    replaces the best so far when it is larger or NaN: ties keep the first
    maximum, a NaN wins (the last NaN, as in PyTorch). With ``return_indices``
    also returns where each maximum came from, as the flat position ``h * W + w``
    within its ``H x W`` plane (int64).

    >>> x = np.array([[[1., 0, 1, 0], [2, 1, 3, 2], [1, 2, 0, 4], [2, 2, 3, 0]]])
    >>> max_pool2d(x, 2, stride=1).tolist()
    [[[2.0, 3.0, 3.0], [2.0, 3.0, 4.0], [2.0, 3.0, 4.0]]]
    >>> max_pool2d(x, 2).tolist()
    [[[2.0, 3.0], [2.0, 4.0]]]
    """
    x, unbatched = _planes(input)
    n_img, channels, height, width = x.shape
    (kh, sh, ph, dh, out_h), (kw, sw, pw, dw, out_w) = _pool_axes(
        (height, width), kernel_size, stride, padding, dilation, ceil_mode)
    out = np.empty((n_img, channels, out_h, out_w), x.dtype)
    indices = np.empty(out.shape, np.int64)
    for n in range(n_img):
        for c in range(channels):
            for i in range(out_h):
                for j in range(out_w):
                    best, where = -np.inf, None
                    for r in range(kh):
                        for s in range(kw):
                            h = i * sh + r * dh - ph
                            w = j * sw + s * dw - pw
                            if not (0 <= h < height and 0 <= w < width):
                                continue
                            if where is None:
                                where = h * width + w
                            value = x[n, c, h, w]
                            if value > best or np.isnan(value):
                                best, where = value, h * width + w
                    out[n, c, i, j] = best
                    indices[n, c, i, j] = where
    if unbatched:
        out, indices = out[0], indices[0]
    return (out, indices) if return_indices else out


def max_pool2d_backward(grad_output, indices, input_shape):
    """Gradient of :func:`max_pool2d`: each window's gradient goes to the input
    position its maximum came from (``indices``); positions that are the
    maximum of several windows add up, all others get 0."""
    dy, unbatched = _planes(grad_output)
    where, _ = _planes(indices)
    shape = tuple(input_shape)
    grad_input = np.zeros((1, *shape) if unbatched else shape, dy.dtype)
    width = grad_input.shape[3]
    for n, c, i, j in np.ndindex(*dy.shape):
        h, w = divmod(int(where[n, c, i, j]), width)
        grad_input[n, c, h, w] += dy[n, c, i, j]
    return grad_input[0] if unbatched else grad_input


def _avg_windows(size, kernel_size, stride, padding, ceil_mode, count_include_pad,
                 divisor_override):
    """Yield ``(i, j, rows, cols, divisor)`` for every window of an avg-pool over an
    input of ``size``: the window's rows and columns inside the input and its divisor.

    PyTorch's divisor: ``divisor_override`` if given (any non-zero int); else the window
    clipped to the padded input (``count_include_pad``), whose last rows or columns may run past
    the padding in ``ceil_mode``; else the number of its taps inside the input."""
    height, width = size
    (kh, sh, ph, _, out_h), (kw, sw, pw, _, out_w) = _pool_axes(
        size, kernel_size, stride, padding, 1, ceil_mode)
    for i in range(out_h):
        for j in range(out_w):
            top, left = i * sh - ph, j * sw - pw
            bottom, right = min(top + kh, height + ph), min(left + kw, width + pw)
            rows = range(max(top, 0), min(bottom, height))
            cols = range(max(left, 0), min(right, width))
            if divisor_override is not None:
                divisor = divisor_override
            elif count_include_pad:
                divisor = (bottom - top) * (right - left)
            else:
                divisor = len(rows) * len(cols)
            yield i, j, rows, cols, divisor


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """The average of each window of ``input (N, C, H, W)`` or ``(C, H, W)``: the sum of
    its taps inside the input over the divisor of :func:`_avg_windows`.

    >>> x = np.array([[[1., 0, 1, 0], [2, 1, 3, 2], [1, 2, 0, 4], [2, 2, 3, 0]]])
    >>> avg_pool2d(x, 2).tolist()
    [[[1.0, 1.5], [1.75, 1.75]]]
    """
    x, unbatched = _planes(input)
    n_img, channels, height, width = x.shape
    windows = list(_avg_windows((height, width), kernel_size, stride, padding, ceil_mode,
                                count_include_pad, divisor_override))
    out_h, out_w = windows[-1][0] + 1, windows[-1][1] + 1
    out = np.empty((n_img, channels, out_h, out_w), x.dtype)
    for i, j, rows, cols, divisor in windows:
        window = x[:, :, rows.start : rows.stop, cols.start : cols.stop]
        out[:, :, i, j] = window.sum(axis=(2, 3)) / divisor
    return out[0] if unbatched else out


def avg_pool2d_backward(grad_output, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None):
    """Gradient of :func:`avg_pool2d`: each window sends ``grad / divisor`` to every one of
    its taps inside the input; overlapping windows add up."""
    dy, unbatched = _planes(grad_output)
    shape = tuple(input_shape)
    grad_input = np.zeros((1, *shape) if unbatched else shape, dy.dtype)
    for i, j, rows, cols, divisor in _avg_windows(grad_input.shape[2:], kernel_size, stride,
                                                  padding, ceil_mode, count_include_pad,
                                                  divisor_override):
        grad_input[:, :, rows.start : rows.stop, cols.start : cols.stop] += (
            dy[:, :, i, j, None, None] / divisor)
    return grad_input[0] if unbatched else grad_input


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Unpooling: put each value back at the position its maximum was taken from
    (``indices``, flat ``h * W + w``) in a zero plane of the pooled input's size,
    ``(H - 1) * stride - 2 * pad + kernel_size`` by default or ``output_size[-2:]``.
    Values are placed in row-major order, so of equal indices in one plane the value of
    the last stays (fastconv's rule; PyTorch promises no order).

    >>> x = np.array([[[1., 0, 1, 0], [2, 1, 3, 2], [1, 2, 0, 4], [2, 2, 3, 0]]])
    >>> pooled, where = max_pool2d(x, 2, return_indices=True)
    >>> max_unpool2d(pooled, where, 2).tolist()
    [[[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 3.0, 0.0], [0.0, 2.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]]]
    """
    x, unbatched = _planes(input)
    where, _ = _planes(indices)
    n_img, channels, height, width = x.shape
    if output_size is not None:
        out_h, out_w = output_size[-2:]
    else:
        # the loops also take (v,) for kernel_size, stride and padding
        kernel = shapes.pair(kernel_size, "kernel_size")
        step = None if stride is None else shapes.pair(stride, "stride")
        pad = shapes.pair(padding, "padding", minimum=0)
        out_h, out_w = shapes.unpool_output_size((height, width), kernel, step, pad)
    out = np.zeros((n_img, channels, out_h, out_w), x.dtype)
    for n, c, i, j in np.ndindex(*x.shape):
        h, w = divmod(int(where[n, c, i, j]), out_w)
        out[n, c, h, w] = x[n, c, i, j]
    return out[0] if unbatched else out


def max_unpool2d_backward(grad_output, indices):
    """Gradient of :func:`max_unpool2d`: each input value reads the gradient at the
    position it was placed at (a gather)."""
    dy, unbatched = _planes(grad_output)
    where, _ = _planes(indices)
    grad_input = np.empty(where.shape, dy.dtype)
    out_w = dy.shape[3]
    for n, c, i, j in np.ndindex(*where.shape):
        h, w = divmod(int(where[n, c, i, j]), out_w)
        grad_input[n, c, i, j] = dy[n, c, h, w]
    return grad_input[0] if unbatched else grad_input


def repeat_unpool2d(input, scale):
    """Unpooling by simple repetition: each value is copied into a ``scale_h x scale_w``
    block (nearest-neighbour upsampling by an integer factor).

    >>> repeat_unpool2d(np.array([[[1., 2.], [3., 4.]]]), 2).tolist()
    [[[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0], [3.0, 3.0, 4.0, 4.0], [3.0, 3.0, 4.0, 4.0]]]
    """
    x, unbatched = _planes(input)
    sh, sw = shapes.pair(scale, "scale")
    n_img, channels, height, width = x.shape
    out = np.empty((n_img, channels, height * sh, width * sw), x.dtype)
    for i in range(height):
        for j in range(width):
            out[:, :, i * sh : (i + 1) * sh, j * sw : (j + 1) * sw] = x[:, :, i, j, None, None]
    return out[0] if unbatched else out


def repeat_unpool2d_backward(grad_output, scale):
    """Gradient of :func:`repeat_unpool2d`: each value's gradient is the sum over its block."""
    dy, unbatched = _planes(grad_output)
    sh, sw = shapes.pair(scale, "scale")
    n_img, channels, out_h, out_w = dy.shape
    grad_input = np.empty((n_img, channels, out_h // sh, out_w // sw), dy.dtype)
    for i in range(out_h // sh):
        for j in range(out_w // sw):
            block = dy[:, :, i * sh : (i + 1) * sh, j * sw : (j + 1) * sw]
            grad_input[:, :, i, j] = block.sum(axis=(2, 3))
    return grad_input[0] if unbatched else grad_input
