"""The CUDA backend's kernel decorators and launch helpers, shared by every kernel
module (the GPU counterpart of :mod:`fastconv.cpu._jit`)."""

from __future__ import annotations

import contextlib
import threading
import warnings

import numba
import numpy as np
from numba import cuda
from numba.core.errors import NumbaPerformanceWarning

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


_local = threading.local()


def stream():
    """The stream kernels launch on: inside :meth:`fastconv.cuda.arrays.Cuda.active`,
    the current stream of the library that owns the arrays (PyTorch's, CuPy's), so
    that its work before and after is ordered with ours; else 0, the default stream."""
    return getattr(_local, "stream", 0)


@contextlib.contextmanager
def launching_on(new_stream):
    """Launch on ``new_stream`` (see :func:`stream`) inside the ``with`` block."""
    previous = stream()
    _local.stream = new_stream
    try:
        yield
    finally:
        _local.stream = previous


def configure(kernel, blocks: int, threads: int):
    """``kernel[blocks, threads, stream()]``, without numba-cuda's low-occupancy warning:
    small problems are small grids here on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaPerformanceWarning)
        return kernel[blocks, threads, stream()]


def launch(kernel, total):
    """``kernel`` configured for a grid-stride loop over ``total`` items (> 0):
    ``config.CUDA_THREADS`` per block, at most ``config.CUDA_MAX_BLOCKS`` blocks, on
    :func:`stream`."""
    threads = config.CUDA_THREADS
    return configure(kernel, min(-(-total // threads), config.CUDA_MAX_BLOCKS), threads)


def to_host(array):
    """``array`` copied to a numpy array once the work on :func:`stream` is done."""
    current = stream()
    host = array.copy_to_host(stream=current)
    if current:
        current.synchronize()
    return host


def from_host(target, host) -> None:
    """Copy the numpy array ``host`` into the device array ``target`` on :func:`stream`
    and wait for it (``host`` may be freed afterwards)."""
    current = stream()
    target.copy_to_device(host, stream=current)
    if current:
        current.synchronize()


def device_array(shape, dtype):
    """An uninitialised Numba device array (a kernel's workspace)."""
    return cuda.device_array(shape, dtype, stream=stream())


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
