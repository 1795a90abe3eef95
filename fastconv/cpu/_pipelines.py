"""Numba compile pipelines of fastconv's kernels (:func:`._jit.kernel` picks one).

- :class:`EntryCompiler`: a function Python calls gets Numba's Python wrapper, which
  ``no_cpython_wrapper`` leaves out of every other (:func:`._jit.jit_options`);
  :class:`ThreadedCompiler`: a threaded kernel's wrapper goes through a launching entry
  that can run its parts on Numba's pool (:func:`.threads.add_launching_wrapper`).
- :class:`HelperCompiler`: a helper (a function only other kernels call) is compiled to
  optimised IR, which its callers link and run, without machine code of its own
  (:class:`HelperLibrary`), and kept so in the disk cache (:class:`HelperCache`).

Either way the function's code library is one of fastconv's (:class:`KernelLibrary`,
:class:`HelperLibrary`), which optimises its module once, as a whole: Numba's also
optimises each function as its IR joins the library.
"""

from __future__ import annotations

from llvmlite import binding as llvm
from numba.core import lowering
from numba.core.caching import CompileResultCacheImpl, FunctionCache
from numba.core.codegen import JITCodeLibrary
from numba.core.compiler import CompilerBase, CompileResult, DefaultPassBuilder, _LowerResult
from numba.core.compiler_machinery import register_pass
from numba.core.typed_passes import NativeLowering


class KernelLibrary(JITCodeLibrary):
    """The code library of a function fastconv compiles (a helper's is a
    :class:`HelperLibrary`, one of these too): Numba's, without the optimisation of each
    function as its IR joins the library (:meth:`_optimize_functions`).

    Numba runs LLVM's function passes at full optimisation (``NUMBA_OPT``, 3) over each
    function of a module as it is added to a library; at the end it links the library's
    modules with its callees' and optimises the whole (a cheap pass that inlines, then
    the full module pipeline, which runs those function passes again). Here the whole
    module's optimisation runs alone, over every function once. On a 2-core Zen 4 VM,
    empty caches, ``warmup(dtypes=(np.float32,), processes=1)`` took 51.2 and 52.1 s of
    CPU against 56.0 and 56.4 s with the first round, alternating; the kernels ran as
    fast (``benchmarks/RESULTS.md``, "Each function optimised once"). Only fastconv's
    functions compile so: other Numba code in the process compiles as Numba's settings
    say."""

    def _optimize_functions(self, ll_module):
        ll_module.data_layout = self._codegen._data_layout  # (what Numba's sets first)


def _with_library(state, library_class: type = KernelLibrary) -> None:
    """Give the compile in ``state`` a library of ``library_class`` (a :class:`KernelLibrary`
    or a :class:`HelperLibrary`) unless it has a library (as Numba's lowering pass gives
    it one of its own)."""
    if state.library is None:
        state.library = library_class(state.targetctx.codegen(), state.func_id.func_qualname)
        state.library.enable_object_caching()  # (serialised into the disk cache later)


class _EntryLower(lowering.Lower):
    def lower(self):
        """The function, then its Python wrapper, which ``no_cpython_wrapper`` leaves out
        otherwise."""
        super().lower()
        self.add_wrapper()

    def add_wrapper(self):
        """Numba's Python wrapper (the GIL released, as :func:`._jit.jit_options` has it)."""
        self.create_cpython_wrapper(release_gil=True)


class _ThreadedLower(_EntryLower):
    def add_wrapper(self):
        """A Python wrapper through a launching entry that also runs the function's parts
        on Numba's pool (:func:`.threads.add_launching_wrapper`)."""
        from . import threads

        threads.add_launching_wrapper(self)


def _lowering_pass(name: str, lower_class: type) -> type:
    """Numba's lowering pass, lowering with ``lower_class`` into a :class:`KernelLibrary`
    (registered as ``name``)."""

    def run_pass(self, state):
        _with_library(state)
        return NativeLowering.run_pass(self, state)

    pass_ = type(name, (NativeLowering,), {
        "_name": name, "lowering_class": property(lambda self: lower_class),
        "run_pass": run_pass})
    return register_pass(mutates_CFG=True, analysis_only=False)(pass_)


_EntryLowering = _lowering_pass("fastconv_entry_lowering", _EntryLower)
_ThreadedLowering = _lowering_pass("fastconv_threaded_lowering", _ThreadedLower)


class EntryCompiler(CompilerBase):
    """Numba's nopython pipeline, lowered with a Python wrapper (:func:`._jit.kernel`'s
    ``entry``, a helper's twin)."""

    lowering_pass: type = _EntryLowering

    def define_pipelines(self):
        pipeline = DefaultPassBuilder.define_nopython_pipeline(self.state)
        pipeline.passes = [(self.lowering_pass if pass_ is NativeLowering else pass_, about)
                           for pass_, about in pipeline.passes]
        pipeline.finalize()
        return [pipeline]


class ThreadedCompiler(EntryCompiler):
    """... lowered with a Python wrapper that can launch the function's parts
    (:func:`._jit.kernel`'s ``parallel``)."""

    lowering_pass = _ThreadedLowering


class HelperLibrary(KernelLibrary):
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
    without machine code (:class:`HelperCache`)."""

    _pending = False  # finalized, its machine code not yet made

    @classmethod
    def from_bitcode(cls, codegen, name: str, bitcode: bytes) -> HelperLibrary:
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
    with no address (Python never calls a helper's own code, :class:`._jit._HelperDispatcher`);
    callers find the helper's library through it."""
    from numba import _dynfunc

    return _dynfunc.make_function(fndesc.lookup_module(), fndesc.qualname.split(".")[-1],
                                  f"helper {fndesc.qualname!r}", 0, env, (library,))


class _HelperCacheImpl(CompileResultCacheImpl):
    def rebuild(self, target_context, payload):
        """A helper cached as its optimised IR loaded as a :class:`HelperLibrary`, without
        machine code (Numba's loader would make it); anything else as Numba loads it."""
        libdata = payload[0]
        if len(payload) != 9 or libdata[1] != "bitcode":
            return super().rebuild(target_context, payload)
        (_, fndesc, env, signature, objectmode, lifted, typeann, reload_init,
         referenced_envs) = payload
        for function in reload_init:
            function()
        library = HelperLibrary.from_bitcode(target_context.codegen(), libdata[0], libdata[2])
        return CompileResult(
            target_context=target_context, typing_context=target_context.typing_context,
            library=library, environment=env, entry_point=_placeholder(fndesc, env, library),
            fndesc=fndesc, type_annotation=typeann, signature=signature, objectmode=objectmode,
            lifted=lifted, typing_error=None, call_helper=None, metadata=None,
            reload_init=reload_init, referenced_envs=referenced_envs)


class HelperCache(FunctionCache):
    """Numba's disk cache of a function, loading helpers without machine code
    (:class:`HelperLibrary`)."""

    _impl_class = _HelperCacheImpl


class _HelperLowering(NativeLowering):
    """Numba's lowering pass, for a helper: its library a :class:`HelperLibrary`, and no
    machine code made at the end (Numba's pass finishes by taking the function's
    address, which makes it). The compiled function's entry point, which Python never
    calls (:class:`._jit._HelperDispatcher`), is a placeholder of the usual type with no
    address; callers find the function's library through it as usual."""

    _name = "fastconv_helper_lowering"

    def run_pass(self, state):
        _with_library(state, HelperLibrary)
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


class HelperCompiler(EntryCompiler):
    """Numba's nopython pipeline, lowered without machine code (:class:`_HelperLowering`)."""

    lowering_pass = _HelperLowering
