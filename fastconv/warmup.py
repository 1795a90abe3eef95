"""Compile kernels ahead of the first call."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from . import _notice, config, dispatch, functional, ops


def warmup(dtypes: Iterable[object] = (np.float32, np.float64)) -> dict[str, float]:
    """Compile (or load from the on-disk cache) every CPU kernel for ``dtypes``: the
    warm-up call of each op of :data:`fastconv.ops.TABLE` (tiny inputs, stride 1 and 2,
    2 and 4 filters, with and without indices) with each of its algorithms, and both
    forms of each threaded kernel (the threaded one for large calls, its serial twin
    for small ones and for one Numba thread). No later call compiles a CPU kernel
    for these dtypes.

    The first call of a kernel otherwise compiles it, which takes seconds; a
    later process loads the cached machine code in milliseconds. Returns the
    seconds spent per ``"op/algorithm/dtype"``. When stderr is a terminal and tqdm
    is installed, a progress bar shows one step per ``"op/algorithm/dtype"``
    (not with ``FASTCONV_QUIET=1``).

    >>> import fastconv
    >>> timings = fastconv.warmup(dtypes=[np.float32])
    >>> sorted(key for key in timings if key.startswith("conv2d/"))
    ['conv2d/direct/float32', 'conv2d/im2col/float32', 'conv2d/winograd/float32']
    """
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
                    steps.append((op, algorithm, dtype))
    from .cpu._jit import compile_twins

    timings: dict[str, float] = {}
    with _progress(len(steps)) as bar:
        for op, algorithm, dtype in steps:
            name = f"{op.name}/{algorithm}/{dtype}"
            if bar is not None:
                bar.set_description(name)  # what compiles now
            start = time.perf_counter()
            op.warm_up(functional, dtype, algorithm)
            compile_twins()  # the serial or threaded twin of each kernel the call ran
            timings[name] = time.perf_counter() - start
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.set_description("fastconv warmup", refresh=False)
    return timings


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
