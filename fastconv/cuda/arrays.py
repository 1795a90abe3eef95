"""GPU arrays for the public ops: the :class:`Cuda` placement.

The ops receive whatever GPU arrays the user has (Numba device arrays, CuPy
arrays, PyTorch CUDA tensors); the kernels take Numba device arrays. A
:class:`Cuda` placement makes zero-copy Numba views of the user's arrays
(``numba.cuda.as_cuda_array``), allocates outputs with the user's own library
(so PyTorch's and CuPy's memory pools serve them) and hands results back as the
kind of array that came in: a PyTorch CUDA tensor in, a PyTorch CUDA tensor
out. Host arguments (``device="cuda"`` with numpy input) are copied to the GPU,
and the result back to the host.

Kernels run on the current stream of the library that owns the arrays
(``torch.cuda.current_stream()``, CuPy's current stream; Numba device arrays
and host input: the default stream), so that work queued before and after an op
is ordered with it, as for the library's own ops.

The small kernels here (strided copy with a dtype cast, fill, adding a bias
per channel) are what numpy does for the CPU placement.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from numba import cuda

from .._checks import (
    _FLOATS,
    as_float_array,
    check_same_dtype,
    float_dtype_error,
    index_dtype_error,
)
from ..placement import HOST, is_device_array
from . import simulated
from ._jit import device_array, fill, flat, jit, launch, launching_on, to_host

_TORCH_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64",
                 np.dtype(np.int64): "int64"}


@jit
def _copy1(src, dst):
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, dst.shape[0], step):
        dst[i] = src[i]


@jit
def _copy2(src, dst):
    start, step = cuda.grid(1), cuda.gridsize(1)
    w = dst.shape[1]
    for e in range(start, dst.size, step):
        i, j = divmod(e, w)
        dst[i, j] = src[i, j]


@jit
def _copy3(src, dst):
    start, step = cuda.grid(1), cuda.gridsize(1)
    _, h, w = dst.shape
    for e in range(start, dst.size, step):
        c, rest = divmod(e, h * w)
        i, j = divmod(rest, w)
        dst[c, i, j] = src[c, i, j]


@jit
def _copy4(src, dst):
    start, step = cuda.grid(1), cuda.gridsize(1)
    _, c, h, w = dst.shape
    for e in range(start, dst.size, step):
        n, rest = divmod(e, c * h * w)
        k, rest = divmod(rest, h * w)
        i, j = divmod(rest, w)
        dst[n, k, i, j] = src[n, k, i, j]


_COPIES = {1: _copy1, 2: _copy2, 3: _copy3, 4: _copy4}


@jit
def _add_channel_bias(out, bias):
    start, step = cuda.grid(1), cuda.gridsize(1)
    _, c, h, w = out.shape
    for e in range(start, out.size, step):
        k = (e // (h * w)) % c
        n, rest = divmod(e, c * h * w)
        i, j = divmod(rest % (h * w), w)
        out[n, k, i, j] += bias[k]


def copy(src, dst) -> None:
    """``dst[...] = src`` for device arrays of one shape (1- to 4-D), any strides,
    casting to ``dst``'s dtype."""
    if dst.size:
        launch(_COPIES[len(dst.shape)], dst.size)(src, dst)


def _is_contiguous(array) -> bool:
    return bool(array.is_c_contiguous())


def _gpu_of(value) -> int | None:
    """The index of the GPU ``value`` lives on, where its library says."""
    kind = type(value).__module__.partition(".")[0]
    if kind == "torch":
        return value.device.index
    if kind == "cupy":
        return value.device.id
    context = getattr(getattr(value, "gpu_data", None), "context", None)
    return None if context is None else context.device.id


def _view(value):
    """A Numba device array over ``value``'s memory. Kernels run on the owner's current
    stream (:meth:`Cuda.active`), so the view does not wait for that stream (``sync=False``).
    A PyTorch tensor is detached, and a lazily negated one resolved (the interface would
    hand out the memory without the negation)."""
    if simulated() or isinstance(value, cuda.devicearray.DeviceNDArray):
        return value
    if type(value).__module__.partition(".")[0] == "torch":
        value = value.detach().resolve_neg()
    return cuda.as_cuda_array(value, sync=False)


class Cuda:
    """The GPU placement of one op call (see :mod:`fastconv.placement`).

    ``arrays`` are the call's non-None array arguments; the first GPU one (or,
    with only host arguments, the first one) decides the kind of the results.
    """

    device = "cuda"

    def __init__(self, arrays: dict, gpu_index: int | None) -> None:
        on_gpu = {name: value for name, value in arrays.items() if is_device_array(value)}
        gpus = {name: _gpu_of(value) for name, value in on_gpu.items()}
        known = {name: index for name, index in gpus.items() if index is not None}
        if len(set(known.values())) > 1:
            (a, i), (b, j) = list(known.items())[:2]
            raise ValueError(f"{a} is on cuda:{i} but {b} is on cuda:{j}; all GPU arguments "
                             f"must be on one GPU")
        index = next(iter(known.values()), None)
        if gpu_index is not None and index is not None and gpu_index != index:
            name = next(iter(known))
            raise ValueError(f"device='cuda:{gpu_index}' but {name} is on cuda:{index}")
        if gpu_index is not None and gpu_index >= len(cuda.gpus):
            raise ValueError(f"device='cuda:{gpu_index}' but there are {len(cuda.gpus)} GPUs "
                             f"(cuda:0 to cuda:{len(cuda.gpus) - 1})")
        self.index = gpu_index if index is None else index
        model = next(iter(on_gpu.values()), None)
        self.kind = ("host" if model is None
                     else type(model).__module__.partition(".")[0])
        self.model: Any = model
        self._owners: dict[int, tuple[Any, Any]] = {}  # id(view): (view, its owner)

    # --- the context the kernels run in ------------------------------------------

    @contextlib.contextmanager
    def active(self):
        """The arrays' GPU made current, and kernels launched on the owner's stream."""
        gpu = (contextlib.nullcontext() if self.index is None or simulated()
               else cuda.gpus[self.index])
        with gpu, launching_on(self._stream()):
            yield

    def _stream(self):
        """The current stream of the library that owns the arrays (0: the default)."""
        if simulated() or self.kind not in ("torch", "cupy"):
            return 0
        if self.kind == "torch":
            import torch

            pointer = torch.cuda.current_stream(self.model.device).cuda_stream
        else:
            import cupy

            pointer = cupy.cuda.get_current_stream().ptr
        return cuda.external_stream(pointer) if pointer else 0

    # --- arguments -------------------------------------------------------------------

    def floats(self, **arrays: object) -> list:
        """As :meth:`Host.floats`, with the same errors; host values are copied to the GPU.
        Dtypes are read from the Numba views, which speak numpy's (PyTorch's do not)."""
        converted: list[Any] = []
        for name, value in arrays.items():
            if value is None and name == "bias":
                converted.append(None)
                continue
            if is_device_array(value):
                view = _view(value)
                if np.dtype(view.dtype) not in _FLOATS:
                    raise float_dtype_error(np.dtype(view.dtype), name)
            else:
                view = as_float_array(value, name)
            if converted:
                check_same_dtype(converted[0], view, name, next(iter(arrays)))
            converted.append(view if is_device_array(value)
                             else cuda.to_device(np.ascontiguousarray(view)))
        return converted

    def indices(self, value: object, name: str):
        """As :meth:`Host.indices`: C-contiguous int64 on the GPU."""
        if not is_device_array(value):
            return cuda.to_device(HOST.indices(value, name))
        view = _view(value)
        dtype = np.dtype(view.dtype)
        if not np.issubdtype(dtype, np.integer):
            raise index_dtype_error(value, dtype, name)
        if dtype == np.int64 and _is_contiguous(view):
            return view
        if len(view.shape) not in _COPIES:
            raise ValueError(f"{name} must be 3-D or 4-D, got shape {tuple(view.shape)}")
        result = device_array(view.shape, np.int64)
        copy(view, result)
        return result

    def contiguous(self, array):
        if array is None or _is_contiguous(array):
            return array
        result = device_array(array.shape, array.dtype)
        copy(array, result)
        return result

    def batched(self, array):
        array = self.contiguous(array)
        return array.reshape(1, *array.shape) if len(array.shape) == 3 else array

    # --- results ----------------------------------------------------------------------

    def empty(self, shape: tuple[int, ...], dtype):
        """An uninitialised device array, owned by the user's library where it has one."""
        dtype = np.dtype(dtype)
        if self.kind == "torch":
            import torch

            owner = torch.empty(shape, dtype=getattr(torch, _TORCH_DTYPES[dtype]),
                                device=self.model.device)
        elif self.kind == "cupy":
            import cupy

            with cupy.cuda.Device(self.index or 0):
                owner = cupy.empty(shape, dtype)
        else:
            return device_array(shape, dtype)
        view = _view(owner)
        self._owners[id(view)] = (view, owner)
        return view

    def zeros(self, shape: tuple[int, ...], dtype):
        array = self.empty(shape, dtype)
        if array.size:
            launch(fill, array.size)(flat(array), np.dtype(dtype).type(0))
        return array

    def add_channel_bias(self, target, bias) -> None:
        if target.size:
            launch(_add_channel_bias, target.size)(target, bias)

    def crop(self, array, height: int, width: int):
        result = self.empty((*array.shape[:2], height, width), array.dtype)
        copy(array[:, :, :height, :width], result)
        return result

    def item(self, array, position: int) -> int:
        return int(to_host(array.reshape(array.size)[position:position + 1])[0])

    def check_out(self, out: object, shape: tuple[int, ...], dtype, inputs: tuple):
        form = f"a GPU array of shape {shape} and dtype {dtype}"
        if not is_device_array(out):
            raise TypeError(f"out must be {form} (the inputs are on the GPU), "
                            f"got {type(out).__name__}")
        view = _view(out)
        if tuple(view.shape) != tuple(shape) or np.dtype(view.dtype) != np.dtype(dtype):
            raise ValueError(f"out must be {form}, got shape {tuple(view.shape)} and dtype "
                             f"{np.dtype(view.dtype)}")
        for other in inputs:
            if other is not None and is_device_array(other) and _overlap(view, _view(other)):
                raise ValueError("out must not share memory with an input")
        return out

    def run(self, compute, shape4: tuple[int, ...], dtype, unbatched: bool, out=None):
        if out is None:
            target = self.empty(shape4, dtype)
        else:
            view = _view(out)
            if _is_contiguous(view):
                target = view.reshape(*shape4)
            else:
                target = device_array(shape4, dtype)
        if shape4[0]:
            compute(target)
        if out is None:
            return self.give(target, unbatched)
        if target is not None and not _is_contiguous(_view(out)):
            copy(target[0] if unbatched else target, _view(out))
        return out

    def give(self, array, unbatched: bool = False):
        """The result in the kind of array the user passed in."""
        if array is None:
            return None
        owner = self._owners.get(id(array))
        if owner is not None and owner[0] is array:
            result = owner[1]
        elif self.kind == "host":
            result = to_host(array)
        else:
            result = array
        return result[0] if unbatched else result


def _extent(array) -> tuple[int, int]:
    """The device addresses ``[first, last)`` an array's elements span (any strides)."""
    start = array.device_ctypes_pointer.value or 0
    spans = [(n - 1) * s for n, s in zip(array.shape, array.strides, strict=True)]
    low = start + sum(min(0, span) for span in spans)
    return low, start + sum(max(0, span) for span in spans) + array.dtype.itemsize


def _overlap(a, b) -> bool:
    """Whether two device arrays' memory ranges intersect."""
    if simulated():
        return bool(np.shares_memory(a._ary, b._ary))
    (low_a, high_a), (low_b, high_b) = _extent(a), _extent(b)
    return low_a < high_b and low_b < high_a
