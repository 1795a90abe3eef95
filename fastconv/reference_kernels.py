"""The reference loops of :mod:`fastconv.reference` with the kernels' signatures.

Each function here takes an op's kernel arguments (:mod:`fastconv.ops`: the
arrays, outputs included, then the plain parameters) and writes its outputs,
as a compiled kernel does; this is ``algorithm="reference"`` on every device
(the CUDA backend runs them on host copies). The ops that check their indices
return the flat position of the first bad one, or -1, as the kernels do.

This module imports numpy and :mod:`fastconv.reference`
only: no Numba.
"""

from __future__ import annotations

import numpy as np

from . import reference


def conv2d(x, weight, bias, out, stride, padding, dilation, groups, activation=None):
    out[...] = reference.conv2d(x, weight, bias, stride, padding, dilation, groups,
                                activation=activation)


def conv2d_grad_input(grad_out, weight, grad_in, stride, padding, dilation, groups):
    zeros = np.zeros(grad_in.shape, grad_in.dtype)
    grad_in[...] = reference.conv2d_backward(grad_out, zeros, weight, stride, padding, dilation,
                                             groups)[0]


def conv2d_grad_weight(x, grad_out, grad_weight, stride, padding, dilation, groups):
    zeros = np.zeros(grad_weight.shape, grad_weight.dtype)
    grad_weight[...] = reference.conv2d_backward(grad_out, x, zeros, stride, padding, dilation,
                                                 groups)[1]


def conv2d_grad_bias(grad_out, grad_bias):
    grad_bias[...] = grad_out.sum(axis=(0, 2, 3))  # as fastconv.reference.conv2d_backward


def _first_bad(indices, plane_size):
    """Flat position of the first index outside ``[0, plane_size)``, or -1: the report the
    direct kernels make, for the reference loops, which assume valid indices."""
    bad = np.flatnonzero((indices < 0) | (indices >= plane_size))
    return int(bad[0]) if bad.size else -1


def max_pool2d(x, out, indices, kernel_size, stride, padding, dilation, ceil_mode):
    out[...], where = reference.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode,
                                           return_indices=True)
    if indices is not None:
        indices[...] = where


def max_pool2d_backward(grad_out, indices, grad_in):
    bad = _first_bad(indices, grad_in.shape[2] * grad_in.shape[3])
    if bad < 0:
        grad_in[...] = reference.max_pool2d_backward(grad_out, indices, grad_in.shape)
    return bad


def avg_pool2d(x, out, kernel_size, stride, padding, ceil_mode, count_include_pad,
               divisor_override):
    out[...] = reference.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                    divisor_override)


def avg_pool2d_backward(grad_out, grad_in, kernel_size, stride, padding, ceil_mode,
                        count_include_pad, divisor_override):
    grad_in[...] = reference.avg_pool2d_backward(grad_out, grad_in.shape, kernel_size, stride,
                                                 padding, ceil_mode, count_include_pad,
                                                 divisor_override)


def max_unpool2d(x, indices, out):
    bad = _first_bad(indices, out.shape[2] * out.shape[3])
    if bad < 0:
        out[...] = reference.max_unpool2d(x, indices, 1, output_size=out.shape)
    return bad


def max_unpool2d_backward(grad_out, indices, grad_in):
    bad = _first_bad(indices, grad_out.shape[2] * grad_out.shape[3])
    if bad < 0:
        grad_in[...] = reference.max_unpool2d_backward(grad_out, indices)
    return bad


def repeat_unpool2d(x, out, scale):
    out[...] = reference.repeat_unpool2d(x, scale)


def repeat_unpool2d_backward(grad_out, grad_in, scale):
    grad_in[...] = reference.repeat_unpool2d_backward(grad_out, scale)
