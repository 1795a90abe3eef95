"""CPU backend: Numba kernels, registered with :mod:`fastconv.dispatch` on import.

Imported on first use by the dispatcher, never by ``import fastconv``.
"""

from __future__ import annotations

import math

import numpy as np

from .. import config, dispatch, ops, shapes
from ..dispatch import register, register_chooser

# importing registers the kernels; threads makes TBB loadable before a kernel starts
# Numba's thread pool
from . import (  # noqa: F401
    blocked,
    direct,
    fewtaps,
    im2col,
    pool,
    reductions,
    simd,
    threads,
    winograd,
    winograd_5x5,
    winograd_s2,
)


def _choose_conv(op, weight_shape, problem):
    """The shape rules of ``algorithm="auto"`` (measured: ``benchmarks/RESULTS.md``,
    "Per-call cost"), in order; returns ``(name, reason)``:

    1. direct when the whole call needs at most ``AUTO_DIRECT_MAX_WORK`` multiply-adds
       (a GEMM's packing costs more); for conv2d, Winograd F(4x4, 2x2) on the stride
       phases for 4x4 stride-2 layers of at least ``AUTO_WINOGRAD_STRIDED_MIN_CHANNELS``
       channels on both sides and ``AUTO_WINOGRAD_STRIDED_MIN_TILES`` 4x4 output tiles,
       and for 3x3 ones of at least ``AUTO_WINOGRAD_STRIDED_3X3_MIN_CHANNELS`` channels
       and ``AUTO_WINOGRAD_STRIDED_3X3_MIN_PLANE`` output positions an image
       (:mod:`.winograd_s2`), and by the same rules for the grad_input of such layers
       (conv_transpose2d's forward) with a top and left padding of at most 1 and at least
       ``AUTO_WINOGRAD_STRIDED_GRAD_INPUT_MIN_WORK`` multiply-adds, F(4x4, 2x2) on the
       phases of grad_input; for conv2d and grad_input, Winograd F(2x2, 5x5) for 5x5
       stride-1 layers of at least ``AUTO_WINOGRAD_5X5_MIN_CHANNELS`` channels per group
       on both sides, ``AUTO_WINOGRAD_5X5_MIN_CHANNEL_PAIRS`` channels in times channels
       out per group and ``AUTO_WINOGRAD_5X5_MIN_TILES`` 2x2 output tiles
       (:mod:`.winograd_5x5`);
    2. with at least ``blocked.MIN_GROUP_K`` filters per group in the convolution
       that runs (K/groups; C/groups for grad_input), any stride for conv2d and
       grad_weight, and for grad_input stride 1 or at least ``AUTO_PHASES_MIN_WORK``
       multiply-adds (grad_weight: also one image's packed planes within
       ``blocked.GRAD_WEIGHT_BLOCK_BYTES``), the register-blocked direct
       kernels (grad_weight with at most ``AUTO_FEW_TAPS_ANY_SIZE_MAX`` taps per filter,
       or ``AUTO_FEW_TAPS_MAX`` with few filters or large planes: dot products over the
       positions, :func:`.fewtaps.reason`),
       except, with ``deep = AUTO_BLOCKED_MAX_CHANNELS`` (64): Winograd when
       it fits, min(C, K)/groups >= deep and min(C, K)/groups * H_out * W_out >=
       ``AUTO_WINOGRAD_MIN_CHANNEL_PLANE`` on at least ``AUTO_WINOGRAD_DEEP_MIN_TILES``
       4x4 output tiles (grad_weight: ``AUTO_WINOGRAD_GRAD_WEIGHT_MIN_CHANNEL_PLANE`` on
       ``AUTO_WINOGRAD_GRAD_WEIGHT_MIN_TILES``), and for the conv2d and grad_input of
       3x3 stride-1 layers of fewer channels, where its products outweigh its transforms
       (:func:`_winograd_narrow`); im2col for 1x1 layers of >= deep channels
       (one GEMM on the input), unless the convolution that runs has
       ``AUTO_1X1_BLOCKED_MIN_EXPANSION`` times more filters than channels per group
       (conv2d: on 512-bit vectors only, :func:`_wide_vectors`) or the call needs at
       most ``AUTO_1X1_BLOCKED_MAX_WORK`` multiply-adds (stride 1, not grad_weight),
       and on 512-bit vectors at least ``AUTO_1X1_BLOCKED_MIN_USE_PERCENT`` % of the
       positions it computes are outputs (not on 7x7 planes),
       or, for grad_weight on 512-bit vectors, the layer has fewer filters than
       channels per group and no padding and column stride (the blocked kernel reads
       ``x`` in place) and is not one whose images im2col gathers
       (:func:`.im2col.gathers`: 7x7 planes and large sums, where its GEMMs win); the
       blocked kernel for any other strided grad_weight;
       im2col for strided layers of more than deep channels (but the conv2d of those
       of at most ``AUTO_STRIDED_BLOCKED_MAX_CHANNELS`` on at
       least ``AUTO_STRIDED_BLOCKED_MIN_POSITIONS`` output positions a plane) and the
       conv2d of layers of
       more than ``AUTO_BLOCKED_SMALL_PLANE_CHANNELS`` channels where under
       ``AUTO_BLOCKED_MIN_USE_PERCENT`` % of the positions the blocked kernel computes
       are outputs (on its dense layout where that pays, :func:`.blocked.use_percent`);
    3. im2col for grad_input at a stride (the direct loops scatter each tap: 2.3-10x
       slower on layers of 2-3 channels per group), except layers of one channel and
       fewer than ``blocked.MIN_GROUP_K`` filters per group (depthwise ones: their
       phases kernel sums each filter's strip, 1.3-2.4x faster than im2col with one or
       two filters, 1.5-3x slower from four on); direct for layers of one channel per
       group (depthwise, any kernel: conv2d and grad_input sum each filter's taps in
       one pass, grad_weight each tap's dot product over each channel's strip, on whole
       planes where the padding keeps the size of small planes: 2-10x faster than
       im2col's GEMMs of one channel); else direct when one output needs
       at most ``AUTO_DIRECT_MAX_DEPTH`` multiply-adds (too little depth for a GEMM),
       except grad_weight of a layer with more than one channel per group, whose im2col
       GEMM reduces over N * H * W and wins there;
    4. Winograd for 3x3 stride-1 layers with at least ``AUTO_WINOGRAD_MIN_CHANNELS``
       channels on both sides and ``AUTO_WINOGRAD_MIN_TILES`` 4x4 tiles (fewer leave
       its blocks and transforms underused: im2col is up to 2x faster there);
    5. im2col + GEMM otherwise.
    """
    out_channels, group_channels, kh, kw = weight_shape
    depth = group_channels * kh * kw
    shape = problem.get("input_shape")
    work = shape[0] * shape[2] * shape[3] * out_channels * depth if shape else None
    if work is not None and work <= config.AUTO_DIRECT_MAX_WORK:
        return "direct", (f"the whole call needs about N*H*W*K*C/groups*R*S = {work} <= "
                          f"AUTO_DIRECT_MAX_WORK = {config.AUTO_DIRECT_MAX_WORK} multiply-adds, "
                          f"too few to pay for a GEMM's packing")
    groups = problem.get("groups", 1)
    narrow = min(group_channels, out_channels // groups)
    if (op in ("conv2d", "conv2d_grad_input") and shape
            and _winograd_strided(op, weight_shape, problem, narrow)):
        tiles = _output_tiles(weight_shape, problem)
        phases = ("on its stride phases" if op == "conv2d"
                  else "on the phases of its result (8x8 tiles of grad_input)")
        if weight_shape[2:] == (4, 4):
            return "winograd", (f"a 4x4 stride-2 layer with min(C, K) = {narrow} >= "
                                f"AUTO_WINOGRAD_STRIDED_MIN_CHANNELS = "
                                f"{config.AUTO_WINOGRAD_STRIDED_MIN_CHANNELS} on {tiles} >= "
                                f"AUTO_WINOGRAD_STRIDED_MIN_TILES = "
                                f"{config.AUTO_WINOGRAD_STRIDED_MIN_TILES} 4x4 output tiles: "
                                f"F(4x4, 2x2) {phases}, 2.56x fewer multiplies")
        return "winograd", (f"a 3x3 stride-2 layer with min(C, K) = {narrow} >= "
                            f"AUTO_WINOGRAD_STRIDED_3X3_MIN_CHANNELS = "
                            f"{config.AUTO_WINOGRAD_STRIDED_3X3_MIN_CHANNELS} and "
                            f"{_output_plane(weight_shape, problem)} >= "
                            f"AUTO_WINOGRAD_STRIDED_3X3_MIN_PLANE = "
                            f"{config.AUTO_WINOGRAD_STRIDED_3X3_MIN_PLANE} output positions an "
                            f"image on {tiles} 4x4 tiles: F(4x4, 2x2) {phases}, "
                            f"1.78x fewer multiplies")
    if shape and _winograd_5x5(op, weight_shape, problem, narrow):
        tiles = _output_tiles(weight_shape, problem, 2)
        pairs = group_channels * (out_channels // groups)
        return "winograd", (f"a 5x5 stride-1 layer with min(C, K)/groups = {narrow} >= "
                            f"AUTO_WINOGRAD_5X5_MIN_CHANNELS = "
                            f"{config.AUTO_WINOGRAD_5X5_MIN_CHANNELS}, C * K / groups^2 = "
                            f"{pairs} >= AUTO_WINOGRAD_5X5_MIN_CHANNEL_PAIRS = "
                            f"{config.AUTO_WINOGRAD_5X5_MIN_CHANNEL_PAIRS} on {tiles} >= "
                            f"AUTO_WINOGRAD_5X5_MIN_TILES = {config.AUTO_WINOGRAD_5X5_MIN_TILES}"
                            f" 2x2 output tiles: F(2x2, 5x5), 2.78x fewer multiplies")
    # F(4x4, 3x3): 3x3 stride-1 layers (conv2d's Winograd also takes stride 2, below)
    fits = ("winograd" in dispatch.available_algorithms(op)
            and problem.get("stride", (1, 1)) == (1, 1)
            and dispatch.unsupported_reason(op, "cpu", "winograd", weight_shape=weight_shape,
                                            **problem) is None)
    if shape:
        choice = _blocked_rule(op, weight_shape, problem, narrow, fits)
        if choice is not None:
            return choice
    stride, per_group = problem.get("stride", (1, 1)), out_channels // groups
    if op == "conv2d_grad_input" and stride != (1, 1) and (
            group_channels > 1 or per_group >= blocked.MIN_GROUP_K):
        return "im2col", (
            f"grad_input at stride {stride} of {group_channels} channels and {per_group} "
            f"filters per group, outside the register-blocked kernel: im2col's GEMM and "
            f"col2im are 1.5-10x faster than the direct loops, which scatter each tap "
            f"(or, with one channel per group, sum each filter's strip again from "
            f"{blocked.MIN_GROUP_K} filters per group on)")
    if group_channels == 1:
        return "direct", (f"one channel per group (depthwise): the direct kernel sums each "
                          f"filter's {depth} taps in one pass, where im2col's GEMM has one "
                          f"channel's columns to reduce")
    if depth <= config.AUTO_DIRECT_MAX_DEPTH and (op != "conv2d_grad_weight"
                                                  or group_channels == 1):
        return "direct", (f"each output needs C/groups*R*S = {depth} <= "
                          f"AUTO_DIRECT_MAX_DEPTH = {config.AUTO_DIRECT_MAX_DEPTH} multiply-adds, "
                          f"too few to pay for building GEMM columns")
    tiles = shape[0] * -(-shape[2] // 4) * -(-shape[3] // 4) if shape else 0
    if fits and narrow >= config.AUTO_WINOGRAD_MIN_CHANNELS:
        if tiles >= config.AUTO_WINOGRAD_MIN_TILES:
            return "winograd", (f"a 3x3 stride-1 layer with min(C, K)/groups = {narrow} >= "
                                f"AUTO_WINOGRAD_MIN_CHANNELS = {config.AUTO_WINOGRAD_MIN_CHANNELS} "
                                f"channels and {tiles} >= AUTO_WINOGRAD_MIN_TILES = "
                                f"{config.AUTO_WINOGRAD_MIN_TILES} tiles, enough to amortise "
                                f"Winograd's transforms")
        why = (f"{tiles} < AUTO_WINOGRAD_MIN_TILES = {config.AUTO_WINOGRAD_MIN_TILES} tiles "
               f"are too few for Winograd")
    elif not fits:
        why = "Winograd does not apply (not 3x3 with stride and dilation 1)"
    else:
        why = (f"min(C, K)/groups = {narrow} < AUTO_WINOGRAD_MIN_CHANNELS = "
               f"{config.AUTO_WINOGRAD_MIN_CHANNELS} channels is too few for Winograd")
    if depth <= config.AUTO_DIRECT_MAX_DEPTH:
        why = "grad_weight's GEMM reduces over N*H*W, " + why
    return "im2col", f"C/groups*R*S = {depth} multiply-adds per output; {why}"


def _output_tiles(weight_shape, problem, tile: int = 4) -> int:
    """``tile`` x ``tile`` output tiles of a conv2d: N * ceil(H_out / tile) * ceil(W_out /
    tile)."""
    out_h, out_w = _output_size(weight_shape, problem)
    return problem["input_shape"][0] * -(-out_h // tile) * -(-out_w // tile)


def _winograd_5x5(op, weight_shape, problem, narrow: int) -> bool:
    """Whether auto takes a 5x5 conv2d or grad_input to F(2x2, 5x5): one it computes
    (stride and dilation 1; grad_input: padding <= 4), min(C, K)/groups, C * K /
    groups^2 and 2x2 output tiles enough (``AUTO_WINOGRAD_5X5_*``,
    :mod:`fastconv.config`)."""
    if weight_shape[2:] != (5, 5) or op not in ("conv2d", "conv2d_grad_input"):
        return False
    pairs = weight_shape[1] * (weight_shape[0] // problem.get("groups", 1))
    if pairs < config.AUTO_WINOGRAD_5X5_MIN_CHANNEL_PAIRS:
        return False
    stride, dilation = problem.get("stride", (1, 1)), problem.get("dilation", (1, 1))
    if op == "conv2d":
        reason = winograd_5x5.unsupported(weight_shape=weight_shape, stride=stride,
                                          dilation=dilation)
    else:
        reason = winograd_5x5.unsupported_grad_input(
            weight_shape=weight_shape, stride=stride, padding=problem["padding"],
            dilation=dilation)
    return (reason is None and narrow >= config.AUTO_WINOGRAD_5X5_MIN_CHANNELS
            and _output_tiles(weight_shape, problem, 2) >= config.AUTO_WINOGRAD_5X5_MIN_TILES)


def _winograd_strided(op, weight_shape, problem, narrow: int) -> bool:
    """Whether auto takes a conv2d to F(4x4, 2x2) on its stride phases, or a grad_input
    (conv_transpose2d) to F(4x4, 2x2) on the phases of its result: a 4x4 kernel at
    stride 2 that it computes, min(C, K) and conv2d output tiles enough
    (``AUTO_WINOGRAD_STRIDED_*``, :mod:`fastconv.config`), or a 3x3 one of more channels
    on larger planes (``AUTO_WINOGRAD_STRIDED_3X3_*``); a grad_input also of
    ``AUTO_WINOGRAD_STRIDED_GRAD_INPUT_MIN_WORK`` multiply-adds or more."""
    if weight_shape[2:] not in ((3, 3), (4, 4)) or problem.get("stride") != (2, 2):
        return False
    unsupported = (winograd_s2.unsupported if op == "conv2d"
                   else winograd_s2.unsupported_grad_input)
    if unsupported(weight_shape=weight_shape, stride=problem["stride"],
                   padding=problem.get("padding", ((0, 0), (0, 0))),
                   dilation=problem.get("dilation", (1, 1)),
                   groups=problem.get("groups", 1)) is not None:
        return False
    if _output_tiles(weight_shape, problem) < config.AUTO_WINOGRAD_STRIDED_MIN_TILES:
        return False
    n_img, _, height, width = problem["input_shape"]
    if op == "conv2d_grad_input" and (n_img * height * width * math.prod(weight_shape)
                                      < config.AUTO_WINOGRAD_STRIDED_GRAD_INPUT_MIN_WORK):
        return False
    if weight_shape[2:] == (4, 4):
        return narrow >= config.AUTO_WINOGRAD_STRIDED_MIN_CHANNELS
    return (narrow >= config.AUTO_WINOGRAD_STRIDED_3X3_MIN_CHANNELS
            and _output_plane(weight_shape, problem) >= config.AUTO_WINOGRAD_STRIDED_3X3_MIN_PLANE)


def _winograd_narrow(narrow: int, pairs: int, plane: int, tiles: int) -> bool:
    """Whether auto takes the conv2d or grad_input of a 3x3 stride-1 layer of fewer than
    ``AUTO_BLOCKED_MAX_CHANNELS`` channels (min(C, K)/groups = ``narrow``, C * K /
    groups^2 = ``pairs``, ``plane`` = H_out * W_out, ``tiles`` 4x4 output tiles) to
    Winograd F(4x4, 3x3) rather than the blocked kernel: from
    ``AUTO_WINOGRAD_NARROW_MIN_CHANNELS`` channels, ``AUTO_WINOGRAD_MIN_TILES`` tiles and
    ``AUTO_WINOGRAD_NARROW_MIN_PLANE`` output positions an image on, with
    ``AUTO_WINOGRAD_NARROW_MIN_CHANNEL_PAIRS`` channel pairs or a plane of at least
    ``AUTO_WINOGRAD_NARROW_MIN_CUBED_PLANE / narrow^3`` positions
    (:mod:`fastconv.config`).

    >>> _winograd_narrow(32, 32 * 64, 16 * 16, 128), _winograd_narrow(32, 32 * 32, 16 * 16, 512)
    (True, True)
    >>> _winograd_narrow(32, 32 * 32, 14 * 14, 128), _winograd_narrow(16, 16 * 16, 56 * 56, 392)
    (False, False)
    >>> _winograd_narrow(32, 32 * 64, 8 * 8, 128)
    False
    """
    return (config.AUTO_WINOGRAD_NARROW_MIN_CHANNELS <= narrow < config.AUTO_BLOCKED_MAX_CHANNELS
            and tiles >= config.AUTO_WINOGRAD_MIN_TILES
            and plane >= config.AUTO_WINOGRAD_NARROW_MIN_PLANE
            and (pairs >= config.AUTO_WINOGRAD_NARROW_MIN_CHANNEL_PAIRS
                 or narrow ** 3 * plane >= config.AUTO_WINOGRAD_NARROW_MIN_CUBED_PLANE))


def _output_plane(weight_shape, problem) -> int:
    """H_out * W_out of a conv2d."""
    out_h, out_w = _output_size(weight_shape, problem)
    return out_h * out_w


def _output_size(weight_shape, problem) -> tuple[int, int]:
    """(H_out, W_out) of a conv2d."""
    _, _, height, width = problem["input_shape"]
    out_h, out_w = (shapes.output_length(size, weight_shape[2 + a], problem["stride"][a],
                                         problem["padding"][a], problem["dilation"][a])
                    for a, size in enumerate((height, width)))
    return out_h, out_w


def _wide_vectors() -> bool:
    """Whether the blocked kernels run on 512-bit vectors: where they take 1x1 layers
    that expand from im2col's GEMM (on 256-bit ones the GEMM wins those too)."""
    return simd.WIDTH_BYTES >= 64


def _strided_stays_blocked(op, narrow: int, positions: int) -> bool:
    """Whether the conv2d of a strided layer deeper than ``AUTO_BLOCKED_MAX_CHANNELS``
    stays on the blocked kernel: up to ``AUTO_STRIDED_BLOCKED_MAX_CHANNELS`` channels on
    at least ``AUTO_STRIDED_BLOCKED_MIN_POSITIONS`` output positions a plane (measured on
    256-bit and 512-bit vectors: :mod:`fastconv.config`)."""
    return (op == "conv2d"
            and narrow <= config.AUTO_STRIDED_BLOCKED_MAX_CHANNELS
            and positions >= config.AUTO_STRIDED_BLOCKED_MIN_POSITIONS)


def _blocked_rule(op, weight_shape, problem, narrow, fits):
    """Rule 2 of :func:`_choose_conv`: ``(name, reason)``, or None when the blocked kernel
    does not apply."""
    out_channels, group_channels, kh, kw = weight_shape
    groups = problem.get("groups", 1)
    stride = problem.get("stride", (1, 1))
    filters = group_channels if op == "conv2d_grad_input" else out_channels // groups
    if filters < blocked.MIN_GROUP_K:
        return None
    n_img, _, height, width = problem["input_shape"]
    (top, bottom), (left, right) = problem["padding"]
    dilation = problem["dilation"]
    out_h = (height + top + bottom - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (width + left + right - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    # grad_input at a stride runs a call per phase of the input: not for small problems
    if (op == "conv2d_grad_input" and stride != (1, 1) and n_img * out_h * out_w
            * out_channels * group_channels * kh * kw < config.AUTO_PHASES_MIN_WORK):
        return None
    itemsize = np.dtype(problem.get("dtype", np.float32)).itemsize
    if op == "conv2d_grad_weight":
        why = fewtaps.reason((n_img, out_channels, out_h, out_w), weight_shape, groups,
                             itemsize)
        if why is not None:
            return "direct", why
    if op == "conv2d_grad_weight" and not blocked.grad_weight_applies(
            problem["input_shape"], (n_img, out_channels, out_h, out_w), weight_shape, stride,
            problem["padding"], dilation, groups, itemsize):
        return None
    # the blocked kernel computes grad_input as a convolution whose output is the input
    plane_h, plane_w = (height, width) if op == "conv2d_grad_input" else (out_h, out_w)
    channel_plane = narrow * out_h * out_w
    deep = config.AUTO_BLOCKED_MAX_CHANNELS
    tiles = n_img * -(-out_h // 4) * -(-out_w // 4)
    if op == "conv2d_grad_weight":
        limit, name = (config.AUTO_WINOGRAD_GRAD_WEIGHT_MIN_CHANNEL_PLANE,
                       "AUTO_WINOGRAD_GRAD_WEIGHT_MIN_CHANNEL_PLANE")
        few, few_name = (config.AUTO_WINOGRAD_GRAD_WEIGHT_MIN_TILES,
                         "AUTO_WINOGRAD_GRAD_WEIGHT_MIN_TILES")
    else:
        limit, name = config.AUTO_WINOGRAD_MIN_CHANNEL_PLANE, "AUTO_WINOGRAD_MIN_CHANNEL_PLANE"
        few, few_name = config.AUTO_WINOGRAD_DEEP_MIN_TILES, "AUTO_WINOGRAD_DEEP_MIN_TILES"
    if fits and narrow >= deep and channel_plane >= limit and tiles >= few:
        return "winograd", (f"a 3x3 stride-1 layer with min(C, K)/groups = {narrow} >= {deep} "
                            f"and min(C, K)/groups * H_out * W_out = {channel_plane} >= "
                            f"{name} = {limit} on {tiles} >= {few_name} = {few} tiles: "
                            f"Winograd's fewer multiply-adds pay for its transforms")
    pairs = group_channels * (out_channels // groups)
    if (fits and (kh, kw) == (3, 3) and op != "conv2d_grad_weight"
            and _winograd_narrow(narrow, pairs, out_h * out_w, tiles)):
        return "winograd", (
            f"a 3x3 stride-1 layer of {config.AUTO_WINOGRAD_NARROW_MIN_CHANNELS} <= "
            f"min(C, K)/groups = {narrow} < {deep} channels with C * K "
            f"/ groups^2 = {pairs} "
            + (f">= AUTO_WINOGRAD_NARROW_MIN_CHANNEL_PAIRS = "
               f"{config.AUTO_WINOGRAD_NARROW_MIN_CHANNEL_PAIRS}"
               if pairs >= config.AUTO_WINOGRAD_NARROW_MIN_CHANNEL_PAIRS else
               f"and min(C, K)/groups^3 * H_out * W_out = {narrow ** 3 * out_h * out_w} >= "
               f"AUTO_WINOGRAD_NARROW_MIN_CUBED_PLANE = "
               f"{config.AUTO_WINOGRAD_NARROW_MIN_CUBED_PLANE}")
            + f" on {tiles} >= AUTO_WINOGRAD_MIN_TILES = {config.AUTO_WINOGRAD_MIN_TILES} "
              f"tiles of {out_h}x{out_w} planes: Winograd's products outweigh its transforms")
    if narrow >= deep and kh * kw == 1:
        # the convolution that runs: its filters and channels per group
        depth = out_channels // groups if op == "conv2d_grad_input" else group_channels
        work = n_img * out_h * out_w * out_channels * group_channels
        expansion, small = config.AUTO_1X1_BLOCKED_MIN_EXPANSION, config.AUTO_1X1_BLOCKED_MAX_WORK
        wide = _wide_vectors()
        if (op == "conv2d_grad_weight" and filters < group_channels and wide
                and blocked.in_place(problem["padding"], stride)
                and not (groups == 1 and im2col.gathers(out_h * out_w, filters * group_channels,
                                                        itemsize))):
            return "direct", (f"a 1x1 weight gradient with K/groups = {filters} < C/groups = "
                              f"{group_channels}, unpadded: the register-blocked kernel reads "
                              f"x in place and beats im2col's GEMM there (im2col gathers "
                              f"the images of smaller planes and wins there)")
        narrow_wins = op != "conv2d_grad_input" and not wide  # measured on a Zen 2's AVX2
        use = blocked.use_percent(out_h, out_w, 1, 1, itemsize)  # read in place
        small_plane = wide and use < config.AUTO_1X1_BLOCKED_MIN_USE_PERCENT
        if op == "conv2d_grad_weight" or stride != (1, 1) or small_plane or (
                (filters < expansion * depth or narrow_wins) and work > small):
            return "im2col", (f"a 1x1 layer with min(C, K)/groups = {narrow} >= "
                              f"AUTO_BLOCKED_MAX_CHANNELS = {deep}: one GEMM on the input "
                              f"itself" + (f" (on {simd.WIDTH_BYTES * 8}-bit vectors also "
                                           f"where the layer expands or the weight gradient "
                                           f"would read x in place: 1.07-1.37x faster than "
                                           f"the register-blocked kernel there)"
                                           if narrow_wins else "")
                              + (f"; on a {out_h}x{out_w} plane only {use} % < "
                                 f"AUTO_1X1_BLOCKED_MIN_USE_PERCENT = "
                                 f"{config.AUTO_1X1_BLOCKED_MIN_USE_PERCENT} % of the "
                                 f"blocked kernel's positions would be outputs"
                                 if small_plane else ""))
        why = (f"whose convolution has {filters} filters >= AUTO_1X1_BLOCKED_MIN_EXPANSION = "
               f"{expansion} x {depth} channels per group" if filters >= expansion * depth
               else f"of {work} <= AUTO_1X1_BLOCKED_MAX_WORK = {small} multiply-adds")
        return "direct", (f"a 1x1 layer {why}: the register-blocked direct kernel beats "
                          f"im2col's GEMM there")
    if op == "conv2d_grad_weight" and stride != (1, 1):
        return "direct", (f"stride {stride} with {filters} >= {blocked.MIN_GROUP_K} filters "
                          f"per group: the register-blocked weight gradient (12 taps x a "
                          f"block of filters; im2col's strided columns cost more)")
    if narrow > deep and stride != (1, 1):
        if not _strided_stays_blocked(op, narrow, out_h * out_w):
            return "im2col", (f"stride {stride} with min(C, K)/groups = {narrow} > "
                              f"AUTO_BLOCKED_MAX_CHANNELS = {deep}: deep enough for im2col's "
                              f"GEMM")
        strided = (f"stride {stride} with min(C, K)/groups = {narrow} <= "
                   f"AUTO_STRIDED_BLOCKED_MAX_CHANNELS = "
                   f"{config.AUTO_STRIDED_BLOCKED_MAX_CHANNELS} on {out_h * out_w} >= "
                   f"AUTO_STRIDED_BLOCKED_MIN_POSITIONS = "
                   f"{config.AUTO_STRIDED_BLOCKED_MIN_POSITIONS} outputs a plane, ")
    else:
        strided = ""
    # the convolution that runs at stride 1 (or conv2d's): its positions on the dense
    # layout's pitch where that pays
    work_per_copy = (blocked.dense_work_per_copy(filters, kh, kw, stride, dilation)
                     if op == "conv2d" or stride == (1, 1) else 0)
    depth = out_channels // groups if op == "conv2d_grad_input" else group_channels
    fits = blocked.dense_fits(depth, kh, kw, stride, dilation, plane_h, plane_w, itemsize)
    use = blocked.use_percent(plane_h, plane_w, kw, dilation[1], itemsize, stride[1],
                              width + left + right, work_per_copy, fits)
    small = config.AUTO_BLOCKED_SMALL_PLANE_CHANNELS
    if op == "conv2d" and narrow > small and use < config.AUTO_BLOCKED_MIN_USE_PERCENT:
        return "im2col", (f"min(C, K)/groups = {narrow} > AUTO_BLOCKED_SMALL_PLANE_CHANNELS = "
                          f"{small} on a {plane_h}x{plane_w} plane, where only {use} % < "
                          f"AUTO_BLOCKED_MIN_USE_PERCENT = {config.AUTO_BLOCKED_MIN_USE_PERCENT} "
                          f"% of the positions the blocked kernel computes are outputs")
    detail = f"{use} % of its positions are outputs"
    if op == "conv2d" and blocked.by_filters(out_h, out_w, filters, group_channels * kh * kw, kw,
                                             dilation[1], itemsize, stride[1],
                                             width + left + right, work_per_copy, fits,
                                             taps=kh * kw):
        detail = (f"its sums by filters, {blocked.BLOCK_Q} outputs x "
                  f"{blocked.filters_block(itemsize)} filters at a time, where by positions "
                  f"only {use} % would be outputs")
    return "direct", (f"{strided}{filters} >= {blocked.MIN_GROUP_K} filters per group: the "
                      f"register-blocked direct kernel ({detail})")


def _conv_chooser(op):
    def choose(*, weight_shape, **problem):
        return _choose_conv(op, weight_shape, problem)

    choose.__name__ = choose.__qualname__ = f"_choose_{op}"
    return choose


#: The reason of the one-kernel chooser, for the ops that are not pooling or unpooling.
_ONE_KERNEL = {"conv2d_grad_bias": "grad_bias has one kernel: a sum over N, H and W"}
_POOL_KERNEL = "pooling and unpooling have one fast kernel: direct loops over each plane"


def _single_chooser(op):
    """The direct kernel: pooling and unpooling (and grad_bias) have one fast path, the
    direct loops over each plane."""
    reason = _ONE_KERNEL.get(op, _POOL_KERNEL if "pool" in op
                             else f"{op} has one fast kernel: the direct loops")

    def choose(**_):
        return "direct", reason

    choose.__name__ = choose.__qualname__ = f"_choose_{op}"
    return choose


_CHOOSERS = {"conv": _conv_chooser, "single": _single_chooser}

# every op of the table: its reference loops and its kind of chooser
for _op in ops.TABLE.values():
    if _op.reference_on_cpu:
        register(_op.name, "cpu", "reference")(_op.reference)
    register_chooser(_op.name, "cpu")(_CHOOSERS[_op.chooser](_op.name))
