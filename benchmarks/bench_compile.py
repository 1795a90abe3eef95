"""JIT compile time, kept out of the conv2d timings: ``fastconv.warmup()`` in a
fresh interpreter, with an empty Numba cache and with a warm one.

The benchmark's time includes the interpreter's start; ``extra_info`` holds
the seconds measured inside it, for the warm-up and for importing the backend.
"""

from __future__ import annotations

import dataclasses

import pytest

from fastconv import bench


def _record(benchmark, timing: bench.CompileTiming) -> None:
    benchmark.extra_info.update(dataclasses.asdict(timing))


def _fill_cache() -> None:
    bench.compile_time()


def test_compile_empty_cache(benchmark):
    benchmark.group = "compile"
    if benchmark.disabled:
        pytest.skip("compiling every kernel takes tens of seconds; run with --benchmark-only")
    _record(benchmark, benchmark.pedantic(bench.cold_compile_time, rounds=1, iterations=1))


def test_compile_warm_cache(benchmark):
    benchmark.group = "compile"
    fill_cache = None if benchmark.disabled else _fill_cache
    timing = benchmark.pedantic(bench.compile_time, setup=fill_cache, rounds=1, iterations=1)
    assert timing.warmup_s > 0
    _record(benchmark, timing)
