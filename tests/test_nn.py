"""fastconv.nn: each layer's forward and backward against the functional ops and against
the torch.nn layer with the same weights (gradients through torch.autograd), the fused
ReLU's gradient by finite differences, PyTorch's initialisation and its seeding, the
params/grads protocol with SGD (against torch.optim.SGD), and the errors."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import fastconv
from fastconv import dispatch, nn
from tests.cases import DTYPES, sum_tolerance, tolerance
from tests.gradients import numeric_gradient
from tests.pool_cases import tie_free

DTYPE_IDS = [np.dtype(d).name for d in DTYPES]

#: Conv2d arguments: (in, out, kernel, options), covering stride, every padding form,
#: dilation, groups and no bias.
CONV_LAYERS = {
    "3x3_p1": (3, 4, 3, {"padding": 1}),
    "3x3_s2_same": (2, 3, 3, {"stride": 2, "padding": "same"}),
    "2x3_asym": (2, 2, (2, 3), {"padding": ((0, 1), (2, 0)), "stride": (1, 2)}),
    "dilated": (2, 3, 3, {"dilation": 2, "padding": 2}),
    "grouped_nobias": (4, 6, 3, {"groups": 2, "padding": "valid", "bias": False}),
    "depthwise": (3, 3, 3, {"groups": 3, "padding": 1}),
}
TRANSPOSE_LAYERS = {
    "3x3_s2": (3, 2, 3, {"stride": 2, "padding": 1, "output_padding": 1}),
    "2x2_s2_nobias": (2, 4, 2, {"stride": 2, "bias": False}),
    "grouped_dilated": (4, 2, 3, {"groups": 2, "dilation": 2, "padding": (1, 0)}),
}


def _torch():
    return pytest.importorskip("torch")


def _t(array, grad=False):
    tensor = _torch().from_numpy(np.array(array))
    return tensor.requires_grad_() if grad else tensor


def _copy_params(layer, torch_layer):
    torch = _torch()
    for name, value in layer.params().items():
        setattr(torch_layer, name, torch.nn.Parameter(_t(value)))


def _torch_grads(torch_layer):
    return {name: p.grad.numpy() for name, p in torch_layer.named_parameters()}


def assert_close(actual, expected, dtype, terms=1):
    assert actual.dtype == np.dtype(dtype)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, **sum_tolerance(dtype, terms))


def _torch_conv_padding(padding):
    """torch.nn.Conv2d's form of ``padding``, and the explicit ((t, b), (l, r)) to pad the
    input with first where torch has none."""
    if isinstance(padding, tuple) and isinstance(padding[0], tuple):
        return 0, padding
    return padding, None


# --- Conv2d -----------------------------------------------------------------------------


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(CONV_LAYERS))
def test_conv2d_equals_functional_and_torch(name, dtype, activation, rng):
    c, k, kernel, options = CONV_LAYERS[name]
    layer = nn.Conv2d(c, k, kernel, **options, activation=activation, dtype=dtype, rng=rng)
    x = rng.uniform(-1, 1, (2, c, 9, 8)).astype(dtype)
    y = layer(x)
    conv_args = {key: value for key, value in options.items() if key != "bias"}
    z = fastconv.conv2d(x, layer.weight, layer.bias, **conv_args)
    expected = np.maximum(z, 0) if activation == "relu" else z
    np.testing.assert_array_equal(y, expected)

    grad_output = rng.uniform(-1, 1, y.shape).astype(dtype)
    grad_input = layer.backward(grad_output)
    dz = grad_output * (z > 0) if activation == "relu" else grad_output
    gx, gw, gb = fastconv.conv2d_backward(dz, x, layer.weight, **conv_args,
                                          needs_bias_grad=layer.bias is not None)
    np.testing.assert_array_equal(grad_input, gx)
    np.testing.assert_array_equal(layer.grad_weight, gw)
    if layer.bias is not None:
        np.testing.assert_array_equal(layer.grad_bias, gb)

    torch = _torch()
    padding, explicit = _torch_conv_padding(options.get("padding", 0))
    torch_layer = torch.nn.Conv2d(c, k, kernel, stride=options.get("stride", 1),
                                  padding=padding if padding != "same" else 0,
                                  dilation=options.get("dilation", 1),
                                  groups=options.get("groups", 1),
                                  bias=options.get("bias", True))
    _copy_params(layer, torch_layer)
    tx = _t(x, grad=True)
    if padding == "same":  # torch refuses "same" with stride 2: pad as fastconv documents
        explicit = fastconv.shapes.padding2d("same", x.shape[2:], layer.kernel_size,
                                             layer.stride, layer.dilation)
    inp = tx if explicit is None else torch.nn.functional.pad(
        tx, (*explicit[1], *explicit[0]))
    ty = torch_layer(inp)
    if activation == "relu":
        ty = torch.relu(ty)
    ty.backward(_t(grad_output))
    terms = grad_output.size // k
    assert_close(y, ty.detach().numpy(), dtype)
    assert_close(grad_input, tx.grad.numpy(), dtype)
    for key, value in _torch_grads(torch_layer).items():
        assert_close(layer.grads()[key], value, dtype, terms)


def test_conv2d_unbatched_input(rng):
    layer = nn.Conv2d(2, 3, 3, padding=1, activation="relu", rng=rng)
    x = rng.uniform(-1, 1, (2, 5, 5)).astype(np.float32)
    batched = layer(x[None])[0]
    y = layer(x)
    np.testing.assert_array_equal(y, batched)
    assert layer.backward(np.ones_like(y)).shape == x.shape


def test_fused_relu_gradient_by_finite_differences(rng):
    layer = nn.Conv2d(2, 3, 3, stride=(1, 2), padding=1, activation="relu",
                      dtype=np.float64, rng=rng)
    x = rng.uniform(-1, 1, (2, 2, 6, 7))
    weights = rng.uniform(-1, 1, layer(x).shape)  # loss = sum(weights * y)
    z = fastconv.conv2d(x, layer.weight, layer.bias, stride=(1, 2), padding=1)
    assert 0 < (z > 0).mean() < 1, "the ReLU must cut some outputs and keep others"
    step = 1e-6
    assert np.abs(z).min() > 1e3 * step, "a pre-activation too close to the kink"

    def loss():
        return float((weights * layer(x)).sum())

    layer(x)
    grad_input = layer.backward(weights)
    for name, array, analytic in (("input", x, grad_input),
                                  ("weight", layer.weight, layer.grad_weight),
                                  ("bias", layer.bias, layer.grad_bias)):
        numeric = numeric_gradient(loss, array, step=step)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("make", [
    lambda rng: nn.Conv2d(2, 3, 3, padding=1, activation="relu", dtype=np.float64, rng=rng),
    lambda rng: nn.ReLU(),
], ids=["Conv2d_relu", "ReLU"])
def test_relu_backward_ignores_in_place_edits_of_the_output(make, rng):
    """The output belongs to the caller: editing it in place (say, a residual ``y += x``)
    must not move the ReLU's mask, which the forward keeps separately."""
    layer = make(rng)
    x = rng.uniform(-1, 1, (2, 2, 5, 5))
    grad_output = rng.uniform(-1, 1, layer(x).shape)
    expected = layer.backward(grad_output)
    y = layer(x)
    y -= 10.0  # every output now <= 0: a mask read from y would zero the gradient
    np.testing.assert_array_equal(layer.backward(grad_output), expected)
    assert np.abs(expected).sum() > 0


@pytest.mark.parametrize("make", [
    lambda rng: nn.Conv2d(1, 1, 1, bias=False, activation="relu", dtype=np.float64, rng=rng),
    lambda rng: nn.ReLU(),
], ids=["Conv2d_relu", "ReLU"])
def test_relu_backward_zero_where_off_even_for_nan_gradients(make, rng):
    # torch: the gradient is 0 where the ReLU is off, whatever grad_output holds there
    layer = make(rng)
    if isinstance(layer, nn.Conv2d):
        layer.weight[...] = 1.0
    x = np.array([-1.0, 2.0, -3.0, 4.0]).reshape(1, 1, 2, 2)
    layer(x)
    grad = layer.backward(np.array([np.nan, np.nan, np.inf, 1.0]).reshape(1, 1, 2, 2))
    np.testing.assert_array_equal(grad.ravel(), [0.0, np.nan, 0.0, 1.0])


# --- ConvTranspose2d --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(TRANSPOSE_LAYERS))
def test_conv_transpose2d_equals_functional_and_torch(name, dtype, rng):
    c, k, kernel, options = TRANSPOSE_LAYERS[name]
    layer = nn.ConvTranspose2d(c, k, kernel, **options, dtype=dtype, rng=rng)
    x = rng.uniform(-1, 1, (2, c, 5, 4)).astype(dtype)
    y = layer(x)
    args = {key: value for key, value in options.items() if key != "bias"}
    np.testing.assert_array_equal(y, fastconv.conv_transpose2d(x, layer.weight, layer.bias,
                                                                **args))
    grad_output = rng.uniform(-1, 1, y.shape).astype(dtype)
    grad_input = layer.backward(grad_output)
    gx, gw, gb = fastconv.conv_transpose2d_backward(grad_output, x, layer.weight, **args,
                                                    needs_bias_grad=layer.bias is not None)
    np.testing.assert_array_equal(grad_input, gx)
    np.testing.assert_array_equal(layer.grad_weight, gw)

    torch = _torch()
    torch_layer = torch.nn.ConvTranspose2d(c, k, kernel, **options)
    _copy_params(layer, torch_layer)
    tx = _t(x, grad=True)
    ty = torch_layer(tx)
    ty.backward(_t(grad_output))
    assert_close(y, ty.detach().numpy(), dtype, x.size // c)
    assert_close(grad_input, tx.grad.numpy(), dtype)
    for key, value in _torch_grads(torch_layer).items():
        assert_close(layer.grads()[key], value, dtype, grad_output.size // k)


def test_conv_transpose2d_output_size_is_kept_for_backward(rng):
    torch = _torch()
    layer = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, dtype=np.float64, rng=rng)
    x = rng.uniform(-1, 1, (1, 2, 4, 4))
    y = layer(x, output_size=(8, 8))
    assert y.shape == (1, 3, 8, 8)
    grad_output = rng.uniform(-1, 1, y.shape)
    grad_input = layer.backward(grad_output)
    torch_layer = torch.nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, dtype=torch.float64)
    _copy_params(layer, torch_layer)
    tx = _t(x, grad=True)
    torch_layer(tx, output_size=[8, 8]).backward(_t(grad_output))
    assert_close(grad_input, tx.grad.numpy(), np.float64)
    assert_close(layer.grad_weight, torch_layer.weight.grad.numpy(), np.float64, 64)


# --- pooling and unpooling --------------------------------------------------------------

MAX_POOLS = {
    "2x2": dict(kernel_size=2),
    "3x3_s2_p1": dict(kernel_size=3, stride=2, padding=1),
    "3x2_ceil": dict(kernel_size=(3, 2), stride=2, ceil_mode=True),
    "dilated": dict(kernel_size=2, stride=1, dilation=2),
}
AVG_POOLS = {
    "2x2": dict(kernel_size=2),
    "3x3_s2_p1_exclude": dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
    "3x3_ceil_divisor": dict(kernel_size=3, stride=2, ceil_mode=True, divisor_override=5),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(MAX_POOLS))
def test_max_pool2d_equals_functional_and_torch(name, dtype, rng):
    torch = _torch()
    options = MAX_POOLS[name]
    layer = nn.MaxPool2d(**options)
    x = tie_free((2, 3, 9, 8), dtype, rng)
    y = layer(x)
    expected, indices = fastconv.max_pool2d(x, **options, return_indices=True)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(layer.indices, indices)
    grad_output = rng.uniform(-1, 1, y.shape).astype(dtype)
    grad_input = layer.backward(grad_output)
    np.testing.assert_array_equal(
        grad_input, fastconv.max_pool2d_backward(grad_output, indices, x.shape))

    tx = _t(x, grad=True)
    ty, t_indices = torch.nn.MaxPool2d(**options, return_indices=True)(tx)
    ty.backward(_t(grad_output))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(layer.indices, t_indices.numpy())
    assert_close(grad_input, tx.grad.numpy(), dtype)


def test_max_pool2d_return_indices(rng):
    x = tie_free((1, 2, 4, 4), np.float32, rng)
    y, indices = nn.MaxPool2d(2, return_indices=True)(x)
    assert y.shape == indices.shape == (1, 2, 2, 2)
    assert indices.dtype == np.int64


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(AVG_POOLS))
def test_avg_pool2d_equals_functional_and_torch(name, dtype, rng):
    torch = _torch()
    options = AVG_POOLS[name]
    layer = nn.AvgPool2d(**options)
    x = rng.uniform(-1, 1, (2, 3, 9, 8)).astype(dtype)
    y = layer(x)
    np.testing.assert_array_equal(y, fastconv.avg_pool2d(x, **options))
    grad_output = rng.uniform(-1, 1, y.shape).astype(dtype)
    grad_input = layer.backward(grad_output)
    np.testing.assert_array_equal(
        grad_input, fastconv.avg_pool2d_backward(grad_output, x.shape, **options))

    tx = _t(x, grad=True)
    ty = torch.nn.AvgPool2d(**options)(tx)
    ty.backward(_t(grad_output))
    assert_close(y, ty.detach().numpy(), dtype)
    assert_close(grad_input, tx.grad.numpy(), dtype)


@pytest.mark.parametrize("size, output_size", [((8, 6), None), ((9, 7), (9, 7))])
def test_max_unpool2d_equals_functional_and_torch(size, output_size, rng):
    torch = _torch()
    x = tie_free((2, 3, *size), np.float64, rng)
    pooled, indices = nn.MaxPool2d(2, return_indices=True)(x)
    layer = nn.MaxUnpool2d(2)
    y = layer(pooled, indices, output_size=output_size)
    np.testing.assert_array_equal(
        y, fastconv.max_unpool2d(pooled, indices, 2, output_size=output_size))
    grad_output = rng.uniform(-1, 1, y.shape)
    grad_input = layer.backward(grad_output)
    np.testing.assert_array_equal(grad_input,
                                  fastconv.max_unpool2d_backward(grad_output, indices))

    tp = _t(pooled, grad=True)
    ty = torch.nn.MaxUnpool2d(2)(tp, _t(indices), output_size=output_size)
    ty.backward(_t(grad_output))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(grad_input, tp.grad.numpy())


@pytest.mark.parametrize("scale", [2, (1, 3)])
def test_repeat_unpool2d_equals_functional_and_torch(scale, rng):
    torch = _torch()
    x = rng.uniform(-1, 1, (2, 3, 4, 5)).astype(np.float32)
    layer = nn.RepeatUnpool2d(scale)
    y = layer(x)
    np.testing.assert_array_equal(y, fastconv.repeat_unpool2d(x, scale))
    grad_output = rng.uniform(-1, 1, y.shape).astype(np.float32)
    grad_input = layer.backward(grad_output)
    np.testing.assert_array_equal(grad_input,
                                  fastconv.repeat_unpool2d_backward(grad_output, scale))

    factor = (scale, scale) if isinstance(scale, int) else scale
    tx = _t(x, grad=True)
    ty = torch.nn.Upsample(scale_factor=factor, mode="nearest")(tx)
    ty.backward(_t(grad_output))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    assert_close(grad_input, tx.grad.numpy(), np.float32)


# --- dense layers, loss and optimiser ---------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_linear_flatten_relu_equal_torch(bias, rng):
    torch = _torch()
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5, bias=bias, dtype=np.float64, rng=rng),
                          nn.ReLU())
    torch_linear = torch.nn.Linear(12, 5, bias=bias, dtype=torch.float64)
    _copy_params(model[1], torch_linear)
    x = rng.uniform(-1, 1, (4, 3, 2, 2))
    y = model(x)
    grad_output = rng.uniform(-1, 1, y.shape)
    grad_input = model.backward(grad_output)

    tx = _t(x, grad=True)
    ty = torch.relu(torch_linear(torch.flatten(tx, 1)))
    ty.backward(_t(grad_output))
    assert_close(y, ty.detach().numpy(), np.float64)
    assert_close(grad_input, tx.grad.numpy(), np.float64)
    for key, value in _torch_grads(torch_linear).items():
        assert_close(model.grads()[f"1.{key}"], value, np.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cross_entropy_equals_torch(dtype, rng):
    torch = _torch()
    logits = rng.uniform(-5, 5, (6, 10)).astype(dtype)
    target = rng.integers(0, 10, 6)
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(logits, target)
    grad = loss_fn.backward()
    t_logits = _t(logits, grad=True)
    t_loss = torch.nn.functional.cross_entropy(t_logits, _t(target))
    t_loss.backward()
    assert isinstance(loss, float)
    assert loss == pytest.approx(t_loss.item(), rel=tolerance(dtype)["rtol"])
    assert_close(grad, t_logits.grad.numpy(), dtype)


def test_cross_entropy_failed_forward_leaves_no_stale_backward():
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="target"):
        loss_fn(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(RuntimeError, match="without a successful forward"):
        loss_fn.backward()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cross_entropy_gradient_has_the_logits_dtype(dtype):
    loss_fn = nn.CrossEntropyLoss()
    loss_fn(np.zeros((2, 3), dtype), np.array([0, 1], np.uint8))
    assert loss_fn.backward().dtype == np.dtype(dtype)


@pytest.mark.parametrize("logits", [np.array([[1, 2, 3]]), np.array([[True, False, True]]),
                                    [[1, 2, 3]]], ids=["int64", "bool", "int_list"])
def test_cross_entropy_rejects_non_float_logits(logits):
    loss_fn = nn.CrossEntropyLoss()
    with pytest.raises(TypeError, match=r"logits must be a floating-point array.*got dtype"):
        loss_fn(logits, np.array([0]))
    with pytest.raises(RuntimeError, match="without a successful forward"):
        loss_fn.backward()


def test_cross_entropy_is_stable_for_large_logits():
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(np.array([[1000.0, 0.0], [0.0, 1000.0]], np.float32), np.array([0, 0]))
    assert loss == pytest.approx(500.0)
    assert np.isfinite(loss_fn.backward()).all()


def test_sgd_equals_torch_over_steps(rng):
    torch = _torch()
    layer = nn.Linear(4, 3, dtype=np.float64, rng=rng)
    torch_layer = torch.nn.Linear(4, 3, dtype=torch.float64)
    _copy_params(layer, torch_layer)
    optimizer = nn.SGD(layer, lr=0.1, momentum=0.9, weight_decay=0.01)
    torch_optimizer = torch.optim.SGD(torch_layer.parameters(), lr=0.1, momentum=0.9,
                                      weight_decay=0.01)
    weight = layer.weight
    for _ in range(4):
        x = rng.uniform(-1, 1, (5, 4))
        grad_output = rng.uniform(-1, 1, (5, 3))
        optimizer.zero_grad()
        layer(x)
        layer.backward(grad_output)
        optimizer.step()
        torch_optimizer.zero_grad()
        torch_layer(_t(x)).backward(_t(grad_output))
        torch_optimizer.step()
    assert layer.weight is weight, "the step must update in place"
    for key, value in torch_layer.named_parameters():
        assert_close(layer.params()[key], value.detach().numpy(), np.float64)


def test_sgd_without_momentum_is_plain_gradient_descent():
    layer = nn.Linear(2, 1, dtype=np.float64, rng=np.random.default_rng(0))
    before = {key: value.copy() for key, value in layer.params().items()}
    layer.grad_weight[...] = [[1.0, -2.0]]
    layer.grad_bias[...] = 3.0
    nn.SGD(layer, lr=0.5).step()
    np.testing.assert_array_equal(layer.weight, before["weight"] - [[0.5, -1.0]])
    np.testing.assert_array_equal(layer.bias, before["bias"] - 1.5)


def test_sgd_accepts_real_numbers_including_numpy_scalars():
    layer = nn.Linear(2, 1, dtype=np.float64, rng=np.random.default_rng(0))
    optimizer = nn.SGD(layer, lr=np.float32(0.5), momentum=np.int64(0), weight_decay=0)
    assert (optimizer.lr, optimizer.momentum, optimizer.weight_decay) == (0.5, 0.0, 0.0)
    assert all(type(value) is float for value in (optimizer.lr, optimizer.momentum))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"lr": True}, TypeError, r"lr must be a finite real number > 0, got True \(bool\)"),
    ({"lr": np.bool_(True)}, TypeError, "lr must be a finite real number > 0"),
    ({"lr": "0.1"}, TypeError, r"lr must be a finite real number > 0, got '0.1' \(str\)"),
    ({"lr": 1j}, TypeError, "lr must be"),
    ({"lr": None}, TypeError, "lr must be"),
    ({"lr": float("nan")}, ValueError, "lr must be a finite real number > 0, got nan"),
    ({"lr": float("inf")}, ValueError, "lr must be a finite real number > 0, got inf"),
    ({"lr": -0.1}, ValueError, r"lr must be a finite real number > 0, got -0.1"),
    ({"lr": 0.1, "momentum": np.float64("nan")}, ValueError,
     "momentum must be a finite real number >= 0, got .*nan"),
    ({"lr": 0.1, "momentum": False}, TypeError, "momentum must be"),
    ({"lr": 0.1, "weight_decay": float("inf")}, ValueError,
     "weight_decay must be a finite real number >= 0, got inf"),
    ({"lr": 0.1, "weight_decay": -1e-4}, ValueError, "weight_decay must be .* >= 0"),
])
def test_sgd_rejects_bad_hyperparameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        nn.SGD(nn.Linear(1, 1), **kwargs)


def test_sgd_updates_a_parameter_whose_gradient_is_zero():
    """As documented: no skipping (torch skips a .grad of None); momentum keeps moving it."""
    layer = nn.Linear(1, 1, bias=False, dtype=np.float64, rng=np.random.default_rng(0))
    layer.weight[...] = 1.0
    layer.grad_weight[...] = 1.0
    optimizer = nn.SGD(layer, lr=0.1, momentum=0.5)
    optimizer.step()
    optimizer.zero_grad()
    optimizer.step()
    assert layer.weight[0, 0] == pytest.approx(1.0 - 0.1 - 0.1 * 0.5)


# --- the params/grads protocol ----------------------------------------------------------


def _small_cnn(rng, dtype=np.float32):
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, activation="relu", dtype=dtype, rng=rng),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, bias=False, dtype=dtype, rng=rng),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 3, dtype=dtype, rng=rng),
    )


def test_params_and_grads_have_torch_names_and_shapes(rng):
    torch = _torch()
    model = _small_cnn(rng)
    torch_model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 6, 3, padding=1, bias=False), torch.nn.ReLU(), torch.nn.AvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(24, 3))
    expected = {name: tuple(p.shape) for name, p in torch_model.named_parameters()}
    assert {name: p.shape for name, p in model.params().items()} == expected
    assert {name: g.shape for name, g in model.grads().items()} == expected
    assert all(g.dtype == np.float32 for g in model.grads().values())
    assert list(nn.ConvTranspose2d(2, 3, 2, rng=rng).params()) == ["weight", "bias"]
    assert list(nn.Conv2d(2, 3, 2, bias=False, rng=rng).grads()) == ["weight"]
    assert nn.MaxPool2d(2).params() == {} == nn.ReLU().grads()
    # the dicts hold the layer's own arrays
    assert model.params()["0.weight"] is model[0].weight
    assert model.grads()["6.bias"] is model[6].grad_bias


def test_gradients_accumulate_until_zero_grad(rng):
    model = _small_cnn(rng, np.float64)
    x = rng.uniform(0, 1, (3, 1, 8, 8))
    grad_output = rng.uniform(-1, 1, (3, 3))
    model(x)
    model.backward(grad_output)
    once = {key: value.copy() for key, value in model.grads().items()}
    assert all(np.abs(value).sum() > 0 for value in once.values())
    model.backward(grad_output)
    for key, value in model.grads().items():
        np.testing.assert_allclose(value, 2 * once[key], rtol=1e-12, err_msg=key)
    model.zero_grad()
    assert all(not value.any() for value in model.grads().values())


def test_sgd_step_lowers_the_loss(rng):
    model = _small_cnn(rng)
    x = rng.uniform(0, 1, (8, 1, 8, 8)).astype(np.float32)
    target = rng.integers(0, 3, 8)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = nn.SGD(model, lr=0.1, momentum=0.9)
    params = {key: value.copy() for key, value in model.params().items()}
    first = loss_fn(model(x), target)
    for _ in range(5):
        optimizer.zero_grad()
        loss_fn(model(x), target)
        grad_input = model.backward(loss_fn.backward(), needs_input_grad=False)
        optimizer.step()
    assert grad_input is None
    assert all(not np.array_equal(value, params[key]) for key, value in model.params().items())
    assert loss_fn(model(x), target) < first


def test_needs_input_grad_false_still_computes_parameter_gradients(rng):
    layer = nn.Conv2d(2, 3, 3, rng=rng, dtype=np.float64)
    x = rng.uniform(-1, 1, (2, 2, 5, 5))
    grad_output = rng.uniform(-1, 1, layer(x).shape)
    assert layer.backward(grad_output, needs_input_grad=False) is None
    _, gw, gb = fastconv.conv2d_backward(grad_output, x, layer.weight)
    np.testing.assert_array_equal(layer.grad_weight, gw)
    np.testing.assert_array_equal(layer.grad_bias, gb)
    for pool in (nn.MaxPool2d(2), nn.AvgPool2d(2), nn.RepeatUnpool2d(2)):
        y = pool(x)
        assert pool.backward(np.ones_like(y), needs_input_grad=False) is None


# --- initialisation ---------------------------------------------------------------------


def _torch_fan_in(shape):
    torch = _torch()
    return torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))[0]


@pytest.mark.parametrize("make, fan_in", [
    (lambda rng: nn.Conv2d(6, 8, (3, 5), groups=2, rng=rng), 3 * 3 * 5),
    (lambda rng: nn.ConvTranspose2d(6, 8, 3, groups=2, rng=rng), 4 * 3 * 3),
    (lambda rng: nn.Linear(20, 7, rng=rng), 20),
])
def test_init_is_uniform_with_torch_bound(make, fan_in, rng):
    layer = make(rng)
    assert _torch_fan_in(layer.weight.shape) == fan_in
    bound = 1 / math.sqrt(fan_in)
    for name, array in layer.params().items():
        assert array.dtype == np.float32, name
        assert np.abs(array).max() <= bound * (1 + 1e-6), name  # float32 rounding
    # statistics over many draws: U(-b, b) has mean 0, variance b^2 / 3, and fills its range
    draws = np.concatenate([make(rng).weight.ravel() for _ in range(50)])
    assert abs(draws.mean()) < 0.05 * bound
    assert draws.var() == pytest.approx(bound**2 / 3, rel=0.05)
    assert draws.min() < -0.98 * bound and draws.max() > 0.98 * bound


def test_init_matches_torch_layer_statistics():
    torch = _torch()
    torch.manual_seed(0)
    ours = np.concatenate([nn.Conv2d(16, 32, 3, rng=np.random.default_rng(i)).weight.ravel()
                           for i in range(4)])
    theirs = np.concatenate([torch.nn.Conv2d(16, 32, 3).weight.detach().numpy().ravel()
                             for _ in range(4)])
    bound = 1 / 12 * (1 + 1e-6)  # 1/sqrt(16 * 3 * 3), and float32 rounding
    assert np.abs(ours).max() <= bound and np.abs(theirs).max() <= bound
    assert ours.std() == pytest.approx(theirs.std(), rel=0.03)


def test_init_is_reproducible_from_the_seed():
    def weights(seed):
        return _small_cnn(np.random.default_rng(seed)).params()

    first, again, other = weights(7), weights(7), weights(8)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
        assert not np.array_equal(first[key], other[key])
    unseeded = nn.Conv2d(2, 2, 3).weight, nn.Conv2d(2, 2, 3).weight
    assert not np.array_equal(*unseeded)


def test_float64_layers(rng):
    layer = nn.Conv2d(2, 3, 3, dtype=np.float64, rng=rng)
    assert layer.weight.dtype == layer.bias.dtype == layer.grad_weight.dtype == np.float64
    y = layer(rng.uniform(-1, 1, (1, 2, 4, 4)))
    assert y.dtype == np.float64
    with pytest.raises(TypeError, match="dtype"):
        layer(np.ones((1, 2, 4, 4), np.float32))


# --- passthrough of algorithm and device ------------------------------------------------


def test_algorithm_reaches_every_conv_op(rng, monkeypatch):
    chosen = []
    choose = dispatch.choose

    def spy(op, device, algorithm, **problem):
        chosen.append((op, algorithm))
        return choose(op, device, algorithm, **problem)

    monkeypatch.setattr(dispatch, "choose", spy)
    layer = nn.Conv2d(2, 3, 3, padding=1, algorithm="im2col", rng=rng)
    y = layer(rng.uniform(-1, 1, (1, 2, 5, 5)).astype(np.float32))
    layer.backward(np.ones_like(y))
    assert {op: a for op, a in chosen if op != "conv2d_grad_bias"} == {
        "conv2d": "im2col", "conv2d_grad_input": "im2col", "conv2d_grad_weight": "im2col"}
    with pytest.raises(ValueError, match="winograd"):
        nn.Conv2d(1, 1, 7, algorithm="winograd", rng=rng)(np.ones((1, 1, 8, 8), np.float32))


def test_device_is_passed_only_when_given(rng, monkeypatch):
    from fastconv.functional import conv as conv_module

    seen = []

    def fake_conv2d(*args, **kwargs):
        seen.append(kwargs.get("device", "absent"))
        return np.zeros((1, 1, 1, 1), np.float32)

    monkeypatch.setattr(conv_module, "conv2d", fake_conv2d)
    nn.Conv2d(1, 1, 1, rng=rng)(np.ones((1, 1, 1, 1), np.float32))
    nn.Conv2d(1, 1, 1, rng=rng, device="cuda")(np.ones((1, 1, 1, 1), np.float32))
    assert seen == ["absent", "cuda"]


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [
    nn.Conv2d(1, 1, 1), nn.ConvTranspose2d(1, 1, 1), nn.MaxPool2d(2), nn.AvgPool2d(2),
    nn.MaxUnpool2d(2), nn.RepeatUnpool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(1, 1),
    nn.Sequential(nn.ReLU()),
], ids=lambda layer: type(layer).__name__)
def test_backward_before_forward_is_an_error(layer):
    with pytest.raises(RuntimeError, match=r"backward called without a successful forward"):
        layer.backward(np.ones((1, 1, 1, 1), np.float32))


def test_loss_backward_before_forward_is_an_error():
    with pytest.raises(RuntimeError, match="without a successful forward"):
        nn.CrossEntropyLoss().backward()


def test_unknown_activation_is_a_clear_error():
    with pytest.raises(ValueError, match=r"activation must be None or 'relu', got 'tanh'"):
        nn.Conv2d(1, 1, 3, activation="tanh")


@pytest.mark.parametrize("make, error, message", [
    (lambda: nn.Conv2d(3, 4, 3, groups=2), ValueError, "groups=2 must divide"),
    (lambda: nn.Conv2d(0, 4, 3), ValueError, "in_channels"),
    (lambda: nn.Conv2d(1, 4, 0), ValueError, "kernel_size"),
    (lambda: nn.Conv2d(1, 4, 3, padding="full"), ValueError, "'full'"),
    (lambda: nn.Conv2d(1, 4, 3, padding=-1), ValueError, "padding"),
    (lambda: nn.Conv2d(1, 4, 3, dtype=np.int32), TypeError, "float32 or float64"),
    (lambda: nn.Conv2d(1, 4, 3, rng=0), TypeError, "numpy.random.Generator"),
    (lambda: nn.ConvTranspose2d(1, 4, 3, padding="same"), ValueError, "'same'"),
    (lambda: nn.Linear(0, 2), ValueError, "in_features"),
    (lambda: nn.SGD(nn.Linear(1, 1), lr=0), ValueError, "lr"),
    (lambda: nn.SGD(nn.Linear(1, 1), lr=0.1, momentum=-1), ValueError, "momentum"),
    (lambda: nn.Sequential(nn.ReLU(), "relu"), TypeError, "layer 1"),
])
def test_bad_constructor_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_bad_inputs_name_the_problem(rng):
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        nn.Linear(3, 2, rng=rng)(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="in_channels=3"):
        nn.Conv2d(3, 2, 1, rng=rng)(np.ones((1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="target"):
        nn.CrossEntropyLoss()(np.zeros((2, 3)), np.array([0, 3]))


def test_conv_layers_name_in_channels_on_a_channel_mismatch(rng):
    with pytest.raises(ValueError, match=r"input has C=3 channels but the layer has "
                                         r"in_channels=4"):
        nn.Conv2d(4, 2, 3, rng=rng)(np.ones((2, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"input has C=2 channels .* in_channels=4"):
        nn.Conv2d(4, 2, 3, rng=rng)(np.ones((2, 5, 5), np.float32))  # unbatched
    with pytest.raises(ValueError, match=r"input has C=3 channels .* in_channels=2"):
        nn.ConvTranspose2d(2, 4, 3, rng=rng)(np.ones((1, 3, 5, 5), np.float32))


def test_flatten_an_empty_batch():
    flatten = nn.Flatten()
    y = flatten(np.zeros((0, 3, 2, 2), np.float32))
    assert y.shape == (0, 12)
    assert flatten.backward(np.zeros((0, 12), np.float32)).shape == (0, 3, 2, 2)


def test_sequential_rejects_a_layer_used_twice(rng):
    linear = nn.Linear(3, 3, rng=rng)
    with pytest.raises(ValueError, match=r"layer 2 is the same Linear instance as layer 0: "
                                         r"a layer caches .* forward"):
        nn.Sequential(linear, nn.ReLU(), linear)
    relu = nn.ReLU()
    with pytest.raises(ValueError, match=r"layer 1\.1 is the same ReLU instance as layer 0"):
        nn.Sequential(relu, nn.Sequential(nn.Linear(3, 3, rng=rng), relu))
    inner = nn.Sequential(nn.ReLU())
    with pytest.raises(ValueError, match=r"layer 1 is the same Sequential instance as layer 0"):
        nn.Sequential(inner, inner)
    # equal but distinct layers are fine
    assert len(nn.Sequential(nn.ReLU(), nn.ReLU())) == 2


def test_linear_checks_grad_output(rng):
    layer = nn.Linear(3, 2, rng=rng)
    layer(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"grad_output must have the shape of the last "
                                         r"forward's output, \(4, 2\), got \(4, 5\)"):
        layer.backward(np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"grad_output .*, \(4, 2\), got \(2,\)"):
        layer.backward(np.ones(2, np.float32))
    with pytest.raises(TypeError, match=r"grad_output has dtype float64 but the last forward's "
                                        r"output has dtype float32.*"
                                        r"grad_output.astype\(np.float32\)"):
        layer.backward(np.ones((4, 2)))
    with pytest.raises(TypeError, match="grad_output must have dtype float32 or float64"):
        layer.backward(np.ones((4, 2), np.int64))
    assert not layer.grad_weight.any(), "a rejected backward must not touch the gradients"
    assert layer.backward(np.ones((4, 2), np.float32)).shape == (4, 3)


def test_linear_takes_array_likes(rng):
    layer = nn.Linear(3, 2, dtype=np.float64, rng=rng)
    y = layer([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(y, layer(np.array([[1.0, 2.0, 3.0]])))
    assert layer.backward([[1.0, 1.0]]).shape == (1, 3)
    with pytest.raises(TypeError, match="input must be a numpy.ndarray"):
        layer(object())
    with pytest.raises(TypeError, match="input has dtype float64 but Linear computes in float32"):
        nn.Linear(3, 2, rng=rng)([[1.0, 2.0, 3.0]])


# --- every layer: input checks, grad_output checks, no backward after a failed forward ----

#: name -> (build the layer from an rng, the shape of a good float32 input, whether an input
#: of another number of dimensions is an error)
LAYER_CASES = {
    "Conv2d": (lambda rng: nn.Conv2d(2, 3, 3, padding=1, rng=rng), (2, 2, 4, 4), True),
    "Conv2d_relu": (lambda rng: nn.Conv2d(2, 3, 3, padding=1, activation="relu", rng=rng),
                    (2, 2, 4, 4), True),
    "ConvTranspose2d": (lambda rng: nn.ConvTranspose2d(2, 3, 2, stride=2, rng=rng),
                        (2, 2, 4, 4), True),
    "MaxPool2d": (lambda rng: nn.MaxPool2d(2), (2, 2, 4, 4), True),
    "AvgPool2d": (lambda rng: nn.AvgPool2d(2), (2, 2, 4, 4), True),
    "MaxUnpool2d": (lambda rng: nn.MaxUnpool2d(2), (2, 2, 2, 2), True),
    "RepeatUnpool2d": (lambda rng: nn.RepeatUnpool2d(2), (2, 2, 4, 4), True),
    "ReLU": (lambda rng: nn.ReLU(), (2, 3), False),
    "Flatten": (lambda rng: nn.Flatten(), (2, 2, 4, 4), True),
    "Linear": (lambda rng: nn.Linear(4, 3, rng=rng), (2, 4), True),
    "Sequential": (lambda rng: nn.Sequential(nn.Conv2d(2, 2, 1, activation="relu", rng=rng),
                                             nn.Flatten(), nn.Linear(32, 3, rng=rng)),
                   (2, 2, 4, 4), True),
    "Sequential_empty": (lambda rng: nn.Sequential(), (2, 3), False),
}
NON_ARRAYS = {"None": None, "str": "abc", "object": object(), "int": 3, "str_list": [["a"]]}


def _layer_case(name, rng):
    make, shape, _ = LAYER_CASES[name]
    return make(rng), tie_free(shape, np.float32, rng)


def _forward(layer, x):
    """``layer(x)``; a MaxUnpool2d gets the indices of a 2 x 2 max pooling of a 4 x 4 plane,
    as many as ``x`` has values (where ``x`` is not an array, those of a (2, 2, 2, 2) x)."""
    if isinstance(layer, nn.MaxUnpool2d):
        shape = getattr(x, "shape", (2, 2, 2, 2))
        if len(shape) < 2:
            return layer(x, np.zeros(shape, np.int64))
        rows, cols = np.indices(shape[-2:])
        indices = np.broadcast_to(2 * rows * 4 + 2 * cols + 5, shape).astype(np.int64)
        return layer(x, indices)
    return layer(x)


@pytest.mark.parametrize("bad", list(NON_ARRAYS.values()), ids=list(NON_ARRAYS))
@pytest.mark.parametrize("name", list(LAYER_CASES))
def test_forward_rejects_what_is_not_a_float_array(name, bad, rng):
    layer, _ = _layer_case(name, rng)
    with pytest.raises((TypeError, ValueError), match=r"^input\b"):
        _forward(layer, bad)


@pytest.mark.parametrize("name", [name for name, case in LAYER_CASES.items() if case[2]])
def test_forward_rejects_a_wrong_number_of_dimensions(name, rng):
    layer, x = _layer_case(name, rng)
    with pytest.raises(ValueError, match=r"^input .*got shape"):
        _forward(layer, x.ravel())
    if x.ndim == 4 and not isinstance(layer, nn.Flatten):
        with pytest.raises(ValueError, match=r"^input .*got shape"):
            _forward(layer, x[0, 0])
    with pytest.raises(ValueError, match=r"^input .*got shape \(\)"):
        _forward(layer, np.float32(1.0))


@pytest.mark.parametrize("name", list(LAYER_CASES))
def test_backward_checks_grad_output(name, rng):
    layer, x = _layer_case(name, rng)
    y = _forward(layer, x)
    bad = [
        (None, TypeError, "grad_output must be a numpy.ndarray"),
        ("abc", TypeError, "grad_output must have dtype float32 or float64"),
        # broadcastable, and the same size transposed: both wrong shapes, not gradients of y
        (np.ones((1, *y.shape[1:]), np.float32), ValueError,
         r"grad_output must have the shape of the last forward's output, "
         + re.escape(str(y.shape))),
        (np.ones(y.shape[::-1], np.float32), ValueError, "grad_output must have the shape"),
        (np.float32(1.0), ValueError, r"grad_output must have the shape .*got \(\)"),
        (np.ones(y.shape), TypeError, r"grad_output has dtype float64 but the last forward's "
                                      r"output has dtype float32"),
    ]
    for grad_output, error, message in bad:
        if grad_output is not None and np.shape(grad_output) == y.shape and error is ValueError:
            continue  # a square output transposed is not a wrong shape
        with pytest.raises(error, match=message):
            layer.backward(grad_output)
    assert all(not grad.any() for grad in layer.grads().values()), \
        "a rejected backward must not touch the gradients"
    grad_input = layer.backward(np.ones_like(y))
    assert grad_input.shape == x.shape and grad_input.dtype == x.dtype


@pytest.mark.parametrize("name", list(LAYER_CASES))
def test_backward_after_a_failed_forward_is_an_error(name, rng):
    layer, x = _layer_case(name, rng)
    y = _forward(layer, x)
    with pytest.raises((TypeError, ValueError)):
        _forward(layer, None)
    with pytest.raises(RuntimeError, match=r"backward called without a successful forward"):
        layer.backward(np.ones_like(y))
    assert all(not grad.any() for grad in layer.grads().values())
    # a successful forward makes backward work again
    y = _forward(layer, x)
    assert layer.backward(np.ones_like(y)).shape == x.shape


def test_sequential_backward_after_a_late_failure_is_an_error(rng):
    # the Linear fails on a larger image after conv and flatten ran: they hold the new
    # input, the Linear the old one; backward must run none of them
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, activation="relu", rng=rng),
                          nn.Flatten(), nn.Linear(2 * 4 * 4, 3, rng=rng))
    y = model(rng.uniform(-1, 1, (2, 1, 4, 4)).astype(np.float32))
    with pytest.raises(ValueError, match=r"input must be 2-D \(N, in_features\) = \(N, 32\)"):
        model(rng.uniform(-1, 1, (2, 1, 5, 5)).astype(np.float32))
    with pytest.raises(RuntimeError, match="Sequential.backward called without a successful"):
        model.backward(np.ones_like(y))
    assert all(not grad.any() for grad in model.grads().values())


def test_max_pool2d_forgets_its_indices_when_a_forward_fails(rng):
    pool = nn.MaxPool2d(2)
    pool(tie_free((1, 1, 4, 4), np.float32, rng))
    assert pool.indices is not None
    with pytest.raises(ValueError):
        pool(np.ones(3, np.float32))
    assert pool.indices is None


def test_relu_and_flatten_take_float_arrays_only(rng):
    relu = nn.ReLU()
    assert relu(np.float64(-2.0)) == 0.0  # any shape, 0-D included
    assert relu([[-1.0, 2.0]]).tolist() == [[0.0, 2.0]]
    with pytest.raises(TypeError, match=r"input must have dtype float32 or float64, got int64"):
        relu(np.array([-1, 2]))
    flatten = nn.Flatten()
    assert flatten(np.ones((2, 3), np.float32)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"input must have at least 2 dimensions \(N, d1, "
                                         r"\.\.\.\), got shape \(4,\)"):
        flatten(np.ones(4, np.float32))


@pytest.mark.parametrize("make", [
    lambda dtype: nn.Conv2d(2, 2, 1, dtype=dtype),
    lambda dtype: nn.Conv2d(2, 2, 1, activation="relu", dtype=dtype),
    lambda dtype: nn.ConvTranspose2d(2, 2, 1, dtype=dtype),
    lambda dtype: nn.Linear(2, 2, dtype=dtype),
], ids=["Conv2d", "Conv2d_relu", "ConvTranspose2d", "Linear"])
def test_dtype_mismatch_suggests_converting_the_input_or_building_the_layer(make):
    for layer_dtype, input_dtype in ((np.float32, np.float64), (np.float64, np.float32)):
        layer = make(layer_dtype)
        layer_name, input_name = np.dtype(layer_dtype).name, np.dtype(input_dtype).name
        x = np.ones((1, 2, 3, 3) if layer.weight.ndim == 4 else (1, 2), input_dtype)
        with pytest.raises(TypeError, match=(
                rf"input has dtype {input_name} but {type(layer).__name__} computes in "
                rf"{layer_name}, the dtype of its parameters; convert the input "
                rf"\(input\.astype\(np\.{layer_name}\)\) or build the layer with "
                rf"dtype=np\.{input_name}")):
            layer(x)
        assert layer(x.astype(layer_dtype)).dtype == layer_dtype
        assert make(input_dtype)(x).dtype == input_dtype


# --- state_dict / load_state_dict with torch's keys ------------------------------------


def _fused_pair(rng, dtype=np.float32):
    """A fastconv model with fused ReLUs and the torch model with separate ones."""
    torch = _torch()
    ours = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, activation="relu", dtype=dtype, rng=rng),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, bias=False, activation="relu", dtype=dtype, rng=rng),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 3, dtype=dtype, rng=rng),
    )
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 6, 3, padding=1, bias=False), torch.nn.ReLU(),
        torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(24, 3))
    return ours, theirs.to(torch.float64 if dtype == np.float64 else torch.float32)


def _nested_pair(rng):
    torch = _torch()
    ours = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, activation="relu", rng=rng),
                      nn.MaxPool2d(2)),
        nn.Conv2d(4, 6, 3, padding=1, activation="relu", rng=rng),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 3, rng=rng),
    )
    theirs = torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.MaxPool2d(2)),
        torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(96, 3))
    return ours, theirs


def _outputs_match(ours, theirs, x, dtype=np.float32):
    torch = _torch()
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    assert_close(ours(x), expected, dtype)


@pytest.mark.parametrize("pair", [_fused_pair, _nested_pair], ids=["fused", "nested"])
def test_state_dict_keys_are_torch_keys(pair, rng):
    ours, theirs = pair(rng)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in ours.state_dict().items():
        assert value.shape == tuple(theirs.state_dict()[key].shape), key


def test_state_dict_differs_from_params_only_after_a_fused_activation(rng):
    ours, _ = _fused_pair(rng)
    assert list(ours.state_dict()) == ["0.weight", "0.bias", "3.weight", "7.weight", "7.bias"]
    assert list(ours.params()) == ["0.weight", "0.bias", "2.weight", "5.weight", "5.bias"]
    state = ours.state_dict()
    for (key, value), param in zip(state.items(), ours.params().values(), strict=True):
        np.testing.assert_array_equal(value, param, err_msg=key)
        assert value is not param and not np.shares_memory(value, param), "a copy"
    ours[0].weight += 1  # a snapshot: training on does not change it
    assert not np.array_equal(state["0.weight"], ours[0].weight)
    # a single layer has torch's keys of that layer, fused activation or not
    assert list(nn.Conv2d(1, 2, 3, activation="relu", rng=rng).state_dict()) == [
        "weight", "bias"]
    assert nn.ReLU().state_dict() == {}


@pytest.mark.parametrize("pair", [_fused_pair, _nested_pair], ids=["fused", "nested"])
def test_load_torch_state_dict_gives_torch_outputs(pair, rng):
    ours, theirs = pair(rng)
    own = ours.params()
    x = rng.uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32)
    result = ours.load_state_dict(theirs.state_dict())  # torch tensors, as they come
    assert result == nn.IncompatibleKeys([], [])
    _outputs_match(ours, theirs, x)
    # loaded in place: params() are still the same arrays (an optimiser keeps them)
    assert all(ours.params()[key] is array for key, array in own.items())


@pytest.mark.parametrize("pair", [_fused_pair, _nested_pair], ids=["fused", "nested"])
def test_torch_loads_our_state_dict(pair, rng):
    torch = _torch()
    ours, theirs = pair(rng)
    theirs.load_state_dict({key: torch.from_numpy(value)
                            for key, value in ours.state_dict().items()})  # strict
    _outputs_match(ours, theirs, rng.uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32))


def test_load_state_dict_takes_parameters_that_require_grad(rng):
    ours, theirs = _fused_pair(rng, np.float64)
    ours.load_state_dict(dict(theirs.named_parameters()))
    _outputs_match(ours, theirs, rng.uniform(-1, 1, (2, 1, 8, 8)), np.float64)
    # and a fastconv model's own state dict, numpy arrays
    copy, _ = _fused_pair(np.random.default_rng(1), np.float64)
    copy.load_state_dict(ours.state_dict())
    for key, value in copy.params().items():
        np.testing.assert_array_equal(value, ours.params()[key], err_msg=key)


def test_conv_transpose2d_state_dict_round_trip(rng):
    torch = _torch()
    ours = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1, rng=rng)
    theirs = torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)
    ours.load_state_dict(theirs.state_dict())
    _outputs_match(ours, theirs, rng.uniform(-1, 1, (2, 3, 5, 5)).astype(np.float32))


def test_load_state_dict_key_errors(rng):
    ours, _ = _fused_pair(rng)
    before = ours.state_dict()
    shifted = ours.params()  # fastconv's own indices, not torch's
    with pytest.raises(ValueError, match=(
            r"state_dict does not have the keys of this Sequential: missing \['3\.weight', "
            r"'7\.weight', '7\.bias'\], unexpected \['2\.weight', '5\.weight', '5\.bias'\]"
            r".*Conv2d\(activation='relu'\) takes two indices.*strict=False")):
        ours.load_state_dict(shifted)
    partial = {key: np.zeros_like(value) for key, value in before.items() if key != "7.bias"}
    partial["extra"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match=r"missing \['7\.bias'\], unexpected \['extra'\]"):
        ours.load_state_dict(partial)
    for key, value in ours.state_dict().items():  # a refused load changes nothing
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    result = ours.load_state_dict(partial, strict=False)
    assert result.missing_keys == ["7.bias"] and result.unexpected_keys == ["extra"]
    assert not ours[0].weight.any() and not ours[5].weight.any()
    np.testing.assert_array_equal(ours[5].bias, before["7.bias"])


def test_load_state_dict_value_errors(rng):
    torch = _torch()
    ours, _ = _fused_pair(rng)
    before = ours.state_dict()

    def load(key, value):
        ours.load_state_dict({**before, key: value})

    with pytest.raises(ValueError, match=r"state_dict\['3\.weight'\] must have shape "
                                         r"\(6, 4, 3, 3\), as the model's parameter, got "
                                         r"\(6, 4, 3, 2\)"):
        load("3.weight", np.zeros((6, 4, 3, 2), np.float32))
    with pytest.raises(ValueError, match=r"state_dict\['7\.bias'\] has dtype float64 but the "
                                         r"model's parameter is float32; nothing is cast"):
        load("7.bias", np.zeros(3))
    with pytest.raises(ValueError, match=r"state_dict\['0\.bias'\] has dtype float16"):
        load("0.bias", torch.zeros(4, dtype=torch.float16))
    with pytest.raises(TypeError, match=r"state_dict\['0\.bias'\] must be a numpy array or a "
                                        r"tensor .*got list"):
        load("0.bias", [0.0] * 4)
    with pytest.raises(TypeError, match=r"state_dict must be a mapping key -> array.*got list"):
        ours.load_state_dict(list(before.items()))
    for key, value in ours.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
