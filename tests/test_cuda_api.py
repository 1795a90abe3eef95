"""The public ops on the GPU: device follows data, ``device=``, result kinds, errors, and
every op's GPU algorithms against :mod:`fastconv.reference` through the public API.

Without a GPU these run under Numba's CUDA simulator (tests/conftest.py turns it
on), on a subset of the shared case tables that still covers every argument
form: the simulator runs each GPU thread as Python. On a GPU machine the same
tests run on the GPU, and the PyTorch tests compare with PyTorch's CUDA ops.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
import fastconv.cuda
from fastconv import config, reference
from fastconv.placement import is_device_array

from .cases import CONV2D_CASES, make_inputs, tolerance
from .pool_cases import AVG_OPTIONS, POOL_CASES, tie_free, uniform

pytestmark = pytest.mark.skipif(not fastconv.cuda.is_available(),
                                reason="no GPU and no CUDA simulator")

if fastconv.cuda.is_available():
    from numba import cuda

#: conv2d cases that together cover every argument form (see tests/cases.py).
GPU_CONV_IDS = ["1x1_s2_odd", "3x3_p1", "3x3_valid_nobias", "4x4_s2_p1", "5x2_s21_pad21",
                "pad_asym", "same_s2_dil23", "dil2_s2_p1", "groups2", "depthwise_x2_s2",
                "unbatched_3x3", "kernel_eq_input", "1xS_on_1row"]
GPU_CONV_CASES = [case for case in CONV2D_CASES if case.id in GPU_CONV_IDS]
GPU_POOL_IDS = ["2x2", "2x2_odd_ceil", "3x3_s2_p1", "3x2_s21_p10", "2x3_s12_p01_ceil",
                "2x2_s3", "unbatched_3x3_s2_p1", "dil23_s2_p1_ceil"]
GPU_POOL_CASES = [case for case in POOL_CASES if case.id in GPU_POOL_IDS]


@pytest.fixture(autouse=True)
def _small_launches(monkeypatch):
    """Small blocks and few of them: several blocks and the grid-stride loops run."""
    monkeypatch.setattr(config, "CUDA_THREADS", 32)
    monkeypatch.setattr(config, "CUDA_MAX_BLOCKS", 3)


def gpu(array):
    return cuda.to_device(np.ascontiguousarray(array))


def host(array):
    return None if array is None else array.copy_to_host()


def gpu_algorithms(op):
    return [name for name in fastconv.available_algorithms(op, "cuda") if name != "reference"]


def assert_close(actual, expected, dtype):
    np.testing.assert_allclose(actual, expected, **tolerance(dtype))


# --- convolution ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["auto", "direct", "implicit_gemm"])
@pytest.mark.parametrize("case", GPU_CONV_CASES, ids=lambda case: case.id)
def test_conv2d_matches_reference(case, algorithm, rng):
    x, w, b = make_inputs(case, np.float32, rng)
    y = fastconv.conv2d(gpu(x), gpu(w), None if b is None else gpu(b), **case.kwargs,
                        algorithm=algorithm)
    assert is_device_array(y)
    assert_close(host(y), reference.conv2d(x, w, b, **case.kwargs), np.float32)


@pytest.mark.parametrize("algorithm", ["auto", "direct", "implicit_gemm"])
def test_conv2d_relu_epilogue_on_the_gpu(algorithm, rng):
    case = GPU_CONV_CASES[0]
    x, w, b = make_inputs(case, np.float32, rng)
    y = fastconv.conv2d(gpu(x), gpu(w), None if b is None else gpu(b), **case.kwargs,
                        algorithm=algorithm, activation="relu")
    expected = reference.conv2d(x, w, b, **case.kwargs, activation="relu")
    assert (expected == 0).any()
    assert_close(host(y), expected, np.float32)


@pytest.mark.parametrize(("case", "dtype"), [
    *((case, np.float32) for case in GPU_CONV_CASES),
    *((case, np.float64) for case in GPU_CONV_CASES if case.id in ("4x4_s2_p1", "pad_asym")),
], ids=lambda value: getattr(value, "id", None) or np.dtype(value).name)
def test_conv2d_backward_matches_reference(case, dtype, rng):
    x, w, _ = make_inputs(case, dtype, rng)
    y_shape = reference.conv2d(x, w, None, **case.kwargs).shape
    dy = rng.uniform(-1, 1, y_shape).astype(dtype)
    expected = reference.conv2d_backward(dy, x, w, **case.kwargs)
    for algorithm in gpu_algorithms("conv2d_grad_input"):
        got = fastconv.conv2d_backward(gpu(dy), gpu(x), gpu(w), **case.kwargs,
                                       algorithm=algorithm)
        for actual, wanted in zip(got, expected, strict=True):
            assert_close(host(actual), wanted, dtype)


TRANSPOSE_FORMS = [
    dict(stride=2, padding=1),
    dict(stride=2, padding=1, output_padding=1),
    dict(stride=(2, 3), padding=(0, 1), output_size=(9, 13)),
    dict(stride=1, padding=1, dilation=2, groups=2),
]


@pytest.mark.parametrize("form", TRANSPOSE_FORMS, ids=str)
def test_conv_transpose2d_and_backward(form, rng):
    x = rng.uniform(-1, 1, (2, 4, 4, 5)).astype(np.float64)
    w = rng.uniform(-1, 1, (4, 3, 3, 3)).astype(np.float64)
    b = rng.uniform(-1, 1, 3 * form.get("groups", 1))
    y = fastconv.conv_transpose2d(gpu(x), gpu(w), gpu(b), **form)
    expected = reference.conv_transpose2d(x, w, b, **form)
    assert_close(host(y), expected, np.float64)
    dy = rng.uniform(-1, 1, expected.shape)
    got = fastconv.conv_transpose2d_backward(gpu(dy), gpu(x), gpu(w), **form)
    for actual, wanted in zip(got, reference.conv_transpose2d_backward(dy, x, w, **form),
                              strict=True):
        assert_close(host(actual), wanted, np.float64)


def test_conv2d_out_and_strided_views(rng):
    case = next(case for case in GPU_CONV_CASES if case.id == "3x3_p1")
    x, w, b = make_inputs(case, np.float32, rng)
    expected = reference.conv2d(x, w, b, **case.kwargs)
    # a non-contiguous GPU input: every other column of a wider copy
    x_view = gpu(np.repeat(x, 2, axis=3))[:, :, :, ::2]
    assert not x_view.is_c_contiguous()
    assert_close(host(fastconv.conv2d(x_view, gpu(w), gpu(b), **case.kwargs)), expected,
                 np.float32)
    out = cuda.device_array(expected.shape, np.float32)
    result = fastconv.conv2d(gpu(x), gpu(w), gpu(b), **case.kwargs, out=out)
    assert result is out
    assert_close(host(out), expected, np.float32)


def test_grad_weight_and_bias_are_deterministic(rng):
    case = next(case for case in GPU_CONV_CASES if case.id == "pad_asym")
    x, w, _ = make_inputs(case, np.float32, rng)
    dy = rng.uniform(-1, 1, reference.conv2d(x, w, **case.kwargs).shape).astype(np.float32)
    for algorithm in gpu_algorithms("conv2d_grad_weight"):
        runs = [fastconv.conv2d_backward(gpu(dy), gpu(x), gpu(w), **case.kwargs,
                                         needs_input_grad=False, algorithm=algorithm)
                for _ in range(2)]
        assert np.array_equal(host(runs[0][1]), host(runs[1][1]))
        assert np.array_equal(host(runs[0][2]), host(runs[1][2]))


# --- pooling and unpooling -------------------------------------------------------------


@pytest.mark.parametrize("case", GPU_POOL_CASES, ids=lambda case: case.id)
def test_max_pool2d_backward_and_unpool(case, rng):
    x = tie_free(case.input_shape, np.float32, rng)
    y, indices = fastconv.max_pool2d(gpu(x), **case.max_kwargs, return_indices=True)
    want_y, want_indices = reference.max_pool2d(x, **case.max_kwargs, return_indices=True)
    np.testing.assert_array_equal(host(y), want_y)
    np.testing.assert_array_equal(host(indices), want_indices)
    assert host(indices).dtype == np.int64
    dy = uniform(want_y.shape, np.float32, rng)
    gx = fastconv.max_pool2d_backward(gpu(dy), indices, x.shape)
    assert_close(host(gx), reference.max_pool2d_backward(dy, want_indices, x.shape), np.float32)
    if not case.dilated:
        kwargs = dict(kernel_size=case.kernel_size, stride=case.stride, padding=case.padding,
                      output_size=x.shape[-2:])
        unpooled = fastconv.max_unpool2d(y, indices, **kwargs)
        np.testing.assert_array_equal(host(unpooled),
                                      reference.max_unpool2d(want_y, want_indices, **kwargs))
        back = fastconv.max_unpool2d_backward(gpu(x), indices)
        np.testing.assert_array_equal(host(back),
                                      reference.max_unpool2d_backward(x, want_indices))


@pytest.mark.parametrize("options", AVG_OPTIONS.values(), ids=AVG_OPTIONS.keys())
@pytest.mark.parametrize("case", [c for c in GPU_POOL_CASES if not c.dilated],
                         ids=lambda case: case.id)
def test_avg_pool2d_and_backward(case, options, rng):
    x = uniform(case.input_shape, np.float64, rng)
    y = fastconv.avg_pool2d(gpu(x), **case.pool_kwargs, **options)
    expected = reference.avg_pool2d(x, **case.pool_kwargs, **options)
    assert_close(host(y), expected, np.float64)
    dy = uniform(expected.shape, np.float64, rng)
    gx = fastconv.avg_pool2d_backward(gpu(dy), x.shape, **case.pool_kwargs, **options)
    assert_close(host(gx), reference.avg_pool2d_backward(dy, x.shape, **case.pool_kwargs,
                                                         **options), np.float64)


@pytest.mark.parametrize("scale", [2, (1, 3)])
def test_repeat_unpool2d_and_backward(scale, rng):
    x = uniform((2, 3, 4, 5), np.float32, rng)
    y = fastconv.repeat_unpool2d(gpu(x), scale)
    np.testing.assert_array_equal(host(y), reference.repeat_unpool2d(x, scale))
    dy = uniform(host(y).shape, np.float32, rng)
    assert_close(host(fastconv.repeat_unpool2d_backward(gpu(dy), scale)),
                 reference.repeat_unpool2d_backward(dy, scale), np.float32)


def test_bad_indices_are_reported_as_on_the_cpu(rng):
    dy = uniform((1, 2, 3, 3), np.float32, rng)
    indices = np.zeros((1, 2, 3, 3), np.int64)
    indices[0, 1, 2, 0] = 99
    with pytest.raises(ValueError, match=r"indices holds 99 at \(0, 1, 2, 0\), outside \[0, 36\)"):
        fastconv.max_pool2d_backward(gpu(dy), gpu(indices), (1, 2, 6, 6))
    with pytest.raises(ValueError, match=r"indices holds 99 at \(0, 1, 2, 0\)"):
        fastconv.max_unpool2d(gpu(dy), gpu(indices), 2)


# --- where an op runs, and what it returns -----------------------------------------------


def test_algorithms_on_the_gpu():
    assert fastconv.available_algorithms("conv2d", "cuda")[0] == "auto"
    assert {"direct", "implicit_gemm", "reference"} <= set(
        fastconv.available_algorithms("conv2d", "cuda"))
    for op in fastconv.dispatch.OPS:
        assert "reference" in fastconv.available_algorithms(op, "cuda")


def test_device_keyword_copies_numpy_to_the_gpu_and_back(rng):
    x = uniform((3, 6, 7), np.float32, rng)  # unbatched
    w = uniform((2, 3, 3, 3), np.float32, rng)
    y = fastconv.conv2d(x, w, padding=1, device="cuda")
    assert type(y) is np.ndarray and y.shape == (2, 6, 7)
    assert_close(y, reference.conv2d(x[None], w, padding=1)[0], np.float32)
    pooled, indices = fastconv.max_pool2d(x, 2, return_indices=True, device="cuda:0")
    assert type(pooled) is np.ndarray and indices.dtype == np.int64
    np.testing.assert_array_equal(pooled, fastconv.max_pool2d(x, 2))


def test_device_arrays_in_device_arrays_out(rng):
    x = uniform((1, 2, 4, 4), np.float32, rng)
    y = fastconv.avg_pool2d(gpu(x), 2)
    assert is_device_array(y) and y.shape == (1, 2, 2, 2)
    y3 = fastconv.avg_pool2d(gpu(x[0]), 2)  # unbatched stays unbatched
    assert y3.shape == (2, 2, 2)


def test_mixing_host_and_gpu_arrays_is_an_error(rng):
    x = uniform((1, 2, 5, 5), np.float32, rng)
    w = uniform((3, 2, 3, 3), np.float32, rng)
    with pytest.raises(ValueError, match=r"input is a GPU array .* but weight is a host array"):
        fastconv.conv2d(gpu(x), w)
    with pytest.raises(ValueError, match=r"weight is a GPU array .* but input is a host array"):
        fastconv.conv2d(x, gpu(w))
    with pytest.raises(ValueError, match=r"device='cpu' but input is a GPU array"):
        fastconv.conv2d(gpu(x), gpu(w), device="cpu")
    with pytest.raises(ValueError, match=r"indices is a GPU array .* grad_output is a host"):
        fastconv.max_pool2d_backward(x, gpu(np.zeros(x.shape, np.int64)), (1, 2, 10, 10))
    # device="cuda" copies the host arguments: not silent, asked for
    y = fastconv.conv2d(gpu(x), w, device="cuda")
    assert_close(host(y), reference.conv2d(x, w), np.float32)


def test_gpu_argument_errors_match_the_cpu(rng):
    x = uniform((1, 2, 5, 5), np.float32, rng)
    w = uniform((3, 2, 3, 3), np.float32, rng)
    with pytest.raises(TypeError, match="weight has dtype float64 but input has dtype float32"):
        fastconv.conv2d(gpu(x), gpu(w.astype(np.float64)))
    with pytest.raises(TypeError, match="input must have dtype float32 or float64, got int32"):
        fastconv.conv2d(gpu(x.astype(np.int32)), gpu(w))
    with pytest.raises(ValueError, match=r"weight.shape\[1\] must be C/groups"):
        fastconv.conv2d(gpu(x), gpu(w[:, :1]))
    with pytest.raises(ValueError, match="out must be a GPU array of shape"):
        fastconv.conv2d(gpu(x), gpu(w), out=cuda.device_array((1, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="input is a GPU array .* but out is a host array"):
        fastconv.conv2d(gpu(x), gpu(w), out=np.empty((1, 3, 3, 3), np.float32))
    with pytest.raises(TypeError, match="out must be a GPU array"):
        fastconv.conv2d(x, w, out=np.empty((1, 3, 3, 3), np.float32), device="cuda")
    with pytest.raises(TypeError, match="indices must be an integer array"):
        fastconv.max_unpool2d(gpu(x), gpu(x), 2)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", 0])
def test_bad_device_names(device, rng):
    x = uniform((1, 1, 4, 4), np.float32, rng)
    error = TypeError if not isinstance(device, str) else ValueError
    with pytest.raises(error, match="device must be None .*'cpu', 'cuda' or 'cuda:N'"):
        fastconv.max_pool2d(x, 2, device=device)


def test_no_gpu_is_a_clear_error(monkeypatch, rng):
    monkeypatch.setattr(fastconv.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA backend is not available"):
        fastconv.avg_pool2d(uniform((1, 1, 4, 4), np.float32, rng), 2, device="cuda")


# --- PyTorch CUDA tensors (GPU machines only) --------------------------------------------


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if (not fastconv.cuda.simulated() and torch.cuda.is_available()) else None


@pytest.mark.skipif(_torch_cuda() is None, reason="needs PyTorch with a CUDA GPU")
def test_torch_cuda_tensors_in_and_out(rng):
    torch = _torch_cuda()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.randn(2, 8, 12, 12, device="cuda", dtype=torch.float64)
    w = torch.randn(6, 4, 3, 3, device="cuda", dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, device="cuda", dtype=torch.float64)
    y = fastconv.conv2d(x, w, b, stride=2, padding=1, groups=2)
    assert isinstance(y, torch.Tensor) and y.is_cuda
    expected = torch.nn.functional.conv2d(x, w, b, stride=2, padding=1, groups=2)
    torch.testing.assert_close(y, expected.detach())
    pooled, indices = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    want, want_indices = torch.nn.functional.max_pool2d(x, 3, 2, 1, return_indices=True)
    torch.testing.assert_close(pooled, want)
    assert torch.equal(indices, want_indices)
    # a strided (non-contiguous) tensor
    xt = x.transpose(2, 3)
    torch.testing.assert_close(fastconv.avg_pool2d(xt, 2),
                               torch.nn.functional.avg_pool2d(xt, 2))


def test_bench_device_cuda(capsys, monkeypatch):
    """``bench --device cuda`` takes the same --cases as the CPU (op:name, the old op|name
    too) and prints the CPU's table; it sets the allocator (mocked: this is pytest's
    process) as the command line does."""
    from fastconv import bench
    from fastconv.__main__ import main

    configured = []
    monkeypatch.setattr(bench, "configure_allocator", lambda: configured.append(1))
    assert main(["bench", "--device", "cuda", "--cases", "max_pool2d:2x2s2,repeat_unpool2d",
                 "--quick"]) == 0
    out = capsys.readouterr().out
    assert "fastconv CUDA vs PyTorch" in out and "repeat_unpool2d:x2 " in out
    assert "max_pool2d:2x2s2 " in out and "correctness: all results within" in out
    assert max(map(len, out.splitlines())) <= 100
    assert "speed bar" not in out and "NOT MET" not in out
    assert configured == [1]
    assert main(["bench", "--device", "cuda", "--cases", "max_pool2d|2x2s2", "--quick",
                 "--format", "csv"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith("id,op,case,batch,")
    assert {line.split(",")[0] for line in lines[1:]} == {"max_pool2d:2x2s2"}
    assert "--cases op|name is deprecated" in captured.err
    assert main(["bench", "--device", "cuda", "--cases", "conv3d"]) == 2
    assert "unknown case 'conv3d'" in capsys.readouterr().err


class _FakeTensor:
    """Stands in for a PyTorch CUDA tensor on GPU ``index``: only what device inference
    reads (``is_cuda``, ``device.index``)."""

    __module__ = "torch.fake"

    def __init__(self, index: int) -> None:
        self.is_cuda = True
        self.device = type("Device", (), {"index": index})()


class _FakeInterface:
    """Anything exposing ``__cuda_array_interface__`` (CuPy, a custom array)."""

    __cuda_array_interface__ = {"shape": (1,), "typestr": "<f4", "data": (0, False),
                                "version": 3}


def test_device_inference_from_each_array_kind(rng):
    import torch

    from fastconv.placement import Host, placement

    assert not is_device_array(np.zeros(3)) and not is_device_array([1.0, 2.0])
    assert not is_device_array(torch.zeros(3, requires_grad=True))  # a CPU tensor
    assert is_device_array(gpu(np.zeros(3)))
    assert is_device_array(_FakeTensor(0)) and is_device_array(_FakeInterface())
    assert isinstance(placement(None, input=np.zeros(3), weight=None), Host)
    assert placement(None, input=gpu(np.zeros(3))).device == "cuda"
    assert placement("cuda", input=np.zeros(3)).device == "cuda"


def test_arrays_on_two_gpus_are_an_error():
    from fastconv.placement import placement

    with pytest.raises(ValueError, match="input is on cuda:0 but weight is on cuda:1"):
        placement(None, input=_FakeTensor(0), weight=_FakeTensor(1))
    with pytest.raises(ValueError, match=r"device='cuda:1' but input is on cuda:0"):
        placement("cuda:1", input=_FakeTensor(0))
    count = len(cuda.gpus)
    with pytest.raises(ValueError, match=rf"device='cuda:{count}' but there are {count} GPUs"):
        placement(f"cuda:{count}", input=np.zeros((1, 1, 2, 2)))


def test_gpu_indices_of_another_integer_type_or_rank(rng):
    x = uniform((1, 2, 4, 4), np.float32, rng)
    y, indices = fastconv.max_pool2d(x, 2, return_indices=True)
    unpooled = fastconv.max_unpool2d(gpu(y), gpu(indices.astype(np.int32)), 2)
    np.testing.assert_array_equal(host(unpooled), fastconv.max_unpool2d(y, indices, 2))
    with pytest.raises(ValueError, match=r"indices must have the shape of input"):
        fastconv.max_unpool2d(gpu(y), gpu(indices[0, 0].astype(np.int32)), 2)
