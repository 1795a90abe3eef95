"""Where an op runs, and how it makes and hands back arrays there.

This module sits below :mod:`fastconv.functional` and :mod:`fastconv.cuda`: both
import it, it imports neither at module level (the GPU's placement is imported
when a call asks for the GPU).

Every public op starts with :func:`placement`, which looks at its array
arguments and its ``device=`` keyword:

- ``device=None`` (the default) follows the data: arrays that expose
  ``__cuda_array_interface__`` (Numba device arrays, CuPy arrays, PyTorch CUDA
  tensors) run on the GPU, numpy arrays (and anything ``np.asarray`` takes) on
  the CPU. A mix of the two is a ValueError: nothing is copied behind the
  user's back.
- ``device="cpu"`` runs on the CPU; a GPU array is then a ValueError.
- ``device="cuda"`` (or ``"cuda:N"``) runs on the GPU; host arguments are
  copied there, and the result comes back to the host when the input was a
  host array.

The op then does all its array work through the returned placement
(:class:`Host` here, :class:`fastconv.cuda.arrays.Cuda` on the GPU): it
converts and checks the arguments, allocates outputs, and hands the result
back in the kind of array the user passed in.
"""

from __future__ import annotations

import contextlib
import re
import sys
from typing import Any

import numpy as np

from ._checks import as_float_array, check_out, check_same_dtype, index_dtype_error


def is_device_array(value: object) -> bool:
    """Whether ``value`` lives on a GPU: it exposes ``__cuda_array_interface__`` (PyTorch
    CUDA tensors are asked with ``is_cuda``, since the interface refuses tensors that
    require grad), or it is a device array of Numba's CUDA simulator."""
    if type(value).__module__.partition(".")[0] == "torch":
        return bool(getattr(value, "is_cuda", False))
    try:
        if hasattr(value, "__cuda_array_interface__"):
            return True
    except Exception:  # noqa: BLE001 - an interface that raises still means "on a GPU"
        return True
    simulator = sys.modules.get("numba.cuda.simulator.cudadrv.devicearray")
    return simulator is not None and isinstance(value, simulator.FakeCUDAArray)


def _describe(value: object) -> str:
    kind = type(value)
    return f"{kind.__module__.partition('.')[0]}.{kind.__name__}"


_DEVICE_FORM = "device must be None (follow the data), 'cpu', 'cuda' or 'cuda:N'"


def placement(device: object, **arrays: object) -> Host:
    """The placement of an op called with ``device`` on ``arrays`` (None ones are left
    out of the decision). Raises ValueError for a bad ``device`` or mixed host and GPU
    arrays, RuntimeError when the GPU is asked for but the CUDA backend is not usable."""
    gpu_index = None
    if device is not None:
        if not isinstance(device, str):
            raise TypeError(f"{_DEVICE_FORM}, got {device!r}")
        match = re.fullmatch(r"cuda(?::(\d+))?", device)
        if device != "cpu" and match is None:
            raise ValueError(f"{_DEVICE_FORM}, got {device!r}")
        if match is not None and match.group(1) is not None:
            gpu_index = int(match.group(1))
    given = {name: value for name, value in arrays.items() if value is not None}
    on_gpu = [name for name, value in given.items() if is_device_array(value)]
    on_host = [name for name in given if name not in on_gpu]
    if device == "cpu":
        if on_gpu:
            name = on_gpu[0]
            raise ValueError(
                f"device='cpu' but {name} is a GPU array ({_describe(given[name])}); copy it "
                f"to the host first, or leave device=None to run where the data is"
            )
        return HOST
    if device is None:
        if not on_gpu:
            return HOST
        if on_host:
            raise ValueError(
                f"{on_gpu[0]} is a GPU array ({_describe(given[on_gpu[0]])}) but {on_host[0]} "
                f"is a host array ({_describe(given[on_host[0]])}); fastconv does not copy "
                f"between host and GPU silently: move {on_host[0]} to the GPU, or pass "
                f"device='cuda' to copy the host arguments there"
            )
    from . import cuda

    if not cuda.is_available():
        raise RuntimeError(
            f"device={device!r} asks for the GPU, but the CUDA backend is not available: it "
            f"needs an NVIDIA GPU with its driver and numba-cuda "
            f"(pip install 'fastconv[cuda]'); fastconv.cuda.is_available() tells"
        )
    from .cuda.arrays import Cuda  # imported here: the GPU's placement imports this module

    return Cuda(given, gpu_index)  # type: ignore[return-value]  # Host's methods, duck-typed


class Host:
    """The CPU placement: numpy arrays, converted and allocated with numpy."""

    device = "cpu"

    def active(self) -> contextlib.AbstractContextManager:
        """A context in which the op's kernels run (the GPU's, for :class:`Cuda`)."""
        return contextlib.nullcontext()

    def floats(self, **arrays: object) -> list:
        """Each named argument as a float array, all of the first one's dtype (a None
        bias stays None)."""
        converted: list[Any] = [None if a is None and name == "bias" else as_float_array(a, name)
                                for name, a in arrays.items()]
        first_name = next(iter(arrays))
        for name, array in zip(list(arrays)[1:], converted[1:], strict=True):
            if array is not None:
                check_same_dtype(converted[0], array, name, first_name)
        return converted

    def indices(self, value: object, name: str) -> np.ndarray:
        """``value`` as a C-contiguous int64 array, or a TypeError."""
        try:
            array = np.asarray(value)
        except Exception:  # noqa: BLE001 - any failure means "not array-like"
            array = np.asarray(None)
        if array.dtype == object or not np.issubdtype(array.dtype, np.integer):
            raise index_dtype_error(value, array.dtype, name)
        return np.ascontiguousarray(array, dtype=np.int64)

    def contiguous(self, array):
        return None if array is None else np.ascontiguousarray(array)

    def batched(self, array):
        """A 3-D ``(C, H, W)`` or 4-D array as a C-contiguous 4-D one."""
        return self.contiguous(array[None] if array.ndim == 3 else array)

    def empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.empty(shape, dtype)

    def zeros(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.zeros(shape, dtype)

    def add_channel_bias(self, target: np.ndarray, bias: np.ndarray) -> None:
        """``target[:, k] += bias[k]`` for a 4-D ``target``."""
        target += bias[None, :, None, None]

    def crop(self, array: np.ndarray, height: int, width: int) -> np.ndarray:
        """The top-left ``height x width`` of each plane of a 4-D array, C-contiguous."""
        return np.ascontiguousarray(array[:, :, :height, :width])

    def item(self, array: np.ndarray, position: int) -> int:
        """The value at flat ``position`` of a C-contiguous array, as an int."""
        return int(array.reshape(-1)[position])

    def check_out(self, out: object, shape: tuple[int, ...], dtype, inputs: tuple):
        return check_out(out, shape, dtype, inputs)

    def run(self, compute, shape4: tuple[int, ...], dtype, unbatched: bool, out=None):
        """Call ``compute(target)`` on a C-contiguous 4-D array of ``shape4`` (``out``'s
        memory where possible) and return the user's view of it (``out`` itself when
        given)."""
        if out is not None and out.flags.c_contiguous:
            target = out.reshape(shape4)
        else:
            target = np.empty(shape4, dtype=dtype)
        if shape4[0]:
            compute(target)
        if out is None:
            return self.give(target, unbatched)
        result = target[0] if unbatched else target
        if not np.shares_memory(out, target):
            out[...] = result
        return out

    def give(self, array, unbatched: bool = False):
        """The user's view of a 4-D result: without the batch axis for unbatched input."""
        return array[0] if unbatched and array is not None else array


HOST = Host()
