"""Shared fixtures: a fresh, seeded random generator per test.

On a machine without an NVIDIA GPU the CUDA tests run under Numba's CUDA
simulator: ``NUMBA_ENABLE_CUDASIM=1`` is set here, before anything imports
``numba.cuda``, unless the environment already says otherwise. On a GPU machine
the same tests run on the GPU.
"""

from __future__ import annotations

import glob
import os
import zlib

# Numba's and PyTorch's OpenMP threads both spin while idle by default; in one process
# that alternates between them (the comparisons with PyTorch) they slow each other down.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# no "compiling fastconv kernels..." notice on stderr: tests that check stderr would see it
# depending on which test compiled first (tests/test_notice.py sets its own environment)
os.environ.setdefault("FASTCONV_QUIET", "1")
if "NUMBA_ENABLE_CUDASIM" not in os.environ and not glob.glob("/dev/nvidia[0-9]*"):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
    # the simulator runs every thread as Python: small tiles keep it quick, and
    # several blocks per launch are still exercised
    for name, value in (("CUDA_GEMM_TILE", "8"), ("CUDA_GEMM_TILE_K", "4"),
                        ("CUDA_GEMM_THREAD_TILE", "2")):
        os.environ.setdefault("FASTCONV_" + name, value)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded from the test's node id: fresh data per test, reproducible per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _fresh_plans():
    """Each test starts with no cached plans (a test that swaps a chooser or a kernel must
    not leave its choice behind); hits within a test still use the cache."""
    import fastconv.plans

    fastconv.plans.clear()
    yield


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "background(name): the test waits for tests.background's command name")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Queue the background commands of the collected tests (see tests/background.py)."""
    from tests import background

    if session.config.option.collectonly:
        return
    background.schedule([marker.args[0] for item in session.items
                         for marker in item.iter_markers("background")])


def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests import background

    background.stop_all()
