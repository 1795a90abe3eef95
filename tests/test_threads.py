"""Threads and processes: fastconv's worker threads (:func:`fastconv.cpu.threads.launch`),
Numba's threading layer, fork and spawn workers, calls from several Python threads, and
PyTorch's thread settings left alone.

Each process-level check runs in a fresh interpreter, since a threading layer, once
started, stays for the life of a process.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from numba import prange

import fastconv
from fastconv import config, reference
from fastconv.cpu import threads as cpu_threads
from fastconv.cpu._jit import kernel


def _tbb_installed() -> bool:
    try:
        importlib.metadata.distribution("tbb")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _run(code: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY")}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=environment)


# A parent that runs a threaded kernel, then maps a conv2d over a pool of workers (which
# run it threaded too: 9.4M multiply-adds).
_POOL = """
import multiprocessing, numba, numpy as np, fastconv
x = np.random.default_rng(0).random((4, 16, 32, 32), np.float32)
w = np.random.default_rng(1).random((16, 16, 3, 3), np.float32)

def work(algorithm):
    return fastconv.conv2d(x, w, padding=1, algorithm=algorithm)

if __name__ == "__main__":
    expected = fastconv.conv2d(x, w, padding=1)
    with multiprocessing.get_context({method!r}).Pool(2) as pool:
        results = pool.map_async(work, ["direct", "im2col", "winograd", "auto"]).get(timeout=120)
    assert all(np.allclose(r, expected, rtol=1e-4, atol=1e-4) for r in results)
    print("ok", numba.threading_layer())
"""


def _run_pool(method: str, tmp_path, **env: str) -> subprocess.CompletedProcess:
    # a file, not -c: spawn's children import the main module to find `work`
    script = tmp_path / "pool_script.py"
    script.write_text(_POOL.format(method=method))
    return _run(f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')", **env)


@pytest.mark.skipif(not _tbb_installed(), reason="the tbb wheel is not installed here")
def test_tbb_is_the_default_layer():
    result = _run("""
        import numpy as np, numba, fastconv
        fastconv.conv2d(np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32))
        print(numba.threading_layer())
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["tbb"]


@pytest.mark.skipif(sys.platform != "linux", reason="fork is Linux's default start method")
def test_forked_workers_after_a_parallel_call(tmp_path):
    result = _run_pool("fork", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "ok"
    assert "Terminating" not in result.stderr


def test_spawned_workers_after_a_parallel_call(tmp_path):
    result = _run_pool("spawn", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "ok"


@pytest.mark.skipif(sys.platform != "linux", reason="GNU OpenMP is the Linux layer")
def test_forked_workers_under_gnu_openmp_run_serial_kernels(tmp_path):
    # Numba's OpenMP layer kills a child that enters a parallel kernel after its parent
    # did: fastconv's children run every kernel on the calling thread instead
    result = _run_pool("fork", tmp_path, NUMBA_THREADING_LAYER="omp")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "omp"]
    assert "Terminating" not in result.stderr


def _torch_shares_its_pool() -> bool:
    torch = pytest.importorskip("torch")
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    return (sys.platform.startswith("linux")
            and "parallel backend: OpenMP" in torch.__config__.parallel_info()
            and any(name.startswith("libgomp") for name in os.listdir(lib)))


def test_bridge_runs_on_pytorch_openmp_pool(tmp_path):
    if not _torch_shares_its_pool():
        pytest.skip("PyTorch here does not load its own GNU OpenMP runtime")
    # one pool for both libraries: no new thread appears for fastconv's kernels, and
    # the OpenMP settings Numba's start changes (thread count, nesting) are PyTorch's
    # again; then a forked DataLoader-style worker computes on the serial kernels
    script = tmp_path / "bridge_pool.py"
    script.write_text(textwrap.dedent("""
        import ctypes, multiprocessing, os, numpy as np, torch
        torch.set_num_threads(2)
        torch.randn(512, 512) @ torch.randn(512, 512)  # PyTorch's pool starts
        try:
            import scipy.linalg  # Numba loads it, and its OpenBLAS starts a pool of its own
        except ImportError:
            pass
        process = ctypes.CDLL(None)
        before = (len(os.listdir("/proc/self/task")), process.omp_get_max_active_levels(),
                  process.omp_get_nested(), torch.get_num_threads())
        import numba, fastconv, fastconv.torch as fct  # starts Numba's pool: no new thread
        layer = fct.Conv2d(8, 16, 3, padding=1)
        x = torch.randn(8, 8, 32, 32)
        layer(x).sum().backward()
        expected = fastconv.conv2d(x.numpy(), layer.weight.detach().numpy(), padding=1)
        after = (len(os.listdir("/proc/self/task")), process.omp_get_max_active_levels(),
                 process.omp_get_nested(), torch.get_num_threads())
        assert after == before, (before, after)

        def work(algorithm):
            return fastconv.conv2d(x.numpy(), layer.weight.detach().numpy(), padding=1,
                                   algorithm=algorithm)

        if __name__ == "__main__":
            with multiprocessing.get_context("fork").Pool(2) as pool:
                results = pool.map_async(work, ["direct", "im2col", "winograd"]).get(timeout=120)
            assert all(np.allclose(r, expected, rtol=1e-4, atol=1e-4) for r in results)
            print("ok", numba.threading_layer())
    """))
    result = _run(f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "omp"]
    assert "Terminating" not in result.stderr


def test_bridge_pool_serves_several_python_threads():
    if not _torch_shares_its_pool():
        pytest.skip("PyTorch here does not load its own GNU OpenMP runtime")
    # on PyTorch's OpenMP pool, four Python threads launch fastconv's parallel kernels
    # (and the bridge's) at once
    result = _run("""
        import threading, numpy as np, torch, numba, fastconv, fastconv.torch as fct
        from fastconv import config, reference
        rng = np.random.default_rng(0)
        x, w = rng.standard_normal((3, 8, 20, 20)), rng.standard_normal((8, 8, 3, 3))
        expected = reference.conv2d(x, w, None, 1, ((1, 1), (1, 1)), 1, 1)
        layer = fct.Conv2d(8, 8, 3, padding=1, bias=False).double()
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(w))
        results, errors = [], []

        def work(worker):
            try:
                for round_ in range(5):
                    algorithm = ("direct", "im2col", "winograd")[(worker + round_) % 3]
                    results.append(fastconv.conv2d(x, w, padding=1, algorithm=algorithm))
                    results.append(layer(torch.from_numpy(x)).detach().numpy())
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        assert len(results) == 40
        for result in results:
            np.testing.assert_allclose(result, expected, rtol=1e-9, atol=1e-9)
        print("ok", numba.threading_layer())
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "omp"]


def test_explicit_threading_layer_wins_over_the_bridge():
    pytest.importorskip("torch")
    result = _run("""
        import torch, numba, fastconv.torch as fct
        fct.Conv2d(4, 4, 3)(torch.randn(2, 4, 8, 8))
        print(numba.threading_layer())
    """, NUMBA_THREADING_LAYER="workqueue")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["workqueue"]


@pytest.mark.skipif(sys.platform != "linux", reason="GNU OpenMP is the Linux layer")
def test_serial_kernels_fork_under_gnu_openmp(tmp_path):
    # FASTCONV_PARALLEL=0 compiles serial kernels (never the parallel ones from the disk
    # cache), which a forked child can run under any layer
    result = _run_pool("fork", tmp_path, NUMBA_THREADING_LAYER="omp", FASTCONV_PARALLEL="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "omp"]


def test_non_default_flags_are_not_disk_cached(monkeypatch):
    from fastconv import config
    from fastconv.cpu import _jit

    assert _jit.disk_cache() == config.CACHE
    monkeypatch.setattr(config, "PARALLEL", False)
    assert not _jit.disk_cache()
    monkeypatch.setattr(config, "PARALLEL", True)
    monkeypatch.setattr(config, "FASTMATH", frozenset())
    assert not _jit.disk_cache()


def test_pytorch_thread_settings_untouched():
    pytest.importorskip("torch")
    # torch first, then a bridge layer: under GNU OpenMP, starting Numba's pool reset
    # torch's thread count to 2
    result = _run("""
        import torch
        torch.set_num_threads(1)
        import numpy as np, fastconv, fastconv.torch as fct
        fct.Conv2d(16, 16, 3, padding=1)(torch.randn(4, 16, 16, 16)).sum().backward()
        x = np.random.default_rng(0).random((4, 16, 16, 16), np.float32)
        w = np.random.default_rng(1).random((16, 16, 3, 3), np.float32)
        for algorithm in ("direct", "im2col", "winograd"):
            y = fastconv.conv2d(x, w, padding=1, algorithm=algorithm)
            fastconv.conv2d_backward(y, x, w, padding=1, algorithm=algorithm)
        fastconv.max_pool2d(y, 2)
        print(torch.get_num_threads())
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1"]


@pytest.mark.parametrize("numba_pool", [True, False], ids=["numba_pool", "workers"])
def test_calls_from_several_python_threads(numba_pool, rng, monkeypatch):
    # threaded calls (9.4M multiply-adds each) from four Python threads at once; on
    # fastconv's workers (FASTCONV_NUMBA_POOL=0), a call that finds them busy runs its
    # parts itself
    monkeypatch.setattr(config, "NUMBA_POOL", numba_pool)
    monkeypatch.setattr(cpu_threads, "_on_numba_pool", False)
    x = rng.standard_normal((4, 16, 32, 32))
    w = rng.standard_normal((16, 16, 3, 3))
    assert x.size * w[:, 0].size > cpu_threads.SERIAL_MAX_WORK * cpu_threads.WORKERS_SERIAL_FACTOR
    expected = reference.conv2d(x, w, None, 1, ((1, 1), (1, 1)), 1, 1)
    errors: list[BaseException] = []
    results: dict[tuple[int, int], np.ndarray] = {}

    def work(worker: int) -> None:
        try:
            for round_ in range(5):
                algorithm = ("direct", "im2col", "winograd")[(worker + round_) % 3]
                results[worker, round_] = fastconv.conv2d(x, w, padding=1, algorithm=algorithm)
        except BaseException as error:  # noqa: BLE001  (re-raised in the main thread)
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(results) == 20
    for result in results.values():
        np.testing.assert_allclose(result, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_another_thread_holds_the_workspace_lock():
    # a thread inside borrow() at the moment of a fork must not leave the child's lock held
    result = _run("""
        import os, signal, threading, numpy as np, fastconv
        from fastconv.cpu import workspace
        x, w = np.ones((1, 2, 6, 6)), np.ones((2, 2, 3, 3))
        fastconv.conv2d(x, w)
        holding, release = threading.Event(), threading.Event()

        def hold():
            with workspace._registry.lock:
                holding.set()
                release.wait()

        thread = threading.Thread(target=hold)
        thread.start()
        holding.wait()
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)
            ok = np.allclose(fastconv.conv2d(x, w), 18.0)
            os._exit(0 if ok and workspace.kept_bytes() >= 0 else 4)
        release.set()
        thread.join()
        print(os.waitpid(pid, 0)[1])
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0"]


# --- fastconv's worker threads (FASTCONV_NUMBA_POOL=0) -------------------------------------


@pytest.fixture
def workers(monkeypatch):
    """Threaded kernels on fastconv's worker threads in this test (not on Numba's pool, the
    default, nor on PyTorch's, where a test module imported fastconv.torch)."""
    monkeypatch.setattr(config, "NUMBA_POOL", False)
    monkeypatch.setattr(cpu_threads, "_on_numba_pool", False)
    assert not cpu_threads.on_numba_pool()


@kernel(parallel=True)
def _record_parts(marks, fail_at, part, parts):
    """marks[i] = 1 + the part that ran i, for each i of the prange's share; IndexError
    in the part whose share holds ``fail_at``."""
    for i in prange(part * marks.size // parts, (part + 1) * marks.size // parts):
        if i == fail_at:
            raise IndexError("part failed")
        marks[i] = part + 1
    return part


@pytest.fixture(params=["Numba's pool", "workers"])
def either_pool(request, monkeypatch):
    """Threaded kernels on Numba's pool (parts called through their address from a
    parallel loop), then on fastconv's worker threads."""
    on_numba = request.param == "Numba's pool"
    monkeypatch.setattr(config, "NUMBA_POOL", on_numba)
    monkeypatch.setattr(cpu_threads, "_on_numba_pool", False)
    assert cpu_threads.on_numba_pool() == on_numba


@pytest.mark.parametrize("parts", [1, 2, 3, 5])
def test_launch_runs_every_part_once(parts, either_pool):
    marks = np.zeros(23, np.int64)
    assert cpu_threads.launch(_record_parts, parts, marks, -1) == list(range(parts))
    expected = np.concatenate([np.full((p + 1) * 23 // parts - p * 23 // parts, p + 1)
                               for p in range(parts)])
    np.testing.assert_array_equal(marks, expected)


@kernel(parallel=True)
def _fill_parts(marks, part, parts):
    """:func:`_record_parts` without a result."""
    for i in prange(part * marks.size // parts, (part + 1) * marks.size // parts):
        marks[i] = part + 1


def test_launch_on_numba_pool_calls_the_one_compiled_kernel(monkeypatch):
    # the parts run from a small parallel loop, through the kernel's address: the kernel
    # compiles once, for its signature, and never with Numba's parallel passes
    monkeypatch.setattr(config, "NUMBA_POOL", True)
    marks = np.zeros(23, np.int64)
    assert cpu_threads.launch(_record_parts, 3, marks, -1) == [0, 1, 2]
    assert cpu_threads.launch(_fill_parts, 4, marks) == [None] * 4
    np.testing.assert_array_equal(marks, np.repeat([1, 2, 3, 4], [5, 6, 6, 6]))
    assert len(_record_parts.signatures) == len(_fill_parts.signatures) == 1
    floats = np.zeros(5)  # another signature: an entry of its own
    assert cpu_threads.launch(_record_parts, 2, floats, -1) == [0, 1]
    np.testing.assert_array_equal(floats, [1, 1, 2, 2, 2])
    assert len(_record_parts.signatures) == 2


def test_launch_raises_a_parts_exception_on_numba_pool_and_goes_on(monkeypatch):
    monkeypatch.setattr(config, "NUMBA_POOL", True)
    marks = np.zeros(12, np.int64)
    for fail_at in (9, 0):  # in the last part, in the first
        with pytest.raises(IndexError, match="part failed"):
            cpu_threads.launch(_record_parts, 3, marks, fail_at)
    marks[:] = 0
    assert cpu_threads.launch(_record_parts, 3, marks, -1) == [0, 1, 2]
    assert (marks > 0).all()


def test_launch_raises_a_workers_exception_and_goes_on(workers):
    marks = np.zeros(12, np.int64)
    with pytest.raises(IndexError, match="part failed"):
        cpu_threads.launch(_record_parts, 3, marks, 9)  # in the last part, on a worker
    with pytest.raises(IndexError, match="part failed"):
        cpu_threads.launch(_record_parts, 3, marks, 0)  # in the calling thread's part
    marks[:] = 0
    assert cpu_threads.launch(_record_parts, 3, marks, -1) == [0, 1, 2]
    assert (marks > 0).all()


def test_out_of_bounds_in_a_worker_raises_under_boundscheck():
    # NUMBA_BOUNDSCHECK=1 (part of CI's suite runs so, on the workers): a worker's
    # IndexError reaches the caller, the process lives on
    result = _run("""
        import numpy as np
        from numba import prange
        from fastconv.cpu import threads
        from fastconv.cpu._jit import kernel

        @kernel(parallel=True)
        def overrun(out, part, parts):
            for i in prange(part * out.size // parts, (part + 1) * out.size // parts):
                out[i + (part == parts - 1)] = 1.0

        out = np.zeros(8)
        try:
            threads.launch(overrun, 2, out)
        except IndexError:
            print("IndexError")
        print(out[:4].sum())
    """, NUMBA_BOUNDSCHECK="1", FASTCONV_NUMBA_POOL="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["IndexError", "4.0"]


@pytest.mark.parametrize("numba_pool", ["1", "0"])
def test_threaded_kernels_compile_once(numba_pool, tmp_path):
    # a threaded kernel compiles once per signature, with or without Numba's pool: on the
    # pool its parts run from one parallel loop (compiled once), handed the arguments by
    # the kernel's own launching entry (compiled with it); with FASTCONV_NUMBA_POOL=0 on
    # worker threads
    result = _run("""
        import collections
        import numpy as np, fastconv
        from numba.core import event
        from fastconv.cpu import direct, threads

        compiled, twice = collections.Counter(), collections.Counter()

        class Listener(event.Listener):
            def on_start(self, e):
                function = e.data["dispatcher"].py_func
                compiled[function.__name__] += 1
                twice[function, str(e.data["args"])] += 1

            def on_end(self, e):
                pass

        event.register("numba:compile", Listener())
        x = np.random.default_rng(0).random((4, 16, 32, 32), np.float32)
        w = np.random.default_rng(1).random((3, 16, 3, 3), np.float32)
        y = fastconv.conv2d(x, w, padding=1, algorithm="direct")
        expected = fastconv.reference.conv2d(x, w, None, 1, ((1, 1), (1, 1)), 1, 1)
        print(threads.on_numba_pool(), len(direct._conv2d_forward_direct.signatures),
              compiled["_conv2d_forward_direct"], compiled["_run_trampolines"],
              max(twice.values()), np.allclose(y, expected, rtol=1e-4, atol=1e-4))
    """, FASTCONV_NUMBA_POOL=numba_pool, NUMBA_CACHE_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    pool = numba_pool == "1"
    assert result.stdout.split() == [str(pool), "1", "1", "1" if pool else "0", "1", "True"]
