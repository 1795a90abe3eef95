"""The one timing rule, for every implementation on the CPU and on the GPU, and the
compile-time measurement.

- JIT compilation stays out of the timings: each implementation is called at least
  twice (and for at least ``WARMUP_S`` seconds) before it is timed; the compile time
  is measured on its own, in a fresh process (:func:`cold_compile_time`,
  :func:`warm_compile_time`).
- A cell is the median (and minimum) of single calls timed with ``time.perf_counter``,
  as many as fit in ``BUDGET_S`` seconds, at least ``MIN_CALLS`` and at most
  ``MAX_CALLS``, with the garbage collector paused. On a GPU each timed call ends by
  waiting for the device (``sync``), so a call's time is the time its result takes
  to be ready, as a user's next step sees it. Where the CPU suites time torch in a
  process of its own, a case's cells are timed in interleaved rounds, each on a share of
  the budget, and a cell is the median of its rounds' medians
  (:func:`fastconv.bench.suite.rounds_for`): both libraries then see the same minutes of
  a machine whose speed drifts.
- Every call allocates its output, as a user's call does, for fastconv and torch
  alike. :func:`configure_allocator` makes glibc keep freed memory, so that no
  library page-faults a fresh buffer on every call (benchmarks/RESULTS.md,
  "Measurements behind the design", 1). It changes the whole process, so only the
  command line (``python -m fastconv bench``) and the timed pytest benchmarks call
  it; no library function does.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Seconds of timed calls per cell (implementation x case), on the CPU and on the GPU.
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
class Timing:
    median_s: float
    min_s: float
    calls: int


def _synced(fn: Callable[[], object], sync: Callable[[], None] | None) -> Callable[[], object]:
    """``fn`` followed by ``sync`` (the device's wait), or ``fn`` alone."""
    if sync is None:
        return fn

    def call() -> None:
        fn()
        sync()

    return call


def warm_up(fn: Callable[[], object], *, calls: int = 2, seconds: float = WARMUP_S,
            sync: Callable[[], None] | None = None) -> float:
    """Call ``fn`` (then ``sync``) at least ``calls`` times and for at least ``seconds``;
    return the duration of the last call, an estimate of one warm call."""
    call = _synced(fn, sync)
    start = time.perf_counter()
    done = 0
    while True:
        before = time.perf_counter()
        call()
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
    warmup_calls: int = 2,
    sync: Callable[[], None] | None = None,
) -> Timing:
    """Warm ``fn`` up (``warmup_calls`` and ``warmup_s`` at least), then time ``repeat``
    calls (default: as many as fit in ``budget_s``) one by one with the garbage collector
    paused; ``sync``, where given, runs after each call, inside its time (a GPU's wait
    for its work)."""
    call = _synced(fn, sync)
    per_call = warm_up(call, calls=warmup_calls, seconds=warmup_s)
    calls = repeat if repeat is not None else calls_for(per_call, budget_s)
    times = []
    collecting = gc.isenabled()
    gc.disable()
    try:
        for _ in range(calls):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    finally:
        if collecting:
            gc.enable()
    return Timing(statistics.median(times), min(times), calls)


def time_cell(
    fn: Callable[[], object],
    impl: str,
    *,
    quick: bool = False,
    repeat: int | None = None,
    budget_s: float = BUDGET_S,
    sync: Callable[[], None] | None = None,
    called: int = 0,
) -> Timing:
    """Time one cell (``impl`` on a case) as the suites do: :func:`time_calls`, or in
    ``quick`` mode (a smoke test) two warm-up calls and :data:`QUICK_CALLS` timed ones.
    ``called``: calls already made (a check, a probe of auto's pick), which count
    towards the two warm-up calls (one is always made)."""
    calls = repeat
    if calls is None and quick:
        calls = QUICK_CALLS[impl != "reference"]
    return time_calls(fn, repeat=calls, budget_s=budget_s, warmup_s=0.0 if quick else WARMUP_S,
                      warmup_calls=max(1, 2 - called), sync=sync)


# --- the allocator -------------------------------------------------------------------

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_allocator: str | None = None


def configure_allocator() -> str:
    """Make glibc's malloc reuse freed memory instead of returning it to the
    system, and say what the allocator is.

    By default large buffers are mapped fresh and page-faulted on every call,
    which can cost more than a convolution (torch on layer i: 27.5 ms instead
    of 10.2 ms). With mmap off and trimming at 1 GiB every library's output
    buffer comes back warm after the warm-up. Process-wide and for the rest of the
    process, applied once: ``python -m fastconv bench`` and the timed pytest
    benchmarks call it, :func:`fastconv.bench.run` and the other library functions
    never do.
    """
    global _allocator
    if _allocator is None:
        _allocator = "system default"
        if platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL(None)
            if libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30):
                _allocator = "glibc malloc without mmap, trim threshold 1 GiB (same for all)"
    return _allocator


def allocator() -> str:
    """What :func:`configure_allocator` set, or ``"system default"`` where it has not run."""
    return _allocator or "system default"


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
