"""The training demo: a short run learns the digits, reports its times and its per-op
breakdown, and writes two valid PNGs; the command line's help and its usage errors."""

from __future__ import annotations

import io
import re
import struct
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from fastconv import demo  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """A 3-epoch run (the --quick length) and its report."""
    out = tmp_path_factory.mktemp("demo")
    report = io.StringIO()
    result = demo.run(demo.QUICK_EPOCHS, out_dir=out / "figures", progress=False,
                      stream=report)
    return result, report.getvalue(), out / "figures"


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG file, after checking its signature and header chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13, path
    assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82", path
    return struct.unpack(">II", data[16:24])


def test_quick_run_learns(quick):
    result, _, _ = quick
    assert result.test_accuracy > 0.8  # chance is 0.1
    assert result.train_accuracy > 0.8
    assert result.epochs == 3 and result.steps == 3 * 43 == len(result.losses)
    assert np.mean(result.losses[-10:]) < 0.5 * np.mean(result.losses[:10])
    assert len(result.epoch_test_accuracy) == 3
    assert result.epoch_test_accuracy[-1] == result.test_accuracy


def test_quick_run_writes_valid_pngs(quick):
    result, _, folder = quick
    assert {result.filters_png, result.loss_png} == {folder / "filters.png",
                                                     folder / "loss.png"}
    for path in (result.filters_png, result.loss_png):
        width, height = png_size(path)
        assert width > 300 and height > 200, path
    import matplotlib.image

    pixels = matplotlib.image.imread(result.filters_png)
    assert pixels.ndim == 3 and pixels.std() > 0.05  # not a blank canvas


def test_quick_run_reports_times_and_breakdown(quick):
    result, report, _ = quick
    assert set(result.op_times) == {*demo.OPS, "other"}
    # every op is timed where it runs (a row left at 0 was never timed), and the timed
    # ops cover the step: what no op accounts for (batching, the Python in between)
    # is a small part, however slow or loaded the machine
    assert all(result.op_times[name] > 0 for name in demo.OPS), result.op_times
    assert result.op_times["other"] < 0.25 * result.train_s, result.op_times
    assert 0 < result.compile_s < result.wall_s
    assert result.compile_s + result.train_s < result.wall_s
    assert result.images_per_s > 0
    for text in ("JIT compilation", "test accuracy:", "by op:", "wall time:",
                 str(result.filters_png)):
        assert text in report, text
    rows = dict(re.findall(r"^  ([a-z ]+?) +[\d.]+ +[\d.]+ +([\d.]+)%$", report, re.M))
    assert set(rows) == {*demo.OPS, "other"}
    assert float(rows["other"]) < 25


def test_run_is_reproducible_and_restores_threads(tmp_path):
    import numba

    threads = numba.get_num_threads()
    runs = [demo.run(1, out_dir=tmp_path, progress=False, stream=io.StringIO(), seed=3)
            for _ in range(2)]
    assert runs[0].losses == runs[1].losses
    assert numba.get_num_threads() == threads


def test_main_shows_progress_and_report(tmp_path, capsys):
    assert demo.main(["--epochs", "1", "--batch-size", "64", "--out", str(tmp_path),
                      "--seed", "1"]) == 0
    captured = capsys.readouterr()
    # stderr is not a terminal here: a line per epoch, no bar
    assert re.fullmatch(r"training: epoch 1/1, loss [\d.]+, test accuracy [\d.]+%\n",
                        captured.err), captured.err
    assert "test accuracy:" in captured.out and "conv backward" in captured.out
    assert (tmp_path / "loss.png").is_file()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _show(progress: demo._Progress, epochs: int = 2, steps: int = 12) -> None:
    losses: list[float] = []
    for epoch in range(1, epochs + 1):
        for _ in range(steps):
            losses.append(0.5)
            progress.step(10, epoch, losses)
        progress.epoch(epoch, 0.5, 0.9)
    progress.close()


def test_progress_in_a_log_has_no_carriage_returns():
    """stderr that is not a terminal (a log, a pipe): a line per epoch, nothing per step."""
    log = io.StringIO()
    _show(demo._Progress(240, 2, stream=log))
    assert log.getvalue().splitlines() == [
        "training: epoch 1/2, loss 0.500, test accuracy 90.00%",
        "training: epoch 2/2, loss 0.500, test accuracy 90.00%"]
    assert "\r" not in log.getvalue()


def test_progress_on_a_terminal_is_a_tqdm_bar():
    terminal = _Terminal()
    _show(demo._Progress(240, 2, stream=terminal))
    assert "\r" in terminal.getvalue() and "img/s" in terminal.getvalue()
    assert "loss=0.500" in terminal.getvalue()
    assert "training: epoch" not in terminal.getvalue()


def test_progress_without_tqdm_is_a_line_per_epoch(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails
    terminal = _Terminal()
    _show(demo._Progress(240, 2, stream=terminal))
    assert terminal.getvalue().splitlines() == [
        "training: epoch 1/2, loss 0.500, test accuracy 90.00%",
        "training: epoch 2/2, loss 0.500, test accuracy 90.00%"]


def test_no_progress_shows_nothing():
    for stream in (io.StringIO(), _Terminal()):
        _show(demo._Progress(240, 2, enabled=False, stream=stream))
        assert stream.getvalue() == ""


def test_main_help(capsys):
    assert demo.main(["--help"]) == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage: fastconv demo")
    for option in ("--epochs", "--quick", "--seed", "--batch-size", "--out", "--no-progress"):
        assert option in help_text


@pytest.mark.parametrize("argv", [
    ["--epochs", "0"], ["--epochs", "many"], ["--bogus"], ["--algorithm", "fft"],
    ["--momentum", "1.5"], ["--lr", "-1"], ["--threads", "1000"],
    ["--seed", "-1"], ["--seed", "1.5"], ["--lr", "nan"], ["--lr", "inf"],
    ["--momentum", "nan"], ["--momentum", "inf"], ["--momentum", "-0.1"],
])
def test_bad_argument_is_a_usage_error_and_status_2(argv, capsys):
    assert demo.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0].startswith("usage: fastconv demo "), captured.err
    assert lines[-1].startswith("fastconv demo: error: "), captured.err


def test_run_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        demo.run(1, batch_size=0, out_dir=tmp_path)


@pytest.mark.parametrize("option, value, expected", [
    ("--seed", "-1", "argument --seed: expected a non-negative int, got '-1'"),
    ("--lr", "nan", "argument --lr: expected a finite positive number, got 'nan'"),
    ("--momentum", "inf", "argument --momentum: expected a number in [0, 1), got 'inf'"),
])
def test_bad_argument_messages(option, value, expected, capsys):
    assert demo.main([option, value]) == 2
    assert expected in capsys.readouterr().err


@pytest.fixture
def no_training(monkeypatch):
    """Makes compiling or training an error: the checks must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("compiled or trained before the output folder was checked")

    monkeypatch.setattr(demo, "_compile", refuse)
    monkeypatch.setattr(demo, "_train", refuse)


def test_unusable_out_folder_fails_before_training(tmp_path, capsys, no_training):
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    for out in (a_file, a_file / "figures"):
        assert demo.main(["--epochs", "1", "--out", str(out), "--no-progress"]) == 1
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert len(lines) == 1, captured.err
        assert lines[0].startswith("fastconv demo: error: ") and str(out) in lines[0]
        assert "cannot write the figures to" in lines[0]
    with pytest.raises(OSError, match="cannot write the figures"):
        demo.run(1, out_dir=a_file, progress=False, stream=io.StringIO())


def test_run_creates_the_out_folder_before_training(tmp_path, no_training):
    folder = tmp_path / "a" / "b"
    with pytest.raises(AssertionError, match="before the output folder was checked"):
        demo.run(1, out_dir=folder, progress=False, stream=io.StringIO())
    assert folder.is_dir() and not any(folder.iterdir())


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": -1}, "seed must be a non-negative int, got -1"),
    ({"lr": float("nan")}, "lr must be a finite real number > 0, got nan"),
    ({"momentum": float("inf")}, "momentum must be a finite real number >= 0, got inf"),
])
def test_run_checks_its_arguments_before_training(kwargs, message, tmp_path, no_training):
    with pytest.raises(ValueError, match=message):
        demo.run(1, out_dir=tmp_path, progress=False, stream=io.StringIO(), **kwargs)
