"""Numba's disk cache of the kernels follows every source file of the package
(fastconv.cpu._jit.package_stamped), not only the kernel's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from numba.core.caching import NullCache

import fastconv
from fastconv.cpu import _jit

# a kernel of winograd.py that compiles in a fraction of a second, and whether it was
# loaded from the cache (a hit) or compiled (a miss)
PITCH = """
import fastconv
from fastconv.cpu import winograd
assert fastconv.__file__.startswith({root!r}), fastconv.__file__
assert winograd._pitch(5, 8) == 8
stats = winograd._pitch.stats
print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""


def _pitch_compiles(root: Path, cache_dir: Path) -> str:
    """"hits misses" of the kernel's first call in a new process that imports the
    package at ``root`` with fastconv's default settings and its disk cache at
    ``cache_dir``."""
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith("FASTCONV_")
                   and name not in ("NUMBA_BOUNDSCHECK", "NUMBA_DISABLE_JIT")}
    environment.update(PYTHONPATH=str(root), NUMBA_CACHE_DIR=str(cache_dir))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PITCH.format(root=str(root)))],
        capture_output=True, text=True, timeout=300, check=False, env=environment, cwd=root)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_an_edit_to_another_file_of_the_package_recompiles_a_cached_kernel(tmp_path):
    # a cached kernel holds the code of what it calls from other files, so an edit to a
    # callee's file (here microkernels.py, which winograd.py imports) must not leave it
    # running from the cache
    root = tmp_path / "src"
    shutil.copytree(Path(fastconv.__file__).parent, root / "fastconv",
                    ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "cache"
    assert _pitch_compiles(root, cache) == "0 1"  # cold: compiled
    assert _pitch_compiles(root, cache) == "1 0"  # loaded from the cache
    callee = root / "fastconv" / "cpu" / "microkernels.py"
    callee.write_text(callee.read_text() + "\n# an edit\n")
    assert _pitch_compiles(root, cache) == "0 1"  # compiled again
    assert _pitch_compiles(root, cache) == "1 0"


def test_the_fingerprint_covers_every_source_file_of_the_package():
    root = Path(fastconv.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert root / "cpu" / "microkernels.py" in files and root / "config.py" in files
    assert len(_jit.package_fingerprint()) == 32  # sha256


def test_a_numba_without_the_expected_cache_layout_compiles_in_memory():
    class Cache:  # a cache with no index file where package_stamped looks
        pass

    dispatcher = types.SimpleNamespace(_cache=Cache())
    assert _jit.package_stamped(dispatcher) is dispatcher
    assert isinstance(dispatcher._cache, NullCache)
    off = types.SimpleNamespace(_cache=NullCache())  # the disk cache off: left alone
    before = off._cache
    assert _jit.package_stamped(off)._cache is before


def test_the_kernels_cache_indexes_carry_the_package_stamp():
    from fastconv.cpu import direct, threads, winograd

    if not _jit.disk_cache():
        pytest.skip("these settings compile in memory: no cache to stamp")
    for dispatcher in (winograd._pitch, direct._conv2d_forward_direct, threads._run_trampolines):
        stamp = dispatcher._cache._cache_file._source_stamp
        assert stamp[1] == _jit.package_fingerprint()


# kernels of a module of their own: a helper (no Python wrapper) and an entry that calls
# it, both calling ``min`` (whose compile Numba keys by the caller's flags)
HELPERS = """
from fastconv.cpu._jit import kernel

@kernel()
def twice(x):
    return 2 * min(x, 100)

@kernel(entry=True)
def twice_plus_one(x):
    return twice(x) + min(x, 1)
"""

FIRST = """
import collections
from numba.core import event
import helpers

compiles = collections.Counter()

class Listener(event.Listener):
    def on_start(self, e):
        compiles[e.data["dispatcher"].py_func.__qualname__] += 1

    def on_end(self, e):
        pass

event.register("numba:compile", Listener())
assert helpers.twice_plus_one(3) == 7
for function, wrapped in ((helpers.twice, False), (helpers.twice_plus_one, True)):
    (compiled,) = function.overloads.values()
    address = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_cpython_wrapper_name)
    assert (address != 0) == wrapped, function
assert max(compiles.values()) == 1, compiles
print(sorted(name for name in compiles if "min" in name))
"""

SECOND = """
import helpers
assert helpers.twice_plus_one(3) == 7
assert sum(helpers.twice_plus_one.stats.cache_hits.values()) == 1
assert helpers.twice(4) == 8  # from Python: a twin with a Python wrapper
assert helpers.twice(5) == 10
print(type(helpers.twice).__name__)
"""


def _run(code: str, directory: Path, cache_dir: Path) -> str:
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith("FASTCONV_")
                   and name not in ("NUMBA_BOUNDSCHECK", "NUMBA_DISABLE_JIT")}
    environment.update(PYTHONPATH=os.pathsep.join([str(directory), *sys.path]),
                       NUMBA_CACHE_DIR=str(cache_dir))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, timeout=300, check=False, env=environment, cwd=directory)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_helpers_compile_without_a_python_wrapper_and_python_calls_get_a_twin(tmp_path):
    # only the functions Python calls get Numba's Python wrapper (jit_options); every
    # function has the same flags, so ``min`` compiles once for both; a helper called
    # from Python, where the disk cache holds it without a wrapper, runs a twin compiled
    # with one (a twin that read the helper's cache entry would call address 0: a
    # segfault, as a first version of this did)
    (tmp_path / "helpers.py").write_text(HELPERS)
    cache = tmp_path / "cache"
    assert _run(FIRST, tmp_path, cache).count("min") == 1
    assert _run(SECOND, tmp_path, cache) == "_HelperDispatcher"


# an entry of a second module calling the helper of HELPERS
OTHER = """
from fastconv.cpu._jit import kernel
import helpers

@kernel(entry=True)
def thrice_minus_one(x):
    return helpers.twice(x) + x - 1
"""

NO_MACHINE_CODE = """
import helpers
assert helpers.twice_plus_one(3) == 7
for function, pending in ((helpers.twice, True), (helpers.twice_plus_one, False)):
    (compiled,) = function.overloads.values()
    assert getattr(compiled.library, "_pending", False) == pending, function
print(helpers.twice_plus_one(10))
"""

NEW_CALLER = """
import helpers, other
assert other.thrice_minus_one(4) == 11
assert other.thrice_minus_one(70) == 209  # (min(70, 100) * 2 + 69)
assert sum(helpers.twice.stats.cache_hits.values()) == 1
assert sum(helpers.twice.stats.cache_misses.values()) == 0
(compiled,) = helpers.twice.overloads.values()
assert compiled.library._pending  # loaded as IR, still no machine code
print(other.thrice_minus_one(5))
"""


def test_helpers_make_no_machine_code_and_a_new_caller_links_them_from_the_cache(tmp_path):
    # a helper's library is linked into its callers' and never run: it is compiled to
    # optimised IR only (_pipelines.HelperLibrary) and cached as that IR; a later process
    # that compiles a new caller of it loads it from the cache as that IR, again without
    # machine code (_pipelines.HelperCache), and links it
    (tmp_path / "helpers.py").write_text(HELPERS)
    (tmp_path / "other.py").write_text(OTHER)
    cache = tmp_path / "cache"
    assert _run(NO_MACHINE_CODE, tmp_path, cache) == "21"
    assert _run(NEW_CALLER, tmp_path, cache) == "14"


ONE_ROUND = """
import numba
from numba.core.codegen import JITCodeLibrary
import helpers

optimised = []  # the libraries that optimised each function as its IR joined them
original = JITCodeLibrary._optimize_functions

def recorded(self, module):
    optimised.append(self)
    return original(self, module)

JITCodeLibrary._optimize_functions = recorded
assert helpers.twice_plus_one(3) == 7

@numba.njit
def plain(x):
    return 2 * x + 1

assert plain(3) == 7
libraries = [next(iter(function.overloads.values())).library
             for function in (helpers.twice, helpers.twice_plus_one, plain)]
print([type(library).__name__ for library in libraries],
      [library in optimised for library in libraries])
"""


def test_fastconv_functions_are_optimised_once_and_other_numba_code_as_before(tmp_path):
    # fastconv's helpers and entries compile into libraries of its own
    # (_pipelines.KernelLibrary), which leave out Numba's round of function passes as
    # each function's IR is added (the whole module's optimisation runs them once);
    # a plain numba.njit function in the same process keeps Numba's library and both
    # rounds
    (tmp_path / "helpers.py").write_text(HELPERS)
    assert _run(ONE_ROUND, tmp_path, tmp_path / "cache") == (
        "['HelperLibrary', 'KernelLibrary', 'JITCodeLibrary'] [False, False, True]")


# a helper that calls a C function through ctypes, whose address Numba's code holds as a
# dynamic global (a machine code that no later process may load)
DYNAMIC = """
import ctypes
from fastconv.cpu._jit import kernel

labs = ctypes.CDLL(None).labs
labs.restype, labs.argtypes = ctypes.c_long, [ctypes.c_long]

@kernel()
def magnitude(x):
    return labs(x)

@kernel(entry=True)
def magnitude_plus_one(x):
    return magnitude(x) + 1
"""

DYNAMIC_RUN = """
import warnings
import dynamic
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert dynamic.magnitude_plus_one(-4) == 5
(compiled,) = dynamic.magnitude.overloads.values()
refused = [w for w in caught if "dynamic globals" in str(w.message)]
print(compiled.library.has_dynamic_globals, len(refused) >= 2,
      sum(dynamic.magnitude.stats.cache_hits.values()))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="labs from the process's own C library")
def test_a_helper_with_dynamic_globals_is_not_cached(tmp_path):
    # a helper without machine code still lists its dynamic globals, so that Numba's
    # cache refuses it (as it refuses its caller) instead of keeping an address that
    # means nothing in the next process
    (tmp_path / "dynamic.py").write_text(DYNAMIC)
    cache = tmp_path / "cache"
    assert _run(DYNAMIC_RUN, tmp_path, cache) == "True True 0"
    assert _run(DYNAMIC_RUN, tmp_path, cache) == "True True 0"


# a threaded kernel of a module of its own, returning a bool per part
THREADED = """
from numba import prange
from fastconv.cpu._jit import kernel

@kernel(parallel=True)
def fill(out, value, part, parts):
    for i in prange(part * out.size // parts, (part + 1) * out.size // parts):
        out[i] = value + part
    return part % 2 == 0
"""

ON_THE_POOL = """
import numpy as np
from fastconv import config
from fastconv.cpu import threads
import threaded

config.NUMBA_POOL = True
out = np.zeros(10)
print(threads.launch(threaded.fill, 3, out, 1.5), out.tolist() == [1.5] * 3 + [2.5] * 3 + [3.5] * 4,
      sum(threaded.fill.stats.cache_hits.values()), sum(threaded.fill.stats.cache_misses.values()))
"""


def test_a_threaded_kernel_runs_its_parts_on_the_pool_from_the_disk_cache(tmp_path):
    # the launching entry that runs the parts on Numba's pool (threads.add_launching_wrapper)
    # compiles with the kernel, into its cache entry: a process that loads the kernel
    # from the cache compiles nothing more to run the parts
    (tmp_path / "threaded.py").write_text(THREADED)
    cache = tmp_path / "cache"
    assert _run(ON_THE_POOL, tmp_path, cache) == "[True, False, True] True 0 1"
    assert _run(ON_THE_POOL, tmp_path, cache) == "[True, False, True] True 1 0"
