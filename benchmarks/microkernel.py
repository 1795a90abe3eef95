"""The blocked micro-kernels' own speed from L1, against one core's multiply-add peak.

    python benchmarks/microkernel.py [--seconds 0.5]

Times, on the calling thread (one core), float32:

- peak: a loop of 12 independent vector fused multiply-adds on registers (no memory),
  the most this core issues;
- weights_x_positions: one call of the forward micro-kernel (8 filters x 3 vectors of
  positions, 48 in float32 on 512-bit vectors, 24 on 256-bit ones)
  over 32 channels x 9 taps of a 3x3 layer's strip, all in L1 (about 28 KB);
- weights_x_pair: its two-vector tail (8 filters x 2 vectors), same strip;
- weights_x_vector: its one-vector tail (8 filters x 1 vector), same strip;
- positions_x_filters: the forward by filters (outputs of the 8x8 plane x vectors of
  filters: 12 x one vector on 512-bit vectors, 3 x four on 256-bit ones), same strip;
- taps_x_filters: grad_weight's micro-kernel (12 taps x 2 vectors of filters) over 4
  images of an 8x8 plane (padded to 10x10);
- taps_x_vector: its one-vector form (12 taps x 1 vector of filters), same images.

The vectors are the width fastconv builds for (``FASTCONV_SIMD_BITS``; by default 512
bits on AVX-512, 256 elsewhere).

Prints GFLOP/s (2 flops per multiply-add per lane) and the fraction of the peak.
Each timed call runs the micro-kernel 1000 times from compiled code, so Python's call
into Numba stays out of the rates; compilation too (each runs once before it is timed).
"""

from __future__ import annotations

import argparse
import functools
import time

import numba
import numpy as np

from fastconv.cpu import microkernels, simd


@numba.njit(fastmath=True)
def _peak(like, steps):
    """12 chains of fused multiply-adds on registers: 12 * lanes * 2 flops per step (12
    chains cover the multiply-add's latency on both units, and fit in AVX2's 16
    registers as in AVX-512's 32)."""
    v = simd.splat(1.0000001, like)
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = simd.zeros(like)
    b0 = b1 = b2 = b3 = simd.zeros(like)
    for _ in range(steps):
        a0, a1, a2, a3 = (simd.fma(v, a0, v), simd.fma(v, a1, v), simd.fma(v, a2, v),
                          simd.fma(v, a3, v))
        a4, a5, a6, a7 = (simd.fma(v, a4, v), simd.fma(v, a5, v), simd.fma(v, a6, v),
                          simd.fma(v, a7, v))
        b0, b1, b2, b3 = (simd.fma(v, b0, v), simd.fma(v, b1, v), simd.fma(v, b2, v),
                          simd.fma(v, b3, v))
    total = simd.add(simd.add(simd.add(a0, a1), simd.add(a2, a3)), simd.add(a4, a5))
    for q in (a6, a7, b0, b1, b2, b3):
        total = simd.add(total, q)
    simd.store(like, 0, total)


@numba.njit
def _forward(strip, weights, sums, pitch, depth, taps, reps):
    for _ in range(reps):
        microkernels.weights_x_positions(strip, weights, sums, 0, pitch, depth, taps, 96, False)


@numba.njit
def _pair(strip, weights, sums, pitch, depth, taps, reps):
    for _ in range(reps):
        microkernels.weights_x_pair(strip, weights, sums, 0, pitch, depth, taps, 96, False)


@numba.njit
def _tail(strip, weights, sums, pitch, depth, taps, reps):
    for _ in range(reps):
        microkernels.weights_x_vector(strip, weights, sums, 0, pitch, depth, taps, 96, False)


@numba.njit
def _by_filters(strip, weights, sums, offsets, pitch, depth, taps, reps):
    for _ in range(reps):
        microkernels.positions_x_filters(strip, weights, sums, 0, offsets, 0, pitch, 0, depth,
                                         taps, False)


@numba.njit
def _grad_weight(source, grads, out, taps, images, source_image, step, reps):
    for _ in range(reps):
        microkernels.taps_x_filters(source, grads, out, taps, 0, images, source_image, 8, 8,
                                    10, 0, 64 * step, step)


@numba.njit
def _grad_weight_vector(source, grads, out, taps, images, source_image, step, reps):
    for _ in range(reps):
        microkernels.taps_x_vector(source, grads, out, taps, 0, images, source_image, 8, 8,
                                   10, 0, 64 * step, step)


def _rate(call, flops: float, seconds: float) -> float:
    """GFLOP/s of ``call`` (``flops`` each), best of five runs of ``seconds`` / 5."""
    call()
    best = float("inf")
    for _ in range(5):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            call()
            count += 1
        best = min(best, (time.perf_counter() - start) / count)
    return flops / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    lanes = simd.WIDTH_BYTES // 4
    scratch = np.zeros(lanes, np.float32)
    steps = 200_000
    peak = _rate(lambda: _peak(scratch, steps), steps * 12 * lanes * 2.0, args.seconds)

    depth, pitch = 32, 10 * 10 + 48  # an 8x8 plane padded to 10x10, and the block's overrun
    taps = np.array([r * 10 + s for r in range(3) for s in range(3)], np.intp)
    strip = rng.standard_normal(depth * pitch + 64).astype(np.float32)
    weights = rng.standard_normal(depth * taps.size * 8).astype(np.float32)
    sums = np.zeros(8 * 96, np.float32)
    per_step = depth * taps.size * 8 * 2.0
    reps = 1000  # calls per timed call: Python's call into Numba stays out of the rate
    forward = _rate(lambda: _forward(strip, weights, sums, pitch, depth, taps, reps),
                    reps * per_step * 3 * lanes, args.seconds)
    pair = _rate(lambda: _pair(strip, weights, sums, pitch, depth, taps, reps),
                 reps * per_step * 2 * lanes, args.seconds)
    tail = _rate(lambda: _tail(strip, weights, sums, pitch, depth, taps, reps),
                 reps * per_step * lanes, args.seconds)
    block = microkernels.filters_block(np.dtype(np.float32).itemsize)
    weights = rng.standard_normal(depth * taps.size * block).astype(np.float32)
    offsets = np.array([q // 8 * 10 + q % 8 for q in range(12)], np.intp)
    by_filters = _rate(lambda: _by_filters(strip, weights, sums, offsets, pitch, depth, taps,
                                           reps),
                       reps * depth * taps.size * block * 2.0 * microkernels.BLOCK_Q,
                       args.seconds)

    images, source_image = 4, 10 * 10 + lanes
    source = rng.standard_normal(images * source_image + 64).astype(np.float32)
    # a 3x3 filter's 9 taps, and 3 of the next channel's
    taps = np.array([r * 10 + s for r in range(3) for s in range(3)] + [100, 101, 102], np.intp)
    rates = []
    for function, vectors in ((_grad_weight, 2), (_grad_weight_vector, 1)):
        step = vectors * lanes
        grads = rng.standard_normal(images * 64 * step).astype(np.float32)
        out = np.zeros(12 * step, np.float32)
        call = functools.partial(function, source, grads, out, taps, images, source_image,
                                 step, reps // 10)
        rates.append(_rate(call,
                           reps // 10 * images * 64 * 12 * step * 2.0, args.seconds))
    print(f"one core, float32, {simd.WIDTH_BITS}-bit vectors ({lanes} lanes), "
          f"numba {numba.__version__}, LLVM CPU {numba.config.CPU_NAME or 'host'}")
    print(f"{'kernel':<22}{'GFLOP/s':>10}{'of peak':>10}")
    for name, rate in [("peak (FMA loop)", peak), ("weights_x_positions", forward),
                       ("weights_x_pair", pair), ("weights_x_vector", tail),
                       ("positions_x_filters", by_filters),
                       ("taps_x_filters", rates[0]), ("taps_x_vector", rates[1])]:
        print(f"{name:<22}{rate:>10.1f}{rate / peak:>10.0%}")


if __name__ == "__main__":
    main()
