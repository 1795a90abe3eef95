"""fastconv.nn's output_shape (a layer's output shape without a forward) and
fastconv.warmup_backward (a model's backward kernels compiled in a helper process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import nn, warmup_backward

RNG = np.random.default_rng(0)

# (layer, input shape): every layer type, batched and not, each padding form
LAYERS = [
    (nn.Conv2d(3, 5, 3), (2, 3, 9, 11)),
    (nn.Conv2d(3, 5, 3), (3, 9, 11)),
    (nn.Conv2d(4, 6, (3, 2), stride=(2, 3), padding=((1, 0), (2, 1)), dilation=(1, 2),
               groups=2), (2, 4, 13, 10)),
    (nn.Conv2d(2, 4, 5, padding="same", dilation=2), (1, 2, 7, 8)),
    (nn.Conv2d(2, 4, 3, padding="valid", stride=2), (1, 2, 7, 8)),
    (nn.Conv2d(2, 4, 3, padding=(2, 0), activation="relu"), (1, 2, 4, 6)),
    (nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1), (2, 4, 5, 6)),
    (nn.ConvTranspose2d(4, 6, 3, stride=(2, 3), padding=((1, 0), (0, 2)),
                        output_padding=(1, 2), groups=2, dilation=(1, 2)), (4, 5, 6)),
    (nn.MaxPool2d(2), (2, 3, 9, 8)),
    (nn.MaxPool2d(3, stride=2, padding=1, dilation=1, ceil_mode=True), (1, 2, 10, 7)),
    (nn.MaxPool2d((2, 3), stride=(1, 2), dilation=(2, 1), return_indices=True), (3, 9, 9)),
    (nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True), (2, 3, 8, 9)),
    (nn.AvgPool2d(2), (3, 5, 5)),
    (nn.RepeatUnpool2d((2, 3)), (2, 3, 4, 5)),
    (nn.ReLU(), (2, 3, 4)),
    (nn.Flatten(), (2, 3, 4, 5)),
    (nn.Linear(7, 3), (5, 7)),
    (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3),
                   nn.Flatten(), nn.Linear(8 * 2 * 2, 10), nn.ReLU()), (3, 1, 8, 8)),
    (nn.Sequential(), (2, 3)),
]


def _forward_shape(layer: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    dtype = layer.weight.dtype if hasattr(layer, "weight") else np.float32
    y = layer(RNG.standard_normal(shape).astype(dtype))
    return (y[0] if isinstance(y, tuple) else y).shape


@pytest.mark.parametrize(("layer", "shape"), LAYERS, ids=lambda v: repr(v).split("(")[0])
def test_output_shape_is_the_forward_s(layer, shape):
    assert layer.output_shape(shape) == _forward_shape(layer, shape)
    assert layer.output_shape(list(shape)) == layer.output_shape(shape)


@pytest.mark.parametrize(("layer", "shape"), LAYERS, ids=lambda v: repr(v).split("(")[0])
def test_each_layer_runs_its_backward_kernels_on_zeros(layer, shape):
    # what a helper of warmup_backward calls, for every layer type (the conv layers' op
    # is their class's _backward_op)
    layer._compile_backward(shape, np.dtype(np.float32))


def test_max_unpool2d_output_shape_is_its_default_size():
    pool, unpool = nn.MaxPool2d(3, stride=2, padding=1, return_indices=True), nn.MaxUnpool2d(
        3, stride=2, padding=1)
    y, indices = pool(RNG.standard_normal((2, 3, 9, 9)).astype(np.float32))
    assert unpool.output_shape(y.shape) == unpool(y, indices).shape == (2, 3, 9, 9)


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(["conv", "transposed", "max", "avg"]),
       size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
       kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       pad=st.one_of(st.integers(0, 2), st.sampled_from(["same", "valid"])),
       dilation=st.integers(1, 2), ceil_mode=st.booleans(), extra=st.integers(0, 2),
       batched=st.booleans())
def test_output_shape_agrees_with_forward_on_random_layers(kind, size, kernel, stride, pad,
                                                           dilation, ceil_mode, extra, batched):
    """The shape forward gives, or a ValueError where forward raises one."""
    if kind == "conv":
        try:
            layer: nn.Module = nn.Conv2d(2, 3, kernel, stride, pad, dilation)
        except ValueError:
            return  # ("same" at a stride: refused when the layer is built)
    elif isinstance(pad, str):
        return
    elif kind == "transposed":
        layer = nn.ConvTranspose2d(2, 3, kernel, stride, pad, output_padding=extra,
                                   dilation=dilation)
    elif kind == "max":
        if 2 * pad > min(kernel):
            return  # (the layer itself refuses such a padding)
        layer = nn.MaxPool2d(kernel, stride, pad, dilation, ceil_mode=ceil_mode)
    else:
        if 2 * pad > min(kernel):
            return
        layer = nn.AvgPool2d(kernel, stride, pad, ceil_mode=ceil_mode)
    shape = ((2,) if batched else ()) + (2, *size)
    try:
        expected = _forward_shape(layer, shape)
    except ValueError:
        with pytest.raises(ValueError):
            layer.output_shape(shape)
        return
    assert layer.output_shape(shape) == expected


@pytest.mark.parametrize(("layer", "shape", "error", "match"), [
    (nn.Conv2d(3, 5, 3), (2, 4, 9, 9), ValueError, r"C=3 channels, got \(2, 4, 9, 9\)"),
    (nn.Conv2d(3, 5, 3), (3, 9), ValueError, r"\(N, C, H, W\) or \(C, H, W\), got \(3, 9\)"),
    (nn.Conv2d(3, 5, 3), (2, 3, 2, 9), ValueError, "larger than the padded input"),
    (nn.Conv2d(3, 5, 3), (2, 3.0, 9, 9), TypeError, "tuple of non-negative ints"),
    (nn.Conv2d(3, 5, 3), "2,3,9,9", TypeError, "tuple of non-negative ints"),
    (nn.MaxPool2d(2), (2, -1, 4, 4), TypeError, "non-negative ints"),
    (nn.Linear(7, 3), (5, 6), ValueError, r"\(N, 7\), got \(5, 6\)"),
    (nn.Flatten(), (5,), ValueError, "at least 2 dimensions"),
    (nn.ConvTranspose2d(2, 2, 3, padding=3), (1, 2, 1, 1), ValueError, "crops more"),
    (nn.ConvTranspose2d(2, 2, 3, output_padding=1), (1, 2, 5, 5), ValueError,
     "output_padding must be smaller than stride or dilation"),
])
def test_output_shape_rejects_what_forward_would(layer, shape, error, match):
    with pytest.raises(error, match=match):
        layer.output_shape(shape)


def test_a_layer_without_output_shape_says_so():
    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(NotImplementedError, match="Custom does not give its output shape"):
        Custom().output_shape((1, 2))
    with pytest.raises(NotImplementedError, match="Custom does not give"):
        nn.Sequential(nn.ReLU(), Custom()).output_shape((1, 2))

    class Duck:  # a layer of its own kind, not a Module
        def forward(self, x):
            return x

        def backward(self, grad, needs_input_grad=True):
            return grad

    with pytest.raises(NotImplementedError, match=r"layer 1 \(Duck\) has no output_shape"):
        nn.Sequential(nn.ReLU(), Duck()).output_shape((1, 2))


@pytest.mark.parametrize(("args", "error", "match"), [
    ((np.zeros(3), (1, 1, 8, 8)), TypeError, "model must be a fastconv.nn layer"),
    ((nn.Conv2d(1, 2, 3), (1, 2, 8, 8)), ValueError, "C=1 channels"),
    ((nn.Conv2d(1, 2, 3), (1, 1, 8, 8), np.int32), TypeError, "float32 or float64"),
    ((nn.Conv2d(1, 2, 3), (1, 1, 8, 8), "nonsense"), TypeError, "float32 or float64"),
])
def test_warmup_backward_rejects_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        warmup_backward(*args)


def test_warmup_backward_without_the_disk_cache_starts_nothing(monkeypatch):
    from fastconv.cpu import _jit

    monkeypatch.setattr(_jit, "disk_cache", lambda: False)
    ahead = warmup_backward(nn.Conv2d(1, 2, 3), (1, 1, 8, 8))
    assert ahead.wait() is False and ahead.wait() is False
    with warmup_backward(nn.Conv2d(1, 2, 3), (1, 1, 8, 8)) as ahead:
        pass
    assert ahead.wait() is False


def test_a_wait_before_the_helper_starts_starts_none_and_leaves_no_file(monkeypatch):
    # a forward whose kernels load from the cache ends before the helper would start
    from fastconv.cpu import _jit

    warmup_module = sys.modules["fastconv.warmup"]
    monkeypatch.setattr(_jit, "disk_cache", lambda: True)
    monkeypatch.setattr(warmup_module, "_cores", lambda: 2)
    monkeypatch.setattr(warmup_module, "SLOW_STEP_S", 60.0)
    ahead = warmup_backward(nn.Conv2d(1, 2, 3), (1, 1, 8, 8))
    handoff = ahead._handoff
    assert handoff is not None and os.path.exists(handoff)
    assert ahead.wait() is False
    assert ahead._process is None and not os.path.exists(handoff)


class Duck:
    """A layer of its own kind, not a Module (picklable: at module level)."""

    def forward(self, x):
        return x

    def backward(self, grad, needs_input_grad=True):
        return grad


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.Flatten(), nn.Linear(48, 2), nn.ReLU()),
    nn.Sequential(nn.Conv2d(3, 4, 3, device="cuda"), nn.Sequential(nn.ReLU())),
    nn.ReLU(),
], ids=["dense", "on a GPU", "relu"])
def test_a_model_without_backward_kernels_on_the_cpu_starts_no_helper(model, monkeypatch):
    from fastconv.cpu import _jit

    warmup_module = sys.modules["fastconv.warmup"]
    monkeypatch.setattr(_jit, "disk_cache", lambda: True)
    monkeypatch.setattr(warmup_module, "_cores", lambda: 2)
    monkeypatch.setattr(warmup_module, "SLOW_STEP_S", 60.0)
    ahead = warmup_backward(model, (2, 3, 4, 4))
    assert ahead._handoff is None and ahead.wait() is False
    # where such a layer is deep in a nested Sequential, one is prepared (a layer of
    # another kind before it, without _compile_backward, left to compile at its call)
    nested = nn.Sequential(Duck(), nn.ReLU(), nn.Sequential(nn.MaxPool2d(2)))
    ahead = warmup_backward(nested, (2, 3, 4, 4))
    assert ahead._handoff is not None
    assert ahead.wait() is False  # (waited for before it started)


# A model whose backward runs kernels of its own (the weight gradient, the pooling's, the
# bias sums): after the helper, its backward compiles nothing, and its gradients are the
# same as those of a model that compiled them itself.
FIRST_STEP = """
import numpy as np
from numba.core import event
import fastconv
from fastconv import nn, warmup_backward

assert fastconv.__file__.startswith({root!r}), fastconv.__file__


def model():
    rng = np.random.default_rng(0)
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1, activation="relu", rng=rng),
                         nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, rng=rng), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(8, 3, rng=rng))


compiled = []


class Compiles(event.Listener):
    def on_start(self, event):
        compiled.append(event.data["dispatcher"].py_func.__qualname__)

    def on_end(self, event):
        pass


x = np.random.default_rng(1).standard_normal((4, 2, 8, 8)).astype(np.float32)
helped = model()
with warmup_backward(helped, x.shape) as ahead:
    y = helped(x)
print(ahead.wait())
with event.install_listener("numba:compile", Compiles()):
    helped.backward(np.ones_like(y), needs_input_grad=False)
print(compiled)
alone = model()
alone.backward(np.ones_like(alone(x)), needs_input_grad=False)
print(all(np.array_equal(helped.grads()[k], alone.grads()[k]) for k in alone.grads()))
"""


def test_after_warmup_backward_the_backward_compiles_nothing(tmp_path):
    root = os.path.dirname(os.path.dirname(fastconv.__file__))
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith("FASTCONV_")
                   and name not in ("NUMBA_BOUNDSCHECK", "NUMBA_DISABLE_JIT")}
    environment.update(NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=root)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FIRST_STEP.format(root=root))],
        capture_output=True, text=True, timeout=600, check=False, env=environment, cwd=root)
    assert result.returncode == 0, result.stderr
    helped, compiled, same = result.stdout.split("\n")[:3]
    if sys.modules["fastconv.warmup"]._cores() < 2:
        assert helped == "False"  # one core: no helper
        return
    assert helped == "True", result.stderr
    assert compiled == "[]"
    assert same == "True"
