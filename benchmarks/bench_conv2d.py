"""conv2d forward on the layer suite of :mod:`fastconv.bench`: one group per
layer (``conv2d|<id>``), one benchmark per implementation that fastconv runs on
the layer (none for ``winograd`` on a 5x5 layer: :func:`fastconv.bench.refusal`).

The reference is too slow for whole layers; it is timed with ``auto`` beside it
on the layer's reference batch, in its own group (``conv2d|<id>|N<batch>``).
Under ``--benchmark-disable`` every case runs once, as a smoke test.
"""

from __future__ import annotations

import pytest

from fastconv import bench

IMPLEMENTATIONS = bench.implementation_names(include_torch=True)


def _run(benchmark, time_call, case: bench.Layer, impl: str, group: str) -> None:
    benchmark.group = group
    median_s = time_call(bench.prepare(case, impl), impl)
    if median_s is not None:
        benchmark.extra_info.update(
            gflops=round(case.flops / median_s / 1e9, 2),
            flops=case.flops,
            batch=case.batch,
            algorithm=bench.algorithm_of(case, impl),
        )


@pytest.mark.parametrize(
    "layer, impl",
    [
        pytest.param(layer, impl, id=f"{layer.id}-{impl}")
        for layer in bench.LAYERS
        for impl in IMPLEMENTATIONS
        if impl != "reference" and bench.refusal(layer, impl) is None
    ],
)
def test_conv2d(benchmark, time_call, layer, impl):
    _run(benchmark, time_call, layer, impl, f"conv2d|{layer.id}")


@pytest.mark.parametrize(
    "layer, impl",
    [
        pytest.param(layer, impl, id=f"{layer.id}-{impl}")
        for layer in bench.LAYERS
        if layer.reference_batch is not None
        for impl in ("reference", "auto")
    ],
)
def test_conv2d_reference_batch(benchmark, time_call, layer, impl):
    case = layer.reference_case()
    _run(benchmark, time_call, case, impl, f"conv2d|{layer.id}|N{case.batch}")
