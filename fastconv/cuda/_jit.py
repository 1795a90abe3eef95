"""The CUDA backend's kernel decorators and launch helpers, shared by every kernel
module (the GPU counterpart of :mod:`fastconv.cpu._jit`)."""

from __future__ import annotations

import numba
import numpy as np
from numba import cuda

from .. import config
from . import simulated


def jit(function=None, *, launch_bounds=None):
    """``cuda.jit`` with fastconv's flags: compiled lazily per argument types, cached on
    disk (``config.CACHE``). No fastmath: it would assume no NaN (max-pool's NaN rule)
    and approximate the divisions that avg-pool shares with the CPU bit for bit.
    ``launch_bounds`` (ignored by the simulator) caps registers for a block size."""
    if function is None:
        return lambda f: jit(f, launch_bounds=launch_bounds)
    options = {} if simulated() or launch_bounds is None else {"launch_bounds": launch_bounds}
    return cuda.jit(cache=config.CACHE, **options)(function)


def launch(kernel, total):
    """``kernel`` configured for a grid-stride loop over ``total`` items (> 0):
    ``config.CUDA_THREADS`` per block, at most ``config.CUDA_MAX_BLOCKS`` blocks."""
    threads = config.CUDA_THREADS
    return kernel[min(-(-total // threads), config.CUDA_MAX_BLOCKS), threads]


def flat(array):
    """A C-contiguous device array as a 1-D view."""
    return array.reshape(array.size)


def scalar_type(dtype):
    """The Numba scalar type of ``dtype``: typed constants, casts and shared arrays."""
    return numba.from_dtype(np.dtype(dtype))


def device_function(function):
    """``cuda.jit(device=True)``, inlined into its callers (the simulator takes no
    ``forceinline``)."""
    return cuda.jit(device=True, **({} if simulated() else {"forceinline": True}))(function)


@device_function
def unravel(e, height, width):
    """``(p, i, j)`` with ``e = (p * height + i) * width + j``: a flat index of ``width``-fastest
    (coalesced) work as a plane or leading index and a position in the plane."""
    t = e // width
    return t // height, t % height, e - t * width


@jit
def fill(array, value):
    """array[:] = value (``value`` of the array's type)."""
    for e in range(cuda.grid(1), array.size, cuda.gridsize(1)):
        array[e] = value
