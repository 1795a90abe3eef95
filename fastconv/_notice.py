"""The one line printed before fastconv's first cold compile in a process.

A kernel's first call compiles it (seconds) unless Numba's disk cache holds it, and
nothing says so: ``make demo`` spent 19 s compiling before its first line. So before
Numba compiles a fastconv kernel (a real compile, not a load from the disk cache) the
first time in a process, stderr gets::

    compiling fastconv kernels for conv2d (first run only, cached afterwards)...

naming the public op being called when known (the op whose plan :mod:`fastconv.plans`
built last on this thread), else without ``for <op>``. ``FASTCONV_QUIET=1`` silences it.

Numba broadcasts a ``"numba:compile"`` event before it compiles a dispatcher for a
signature, and only then: a signature loaded from the disk cache broadcasts nothing.
:func:`install` (called when :mod:`fastconv.cpu._jit` is imported) registers a listener
for it that looks at fastconv's own dispatchers only. The listener runs in Python, in
the thread that compiles, and never raises.

Importing this module imports neither numpy nor numba (:func:`install` and
:func:`message`, called once kernels exist, do).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator

from . import config

_printed = False  # the notice went out (or was silenced) in this process
_installed = False
_lock = threading.Lock()

#: Where the notice goes: ``None`` prints it to ``sys.stderr``; :func:`writing_to`
#: replaces it while a progress bar owns the line (``tqdm.write``).
_write: Callable[[str], None] | None = None


def message(op: str | None = None) -> str:
    """The notice, for ``op`` (a public op's name) when known."""
    where = f" for {op}" if op else ""
    from .cpu._jit import disk_cache

    if disk_cache():
        return f"compiling fastconv kernels{where} (first run only, cached afterwards)..."
    return (f"compiling fastconv kernels{where} (these settings turn the disk cache off: "
            f"in every process)...")


def current_op() -> str | None:
    """The public op whose plan this thread built last, if any (see :mod:`fastconv.plans`)."""
    from . import plans

    op = getattr(plans.building, "op", None)
    return op if isinstance(op, str) else None


def notify(op: str | None = None) -> None:
    """Print the notice, the first time only in this process, unless ``FASTCONV_QUIET``."""
    global _printed
    with _lock:
        if _printed:
            return
        _printed = True
    if config.QUIET:
        return
    line = message(op)
    write = _write
    if write is not None:
        write(line)
    else:
        print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def writing_to(write: Callable[[str], None]) -> Iterator[None]:
    """Within this context the notice goes to ``write`` (one line, no newline), e.g. a
    progress bar's ``write`` so that it does not break the bar's line."""
    global _write
    before = _write
    _write = write
    try:
        yield
    finally:
        _write = before


def _is_fastconv(dispatcher: object) -> bool:
    module = getattr(getattr(dispatcher, "py_func", None), "__module__", None) or ""
    return module == "fastconv" or module.startswith("fastconv.")


def install() -> None:
    """Register the ``"numba:compile"`` listener with Numba, once per process."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    from numba.core import event

    class _CompileListener(event.Listener):
        def on_start(self, ev: event.Event) -> None:
            if _printed:
                return
            try:
                data = ev.data
                if isinstance(data, dict) and _is_fastconv(data.get("dispatcher")):
                    notify(current_op())
            except Exception:  # a notice must never break a compile
                pass

        def on_end(self, ev: event.Event) -> None:
            pass

    event.register("numba:compile", _CompileListener())
