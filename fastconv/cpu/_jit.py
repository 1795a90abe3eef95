"""The one place that turns :mod:`fastconv.config` into Numba decorators."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import numba
from llvmlite import binding as llvm
from numba.core import lowering
from numba.core.caching import CompileResultCacheImpl, FunctionCache, NullCache
from numba.core.codegen import JITCodeLibrary
from numba.core.compiler import CompilerBase, CompileResult, DefaultPassBuilder, _LowerResult
from numba.core.compiler_machinery import register_pass
from numba.core.registry import CPUDispatcher
from numba.core.typed_passes import NativeLowering

from .. import _notice, config

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
    those made with :func:`kernel`'s ``entry``, whose pipeline (:class:`_EntryCompiler`)
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
    (:func:`jit_options`) and without machine code of its own (:class:`_HelperLibrary`:
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


class _EntryLower(lowering.Lower):
    def lower(self):
        """The function, then its Python wrapper, which ``no_cpython_wrapper`` leaves out
        otherwise."""
        super().lower()
        self.add_wrapper()

    def add_wrapper(self):
        """Numba's Python wrapper (the GIL released, as :func:`jit_options` has it)."""
        self.create_cpython_wrapper(release_gil=True)


class _ThreadedLower(_EntryLower):
    def add_wrapper(self):
        """A Python wrapper through a launching entry that also runs the function's parts
        on Numba's pool (:func:`.threads.add_launching_wrapper`)."""
        from . import threads

        threads.add_launching_wrapper(self)


def _lowering_pass(name: str, lower_class: type) -> type:
    """Numba's lowering pass, lowering with ``lower_class`` (registered as ``name``)."""
    pass_ = type(name, (NativeLowering,), {
        "_name": name, "lowering_class": property(lambda self: lower_class)})
    return register_pass(mutates_CFG=True, analysis_only=False)(pass_)


_EntryLowering = _lowering_pass("fastconv_entry_lowering", _EntryLower)
_ThreadedLowering = _lowering_pass("fastconv_threaded_lowering", _ThreadedLower)


class _EntryCompiler(CompilerBase):
    """Numba's nopython pipeline, lowered with a Python wrapper (:func:`_entry`)."""

    lowering_pass: type = _EntryLowering

    def define_pipelines(self):
        pipeline = DefaultPassBuilder.define_nopython_pipeline(self.state)
        pipeline.passes = [(self.lowering_pass if pass_ is NativeLowering else pass_, about)
                           for pass_, about in pipeline.passes]
        pipeline.finalize()
        return [pipeline]


class _ThreadedCompiler(_EntryCompiler):
    """... lowered with a Python wrapper that can launch the function's parts
    (:func:`kernel`'s ``parallel``)."""

    lowering_pass = _ThreadedLowering


def _entry(function, options: dict[str, Any], threaded: bool = False):
    """``numba.njit(**options)(function)`` with a Python wrapper: a function Python calls
    (:func:`kernel`'s ``parallel`` (``threaded``) and ``entry``, a helper's twin)."""
    compiler = _ThreadedCompiler if threaded else _EntryCompiler
    return numba.njit(pipeline_class=compiler, **options)(function)


class _HelperLibrary(JITCodeLibrary):
    """A helper kernel's code library, made into machine code only when something asks
    for its machine code.

    Numba makes every compiled function's library into machine code at once (to hand
    its address to Python). A helper's is never run: its callers link its optimised IR
    into their own library (inlined or called there) and run that. Without the helpers'
    own machine code, on a 2-core Zen 4 VM with empty caches, each pair run at once one
    process per core: the demo's first forward and backward 9-18 % shorter in four of
    four pairs (13.69-15.73 s against 16.12-17.03), the warm-up in one process 7-9 % in
    two of two (42.4 and 48.0 s against 46.7 and 51.4), with helper processes (run one
    after the other) a median 26.4 s against 27.8 over seven pairs
    (``benchmarks/RESULTS.md``, "Helpers without machine code of their own"). The disk
    cache keeps a helper as its optimised IR (Numba's ``bitcode`` form) instead of its
    object code, and a later process that compiles a new caller loads it as that, again
    without machine code (:class:`_HelperCache`)."""

    _pending = False  # finalized, its machine code not yet made

    @classmethod
    def from_bitcode(cls, codegen, name: str, bitcode: bytes) -> _HelperLibrary:
        """A finalized library of the optimised IR :meth:`serialize_using_object_code`
        kept."""
        library = cls(codegen, name)
        library.enable_object_caching()
        library._final_module = llvm.parse_bitcode(bitcode)
        library._finalize_final_module()
        return library

    def _finalize_final_module(self):
        """The library ready to link (its IR optimised, its symbols checked, its dynamic
        globals listed: Numba's cache refuses a function that has any), without the
        machine code, which :meth:`_emit` makes."""
        self._finalize_dynamic_globals()
        self._verify_declare_only_symbols()
        self._finalized = self._pending = True

    def _emit(self):
        if self._pending:
            self._pending = False
            self._dynamic_globals.clear()  # (listed again)
            super()._finalize_final_module()

    def get_pointer_to_function(self, name):
        self._ensure_finalized()
        self._emit()
        return super().get_pointer_to_function(name)

    def serialize_using_object_code(self):
        """The cache's form of the library: its optimised IR unless its machine code was
        made."""
        self._ensure_finalized()
        return self.serialize_using_bitcode() if self._pending else (
            super().serialize_using_object_code())


def _placeholder(fndesc, env, library):
    """The entry point of a helper's compile result: a compiled function's usual type,
    with no address (Python never calls a helper's own code, :class:`_HelperDispatcher`);
    callers find the helper's library through it."""
    from numba import _dynfunc

    return _dynfunc.make_function(fndesc.lookup_module(), fndesc.qualname.split(".")[-1],
                                  f"helper {fndesc.qualname!r}", 0, env, (library,))


class _HelperCacheImpl(CompileResultCacheImpl):
    def rebuild(self, target_context, payload):
        """A helper cached as its optimised IR loaded as a :class:`_HelperLibrary`, without
        machine code (Numba's loader would make it); anything else as Numba loads it."""
        libdata = payload[0]
        if len(payload) != 9 or libdata[1] != "bitcode":
            return super().rebuild(target_context, payload)
        (_, fndesc, env, signature, objectmode, lifted, typeann, reload_init,
         referenced_envs) = payload
        for function in reload_init:
            function()
        library = _HelperLibrary.from_bitcode(target_context.codegen(), libdata[0], libdata[2])
        return CompileResult(
            target_context=target_context, typing_context=target_context.typing_context,
            library=library, environment=env, entry_point=_placeholder(fndesc, env, library),
            fndesc=fndesc, type_annotation=typeann, signature=signature, objectmode=objectmode,
            lifted=lifted, typing_error=None, call_helper=None, metadata=None,
            reload_init=reload_init, referenced_envs=referenced_envs)


class _HelperCache(FunctionCache):
    """Numba's disk cache of a function, loading helpers without machine code
    (:class:`_HelperLibrary`)."""

    _impl_class = _HelperCacheImpl


class _HelperLowering(NativeLowering):
    """Numba's lowering pass, for a helper: its library a :class:`_HelperLibrary`, and no
    machine code made at the end (Numba's pass finishes by taking the function's
    address, which makes it). The compiled function's entry point, which Python never
    calls (:class:`_HelperDispatcher`), is a placeholder of the usual type with no
    address; callers find the function's library through it as usual."""

    _name = "fastconv_helper_lowering"

    def run_pass(self, state):
        if state.library is None:
            state.library = _HelperLibrary(state.targetctx.codegen(),
                                           state.func_id.func_qualname)
            state.library.enable_object_caching()
        flags = state.flags
        compiled = flags.no_compile
        flags.no_compile = True  # lowered only: Numba's pass then leaves out the address
        try:
            super().run_pass(state)
        finally:
            flags.no_compile = compiled
        lowered, library = state["cr"], state.library
        fndesc = lowered.fndesc
        entry = _placeholder(fndesc, lowered.env, library)
        state.targetctx.insert_user_function(entry, fndesc, [library])
        state.reload_init.extend(library._reload_init)
        state["cr"] = _LowerResult(fndesc, lowered.call_helper, cfunc=entry, env=lowered.env)
        return True


register_pass(mutates_CFG=True, analysis_only=False)(_HelperLowering)


class _HelperCompiler(_EntryCompiler):
    """Numba's nopython pipeline, lowered without machine code (:class:`_HelperLowering`)."""

    lowering_pass = _HelperLowering


class _HelperDispatcher(CPUDispatcher):
    """A kernel that only other kernels call: its compiled code has no Python wrapper to
    run (:func:`jit_options`), nor machine code (:class:`_HelperLibrary`). A call from
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
                                   pipeline_class=_HelperCompiler)
    dispatcher._fastconv_options = options
    if options["cache"]:
        dispatcher._cache = _HelperCache(function)
    return dispatcher
