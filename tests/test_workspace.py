"""Bounded scratch memory: the direct kernels in bands of rows, and the workspace that
keeps scratch buffers between calls (its cap and ``fastconv.release_workspace()``).

The direct kernels read ``config.DIRECT_TILE_BYTES`` at each call, so a tiny budget
set here splits every plane into many bands (of unequal heights where the budget
does not divide the output), several per thread; they must still compute the
definition, checked against the reference and PyTorch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numba
import numpy as np
import pytest

import fastconv
from fastconv import config, reference
from fastconv.cpu import blocked, direct, workspace
from tests.cases import CASE_IDS, CONV2D_CASES, DTYPES, make_inputs, no_whole_planes
from tests.gradients import assert_grads_close
from tests.test_conv2d import assert_close, torch_conv2d
from tests.test_conv_backward import cases, make_grad_output, torch_conv2d_grads

#: Budgets in bytes: one output row per band, then a few rows per band (the blocked
#: kernel, which holds every channel of a band, needs the last one for several rows).
BUDGETS = [1, 400, 1200, 3000, 5000]

#: The direct kernels: module, attribute name, the argument whose third dimension is the
#: rows split into bands, and the position of ``band`` among the arguments (from the end:
#: they end with ``scratch, part, parts``; the depthwise weight gradient's with ``band,
#: images, scratch, part, parts``).
KERNEL_TABLE = [(direct, "_conv2d_forward_direct", 5, -4),
                (direct, "_conv2d_grad_input_direct", 2, -4),
                (direct, "_conv2d_grad_weight_direct", 1, -4),
                (blocked, "_conv2d_forward_blocked", 6, -9),
                (direct, "_conv2d_depthwise_phases", 5, -4),
                (direct, "_depthwise_grad_weight_phases", 1, -5)]
KERNELS = [name for _, name, _, _ in KERNEL_TABLE]

THREAD_COUNTS = sorted({1, numba.config.NUMBA_NUM_THREADS})


@pytest.fixture
def calls(monkeypatch):
    """Records ``(kernel name, rows or out_h, band, scratch rows)`` of every direct kernel call."""
    seen = []
    for module, name, rows_of, band_at in KERNEL_TABLE:
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name, _rows_of=rows_of, _band_at=band_at):
            if args[-2] == 0:  # part 0 (args end with scratch, part, parts): once a call
                seen.append((_name, args[_rows_of].shape[2], args[_band_at],
                             args[-3].shape[0]))
            return _real(*args)

        spy.threaded = False  # threads.launch calls it as one part
        monkeypatch.setattr(module, name, spy)
    return seen


@pytest.fixture
def threads():
    """Runs the test body's ``set(n)`` calls and restores Numba's thread count after."""
    before = numba.get_num_threads()
    yield numba.set_num_threads
    numba.set_num_threads(before)


@pytest.fixture(autouse=True)
def fresh_workspace():
    fastconv.release_workspace()
    yield
    fastconv.release_workspace()


def direct_all(x, w, b, g, kwargs):
    y = fastconv.conv2d(x, w, b, **kwargs, algorithm="direct")
    return y, fastconv.conv2d_backward(g, x, w, **kwargs, algorithm="direct")


# --- the banded direct kernels compute the definition -----------------------------------


def _assert_bands_match_reference(x, w, b, g, kwargs, dtype, monkeypatch, threads):
    """The direct kernels under every band budget and thread count give the reference's
    forward and gradients (depthwise layers on the banded kernels, not on whole planes)."""
    no_whole_planes(monkeypatch)
    expected_y = reference.conv2d(x, w, b, **kwargs)
    expected_grads = reference.conv2d_backward(g, x, w, **kwargs)
    for n_threads in THREAD_COUNTS:
        threads(n_threads)
        for budget in BUDGETS:
            monkeypatch.setattr(config, "DIRECT_TILE_BYTES", budget)
            y, grads = direct_all(x, w, b, g, kwargs)
            assert_close(y, expected_y, dtype)
            assert_grads_close(grads, expected_grads, dtype, g)


@pytest.mark.parametrize("dtype", DTYPES, ids=[np.dtype(d).name for d in DTYPES])
@pytest.mark.parametrize("case", CONV2D_CASES, ids=CASE_IDS)
def test_bands_match_reference(case, dtype, monkeypatch, threads, rng):
    x, w, b = make_inputs(case, dtype, rng)
    g = make_grad_output(case, dtype, rng)
    _assert_bands_match_reference(x, w, b, g, case.kwargs, dtype, monkeypatch, threads)


@pytest.mark.parametrize("case", cases("3x3_s2_p1", "5x5_c1_p2", "pad_asym_large_s2",
                                       "same_s2_dil23", "groups2_s2_dil2_nobias",
                                       "depthwise_x2_s2", "tall_input", "dil2_p2",
                                       "5x2_s21_pad21"),
                         ids=lambda c: c.id)
def test_bands_match_torch(case, monkeypatch, rng):
    pytest.importorskip("torch")
    dtype = np.float64
    x, w, b = make_inputs(case, dtype, rng)
    g = make_grad_output(case, dtype, rng)
    expected_y = torch_conv2d(x, w, b, **case.kwargs)
    expected_grads = torch_conv2d_grads(g, x, w, **case.kwargs)
    for budget in BUDGETS:
        monkeypatch.setattr(config, "DIRECT_TILE_BYTES", budget)
        y, grads = direct_all(x, w, b, g, case.kwargs)
        assert_close(y, expected_y, dtype)
        assert_grads_close(grads, expected_grads, dtype, g)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the reference's 0 * Inf
@pytest.mark.parametrize("where", ["input", "weight", "grad_output"])
@pytest.mark.parametrize("case", cases("3x3_p1", "5x5_c1_p2", "pad_asym", "dil2_p2",
                                       "tall_input", "3x3_s2_p1"),
                         ids=lambda c: c.id)
def test_bands_keep_the_non_finite_pattern(case, where, monkeypatch, threads, rng):
    # NaN, +Inf and -Inf reach the results that the definition says, in bands of every
    # height: the stride-1 paths must not multiply a padded zero or a junk column's zero
    # by a non-finite value (grad_input of a non-finite weight, grad_weight of a non-finite
    # input, whose sums run over the padded planes)
    dtype = np.float64
    x, w, b = make_inputs(case, dtype, rng)
    g = make_grad_output(case, dtype, rng)
    target = {"input": x, "weight": w, "grad_output": g}[where]
    target[0, 0, 0, 0] = np.nan
    target[-1, -1, -1, -1] = np.inf
    target[tuple(n // 2 for n in target.shape)] = -np.inf
    _assert_bands_match_reference(x, w, b, g, case.kwargs, dtype, monkeypatch, threads)


def test_budgets_give_many_unequal_bands(calls, monkeypatch, rng):
    # The budgets above do split planes: for every kernel, into one-row bands and into
    # bands of several rows with a shorter last one, with more tasks than threads.
    dtype = np.float32
    # (5x5_s2_p2: 3 channels, too few for the blocked grad_input: the scatter kernel;
    # the depthwise ones: the phases kernels, forward and grad_weight, not whole planes)
    no_whole_planes(monkeypatch)
    for case in cases("3x3_s2_p1", "5x5_c1_p2", "tall_input", "5x5_s2_p2",
                      "depthwise_5x5_dil12", "depthwise_x2_dil21_asym"):
        x, w, b = make_inputs(case, dtype, rng)
        g = make_grad_output(case, dtype, rng)
        for budget in [*BUDGETS, 600]:  # 600: bands of 7 of 15 rows for the scatter kernel
            monkeypatch.setattr(config, "DIRECT_TILE_BYTES", budget)
            direct_all(x, w, b, g, case.kwargs)
    for name in KERNELS:
        bands = {(rows, band) for kernel, rows, band, _ in calls if kernel == name}
        assert any(band == 1 < rows for rows, band in bands), (name, bands)
        assert any(1 < band < rows and rows % band for rows, band in bands), (name, bands)


def test_default_budget_keeps_common_planes_whole(calls):
    # one band per plane for the layers the direct kernel is chosen for (speed)
    for x_shape, w_shape, padding, groups in [((8, 128, 28, 28), (128, 1, 3, 3), 1, 128),
                                              ((4, 1, 28, 28), (6, 1, 5, 5), 0, 1),
                                              ((4, 6, 12, 12), (16, 6, 5, 5), 0, 1),
                                              ((1, 32, 112, 112), (32, 1, 3, 3), 1, 32)]:
        x = np.ones(x_shape, np.float32)
        w = np.ones(w_shape, np.float32)
        y = fastconv.conv2d(x, w, padding=padding, groups=groups, algorithm="direct")
        fastconv.conv2d_backward(y, x, w, padding=padding, groups=groups, algorithm="direct")
    # 12 kernel calls less the two dense layers' grad_weight, which runs the blocked
    # kernel over whole packed images (no bands), and the 28x28 depthwise layer's three,
    # which run on whole planes (no bands: tests/test_depthwise_planes.py); the 112x112
    # depthwise layer's grad_weight is the phases kernel's
    assert len(calls) == 7
    assert all(band == rows for _, rows, band, _ in calls), calls


# --- scratch size: bounded by the budget, whatever the image size -------------------------


def borrowed_bytes(monkeypatch) -> list[int]:
    """The bytes of every ``workspace.borrow`` from now on."""
    sizes = []
    real = workspace.borrow

    def spy(shape, dtype, slot="scratch"):
        array = real(shape, dtype, slot)
        sizes.append(array.nbytes)
        return array

    monkeypatch.setattr(workspace, "borrow", spy)
    return sizes


def test_scratch_does_not_grow_with_the_image(monkeypatch):
    # The layer (3 channels, 16 3x3 filters, auto picks direct) on a
    # 2048 x 2048 image: the old kernels borrowed a whole padded plane and 8 whole
    # output planes per thread (288 MB); now each thread's scratch is one band.
    sizes = borrowed_bytes(monkeypatch)
    x = np.ones((1, 3, 2048, 2048), np.float32)
    w = np.ones((16, 3, 3, 3), np.float32)
    y = fastconv.conv2d(x, w, padding=1)
    np.testing.assert_array_equal(y[0, :, 1:-1, 1:-1], 27.0)
    fastconv.conv2d_backward(y, x, w, padding=1, algorithm="direct", needs_bias_grad=False)
    fastconv.conv2d_backward(y[:, :, ::2, ::2], x, w, stride=2, padding=1, algorithm="direct",
                             needs_bias_grad=False)
    bound = numba.get_num_threads() * config.DIRECT_TILE_BYTES
    assert len(sizes) == 6  # five kernels' scratch, the blocked kernel's packed filters
    assert max(sizes) <= bound, sizes
    assert workspace.kept_bytes() <= bound


def test_process_memory_after_a_large_call():
    # What the issue measured, end to end in a fresh process: resident memory after
    # a large direct convolution, less its input and output, stays small.
    code = """
import numpy as np, fastconv

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))

w = np.ones((16, 3, 3, 3), np.float32)
fastconv.conv2d(np.ones((1, 3, 64, 64), np.float32), w, padding=1)   # loads the kernels
before = rss()
x = np.ones((1, 3, 2048, 2048), np.float32)
y = fastconv.conv2d(x, w, padding=1)
print(rss() - before - x.nbytes - y.nbytes)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, check=True)
    assert int(result.stdout) < 32 * 2**20, result.stdout


# --- the workspace: what is kept, the cap, release ----------------------------------------


def test_buffers_are_reused_below_the_cap():
    a = workspace.borrow((100, 10), np.float64)
    b = workspace.borrow((50,), np.float64)
    assert np.shares_memory(a, b)
    assert workspace.kept_bytes() == 8000
    c = workspace.borrow((10,), np.float64, "other slot")
    assert not np.shares_memory(b, c)
    d = workspace.borrow((10,), np.float32)
    assert not np.shares_memory(b, d)
    assert workspace.kept_bytes() == 8000 + 80 + 40


def test_a_repeated_borrow_is_a_view_of_the_kept_buffer():
    # a repeated borrow of one shape returns its last view while that view's buffer is
    # still the kept one; after the slot grows, a view of the new buffer
    workspace.release()
    small = workspace.borrow((3, 4), np.float32, "views")
    assert workspace.borrow((3, 4), np.float32, "views") is small
    large = workspace.borrow((100, 10), np.float32, "views")  # grows: a new kept buffer
    again = workspace.borrow((3, 4), np.float32, "views")
    assert again.shape == (3, 4) and np.shares_memory(again, large)
    assert not np.shares_memory(again, small)
    workspace.release()
    fresh = workspace.borrow((3, 4), np.float32, "views")
    assert not np.shares_memory(fresh, large)


def test_cap_is_honoured(monkeypatch):
    monkeypatch.setattr(config, "WORKSPACE_KEEP_BYTES", 1000)
    small = workspace.borrow((100,), np.float64)  # 800 bytes: kept
    assert workspace.kept_bytes() == 800
    large = workspace.borrow((1000,), np.float64)  # 8000 bytes: not kept, the 800 stay
    assert large.shape == (1000,) and not np.shares_memory(small, large)
    large[:] = 1.0
    assert workspace.kept_bytes() == 800
    again = workspace.borrow((100,), np.float64)
    assert np.shares_memory(small, again)
    # a second slot would take the total over the cap: served, not kept
    other = workspace.borrow((50,), np.float64, "other slot")
    assert other.shape == (50,)
    assert workspace.kept_bytes() == 800


def test_cap_counts_every_thread(monkeypatch):
    monkeypatch.setattr(config, "WORKSPACE_KEEP_BYTES", 1000)
    workspace.borrow((100,), np.float64)
    kept_there = []
    worker = threading.Thread(target=lambda: (workspace.borrow((100,), np.float64),
                                              kept_there.append(workspace.kept_bytes())))
    worker.start()
    worker.join()
    assert kept_there == [800]


def test_cap_zero_keeps_nothing_after_a_direct_call(monkeypatch, rng):
    monkeypatch.setattr(config, "WORKSPACE_KEEP_BYTES", 0)
    x = rng.uniform(-1, 1, (2, 3, 40, 40))
    w = rng.uniform(-1, 1, (4, 3, 3, 3))
    y = fastconv.conv2d(x, w, padding=1, algorithm="direct")
    assert workspace.kept_bytes() == 0
    np.testing.assert_allclose(y, reference.conv2d(x, w, None, padding=1), rtol=1e-10,
                               atol=1e-12)


def test_release_frees_every_thread():
    fastconv.conv2d(np.ones((2, 3, 32, 32)), np.ones((4, 3, 3, 3)), algorithm="direct")
    kept_here = workspace.kept_bytes()
    assert kept_here > 0
    borrowed = threading.Event()
    released = threading.Event()
    held = []

    def work():
        held.append(workspace.borrow((1000,), np.float32))
        borrowed.set()
        released.wait(60)
        held[0][:] = 2.0  # still a valid buffer after the release

    worker = threading.Thread(target=work)
    worker.start()
    borrowed.wait(60)
    assert workspace.kept_bytes() == kept_here + 4000
    assert fastconv.release_workspace() == kept_here + 4000
    assert workspace.kept_bytes() == 0
    released.set()
    worker.join()
    assert (held[0] == 2.0).all()
    assert fastconv.release_workspace() == 0
    fresh = workspace.borrow((1000,), np.float32)
    assert not np.shares_memory(fresh, held[0])


def test_buffers_of_ended_threads_are_not_counted():
    worker = threading.Thread(target=lambda: workspace.borrow((1000,), np.float32))
    worker.start()
    worker.join()
    assert workspace.kept_bytes() == 0


def test_borrow_and_release_from_many_threads(monkeypatch):
    monkeypatch.setattr(config, "WORKSPACE_KEEP_BYTES", 20_000)
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(300):
                n = int(rng.integers(1, 2000))
                a = workspace.borrow((n,), np.float64, str(rng.integers(3)))
                a[:] = seed
                assert (a == seed).all()
                assert workspace.kept_bytes() <= 20_000
                if rng.random() < 0.05:
                    fastconv.release_workspace()
        except Exception as error:  # reported by the main thread
            errors.append(error)

    workers = [threading.Thread(target=work, args=(seed,)) for seed in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert workspace.kept_bytes() <= 20_000


def test_release_workspace_does_not_load_the_backend():
    code = ("import sys, fastconv; assert fastconv.release_workspace() == 0; "
            "print('numba' in sys.modules, 'fastconv.cpu' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("name, value", [("DIRECT_TILE_BYTES", "4096"),
                                         ("WORKSPACE_KEEP_BYTES", "0")])
def test_tunables_from_the_environment(name, value):
    env = dict(os.environ, **{"FASTCONV_" + name: value})
    code = f"from fastconv import config; print(config.{name})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True, env=env)
    assert result.stdout.strip() == value
    env["FASTCONV_" + name] = "-1"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode != 0 and f"FASTCONV_{name} must be >=" in result.stderr
