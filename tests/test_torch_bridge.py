"""fastconv.torch, the PyTorch bridge: every autograd Function under ``gradcheck`` in
float64 and against ``torch.nn.functional`` (an independent oracle) in both dtypes;
the modules against their ``torch.nn`` namesakes (same init, state_dicts loaded both
ways, outputs and gradients); the ``needs_input_grad`` and ``algorithm`` plumbing;
memory layouts; the same small CNN trained with torch.nn layers and with
fastconv.torch layers, step by step; errors; and that ``import fastconv`` alone
does not import torch.

Every test runs the default route of eager mode (each op's implementation called
directly, through an autograd.Function where a graph is recorded); the last section
shows that it equals the custom ops' route (``torch.ops.fastconv.*``, which
torch.compile, make_fx, jit.trace, FakeTensors and torch.func get) bitwise, error for
error, and under autocast, and that tracing does get the custom ops.

Tolerances are :func:`tests.cases.tolerance`'s: a few ulps of O(10) values, with a
10-100x margin.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fastconv  # noqa: E402
import fastconv.torch as fct  # noqa: E402
from tests.cases import tolerance  # noqa: E402
from tests.pool_cases import tie_free  # noqa: E402

DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["float32", "float64"]
ROOT = Path(__file__).resolve().parents[1]


def assert_close(actual, expected):
    """Equal dtype, device and shape, values within the dtype's tolerance."""
    tol = tolerance(np.float64 if expected.dtype == torch.float64 else np.float32)
    torch.testing.assert_close(actual, expected, **tol)


def uniform(shape, dtype, rng, requires_grad=True):
    array = rng.uniform(-1.0, 1.0, shape)
    return torch.tensor(array, dtype=dtype, requires_grad=requires_grad)


def distinct(shape, dtype, rng, requires_grad=True):
    """Tie-free values: a small step moves no maximum to another position."""
    return torch.tensor(tie_free(shape, np.float64, rng), dtype=dtype,
                        requires_grad=requires_grad)


def leaves(*tensors):
    """Fresh leaf copies of ``tensors`` (None stays None), keeping requires_grad."""
    return [None if t is None else t.detach().clone().requires_grad_(t.requires_grad)
            for t in tensors]


def assert_matches(ours, theirs, inputs, rng):
    """``ours(*inputs)`` equals ``theirs(*inputs)``, and so do the gradients of every input
    that requires grad, for one random ``grad_output``."""
    a_inputs, b_inputs = leaves(*inputs), leaves(*inputs)
    a, b = ours(*a_inputs), theirs(*b_inputs)
    assert_close(a, b)
    grad_output = torch.tensor(rng.uniform(-1.0, 1.0, tuple(b.shape)), dtype=b.dtype)
    a.backward(grad_output)
    b.backward(grad_output)
    for a_input, b_input in zip(a_inputs, b_inputs, strict=True):
        if b_input is not None and b_input.requires_grad:
            assert_close(a_input.grad, b_input.grad)


@pytest.fixture(params=["eager", "custom_op"])
def route(request, monkeypatch):
    """Runs a test on both routes to an op's implementation: plain eager (the default in
    eager mode: the implementation itself, through an autograd.Function only where a graph
    is recorded) and the custom op (``torch.ops.fastconv.*``, which tracing gets)."""
    if request.param == "custom_op":
        monkeypatch.setattr(fct, "_plain_eager", lambda tensors: False)
    return request.param


# --- import ------------------------------------------------------------------------------


def test_import_fastconv_does_not_import_torch_and_the_bridge_finds_the_real_torch():
    code = ("import fastconv, sys; assert 'torch' not in sys.modules; "
            "import fastconv.torch as fct, torch; "
            "assert fct.torch is torch and torch.autograd.Function is not None; "
            "print(fct.__name__, torch.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["fastconv.torch", "torch"]


# --- the Functions: gradcheck in float64, and torch.nn.functional as the oracle ---------

#: (id, input shape, weight shape, bias, keyword arguments)
CONV_CASES = [
    ("plain", (2, 3, 6, 5), (4, 3, 3, 3), True, {}),
    ("stride_padding", (1, 2, 7, 6), (3, 2, 3, 2), True, dict(stride=2, padding=1)),
    ("stride_hw_padding_hw", (1, 2, 7, 6), (3, 2, 3, 3), False,
     dict(stride=(2, 1), padding=(1, 0))),
    ("dilation", (1, 2, 7, 7), (2, 2, 3, 3), True, dict(dilation=2, padding=2)),
    ("dilation_hw", (1, 2, 7, 8), (2, 2, 2, 3), True, dict(dilation=(3, 2), stride=(1, 2))),
    ("groups", (1, 4, 5, 5), (6, 2, 3, 3), True, dict(groups=2, padding=1)),
    ("depthwise", (2, 3, 5, 5), (3, 1, 3, 3), False, dict(groups=3, stride=2)),
    ("same_even_kernel", (1, 2, 5, 6), (2, 2, 4, 2), True, dict(padding="same")),
    ("valid", (1, 2, 5, 6), (2, 2, 3, 3), True, dict(padding="valid")),
    ("unbatched", (2, 5, 5), (3, 2, 3, 3), True, dict(padding=1)),
]

#: (id, input shape, weight shape (C_in, C_out/groups, R, S), bias, keyword arguments)
TRANSPOSE_CASES = [
    ("plain", (2, 3, 4, 4), (3, 2, 3, 3), True, {}),
    ("stride_output_padding", (1, 2, 3, 4), (2, 3, 3, 3), True,
     dict(stride=2, padding=1, output_padding=1)),
    ("stride_hw_output_padding_hw", (1, 2, 3, 3), (2, 2, 2, 3), False,
     dict(stride=(3, 2), padding=(1, 0), output_padding=(2, 1))),
    ("groups_dilation", (1, 4, 3, 3), (4, 1, 3, 3), True, dict(groups=2, dilation=2, padding=1)),
    ("output_padding_below_dilation", (1, 2, 3, 3), (2, 2, 2, 2), True,
     dict(dilation=2, output_padding=1)),
    ("unbatched", (2, 3, 3), (2, 2, 3, 3), True, dict(stride=2)),
]

#: (id, input shape, keyword arguments)
MAX_POOL_CASES = [
    ("k2", (2, 3, 4, 6), dict(kernel_size=2)),
    ("overlapping_s1", (1, 2, 5, 5), dict(kernel_size=3, stride=1)),
    ("k3_s2_p1_ceil", (1, 2, 6, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("k2_ceil_odd", (1, 2, 5, 5), dict(kernel_size=2, ceil_mode=True)),
    ("rect_dilation", (1, 2, 7, 8), dict(kernel_size=(2, 3), stride=(1, 2), padding=1,
                                         dilation=2)),
    ("unbatched", (2, 5, 5), dict(kernel_size=2, stride=1)),
]

AVG_POOL_CASES = [
    ("k2", (2, 3, 4, 6), dict(kernel_size=2)),
    ("k3_s2_p1", (1, 2, 6, 7), dict(kernel_size=3, stride=2, padding=1)),
    ("ceil_exclude_pad", (1, 2, 6, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                            count_include_pad=False)),
    ("ceil_include_pad", (1, 2, 5, 5), dict(kernel_size=2, ceil_mode=True)),
    ("divisor_override", (1, 2, 5, 5), dict(kernel_size=(2, 3), stride=1, padding=1,
                                            divisor_override=5)),
    ("unbatched", (2, 5, 5), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
]

#: (id, pooled input shape, pooling arguments, output_size): non-overlapping windows, so
#: that no two indices coincide (where they do, the forward keeps one value but the
#: backward reads the position for both, in PyTorch too, and gradcheck would fail).
UNPOOL_CASES = [
    ("k2", (2, 3, 4, 6), dict(kernel_size=2), None),
    ("odd_output_size", (1, 2, 5, 7), dict(kernel_size=2), "input"),
    ("k2_p1", (1, 2, 5, 5), dict(kernel_size=2, padding=1), "input"),
    ("rect", (1, 2, 4, 6), dict(kernel_size=(2, 3)), None),
    ("unbatched", (2, 4, 4), dict(kernel_size=2), None),
]

REPEAT_CASES = [("2", (2, 3, 3, 4), 2), ("2x3", (1, 2, 3, 2), (2, 3)),
                ("unbatched", (2, 3, 3), 2)]


def ids(cases):
    return [case[0] for case in cases]


def conv_inputs(input_shape, weight_shape, bias, dtype, rng):
    b = uniform(weight_shape[0], dtype, rng) if bias else None
    return uniform(input_shape, dtype, rng), uniform(weight_shape, dtype, rng), b


def transpose_inputs(input_shape, weight_shape, bias, kwargs, dtype, rng):
    out_channels = weight_shape[1] * kwargs.get("groups", 1)
    b = uniform(out_channels, dtype, rng) if bias else None
    return uniform(input_shape, dtype, rng), uniform(weight_shape, dtype, rng), b


def pooled_with_indices(shape, pool, dtype, rng):
    """A max_pool2d output of tie-free data with its indices, and the pooled input's shape."""
    x = distinct(shape, dtype, rng, requires_grad=False)
    y, indices = F.max_pool2d(x, **pool, return_indices=True)
    return y.requires_grad_(), indices, tuple(x.shape)


def repeat_oracle(x, scale):
    scale_h, scale_w = (scale, scale) if isinstance(scale, int) else scale
    return x.repeat_interleave(scale_h, -2).repeat_interleave(scale_w, -1)


@pytest.mark.parametrize("case", CONV_CASES, ids=ids(CONV_CASES))
def test_conv2d_gradcheck(case, rng):
    _, input_shape, weight_shape, bias, kwargs = case
    inputs = conv_inputs(input_shape, weight_shape, bias, torch.float64, rng)
    k = dict(dict(stride=1, padding=0, dilation=1, groups=1), **kwargs)

    def apply(x, w, b):
        return fct.Conv2dFunction.apply(x, w, b, k["stride"], k["padding"], k["dilation"],
                                        k["groups"], "auto")

    assert torch.autograd.gradcheck(apply, inputs)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CONV_CASES, ids=ids(CONV_CASES))
def test_conv2d_matches_torch(case, dtype, rng):
    _, input_shape, weight_shape, bias, kwargs = case
    inputs = conv_inputs(input_shape, weight_shape, bias, dtype, rng)
    assert_matches(lambda x, w, b: fct.conv2d(x, w, b, **kwargs),
                   lambda x, w, b: F.conv2d(x, w, b, **kwargs), inputs, rng)


@pytest.mark.parametrize("padding, torch_pads, stride", [
    (((1, 0), (0, 2)), (0, 2, 1, 0), 1),   # F.pad order: left, right, top, bottom
    ("same", (1, 1, 1, 1), 2),             # H_out = ceil(H / stride): total pad 2 on 5
])
def test_conv2d_padding_forms_beyond_torch(padding, torch_pads, stride, rng):
    x, w, b = conv_inputs((1, 2, 5, 5), (3, 2, 3, 3), True, torch.float64, rng)
    assert torch.autograd.gradcheck(
        lambda x, w, b: fct.conv2d(x, w, b, stride=stride, padding=padding), (x, w, b))
    assert_matches(lambda x, w, b: fct.conv2d(x, w, b, stride=stride, padding=padding),
                   lambda x, w, b: F.conv2d(F.pad(x, torch_pads), w, b, stride=stride),
                   (x, w, b), rng)


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=ids(TRANSPOSE_CASES))
def test_conv_transpose2d_gradcheck(case, rng):
    _, input_shape, weight_shape, bias, kwargs = case
    inputs = transpose_inputs(input_shape, weight_shape, bias, kwargs, torch.float64, rng)
    k = dict(dict(stride=1, padding=0, output_padding=0, groups=1, dilation=1), **kwargs)

    def apply(x, w, b):
        return fct.ConvTranspose2dFunction.apply(x, w, b, k["stride"], k["padding"],
                                                 k["output_padding"], k["groups"],
                                                 k["dilation"], "auto")

    assert torch.autograd.gradcheck(apply, inputs)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=ids(TRANSPOSE_CASES))
def test_conv_transpose2d_matches_torch(case, dtype, rng):
    _, input_shape, weight_shape, bias, kwargs = case
    inputs = transpose_inputs(input_shape, weight_shape, bias, kwargs, dtype, rng)
    assert_matches(lambda x, w, b: fct.conv_transpose2d(x, w, b, **kwargs),
                   lambda x, w, b: F.conv_transpose2d(x, w, b, **kwargs), inputs, rng)


@pytest.mark.parametrize("return_indices", [False, True], ids=["output", "with_indices"])
@pytest.mark.parametrize("case", MAX_POOL_CASES, ids=ids(MAX_POOL_CASES))
def test_max_pool2d_gradcheck(case, return_indices, rng):
    _, shape, kwargs = case
    k = dict(dict(stride=None, padding=0, dilation=1, ceil_mode=False), **kwargs)

    def apply(x):
        result = fct.MaxPool2dFunction.apply(x, k["kernel_size"], k["stride"], k["padding"],
                                             k["dilation"], k["ceil_mode"], return_indices,
                                             "auto")
        return result[0] if return_indices else result

    assert torch.autograd.gradcheck(apply, (distinct(shape, torch.float64, rng),))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", MAX_POOL_CASES, ids=ids(MAX_POOL_CASES))
def test_max_pool2d_matches_torch(case, dtype, rng):
    _, shape, kwargs = case
    x = distinct(shape, dtype, rng)
    assert_matches(lambda x: fct.max_pool2d(x, **kwargs), lambda x: F.max_pool2d(x, **kwargs),
                   (x,), rng)
    y, indices = fct.max_pool2d(x, **kwargs, return_indices=True)
    expected_y, expected_indices = F.max_pool2d(x, **kwargs, return_indices=True)
    assert_close(y, expected_y)
    torch.testing.assert_close(indices, expected_indices, rtol=0, atol=0)
    assert not indices.requires_grad


@pytest.mark.parametrize("case", AVG_POOL_CASES, ids=ids(AVG_POOL_CASES))
def test_avg_pool2d_gradcheck(case, rng):
    _, shape, kwargs = case
    k = dict(dict(stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                  divisor_override=None), **kwargs)

    def apply(x):
        return fct.AvgPool2dFunction.apply(x, k["kernel_size"], k["stride"], k["padding"],
                                           k["ceil_mode"], k["count_include_pad"],
                                           k["divisor_override"], "auto")

    assert torch.autograd.gradcheck(apply, (uniform(shape, torch.float64, rng),))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", AVG_POOL_CASES, ids=ids(AVG_POOL_CASES))
def test_avg_pool2d_matches_torch(case, dtype, rng):
    _, shape, kwargs = case
    assert_matches(lambda x: fct.avg_pool2d(x, **kwargs), lambda x: F.avg_pool2d(x, **kwargs),
                   (uniform(shape, dtype, rng),), rng)


@pytest.mark.parametrize("case", UNPOOL_CASES, ids=ids(UNPOOL_CASES))
def test_max_unpool2d_gradcheck(case, rng):
    _, shape, pool, output_size = case
    y, indices, pooled_shape = pooled_with_indices(shape, pool, torch.float64, rng)
    size = pooled_shape if output_size == "input" else None
    k = dict(dict(stride=None, padding=0), **pool)

    def apply(y):
        return fct.MaxUnpool2dFunction.apply(y, indices, k["kernel_size"], k["stride"],
                                             k["padding"], size, "auto")

    assert torch.autograd.gradcheck(apply, (y,))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", UNPOOL_CASES, ids=ids(UNPOOL_CASES))
def test_max_unpool2d_matches_torch(case, dtype, rng):
    _, shape, pool, output_size = case
    y, indices, pooled_shape = pooled_with_indices(shape, pool, dtype, rng)
    size = pooled_shape if output_size == "input" else None
    assert_matches(lambda y: fct.max_unpool2d(y, indices, **pool, output_size=size),
                   lambda y: F.max_unpool2d(y, indices, **pool, output_size=size), (y,), rng)


@pytest.mark.parametrize("case", REPEAT_CASES, ids=ids(REPEAT_CASES))
def test_repeat_unpool2d_gradcheck(case, rng):
    _, shape, scale = case
    assert torch.autograd.gradcheck(lambda x: fct.RepeatUnpool2dFunction.apply(x, scale, "auto"),
                                    (uniform(shape, torch.float64, rng),))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", REPEAT_CASES, ids=ids(REPEAT_CASES))
def test_repeat_unpool2d_matches_torch(case, dtype, rng):
    _, shape, scale = case
    assert_matches(lambda x: fct.repeat_unpool2d(x, scale), lambda x: repeat_oracle(x, scale),
                   (uniform(shape, dtype, rng),), rng)


def test_repeat_unpool2d_is_nearest_upsampling(rng):
    x = uniform((2, 3, 3, 4), torch.float32, rng, requires_grad=False)
    assert_close(fct.RepeatUnpool2d((2, 3))(x),
                 torch.nn.Upsample(scale_factor=(2, 3), mode="nearest")(x))


# --- only the gradients asked for are computed ----------------------------------------


@pytest.fixture
def backward_calls(monkeypatch):
    """The keyword arguments of every conv2d_backward / conv_transpose2d_backward call."""
    calls = []
    for name in ("conv2d_backward", "conv_transpose2d_backward"):
        original = getattr(fct.ops, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append((_name, kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(fct.ops, name, spy)
    return calls


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
@pytest.mark.parametrize("wanted", [(True, False, False), (False, True, False),
                                    (False, False, True), (True, True, False),
                                    (False, True, True)], ids=["i--", "-w-", "--b", "iw-", "-wb"])
def test_backward_computes_only_the_gradients_needed(op, wanted, backward_calls, route, rng):
    x, w, b = (uniform(shape, torch.float64, rng, requires_grad=needed)
               for shape, needed in zip([(1, 2, 4, 4), (2, 2, 3, 3), 2], wanted, strict=True))
    getattr(fct, op)(x, w, b, stride=2).sum().backward()
    ((name, kwargs),) = backward_calls
    assert name == f"{op}_backward"
    assert (kwargs["needs_input_grad"], kwargs["needs_weight_grad"],
            kwargs["needs_bias_grad"]) == wanted
    for tensor, needed in zip((x, w, b), wanted, strict=True):
        assert (tensor.grad is not None) == needed


def test_no_bias_asks_for_no_bias_gradient(backward_calls, rng):
    x, w = uniform((1, 2, 4, 4), torch.float64, rng), uniform((3, 2, 3, 3), torch.float64, rng)
    fct.conv2d(x, w).sum().backward()
    assert backward_calls[0][1]["needs_bias_grad"] is False


def test_max_pool2d_computes_indices_only_when_needed(monkeypatch, route, rng):
    calls = []
    original = fct.ops.max_pool2d

    def spy(*args, **kwargs):
        calls.append(kwargs.get("return_indices", False))
        return original(*args, **kwargs)

    monkeypatch.setattr(fct.ops, "max_pool2d", spy)
    x = distinct((1, 1, 4, 4), torch.float64, rng, requires_grad=False)
    fct.max_pool2d(x, 2)
    fct.max_pool2d(x.requires_grad_(), 2)
    assert calls == [False, True]
    # no graph is built under no_grad, although x requires grad: no indices, unless asked
    calls.clear()
    with torch.no_grad():
        y = fct.max_pool2d(x, 2)
        _, indices = fct.max_pool2d(x, 2, return_indices=True)
    with torch.inference_mode():
        fct.MaxPool2d(2)(x)
    assert calls == [False, True, False]
    assert not y.requires_grad and indices.dtype == torch.int64
    assert_close(y, F.max_pool2d(x.detach(), 2))


# each functional with the arguments of one small call: (function, input shape, extra args)
ONCE_DIFFERENTIABLE = {
    "conv2d": (fct.conv2d, (1, 2, 5, 5), lambda rng: (uniform((3, 2, 3, 3), torch.float64,
                                                              rng),)),
    "conv_transpose2d": (fct.conv_transpose2d, (1, 2, 4, 4),
                         lambda rng: (uniform((2, 3, 3, 3), torch.float64, rng),)),
    "max_pool2d": (fct.max_pool2d, (1, 2, 4, 4), lambda rng: (2,)),
    "avg_pool2d": (fct.avg_pool2d, (1, 2, 4, 4), lambda rng: (2,)),
    "max_unpool2d": (fct.max_unpool2d, (1, 2, 2, 2),
                     lambda rng: (torch.tensor([[[[0, 3], [9, 14]], [[5, 6], [8, 15]]]]), 2)),
    "repeat_unpool2d": (fct.repeat_unpool2d, (1, 2, 2, 2), lambda rng: (2,)),
}


@pytest.mark.parametrize("op", list(ONCE_DIFFERENTIABLE))
def test_double_backward_is_an_error(op, rng):
    """A loss that is not linear in the output gives a grad_output that requires grad."""
    function, shape, extra = ONCE_DIFFERENTIABLE[op]
    x = uniform(shape, torch.float64, rng)
    with pytest.raises(RuntimeError, match=r"double backward \(create_graph=True\)"):
        torch.autograd.grad((function(x, *extra(rng)) ** 2).sum(), x, create_graph=True)
    # without create_graph the same gradient is fine
    (grad_x,) = torch.autograd.grad((function(x, *extra(rng)) ** 2).sum(), x)
    assert grad_x.shape == x.shape and not grad_x.requires_grad


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
def test_double_backward_of_a_loss_linear_in_the_output_is_an_error(op, rng):
    """The WGAN-GP pattern: the critic is linear in the conv's output, so grad_output is a
    constant, but the input gradient depends on the weight (and the weight gradient on the
    input): a gradient penalty needs a second derivative the Function does not have."""
    function, shape, extra = ONCE_DIFFERENTIABLE[op]
    x = uniform(shape, torch.float64, rng)
    (w,) = extra(rng)
    critic = function(x, w).mean()
    with pytest.raises(RuntimeError, match=r"double backward \(create_graph=True\)"):
        torch.autograd.grad(critic, x, create_graph=True)


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
def test_create_graph_with_a_frozen_weight_and_a_linear_loss_is_exact(op, rng):
    """With only the input requiring grad, its gradient (from grad_output and the weight)
    is a constant: no second derivative is missing, so no error, and torch agrees (its
    graph for it exists but differentiates to 0)."""
    function, shape, extra = ONCE_DIFFERENTIABLE[op]
    x = uniform(shape, torch.float64, rng)
    (w,) = extra(rng)
    w.requires_grad_(False)
    (ours,) = torch.autograd.grad(function(x, w).mean(), x, create_graph=True)
    (theirs,) = torch.autograd.grad(getattr(F, op)(x, w).mean(), x, create_graph=True)
    assert_close(ours, theirs)
    assert not ours.requires_grad


# --- algorithm= reaches the forward and the backward kernels -------------------------------


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "winograd", "reference"])
def test_conv2d_module_algorithm(algorithm, backward_calls, rng):
    torch.manual_seed(0)
    ours = fct.Conv2d(2, 3, 3, padding=1, dtype=torch.float64, algorithm=algorithm)
    theirs = torch.nn.Conv2d(2, 3, 3, padding=1, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    assert_matches(ours, theirs, (uniform((2, 2, 5, 5), torch.float64, rng),), rng)
    assert backward_calls[0][1]["algorithm"] == algorithm
    assert f"algorithm='{algorithm}'" in repr(ours)


def test_unknown_algorithm_reaches_fastconv(rng):
    x, w = uniform((1, 1, 4, 4), torch.float32, rng), uniform((1, 1, 3, 3), torch.float32, rng)
    with pytest.raises(ValueError, match="fft"):
        fct.conv2d(x, w, algorithm="fft")
    with pytest.raises(ValueError, match="fft"):
        fct.MaxPool2d(2, algorithm="fft")(x)


# --- modules: torch.nn's constructors, init and state_dicts; equal outputs ------------------

#: (id, constructor taking torch.nn or fastconv.torch, input shape). Inputs are tie-free.
MODULE_CASES = [
    ("conv", lambda nn: nn.Conv2d(3, 4, 3, padding=1), (2, 3, 6, 6)),
    ("conv_strided_grouped_no_bias",
     lambda nn: nn.Conv2d(4, 6, (3, 2), stride=2, padding=(1, 0), dilation=(1, 2), groups=2,
                          bias=False), (2, 4, 7, 8)),
    ("conv_same", lambda nn: nn.Conv2d(2, 3, 4, padding="same", dilation=2), (1, 2, 7, 6)),
    ("conv_valid_unbatched", lambda nn: nn.Conv2d(2, 3, 3, padding="valid"), (2, 5, 5)),
    ("transpose", lambda nn: nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
     (2, 3, 4, 4)),
    ("transpose_grouped_dilated_no_bias",
     lambda nn: nn.ConvTranspose2d(4, 6, 3, groups=2, dilation=2, bias=False), (1, 4, 3, 3)),
    ("max_pool", lambda nn: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), (2, 3, 6, 7)),
    ("max_pool_dilated", lambda nn: nn.MaxPool2d(2, stride=1, dilation=2), (1, 2, 5, 5)),
    ("avg_pool", lambda nn: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
     (2, 3, 6, 7)),
    ("avg_pool_divisor", lambda nn: nn.AvgPool2d((2, 3), divisor_override=4), (1, 2, 4, 6)),
]


def seeded(make, namespace, seed, dtype):
    torch.manual_seed(seed)
    return make(namespace).to(dtype)


@pytest.mark.parametrize("case", MODULE_CASES, ids=ids(MODULE_CASES))
def test_module_has_torch_init_and_state_dict(case):
    _, make, _ = case
    ours, theirs = make(fct), make(torch.nn)
    assert isinstance(ours, type(theirs))
    torch.manual_seed(7)
    ours = make(fct)
    torch.manual_seed(7)
    theirs = make(torch.nn)
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(theirs_state)
    for name, value in theirs_state.items():
        torch.testing.assert_close(ours_state[name], value, rtol=0, atol=0)
    assert repr(ours) == repr(theirs)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", MODULE_CASES, ids=ids(MODULE_CASES))
def test_module_matches_torch_both_ways(case, dtype, rng):
    _, make, shape = case
    ours, theirs = seeded(make, fct, 1, dtype), seeded(make, torch.nn, 2, dtype)
    x = distinct(shape, dtype, rng)
    ours.load_state_dict(theirs.state_dict())
    assert_matches(ours, theirs, (x,), rng)
    ours, theirs = seeded(make, fct, 3, dtype), seeded(make, torch.nn, 4, dtype)
    theirs.load_state_dict(ours.state_dict())
    assert_matches(ours, theirs, (x,), rng)
    for ours_param, theirs_param in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert_close(ours_param.grad, theirs_param.grad)


def test_conv_module_dtype_and_device_arguments():
    conv = fct.Conv2d(2, 3, 3, device="cpu", dtype=torch.float64)
    assert conv.weight.dtype == torch.float64 and conv.weight.device.type == "cpu"
    assert conv(torch.ones(1, 2, 4, 4, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("output_size", [None, (9, 10), [1, 2, 10, 9]],
                         ids=["default", "hw", "full_shape"])
def test_conv_transpose2d_module_output_size(output_size, rng):
    torch.manual_seed(0)
    ours = fct.ConvTranspose2d(3, 2, 3, stride=2, padding=1, dtype=torch.float64)
    theirs = torch.nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    assert_matches(lambda x: ours(x, output_size=output_size),
                   lambda x: theirs(x, output_size=output_size),
                   (uniform((1, 3, 5, 5), torch.float64, rng),), rng)


def test_conv_transpose2d_module_rejects_unreachable_output_size(rng):
    x = uniform((1, 3, 5, 5), torch.float32, rng, requires_grad=False)
    with pytest.raises(ValueError, match="requested an output size of"):
        fct.ConvTranspose2d(3, 2, 3, stride=2, padding=1)(x, output_size=(12, 12))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_pool_unpool_modules_with_indices(dtype, rng):
    x = distinct((2, 3, 5, 7), dtype, rng)
    pool, unpool = fct.MaxPool2d(2, return_indices=True), fct.MaxUnpool2d(2)
    torch_pool, torch_unpool = torch.nn.MaxPool2d(2, return_indices=True), torch.nn.MaxUnpool2d(2)

    def ours(x):
        y, indices = pool(x)
        return unpool(y, indices, output_size=x.shape)

    def theirs(x):
        y, indices = torch_pool(x)
        return torch_unpool(y, indices, output_size=x.shape)

    assert_matches(ours, theirs, (x,), rng)
    torch.testing.assert_close(pool(x)[1], torch_pool(x)[1], rtol=0, atol=0)
    assert repr(unpool) == repr(torch_unpool)


def test_repeat_unpool2d_module():
    up = fct.RepeatUnpool2d((2, 1), algorithm="reference")
    assert repr(up) == "RepeatUnpool2d(scale=(2, 1), algorithm='reference')"
    assert up.state_dict() == {}
    torch.testing.assert_close(up(torch.tensor([[[1.0, 2.0]]])),
                               torch.tensor([[[1.0, 2.0], [1.0, 2.0]]]))


# --- memory layouts: CPU tensors reach fastconv as views, in any layout ---------------------


def test_cpu_tensors_reach_fastconv_without_a_copy():
    x = torch.arange(24.0).reshape(2, 3, 4).transpose(1, 2)
    array = fct._array(x.requires_grad_())
    assert isinstance(array, np.ndarray)
    assert array.ctypes.data == x.data_ptr() and array.strides == (48, 4, 16)
    assert isinstance(fct._array(torch._neg_view(x.detach())), np.ndarray)


def test_layouts_and_expanded_gradients(rng):
    torch.manual_seed(0)
    ours = fct.Conv2d(3, 4, 3, padding=1, dtype=torch.float64)
    theirs = torch.nn.Conv2d(3, 4, 3, padding=1, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    ours.weight.data = ours.weight.data.to(memory_format=torch.channels_last)
    base = uniform((2, 6, 3, 5), torch.float64, rng, requires_grad=False)
    views = [base[:, :3].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),  # channels_last
             base[:, ::2].transpose(2, 3),                                       # strided
             base[:1, :3].expand(4, 3, 3, 5)]                                    # zero stride
    for view in views:
        x = view.detach().requires_grad_()  # keeps the view's strides
        # y.sum()'s gradient reaches the backward as a zero-stride expanded tensor
        assert_close(ours(x), theirs(x))
        grads = torch.autograd.grad(ours(x).sum(), (x, ours.weight, ours.bias))
        expected = torch.autograd.grad(theirs(x).sum(), (x, theirs.weight, theirs.bias))
        for got, want in zip(grads, expected, strict=True):
            assert_close(got, want)


# --- training: the same CNN built from torch.nn layers and from fastconv.torch layers -------


def small_cnn(nn, dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), nn.AvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 2 * 2, 10),
    ).to(dtype)


def digits(dtype):
    """The 8 x 8 digits of scikit-learn, scaled to [0, 1], as (N, 1, 8, 8) and labels."""
    datasets = pytest.importorskip("sklearn.datasets")
    images, labels = datasets.load_digits(return_X_y=True)
    x = torch.tensor(images / 16.0, dtype=dtype).reshape(-1, 1, 8, 8)
    return x, torch.tensor(labels)


def train(nn, dtype, x, labels, steps, batch):
    model = small_cnn(nn, dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    losses = []
    for step in range(steps):
        picked = order[(step * batch) % (len(x) - batch):][:batch]
        loss = F.cross_entropy(model(x[picked]), labels[picked])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return np.array(losses)


#: Largest |loss difference| allowed at any step. The two models differ only in summation
#: order (~1e-16 relative in float64, ~1e-7 in float32), and 300 steps of SGD with momentum
#: barely amplify that: measured 9e-16 in float64 and 5e-7 in float32 (losses ~2.3 -> 0.15).
TRAJECTORY_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-4}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_training_loss_trajectory_matches_torch(dtype):
    x, labels = digits(dtype)
    steps, batch = 300, 32
    ours = train(fct, dtype, x, labels, steps, batch)
    theirs = train(torch.nn, dtype, x, labels, steps, batch)
    assert theirs[-20:].mean() < 0.5 * theirs[:20].mean(), "the network should learn"
    difference = np.abs(ours - theirs)
    assert difference.max() <= TRAJECTORY_TOLERANCE[dtype], (
        f"max |loss difference| {difference.max():.3g} at step {difference.argmax()}")


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32, torch.complex64],
                         ids=["float16", "bfloat16", "int32", "complex64"])
def test_unsupported_dtypes(dtype):
    x = torch.ones(1, 1, 4, 4, dtype=dtype)
    w = torch.ones(1, 1, 3, 3, dtype=dtype)
    message = f"input has dtype {dtype}, but fastconv computes in torch.float32 or torch.float64"
    for call in (lambda: fct.conv2d(x, w), lambda: fct.conv_transpose2d(x, w),
                 lambda: fct.max_pool2d(x, 2), lambda: fct.avg_pool2d(x, 2),
                 lambda: fct.repeat_unpool2d(x, 2),
                 lambda: fct.max_unpool2d(x, torch.zeros(1, 1, 4, 4, dtype=torch.int64), 2)):
        with pytest.raises(TypeError, match=message.replace(".", r"\.")):
            call()


def test_unsupported_module_dtypes():
    with pytest.raises(TypeError, match=r"dtype=torch\.float16 is not supported"):
        fct.Conv2d(1, 1, 3, dtype=torch.float16)
    conv = fct.Conv2d(1, 1, 3).half()
    with pytest.raises(TypeError, match=r"input has dtype torch\.float16"):
        conv(torch.ones(1, 1, 4, 4, dtype=torch.float16))
    with pytest.raises(TypeError, match=r"weight has dtype torch\.float16"):
        conv(torch.ones(1, 1, 4, 4))


def test_mixed_dtypes():
    with pytest.raises(TypeError, match=r"weight has dtype torch\.float64 but input has dtype "
                                        r"torch\.float32"):
        fct.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3, dtype=torch.float64))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_other_than_zeros(mode):
    with pytest.raises(ValueError, match=f"padding_mode='zeros' only, got '{mode}'"):
        fct.Conv2d(1, 1, 3, padding=1, padding_mode=mode)
    with pytest.raises(ValueError, match=f"padding_mode='zeros' only, got '{mode}'"):
        fct.ConvTranspose2d(1, 1, 3, padding_mode=mode)
    conv = fct.Conv2d(1, 1, 3, padding=1)
    conv.padding_mode = mode
    with pytest.raises(ValueError, match="padding_mode='zeros' only"):
        conv(torch.ones(1, 1, 4, 4))


def test_non_tensor_and_bad_indices_and_bad_device():
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got ndarray"):
        fct.conv2d(np.ones((1, 1, 4, 4)), torch.ones(1, 1, 3, 3))
    with pytest.raises(TypeError, match=r"indices must be an integer tensor .* torch\.float32"):
        fct.max_unpool2d(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), 2)
    with pytest.raises(ValueError, match="is on meta; fastconv runs on CPU and CUDA tensors"):
        fct.max_pool2d(torch.ones(1, 1, 4, 4, device="meta"), 2)


def test_fastconv_errors_come_through():
    with pytest.raises(ValueError, match="groups=2 must divide"):
        fct.conv2d(torch.ones(1, 3, 4, 4), torch.ones(2, 1, 3, 3), groups=2)


# --- custom ops: torch.compile, opcheck, autocast, threads -----------------------------------


class EveryLayer(torch.nn.Module):
    """Every bridge module in one network (``nn`` is torch.nn or fastconv.torch); the
    nearest-neighbour upsampling is torch.nn.Upsample in the torch.nn version."""

    def __init__(self, nn):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)
        self.avg = nn.AvgPool2d(2)
        self.strided = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.max = nn.MaxPool2d(2)
        self.up = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)
        self.repeat = (fct.RepeatUnpool2d(2) if nn is fct
                       else torch.nn.Upsample(scale_factor=2, mode="nearest"))

    def forward(self, x):
        y = self.conv(x)
        pooled, indices = self.pool(y)
        y = self.unpool(pooled, indices, output_size=y.shape) + y
        y = self.max(self.strided(self.avg(y)))
        return self.repeat(self.up(y))


def every_layer_pair(dtype):
    torch.manual_seed(0)
    ours, theirs = EveryLayer(fct).to(dtype), EveryLayer(torch.nn).to(dtype)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def aot_capture(graphs):
    """A torch.compile backend: AOTAutograd, keeping the forward and backward FX graphs in
    ``graphs["forward"]`` and ``graphs["backward"]`` and running them as they are."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    def keep(kind):
        def compiler(graph_module, example_inputs):
            graphs.setdefault(kind, []).append(graph_module)
            return make_boxed_func(graph_module.forward)
        return compiler

    return aot_autograd(fw_compiler=keep("forward"), bw_compiler=keep("backward"))


def called_ops(graph_modules):
    return {str(node.target) for graph_module in graph_modules
            for node in graph_module.graph.nodes if node.op == "call_function"}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_torch_compile_fullgraph_matches_torch_nn(dtype, rng):
    """fullgraph=True makes any graph break an error; the compiled forward and backward
    graphs call the fastconv ops, and give torch.nn's outputs and gradients."""
    dynamo = pytest.importorskip("torch._dynamo")
    ours, theirs = every_layer_pair(dtype)
    graphs = {}
    compiled = torch.compile(ours, fullgraph=True, backend=aot_capture(graphs))
    try:
        for _ in range(2):  # the second call runs the compiled graphs again
            x = distinct((2, 2, 8, 8), dtype, rng)
            x_ours, x_theirs = leaves(x, x)
            out, expected = compiled(x_ours), theirs(x_theirs)
            assert_close(out, expected)
            grad_output = torch.tensor(rng.uniform(-1.0, 1.0, tuple(out.shape)), dtype=dtype)
            out.backward(grad_output)
            expected.backward(grad_output)
            assert_close(x_ours.grad, x_theirs.grad)
            for ours_param, theirs_param in zip(ours.parameters(), theirs.parameters(),
                                                strict=True):
                assert_close(ours_param.grad, theirs_param.grad)
                ours_param.grad, theirs_param.grad = None, None
        assert len(graphs["forward"]) == len(graphs["backward"]) == 1
        forward = {"conv2d", "max_pool2d_with_indices", "max_unpool2d", "avg_pool2d",
                   "conv_transpose2d", "repeat_unpool2d"}
        backward = {"conv2d_backward", "max_pool2d_backward", "max_unpool2d_backward",
                    "avg_pool2d_backward", "conv_transpose2d_backward",
                    "repeat_unpool2d_backward"}
        assert {f"fastconv.{op}.default" for op in forward} <= called_ops(graphs["forward"])
        assert {f"fastconv.{op}.default" for op in backward} <= called_ops(graphs["backward"])
    finally:
        dynamo.reset()


def opcheck_cases(rng):
    """(id, op, args) for every fastconv op, with normalised arguments as the functionals
    pass them; the backward ops' inputs do not require grad (they have no derivative)."""
    def tensor(shape, requires_grad=True):
        return uniform(shape, torch.float64, rng, requires_grad=requires_grad)

    ops = torch.ops.fastconv
    x_pool = distinct((1, 2, 5, 6), torch.float64, rng)
    pool = ([2, 2], [2, 1], [1, 0], [1, 1], True, "auto")
    _, indices = ops.max_pool2d_with_indices(x_pool.detach(), *pool)
    unpool_input, unpool_indices = F.max_pool2d(distinct((1, 2, 5, 7), torch.float64, rng), 2,
                                                return_indices=True)
    conv = ([2, 1], [1, 0, 0, 2], [1, 2], 1)
    transpose = ([2, 2], [1, 1, 0, 1], [1, 0], 2, [1, 1])
    average = ([3, 2], [2, 2], [1, 1], False, False, None, "auto")
    return [
        ("conv2d", ops.conv2d, (tensor((2, 2, 6, 7)), tensor((3, 2, 3, 2)), tensor(3), *conv,
                                "auto")),
        ("conv2d_no_bias", ops.conv2d, (tensor((2, 5, 5)), tensor((3, 2, 3, 2)), None, *conv,
                                        "im2col")),
        ("conv2d_backward", ops.conv2d_backward,
         (tensor((2, 3, 3, 7), False), tensor((2, 2, 6, 7), False),
          tensor((3, 2, 3, 2), False), *conv, [True, False, True], "auto")),
        ("conv_transpose2d", ops.conv_transpose2d,
         (tensor((1, 4, 3, 4)), tensor((4, 1, 3, 3)), tensor(2), *transpose, "auto")),
        ("conv_transpose2d_backward", ops.conv_transpose2d_backward,
         (tensor((1, 2, 6, 8), False), tensor((1, 4, 3, 4), False), tensor((4, 1, 3, 3), False),
          *transpose, [False, True, True], "auto")),
        ("max_pool2d", ops.max_pool2d, (x_pool, *pool)),
        ("max_pool2d_with_indices", ops.max_pool2d_with_indices, (x_pool, *pool)),
        ("max_pool2d_backward", ops.max_pool2d_backward,
         (tensor(tuple(indices.shape), False), indices, [1, 2, 5, 6], "auto")),
        ("avg_pool2d", ops.avg_pool2d, (tensor((1, 2, 5, 6)), *average)),
        ("avg_pool2d_divisor", ops.avg_pool2d,
         (tensor((2, 5, 6)), [2, 2], [1, 1], [0, 0], True, True, 3, "auto")),
        ("avg_pool2d_backward", ops.avg_pool2d_backward,
         (tensor((1, 2, 3, 4), False), [1, 2, 5, 6], *average)),
        ("max_unpool2d", ops.max_unpool2d,
         (unpool_input.detach().requires_grad_(), unpool_indices, [2, 2], [2, 2], [0, 0],
          [5, 7], "auto")),
        ("max_unpool2d_backward", ops.max_unpool2d_backward,
         (tensor((1, 2, 5, 7), False), unpool_indices, "auto")),
        ("repeat_unpool2d", ops.repeat_unpool2d, (tensor((1, 2, 3, 2)), [2, 3], "auto")),
        ("repeat_unpool2d_backward", ops.repeat_unpool2d_backward,
         (tensor((2, 6, 6), False), [2, 3], "auto")),
    ]


def test_every_custom_op_passes_opcheck(rng):
    """torch.library.opcheck: schema, autograd registration, fake (shape) functions against
    the real outputs, and AOTAutograd with dynamic shapes."""
    cases = opcheck_cases(rng)
    ops = {op._qualified_op_name for _, op, _ in cases}
    assert ops == {f"fastconv::{name}{suffix}" for name in (
        "conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "max_unpool2d",
        "repeat_unpool2d") for suffix in ("", "_backward")} | {"fastconv::max_pool2d_with_indices"}
    for name, op, args in cases:
        result = torch.library.opcheck(op, args)
        failed = {test: outcome for test, outcome in result.items() if outcome != "SUCCESS"}
        assert not failed, f"{name}: {failed}"
    # the op without indices (the functionals use it only where no backward follows) is
    # differentiable when called directly
    x = distinct((1, 2, 5, 6), torch.float64, rng)
    assert torch.autograd.gradcheck(
        lambda x: torch.ops.fastconv.max_pool2d(x, [2, 2], [2, 1], [1, 0], [1, 1], True, "auto"),
        (x,))


@pytest.mark.parametrize("layer", ["conv", "max_pool", "avg_pool"])
def test_autocast_bfloat16_computes_in_float32(layer, rng):
    """Under CPU autocast a Linear/Conv2d hands bfloat16 to the next layer: the bridge
    computes in float32 and returns float32 (as autocast's float32 ops and
    custom_fwd(cast_inputs=torch.float32) do), close to torch.nn's bfloat16 result, and
    gradients flow back to the bfloat16 producers."""
    def network(nn):
        torch.manual_seed(0)
        second = {"conv": lambda: nn.Conv2d(4, 3, 3, padding=1),
                  "max_pool": lambda: nn.MaxPool2d(2), "avg_pool": lambda: nn.AvgPool2d(2)}
        return torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Unflatten(1, (1, 6)),
                                   torch.nn.Conv2d(1, 4, 3, padding=1), second[layer]())

    ours, theirs = network(fct), network(torch.nn)
    theirs.load_state_dict(ours.state_dict())
    x = uniform((2, 6, 6), torch.float32, rng, requires_grad=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = ours[:3](x)
        out, expected = ours(x), theirs(x)
    assert hidden.dtype == torch.bfloat16  # what the fastconv layer receives
    assert out.dtype == torch.float32 and out.shape == expected.shape
    # theirs rounds to bfloat16 (8 bits of mantissa) once more than ours
    torch.testing.assert_close(out, expected.float(), rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    expected.float().sum().backward()
    for ours_param, theirs_param in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert ours_param.grad is not None and ours_param.grad.dtype == torch.float32
        scale = theirs_param.grad.abs().max().item()
        torch.testing.assert_close(ours_param.grad, theirs_param.grad, rtol=5e-2,
                                   atol=5e-2 * scale)


def test_half_precision_outside_autocast_is_still_an_error():
    x = torch.ones(1, 1, 4, 4, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"input has dtype torch\.bfloat16.*under torch\.autocast"):
        fct.max_pool2d(x, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fct.max_pool2d(x, 2).dtype == torch.float32
        # float64 is never cast, as in autocast's own ops
        assert fct.max_pool2d(x.double(), 2).dtype == torch.float64


@pytest.mark.parametrize("input_size", [5, 6, 7])
def test_conv2d_module_same_padding_with_stride(input_size, rng):
    """torch.nn.Conv2d refuses padding="same" with stride > 1; fastconv (and so the
    bridge) pads for an output of ceil(H / stride)."""
    torch.manual_seed(0)
    conv = fct.Conv2d(2, 3, (3, 4), stride=2, padding="same", dtype=torch.float64)
    assert conv.padding == "same" and conv.stride == (2, 2)
    assert "padding=same" in repr(conv)
    x = uniform((2, 2, input_size, input_size + 1), torch.float64, rng)
    out = conv(x)
    expected = fastconv.conv2d(x.detach().numpy(), conv.weight.detach().numpy(),
                               conv.bias.detach().numpy(), stride=2, padding="same")
    assert out.shape == (2, 3, -(-input_size // 2), -(-(input_size + 1) // 2))
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, w, b: fct.conv2d(x, w, b, stride=2,
                                                               padding="same"),
                                    (x, conv.weight, conv.bias))
    copy = torch.nn.Conv2d(2, 3, (3, 4), stride=2, dtype=torch.float64)
    copy.load_state_dict(conv.state_dict())  # the parameters are torch.nn.Conv2d's


def test_cpu_tensors_in_cpu_tensors_out(route, rng):
    """Every functional and module, forward and gradients: torch CPU tensors come back as
    torch CPU tensors (never numpy arrays), with their own memory."""
    x = distinct((1, 2, 6, 6), torch.float32, rng)
    w = uniform((3, 2, 3, 3), torch.float32, rng)
    pooled, indices = F.max_pool2d(x.detach(), 2, return_indices=True)
    pooled.requires_grad_()
    calls = {
        "conv2d": lambda: fct.conv2d(x, w, padding=1),
        "conv_transpose2d": lambda: fct.conv_transpose2d(x, w.transpose(0, 1)),
        "max_pool2d": lambda: fct.max_pool2d(x, 2),
        "max_pool2d_indices": lambda: fct.max_pool2d(x, 2, return_indices=True),
        "avg_pool2d": lambda: fct.avg_pool2d(x, 2),
        "max_unpool2d": lambda: fct.max_unpool2d(pooled, indices, 2),
        "repeat_unpool2d": lambda: fct.repeat_unpool2d(x, 2),
        "Conv2d": lambda: fct.Conv2d(2, 3, 3, stride=2, padding="same")(x),
        "ConvTranspose2d": lambda: fct.ConvTranspose2d(2, 3, 3)(x),
        "MaxPool2d": lambda: fct.MaxPool2d(3, return_indices=True)(x),
        "AvgPool2d": lambda: fct.AvgPool2d(3)(x),
        "MaxUnpool2d": lambda: fct.MaxUnpool2d(2)(pooled, indices),
        "RepeatUnpool2d": lambda: fct.RepeatUnpool2d(3)(x),
    }
    for name, call in calls.items():
        for grad_mode in (True, False):
            x.grad = w.grad = pooled.grad = None
            with torch.set_grad_enabled(grad_mode):
                result = call()
            results = result if isinstance(result, tuple) else (result,)
            for tensor in results:
                assert type(tensor) is torch.Tensor and tensor.device.type == "cpu", name
                assert tensor.data_ptr() not in (x.data_ptr(), w.data_ptr(), pooled.data_ptr())
            if grad_mode:
                results[0].sum().backward()
                for grad in (x.grad, w.grad, pooled.grad):
                    assert grad is None or (type(grad) is torch.Tensor
                                            and grad.device.type == "cpu"), name


def test_numba_threads_follow_torch_and_torch_threads_are_untouched(monkeypatch, route, rng):
    """Inside a bridge call the kernels run on min(torch.get_num_threads(),
    NUMBA_NUM_THREADS) Numba threads; afterwards Numba's count is what it was, and
    PyTorch's thread count is never changed."""
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs NUMBA_NUM_THREADS >= 2 to tell the thread counts apart")
    seen = []
    for name in ("conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward"):
        original = getattr(fct.ops, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            seen.append((_name, numba.get_num_threads()))
            return _original(*args, **kwargs)

        monkeypatch.setattr(fct.ops, name, spy)
    model = torch.nn.Sequential(fct.Conv2d(2, 3, 3), fct.MaxPool2d(2))
    x = uniform((1, 2, 6, 6), torch.float32, rng)
    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            seen.clear()
            model(x).sum().backward()
            assert torch.get_num_threads() == threads
            assert numba.get_num_threads() == numba_threads
            expected = min(threads, numba.config.NUMBA_NUM_THREADS)
            assert {name for name, _ in seen} == {"conv2d", "conv2d_backward",
                                                  "max_pool2d", "max_pool2d_backward"}
            assert all(count == expected for _, count in seen), seen
    finally:
        torch.set_num_threads(torch_threads)


# --- two routes to one implementation: plain eager and the custom ops --------------------------
#
# In plain eager mode (every test above) the functionals run each op's implementation
# directly, through an autograd.Function only when a graph is recorded; anything that
# traces, transforms or intercepts a call gets the custom op. Patching ``fct._plain_eager``
# to False (as the ``route`` fixture does) forces the custom op in eager mode, so that the
# two routes can be compared call by call.


@pytest.fixture
def op_calls(monkeypatch):
    """Counts, per op name, the calls that reach a custom op (``torch.ops.fastconv.*``)."""
    calls = {}
    for entry in vars(fct).values():
        if isinstance(entry, fct._Op):
            def spy(*args, _op=entry.op):
                calls[_op._name] = calls.get(_op._name, 0) + 1
                return _op(*args)

            monkeypatch.setattr(entry, "op", spy)
    return calls


@pytest.fixture
def function_applies(monkeypatch):
    """Counts the calls of each op's eager autograd.Function (its ``apply``, which ``_Op``
    keeps as ``_Op.apply``)."""
    calls = []
    for entry in vars(fct).values():
        if isinstance(entry, fct._Op) and entry.function is not None:

            def apply(*args, _name=entry.function.__name__, _apply=entry.apply):
                calls.append(_name)
                return _apply(*args)

            monkeypatch.setattr(entry, "apply", apply)
    return calls


def agreement_cases():
    """(id, make) for every case of every functional above; ``make(dtype, rng)`` gives the
    function and its inputs (floating ones require grad)."""
    cases = []
    for name, input_shape, weight_shape, bias, kwargs in CONV_CASES:
        cases.append((f"conv2d-{name}", lambda dtype, rng, a=(input_shape, weight_shape, bias),
                      k=kwargs: (lambda x, w, b: fct.conv2d(x, w, b, **k),
                                 conv_inputs(*a, dtype, rng))))
    for name, input_shape, weight_shape, bias, kwargs in TRANSPOSE_CASES:
        cases.append((f"conv_transpose2d-{name}",
                      lambda dtype, rng, a=(input_shape, weight_shape, bias), k=kwargs: (
                          lambda x, w, b: fct.conv_transpose2d(x, w, b, **k),
                          transpose_inputs(*a, k, dtype, rng))))
    for name, shape, kwargs in MAX_POOL_CASES:
        for indices in (False, True):
            cases.append((f"max_pool2d-{name}{'-indices' * indices}",
                          lambda dtype, rng, s=shape, k=kwargs, i=indices: (
                              lambda x: fct.max_pool2d(x, **k, return_indices=i),
                              (distinct(s, dtype, rng),))))
    for name, shape, kwargs in AVG_POOL_CASES:
        cases.append((f"avg_pool2d-{name}", lambda dtype, rng, s=shape, k=kwargs: (
            lambda x: fct.avg_pool2d(x, **k), (uniform(s, dtype, rng),))))
    for name, shape, pool, output_size in UNPOOL_CASES:
        def make(dtype, rng, s=shape, p=pool, o=output_size):
            y, indices, pooled_shape = pooled_with_indices(s, p, dtype, rng)
            size = pooled_shape if o == "input" else None
            return (lambda y, i: fct.max_unpool2d(y, i, **p, output_size=size)), (y, indices)
        cases.append((f"max_unpool2d-{name}", make))
    for name, shape, scale in REPEAT_CASES:
        cases.append((f"repeat_unpool2d-{name}", lambda dtype, rng, s=shape, f=scale: (
            lambda x: fct.repeat_unpool2d(x, f), (uniform(s, dtype, rng),))))
    return cases


AGREEMENT_CASES = agreement_cases()


def assert_identical(actual, expected):
    """Bitwise equal (NaN included), with the same dtype, shape, device and requires_grad."""
    assert actual.requires_grad == expected.requires_grad
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def outputs_and_grads(function, inputs, grad_outputs):
    """``function``'s outputs (a tuple) for fresh leaf copies of ``inputs``, then the gradients
    of the inputs that require grad for ``grad_outputs`` (made once, by the first call)."""
    leaf_inputs = leaves(*inputs)
    result = function(*leaf_inputs)
    outputs = result if isinstance(result, tuple) else (result,)
    if not grad_outputs:
        rng = np.random.default_rng(len(grad_outputs) + 7)
        grad_outputs.append(torch.tensor(rng.uniform(-1.0, 1.0, tuple(outputs[0].shape)),
                                         dtype=outputs[0].dtype))
    outputs[0].backward(grad_outputs[0])
    return list(outputs), [t.grad for t in leaf_inputs if t is not None and t.requires_grad]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", AGREEMENT_CASES, ids=ids(AGREEMENT_CASES))
def test_eager_route_equals_custom_op_route(case, dtype, monkeypatch, op_calls, rng):
    """Outputs (indices included) and gradients of the eager route are bitwise those of the
    custom ops (torch.ops.fastconv.*, autograd formula and all), with and without grad."""
    _, make = case
    function, inputs = make(dtype, rng)
    grad_outputs = []
    eager = outputs_and_grads(function, inputs, grad_outputs)
    with torch.no_grad():
        eager_no_grad = function(*inputs)
    assert not op_calls, "plain eager calls must not reach the custom ops"
    monkeypatch.setattr(fct, "_plain_eager", lambda tensors: False)
    custom = outputs_and_grads(function, inputs, grad_outputs)
    with torch.no_grad():
        custom_no_grad = function(*inputs)
    assert op_calls, "the forced route must reach the custom ops"
    for got, want in zip(eager[0] + eager[1], custom[0] + custom[1], strict=True):
        assert_identical(got, want)
    for got, want in zip(*(r if isinstance(r, tuple) else (r,)
                           for r in (eager_no_grad, custom_no_grad)), strict=True):
        assert_identical(got, want)


def test_eager_route_of_modules_and_functions(op_calls, function_applies, rng):
    """Modules, functionals and the *Function.apply spellings take the eager route (no custom
    op call, forward or backward; Parameters count as plain tensors); the autograd.Function
    only where a graph is recorded, never under no_grad or for inputs that need no grad."""
    model = EveryLayer(fct).double()
    x = distinct((2, 2, 8, 8), torch.float64, rng)
    model(x).sum().backward()
    fct.Conv2dFunction.apply(x, model.conv.weight, None, 1, 1, 1, 1, "auto").sum().backward()
    assert not op_calls
    assert set(function_applies) == {"FastconvConv2d", "FastconvConvTranspose2d",
                                     "FastconvMaxPool2dWithIndices", "FastconvAvgPool2d",
                                     "FastconvMaxUnpool2d", "FastconvRepeatUnpool2d"}
    function_applies.clear()
    with torch.no_grad():
        model(x)
    model.requires_grad_(False)
    model(x.detach())
    with torch.inference_mode():
        model(x)
    assert not op_calls and not function_applies


def test_eager_route_equals_custom_op_route_for_modules_with_parameter_grads(monkeypatch, rng):
    """The gradients reaching Parameters (the bias gradient, only asked for where needed)."""
    x = distinct((2, 2, 8, 8), torch.float64, rng)
    results = []
    for route in ("eager", "custom_op"):
        if route == "custom_op":
            monkeypatch.setattr(fct, "_plain_eager", lambda tensors: False)
        model, _ = every_layer_pair(torch.float64)
        model.up.bias.requires_grad_(False)
        model(x).square().sum().backward()
        results.append([p.grad for p in model.parameters()])
    for got, want in zip(*results, strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            assert_identical(got, want)


def bad_calls(requires_grad):
    """Calls that fail inside an op (its dtype checks or fastconv's), each with inputs that
    do or do not require grad (the two eager routes: autograd.Function and direct)."""
    def ones(*shape, dtype=torch.float32):
        return torch.ones(shape, dtype=dtype, requires_grad=requires_grad and (
            dtype.is_floating_point or dtype.is_complex))

    indices = torch.zeros(1, 1, 2, 2, dtype=torch.int64)
    return {
        "int32": lambda: fct.conv2d(ones(1, 1, 4, 4, dtype=torch.int32),
                                    ones(1, 1, 3, 3, dtype=torch.int32)),
        "complex": lambda: fct.repeat_unpool2d(ones(1, 1, 2, 2, dtype=torch.complex64), 2),
        "mixed_dtypes": lambda: fct.conv_transpose2d(ones(1, 1, 4, 4),
                                                     ones(1, 1, 3, 3, dtype=torch.float64)),
        "groups": lambda: fct.conv2d(ones(1, 3, 4, 4), ones(2, 1, 3, 3), groups=2),
        "weight_channels": lambda: fct.conv_transpose2d(ones(1, 2, 3, 3), ones(3, 1, 3, 3)),
        "window_too_large": lambda: fct.max_pool2d(ones(1, 1, 2, 2), 3),
        "avg_padding": lambda: fct.avg_pool2d(ones(1, 1, 4, 4), 2, padding=2),
        "unpool_index_range": lambda: fct.max_unpool2d(ones(1, 1, 2, 2),
                                                       torch.full((1, 1, 2, 2), 99), 2),
        "winograd_7x7": lambda: fct.conv2d(ones(1, 1, 8, 8), ones(1, 1, 7, 7),
                                           algorithm="winograd"),
        "unknown_algorithm": lambda: fct.avg_pool2d(ones(1, 1, 4, 4), 2, algorithm="fft"),
        "unpool_output_size": lambda: fct.max_unpool2d(ones(1, 1, 2, 2), indices, 2,
                                                       output_size=(9, 9)),
    }


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad_inputs", "grad_inputs"])
def test_errors_are_the_same_on_both_routes(requires_grad, monkeypatch):
    def error(call):
        with pytest.raises((TypeError, ValueError)) as info:
            call()
        return type(info.value), str(info.value)

    eager = {name: error(call) for name, call in bad_calls(requires_grad).items()}
    monkeypatch.setattr(fct, "_plain_eager", lambda tensors: False)
    custom = {name: error(call) for name, call in bad_calls(requires_grad).items()}
    assert eager == custom
    assert eager["int32"][0] is TypeError and "input has dtype torch.int32" in eager["int32"][1]
    assert eager["groups"][0] is ValueError and "groups=2 must divide" in eager["groups"][1]


@pytest.mark.parametrize("op", list(ONCE_DIFFERENTIABLE))
def test_double_backward_is_an_error_on_both_routes(op, route, rng):
    function, shape, extra = ONCE_DIFFERENTIABLE[op]
    x = uniform(shape, torch.float64, rng)
    with pytest.raises(RuntimeError, match=rf"double backward .* fastconv::{op} is "):
        torch.autograd.grad((function(x, *extra(rng)) ** 2).sum(), x, create_graph=True)
    if op in ("conv2d", "conv_transpose2d"):
        (w,) = extra(rng)
        with pytest.raises(RuntimeError, match=r"double backward \(create_graph=True\)"):
            torch.autograd.grad(function(x, w).mean(), x, create_graph=True)


#: one call of every functional, with float inputs first: (function, shapes of float inputs)
AUTOCAST_CALLS = {
    "conv2d": (lambda x, w, b: fct.conv2d(x, w, b, padding=1), [(1, 2, 5, 5), (3, 2, 3, 3), 3]),
    "conv_transpose2d": (lambda x, w: fct.conv_transpose2d(x, w, stride=2),
                         [(1, 2, 4, 4), (2, 3, 3, 3)]),
    "max_pool2d": (lambda x: fct.max_pool2d(x, 2), [(1, 2, 4, 6)]),
    "max_pool2d_indices": (lambda x: fct.max_pool2d(x, 2, return_indices=True)[0],
                           [(1, 2, 4, 6)]),
    "avg_pool2d": (lambda x: fct.avg_pool2d(x, 3, stride=2, padding=1), [(1, 2, 5, 6)]),
    "max_unpool2d": (lambda x: fct.max_unpool2d(
        x, torch.tensor([[[[0, 3], [9, 14]], [[5, 6], [8, 15]]]]), 2), [(1, 2, 2, 2)]),
    "repeat_unpool2d": (lambda x: fct.repeat_unpool2d(x, (2, 3)), [(1, 2, 3, 2)]),
}


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("op", list(AUTOCAST_CALLS))
def test_autocast_on_both_routes(op, half, monkeypatch, rng):
    """Under CPU autocast: half-precision inputs are computed in float32 (exactly the float32
    call outside autocast), the output is float32 and the gradients reach the half-precision
    leaves; float64 is never cast. The same on both routes; without autocast, half precision
    is a TypeError on both."""
    function, shapes = AUTOCAST_CALLS[op]
    inputs = [uniform(shape, half, rng) for shape in shapes]
    grad_output = []
    results = {}
    for route in ("eager", "custom_op"):
        if route == "custom_op":
            monkeypatch.setattr(fct, "_plain_eager", lambda tensors: False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs, grads = outputs_and_grads(function, inputs, grad_output)
            wide = function(*(t.detach().double() for t in inputs))
        assert outputs[0].dtype == torch.float32 and wide.dtype == torch.float64, route
        assert all(g.dtype == half for g in grads), route
        expected, _ = outputs_and_grads(function, [t.float() for t in inputs], [])
        torch.testing.assert_close(outputs[0].detach(), expected[0].detach(), rtol=0, atol=0)
        with pytest.raises(TypeError, match=f"has dtype {half}".replace(".", r"\.")):
            function(*inputs)
        results[route] = outputs + grads + [wide]
    for got, want in zip(results["eager"], results["custom_op"], strict=True):
        assert_identical(got, want)


def test_torch_compile_aot_eager_equals_eager(rng):
    """The compiled graph (torch.ops.fastconv.* traced by Dynamo and AOTAutograd, run by
    aot_eager) gives the eager route's outputs and gradients bitwise, with and without grad
    and under autocast."""
    dynamo = pytest.importorskip("torch._dynamo")

    def every_op(x, w, b):
        y = fct.conv2d(x, w, b, padding=1)
        pooled, indices = fct.max_pool2d(y, 2, return_indices=True)
        y = fct.max_unpool2d(pooled, indices, 2, output_size=y.shape) + y
        y = fct.max_pool2d(fct.avg_pool2d(y, 3, stride=1, padding=1), 2)
        y = fct.conv_transpose2d(y, w.transpose(0, 1), stride=2)
        return fct.repeat_unpool2d(y, (1, 2))

    compiled = torch.compile(every_op, backend="aot_eager", fullgraph=True)
    inputs = [distinct((2, 3, 8, 8), torch.float64, rng), uniform((3, 3, 3, 3), torch.float64, rng),
              uniform(3, torch.float64, rng)]
    try:
        grad_outputs = []
        eager = outputs_and_grads(every_op, inputs, grad_outputs)
        traced = outputs_and_grads(compiled, inputs, grad_outputs)
        for got, want in zip(traced[0] + traced[1], eager[0] + eager[1], strict=True):
            assert_identical(got, want)
        with torch.no_grad():
            assert_identical(compiled(*inputs), every_op(*inputs))
        half = [t.detach().bfloat16() for t in inputs]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, want = compiled(*half), every_op(*half)
        assert got.dtype == torch.float32
        assert_identical(got, want)
    finally:
        dynamo.reset()


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
def test_tracing_and_transforms_take_the_custom_ops(op_calls, rng):
    """What is not plain eager sees the custom ops: make_fx (proxy and fake tensors),
    torch.jit.trace, FakeTensors, a TorchDispatchMode, a TorchFunctionMode, torch.func
    transforms and tensor subclasses. On the eager route each would run the kernels on
    tracer or fake tensors (or fail) instead of recording the op."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.utils._python_dispatch import TorchDispatchMode

    x = distinct((1, 2, 6, 6), torch.float64, rng, requires_grad=False)
    w = uniform((3, 2, 3, 3), torch.float64, rng, requires_grad=False)

    def network(x, w):
        return fct.avg_pool2d(fct.max_pool2d(fct.conv2d(x, w, padding=1), 2), 1)

    expected = network(x, w)
    assert not op_calls
    for mode in ("real", "fake"):
        graph = str(make_fx(network, tracing_mode=mode)(x, w).graph)
        assert all(f"fastconv.{op}.default" in graph for op in ("conv2d", "max_pool2d",
                                                               "avg_pool2d")), graph
    traced = torch.jit.trace(network, (x, w), check_trace=False)
    assert "fastconv::conv2d" in str(traced.graph)
    assert_identical(traced(x, w), expected)

    fake_mode = torch._subclasses.fake_tensor.FakeTensorMode()
    fake_x, fake_w = fake_mode.from_tensor(x), fake_mode.from_tensor(w)
    for context in (fake_mode, torch.autograd.grad_mode.no_grad()):  # in and outside the mode
        with context:
            fake = network(fake_x, fake_w)
        assert isinstance(fake, torch._subclasses.fake_tensor.FakeTensor)
        assert fake.shape == expected.shape

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    seen = []
    with Log():
        assert_identical(network(x, w), expected)
    assert "fastconv.conv2d.default" in seen

    op_calls.clear()
    with torch.device("cpu"):  # a TorchFunctionMode
        assert_identical(network(x, w), expected)
    assert op_calls == {"conv2d": 1, "max_pool2d": 1, "avg_pool2d": 1}

    class Subclass(torch.Tensor):
        pass

    op_calls.clear()
    assert_identical(network(x.as_subclass(Subclass), w).as_subclass(torch.Tensor), expected)
    assert op_calls == {"conv2d": 1, "max_pool2d": 1, "avg_pool2d": 1}

    op_calls.clear()
    batched = torch.vmap(lambda x: network(x, w))(torch.stack([x, 2 * x]))
    assert_identical(batched[0], expected)
    assert op_calls
    op_calls.clear()
    with pytest.raises(RuntimeError, match="functorch transforms"):
        torch.func.grad(lambda x: network(x, w).sum())(x)
    assert op_calls == {"conv2d": 1}


# --- argument forms shared with fastconv.functional -----------------------------------------


def test_pooling_argument_forms_match_torch():
    x = torch.randn(1, 2, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(fct.avg_pool2d(x, 2, divisor_override=-2),
                               F.avg_pool2d(x, 2, divisor_override=-2))
    torch.testing.assert_close(fct.max_pool2d(x, (3,), stride=(), padding=(1,)),
                               F.max_pool2d(x, (3,), stride=(), padding=(1,)))
    y, indices = fct.max_pool2d(x, 2, return_indices=True)
    with pytest.raises(ValueError, match="kernel_size"):
        fct.max_unpool2d(y, indices, (2,))  # torch refuses (v,) in max_unpool2d too


@pytest.mark.parametrize("call", [
    lambda x: fct.max_pool2d(x, 2, stride=2**70),
    lambda x: fct.avg_pool2d(x, 2**40),
    lambda x: fct.conv2d(x, torch.randn(2, 2, 3, 3), stride=2**70),
    lambda x: fct.conv2d(x, torch.randn(2, 2, 3, 3), padding=(2**63, 1)),
], ids=["pool_stride", "pool_kernel", "conv_stride", "conv_padding"])
def test_huge_sizes_are_value_errors_naming_the_argument(call):
    with pytest.raises(ValueError, match="at most 2\\*\\*31 - 1"):
        call(torch.randn(1, 2, 8, 8))


def test_return_indices_takes_0_and_1_as_torch_does(route):
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    y, indices = fct.max_pool2d(x, 2, return_indices=1)
    torch.testing.assert_close(indices, F.max_pool2d(x, 2, return_indices=1)[1])
    torch.testing.assert_close(fct.MaxPool2d(2, return_indices=1)(x)[1], indices)
    with pytest.raises(TypeError, match="ceil_mode must be a bool"):
        fct.max_pool2d(x, 2, ceil_mode=1)  # torch refuses it too


def test_unpool_output_size_too_large_is_the_same_error_on_both_routes(route):
    y, indices = fct.max_pool2d(torch.randn(1, 2, 4, 4), 2, return_indices=True)
    with pytest.raises(ValueError, match="output_size"):
        fct.max_unpool2d(y, indices, 2, output_size=[2**63, 4])
