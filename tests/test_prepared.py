"""Prepared weights (:mod:`fastconv.cpu.prepared`): Winograd's transformed filters are kept
between calls and reused only while the weight holds the same bytes.

A kept transform that outlived a change of its weight would give the old weight's
convolution: every test changes a weight in place (as an optimizer step does) or
swaps weights between calls and checks the results against the reference.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastconv
from fastconv import config, reference
from fastconv.cpu import blocked, prepared
from tests.test_conv2d import assert_close

DTYPES = [np.float32, np.float64]


@pytest.fixture(autouse=True)
def fresh():
    fastconv.release_workspace()
    yield
    fastconv.release_workspace()


def layer(dtype, rng, n=2, c=8, k=12, size=10, groups=1):
    x = rng.standard_normal((n, c, size, size)).astype(dtype)
    w = (rng.standard_normal((k, c // groups, 3, 3)) / 3).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    return x, w, b


def winograd(x, w, b, groups=1):
    return fastconv.conv2d(x, w, b, padding=1, groups=groups, algorithm="winograd")


def winograd_grad_input(g, x, w, groups=1):
    return fastconv.conv2d_backward(g, x, w, padding=1, groups=groups, needs_weight_grad=False,
                                    needs_bias_grad=False, algorithm="winograd")[0]


def check(x, w, b, dtype, groups=1):
    """Forward and grad_input by Winograd against the reference, for the weight as it is now."""
    y = winograd(x, w, b, groups)
    assert_close(y, reference.conv2d(x, w, b, padding=1, groups=groups), dtype)
    g = np.cos(y)
    expected = reference.conv2d_backward(g, x, w, padding=1, groups=groups)[0]
    assert_close(winograd_grad_input(g, x, w, groups), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("groups", [1, 2])
def test_a_weight_changed_in_place_is_transformed_again(dtype, groups, rng):
    x, w, b = layer(dtype, rng, groups=groups)
    check(x, w, b, dtype, groups)
    assert prepared.kept_bytes() > 0
    for _ in range(3):  # optimizer steps: the same buffer, new values
        w -= np.asarray(0.1, dtype) * rng.standard_normal(w.shape).astype(dtype)
        check(x, w, b, dtype, groups)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_a_change_of_one_value_or_of_a_zero_sign_is_seen(dtype, rng):
    x, w, b = layer(dtype, rng)
    winograd(x, w, b)
    w[5, 3, 2, 1] = np.nextafter(w[5, 3, 2, 1], dtype(np.inf))
    check(x, w, b, dtype)
    w[0, 0] = 0.0
    y_plus = winograd(x, w, b)
    w[0, 0] = -0.0  # equal as numbers, different bits: transformed again, the same result
    np.testing.assert_array_equal(winograd(x, w, b), y_plus)
    assert prepared.kept_bytes() > 0



@pytest.mark.parametrize("with_memcmp", [True, False], ids=["memcmp", "numpy"])
@pytest.mark.parametrize("dtype,size", [(np.float32, 7), (np.float32, 1 << 16), (np.float64, 5)])
def test_the_compare_sees_every_bit(with_memcmp, dtype, size, monkeypatch, rng):
    """prepared.same_bytes (memcmp, or numpy's compare of words where ctypes has none):
    one changed bit anywhere, -0.0 against 0.0 and NaN payloads are changes; equal bits,
    NaNs included, are not; an odd count of float32 (no 8-byte words) too."""
    if not with_memcmp:
        monkeypatch.setattr(prepared, "_MEMCMP", None)
    elif prepared._MEMCMP is None:
        pytest.skip("no memcmp through ctypes here")
    a = rng.standard_normal(size).astype(dtype)
    a[size // 2] = np.nan
    b = a.copy()
    assert prepared.same_bytes(a, b)
    bits = b.view(f"u{b.itemsize}")
    for at in (0, size // 2, size - 1):
        for bit in (0, 8 * b.itemsize - 1):
            bits[at] ^= bits.dtype.type(1) << bits.dtype.type(bit)  # (the NaN's payload too)
            assert not prepared.same_bytes(a, b)
            bits[at] ^= bits.dtype.type(1) << bits.dtype.type(bit)
            assert prepared.same_bytes(a, b)
    a[0], b[0] = 0.0, -0.0
    assert not prepared.same_bytes(a, b)
    assert not prepared.same_bytes(a, a[:-1].copy())  # (never read past the shorter)
    if size > 2:
        assert not prepared.same_bytes(a[::2], b[::2].copy())  # (not contiguous)
    assert prepared.same_bytes(a, a.copy())


def test_weights_of_one_shape_keep_their_own_transforms(rng):
    x, w1, b = layer(np.float64, rng)
    w2 = rng.standard_normal(w1.shape)
    for _ in range(2):  # alternating, as two layers of one shape in a network
        check(x, w1, b, np.float64)
        check(x, w2, b, np.float64)
    # forward and grad_input filters of both weights
    assert len(prepared._registry.mine().entries) == 4


def test_the_same_values_in_another_array_are_correct(rng):
    x, w, b = layer(np.float32, rng)
    expected = reference.conv2d(x, w, b, padding=1)
    for _ in range(3):
        assert_close(winograd(x, w.copy(), b), expected, np.float32)


def test_a_trainer_that_rebinds_its_weight_recycles_the_arrays(rng):
    x, w, b = layer(np.float32, rng)
    check(x, w, b, np.float32)
    values, weights = set(), [w]  # all kept alive: a new buffer each step
    for _ in range(2 * prepared.SAME_SHAPE):
        w = w - np.float32(0.1) * rng.standard_normal(w.shape).astype(np.float32)
        weights.append(w)
        check(x, w, b, np.float32)
        values.update(id(entry.value) for entry in prepared._registry.mine().entries.values())
    # forward and grad_input filters, SAME_SHAPE of each, the same arrays throughout
    assert len(prepared._registry.mine().entries) == 2 * prepared.SAME_SHAPE
    assert len(values) == 2 * prepared.SAME_SHAPE


def test_a_non_contiguous_weight_changed_in_place(rng):
    x, w, b = layer(np.float64, rng)
    view = np.asfortranarray(w)
    check(x, view, b, np.float64)
    view[1, 2, 0, 0] += 1.0
    check(x, view, b, np.float64)


def test_a_non_contiguous_weight_is_not_kept(rng):
    w = np.asfortranarray(rng.standard_normal((4, 3, 3, 3)))
    built = []
    value = prepared.get("test", w, (2,), lambda weight, out: built.append(out.fill(1.0)))
    assert built and (value == 1.0).all()
    assert prepared.kept_bytes() == 0


def test_the_budget_bounds_what_is_kept(monkeypatch, rng):
    x, w, b = layer(np.float64, rng)
    monkeypatch.setattr(config, "PREPARED_WEIGHTS_BYTES", 0)
    check(x, w, b, np.float64)
    assert prepared.kept_bytes() == 0
    monkeypatch.setattr(config, "PREPARED_WEIGHTS_BYTES", 1 << 30)
    winograd(x, w, b)
    one = prepared.kept_bytes()  # the weight's copy and its transform, packed
    assert one > 5 * w.nbytes  # (36 / 9 times the weight, filters padded to blocks of 8)
    fastconv.release_workspace()
    monkeypatch.setattr(config, "PREPARED_WEIGHTS_BYTES", one + 100)
    others = [rng.standard_normal(w.shape) for _ in range(3)]
    for other in others:  # each new transform drops the ones before it past the budget
        check(x, other, b, np.float64)
        assert 0 < prepared.kept_bytes() <= one + 100
        assert len(prepared._registry.mine().entries) == 1
    check(x, others[0], b, np.float64)


def test_release_workspace_drops_them():
    x = np.ones((1, 4, 8, 8), np.float32)
    w = np.ones((4, 4, 3, 3), np.float32)
    winograd(x, w, None)
    kept = prepared.kept_bytes()
    assert kept == w.nbytes + 36 * 8 * 4 * 4  # the weight's copy; U for one block of 8 filters
    assert fastconv.release_workspace() >= kept
    assert prepared.kept_bytes() == 0
    np.testing.assert_allclose(winograd(x, w, None), reference.conv2d(x, w, None, padding=1),
                               rtol=1e-5)


def test_threads_changing_their_own_weights(rng):
    x, w, b = layer(np.float64, rng)
    errors = []

    def work(seed):
        local = np.random.default_rng(seed)
        mine = w.copy()
        try:
            for _ in range(5):
                mine += local.standard_normal(mine.shape)
                check(x, mine, b, np.float64)
        except Exception as error:  # reported by the main thread
            errors.append(error)

    workers = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []


def test_budget_from_the_environment():
    env = dict(os.environ, FASTCONV_PREPARED_WEIGHTS_BYTES="4096")
    code = "from fastconv import config; print(config.PREPARED_WEIGHTS_BYTES)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True, env=env)
    assert result.stdout.strip() == "4096"


def test_torch_optimizer_steps_through_the_bridge():
    """torch's SGD updates the parameters in place: each step's Winograd layers see it."""
    torch = pytest.importorskip("torch")
    import fastconv.torch as ft

    torch.manual_seed(0)

    def net(conv, **kwargs):
        return torch.nn.Sequential(conv(16, 16, 3, padding=1, **kwargs), torch.nn.ReLU(),
                                   conv(16, 16, 3, padding=1, **kwargs)).double()

    theirs, ours = net(torch.nn.Conv2d), net(ft.Conv2d, algorithm="winograd")
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 16, 12, 12, dtype=torch.float64)
    steps = [(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
             for model in (theirs, ours)]
    for _ in range(4):
        for model, optimizer in steps:
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-10)
    assert prepared.kept_bytes() > 0


@pytest.mark.parametrize("steps", [1, 2, 3, 17, 40])
def test_a_weight_that_changes_every_call_then_stops(steps, rng):
    """Training (a change before every call) rebuilds without comparing; evaluation after
    it (no more changes) gets the kept transform back, and every result is right."""
    x, w, b = layer(np.float64, rng)
    for _ in range(steps):
        w += 0.01 * rng.standard_normal(w.shape)
        check(x, w, b, np.float64)
    for _ in range(prepared.CHANGING_CHECK + 2):
        y = winograd(x, w, b)
    assert_close(y, reference.conv2d(x, w, b, padding=1), np.float64)
    entry = next(e for k, e in prepared._registry.mine().entries.items()
                 if k[0] == "winograd filters")
    assert entry.changes == 0  # compared and found unchanged: served from the cache
    w[3] *= 2.0  # and a change after that is seen at once
    check(x, w, b, np.float64)


def test_two_weights_swapped_into_one_buffer_on_every_call(rng):
    """A buffer that alternates between two weights (evaluation weights swapped in and
    out) changes on every call, and returns to bytes it held before: every result is the
    current weight's, including the calls where a compare finds earlier bytes again."""
    x, w, b = layer(np.float64, rng)
    pair = (w.copy(), rng.standard_normal(w.shape))
    expected = [reference.conv2d(x, one, b, padding=1) for one in pair]
    for call in range(3 * prepared.CHANGING_CHECK + 5):
        w[...] = pair[call % 2]
        assert_close(winograd(x, w, b), expected[call % 2], np.float64)


def test_a_build_that_fails_leaves_nothing_to_reuse(monkeypatch, rng):
    """An interrupted transform (here a raised error) is not served on the next call."""
    x, w, b = layer(np.float64, rng)
    check(x, w, b, np.float64)
    from fastconv.cpu import winograd as module

    real = module._filter_transform

    def interrupted(taps, g, transformed, part, parts):
        raise KeyboardInterrupt

    interrupted.threaded = False  # threads.launch calls it as one part
    monkeypatch.setattr(module, "_filter_transform", interrupted)
    w[0] += 1.0
    with pytest.raises(KeyboardInterrupt):
        winograd(x, w, b)
    monkeypatch.setattr(module, "_filter_transform", real)
    check(x, w, b, np.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_kept_flipped_filters_follow_a_weight_changed_in_place(dtype, rng, monkeypatch):
    # conv_transpose2d and grad_input on the blocked kernel pack the flipped weight once
    # per weight where it has many values (blocked.forward_runner; here all): every
    # optimizer step in place must be seen, by both, from the one weight buffer
    monkeypatch.setattr(blocked, "KEEP_FLIPPED_MIN_VALUES", 0)
    x = rng.standard_normal((2, 32, 8, 8)).astype(dtype)
    w = (rng.standard_normal((32, 32, 4, 4)) / 8).astype(dtype)
    b = rng.standard_normal(32).astype(dtype)
    x3 = rng.standard_normal((2, 64, 16, 16)).astype(dtype)
    w3 = (rng.standard_normal((32, 64, 3, 3)) / 8).astype(dtype)
    g3 = rng.standard_normal((2, 32, 16, 16)).astype(dtype)
    for _ in range(4):
        y = fastconv.conv_transpose2d(x, w, b, stride=2, padding=1, algorithm="direct")
        assert_close(y, reference.conv_transpose2d(x, w, b, stride=2, padding=1), dtype)
        grad_x = fastconv.conv2d_backward(g3, x3, w3, padding=1, needs_weight_grad=False,
                                          needs_bias_grad=False, algorithm="direct")[0]
        assert_close(grad_x, reference.conv2d_backward(g3, x3, w3, padding=1)[0], dtype)
        kinds = [key[0] for key in prepared._registry.mine().entries]
        assert kinds.count("blocked flipped filters") == 2  # the two weights' packings
        w -= np.asarray(0.1, dtype) * rng.standard_normal(w.shape).astype(dtype)
        w3 -= np.asarray(0.1, dtype) * rng.standard_normal(w3.shape).astype(dtype)
    w[0, 0, 0, 0] = np.inf  # not finite: the transposed convolution's own path, no stale use
    y = fastconv.conv_transpose2d(x, w, b, stride=2, padding=1, algorithm="direct")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(
        reference.conv_transpose2d(x, w, b, stride=2, padding=1)))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_kept_forward_filters_follow_a_weight_changed_in_place(dtype, rng, monkeypatch):
    # conv2d on the blocked kernel packs a large weight's filters once per weight
    # (blocked.KEEP_MIN_VALUES; here all), by positions and by filters, at stride 1 and
    # 2: every optimizer step in place must be seen, and two weights of one shape swapped
    # into the same calls keep their own packings
    monkeypatch.setattr(blocked, "KEEP_MIN_VALUES", 0)
    x = rng.standard_normal((2, 16, 12, 12)).astype(dtype)
    w = (rng.standard_normal((40, 16, 3, 3)) / 8).astype(dtype)
    other = (rng.standard_normal((40, 16, 3, 3)) / 8).astype(dtype)
    b = rng.standard_normal(40).astype(dtype)
    for _ in range(4):
        for form in ("positions", "filters"):
            monkeypatch.setattr(blocked, "FORWARD_FORM", form)
            blocked._forward_layout.cache_clear()
            fastconv.clear_plans()
            for weight in (w, other):
                for stride in (1, 2):
                    y = fastconv.conv2d(x, weight, b, stride=stride, padding=1,
                                        algorithm="direct")
                    assert_close(y, reference.conv2d(x, weight, b, stride=stride, padding=1),
                                 dtype)
        kinds = [key[0] for key in prepared._registry.mine().entries]
        assert kinds.count("blocked filters") >= 2
        w -= np.asarray(0.1, dtype) * rng.standard_normal(w.shape).astype(dtype)
    blocked._forward_layout.cache_clear()
    fastconv.clear_plans()
