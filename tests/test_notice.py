"""First-run feedback: the line before the first cold compile of a process
(fastconv._notice) and fastconv.warmup()'s progress bar."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
import textwrap
import types

import numba
import numpy as np
import pytest

import fastconv
import fastconv.cpu._jit  # noqa: F401 - installs the compile listener
from fastconv import _notice, config, ops, plans

NOTICE = "compiling fastconv kernels"
POOL_NOTICE = "compiling fastconv kernels for max_pool2d (first run only, cached afterwards)..."

# two tiny ops whose kernels compile in about a second each
POOLS = """
import numpy as np, fastconv
x = np.ones((1, 1, 4, 4), np.float32)
fastconv.max_pool2d(x, 2)
fastconv.avg_pool2d(x, 2)
print("ok")
"""


def _run(code: str, cache_dir: os.PathLike, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a new process with Numba's disk cache in ``cache_dir`` and fastconv's
    default settings (no FASTCONV_* variable but those in ``env``)."""
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith("FASTCONV_")
                   and name not in ("NUMBA_BOUNDSCHECK", "NUMBA_DISABLE_JIT",
                                    "NUMBA_THREADING_LAYER")}
    environment.update(env, NUMBA_CACHE_DIR=str(cache_dir))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, timeout=300, check=False, env=environment)
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr
    return result


def test_a_cold_compile_prints_the_notice_once_and_a_warm_cache_none(tmp_path):
    cold = _run(POOLS, tmp_path)
    assert cold.stderr.count(NOTICE) == 1, cold.stderr
    assert POOL_NOTICE + "\n" in cold.stderr
    warm = _run(POOLS, tmp_path)  # the same cache, now holding both kernels
    assert NOTICE not in warm.stderr, warm.stderr


def test_quiet_silences_the_notice(tmp_path):
    quiet = _run(POOLS, tmp_path, FASTCONV_QUIET="1")
    assert NOTICE not in quiet.stderr, quiet.stderr
    assert list(tmp_path.rglob("*.nbi")), "the kernels did compile (and went to the cache)"


# --- the listener, in this process -------------------------------------------------------


@pytest.fixture
def fresh_notice(monkeypatch):
    """The notice not printed yet in this process, printed to this test's stderr."""
    monkeypatch.setattr(_notice, "_printed", False)
    monkeypatch.setattr(_notice, "_write", None)
    monkeypatch.setattr(config, "QUIET", False)
    monkeypatch.setattr(fastconv.cpu._jit, "disk_cache", lambda: True)


def _compiled_in(module: str):
    """A new (uncached) Numba dispatcher whose function belongs to ``module``."""
    def add_one(x):
        return x + 1

    add_one.__module__ = module
    return numba.njit(cache=False)(add_one)


def test_only_fastconv_kernels_count_and_the_op_comes_from_the_plans(fresh_notice, capsys):
    _compiled_in("somebody_else")(1)
    assert capsys.readouterr().err == ""
    plans.building.op = "conv2d"
    try:
        _compiled_in("fastconv.cpu.direct")(1)
        _compiled_in("fastconv.cpu.im2col")(1.0)
    finally:
        plans.building.op = None
    assert capsys.readouterr().err == (
        "compiling fastconv kernels for conv2d (first run only, cached afterwards)...\n")


def test_without_an_op_the_notice_names_none(fresh_notice, capsys):
    _compiled_in("fastconv.cpu.pool")(1)
    assert capsys.readouterr().err == (
        "compiling fastconv kernels (first run only, cached afterwards)...\n")


def test_a_failing_notice_never_breaks_the_compile(fresh_notice, monkeypatch):
    def broken(line: str) -> None:
        raise OSError("stderr closed")

    monkeypatch.setattr(_notice, "_write", broken)
    assert _compiled_in("fastconv.cpu.pool")(1) == 2


def test_put_records_the_op_of_the_new_plan():
    plans.put(("max_pool2d", "auto"), lambda x: x)
    assert plans.building.op == "max_pool2d"
    plans.put(None, lambda x: x)  # out=, device=: not keyed, op unknown
    assert plans.building.op is None


# --- warmup()'s progress bar -----------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def one_op(monkeypatch):
    """warmup() over max_pool2d alone (its direct kernel: one step per dtype)."""
    monkeypatch.setattr(ops, "TABLE", {"max_pool2d": ops.TABLE["max_pool2d"]})
    monkeypatch.setattr(config, "QUIET", False)


def test_warmup_on_a_log_writes_no_bar(one_op, capsys):
    assert list(fastconv.warmup(dtypes=[np.float32])) == ["max_pool2d/direct/float32"]
    err = capsys.readouterr().err
    assert "\r" not in err and "warmup" not in err
    assert err in ("", POOL_NOTICE + "\n")  # if this process had not compiled yet


def test_warmup_on_a_terminal_shows_a_bar(one_op, monkeypatch):
    pytest.importorskip("tqdm")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    timings = fastconv.warmup(dtypes=[np.float32, np.float64])
    assert list(timings) == ["max_pool2d/direct/float32", "max_pool2d/direct/float64"]
    shown = terminal.getvalue()
    assert "\r" in shown and "max_pool2d/direct/float64" in shown and "2/2" in shown


def test_warmup_on_a_terminal_without_tqdm_writes_no_bar(one_op, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(fastconv.warmup(dtypes=[np.float32])) == ["max_pool2d/direct/float32"]
    assert "\r" not in terminal.getvalue()


def test_quiet_warmup_shows_no_bar(one_op, monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(config, "QUIET", True)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    fastconv.warmup(dtypes=[np.float32])
    assert terminal.getvalue() == ""


class _FakeBar:
    """What warmup() asks of tqdm, recorded."""

    made: list[_FakeBar] = []

    def __init__(self, **options) -> None:
        self.options = options
        self.disable = options.get("disable") is None and not options["file"].isatty()
        self.descriptions: list[str] = []
        self.written: list[str] = []
        self.steps = 0
        self.closed = False
        _FakeBar.made.append(self)

    def set_description(self, text: str, refresh: bool = True) -> None:
        self.descriptions.append(text)

    def update(self, n: int = 1) -> None:
        self.steps += n

    def write(self, line: str, file=None) -> None:
        self.written.append(line)

    def close(self) -> None:
        self.closed = True


def test_warmup_steps_through_op_algorithm_dtype_and_the_notice_goes_above_the_bar(
        fresh_notice, monkeypatch):
    """One step per op/algorithm/dtype, each named while it runs; a compile notice during
    the warm-up is written through the bar (tqdm.write), not across its line."""
    calls = []

    def warm_up(functional, dtype, algorithm):
        calls.append((algorithm, str(dtype)))
        _notice.notify("conv2d")  # as the listener does before a cold compile

    conv = dataclasses.replace(ops.TABLE["conv2d"], warm_up=warm_up)
    monkeypatch.setattr(ops, "TABLE", {"conv2d": conv})
    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=_FakeBar))
    monkeypatch.setattr(_FakeBar, "made", [])
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    timings = fastconv.warmup(dtypes=[np.float32, np.float64])
    names = [f"conv2d/{a}/{d}" for d in ("float32", "float64")
             for a in ("direct", "im2col", "winograd")]
    assert list(timings) == names
    (bar,) = _FakeBar.made
    assert bar.options["total"] == 6 and bar.options["disable"] is None
    assert bar.descriptions[:6] == names and bar.steps == 6 and bar.closed
    assert bar.written == [
        "compiling fastconv kernels for conv2d (first run only, cached afterwards)..."]
    assert terminal.getvalue() == ""
    assert _notice._write is None
