"""Stateful layers for numpy trainers, built on the functional ops.

Each layer follows one small protocol, the manual version of autograd:

- ``forward(x)`` (also ``layer(x)``) computes the output and keeps what its
  backward needs (the input, pooling indices, a ReLU mask). The input is kept
  by reference: do not modify it in place before ``backward``.
- ``backward(grad_output)`` returns ``grad_input = dL/dx`` for
  ``grad_output = dL/dy`` of the last ``forward``, and adds the parameter
  gradients into ``grad_weight`` / ``grad_bias`` (they accumulate, as
  PyTorch's ``.grad`` does, until ``zero_grad()``). ``needs_input_grad=False``
  skips ``grad_input`` (returned as None), as for a network's first layer.
- ``params()`` and ``grads()`` return dicts name -> numpy array with
  PyTorch's names (``"weight"``, ``"bias"``; ``"0.weight"`` ... in a
  :class:`Sequential`). The arrays are the layer's own, so an optimiser
  updates ``params()`` in place from ``grads()``.
- ``zero_grad()`` sets every gradient to 0.
- ``state_dict()`` and ``load_state_dict(d)`` save and load the parameters under
  the keys of the equivalent ``torch.nn`` model, so weights move both ways
  between fastconv and PyTorch. They differ from the ``params()`` names in one
  place: a ``Conv2d(..., activation="relu")`` is two torch modules (``Conv2d``,
  ``ReLU``), so in a :class:`Sequential` it takes two indices there.

Inputs are numpy arrays (or array-likes, converted as ``np.asarray`` does) of
float32 or float64; anything else (None, strings, integer arrays, a wrong number
of dimensions) is a TypeError or ValueError naming ``input``, and ``grad_output``
must have the shape and dtype of the last forward's output. A forward clears what
the previous one kept before it runs, so a ``backward`` after a forward that
raised is a RuntimeError, never a gradient of an older input.

Layers mirror ``torch.nn`` (same constructor arguments, weight layouts and
default initialisation), so weights copied from a torch layer give the same
outputs and gradients. Parameters are float32 unless ``dtype=np.float64``;
the input must have the layer's dtype. ``rng`` (a ``numpy.random.Generator``)
makes the initialisation reproducible; ``algorithm`` is passed to every
functional op the layer calls.

Example: one SGD step of a small CNN on two 8 x 8 images.

>>> import numpy as np
>>> from fastconv import nn
>>> rng = np.random.default_rng(0)
>>> model = nn.Sequential(
...     nn.Conv2d(1, 4, 3, padding=1, activation="relu", rng=rng),  # (N, 4, 8, 8)
...     nn.MaxPool2d(2),                                             # (N, 4, 4, 4)
...     nn.Flatten(),                                                # (N, 64)
...     nn.Linear(64, 10, rng=rng),                                  # (N, 10)
... )
>>> loss_fn = nn.CrossEntropyLoss()
>>> optimizer = nn.SGD(model, lr=0.1, momentum=0.9)
>>> x = rng.uniform(0, 1, (2, 1, 8, 8)).astype(np.float32)
>>> model.zero_grad()
>>> loss = loss_fn(model(x), np.array([3, 7]))
>>> grad_x = model.backward(loss_fn.backward())
>>> optimizer.step()
>>> sorted(model.params()), grad_x.shape
(['0.bias', '0.weight', '3.bias', '3.weight'], (2, 1, 8, 8))
>>> loss_fn(model(x), np.array([3, 7])) < loss
True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, TypeVar, cast, overload

import numpy as np

from . import activations, shapes
from ._checks import as_float_array, divisor, positive_int
from .functional import conv as _conv
from .functional import pool as _pool
from .shapes import Padding, TransposedPadding

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

__all__ = [
    "Module",
    "IncompatibleKeys",
    "Conv2d",
    "ConvTranspose2d",
    "MaxPool2d",
    "AvgPool2d",
    "MaxUnpool2d",
    "RepeatUnpool2d",
    "ReLU",
    "Flatten",
    "Linear",
    "Sequential",
    "CrossEntropyLoss",
    "SGD",
]

ACTIVATIONS = activations.ACTIVATIONS

#: what a :class:`MaxPool2d` returns: the output, or ``(output, indices)`` with return_indices
_PoolOutput = TypeVar("_PoolOutput", bound="np.ndarray | tuple[np.ndarray, np.ndarray]")


class IncompatibleKeys(NamedTuple):
    """What :meth:`Module.load_state_dict` returns, as PyTorch's: the model's keys the
    state dict lacked and the state dict's keys the model does not have (both empty
    unless ``strict=False``)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base of the layers: a layer without parameters unless it overrides
    :meth:`params` and :meth:`grads`.

    A forward stores what its backward needs in ``_saved`` (None until a forward
    succeeds, and set to None again when the next forward starts)."""

    _saved: tuple | None = None
    #: how many ``torch.nn`` modules the layer stands for, i.e. the indices it takes
    #: in the keys of :meth:`state_dict` within a :class:`Sequential`
    _torch_modules: int = 1

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        """``self.forward(*args, **kwargs)``: the output array."""
        return self.forward(*args, **kwargs)

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad_output: np.ndarray, *,
                 needs_input_grad: bool = True) -> np.ndarray | None:
        raise NotImplementedError

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of what :meth:`forward` returns for an input of ``input_shape``,
        worked out without running it (a ValueError where forward would reject that
        shape); NotImplementedError for a layer that cannot tell. What
        :func:`fastconv.warmup_backward` walks a model with."""
        raise NotImplementedError(
            f"{type(self).__name__} does not give its output shape ahead of a forward")

    def _compile_backward(self, input_shape: tuple[int, ...], dtype: np.dtype) -> None:
        """Run, on zeros, the CPU kernels of this layer's backward that its forward does not
        run (weight and bias gradients, a pooling's gradient) after a forward of an input
        of ``input_shape`` and ``dtype``, so that Numba compiles them into its disk cache:
        a helper process of :func:`fastconv.warmup_backward`. Nothing for a layer whose
        backward runs no kernel of its own."""

    def params(self) -> dict[str, np.ndarray]:
        """The trainable arrays by name (``{}`` for a layer without parameters)."""
        return {}

    def grads(self) -> dict[str, np.ndarray]:
        """The gradient arrays, under the names of :meth:`params`."""
        return {}

    def zero_grad(self) -> None:
        """Set every parameter gradient to 0, in place."""
        for grad in self.grads().values():
            grad.fill(0)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, under the keys ``state_dict()`` of the equivalent
        ``torch.nn`` model has, in its order.

        The keys are the :meth:`params` names except in a :class:`Sequential` after a
        ``Conv2d(..., activation="relu")``: torch writes that layer as ``Conv2d``
        then ``ReLU``, two indices, so ``Sequential(Conv2d(..., activation="relu"),
        MaxPool2d(2), Conv2d(...))`` has the keys ``0.weight, 0.bias, 3.weight,
        3.bias`` of ``torch.nn.Sequential(Conv2d, ReLU, MaxPool2d, Conv2d)`` where
        ``params()`` says ``2.weight, 2.bias``. The arrays are copies: a snapshot that
        later training does not change (``np.savez(path, **model.state_dict())``
        saves it; ``torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in
        model.state_dict().items()})`` hands it to PyTorch).

        >>> import numpy as np
        >>> from fastconv import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3, activation="relu"), nn.MaxPool2d(2),
        ...                       nn.Conv2d(2, 2, 1))
        >>> list(model.state_dict()), list(model.params())
        (['0.weight', '0.bias', '3.weight', '3.bias'], ['0.weight', '0.bias', '2.weight', '2.bias'])
        """
        return {key: array.copy() for key, array in self._torch_arrays()}

    def load_state_dict(self, state_dict: Mapping[str, object],
                        strict: bool = True) -> IncompatibleKeys:
        """Copy the values of ``state_dict`` (keys as :meth:`state_dict`) into the
        parameters, in place: the arrays of :meth:`params` stay the same objects.

        The values are numpy arrays or anything with ``.numpy()`` or ``__array__``:
        ``torch_model.state_dict()`` loads as it is (tensors that require grad, and
        CUDA tensors, are detached and copied to the host first). Each value must
        have its parameter's shape and dtype (a ValueError naming the key
        otherwise; nothing is cast). With ``strict=True`` (the default, as in
        PyTorch) the keys must be exactly the model's, else a ValueError lists the
        missing and the unexpected ones; ``strict=False`` loads the keys both have.
        Nothing is loaded unless every value passes. Returns the
        :class:`IncompatibleKeys` ``(missing_keys, unexpected_keys)``.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"state_dict must be a mapping key -> array, as state_dict() or a torch "
                f"module's state_dict() returns, got {type(state_dict).__name__}")
        targets = dict(self._torch_arrays())
        missing = [key for key in targets if key not in state_dict]
        unexpected = [key for key in state_dict if key not in targets]
        if strict and (missing or unexpected):
            raise ValueError(
                f"state_dict does not have the keys of this {type(self).__name__}: missing "
                f"{_some(missing)}, unexpected {_some(unexpected)}; expected "
                f"{_some(list(targets))}. The keys are torch.nn's: in a Sequential a "
                f"Conv2d(activation='relu') takes two indices (Conv2d, ReLU), so they "
                f"differ from params() there. Pass strict=False to load the keys both have")
        values = []
        for key, target in targets.items():
            if key not in state_dict:
                continue
            value = _host_array(state_dict[key], key)
            if value.shape != target.shape:
                raise ValueError(
                    f"state_dict[{key!r}] must have shape {target.shape}, as the model's "
                    f"parameter, got {value.shape}")
            if value.dtype != target.dtype:
                raise ValueError(
                    f"state_dict[{key!r}] has dtype {value.dtype} but the model's parameter "
                    f"is {target.dtype}; nothing is cast: convert the values to "
                    f"{target.dtype} first, or build the model with the values' dtype "
                    f"(dtype= of the layers)")
            values.append((target, value))
        for target, value in values:
            np.copyto(target, value)
        return IncompatibleKeys(missing, unexpected)

    def _torch_arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(key, the layer's own array)`` under the keys of :meth:`state_dict`."""
        return iter(self.params().items())

    def _saved_for_backward(self) -> tuple:
        """What the last successful forward kept, or a RuntimeError if there was none."""
        saved = self._saved
        if saved is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward called without a successful forward: run "
                f"forward(x) first (a forward that raised keeps nothing), then "
                f"backward(grad_output) with the gradient of its output")
        return saved

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        return ""


def _some(keys: list) -> str:
    """``keys`` for an error message, at most 10 of them."""
    shown = ", ".join(repr(key) for key in keys[:10])
    more = f", ... ({len(keys) - 10} more)" if len(keys) > 10 else ""
    return f"[{shown}{more}]"


def _host_array(value: Any, key: str) -> np.ndarray:
    """A state dict's value as a numpy array: an ndarray as it is, a torch tensor through
    ``.detach().cpu().numpy()``, anything else with ``.numpy()`` or ``__array__``."""
    if isinstance(value, np.ndarray):
        return value
    try:
        if callable(getattr(value, "detach", None)):  # .numpy() refuses a tensor with grad
            value = value.detach()
            if callable(getattr(value, "cpu", None)):
                value = value.cpu()
        if callable(getattr(value, "numpy", None)):
            return np.asarray(value.numpy())
        if hasattr(value, "__array__"):
            return np.asarray(value)
    except (TypeError, RuntimeError, ValueError) as error:
        raise TypeError(f"state_dict[{key!r}] cannot be read as a numpy array: {error}") from None
    raise TypeError(
        f"state_dict[{key!r}] must be a numpy array or a tensor (anything with .numpy() or "
        f"__array__), got {type(value).__name__}")


def _check_grad(grad_output: object, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """``grad_output`` as an array of the last forward's output ``shape`` and ``dtype``, or
    a ValueError / TypeError saying what it should be."""
    grad = as_float_array(grad_output, "grad_output")
    if grad.shape != shape:
        raise ValueError(
            f"grad_output must have the shape of the last forward's output, {shape}, "
            f"got {grad.shape}")
    if grad.dtype != dtype:
        raise TypeError(
            f"grad_output has dtype {grad.dtype} but the last forward's output has dtype "
            f"{dtype}; mixed dtypes are not supported, cast it "
            f"(grad_output.astype(np.{dtype}))")
    return grad


def _check_input_dtype(x: np.ndarray, layer: Module, dtype: np.dtype) -> None:
    """A TypeError for an input whose dtype is not the one of the layer's parameters."""
    if x.dtype != dtype:
        raise TypeError(
            f"input has dtype {x.dtype} but {type(layer).__name__} computes in {dtype}, "
            f"the dtype of its parameters; convert the input (input.astype(np.{dtype})) "
            f"or build the layer with dtype=np.{x.dtype}")


def _float_dtype(dtype: DTypeLike) -> np.dtype:
    kind = np.dtype(dtype)
    if kind not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {kind}")
    return kind


def _generator(rng: object) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)) or None, "
            f"got {type(rng).__name__}")
    return rng


def _uniform(rng: np.random.Generator, bound: float, shape: tuple[int, ...],
             dtype: np.dtype) -> np.ndarray:
    return rng.uniform(-bound, bound, shape).astype(dtype)


def _device(device: str | None) -> dict[str, Any]:
    """The ``device=`` keyword for the functional ops, only where one is chosen."""
    return {} if device is None else {"device": device}


def _image_shape(input_shape: object, channels: int | None = None) -> tuple[int, ...]:
    """``input_shape`` as a tuple of ints, ``(N, C, H, W)`` or ``(C, H, W)`` (with ``C ==
    channels`` where given), or a ValueError / TypeError naming what it should be."""
    shape = _shape(input_shape)
    if len(shape) not in (3, 4):
        raise ValueError(f"input_shape must be (N, C, H, W) or (C, H, W), got {shape}")
    if channels is not None and shape[-3] != channels:
        raise ValueError(f"input_shape must have C={channels} channels, got {shape}")
    return shape


def _shape(input_shape: object) -> tuple[int, ...]:
    """``input_shape`` as a tuple of non-negative ints, or a TypeError."""
    if not isinstance(input_shape, (tuple, list)) or not all(
            isinstance(n, numbers.Integral) and not isinstance(n, bool) and int(n) >= 0
            for n in input_shape):
        raise TypeError(f"input_shape must be a tuple of non-negative ints, got {input_shape!r}")
    return tuple(int(n) for n in input_shape)


def _on_host(device: str | None) -> bool:
    """Whether a layer with this ``device`` runs its ops on the CPU with host arrays
    (None follows the data, which a warm-up makes on the host)."""
    return device is None or device == "cpu"


class _Parametrised(Module):
    """A layer with a ``weight`` and an optional ``bias``, initialised as PyTorch does:
    ``kaiming_uniform_(a=sqrt(5))`` gives ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for the
    weight, and the bias has the same bound."""

    weight: np.ndarray
    bias: np.ndarray | None
    grad_weight: np.ndarray
    grad_bias: np.ndarray | None

    def _init_parameters(self, weight_shape: tuple[int, ...], bias_size: int, fan_in: int,
                         bias: bool, dtype: DTypeLike, rng: object) -> None:
        kind = _float_dtype(dtype)
        generator = _generator(rng)
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = _uniform(generator, bound, weight_shape, kind)
        self.bias = _uniform(generator, bound, (bias_size,), kind) if bias else None
        self.grad_weight = np.zeros_like(self.weight)
        self.grad_bias = None if self.bias is None else np.zeros_like(self.bias)

    def params(self) -> dict[str, np.ndarray]:
        found = {"weight": self.weight}
        if self.bias is not None:
            found["bias"] = self.bias
        return found

    def grads(self) -> dict[str, np.ndarray]:
        found = {"weight": self.grad_weight}
        if self.grad_bias is not None:
            found["bias"] = self.grad_bias
        return found

    def _accumulate(self, grad_weight: np.ndarray | None, grad_bias: np.ndarray | None) -> None:
        self.grad_weight += grad_weight
        if self.grad_bias is not None:
            self.grad_bias += grad_bias


class _ConvLayer(_Parametrised):
    """What :class:`Conv2d` and :class:`ConvTranspose2d` share: the channel and window
    arguments, checked when the layer is built, and the repr."""

    activation: str | None = None
    output_padding: tuple[int, int] = (0, 0)
    #: the functional op of the layer's gradients (its arguments: the layer's ``_args()``)
    _backward_op: Any

    def _init_window(self, in_channels: object, out_channels: object, kernel_size: object,
                     stride: object, padding: object, dilation: object, groups: object,
                     algorithm: str, device: str | None) -> None:
        c = positive_int(in_channels, "in_channels")
        k = positive_int(out_channels, "out_channels")
        g = positive_int(groups, "groups")
        if c % g or k % g:
            raise ValueError(f"groups={g} must divide in_channels={c} and out_channels={k}")
        self.in_channels, self.out_channels, self.groups = c, k, g
        self.kernel_size = shapes.pair(kernel_size, "kernel_size")
        self.stride = shapes.pair(stride, "stride")
        self.dilation = shapes.pair(dilation, "dilation")
        # a bad padding form fails now rather than at the first forward
        span = tuple(d * (n - 1) + 1 for d, n in zip(self.dilation, self.kernel_size,
                                                     strict=True))
        shapes.padding2d(padding, span, self.kernel_size, self.stride,  # type: ignore[arg-type]
                         self.dilation)
        self.padding = padding
        self.algorithm = algorithm
        self.device = device

    def _check_input(self, x: object) -> np.ndarray:
        """``x`` as a float array, or a TypeError / ValueError: a ValueError naming
        ``in_channels`` for an input of ``(N, C, H, W)`` or ``(C, H, W)`` with another
        ``C``, a TypeError for another dtype than the parameters'; other shapes are left
        to the functional op."""
        x = as_float_array(x, "input")
        shape = x.shape
        if len(shape) in (3, 4) and shape[-3] != self.in_channels:
            raise ValueError(
                f"input has C={shape[-3]} channels but the layer has "
                f"in_channels={self.in_channels}; input must be (N, {self.in_channels}, H, W) "
                f"or ({self.in_channels}, H, W), got shape {shape}")
        _check_input_dtype(x, self, self.weight.dtype)
        return x

    def _args(self) -> tuple:
        """The functional ops' arguments after the arrays (each layer type's own)."""
        raise NotImplementedError

    def _compile_backward(self, input_shape: tuple[int, ...], dtype: np.dtype) -> None:
        if _on_host(self.device):  # (not the input gradient: the forward's kernel at stride 1)
            dtype = self.weight.dtype
            self._backward_op(
                np.zeros(self.output_shape(input_shape), dtype), np.zeros(input_shape, dtype),
                self.weight, *self._args(), needs_input_grad=False,
                needs_bias_grad=self.bias is not None, algorithm=self.algorithm)

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                 f"stride={self.stride}, padding={self.padding!r}"]
        for name, default in (("output_padding", (0, 0)), ("dilation", (1, 1)), ("groups", 1),
                              ("activation", None)):
            if getattr(self, name) != default:
                parts.append(f"{name}={getattr(self, name)!r}")
        if self.bias is None:
            parts.append("bias=False")
        return ", ".join(parts)


def _relu_grad(grad_output: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """dL/dz of ``y = max(z, 0)`` from the forward's boolean ``mask = y > 0``:
    ``grad_output`` where the mask is set, else 0 (PyTorch's choice at 0), also where
    ``grad_output`` is NaN or Inf (a product with the mask would give NaN there)."""
    return np.where(mask, grad_output, grad_output.dtype.type(0))


class Conv2d(_ConvLayer):
    """2-D convolution layer, as ``torch.nn.Conv2d``, optionally followed by a ReLU.

    Shapes: input ``(N, C_in, H, W)`` or ``(C_in, H, W)``; output
    ``(N, C_out, H_out, W_out)`` with ``H_out = floor((H + pad_top + pad_bottom
    - dilation_h * (R - 1) - 1) / stride_h) + 1`` (see :func:`fastconv.conv2d`).
    ``weight`` is ``(C_out, C_in / groups, R, S)``, ``bias`` ``(C_out,)``.

    Args:
        in_channels, out_channels: C_in and C_out; ``groups`` must divide both.
        kernel_size: int or ``(R, S)``.
        stride, dilation: int or pair, each >= 1.
        padding: every form :func:`fastconv.conv2d` accepts: int, pair,
            ``((top, bottom), (left, right))``, ``"valid"``, ``"same"``.
        groups: independent channel groups (``groups == C_in`` is depthwise).
        bias: learn an additive bias.
        activation: None, or ``"relu"`` to apply ``max(y, 0)`` to the output
            (the last part of a conv layer in the lecture), fused into the
            convolution's kernel (:func:`fastconv.conv2d`'s ``activation=``); its
            gradient, the output's sign, is applied in :meth:`backward`.
        dtype: float32 (default) or float64, of the parameters and the input.
        rng: ``numpy.random.Generator`` for the initialisation
            ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, ``fan_in = C_in / groups * R * S``.
        algorithm: passed to :func:`fastconv.conv2d` and
            :func:`fastconv.conv2d_backward` (``"auto"``, ``"direct"``, ...).
        device: passed to the functional ops as ``device=`` when not None.

    >>> import numpy as np
    >>> from fastconv.nn import Conv2d
    >>> layer = Conv2d(3, 8, 3, padding=1, activation="relu", rng=np.random.default_rng(0))
    >>> layer.weight.shape, layer.bias.shape
    ((8, 3, 3, 3), (8,))
    >>> y = layer(np.ones((2, 3, 5, 5), np.float32))
    >>> y.shape, bool((y >= 0).all())
    ((2, 8, 5, 5), True)
    >>> layer.backward(np.ones_like(y)).shape
    (2, 3, 5, 5)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: Padding = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True, *,
                 activation: str | None = None, dtype: DTypeLike = np.float32,
                 rng: np.random.Generator | None = None, algorithm: str = "auto",
                 device: str | None = None) -> None:
        self._init_window(in_channels, out_channels, kernel_size, stride, padding, dilation,
                          groups, algorithm, device)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be None or 'relu', got {activation!r}")
        self.activation = activation
        self._torch_modules = 1 if activation is None else 2  # torch: Conv2d, ReLU
        c, k, g = self.in_channels, self.out_channels, self.groups
        r, s = self.kernel_size
        self._init_parameters((k, c // g, r, s), k, c // g * r * s, bias, dtype, rng)

    _backward_op = staticmethod(_conv.conv2d_backward)

    def _args(self) -> tuple:
        return self.stride, self.padding, self.dilation, self.groups

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = _image_shape(input_shape, self.in_channels)
        size = shapes.conv_output_size(shape[-2:], self.kernel_size, self.stride,
                                       self.padding, self.dilation)  # type: ignore[call-overload]
        return (*shape[:-3], self.out_channels, *size)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._saved = None  # a backward after a forward that raises must not see the last one
        x = self._check_input(x)
        y = _conv.conv2d(x, self.weight, self.bias, *self._args(), algorithm=self.algorithm,
                         activation=self.activation, **_device(self.device))
        # the ReLU is applied as the kernel stores y; its gradient is y's sign, kept as a
        # mask, not y: y is the caller's, and editing it must not change backward
        mask = y > 0 if self.activation == "relu" else None
        self._saved = (x, mask, y.shape, y.dtype)
        return y

    def backward(self, grad_output: np.ndarray, *,
                 needs_input_grad: bool = True) -> np.ndarray | None:
        x, mask, shape, dtype = self._saved_for_backward()
        grad_output = _check_grad(grad_output, shape, dtype)
        if mask is not None:
            grad_output = _relu_grad(grad_output, mask)
        grad_input, grad_weight, grad_bias = _conv.conv2d_backward(
            grad_output, x, self.weight, *self._args(), needs_input_grad=needs_input_grad,
            needs_bias_grad=self.bias is not None, algorithm=self.algorithm,
            **_device(self.device))
        self._accumulate(grad_weight, grad_bias)
        return grad_input


class ConvTranspose2d(_ConvLayer):
    """Transposed convolution layer ("deconvolution"), as ``torch.nn.ConvTranspose2d``.

    Shapes: input ``(N, C_in, H, W)`` or ``(C_in, H, W)``; output
    ``(N, C_out, H_out, W_out)`` with ``H_out = (H - 1) * stride_h - 2 * pad_h
    + dilation_h * (R - 1) + output_padding_h + 1`` (see
    :func:`fastconv.conv_transpose2d`). ``weight`` is ``(C_in, C_out / groups, R, S)``,
    ``bias`` ``(C_out,)``.

    Args:
        in_channels, out_channels, kernel_size, stride, dilation, groups, bias:
            as :class:`Conv2d` (positional order as in PyTorch: ``..., padding,
            output_padding, groups, bias, dilation``).
        padding: int, pair or ``((top, bottom), (left, right))``, cropped from
            the output.
        output_padding: int or pair, each smaller than stride or dilation: extra
            rows/columns at the bottom/right.
        dtype, rng, algorithm, device: as :class:`Conv2d`. The initialisation
            bound is ``1/sqrt(fan_in)`` with PyTorch's
            ``fan_in = weight.shape[1] * R * S = C_out / groups * R * S``.

    :meth:`forward` also takes ``output_size``, as PyTorch's does.

    >>> import numpy as np
    >>> from fastconv.nn import ConvTranspose2d
    >>> layer = ConvTranspose2d(4, 2, 2, stride=2, rng=np.random.default_rng(0))
    >>> layer.weight.shape
    (4, 2, 2, 2)
    >>> layer(np.ones((1, 4, 3, 3), np.float32)).shape
    (1, 2, 6, 6)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: TransposedPadding = 0,
                 output_padding: int | tuple[int, int] = 0, groups: int = 1, bias: bool = True,
                 dilation: int | tuple[int, int] = 1, *, dtype: DTypeLike = np.float32,
                 rng: np.random.Generator | None = None, algorithm: str = "auto",
                 device: str | None = None) -> None:
        if isinstance(padding, str):
            raise ValueError(
                "padding of ConvTranspose2d must be an int, a pair (pad_h, pad_w) or "
                f"((top, bottom), (left, right)), got {padding!r}")
        self._init_window(in_channels, out_channels, kernel_size, stride, padding, dilation,
                          groups, algorithm, device)
        self.output_padding = shapes.pair(output_padding, "output_padding", minimum=0)
        c, k, g = self.in_channels, self.out_channels, self.groups
        r, s = self.kernel_size
        self._init_parameters((c, k // g, r, s), k, k // g * r * s, bias, dtype, rng)

    _backward_op = staticmethod(_conv.conv_transpose2d_backward)

    def _args(self) -> tuple:
        return self.stride, self.padding, self.output_padding, self.groups, self.dilation

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """As :meth:`Module.output_shape`, without :meth:`forward`'s ``output_size``."""
        shape = _image_shape(input_shape, self.in_channels)
        *_, size = _conv.transposed_size((shape[-2], shape[-1]), self.kernel_size, self.stride,
                                         self.padding, self.output_padding, self.dilation)
        return (*shape[:-3], self.out_channels, *size)

    def forward(self, x: np.ndarray, output_size: tuple[int, ...] | None = None) -> np.ndarray:
        """The transposed convolution of ``x``; ``output_size`` ``(H_out, W_out)`` (or a
        longer shape ending in them) picks the size, overriding ``output_padding``."""
        self._saved = None  # a backward after a forward that raises must not see the last one
        x = self._check_input(x)
        y = _conv.conv_transpose2d(x, self.weight, self.bias, *self._args(),
                                   output_size=output_size, algorithm=self.algorithm,
                                   **_device(self.device))
        self._saved = (x, output_size, y.shape, y.dtype)
        return y

    def backward(self, grad_output: np.ndarray, *,
                 needs_input_grad: bool = True) -> np.ndarray | None:
        x, output_size, shape, dtype = self._saved_for_backward()
        grad_output = _check_grad(grad_output, shape, dtype)
        grad_input, grad_weight, grad_bias = _conv.conv_transpose2d_backward(
            grad_output, x, self.weight, *self._args(), output_size=output_size,
            needs_input_grad=needs_input_grad, needs_bias_grad=self.bias is not None,
            algorithm=self.algorithm, **_device(self.device))
        self._accumulate(grad_weight, grad_bias)
        return grad_input


class MaxPool2d(Module, Generic[_PoolOutput]):
    """2-D max pooling, as ``torch.nn.MaxPool2d``; it remembers where each maximum was.

    Shapes: input ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, C, H_out, W_out)``
    with ``H_out = floor((H + 2 * pad_h - dilation_h * (kernel_h - 1) - 1) / stride_h) + 1``
    (``ceil`` with ``ceil_mode``), see :func:`fastconv.max_pool2d`.

    Args:
        kernel_size: int or pair; ``stride`` None (the default) means ``kernel_size``.
        padding: int or pair, each at most ``kernel_size // 2``.
        dilation, ceil_mode: as :func:`fastconv.max_pool2d`.
        return_indices: :meth:`forward` returns ``(output, indices)``, the
            indices ready for :class:`MaxUnpool2d`. The last successful forward's
            indices are always kept in :attr:`indices` (None after one that raised).
        algorithm, device: passed to the functional ops.

    >>> import numpy as np
    >>> from fastconv.nn import MaxPool2d
    >>> pool = MaxPool2d(2)
    >>> x = np.array([[[1, 0, 1, 0], [2, 1, 3, 2], [1, 2, 0, 4], [2, 2, 3, 0]]], np.float32)
    >>> pool(x).tolist(), pool.indices.tolist()
    ([[[2.0, 3.0], [2.0, 4.0]]], [[[4, 6], [9, 11]]])
    >>> pool.backward(np.ones((1, 2, 2), np.float32))[0].tolist()
    [[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    """

    # a type checker reads the type of forward's result from return_indices:
    # MaxPool2d(2) is a MaxPool2d[np.ndarray], MaxPool2d(2, return_indices=True) a
    # MaxPool2d[tuple[np.ndarray, np.ndarray]]
    @overload
    def __init__(self: MaxPool2d[np.ndarray], kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] | None = ...,
                 padding: int | tuple[int, int] = ..., dilation: int | tuple[int, int] = ...,
                 return_indices: Literal[False] = ..., ceil_mode: bool = ..., *,
                 algorithm: str = ..., device: str | None = ...) -> None: ...
    @overload
    def __init__(self: MaxPool2d[tuple[np.ndarray, np.ndarray]],
                 kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None,
                 padding: int | tuple[int, int], dilation: int | tuple[int, int],
                 return_indices: Literal[True], ceil_mode: bool = ..., *,
                 algorithm: str = ..., device: str | None = ...) -> None: ...
    @overload
    def __init__(self: MaxPool2d[tuple[np.ndarray, np.ndarray]],
                 kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] | None = ...,
                 padding: int | tuple[int, int] = ..., dilation: int | tuple[int, int] = ...,
                 *, return_indices: Literal[True], ceil_mode: bool = ...,
                 algorithm: str = ..., device: str | None = ...) -> None: ...
    @overload
    def __init__(self: MaxPool2d[np.ndarray | tuple[np.ndarray, np.ndarray]],
                 kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] | None = ...,
                 padding: int | tuple[int, int] = ..., dilation: int | tuple[int, int] = ...,
                 return_indices: bool = ..., ceil_mode: bool = ..., *,
                 algorithm: str = ..., device: str | None = ...) -> None: ...
    def __init__(self, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                 return_indices: bool = False, ceil_mode: bool = False, *,
                 algorithm: str = "auto", device: str | None = None) -> None:
        self.kernel_size = shapes.pair(kernel_size, "kernel_size")
        self.stride = shapes.pool_stride(stride, self.kernel_size)
        self.padding = shapes.pair(padding, "padding", minimum=0)
        self.dilation = shapes.pair(dilation, "dilation")
        self.return_indices = bool(return_indices)
        self.ceil_mode = bool(ceil_mode)
        self.algorithm = algorithm
        self.device = device
        self.indices: np.ndarray | None = None

    # with return_indices, a pair: not the array of Module.forward (nor a layer for Sequential)
    def __call__(self, *args: Any, **kwargs: Any) -> _PoolOutput:  # type: ignore[override]
        """``self.forward(*args, **kwargs)``: the output, or ``(output, indices)`` with
        ``return_indices``."""
        return self.forward(*args, **kwargs)

    def forward(self, x: np.ndarray) -> _PoolOutput:  # type: ignore[override]
        self._saved = None  # a backward after a forward that raises must not see the last one
        self.indices = None
        x = as_float_array(x, "input")
        y, indices = _pool.max_pool2d(x, self.kernel_size, self.stride, self.padding,
                                      self.dilation, self.ceil_mode, True,
                                      algorithm=self.algorithm, **_device(self.device))
        self.indices = indices
        self._saved = (indices, x.shape, y.shape, y.dtype)
        return cast(_PoolOutput, (y, indices) if self.return_indices else y)

    def backward(self, grad_output: np.ndarray, *,
                 needs_input_grad: bool = True) -> np.ndarray | None:
        indices, input_shape, shape, dtype = self._saved_for_backward()
        grad_output = _check_grad(grad_output, shape, dtype)
        if not needs_input_grad:
            return None
        return _pool.max_pool2d_backward(grad_output, indices, input_shape,
                                         algorithm=self.algorithm, **_device(self.device))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """As :meth:`Module.output_shape`: the pooled output's (the indices have it too)."""
        shape = _image_shape(input_shape)
        window = _pool._window((shape[-2], shape[-1]), self.kernel_size, self.stride,
                               self.padding, self.dilation, self.ceil_mode, "input_shape")
        return (*shape[:-2], *window.out_size)

    def _compile_backward(self, input_shape: tuple[int, ...], dtype: np.dtype) -> None:
        if _on_host(self.device):  # (the forward again, for its indices)
            y, indices = _pool.max_pool2d(np.zeros(input_shape, dtype), self.kernel_size,
                                          self.stride, self.padding, self.dilation,
                                          self.ceil_mode, True, algorithm=self.algorithm)
            _pool.max_pool2d_backward(np.zeros_like(y), indices, tuple(input_shape),
                                      algorithm=self.algorithm)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    """2-D average pooling, as ``torch.nn.AvgPool2d``.

    Shapes: input ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, C, H_out, W_out)``
    with ``H_out = floor((H + 2 * pad_h - kernel_h) / stride_h) + 1`` (``ceil`` with
    ``ceil_mode``). Arguments as :func:`fastconv.avg_pool2d`: ``stride`` None
    means ``kernel_size``; ``count_include_pad`` and ``divisor_override`` set
    the divisor.

    >>> import numpy as np
    >>> from fastconv.nn import AvgPool2d
    >>> pool = AvgPool2d(2)
    >>> pool(np.arange(16.0).reshape(1, 4, 4)).tolist()
    [[[2.5, 4.5], [10.5, 12.5]]]
    >>> pool.backward(np.ones((1, 2, 2)))[0, 0].tolist()
    [0.25, 0.25, 0.25, 0.25]
    """

    def __init__(self, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None, *,
                 algorithm: str = "auto", device: str | None = None) -> None:
        self.kernel_size = shapes.pair(kernel_size, "kernel_size")
        self.stride = shapes.pool_stride(stride, self.kernel_size)
        self.padding = shapes.pair(padding, "padding", minimum=0)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = divisor(divisor_override)
        self.algorithm = algorithm
        self.device = device

    def _args(self) -> tuple:
        return (self.kernel_size, self.stride, self.padding, self.ceil_mode,
                self.count_include_pad, self.divisor_override)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._saved = None  # a backward after a forward that raises must not see the last one
        x = as_float_array(x, "input")
        y = _pool.avg_pool2d(x, *self._args(), algorithm=self.algorithm, **_device(self.device))
        self._saved = (x.shape, y.shape, y.dtype)
        return y

    def backward(self, grad_output: np.ndarray, *,
                 needs_input_grad: bool = True) -> np.ndarray | None:
        input_shape, shape, dtype = self._saved_for_backward()
        grad_output = _check_grad(grad_output, shape, dtype)
        if not needs_input_grad:
            return None
        return _pool.avg_pool2d_backward(grad_output, input_shape, *self._args(),
                                         algorithm=self.algorithm, **_device(self.device))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = _image_shape(input_shape)
        window = _pool._window((shape[-2], shape[-1]), self.kernel_size, self.stride,
                               self.padding, 1, self.ceil_mode, "input_shape")
        return (*shape[:-2], *window.out_size)

    def _compile_backward(self, input_shape: tuple[int, ...], dtype: np.dtype) -> None:
        if _on_host(self.device):
            _pool.avg_pool2d_backward(np.zeros(self.output_shape(input_shape), dtype),
                                      tuple(input_shape), *self._args(),
                                      algorithm=self.algorithm)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxUnpool2d(Module):
    """Max unpooling, as ``torch.nn.MaxUnpool2d``: each value goes back to where
    :class:`MaxPool2d` found it, zeros elsewhere.

    Shapes: input and indices ``(N, C, H, W)`` or ``(C, H, W)``; output
    ``(N, C, H_out, W_out)`` with ``H_out = (H - 1) * stride_h - 2 * pad_h + kernel_h``
    unless ``output_size`` is given (see :func:`fastconv.max_unpool2d`).

    Args:
        kernel_size, stride, padding: the pooling's (``stride`` None means
            ``kernel_size``).
        algorithm, device: passed to the functional ops.

    >>> import numpy as np
    >>> from fastconv.nn import MaxPool2d, MaxUnpool2d
    >>> x = np.array([[[1, 0, 1, 0], [2, 1, 3, 2], [1, 2, 0, 4], [2, 2, 3, 0]]], np.float32)
    >>> y, indices = MaxPool2d(2, return_indices=True)(x)
    >>> MaxUnpool2d(2)(y, indices)[0].tolist()
    [[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 3.0, 0.0], [0.0, 2.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]]
    """

    def __init__(self, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0, *, algorithm: str = "auto",
                 device: str | None = None) -> None:
        self.kernel_size = shapes.pair(kernel_size, "kernel_size", single=False)
        self.stride = shapes.unpool_stride(stride, self.kernel_size)
        self.padding = shapes.pair(padding, "padding", minimum=0, single=False)
        self.algorithm = algorithm
        self.device = device

    def forward(self, x: np.ndarray, indices: np.ndarray,  # type: ignore[override]
                output_size: tuple[int, ...] | None = None) -> np.ndarray:
        """Unpool ``x`` with the ``indices`` of a max pooling; ``output_size``
        ``(H_out, W_out)`` (or a longer shape ending in them) restores an odd size."""
        self._saved = None  # a backward after a forward that raises must not see the last one
        x = as_float_array(x, "input")
        y = _pool.max_unpool2d(x, indices, self.kernel_size, self.stride, self.padding,
                               output_size, algorithm=self.algorithm, **_device(self.device))
        self._saved = (indices, y.shape, y.dtype)
        return y

    def backward(self, grad_output: np.ndarray, *,
                 needs_input_grad: bool = True) -> np.ndarray | None:
        indices, shape, dtype = self._saved_for_backward()
        grad_output = _check_grad(grad_output, shape, dtype)
        if not needs_input_grad:
            return None
        return _pool.max_unpool2d_backward(grad_output, indices, algorithm=self.algorithm,
                                           **_device(self.device))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """As :meth:`Module.output_shape`, without :meth:`forward`'s ``output_size``."""
        shape = _image_shape(input_shape)
        size = shapes.unpool_output_size(shape[-2:], self.kernel_size, self.stride,
                                         self.padding)
        return (*shape[:-2], *size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class RepeatUnpool2d(Module):
    """Unpooling by repetition (nearest-neighbour upsampling by an integer ``scale``):
    input ``(N, C, H, W)`` -> output ``(N, C, H * scale_h, W * scale_w)``, see
    :func:`fastconv.repeat_unpool2d`.

    >>> import numpy as np
    >>> from fastconv.nn import RepeatUnpool2d
    >>> layer = RepeatUnpool2d(2)
    >>> layer(np.array([[[1.0, 2.0]]])).tolist()
    [[[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]]]
    >>> layer.backward(np.ones((1, 2, 4))).tolist()
    [[[4.0, 4.0]]]
    """

    def __init__(self, scale: int | tuple[int, int], *, algorithm: str = "auto",
                 device: str | None = None) -> None:
        self.scale = shapes.pair(scale, "scale")
        self.algorithm = algorithm
        self.device = device

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._saved = None  # a backward after a forward that raises must not see the last one
        x = as_float_array(x, "input")
        y = _pool.repeat_unpool2d(x, self.scale, algorithm=self.algorithm,
                                  **_device(self.device))
        self._saved = (y.shape, y.dtype)
        return y

    def backward(self, grad_output: np.ndarray, *,
                 needs_input_grad: bool = True) -> np.ndarray | None:
        grad_output = _check_grad(grad_output, *self._saved_for_backward())
        if not needs_input_grad:
            return None
        return _pool.repeat_unpool2d_backward(grad_output, self.scale, algorithm=self.algorithm,
                                              **_device(self.device))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = _image_shape(input_shape)
        return (*shape[:-2], shape[-2] * self.scale[0], shape[-1] * self.scale[1])

    def _compile_backward(self, input_shape: tuple[int, ...], dtype: np.dtype) -> None:
        if _on_host(self.device):
            _pool.repeat_unpool2d_backward(np.zeros(self.output_shape(input_shape), dtype),
                                           self.scale, algorithm=self.algorithm)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class ReLU(Module):
    """``max(x, 0)`` elementwise, for a float32 or float64 array of any shape (0-D too);
    its gradient is 0 where ``x <= 0``.

    >>> import numpy as np
    >>> from fastconv.nn import ReLU
    >>> relu = ReLU()
    >>> relu(np.array([-1.0, 0.0, 2.0])).tolist(), relu.backward(np.ones(3)).tolist()
    ([0.0, 0.0, 2.0], [0.0, 0.0, 1.0])
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._saved = None  # a backward after a forward that raises must not see the last one
        y = np.maximum(as_float_array(x, "input"), 0)
        self._saved = (y > 0, y.dtype)  # a mask, not y: the caller may edit y before backward
        return y

    def backward(self, grad_output: np.ndarray, *,
                 needs_input_grad: bool = True) -> np.ndarray | None:
        mask, dtype = self._saved_for_backward()
        grad_output = _check_grad(grad_output, mask.shape, dtype)
        return _relu_grad(grad_output, mask) if needs_input_grad else None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return _shape(input_shape)


class Flatten(Module):
    """``(N, d1, d2, ...)`` -> ``(N, d1 * d2 * ...)``, as ``torch.nn.Flatten()``; the input
    is a float32 or float64 array of at least 2 dimensions (``(N, d1)`` stays as it is).

    >>> import numpy as np
    >>> from fastconv.nn import Flatten
    >>> Flatten()(np.zeros((2, 3, 4, 4))).shape
    (2, 48)
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._saved = None  # a backward after a forward that raises must not see the last one
        x = as_float_array(x, "input")
        if x.ndim < 2:
            raise ValueError(
                f"input must have at least 2 dimensions (N, d1, ...), got shape {x.shape}")
        # not reshape(N, -1), which cannot infer the -1 of an empty batch
        y = x.reshape(x.shape[0], math.prod(x.shape[1:]))
        self._saved = (x.shape, y.shape, y.dtype)
        return y

    def backward(self, grad_output: np.ndarray, *,
                 needs_input_grad: bool = True) -> np.ndarray | None:
        input_shape, shape, dtype = self._saved_for_backward()
        grad_output = _check_grad(grad_output, shape, dtype)
        return grad_output.reshape(input_shape) if needs_input_grad else None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = _shape(input_shape)
        if len(shape) < 2:
            raise ValueError(
                f"input_shape must have at least 2 dimensions (N, d1, ...), got {shape}")
        return (shape[0], math.prod(shape[1:]))


class Linear(_Parametrised):
    """Fully connected layer, as ``torch.nn.Linear``: ``y = x @ weight.T + bias``.

    Shapes: input ``(N, in_features)``, output ``(N, out_features)``; ``weight``
    ``(out_features, in_features)``, ``bias`` ``(out_features,)``, both initialised
    ``U(-1/sqrt(in_features), 1/sqrt(in_features))``. ``dtype`` and ``rng`` as
    :class:`Conv2d`. The input (anything ``np.asarray`` takes) and ``grad_output``
    ``(N, out_features)`` must have the layer's dtype.

    >>> import numpy as np
    >>> from fastconv.nn import Linear
    >>> layer = Linear(3, 2, rng=np.random.default_rng(0))
    >>> layer.weight[...] = 1.0
    >>> layer.bias[...] = 0.5
    >>> layer(np.array([[1.0, 2.0, 3.0]], np.float32)).tolist()
    [[6.5, 6.5]]
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 dtype: DTypeLike = np.float32, rng: np.random.Generator | None = None) -> None:
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        self._init_parameters((self.out_features, self.in_features), self.out_features,
                              self.in_features, bias, dtype, rng)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._saved = None  # a backward after a forward that raises must not see the last one
        x = as_float_array(x, "input")
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"input must be 2-D (N, in_features) = (N, {self.in_features}), "
                f"got shape {x.shape}")
        _check_input_dtype(x, self, self.weight.dtype)
        y = x @ self.weight.T
        if self.bias is not None:
            y += self.bias
        self._saved = (x,)
        return y

    def backward(self, grad_output: np.ndarray, *,
                 needs_input_grad: bool = True) -> np.ndarray | None:
        (x,) = self._saved_for_backward()
        grad_output = _check_grad(grad_output, (x.shape[0], self.out_features),
                                  self.weight.dtype)
        # y = x W^T + b: dW = dy^T x, db = sum_n dy, dx = dy W
        grad_bias = grad_output.sum(axis=0) if self.bias is not None else None
        self._accumulate(grad_output.T @ x, grad_bias)
        return grad_output @ self.weight if needs_input_grad else None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = _shape(input_shape)
        if len(shape) != 2 or shape[1] != self.in_features:
            raise ValueError(f"input_shape must be (N, in_features) = (N, {self.in_features}), "
                             f"got {shape}")
        return (shape[0], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}"
                + (", bias=False" if self.bias is None else ""))


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse.

    ``params()`` and ``grads()`` name each array ``"<index>.<name>"``, as
    ``torch.nn.Sequential.named_parameters()`` does; :meth:`~Module.state_dict`
    counts a ``Conv2d(..., activation="relu")`` as two indices, as the torch model
    with a separate ``ReLU`` does. ``backward(..., needs_input_grad=False)`` lets
    the first layer skip its input gradient. Indexing and iteration give the
    layers; an empty ``Sequential`` returns its input.

    A layer instance may appear only once (also inside a nested ``Sequential``):
    a layer keeps what one forward left for its backward, so a second use would
    overwrite it and give wrong gradients; using one twice is a ValueError.
    """

    def __init__(self, *layers: Module) -> None:
        for index, layer in enumerate(layers):
            if not callable(getattr(layer, "backward", None)):
                raise TypeError(
                    f"layer {index} must have forward/backward/params/grads, "
                    f"got {type(layer).__name__}")
        seen: dict[int, str] = {}
        for where, layer in _walk(layers):
            first = seen.setdefault(id(layer), where)
            if first != where:
                raise ValueError(
                    f"layer {where} is the same {type(layer).__name__} instance as layer "
                    f"{first}: a layer caches what its one last forward needs for backward, "
                    f"so it cannot run twice in one pass; use a separate instance")
        self.layers = list(layers)

    def __getitem__(self, index: int) -> Module:
        return self.layers[index]

    def __iter__(self) -> Iterator[Module]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def forward(self, x: np.ndarray) -> np.ndarray:
        # cleared first: after a layer raised, the layers behind it still hold an older
        # forward's inputs, and backward must not run them
        self._saved = None
        if not self.layers:
            x = as_float_array(x, "input")
            self._saved = (x.shape, x.dtype)
            return x
        for layer in self.layers:
            x = layer(x)
        self._saved = ()
        return x

    def backward(self, grad_output: np.ndarray, *,
                 needs_input_grad: bool = True) -> np.ndarray | None:
        saved = self._saved_for_backward()
        if not self.layers:
            grad_output = _check_grad(grad_output, *saved)
            return grad_output if needs_input_grad else None
        grad = grad_output
        for layer in reversed(self.layers[1:]):
            # an array: needs_input_grad is True
            grad = cast(np.ndarray, layer.backward(grad))
        return self.layers[0].backward(grad, needs_input_grad=needs_input_grad)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = _shape(input_shape)
        for index, layer in enumerate(self.layers):
            if not callable(getattr(layer, "output_shape", None)):
                raise NotImplementedError(
                    f"layer {index} ({type(layer).__name__}) has no output_shape")
            shape = layer.output_shape(shape)
        return shape

    def _compile_backward(self, input_shape: tuple[int, ...], dtype: np.dtype) -> None:
        shape = _shape(input_shape)
        for layer in self.layers:  # (a layer of another kind: its kernels compile at its call)
            if isinstance(layer, Module):
                layer._compile_backward(shape, dtype)
            try:
                shape = layer.output_shape(shape)
            except (AttributeError, NotImplementedError):
                return  # the shapes after it are not known: those layers compile at their call

    def params(self) -> dict[str, np.ndarray]:
        return {f"{i}.{name}": array for i, layer in enumerate(self.layers)
                for name, array in layer.params().items()}

    def grads(self) -> dict[str, np.ndarray]:
        return {f"{i}.{name}": array for i, layer in enumerate(self.layers)
                for name, array in layer.grads().items()}

    def _torch_arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        index = 0  # the layer's index in the torch model: fused activations take two
        for layer in self.layers:
            arrays = (layer._torch_arrays() if isinstance(layer, Module)
                      else layer.params().items())
            for name, array in arrays:
                yield f"{index}.{name}", array
            index += getattr(layer, "_torch_modules", 1)

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"


def _walk(layers: tuple[Module, ...] | list[Module],
          prefix: str = "") -> Iterator[tuple[str, Module]]:
    """``(index, layer)`` of ``layers`` and, depth first, of the layers of each nested
    :class:`Sequential`, the index dotted as in ``params()`` (``"1.0"``)."""
    for index, layer in enumerate(layers):
        where = f"{prefix}{index}"
        yield where, layer
        if isinstance(layer, Sequential):
            yield from _walk(layer.layers, f"{where}.")


class CrossEntropyLoss:
    """Softmax cross-entropy of logits against class indices, averaged over the batch,
    as ``torch.nn.CrossEntropyLoss()``:
    ``loss = mean_n(logsumexp(logits[n]) - logits[n, target[n]])``.

    ``forward(logits, target)`` (or calling it) takes floating-point logits
    ``(N, classes)`` (integer logits are a TypeError, as in PyTorch) and integer
    targets ``(N,)`` and returns the loss as a float; ``backward()`` returns
    ``dloss/dlogits = (softmax(logits) - onehot(target)) / N`` in the logits' dtype,
    for the last forward that succeeded (after a failed one, backward is an error).

    >>> import numpy as np
    >>> from fastconv.nn import CrossEntropyLoss
    >>> loss_fn = CrossEntropyLoss()
    >>> round(loss_fn(np.zeros((2, 4)), np.array([0, 3])), 6)   # log(4)
    1.386294
    >>> loss_fn.backward().tolist()
    [[-0.375, 0.125, 0.125, 0.125], [0.125, 0.125, 0.125, -0.375]]
    """

    def __init__(self) -> None:
        self._probs: np.ndarray | None = None
        self._target: np.ndarray | None = None

    def __call__(self, logits: np.ndarray, target: np.ndarray) -> float:
        return self.forward(logits, target)

    def forward(self, logits: np.ndarray, target: np.ndarray) -> float:
        # forget the last forward first: a backward after a failed forward is an error
        self._probs = self._target = None
        given = logits
        logits = np.asarray(logits)
        target = np.asarray(target)
        if not np.issubdtype(logits.dtype, np.floating):
            got = (f"{type(given).__name__} (dtype object)" if logits.dtype == object
                   else f"dtype {logits.dtype}")
            raise TypeError(
                f"logits must be a floating-point array (float32 or float64, as the layers "
                f"return), got {got}; convert it first, e.g. logits.astype(np.float64)")
        if logits.ndim != 2 or logits.shape[0] == 0:
            raise ValueError(f"logits must be 2-D (N, classes) with N >= 1, got {logits.shape}")
        if (target.shape != (logits.shape[0],) or not np.issubdtype(target.dtype, np.integer)
                or target.min() < 0 or target.max() >= logits.shape[1]):
            raise ValueError(
                f"target must be integers in [0, {logits.shape[1]}) of shape "
                f"({logits.shape[0]},), got {target.dtype} array of shape {target.shape}")
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        rows = np.arange(len(target))
        loss = float(np.mean(np.log(total[:, 0]) - shifted[rows, target]))
        self._probs, self._target = exp / total, target
        return loss

    def backward(self) -> np.ndarray:
        probs, target = self._probs, self._target
        if probs is None or target is None:
            raise RuntimeError("CrossEntropyLoss.backward called without a successful "
                               "forward: compute the loss first (a forward that raised "
                               "keeps nothing)")
        grad = probs.copy()
        grad[np.arange(len(target)), target] -= 1
        grad /= len(target)
        return grad


class SGD:
    """Stochastic gradient descent with momentum and weight decay, as ``torch.optim.SGD``:
    ``g = grad + weight_decay * p``; ``buf = momentum * buf + g`` (``buf = g`` at the
    first step); ``p -= lr * buf``, in place on the arrays of ``model.params()``.

    Args:
        model: anything with ``params()`` and ``grads()`` (a layer, a :class:`Sequential`).
        lr: learning rate, a finite real number > 0.
        momentum, weight_decay: finite real numbers >= 0.

    Real numbers include numpy scalars (``np.float32(0.1)``) but not bools; other
    types are a TypeError, values out of range or not finite a ValueError.

    Unlike ``torch.optim.SGD`` there is no ``dampening`` and no ``nesterov``, and
    :meth:`step` updates every parameter: the layers' gradients are always arrays
    (zeros after ``zero_grad()``), so a parameter whose gradient is zero still
    moves by its momentum buffer and its weight decay, where PyTorch skips a
    parameter whose ``.grad`` is None.

    >>> import numpy as np
    >>> from fastconv.nn import Linear, SGD
    >>> layer = Linear(2, 1, bias=False, dtype=np.float64, rng=np.random.default_rng(0))
    >>> layer.weight[...] = 1.0
    >>> layer.grad_weight[...] = 0.5
    >>> optimizer = SGD(layer, lr=0.1, momentum=0.9)
    >>> optimizer.step(); optimizer.step()
    >>> layer.weight.tolist()                 # 1 - 0.1 * 0.5 - 0.1 * (0.9 * 0.5 + 0.5)
    [[0.855, 0.855]]
    """

    def __init__(self, model: Module, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        for name, value, positive in (("lr", lr, True), ("momentum", momentum, False),
                                      ("weight_decay", weight_decay, False)):
            expected = f"a finite real number {'> 0' if positive else '>= 0'}"
            if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be {expected}, got {value!r} "
                                f"({type(value).__name__})")
            if not math.isfinite(value) or (value <= 0 if positive else value < 0):
                raise ValueError(f"{name} must be {expected}, got {value!r}")
        self.model = model
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self._buffers: dict[str, np.ndarray] = {}

    def step(self) -> None:
        """Update every parameter in place from its gradient."""
        grads = self.model.grads()
        for name, param in self.model.params().items():
            grad = grads[name]
            if self.weight_decay:
                grad = grad + self.weight_decay * param
            if self.momentum:
                buf = self._buffers.get(name)
                if buf is None:
                    buf = self._buffers[name] = grad.copy()
                else:
                    buf *= self.momentum
                    buf += grad
                grad = buf
            param -= self.lr * grad

    def zero_grad(self) -> None:
        """Set the model's gradients to 0."""
        self.model.zero_grad()
