"""The one place that turns :mod:`fastconv.config` into Numba decorators."""

from __future__ import annotations

import types
from typing import Any

import numba

from .. import _notice, config

_DEFAULT_FASTMATH = frozenset({"reassoc", "contract", "nsz", "arcp"})

#: Every parallel kernel as (module name, global name, dispatcher): what
#: :func:`compile_twins` compiles.
THREADED: list[tuple[str, str, Any]] = []

# one line on stderr before the first kernel that really compiles (fastconv._notice)
_notice.install()


def disk_cache() -> bool:
    """Whether compiled kernels go to Numba's disk cache.

    Numba keys its cache by signature and CPU, not by compile flags: a kernel
    cached with ``parallel=True`` would be loaded as it is under
    ``FASTCONV_PARALLEL=0``, ``FASTCONV_FASTMATH=0`` or ``NUMBA_BOUNDSCHECK=1``.
    Nor by the vector width the kernels are built for, which follows the CPU's features
    unless ``FASTCONV_SIMD_BITS`` forces one. So only the default flags are cached; other
    settings compile in memory."""
    return (config.CACHE and config.PARALLEL and config.FASTMATH == _DEFAULT_FASTMATH
            and not numba.config.BOUNDSCHECK and not config.SIMD_BITS)


def jit_options() -> dict[str, Any]:
    """Numba's options for every kernel and every ``@overload`` or ``register_jitable``
    helper of the kernels. Numba compiles a helper once per argument types and per
    compile flags of its caller, so helpers compiled with the kernels' flags are
    compiled once, not again for each caller with other flags (an ``@overload``
    defaults to no Python wrapper, a kernel has one: that difference alone compiled
    the 16 x 16 transpose twice, 0.5-0.8 s)."""
    return dict(fastmath=set(config.FASTMATH), nogil=True, error_model="numpy",
                no_cpython_wrapper=False)


def kernel(*, parallel: bool = False):
    """``numba.njit`` with fastconv's flags; ``parallel`` also needs ``config.PARALLEL``.

    A parallel kernel takes ``part, parts`` last and runs share ``part`` of ``parts`` of
    its ``prange`` loops (:func:`.threads.launch` calls it). It also gets
    ``kernel.serial``: the same function compiled without ``parallel`` (its ``prange``
    loops run as plain loops), for calls whose work is one task or a few microseconds,
    where waking the thread pool costs more than the work (a 3x3 conv2d on (1, 4, 8, 8):
    6.3 us parallel, 3.3 us serial), and for each part on fastconv's worker threads
    (``FASTCONV_NUMBA_POOL=0``, where the kernel itself, with Numba's parallel passes,
    never compiles). The twin has a name of its own, so Numba's disk cache keeps the
    two apart."""
    options = dict(cache=disk_cache(), **jit_options())

    def decorate(function):
        threaded = parallel and config.PARALLEL
        dispatcher = numba.njit(parallel=threaded, **options)(function)
        if threaded:
            twin = types.FunctionType(function.__code__, function.__globals__,
                                      function.__name__ + "_serial", function.__defaults__,
                                      function.__closure__)
            twin.__qualname__ = function.__qualname__ + "_serial"
            twin.__module__ = function.__module__
            twin.__doc__ = function.__doc__
            dispatcher.serial = numba.njit(parallel=False, **options)(twin)
            dispatcher.serial.serial = dispatcher.serial
            THREADED.append((function.__module__, function.__name__, dispatcher))
        else:
            dispatcher.serial = dispatcher
        return dispatcher

    return decorate


def compile_twins(threaded: bool) -> None:
    """Where ``threaded`` (:func:`.threads.launch` runs threaded kernels on Numba's pool),
    compile each parallel kernel's serial twin for every signature the kernel has, and
    the kernel for every signature of its twin (:func:`fastconv.warmup`): small calls
    run the twin and large ones the kernel, so a warm-up call of either size leaves the
    other to compile on a later call. Elsewhere (fastconv's worker threads) every call
    runs the twin, which the warm-up's calls compiled."""
    if not threaded:
        return
    for _, _, dispatcher in THREADED:
        twin = dispatcher.serial
        for one, other in ((dispatcher, twin), (twin, dispatcher)):
            for signature in one.signatures:
                if signature not in other.signatures:
                    other.compile(signature)
