"""Numba's threading layer: TBB where the ``tbb`` wheel is installed, PyTorch's
OpenMP pool beside PyTorch.

Numba runs ``prange`` loops on one of three layers and, left to its default,
takes the first that loads of TBB, OpenMP and workqueue. fastconv depends on
the ``tbb`` wheel (where one is published: x86-64 Linux, Windows and macOS)
because TBB is the one layer that is both fork-safe and thread-safe:

- GNU OpenMP kills a forked child that runs a parallel kernel after its parent
  did (``Terminating: fork() called from a process already using GNU OpenMP``),
  which hangs ``multiprocessing``'s default fork pools and PyTorch's DataLoader
  workers;
- workqueue aborts when two Python threads launch kernels at once.

The wheel puts ``libtbb.so.12`` in the environment's ``lib/`` folder, which the
dynamic loader does not search, so Numba's plain ``dlopen("libtbb.so.12")``
fails and it silently falls back to OpenMP. :func:`load_tbb` loads the library
by its full path first; Numba's own choice then finds it.

Beside PyTorch, two pools on the same cores fight: after each parallel op,
PyTorch's GNU OpenMP workers spin for milliseconds waiting for the next one, and
a fastconv kernel running then shares its cores with them (a training step
through ``fastconv.torch`` ran at half speed). :func:`share_torch_pool`, called
when ``fastconv.torch`` is imported, starts Numba's OpenMP layer on the OpenMP
runtime PyTorch loaded, so both libraries run on one pool of threads: the
spinning workers pick up fastconv's loops. It restores the two OpenMP settings
Numba's start changes (the thread count and nesting), so PyTorch's settings stay
as they were.

GNU OpenMP is not fork-safe, so in a child forked after its parent ran Numba's
OpenMP layer (shared with PyTorch or asked for with ``NUMBA_THREADING_LAYER``),
fastconv runs the serial twins of its kernels (:func:`fastconv.cpu._jit.run_serial_twins`):
such workers compute on one thread each, as PyTorch's DataLoader workers do.

An explicit ``NUMBA_THREADING_LAYER`` always wins, and a process whose Numba
thread pool already started keeps its layer.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import os
import sys

import numba
from numba.np.ufunc import parallel as _parallel

from .. import config
from . import _jit

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
            and parallel._threading_layer == "omp"):
        _jit.run_serial_twins()


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _global_provider(symbol: str) -> str | None:
    """The file of the library that gives ``symbol`` to a library loaded from now on
    (the first in the process's global scope), or None where none does."""
    process = ctypes.CDLL(None)
    try:
        address = ctypes.cast(getattr(process, symbol), ctypes.c_void_p).value
        dladdr = process.dladdr
    except AttributeError:
        return None
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    info = _DlInfo()
    if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.path.realpath(os.fsdecode(info.dli_fname))


def share_torch_pool() -> bool:
    """Start Numba's OpenMP layer on the GNU OpenMP runtime PyTorch loaded, so that
    fastconv's parallel loops run on PyTorch's thread pool; whether Numba now does.

    Only on Linux, where PyTorch's parallel backend is OpenMP with the libgomp of its
    own wheel (in ``torch/lib``, loaded into the global scope by ``import torch``),
    where Numba's OpenMP layer loads, when Numba's pool has not started and
    ``NUMBA_THREADING_LAYER`` is not set; otherwise nothing changes (TBB stays)."""
    torch = sys.modules.get("torch")
    if (torch is None or not config.PARALLEL or _parallel._is_initialized
            or not sys.platform.startswith("linux") or "NUMBA_THREADING_LAYER" in os.environ
            or numba.config.THREADING_LAYER != "default"):
        return False
    try:
        if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
            return False
        provider = _global_provider("GOMP_parallel")
        if provider is None or torch.__file__ is None:
            return False
        torch_lib = os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "lib"))
        if os.path.dirname(provider) != torch_lib:
            return False
        importlib.import_module("numba.np.ufunc.omppool")  # loads (its libgomp is there)
    except (ImportError, OSError, AttributeError):
        return False
    process = ctypes.CDLL(None)  # omp_* resolve to PyTorch's libgomp, as GOMP_parallel did
    threads, nested = torch.get_num_threads(), process.omp_get_nested()
    levels = process.omp_get_max_active_levels()
    numba.config.THREADING_LAYER = "omp"
    try:
        _parallel._launch_threads()  # sets the OpenMP thread count and nesting: restored below
    except (ValueError, ImportError, OSError):
        numba.config.THREADING_LAYER = "default"
        return False
    finally:
        process.omp_set_nested(nested)
        process.omp_set_max_active_levels(levels)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return numba.threading_layer() == "omp"


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
# the process: the child runs the serial twins instead.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
