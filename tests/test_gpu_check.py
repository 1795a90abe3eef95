"""benchmarks/gpu_check.py, the real-GPU check, kept working on machines without a GPU:
its check-and-time part runs here on tiny shapes under Numba's CUDA simulator."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

import fastconv.cuda
from fastconv import bench
from tests import background

pytestmark = pytest.mark.skipif(not fastconv.cuda.is_available(),
                                reason="no GPU and no CUDA simulator")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_CASES = ("conv2d:h,conv2d:a,grad_weight:g,conv_transpose2d,max_pool2d:3x3s2p1,"
          "avg_pool2d_backward:2x2s2,max_unpool2d,repeat_unpool2d_backward")


@background.command("gpu-check-simulated")
def _simulated_run(scratch: Path) -> background.Command | None:
    if not fastconv.cuda.is_available() or not fastconv.cuda.simulated():
        return None
    return background.Command(
        [sys.executable, str(SCRIPT), "--tiny", "--skip-tests", "--cases", _CASES, "--json",
         str(scratch / "rows.json")], dict(os.environ))


@pytest.mark.background("gpu-check-simulated")
@pytest.mark.skipif(not fastconv.cuda.simulated(), reason="the real run is gpu_check itself")
def test_gpu_check_runs_and_checks_against_torch():
    # the script as a user runs it, in a process of its own started beside the suite (the
    # simulator runs every GPU thread as Python)
    pytest.importorskip("torch")
    done = background.wait("gpu-check-simulated", timeout=1500)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-4000:]
    report = Path(done.args[-1])
    assert "fastconv CUDA vs PyTorch" in out
    assert "correctness: all results within" in out
    for case in ("conv2d:h", "grad_weight:g", "conv_transpose2d:N8C128", "max_pool2d:3x3s2p1",
                 "avg_pool2d_backward:2x2s2", "max_unpool2d:2x2s2",
                 "repeat_unpool2d_backward:x2"):
        assert f"\n{case} " in out, case
    # the project's targets are marked as such, after the results
    assert "project target (not a result), pooling: " in out
    assert out.index("correctness: ") < out.index("project target")
    document = json.loads(report.read_text())
    assert document["machine"]["device"] == "cuda" and document["machine"]["gpus"]
    rows = document["rows"]
    assert {row["device"] for row in rows} == {"cuda"}
    assert all(row["error"] <= bench.TOLERANCE for row in rows if row["impl"] != "torch")
    assert "reference" not in {row["impl"] for row in rows}


def test_the_gpu_check_draws_from_the_case_table():
    """The GPU check times the case table of fastconv.bench (the CPU suites' cases), at
    its own batch or on tiny shapes: the same ids, ops and windows."""
    table = bench.CASES
    placed = bench.gpu_cases(table)
    assert [case.id for case in placed] == [case.id for case in table]
    assert {case.batch for case in placed} == {bench.GPU_BATCH}
    assert [case.window for case in placed] == [case.window for case in table]
    tiny = bench.gpu_cases(table, tiny=True)
    assert [case.id for case in tiny] == [case.id for case in table]
    assert all(case.batch == 1 for case in tiny)


def test_unknown_case_is_a_clear_error(capsys):
    with pytest.raises(ValueError, match="unknown case 'conv3d'"):
        bench.select_cases("conv3d")
    assert _gpu_check().main(["--tiny", "--skip-tests", "--cases", "conv3d"]) == 2
    assert "unknown case 'conv3d'" in capsys.readouterr().err
