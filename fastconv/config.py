"""Every tunable of fastconv in one place.

Each value can be overridden by an environment variable of the same name with
a ``FASTCONV_`` prefix, read once at import (for example
``FASTCONV_IM2COL_TILE_BYTES=2097152``). Kernels read their Numba flags from
here, never from literals of their own. A value that is not accepted makes the
import raise a ValueError that names the variable, the value and what it
accepts (``FASTCONV_CACHE must be 0 or 1 (...), got 'maybe'``); the command
line prints that line and exits with status 2.

This module imports neither numpy nor numba.
"""

from __future__ import annotations

import os
import sys
import types

#: True while this module runs: a bad value of one of the settings below is then
#: recorded in _PROBLEMS (see problems()) rather than raised.
_loading = True
_PROBLEMS: dict[str, str] = {}


def _refuse(name: str, message: str) -> None:
    """A ``FASTCONV_{name}`` value that is not accepted: while this module runs, record
    ``message`` (the setting then raises it when read); afterwards raise it."""
    if not _loading:
        raise ValueError(message)
    _PROBLEMS[name] = message


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get("FASTCONV_" + name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    _refuse(name, f"FASTCONV_{name} must be 0 or 1 (or false/true, no/yes, off/on), "
            f"got {raw!r}")
    return default


def _env_int(name: str, default: int, minimum: int = 1, maximum: int | None = None) -> int:
    raw = os.environ.get("FASTCONV_" + name)
    if raw is None:
        return default
    bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None:
        _refuse(name, f"FASTCONV_{name} must be an integer {bounds}, got {raw!r}")
        return default
    if value < minimum or (maximum is not None and value > maximum):
        _refuse(name, f"FASTCONV_{name} must be {bounds}, got {raw!r}")
        return default
    return value


# --- Numba flags -------------------------------------------------------------

#: Cache compiled kernels on disk (``cache=True``), so a new process loads
#: them in milliseconds instead of compiling for seconds.
CACHE: bool = _env_bool("CACHE", True)

#: Run large calls of the kernels on several threads (``prange`` loops, split into parts:
#: :func:`fastconv.cpu.threads.launch`); off, every kernel runs on the calling thread.
PARALLEL: bool = _env_bool("PARALLEL", True)

#: Run the threaded kernels' parts on Numba's thread pool (TBB), each a call of the
#: compiled kernel from a small parallel loop. Off (``FASTCONV_NUMBA_POOL=0``), on
#: fastconv's worker threads, whose second thread starts 20-40 us later (trainer-sized
#: calls 4-50 % slower on a 2-core Zen 2 VM, layers of milliseconds 1-2 %;
#: ``benchmarks/RESULTS.md``), and no parallel loop compiles. ``import fastconv.torch``
#: runs them on PyTorch's OpenMP pool, where it can share that pool, whatever this says.
NUMBA_POOL: bool = _env_bool("NUMBA_POOL", True)

#: LLVM fast-math flags. Reassociation and contraction let the sums over a
#: window vectorise; the flags that assume no NaN/Inf are left out on purpose
#: so that NaN and Inf propagate as in PyTorch.
FASTMATH: frozenset[str] = (
    frozenset({"reassoc", "contract", "nsz", "arcp"})
    if _env_bool("FASTMATH", True)
    else frozenset()
)

#: Bits in one of the CPU kernels' SIMD vectors: 0 lets fastconv choose from the CPU
#: Numba compiles for (512 where it has AVX-512, whose 32 registers hold a micro-kernel's
#: blocks of 512-bit sums; 256 elsewhere, sized for AVX2's 16 registers), 256 or 512
#: force one (either runs on any CPU: LLVM splits a vector wider than the machine's).
SIMD_BITS: int = _env_int("SIMD_BITS", 0, minimum=0, maximum=512)
if SIMD_BITS not in (0, 256, 512) and "SIMD_BITS" not in _PROBLEMS:
    _refuse("SIMD_BITS", f"FASTCONV_SIMD_BITS must be 0, 256 or 512, got "
            f"{os.environ['FASTCONV_SIMD_BITS']!r}")

# --- CPU kernel tiling ---------------------------------------------------------

#: Bytes of the per-thread im2col buffer: a tile of whole output rows whose
#: columns fit in L2 next to the weights.
IM2COL_TILE_BYTES: int = _env_int("IM2COL_TILE_BYTES", 1024 * 1024)

#: Fewest GEMM columns (output positions) per im2col tile, taking precedence
#: over the byte budget: deep layers with small images (N8 C256 14x14) need
#: several images per tile to keep the GEMM efficient.
IM2COL_MIN_COLUMNS: int = _env_int("IM2COL_MIN_COLUMNS", 512)

#: Bytes of the per-thread Winograd buffers (transformed patches and products
#: of a block of tile rows, 36 * (C + K) values per tile).
WINOGRAD_TILE_BYTES: int = _env_int("WINOGRAD_TILE_BYTES", 2 * 1024 * 1024)

#: Fewest tiles per Winograd block (the column count of its 36 products), taking
#: precedence over the byte budget for deep layers (96 against 64: 4.6 -> 4.1-4.3 ms on
#: a 128-channel 28x28 layer, forward, and 5.6 -> 5.3 ms for its weight gradient).
WINOGRAD_MIN_TILES: int = _env_int("WINOGRAD_MIN_TILES", 96)

#: Output channels one task of the direct kernel computes.
DIRECT_BLOCK_K: int = _env_int("DIRECT_BLOCK_K", 8)

#: Bytes of the per-thread direct-kernel buffer: the padded input rows and the
#: accumulators of a band of output rows, so that scratch does not grow with the
#: image height. Common layers fit in one band per plane; a band is at least one
#: output row (and its ``dilation * (R - 1)`` halo rows), so only very wide
#: images exceed it.
DIRECT_TILE_BYTES: int = _env_int("DIRECT_TILE_BYTES", 1024 * 1024)

# --- memory kept between calls -------------------------------------------------------

#: Most bytes of scratch buffers kept for reuse between calls, all threads
#: together: a buffer that would take the total above it is freed when the call
#: that borrowed it returns. ``fastconv.release_workspace()`` frees what is kept.
WORKSPACE_KEEP_BYTES: int = _env_int("WORKSPACE_KEEP_BYTES", 64 * 1024 * 1024, minimum=0)

#: Most bytes of prepared weights (Winograd's transformed filters and a copy of the
#: weight each was built from) each thread keeps between calls, reused while a
#: weight holds the same bytes (fastconv.cpu.prepared); 0 turns the keeping off.
PREPARED_WEIGHTS_BYTES: int = _env_int("PREPARED_WEIGHTS_BYTES", 64 * 1024 * 1024, minimum=0)

# --- algorithm="auto" ------------------------------------------------------------

#: conv2d: the direct kernel is chosen when one output value needs at most this
#: many multiply-adds (C/groups * R * S): small-channel and depthwise layers,
#: where a GEMM has too little depth to pay for building its columns.
AUTO_DIRECT_MAX_DEPTH: int = _env_int("AUTO_DIRECT_MAX_DEPTH", 32)

#: conv2d and its gradients: the direct kernel is also chosen when the whole call
#: needs at most this many multiply-adds (N * H * W * K * C/groups * R * S, H and W
#: of the problem's input): a GEMM's packing and tiling cost more than such a call
#: (a 3x3 conv2d on (1, 4, 8, 8): direct 9.5 us, im2col 16.9 us).
AUTO_DIRECT_MAX_WORK: int = _env_int("AUTO_DIRECT_MAX_WORK", 1 << 14, minimum=0)

#: conv2d and its input gradient: Winograd is chosen for 3x3, stride-1 layers when
#: both C/groups and K/groups are at least this (fewer channels do not pay for
#: its input and output transforms).
AUTO_WINOGRAD_MIN_CHANNELS: int = _env_int("AUTO_WINOGRAD_MIN_CHANNELS", 16)

#: ... and when the layer has at least this many 4x4 output tiles, N * ceil(H / 4) *
#: ceil(W / 4): with fewer (a CIFAR layer at batch 4) im2col was up to 2x faster.
AUTO_WINOGRAD_MIN_TILES: int = _env_int("AUTO_WINOGRAD_MIN_TILES", 128)

#: conv2d of 4x4 stride-2 layers (conv_transpose2d's grad_input, a DCGAN discriminator's
#: layers): Winograd F(4x4, 2x2) on the stride phases (``fastconv.cpu.winograd_s2``) is
#: chosen when min(C, K) is at least this and the layer has at least
#: AUTO_WINOGRAD_STRIDED_MIN_TILES 4x4 output tiles (measured on a Zen 4, two threads,
#: ms Winograd / blocked: C64 -> 128 32x32 at N8, 128 tiles, 1.82 / 2.58; C16 -> 32
#: 64x64, 0.57 / 0.73; C128 -> 256 16x16, 32 tiles, 2.24 / 2.87; at N2 0.47 / 0.69;
#: C3 -> 64 64x64 at N32, 1.47 / 1.16; at N1, 16 tiles, 0.54 / 0.39; C256 -> 512 8x8,
#: 8 tiles, 8.1 / 3.6). The same rules (and the 3x3 ones below) take the grad_input of
#: such layers, conv_transpose2d's forward, to F(4x4, 2x2) on the phases of grad_input,
#: counting the conv2d's output tiles (ms Winograd / blocked, conv_transpose2d: C128 16x16
#: -> C64 32x32 at N8, 128 tiles, 1.76 / 2.71; at N32 6.90 / 10.49; at N1, 16 tiles, 0.62
#: / 0.55; C256 8x8 -> C128 16x16, 32 tiles, 1.94 / 2.76; C512 4x4 -> C256 8x8, 8 tiles,
#: 8.05 / 4.12; grad_input of the suite's f 4.88 / 6.39, of C128 -> 256 on 28x28 5.82 /
#: 6.07 against im2col's 5.48).
AUTO_WINOGRAD_STRIDED_MIN_CHANNELS: int = _env_int("AUTO_WINOGRAD_STRIDED_MIN_CHANNELS", 16)
AUTO_WINOGRAD_STRIDED_MIN_TILES: int = _env_int("AUTO_WINOGRAD_STRIDED_MIN_TILES", 32)
#: ... and grad_input only from this many multiply-adds on, counted as the other rules
#: count them (N * H * W * K * C * R * S on grad_input's planes): smaller calls ran
#: 1.1-1.8x slower on it than on the blocked kernel (us blocked / Winograd,
#: conv_transpose2d 4x4 s2: C16 8x8 -> 16 at N8, 8.4M, 65 / 120; C32 8x8 -> 16, 17M,
#: 87 / 140; C16 16x16 -> 16 at N4, 17M, 118 / 136; C64 8x8 -> 32 at N8, 67M, 268 / 290;
#: C64 16x16 -> 32 at N2, 67M, 215 / 256), larger ones gained or tied (C32 32x32 -> 16
#: at N8, 268M, 0.762 / 0.756 ms; the suite's f grad_input at N1, 231M, 1.02 / 0.92 ms).
AUTO_WINOGRAD_STRIDED_GRAD_INPUT_MIN_WORK: int = _env_int(
    "AUTO_WINOGRAD_STRIDED_GRAD_INPUT_MIN_WORK", 1 << 27)

#: Its 3x3 form (81 multiplies a tile and channel against 144 summed directly, 1.78x
#: fewer: the phases of the middle row and column have one tap there) is chosen for 3x3
#: stride-2 layers with min(C, K) at least this, at least AUTO_WINOGRAD_STRIDED_3X3_MIN_PLANE
#: output positions an image and AUTO_WINOGRAD_STRIDED_MIN_TILES tiles (measured on a Zen
#: 4, two threads, ms Winograd / blocked: C64 -> 128 56x56 at N8 (the suite's f) 4.39-4.57
#: / 4.91; C128 -> 256 56x56 17.5 / 20.7; C64 -> 128 112x112 at N2 5.80 / 6.06; even:
#: C128 -> 256 28x28 (14x14 out) 5.61 / 5.61; losing: C32 -> 64 56x56 1.84 / 1.50, C16 ->
#: 32 64x64 0.59 / 0.47, C64 -> 128 28x28 2.12 / 1.55, C256 -> 512 14x14 7.7 / 5.5).
AUTO_WINOGRAD_STRIDED_3X3_MIN_CHANNELS: int = _env_int("AUTO_WINOGRAD_STRIDED_3X3_MIN_CHANNELS",
                                                       64)
AUTO_WINOGRAD_STRIDED_3X3_MIN_PLANE: int = _env_int("AUTO_WINOGRAD_STRIDED_3X3_MIN_PLANE",
                                                    28 * 28)

#: conv2d and grad_input of 5x5 stride-1 layers: Winograd F(2x2, 5x5)
#: (``fastconv.cpu.winograd_5x5``) is chosen when min(C, K)/groups is at least this,
#: C * K / groups^2 at least AUTO_WINOGRAD_5X5_MIN_CHANNEL_PAIRS (the products per tile,
#: against transforms that grow with C + K) and the layer has at least
#: AUTO_WINOGRAD_5X5_MIN_TILES 2x2 output tiles (measured on a Zen 4, two threads, ms
#: Winograd / blocked, conv2d and grad_input: C64 28x28 at N8, 1568 tiles, 3.60 / 6.56
#: and 3.74 / 6.85; at N1, 196 tiles, 0.53 / 1.35 and 0.53 / 1.34; C32 -> 48 14x14 at
#: N32, 1568 tiles, 1.77-1.93 / 2.27-2.46 and 1.89-2.13 / 2.26-2.36; C16 -> 32 32x32 at
#: N8, 2048 tiles, 0.89-0.93 / 1.13-1.18 and 0.88-1.07 / 1.23-1.45; C24 -> 32 16x16 at
#: N16, 0.82-0.92 / 0.98 and 0.83-0.89 / 1.03; even: C32 14x14 at N4, 196 tiles,
#: 0.23-0.27 / 0.22-0.24 and 0.21-0.22 / 0.24-0.26; losing: C16 28x28 at N8 (256 channel
#: pairs), 0.50-0.54 / 0.46-0.48 and 0.54-0.55 / 0.49-0.50; C32 -> 48 14x14 at N1, 49
#: tiles, 0.12-0.15 / 0.17 and 0.13-0.20 / 0.11-0.16; C64 7x7 at N2, 32 tiles,
#: 0.16-0.25 / 0.17-0.19; LeNet's C6 -> 16 on 12x12, 0.34 / 0.17).
AUTO_WINOGRAD_5X5_MIN_CHANNELS: int = _env_int("AUTO_WINOGRAD_5X5_MIN_CHANNELS", 16)
AUTO_WINOGRAD_5X5_MIN_CHANNEL_PAIRS: int = _env_int("AUTO_WINOGRAD_5X5_MIN_CHANNEL_PAIRS", 512)
AUTO_WINOGRAD_5X5_MIN_TILES: int = _env_int("AUTO_WINOGRAD_5X5_MIN_TILES", 128)

#: The register-blocked direct kernels (``fastconv.cpu.blocked``: conv2d and grad_weight
#: at any stride, grad_input at stride 1 and, from AUTO_PHASES_MIN_WORK on, at a
#: stride; at least 4 filters per group) are chosen by
#: ``auto`` up to this many channels (min(C, K)/groups) whatever the layer; from this
#: many on, 1x1 layers go to im2col (one GEMM on the input itself), strided layers
#: of more channels to im2col, and 3x3 stride-1 layers to Winograd when
#: AUTO_WINOGRAD_MIN_CHANNEL_PLANE says so (measured: the blocked kernels win on every
#: layer of up to 32 channels, on 64-128 channels up to 16x16, and on stride-2
#: layers of up to 64 -> 128 channels; im2col wins on 128 -> 256 channels at stride 2).
AUTO_BLOCKED_MAX_CHANNELS: int = _env_int("AUTO_BLOCKED_MAX_CHANNELS", 64)

#: ... Winograd is chosen over them for the conv2d and grad_input of 3x3 stride-1
#: layers of at least AUTO_BLOCKED_MAX_CHANNELS channels when min(C, K)/groups * H_out
#: * W_out is at least this and the layer has AUTO_WINOGRAD_DEEP_MIN_TILES 4x4 output
#: tiles (measured on its vector transforms and micro-kernel products, N8, ms
#: Winograd / blocked: 128 channels 7x7 0.60 / 0.87, grad_input 0.61 / 0.81; 64
#: channels 14x14 0.53 / 0.68; 64 channels 7x7, under the limit, 0.26 / 0.24; 256
#: channels 7x7 at N1, 4 tiles, 1.63 / 0.48);
AUTO_WINOGRAD_MIN_CHANNEL_PLANE: int = _env_int("AUTO_WINOGRAD_MIN_CHANNEL_PLANE", 128 * 7 * 7)
AUTO_WINOGRAD_DEEP_MIN_TILES: int = _env_int("AUTO_WINOGRAD_DEEP_MIN_TILES", 32)

#: ... and for the conv2d and grad_input of 3x3 stride-1 layers of fewer channels (at least
#: AUTO_WINOGRAD_NARROW_MIN_CHANNELS per group on both sides, on AUTO_WINOGRAD_MIN_TILES tiles and
#: planes of AUTO_WINOGRAD_NARROW_MIN_PLANE output positions) when C * K / groups^2 is at least
#: AUTO_WINOGRAD_NARROW_MIN_CHANNEL_PAIRS or min(C, K)/groups cubed times H_out * W_out at least
#: AUTO_WINOGRAD_NARROW_MIN_CUBED_PLANE (32 channels on 16x16, 24 on 28x28: its products per tile
#: grow as C * K, its transforms as C + K, and the blocked kernel's edges weigh more on small
#: planes). Measured on a Zen 4, two threads, ms blocked / Winograd, conv2d and grad_input (the best
#: of three alternating medians): C32 -> 64 16x16 at N8 0.409 / 0.300 and 0.422 / 0.355; C32 -> 128
#: 16x16 0.851 / 0.490 and 0.898 / 0.668; C32 56x56 at N8 2.32 / 1.34 and 2.33 / 1.38, at N1 0.308 /
#: 0.232; C32 32x32 at N32 3.21 / 2.12, at N4 0.390 / 0.294; C32 28x28 at N8 0.595 / 0.497; C32
#: 20x20 0.372 / 0.341 and 0.379 / 0.326; C32 16x16 at N32 0.841 / 0.729 and 0.850 / 0.759; C40
#: 16x16 at N8 0.370 / 0.278; C48 14x14 0.364 / 0.330; C24 28x28 0.373 / 0.345; C16 56x56 0.593 /
#: 0.522, 64x64 0.767 / 0.665 (but see groups, below). Left on the blocked kernel: C32 14x14 at N8
#: 0.214 / 0.230, C32 8x8 at N32 0.295 / 0.315, C24 14x14 at N16 0.228 / 0.297, C16 32x32 at N8
#: 0.206 / 0.260, C16 16x16 at N32 0.219 / 0.338, C16 -> 32 16x16 at N32 0.422 / 0.482 and 0.432 /
#: 0.588, C32 -> 64 8x8 at N16 (64 tiles) 0.248 / 0.233 and 0.257 / 0.284, C32 32x32 at N1 (64
#: tiles) 0.144 / 0.164; tied: C32 -> 48 14x14 at N8 0.308 / 0.302; C16 -> 64 28x28 0.631 / 0.476
#: and 0.659 / 0.692. Grouped, per group: 32 channels (C128 on 28x28 in 4 groups) 2.38 / 1.92, (C64
#: on 32x32 in 2) 1.57 / 1.15; 16 channels (C64 on 56x56 in 4 groups) 2.51 / 2.61, where C16 on
#: 56x56 in one won (above): from 24 channels on. On 8x8 planes the two swapped places from run to
#: run (C32 -> 64 at N32, conv2d: 0.482 / 0.407, then 0.593 / 0.654 and 0.573 / 0.610; grad_input
#: 0.490 / 0.492, 0.540 / 0.518; C64 -> 32 conv2d 0.528 / 0.504, 0.516 / 0.507, 0.519 / 0.530,
#: grad_input 0.541 / 0.417, 0.551 / 0.431): from 14x14 on.
AUTO_WINOGRAD_NARROW_MIN_CHANNELS: int = _env_int("AUTO_WINOGRAD_NARROW_MIN_CHANNELS", 24)
AUTO_WINOGRAD_NARROW_MIN_PLANE: int = _env_int("AUTO_WINOGRAD_NARROW_MIN_PLANE", 14 * 14)
AUTO_WINOGRAD_NARROW_MIN_CHANNEL_PAIRS: int = _env_int("AUTO_WINOGRAD_NARROW_MIN_CHANNEL_PAIRS",
                                                       2048)
AUTO_WINOGRAD_NARROW_MIN_CUBED_PLANE: int = _env_int("AUTO_WINOGRAD_NARROW_MIN_CUBED_PLANE",
                                                     32 ** 3 * 16 * 16)

#: ... and for their grad_weight when min(C, K)/groups * H_out * W_out is at least this:
#: Winograd's weight gradient ties with the blocked kernel from 64 channels on 28x28
#: and 256 on 14x14 and loses below (1.32 against 1.05 ms on 64 channels 20x20, 3.07
#: against 2.72 ms on 128 channels 14x14, 1.12 against 0.78 on 128 channels 7x7, N8).
AUTO_WINOGRAD_GRAD_WEIGHT_MIN_CHANNEL_PLANE: int = _env_int(
    "AUTO_WINOGRAD_GRAD_WEIGHT_MIN_CHANNEL_PLANE", 64 * 28 * 28)
#: ... on at least this many 4x4 output tiles: its fixed costs (the transformed sums of
#: K x C x 36 values per thread, added and transformed back) grow with the channels as
#: its products do, and pay from about a hundred tiles (a Zen 3, two threads, ms
#: Winograd / blocked: 256 channels 14x14 at N1, 16 tiles, 7.86 / 3.53; at N2 8.53 / 4.70;
#: at N4, 64 tiles, 7.39-9.11 / 5.89-7.90; at N8, 128 tiles, 11.18-11.56 / 11.07-11.57;
#: 128 channels 28x28 at N1, 49 tiles, 2.30 / 1.78; at N2, 98 tiles, 2.00-2.54 /
#: 2.72-2.93).
AUTO_WINOGRAD_GRAD_WEIGHT_MIN_TILES: int = _env_int("AUTO_WINOGRAD_GRAD_WEIGHT_MIN_TILES", 80)

#: ... and im2col for the conv2d of layers of more than AUTO_BLOCKED_SMALL_PLANE_CHANNELS
#: channels whose output positions are under this percentage of the positions the
#: blocked kernel computes (the padded row pitch's junk columns and the last vector's
#: overrun, or on the dense layout where it pays the last vector's: 56 % on 3x3 images,
#: where im2col ran 1.17x faster on 256 channels; 76 % on 7x7, where the blocked kernel
#: ran 1.07x faster from 256 channels on; 100 % on 4x4 and 8x8 on the dense layout
#: (4x4, 512 channels: 3.8 ms against im2col's 4.6-5.1; 50 % on the padded pitch, where
#: im2col had run 1.6x faster); 93 % on 14x14). Their grad_input and grad_weight stay on
#: the blocked kernels, 1.1-1.9x faster than im2col's on 3x3 to 7x7 planes of 256-512
#: channels.
AUTO_BLOCKED_MIN_USE_PERCENT: int = _env_int("AUTO_BLOCKED_MIN_USE_PERCENT", 65)
AUTO_BLOCKED_SMALL_PLANE_CHANNELS: int = _env_int("AUTO_BLOCKED_SMALL_PLANE_CHANNELS", 128)

#: ... except stride-1 1x1 layers (not grad_weight) that stay on the blocked kernel: those
#: whose convolution (for
#: grad_input, the transposed one) has at least this many times more filters than
#: channels per group, and those of at most AUTO_1X1_BLOCKED_MAX_WORK multiply-adds
#: (measured on a Zen 4 VM, 2 threads, two interleaved runs, im2col / blocked: 64 ->
#: 256 channels on 56x56 1.16-1.20x, 128 -> 512 on 28x28 1.15-1.16x, and the
#: grad_input of 256 -> 64 on 56x56 1.18-1.19x and of 512 -> 128 on 28x28 1.10-1.13x;
#: 256 -> 64 on 14x14 at batch 1 (3.2M multiply-adds) 1.06-1.36x forward and 1.18-1.61x
#: grad_input; layers of as many or fewer filters than channels at batch 8
#: 0.94-1.04x, where im2col stays).
AUTO_1X1_BLOCKED_MIN_EXPANSION: int = _env_int("AUTO_1X1_BLOCKED_MIN_EXPANSION", 4)
AUTO_1X1_BLOCKED_MAX_WORK: int = _env_int("AUTO_1X1_BLOCKED_MAX_WORK", 1 << 23, minimum=0)
#: ... but not, on 512-bit vectors (where they were measured), on planes where under this
#: percentage of the positions the blocked kernel computes are outputs (7x7: 49 of 64
#: float32 positions, 76 %), which go to im2col
#: whatever their expansion and size (measured on a Zen 4 VM, 2 threads, ms blocked /
#: im2col: 160 -> 960 on 7x7 at N8 0.91-1.17 / 0.73-0.80, at N1 0.24 / 0.19, 512 ->
#: 2048 at N8 6.4-7.4 / 5.2-6.1, at N2 1.87 / 1.29, at N1 0.90-1.25 / 0.68 (im2col's
#: GEMM split by filters over the threads there), the grad_input of 2048 -> 512 at N8
#: 5.9-6.1 / 5.6, at N1 1.27 / 0.92; on 14x14, 94 %, they tie: 256 -> 1024 at N8 5.2 /
#: 4.8, 96 -> 576 1.20 / 1.11, the grad_input of 1024 -> 256 4.5 / 4.6).
AUTO_1X1_BLOCKED_MIN_USE_PERCENT: int = _env_int("AUTO_1X1_BLOCKED_MIN_USE_PERCENT", 90)

#: ... except the conv2d of strided layers of at most this many
#: channels (min(C, K)/groups) on at least AUTO_STRIDED_BLOCKED_MIN_POSITIONS output
#: positions a plane, which stays on the blocked kernel (by filters, or on its phases
#: by positions). Measured on a Zen 3 (AVX2), float32, 3x3 stride 2 padding 1, N8 unless
#: said, two threads, best ms blocked / im2col: C96 -> 192 on 28x28 3.22-3.41 / 3.76,
#: on 14x14 0.96 / 1.11; C128 -> 128 on 56x56 12.6 / 13.9, on 28x28 2.97 / 3.92; C128 ->
#: 256 on 28x28 5.62-5.89 / 6.09-6.33 (at N1 0.88 / 1.53, at N32 22.3 / 26.0, 5x5 14.7
#: / 16.0), on 14x14 1.80 / 1.85; C160 -> 320 on 28x28 8.88 / 9.23, on 14x14 2.48 /
#: 2.71; C192 -> 192 on 28x28 6.66 / 7.62, C192 -> 384 on 14x14 3.77 / 3.99; from 256
#: channels im2col ties or wins (C256 -> 512 on 14x14 6.30-6.72 / 6.19-6.60, C512 ->
#: 512 on 14x14 15.5 / 13.7), and on 4x4 outputs below that too (C128 -> 256 on 8x8
#: 0.94 / 0.72). On 512-bit vectors (a Zen 4 VM, two threads, one run, ms blocked /
#: im2col): C96 -> 192 on 28x28 3.27 / 3.82, C128 -> 128 on 56x56 12.3 / 14.2, C128 ->
#: 256 on 28x28 5.72 / 6.67 (at N1 0.92 / 1.04), on 16x16 1.79 / 2.23, C192 -> 384 on
#: 14x14 3.97 / 3.77; from 256 channels im2col again (C256 -> 512 on 14x14 7.10 / 6.13;
#: C256 -> 256 on 28x28 12.7 / 13.9, left to im2col).
AUTO_STRIDED_BLOCKED_MAX_CHANNELS: int = _env_int("AUTO_STRIDED_BLOCKED_MAX_CHANNELS", 192)
AUTO_STRIDED_BLOCKED_MIN_POSITIONS: int = _env_int("AUTO_STRIDED_BLOCKED_MIN_POSITIONS", 49)

#: ``direct``'s weight gradient runs as dot products over the positions
#: (:mod:`fastconv.cpu.fewtaps`) instead of on the blocked kernel for layers of one group
#: with at most this many taps per filter (C x R x S: a first layer's 3 x 3x3 = 27),
#: whatever their size, and up to :data:`AUTO_FEW_TAPS_MAX` taps where the blocked
#: kernel is slow (:func:`fastconv.cpu.fewtaps.reason`). Measured on a Zen 4 VM, two
#: threads, float32, ms dot products / blocked, with the dot products reading the input
#: rows in place (2026-12-07): MobileNetV2's first layer (N8 C3 -> 32 3x3 s2 on 224x224)
#: 1.15-1.17 / 1.69-1.81 (2.17 for the dot products on im2col's columns before), VGG's
#: first (N2 C3 -> 64 3x3 on 224x224) 2.18 / 4.09-4.16, LeNet's first (N64 C1 -> 6 5x5 on
#: 28x28) 0.140-0.145 / 0.341-0.383, N32 C3 -> 16 3x3 on 32x32 (grad_output within the
#: L2) 0.19 / 0.23-0.25, 1x1 layers (read in place) N8 C16 -> 64 on 56x56 0.32 / 0.49,
#: C24 -> 144 0.97 / 1.24; float64 and 256-bit vectors alike (MobileNetV2's first 3.06 /
#: 5.91 and 1.27 / 2.04).
AUTO_FEW_TAPS_ANY_SIZE_MAX: int = _env_int("AUTO_FEW_TAPS_ANY_SIZE_MAX", 27, minimum=0)
#: ... and up to this many taps where the filters are fewer than a vector's lanes or an
#: image's grad_output is larger than one core's L2 (the blocked kernel's transposes of
#: it then go to memory); from 28 taps on, where neither holds, the two were within
#: about 10 % of each other, either way: N8 C2 -> 64 4x4 s2 on 56x56 0.21 / 0.20, N8 C32
#: -> 128 1x1 on 28x28 0.35 / 0.34, N8 C32 -> 64 1x1 on 56x56 0.64-0.81 / 0.69-0.73 (on
#: 256-bit vectors 0.69-0.78 / 0.68-0.70); 36 taps (N8 C4 -> 32 3x3 on 56x56) 0.37 /
#: 0.34. Measured before the dot products read the input in place (a Zen 4, ms dot
#: products / blocked): VGG's first layer (N2 C3 -> 64 3x3 on 224x224) 2.50 / 4.34-7.87,
#: MobileNetV2's (N8 C3 -> 32 3x3 s2) 1.70 / 1.89-2.78, N8 C4 -> 32 3x3 on 56x56 (36 taps)
#: 0.44 / 0.37, C3 -> 32 5x5 on 64x64 (75) 1.20 / 0.92.
AUTO_FEW_TAPS_MAX: int = _env_int("AUTO_FEW_TAPS_MAX", 32, minimum=0)
#: ... on at least this many multiply-adds (N * K * H_out * W_out * taps): the dot
#: products' fixed cost is larger than the blocked kernel's or the loops' (through
#: ``conv2d_backward``, us dot products / before: LeNet's first layer at N4, 346K
#: multiply-adds, 47.9 / 34.6; at N8, 691K, 61 / 62; at N16 87 / 116; at N64 243 / 393;
#: N4 C2 -> 8 3x3 on 32x32, 590K, 48 / 52; N2 C2 -> 2 3x3 on 6x6 11.9 / 9.4).
AUTO_FEW_TAPS_MIN_WORK: int = _env_int("AUTO_FEW_TAPS_MIN_WORK", 1 << 19, minimum=0)

#: Fewest multiply-adds (N * K * H_out * W_out * C/groups * R * S) for which ``auto``
#: runs a strided layer's grad_input (and conv_transpose2d) on the blocked kernel, a
#: stride-1 convolution per phase of the input: each phase is a call of its own, so
#: small problems pay more in calls than they gain (measured on a Zen 4 VM, 2 threads,
#: against im2col: 1.11-1.37x faster on 64 -> 128 channels 56x56, a 4x4 stride-2
#: conv_transpose2d of 128 -> 64 channels and a 5x5 layer of 32 -> 64 channels; 0.86x
#: at 4.7M and 0.5x at 1.2M multiply-adds).
AUTO_PHASES_MIN_WORK: int = _env_int("AUTO_PHASES_MIN_WORK", 1 << 24)

# --- the plan cache and autotuning -----------------------------------------------------

#: Most plans the plan cache keeps (fastconv.plans); the least recently used goes
#: first; 0 turns the cache off.
PLAN_CACHE_SIZE: int = _env_int("PLAN_CACHE_SIZE", 1024, minimum=0)

#: ``algorithm="auto"`` times the candidate kernels the first time it meets a
#: problem and remembers the fastest (fastconv.tune); ``fastconv.set_autotune``
#: changes it at run time.
AUTOTUNE: bool = _env_bool("AUTOTUNE", False)

# --- messages ------------------------------------------------------------------------

#: No line on stderr before the first kernel compile of a process ("compiling fastconv
#: kernels for conv2d (first run only, cached afterwards)...") and no progress bar in
#: ``fastconv.warmup()``.
QUIET: bool = _env_bool("QUIET", False)

# --- CUDA launch sizes (read when a kernel is launched or, for tile shapes that
# size shared memory, when the CUDA backend is first imported) ----------------------

#: Threads per block of the one-dimensional (grid-stride) kernels. At most 512: the
#: heaviest of them (float64 avg_pool2d_backward) uses 92 registers per thread, too many
#: for 1024-thread blocks.
CUDA_THREADS: int = _env_int("CUDA_THREADS", 256, maximum=512)

#: Most blocks one grid-stride launch uses; larger problems loop inside the kernel.
CUDA_MAX_BLOCKS: int = _env_int("CUDA_MAX_BLOCKS", 65535)

#: Implicit-GEMM conv2d: an output tile of CUDA_GEMM_TILE x CUDA_GEMM_TILE
#: (output channels x output positions) per block, computed CUDA_GEMM_THREAD_TILE
#: x CUDA_GEMM_THREAD_TILE values per thread, reading the reduction in chunks of
#: CUDA_GEMM_TILE_K through shared memory.
CUDA_GEMM_TILE: int = _env_int("CUDA_GEMM_TILE", 64)
CUDA_GEMM_TILE_K: int = _env_int("CUDA_GEMM_TILE_K", 16)
CUDA_GEMM_THREAD_TILE: int = _env_int("CUDA_GEMM_THREAD_TILE", 4)


# --- values not accepted (keep this part last) -------------------------------------


def problems() -> list[str]:
    """One line for each setting above whose ``FASTCONV_*`` variable holds a value that is
    not accepted: the variable, its value and what it accepts. Such a setting is left
    unset, and reading it (``config.CACHE``) raises ValueError with its line, so a kernel
    that needs it fails with that message; ``import fastconv`` does not fail, and the
    command line prints the lines and exits with status 2."""
    return list(_PROBLEMS.values())


def __getattr__(name: str) -> object:
    message = _PROBLEMS.get(name)
    if message is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    raise ValueError(message)


def _unset_refused() -> None:
    for name in _PROBLEMS:
        globals().pop(name, None)


_unset_refused()
_loading = False


# --- the generation: what cached plans compare (keep this part after the settings) ---


#: Counts the changes of any setting after import (``fastconv.config.X = v``,
#: ``setattr``, pytest's ``monkeypatch``): every plan key ends with it
#: (:func:`fastconv.plans.state`), so a plan built under other settings is never met.
_generation = 0


class _Settings(types.ModuleType):
    """This module's class: setting an attribute also counts a new generation."""

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        super().__setattr__("_generation", self._generation + 1)

    def __delattr__(self, name: str) -> None:
        super().__delattr__(name)
        super().__setattr__("_generation", self._generation + 1)


sys.modules[__name__].__class__ = _Settings
