"""The optional CUDA backend: every op on the GPU through ``numba.cuda``.

Install it with ``pip install 'fastconv[cuda]'`` (numba-cuda with the CUDA 12
runtime wheels). Nothing here runs GPU code or imports ``numba.cuda`` until a
function is called, so ``import fastconv.cuda`` is safe on any machine.

An op runs on the GPU when its array arguments live there (anything with
``__cuda_array_interface__``: Numba device arrays, CuPy arrays, PyTorch CUDA
tensors), or when it is called with ``device="cuda"``.

With ``NUMBA_ENABLE_CUDASIM=1`` in the environment, Numba's CUDA simulator
stands in for a GPU: the kernels run, slowly, as Python on the CPU. The test
suite uses it on machines without a GPU.
"""

from __future__ import annotations

import os


def simulated() -> bool:
    """Whether ``numba.cuda`` is Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")


def _numba_cuda():
    """``numba.cuda``, or None when it cannot be imported."""
    try:
        from numba import cuda
    except Exception:  # noqa: BLE001 - any import failure means "no CUDA"
        return None
    return cuda


def is_available() -> bool:
    """Whether the CUDA backend can run: ``numba.cuda`` imports and finds a GPU (or the
    simulator is on).

    >>> isinstance(is_available(), bool)
    True
    """
    cuda = _numba_cuda()
    if cuda is None:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken driver is "not available"
        return False


def devices() -> list[str]:
    """One line per GPU the CUDA backend sees (``[]`` without one), e.g.
    ``"cuda:0 NVIDIA H100 80GB HBM3 (compute capability 9.0)"``.

    >>> isinstance(devices(), list)
    True
    """
    if not is_available():
        return []
    cuda = _numba_cuda()
    if simulated():
        return ["cuda:0 Numba CUDA simulator (no GPU: kernels run as Python on the CPU)"]
    lines = []
    for index, gpu in enumerate(cuda.gpus):
        with gpu:
            device = cuda.get_current_device()
            name = device.name.decode() if isinstance(device.name, bytes) else device.name
            major, minor = device.compute_capability
            lines.append(f"cuda:{index} {name} (compute capability {major}.{minor})")
    return lines
