"""GEMM callable from inside Numba kernels, from numpy's own OpenBLAS.

Kernels call ``gemm`` inside their parallel loop on a tile that is still in
cache, with BLAS held to one thread on that worker: calling a multi-threaded
GEMM between parallel Numba regions makes the two thread pools spin against
each other on few cores (benchmarks/RESULTS.md, "Measurements behind the
design", 2).

numpy wheels ship OpenBLAS with CBLAS symbols; we look them up with ctypes and
hand the function pointers to the kernels as arguments, which keeps the
kernels cacheable. Where numpy was built against another BLAS (Accelerate,
MKL) the lookup fails and a plain Numba GEMM with the same C signature stands
in: slower, same results.

The C signature (row-major CBLAS)::

    gemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os

import numpy as np
from numba import carray, cfunc, types

from .. import config
from ._jit import disk_cache, kernel

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

_INT = ctypes.c_int64
_FLOAT_TYPES = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}


def _prototype(real):
    return ctypes.CFUNCTYPE(
        None, ctypes.c_int, ctypes.c_int, ctypes.c_int, _INT, _INT, _INT,
        real, ctypes.c_void_p, _INT, ctypes.c_void_p, _INT, real, ctypes.c_void_p, _INT,
    )


_THREADS_PROTOTYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)

# (prefix, suffix) of the 64-bit-integer CBLAS symbols in numpy's wheels:
# numpy 2 bundles scipy-openblas64, numpy 1.x bundled openblas64_.
_SYMBOLS = (("scipy_cblas_", "64_"), ("cblas_", "64_"))
_THREAD_SYMBOLS = ("openblas_set_num_threads_local", "scipy_openblas_set_num_threads_local64_")


def _numpy_openblas():
    root = os.path.dirname(np.__file__)
    patterns = [
        os.path.join(root + ".libs", "*openblas*"),
        os.path.join(root, ".libs", "*openblas*"),
        os.path.join(root, ".dylibs", "*openblas*"),
    ]
    for path in sorted(p for pattern in patterns for p in glob.glob(pattern)):
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in _SYMBOLS:
            if (hasattr(library, f"{prefix}sgemm{suffix}")
                    and hasattr(library, f"{prefix}dgemm{suffix}")):
                return library, prefix, suffix
    return None


@functools.cache
def fallback_gemm_for(dtype: np.dtype):
    """A plain-loop GEMM with the CBLAS signature, for numpy builds without OpenBLAS."""
    dtype = np.dtype(dtype)
    real = types.float32 if dtype == np.float32 else types.float64
    ptr = types.CPointer(real)
    signature = types.void(
        types.int32, types.int32, types.int32, types.int64, types.int64, types.int64,
        real, ptr, types.int64, ptr, types.int64, real, ptr, types.int64,
    )

    @cfunc(signature, cache=disk_cache(), fastmath=set(config.FASTMATH))
    def gemm(order, trans_a, trans_b, m, n, k, alpha, a_ptr, lda, b_ptr, ldb, beta, c_ptr, ldc):
        a = carray(a_ptr, (m * lda if trans_a == NO_TRANS else k * lda,))
        b = carray(b_ptr, (k * ldb if trans_b == NO_TRANS else n * ldb,))
        c = carray(c_ptr, (m * ldc,))
        for i in range(m):
            row = c[i * ldc : i * ldc + n]
            for j in range(n):
                row[j] = row[j] * beta if beta != 0 else 0
            for p in range(k):
                a_ip = alpha * (a[i * lda + p] if trans_a == NO_TRANS else a[p * lda + i])
                if trans_b == NO_TRANS:
                    b_row = b[p * ldb : p * ldb + n]
                    for j in range(n):
                        row[j] += a_ip * b_row[j]
                else:
                    for j in range(n):
                        row[j] += a_ip * b[j * ldb + p]

    pointer = _prototype(_FLOAT_TYPES[dtype])(gemm.address)
    pointer.compiled = gemm  # the machine code lives as long as the cfunc object
    return pointer


def _load():
    found = _numpy_openblas()
    gemms = {}
    set_threads = None
    if found is not None:
        library, prefix, suffix = found
        for dtype, real in _FLOAT_TYPES.items():
            letter = "s" if dtype == np.float32 else "d"
            gemms[dtype] = _prototype(real)((f"{prefix}{letter}gemm{suffix}", library))
        for name in _THREAD_SYMBOLS:
            if hasattr(library, name):
                set_threads = _THREADS_PROTOTYPE((name, library))
                break
        source = f"numpy's OpenBLAS ({prefix}*gemm{suffix})"
    else:
        for dtype in _FLOAT_TYPES:
            gemms[dtype] = fallback_gemm_for(dtype)
        source = "fastconv's fallback loops (numpy has no OpenBLAS)"
    if set_threads is None:

        @cfunc(types.int32(types.int32), cache=disk_cache())
        def _keep_threads(n):
            return 0

        set_threads = _THREADS_PROTOTYPE(_keep_threads.address)
        set_threads.compiled = _keep_threads
    return gemms, set_threads, source


_GEMMS, SET_THREADS_LOCAL, SOURCE = _load()


@kernel()
def pointer(array, offset):
    """Address of ``array.flat[offset]`` for a C-contiguous ``array``, to pass to ``gemm``."""
    return array.ctypes.data + np.uint64(offset * array.itemsize)


def gemm_for(dtype: np.dtype):
    """The row-major CBLAS GEMM function pointer for ``dtype`` (float32 or float64)."""
    return _GEMMS[np.dtype(dtype)]
