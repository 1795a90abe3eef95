"""The explicit-SIMD layer (fastconv.cpu.simd), the micro-kernel on it and the blocked
direct convolution: against numpy and the reference, with bounds checks on, and
compiled for a CPU without AVX-512."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import fastconv
import fastconv.cpu.threads
from fastconv import reference
from fastconv.cpu import blocked, microkernels, simd, strips
from fastconv.cpu.epilogue import store_row
from tests import background
from tests.cases import DTYPES
from tests.gradients import assert_grads_close
from tests.test_conv2d import assert_close

DTYPE_IDS = [np.dtype(d).name for d in DTYPES]


@numba.njit
def _primitives(a, b, c, out):
    lanes = simd.lanes(a)
    for i in range(0, a.size, lanes):
        va, vb, vc = simd.load(a, i), simd.load(b, i), simd.load(c, i)
        simd.store(out, i, simd.fma(va, vb, vc))
        simd.store(out, a.size + i, simd.add(va, simd.splat(c[0], a)))
        simd.store(out, 2 * a.size + i, simd.maximum(va, simd.zeros(a)))


@numba.njit
def _lane_sums(a, out):
    lanes = simd.lanes(a)
    for i in range(0, a.size, lanes):
        out[i // lanes] = simd.total(simd.load(a, i))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_primitives_match_numpy(dtype, rng):
    lanes = simd.WIDTH_BYTES // np.dtype(dtype).itemsize
    a, b, c = (rng.standard_normal(3 * lanes).astype(dtype) for _ in range(3))
    a[1] = np.nan
    out = np.zeros(9 * lanes, dtype)
    _primitives(a, b, c, out)
    # one rounding against numpy's two: within a few units of the larger term's last place
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(out[: 3 * lanes], a * b + c, rtol=4 * eps,
                               atol=4 * eps * np.nanmax(np.abs(a * b) + np.abs(c)))
    np.testing.assert_array_equal(out[3 * lanes : 6 * lanes], a + c[0])
    np.testing.assert_array_equal(out[6 * lanes :], np.maximum(a, 0))  # NaN stays NaN


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_total_sums_the_lanes(dtype, rng):
    lanes = simd.WIDTH_BYTES // np.dtype(dtype).itemsize
    a = rng.standard_normal(4 * lanes).astype(dtype)
    out = np.zeros(4, dtype)
    _lane_sums(a, out)
    np.testing.assert_allclose(out, a.reshape(4, lanes).sum(axis=1),
                               rtol=8 * np.finfo(dtype).eps, atol=8 * np.finfo(dtype).eps)


@numba.njit
def _unaligned_copy(src, dst, offset):
    simd.store(dst, offset + 1, simd.load(src, offset))


def test_loads_and_stores_are_unaligned_and_exact(rng):
    src = rng.standard_normal(40).astype(np.float32)
    dst = np.zeros(40, np.float32)
    _unaligned_copy(src, dst, 3)
    lanes = simd.WIDTH_BYTES // src.itemsize
    np.testing.assert_array_equal(dst[4 : 4 + lanes], src[3 : 3 + lanes])
    assert not dst[:4].any() and not dst[4 + lanes :].any()


@numba.njit
def _prefetched_copy(src, dst, far):
    simd.prefetch(src, far)  # past the array's end: a hint reads nothing, cannot fault
    simd.prefetch(src, -far)
    simd.prefetch(src, 1)
    simd.store(dst, 0, simd.load(src, 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_prefetch_is_a_hint_that_changes_nothing(dtype, rng):
    src = rng.standard_normal(40).astype(dtype)
    dst = np.zeros(40, dtype)
    _prefetched_copy(src, dst, 1 << 20)
    lanes = simd.WIDTH_BYTES // src.itemsize
    np.testing.assert_array_equal(dst[:lanes], src[1 : 1 + lanes])
    assert not dst[lanes:].any()
    if platform.machine() in ("x86_64", "AMD64"):
        for asm in _prefetched_copy.inspect_asm().values():  # one a dtype so far
            assert asm.count("prefetcht0") == 3


@numba.njit
def _broadcasts(a, out):
    simd.store(out, 0, simd.broadcast(a, 3))
    simd.store(out, simd.lanes(a), simd.splat(a[3], a))


@numba.njit
def _transposed(src, first, stride, count, dst, dst_first, dst_stride):
    simd.transpose(src, first, stride, count, dst, dst_first, dst_stride)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_broadcast_reads_one_value_into_every_lane(dtype, rng):
    a = rng.standard_normal(20).astype(dtype)
    lanes = simd.WIDTH_BYTES // a.itemsize
    out = np.zeros(2 * lanes, dtype)
    _broadcasts(a, out)
    np.testing.assert_array_equal(out, np.full(2 * lanes, a[3]))


@numba.njit
def _shuffled(a, out):
    lanes = simd.lanes(a)
    low, high = simd.load(a, 0), simd.load(a, lanes)
    simd.store(out, 0, simd.deinterleave(low, high, False))
    simd.store(out, lanes, simd.deinterleave(low, high, True))
    simd.store(out, 2 * lanes, simd.weave(low, high, False))
    simd.store(out, 3 * lanes, simd.weave(low, high, True))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_deinterleave_and_weave_are_inverse_shuffles(dtype, rng):
    # deinterleave deals a row of two vectors into its even and odd lanes; weave puts
    # two such phases back in one row
    half = simd.WIDTH_BYTES // np.dtype(dtype).itemsize
    a = rng.standard_normal(2 * half).astype(dtype)
    out = np.zeros(4 * half, dtype)
    _shuffled(a, out)
    np.testing.assert_array_equal(out[: 2 * half], np.concatenate([a[0::2], a[1::2]]))
    woven = out[2 * half :]
    np.testing.assert_array_equal(woven[0::2], a[:half])
    np.testing.assert_array_equal(woven[1::2], a[half:])
    again = np.zeros(4 * half, dtype)
    _shuffled(out[: 2 * half].copy(), again)
    np.testing.assert_array_equal(again[2 * half :], a)  # weave undoes deinterleave


@numba.njit
def _shifted(a, out):
    lanes = simd.lanes(a)
    simd.store(out, 0, simd.shift_in(simd.load(a, 0), simd.load(a, lanes)))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_shift_in_moves_lanes_down_and_takes_the_next_vectors_first(dtype, rng):
    lanes = simd.WIDTH_BYTES // np.dtype(dtype).itemsize
    a = rng.standard_normal(2 * lanes).astype(dtype)
    out = np.zeros(lanes, dtype)
    _shifted(a, out)
    np.testing.assert_array_equal(out, a[1 : lanes + 1])


@numba.njit
def _weave_rows(planes, out, pitch):
    target = strips.flat(out)
    for i in range(out.shape[2]):
        strips.weave_row(target, out, 0, 1, i, planes, 2 * i * pitch, (2 * i + 1) * pitch)


@pytest.mark.parametrize("width", [1, 2, 7, 28, 31, 32, 33, 40, 45, 70])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_weave_row_puts_rows_together(width, dtype, layout, rng):
    # two column phases of (width + 1) // 2 and width // 2 values back in one row:
    # vectors of 2 * lanes values, a last pair that overlaps the one before, an odd
    # row's last value by itself (rows under 2 * lanes value by value); the plain loop
    # on a strided output
    pitch = (width + 1) // 2 + 3
    planes = rng.standard_normal(8 * pitch).astype(dtype)
    full = np.full((1, 2, 4, 2 * width), 9.0, dtype)
    out = full[:, :, :, ::2] if layout == "strided" else np.full((1, 2, 4, width), 9.0, dtype)
    _weave_rows(planes, out, pitch)
    for i in range(4):
        even, odd = planes[2 * i * pitch :], planes[(2 * i + 1) * pitch :]
        np.testing.assert_array_equal(out[0, 1, i, 0::2], even[: (width + 1) // 2])
        np.testing.assert_array_equal(out[0, 1, i, 1::2], odd[: width // 2])
    assert (out[0, 0] == 9.0).all()  # only the row asked for
    if layout == "strided":
        assert (full[:, :, :, 1::2] == 9.0).all()


@numba.njit
def _masked_copy(src, at, dst, dst_at, count):
    simd.store_first(dst, dst_at, simd.load_first(src, at, count), count)


@pytest.mark.parametrize("count", [0, 1, 5, 8, 15, 16, 20])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_masked_load_and_store_touch_only_the_first_lanes(dtype, count, rng):
    src = rng.standard_normal(40).astype(dtype)
    dst = np.full(40, -7.0, dtype)
    _masked_copy(src, 3, dst, 5, count)
    n = min(count, simd.WIDTH_BYTES // src.itemsize)  # at most one vector
    expected = np.full(40, -7.0, dtype)
    expected[5 : 5 + n] = src[3 : 3 + n]
    np.testing.assert_array_equal(dst, expected)
    # a masked vector may end the array: nothing past its lanes is read or written
    end = np.full(40, -7.0, dtype)
    _masked_copy(src, 40 - n, end, 40 - n, n)
    np.testing.assert_array_equal(end[40 - n :], src[40 - n :])


@numba.njit
def _store_parity(src, dst, at, parity, count):
    simd.store_parity(dst, at, simd.load(src, 0), parity, count)


@pytest.mark.parametrize("count", [0, 1, 2, 7, 16, 20])
@pytest.mark.parametrize("parity", [0, 1])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_store_parity_writes_its_lanes_only(dtype, parity, count, rng):
    # the even or the odd lanes below count, nothing else, up to the array's end
    lanes = simd.WIDTH_BYTES // np.dtype(dtype).itemsize
    src = rng.standard_normal(lanes).astype(dtype)
    for at in (3, 40 - min(count, lanes)):
        dst = np.full(40, -7.0, dtype)
        _store_parity(src, dst, at, parity, count)
        expected = np.full(40, -7.0, dtype)
        lanes_written = [m for m in range(min(count, lanes)) if m % 2 == parity]
        expected[[at + m for m in lanes_written]] = src[lanes_written]
        np.testing.assert_array_equal(dst, expected)


@numba.njit
def _store_rows(src, pitch, out, offset, floor):
    target = strips.flat(out)
    for k in range(out.shape[1]):
        for i in range(out.shape[2]):
            store_row(src, (k * out.shape[2] + i) * pitch, target, out, 0, k, i, out.shape[3],
                      offset, floor)


@numba.njit
def _store_run_of_rows(src, at, out, k, i, count, offset, floor):
    store_row(src, at, strips.flat(out), out, 0, k, i, count, offset, floor)


@pytest.mark.parametrize("width", [3, 8, 14])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_run_store_goes_on_across_rows(width, dtype, layout, rng):
    # rows stored as one run (sums on the output's own row pitch): from row i of plane k
    # on, count values; a run shorter than a vector masked, a longer one ending in an
    # overlapping vector; a strided output value by value. Nothing past the run written
    src = rng.standard_normal(4 * 5 * width + 16).astype(dtype)
    for i, count in ((0, 5 * width), (1, 3 * width), (2, 2), (4, width - 1)):
        full = np.full((1, 3, 5, 2 * width), 9.0, dtype)
        out = full[:, :, :, ::2] if layout == "strided" else np.full((1, 3, 5, width), 9.0,
                                                                        dtype)
        count = max(1, count)
        _store_run_of_rows(src, 7, out, 1, i, count, 0.5, 0.0)
        expected = np.full((1, 3, 5, width), 9.0, dtype)
        plane = expected[0, 1].reshape(-1)
        plane[i * width : i * width + count] = np.maximum(src[7 : 7 + count] + dtype(0.5), 0)
        np.testing.assert_array_equal(out, expected)
        if layout == "strided":
            assert (full[:, :, :, 1::2] == 9.0).all()


@numba.njit
def _copy_rows(x, buffer, pitch):
    source = strips.flat(x)
    for c in range(x.shape[1]):
        for i in range(x.shape[2]):
            strips.copy_row(source, x, 0, c, i, buffer, (c * x.shape[2] + i) * pitch)


@pytest.mark.parametrize("width", [5, 8, 16, 20, 28, 32])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_row_store_and_copy_match_numpy(width, dtype, layout, rng):
    # the epilogue's store (vectors, a masked short row or an overlapping last vector;
    # the plain loop on a strided output) and the strips' row copy
    pitch = width + 3
    src = rng.standard_normal(3 * 4 * pitch + 16).astype(dtype)
    src[pitch + 1] = np.nan
    src[2 * pitch] = -np.inf
    full = np.full((1, 3, 4, 2 * width), 9.0, dtype)
    out = full[:, :, :, ::2] if layout == "strided" else np.full((1, 3, 4, width), 9.0, dtype)
    for floor in (0.0, -np.inf):
        _store_rows(src, pitch, out, 0.5, floor)
        rows = np.stack([src[r * pitch : r * pitch + width] for r in range(12)]).reshape(
            1, 3, 4, width)
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(out, np.maximum(rows + dtype(0.5), floor))
    if layout == "strided":
        assert (full[:, :, :, 1::2] == 9.0).all()  # nothing between the strided values
    x = rng.standard_normal((1, 3, 4, 2 * width)).astype(dtype)
    x = x[:, :, :, ::2] if layout == "strided" else np.ascontiguousarray(x[:, :, :, :width])
    buffer = np.full(12 * pitch, 9.0, dtype)
    _copy_rows(x, buffer, pitch)
    copied = buffer.reshape(12, pitch)
    np.testing.assert_array_equal(copied[:, :width], x.reshape(12, width))
    assert (copied[:, width:] == 9.0).all()


@pytest.mark.parametrize("count", [16, 5, 1])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_transpose_turns_rows_into_columns(dtype, count, rng):
    # rows past count read as zeros; nothing outside the lanes x lanes block is written
    lanes = simd.WIDTH_BYTES // np.dtype(dtype).itemsize
    count = min(count, lanes)
    src = rng.standard_normal(3 + 21 * lanes).astype(dtype)
    dst = np.full(5 + 19 * lanes + lanes, np.nan, dtype)
    _transposed(src, 3, 21, count, dst, 5, 19)
    block = np.zeros((lanes, lanes), dtype)
    for r in range(count):
        block[r] = src[3 + 21 * r : 3 + 21 * r + lanes]
    written = np.zeros(dst.size, bool)
    for q in range(lanes):
        np.testing.assert_array_equal(dst[5 + 19 * q : 5 + 19 * q + lanes], block[:, q])
        written[5 + 19 * q : 5 + 19 * q + lanes] = True
    assert np.isnan(dst[~written]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_micro_kernel_is_its_formula(dtype, rng):
    lanes = simd.WIDTH_BYTES // np.dtype(dtype).itemsize
    step = microkernels.BLOCK_P * lanes
    depth, pitch, first, out_pitch = 3, 100, 5, 2 * step + 7
    taps = np.array([0, 1, 11, 23], np.intp)
    source = rng.standard_normal(depth * pitch + step + 30).astype(dtype)
    weights = rng.standard_normal(depth * taps.size * microkernels.BLOCK_K).astype(dtype)
    out = np.full(microkernels.BLOCK_K * out_pitch + step, 7.0, dtype)
    microkernels.weights_x_positions(source, weights, out, first, pitch, depth, taps, out_pitch,
                                     False)
    w = weights.reshape(depth, taps.size, microkernels.BLOCK_K)
    p = np.arange(step)
    for kk in range(microkernels.BLOCK_K):
        expected = sum(w[c, t, kk] * source[c * pitch + taps[t] + first + p]
                       for c in range(depth) for t in range(taps.size))
        got = out[kk * out_pitch + first : kk * out_pitch + first + step]
        tolerance = 1e-5 if dtype == np.float32 else 1e-12  # sums of 12 terms near 1
        np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)
        assert out[kk * out_pitch + first - 1] == 7.0  # nothing before the block


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("count_vectors", [3, 7, 8, 10], ids=lambda v: f"{v}vectors")
def test_micro_kernels_in_passes_go_on_from_their_sums(count_vectors, dtype, rng):
    # weights_x_run over 5 planes in passes of 2 (2, 2, 1), each pass going on from the
    # last's sums (the blocks of three vectors, the pair and the one-vector tail), equals
    # one pass (the same multiply-adds in the same order) and the formula
    lanes = simd.WIDTH_BYTES // np.dtype(dtype).itemsize
    depth, pitch, out_pitch = 5, 12 * lanes, 11 * lanes
    count = count_vectors * lanes - 3
    taps = np.array([0, 1, 2 * lanes + 3], np.intp)
    source = rng.standard_normal(depth * pitch + 4 * lanes).astype(dtype)
    weights = rng.standard_normal(depth * taps.size * microkernels.BLOCK_K).astype(dtype)
    whole, passes = (np.full(microkernels.BLOCK_K * out_pitch, 7.0, dtype) for _ in range(2))
    microkernels.weights_x_run(source, weights, whole, 0, count, pitch, depth, taps, out_pitch,
                               depth)
    microkernels.weights_x_run(source, weights, passes, 0, count, pitch, depth, taps, out_pitch,
                               2)
    sums = whole.reshape(microkernels.BLOCK_K, out_pitch)[:, :count]
    w = weights.reshape(depth, taps.size, microkernels.BLOCK_K)
    p = np.arange(count)
    expected = np.stack([sum(w[c, t, kk] * source[c * pitch + taps[t] + p]
                             for c in range(depth) for t in range(taps.size))
                         for kk in range(microkernels.BLOCK_K)])
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(sums, expected, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(passes.reshape(microkernels.BLOCK_K, out_pitch)[:, :count],
                               sums, rtol=tolerance / 10, atol=tolerance / 10)


def test_reduction_passes_keep_a_blocks_reads_in_the_l1(monkeypatch):
    # channels per pass: a block's cache lines per channel within a quarter of the L1, at
    # least MIN_PASS, in equal passes (256-bit vectors, float32: 24 positions a block,
    # 32 KiB of L1); a 1x1 layer's too (two lines: 64 a pass), but on 512-bit vectors,
    # where its channels go in one pass
    monkeypatch.setattr(blocked, "L1_BYTES", 32 << 10)
    monkeypatch.setattr(blocked.simd, "WIDTH_BYTES", 32)
    blocked.channels_per_pass.cache_clear()
    three = (0, 1, 2)
    rows = tuple(r * 58 + s for r in range(3) for s in three)  # 3x3 on a pitch of 58
    assert blocked.channels_per_pass((rows,), 64, 4) == 16  # 7 lines: 18 a pass, 4 passes
    assert blocked.channels_per_pass((rows,), 18, 4) == 18
    phases = tuple(p * 841 + r * 29 + s for p in range(4) for r in range(2) for s in range(2))
    assert blocked.channels_per_pass((phases,), 64, 4) == 8  # 16 lines: the fewest, 8
    assert blocked.channels_per_pass((phases,), 20, 4) == 7  # 7, 7, 6
    assert blocked.channels_per_pass(((0,),), 256, 4) == 64
    assert blocked.channels_per_pass(((0,),), 100, 4) == 50
    assert blocked.channels_per_pass(((0,), rows), 64, 4) == 16  # the set that reads most
    monkeypatch.setattr(blocked.simd, "WIDTH_BYTES", 64)
    blocked.channels_per_pass.cache_clear()
    assert blocked.channels_per_pass(((0,),), 256, 4) == 256
    blocked.channels_per_pass.cache_clear()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("accumulate", [False, True], ids=["first pass", "next pass"])
@pytest.mark.parametrize("tail", [False, True], ids=["block", "tail"])
def test_micro_kernel_by_filters_is_its_formula(tail, accumulate, dtype, rng):
    # BLOCK_Q (or for a run's last positions TAIL_Q) positions x FILTER_VECTORS vectors of
    # filters, over channels c0 .. c0 + depth (a pass of the reduction), adding to the sums
    # there or not
    lanes = simd.WIDTH_BYTES // np.dtype(dtype).itemsize
    q = microkernels.TAIL_Q if tail else microkernels.BLOCK_Q
    kernel = microkernels.tail_x_filters if tail else microkernels.positions_x_filters
    block = microkernels.FILTER_VECTORS * lanes
    c0, depth, pitch, first, at_out = 1, 3, 100, 2, 5
    taps = np.array([0, 1, 11, 23], np.intp)
    offsets = np.array([9, 9, 0, 3, 40, 41, 42, 50, 51, 52, 60, 70, 71, 1], np.intp)
    source = rng.standard_normal((c0 + depth) * pitch + 100).astype(dtype)
    weights = rng.standard_normal((c0 + depth) * taps.size * block).astype(dtype)
    out = rng.standard_normal(at_out + (q + 1) * block).astype(dtype)
    before = out.copy()
    kernel(source, weights, out, at_out, offsets, first, pitch, c0, depth, taps, accumulate)
    w = weights.reshape(c0 + depth, taps.size, block)
    for p in range(q):
        expected = sum(w[c, t] * source[c * pitch + taps[t] + offsets[first + p]]
                       for c in range(c0, c0 + depth) for t in range(taps.size))
        at = at_out + p * block
        if accumulate:
            expected = expected + before[at : at + block]
        got = out[at : at + block]
        tol = 1e-5 if dtype == np.float32 else 1e-12  # sums of 12 terms of about 1
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)
    assert (out[:at_out] == before[:at_out]).all()
    assert (out[at_out + q * block :] == before[at_out + q * block :]).all()


# --- the blocked direct convolution -------------------------------------------------------

#: (id, input shape, weight shape, kwargs): filter counts that leave partial blocks of 8,
#: planes of several position blocks, groups, dilation, asymmetric padding, one image
#: (filter blocks split over threads) and many, strides (the forward on the input's
#: phases, grad_input on grad_input's phases).
BLOCKED_CASES = [
    ("k4_tiny", (1, 4, 8, 8), (4, 4, 3, 3), dict(padding=1)),
    ("k13_dil", (2, 5, 11, 13), (13, 5, 3, 3), dict(padding=2, dilation=(2, 1))),
    ("k32_n1", (1, 16, 16, 16), (32, 16, 3, 3), dict(padding=1)),
    ("k20_5x5", (3, 6, 12, 12), (20, 6, 5, 5), {}),
    ("groups2", (2, 8, 9, 7), (12, 4, 3, 3), dict(padding=1, groups=2)),
    ("k9_1x1", (2, 7, 10, 9), (9, 7, 1, 1), {}),
    # unpadded 1x1 layers read in place: several images and groups (each task's run starts
    # further into x), the last task on a copy
    ("k16_1x1_n3_g2", (3, 8, 5, 5), (16, 4, 1, 1), dict(groups=2)),
    ("k24_1x1_n4", (4, 16, 9, 7), (24, 16, 1, 1), {}),
    # ... and planes so small that a task's last vector reaches the next images' planes
    ("k16_1x1_g4_2x2", (3, 4, 2, 2), (16, 1, 1, 1), dict(groups=4)),
    # no padding columns, padding rows
    ("k12_3x1", (2, 5, 9, 11), (12, 5, 3, 1), dict(padding=(1, 0))),
    ("asym_2x4", (2, 3, 17, 30), (17, 3, 2, 4), dict(padding=((1, 0), (3, 2)))),
    ("wide_64x64", (2, 8, 64, 64), (16, 8, 3, 3), dict(padding=1)),
    # grad_weight: dilated columns (a run per tap), two blocks of filters
    ("dil_w2", (2, 4, 10, 12), (20, 4, 3, 3), dict(padding=2, dilation=(1, 2))),
    ("k40_n3", (3, 5, 9, 10), (40, 5, 3, 3), dict(padding=1)),
    # grad_weight: blocks of one vector of filters, several per group (grad_weight_vectors)
    ("k48_s2_groups2", (2, 8, 12, 12), (96, 4, 3, 3), dict(stride=2, padding=1, groups=2)),
    # strided: the input split into stride_h * stride_w phases
    ("s2_k32", (2, 16, 16, 16), (32, 16, 3, 3), dict(stride=2, padding=1)),
    ("s23_5x5", (3, 6, 13, 12), (16, 6, 5, 5), dict(stride=(2, 3), padding=2)),
    ("s32_dil", (2, 5, 11, 13), (13, 5, 3, 3), dict(stride=(3, 2), padding=2, dilation=(2, 1))),
    ("s2_groups2", (2, 8, 9, 7), (12, 4, 3, 3), dict(stride=2, padding=1, groups=2)),
    ("s2_7x7", (1, 3, 30, 30), (16, 3, 7, 7), dict(stride=2, padding=3)),
    ("s2_1x1", (2, 16, 15, 17), (32, 16, 1, 1), dict(stride=2)),  # phases without taps
    ("s2_4x4", (2, 8, 16, 16), (8, 8, 4, 4), dict(stride=2, padding=1)),
    ("s33_dil2", (2, 4, 12, 12), (6, 4, 3, 3), dict(stride=3, dilation=2)),
    # stride-2 rows dealt on vectors: full chunks of 32 columns and a masked tail, odd
    # and even left padding, a row shorter than a vector
    ("s2_wide_odd", (1, 3, 9, 71), (8, 3, 3, 3), dict(stride=2, padding=1)),
    ("s2_wide_pad2", (1, 2, 7, 66), (8, 2, 5, 5), dict(stride=2, padding=(0, 2))),
    ("s2_narrow", (2, 3, 6, 5), (8, 3, 3, 3), dict(stride=2, padding=(1, 3))),
    # padding beyond the kernel's reach: grad_input's phases read a slice of grad_output
    ("pad_beyond", (1, 4, 7, 7), (5, 4, 3, 3), dict(padding=3)),
    # grad_input's phases alike (as many taps, one shape), in one call: 4 and 9 phases,
    # dilated taps, odd phase planes
    ("s2_4x4_fused", (2, 16, 14, 18), (8, 16, 4, 4), dict(stride=2, padding=1)),
    ("s3_6x6_fused", (2, 16, 12, 15), (8, 16, 6, 6), dict(stride=3, padding=2)),
    ("s2_dil3_fused", (1, 16, 20, 22), (8, 16, 4, 4), dict(stride=2, padding=3, dilation=3)),
]


def _blocked_case(shape, wshape, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(wshape).astype(dtype)
    b = rng.standard_normal(wshape[0]).astype(dtype)
    return x, w, b


@pytest.fixture(params=["packed in tasks", "by positions on the pitch, packed on one thread",
                        "by filters", "by positions, dense"])
def always_parallel(request, monkeypatch):
    """Small calls run their kernels in parts too (not as one part on this thread), so the cases
    cover the tasks' splits of images, runs and bands on more than one thread; the
    forward's filters packed by parallel tasks, or on the calling thread; its sums in the
    form it chooses, or by positions (on the padded row pitch, or dense), or by filters."""
    monkeypatch.setattr(fastconv.cpu.threads, "SERIAL_MAX_WORK", 0)
    monkeypatch.setattr(blocked, "GRAD_WEIGHT_SERIAL_MAX_WORK", 0)
    monkeypatch.setattr(blocked, "FORWARD_SERIAL_MAX_WORK", 0)
    monkeypatch.setattr(blocked, "PACK_TASKS_MIN_VALUES",
                        1 << 62 if "one thread" in request.param else 0)
    monkeypatch.setattr(blocked, "FORWARD_FORM", {"by filters": "filters"}.get(
        request.param, "positions" if "by positions" in request.param else None))
    monkeypatch.setattr(blocked, "DENSE_FORM", True if "dense" in request.param else
                        False if "pitch" in request.param else None)
    blocked._forward_layout.cache_clear()
    blocked._grad_weight_layout.cache_clear()
    fastconv.clear_plans()
    yield
    blocked._forward_layout.cache_clear()
    blocked._grad_weight_layout.cache_clear()
    fastconv.clear_plans()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape, wshape, kwargs", [c[1:] for c in BLOCKED_CASES],
                         ids=[c[0] for c in BLOCKED_CASES])
def test_blocked_kernel_matches_reference(shape, wshape, kwargs, dtype, rng, always_parallel):
    groups = kwargs.get("groups", 1)
    assert blocked.applies(wshape, kwargs.get("stride", 1), groups)
    x, w, b = _blocked_case(shape, wshape, dtype, rng)
    expected = reference.conv2d(x, w, b, **kwargs)
    for threads in sorted({1, numba.config.NUMBA_NUM_THREADS, 3} & set(
            range(1, numba.config.NUMBA_NUM_THREADS + 1))):
        saved = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            y = fastconv.conv2d(x, w, b, **kwargs, algorithm="direct")
            assert_close(y, expected, dtype)
            g = rng.standard_normal(y.shape).astype(dtype)
            grads = fastconv.conv2d_backward(g, x, w, **kwargs, algorithm="direct")
            assert_grads_close(grads, reference.conv2d_backward(g, x, w, **kwargs), dtype, g)
        finally:
            numba.set_num_threads(saved)


def _direct_matches_reference(shape, wshape, kwargs, dtype, rng) -> None:
    """conv2d and its three gradients by the direct algorithm on a blocked case, against
    the reference."""
    x, w, b = _blocked_case(shape, wshape, dtype, rng)
    expected = reference.conv2d(x, w, b, **kwargs)
    y = fastconv.conv2d(x, w, b, **kwargs, algorithm="direct")
    assert_close(y, expected, dtype)
    g = rng.standard_normal(y.shape).astype(dtype)
    grads = fastconv.conv2d_backward(g, x, w, **kwargs, algorithm="direct")
    assert_grads_close(grads, reference.conv2d_backward(g, x, w, **kwargs), dtype, g)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape, wshape, kwargs", [
    c[1:] for c in BLOCKED_CASES
    if c[0] in ("k40_n3", "s2_k32", "s23_5x5", "s2_4x4_fused", "k24_1x1_n4", "k16_1x1_n3_g2")],
    ids=["k40_n3", "s2_k32", "s23_5x5", "s2_4x4_fused", "k24_1x1_n4", "k16_1x1_n3_g2"])
@pytest.mark.parametrize("dense", [False, True], ids=["pitch", "dense"])
def test_blocked_reduction_in_uneven_passes(shape, wshape, kwargs, dense, dtype, rng,
                                            monkeypatch):
    # the blocked forward's reduction in passes of three channels (the last of one or
    # two), forward and gradients, on the pitch and dense, equal to the reference
    monkeypatch.setattr(blocked, "MIN_PASS", 3)
    monkeypatch.setattr(blocked, "L1_BYTES", 64)
    monkeypatch.setattr(blocked, "FORWARD_FORM", "positions")
    monkeypatch.setattr(blocked, "DENSE_FORM", dense)
    blocked.channels_per_pass.cache_clear()
    blocked._forward_layout.cache_clear()
    fastconv.clear_plans()
    _direct_matches_reference(shape, wshape, kwargs, dtype, rng)
    blocked.channels_per_pass.cache_clear()
    blocked._forward_layout.cache_clear()
    fastconv.clear_plans()


#: conv_transpose2d layers whose phases run in one call of the blocked kernel, or not:
#: (id, input shape, weight shape, kwargs, fused).
FUSED_PHASE_CASES = [
    ("4x4_s2_p1", (2, 24, 7, 9), (24, 16, 4, 4), dict(stride=2, padding=1), True),
    # planes of two heights: a phase apiece
    ("4x4_s2_p1_op1", (2, 24, 7, 9), (24, 16, 4, 4),
     dict(stride=2, padding=1, output_padding=1), False),
    ("6x6_s3_p3", (2, 8, 5, 6), (8, 32, 6, 6), dict(stride=3, padding=3), True),
    ("6x6_s3_p2", (2, 8, 5, 6), (8, 32, 6, 6), dict(stride=3, padding=2), False),
    ("2x2_s2", (1, 16, 8, 8), (16, 16, 2, 2), dict(stride=2), True),
    ("4x4_s2_p3_dil2", (2, 16, 6, 7), (16, 16, 4, 4), dict(stride=2, padding=3, dilation=3),
     True),
    # every phase's taps, but 12 filters: not whole blocks of a vector
    ("4x4_s2_k12", (1, 16, 6, 6), (16, 12, 4, 4), dict(stride=2, padding=1), False),
]


@pytest.mark.parametrize("budget", [1, 3000, None], ids=["rows", "bands", "default"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape, wshape, kwargs, fused", [c[1:] for c in FUSED_PHASE_CASES],
                         ids=[c[0] for c in FUSED_PHASE_CASES])
def test_transposed_phases_in_one_call(shape, wshape, kwargs, fused, dtype, budget, rng,
                                       always_parallel, monkeypatch):
    # conv_transpose2d at a stride runs the phases of its output as one call where they are
    # alike (each phase's filters on their own taps and shift of one padded input) and a
    # call apiece where not; bands of one row to the whole plane, on every split of the
    # tasks, a strided input, with the bias, equal to the reference
    if budget is not None:
        monkeypatch.setattr(fastconv.config, "DIRECT_TILE_BYTES", budget)
    seen = []
    real = blocked._fused_phases_runner
    monkeypatch.setattr(blocked, "_fused_phases_runner",
                        lambda *args: seen.append(args) or real(*args))
    x = rng.standard_normal((shape[0], shape[1], shape[2], 2 * shape[3])).astype(dtype)
    x = x[..., ::2]  # not contiguous
    w = rng.standard_normal(wshape).astype(dtype)
    b = rng.standard_normal(wshape[1]).astype(dtype)
    expected = reference.conv_transpose2d(x, w, b, **kwargs)
    for _ in range(2):  # the plan's first call and a later one
        y = fastconv.conv_transpose2d(x, w, b, **kwargs, algorithm="direct")
        assert_close(y, expected, dtype)
    assert bool(seen) == fused


def test_dense_layout_where_junk_columns_cost(monkeypatch):
    # the dense strips (copies per column shift, no junk columns computed) where they save
    # at least DENSE_MIN_SAVING_PERCENT % of the vectors with enough work per copy and the
    # caches suit them: 3x3 on 28x28 (pitch 30) and 14x14, not 56x56 or layer f (4 %) or
    # few filters or strips the caches do not hold
    assert blocked.dense_pays(28, 28, 30, 16, 64 * 3, True)
    assert blocked.dense_pays(14, 14, 16, 16, 256 * 3, True)
    assert blocked.dense_pays(14, 14, 15, 16, 256 * 9 // 6, True)  # 3x3 s2, 28x28 -> 14x14
    assert not blocked.dense_pays(14, 14, 16, 16, 256 * 3, False)
    assert not blocked.dense_pays(56, 56, 58, 16, 64 * 3, True)
    assert not blocked.dense_pays(28, 28, 29, 16, 128 * 9 // 6, True)  # layer f: 4 % fewer
    assert not blocked.dense_pays(28, 28, 30, 16, 16 * 3, True)
    assert not blocked.dense_pays(28, 28, 28, 16, 64 * 3, True)  # no junk columns
    # the caches: a plane's dense strip within the L2, a block's reads within the L1
    # wherever they are on the pitch (32 KiB and 1 MiB, 256-bit vectors: 24 positions)
    monkeypatch.setattr(blocked, "L1_BYTES", 32 << 10)
    monkeypatch.setattr(blocked, "L2_BYTES", 1 << 20)
    monkeypatch.setattr(blocked.simd, "WIDTH_BYTES", 32)
    fits = functools.partial(blocked.dense_fits, stride=(1, 1), dilation=(1, 1), itemsize=4)
    assert fits(32, 3, 3, out_h=28, out_w=28)  # 301 KB; a block's reads 10 and 28 KB
    assert not fits(128, 3, 3, out_h=28, out_w=28)  # 1.2 MB of strip
    assert fits(256, 3, 3, out_h=7, out_w=7)  # a block's reads 80 and 221 KB: neither fits
    assert not fits(128, 2, 2, out_h=16, out_w=16)  # 25 KB on the pitch, 49 KB dense
    # the layout takes the rule: C32 -> 64 on 28x28 (301 KB of dense strip) dense with a
    # 1 MiB L2, on the pitch with 256 KiB; on 56x56 on the pitch
    for side, l2, dense in ((28, 1 << 20, True), (28, 256 << 10, False), (56, 1 << 20, False)):
        monkeypatch.setattr(blocked, "L2_BYTES", l2)
        blocked._forward_layout.cache_clear()
        packing = blocked._forward_layout(
            (2, 32, side, side), (2, 64, side, side), (64, 32, 3, 3), (1, 1),
            ((1, 1), (1, 1)), (1, 1), 1, 4, 2, fastconv.config.DIRECT_TILE_BYTES,
            fastconv.cpu.strips.band_rows, None, None)[8]
        assert bool(packing & blocked.DENSE) == dense
    blocked._forward_layout.cache_clear()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape, wshape, kwargs", [
    c[1:] for c in BLOCKED_CASES
    if c[0] in ("k40_n3", "s2_k32", "s23_5x5", "s2_4x4_fused", "k24_1x1_n4", "k16_1x1_n3_g2")],
    ids=["k40_n3", "s2_k32", "s23_5x5", "s2_4x4_fused", "k24_1x1_n4", "k16_1x1_n3_g2"])
def test_blocked_reduction_by_filters_in_uneven_passes(shape, wshape, kwargs, dtype, rng,
                                                       monkeypatch):
    # the by-filters form's reduction in passes of a few channels (its packed filters per
    # pass capped: two channels a pass on 256-bit vectors, the last of one), forward and
    # gradients, on one thread and on several (uneven tasks: 40 filters in blocks of 32)
    lanes = simd.WIDTH_BYTES // np.dtype(dtype).itemsize
    block = microkernels.FILTER_VECTORS * lanes
    monkeypatch.setattr(blocked, "FILTERS_PASS_BYTES",
                        2 * wshape[2] * wshape[3] * block * np.dtype(dtype).itemsize)
    monkeypatch.setattr(blocked, "FORWARD_FORM", "filters")
    monkeypatch.setattr(fastconv.cpu.threads, "SERIAL_MAX_WORK", 0)
    monkeypatch.setattr(blocked, "FORWARD_SERIAL_MAX_WORK", 0)
    blocked._forward_layout.cache_clear()
    fastconv.clear_plans()
    if not simd.WIDE:
        assert blocked.filters_per_pass(wshape[2] * wshape[3], 5, block,
                                        np.dtype(dtype).itemsize) == 2  # 2, 2, 1
    _direct_matches_reference(shape, wshape, kwargs, dtype, rng)
    blocked._forward_layout.cache_clear()
    fastconv.clear_plans()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape, wshape, kwargs", [
    ((3, 5, 13, 11), (12, 5, 3, 2), dict(dilation=(2, 1))),
    ((2, 8, 9, 10), (16, 4, 5, 3), dict(groups=2)),
    ((4, 6, 12, 12), (16, 6, 5, 5), {}),
], ids=["dilated", "groups2", "lenet"])
def test_by_filters_reads_unpadded_inputs_in_place(shape, wshape, kwargs, dtype, rng,
                                                   monkeypatch):
    # an unpadded stride-1 layer by filters reads x where it lies (each task's band from
    # its first input row on, in bands of a row or two here, each image's groups further
    # into x; the padded layers of the case table copy their strips as before)
    monkeypatch.setattr(blocked, "FORWARD_FORM", "filters")
    monkeypatch.setattr(fastconv.cpu.threads, "SERIAL_MAX_WORK", 0)
    monkeypatch.setattr(blocked, "FORWARD_SERIAL_MAX_WORK", 0)
    monkeypatch.setattr(fastconv.config, "DIRECT_TILE_BYTES", 1)
    blocked._forward_layout.cache_clear()
    fastconv.clear_plans()
    x, w, b = _blocked_case(shape, wshape, dtype, rng)
    out = reference.conv2d(x, w, b, **kwargs)
    band = blocked._forward_layout(
        x.shape, out.shape, wshape, (1, 1), ((0, 0), (0, 0)), kwargs.get("dilation", (1, 1)),
        kwargs.get("groups", 1), x.itemsize, 2, 1, fastconv.cpu.strips.band_rows, "filters",
        None)[1]
    assert band < out.shape[2]
    assert_close(fastconv.conv2d(x, w, b, **kwargs, algorithm="direct"), out, dtype)
    assert_close(fastconv.conv2d(x, w, b, **kwargs, algorithm="direct", activation="relu"),
                 np.maximum(out, 0), dtype)
    # grad_input of a layer padded by its kernel's reach: the flipped weight's unpadded
    # convolution of grad_output, read in place the same way
    dilation = kwargs.get("dilation", (1, 1))
    full = dict(kwargs, padding=(dilation[0] * (wshape[2] - 1), dilation[1] * (wshape[3] - 1)))
    g = rng.standard_normal(reference.conv2d(x, w, **full).shape).astype(dtype)
    grad_input = fastconv.conv2d_backward(g, x, w, **full, algorithm="direct",
                                          needs_weight_grad=False, needs_bias_grad=False)[0]
    assert_close(grad_input, reference.conv2d_backward(g, x, w, **full)[0], dtype)
    blocked._forward_layout.cache_clear()
    fastconv.clear_plans()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("out_hw, filters, channels, kernel, stride, expected", [
    ((28, 28), 128, 128, 3, 1, "filters"),  # 7 % junk columns on the pitch, 1152 deep
    ((28, 28), 128, 64, 3, 2, "positions"),  # stride 2: 4 % junk columns on the phases
    ((4, 4), 32, 16, 3, 1, "filters"),  # the demo's second layer: a third junk
    ((56, 56), 64, 64, 3, 1, "positions"),  # 3 % junk: the positions form
    ((8, 8), 16, 6, 5, 1, "filters on 512 bits"),  # LeNet: half a block of 32 filters
    ((24, 24), 6, 1, 5, 1, "positions"),  # 6 filters: most of either block padding
    ((7, 7), 512, 512, 3, 1, "filters"),  # a quarter junk, 4608 deep
    ((32, 32), 32, 16, 3, 1, "filters on 256 bits"),  # 6 % junk, but 144 deep
    ((28, 28), 32, 32, 3, 1, "filters on 256 bits"),  # 8 % junk, but 288 deep
    ((14, 14), 96, 96, 3, 1, "filters"),  # 6 % junk, 864 deep
    ((10, 10), 64, 256, 1, 1, "positions"),  # 11 % junk on 512 bits, but one tap
])
def test_by_filters_chooses_the_form_with_more_outputs(out_hw, filters, channels, kernel,
                                                       stride, expected, dtype):
    out_h, out_w = out_hw
    width = (out_w - 1) * stride + kernel
    args = (out_h, out_w, filters, channels * kernel * kernel, kernel, 1,
            np.dtype(dtype).itemsize, stride, width)
    wide = "512" in expected
    want = expected.startswith("filters") and (simd.WIDE == wide or "bits" not in expected)
    if dtype == np.float64 and expected == "filters on 512 bits":
        pytest.skip("float64's 8-lane vectors: a block of 8 filters, not 16")
    assert blocked.by_filters(*args, taps=kernel * kernel) == want, (expected, simd.WIDTH_BITS)
    assert blocked.by_filters(*args, form="positions", taps=kernel * kernel) is False
    assert blocked.by_filters(*args, form="filters", taps=kernel * kernel) is True


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("form", ["positions", "filters"])
def test_blocked_forms_apply_relu_and_keep_non_finite_values(form, dtype, rng, monkeypatch):
    # the fused epilogue on either form: bias, then max(0, .), NaN and Inf where the
    # definition puts them; 20 filters (a partial vector by filters) on 8x8 outputs, into
    # a new array and into out=, a strided view
    monkeypatch.setattr(blocked, "FORWARD_FORM", form)
    blocked._forward_layout.cache_clear()
    fastconv.clear_plans()
    x, w, b = _blocked_case((2, 6, 12, 12), (20, 6, 5, 5), dtype, rng)
    x[0, 1, 3, 4], x[1, 2, 6, 6] = np.nan, np.inf
    expected = np.maximum(reference.conv2d(x, w, b), 0)
    with np.errstate(invalid="ignore"):
        got = fastconv.conv2d(x, w, b, algorithm="direct", activation="relu")
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
        finite = np.isfinite(expected)
        assert_close(np.where(finite, got, 0), np.where(finite, expected, 0), dtype)
        wide = np.full((2, 20, 8, 16), 7, dtype)
        fastconv.conv2d(x, w, b, algorithm="direct", activation="relu", out=wide[:, :, :, ::2])
        np.testing.assert_array_equal(np.isnan(wide[:, :, :, ::2]), np.isnan(expected))
        assert (wide[:, :, :, 1::2] == 7).all()  # nothing written between the view's columns
    blocked._forward_layout.cache_clear()
    fastconv.clear_plans()


@pytest.mark.parametrize("padding", [1, 0])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("images_per_block", [1, 2, 5])
def test_blocked_grad_weight_sums_over_blocks_of_images(images_per_block, stride, padding,
                                                         monkeypatch, rng):
    # GRAD_WEIGHT_BLOCK_BYTES decides how many images are packed at once; the blocks after
    # the first add to the gradient (5 images in blocks of 2: 2 + 2 + 1). Unpadded at a
    # row stride or none, the kernel reads each block's planes of x in place
    x, w, _ = _blocked_case((5, 6, 9, 11), (10, 3, 3, 3), np.float64, rng)
    strides = (stride, 1) if padding == 0 else (stride, stride)
    kwargs = dict(padding=padding, groups=2, stride=strides)
    assert blocked.in_place(((padding, padding),) * 2, strides) == (padding == 0)
    g = rng.standard_normal(fastconv.conv2d(x, w, **kwargs).shape)
    per_image = blocked._grad_weight_layout(x.shape, g.shape, w.shape, strides,
                                            ((padding, padding),) * 2, (1, 1), 2, 8)[7]
    monkeypatch.setattr(blocked, "GRAD_WEIGHT_BLOCK_BYTES", per_image * images_per_block * 8)
    calls = []
    real = blocked._conv2d_grad_weight_blocked

    def spy(*args):
        step, part = args[-3], args[-2]
        if part == 0 and step <= 0:  # once a block (its first loop, or all three)
            calls.append(args[0].shape[0])
        return real(*args)

    spy.threaded = False  # threads.launch calls it as one part, once per loop
    monkeypatch.setattr(blocked, "_conv2d_grad_weight_blocked", spy)
    _, gw, _ = fastconv.conv2d_backward(g, x, w, **kwargs, algorithm="direct")
    assert calls == [min(images_per_block, 5 - first) for first in range(0, 5, images_per_block)]
    _, expected, _ = reference.conv2d_backward(g, x, w, **kwargs)
    assert_close(gw, expected, np.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("bad", [None, np.nan, np.inf], ids=["finite", "nan", "inf"])
@pytest.mark.parametrize("slices", [False, True], ids=["a block per image", "slices"])
def test_blocked_weight_gradient_sums_stored_in_parts(slices, bad, dtype, rng, monkeypatch):
    # the third loop (the slices' sums added, stored into the gradient's rows) run by
    # every thread, then the result scanned apart: the reference's values, and a
    # non-finite input's NaN and Inf where the definition puts them (the exact loops'
    # result); blocks of one image (one slice each), or one block in slices of an image
    monkeypatch.setattr(blocked, "GRAD_WEIGHT_PARALLEL_SUMS_MIN", 0)
    monkeypatch.setattr(blocked, "GRAD_WEIGHT_SERIAL_MAX_WORK", 0)
    x, w, _ = _blocked_case((3, 6, 9, 11), (40, 6, 3, 3), dtype, rng)
    args = (x.shape, (3, 40, 9, 11), w.shape, (1, 1), ((1, 1), (1, 1)), (1, 1), 1, x.itemsize)
    per_image = blocked._grad_weight_layout(*args)[7]
    if slices:  # one block, a slice per image (a cache budget that fits one image's)
        monkeypatch.setattr(fastconv.config, "DIRECT_TILE_BYTES", 1)
        assert blocked._grad_weight_layout(*args, 2, 1, 1 << 30)[8:10] == (3, 3)
    else:  # a block per image (the later ones add to the gradient)
        monkeypatch.setattr(blocked, "GRAD_WEIGHT_BLOCK_BYTES", per_image * x.itemsize)
    blocked._grad_weight_layout.cache_clear()
    fastconv.clear_plans()
    stored = []
    real = blocked.all_finite
    monkeypatch.setattr(blocked, "all_finite", lambda a: stored.append(a.shape) or real(a))
    if bad is not None:
        x[1, 2, 4, 5] = bad
    g = rng.standard_normal(fastconv.conv2d(x, w, padding=1).shape).astype(dtype)
    _, gw, _ = fastconv.conv2d_backward(g, x, w, padding=1, algorithm="direct")
    _, expected, _ = reference.conv2d_backward(g, x, w, padding=1)
    np.testing.assert_array_equal(np.isnan(gw), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(gw), np.isposinf(expected))
    finite = np.isfinite(expected)
    assert_close(gw[finite], expected[finite], dtype)
    # (scanned after each block; with one thread the calling thread stores and scans)
    blocks = 1 if slices else 3
    assert stored == ([w.shape] * blocks if fastconv.cpu.threads.count() > 1 else [])
    blocked._grad_weight_layout.cache_clear()
    fastconv.clear_plans()


@pytest.mark.parametrize("per_group, lanes, wide, narrow", [
    (8, 16, 1, 1), (16, 16, 1, 1), (20, 16, 2, 2), (32, 16, 2, 2), (40, 16, 1, 2),
    (48, 16, 1, 2), (64, 16, 2, 2), (80, 16, 1, 2), (96, 16, 2, 2), (20, 8, 1, 2),
    (24, 8, 1, 2), (32, 8, 2, 2), (48, 8, 2, 2), (8, 8, 1, 1)])
def test_weight_gradient_blocks_of_two_vectors_where_they_pad_no_more(per_group, lanes, wide,
                                                                       narrow, monkeypatch):
    # on 512-bit vectors; on 256-bit ones two vectors for more than one vector of filters
    for is_wide, vectors in ((True, wide), (False, narrow)):
        monkeypatch.setattr(blocked.simd, "WIDE", is_wide)
        assert blocked.grad_weight_vectors(per_group, lanes) == vectors


def test_blocked_kernel_needs_four_filters_per_group():
    w = np.empty((8, 3, 3, 3))
    assert blocked.applies(w.shape, (1, 1), 1)
    assert blocked.applies(w.shape, (2, 1), 1)
    assert not blocked.applies(w.shape, (1, 1), 4)  # 2 filters per group: mostly padding
    assert not blocked.applies((3, 1, 3, 3), (1, 1), 1)


# --- bounds checks and another CPU target, in fresh processes ------------------------------

_OUT_OF_BOUNDS = """
import numba, numpy as np
from fastconv.cpu import simd

@numba.njit
def read(a, i):
    simd.store(a, 0, simd.load(a, i))

@numba.njit
def hint(a, i):
    simd.prefetch(a, i)

@numba.njit
def spread(a, i):
    simd.store(a, 0, simd.broadcast(a, i))

@numba.njit
def first(a, i, n):
    simd.store_first(a, 0, simd.load_first(a, i, n), n)

n = simd.WIDTH_BYTES // 4  # the lanes of a vector: the array is four values longer
a = np.zeros(n + 4, np.float32)
read(a, 4)
for bad in (5, -1):
    try:
        read(a, bad)
    except IndexError as error:
        print("IndexError", error)
first(a, n + 1, 3)  # a masked vector that ends the array
for i, count in ((n + 2, 3), (-1, 2)):
    try:
        first(a, i, count)
    except IndexError as error:
        print("IndexError", error)
hint(a, n + 100)  # a prefetch is never checked: it cannot fault
hint(a, -100)
spread(a, n + 3)
for bad in (n + 4, -1):
    try:
        spread(a, bad)
    except IndexError as error:
        print("IndexError", error)
"""


def test_bounds_checking_catches_a_vector_past_the_end(tmp_path):
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", _OUT_OF_BOUNDS], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("IndexError simd vector outside the array") == 4, result.stdout
    assert result.stdout.count("IndexError simd broadcast outside the array") == 2, result.stdout


_ANOTHER_TARGET = """
import numpy as np, fastconv
from fastconv import reference
rng = np.random.default_rng(0)
worst = 0.0


def error(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


for shape, wshape, padding, stride in [((2, 6, 12, 12), (20, 6, 5, 5), 0, 1),
                                       ((1, 16, 16, 16), (32, 16, 3, 3), 1, 1),
                                       ((1, 32, 14, 14), (64, 32, 3, 3), 1, 1),  # dense
                                       ((1, 16, 16, 16), (32, 16, 3, 3), 1, 2),
                                       ((1, 3, 9, 71), (8, 3, 3, 3), 1, 2)]:
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal(shape).astype(dtype)
        w = rng.standard_normal(wshape).astype(dtype)
        y = fastconv.conv2d(x, w, padding=padding, stride=stride, algorithm="direct")
        ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=padding,
                               stride=stride)
        worst = max(worst, error(y, ref))
        # the gradients: grad_weight's broadcast kernel and its transposing shuffles
        g = rng.standard_normal(y.shape).astype(dtype)
        grads = fastconv.conv2d_backward(g, x, w, padding=padding, stride=stride,
                                         algorithm="direct")
        refs = reference.conv2d_backward(g.astype(np.float64), x.astype(np.float64),
                                         w.astype(np.float64), padding=padding, stride=stride)
        for got, want in zip(grads, refs):
            worst = max(worst, error(got, want))
# conv_transpose2d's phases in one call, stored into their columns by parity
for dtype in (np.float32, np.float64):
    x = rng.standard_normal((2, 16, 6, 7)).astype(dtype)
    w = rng.standard_normal((16, 16, 4, 4)).astype(dtype)
    y = fastconv.conv_transpose2d(x, w, stride=2, padding=1, algorithm="direct")
    ref = reference.conv_transpose2d(x.astype(np.float64), w.astype(np.float64), stride=2,
                                     padding=1)
    worst = max(worst, error(y, ref))
# Winograd's transforms on vectors (a tile count that leaves a tail), and its gradients
for dtype in (np.float32, np.float64):
    x = rng.standard_normal((2, 16, 13, 22)).astype(dtype)
    w = rng.standard_normal((16, 16, 3, 3)).astype(dtype)
    y = fastconv.conv2d(x, w, padding=1, algorithm="winograd")
    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
    worst = max(worst, error(y, ref))
    g = rng.standard_normal(y.shape).astype(dtype)
    grads = fastconv.conv2d_backward(g, x, w, padding=1, algorithm="winograd",
                                     needs_bias_grad=False)
    refs = reference.conv2d_backward(g.astype(np.float64), x.astype(np.float64),
                                     w.astype(np.float64), padding=1)
    for got, want in zip(grads[:2], refs[:2]):
        worst = max(worst, error(got, want))
# Winograd at stride 2 on the phases: the ten-phase deal of rows of 9 and of 42 tiles
for dtype in (np.float32, np.float64):
    for wshape, width in [((12, 8, 4, 4), 70), ((12, 8, 3, 3), 166)]:
        x = rng.standard_normal((2, 8, 21, width)).astype(dtype)
        w = rng.standard_normal(wshape).astype(dtype)
        y = fastconv.conv2d(x, w, padding=1, stride=2, algorithm="winograd")
        ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1, stride=2)
        worst = max(worst, error(y, ref))
# Winograd F(2x2, 5x5): the pair deal of rows of 7 and of 35 tiles, and its grad_input
for dtype in (np.float32, np.float64):
    for n, width in [(5, 14), (2, 70)]:
        x = rng.standard_normal((n, 8, 14, width)).astype(dtype)
        w = rng.standard_normal((12, 8, 5, 5)).astype(dtype)
        y = fastconv.conv2d(x, w, padding=2, algorithm="winograd")
        ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=2)
        worst = max(worst, error(y, ref))
        g = rng.standard_normal(y.shape).astype(dtype)
        got = fastconv.conv2d_backward(g, x, w, padding=2, algorithm="winograd",
                                       needs_weight_grad=False, needs_bias_grad=False)[0]
        want = reference.conv2d_backward(g.astype(np.float64), x.astype(np.float64),
                                         w.astype(np.float64), padding=2)[0]
        worst = max(worst, error(got, want))
# the one-pass depthwise kernels (3x3 and 5x5, a vector of tail): on whole planes where
# the padding keeps the size (and the weight gradient there), on bands where it does not
for wshape, padding in [((6, 1, 3, 3), 1), ((6, 1, 5, 5), 2), ((6, 1, 3, 3), 0),
                        ((6, 1, 5, 5), 0)]:
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((2, 6, 13, 19)).astype(dtype)
        w = rng.standard_normal(wshape).astype(dtype)
        y = fastconv.conv2d(x, w, padding=padding, groups=6, algorithm="direct")
        ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=padding,
                               groups=6)
        worst = max(worst, error(y, ref))
        g = rng.standard_normal(y.shape).astype(dtype)
        got = fastconv.conv2d_backward(g, x, w, padding=padding, groups=6, algorithm="direct",
                                       needs_input_grad=False, needs_bias_grad=False)[1]
        want = reference.conv2d_backward(g.astype(np.float64), x.astype(np.float64),
                                         w.astype(np.float64), padding=padding, groups=6)[1]
        worst = max(worst, error(got, want))
# their grad_input at stride 2, phase by phase (two filters per group: sums added; rows
# of 19 woven on vectors with a tail)
for dtype in (np.float32, np.float64):
    x = rng.standard_normal((2, 6, 13, 19)).astype(dtype)
    w = rng.standard_normal((12, 1, 5, 5)).astype(dtype)
    g = rng.standard_normal(reference.conv2d(x, w, padding=2, stride=2, groups=6).shape)
    got = fastconv.conv2d_backward(g.astype(dtype), x, w, padding=2, stride=2, groups=6,
                                   algorithm="direct", needs_weight_grad=False,
                                   needs_bias_grad=False)[0]
    want = reference.conv2d_backward(g, x.astype(np.float64), w.astype(np.float64),
                                     padding=2, stride=2, groups=6)[0]
    worst = max(worst, error(got, want))
# the weight gradient's dot products for few taps (rows of 35 and 69 positions: whole
# vectors and a masked tail, at stride 2 on the rows dealt into their phases)
from fastconv.cpu import fewtaps
for stride in (1, 2):
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((2, 3, 9, 69)).astype(dtype)
        w = np.zeros((6, 3, 3, 3), dtype)
        g = rng.standard_normal(reference.conv2d(x, w, padding=1, stride=stride).shape)
        got = np.zeros_like(w)
        fewtaps.conv2d_grad_weight_few_taps(x, g.astype(dtype), got, (stride, stride),
                                            ((1, 1), (1, 1)), (1, 1))
        want = reference.conv2d_backward(g, x.astype(np.float64), w.astype(np.float64),
                                         padding=1, stride=stride)[1]
        worst = max(worst, error(got, want))
print(worst)
"""


def _x86() -> bool:
    return bool(numba.config.CPU_NAME) or os.uname().machine in ("x86_64", "AMD64")


def _another_target(cpu: str):
    def make(scratch: Path) -> background.Command | None:
        if not _x86():
            return None
        env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES="",
                   NUMBA_CACHE_DIR=str(scratch), FASTCONV_CACHE="0")
        return background.Command([sys.executable, "-c", _ANOTHER_TARGET], env)
    return background.command(f"cpu-{cpu}")(make)


_TARGETS = ["haswell", "x86-64"]
for _cpu in _TARGETS:
    _another_target(_cpu)


@pytest.mark.parametrize("cpu", [pytest.param(cpu, marks=pytest.mark.background(f"cpu-{cpu}"))
                                 for cpu in _TARGETS])
def test_simd_kernels_on_a_cpu_without_avx512(cpu):
    # compiled for that target (no AVX-512: 256-bit vectors, the micro-kernels' halves),
    # LLVM splitting the vectors into SSE2 registers for x86-64: the same results,
    # forward and gradients, as this machine gives (a fresh process compiling everything
    # for that target, started beside the suite)
    if not _x86():
        pytest.skip("an x86 target name")
    result = background.wait(f"cpu-{cpu}", timeout=1500)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 1e-5, result.stdout


#: The vector width this machine does not build for by default.
_OTHER_BITS = 768 - simd.WIDTH_BITS


@background.command("simd-bits-other")
def _other_width(scratch: Path) -> background.Command:
    env = dict(os.environ, FASTCONV_SIMD_BITS=str(_OTHER_BITS), NUMBA_CACHE_DIR=str(scratch),
               FASTCONV_CACHE="0")
    return background.Command([sys.executable, "-c", _ANOTHER_TARGET], env)


@pytest.mark.background("simd-bits-other")
def test_simd_kernels_at_the_other_vector_width():
    # the width this CPU does not get by default, forced (FASTCONV_SIMD_BITS): 512-bit
    # vectors and the blocks of 24 sums on an AVX2 CPU (LLVM splits each vector in two),
    # or 256-bit vectors and the blocks' halves on an AVX-512 one: the same results
    result = background.wait("simd-bits-other", timeout=1500)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 1e-5, result.stdout
