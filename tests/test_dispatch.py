"""The kernel registry and the choice of algorithm: which kernel runs, what it is
given, how new algorithms plug in, warm-up, lazy imports and the BLAS fallback."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import config, cpu, dispatch, reference
from fastconv.cpu import blocked
from tests import background
from tests.cases import (
    CONV2D_CASES,
    DTYPES,
    case_padding,
    expected_output_shape,
    make_inputs,
    sum_tolerance,
    tolerance,
)

KERNEL_NAMES = [a for a in fastconv.available_algorithms("conv2d") if a != "auto"]
WARMUP_PROBE = Path(__file__).resolve().parent / "warmup_probe.py"


def test_available_algorithms():
    names = fastconv.available_algorithms("conv2d")
    assert isinstance(names, tuple)
    assert names[0] == "auto"
    assert {"direct", "im2col", "reference"} <= set(names)
    assert list(names[1:]) == sorted(names[1:])
    assert len(set(names)) == len(names)
    assert fastconv.available_algorithms("conv2d", device="cpu") == names


def test_unknown_op_and_device():
    with pytest.raises(ValueError, match=r"op must be one of \[.*'conv2d'.*\], got 'conv3d'"):
        fastconv.available_algorithms("conv3d")
    with pytest.raises(ValueError, match=r"device must be one of \['cpu', 'cuda'\], got 'tpu'"):
        fastconv.available_algorithms("conv2d", device="tpu")


@pytest.fixture
def ran(monkeypatch):
    """Wrap every registered conv2d kernel in a spy; the list collects the names that ran."""
    fastconv.available_algorithms("conv2d")  # load the backend before patching it
    calls: list[str] = []
    for name in KERNEL_NAMES:
        key = ("conv2d", "cpu", name)

        def spy(*args, _name=name, _kernel=dispatch._KERNELS[key], **kwargs):
            calls.append(_name)
            return _kernel(*args, **kwargs)

        monkeypatch.setitem(dispatch._KERNELS, key, spy)
    return calls


AUTO_CHOICES = [
    # (id, input shape, weight shape, kwargs, expected kernel)
    ("depthwise_3x3", (1, 32, 10, 10), (32, 1, 3, 3), dict(padding=1, groups=32), "direct"),
    ("depthwise_x2_3x3", (1, 8, 9, 9), (16, 1, 3, 3), dict(stride=2, groups=8), "direct"),
    # depthwise at any depth (49 taps > AUTO_DIRECT_MAX_DEPTH): one pass over the taps
    ("depthwise_7x7", (8, 32, 14, 14), (32, 1, 7, 7), dict(padding=3, groups=32), "direct"),
    ("depthwise_5x5_s2", (8, 32, 14, 14), (32, 1, 5, 5), dict(stride=2, padding=2, groups=32),
     "direct"),
    ("c1_5x5", (2, 1, 12, 12), (6, 1, 5, 5), {}, "direct"),
    ("c3_3x3", (1, 3, 9, 9), (4, 3, 3, 3), dict(padding=1), "direct"),
    # depth 36 > AUTO_DIRECT_MAX_DEPTH, but 64 * 4 * 36 = 9216 <= AUTO_DIRECT_MAX_WORK
    ("tiny_c4_3x3", (1, 4, 8, 8), (4, 4, 3, 3), {}, "direct"),
    # stride 1 with >= 4 filters per group: the register-blocked direct kernel ...
    ("small_c4_3x3_n8", (8, 4, 8, 8), (4, 4, 3, 3), {}, "direct"),
    ("c64_k16_3x3", (8, 64, 16, 16), (16, 64, 3, 3), dict(padding=1), "direct"),
    ("c64_3x3_few_tiles", (1, 64, 8, 8), (16, 64, 3, 3), dict(padding=1), "direct"),
    ("c3_3x3_grad_weight_rule", (2, 3, 16, 16), (8, 3, 3, 3), dict(padding=1), "direct"),
    ("c64_k8_3x3", (1, 64, 8, 8), (8, 64, 3, 3), dict(padding=1), "direct"),
    ("c64_3x3_d2", (1, 64, 8, 8), (16, 64, 3, 3), dict(dilation=2, padding=2), "direct"),
    ("c64_5x5", (1, 64, 8, 8), (16, 64, 5, 5), dict(padding=2), "direct"),
    ("c64_1x1", (1, 64, 6, 6), (8, 64, 1, 1), {}, "direct"),
    ("grouped_c64_g2", (1, 64, 6, 6), (8, 32, 3, 3), dict(padding="same", groups=2), "direct"),
    ("grouped_c64_k32_g2", (32, 64, 6, 6), (32, 32, 3, 3), dict(padding=1, groups=2),
     "direct"),
    # ... but Winograd from 64 channels with min(C, K) * H_out * W_out >= 128 * 7 * 7 on
    # at least 32 tiles,
    ("c64_k64_3x3_28", (2, 64, 28, 28), (64, 64, 3, 3), dict(padding=1), "winograd"),
    ("c128_3x3_7x7_n8", (8, 128, 7, 7), (128, 128, 3, 3), dict(padding=1), "winograd"),
    ("c64_3x3_7x7_n8", (8, 64, 7, 7), (64, 64, 3, 3), dict(padding=1), "direct"),
    ("c128_3x3_7x7", (2, 128, 7, 7), (128, 128, 3, 3), dict(padding=1), "direct"),
    ("c256_3x3_7x7", (2, 256, 7, 7), (256, 256, 3, 3), dict(padding=1), "direct"),
    # ... and im2col on deep layers where the blocked kernel wastes half its positions
    # (3x3 planes: 9 of a vector's 16); 4x4 planes fill a vector on the dense layout
    ("c256_3x3_3x3", (2, 256, 3, 3), (256, 256, 3, 3), dict(padding=1), "im2col"),
    ("c256_3x3_4x4", (2, 256, 4, 4), (256, 256, 3, 3), dict(padding=1), "direct"),
    # ... and im2col on 1x1 layers of >= 64 channels (beyond AUTO_1X1_BLOCKED_MAX_WORK
    # multiply-adds, without a 4x expansion) and strided layers of more
    ("c64_k64_1x1", (8, 64, 32, 32), (64, 64, 1, 1), {}, "im2col"),
    ("c128_k256_3x3_s2", (1, 128, 8, 8), (256, 128, 3, 3), dict(stride=2, padding=1), "im2col"),
    # strided layers of fewer channels run on the blocked kernel's phases
    ("c64_3x3_s2", (1, 64, 8, 8), (16, 64, 3, 3), dict(stride=2, padding=1), "direct"),
    ("c3_7x7_s2", (1, 3, 15, 15), (4, 3, 7, 7), dict(stride=2, padding=3), "direct"),
    # fewer than 4 filters per group: the depth rules
    ("c64_k2_3x3", (1, 64, 8, 8), (2, 64, 3, 3), dict(padding=1), "im2col"),
    ("c64_k2_3x3_s2", (1, 64, 8, 8), (2, 64, 3, 3), dict(stride=2, padding=1), "im2col"),
]


@pytest.mark.parametrize("input_shape, weight_shape, kwargs, expected",
                         [c[1:] for c in AUTO_CHOICES], ids=[c[0] for c in AUTO_CHOICES])
def test_auto_choice(ran, input_shape, weight_shape, kwargs, expected, rng):
    x = rng.uniform(-1, 1, input_shape).astype(np.float32)
    w = rng.uniform(-1, 1, weight_shape).astype(np.float32)
    y = fastconv.conv2d(x, w, **kwargs)
    assert ran == [expected]
    depth = int(np.prod(weight_shape[1:]))
    np.testing.assert_allclose(y, reference.conv2d(x, w, **kwargs),
                               **sum_tolerance(np.float32, depth))


@pytest.mark.parametrize("algorithm", KERNEL_NAMES)
def test_explicit_algorithm_runs_only_that_kernel(ran, algorithm, rng):
    x = rng.uniform(-1, 1, (1, 4, 6, 6)).astype(np.float32)
    w = rng.uniform(-1, 1, (4, 1, 3, 3)).astype(np.float32)
    fastconv.conv2d(x, w, groups=4, algorithm=algorithm)
    assert ran == [algorithm]


def _problem(weight_shape, groups=1):
    return dict(input_shape=(8, weight_shape[1] * groups, 28, 28), weight_shape=weight_shape,
                stride=(1, 1), padding=((1, 1), (1, 1)), dilation=(1, 1), groups=groups,
                dtype=np.dtype(np.float32))


def test_select_returns_name_and_kernel():
    name, kernel = dispatch.select("conv2d", "cpu", "auto", **_problem((32, 1, 3, 3), groups=32))
    assert name == "direct"
    assert kernel is dispatch._KERNELS["conv2d", "cpu", "direct"]
    name, kernel = dispatch.select("conv2d", "cpu", "auto", **_problem((64, 64, 3, 3)))
    assert name == "winograd"
    assert kernel is dispatch._KERNELS["conv2d", "cpu", "winograd"]
    name, kernel = dispatch.select("conv2d", "cpu", "auto",
                                   **dict(_problem((256, 256, 5, 5)), stride=(2, 2)))
    assert name == "im2col"
    assert kernel is dispatch._KERNELS["conv2d", "cpu", "im2col"]
    for algorithm in KERNEL_NAMES:
        name, kernel = dispatch.select("conv2d", "cpu", algorithm, **_problem((16, 64, 3, 3)))
        assert name == algorithm
        assert kernel is dispatch._KERNELS["conv2d", "cpu", algorithm]
    with pytest.raises(ValueError, match="unknown algorithm 'fft'"):
        dispatch.select("conv2d", "cpu", "fft", **_problem((16, 64, 3, 3)))


def test_auto_thresholds_are_read_from_config(monkeypatch):
    deep = _problem((64, 64, 3, 3))
    assert dispatch.select("conv2d", "cpu", "auto", **deep)[0] == "winograd"
    monkeypatch.setattr(config, "AUTO_WINOGRAD_MIN_CHANNEL_PLANE", 64 * 28 * 28 + 1)
    assert dispatch.select("conv2d", "cpu", "auto", **deep)[0] == "direct"
    assert dispatch.select("conv2d_grad_input", "cpu", "auto", **deep)[0] == "direct"
    monkeypatch.setattr(config, "AUTO_WINOGRAD_MIN_CHANNEL_PLANE", 128 * 7 * 7)
    small = dict(_problem((256, 256, 3, 3)), input_shape=(8, 256, 7, 7))  # 32 tiles
    for op in ("conv2d", "conv2d_grad_input"):
        assert dispatch.select(op, "cpu", "auto", **small)[0] == "winograd"
    monkeypatch.setattr(config, "AUTO_WINOGRAD_DEEP_MIN_TILES", 33)
    assert dispatch.select("conv2d", "cpu", "auto", **small)[0] == "direct"
    # the small-plane rule: the conv2d only, under its percentage of outputs (on 7x7: 76 %
    # with 16-float vectors)
    use = blocked.use_percent(7, 7, 3, 1, 4, 1, 9,
                              blocked.dense_work_per_copy(256, 3, 3, (1, 1), (1, 1)))
    monkeypatch.setattr(config, "AUTO_BLOCKED_MIN_USE_PERCENT", use + 1)
    assert dispatch.select("conv2d", "cpu", "auto", **small)[0] == "im2col"
    assert dispatch.select("conv2d_grad_input", "cpu", "auto", **small)[0] == "direct"
    monkeypatch.setattr(config, "AUTO_BLOCKED_SMALL_PLANE_CHANNELS", 256)
    assert dispatch.select("conv2d", "cpu", "auto", **small)[0] == "direct"
    # grad_weight has a limit of its own (the blocked kernel ties with Winograd there)
    assert dispatch.select("conv2d_grad_weight", "cpu", "auto", **small)[0] == "direct"
    assert dispatch.select("conv2d_grad_weight", "cpu", "auto", **deep)[0] == "winograd"
    # ... and its own fewest tiles: 2 * 7 * 7 = 98 tiles on 28x28 at N2, 16 at N1 on 14x14
    two = dict(deep, input_shape=(2, 64, 28, 28))
    assert dispatch.select("conv2d_grad_weight", "cpu", "auto", **two)[0] == "winograd"
    monkeypatch.setattr(config, "AUTO_WINOGRAD_GRAD_WEIGHT_MIN_TILES", 99)
    assert dispatch.select("conv2d_grad_weight", "cpu", "auto", **two)[0] == "direct"
    assert dispatch.select("conv2d_grad_weight", "cpu", "auto", **dict(
        _problem((256, 256, 3, 3)), input_shape=(1, 256, 14, 14)))[0] == "direct"
    monkeypatch.setattr(config, "AUTO_WINOGRAD_GRAD_WEIGHT_MIN_CHANNEL_PLANE", 64 * 28 * 28 + 1)
    assert dispatch.select("conv2d_grad_weight", "cpu", "auto", **deep)[0] == "direct"
    # a grad_weight whose packed image exceeds the direct scratch: Winograd by channels and
    # tiles
    large = dict(deep, input_shape=(8, 64, 256, 256))
    monkeypatch.setattr(config, "AUTO_WINOGRAD_MIN_CHANNELS", 10**6)
    assert dispatch.select("conv2d_grad_weight", "cpu", "auto", **large)[0] == "im2col"
    monkeypatch.setattr(config, "AUTO_WINOGRAD_MIN_CHANNELS", 16)
    assert dispatch.select("conv2d_grad_weight", "cpu", "auto", **large)[0] == "winograd"
    limit = config.AUTO_DIRECT_MAX_DEPTH
    choose = lambda depth: dispatch.select(  # noqa: E731
        "conv2d", "cpu", "auto", **dict(_problem((2, depth, 1, 1)), stride=(2, 2)))[0]
    assert choose(limit) == "direct"
    assert choose(limit + 1) == "im2col"
    tiny = dict(_problem((2, 4, 3, 3)), input_shape=(1, 4, 8, 8), stride=(2, 2))
    assert dispatch.select("conv2d", "cpu", "auto", **tiny)[0] == "direct"
    monkeypatch.setattr(config, "AUTO_DIRECT_MAX_WORK", 0)
    assert dispatch.select("conv2d", "cpu", "auto", **tiny)[0] == "im2col"
    monkeypatch.setattr(config, "AUTO_DIRECT_MAX_DEPTH", 0)
    depthwise = _problem((32, 1, 3, 3), groups=32)
    # depthwise layers run direct whatever their depth and stride
    for problem in (depthwise, dict(depthwise, stride=(2, 2))):
        for op in ("conv2d", "conv2d_grad_input", "conv2d_grad_weight"):
            assert dispatch.select(op, "cpu", "auto", **problem)[0] == "direct"
    monkeypatch.setattr(config, "AUTO_DIRECT_MAX_DEPTH", 10**6)
    assert dispatch.select("conv2d", "cpu", "auto", **_problem((16, 64, 3, 3)))[0] == "direct"


def test_narrow_3x3_layers_take_winograd_where_its_products_outweigh_its_transforms(
        monkeypatch):
    """3x3 stride-1 layers of 24-63 channels: Winograd for conv2d and grad_input with
    enough channel pairs, or a plane large enough for their channels, on enough tiles;
    the blocked kernel otherwise, and for grad_weight (a limit of its own)."""
    def layer(n, c, k, size):
        return dict(_problem((k, c, 3, 3)), input_shape=(n, c, size, size))

    wins = [layer(8, 32, 128, 16), layer(8, 32, 64, 16), layer(8, 32, 32, 56),
            layer(8, 24, 24, 28), layer(8, 48, 48, 14), layer(32, 32, 32, 16)]
    losses = [layer(8, 32, 32, 14), layer(32, 32, 64, 8), layer(8, 16, 16, 56),
              layer(32, 16, 32, 16), layer(16, 32, 64, 8), layer(1, 32, 32, 32)]
    for op in ("conv2d", "conv2d_grad_input"):
        assert [dispatch.select(op, "cpu", "auto", **p)[0] for p in wins] == ["winograd"] * 6
        assert [dispatch.select(op, "cpu", "auto", **p)[0] for p in losses] == ["direct"] * 6
    assert dispatch.select("conv2d_grad_weight", "cpu", "auto", **wins[2])[0] != "winograd"
    # grouped: the channels per group count; 5x5 and strided layers have rules of their own
    assert dispatch.select("conv2d", "cpu", "auto", **dict(
        layer(8, 64, 64, 56), groups=4, weight_shape=(64, 16, 3, 3)))[0] == "direct"
    assert dispatch.select("conv2d", "cpu", "auto", **dict(
        layer(8, 128, 128, 28), groups=4, weight_shape=(128, 32, 3, 3)))[0] == "winograd"
    assert dispatch.select("conv2d", "cpu", "auto", **dict(
        layer(8, 32, 32, 56), stride=(2, 2)))[0] != "winograd"
    def reason(problem):
        problem = dict(problem)
        return cpu._choose_conv("conv2d", problem.pop("weight_shape"), problem)[1]

    assert "AUTO_WINOGRAD_NARROW_MIN_CHANNEL_PAIRS = 2048" in reason(wins[0])
    assert "AUTO_WINOGRAD_NARROW_MIN_CUBED_PLANE" in reason(wins[2])
    # the thresholds are read from config
    monkeypatch.setattr(config, "AUTO_WINOGRAD_NARROW_MIN_CHANNELS", 16)
    assert dispatch.select("conv2d", "cpu", "auto", **losses[2])[0] == "winograd"
    monkeypatch.setattr(config, "AUTO_WINOGRAD_NARROW_MIN_PLANE", 8 * 8)
    assert dispatch.select("conv2d", "cpu", "auto", **losses[1])[0] == "winograd"
    pairs_only = layer(8, 32, 64, 14)  # 32^3 * 14 * 14 under the cubed plane's limit
    assert dispatch.select("conv2d", "cpu", "auto", **pairs_only)[0] == "winograd"
    monkeypatch.setattr(config, "AUTO_WINOGRAD_NARROW_MIN_CHANNEL_PAIRS", 2049)
    assert dispatch.select("conv2d", "cpu", "auto", **pairs_only)[0] == "direct"
    monkeypatch.setattr(config, "AUTO_WINOGRAD_NARROW_MIN_CUBED_PLANE", 32 ** 3 * 56 * 56 + 1)
    assert dispatch.select("conv2d", "cpu", "auto", **wins[2])[0] == "direct"
    monkeypatch.setattr(config, "AUTO_WINOGRAD_NARROW_MIN_CUBED_PLANE", 1)
    monkeypatch.setattr(config, "AUTO_WINOGRAD_MIN_TILES", 10 ** 6)
    assert dispatch.select("conv2d", "cpu", "auto", **wins[2])[0] == "direct"


def test_chooser_sees_the_normalised_problem(monkeypatch, rng):
    fastconv.available_algorithms("conv2d")
    seen = {}

    def chooser(**problem):
        seen.update(problem)
        return "reference"

    monkeypatch.setitem(dispatch._CHOOSERS, ("conv2d", "cpu"), chooser)
    x = rng.uniform(-1, 1, (4, 7, 9)).astype(np.float64)  # unbatched
    w = rng.uniform(-1, 1, (6, 2, 3, 2)).astype(np.float64)
    y = fastconv.conv2d(x, w, stride=(2, 1), padding="same", dilation=2, groups=2)
    assert seen == dict(input_shape=(1, 4, 7, 9), weight_shape=(6, 2, 3, 2), stride=(2, 1),
                        padding=((2, 2), (1, 1)), dilation=(2, 2), groups=2,
                        dtype=np.dtype(np.float64))
    np.testing.assert_allclose(
        y, reference.conv2d(x, w, stride=(2, 1), padding="same", dilation=2, groups=2),
        **tolerance(np.float64))


# --- registering a new algorithm ---------------------------------------------------------


def test_registering_an_algorithm_makes_it_usable(rng):
    fastconv.available_algorithms("conv2d")
    received = []

    def toy(x, weight, bias, out, stride, padding, dilation, groups):
        received.append(dict(x=x, weight=weight, bias=bias, out=out, stride=stride,
                             padding=padding, dilation=dilation, groups=groups))
        out[...] = reference.conv2d(x, weight, bias, stride, padding, dilation, groups)

    key = ("conv2d", "cpu", "toy")
    assert key not in dispatch._KERNELS
    dispatch.register(*key)(toy)
    try:
        assert "toy" in fastconv.available_algorithms("conv2d")
        x = rng.uniform(-1, 1, (3, 12, 11)).astype(np.float32)[:, ::2, :]  # strided, unbatched
        w = np.asfortranarray(rng.uniform(-1, 1, (4, 3, 2, 3)).astype(np.float32))
        b = rng.uniform(-1, 1, 4).astype(np.float32)
        y = fastconv.conv2d(x, w, b, stride=2, padding=((1, 0), (0, 2)), algorithm="toy")
        np.testing.assert_allclose(
            y, reference.conv2d(x, w, b, stride=2, padding=((1, 0), (0, 2))),
            **tolerance(np.float32))
        (args,) = received
        # kernels see C-contiguous 4-D arrays and plain ints only
        assert args["x"].shape == (1, 3, 6, 11) and args["x"].flags.c_contiguous
        assert args["weight"].flags.c_contiguous and args["bias"].flags.c_contiguous
        assert args["out"].shape == (1, 4, 3, 6) and args["out"].flags.c_contiguous
        assert args["stride"] == (2, 2) and args["dilation"] == (1, 1) and args["groups"] == 1
        assert args["padding"] == ((1, 0), (0, 2))
        assert all(type(v) is int for v in (*args["stride"], *args["dilation"], args["groups"],
                                            *args["padding"][0], *args["padding"][1]))
    finally:
        del dispatch._KERNELS[key]
    assert "toy" not in fastconv.available_algorithms("conv2d")
    with pytest.raises(ValueError, match="unknown algorithm 'toy'"):
        fastconv.conv2d(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 1, 1)), algorithm="toy")


def test_auto_is_reserved():
    with pytest.raises(ValueError, match="'auto' is reserved"):
        dispatch.register("conv2d", "cpu", "auto")


# --- warm-up and lazy import ---------------------------------------------------------------


def test_warmup_returns_timings_per_algorithm():
    timings = fastconv.warmup(dtypes=[np.float32])
    expected = {f"{op}/{a}/float32" for op in dispatch.OPS
                for a in fastconv.available_algorithms(op) if a not in ("auto", "reference")}
    assert set(timings) == expected
    assert {"conv2d/direct/float32", "conv2d/im2col/float32", "max_pool2d/direct/float32",
            "conv2d_grad_weight/im2col/float32"} <= expected
    assert all(isinstance(t, float) and t >= 0 for t in timings.values())
    both = fastconv.warmup(dtypes=(np.float32, "float64"))
    assert set(both) == expected | {key.replace("float32", "float64") for key in expected}


@background.command("warmup-covers")
def _warmup_probe(scratch: Path) -> background.Command:
    # an empty Numba cache of its own: the warm-up compiles everything in that process
    env = dict(os.environ, NUMBA_CACHE_DIR=str(scratch / "cache"), FASTCONV_QUIET="1")
    return background.Command([sys.executable, str(WARMUP_PROBE)], env, WARMUP_PROBE.parents[1])


@pytest.mark.background("warmup-covers")
def test_warmup_leaves_no_kernel_to_compile():
    # after warmup(float32), calls of every op with each algorithm at small and large sizes
    # (serial and threaded kernels, blocked and loop kernels, strides, groups, depthwise,
    # pooling windows) compile nothing: tests/warmup_probe.py lists what did
    done = background.wait("warmup-covers", timeout=1500)
    assert done.returncode == 0, "compiled after the warm-up:\n" + done.stdout + done.stderr[-3000:]


def test_warmup_rejects_other_dtypes():
    with pytest.raises(TypeError, match="float32 or float64, got int32"):
        fastconv.warmup(dtypes=[np.int32])


@pytest.mark.parametrize("processes, error, message", [
    (0, ValueError, "processes must be at least 1, got 0"),
    (-2, ValueError, "processes must be at least 1, got -2"),
    ("2", TypeError, "processes must be an int or None, got '2'"),
    (2.0, TypeError, "processes must be an int or None, got 2.0"),
    (True, TypeError, "processes must be an int or None, got True"),
])
def test_warmup_rejects_bad_processes(processes, error, message):
    with pytest.raises(error, match=message):
        fastconv.warmup(dtypes=[np.float32], processes=processes)


def test_warmup_helper_process_runs_steps_it_is_given():
    # the protocol of warmup()'s helper processes: "ready", then "ok <seconds>" per step,
    # "failed" for a step it cannot run; one given another fastconv's path says so and ends
    module = importlib.import_module("fastconv.warmup")  # fastconv.warmup: the function
    here = str(Path(module.__file__).resolve())
    helper = subprocess.Popen([sys.executable, "-c", module._HELPER, here], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env=dict(os.environ, FASTCONV_QUIET="1"))
    replies, _ = helper.communicate("max_pool2d direct float32\nno_such_op direct float32\n",
                                    timeout=300)
    assert helper.returncode == 0
    ready, ok, failed = replies.split("\n")[:3]
    assert ready == "ready" and failed == "failed"
    assert ok.split()[0] == "ok" and float(ok.split()[1]) >= 0
    # the parent's side: a step the helper reports done comes back with its seconds,
    # one it failed on with 0 (warmup() then runs that one itself)
    steps = [("max_pool2d", "direct", "float32"), ("no_such_op", "direct", "float32")]
    with module._Helpers(1, list(steps), None) as helping:
        helping._start()
        for _ in range(3000):
            if not helping._pending:
                break
            time.sleep(0.1)
        done = helping.finish()
    assert done[steps[0]] > 0 and done[steps[1]] == 0.0
    elsewhere = subprocess.run([sys.executable, "-c", module._HELPER, "/elsewhere/warmup.py"],
                               capture_output=True, text=True, timeout=120, input="")
    assert elsewhere.stdout == "elsewhere\n"


def _fresh_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    return result.stdout.strip()


def test_import_does_not_import_numba():
    code = ("import sys, fastconv; "
            "print('numba' in sys.modules, 'fastconv.cpu' in sys.modules); "
            "fastconv.available_algorithms('conv2d'); "
            "print('numba' in sys.modules)")
    before, after = _fresh_python(code).splitlines()
    assert before == "False False"
    assert after == "True"  # the check above can fail: the backend does import numba


# --- the BLAS fallback ---------------------------------------------------------------------

FALLBACK_CASES = [c for c in CONV2D_CASES if c.id in (
    "1x1", "3x3_s2_p1", "pad_asym", "same_s2_dil23", "groups2", "depthwise_x2_s2",
    "groups3_1x1", "deep_c24", "unbatched_3x3",
)]


@pytest.mark.parametrize("dtype", DTYPES, ids=[np.dtype(d).name for d in DTYPES])
@pytest.mark.parametrize("case", FALLBACK_CASES, ids=lambda c: c.id)
def test_im2col_with_fallback_gemm(case, dtype, rng):
    from fastconv.cpu import blas, im2col

    x, w, b = make_inputs(case, dtype, rng)
    x4 = x if x.ndim == 4 else x[None]
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    shape = expected_output_shape(case)
    out = np.full(shape if len(shape) == 4 else (1, *shape), np.nan, dtype)
    im2col.conv2d_im2col(np.ascontiguousarray(x4), w, b, out, pair(case.stride),
                         case_padding(case), pair(case.dilation), case.groups,
                         gemm=blas.fallback_gemm_for(dtype))
    np.testing.assert_allclose(out, reference.conv2d(x4, w, b, **case.kwargs), **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=[np.dtype(d).name for d in DTYPES])
@pytest.mark.parametrize("source", ["fallback", "numpy"])
def test_gemm_matches_numpy(source, dtype, rng):
    # The CBLAS contract, transposes and leading dimensions included, for the
    # fallback and for the GEMM fastconv found in numpy's own BLAS.
    from fastconv.cpu import blas

    gemm = blas.fallback_gemm_for(dtype) if source == "fallback" else blas.gemm_for(dtype)
    m, n, k = 5, 7, 4
    for trans_a in (blas.NO_TRANS, blas.TRANS):
        for trans_b in (blas.NO_TRANS, blas.TRANS):
            for beta in (0.0, 0.5):
                a = rng.uniform(-1, 1, (m, k) if trans_a == blas.NO_TRANS else (k, m)).astype(dtype)
                b = rng.uniform(-1, 1, (k, n) if trans_b == blas.NO_TRANS else (n, k)).astype(dtype)
                # matrices inside wider rows, to exercise lda, ldb, ldc
                a_store = np.zeros((a.shape[0], a.shape[1] + 3), dtype)
                a_store[:, : a.shape[1]] = a
                b_store = np.zeros((b.shape[0], b.shape[1] + 2), dtype)
                b_store[:, : b.shape[1]] = b
                c_start = rng.uniform(-1, 1, (m, n)).astype(dtype)
                c_store = np.full((m, n + 4), 99.0, dtype)
                c_store[:, :n] = c_start if beta else np.nan  # beta = 0 ignores C
                gemm(blas.ROW_MAJOR, trans_a, trans_b, m, n, k, 1.5,
                     a_store.ctypes.data, a_store.shape[1], b_store.ctypes.data, b_store.shape[1],
                     beta, c_store.ctypes.data, c_store.shape[1])
                op_a = a if trans_a == blas.NO_TRANS else a.T
                op_b = b if trans_b == blas.NO_TRANS else b.T
                expected = 1.5 * op_a.astype(np.float64) @ op_b + (beta * c_start if beta else 0)
                np.testing.assert_allclose(c_store[:, :n], expected, **tolerance(dtype))
                assert np.all(c_store[:, n:] == 99.0), "wrote past n in a row of C"


# --- algorithms that handle only some problems ---------------------------------------------


def test_winograd_refuses_what_it_cannot_compute():
    x = np.zeros((1, 2, 8, 8), np.float32)
    for w_shape, kwargs in [((2, 2, 7, 7), {}), ((2, 2, 3, 3), {"stride": 3}),
                            ((2, 2, 3, 3), {"dilation": 2}), ((2, 2, 1, 3), {})]:
        with pytest.raises(ValueError, match=r"algorithm 'winograd' cannot compute this conv2d: "
                                             r"winograd needs a 3x3 or 5x5 kernel with stride 1, "
                                             r"or a 3x3 or 4x4 kernel with stride 2 and groups "
                                             r"1, and dilation 1"):
            fastconv.conv2d(x, np.zeros(w_shape, np.float32), **kwargs, algorithm="winograd")


def test_unsupported_reason_names_nothing_for_supported_problems():
    problem = dict(weight_shape=(4, 4, 3, 3), stride=(1, 1), dilation=(1, 1))
    assert dispatch.unsupported_reason("conv2d", "cpu", "winograd", **problem) is None
    assert dispatch.unsupported_reason("conv2d", "cpu", "im2col", **problem) is None


@pytest.mark.parametrize("dtype", DTYPES, ids=[np.dtype(d).name for d in DTYPES])
@pytest.mark.parametrize("case", [c for c in CONV2D_CASES if c.id in ("3x3_p1", "groups2",
                                                                      "unbatched_3x3")],
                         ids=lambda c: c.id)
def test_winograd_with_fallback_gemm(case, dtype, rng):
    from fastconv.cpu import blas, winograd

    x, w, b = make_inputs(case, dtype, rng)
    x4 = x if x.ndim == 4 else x[None]
    shape = expected_output_shape(case)
    out = np.full(shape if len(shape) == 4 else (1, *shape), np.nan, dtype)
    winograd.conv2d_winograd(np.ascontiguousarray(x4), w, b, out, (1, 1), case_padding(case),
                             (1, 1), case.groups, gemm=blas.fallback_gemm_for(dtype))
    np.testing.assert_allclose(out, reference.conv2d(x4, w, b, **case.kwargs), **tolerance(dtype))


def test_grad_weight_of_a_shallow_layer_is_a_gemm(rng):
    """Few multiply-adds per output send conv2d and grad_input to the direct loops, but
    grad_weight's GEMM reduces over N * H * W and wins there (RESULTS.md, per-call
    cost) unless the blocked kernel applies (>= 4 filters per group); a depthwise
    layer's grad_weight stays direct."""
    x = rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    for filters, grad_weight in [(8, "direct"), (2, "im2col")]:
        w = rng.uniform(-1, 1, (filters, 3, 3, 3)).astype(np.float32)
        kernels = fastconv.explain("conv2d_backward", np.ones((2, filters, 16, 16), np.float32),
                                   x, w, padding=1)["kernels"]
        assert [(k["op"], k["algorithm"]) for k in kernels] == [
            ("conv2d_grad_input", "direct"), ("conv2d_grad_weight", grad_weight),
            ("conv2d_grad_bias", "direct")]
    depthwise = rng.uniform(-1, 1, (8, 1, 3, 3)).astype(np.float32)
    x8 = rng.uniform(-1, 1, (2, 8, 16, 16)).astype(np.float32)
    kernels = fastconv.explain("conv2d_backward", np.ones((2, 8, 16, 16), np.float32), x8,
                               depthwise, padding=1, groups=8)["kernels"]
    assert kernels[1]["algorithm"] == "direct"


def test_strided_grad_input_of_few_channels_is_a_gemm(rng):
    """At a stride, grad_input of 2-3 channels per group (outside the blocked kernel)
    runs im2col's GEMM and col2im, not the direct scatter loops (2.3-10x slower: a
    first RGB layer's 3x3 stride-2 grad_input read 17.3 ms against 3.6), and so does
    that of one channel and at least 4 filters per group (the phases kernel sums each
    filter's strip: 1.5-3x slower there); the whole call under AUTO_DIRECT_MAX_WORK
    stays direct, a depthwise layer of one or two filters per group on its phases
    kernel, and stride 1 on the direct kernel of flipped filters."""
    def pick(n, c, size, k, stride, groups=1):
        x = rng.uniform(-1, 1, (n, c, size, size)).astype(np.float32)
        w = rng.uniform(-1, 1, (k, c // groups, 3, 3)).astype(np.float32)
        dy = np.ones(fastconv.conv2d(x, w, stride=stride, padding=1, groups=groups).shape,
                     np.float32)
        kernels = fastconv.explain("conv2d_backward", dy, x, w, stride=stride, padding=1,
                                   groups=groups)["kernels"]
        return kernels[0]["algorithm"]

    assert pick(4, 3, 64, 32, 2) == "im2col"
    assert pick(8, 12, 32, 24, 2, groups=4) == "im2col"
    assert pick(2, 3, 8, 4, 2) == "direct"  # 13824 multiply-adds in all
    assert pick(4, 8, 32, 8, 2, groups=8) == "direct"  # one channel per group
    assert pick(4, 8, 32, 16, 2, groups=8) == "direct"  # and two filters
    assert pick(4, 8, 32, 32, 2, groups=8) == "im2col"  # four filters
    assert pick(4, 1, 64, 16, 2) == "im2col"  # one channel of 16 filters
    assert pick(4, 3, 64, 32, 1) == "direct"
    assert pick(4, 1, 64, 16, 1) == "direct"


def test_strided_gradients_on_the_blocked_kernels(monkeypatch):
    """At a stride, grad_weight runs on the blocked kernel (any size, 1x1 layers of 64
    channels and more excepted), and grad_input (with conv_transpose2d, the same map)
    on it from AUTO_PHASES_MIN_WORK multiply-adds on, below that on im2col."""
    def picks(n, c, size, k, r, stride, pad):
        out = (size + 2 * pad - r) // stride + 1
        kernels = fastconv.explain(
            "conv2d_backward", np.ones((n, k, out, out), np.float32),
            np.ones((n, c, size, size), np.float32), np.ones((k, c, r, r), np.float32),
            stride=stride, padding=pad)["kernels"]
        return kernels[0]["algorithm"], kernels[1]["algorithm"]

    # conv_transpose2d's backward-shaped layer: 537M multiply-adds (its grad_input, 4x4
    # of 64 channels and more, by Winograd on the phases of grad_input)
    assert picks(8, 64, 32, 128, 4, 2, 1) == ("winograd", "direct")
    assert picks(8, 64, 32, 128, 4, 2, 2) == ("direct", "direct")  # padding Winograd refuses
    # 32 -> 64 channels on 16x16 at batch 1: 1.2M multiply-adds
    assert picks(1, 32, 16, 64, 3, 2, 1) == ("im2col", "direct")
    monkeypatch.setattr(config, "AUTO_PHASES_MIN_WORK", 1 << 20)
    assert picks(1, 32, 16, 64, 3, 2, 1) == ("direct", "direct")
    assert picks(8, 256, 28, 512, 1, 2, 0)[1] == "im2col"  # a 1x1 layer: one GEMM
    x, w = np.ones((8, 128, 16, 16), np.float32), np.ones((128, 64, 4, 4), np.float32)
    choice = fastconv.explain("conv_transpose2d", x, w, stride=2, padding=2)
    assert choice["algorithm"] == "direct"


def test_strided_conv2d_of_up_to_192_channels_stays_blocked(monkeypatch, rng):
    """Strided layers of more than AUTO_BLOCKED_MAX_CHANNELS channels run on im2col,
    except the conv2d of those of at most AUTO_STRIDED_BLOCKED_MAX_CHANNELS channels with
    at least AUTO_STRIDED_BLOCKED_MIN_POSITIONS outputs a plane (not their grad_input),
    on 256-bit and 512-bit vectors alike."""
    from fastconv import cpu

    def picks(n, c, size, k, stride=2):
        x = np.ones((n, c, size, size), np.float32)
        w = np.ones((k, c, 3, 3), np.float32)
        out = (size - 1) // stride + 1
        g = np.ones((n, k, out, out), np.float32)
        kernels = fastconv.explain("conv2d_backward", g, x, w, stride=stride,
                                   padding=1)["kernels"]
        return (fastconv.explain("conv2d", x, w, stride=stride, padding=1)["algorithm"],
                kernels[0]["algorithm"])

    for wide in (False, True):
        monkeypatch.setattr(cpu, "_wide_vectors", lambda wide=wide: wide)
        assert picks(8, 128, 28, 256) == ("direct", "im2col")  # ResNet-18's 128 -> 256
        assert picks(1, 128, 28, 256) == ("direct", "im2col")  # one image: direct too
        assert picks(8, 192, 14, 384) == ("direct", "im2col")  # 7x7 outputs
        assert picks(8, 256, 14, 512) == ("im2col", "im2col")  # 256 channels
        assert picks(8, 128, 8, 256) == ("im2col", "im2col")  # 4x4 outputs
        assert picks(8, 32, 56, 64) == ("direct", "direct")  # up to 64 channels, as before
        # (64 channels on 28x28 outputs: by Winograd on the stride phases, grad_input on
        # those of its own)
        assert picks(8, 64, 56, 128) == ("winograd", "winograd")
        monkeypatch.setattr(config, "AUTO_STRIDED_BLOCKED_MAX_CHANNELS", 64)
        assert picks(8, 128, 28, 256)[0] == "im2col"
        monkeypatch.setattr(config, "AUTO_STRIDED_BLOCKED_MAX_CHANNELS", 192)
    monkeypatch.undo()
    # and the blocked kernel computes such a layer (odd sizes: a phase plane's tail)
    x = rng.standard_normal((2, 72, 15, 17)).astype(np.float32)
    w = rng.standard_normal((80, 72, 3, 3)).astype(np.float32)
    b = rng.standard_normal(80).astype(np.float32)
    assert fastconv.explain("conv2d", x, w, b, stride=2, padding=1)["algorithm"] == "direct"
    np.testing.assert_allclose(fastconv.conv2d(x, w, b, stride=2, padding=1),
                               fastconv.reference.conv2d(x, w, b, stride=2, padding=1),
                               **sum_tolerance(np.float32, 72 * 9))


def test_deep_1x1_layers_that_expand_stay_on_the_blocked_kernel(monkeypatch, rng):
    """1x1 layers of 64+ channels run on im2col's one GEMM, except at stride 1 those
    whose convolution (grad_input: the transposed one) has AUTO_1X1_BLOCKED_MIN_EXPANSION
    times more filters than channels, and small calls; grad_weight where it has fewer
    filters than channels (the blocked kernel reads x in place). The expanding conv2d
    and the in-place grad_weight on 512-bit vectors only: on 256-bit ones im2col's GEMM
    wins them too. Not on planes where the blocked kernel's last vectors would be mostly
    past the outputs (7x7), where im2col wins (AUTO_1X1_BLOCKED_MIN_USE_PERCENT)."""
    from fastconv import cpu

    monkeypatch.setattr(cpu, "_wide_vectors", lambda: True)
    def picks(n, c, size, k, stride=1):
        out = (size - 1) // stride + 1
        kernels = fastconv.explain(
            "conv2d_backward", np.ones((n, k, out, out), np.float32),
            np.ones((n, c, size, size), np.float32), np.ones((k, c, 1, 1), np.float32),
            stride=stride)["kernels"]
        forward = fastconv.explain("conv2d", np.ones((n, c, size, size), np.float32),
                                   np.ones((k, c, 1, 1), np.float32), stride=stride)
        return forward["algorithm"], kernels[0]["algorithm"], kernels[1]["algorithm"]

    assert picks(8, 64, 56, 256) == ("direct", "im2col", "im2col")  # expands 4x
    assert picks(8, 256, 56, 64) == ("im2col", "direct", "direct")  # its grad_input expands
    assert picks(8, 128, 28, 256) == ("im2col", "im2col", "im2col")  # 2x: one GEMM
    assert picks(1, 256, 14, 64) == ("direct", "direct", "direct")  # 3.2M multiply-adds
    assert picks(8, 256, 14, 64) == ("im2col", "direct", "direct")  # layer g
    assert picks(8, 256, 14, 1024)[0] == "direct"  # 14x14: 94 % of its positions are outputs
    assert picks(8, 160, 7, 960)[0] == "im2col"  # 7x7: 76 %, whatever the expansion...
    assert picks(1, 160, 7, 960)[0] == "im2col"  # ... and the work
    assert picks(8, 960, 7, 160)[1] == "im2col"  # the same for grad_input
    assert picks(8, 2048, 7, 512)[2] == "im2col"  # im2col gathers 7x7 planes' images...
    assert picks(1, 2048, 7, 512)[2] == "im2col"  # ... one image's too
    assert picks(8, 64, 56, 256, stride=2)[0] == "im2col"
    assert picks(8, 256, 56, 64, stride=2)[2] == "im2col"  # packed at a stride: one GEMM
    monkeypatch.setattr(config, "AUTO_1X1_BLOCKED_MIN_EXPANSION", 2)
    assert picks(8, 128, 28, 256)[0] == "direct"
    monkeypatch.setattr(cpu, "_wide_vectors", lambda: False)
    assert picks(8, 128, 28, 256) == ("im2col", "im2col", "im2col")
    assert picks(8, 256, 56, 64) == ("im2col", "direct", "im2col")  # grad_input as before
    assert picks(1, 256, 14, 64) == ("direct", "direct", "im2col")  # small: conv2d direct
    monkeypatch.setattr(cpu, "_wide_vectors", lambda: True)
    # and the blocked kernel computes them
    x = rng.standard_normal((2, 64, 12, 12)).astype(np.float32)
    w = rng.standard_normal((256, 64, 1, 1)).astype(np.float32)
    b = rng.standard_normal(256).astype(np.float32)
    assert fastconv.explain("conv2d", x, w, b)["algorithm"] == "direct"
    np.testing.assert_allclose(fastconv.conv2d(x, w, b), fastconv.reference.conv2d(x, w, b),
                               rtol=1e-4, atol=1e-4)
    # grad_input of 256 -> 64 channels: its transposed convolution expands 64 -> 256
    x = rng.standard_normal((2, 256, 12, 12)).astype(np.float32)
    w = rng.standard_normal((64, 256, 1, 1)).astype(np.float32)
    g = rng.standard_normal((2, 64, 12, 12)).astype(np.float32)
    assert fastconv.explain("conv2d_backward", g, x, w)["kernels"][0]["algorithm"] == "direct"
    got, got_weight, _ = fastconv.conv2d_backward(g, x, w, needs_bias_grad=False)
    expected, expected_weight, _ = fastconv.reference.conv2d_backward(g, x, w)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # and its weight gradient, on the blocked kernel reading x in place
    assert fastconv.explain("conv2d_backward", g, x, w)["kernels"][1]["algorithm"] == "direct"
    np.testing.assert_allclose(got_weight, expected_weight, rtol=1e-4, atol=1e-3)
