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
