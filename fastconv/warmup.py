"""Compile kernels ahead of the first call."""

from __future__ import annotations

import atexit
import collections
import contextlib
import numbers
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import _notice, config, dispatch, functional, ops


def warmup(dtypes: Iterable[object] = (np.float32, np.float64), *,
           processes: int | None = None) -> dict[str, float]:
    """Compile (or load from the on-disk cache) every CPU kernel for ``dtypes``: the
    warm-up call of each op of :data:`fastconv.ops.TABLE` (tiny inputs, stride 1 and 2,
    2 and 4 filters, with and without indices) with each of its algorithms, and the one
    parallel loop that runs every threaded kernel's parts on Numba's pool
    (:func:`fastconv.cpu.threads.compile_runner`; not with ``FASTCONV_NUMBA_POOL=0``,
    whose worker threads call the kernel itself). No later call compiles a CPU kernel for
    these dtypes.

    The first call of a kernel otherwise compiles it, which takes seconds; a
    later process loads the cached machine code in milliseconds. With Numba's disk
    cache on (the default settings), helper processes compile steps beside this one
    into the cache, and this process then loads what they compiled: on two cores
    an empty cache filled in 57 % of the time of one process. Returns the
    seconds spent per ``"op/algorithm/dtype"`` (a helper's compile plus this
    process's load). When stderr is a terminal and tqdm is installed, a progress
    bar shows one step per ``"op/algorithm/dtype"`` (not with ``FASTCONV_QUIET=1``).

    Args:
        dtypes: float32 and/or float64.
        processes: processes that compile at once, this one included; None: one per
            available core, at most :data:`MAX_PROCESSES`; 1 compiles here only (as
            does any setting without the disk cache: ``FASTCONV_CACHE=0``,
            ``NUMBA_BOUNDSCHECK=1``, ...).

    >>> import fastconv
    >>> timings = fastconv.warmup(dtypes=[np.float32])
    >>> sorted(key for key in timings if key.startswith("conv2d/"))
    ['conv2d/direct/float32', 'conv2d/im2col/float32', 'conv2d/winograd/float32']
    """
    if processes is not None:
        if not isinstance(processes, numbers.Integral) or isinstance(processes, bool):
            raise TypeError(f"processes must be an int or None, got {processes!r}")
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
    steps = []
    for given in dtypes:
        try:
            dtype = np.dtype(given)  # type: ignore[call-overload]
        except TypeError:
            dtype = None
        if dtype not in (np.float32, np.float64):
            got = repr(given) if dtype is None else dtype
            raise TypeError(f"dtypes must hold float32 or float64, got {got}")
        for op in ops.TABLE.values():
            for algorithm in dispatch.available_algorithms(op.name):
                if algorithm not in ("auto", "reference"):
                    steps.append((op.name, algorithm, dtype.name))
    from .cpu._jit import disk_cache

    if processes is None:
        processes = min(_cores(), MAX_PROCESSES)
    helpers = min(int(processes), len(steps)) - 1 if disk_cache() else 0
    timings: dict[str, float] = {}
    with _progress(len(steps)) as bar, _Helpers(helpers, steps, bar) as helping:
        while (step := helping.take()) is not None:
            with helping.started_if_slow():
                timings[_name(step)] = _run(step, bar)
            helping.count_done()
        # what the helpers compiled, loaded from the disk cache (or compiled here, where
        # a helper failed or its cache entry is missing)
        for step, seconds in helping.finish().items():
            timings[_name(step)] = seconds + _run(step, None)
        if bar is not None:
            bar.set_description("fastconv warmup", refresh=False)
    return {_name(step): timings[_name(step)] for step in steps}


def warmup_backward(model: Any, input_shape: tuple[int, ...],
                    dtype: object = np.float32) -> BackgroundCompile:
    """Start compiling, in a helper process, the CPU kernels that ``model.backward`` runs
    after a forward of an input of ``input_shape`` and that the forward does not (the
    weight and bias gradients, the poolings' gradients), while this process goes on,
    typically to compile the forward by running it; returns at once.

    A model's first training step compiles its kernels one after the other on one core
    (the forward's, then the backward's). The helper, started once this process has
    spent :data:`SLOW_STEP_S` on (the forward's compile) after this call, runs each
    layer's backward kernels on zeros of its shapes (:meth:`~fastconv.nn.Module.output_shape`),
    without the input gradients, which the forward's kernels mostly compute, so that
    Numba compiles them into its disk cache beside the forward's compile here; the
    backward then loads them. ``make demo``'s first forward and backward on two cores:
    6.9-7.4 s against 10.6-11.3 s without (``benchmarks/RESULTS.md``). Call
    :meth:`BackgroundCompile.wait` (or leave its ``with`` block) before the backward: a
    kernel the helper has not finished is otherwise compiled here as well; the wait
    also covers the helper's start (about a second) and its run of the backward on
    zeros, which for a large batch is not free. Without Numba's disk cache
    (``FASTCONV_CACHE=0``, ``NUMBA_BOUNDSCHECK=1``, ...) or with one core, nothing starts
    and the backward compiles its kernels as before.

    Args:
        model: a :mod:`fastconv.nn` layer or :class:`~fastconv.nn.Sequential`; the layers
            from one that cannot give its output shape
            (:meth:`~fastconv.nn.Module.output_shape`) on compile at their first call.
        input_shape: the forward's input shape, ``(N, C, H, W)`` for a convolutional
            model; the batch size matters (it picks the kernels).
        dtype: float32 or float64, the input's.

    >>> import numpy as np
    >>> from fastconv import nn, warmup_backward
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=np.random.default_rng(0)),
    ...                       nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10))
    >>> x = np.zeros((8, 1, 8, 8), np.float32)
    >>> with warmup_backward(model, x.shape):
    ...     y = model(x)  # this process compiles the forward meanwhile
    >>> model.backward(np.ones_like(y)).shape  # loads what the helper compiled
    (8, 1, 8, 8)
    """
    from .nn import Module

    if not isinstance(model, Module):
        raise TypeError(f"model must be a fastconv.nn layer or Sequential, got "
                        f"{type(model).__name__}")
    try:
        given = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError:
        given = None
    if given not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    try:  # a shape the forward would reject is the caller's error, raised here
        model.output_shape(input_shape)
    except NotImplementedError:
        pass  # (the helper compiles the layers before the one that cannot tell)
    from .cpu._jit import disk_cache

    if not disk_cache() or _cores() < 2 or not _compiles_backward(model):
        return BackgroundCompile(None)
    import pickle
    import tempfile

    with tempfile.NamedTemporaryFile("wb", suffix=".pickle", delete=False) as handoff:
        try:
            pickle.dump((model, tuple(input_shape), given.name), handoff)
        except (pickle.PicklingError, TypeError, AttributeError):
            handoff.close()
            os.unlink(handoff.name)
            return BackgroundCompile(None)
    return BackgroundCompile(handoff.name)


def _compiles_backward(model: Any) -> bool:
    """Whether a layer of ``model`` (nested Sequentials too) runs backward kernels of its
    own on the CPU: else a helper would have nothing to compile (a model of Linear
    layers, or one whose layers all run on a GPU)."""
    from .nn import Module, Sequential, _on_host, _walk

    layers = _walk(model.layers) if isinstance(model, Sequential) else [("", model)]
    # (a layer of its own kind, not a Module, has no _compile_backward: its kernels compile
    # at its call)
    return any(getattr(type(layer), "_compile_backward", Module._compile_backward)
               is not Module._compile_backward
               and not isinstance(layer, Sequential)
               and _on_host(getattr(layer, "device", None)) for _, layer in layers)


class BackgroundCompile:
    """The helper process of :func:`warmup_backward`, started :data:`SLOW_STEP_S` after
    it is made unless :meth:`wait` comes first (a forward whose kernels load from the
    disk cache is over by then, and the backward's load as fast: nothing to help with).
    A context manager that waits when its block ends."""

    def __init__(self, handoff: str | None) -> None:
        self._handoff = handoff  # the pickled (model, input shape, dtype); None: no helper
        self._process: subprocess.Popen | None = None
        self._done: bool | None = None
        self._lock = threading.Lock()
        self._timer = None
        if handoff is not None:
            # (removed by the helper once read, or in wait(); here if neither runs)
            atexit.register(_remove, handoff)
            self._timer = threading.Timer(SLOW_STEP_S, self._start)
            self._timer.daemon = True
            self._timer.start()

    def _start(self) -> None:
        with self._lock:
            if self._done is not None or self._handoff is None:
                return  # (waited for already)
            try:
                self._process = subprocess.Popen(
                    [sys.executable, "-c", _BACKWARD_HELPER, str(Path(__file__).resolve()),
                     self._handoff], env=dict(os.environ, FASTCONV_QUIET="1"),
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, text=True)
            except OSError:
                self._process = None

    def wait(self) -> bool:
        """Block until the helper has ended; whether it ran and compiled every kernel it
        was given (False where none started, or it failed: what is missing then compiles
        at its first call, as without a helper)."""
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            if self._done is None:
                self._done = self._finish()
        return self._done

    def _finish(self) -> bool:
        process = self._process
        reply: list[str] = []
        if process is not None and process.stdout is not None:
            with contextlib.suppress(OSError, ValueError):
                reply = process.stdout.read().split()
            process.wait()
            process.stdout.close()
        if self._handoff is not None:
            _remove(self._handoff)  # (the helper removes it once read)
        return reply == ["done"]

    def __enter__(self) -> BackgroundCompile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wait()


def _remove(path: str) -> None:
    """Remove the file at ``path`` if it is there."""
    with contextlib.suppress(OSError):
        os.unlink(path)


#: The helper of :func:`warmup_backward`: given this file's path (another fastconv on
#: its path ends it at once) and the pickled model, input shape and dtype, it runs the
#: model's backward kernels on zeros and says ``done`` (``failed`` on an error).
_BACKWARD_HELPER = ("import sys; from fastconv.warmup import _serve_backward; "
                    "_serve_backward(*sys.argv[1:])")


def _serve_backward(expected: str, handoff: str) -> None:
    """The helper process of :func:`warmup_backward` (see :data:`_BACKWARD_HELPER`)."""
    if str(Path(__file__).resolve()) != expected:
        return
    import pickle

    try:
        with open(handoff, "rb") as file:
            model, input_shape, dtype = pickle.load(file)
        _remove(handoff)
        model._compile_backward(input_shape, np.dtype(dtype))
    except Exception:  # noqa: BLE001 - the parent compiles what is missing itself
        print("failed", flush=True)
    else:
        print("done", flush=True)


#: Most processes :func:`warmup` compiles in by default (each holds several hundred MB).
MAX_PROCESSES = 4

#: Seconds a step of :func:`warmup` runs before the helper processes start: loading a
#: step's kernels from a warm cache took 0.01-0.3 s here, compiling them 1-20 s.
SLOW_STEP_S = 0.5


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _name(step: tuple[str, str, str]) -> str:
    return "/".join(step)


def _run(step: tuple[str, str, str], bar: Any) -> float:
    """Seconds of the warm-up call of ``step`` (op, algorithm, dtype name) in this
    process, with the parallel loop of the threaded kernels (on Numba's pool)."""
    from .cpu import threads

    if bar is not None:
        bar.set_description(_name(step))  # what compiles now
    start = time.perf_counter()
    op_name, algorithm, dtype = step
    ops.TABLE[op_name].warm_up(functional, np.dtype(dtype), algorithm)
    if threads.on_numba_pool():  # (a tiny call runs its threaded kernels on one thread)
        threads.compile_runner()
    return time.perf_counter() - start


#: A helper process: says ``ready`` once it has imported the fastconv of the file given
#: (another one on its path: it says so and ends), then for each line ``op algorithm
#: dtype`` on stdin runs that step and says ``ok <seconds>``.
_HELPER = "import sys; from fastconv.warmup import _serve; _serve(sys.argv[1])"


def _serve(expected: str) -> None:
    """The loop of a helper process of :func:`warmup` (see :data:`_HELPER`)."""
    if str(Path(__file__).resolve()) != expected:
        print("elsewhere", flush=True)
        return
    print("ready", flush=True)
    for line in sys.stdin:
        step = tuple(line.split())
        try:
            seconds = _run(step, None)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - the parent compiles the step itself
            print("failed", flush=True)
        else:
            print(f"ok {seconds!r}", flush=True)


class _Helpers:
    """Helper processes that take steps from the same list as this process: each
    compiles its step into Numba's disk cache and reports the seconds. A helper gets a
    step only once it is ready, so with a warm cache this process loads every step
    before a helper has imported Numba, and the helpers are stopped unused."""

    def __init__(self, count: int, steps: list, bar: Any) -> None:
        self._pending = collections.deque(steps)
        self._lock = threading.Lock()
        self._bar = bar
        self._helped: dict[tuple, float] = {}  # a step and its helper's seconds
        self._failed: list[tuple] = []
        self._busy: set[subprocess.Popen] = set()
        self._processes: list[subprocess.Popen] = []
        self._threads = [threading.Thread(target=self._feed, daemon=True)
                         for _ in range(count)]
        self._started = self._closed = False

    def __enter__(self) -> _Helpers:
        return self

    @contextlib.contextmanager
    def started_if_slow(self) -> Iterator[None]:
        """Start the helpers if the step run in this context takes more than
        :data:`SLOW_STEP_S`: a step that compiles (a warm cache loads each in well
        under that, and spawning processes would only cost time)."""
        timer = threading.Timer(SLOW_STEP_S, self._start)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        for thread in self._threads:
            thread.start()

    def __exit__(self, *exc_info: object) -> None:
        self._end_all()

    def take(self) -> tuple | None:
        """The next step that no process has taken, or None."""
        with self._lock:
            return self._pending.popleft() if self._pending else None

    def count_done(self) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.update()

    def finish(self) -> dict[tuple, float]:
        """Once every step is taken: stop the helpers that have none, wait for the
        others; returns each step that a helper compiled, with its seconds there, and
        each one a helper failed on, with 0."""
        with self._lock:
            self._closed = True  # no helper starts from here on
            idle = [p for p in self._processes if p not in self._busy]
            started = self._started
            self._started = True
        for process in idle:  # between steps or still starting: nothing to lose
            with contextlib.suppress(OSError):
                process.kill()
        for thread in self._threads if started else ():
            thread.join()
        return {**self._helped, **dict.fromkeys(self._failed, 0.0)}

    def _end_all(self) -> None:
        with self._lock:
            self._closed = True
            self._pending.clear()
            processes = list(self._processes)
        for process in processes:
            _stop(process)

    def _feed(self) -> None:
        """Start one helper and hand it steps until none is left. A step it does not
        report done (it failed, or the helper died) goes to ``_failed``: this process
        runs it after all."""
        with self._lock:
            if self._closed:
                return
            try:
                process = subprocess.Popen(
                    [sys.executable, "-c", _HELPER, str(Path(__file__).resolve())],
                    env=dict(os.environ, FASTCONV_QUIET="1"), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, text=True)
            except OSError:
                return
            self._processes.append(process)
        assert process.stdin is not None and process.stdout is not None
        try:
            if process.stdout.readline().strip() != "ready":
                return
            while True:
                with self._lock:
                    if not self._pending:
                        return
                    step = self._pending.popleft()
                    self._busy.add(process)
                seconds = None
                try:
                    process.stdin.write(" ".join(step) + "\n")
                    process.stdin.flush()
                    reply = process.stdout.readline().split()
                    if len(reply) == 2 and reply[0] == "ok":
                        seconds = float(reply[1])
                finally:
                    with self._lock:
                        self._busy.discard(process)
                        if seconds is None:
                            self._failed.append(step)
                        else:
                            self._helped[step] = seconds
                    self.count_done()
                if not reply:  # the helper ended
                    return
        except (OSError, ValueError):  # a helper that died, or was stopped
            return
        finally:
            _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """End a helper: close its input (it exits), kill it if it has not within a second."""
    with contextlib.suppress(OSError, ValueError):
        if process.stdin is not None:
            process.stdin.close()
    try:
        process.wait(timeout=1)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Any]:
    """A tqdm bar of ``total`` steps on stderr, or None: without tqdm, when stderr is not a
    terminal (tqdm's ``disable=None``) or with ``FASTCONV_QUIET=1``. While it shows, the
    compile notice (:mod:`fastconv._notice`) is written above it."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or config.QUIET:
        yield None
        return
    bar = tqdm(total=total, desc="fastconv warmup", unit="op", file=sys.stderr, disable=None)
    try:
        if bar.disable:
            yield None
        else:
            with _notice.writing_to(lambda line: bar.write(line, file=sys.stderr)):
                yield bar
    finally:
        bar.close()
