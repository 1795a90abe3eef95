"""The GPU check and benchmark: every op of the CUDA backend against PyTorch on the GPU.

:func:`run` builds the cases (the conv2d layer suite of :mod:`fastconv.bench` at
batch 64, conv2d's gradients on layers c, d and g, conv_transpose2d, pooling and
unpooling), checks each GPU algorithm's result against PyTorch's (float32, TF32
off) and times both; :func:`format_table` prints one table of ratios and the
issue's speed bars. ``benchmarks/gpu_check.py`` and ``python -m fastconv bench
--device cuda`` call it.

On a GPU, fastconv is called on PyTorch CUDA tensors (zero-copy, results come
back as tensors), so both sides see the same memory and the same stream. Under
Numba's CUDA simulator (``tiny=True``, for the tests) the inputs are Numba
device arrays, the shapes are tiny, and PyTorch on the CPU is the oracle.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

import fastconv

from .. import bench, ops
from . import simulated

#: Images per conv2d call on the GPU: the CPU suite's batch of 8 leaves a GPU idle.
GPU_BATCH = 64
#: Seconds of timed calls per cell (after warm-up), and the bounds on their number.
BUDGET_S = 0.25
MIN_CALLS, MAX_CALLS = 3, 200
#: Largest error of a float32 result, relative to the largest magnitude of PyTorch's.
TOLERANCE = 1e-4


@dataclass(frozen=True)
class GpuCase:
    """One problem: host inputs, fastconv's call on GPU arrays, PyTorch's on tensors."""

    op: str
    name: str
    #: The op whose algorithms are timed (``available_algorithms(algorithms_of, "cuda")``).
    algorithms_of: str
    #: ``rng -> {name: host array}``.
    make: Callable[[np.random.Generator], dict[str, np.ndarray]]
    #: ``(arrays, algorithm) -> result or tuple of results``.
    fastconv: Callable[[dict[str, Any], str], Any]
    #: ``(torch, tensors) -> result or tuple of results``.
    torch: Callable[[Any, dict[str, Any]], Any]
    #: Floating-point operations (conv) or bytes moved (the others) of one call.
    work: float
    unit: str = "GFLOP/s"
    #: Which speed bar the case counts for, if any.
    bar: str | None = None

    def __post_init__(self) -> None:
        if self.algorithms_of not in ops.TABLE:
            raise ValueError(f"GPU case {self.op}:{self.name}: algorithms_of must be a kernel op "
                             f"of fastconv.ops.TABLE, got {self.algorithms_of!r}")

    @property
    def kernel_ops(self) -> tuple[str, ...]:
        """Every kernel op (:data:`fastconv.ops.TABLE`) the case's fastconv call runs:
        ``algorithms_of`` and, for an op of the CPU op suite, those its spec names."""
        spec = bench._OP_SPECS.get(self.op)
        return tuple(dict.fromkeys((self.algorithms_of, *(spec.kernel_ops if spec else ()))))


def _conv_layers(batch: int, tiny: bool) -> list[bench.Layer]:
    layers = []
    for layer in bench.LAYERS:
        if tiny:  # a few channels and pixels: the simulator runs each thread as Python
            channels = min(layer.channels, 4)
            groups = channels if layer.groups == layer.channels else 1
            filters = channels if groups > 1 else min(layer.filters, 4)
            size = min(layer.height, 9)
            layer = replace(layer, channels=channels, filters=filters, groups=groups,
                            height=size, width=size, kernel=min(layer.kernel, 5))
        layers.append(layer.with_batch(batch))
    return layers


def _normal(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32)


def _tie_free(rng, shape):
    return (rng.permutation(math.prod(shape)).reshape(shape) * 0.25).astype(np.float32)


def _conv_case(layer: bench.Layer) -> GpuCase:
    def make(rng):
        x, w, b = layer.make_inputs()
        return {"x": x, "w": w, "b": b}

    if layer.groups == layer.channels == layer.filters:
        bar = "depthwise conv2d forward"
    elif layer.id in "cdef" and layer.groups == 1:
        bar = "dense conv2d forward (c-f)"
    else:
        bar = None
    return GpuCase(
        "conv2d", layer.id, "conv2d", make,
        lambda a, alg: fastconv.conv2d(a["x"], a["w"], a["b"], **layer.kwargs, algorithm=alg),
        lambda torch, t: torch.nn.functional.conv2d(t["x"], t["w"], t["b"], **layer.kwargs),
        layer.flops, bar=bar)


def _grad_case(layer: bench.Layer, op: str) -> GpuCase:
    input_grad = op == "grad_input"
    needs = {"needs_input_grad": input_grad, "needs_weight_grad": not input_grad,
             "needs_bias_grad": not input_grad}

    def make(rng):
        x, w, _ = layer.make_inputs()
        return {"dy": _normal(rng, layer.output_shape), "x": x, "w": w}

    def fast(a, alg):
        grads = fastconv.conv2d_backward(a["dy"], a["x"], a["w"], **layer.kwargs, **needs,
                                         algorithm=alg)
        return tuple(g for g in grads if g is not None)

    def torch_call(torch, t):
        pair = [layer.stride] * 2, [layer.padding] * 2, [1, 1]
        grads = torch.ops.aten.convolution_backward(
            t["dy"], t["x"], t["w"], [layer.filters], *pair, False, [0, 0], layer.groups,
            list(needs.values()))
        return tuple(g for g in grads if g is not None)

    return GpuCase(op, layer.id, bench._OP_SPECS[op].algorithms, make, fast, torch_call,
                   layer.flops)


def _transpose_cases(batch: int, tiny: bool) -> list[GpuCase]:
    layer = bench.TRANSPOSE_LAYER.with_batch(batch)
    if tiny:
        layer = replace(layer, channels=3, filters=4, height=8, width=8)
    kwargs = {"stride": layer.stride, "padding": layer.padding}

    def make(rng):
        _, w, _ = layer.make_inputs()
        return {"x": _normal(rng, layer.output_shape), "w": w,
                "b": _normal(rng, (layer.channels,)), "dy": _normal(rng, layer.input_shape)}

    def torch_backward(torch, t):
        pair = [layer.stride] * 2, [layer.padding] * 2, [1, 1]
        return tuple(torch.ops.aten.convolution_backward(
            t["dy"], t["x"], t["w"], [layer.channels], *pair, True, [0, 0], 1, [True] * 3))

    return [
        GpuCase("conv_transpose2d", "t", bench._OP_SPECS["conv_transpose2d"].algorithms, make,
                lambda a, alg: fastconv.conv_transpose2d(a["x"], a["w"], a["b"], **kwargs,
                                                         algorithm=alg),
                lambda torch, t: torch.nn.functional.conv_transpose2d(t["x"], t["w"], t["b"],
                                                                      **kwargs),
                layer.flops),
        GpuCase("conv_transpose2d_backward", "t", "conv2d", make,
                lambda a, alg: fastconv.conv_transpose2d_backward(a["dy"], a["x"], a["w"],
                                                                  **kwargs, algorithm=alg),
                torch_backward, 2 * layer.flops),
    ]


def _pool_cases(shape: tuple[int, ...]) -> list[GpuCase]:
    cases = []
    pooled_bytes = 4 * math.prod(shape)
    for window in bench.POOL_WINDOWS:
        k, s, p = window.kernel, window.stride, window.padding
        out_shape = window.output_shape(shape)
        moved = pooled_bytes + 4 * math.prod(out_shape)

        def make(rng, out_shape=out_shape, k=k, s=s, p=p):
            x = _tie_free(rng, shape)
            _, indices = fastconv.max_pool2d(x, k, s, p, return_indices=True)
            return {"x": x, "dy": _normal(rng, out_shape), "indices": indices}

        cases += [
            GpuCase("max_pool2d", window.id, "max_pool2d", make,
                    lambda a, alg, k=k, s=s, p=p: fastconv.max_pool2d(a["x"], k, s, p,
                                                                      algorithm=alg),
                    lambda torch, t, k=k, s=s, p=p: torch.nn.functional.max_pool2d(t["x"], k,
                                                                                   s, p),
                    moved, "GB/s", "pooling"),
            GpuCase("avg_pool2d", window.id, "avg_pool2d", make,
                    lambda a, alg, k=k, s=s, p=p: fastconv.avg_pool2d(a["x"], k, s, p,
                                                                      algorithm=alg),
                    lambda torch, t, k=k, s=s, p=p: torch.nn.functional.avg_pool2d(t["x"], k,
                                                                                   s, p),
                    moved, "GB/s", "pooling"),
            GpuCase("max_pool2d_backward", window.id, "max_pool2d_backward", make,
                    lambda a, alg: fastconv.max_pool2d_backward(a["dy"], a["indices"], shape,
                                                                algorithm=alg),
                    lambda torch, t, k=k, s=s, p=p: torch.ops.aten.max_pool2d_with_indices_backward(
                        t["dy"], t["x"], [k, k], [s, s], [p, p], [1, 1], False, t["indices"]),
                    moved + 8 * math.prod(out_shape), "GB/s", "pooling"),
            GpuCase("avg_pool2d_backward", window.id, "avg_pool2d_backward", make,
                    lambda a, alg, k=k, s=s, p=p: fastconv.avg_pool2d_backward(
                        a["dy"], shape, k, s, p, algorithm=alg),
                    lambda torch, t, k=k, s=s, p=p: torch.ops.aten.avg_pool2d_backward(
                        t["dy"], t["x"], [k, k], [s, s], [p, p], False, True, None),
                    moved, "GB/s", "pooling"),
        ]
    return cases


def _unpool_cases(shape: tuple[int, ...]) -> list[GpuCase]:
    n, c, h, w = shape
    big = (n, c, 2 * h, 2 * w)
    small_bytes, big_bytes = 4 * math.prod(shape), 4 * math.prod(big)

    def make(rng):
        pooled, indices = fastconv.max_pool2d(_tie_free(rng, big), 2, 2, return_indices=True)
        return {"x": pooled, "indices": indices, "dy": _normal(rng, big)}

    def torch_unpool_backward(torch, t):
        flat = (n, c, -1)
        return t["dy"].view(flat).gather(2, t["indices"].view(flat)).view(t["indices"].shape)

    return [
        GpuCase("max_unpool2d", "2x2s2", "max_unpool2d", make,
                lambda a, alg: fastconv.max_unpool2d(a["x"], a["indices"], 2, 2,
                                                     output_size=big[2:], algorithm=alg),
                lambda torch, t: torch.nn.functional.max_unpool2d(t["x"], t["indices"], 2, 2,
                                                                  output_size=big[2:]),
                3 * small_bytes + big_bytes, "GB/s"),
        GpuCase("max_unpool2d_backward", "2x2s2", "max_unpool2d_backward", make,
                lambda a, alg: fastconv.max_unpool2d_backward(a["dy"], a["indices"],
                                                              algorithm=alg),
                torch_unpool_backward, 4 * small_bytes + big_bytes, "GB/s"),
        GpuCase("repeat_unpool2d", "x2", "repeat_unpool2d", make,
                lambda a, alg: fastconv.repeat_unpool2d(a["x"], 2, algorithm=alg),
                lambda torch, t: torch.nn.functional.interpolate(t["x"], scale_factor=2,
                                                                 mode="nearest"),
                small_bytes + big_bytes, "GB/s"),
        GpuCase("repeat_unpool2d_backward", "x2", "repeat_unpool2d_backward", make,
                lambda a, alg: fastconv.repeat_unpool2d_backward(a["dy"], 2, algorithm=alg),
                lambda torch, t: torch.ops.aten.upsample_nearest2d_backward(
                    t["dy"], list(big[2:]), list(shape), 2.0, 2.0),
                small_bytes + big_bytes, "GB/s"),
    ]


def cases(batch: int = GPU_BATCH, tiny: bool = False) -> list[GpuCase]:
    """Every GPU case: the conv2d layer suite, conv2d's gradients on c, d and g,
    conv_transpose2d and its backward, pooling and unpooling."""
    layers = _conv_layers(batch, tiny)
    grad_layers = [layer for layer in layers if layer.id in bench.BACKWARD_LAYERS.split(",")]
    pool_shape = (1, 2, 8, 8) if tiny else (batch, *bench.POOL_SHAPE[1:])
    unpool_shape = (1, 2, 4, 4) if tiny else (batch, *bench.UNPOOL_SHAPE[1:])
    return [*(_conv_case(layer) for layer in layers),
            *(_grad_case(layer, op) for op in ("grad_input", "grad_weight")
              for layer in grad_layers),
            *_transpose_cases(batch, tiny), *_pool_cases(pool_shape), *_unpool_cases(unpool_shape)]


def kernel_op_cases(all_cases: Sequence[GpuCase]) -> dict[str, tuple[str, ...]]:
    """Each kernel op of :data:`fastconv.ops.TABLE` with the ``op:case`` names of the cases
    that run it; an op with none is checked on no GPU (``tests/test_ops.py`` fails on it).

    >>> kernel_op_cases(cases(1, tiny=True))["conv2d_grad_bias"][:2]
    ('grad_weight:c', 'grad_weight:d')
    """
    found: dict[str, list[str]] = {name: [] for name in ops.NAMES}
    for case in all_cases:
        for op in case.kernel_ops:
            found[op].append(f"{case.op}:{case.name}")
    return {op: tuple(names) for op, names in found.items()}


def select(all_cases: Sequence[GpuCase], spec: str | None) -> list[GpuCase]:
    """The cases named by ``spec``: comma-separated ops (all their cases) or ``op:case``
    such as ``conv2d:h``; None: all.

    >>> [c.name for c in select(cases(1, tiny=True), "conv2d:c,conv2d:h")]
    ['c', 'h']
    """
    if spec is None:
        return list(all_cases)
    wanted = [part.strip() for part in spec.split(",") if part.strip()]
    known = {case.op for case in all_cases} | {f"{c.op}:{c.name}" for c in all_cases}
    unknown = [part for part in wanted if part not in known]
    if unknown or not wanted:
        raise ValueError(f"unknown GPU cases {unknown or spec!r}; the ops: "
                         f"{', '.join(dict.fromkeys(case.op for case in all_cases))} "
                         f"(or op:case, e.g. conv2d:c)")
    return [case for case in all_cases
            if case.op in wanted or f"{case.op}:{case.name}" in wanted]


@dataclass
class GpuRow:
    """One case and algorithm: its error against PyTorch and both times."""

    op: str
    name: str
    algorithm: str
    unit: str
    work: float
    bar: str | None
    error: float = math.nan
    first_call_s: float = math.nan
    fastconv_ms: float = math.nan
    torch_ms: float = math.nan
    note: str = ""

    @property
    def ratio(self) -> float:
        """torch ms / fastconv ms: above 1 means fastconv is faster."""
        return self.torch_ms / self.fastconv_ms

    @property
    def ok(self) -> bool:
        return self.error <= TOLERANCE


class _Side:
    """How one run makes GPU arrays, reads results back and waits for the GPU."""

    def __init__(self, torch) -> None:
        self.torch = torch
        self.on_gpu = not simulated() and torch is not None and torch.cuda.is_available()
        if self.on_gpu:
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False

    def fastconv_arrays(self, host: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.on_gpu:
            return self.torch_arrays(host)
        from numba import cuda

        return {name: cuda.to_device(array) for name, array in host.items()}

    def torch_arrays(self, host: dict[str, np.ndarray]) -> dict[str, Any]:
        tensors = {name: self.torch.from_numpy(array) for name, array in host.items()}
        if self.on_gpu:
            tensors = {name: tensor.cuda() for name, tensor in tensors.items()}
        return tensors

    def to_host(self, result) -> list[np.ndarray]:
        results = result if isinstance(result, tuple) else (result,)
        out = []
        for value in results:
            if hasattr(value, "copy_to_host"):
                out.append(value.copy_to_host())
            elif hasattr(value, "detach"):
                out.append(value.detach().cpu().numpy())
            else:
                out.append(np.asarray(value))
        return out

    def sync(self) -> None:
        if self.on_gpu:
            self.torch.cuda.synchronize()
        else:
            from numba import cuda

            cuda.synchronize()


def _error(actual: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> float:
    """Largest absolute difference over the results, relative to the largest magnitude."""
    worst = 0.0
    for a, e in zip(actual, expected, strict=True):
        if a.shape != e.shape:
            return math.inf
        if a.dtype.kind in "iu":
            worst = max(worst, float(np.any(a != e)))
            continue
        scale = max(float(np.max(np.abs(e))), 1e-30)
        worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - e))) / scale)
    return worst


def _time(call: Callable[[], object], sync: Callable[[], None], repeat: int | None) -> float:
    """Milliseconds per call: calls back to back, one wait at the end, best of three."""
    call()
    sync()
    if repeat is None:
        start = time.perf_counter()
        call()
        sync()
        once = time.perf_counter() - start
        calls = max(MIN_CALLS, min(MAX_CALLS, int(BUDGET_S / max(once, 1e-6))))
    else:
        calls = repeat
    best = math.inf
    for _ in range(3 if repeat is None else 1):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        sync()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e3


def run(spec: str | None = None, *, tiny: bool = False, repeat: int | None = None,
        progress: Callable[[str], None] | None = None) -> list[GpuRow]:
    """Check and time the cases :func:`select` picks by ``spec`` (None: all) with
    ``auto`` and each GPU algorithm of their op.

    ``tiny`` (the simulator): tiny shapes. Returns one row per case and algorithm; a
    row whose algorithm cannot compute the case carries a note instead.
    """
    import torch

    from .. import dispatch

    side = _Side(torch)
    rng = np.random.default_rng(0)
    rows = []
    for case in select(cases(1 if tiny else GPU_BATCH, tiny), spec):
        host = case.make(rng)
        arrays, tensors = side.fastconv_arrays(host), side.torch_arrays(host)
        expected = side.to_host(case.torch(torch, tensors))
        torch_ms = _time(lambda case=case, tensors=tensors: case.torch(torch, tensors),
                         side.sync, repeat)
        names = [n for n in dispatch.available_algorithms(case.algorithms_of, "cuda")
                 if n != "reference"]
        for algorithm in names:
            if progress is not None:
                progress(f"{case.op} {case.name} {algorithm}")
            row = GpuRow(case.op, case.name, algorithm, case.unit, case.work, case.bar,
                         torch_ms=torch_ms)
            start = time.perf_counter()
            try:
                result = case.fastconv(arrays, algorithm)
            except ValueError as refused:  # an algorithm that does not take this case
                row.note = str(refused).split(": ", 1)[-1]
                rows.append(row)
                continue
            side.sync()
            row.first_call_s = time.perf_counter() - start
            row.error = _error(side.to_host(result), expected)
            row.fastconv_ms = _time(
                lambda case=case, algorithm=algorithm, arrays=arrays: case.fastconv(arrays,
                                                                                    algorithm),
                side.sync, repeat)
            rows.append(row)
    return rows


def _rate(row: GpuRow) -> str:
    per_s = row.work / (row.fastconv_ms * 1e-3) / 1e9
    return f"{per_s:8.1f} {row.unit}"


def speed_bars(rows: Sequence[GpuRow]) -> list[tuple[str, float, float, bool]]:
    """``(bar, minimum ratio of auto over its cases, required, met)`` for each bar."""
    required = {"pooling": 1.0, "depthwise conv2d forward": 1.0,
                "dense conv2d forward (c-f)": 0.3}
    result = []
    for bar, need in required.items():
        ratios = [row.ratio for row in rows if row.bar == bar and row.algorithm == "auto"
                  and not math.isnan(row.fastconv_ms)]
        if ratios:
            result.append((bar, min(ratios), need, min(ratios) >= need))
    return result


def format_table(rows: Sequence[GpuRow], device: str = "") -> str:
    """One table: error against PyTorch, both times, the ratio, and the speed bars."""
    lines = [f"fastconv CUDA vs PyTorch{' on ' + device if device else ''} (float32, TF32 off); "
             "ratio = torch ms / fastconv ms (above 1: fastconv faster)",
             f"{'op':<26} {'case':<8} {'algorithm':<14} {'rel.err':>8} {'fastconv ms':>12} "
             f"{'torch ms':>9} {'ratio':>6} {'rate':>16} {'1st call s':>10}"]
    for row in rows:
        head = f"{row.op:<26} {row.name:<8} {row.algorithm:<14}"
        if row.note:
            lines.append(f"{head} refused: {row.note}")
            continue
        flag = "" if row.ok else "  <-- WRONG"
        lines.append(f"{head} {row.error:8.1e} {row.fastconv_ms:12.3f} {row.torch_ms:9.3f} "
                     f"{row.ratio:6.2f} {_rate(row):>16} {row.first_call_s:10.2f}{flag}")
    for bar, ratio, need, met in speed_bars(rows):
        lines.append(f"speed bar {bar}: auto >= {need}x torch on every case: min {ratio:.2f}x "
                     f"{'met' if met else 'NOT MET'}")
    wrong = sum(1 for row in rows if not row.note and not row.ok)
    lines.append(f"correctness: {'all results within' if not wrong else f'{wrong} results beyond'}"
                 f" {TOLERANCE:g} of PyTorch's")
    return "\n".join(lines)
