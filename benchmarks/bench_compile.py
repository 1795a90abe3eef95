"""JIT compile time, kept out of the conv2d timings: ``fastconv.warmup()`` in a
fresh interpreter, with an empty Numba cache and with a warm one.

The benchmark's time includes the interpreter's start; ``extra_info`` holds
the seconds measured inside it (of the last round), for the warm-up and for
importing the backend.

Every round is a fresh interpreter. The warm cache is filled first, untimed, then
timed by pytest-benchmark's calibration (``--benchmark-max-time`` and
``--benchmark-min-rounds`` apply). A compile with an empty cache takes tens of
seconds and is not calibrated (its calibration call and its final call would be two
more compiles): it runs exactly ``--benchmark-min-rounds`` rounds (default 5; ``=1``
for one), each with a new empty cache.
"""

from __future__ import annotations

import dataclasses

import pytest

from fastconv import bench


def _record(benchmark, timing: bench.CompileTiming) -> None:
    benchmark.extra_info.update(dataclasses.asdict(timing))


def test_compile_empty_cache(benchmark, request):
    benchmark.group = "compile"
    if benchmark.disabled:
        pytest.skip("compiling every kernel takes tens of seconds; run with --benchmark-only")
    rounds = max(1, request.config.getoption("benchmark_min_rounds"))
    _record(benchmark, benchmark.pedantic(bench.cold_compile_time, rounds=rounds, iterations=1))


def test_compile_warm_cache(benchmark):
    benchmark.group = "compile"
    if not benchmark.disabled:
        bench.compile_time()  # fills this environment's cache, untimed
    timing = benchmark(bench.compile_time)
    assert timing.warmup_s > 0
    _record(benchmark, timing)
