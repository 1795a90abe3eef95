"""The plan cache (fastconv.plans) and fastconv.explain.

A cache hit must give exactly what a miss gives, and never accept a call that a
miss would refuse: every case of the shared tables is run twice (the second
call a hit, on fresh data) against the reference, and calls that differ from a
cached one only in a shape, a dtype, a layout or an argument's type are
refused with the message a fresh call gives.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys

import numpy as np
import pytest

import fastconv
from fastconv import dispatch, plans, reference

from .cases import CASE_IDS, CONV2D_CASES, make_inputs, relayout, tolerance
from .pool_cases import AVG_CASES, POOL_CASES, tie_free


def _twice(call):
    """``call()`` twice, the second time a cache hit if the first made a plan (a list
    argument does not: it takes the full path each time); both results."""
    before = len(plans.CACHE)
    first = call()
    hits = plans.CACHE.hits
    second = call()
    if len(plans.CACHE) > before:
        assert plans.CACHE.hits == hits + 1, "the second call did not use the cached plan"
    return first, second


# --- hits compute what misses compute, over the shared case tables -----------------------


@pytest.mark.parametrize("case", CONV2D_CASES, ids=CASE_IDS)
def test_conv2d_hit_on_fresh_data_matches_the_reference(case, rng):
    data = [make_inputs(case, np.float32, rng) for _ in range(2)]
    calls = iter(data)

    def call():
        x, w, b = next(calls)
        return fastconv.conv2d(x, w, b, **case.kwargs)

    for (x, w, b), y in zip(data, _twice(call), strict=True):
        np.testing.assert_allclose(y, reference.conv2d(x, w, b, **case.kwargs),
                                   **tolerance(np.float32))


@pytest.mark.parametrize("case", CONV2D_CASES[::3], ids=CASE_IDS[::3])
def test_conv2d_backward_and_transpose_hits(case, rng):
    x, w, b = make_inputs(case, np.float64, rng)
    y = reference.conv2d(x, w, b, **case.kwargs)
    expected = reference.conv2d_backward(np.ones_like(y), x, w, **case.kwargs)
    for got in _twice(lambda: fastconv.conv2d_backward(np.ones_like(y), x, w, **case.kwargs)):
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, **tolerance(np.float64))
    if case.padding in ("same", "valid"):
        return
    args = dict(stride=case.stride, padding=case.padding, dilation=case.dilation,
                groups=case.groups)
    wt = np.ascontiguousarray(w)  # (K, C/g, R, S) is conv_transpose2d's (C_in, C_out/g, R, S)
    for got in _twice(lambda: fastconv.conv_transpose2d(y, wt, **args)):
        np.testing.assert_allclose(got, fastconv.conv_transpose2d(y, wt, **args,
                                                                  algorithm="reference"),
                                   **tolerance(np.float64))


@pytest.mark.parametrize("case", POOL_CASES, ids=[c.id for c in POOL_CASES])
def test_pool_hits_match_the_reference(case, rng):
    x = tie_free(case.input_shape, np.float64, rng)
    ref, ref_where = reference.max_pool2d(x, **case.max_kwargs, return_indices=True)
    for out, where in _twice(lambda: fastconv.max_pool2d(x, **case.max_kwargs,
                                                         return_indices=True)):
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(where, ref_where)
    expected = reference.max_pool2d_backward(ref, ref_where, x.shape)
    for grad in _twice(lambda: fastconv.max_pool2d_backward(ref, ref_where, x.shape)):
        np.testing.assert_array_equal(grad, expected)
    if case in AVG_CASES:
        for out in _twice(lambda: fastconv.avg_pool2d(x, **case.pool_kwargs)):
            np.testing.assert_allclose(out, reference.avg_pool2d(x, **case.pool_kwargs))


def test_unpool_hits(rng):
    x = tie_free((2, 3, 6, 8), np.float32, rng)
    y, where = fastconv.max_pool2d(x, 2, return_indices=True)
    for up in _twice(lambda: fastconv.max_unpool2d(y, where, 2)):
        np.testing.assert_array_equal(up, reference.max_unpool2d(y, where, 2))
    for grad in _twice(lambda: fastconv.max_unpool2d_backward(x, where)):
        np.testing.assert_array_equal(grad, reference.max_unpool2d_backward(x, where))
    for up in _twice(lambda: fastconv.repeat_unpool2d(y, (2, 3))):
        np.testing.assert_array_equal(up, reference.repeat_unpool2d(y, (2, 3)))
    for grad in _twice(lambda: fastconv.repeat_unpool2d_backward(x, 2)):
        np.testing.assert_allclose(grad, reference.repeat_unpool2d_backward(x, 2), rtol=1e-6)


def test_each_hit_returns_a_new_array(rng):
    x = rng.uniform(-1, 1, (1, 2, 6, 6)).astype(np.float32)
    w = rng.uniform(-1, 1, (3, 2, 3, 3)).astype(np.float32)
    first, second = _twice(lambda: fastconv.conv2d(x, w))
    assert not np.shares_memory(first, second)


@pytest.mark.parametrize("layout", ["transposed", "strided", "fortran", "reversed"])
def test_a_hit_with_another_layout_is_its_own_plan(layout, rng):
    """The key holds the strides: a view of another layout gets a plan of its own, and
    the right answer; the input is never modified."""
    x = rng.uniform(-1, 1, (2, 3, 9, 9)).astype(np.float32)
    w = rng.uniform(-1, 1, (4, 3, 3, 3)).astype(np.float32)
    fastconv.conv2d(x, w, padding=1)
    other = relayout(x, layout, rng)
    before = other.copy()
    got = _twice(lambda: fastconv.conv2d(other, w, padding=1))
    for y in got:
        np.testing.assert_allclose(y, reference.conv2d(before, w, padding=1),
                                   **tolerance(np.float32))
    np.testing.assert_array_equal(other, before)


# --- a hit never accepts what a miss refuses ----------------------------------------------


def _error(call):
    with pytest.raises((TypeError, ValueError)) as caught:
        call()
    return type(caught.value), str(caught.value)


REFUSED = {
    # name: (good call, bad call that differs in one respect)
    "channels": (lambda x, w: fastconv.conv2d(x, w),
                 lambda x, w: fastconv.conv2d(x[:, :2], w)),
    "dtype": (lambda x, w: fastconv.conv2d(x, w),
              lambda x, w: fastconv.conv2d(x.astype(np.float64), w)),
    "int input": (lambda x, w: fastconv.conv2d(x, w),
                  lambda x, w: fastconv.conv2d(x.astype(np.int32), w)),
    "bool stride": (lambda x, w: fastconv.conv2d(x, w, stride=1),
                    lambda x, w: fastconv.conv2d(x, w, stride=True)),
    "float stride": (lambda x, w: fastconv.conv2d(x, w, stride=(1, 1)),
                     lambda x, w: fastconv.conv2d(x, w, stride=(1.0, 1))),
    "bool groups": (lambda x, w: fastconv.conv2d(x, w, groups=1),
                    lambda x, w: fastconv.conv2d(x, w, groups=True)),
    "bad padding": (lambda x, w: fastconv.conv2d(x, w, padding=1),
                    lambda x, w: fastconv.conv2d(x, w, padding=-1)),
    "bad algorithm": (lambda x, w: fastconv.conv2d(x, w, algorithm="direct"),
                      lambda x, w: fastconv.conv2d(x, w, algorithm="fft")),
    "winograd stride": (lambda x, w: fastconv.conv2d(x, w, algorithm="winograd"),
                        lambda x, w: fastconv.conv2d(x, w, stride=3, algorithm="winograd")),
    "bool ceil_mode": (lambda x, w: fastconv.max_pool2d(x, 2, ceil_mode=False),
                       lambda x, w: fastconv.max_pool2d(x, 2, ceil_mode=0.0)),
    "pool padding": (lambda x, w: fastconv.max_pool2d(x, 3, padding=1),
                     lambda x, w: fastconv.max_pool2d(x, 3, padding=2)),
    "rank": (lambda x, w: fastconv.avg_pool2d(x, 2),
             lambda x, w: fastconv.avg_pool2d(x[0, 0], 2)),
    "divisor": (lambda x, w: fastconv.avg_pool2d(x, 2, divisor_override=2),
                lambda x, w: fastconv.avg_pool2d(x, 2, divisor_override=0)),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_hit_refuses_what_a_miss_refuses(name, rng):
    good, bad = REFUSED[name]
    x = rng.uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    w = rng.uniform(-1, 1, (4, 3, 3, 3)).astype(np.float32)
    fresh = _error(lambda: bad(x, w))
    assert len(plans.CACHE) == 0 or name in ("bad padding",), "a refused call left a plan"
    plans.clear()
    good(x, w)
    good(x, w)
    assert plans.CACHE.hits == 1
    assert _error(lambda: bad(x, w)) == fresh


def test_bad_indices_after_a_hit_are_still_reported(rng):
    x = tie_free((1, 2, 4, 4), np.float32, rng)
    y, where = fastconv.max_pool2d(x, 2, return_indices=True)
    fastconv.max_pool2d_backward(y, where, x.shape)
    bad = where.copy()
    bad[0, 1, 1, 1] = 16
    with pytest.raises(ValueError, match="indices holds 16 at"):
        fastconv.max_pool2d_backward(y, bad, x.shape)
    assert plans.CACHE.hits == 1


def test_uncached_forms_give_the_same_results(rng):
    """Numpy integers and nested lists are not keyed: they take the full path."""
    x = rng.uniform(-1, 1, (1, 2, 7, 7)).astype(np.float32)
    w = rng.uniform(-1, 1, (3, 2, 3, 3)).astype(np.float32)
    expected = reference.conv2d(x, w, stride=2, padding=1)
    out = np.empty_like(expected)
    for call in (lambda: fastconv.conv2d(x, w, stride=np.int64(2), padding=1),
                 lambda: fastconv.conv2d(x.tolist(), w.astype(np.float64), stride=2, padding=1),
                 lambda: fastconv.conv2d(x, w, stride=2, padding=1, out=out.tolist())):
        try:
            result = call()
        except TypeError as error:  # a list for out: refused as on every call
            assert "out must be a numpy.ndarray" in str(error)
            continue
        np.testing.assert_allclose(result, expected, **tolerance(np.float32))
    assert len(plans.CACHE) == 0


def test_out_is_keyed_and_checked_on_every_hit(rng):
    """conv2d's ``out=`` is keyed like an input array; a hit still refuses a read-only
    ``out`` and one that shares memory with an input, and fills a strided one."""
    x = rng.uniform(-1, 1, (2, 3, 9, 8)).astype(np.float32)
    w = rng.uniform(-1, 1, (4, 3, 3, 3)).astype(np.float32)
    b = rng.uniform(-1, 1, 4).astype(np.float32)
    expected = reference.conv2d(x, w, b, padding=1)
    out = np.empty_like(expected)
    for result in _twice(lambda: fastconv.conv2d(x, w, b, padding=1, out=out)):
        assert result is out
        np.testing.assert_allclose(out, expected, **tolerance(np.float32))
    assert plans.CACHE.hits == 1 and len(plans.CACHE) == 1
    out.flags.writeable = False
    refused = _error(lambda: fastconv.conv2d(x, w, b, padding=1, out=out))
    assert refused == (ValueError, "out must be writeable, got a read-only array")
    # an out inside one buffer with the input: where they overlap, refused, else written
    buffer = np.zeros(x.size + expected.size + 64, np.float32)
    inside = buffer[: x.size].reshape(x.shape)
    inside[...] = x
    apart = buffer[x.size : x.size + expected.size].reshape(expected.shape)
    overlapping = buffer[x.size - 8 : x.size - 8 + expected.size].reshape(expected.shape)
    for _ in range(2):
        assert fastconv.conv2d(inside, w, b, padding=1, out=apart) is apart
        np.testing.assert_allclose(apart, expected, **tolerance(np.float32))
        refused = _error(lambda: fastconv.conv2d(inside, w, b, padding=1, out=overlapping))
        assert refused == (ValueError, "out must not share memory with an input")
        np.testing.assert_array_equal(inside, x)
    # a strided out and one image (no batch axis) in its own out
    strided = np.zeros((*expected.shape[:3], 2 * expected.shape[3]), np.float32)[..., ::2]
    single = np.zeros(expected.shape[1:], np.float32)
    for _ in range(2):
        assert fastconv.conv2d(x, w, b, padding=1, out=strided) is strided
        np.testing.assert_allclose(strided, expected, **tolerance(np.float32))
        assert fastconv.conv2d(x[1], w, b, padding=1, out=single) is single
        np.testing.assert_allclose(single, expected[1], **tolerance(np.float32))


# --- threads, bound, clearing, fork ------------------------------------------------------


def test_list_arguments_are_keyed_apart_from_tuples(rng):
    x = rng.uniform(-1, 1, (1, 2, 7, 7)).astype(np.float32)
    w = rng.uniform(-1, 1, (3, 2, 3, 3)).astype(np.float32)
    stride = [2, 2]
    expected = reference.conv2d(x, w, stride=2, padding=1)
    for y in _twice(lambda: fastconv.conv2d(x, w, stride=stride, padding=[1, 1])):
        np.testing.assert_allclose(y, expected, **tolerance(np.float32))
    stride[0] = 1  # the key holds a copy: the changed list is another problem
    np.testing.assert_allclose(fastconv.conv2d(x, w, stride=stride, padding=[1, 1]),
                               reference.conv2d(x, w, stride=(1, 2), padding=1),
                               **tolerance(np.float32))
    fastconv.conv2d(x, w, stride=(2, 2), padding=(1, 1))
    assert len(plans.CACHE) == 3
    refused = _error(lambda: fastconv.conv2d(x, w, stride=[2, True]))
    assert refused[0] is TypeError and "got [2, True]" in refused[1]


def test_four_threads_share_a_plan(rng):
    w = rng.uniform(-1, 1, (8, 4, 3, 3)).astype(np.float32)
    inputs = [rng.uniform(-1, 1, (2, 4, 12, 12)).astype(np.float32) for _ in range(40)]
    fastconv.conv2d(inputs[0], w, padding=1)

    def work(x):
        return fastconv.conv2d(x, w, padding=1), fastconv.max_pool2d(x, 2)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, inputs))
    for x, (y, pooled) in zip(inputs, results, strict=True):
        np.testing.assert_allclose(y, reference.conv2d(x, w, padding=1), **tolerance(np.float32))
        np.testing.assert_array_equal(pooled, reference.max_pool2d(x, 2))
    assert len(plans.CACHE) == 2


def test_the_cache_is_bounded_least_recently_used_first(monkeypatch, rng):
    monkeypatch.setattr(fastconv.config, "PLAN_CACHE_SIZE", 3)
    xs = [rng.uniform(-1, 1, (1, 1, 4 + i, 4)).astype(np.float32) for i in range(5)]
    for x in xs[:3]:
        fastconv.max_pool2d(x, 2)
    fastconv.max_pool2d(xs[0], 2)  # now the most recent
    for x in xs[3:]:
        fastconv.max_pool2d(x, 2)
    assert len(plans.CACHE) == 3
    hits = plans.CACHE.hits
    fastconv.max_pool2d(xs[0], 2)
    assert plans.CACHE.hits == hits + 1
    fastconv.max_pool2d(xs[1], 2)
    assert plans.CACHE.hits == hits + 1  # dropped


def test_clear_plans_and_info(rng):
    x = rng.uniform(-1, 1, (1, 1, 4, 4)).astype(np.float32)
    fastconv.max_pool2d(x, 2)
    fastconv.avg_pool2d(x, 2)
    assert plans.info()["plans"] == 2
    assert fastconv.clear_plans() == 2
    assert plans.info() == {"plans": 0, "max_plans": fastconv.config.PLAN_CACHE_SIZE, "hits": 0,
                            "misses": 0}


def test_a_new_plan_is_never_the_one_dropped(monkeypatch, rng):
    """Every kept plan used since the last eviction: the new one still stays (the
    second-chance clock passes over the others first)."""
    monkeypatch.setattr(fastconv.config, "PLAN_CACHE_SIZE", 2)
    xs = [rng.uniform(-1, 1, (1, 1, 4 + i, 4)).astype(np.float32) for i in range(3)]
    for x in xs[:2]:
        fastconv.max_pool2d(x, 2)
        fastconv.max_pool2d(x, 2)  # a hit: marked as used
    fastconv.max_pool2d(xs[2], 2)
    assert len(plans.CACHE) == 2
    hits = plans.CACHE.hits
    fastconv.max_pool2d(xs[2], 2)
    assert plans.CACHE.hits == hits + 1


def test_a_changed_setting_or_thread_count_makes_a_new_plan(monkeypatch, rng):
    """A plan holds its kernels' tiling, sized by the settings and Numba's thread count:
    a change of either is another key (the old plan is not met), with the same result."""
    numba = pytest.importorskip("numba")
    x = rng.uniform(-1, 1, (2, 8, 12, 12)).astype(np.float32)
    w = rng.uniform(-1, 1, (8, 8, 3, 3)).astype(np.float32)
    expected = reference.conv2d(x, w, padding=1)
    fastconv.conv2d(x, w, padding=1, algorithm="direct")
    misses = plans.CACHE.misses
    monkeypatch.setattr(fastconv.config, "DIRECT_TILE_BYTES", 4096)
    np.testing.assert_allclose(fastconv.conv2d(x, w, padding=1, algorithm="direct"), expected,
                               **tolerance(np.float32))
    assert plans.CACHE.misses == misses + 1
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        np.testing.assert_allclose(fastconv.conv2d(x, w, padding=1, algorithm="direct"),
                                   expected, **tolerance(np.float32))
        assert plans.CACHE.misses == misses + 2
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("stride", [1, 2])
def test_a_hit_with_a_non_finite_weight_gives_what_a_miss_gives(stride, rng):
    """The blocked grad_input runner a plan keeps checks each call's weight: one with an
    Inf after a plan made with a finite weight takes the exact path, as a fresh call."""
    x = rng.uniform(-1, 1, (2, 8, 9, 9)).astype(np.float32)
    w = rng.uniform(-1, 1, (8, 8, 3, 3)).astype(np.float32)
    y = fastconv.conv2d(x, w, stride=stride, padding=1)
    dy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    fastconv.conv2d_backward(dy, x, w, stride=stride, padding=1, algorithm="direct")
    bad = w.copy()
    bad[3, 2, 1, 1] = np.inf
    hit = fastconv.conv2d_backward(dy, x, bad, stride=stride, padding=1, algorithm="direct")
    fastconv.clear_plans()
    fresh = fastconv.conv2d_backward(dy, x, bad, stride=stride, padding=1, algorithm="direct")
    np.testing.assert_array_equal(hit[0], fresh[0])
    expected = reference.conv2d_backward(dy, x, bad, stride=stride, padding=1)[0]
    np.testing.assert_array_equal(np.isnan(hit[0]), np.isnan(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(hit[0][finite], expected[finite], **tolerance(np.float32))


def test_registering_a_kernel_forgets_the_plans(rng):
    x = rng.uniform(-1, 1, (1, 1, 4, 4)).astype(np.float32)
    fastconv.max_pool2d(x, 2)
    dispatch.register_chooser("max_pool2d", "cpu")(dispatch._CHOOSERS["max_pool2d", "cpu"])
    assert len(plans.CACHE) == 0


def test_auto_depends_on_the_thresholds(monkeypatch, rng):
    x = rng.uniform(-1, 1, (1, 64, 28, 28)).astype(np.float32)
    w = rng.uniform(-1, 1, (64, 64, 3, 3)).astype(np.float32)
    assert fastconv.explain("conv2d", x, w, padding=1)["algorithm"] == "winograd"
    fastconv.conv2d(x, w, padding=1)
    monkeypatch.setattr(fastconv.config, "AUTO_WINOGRAD_MIN_CHANNEL_PLANE", 10**9)
    assert fastconv.explain("conv2d", x, w, padding=1)["algorithm"] == "direct"
    chosen = []
    choose = dispatch.choose
    monkeypatch.setattr(dispatch, "choose", lambda *a, **k: chosen.append(a) or choose(*a, **k))
    fastconv.conv2d(x, w, padding=1)
    assert chosen, "a changed threshold must not meet the old plan"


def _plan_count() -> int:
    return len(plans.CACHE)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_without_plans(rng):
    x = rng.uniform(-1, 1, (1, 1, 4, 4)).astype(np.float32)
    fastconv.max_pool2d(x, 2)
    assert len(plans.CACHE) == 1
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        assert pool.apply(_plan_count) == 0


# --- explain -----------------------------------------------------------------------------


def test_explain_names_what_the_call_runs(monkeypatch, rng):
    x = rng.uniform(-1, 1, (2, 32, 10, 10)).astype(np.float32)
    w = rng.uniform(-1, 1, (32, 32, 3, 3)).astype(np.float32)
    ran = []
    choose = dispatch.choose

    def spy(op, device, algorithm, **problem):
        choice = choose(op, device, algorithm, **problem)
        ran.append((op, choice.algorithm))
        return choice

    monkeypatch.setattr(dispatch, "choose", spy)
    for function, args, kwargs in [
        (fastconv.conv2d, (x, w), dict(padding=1)),
        (fastconv.conv2d, (x, w[:, :8]), dict(groups=4)),
        (fastconv.conv2d, (x, w[:, :, :1, :1]), {}),
        (fastconv.conv2d, (x[:, :1], w[:, :1]), dict(stride=2)),
        (fastconv.conv2d_backward, (x[:, :, :8, :8], x, w), {}),
        (fastconv.conv_transpose2d, (x, w), dict(stride=2)),
        (fastconv.max_pool2d, (x, 2), {}),
    ]:
        ran.clear()
        explained = fastconv.explain(function.__name__, *args, **kwargs)
        explained_ops = [(k["op"], k["algorithm"]) for k in explained["kernels"]]
        ran.clear()
        function(*args, **kwargs)
        assert explained_ops == ran
        assert explained["algorithm"] == ran[0][1]
        assert explained["source"] == "heuristic"
        assert explained["device"] == "cpu"
        assert isinstance(explained["reason"], str) and explained["reason"]
    requested = fastconv.explain(fastconv.conv2d, x, w, algorithm="im2col")
    assert (requested["algorithm"], requested["source"]) == ("im2col", "requested")


def test_explain_runs_nothing_and_checks_like_the_call(monkeypatch, rng):
    x = rng.uniform(-1, 1, (1, 2, 5, 5)).astype(np.float32)
    w = rng.uniform(-1, 1, (3, 2, 3, 3)).astype(np.float32)

    def boom(*args):
        raise AssertionError("explain ran a kernel")

    for name in ("direct", "im2col", "winograd"):
        monkeypatch.setitem(dispatch._KERNELS, ("conv2d", "cpu", name), boom)
    assert fastconv.explain("conv2d", x, w)["algorithm"] == "direct"
    assert len(plans.CACHE) == 0
    assert _error(lambda: fastconv.explain("conv2d", x, w, padding=-1)) == _error(
        lambda: fastconv.conv2d(x, w, padding=-1))
    with pytest.raises(ValueError, match="op must be one of"):
        fastconv.explain("conv3d", x, w)
    with pytest.raises(ValueError, match="op must be one of"):
        fastconv.explain(np.add, x, w)


def test_explain_in_a_fresh_process_imports_nothing_it_should_not():
    import subprocess

    code = ("import sys, numpy as np, fastconv\n"
            "print(fastconv.explain('max_pool2d', np.ones((1, 1, 4, 4)), 2)['algorithm'])\n"
            "print('torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["direct", "False"]
