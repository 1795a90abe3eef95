"""pytest-benchmark set-up shared by the benchmarks: the allocator state of
``python -m fastconv bench`` (set only when the benchmarks are timed), its machine
description in the saved JSON, the warm-up and timing of one benchmark
(:func:`time_call`), and the op suite's benchmarks of a module's ``OPS``
(:func:`time_op`). The problems are :mod:`fastconv.bench`'s case table.

Every benchmark sets ``benchmark.group`` (one group per layer or case, the
implementations side by side) and is timed by pytest-benchmark's calibration, so
its options apply, e.g.::

    pytest benchmarks/ --benchmark-only -k max_pool2d --benchmark-max-time=0.2
    pytest benchmarks/ --benchmark-only --benchmark-save=base
    pytest benchmarks/ --benchmark-only --benchmark-compare --benchmark-histogram
"""

from __future__ import annotations

import pytest

from fastconv import bench


@pytest.fixture(scope="session", autouse=True)
def _warm_allocator(request) -> None:
    # only where timings are taken: the smoke run inside the test suite keeps the
    # process's default allocator
    if not request.config.getoption("benchmark_disable", False):
        bench.configure_allocator()


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    """:func:`fastconv.bench.machine_info`, as it is while the benchmarks run.

    pytest-benchmark takes it at the end of a run to save it, and before any benchmark
    for ``--benchmark-compare``, which warns where it differs from the saved run's.
    So the state the run sets up is set up first: the allocator, and Numba's thread
    pool (after fastconv.cpu, which makes TBB loadable); torch's threads are those
    that :mod:`fastconv.bench` gives it, whether or not torch has run yet."""
    import numba

    import fastconv.cpu  # noqa: F401

    if not config.getoption("benchmark_disable", False):
        bench.configure_allocator()
    numba.get_num_threads()  # starts the thread pool: the threading layer is known
    info = bench.machine_info()
    info["torch_threads"] = info["numba_threads"] if info["torch"] is not None else None
    machine_info["fastconv"] = info


def pytest_generate_tests(metafunc):
    """A test that takes ``op_benchmark`` runs once per benchmark of its module's
    ``OPS`` (:func:`fastconv.bench.op_benchmarks`): ``(case, impl, reduced)``, for each
    implementation that fastconv runs on the case (:func:`fastconv.bench.refusal`)."""
    if "op_benchmark" in metafunc.fixturenames:
        params = bench.op_benchmarks(metafunc.module.OPS)
        metafunc.parametrize("op_benchmark", [param for _, *param in params],
                             ids=[id for id, *_ in params])


@pytest.fixture
def time_call(benchmark):
    """``time_call(fn, impl)``: benchmark ``fn``, ``impl``'s call, after an untimed
    warm-up, and return its median in seconds; under ``--benchmark-disable`` call it
    once (the compilation included) and return None.

    The warm-up (:func:`fastconv.bench.warm_up`: two calls and 0.2 s at least) keeps
    the JIT compilation, or the cache load, out of the timing, and lets the other
    library's spinning thread pool go idle (torch and Numba share this process; for
    timings free of each other's threads run ``-k torch`` and ``-k "not torch"`` apart,
    or ``python -m fastconv bench``, which times torch in a process of its own).
    The timing itself is pytest-benchmark's: its calibration picks the rounds and
    iterations, and ``--benchmark-max-time``, ``--benchmark-min-rounds``,
    ``--benchmark-warmup`` (on top of this warm-up) and the rest apply."""

    def run(fn, impl: str) -> float | None:
        if impl == "torch":
            pytest.importorskip("torch")
        if not benchmark.disabled:
            bench.warm_up(fn)
        benchmark(fn)
        return None if benchmark.disabled else benchmark.stats.stats.median

    return run


@pytest.fixture
def time_op(benchmark, time_call):
    """``time_op(case, impl, reduced)``: :func:`time_call` on an op-suite case (``op:name``)
    in the group ``op|name`` (``op|name|N<batch>`` for the reference batch; the groups'
    names of earlier saved runs), with the rate in ``extra_info`` (``gflops`` or ``gbps``).

    Skips cases whose op this fastconv lacks, and, under ``--benchmark-disable``,
    the reference on a reduced batch, which takes about a second."""

    def run(case: bench.OpCase, impl: str, reduced: bool) -> None:
        benchmark.group = f"{case.op}|{case.name}" + (f"|N{case.batch}" if reduced else "")
        if not case.available():
            pytest.skip(f"fastconv has no {case.spec.function} yet")
        if benchmark.disabled and impl == "reference" and reduced:
            pytest.skip("the reference takes about a second here; run with --benchmark-only")
        bound = case.bind()
        fn = bound.prepare(impl)
        median_s = time_call(fn, impl)
        if median_s is not None:
            flops = case.unit == "GFLOP/s"
            benchmark.extra_info.update({
                "gflops" if flops else "gbps": round(bound.work / median_s / 1e9, 2),
                "flops" if flops else "bytes": bound.work,
                "batch": case.batch,
                "algorithm": case.probe(impl, fn),
            })

    return run
