"""Measured autotuning: ``algorithm="auto"`` by timing, remembered across processes.

By default ``algorithm="auto"`` picks a kernel with shape rules (the choosers of
:mod:`fastconv.cpu`). With autotuning on (``FASTCONV_AUTOTUNE=1`` or
``fastconv.set_autotune(True)``) the first time auto meets a CPU problem
that more than one algorithm can compute, it times each of them on scratch
arrays of the problem's shapes (one untimed call first, so compilation is
not counted, then a few timed runs each) and keeps the fastest. The choice is
written to a JSON file, so a later process reuses it without timing:

- the file is ``tune.json`` in ``FASTCONV_TUNE_CACHE`` if set, else in the
  per-user cache directory (``$XDG_CACHE_HOME/fastconv``, ``~/.cache/fastconv``;
  ``%LOCALAPPDATA%\\fastconv`` on Windows, ``~/Library/Caches/fastconv`` on macOS);
- its entries are keyed by the machine (CPU model, Numba's thread count and
  the fastconv and Numba versions), then by the problem (op, array shapes,
  dtype, parameters), so a choice measured elsewhere is never reused;
- a corrupt, stale or unwritable file gives one warning and the shape rules'
  choice, never an exception.

``python -m fastconv tune`` tunes the benchmark layers (or given shapes) ahead
of time; ``python -m fastconv info`` shows the file and its entry count.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import config

#: Whether auto measures: None until set_autotune() is called, then config.AUTOTUNE is
#: read (the plan cache's key holds it, so a plan made with autotuning off is not reused
#: with it on, and back).
_enabled: bool | None = None
_lock = threading.RLock()
_entries: dict[str, dict[str, Any]] | None = None  # this machine's entries, loaded once
_measured: set[str] = set()  # problems timed in this process
_warned: set[str] = set()
_measuring_allowed = threading.local()

#: Timed runs per algorithm (after the untimed first call), and the time budget
#: for them: at least ``RUNS`` runs, more while under ``BUDGET_S``.
RUNS = 3
BUDGET_S = 0.05

#: The clock the timer reads (tests replace it with a fake one).
clock: Callable[[], float] = time.perf_counter

_FILE_VERSION = 1


def set_autotune(enabled: bool) -> None:
    """Turn measured autotuning of ``algorithm="auto"`` on or off for this process.

    >>> import fastconv
    >>> fastconv.set_autotune(False)
    """
    global _enabled
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    _enabled = bool(enabled)


def autotune_enabled() -> bool:
    """Whether ``algorithm="auto"`` measures (see :func:`set_autotune`); at first
    ``FASTCONV_AUTOTUNE`` (``fastconv.config.AUTOTUNE``) says."""
    return config.AUTOTUNE if _enabled is None else _enabled


def cache_dir() -> Path:
    """Where the tuning file lives (``FASTCONV_TUNE_CACHE`` or the per-user cache)."""
    override = os.environ.get("FASTCONV_TUNE_CACHE")
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fastconv"


def cache_path() -> Path:
    return cache_dir() / "tune.json"


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_key() -> str:
    """The machine part of an entry's key: CPU model, Numba thread count and versions."""
    import numba

    from . import __version__

    return (f"{cpu_model()} | {numba.get_num_threads()} threads | fastconv {__version__} | "
            f"numba {numba.__version__}")


def problem_key(op: str, arrays: tuple, params: tuple) -> str:
    """An entry's problem key: the op, each kernel array's shape (or None) and dtype, and
    the kernel's scalar parameters."""
    described = ["-" if a is None else f"{'x'.join(map(str, a[0]))}:{np.dtype(a[1]).name}"
                 for a in arrays]
    return f"{op} {' '.join(described)} {params!r}"


def _warn_once(what: str, message: str) -> None:
    if what not in _warned:
        _warned.add(what)
        warnings.warn(f"fastconv autotuning: {message}", RuntimeWarning, stacklevel=5)


def _load_all() -> dict[str, Any]:
    """The whole file, or an empty one (with a warning if it exists but is unusable)."""
    path = cache_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"version": _FILE_VERSION, "machines": {}}
    except OSError as error:
        _warn_once("read", f"cannot read {path} ({error}); choices are measured again")
        return {"version": _FILE_VERSION, "machines": {}}
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("machines"), dict):
            raise ValueError("not a fastconv tuning file")
        if data.get("version") != _FILE_VERSION:
            raise ValueError(f"file version {data.get('version')!r}, expected {_FILE_VERSION}")
    except ValueError as error:
        _warn_once("parse", f"ignoring {path} ({error}); choices are measured again and "
                            f"the file is rewritten")
        return {"version": _FILE_VERSION, "machines": {}}
    return data


def _mine() -> dict[str, dict[str, Any]]:
    global _entries
    with _lock:
        if _entries is None:
            entries = _load_all()["machines"].get(machine_key(), {})
            _entries = {k: v for k, v in entries.items()
                        if isinstance(v, dict) and isinstance(v.get("algorithm"), str)}
        return _entries


def _save(problem: str, entry: dict[str, Any]) -> None:
    """Merge one entry into the file (re-read first, so concurrent processes' entries
    survive), written atomically through a temporary file."""
    path = cache_path()
    with _lock:
        data = _load_all()
        data.setdefault("machines", {}).setdefault(machine_key(), {})[problem] = entry
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tune-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=1, sort_keys=True)
            os.replace(temporary, path)
        except OSError as error:
            _warn_once("write", f"cannot write {path} ({error}); this process keeps its "
                                f"choices in memory only")


def forget() -> None:
    """Forget what this process loaded and measured (the file stays)."""
    global _entries
    with _lock:
        _entries = None
        _measured.clear()
        _warned.clear()


def entry_count() -> int:
    """Entries in the tuning file, all machines together (0 if it is missing or unusable)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        machines = _load_all()["machines"]
    return sum(len(v) for v in machines.values() if isinstance(v, dict))


@contextlib.contextmanager
def no_measuring() -> Iterator[None]:
    """Within this context auto reports the cached or heuristic choice, never times
    (what :func:`fastconv.explain` uses)."""
    before = getattr(_measuring_allowed, "off", False)
    _measuring_allowed.off = True
    try:
        yield
    finally:
        _measuring_allowed.off = before


def lookup(problem: str) -> tuple[str, str, str] | None:
    """``(algorithm, source, reason)`` remembered for ``problem``, or None."""
    try:
        entry = _mine().get(problem)
    except Exception as error:  # noqa: BLE001 - a tuning file must never break a call
        _warn_once("load", f"cannot use the tuning file ({error}); using the shape rules")
        return None
    if entry is None:
        return None
    source = "measured" if problem in _measured else "cache"
    return entry["algorithm"], source, _describe(entry, source)


def _describe(entry: dict[str, Any], source: str) -> str:
    times = entry.get("times_us", {})
    listed = ", ".join(f"{name} {t:.1f} us" for name, t in sorted(times.items(),
                                                                   key=lambda kv: kv[1]))
    where = "measured in this process" if source == "measured" else f"from {cache_path()}"
    return f"fastest when timed ({listed}), {where}"


def measure(op: str, problem: str, candidates: dict[str, Callable[..., Any]],
            arrays: tuple, params: tuple) -> tuple[str, str, str] | None:
    """Time each candidate kernel on scratch arrays of ``arrays`` (``(shape, dtype)`` or
    None each) with ``params``; remember and return the fastest as
    ``(algorithm, "measured", reason)``. None when measuring is off in this context."""
    if getattr(_measuring_allowed, "off", False):
        return None
    rng = np.random.default_rng(0)
    scratch = [None if a is None else rng.standard_normal(a[0]).astype(a[1]) for a in arrays]
    times: dict[str, float] = {}
    for name, kernel in candidates.items():
        kernel(*scratch, *params)  # compiles or loads the kernel: not timed
        runs: list[float] = []
        started = clock()
        while len(runs) < RUNS or (clock() - started < BUDGET_S and len(runs) < 50):
            begin = clock()
            kernel(*scratch, *params)
            runs.append(clock() - begin)
        times[name] = min(runs) * 1e6
    best = min(times, key=times.__getitem__)
    entry = {"algorithm": best, "times_us": {k: round(v, 2) for k, v in times.items()},
             "op": op}
    with _lock:
        _mine()[problem] = entry
        _measured.add(problem)
    _save(problem, entry)
    return best, "measured", _describe(entry, "measured")


def parse_shape(text: str) -> tuple[int, ...]:
    """``N,C,H,W,K,R[,stride,pad,groups]`` as 9 ints (stride 1, pad 0, groups 1 by
    default), or a ValueError saying the form.

    >>> parse_shape("8,64,56,56,64,3,1,1")
    (8, 64, 56, 56, 64, 3, 1, 1, 1)
    """
    form = "a layer shape must be N,C,H,W,K,R[,stride,pad,groups] (ints)"
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{form}, got {text!r}") from None
    if not 6 <= len(values) <= 9 or min(values) < 0 or 0 in values[1:6]:
        raise ValueError(f"{form}, got {text!r}")
    return (*values, *(1, 0, 1)[len(values) - 6:])


def tune_layers(shapes: list[tuple[int, ...]], dtype: Any = np.float32,
                backward: bool = True) -> list[dict[str, Any]]:
    """Tune ``conv2d`` (and, with ``backward``, its input and weight gradients) on each
    layer of ``shapes`` (as :func:`parse_shape` gives them) ahead of time, autotuning on
    for the duration; one row per kernel op: the layer, the op, the algorithm, the source
    (``"measured"`` now or ``"cache"`` from an earlier run) and the reason."""
    import fastconv

    global _enabled
    rows = []
    before = _enabled
    _enabled = True
    try:
        for n, c, h, w, k, r, stride, pad, groups in shapes:
            rng = np.random.default_rng(0)
            x = rng.standard_normal((n, c, h, w)).astype(dtype)
            weight = rng.standard_normal((k, c // max(groups, 1), r, r)).astype(dtype)
            kwargs: dict[str, Any] = dict(stride=stride, padding=pad, groups=groups)
            y = fastconv.conv2d(x, weight, **kwargs)
            explained = fastconv.explain("conv2d", x, weight, **kwargs)["kernels"]
            if backward:
                fastconv.conv2d_backward(y, x, weight, needs_bias_grad=False, **kwargs)
                explained += fastconv.explain("conv2d_backward", y, x, weight,
                                              needs_bias_grad=False, **kwargs)["kernels"]
            layer = f"N{n} C{c} {h}x{w}, K{k} {r}x{r} s{stride} p{pad} g{groups}"
            rows += [dict(layer=layer, **kernel) for kernel in explained]
    finally:
        _enabled = before
    return rows
