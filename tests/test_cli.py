"""The command line, run as a user runs it: ``python -m fastconv ...`` in a subprocess."""

from __future__ import annotations

import csv
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
    assert any(line.startswith("threaded kernels: ") and "on Numba's pool (" in line
               for line in result.stdout.splitlines())
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
    ("SIMD_BITS", "300", "must be 0, 256 or 512, got '300'"),
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


@pytest.fixture(autouse=True)
def _allocator_untouched(monkeypatch):
    """bench in this process (main([...])) leaves pytest's allocator alone: the command
    line's call of configure_allocator is recorded instead."""
    calls = []
    monkeypatch.setattr(bench, "configure_allocator", lambda: calls.append(1) or "mocked")
    return calls


def _table_lines(text: str) -> list[str]:
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100, max(lines, key=len)
    assert "speed bar" not in text and "NOT MET" not in text
    return lines


def test_bench_quick(tmp_path):
    report = tmp_path / "rows.json"
    result = fastconv("bench", "--quick", "--layers", "a", "--output", str(report))
    assert result.returncode == 0, result.stderr
    lines = _table_lines(result.stdout)
    assert any(line.split()[:1] == ["conv2d:a"] for line in lines)
    assert "conv2d forward with bias (GFLOP/s):" in lines
    document = json.loads(report.read_text())
    assert document["machine"]["numba_threads"] >= 1
    assert document["machine"]["allocator"].startswith("glibc malloc without mmap") or (
        document["machine"]["allocator"] == "system default")  # not glibc
    rows = document["rows"]
    assert {(row["op"], row["case"]) for row in rows} == {("conv2d", "a")}
    assert {"reference", "auto"} <= {row["impl"] for row in rows}
    assert all(row["median_ms"] > 0 and row["rate"] > 0 for row in rows)
    assert document["settings"]["cases"] == ["conv2d:a"]
    if HAS_TORCH:
        assert "torch/auto per op:" in result.stdout
        (auto,) = [row for row in rows if row["impl"] == "auto" and not row["reduced"]]
        assert auto["vs_torch"] > 0
        assert document["machine"]["torch_process"] == "own"
        assert "threads, a process of its own)" in result.stdout


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
    messages = ["conv2d:a N=64 direct", "conv2d:a N=64 winograd",
                "conv2d:a winograd: not timed, winograd needs a 3x3 kernel", "conv2d:a N=64 auto"]
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


def test_bench_progress_counts_the_cells(monkeypatch):
    """The bar's total is the number of cells bench.run_cases announces."""
    cases = bench.select_cases("conv2d:a,conv2d:b,conv2d:i,grad_input:g,max_pool2d")
    names = ["reference", "winograd", "auto"]
    announced = []

    def count(message):
        if ": not timed, " not in message:
            announced.append(message)

    monkeypatch.setattr(bench.suite, "time_cell", lambda *args, **kwargs: bench.Timing(
        1e-3, 1e-3, 1))
    bench.run_cases(cases, names, quick=True, progress=count)
    assert cli._cells(cases, names) == len(announced)


def test_the_library_leaves_the_allocator_alone(monkeypatch, _allocator_untouched):
    """bench.run, run_ops and run_cases time with the process's allocator as it is: only
    the command line (and the timed pytest benchmarks) call configure_allocator."""
    import ctypes

    called = []
    monkeypatch.setattr(bench.timing, "configure_allocator", lambda: called.append(1))
    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: called.append(args))
    before = bench.timing._allocator
    bench.run(bench.select_layers("a"), ["auto"], quick=True)
    bench.run_ops(bench.select_op_cases("repeat_unpool2d:x2"), ["auto"], quick=True)
    assert called == [] and _allocator_untouched == []
    assert bench.timing._allocator is before


def test_the_library_leaves_the_allocator_alone_in_a_fresh_process():
    code = ("from fastconv import bench; bench.run(bench.select_layers('a'), ['auto'], "
            "quick=True); print(bench.machine_info()['allocator'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=600, check=False, env=_environment())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "system default"


_TORCH_ROWS = """
import sys
from fastconv import bench
rows = bench.run_cases([bench.conv2d_case(bench.select_layers("a")[0])], ["auto", "torch"],
                       quick=True, torch_process={own})
torch_row, = [row for row in rows if row.impl == "torch"]
auto_row, = [row for row in rows if row.impl == "auto" and not row.reduced]
assert torch_row.median_ms > 0 and torch_row.calls == 2 and torch_row.algorithm == "torch"
assert auto_row.vs_torch == torch_row.median_ms / auto_row.median_ms
print("torch" in sys.modules)
"""


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("own", [True, False])
def test_torch_is_timed_in_a_process_of_its_own(own):
    """By default the CPU suites time torch in a child process: this one never imports
    torch, so no torch thread can spin beside fastconv's timings."""
    result = subprocess.run([sys.executable, "-c", _TORCH_ROWS.format(own=own)],
                            capture_output=True, text=True, timeout=600, check=False,
                            env=_environment())
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(not own)]


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_the_torch_process_says_what_failed_and_goes_on():
    layer = bench.select_layers("a")[0]
    bad = bench.conv2d_case(bench.Layer("bad", 1, 3, 8, 8, 4, 3, groups=2))
    with bench.TorchProcess(threads=1) as process:
        with pytest.raises(RuntimeError, match="torch failed on conv2d:bad in its own process"):
            process.time(bad, quick=True)
        timing = process.time(bench.conv2d_case(layer), repeat=3)
    assert timing.calls == 3 and 0 < timing.min_s <= timing.median_s


def test_bench_sets_the_allocator(monkeypatch, capsys, _allocator_untouched):
    monkeypatch.setattr(bench, "run_cases", lambda *a, **k: [])
    assert main(["bench", "--layers", "a"]) == 0
    assert _allocator_untouched == [1]
    assert "no case timed" in capsys.readouterr().out


def test_bench_ops_quick(tmp_path):
    report = tmp_path / "rows.json"
    cases = "grad_input:g,max_pool2d:2x2s2,repeat_unpool2d_backward"
    result = fastconv("bench", "--suite", "ops", "--quick", "--cases", cases,
                      "--output", str(report))
    assert result.returncode == 0, result.stderr
    assert "conv2d forward" not in result.stdout  # the conv2d suite did not run
    timed = {"grad_input:g"} | ({"max_pool2d:2x2s2", "repeat_unpool2d_backward:x2"}
                                if HAS_POOLING else set())
    lines = _table_lines(result.stdout)
    assert timed <= {line.split()[0] for line in lines if line.split()}
    document = json.loads(report.read_text())
    rows = document["rows"]
    assert {f"{row['op']}:{row['case']}" for row in rows} == timed
    assert {"reference", "auto"} <= {row["impl"] for row in rows}
    assert all(row["median_ms"] > 0 and row["rate"] > 0 for row in rows)
    assert {row["unit"] for row in rows if row["op"] == "grad_input"} == {"GFLOP/s"}
    assert {row["reduced"] for row in rows if row["impl"] == "reference"} == (
        {True, False} if HAS_POOLING else {True})  # repeat's reference runs on the full batch
    assert "speed_bars" not in document
    if HAS_TORCH:
        (auto,) = [row for row in rows if row["op"] == "grad_input" and row["impl"] == "auto"
                   and not row["reduced"]]
        assert auto["vs_torch"] > 0
        assert auto["algorithm"] in fastconv_package.available_algorithms("conv2d_grad_input")


def _row(op: str, case: str, impl: str, **fields) -> bench.Row:
    timing = {"batch": 8, "reduced": False, "algorithm": impl if impl != "auto" else "direct",
              "median_ms": 2.0, "min_ms": 1.9, "calls": 5, "rate": 1.0,
              "unit": bench.SPECS[op].unit, "vs_torch": 0.5}
    return bench.Row(op=op, case=case, impl=impl, **{**timing, **fields})


def _every_cell() -> list[bench.Row]:
    """A row per case of the table and implementation of its op, torch included, and the
    reference beside auto on a reduced batch: the widest tables the suites make."""
    rows = []
    for case in bench.CASES:
        names = case.implementation_names(include_torch=True)
        for impl in names:
            rows.append(_row(case.op, case.name, impl, median_ms=1234.5 if impl == "reference"
                             else 12.345, rate=0.0123, algorithm="im2col+direct"))
        rows.append(_row(case.op, case.name, "auto", reduced=True, batch=1))
    return rows


def test_bench_all_prints_every_kind_of_op(monkeypatch, capsys, tmp_path):
    """--suite all: a grid per kind of op, each at most 100 columns wide; the JSON has
    every row."""
    monkeypatch.setattr(bench, "run_cases", lambda *a, **k: _every_cell())
    report = tmp_path / "rows.json"
    plot = tmp_path / "rows.png"
    args = ["bench", "--suite", "all", "--output", str(report)]
    assert main([*args, "--plot", str(plot)] if HAS_MATPLOTLIB else args) == 0
    if HAS_MATPLOTLIB:
        assert plot.read_bytes().startswith(PNG_SIGNATURE)
    out = capsys.readouterr().out
    lines = _table_lines(out)
    assert out.index("conv2d forward with bias (GFLOP/s):") < out.index(
        "conv2d gradients and conv_transpose2d (GFLOP/s):") < out.index(
        "pooling and unpooling (GB/s):") < out.index("torch/auto per op:")
    for case in bench.CASES:
        assert any(line.startswith(f"{case.id} ") for line in lines), case.id
    document = json.loads(report.read_text())
    assert len(document["rows"]) == len(_every_cell())
    assert document["settings"]["suite"] == "all"
    assert document["settings"]["cases"] == [case.id for case in bench.CASES]


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "json"])
def test_bench_formats(monkeypatch, capsys, fmt):
    """--format: the table fits 100 columns; markdown tables; CSV a line per row with
    every field; JSON every row as the library's rows."""
    rows = _every_cell()
    monkeypatch.setattr(bench, "run_cases", lambda *a, **k: rows)
    assert main(["bench", "--suite", "all", "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert "speed bar" not in out and "NOT MET" not in out
    if fmt == "table":
        _table_lines(out)
    elif fmt == "markdown":
        assert "### pooling and unpooling (GB/s)" in out
        assert "| case | reference* ms | reference* GFLOP/s | direct ms |" in out
        assert "| conv2d:a | 1234.5! | 0.0123 |" in out
    elif fmt == "csv":
        parsed = list(csv.DictReader(io.StringIO(out)))
        assert len(parsed) == len(rows)
        assert parsed[0]["id"] == "conv2d:a" and float(parsed[0]["median_ms"]) == 1234.5
        assert set(parsed[0]) == set(bench.report.CSV_FIELDS)
    else:
        document = json.loads(out)
        assert [bench.Row(**row) for row in document["rows"]] == rows
        assert {"machine", "settings", "rows"} <= set(document)


def test_bench_compare_round_trip(tmp_path):
    """A run's --format json (or --output) is what --compare reads: each cell's ratio new
    ms / old ms, in every format."""
    args = ("bench", "--quick", "--layers", "a", "--algorithms", "direct,auto")
    first = fastconv(*args, "--format", "json")
    assert first.returncode == 0, first.stderr
    old = tmp_path / "old.json"
    old.write_text(first.stdout)
    document = json.loads(first.stdout)
    assert {row["impl"] for row in document["rows"]} == {"direct", "auto"}
    again = fastconv(*args, "--compare", str(old), "--output", str(tmp_path / "new.json"))
    assert again.returncode == 0, again.stderr
    lines = _table_lines(again.stdout)
    start = lines.index("compared with an earlier run: new ms / old ms per cell (< 1: faster now)")
    assert lines[start + 1].startswith(f"the earlier run: {old}: fastconv")
    head = next(i for i in range(start, len(lines)) if lines[i].startswith("case "))
    assert lines[head].split() == ["case", "direct", "auto"]
    ratios = lines[head + 1].split()
    assert ratios[0] == "conv2d:a" and all(r.endswith("x") for r in ratios[1:])
    assert lines[-1].startswith("geometric mean of new/old over 2 cells: ")
    saved = json.loads((tmp_path / "new.json").read_text())
    cells = saved["compare"]["cells"]
    assert [(cell["id"], cell["impl"]) for cell in cells] == [("conv2d:a", "direct"),
                                                              ("conv2d:a", "auto")]
    for cell in cells:
        assert cell["new_over_old"] == pytest.approx(cell["median_ms"] / cell["old_median_ms"])
    old_ms = {row["impl"]: row["median_ms"] for row in document["rows"]}
    assert [cell["old_median_ms"] for cell in cells] == [old_ms["direct"], old_ms["auto"]]


def test_compare_reads_the_older_json_too():
    """A JSON of the version before (conv2d rows by ``layer``, the op suite in ``op_rows``)."""
    old = {"machine": {"fastconv": "0.0"},
           "rows": [{"layer": "a", "batch": 8, "impl": "auto", "median_ms": 4.0}],
           "op_rows": [{"op": "grad_input", "case": "c", "batch": 8, "impl": "auto",
                        "median_ms": 1.0}]}
    rows = [_row("conv2d", "a", "auto"), _row("grad_input", "c", "auto"),
            _row("grad_input", "c", "direct"), _row("conv2d", "a", "auto", batch=16)]
    found = bench.compare(rows, old)
    assert [(c.row.id, c.ratio) for c in found] == [("conv2d:a", 0.5), ("grad_input:c", 2.0)]
    text = bench.report.format_comparison(found, old, "old.json")
    assert "geometric mean of new/old over 2 cells: 1.00x" in text


def test_bench_shape(tmp_path):
    """--shape: conv2d on a given layer instead of the suite, named by its numbers."""
    report = tmp_path / "rows.json"
    result = fastconv("bench", "--quick", "--shape", "2,8,10,10,8,3,1,1", "--algorithms",
                      "reference,auto", "--output", str(report))
    assert result.returncode == 0, result.stderr
    lines = _table_lines(result.stdout)
    assert any(line.startswith("  conv2d:n2c8h10w10k8r3p1  N2 C8 10x10, K8 3x3 p1")
               for line in lines)
    rows = json.loads(report.read_text())["rows"]
    assert {(row["op"], row["case"], row["batch"]) for row in rows} == {
        ("conv2d", "n2c8h10w10k8r3p1", 2)}
    assert {row["impl"] for row in rows} == {"reference", "auto"}


def test_bench_threads(tmp_path):
    """--threads N: Numba's threads for the run, and torch's."""
    algorithms = "auto,torch" if HAS_TORCH else "auto"
    result = fastconv("bench", "--quick", "--layers", "a", "--algorithms", algorithms,
                      "--threads", "1", "--format", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["machine"]["numba_threads"] == 1
    assert document["settings"]["threads"] == 1
    if HAS_TORCH:
        assert document["machine"]["torch_threads"] == 1


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("spec", ["max_pool2d:2x2s2,repeat_unpool2d",
                                  "max_pool2d|2x2s2,repeat_unpool2d"])
def test_bench_cases_are_named_alike_on_every_device(monkeypatch, capsys, device, spec):
    """--cases op:name (and the deprecated op|name) selects the same cases on the CPU and
    on the GPU (Numba's CUDA simulator here), and the tables name them so."""
    if not HAS_POOLING:
        pytest.skip("pooling is being added")
    if device == "cuda":
        from fastconv import cuda

        if not cuda.is_available() or not HAS_TORCH:
            pytest.skip("no CUDA simulator or no torch")
    else:  # the timing itself is tested above: here, the selection
        monkeypatch.setattr(bench.suite, "time_cell", lambda *a, **k: bench.Timing(1e-3, 1e-3, 1))
    assert main(["bench", "--device", device, "--cases", spec, "--algorithms", "auto",
                 "--quick", "--format", "csv"]) == 0
    captured = capsys.readouterr()
    ids = {line.split(",")[0] for line in captured.out.splitlines()[1:]}
    assert ids == {"max_pool2d:2x2s2", "repeat_unpool2d:x2"}
    assert ("deprecated" in captured.err) == ("|" in spec)
    assert "NOT MET" not in captured.out


def test_bench_help_names_one_cases_syntax():
    result = fastconv("bench", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "cases op:name such as conv2d:c" in text and "the same on every device" in text
    assert "The old form op|name still works; it is deprecated." in text
    for option in ("--format {table,markdown,csv,json}", "--threads N", "--compare FILE",
                   "--shape N,C,H,W,K,R[,stride,pad,groups]", "--output FILE"):
        assert option in text


@pytest.mark.parametrize(
    "args, message",
    [
        (("bench", "--layers", "a,z"), "unknown layer id 'z'"),
        (("bench", "--suite", "ops", "--cases", "max_pool2d:9x9"),
         "unknown case 'max_pool2d:9x9'; give ops ("),
        (("bench", "--suite", "ops", "--cases", "conv2d:a"), "unknown case 'conv2d:a'"),
        (("bench", "--suite", "pool"), "invalid choice: 'pool'"),
        (("bench", "--format", "xml"), "invalid choice: 'xml'"),
        (("bench", "--algorithms", "fast"), "unknown algorithm 'fast'"),
        (("bench", "--repeat", "0"), "positive integer"),
        (("bench", "--threads", "0"), "argument --threads: expected a positive integer"),
        (("bench", "--threads", "100000"), "argument --threads: at most "),
        (("bench", "--shape", "1,2"), "--shape: a layer shape must be N,C,H,W,K,R"),
        (("bench", "--shape", "1,2,4,4,3,3,1,0,2"), "--shape: groups must divide C and K"),
        (("bench", "--shape", "1,2,4,4,3,3", "--layers", "a"), "--shape replaces the layer"),
        (("bench", "--compare", "no/such/old.json"), "--compare: cannot read no/such/old.json"),
        (("bench", "--compare", "pyproject.toml"), "--compare: pyproject.toml is not the JSON"),
        (("bench", "--frobnicate"), "unrecognized arguments"),
        (("bench", "--plot", "no/such/folder/rows.png"), "--plot: no directory 'no/such/folder'"),
        (("bench", "--plot", "rows.svg"), "--plot: expected a file name ending in .png"),
        (("bench", "--json", "no/such/folder/rows.json"), "--json: no directory"),
        (("bench", "--output", "no/such/folder/rows.json"), "--output: no directory"),
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


@pytest.mark.parametrize("option, name", [("--output", "rows.json"), ("--json", "rows.json"),
                                          ("--plot", "rows.png")])
def test_unwritable_output_is_one_line(monkeypatch, capsys, tmp_path, option, name):
    """Writing after the timings fails: one line, status 1 (here: the name is a folder)."""
    if option == "--plot" and not HAS_MATPLOTLIB:
        pytest.skip("--plot needs matplotlib")
    monkeypatch.setattr(bench, "run_cases", lambda *a, **k: [_row("conv2d", "a", "auto")])
    (tmp_path / name).mkdir()
    assert main(["bench", option, str(tmp_path / name)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"fastconv bench: error: cannot write {tmp_path / name}: "
                                    "Is a directory")


def test_main_returns_the_status(capsys):
    assert main(["bench", "--layers", "z"]) == 2
    assert "unknown layer id" in capsys.readouterr().err
    assert main(["--version"]) == 0
    assert "fastconv" in capsys.readouterr().out


@pytest.mark.parametrize(
    "case", [*bench.LAYERS, *(case for case in bench.OP_CASES if case.layer is not None)],
    ids=lambda case: f"conv2d:{case.id}" if isinstance(case, bench.Layer) else case.id,
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
    """winograd computes 3x3 and 5x5 stride-1 layers and 3x3-4x4 stride-2 ones only: a 7x7
    layer and grad_input on layer g (1x1) are '-' cells of the tables and have no pytest
    benchmark."""
    layer = bench.custom_layer("2,3,12,12,4,7", "x")
    assert "winograd needs a 3x3 or 5x5 kernel" in bench.refusal(layer, "winograd")
    assert bench.refusal(layer, "auto") is None
    ids = [id for id, *_ in bench.op_benchmarks(["grad_input"])]
    assert "grad_input-c-winograd" in ids
    assert "grad_input-g-winograd" not in ids
    rows = bench.run([layer], ["winograd", "auto"], quick=True)
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


def test_bench_interleaves_rounds_with_torch_apart(monkeypatch):
    """With torch in a process of its own, a case's cells are timed in ROUNDS interleaved
    rounds on a share of the budget each, a cell the median of its rounds' medians; a
    batch with the reference keeps one round; the progress total counts every round."""
    order, medians = [], iter([1, 4, 2, 7, 3, 9, 5, 6, 8, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2])

    def timed(name, budget_s):
        order.append((name, budget_s))
        return bench.Timing(next(medians) * 1e-3, 1e-4, 5)

    class OwnProcess:
        def __init__(self, threads):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            pass

        def time(self, case, *, budget_s, **options):
            return timed("torch", budget_s)

    monkeypatch.setattr(bench.suite, "TorchProcess", OwnProcess)
    monkeypatch.setattr(bench.suite, "time_cell",
                        lambda fn, name, *, budget_s, **options: timed(name, budget_s))
    cases = bench.select_cases("conv2d:b")
    names = ["direct", "auto", "torch"]
    announced = []
    rows = bench.run_cases(cases, names, progress=announced.append)
    rounds = bench.suite.ROUNDS
    assert rounds == 3
    assert order == [(name, bench.timing.BUDGET_S / rounds) for name in names] * rounds
    by_impl = {row.impl: row for row in rows}
    # direct: 1, 7, 5 -> 5; auto: 4, 3, 6 -> 4; torch: 2, 9, 8 -> 8
    assert [by_impl[name].median_ms for name in names] == pytest.approx([5, 4, 8])
    assert by_impl["auto"].calls == 15 and by_impl["auto"].vs_torch == pytest.approx(2)
    assert len(announced) == cli._cells(cases, names, torch_apart=True) == 3 * rounds
    # in one process, in quick mode, or beside the reference: one round
    assert cli._cells(cases, names) == cli._cells(cases, names, quick=True,
                                                  torch_apart=True) == 3
    order.clear()
    rows = bench.run_cases(cases, ["reference", "auto", "torch"], progress=announced.append)
    assert [name for name, _ in order].count("reference") == 1
    assert [name for name, _ in order].count("torch") == rounds  # the full batch's rounds
