"""The command line, run as a user runs it: ``python -m fastconv ...`` in a subprocess."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from fastconv.__main__ import main

HAS_TORCH = importlib.util.find_spec("torch") is not None


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


@pytest.mark.parametrize(
    "args, message",
    [
        (("bench", "--layers", "a,z"), "unknown layer id 'z'"),
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
