"""The conv2d layer suite and the timing code behind ``python -m fastconv bench``
and the pytest benchmarks in ``benchmarks/``.

Timing rules, the same for every implementation:

- JIT compilation stays out of the timings: each implementation is called at
  least twice (and for at least ``WARMUP_S`` seconds) before it is timed; the
  compile time is measured on its own, in a fresh process
  (:func:`cold_compile_time`, :func:`warm_compile_time`).
- A cell is the median (and minimum) of plain calls timed with
  ``time.perf_counter``, as many as fit in ``BUDGET_S`` seconds, at least
  ``MIN_CALLS``. Every call allocates its output, as a user's call does, for
  fastconv and torch alike; :func:`configure_allocator` first makes glibc keep
  freed memory, so that no library page-faults a fresh buffer on every call
  (``shared/CALIBRATION.md``, finding 1).
- torch runs on as many threads as Numba.
- The reference is timed on a smaller batch (``Layer.reference_batch``): its
  Python loops take about 3 us per output value, so a full layer takes
  seconds to minutes. Its GFLOP/s are comparable with the other columns, its
  milliseconds are not; "ref/auto" compares it with ``auto`` timed on that
  same batch. Where one image alone takes over a second (layer i) it is not
  timed.

This module imports numba only inside functions, and torch only when torch
is benchmarked.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

import fastconv

from . import config, reference

#: Seconds of timed calls per cell (implementation x layer).
BUDGET_S = 1.0
#: Timed calls per cell: at least this many, even where one call exceeds the budget...
MIN_CALLS = 5
#: ... and at most this many, for calls of a few microseconds.
MAX_CALLS = 1000
#: Warm-up before timing: at least two calls and at least this many seconds,
#: so that the first call's compilation (or cache load) and the other library's
#: spinning thread pool are both behind us.
WARMUP_S = 0.2

#: Timed calls per cell in quick mode (smoke tests): (reference, others).
QUICK_CALLS = (1, 2)


@dataclass(frozen=True)
class Layer:
    """One conv2d problem: NCHW float32 input, K filters of R x S, with bias."""

    id: str
    batch: int
    channels: int
    height: int
    width: int
    filters: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    #: Batch the reference is timed on; None: not timed (too slow even for one image).
    reference_batch: int | None = None

    @property
    def description(self) -> str:
        """E.g. ``N8 C64 56x56, K128 3x3 s2 p1``."""
        text = f"N{self.batch} C{self.channels} {self.height}x{self.width}, K{self.filters} "
        text += f"{self.kernel}x{self.kernel}"
        if self.stride != 1:
            text += f" s{self.stride}"
        if self.padding:
            text += f" p{self.padding}"
        if self.groups == self.channels == self.filters:
            text += " depthwise"
        elif self.groups != 1:
            text += f" groups={self.groups}"
        return text

    @property
    def kwargs(self) -> dict[str, int]:
        """Keyword arguments of ``conv2d`` (fastconv, reference and torch alike)."""
        return {"stride": self.stride, "padding": self.padding, "groups": self.groups}

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.filters, self.channels // self.groups, self.kernel, self.kernel)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        out_h, out_w = fastconv.conv_output_size(
            (self.height, self.width), self.kernel, self.stride, self.padding
        )
        return (self.batch, self.filters, out_h, out_w)

    @property
    def flops(self) -> int:
        """``2 * N * K * H_out * W_out * C/groups * R * S`` (the bias is not counted).

        >>> LAYERS[0].flops == 2 * 64 * 6 * 24 * 24 * 1 * 5 * 5
        True
        """
        n, k, out_h, out_w = self.output_shape
        return 2 * n * k * out_h * out_w * (self.channels // self.groups) * self.kernel**2

    def with_batch(self, batch: int) -> Layer:
        """The same layer on ``batch`` images."""
        return dataclasses.replace(self, batch=batch)

    def reference_case(self) -> Layer | None:
        """The layer on the batch the reference is timed on, or None."""
        return None if self.reference_batch is None else self.with_batch(self.reference_batch)

    def make_inputs(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(input, weight, bias)`` in float32 from a seeded generator; unit-variance outputs."""
        rng = np.random.default_rng(seed)
        fan_in = (self.channels // self.groups) * self.kernel**2
        x = rng.standard_normal(self.input_shape, dtype=np.float32)
        w = rng.standard_normal(self.weight_shape, dtype=np.float32) * np.float32(fan_in**-0.5)
        b = rng.standard_normal(self.filters, dtype=np.float32)
        return x, w, b


#: The standard suite; ``shared/CALIBRATION.md`` lists torch's speed on each.
LAYERS: tuple[Layer, ...] = (
    Layer("a", 64, 1, 28, 28, 6, 5, reference_batch=16),
    Layer("b", 64, 6, 12, 12, 16, 5, reference_batch=32),
    Layer("c", 8, 64, 56, 56, 64, 3, padding=1, reference_batch=1),
    Layer("d", 8, 128, 28, 28, 128, 3, padding=1, reference_batch=1),
    Layer("e", 8, 256, 14, 14, 256, 3, padding=1, reference_batch=1),
    Layer("f", 8, 64, 56, 56, 128, 3, stride=2, padding=1, reference_batch=1),
    Layer("g", 8, 256, 14, 14, 64, 1, reference_batch=4),
    Layer("h", 8, 128, 28, 28, 128, 3, padding=1, groups=128, reference_batch=1),
    Layer("i", 8, 3, 224, 224, 64, 7, stride=2, padding=3),
)


def _pick(spec: str, known: Sequence[str], what: str) -> list[str]:
    """The names in the comma-separated ``spec``, in the order of ``known``."""
    wanted = [part.strip() for part in spec.split(",") if part.strip()]
    unknown = [name for name in wanted if name not in known]
    if unknown or not wanted:
        raise ValueError(
            f"unknown {what} {', '.join(map(repr, unknown)) or repr(spec)}; "
            f"choose from {','.join(known)}"
        )
    return [name for name in known if name in wanted]


def select_layers(ids: str | None) -> list[Layer]:
    """The layers named in a comma-separated list of ids (None: all), in suite order.

    >>> [layer.id for layer in select_layers("h,a")]
    ['a', 'h']
    """
    if ids is None:
        return list(LAYERS)
    wanted = _pick(ids, [layer.id for layer in LAYERS], "layer id")
    return [layer for layer in LAYERS if layer.id in wanted]


# --- implementations -----------------------------------------------------------


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def implementation_names(*, include_torch: bool | None = None) -> tuple[str, ...]:
    """``reference``, each fastconv algorithm by name, ``auto``, and ``torch``
    (by default only where it is installed), in the order of the table."""
    algorithms = [
        name
        for name in fastconv.available_algorithms("conv2d")
        if name not in ("auto", "reference")
    ]
    if include_torch is None:
        include_torch = torch_installed()
    return ("reference", *algorithms, "auto", *(("torch",) if include_torch else ()))


def select_implementations(names: str | None) -> list[str]:
    """The implementations named in a comma-separated list (None: all available)."""
    if names is None:
        return list(implementation_names())
    wanted = _pick(names, implementation_names(include_torch=True), "algorithm")
    if "torch" in wanted and not torch_installed():
        raise ValueError("torch is not installed; install it with pip install 'fastconv[bench]'")
    return wanted


def _torch():
    """torch, set to as many threads as Numba uses; ImportError where it is missing."""
    import numba
    import torch

    torch.set_num_threads(numba.get_num_threads())
    return torch


def prepare(layer: Layer, impl: str) -> Callable[[], object]:
    """A no-argument function that runs ``impl`` on ``layer``'s inputs, as a user
    would call it (allocating the output)."""
    x, w, b = layer.make_inputs()
    kwargs = layer.kwargs
    if impl == "reference":
        return lambda: reference.conv2d(x, w, b, **kwargs)
    if impl == "torch":
        torch = _torch()
        xt, wt, bt = (torch.from_numpy(a) for a in (x, w, b))
        conv2d = torch.nn.functional.conv2d
        return lambda: conv2d(xt, wt, bt, **kwargs)
    if impl not in fastconv.available_algorithms("conv2d"):
        raise ValueError(f"unknown implementation {impl!r}; choose from {implementation_names()}")
    return lambda: fastconv.conv2d(x, w, b, **kwargs, algorithm=impl)


def algorithm_of(layer: Layer, impl: str) -> str:
    """The kernel that runs for ``impl``: the chooser's pick for ``auto``, else ``impl``."""
    if impl != "auto":
        return impl
    from . import dispatch

    pad = (layer.padding, layer.padding)
    name, _ = dispatch.select(
        "conv2d", "cpu", "auto",
        input_shape=layer.input_shape, weight_shape=layer.weight_shape,
        stride=(layer.stride, layer.stride), padding=(pad, pad), dilation=(1, 1),
        groups=layer.groups, dtype=np.dtype(np.float32),
    )
    return name


# --- timing ----------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    calls: int


def warm_up(fn: Callable[[], object], *, calls: int = 2, seconds: float = WARMUP_S) -> float:
    """Call ``fn`` at least ``calls`` times and for at least ``seconds``; return
    the duration of the last call, an estimate of one warm call."""
    start = time.perf_counter()
    done = 0
    while True:
        before = time.perf_counter()
        fn()
        after = time.perf_counter()
        done += 1
        if done >= calls and after - start >= seconds:
            return after - before


def calls_for(per_call_s: float, budget_s: float = BUDGET_S) -> int:
    """Timed calls that fit in ``budget_s``, clamped to ``[MIN_CALLS, MAX_CALLS]``."""
    fit = int(budget_s / per_call_s) if per_call_s > 0 else MAX_CALLS
    return max(MIN_CALLS, min(MAX_CALLS, fit))


def time_calls(
    fn: Callable[[], object],
    *,
    repeat: int | None = None,
    budget_s: float = BUDGET_S,
    warmup_s: float = WARMUP_S,
) -> Timing:
    """Warm ``fn`` up, then time ``repeat`` calls (default: as many as fit in
    ``budget_s``) with the garbage collector paused."""
    per_call = warm_up(fn, seconds=warmup_s)
    calls = repeat if repeat is not None else calls_for(per_call, budget_s)
    times = []
    collecting = gc.isenabled()
    gc.disable()
    try:
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    finally:
        if collecting:
            gc.enable()
    return Timing(statistics.median(times), min(times), calls)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_allocator: str | None = None


def configure_allocator() -> str:
    """Make glibc's malloc reuse freed memory instead of returning it to the
    system, and say what the allocator is.

    By default large buffers are mapped fresh and page-faulted on every call,
    which can cost more than a convolution (torch on layer i: 27.5 ms instead
    of 10.2 ms). With mmap off and trimming at 1 GiB every library's output
    buffer comes back warm after the warm-up. Process-wide, applied once.
    """
    global _allocator
    if _allocator is None:
        _allocator = "system default"
        if platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL(None)
            if libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30):
                _allocator = "glibc malloc without mmap, trim threshold 1 GiB (same for all)"
    return _allocator


# --- the suite -----------------------------------------------------------------------


@dataclass
class Row:
    """One timed cell. ``vs_torch`` is torch's median over this one on the same
    case (> 1: faster than torch); None where torch was not timed on it."""

    layer: str
    batch: int
    reduced: bool  # timed on ``reference_batch`` images, not the layer's own batch
    impl: str
    algorithm: str
    median_ms: float
    min_ms: float
    calls: int
    gflops: float
    vs_torch: float | None = None


def _cases(layer: Layer, implementations: Sequence[str]) -> list[tuple[Layer, bool, list[str]]]:
    """``(case, reduced, implementations)`` to time for ``layer``: the full layer,
    and the reference with ``auto`` beside it on the reference batch."""
    full = [name for name in implementations if name != "reference"]
    small = layer.reference_case() if "reference" in implementations else None
    if small is None:
        return [(layer, False, full)]
    if small.batch == layer.batch:
        return [(layer, False, ["reference", *full])]
    companions = ["auto"] if "auto" in implementations else []
    return [(layer, False, full), (small, True, ["reference", *companions])]


def run(
    layers: Iterable[Layer] = LAYERS,
    implementations: Sequence[str] | None = None,
    *,
    quick: bool = False,
    repeat: int | None = None,
    budget_s: float = BUDGET_S,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Time ``implementations`` (default: all available) on ``layers``.

    ``quick``: two warm-up calls and ``QUICK_CALLS`` timed ones per cell, for
    smoke tests. ``repeat``: exactly this many timed calls per cell.
    ``progress`` is told what is about to be timed.
    """
    if implementations is None:
        implementations = implementation_names()
    configure_allocator()
    rows: list[Row] = []
    for layer in layers:
        for case, reduced, names in _cases(layer, implementations):
            timed = []
            for name in names:
                if progress is not None:
                    progress(f"layer {layer.id} N={case.batch} {name}")
                calls = repeat
                if calls is None and quick:
                    calls = QUICK_CALLS[name != "reference"]
                timing = time_calls(
                    prepare(case, name), repeat=calls, budget_s=budget_s,
                    warmup_s=0.0 if quick else WARMUP_S,
                )
                timed.append(Row(
                    layer=layer.id, batch=case.batch, reduced=reduced, impl=name,
                    algorithm=algorithm_of(case, name), median_ms=timing.median_s * 1e3,
                    min_ms=timing.min_s * 1e3, calls=timing.calls,
                    gflops=case.flops / timing.median_s / 1e9,
                ))
            torch_ms = next((row.median_ms for row in timed if row.impl == "torch"), None)
            for row in timed:
                row.vs_torch = None if torch_ms is None else torch_ms / row.median_ms
            rows.extend(timed)
    return rows


# --- the table -----------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    here = os.path.join(os.path.dirname(__file__), "cpu", "__pycache__")
    if os.access(os.path.dirname(here), os.W_OK):
        return f"on, next to the sources ({here})"
    return "on, in numba's per-user cache directory (the sources are read-only)"


def machine_info() -> dict[str, object]:
    """CPU, threads, versions, BLAS and allocator: what a timing depends on."""
    import numba

    from .cpu import blas

    try:
        threading_layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        threading_layer = "not started yet"
    torch = sys.modules.get("torch")
    return {
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
        "allocator": _allocator or "system default",
    }


#: A cell whose median exceeds its minimum by this factor is marked noisy.
NOISY = 1.5


def _ms(row: Row) -> str:
    value = row.median_ms
    text = f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.1f}"
    return text + ("!" if value > NOISY * row.min_ms else "")


def _rate(value: float) -> str:
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if value < 100 else f"{value:.0f}x"


def _grid(lines: list[list[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(line[i]) for line in lines) for i in range(len(right))]
    return [
        "  ".join(
            cell.rjust(width) if flush_right else cell.ljust(width)
            for cell, width, flush_right in zip(line, widths, right, strict=True)
        ).rstrip()
        for line in lines
    ]


def geometric_mean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def format_table(rows: Sequence[Row], machine: dict[str, object] | None = None) -> str:
    """A plain-text table: one line per layer, ms and GFLOP/s per implementation,
    torch/auto and reference/auto; then the layers, a summary and the machine."""
    if machine is None:
        machine = machine_info()
    order = implementation_names(include_torch=True)
    impls = sorted({row.impl for row in rows}, key=order.index)
    layer_ids = list(dict.fromkeys(row.layer for row in rows))
    # What each layer's line shows: the full layer, except the reference, which
    # runs on its reference batch; "auto" on that batch gives reference/auto.
    shown: dict[str, dict[str, Row]] = {layer_id: {} for layer_id in layer_ids}
    auto_beside_ref: dict[str, Row] = {}
    for row in rows:
        if not row.reduced or row.impl == "reference":
            shown[row.layer][row.impl] = row
        elif row.impl == "auto":
            auto_beside_ref[row.layer] = row

    def versus_torch(layer_id: str) -> float | None:
        auto = shown[layer_id].get("auto")
        return auto.vs_torch if auto else None

    def versus_reference(layer_id: str) -> float | None:
        ref = shown[layer_id].get("reference")
        auto = auto_beside_ref.get(layer_id) if ref and ref.reduced else shown[layer_id].get("auto")
        return ref.median_ms / auto.median_ms if ref and auto else None

    ratios = []
    if "auto" in impls and "torch" in impls:
        ratios.append(("torch/", versus_torch))
    if "auto" in impls and "reference" in impls:
        ratios.append(("ref/", versus_reference))
    groups, heads = [""], ["layer"]
    for impl in impls:
        groups += [impl + ("*" if impl == "reference" else ""), ""]
        heads += ["ms", "GFLOP/s"] + (["picks"] if impl == "auto" else [])
        groups += [""] if impl == "auto" else []
    groups += [name for name, _ in ratios]
    heads += ["auto"] * len(ratios)
    right = [head not in ("layer", "picks") for head in heads]
    lines = []
    for layer_id in layer_ids:
        line = [layer_id]
        for impl in impls:
            row = shown[layer_id].get(impl)
            line += [_ms(row), _rate(row.gflops)] if row else ["-", "-"]
            if impl == "auto":
                line.append(row.algorithm if row else "-")
        line += [_ratio(ratio(layer_id)) for _, ratio in ratios]
        lines.append(line)

    suite = {layer.id: layer for layer in LAYERS}
    legend = []
    for layer_id in layer_ids:
        ref = shown[layer_id].get("reference")
        note = f"; reference on N={ref.batch}" if ref and ref.reduced else ""
        description = suite[layer_id].description if layer_id in suite else "?"
        legend.append(f"  {layer_id}  {description}{note}")
    torch_threads = f" ({machine['torch_threads']} threads)" if machine.get("torch_threads") else ""
    text = [
        "fastconv conv2d forward, float32 NCHW with bias: median ms of timed calls after warm-up",
        (
            f"CPU: {machine['cpu']}, {machine['cores']} cores; numba {machine['numba']} "
            f"({machine['numba_threads']} threads, {machine['threading_layer']} layer); "
            f"numpy {machine['numpy']}; torch {machine['torch'] or 'not installed'}{torch_threads}"
        ),
        f"BLAS: {machine['blas']}; allocator: {machine['allocator']}",
        "",
        *_grid([groups, heads, *lines], right),
        "",
        "layers (N images, C channels HxW, K filters RxS, stride s, padding p):",
        *legend,
        "GFLOP/s = 2*N*K*Ho*Wo*C/groups*R*S / median; torch/auto > 1: fastconv's auto is faster",
    ]
    if any(row.median_ms > NOISY * row.min_ms for row in rows):
        text.append(f"! median over {NOISY}x the fastest call: the machine was busy, rerun")
    if "reference" in impls:
        text.append("* the reference runs on the batch named above: its ms are for that batch,")
        text.append("  its GFLOP/s comparable; ref/auto times auto on that batch; '-': too slow")
    summary = []
    versus = {i: r for i in layer_ids if (r := versus_torch(i)) is not None}
    if versus:
        worst = min(versus, key=versus.__getitem__)
        summary.append(
            f"torch/auto geometric mean {_ratio(geometric_mean(list(versus.values())))} over "
            f"{len(versus)} layers, minimum {_ratio(versus[worst])} (layer {worst})"
        )
    speedups = {i: r for i in layer_ids if (r := versus_reference(i)) is not None}
    if speedups:
        layer_id = "a" if "a" in speedups else next(iter(speedups))
        summary.append(
            f"reference/auto on layer {layer_id} {_ratio(speedups[layer_id])} "
            f"(both on N={shown[layer_id]['reference'].batch})"
        )
    if summary:
        text.append("summary: " + "; ".join(summary))
    return "\n".join(text)


def rows_to_json(rows: Sequence[Row], machine: dict[str, object], **extra: object) -> str:
    """``{"machine": ..., "rows": [...], **extra}`` as indented JSON."""
    document = {"machine": machine, "rows": [dataclasses.asdict(row) for row in rows], **extra}
    return json.dumps(document, indent=2)


# --- compile time --------------------------------------------------------------------

# Runs in a fresh interpreter: the backend's import (numba, BLAS lookup), then
# fastconv.warmup(), which compiles every kernel or loads it from the cache.
_COMPILE_CHILD = """
import json, time
start = time.perf_counter()
import fastconv, fastconv.cpu
imported = time.perf_counter()
kernels = fastconv.warmup()
done = time.perf_counter()
print(json.dumps({"import_s": imported - start, "warmup_s": done - imported, "kernels": kernels}))
"""


@dataclass(frozen=True)
class CompileTiming:
    """Seconds of ``fastconv.warmup()`` in a fresh process (compile or cache load
    of every kernel), of importing the backend before it, and per kernel."""

    warmup_s: float
    import_s: float
    kernels: dict[str, float]
    cache: str


def compile_time(cache_dir: str | None = None) -> CompileTiming:
    """Run ``fastconv.warmup()`` in a fresh interpreter with Numba's cache in
    ``cache_dir`` (None: wherever this environment puts it)."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    child = subprocess.run(
        [sys.executable, "-c", _COMPILE_CHILD],
        env=env, capture_output=True, text=True, check=False,
    )
    if child.returncode != 0:
        raise RuntimeError(f"fastconv.warmup() failed in a subprocess:\n{child.stderr}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    return CompileTiming(
        warmup_s=result["warmup_s"], import_s=result["import_s"], kernels=result["kernels"],
        cache=cache_dir or "default",
    )


def cold_compile_time() -> CompileTiming:
    """JIT compile time: warm-up with an empty, temporary Numba cache."""
    with tempfile.TemporaryDirectory(prefix="fastconv-numba-cache-") as cache_dir:
        timing = compile_time(cache_dir)
    return dataclasses.replace(timing, cache="empty")


def warm_compile_time() -> CompileTiming:
    """Cache-load time: warm-up in a second process after a first one filled
    this environment's cache (equal to the compile time with FASTCONV_CACHE=0)."""
    compile_time()
    return compile_time()
