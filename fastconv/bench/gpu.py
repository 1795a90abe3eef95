"""The GPU side of the runner: the case table at a GPU's batch, fastconv's inputs on the
GPU, the check of every result against PyTorch's, and the device's wait in each timed
call. ``python -m fastconv bench --device cuda`` and ``benchmarks/gpu_check.py`` run it
(:func:`run_gpu`); the cases, the calls, the timing rule and the tables are the CPU's.

On a GPU, fastconv is called on PyTorch CUDA tensors (zero-copy, results come back as
tensors), so both sides see the same memory and the same stream; TF32 is off. Under
Numba's CUDA simulator (``tiny=True``, for the tests) the inputs are Numba device
arrays, the shapes are tiny, and PyTorch on the CPU is the oracle. The reference is not
timed on the GPU.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ..cuda import simulated
from .cases import CASES, Layer, OpCase
from .implementations import Bound
from .suite import Row, run_cases
from .timing import BUDGET_S

#: Images per call on the GPU: the CPU suite's batch of 8 leaves a GPU idle.
GPU_BATCH = 64
#: Largest error of a float32 result, relative to the largest magnitude of PyTorch's.
TOLERANCE = 1e-4


def _tiny_layer(layer: Layer) -> Layer:
    """A few channels and pixels: the simulator runs each GPU thread as Python. The size
    keeps the stride's fit (a transposed convolution's output is the layer's input)."""
    channels = min(layer.channels, 4)
    groups = channels if layer.groups == layer.channels == layer.filters else 1
    filters = channels if groups > 1 else min(layer.filters, 4)
    kernel = min(layer.kernel, 5)
    size = min(layer.height, 9)
    while size > kernel and (size + 2 * layer.padding - kernel) % layer.stride:
        size -= 1
    return dataclasses.replace(layer, batch=1, channels=channels, filters=filters,
                               groups=groups, height=size, width=size, kernel=kernel)


def tiny_case(case: OpCase) -> OpCase:
    """``case`` on tiny shapes, for the CUDA simulator.

    >>> from fastconv.bench import select_cases
    >>> [tiny_case(case).description for case in select_cases("conv2d:c,max_unpool2d")]
    ['N1 C4 9x9, K4 3x3 p1', 'N1 C2 4x4 -> 8x8 (indices of max_pool2d 2x2 s2)']
    """
    if case.layer is not None:
        return dataclasses.replace(case, layer=_tiny_layer(case.layer), reference_batch=1)
    size = 4 if "unpool" in case.op else 8
    return dataclasses.replace(case, shape=(1, 2, size, size), reference_batch=1)


def gpu_cases(cases: Iterable[OpCase] = CASES, batch: int | None = GPU_BATCH,
              tiny: bool = False) -> list[OpCase]:
    """``cases`` as the GPU times them: at ``batch`` images (None: their own), or tiny."""
    if tiny:
        return [tiny_case(case) for case in cases]
    return [case if batch is None else case.with_batch(batch) for case in cases]


def _error(actual: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> float:
    """Largest absolute difference over the results, relative to the largest magnitude
    (integer results: 1.0 where any differs)."""
    if len(actual) != len(expected):
        return math.inf
    worst = 0.0
    for a, e in zip(actual, expected, strict=True):
        if a.shape != e.shape:
            return math.inf
        if a.dtype.kind in "iu":
            worst = max(worst, float(np.any(a != e)))
            continue
        scale = max(float(np.max(np.abs(e))), 1e-30) if e.size else 1.0
        diff = float(np.max(np.abs(a.astype(np.float64) - e))) if e.size else 0.0
        worst = max(worst, diff / scale)
    return worst


class GpuSide:
    """Where a GPU run's inputs live and how it waits: PyTorch CUDA tensors on a GPU
    (Numba device arrays, and PyTorch on the CPU, under the simulator); each fastconv
    result is checked against torch's (:attr:`check`)."""

    device = "cuda"
    check = True

    def __init__(self, torch: Any = None) -> None:
        if torch is None:
            import torch
        self.torch = torch
        self.on_gpu = not simulated() and torch.cuda.is_available()
        if self.on_gpu:
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False

    def arrays(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.on_gpu:
            return self.tensors(self.torch, inputs)
        from numba import cuda

        return {name: cuda.to_device(array) for name, array in inputs.items()}

    def tensors(self, torch: Any, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        tensors = {name: torch.from_numpy(array) for name, array in inputs.items()}
        if self.on_gpu:
            tensors = {name: tensor.cuda() for name, tensor in tensors.items()}
        return tensors

    def sync(self) -> None:
        if self.on_gpu:
            self.torch.cuda.synchronize()
        else:
            from numba import cuda

            cuda.synchronize()

    @staticmethod
    def to_host(result: Any) -> list[np.ndarray]:
        """A result (or tuple of results; None entries left out) as numpy arrays."""
        out = []
        for value in result if isinstance(result, tuple) else (result,):
            if value is None:
                continue
            if hasattr(value, "copy_to_host"):
                out.append(value.copy_to_host())
            elif hasattr(value, "detach"):
                out.append(value.detach().cpu().numpy())
            else:
                out.append(np.asarray(value))
        return out

    def expected(self, bound: Bound) -> list[np.ndarray]:
        """torch's results on the case, on the host."""
        result = bound.prepare("torch")()
        self.sync()
        return self.to_host(result)

    def error(self, result: Any, expected: Sequence[np.ndarray]) -> float:
        return _error(self.to_host(result), expected)


def run_gpu(
    cases: Iterable[OpCase] | None = None,
    implementations: Sequence[str] | None = None,
    *,
    batch: int | None = GPU_BATCH,
    tiny: bool | None = None,
    quick: bool = False,
    repeat: int | None = None,
    budget_s: float = BUDGET_S,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Check and time ``cases`` (default: the whole table, :data:`CASES`) on the GPU
    with each GPU algorithm of their op, ``auto`` and torch (or ``implementations``), as
    :func:`fastconv.bench.run_cases` times the CPU: at ``batch`` images (None: the cases'
    own), or on tiny shapes (``tiny``, default: under the simulator). Each fastconv row
    carries its ``error`` against torch (:func:`wrong_rows`) and its ``first_call_s``."""
    import torch

    if tiny is None:
        tiny = simulated()
    placed = gpu_cases(CASES if cases is None else cases, batch=batch, tiny=tiny)
    return run_cases(placed, implementations, quick=quick, repeat=repeat, budget_s=budget_s,
                     progress=progress, side=GpuSide(torch))


def wrong_rows(rows: Iterable[Row], tolerance: float = TOLERANCE) -> list[Row]:
    """The rows whose result is beyond ``tolerance`` of torch's (nan included)."""
    return [row for row in rows if row.error is not None and not row.error <= tolerance]
