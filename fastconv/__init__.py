"""fastconv: fast convolution and pooling kernels for numpy arrays, written with Numba.

The ops follow ``torch.nn.functional`` (NCHW input, OIHW weights)::

    import numpy as np, fastconv
    y = fastconv.conv2d(x, w, b, stride=1, padding=1)
"""

from .dispatch import available_algorithms
from .explain import explain
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
from .shapes import Padding, conv_output_size, receptive_field
from .tune import autotune_enabled, set_autotune
from .warmup import warmup, warmup_backward

__version__ = "0.1.0"


def clear_plans() -> int:
    """Forget every cached plan (see :mod:`fastconv.plans`) and return how many there were.

    Plans remember what a call checked and which algorithm ``auto`` chose, so
    the next call with the same shapes and arguments runs at once. Call this
    after changing a ``fastconv.config.AUTO_*`` threshold by hand, or to free
    the memory of many plans; registering a kernel or chooser does it for you.

    >>> import fastconv
    >>> _ = fastconv.clear_plans()
    >>> fastconv.clear_plans()
    0
    """
    from . import plans

    return plans.clear()


def release_workspace() -> int:
    """Free the scratch buffers that CPU kernels keep for reuse between calls and the
    prepared weights (Winograd's transformed filters), those of every thread, and
    return how many bytes were kept.

    Kernels keep at most ``FASTCONV_WORKSPACE_KEEP_BYTES`` (64 MiB by default, see
    :mod:`fastconv.config`) of scratch between calls, all threads together, and
    each thread at most ``FASTCONV_PREPARED_WEIGHTS_BYTES`` (64 MiB) of prepared
    weights; the next call after a release allocates and prepares afresh. Safe to
    call from any thread at any time: a call running meanwhile keeps its buffers
    until it returns.

    >>> import fastconv
    >>> _ = fastconv.release_workspace()
    >>> fastconv.release_workspace()
    0
    """
    import sys

    # nothing is kept before the CPU backend is loaded, and loading it imports Numba
    freed = 0
    for name in ("fastconv.cpu.workspace", "fastconv.cpu.prepared"):
        module = sys.modules.get(name)
        freed += 0 if module is None else module.release()
    return freed


__all__ = [
    "available_algorithms",
    "explain",
    "clear_plans",
    "set_autotune",
    "autotune_enabled",
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
    "Padding",
    "warmup",
    "warmup_backward",
    "release_workspace",
    "__version__",
]
