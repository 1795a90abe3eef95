"""The CPU kernels' tiling paths: several tiles per image of unequal heights, several tiles of
both heights in one thread's chunk, blocks of output channels of unequal sizes, and 1, 2
and 3 threads, for every fast algorithm of every convolution op and gradient.

The default tile budgets give one tile per image on the small problems of the case table,
so those paths are forced here through :mod:`fastconv.config`: a byte budget of 1 makes
the column minimum (``IM2COL_MIN_COLUMNS``, ``WINOGRAD_MIN_TILES``) set the tile height,
and :func:`forced_tiles` sets that minimum from the row pitch each kernel's host wrapper
passes to its tiling function, recording the tiling the wrapper then uses; every test
asserts that the tiling really was unequal (:func:`assert_tiles_mixed`), so it cannot
silently stop covering the path.

Every result is compared with :mod:`fastconv.reference` and with PyTorch, in float64.
``test_thread_counts_agree`` runs the same matrix in subprocesses with 1 and 3 Numba threads
(this machine's default is its core count); ``test_bounds_checked`` reruns the in-process
tests and a few of test_conv2d.py and test_pool.py with ``NUMBA_BOUNDSCHECK=1``, so an
out-of-bounds index in a kernel fails a test.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import zlib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

import fastconv
from fastconv import config, dispatch, reference, shapes
from tests import background
from tests.cases import sum_tolerance, tolerance

ROOT = Path(__file__).resolve().parent.parent

#: im2col tile and direct band height, in rows, and Winograd block height, in 4-row tile rows.
TILE_ROWS = 3
WINOGRAD_ROWS = 2
#: Output channels per direct task: the cases' K/groups and C/groups are not multiples.
DIRECT_BLOCK_K = 3


class PathCase(NamedTuple):
    """A conv2d problem: input ``(n, c, h, w)``, weight ``(k, c // groups, r, s)``. The
    transposed ops run on the same geometry: conv_transpose2d of a conv2d output-sized
    input with the same weight, with ``output_size=(h, w)``."""

    id: str
    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def kwargs(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)

    @property
    def out_size(self) -> tuple[int, int]:
        return tuple(shapes.output_length(n, k, s, p, d) for n, k, s, p, d in zip(
            (self.h, self.w), (self.r, self.s), self.stride, self.padding, self.dilation,
            strict=True))


def pad(p: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return (p, p), (p, p)


P = PathCase
CASES = [
    P("3x3_p1", 3, 4, 17, 11, 5, 3, 3, padding=pad(1)),
    P("3x3_p2_groups2", 3, 4, 17, 10, 10, 3, 3, padding=pad(2), groups=2),
    P("3x3_s2_p1", 3, 5, 20, 12, 4, 3, 3, stride=(2, 2), padding=pad(1)),
    P("4x4_s2_p1", 3, 5, 20, 14, 7, 4, 4, stride=(2, 2), padding=pad(1)),
    P("3x3_s21_asym", 2, 4, 14, 11, 5, 3, 3, stride=(2, 1), padding=((0, 2), (1, 0))),
    P("3x3_dil2_groups2", 2, 8, 13, 12, 10, 3, 3, padding=pad(2), dilation=(2, 2), groups=2),
    P("5x5_p2", 3, 4, 14, 13, 5, 5, 5, padding=pad(2)),
    P("5x5_s2_depthwise_x2", 2, 4, 14, 13, 8, 5, 5, stride=(2, 2), padding=pad(2), groups=4),
    P("1x1", 3, 5, 10, 9, 4, 1, 1),
    P("1x1_s2", 2, 4, 13, 10, 5, 1, 1, stride=(2, 2)),
    P("1x1_s32_p1_dil2", 3, 5, 22, 13, 7, 1, 1, stride=(3, 2), padding=((1, 0), (1, 2)),
      dilation=(2, 2)),
]
CASE_IDS = [case.id for case in CASES]

#: Each public op, the registry op whose kernels compute it, and which result it is.
OPS = {
    "conv2d": "conv2d",
    "conv2d_grad_input": "conv2d_grad_input",
    "conv2d_grad_weight": "conv2d_grad_weight",
    "conv2d_grad_bias": "conv2d_grad_bias",
    "conv_transpose2d": "conv2d_grad_input",
    "conv_transpose2d_grad_input": "conv2d",
    "conv_transpose2d_grad_weight": "conv2d_grad_weight",
    "conv_transpose2d_grad_bias": "conv2d_grad_bias",
}
GRADIENTS = ("grad_input", "grad_weight", "grad_bias")


def algorithms(op: str, case: PathCase) -> list[str]:
    """The fast algorithms (neither "auto" nor "reference") that compute ``op`` on ``case``."""
    kernel_op = OPS[op]
    # a transposed op has the geometry of its conv2d: the same weight array and arguments
    problem = dict(weight_shape=(case.k, case.c // case.groups, case.r, case.s),
                   stride=case.stride, padding=case.padding, dilation=case.dilation,
                   groups=case.groups)
    return [a for a in fastconv.available_algorithms(kernel_op) if a not in ("auto", "reference")
            and dispatch.unsupported_reason(kernel_op, "cpu", a, **problem) is None]


MATRIX = [(op, algorithm, case) for case in CASES for op in OPS
          for algorithm in algorithms(op, case)]


@cache
def inputs(case: PathCase) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, w, gy)``, uniform in [-1, 1], the same in every process: the conv2d input, the
    weight, and an array of the conv2d output's shape (grad_output, or the transposed
    convolution's input); ``x`` doubles as the transposed convolution's grad_output."""
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    x = rng.uniform(-1, 1, (case.n, case.c, case.h, case.w))
    w = rng.uniform(-1, 1, (case.k, case.c // case.groups, case.r, case.s))
    gy = rng.uniform(-1, 1, (case.n, case.k, *case.out_size))
    return x, w, gy


def run(op: str, algorithm: str, case: PathCase) -> np.ndarray:
    """One result of ``op`` on ``case`` by ``algorithm``, through the public functions."""
    x, w, gy = inputs(case)
    if op == "conv2d":
        return fastconv.conv2d(x, w, **case.kwargs, algorithm=algorithm)
    if op == "conv_transpose2d":
        return fastconv.conv_transpose2d(gy, w, **case.kwargs, output_size=(case.h, case.w),
                                         algorithm=algorithm)
    wanted = next(i for i, name in enumerate(GRADIENTS) if op.endswith(name))
    needs = {f"needs_{name[5:]}_grad": i == wanted for i, name in enumerate(GRADIENTS)}
    if op.startswith("conv2d_"):
        result = fastconv.conv2d_backward(gy, x, w, **case.kwargs, **needs, algorithm=algorithm)
    else:
        result = fastconv.conv_transpose2d_backward(x, gy, w, **case.kwargs,
                                                    output_size=(case.h, case.w), **needs,
                                                    algorithm=algorithm)
    assert [r is None for r in result] == [i != wanted for i in range(3)]
    return result[wanted]


@cache
def expected(case: PathCase) -> dict[str, np.ndarray]:
    """Every op's result by :mod:`fastconv.reference`."""
    x, w, gy = inputs(case)
    kw = case.kwargs
    results = {"conv2d": reference.conv2d(x, w, **kw),
               "conv_transpose2d": reference.conv_transpose2d(
                   gy, w, stride=case.stride, padding=case.padding, groups=case.groups,
                   dilation=case.dilation, output_size=(case.h, case.w))}
    grads = reference.conv2d_backward(gy, x, w, **kw)
    transposed = reference.conv_transpose2d_backward(
        x, gy, w, stride=case.stride, padding=case.padding, groups=case.groups,
        dilation=case.dilation, output_size=(case.h, case.w))
    for name, a, b in zip(GRADIENTS, grads, transposed, strict=True):
        results["conv2d_" + name] = a
        results["conv_transpose2d_" + name] = b
    return results


@cache
def torch_results(case: PathCase) -> dict[str, np.ndarray]:
    """Every op's result by PyTorch's autograd: conv2d on the explicitly padded input, and
    conv_transpose2d where its padding is symmetric (PyTorch has no other)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w, gy = (torch.from_numpy(a) for a in inputs(case))
    (top, bottom), (left, right) = case.padding
    results = {}
    tx = torch.nn.functional.pad(x, (left, right, top, bottom)).requires_grad_()
    tw = w.clone().requires_grad_()
    y = F.conv2d(tx, tw, stride=case.stride, dilation=case.dilation, groups=case.groups)
    y.backward(gy)
    results["conv2d"] = y.detach().numpy()
    results["conv2d_grad_input"] = tx.grad[..., top : top + case.h, left : left + case.w].numpy()
    results["conv2d_grad_weight"] = tw.grad.numpy()
    results["conv2d_grad_bias"] = gy.sum((0, 2, 3)).numpy()
    if top == bottom and left == right:
        tu, tw = gy.clone().requires_grad_(), w.clone().requires_grad_()
        smallest = [(n - 1) * s - 2 * p + d * (k - 1) + 1 for n, s, p, d, k in zip(
            case.out_size, case.stride, (top, left), case.dilation, (case.r, case.s),
            strict=True)]
        z = F.conv_transpose2d(tu, tw, stride=case.stride, padding=(top, left),
                               output_padding=(case.h - smallest[0], case.w - smallest[1]),
                               groups=case.groups, dilation=case.dilation)
        z.backward(x)
        results["conv_transpose2d"] = z.detach().numpy()
        results["conv_transpose2d_grad_input"] = tu.grad.numpy()
        results["conv_transpose2d_grad_weight"] = tw.grad.numpy()
        results["conv_transpose2d_grad_bias"] = x.sum((0, 2, 3)).numpy()
    return results


def assert_matches(actual: np.ndarray, oracle: np.ndarray, op: str, case: PathCase,
                   what: str) -> None:
    """float64 tolerances of tests/cases.py: a weight or bias gradient sums one term per
    image and output position."""
    assert actual.shape == oracle.shape and actual.dtype == np.float64, what
    terms = case.n * max(case.h * case.w, int(np.prod(case.out_size)))
    tol = (sum_tolerance(np.float64, terms) if op.endswith(("weight", "bias"))
           else tolerance(np.float64))
    np.testing.assert_allclose(actual, oracle, **tol, err_msg=f"{op} {case.id}: {what}")


# --- forcing and recording the tiling -------------------------------------------------------


class Tiling(NamedTuple):
    """What one host wrapper used: ``tasks[t]`` is the number of output rows task ``t``
    computes (im2col: output rows; Winograd: tile rows of 4 output rows), in the order the
    kernel hands out tasks, ``chunks`` the number of threads' chunks that split them, and
    ``images_per_task`` the images side by side in each im2col task. A col2im task (the
    wrapper ``conv2d_grad_input_im2col``) is one image and group with all its tiles; its
    ``tasks`` are the tile heights of one image."""

    wrapper: str
    tasks: tuple[int, ...]
    chunks: int
    images_per_task: tuple[int, ...] = ()
    #: tasks of each chunk where the kernel hands them out so (the Winograd forwards:
    #: each chunk an equal share of the tile rows in blocks); else :func:`chunk_ranges`
    per_chunk: tuple[int, ...] = ()


def chunk_ranges(n_tasks: int, n_chunks: int) -> list[range]:
    """The tasks of each chunk, as the kernels split them."""
    return [range(c * n_tasks // n_chunks, (c + 1) * n_tasks // n_chunks) for c in range(n_chunks)]


@contextlib.contextmanager
def forced_tiles(groups: int, *, images: int | None = None) -> Iterator[list[Tiling]]:
    """Small tiles through the config: im2col tiles of TILE_ROWS output rows (or, with
    ``images``, whole images ``images`` at a time), Winograd blocks of WINOGRAD_ROWS tile
    rows, direct tasks of DIRECT_BLOCK_K output channels and (where the direct kernels
    split planes into bands of rows, ``strips.band_rows``) bands of TILE_ROWS rows. Yields
    the list of :class:`Tiling` that the host wrappers used, as they call them."""
    from fastconv.cpu import im2col, strips, winograd

    log: list[Tiling] = []
    real_tiling, real_rows_per_block = im2col.tiling, winograd.block_rows

    def tiling(depth, per_group, n_img, out_h, pitch, item, n_threads, plain_gemm):
        wrapper = sys._getframe(1).f_code.co_name
        columns = (images - 1) * out_h * pitch if images else (TILE_ROWS - 1) * pitch
        patch.setattr(config, "IM2COL_MIN_COLUMNS", columns + 1)
        tile_rows, tile_images = real_tiling(depth, per_group, n_img, out_h, pitch, item,
                                             n_threads, plain_gemm)
        heights = [min(tile_rows, out_h - first) for first in range(0, out_h, tile_rows)]
        blocks = [min(tile_images, n_img - first) for first in range(0, n_img, tile_images)]
        threads = fastconv_threads()
        if wrapper == "conv2d_grad_input_im2col":  # a task: one image and group, every tile
            log.append(Tiling(wrapper, tuple(heights), min(threads, n_img * groups)))
        else:  # a task: one tile of an image block and group
            tasks = [h for _ in blocks for _ in range(groups) for h in heights]
            per_task = [b for b in blocks for _ in range(groups) for _ in heights]
            log.append(Tiling(wrapper, tuple(tasks), min(threads, len(tasks)), tuple(per_task)))
        return tile_rows, tile_images

    def rows_per_block(n_img, channels, out_channels, out_h, out_w, item, n_threads, **points):
        tile = points.get("tile", winograd.TILE)  # (F(2x2, 5x5)'s tiles are 2x2)
        tiles_w = -(-out_w // tile)
        patch.setattr(config, "WINOGRAD_MIN_TILES", (WINOGRAD_ROWS - 1) * tiles_w + 1)
        rows = real_rows_per_block(n_img, channels, out_channels, out_h, out_w, item, n_threads,
                                   **points)
        n_tile_rows = n_img * -(-out_h // tile)
        if not points.get("aligned"):
            tasks = [min(rows, n_tile_rows - first) for first in range(0, n_tile_rows, rows)]
            log.append(Tiling("winograd", tuple(tasks), min(n_threads, len(tasks))))
            return rows
        # the forwards: chunk c takes tile rows [c * n / chunks, (c + 1) * n / chunks)
        chunks = max(1, min(n_threads, -(-n_tile_rows // rows)))
        shares = [range(c * n_tile_rows // chunks, (c + 1) * n_tile_rows // chunks)
                  for c in range(chunks)]
        blocks = [[min(rows, share.stop - first) for first in range(share.start, share.stop,
                                                                     rows)]
                  for share in shares]
        log.append(Tiling("winograd", tuple(b for chunk in blocks for b in chunk), chunks,
                          per_chunk=tuple(len(chunk) for chunk in blocks)))
        return rows

    real_band_rows = getattr(strips, "band_rows", None)

    def band_rows(n_rows, fixed, per_row, item):
        patch.setattr(config, "DIRECT_TILE_BYTES", (fixed + (TILE_ROWS - 1) * per_row) * item)
        band = real_band_rows(n_rows, fixed, per_row, item)
        tasks = [min(band, n_rows - first) for first in range(0, n_rows, band)]
        log.append(Tiling("direct", tuple(tasks), 1))
        return band

    with pytest.MonkeyPatch.context() as patch:
        if real_band_rows is not None:
            patch.setattr(config, "DIRECT_TILE_BYTES", config.DIRECT_TILE_BYTES)
            patch.setattr(strips, "band_rows", band_rows)
        patch.setattr(config, "IM2COL_TILE_BYTES", 1)
        # (1: no plane is narrower, so the 1x1 weight gradient runs its tiles rather than
        # gathering images, test_1x1_weight_gradient_gathers_images; tiling sets its own)
        patch.setattr(config, "IM2COL_MIN_COLUMNS", 1)
        patch.setattr(config, "WINOGRAD_TILE_BYTES", 1)
        patch.setattr(config, "WINOGRAD_MIN_TILES", config.WINOGRAD_MIN_TILES)
        patch.setattr(config, "DIRECT_BLOCK_K", DIRECT_BLOCK_K)
        patch.setattr(im2col, "tiling", tiling)
        patch.setattr(winograd, "block_rows", rows_per_block)
        yield log


def fastconv_threads() -> int:
    import numba

    return numba.get_num_threads()


@contextlib.contextmanager
def numba_threads(threads: int) -> Iterator[None]:
    """Run on ``threads`` Numba threads (at most NUMBA_NUM_THREADS), as the chunk
    assertions of a test expect on any machine."""
    import numba

    saved = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(saved)


def assert_tiles_mixed(log: list[Tiling], algorithm: str, case: PathCase, *,
                       images: bool = False) -> None:
    """Each tiling the wrappers used had tiles of unequal sizes, and some thread's chunk ran
    tiles of both sizes; direct tasks of unequal channel blocks where the case allows."""
    if algorithm == "direct":
        for per_group in (case.k // case.groups, case.c // case.groups):
            assert per_group <= DIRECT_BLOCK_K or per_group % DIRECT_BLOCK_K, case.id
    assert log or algorithm == "direct", f"{algorithm} never asked for its tiling"
    for tiling in log:
        sizes = tiling.images_per_task if images else tiling.tasks
        assert len(set(sizes)) > 1, f"{case.id}: equal tiles {tiling}"
        if images or tiling.wrapper in ("conv2d_grad_input_im2col", "direct"):
            continue  # two image blocks; each task runs every tile of its image; bands
        ranges = chunk_ranges(len(sizes), tiling.chunks)
        if tiling.per_chunk:
            ends = list(itertools.accumulate(tiling.per_chunk))
            ranges = [range(end - count, end) for end, count in zip(ends, tiling.per_chunk,
                                                                     strict=True)]
        mixed = [len({sizes[t] for t in r}) > 1 for r in ranges]
        assert any(mixed), f"{case.id}: no chunk runs tiles of both sizes {tiling}"


def compute_all(*, check_tiles: bool = True) -> dict[str, np.ndarray]:
    """Every (op, algorithm, case) of the matrix with forced tiles, keyed
    ``"op/algorithm/case"`` (the subprocesses of test_thread_counts_agree)."""
    results = {}
    for op, algorithm, case in MATRIX:
        with forced_tiles(case.groups) as log:
            results[f"{op}/{algorithm}/{case.id}"] = run(op, algorithm, case)
        if check_tiles:
            assert_tiles_mixed(log, algorithm, case)
    return results


# --- the tests ----------------------------------------------------------------------------


def test_matrix_covers_every_algorithm_and_op():
    # the matrix would silently shrink if the registry or a case lost an algorithm
    covered = {(OPS[op], algorithm) for op, algorithm, _ in MATRIX}
    for op in set(OPS.values()):
        for algorithm in fastconv.available_algorithms(op):
            if algorithm not in ("auto", "reference"):
                assert (op, algorithm) in covered
    assert {op for op, _, _ in MATRIX} == set(OPS)


@pytest.mark.parametrize(("op", "algorithm", "case"),
                         [pytest.param(*m, id=f"{m[0]}-{m[1]}-{m[2].id}") for m in MATRIX])
def test_unequal_tiles_match_reference_and_torch(op, algorithm, case):
    with numba_threads(2), forced_tiles(case.groups) as log:
        result = run(op, algorithm, case)
    assert_tiles_mixed(log, algorithm, case)
    assert_matches(result, expected(case)[op], op, case, "reference")
    oracle = torch_results(case).get(op)
    if oracle is not None:
        assert_matches(result, oracle, op, case, "torch")


#: Three images, not a plain GEMM (which reads one image in place per task).
IMAGE_BLOCK_CASES = [c for c in CASES if c.n == 3 and (c.r, c.s) != (1, 1)]


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d_grad_input"])
@pytest.mark.parametrize("case", IMAGE_BLOCK_CASES, ids=[c.id for c in IMAGE_BLOCK_CASES])
def test_im2col_image_blocks_of_unequal_sizes(op, case):
    # whole images two at a time (small images) on one thread: blocks of 2 and 1 images
    with numba_threads(1), forced_tiles(case.groups, images=2) as log:
        result = run(op, "im2col", case)
    assert_tiles_mixed(log, "im2col", case, images=True)
    assert_matches(result, expected(case)[op], op, case, "reference")


#: One image of layers deeper than a GEMM per thread: ``(id, (n, c, h, w), weight shape,
#: padding, groups)``; their filters (72, 100, 64 per group) split into runs of 32-40.
SPLIT_CASES = [
    ("1x1_plain", (1, 40, 5, 6), (72, 40, 1, 1), 0, 1),
    ("3x3_p1", (1, 6, 7, 9), (100, 6, 3, 3), 1, 1),
    ("1x1_groups2", (1, 8, 6, 6), (128, 4, 1, 1), 0, 2),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", SPLIT_CASES, ids=[c[0] for c in SPLIT_CASES])
def test_im2col_splits_the_filters_of_a_single_image_over_threads(case, dtype):
    # one tile per group and fewer tiles than threads: each tile's GEMM is split into runs
    # of filters, a task each (runs of whole vectors but the last); the bias and the ReLU
    # are stored by each run; a 1x1 layer's grad_input reads the weight transposed. The
    # split is forced to at least 2 (the grouped case has as many tasks as two threads),
    # and filter_blocks' own choice checked where there are threads to split over
    from fastconv.cpu import im2col

    _, shape, w_shape, p, groups = case
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, shape).astype(dtype)
    w = rng.uniform(-1, 1, w_shape).astype(dtype)
    b = rng.uniform(-1, 1, w_shape[0]).astype(dtype)
    splits = []

    def spy(*args):
        splits.append(real(*args))
        return max(2, splits[-1])

    real = im2col.filter_blocks
    with pytest.MonkeyPatch.context() as patch, numba_threads(2):
        patch.setattr(im2col, "filter_blocks", spy)
        y = fastconv.conv2d(x, w, b, padding=p, groups=groups, algorithm="im2col",
                            activation="relu")
        gy = rng.uniform(-1, 1, y.shape).astype(dtype)
        gx, _, _ = fastconv.conv2d_backward(gy, x, w, padding=p, groups=groups,
                                            needs_weight_grad=False, needs_bias_grad=False,
                                            algorithm="im2col")
    import numba

    assert len(splits) == 2, splits  # conv2d's and grad_input's GEMMs
    if numba.get_num_threads() >= 2 and groups == 1:
        assert splits[0] >= 2, splits
    wide = [a.astype(np.float64) for a in (x, w, b, gy)]
    oracle = np.maximum(reference.conv2d(*wide[:3], padding=p, groups=groups), 0)
    np.testing.assert_allclose(y, oracle, **sum_tolerance(dtype, w[0].size))
    oracle = reference.conv2d_backward(wide[3], wide[0], wide[1], padding=p, groups=groups)[0]
    np.testing.assert_allclose(gx, oracle, **sum_tolerance(dtype, w_shape[0] * 9))


@pytest.mark.parametrize("plane", [(5, 6), (1, 3)], ids=["5x6", "1x3"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_1x1_weight_gradient_gathers_images(n_threads, dtype, plane):
    # an unpadded 1x1 layer on small planes (and large sums): a chunk of the input channels
    # per thread, over every image, each GEMM over the positions of a few images gathered
    # side by side: 7 images three at a time (batches of 3, 3 and 1), 37 channels in
    # chunks of unequal sizes; an Inf input value reaches only its channel's column. The
    # gathered planes are copied on vectors: 5x6, whole vectors and an overlapping last
    # one; 1x3, fewer values than a vector (masked)
    from fastconv.cpu import im2col

    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (7, 37, *plane)).astype(dtype)
    gy = rng.uniform(-1, 1, (7, 11, *plane)).astype(dtype)
    w = rng.uniform(-1, 1, (11, 37, 1, 1)).astype(dtype)
    x[5, 20, plane[0] // 2, plane[1] // 2] = np.inf
    x_before, gy_before = x.copy(), gy.copy()
    positions = plane[0] * plane[1]
    with pytest.MonkeyPatch.context() as patch, numba_threads(n_threads):
        patch.setattr(config, "IM2COL_MIN_COLUMNS", 3 * positions - 1)
        patch.setattr(im2col, "GATHER_MIN_CHANNELS", 8)
        patch.setattr(im2col, "L2_BYTES", 0)  # (the sums of real layers outgrow the L2)
        assert im2col._gathered_images(x, gy, 1, 1, (1, 1), ((0, 0), (0, 0)), 1) == 3
        _, grad_weight, _ = fastconv.conv2d_backward(gy, x, w, needs_input_grad=False,
                                                     algorithm="im2col")
        # conv_transpose2d's of gy by w (37 channels out): the same kernel on x as its
        # grad_output and gy as its input
        _, transposed, _ = fastconv.conv_transpose2d_backward(
            x, gy, w, needs_input_grad=False, algorithm="im2col")
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(gy, gy_before)
    oracle = reference.conv2d_backward(gy.astype(np.float64), x.astype(np.float64),
                                       w.astype(np.float64))[1]
    assert np.isinf(oracle[:, 20]).all() and np.isfinite(np.delete(oracle, 20, axis=1)).all()
    tol = sum_tolerance(dtype, 7 * positions)
    np.testing.assert_allclose(grad_weight, oracle, **tol)
    oracle = reference.conv_transpose2d_backward(
        x.astype(np.float64), gy.astype(np.float64), w.astype(np.float64))[1]
    np.testing.assert_allclose(transposed, oracle, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_1x1_weight_gradient_of_one_image_splits_its_channels(dtype):
    # a batch of one on a small plane: the gathered path (one image a GEMM), its 40
    # channels in chunks over the threads (not one GEMM on one thread)
    from fastconv.cpu import im2col

    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 1, (1, 40, 5, 7)).astype(dtype)
    gy = rng.uniform(-1, 1, (1, 24, 5, 7)).astype(dtype)
    w = np.zeros((24, 40, 1, 1), dtype)
    with pytest.MonkeyPatch.context() as patch, numba_threads(2):
        patch.setattr(im2col, "GATHER_MIN_CHANNELS", 8)
        patch.setattr(im2col, "L2_BYTES", 0)
        assert im2col._gathered_images(x, gy, 1, 1, (1, 1), ((0, 0), (0, 0)), 1) == 1
        _, grad_weight, _ = fastconv.conv2d_backward(gy, x, w, needs_input_grad=False,
                                                     needs_bias_grad=False, algorithm="im2col")
    oracle = reference.conv2d_backward(gy.astype(np.float64), x.astype(np.float64),
                                       w.astype(np.float64))[1]
    np.testing.assert_allclose(grad_weight, oracle, **sum_tolerance(dtype, 35))


#: Weight gradients of few taps per filter (``fastconv.cpu.fewtaps``): ``(id, (n, c, h, w),
#: (k, r, s), stride, padding, dilation)``; 2-9 filters and 5-27 taps leave partial
#: blocks of 4 filters and 6 taps (2 filters: fewer than the blocked kernel takes); strides
#: 1-3 (the input rows copied, dealt into 2 or 3 column phases), dilation, padding on one
#: side only.
FEW_TAPS_CASES = [
    ("3x3_p1", (3, 3, 13, 11), (7, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    ("3x3_s2_asym", (2, 3, 14, 17), (5, 3, 3), (2, 2), ((0, 2), (1, 0)), (1, 1)),
    ("3x2_s21_dil2", (2, 3, 15, 12), (9, 3, 2), (2, 1), ((2, 1), (1, 1)), (2, 2)),
    ("5x5_1ch", (4, 1, 12, 19), (6, 5, 5), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    ("1x1_2_filters", (3, 5, 10, 9), (2, 1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    # rows of more than a vector of positions (whole vectors, then the row's masked tail)
    ("3x3_p1_wide", (2, 3, 10, 37), (5, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    ("3x3_s2_wide", (2, 2, 13, 70), (6, 3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    ("2x3_s3_dil2", (2, 2, 23, 61), (4, 2, 3), (3, 3), ((2, 0), (3, 1)), (2, 2)),
]


#: ``fastconv.cpu.fewtaps.reason``'s cases: ``(id, grad_out shape, weight shape, groups, L2
#: bytes, the reason's start or None)``
FEW_TAPS_RULE = [
    ("27_taps_in_the_l2", (32, 16, 32, 32), (16, 3, 3, 3), 1, 1 << 20, "27 <= AUTO_FEW_TAPS_ANY"),
    ("32_taps_in_the_l2", (32, 64, 32, 32), (64, 32, 1, 1), 1, 1 << 20, None),
    ("32_taps_beyond_the_l2", (32, 64, 32, 32), (64, 32, 1, 1), 1, 1 << 16,
     "32 <= AUTO_FEW_TAPS_MAX = 32 taps per filter with an image's grad_output larger"),
    ("32_taps_4_filters", (32, 4, 32, 32), (4, 32, 1, 1), 1, 1 << 20,
     "32 <= AUTO_FEW_TAPS_MAX = 32 taps per filter with 4 filters"),
    ("36_taps", (32, 4, 32, 32), (4, 4, 3, 3), 1, 0, None),
    ("2_groups", (32, 16, 32, 32), (16, 3, 3, 3), 2, 0, None),
    ("too_little_work", (2, 16, 8, 8), (16, 3, 3, 3), 1, 0, None),
]


@pytest.mark.parametrize("case", FEW_TAPS_RULE, ids=[c[0] for c in FEW_TAPS_RULE])
def test_few_taps_rule(case, monkeypatch):
    # up to AUTO_FEW_TAPS_ANY_SIZE_MAX taps the dot products whatever the size; up to
    # AUTO_FEW_TAPS_MAX only with few filters or grad_output beyond the L2; the chooser
    # says why (explain)
    from fastconv.cpu import fewtaps

    _, grad_shape, w_shape, groups, l2, expected = case
    monkeypatch.setattr(fewtaps, "L2_BYTES", l2)
    why = fewtaps.reason(grad_shape, w_shape, groups, 4)
    assert (why is None) if expected is None else why.startswith(expected)
    assert fewtaps.pays(grad_shape, w_shape, groups, 4) == (why is not None)
    if groups == 1:
        x = np.zeros((grad_shape[0], w_shape[1], *grad_shape[2:]), np.float32)
        padding = (w_shape[2] - 1) // 2
        kernels = fastconv.explain("conv2d_backward", np.zeros(grad_shape, np.float32), x,
                                   np.zeros(w_shape, np.float32), padding=padding,
                                   needs_input_grad=False)["kernels"]
        assert (kernels[0]["reason"] == why) == (why is not None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", FEW_TAPS_CASES, ids=[c[0] for c in FEW_TAPS_CASES])
def test_few_taps_weight_gradient_in_unequal_bands(case, dtype):
    # dot products over bands of output rows of unequal sizes (3 rows and a remainder),
    # the bands of every image shared unequally by the threads; direct takes this path
    # (as auto does) for an image's grad_output larger than the L2, here of 0 bytes (and
    # any work); an
    # Inf in grad_output gives the exact loops' result (the padding multiplied as zeros
    # would make NaNs)
    from fastconv.cpu import fewtaps

    _, shape, (k, r, s), stride, padding, dilation = case
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, shape).astype(dtype)
    w = np.zeros((k, shape[1], r, s), dtype)
    out = [shapes.output_length(n, q, t, p, d) for n, q, t, p, d in zip(
        shape[2:], (r, s), stride, padding, dilation, strict=True)]
    gy = rng.uniform(-1, 1, (shape[0], k, *out)).astype(dtype)
    wide = [a.astype(np.float64) for a in (gy, x, w)]
    kwargs = dict(stride=stride, padding=padding, dilation=dilation)
    oracle = reference.conv2d_backward(*wide, **kwargs)[1]
    calls = []
    real = fewtaps.conv2d_grad_weight_few_taps
    with pytest.MonkeyPatch.context() as patch, numba_threads(2):
        patch.setattr(fewtaps, "L2_BYTES", 0)
        patch.setattr(config, "AUTO_FEW_TAPS_MIN_WORK", 0)
        assert fewtaps.pays(gy.shape, w.shape, 1, x.itemsize)
        patch.setattr(fewtaps, "BAND_POSITIONS", 3 * out[1])
        patch.setattr(fewtaps, "conv2d_grad_weight_few_taps",
                      lambda *args: calls.append(1) or real(*args))
        _, grad_weight, _ = fastconv.conv2d_backward(gy, x, w, **kwargs, needs_input_grad=False,
                                                     needs_bias_grad=False, algorithm="direct")
        assert calls and out[0] % 3
        np.testing.assert_allclose(grad_weight, oracle,
                                   **sum_tolerance(dtype, shape[0] * out[0] * out[1]))
        gy[1, k - 1, out[0] // 2, 0] = np.inf
        x_before, gy_before = x.copy(), gy.copy()
        _, grad_weight, _ = fastconv.conv2d_backward(gy, x, w, **kwargs, needs_input_grad=False,
                                                     needs_bias_grad=False, algorithm="direct")
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(gy, gy_before)
    with np.errstate(invalid="ignore"):  # the reference's grad_input: Inf * 0
        oracle = reference.conv2d_backward(gy.astype(np.float64), *wide[1:], **kwargs)[1]
    np.testing.assert_array_equal(np.isfinite(grad_weight), np.isfinite(oracle))
    finite = np.isfinite(oracle)
    np.testing.assert_allclose(grad_weight[finite], oracle[finite],
                               **sum_tolerance(dtype, shape[0] * out[0] * out[1]))


@pytest.mark.parametrize("value", [np.inf, np.nan], ids=["inf", "nan"])
@pytest.mark.parametrize("algorithm", ["im2col", "direct"])
def test_grad_weight_non_finite_input_reaches_only_its_taps(algorithm, value):
    # With stride 1, grad_weight's GEMM (im2col) or direct kernels may also run over
    # the junk columns between output rows, where the input holds real values (the row's
    # last columns, the next row's first): a zero grad_output there times Inf is NaN.
    case = PathCase("3x3_valid", 2, 3, 9, 8, 4, 3, 3)
    x, w, gy = (a.copy() for a in inputs(case))
    x[1, 2, 4, -1] = value  # read by taps s = 2 only
    x[0, 1, 5, 0] = value  # read by taps s = 0 only
    with numba_threads(2), forced_tiles(case.groups) as log:
        _, grad_weight, _ = fastconv.conv2d_backward(gy, x, w, needs_input_grad=False,
                                                     needs_bias_grad=False, algorithm=algorithm)
    assert_tiles_mixed(log, algorithm, case)
    oracle = reference.conv2d_backward(gy, x, w)[1]
    assert np.isfinite(oracle[:, :, :, 1]).all() and not np.isfinite(oracle).all()
    np.testing.assert_allclose(grad_weight, oracle, **tolerance(np.float64), equal_nan=True)


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "winograd"])
def test_grad_input_non_finite_weight_stays_off_the_border(algorithm):
    # Stride-1 grad_input is a convolution of the zero-padded grad_output, which multiplies
    # every weight tap by padded zeros too (0 * Inf = NaN where the transposed convolution
    # has no term): with a non-finite weight, the kernels scatter in bands instead.
    case = CASES[0]  # 3x3, padding 1
    x, w, gy = (a.copy() for a in inputs(case))
    w[1, 2, 0, 0] = np.inf  # reaches rows 0..h-2 and columns 0..w-2 of channel 2
    w[3, 0, 2, 2] = np.nan  # rows 1..h-1 and columns 1..w-1 of channel 0
    with numba_threads(2), forced_tiles(case.groups) as log:
        grad_input = fastconv.conv2d_backward(gy, x, w, **case.kwargs, needs_weight_grad=False,
                                              needs_bias_grad=False, algorithm=algorithm)[0]
    assert_tiles_mixed(log, algorithm, case)
    oracle = reference.conv2d_backward(gy, x, w, **case.kwargs)[0]
    assert np.isfinite(oracle[:, 2, -1]).all() and np.isfinite(oracle[:, 0, :, 0]).all()
    assert not np.isfinite(oracle).all()
    np.testing.assert_allclose(grad_input, oracle, **tolerance(np.float64), equal_nan=True)


def _run_paths_check(threads: int, out: Path) -> None:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    done = subprocess.run([sys.executable, "-m", "tests._paths_check", str(threads), str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr


def test_thread_counts_agree(tmp_path):
    # Numba's thread count is fixed per process: 1 and 3 threads run in subprocesses,
    # which check their tilings as the in-process tests do (3 threads: 3 chunks)
    with numba_threads(2):
        here = compute_all()
    runs = {}
    for threads in (1, 3):
        _run_paths_check(threads, tmp_path / f"{threads}.npz")
        with np.load(tmp_path / f"{threads}.npz") as data:
            runs[threads] = {key: data[key] for key in data.files}
    runs[fastconv_threads()] = here
    for op, algorithm, case in MATRIX:
        key = f"{op}/{algorithm}/{case.id}"
        for threads, results in runs.items():
            assert_matches(results[key], expected(case)[op], op, case, f"{threads} threads")
        assert_matches(runs[1][key], runs[3][key], op, case, "1 vs 3 threads")


BOUNDS_CHECKED = [
    "tests/test_kernel_paths.py::test_unequal_tiles_match_reference_and_torch",
    "tests/test_kernel_paths.py::test_im2col_image_blocks_of_unequal_sizes",
    "tests/test_kernel_paths.py::test_1x1_weight_gradient_gathers_images",
    "tests/test_kernel_paths.py::test_grad_weight_non_finite_input_reaches_only_its_taps",
    "tests/test_kernel_paths.py::test_grad_input_non_finite_weight_stays_off_the_border",
    "tests/test_conv2d.py::test_matches_reference",
    "tests/test_simd.py::test_blocked_kernel_matches_reference",
    "tests/test_simd.py::test_transposed_phases_in_one_call",
    "tests/test_simd.py::test_blocked_grad_weight_sums_over_blocks_of_images",
    "tests/test_simd.py::test_blocked_reduction_in_uneven_passes",
    "tests/test_simd.py::test_blocked_reduction_by_filters_in_uneven_passes",
    "tests/test_simd.py::test_micro_kernel_by_filters_is_its_formula",
    "tests/test_simd.py::test_by_filters_reads_unpadded_inputs_in_place",
    "tests/test_simd.py::test_micro_kernels_in_passes_go_on_from_their_sums",
    "tests/test_simd.py::test_weave_row_puts_rows_together",
    "tests/test_winograd_s2.py",
    "tests/test_winograd_s2_grad_input.py",
    "tests/test_winograd_5x5.py",
    "tests/test_conv_backward.py::test_strided_depthwise_grad_input_phase_by_phase"
    "[7x7_s23_dil12_asym-float32]",
    "tests/test_conv_backward.py::test_strided_depthwise_grad_input_phase_by_phase"
    "[5x5_s2_x2-float64]",
    "tests/test_conv_backward.py::test_depthwise_grad_weight_in_bands_on_threads"
    "[3x3_s21_dil12_asym-float64]",
    "tests/test_conv_backward.py::test_depthwise_grad_weight_stacks_small_planes",
    "tests/test_depthwise_planes.py::test_whole_planes_match_reference_and_torch",
    "tests/test_depthwise_planes.py::test_whole_planes_non_finite",
    "tests/test_depthwise_planes.py::test_transposed_output_padding_stays_on_the_banded_kernels",
    "tests/test_pool.py::test_max_pool2d_matches_reference",
    "tests/test_pool.py::test_avg_pool2d_and_backward_match_reference",
]

#: A kernel made as fastconv makes them, indexing past its array inside a prange loop, in
#: the part that a worker thread runs.
OUT_OF_BOUNDS_PROBE = """
import numpy as np
from numba import prange
from fastconv.cpu import threads
from fastconv.cpu._jit import kernel

@kernel(parallel=True)
def read_past_the_end(a, part, parts):
    total = 0.0
    for i in prange(part * (a.size + 1) // parts, (part + 1) * (a.size + 1) // parts):
        total += a[i]
    return total

try:
    threads.launch(read_past_the_end, 2, np.zeros(3))
except IndexError:
    pass
else:
    raise SystemExit("an out-of-bounds index went unnoticed")
"""


def _bounds_env(scratch: Path) -> dict[str, str]:
    # NUMBA_BOUNDSCHECK=1 compiles every kernel with index checks, into a cache of its own
    # (checked and unchecked machine code never share a cache). Threaded calls run in 3
    # parts on fastconv's worker threads (FASTCONV_NUMBA_POOL=0), whose IndexError reaches
    # the caller (one raised inside a prange body on Numba's pool would be lost).
    return dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(scratch / "cache"),
                NUMBA_NUM_THREADS="3", FASTCONV_NUMBA_POOL="0")


@background.command("bounds-probe")
def _bounds_probe(scratch: Path) -> background.Command:
    probe = scratch / "probe.py"
    probe.write_text(OUT_OF_BOUNDS_PROBE)
    return background.Command([sys.executable, str(probe)], _bounds_env(scratch), ROOT)


@background.command("bounds-checked")
def _bounds_checked(scratch: Path) -> background.Command:
    return background.Command(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "--benchmark-disable", "-o", "addopts=", *BOUNDS_CHECKED, "-k", "float64 or not float32"],
        _bounds_env(scratch), ROOT)


@pytest.mark.background("bounds-probe")
@pytest.mark.background("bounds-checked")
def test_bounds_checked():
    # the probe: bounds checking is on in the kernels as fastconv makes them
    done = background.wait("bounds-probe", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    # this file's in-process tests and the others of BOUNDS_CHECKED, started beside the suite
    done = background.wait("bounds-checked", timeout=1800)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    assert " passed" in done.stdout.splitlines()[-1]


def test_winograd_matrices_compute_the_correlation_and_the_transforms_apply_them():
    # A^T [(G g) * (B^T d)] = the 1-D correlation of d with g, exactly (in float64), for
    # the interpolation points fastconv uses; the hand-written transforms are the matrices
    from fastconv.cpu import winograd

    a_t, g, b_t = winograd.A_T, winograd.G, winograd.B_T
    products = np.einsum("ij,jk,jt->ikt", a_t, g, b_t)
    expected = np.zeros_like(products)
    for i in range(winograd.TILE):
        for k in range(3):
            expected[i, k, i + k] = 1
    np.testing.assert_allclose(products, expected, atol=1e-15)
    rng = np.random.default_rng(0)
    n = 37
    # the vectors at an offset and a step of their own in one buffer, as the kernels lay
    # them out (rows of a block's tiles, planes of V)
    at, step, dst_at, dst_step = 3, n + 5, 2, n + 9

    def rows(count, first, pitch):
        buffer = np.full(first + count * pitch, np.nan)
        return buffer, buffer[first:].reshape(count, pitch)[:, :n]

    src, six = rows(winograd.ALPHA, at, step)
    six[:] = rng.standard_normal((winograd.ALPHA, n))
    dst, out = rows(winograd.ALPHA, dst_at, dst_step)
    winograd._b_transform(src, at, step, dst, dst_at, dst_step, n, b_t)
    np.testing.assert_allclose(out, b_t @ six, atol=1e-13)
    dst, four = rows(winograd.TILE, dst_at, dst_step)
    winograd._a_transform(src, at, step, dst, dst_at, dst_step, n, a_t, 0.5)
    np.testing.assert_allclose(four, a_t @ six + 0.5, atol=1e-13)
    src, grads = rows(winograd.TILE, at, step)
    grads[:] = rng.standard_normal((winograd.TILE, n))
    dst, out = rows(winograd.ALPHA, dst_at, dst_step)
    winograd._a_expand(src, at, step, dst, dst_at, dst_step, n, a_t)
    np.testing.assert_allclose(out, a_t.T @ grads, atol=1e-13)
