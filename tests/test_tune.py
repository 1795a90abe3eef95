"""Measured autotuning (fastconv.tune): the fastest candidate wins, the choice persists
across processes in the tuning file, and a bad file never breaks a call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastconv
from fastconv import dispatch, reference, tune

from .cases import tolerance


@pytest.fixture(autouse=True)
def _tuning(monkeypatch, tmp_path):
    """Autotuning on, with its file in a fresh directory and nothing remembered."""
    monkeypatch.setenv("FASTCONV_TUNE_CACHE", str(tmp_path / "tune"))
    tune.forget()
    monkeypatch.setattr(tune, "_enabled", True)
    yield
    tune.forget()


class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _fake_kernels(monkeypatch, costs):
    """conv2d's CPU kernels replaced by ones that compute the reference answer and take
    ``costs[name]`` seconds of a fake clock; returns the clock and the run counts."""
    clock = _FakeClock()
    monkeypatch.setattr(tune, "clock", clock)
    calls = dict.fromkeys(costs, 0)
    fastconv.available_algorithms("conv2d")

    def fake(name):
        def kernel(x, weight, bias, out, stride, padding, dilation, groups):
            calls[name] += 1
            clock.now += costs[name]
            out[...] = reference.conv2d(x, weight, bias, stride, padding, dilation, groups)
        return kernel

    for name in costs:
        monkeypatch.setitem(dispatch._KERNELS, ("conv2d", "cpu", name), fake(name))
    return clock, calls


@pytest.mark.parametrize("fastest", ["direct", "im2col", "winograd"])
def test_the_fastest_algorithm_wins(monkeypatch, rng, fastest):
    costs = {"direct": 3e-3, "im2col": 2e-3, "winograd": 4e-3}
    costs[fastest] = 1e-3
    _, calls = _fake_kernels(monkeypatch, costs)
    x = rng.uniform(-1, 1, (2, 16, 8, 8)).astype(np.float32)
    w = rng.uniform(-1, 1, (16, 16, 3, 3)).astype(np.float32)
    y = fastconv.conv2d(x, w, padding=1)
    np.testing.assert_allclose(y, reference.conv2d(x, w, padding=1), **tolerance(np.float32))
    assert all(calls[name] >= 1 + tune.RUNS for name in costs), calls
    explained = fastconv.explain("conv2d", x, w, padding=1)
    assert (explained["algorithm"], explained["source"]) == (fastest, "measured")
    assert "fastest when timed" in explained["reason"]
    # the next call runs the chosen kernel only
    before = dict(calls)
    fastconv.conv2d(x, w, padding=1)
    assert {n: calls[n] - before[n] for n in calls} == {n: int(n == fastest) for n in calls}
    entries = json.loads(tune.cache_path().read_text())["machines"][tune.machine_key()]
    assert [e["algorithm"] for e in entries.values()] == [fastest]


def test_off_by_default_and_single_candidates_are_not_timed(monkeypatch, rng):
    _, calls = _fake_kernels(monkeypatch, {"direct": 1e-3, "im2col": 1e-3, "winograd": 1e-3})
    x = rng.uniform(-1, 1, (1, 2, 6, 6)).astype(np.float32)
    w = rng.uniform(-1, 1, (3, 2, 3, 3)).astype(np.float32)
    fastconv.set_autotune(False)
    try:
        assert not fastconv.autotune_enabled()
        fastconv.conv2d(x, w)
        assert sum(calls.values()) == 1
        assert fastconv.explain("conv2d", x, w)["source"] == "heuristic"
    finally:
        fastconv.set_autotune(True)
    fastconv.max_pool2d(x, 2)  # one candidate: nothing to time, no entry
    assert not tune.cache_path().exists()
    with pytest.raises(TypeError, match="enabled must be a bool"):
        fastconv.set_autotune("yes")


def test_explain_does_not_time(monkeypatch, rng):
    _, calls = _fake_kernels(monkeypatch, {"direct": 1e-3, "im2col": 1e-3, "winograd": 1e-3})
    x = rng.uniform(-1, 1, (1, 16, 6, 6)).astype(np.float32)
    w = rng.uniform(-1, 1, (16, 16, 3, 3)).astype(np.float32)
    assert fastconv.explain("conv2d", x, w)["source"] == "heuristic"
    assert sum(calls.values()) == 0


_CHILD = """
import json, sys, warnings
import numpy as np, fastconv
warnings.simplefilter("error")
x = np.random.default_rng(0).standard_normal((2, 8, 10, 10)).astype(np.float32)
w = np.random.default_rng(1).standard_normal((8, 8, 3, 3)).astype(np.float32)
explained = fastconv.explain("conv2d", x, w, padding=1)
y = fastconv.conv2d(x, w, padding=1)
after = fastconv.explain("conv2d", x, w, padding=1)
ok = np.allclose(y, fastconv.conv2d(x, w, padding=1, algorithm="reference"), atol=1e-4)
print(json.dumps([explained["source"], after["source"], after["algorithm"], bool(ok)]))
"""


def _child(directory, **env):
    environment = dict(os.environ, FASTCONV_AUTOTUNE="1", FASTCONV_TUNE_CACHE=str(directory),
                       **env)
    result = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                            env=environment, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


def test_the_tuning_file_round_trips_across_processes(tmp_path):
    (before, after, algorithm, ok), _ = _child(tmp_path)
    assert (before, after, ok) == ("heuristic", "measured", True)
    (before, after, again, ok), _ = _child(tmp_path)
    assert (before, after, again, ok) == ("cache", "cache", algorithm, True)
    data = json.loads((tmp_path / "tune.json").read_text())
    assert data["version"] == 1 and len(data["machines"]) == 1


def test_another_machines_entries_are_not_used(tmp_path):
    (_, _, algorithm, _), _ = _child(tmp_path)
    path = tmp_path / "tune.json"
    data = json.loads(path.read_text())
    (machine, entries), = data["machines"].items()
    data["machines"] = {machine.replace("threads", "threads (elsewhere)"): entries}
    path.write_text(json.dumps(data))
    (before, after, _, ok), _ = _child(tmp_path)
    assert (before, after, ok) == ("heuristic", "measured", True)


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"version": 99, "machines": {}}'])
def test_a_corrupt_or_stale_file_warns_once_and_falls_back(monkeypatch, rng, content):
    tune.cache_path().parent.mkdir(parents=True)
    tune.cache_path().write_text(content)
    x = rng.uniform(-1, 1, (1, 16, 6, 6)).astype(np.float32)
    w = rng.uniform(-1, 1, (16, 16, 3, 3)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = fastconv.conv2d(x, w, padding=1)
        fastconv.conv2d(x[:, :, :5], w, padding=1)
    np.testing.assert_allclose(y, reference.conv2d(x, w, padding=1), **tolerance(np.float32))
    messages = [str(w.message) for w in caught if "autotuning" in str(w.message)]
    assert len(messages) == 1 and "ignoring" in messages[0], messages
    # the file was rewritten with the new choices
    data = json.loads(tune.cache_path().read_text())
    assert sum(len(v) for v in data["machines"].values()) == 2


def test_an_unwritable_cache_warns_and_keeps_the_choice_in_memory(monkeypatch, tmp_path, rng):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("FASTCONV_TUNE_CACHE", str(blocker / "below"))  # a file as a folder
    x = rng.uniform(-1, 1, (1, 16, 6, 6)).astype(np.float32)
    w = rng.uniform(-1, 1, (16, 16, 3, 3)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="cannot write"):
        y = fastconv.conv2d(x, w, padding=1)
    np.testing.assert_allclose(y, reference.conv2d(x, w, padding=1), **tolerance(np.float32))
    assert fastconv.explain("conv2d", x, w, padding=1)["source"] == "measured"


def test_cache_dir_and_entry_count(monkeypatch, tmp_path):
    assert tune.cache_path() == tmp_path / "tune" / "tune.json"
    assert tune.entry_count() == 0
    monkeypatch.delenv("FASTCONV_TUNE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert tune.cache_dir() == tmp_path / "xdg" / "fastconv"
