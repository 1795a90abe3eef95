"""Public ops: normalise and validate the arguments, then dispatch to a kernel.

Everything a user passes is checked here, and errors name the argument, the
value received and the form expected; kernels see only C-contiguous arrays
and plain ints.
"""

from .conv import conv2d, conv2d_backward, conv_transpose2d, conv_transpose2d_backward

__all__ = ["conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward"]
