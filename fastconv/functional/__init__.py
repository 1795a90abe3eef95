"""Public ops: normalise and validate the arguments, then dispatch to a kernel.

Everything a user passes is checked here, and errors name the argument, the
value received and the form expected; kernels see only C-contiguous arrays
and plain ints.
"""

from .conv import conv2d, conv2d_backward, conv_transpose2d, conv_transpose2d_backward
from .pool import (
    avg_pool2d,
    avg_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
    max_unpool2d,
    max_unpool2d_backward,
    repeat_unpool2d,
    repeat_unpool2d_backward,
)

__all__ = ["conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward",
           "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
           "max_unpool2d", "max_unpool2d_backward", "repeat_unpool2d", "repeat_unpool2d_backward"]
