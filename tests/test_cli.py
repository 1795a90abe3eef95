"""The command line, run as a user runs it: ``python -m fastconv ...`` in a subprocess."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

import fastconv as fastconv_package
from fastconv import bench, dispatch
from fastconv.__main__ import main

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_POOLING = hasattr(fastconv_package, "max_pool2d")  # being added


def fastconv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastconv", *args],
        capture_output=True, text=True, timeout=600, check=False,
    )


@pytest.mark.parametrize("args", [(), ("bench",), ("info",)])
def test_help(args):
    result = fastconv(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: fastconv")


def test_info():
    result = fastconv("info")
    assert result.returncode == 0, result.stderr
    for expected in ("numba threads:", "threading layer:", "numba cache:", "BLAS:",
                     "conv2d algorithms: auto, "):
        assert expected in result.stdout


def test_bench_quick(tmp_path):
    report = tmp_path / "rows.json"
    result = fastconv("bench", "--quick", "--layers", "a", "--json", str(report))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split()[:1] == ["a"] for line in lines)
    assert "summary: " in result.stdout
    assert "reference/auto on layer a " in result.stdout
    document = json.loads(report.read_text())
    assert document["machine"]["numba_threads"] >= 1
    rows = document["rows"]
    assert {row["layer"] for row in rows} == {"a"}
    assert {"reference", "auto"} <= {row["impl"] for row in rows}
    assert all(row["median_ms"] > 0 and row["gflops"] > 0 for row in rows)
    if HAS_TORCH:
        assert "torch/auto geometric mean" in result.stdout
        (auto,) = [row for row in rows if row["impl"] == "auto" and not row["reduced"]]
        assert auto["vs_torch"] > 0


def test_bench_ops_quick(tmp_path):
    report = tmp_path / "rows.json"
    cases = "grad_input|g,max_pool2d|2x2s2,repeat_unpool2d_backward"
    result = fastconv("bench", "--suite", "ops", "--quick", "--cases", cases,
                      "--json", str(report))
    assert result.returncode == 0, result.stderr
    assert "fastconv conv2d forward" not in result.stdout  # the conv2d suite did not run
    timed = {"grad_input|g"} | ({"max_pool2d|2x2s2", "repeat_unpool2d_backward|x2"}
                                if HAS_POOLING else set())
    lines = result.stdout.splitlines()
    assert timed <= {line.split()[0] for line in lines if line.split()}
    document = json.loads(report.read_text())
    assert document["rows"] == []
    rows = document["op_rows"]
    assert {f"{row['op']}|{row['case']}" for row in rows} == timed
    assert {"reference", "auto"} <= {row["impl"] for row in rows}
    assert all(row["median_ms"] > 0 and row["rate"] > 0 for row in rows)
    assert {row["unit"] for row in rows if row["op"] == "grad_input"} == {"GFLOP/s"}
    assert {row["reduced"] for row in rows if row["impl"] == "reference"} == (
        {True, False} if HAS_POOLING else {True})  # repeat's reference runs on the full batch
    if HAS_TORCH:
        assert "speed bar, backward (grad_input, grad_weight+bias): torch/auto >= 0.5x" in (
            result.stdout)
        assert [bar["name"] for bar in document["speed_bars"]][:1] == [
            "backward (grad_input, grad_weight+bias)"]
        (auto,) = [row for row in rows if row["op"] == "grad_input" and row["impl"] == "auto"
                   and not row["reduced"]]
        assert auto["vs_torch"] > 0
        assert auto["algorithm"] in fastconv_package.available_algorithms("conv2d_grad_input")


def test_bench_all_prints_both_tables(monkeypatch, capsys, tmp_path):
    """--suite all: the conv2d table, then the op table; the JSON has the rows of both."""
    timing = {"batch": 8, "reduced": False, "impl": "auto", "algorithm": "direct",
              "median_ms": 2.0, "min_ms": 1.9, "calls": 5, "vs_torch": 0.5}
    monkeypatch.setattr(bench, "run", lambda *a, **k: [bench.Row(layer="a", gflops=1.0,
                                                                   **timing)])
    monkeypatch.setattr(bench, "run_ops", lambda *a, **k: [
        bench.OpRow(op="grad_input", case="c", rate=3.0, unit="GFLOP/s", **timing)])
    report = tmp_path / "rows.json"
    assert main(["bench", "--suite", "all", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert out.index("fastconv conv2d forward") < out.index("fastconv ops") < out.index(
        "speed bar, backward")
    assert "minimum 0.50x (grad_input|c, over 1 case): met" in out
    document = json.loads(report.read_text())
    assert [row["layer"] for row in document["rows"]] == ["a"]
    assert [row["case"] for row in document["op_rows"]] == ["c"]
    assert document["settings"]["suite"] == "all"


@pytest.mark.parametrize(
    "args, message",
    [
        (("bench", "--layers", "a,z"), "unknown layer id 'z'"),
        (("bench", "--suite", "ops", "--cases", "max_pool2d|9x9"),
         "unknown op or case 'max_pool2d|9x9'"),
        (("bench", "--suite", "pool"), "invalid choice: 'pool'"),
        (("bench", "--algorithms", "fast"), "unknown algorithm 'fast'"),
        (("bench", "--repeat", "0"), "positive integer"),
        (("bench", "--frobnicate"), "unrecognized arguments"),
        ((), "required: COMMAND"),
    ],
)
def test_usage_error_is_one_line(args, message):
    result = fastconv(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr


def test_main_returns_the_status(capsys):
    assert main(["bench", "--layers", "z"]) == 2
    assert "unknown layer id" in capsys.readouterr().err
    assert main(["--version"]) == 0
    assert "fastconv" in capsys.readouterr().out


@pytest.mark.parametrize(
    "case", [*bench.LAYERS, *(case for case in bench.OP_CASES if case.layer is not None)],
    ids=lambda case: f"conv2d|{case.id}" if isinstance(case, bench.Layer) else case.id,
)
def test_refusals_are_decided_on_the_problems_fastconv_dispatches(monkeypatch, case):
    """bench.refusal decides on the (op, problem) pairs that fastconv's call passes to
    the dispatcher (recorded here, with kernels that do nothing)."""
    asked = []

    def select(op, device, algorithm, **problem):
        asked.append((op, problem))
        return algorithm, lambda *args: None

    call = (bench.prepare(case, "direct") if isinstance(case, bench.Layer)
            else case.bind().prepare("direct"))
    monkeypatch.setattr(dispatch, "select", select)
    call()
    ops = [op for op, _ in case.dispatched()]
    assert [(op, problem) for op, problem in asked if op in ops] == list(case.dispatched())


def test_refused_cells_are_neither_timed_nor_benchmarks():
    """winograd computes 3x3 stride-1 layers only: layer b (5x5) and grad_input on layer g
    (1x1) are '-' cells of the tables and have no pytest benchmark."""
    (layer_b,) = bench.select_layers("b")
    assert "winograd needs a 3x3 kernel" in bench.refusal(layer_b, "winograd")
    assert bench.refusal(layer_b, "auto") is None
    ids = [id for id, *_ in bench.op_benchmarks(["grad_input"])]
    assert "grad_input-c-winograd" in ids
    assert "grad_input-g-winograd" not in ids
    rows = bench.run([layer_b], ["winograd", "auto"], quick=True)
    assert [row.impl for row in rows] == ["auto"]
