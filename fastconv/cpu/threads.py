"""How kernels run on several threads: on Numba's thread pool (TBB where the ``tbb``
wheel is installed; beside PyTorch, its OpenMP pool), or on fastconv's worker threads.

A threaded kernel (``@kernel(parallel=True)``) takes ``part, parts`` last and runs share
``part`` of each of its ``prange`` loops; it is compiled once, as one plain function.
:func:`launch` runs its ``parts`` shares: by default on Numba's thread pool, each share
a call of the compiled kernel through its address from the one parallel loop of
:func:`_run_trampolines`, all that Numba's parallel passes compile (the kernel's own
launching entry, compiled with it, hands it the arguments:
:func:`add_launching_wrapper`); a small call as one part on the calling thread.
Until 2026-12-06 each threaded kernel was compiled a second time with those passes, its
loop bodies typed and optimised again as functions of their own:
``fastconv.warmup(dtypes=(np.float32,))`` with an empty cache took 85 s on a 2-core Zen 2
VM, 38 s without (``benchmarks/RESULTS.md``). With ``FASTCONV_NUMBA_POOL=0``
(:data:`fastconv.config.NUMBA_POOL`) the first share runs on the calling thread and the
others on fastconv's worker threads instead (the kernels release the GIL), whose second
thread starts 20-40 us later than on TBB's pool, whose workers spin between loops (the
Python thread must take the GIL to start its part).

Beside PyTorch, two pools on the same cores fight: after each parallel op,
PyTorch's GNU OpenMP workers spin for milliseconds waiting for the next one, and
a fastconv kernel running then shares its cores with them (a training step
through ``fastconv.torch`` ran at half speed). :func:`share_torch_pool`, called
when ``fastconv.torch`` is imported, starts Numba's OpenMP layer on the OpenMP
runtime PyTorch loaded, where :func:`launch` runs the threaded kernels (with
``FASTCONV_NUMBA_POOL=0`` too), so both libraries run on one pool of threads: the
spinning workers pick up fastconv's loops. It restores the two OpenMP settings Numba's start changes
(the thread count and nesting), so PyTorch's settings stay as they were.

Numba takes the first layer that loads of TBB, OpenMP and workqueue. fastconv
depends on the ``tbb`` wheel (where one is published: x86-64 Linux, Windows and
macOS) because TBB is the one layer that is both fork-safe and thread-safe:

- GNU OpenMP kills a forked child that runs a parallel kernel after its parent
  did (``Terminating: fork() called from a process already using GNU OpenMP``),
  which hangs ``multiprocessing``'s default fork pools and PyTorch's DataLoader
  workers;
- workqueue aborts when two Python threads launch kernels at once.

The wheel puts ``libtbb.so.12`` in the environment's ``lib/`` folder, which the
dynamic loader does not search, so Numba's plain ``dlopen("libtbb.so.12")``
fails and it silently falls back to OpenMP. :func:`load_tbb` loads the library
by its full path first; Numba's own choice then finds it.

In a child forked after its parent ran kernels on Numba's OpenMP layer (shared with
PyTorch), every kernel runs on the calling thread: such workers compute on one thread
each, as PyTorch's DataLoader workers do. A forked child starts worker threads of its
own when it needs them (with ``FASTCONV_NUMBA_POOL=0``).

An explicit ``NUMBA_THREADING_LAYER`` always wins, and a process whose Numba
thread pool already started keeps its layer.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import os
import sys
import threading

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import types
from numba.core import cgutils
from numba.core.callwrapper import PyCallWrapper
from numba.extending import intrinsic
from numba.np.ufunc import parallel as _parallel

from .. import config
from . import _jit

_TBB_NAMES = {"linux": "libtbb.so.12", "win32": "tbb12.dll", "darwin": "libtbb.12.dylib"}


def load_tbb() -> str | None:
    """Load the ``tbb`` wheel's library so Numba can pick its TBB layer; the path
    loaded, or None where the wheel is absent (Numba then chooses as usual)."""
    name = _TBB_NAMES.get(sys.platform)
    if name is None:
        return None
    try:
        files = importlib.metadata.distribution("tbb").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == name:
            path = str(file.locate())
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                return None
            return path
    return None


def _after_fork_in_child() -> None:
    global _pool, _one_thread
    _pool = None  # the parent's workers do not exist here: new ones start on demand
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    if (on_numba_pool() and parallel is not None and parallel._is_initialized
            and parallel._threading_layer == "omp"):
        # GNU OpenMP's pool cannot be entered here: one thread each, as PyTorch's
        # DataLoader workers compute
        _one_thread = True


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _global_provider(symbol: str) -> str | None:
    """The file of the library that gives ``symbol`` to a library loaded from now on
    (the first in the process's global scope), or None where none does."""
    process = ctypes.CDLL(None)
    try:
        address = ctypes.cast(getattr(process, symbol), ctypes.c_void_p).value
        dladdr = process.dladdr
    except AttributeError:
        return None
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    info = _DlInfo()
    if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.path.realpath(os.fsdecode(info.dli_fname))


def share_torch_pool() -> bool:
    """Start Numba's OpenMP layer on the GNU OpenMP runtime PyTorch loaded, so that
    fastconv's parallel loops run on PyTorch's thread pool; whether Numba now does.

    Only on Linux, where PyTorch's parallel backend is OpenMP with the libgomp of its
    own wheel (in ``torch/lib``, loaded into the global scope by ``import torch``),
    where Numba's OpenMP layer loads, when Numba's pool has not started and
    ``NUMBA_THREADING_LAYER`` is not set; otherwise nothing changes (TBB stays)."""
    torch = sys.modules.get("torch")
    if (torch is None or not config.PARALLEL or _parallel._is_initialized
            or not sys.platform.startswith("linux") or "NUMBA_THREADING_LAYER" in os.environ
            or numba.config.THREADING_LAYER != "default"):
        return False
    try:
        if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
            return False
        provider = _global_provider("GOMP_parallel")
        if provider is None or torch.__file__ is None:
            return False
        torch_lib = os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "lib"))
        if os.path.dirname(provider) != torch_lib:
            return False
        importlib.import_module("numba.np.ufunc.omppool")  # loads (its libgomp is there)
    except (ImportError, OSError, AttributeError):
        return False
    process = ctypes.CDLL(None)  # omp_* resolve to PyTorch's libgomp, as GOMP_parallel did
    threads, nested = torch.get_num_threads(), process.omp_get_nested()
    levels = process.omp_get_max_active_levels()
    numba.config.THREADING_LAYER = "omp"
    try:
        _parallel._launch_threads()  # sets the OpenMP thread count and nesting: restored below
    except (ValueError, ImportError, OSError):
        numba.config.THREADING_LAYER = "default"
        return False
    finally:
        process.omp_set_nested(nested)
        process.omp_set_max_active_levels(levels)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    shared = numba.threading_layer() == "omp"
    if shared:
        global _on_numba_pool
        _on_numba_pool = True
    return shared


def count() -> int:
    """``numba.get_num_threads()`` without the lock it takes on every call (a kernel's
    host side asks on every call): once Numba's pool runs, its per-thread count is read
    directly."""
    if _parallel._is_initialized:
        return _parallel._get_num_threads()
    return numba.get_num_threads()


#: Most multiply-adds a convolution kernel runs on the calling thread, on Numba's pool:
#: waking TBB's sleeping workers takes longer than such a call (a 3x3 grad_weight on
#: (1, 4, 8, 8): 9.9 us on two threads, 5.2 us on one; 20 us when the workers had gone
#: to sleep).
SERIAL_MAX_WORK = 1 << 16
#: ... and on fastconv's worker threads, this many times as many: a worker starts later
#: (the direct loops, 3 filters of 3x3 on a Zen 2 VM: 62208 multiply-adds 20 us on one
#: thread, 48 us on two; 663552: 64 against 67 us; 2654208: 183 against 123 us).
WORKERS_SERIAL_FACTOR = 16


def parts_for(chunks: int, out, depth: int) -> int:
    """How many parts :func:`launch` splits a convolution kernel's ``chunks`` into: one
    where the call computes ``out`` (each value ``depth`` multiply-adds) in few
    multiply-adds (the workers would only be woken to wait), else one per chunk, at most
    :func:`count`."""
    limit = SERIAL_MAX_WORK if on_numba_pool() else SERIAL_MAX_WORK * WORKERS_SERIAL_FACTOR
    if chunks == 1 or out.size * depth <= limit:
        return 1
    return min(chunks, count())


def launch(kernel, parts: int, *args) -> list:
    """Run ``kernel`` (a ``@kernel(parallel=True)`` function whose last two arguments,
    ``part`` and ``parts``, say which share of each parallel loop a call runs) over all
    its ``parts`` shares: the results of the calls, in order of part.

    One part runs on this thread. On Numba's pool (the default, and PyTorch's OpenMP
    pool after :func:`share_torch_pool`) each part is a call of the compiled kernel
    through its address from the parallel loop of :func:`_run_trampolines`
    (:func:`_on_pool`). With
    ``FASTCONV_NUMBA_POOL=0`` the first part runs on this thread and the others on
    worker threads of fastconv's own (:class:`_Pool`; the kernels release the GIL). Either
    way an exception a part raises (e.g. an ``IndexError`` with ``NUMBA_BOUNDSCHECK=1``)
    is raised here once every part has ended."""
    if parts <= 1 or _one_thread or not kernel.threaded:  # (FASTCONV_PARALLEL=0)
        return [kernel(*args, 0, 1)]
    if _on_numba_pool or config.NUMBA_POOL:
        return _on_pool(kernel, args, parts)
    global _pool
    if _pool is None:
        _pool = _Pool()
    return _pool.run(kernel, args, parts)


def on_numba_pool() -> bool:
    """Whether :func:`launch` runs threaded kernels on Numba's pool (the default, and
    beside PyTorch whatever ``FASTCONV_NUMBA_POOL`` says)."""
    return _on_numba_pool or config.NUMBA_POOL


class _Pool:
    """Worker threads that each run one part of a :func:`launch` at a time; the calling
    thread runs part 0 and waits for the others. A call that finds the pool taken by
    another Python thread runs all its parts itself, in order (each part writes only
    its own chunks' outputs and scratch rows, so the result is the same)."""

    def __init__(self) -> None:
        self._taken = threading.Lock()
        self._workers: list[_Worker] = []

    def run(self, function, args: tuple, parts: int) -> list:
        if not self._taken.acquire(blocking=False):
            return [function(*args, part, parts) for part in range(parts)]
        try:
            while len(self._workers) < parts - 1:
                self._workers.append(_Worker())
            workers = self._workers[: parts - 1]
            for worker in workers:
                if worker.busy():  # a call whose wait was interrupted (KeyboardInterrupt):
                    worker.wait()  # it may still write buffers this call reuses
            for part, worker in enumerate(workers, 1):
                worker.start(function, args, part, parts)
            results: list = [None] * parts
            error: BaseException | None = None
            try:
                results[0] = function(*args, 0, parts)
            except BaseException as raised:  # noqa: BLE001  (raised once the others end)
                error = raised
            for part, worker in enumerate(workers, 1):
                results[part], failure = worker.wait()
                if error is None:
                    error = failure
            if error is not None:
                raise error
            return results
        finally:
            self._taken.release()


_I64 = llvm_ir.IntType(64)
#: ``void trampoline(kernel address, arguments, part, parts, out)``: what
#: :func:`_run_trampolines` calls for each part (:func:`add_launching_wrapper` writes one
#: for each signature of the kernels).
_TRAMPOLINE = llvm_ir.FunctionType(llvm_ir.VoidType(), [
    _I64, llvm_ir.IntType(8).as_pointer(), _I64, _I64, _I64.as_pointer()])


@intrinsic
def _call_trampoline(typingctx, trampoline, kernel, arguments, out, part, parts):
    """``trampoline(kernel, arguments, part, parts, out)`` (:data:`_TRAMPOLINE`), all
    given as addresses or integers."""

    def codegen(context, builder, sig, llargs):
        values = [context.cast(builder, value, type_, types.int64)
                  for value, type_ in zip(llargs, sig.args, strict=True)]
        function = builder.inttoptr(values[0], _TRAMPOLINE.as_pointer())
        arguments = builder.inttoptr(values[2], _TRAMPOLINE.args[1])
        out = builder.inttoptr(values[3], _TRAMPOLINE.args[4])
        builder.call(function, [values[1], arguments, values[4], values[5], out])
        return context.get_dummy_value()

    return types.none(trampoline, kernel, arguments, out, part, parts), codegen


@_jit.package_stamped
@numba.njit(parallel=True, cache=_jit.disk_cache(), **_jit.jit_options())
def _run_trampolines(trampoline, kernel, arguments, out, parts):
    """Each part of a kernel through its trampoline (:func:`_call_trampoline`) on
    Numba's pool: the one parallel loop that runs every threaded kernel, compiled once."""
    for part in numba.prange(parts):
        _call_trampoline(trampoline, kernel, arguments, out, part, parts)


_RUNNER_TYPES = (types.int64,) * 5


def add_launching_wrapper(lower) -> None:
    """Give the threaded kernel that ``lower`` (Numba's lowering, done) made its Python
    wrapper, which calls it through a launching entry written here, in the kernel's own
    library, so that it compiles and caches with the kernel:

    - ``kernel(*args, part, parts)`` with ``part >= 0`` runs that part (a plain call);
    - ``kernel(*args, -1, control)`` runs every part on Numba's pool: ``control`` is the
      address of int64s ``[runner, parts, results...]`` (:func:`_on_pool`). The entry
      stores ``args`` in a struct on its stack and calls the parallel loop of
      :func:`_run_trampolines` (compiled at ``runner``) with a trampoline, written here
      for the kernel's types, that loads them and calls the kernel for a part, then
      writes its result as int64 to ``results[part]`` (0 for None) and whether it raised
      to ``results[parts + part]`` (its exception is not raised there: a parallel loop
      would lose it); the entry returns the zero of the kernel's type. The arrays go to
      the parts borrowed, without their memory records, as in a parallel loop of
      Numba's: each view a kernel takes of an array would otherwise add and drop a
      reference on it, an atomic on a line both threads write (Winograd's filter adjoint
      ran 4.7x slower so).

    Until 2026-12-07 a small function compiled apart for each kernel signature,
    ``_run_parts``, took the arguments from Python and wrote the struct: 28 compiles in
    :func:`fastconv.warmup` (``benchmarks/RESULTS.md``, "Threaded kernels launch their
    own parts")."""
    context, fndesc = lower.context, lower.fndesc
    restype, argtypes = fndesc.restype, tuple(fndesc.argtypes)
    module = context.create_module("fastconv_launching_wrapper")
    function_type = context.call_conv.get_function_type(restype, argtypes)
    kernel = llvm_ir.Function(module, function_type, fndesc.llvm_func_name)
    entry = llvm_ir.Function(module, function_type, "fastconv.launching_entry")
    entry.linkage = "internal"
    _write_launching_entry(context, entry, kernel, restype, argtypes)
    PyCallWrapper(context, module, entry, fndesc, lower.env, call_helper=lower.call_helper,
                  release_gil=True).build()
    lower.library.add_ir_module(module)


def _write_launching_entry(context, entry, kernel, restype, argtypes) -> None:
    """The body of :func:`add_launching_wrapper`'s entry."""
    call_conv = context.call_conv
    builder = llvm_ir.IRBuilder(entry.append_basic_block("entry"))
    args = call_conv.decode_arguments(builder, argtypes, entry)
    part = context.cast(builder, args[-2], argtypes[-2], types.int64)
    on_pool = builder.icmp_signed("<", part, llvm_ir.Constant(_I64, 0))
    with builder.if_then(on_pool, likely=False):
        control = builder.inttoptr(context.cast(builder, args[-1], argtypes[-1], types.int64),
                                   _I64.as_pointer())
        struct = llvm_ir.LiteralStructType([context.get_value_type(t) for t in argtypes[:-2]])
        slot = cgutils.alloca_once(builder, struct)
        for i, type_ in enumerate(argtypes[:-2]):
            value = args[i]
            if isinstance(type_, types.Array):  # borrowed: no reference counts in the parts
                array = context.make_array(type_)(context, builder, value)
                array.meminfo = cgutils.get_null_value(array.meminfo.type)
                array.parent = cgutils.get_null_value(array.parent.type)
                value = array._getvalue()
            builder.store(value, cgutils.gep_inbounds(builder, slot, 0, i))
        trampoline = llvm_ir.Function(entry.module, _TRAMPOLINE, "fastconv.trampoline")
        _write_trampoline(context, trampoline, struct, restype, argtypes)
        runner = builder.load(control)
        count = builder.load(builder.gep(control, [llvm_ir.Constant(_I64, 1)]))
        results = builder.gep(control, [llvm_ir.Constant(_I64, 2)])
        call = [builder.ptrtoint(trampoline, _I64), builder.ptrtoint(kernel, _I64),
                builder.ptrtoint(slot, _I64), builder.ptrtoint(results, _I64), count]
        function = builder.inttoptr(runner, call_conv.get_function_type(
            types.none, _RUNNER_TYPES).as_pointer())
        status, _ = call_conv.call_function(builder, function, types.none, _RUNNER_TYPES, call)
        with cgutils.if_unlikely(builder, status.is_error):
            call_conv.return_status_propagate(builder, status)
        call_conv.return_value(builder, context.get_return_value(
            builder, restype, context.get_constant_null(restype)))
    status, value = call_conv.call_function(builder, kernel, restype, argtypes, args)
    with cgutils.if_unlikely(builder, status.is_error):
        call_conv.return_status_propagate(builder, status)
    call_conv.return_value(builder, context.get_return_value(builder, restype, value))


def _write_trampoline(context, trampoline, struct, returns, argtypes) -> None:
    """The body of :func:`add_launching_wrapper`'s trampoline (:data:`_TRAMPOLINE`)."""
    trampoline.linkage = "internal"
    builder = llvm_ir.IRBuilder(trampoline.append_basic_block("entry"))
    kernel, arguments, part, parts, out = trampoline.args
    slot = builder.bitcast(arguments, struct.as_pointer())
    values = [builder.load(cgutils.gep_inbounds(builder, slot, 0, i))
              for i in range(len(struct.elements))] + [
        context.cast(builder, value, types.int64, type_)
        for value, type_ in zip((part, parts), argtypes[-2:], strict=True)]
    function = builder.inttoptr(kernel, context.call_conv.get_function_type(
        returns, argtypes).as_pointer())
    status, result = context.call_conv.call_function(builder, function, returns, argtypes,
                                                     values)
    value = (context.get_constant(types.int64, 0) if returns == types.none
             else context.cast(builder, result, returns, types.int64))
    builder.store(value, builder.gep(out, [part]))
    builder.store(builder.zext(status.is_error, _I64), builder.gep(out, [builder.add(part, parts)]))
    builder.ret_void()


#: The address of :func:`_run_trampolines`' compiled loop, once compiled or loaded.
_runner: int | None = None


def _runner_address() -> int:
    global _runner
    if _runner is None:
        _run_trampolines.compile(_RUNNER_TYPES)
        compiled = _run_trampolines.overloads[_RUNNER_TYPES]
        _runner = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)
    return _runner


#: What :func:`_on_pool` returns per part for each type a threaded kernel may return.
_RETURNS = {types.none: None, types.boolean: False, types.int64: 0}

#: This thread's ``control`` of :func:`add_launching_wrapper`'s entry (an int64 array) and
#: its address.
_local = threading.local()


def _control(parts: int) -> tuple[np.ndarray, int]:
    """This thread's control array for ``parts`` parts (:func:`add_launching_wrapper`),
    its runner set, and its address."""
    control = getattr(_local, "control", None)
    if control is None or control[0].size < 2 + 2 * parts:
        array = np.zeros(2 + 2 * max(parts, 64), np.int64)
        array[0] = _runner_address()
        control = _local.control = (array, array.ctypes.data)
    return control


def _returns(kernel, args: tuple):
    """The value :func:`_on_pool` takes for what ``kernel`` returns when called with
    ``args``, ``part, parts`` (one look-up where its compiled signatures agree)."""
    known = kernel.__dict__.get("_fastconv_returns")
    if known is not None and known[0] == len(kernel.overloads):
        return known[1]
    returned = {compiled.signature.return_type for compiled in kernel.overloads.values()}
    agree = len(returned) == 1
    if not agree:  # (none of fastconv's kernels)
        signature = (*(kernel.typeof_pyval(value) for value in args), types.int64, types.int64)
        returned = {kernel.overloads[signature].signature.return_type}
    type_ = types.unliteral(returned.pop())
    if type_ not in _RETURNS:
        raise TypeError(f"threaded kernel {kernel.py_func.__name__} returns {type_}: "
                        "threads.launch takes None, a bool or an int64")
    if agree:
        kernel._fastconv_returns = (len(kernel.overloads), _RETURNS[type_])
    return _RETURNS[type_]


def _on_pool(kernel, args: tuple, parts: int) -> list:
    """:func:`launch`'s parts on Numba's pool: the kernel's launching entry
    (:func:`add_launching_wrapper`) runs them from the parallel loop of
    :func:`_run_trampolines` (compiled once), each a call of the one compiled kernel
    through its address. A part that raised runs again here, on this thread, to raise
    its exception."""
    control, address = _control(parts)
    control[1] = parts
    kernel(*args, -1, address)
    results = control[2:2 + 2 * parts].tolist()
    if any(results[parts:]):
        failed = results.index(1, parts) - parts
        kernel(*args, failed, parts)
        raise RuntimeError(f"part {failed} of {kernel.py_func.__name__} failed on Numba's "
                           "pool but not on the calling thread")
    returns = _returns(kernel, args)
    if returns is None:
        return [None] * parts
    return [type(returns)(value) for value in results[:parts]]


def compile_runner() -> None:
    """Compile (or load) :func:`_run_trampolines`, the parallel loop that runs every
    threaded kernel's parts on Numba's pool (:func:`fastconv.warmup`: a warm-up call small
    enough to run on one thread leaves it to compile on the first large call)."""
    _runner_address()


#: Loads of a worker's count of ended calls that the caller makes before it sleeps on the
#: lock (about 1 ns each: some 50 us). A caller woken from sleep at the end made a
#: threaded call of 30 us on two threads 3-4 us slower (a 2-core VM); a thread that
#: spins keeps its core.
SPINS = 50_000


class _Worker:
    """A daemon thread that runs one call at a time: :meth:`start` hands it a call,
    :meth:`wait` its result and exception. A lock carries each hand-off (a released lock
    wakes the one thread blocked on it), and counts of the calls started and ended let
    the caller see the end before it sleeps: it spins on the count for :data:`SPINS`
    loads (in compiled code, without the GIL) before it blocks on the lock. A wait
    interrupted by a signal leaves its call to the next wait."""

    def __init__(self) -> None:
        self._go, self._done = threading.Lock(), threading.Lock()
        self._go.acquire()
        self._done.acquire()
        self._started = 0
        self._ended = np.zeros(1, np.int64)  # read without the GIL by _spin_until
        self._call: tuple = ()
        self._result: tuple = (None, None)
        threading.Thread(target=self._loop, name="fastconv-worker", daemon=True).start()

    def busy(self) -> bool:
        """Whether a call started has not been waited for to its end."""
        return bool(self._ended[0] < self._started)

    def start(self, function, args: tuple, part: int, parts: int) -> None:
        self._call = (function, args, part, parts)
        self._started += 1
        self._go.release()

    def wait(self) -> tuple:
        _spin_until(self._ended, 0, self._started, SPINS)
        while True:
            self._done.acquire()
            if self._ended[0] >= self._started:  # else an earlier call's end: go on
                break
        result, self._result = self._result, (None, None)
        return result

    def _loop(self) -> None:
        while True:
            self._go.acquire()
            function, args, part, parts = self._call
            self._call = ()
            try:
                self._result = (function(*args, part, parts), None)
            except BaseException as raised:  # noqa: BLE001  (handed to the caller)
                self._result = (None, raised)
            self._ended[0] += 1  # before the release: a waiter that wakes sees it
            self._done.release()


@intrinsic
def _load_acquire(typingctx, array, index):
    """``array[index]`` (int64, C-contiguous) read anew from memory on every call (an atomic
    load with acquire ordering: a plain load in a loop is read once, before the loop)."""
    signature = types.int64(array, index)

    def codegen(context, builder, sig, args):
        view = context.make_array(sig.args[0])(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, sig.args[0], view, [args[1]],
                                           wraparound=False)
        return builder.load_atomic(pointer, "acquire", 8)

    return signature, codegen


@_jit.kernel(entry=True)
def _spin_until(counts, at, value, spins):
    """Whether ``counts[at]`` reached ``value`` within ``spins`` loads (the GIL released)."""
    for _ in range(spins):
        if _load_acquire(counts, at) >= value:
            return True
    return False


#: The workers of :func:`launch` (started on its first threaded call; none after a fork).
_pool: _Pool | None = None
#: Whether :func:`launch` runs the threaded kernels on PyTorch's OpenMP pool
#: (:func:`share_torch_pool`), whatever ``FASTCONV_NUMBA_POOL`` says.
_on_numba_pool = False
#: Whether every kernel runs on the calling thread (a child forked from a process that
#: ran kernels on GNU OpenMP's pool).
_one_thread = False


load_tbb()
# A forked child starts worker threads of its own; after a parent that ran kernels on GNU
# OpenMP, where any parallel kernel would kill the child, it runs them on one thread.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
