"""fastconv: fast convolution and pooling kernels for numpy arrays, written with Numba.

The ops follow ``torch.nn.functional`` (NCHW input, OIHW weights)::

    import numpy as np, fastconv
    y = fastconv.conv2d(x, w, b, stride=1, padding=1)
"""

from .dispatch import available_algorithms
from .functional import (
    avg_pool2d,
    avg_pool2d_backward,
    conv2d,
    conv2d_backward,
    conv_transpose2d,
    conv_transpose2d_backward,
    max_pool2d,
    max_pool2d_backward,
    max_unpool2d,
    max_unpool2d_backward,
    repeat_unpool2d,
    repeat_unpool2d_backward,
)
from .shapes import conv_output_size, receptive_field
from .warmup import warmup

__version__ = "0.1.0"

__all__ = [
    "available_algorithms",
    "conv2d",
    "conv2d_backward",
    "conv_transpose2d",
    "conv_transpose2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "max_unpool2d",
    "max_unpool2d_backward",
    "repeat_unpool2d",
    "repeat_unpool2d_backward",
    "conv_output_size",
    "receptive_field",
    "warmup",
    "__version__",
]
