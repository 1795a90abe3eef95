"""benchmarks/gpu_check.py, the real-GPU check, kept working on machines without a GPU:
its check-and-time part runs here on tiny shapes under Numba's CUDA simulator."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import fastconv.cuda

pytestmark = pytest.mark.skipif(not fastconv.cuda.is_available(),
                                reason="no GPU and no CUDA simulator")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not fastconv.cuda.simulated(), reason="the real run is gpu_check itself")
def test_gpu_check_runs_and_checks_against_torch(capsys, tmp_path):
    pytest.importorskip("torch")
    cases = ("conv2d:h,conv2d:a,grad_weight:g,conv_transpose2d,max_pool2d:3x3s2p1,"
             "avg_pool2d_backward:2x2s2,max_unpool2d,repeat_unpool2d_backward")
    status = _gpu_check().main(["--tiny", "--skip-tests", "--cases", cases,
                                "--json", str(tmp_path / "rows.json")])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "fastconv CUDA vs PyTorch" in out
    assert "correctness: all results within" in out
    for op in ("conv2d", "grad_weight", "conv_transpose2d", "max_pool2d ",
               "avg_pool2d_backward", "max_unpool2d", "repeat_unpool2d_backward"):
        assert op in out
    assert "speed bar pooling" in out
    assert (tmp_path / "rows.json").read_text().startswith("{")


def test_unknown_case_is_a_clear_error():
    from fastconv.cuda import bench as gpu_bench

    with pytest.raises(ValueError, match="unknown GPU cases"):
        gpu_bench.select(gpu_bench.cases(1, tiny=True), "conv3d")
