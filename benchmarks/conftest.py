"""pytest-benchmark set-up shared by the benchmarks: the allocator state of
``python -m fastconv bench`` and its machine description in the saved JSON."""

from __future__ import annotations

import pytest

from fastconv import bench


@pytest.fixture(scope="session", autouse=True)
def _warm_allocator() -> None:
    bench.configure_allocator()


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["fastconv"] = bench.machine_info()
