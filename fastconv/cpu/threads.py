"""Numba's threading layer: TBB where the ``tbb`` wheel is installed.

Numba runs ``prange`` loops on one of three layers and, left to its default,
takes the first that loads of TBB, OpenMP and workqueue. fastconv depends on
the ``tbb`` wheel (where one is published: x86-64 Linux, Windows and macOS)
because TBB is the one layer that is both fork-safe and thread-safe:

- GNU OpenMP kills a forked child that runs a parallel kernel after its parent
  did (``Terminating: fork() called from a process already using GNU OpenMP``),
  which hangs ``multiprocessing``'s default fork pools and PyTorch's DataLoader
  workers;
- workqueue aborts when two Python threads launch kernels at once;
- OpenMP's idle threads spin, and beside PyTorch's own OpenMP pool the two
  spin against each other; TBB's workers go to sleep.

The wheel puts ``libtbb.so.12`` in the environment's ``lib/`` folder, which the
dynamic loader does not search, so Numba's plain ``dlopen("libtbb.so.12")``
fails and it silently falls back to OpenMP. :func:`load_tbb` loads the library
by its full path first; Numba's own choice then finds it. Nothing else is
changed: an explicit ``NUMBA_THREADING_LAYER`` still wins, and a process whose
Numba thread pool already started keeps its layer.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import sys

import numba
from numba.np.ufunc import parallel as _parallel

from .. import config, dispatch

_TBB_NAMES = {"linux": "libtbb.so.12", "win32": "tbb12.dll", "darwin": "libtbb.12.dylib"}


def load_tbb() -> str | None:
    """Load the ``tbb`` wheel's library so Numba can pick its TBB layer; the path
    loaded, or None where the wheel is absent (Numba then chooses as usual)."""
    name = _TBB_NAMES.get(sys.platform)
    if name is None:
        return None
    try:
        files = importlib.metadata.distribution("tbb").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == name:
            path = str(file.locate())
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                return None
            return path
    return None


def _after_fork_in_child() -> None:
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    if (config.PARALLEL and parallel is not None and parallel._is_initialized
            and sys.platform.startswith("linux") and parallel._threading_layer == "omp"):
        dispatch.BLOCKED["cpu"] = _fork_error


def _fork_error() -> RuntimeError:
    return RuntimeError(
        "fastconv cannot run CPU kernels in a process forked after its parent used Numba's "
        "GNU OpenMP threading layer (GNU OpenMP is not fork-safe; the kernel would kill this "
        "process). Install the 'tbb' package (fastconv's default dependency) and leave "
        "NUMBA_THREADING_LAYER unset or set it to 'tbb', or start workers with "
        "multiprocessing.get_context('spawn') or 'forkserver'."
    )


def count() -> int:
    """``numba.get_num_threads()`` without the lock it takes on every call (a kernel's
    host side asks on every call): once Numba's pool runs, its per-thread count is read
    directly."""
    if _parallel._is_initialized:
        return _parallel._get_num_threads()
    return numba.get_num_threads()


#: Most multiply-adds a convolution kernel runs without the thread pool: waking TBB's
#: sleeping workers takes longer than such a call (a 3x3 grad_weight on (1, 4, 8, 8):
#: 9.9 us on two threads, 5.2 us on one; 20 us when the workers had gone to sleep).
SERIAL_MAX_WORK = 1 << 16


def serial_if_small(kernel, chunks: int, out, depth: int):
    """``kernel``, or its serial twin when the call is one task or computes ``out`` (each
    value ``depth`` multiply-adds) in few multiply-adds: the thread pool would only be
    woken to wait."""
    return kernel.serial if chunks == 1 or out.size * depth <= SERIAL_MAX_WORK else kernel


load_tbb()
# In a child forked after the parent started GNU OpenMP, any parallel kernel would kill
# the process: the dispatcher raises a RuntimeError that says why instead.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
