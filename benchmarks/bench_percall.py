"""Per-call cost on trainer-sized calls (issue 10): the six tiny calls on a
(1, 4, 8, 8) input and the LeNet/CIFAR layers at batches 1, 4 and 32, fastconv
and torch side by side, one group per call (``percall|tiny|conv2d``).

The table and the calls are :mod:`percall`'s; ``python benchmarks/percall.py``
times the same calls with PyTorch in a subprocess of its own and prints the
ratios quoted in RESULTS.md.
"""

from __future__ import annotations

import pytest
from percall import CALLS, arrays, fastconv_call, torch_call


@pytest.mark.parametrize("impl", ["fastconv", "torch"])
@pytest.mark.parametrize("call", CALLS, ids=[f"{c[0]}|{c[1]}" for c in CALLS])
def test_percall(benchmark, time_call, call, impl):
    group, name, op, shape, filters, kernel, padding = call
    if impl == "torch":
        pytest.importorskip("torch")
    if benchmark.disabled and group == "trainer" and shape[0] > 1:
        pytest.skip("the smoke run takes batch 1 only; run with --benchmark-only")
    benchmark.group = f"percall|{group}|{name}"
    make = fastconv_call if impl == "fastconv" else torch_call
    time_call(make(op, arrays(op, shape, filters, kernel, padding), kernel, padding), impl)
