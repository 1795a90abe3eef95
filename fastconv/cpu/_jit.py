"""The one place that turns :mod:`fastconv.config` into Numba decorators (their compile
pipelines: :mod:`._pipelines`)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import numba
from numba.core.caching import NullCache
from numba.core.registry import CPUDispatcher

from .. import _notice, config
from ._pipelines import EntryCompiler, HelperCache, HelperCompiler, ThreadedCompiler

_DEFAULT_FASTMATH = frozenset({"reassoc", "contract", "nsz", "arcp"})

# one line on stderr before the first kernel that really compiles (fastconv._notice)
_notice.install()


def disk_cache() -> bool:
    """Whether compiled kernels go to Numba's disk cache.

    Numba keys its cache by signature and CPU, not by compile flags: a kernel
    cached with fast-math would be loaded as it is under ``FASTCONV_FASTMATH=0`` or
    ``NUMBA_BOUNDSCHECK=1``. Nor by the vector width the kernels are built for, which
    follows the CPU's features unless ``FASTCONV_SIMD_BITS`` forces one. So only the
    default flags are cached; other settings compile in memory. (``FASTCONV_PARALLEL=0``
    too, from when threaded kernels compiled with Numba's parallel passes: its kernels
    are the same now, and it stays off the cache as before.)"""
    return (config.CACHE and config.PARALLEL and config.FASTMATH == _DEFAULT_FASTMATH
            and not numba.config.BOUNDSCHECK and not config.SIMD_BITS)


@functools.cache
def package_fingerprint() -> bytes:
    """sha256 of every ``.py`` file of the installed fastconv package (paths and contents,
    in path order): what :func:`package_stamped` adds to each kernel's cache stamp."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.digest()


def package_stamped(dispatcher):
    """``dispatcher`` (a Numba dispatcher, not yet compiled; usable as a decorator) with
    its cache index stamped by the whole package's sources (:func:`package_fingerprint`)
    as well as its own file's.

    Numba checks a cached function against its own source file only, but a kernel's
    cached machine code holds every kernel it calls, inlined or linked in, from other
    files too: edit ``microkernels.py`` and the cached ``blocked`` forward would go on
    running the old micro-kernels (it did, in a measurement here), and so would an
    editable install after a ``git pull`` that changed only a callee's file. With the
    package's stamp any change to any of its files recompiles every kernel once. On a
    Numba whose cache is laid out otherwise, the kernel compiles in memory instead."""
    if isinstance(getattr(dispatcher, "_cache", None), NullCache):
        return dispatcher  # (the disk cache is off)
    try:
        index = dispatcher._cache._cache_file
        index._source_stamp = (index._source_stamp, package_fingerprint())
    except AttributeError:
        dispatcher._cache = NullCache()
    return dispatcher


def jit_options() -> dict[str, Any]:
    """Numba's options for every kernel and every ``@overload`` or ``register_jitable``
    helper of the kernels. Numba compiles a helper once per argument types and per
    compile flags of its caller, so helpers compiled with the kernels' flags are
    compiled once, not again for each caller with other flags (an ``@overload``
    defaults to no Python wrapper, a kernel has one: that difference alone compiled
    the 16 x 16 transpose twice, 0.5-0.8 s). ``forceinline`` is set, False, so that a
    helper first compiled inside an inlined kernel (:func:`kernel`'s ``inline``) does not
    inherit it from that compile, as Numba's unset flags do.

    ``no_cfunc_wrapper``: Numba otherwise builds, optimises and emits a C-callable
    wrapper beside every compiled function, which only a first-class function or
    ``cfunc`` use would call; the threads call a kernel's own native function
    (:mod:`.threads`). Without them the demo's first forward and backward compiled in a
    median 22.5 s against 25.1 s (five alternating pairs, empty caches, faster in four;
    ranges 20.8-27.4 and 22.1-26.0 s; LLVM's share a median 10.7 against 12.1 s).

    ``no_cpython_wrapper``: nor a Python wrapper (the code that unboxes each argument
    from a Python object), but for the functions Python calls: the threaded kernels and
    those made with :func:`kernel`'s ``entry``, whose pipeline (:class:`._pipelines.EntryCompiler`)
    builds it regardless of the flag, so that every function has the same flags (which
    Numba's cache of a helper's compiles is keyed by; a wrapper flag set apart compiled
    the transpose, ``min``, ``max`` and more twice). Before, each of the 72 helper kernels and
    every ``@overload`` had one that nothing called. Without them (the kernels' machine
    code the same), with empty caches and each pair run at once, one process per core of
    a 2-core Zen 3 VM whose speed drifts by a third between minutes: the demo's first
    forward and backward 5-22 % faster in seven of seven pairs (22.4-29.6 s against
    28.7-33.8 s), the warm-up in one process 5-10 % in four of four (82.8-108.9 s against
    86.8-115.2 s); ``benchmarks/RESULTS.md``, "Python wrappers for the functions Python
    calls only"."""
    return dict(fastmath=set(config.FASTMATH), nogil=True, error_model="numpy",
                no_cpython_wrapper=True, no_cfunc_wrapper=True, forceinline=False)


def uncounted_options() -> dict[str, Any]:
    """:func:`jit_options` without reference counting (Numba's ``_nrt=False``): for a
    helper that allocates nothing and is called from helpers compiled so
    (:func:`inlined_options`). Set, not inherited: a helper whose ``_nrt`` is unset takes
    its caller's, and would compile once for each."""
    return {**jit_options(), "_nrt": False}


def inlined_options() -> dict[str, Any]:
    """:func:`uncounted_options` for an ``@overload`` that LLVM inlines into every caller
    (``forceinline``, as :func:`kernel`'s ``inline`` and ``counted=False``): a row's copy
    or store called in a loop, without the reference counts on its array arguments that
    a call takes and that stay in the loop where the call is inlined (``strips.deal_phases``
    called so dealt a stride-2 row in 30 ns, inlined without them in 15).

    Until 2026-12-07 these were ``@overload(..., inline="always")``, which Numba inlines
    as its own IR: it ran its front end over the helper again at every call site's
    typing (80 times in the demo's first step) and inlined and retyped it into the
    caller, about a tenth of the demo's compile (``benchmarks/RESULTS.md``, "Helpers
    inlined by LLVM, not by Numba"). What such a helper calls compiles once more, for
    its flags (Numba keys a helper's compiles by its caller's): small functions here
    (``row_start``, ``min``, the unchecked transpose)."""
    return {**uncounted_options(), "forceinline": True}


def kernel(*, parallel: bool = False, inline: bool = False, counted: bool = True,
           entry: bool = False):
    """``numba.njit`` with fastconv's flags.

    ``inline``: the kernel's callers get its code, not a call (LLVM's ``alwaysinline``,
    Numba's ``forceinline``): for the micro-kernels' blocks, called once per block of
    positions with four arrays passed field by field (some 35 arguments), a call cost
    as much as a tenth of the block's multiply-adds (see :mod:`.microkernels`).

    A threaded kernel (``parallel=True``, which also needs ``config.PARALLEL``) takes
    ``part, parts`` last and runs share ``part`` of ``parts`` of its ``prange`` loops;
    :func:`.threads.launch` runs its shares, each a call of this one compiled function
    (its ``prange`` loops run as plain loops). It is never compiled with Numba's parallel
    passes: they compiled each threaded kernel a second time, the loop bodies typed and
    optimised again as functions of their own, more than half of an empty cache's
    compile. Its Python wrapper calls it through a launching entry
    (:func:`.threads.add_launching_wrapper`), compiled and cached with it, that also runs
    all its parts on Numba's pool. ``kernel.threaded`` says which kernels are threaded.

    ``counted=False``: no reference counting in the function (Numba's ``_nrt=False``; it
    may then allocate nothing). Numba takes and drops a reference to each array argument
    in the callee, atomic operations that stay in the caller's loop even where the
    callee is inlined: for a helper called once per plane (a depthwise layer's
    :func:`.direct._plane_taps`) they took most of the time (a C960 7x7 layer on one
    thread of a Zen 3: 0.92 against 0.32 ms without).

    ``entry``: Python calls it (beside any kernel that does), so it gets a Python wrapper,
    as a threaded kernel does. Any other kernel is a helper, compiled without one
    (:func:`jit_options`) and without machine code of its own (:class:`._pipelines.HelperLibrary`:
    its callers run it in theirs), and a call from Python runs a twin of it compiled
    with both (:class:`_HelperDispatcher`: tests, the REPL)."""
    options = dict(cache=disk_cache(), **{**jit_options(), "forceinline": inline})
    if not counted:
        options["_nrt"] = False

    def decorate(function):
        # (under NUMBA_DISABLE_JIT a threaded kernel is its Python function: one part)
        threaded = parallel and config.PARALLEL and not numba.config.DISABLE_JIT
        if parallel or entry:
            dispatcher = package_stamped(_entry(function, options, threaded))
        else:
            dispatcher = package_stamped(_helper(function, options))
        dispatcher.threaded = threaded
        return dispatcher

    return decorate


def _entry(function, options: dict[str, Any], threaded: bool = False):
    """``numba.njit(**options)(function)`` with a Python wrapper: a function Python calls
    (:func:`kernel`'s ``parallel`` (``threaded``) and ``entry``, a helper's twin)."""
    compiler = ThreadedCompiler if threaded else EntryCompiler
    return numba.njit(pipeline_class=compiler, **options)(function)


class _HelperDispatcher(CPUDispatcher):
    """A kernel that only other kernels call: its compiled code has no Python wrapper to
    run (:func:`jit_options`), nor machine code (:class:`._pipelines.HelperLibrary`). A call from
    Python compiles and runs a twin with both, outside the disk cache, whose entries for
    the function are the helper's ones."""

    def __call__(self, *args, **kwargs):
        twin = self.__dict__.get("_fastconv_twin")
        if twin is None:
            twin = self._fastconv_twin = _entry(self.py_func,
                                                {**self._fastconv_options, "cache": False})
        return twin(*args, **kwargs)


def _helper(function, options: dict[str, Any]) -> Any:
    """What ``numba.njit(**options)(function)`` makes, as a :class:`_HelperDispatcher`."""
    if numba.config.DISABLE_JIT:
        return numba.njit(**options)(function)
    targetoptions = {key: value for key, value in options.items() if key != "cache"}
    dispatcher = _HelperDispatcher(py_func=function, locals={},
                                   targetoptions={**targetoptions, "nopython": True},
                                   pipeline_class=HelperCompiler)
    dispatcher._fastconv_options = options
    if options["cache"]:
        dispatcher._cache = HelperCache(function)
    return dispatcher
