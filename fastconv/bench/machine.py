"""What a timing depends on: CPU, threads, versions, BLAS, JIT cache, allocator and,
for a GPU run, the GPUs (:func:`machine_info`)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path

import numpy as np

import fastconv

from .. import config
from ..tune import cpu_model as _cpu_model
from .timing import allocator


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _numba_cache() -> str:
    import numba

    if not config.CACHE:
        return "off (FASTCONV_CACHE)"
    if numba.config.CACHE_DIR:
        return f"on, in NUMBA_CACHE_DIR={numba.config.CACHE_DIR}"
    here = Path(__file__).resolve().parents[1] / "cpu" / "__pycache__"
    if os.access(here.parent, os.W_OK):
        return f"on, next to the sources ({here})"
    return "on, in numba's per-user cache directory (the sources are read-only)"


def machine_info(device: str = "cpu") -> dict[str, object]:
    """CPU, threads, versions, BLAS and allocator: what a timing depends on; with
    ``device="cuda"`` also the GPUs (``gpus``, :func:`fastconv.cuda.devices`)."""
    import numba

    from ..cpu import blas

    try:
        threading_layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        threading_layer = "not started yet"
    torch = sys.modules.get("torch")
    info: dict[str, object] = {
        "device": device,
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "fastconv": fastconv.__version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
        "llvmlite": _version("llvmlite"),
        "torch": _version("torch"),
        "numba_threads": numba.get_num_threads(),
        "threading_layer": threading_layer,
        "threading_layer_requested": numba.config.THREADING_LAYER,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "blas": blas.SOURCE,
        "numba_cache": _numba_cache(),
        "allocator": allocator(),
    }
    if device == "cuda":
        from .. import cuda

        info["gpus"] = cuda.devices()
        info["numba_cuda"] = _version("numba-cuda")
    return info
