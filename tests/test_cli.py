"""The command line, run as a user runs it: ``python -m fastconv ...`` in a subprocess."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest

import fastconv as fastconv_package
from fastconv import __main__ as dunder_main
from fastconv import bench, cli, dispatch
from fastconv.cli import main

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HAS_POOLING = hasattr(fastconv_package, "max_pool2d")  # being added


def _environment(**env: str) -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items()
                   if name != "NUMBA_THREADING_LAYER"}
    environment.update(env)
    return environment


def fastconv(*args: str, **env: str) -> subprocess.CompletedProcess:
    """``python -m fastconv ARGS`` with the environment variables ``env`` added."""
    return subprocess.run(
        [sys.executable, "-m", "fastconv", *args],
        capture_output=True, text=True, timeout=600, check=False, env=_environment(**env),
    )


def test_the_entry_point_is_the_cli():
    """``python -m fastconv`` and the ``fastconv`` script (fastconv.__main__:main)."""
    assert dunder_main.main is cli.main


@pytest.mark.parametrize("args", [(), ("bench",), ("info",)])
def test_help(args):
    result = fastconv(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: fastconv")


def test_help_lists_every_command():
    commands = fastconv("--help").stdout
    assert all(f"    {name} " in commands for name in ("bench", "info", "demo"))


def test_demo_help_is_the_demos_own():
    pytest.importorskip("fastconv.demo")
    result = fastconv("demo", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: fastconv demo")
    assert "--epochs" in result.stdout


def test_demo_gets_its_arguments(monkeypatch):
    demo = pytest.importorskip("fastconv.demo")
    if any(importlib.util.find_spec(name) is None for name in ("sklearn", "matplotlib")):
        pytest.skip("the demo needs scikit-learn and matplotlib")
    passed = []
    monkeypatch.setattr(demo, "run", lambda *args, **kwargs: passed.append((args, kwargs)))
    assert main(["demo", "--epochs", "2", "--quick", "--out", "x", "--lr", "0.1",
                 "--no-progress"]) == 0
    assert main(["demo", "--quick", "--seed", "3", "--algorithm", "direct"]) == 0
    assert passed == [
        ((2,), {"batch_size": demo.BATCH_SIZE, "lr": 0.1, "momentum": demo.MOMENTUM, "seed": 0,
                "out_dir": cli.Path("x"), "algorithm": "auto", "threads": 1,
                "progress": False}),
        ((demo.QUICK_EPOCHS,), {"batch_size": demo.BATCH_SIZE, "lr": demo.LR,
                                "momentum": demo.MOMENTUM, "seed": 3,
                                "out_dir": cli.Path("demo-output"), "algorithm": "direct",
                                "threads": 1, "progress": True}),
    ]


@pytest.mark.parametrize("package", ["sklearn", "matplotlib"])
def test_demo_without_its_packages_is_one_line(monkeypatch, capsys, package):
    pytest.importorskip("fastconv.demo")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == package else find_spec(name, *args))
    assert main(["demo", "--quick"]) == 1
    assert capsys.readouterr().err == (
        "fastconv demo needs scikit-learn and matplotlib: pip install 'fastconv[demo]'\n")
    assert main(["demo", "--help"]) == 0  # its help needs none of them


def test_info():
    result = fastconv("info")
    assert result.returncode == 0, result.stderr
    for expected in ("numba threads:", "threading layer:", "numba cache:", "BLAS:",
                     "conv2d algorithms: auto, ", "CPU features: ", "\nCUDA: "):
        assert expected in result.stdout
    features = next(line for line in result.stdout.splitlines()
                    if line.startswith("CPU features: "))
    assert "(LLVM: " in features


def test_info_cuda_line(monkeypatch):
    """The CUDA line says why there is no GPU, or lists what fastconv.cuda.devices() sees."""
    from fastconv import cuda

    monkeypatch.setattr(cli, "_version", lambda package: None)
    assert cli._cuda_lines() == [
        "CUDA: not available: numba-cuda is not installed (pip install 'fastconv[cuda]')"]
    monkeypatch.setattr(cli, "_version", lambda package: "0.30")
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    (line,) = cli._cuda_lines()
    assert line.startswith("CUDA: not available: numba-cuda 0.30: ")
    gpus = ["cuda:0 NVIDIA H100 (compute capability 9.0)", "cuda:1 NVIDIA H100 (compute "
            "capability 9.0)"]
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "devices", lambda: gpus)
    monkeypatch.setattr(cuda, "simulated", lambda: False)
    assert cli._cuda_lines() == ["CUDA: available, numba-cuda 0.30, 2 GPU(s)",
                                 *(f"  {gpu}" for gpu in gpus)]
    monkeypatch.setattr(cuda, "simulated", lambda: True)
    monkeypatch.setattr(cuda, "devices", lambda: ["cuda:0 Numba CUDA simulator"])
    assert cli._cuda_lines() == [
        "CUDA: simulated (NUMBA_ENABLE_CUDASIM=1, numba-cuda 0.30): cuda:0 Numba CUDA simulator"]


#: ``python -m fastconv info`` in a process where fastconv cannot make TBB loadable: the
#: ``tbb`` wheel looks absent to fastconv.cpu.threads (which loads its library by path).
_INFO_WITHOUT_TBB_WHEEL = """
    import importlib.metadata, sys
    distribution = importlib.metadata.distribution

    def hide_tbb(name):
        if name == "tbb":
            raise importlib.metadata.PackageNotFoundError(name)
        return distribution(name)

    importlib.metadata.distribution = hide_tbb
    from fastconv.cli import main
    sys.exit(main(["info"]))
"""


@pytest.mark.parametrize("layer", ["tbb", "no-such-layer"])
def test_info_when_the_requested_threading_layer_cannot_load(layer):
    """NUMBA_THREADING_LAYER names a layer that cannot load (TBB without its library; a
    name Numba does not know): info says so in its threading lines and goes on."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_INFO_WITHOUT_TBB_WHEEL)], capture_output=True,
        text=True, timeout=600, check=False, env=_environment(NUMBA_THREADING_LAYER=layer))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    (threads,) = [line for line in lines if line.startswith("numba threads: ")]
    (layers,) = [line for line in lines if line.startswith("threading layers (numba -s): ")]
    assert "workqueue loads" in layers
    if layer == "tbb" and "tbb loads" in layers:  # a TBB the loader finds without the wheel
        assert threads.endswith("threading layer: tbb (requested: tbb)")
    else:
        assert threads.startswith(f"numba threads: none; threading layer: none could be "
                                  f"loaded (requested: {layer}): ")
    if layer == "tbb" and "tbb loads" not in layers:
        assert "tbb cannot be loaded (" in layers
        assert "No threading layer could be loaded" in threads
    # the parts after it are still there
    assert any(line.startswith("conv2d algorithms: auto, ") for line in lines)
    assert any(line.startswith("CUDA: ") for line in lines)


def test_info_threading_lines():
    result = fastconv("info")
    assert result.returncode == 0, result.stderr
    (threads,) = [line for line in result.stdout.splitlines()
                  if line.startswith("numba threads: ")]
    assert threads.endswith(" (requested: default)") and "threading layer: " in threads
    (layers,) = [line for line in result.stdout.splitlines()
                 if line.startswith("threading layers (numba -s): ")]
    assert [part.split()[0] for part in layers.split(": ", 1)[1].split(", ")] == [
        "tbb", "omp", "workqueue"]


def test_info_reports_a_part_that_fails_in_one_line(monkeypatch, capsys):
    def broken():
        raise RuntimeError("no BLAS here\nsecond line")

    parts = [(label, broken if label == "BLAS" else lines) for label, lines in cli.INFO_PARTS]
    monkeypatch.setattr(cli, "INFO_PARTS", tuple(parts))
    assert main(["info"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "BLAS: unavailable: RuntimeError: no BLAS here second line" in lines
    assert lines[0].startswith("fastconv ") and lines[-1].startswith("CUDA: ")
    assert any(line.startswith("numba cache: ") for line in lines)
    assert captured.err == ""


@pytest.mark.parametrize("variable, value, message", [
    ("CACHE", "maybe", "must be 0 or 1 (or false/true, no/yes, off/on), got 'maybe'"),
    ("DIRECT_BLOCK_K", "0", "must be >= 1, got '0'"),
    ("IM2COL_TILE_BYTES", "1MB", "must be an integer >= 1, got '1MB'"),
])
@pytest.mark.parametrize("args", [("info",), ("bench", "--quick", "--layers", "a"),
                                  ("demo", "--quick")], ids=lambda args: args[0])
def test_bad_config_value_is_one_line_and_status_2(variable, value, message, args):
    result = fastconv(*args, **{f"FASTCONV_{variable}": value})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"fastconv: FASTCONV_{variable} {message}"]
    assert result.stdout == ""


@pytest.mark.parametrize("args", [("--help",), ("info", "--help"), ("bench", "--help"),
                                  ("demo", "--help")], ids=" ".join)
def test_help_with_a_bad_config_value_warns_in_one_line(args):
    result = fastconv(*args, FASTCONV_CACHE="maybe")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: fastconv")
    assert result.stderr.splitlines() == [
        "fastconv: FASTCONV_CACHE must be 0 or 1 (or false/true, no/yes, off/on), got 'maybe'"]


def test_bad_config_value_in_the_library():
    """``import fastconv`` works; a kernel that reads the setting raises a ValueError that
    names the variable, its value and what it accepts."""
    code = """
        import numpy as np
        import fastconv
        from fastconv import config
        print(config.problems())
        try:
            fastconv.conv2d(np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32))
        except ValueError as error:
            print("ValueError:", error)
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, timeout=600, check=False,
                            env=_environment(FASTCONV_PARALLEL="sometimes"))
    assert result.returncode == 0, result.stderr
    message = ("FASTCONV_PARALLEL must be 0 or 1 (or false/true, no/yes, off/on), "
               "got 'sometimes'")
    assert result.stdout.splitlines() == [repr([message]), f"ValueError: {message}"]


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


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="--plot needs matplotlib")
def test_bench_quick_plot(tmp_path):
    plot = tmp_path / "rows.png"
    result = fastconv("bench", "--quick", "--layers", "a", "--algorithms", "auto",
                      "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    assert plot.read_bytes().startswith(PNG_SIGNATURE)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bench_progress(monkeypatch):
    """A bar over the cells on a terminal where tqdm is installed, else a line per cell."""
    pytest.importorskip("tqdm")
    messages = ["layer a N=64 direct", "layer a N=64 winograd",
                "layer a winograd: not timed, winograd needs a 3x3 kernel", "layer a N=64 auto"]
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with cli._progress(3) as progress:
        bar = progress.bar
        for message in messages:
            progress(message)
        assert bar.n == 2  # told before each cell: two are done
    assert bar.n == bar.total == 3
    assert "timing:" in terminal.getvalue()
    assert "not timed" not in terminal.getvalue()
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    with cli._progress(3) as progress:
        for message in messages:
            progress(message)
    assert log.getvalue().splitlines() == [f"timing {message}" for message in messages]


def test_bench_progress_counts_the_cells():
    """The bar's total is the number of cells bench.run and bench.run_ops announce."""
    layers = bench.select_layers("a,b,i")
    cases = bench.select_op_cases("grad_input|g,max_pool2d")
    names = ["reference", "winograd", "auto"]
    announced = []

    def count(message):
        if ": not timed, " not in message:
            announced.append(message)

    original = bench._time_cell
    try:
        bench._time_cell = lambda *args, **kwargs: bench.Timing(1e-3, 1e-3, 1)
        bench.run(layers, names, quick=True, progress=count)
        bench.run_ops(cases, names, quick=True, progress=count)
    finally:
        bench._time_cell = original
    assert cli._cells(layers, names, cases, names) == len(announced)


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
    plot = tmp_path / "rows.png"
    args = ["bench", "--suite", "all", "--json", str(report)]
    assert main([*args, "--plot", str(plot)] if HAS_MATPLOTLIB else args) == 0
    if HAS_MATPLOTLIB:
        assert plot.read_bytes().startswith(PNG_SIGNATURE)
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
        (("bench", "--plot", "no/such/folder/rows.png"), "--plot: no directory 'no/such/folder'"),
        (("bench", "--plot", "rows.svg"), "--plot: expected a file name ending in .png"),
        (("bench", "--json", "no/such/folder/rows.json"), "--json: no directory"),
        (("info", "--cuda"), "unrecognized arguments: --cuda"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
        ((), "required: COMMAND"),
        (("demo", "--epochs", "0"), "argument --epochs: expected a positive integer, got '0'"),
        (("demo", "--threads", "100000"), "argument --threads: at most "),
    ],
)
def test_usage_error_is_argparses(args, message):
    """Every usage error, argparse's or a handler's: the usage of the (sub)command, then
    ``fastconv COMMAND: error: MESSAGE``, status 2."""
    result = fastconv(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    prog = "fastconv" if args[:1] in ((), ("frobnicate",)) else f"fastconv {args[0]}"
    assert lines[0].startswith(f"usage: {prog} ")
    assert lines[-1].startswith(f"{prog}: error: ") and message in lines[-1], lines
    assert result.stdout == ""


def test_plot_without_matplotlib_is_a_usage_error(monkeypatch, capsys, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: (
        None if name == "matplotlib" else find_spec(name, *args)))
    assert main(["bench", "--plot", str(tmp_path / "rows.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fastconv bench ")
    assert err.endswith("\nfastconv bench: error: --plot needs matplotlib: pip install "
                        "matplotlib\n")


@pytest.mark.parametrize("option, name", [("--json", "rows.json"), ("--plot", "rows.png")])
def test_unwritable_output_is_one_line(monkeypatch, capsys, tmp_path, option, name):
    """Writing after the timings fails: one line, status 1 (here: the name is a folder)."""
    if option == "--plot" and not HAS_MATPLOTLIB:
        pytest.skip("--plot needs matplotlib")
    monkeypatch.setattr(bench, "run", lambda *a, **k: [bench.Row(
        layer="a", batch=8, reduced=False, impl="auto", algorithm="direct", median_ms=2.0,
        min_ms=1.9, calls=5, gflops=1.0)])
    (tmp_path / name).mkdir()
    assert main(["bench", option, str(tmp_path / name)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"fastconv bench: error: cannot write {tmp_path / name}: "
                                "Is a directory"]


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

    def choose(op, device, algorithm, *, arrays=(), params=(), **problem):
        asked.append((op, problem))
        return dispatch.Choice(algorithm, lambda *args: None, "requested", "")

    call = (bench.prepare(case, "direct") if isinstance(case, bench.Layer)
            else case.bind().prepare("direct"))
    monkeypatch.setattr(dispatch, "choose", choose)
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


def test_tune_times_given_shapes_and_reuses_the_file(tmp_path):
    env = dict(os.environ, FASTCONV_TUNE_CACHE=str(tmp_path))
    command = [sys.executable, "-m", "fastconv", "tune", "--shape", "2,8,6,6,8,3,1,1",
               "--forward-only"]
    first = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == f"tuning file: {tmp_path / 'tune.json'}"
    assert "conv2d" in lines[1] and "measured" in lines[1] and "fastest when timed" in lines[1]
    again = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert again.returncode == 0, again.stderr
    assert " cache " in again.stdout.splitlines()[1]
    info = subprocess.run([sys.executable, "-m", "fastconv", "info"], capture_output=True,
                          text=True, env=env, check=False)
    assert f"tuning file: {tmp_path / 'tune.json'} (1 entries)" in info.stdout


@pytest.mark.parametrize("arguments, message", [
    (["--shape", "1,2"], "a layer shape must be N,C,H,W,K,R"),
    (["--layers", "z"], "unknown layer id 'z'"),
    (["--layers", "a", "--batches", "0"], "--batches must be ints >= 1"),
])
def test_tune_usage_errors(arguments, message):
    result = subprocess.run([sys.executable, "-m", "fastconv", "tune", *arguments],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
