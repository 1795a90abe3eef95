"""PyTorch bridge: fastconv's ops as autograd Functions, functionals and ``nn.Module``s.

``import fastconv.torch`` (``import fastconv`` alone never imports torch) gives
three layers over the same kernels:

- ``torch.autograd.Function``s, one per op (:class:`Conv2dFunction`, ...): the
  forward runs fastconv's op, the backward the matching ``*_backward``,
  computing only the gradients ``ctx.needs_input_grad`` asks for. They are
  differentiable once: a backward with ``create_graph=True`` whose gradients
  would need a second derivative (a gradient penalty through a convolution
  whose input and weight both require grad, or any loss not linear in the
  output) raises a RuntimeError rather than return a detached gradient.
- functionals with ``torch.nn.functional``'s signatures plus an
  ``algorithm=`` keyword: :func:`conv2d`, :func:`conv_transpose2d`,
  :func:`max_pool2d`, :func:`avg_pool2d`, :func:`max_unpool2d`, and
  :func:`repeat_unpool2d` (nearest-neighbour upsampling by an integer factor).
- modules :class:`Conv2d`, :class:`ConvTranspose2d`, :class:`MaxPool2d`,
  :class:`AvgPool2d`, :class:`MaxUnpool2d` subclass their ``torch.nn``
  namesakes and replace only ``forward``: the constructor arguments,
  parameters (``weight``, ``bias``), initialisation and ``state_dict`` are
  torch's, so the two load each other's weights. :class:`RepeatUnpool2d` has
  no ``torch.nn`` namesake. Each takes a keyword-only ``algorithm=``.

Tensors must be float32 or float64 (others are a TypeError naming the dtype),
all of one dtype and on one device. CPU tensors reach the kernels as numpy
views (no copy; any memory layout) and results come back through
``torch.from_numpy``. CUDA tensors go to fastconv's CUDA backend as they are,
and its results are CUDA tensors.

Example:

>>> import torch, fastconv.torch as fct
>>> _ = torch.manual_seed(0)
>>> net = torch.nn.Sequential(fct.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), fct.MaxPool2d(2))
>>> x = torch.randn(2, 1, 8, 8)
>>> y = net(x)
>>> y.shape
torch.Size([2, 4, 4, 4])
>>> y.sum().backward()
>>> net[0].weight.grad.shape
torch.Size([4, 1, 3, 3])
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch  # the real torch: absolute imports never find this module
from torch.autograd.function import once_differentiable

from . import functional as ops

__all__ = [
    "Conv2dFunction",
    "ConvTranspose2dFunction",
    "MaxPool2dFunction",
    "AvgPool2dFunction",
    "MaxUnpool2dFunction",
    "RepeatUnpool2dFunction",
    "conv2d",
    "conv_transpose2d",
    "max_pool2d",
    "avg_pool2d",
    "max_unpool2d",
    "repeat_unpool2d",
    "Conv2d",
    "ConvTranspose2d",
    "MaxPool2d",
    "AvgPool2d",
    "MaxUnpool2d",
    "RepeatUnpool2d",
]

_FLOAT_DTYPES = (torch.float32, torch.float64)


# --- tensors <-> the arrays fastconv takes ------------------------------------------


def _check_dtype(op: str, name: str, dtype: torch.dtype) -> None:
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} has dtype {dtype}, but fastconv computes in torch.float32 or "
            f"torch.float64 only; convert it first, e.g. {name}.float()"
        )


def _check_tensor(op: str, name: str, tensor: object) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.layout != torch.strided:
        raise TypeError(f"{op}: {name} must be a dense (strided) tensor, got {tensor.layout}")
    if tensor.device.type not in ("cpu", "cuda"):
        raise ValueError(
            f"{op}: {name} is on {tensor.device}; fastconv runs on CPU and CUDA tensors only"
        )
    return tensor


def _array(tensor: torch.Tensor | None) -> Any:
    """A tensor as fastconv's ops take it: on the CPU a numpy view of the same memory, on
    a GPU the (detached) tensor itself, read through ``__cuda_array_interface__``."""
    if tensor is None:
        return None
    tensor = tensor.detach()
    if tensor.is_cuda:  # pragma: no cover - runs on a GPU machine only
        return tensor
    # numpy cannot express torch's lazy negation bit; resolving it is free when unset
    return tensor.resolve_neg().numpy()


def _tensor(array: Any) -> torch.Tensor | None:
    """A result of fastconv's ops as a tensor: numpy arrays are wrapped without a copy;
    the CUDA backend already returns tensors."""
    if array is None:
        return None
    if isinstance(array, torch.Tensor):  # pragma: no cover - the CUDA backend, on a GPU
        return array
    return torch.from_numpy(array)


def _float_arrays(op: str, **tensors: torch.Tensor | None) -> list[Any]:
    """The float tensors of one call, checked (float32 or float64, one dtype, one device)
    and converted with :func:`_array`; None stays None."""
    first_name, first = None, None
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        _check_tensor(op, name, tensor)
        _check_dtype(op, name, tensor.dtype)
        if first is None:
            first_name, first = name, tensor
        elif tensor.dtype != first.dtype:
            raise TypeError(
                f"{op}: {name} has dtype {tensor.dtype} but {first_name} has dtype "
                f"{first.dtype}; mixed dtypes are not supported, cast one of them"
            )
        elif tensor.device != first.device:
            raise ValueError(
                f"{op}: {name} is on {tensor.device} but {first_name} is on {first.device}; "
                f"move them to one device"
            )
    return [_array(tensor) for tensor in tensors.values()]


def _index_array(op: str, indices: object, input: torch.Tensor) -> Any:
    """max_unpool2d's ``indices``: an integer tensor on ``input``'s device."""
    tensor = _check_tensor(op, "indices", indices)
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(
            f"{op}: indices must be an integer tensor (torch.int64, as "
            f"max_pool2d(..., return_indices=True) returns), got dtype {tensor.dtype}"
        )
    if tensor.device != input.device:
        raise ValueError(
            f"{op}: indices is on {tensor.device} but input is on {input.device}; "
            f"move them to one device"
        )
    return _array(tensor)


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(n) for n in tensor.shape)


# --- autograd Functions ----------------------------------------------------------------


def _differentiable_once(backward: Callable[..., tuple]) -> Callable[..., tuple]:
    """``once_differentiable``, plus an error where it would be silent.

    A backward run with grad mode on (``create_graph=True``) must raise when its
    result depends on a tensor that requires grad, since no graph is built for it:

    - a ``grad_output`` that requires grad (the loss is not linear in the output);
      ``once_differentiable`` catches only this case, and only later, when the
      second derivative is taken;
    - two saved tensors that require grad: the convolutions save ``input`` and
      ``weight``, and their backward is bilinear (``grad_input`` from
      ``grad_output`` and ``weight``, ``grad_weight`` from ``grad_output`` and
      ``input``). With a loss linear in the output (``grad_output`` a constant, as
      in a WGAN-GP critic) ``once_differentiable`` silently returns gradients that
      are detached from them. (With only one of the two requiring grad, the one
      gradient computed depends on neither and is exact.)

    The pooling Functions save no float tensors, so for them only the first case applies.
    """
    once = once_differentiable(backward)

    @functools.wraps(backward)
    def wrapper(ctx: Any, *grad_outputs: Any) -> tuple:
        if torch.is_grad_enabled():
            incoming = any(isinstance(grad, torch.Tensor) and grad.requires_grad
                           for grad in grad_outputs)
            saved = sum(tensor.requires_grad for tensor in ctx.saved_tensors)
            if incoming or saved > 1:
                name = backward.__qualname__.split(".")[0]
                raise RuntimeError(
                    f"fastconv.torch: double backward (create_graph=True) is not supported; "
                    f"{name} is differentiable once. Use torch.nn.functional's op where a "
                    f"second derivative is needed (e.g. a gradient penalty), or call "
                    f"backward without create_graph=True")
        return once(ctx, *grad_outputs)

    return wrapper


class Conv2dFunction(torch.autograd.Function):
    """:func:`fastconv.conv2d` with :func:`fastconv.conv2d_backward` as its gradient.

    ``Conv2dFunction.apply(input, weight, bias, stride, padding, dilation, groups,
    algorithm)``, all positional; ``bias`` may be None. Most code calls
    :func:`conv2d` instead.

    >>> x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    >>> w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    >>> torch.autograd.gradcheck(Conv2dFunction.apply, (x, w, None, 1, 1, 1, 1, "auto"))
    True
    """

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: Any, padding: Any, dilation: Any, groups: int,
                algorithm: str) -> torch.Tensor:
        x, w, b = _float_arrays("conv2d", input=input, weight=weight, bias=bias)
        ctx.save_for_backward(input, weight)
        ctx.params = (stride, padding, dilation, groups)
        ctx.algorithm = algorithm
        return _tensor(ops.conv2d(x, w, b, stride, padding, dilation, groups,
                                  algorithm=algorithm))

    @staticmethod
    @_differentiable_once
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        input, weight = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grads = ops.conv2d_backward(
            _array(grad_output), _array(input), _array(weight), *ctx.params,
            needs_input_grad=needs_input, needs_weight_grad=needs_weight,
            needs_bias_grad=needs_bias, algorithm=ctx.algorithm,
        )
        return (*map(_tensor, grads), None, None, None, None, None)


class ConvTranspose2dFunction(torch.autograd.Function):
    """:func:`fastconv.conv_transpose2d` with :func:`fastconv.conv_transpose2d_backward`.

    ``ConvTranspose2dFunction.apply(input, weight, bias, stride, padding, output_padding,
    groups, dilation, algorithm)``, all positional, in ``torch.nn.functional``'s order.
    """

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: Any, padding: Any, output_padding: Any, groups: int, dilation: Any,
                algorithm: str) -> torch.Tensor:
        x, w, b = _float_arrays("conv_transpose2d", input=input, weight=weight, bias=bias)
        ctx.save_for_backward(input, weight)
        ctx.params = (stride, padding, output_padding, groups, dilation)
        ctx.algorithm = algorithm
        return _tensor(ops.conv_transpose2d(x, w, b, stride, padding, output_padding, groups,
                                            dilation, algorithm=algorithm))

    @staticmethod
    @_differentiable_once
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        input, weight = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grads = ops.conv_transpose2d_backward(
            _array(grad_output), _array(input), _array(weight), *ctx.params,
            needs_input_grad=needs_input, needs_weight_grad=needs_weight,
            needs_bias_grad=needs_bias, algorithm=ctx.algorithm,
        )
        return (*map(_tensor, grads), None, None, None, None, None, None)


class MaxPool2dFunction(torch.autograd.Function):
    """:func:`fastconv.max_pool2d` with :func:`fastconv.max_pool2d_backward`.

    ``MaxPool2dFunction.apply(input, kernel_size, stride, padding, dilation, ceil_mode,
    return_indices, algorithm)``. With ``return_indices`` it returns
    ``(output, indices)``, the indices not differentiable. The indices the
    backward needs are computed only when ``input`` requires grad or they are
    asked for. (The forward cannot see the caller's grad mode, so under
    ``torch.no_grad()`` an input that requires grad still gets them; :func:`max_pool2d`
    skips them there.)
    """

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, kernel_size: Any, stride: Any, padding: Any,
                dilation: Any, ceil_mode: bool, return_indices: bool,
                algorithm: str) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        (x,) = _float_arrays("max_pool2d", input=input)
        window = (kernel_size, stride, padding, dilation, ceil_mode)
        if not (return_indices or ctx.needs_input_grad[0]):
            return _tensor(ops.max_pool2d(x, *window, algorithm=algorithm))
        out, indices = map(_tensor, ops.max_pool2d(x, *window, return_indices=True,
                                                   algorithm=algorithm))
        ctx.save_for_backward(indices)
        ctx.input_shape = _shape(input)
        ctx.algorithm = algorithm
        if return_indices:
            ctx.mark_non_differentiable(indices)
            return out, indices
        return out

    @staticmethod
    @_differentiable_once
    def backward(ctx: Any, grad_output: torch.Tensor, *_grad_indices: Any) -> tuple:
        (indices,) = ctx.saved_tensors
        grad_input = ops.max_pool2d_backward(_array(grad_output), _array(indices),
                                             ctx.input_shape, algorithm=ctx.algorithm)
        return (_tensor(grad_input), None, None, None, None, None, None, None)


class AvgPool2dFunction(torch.autograd.Function):
    """:func:`fastconv.avg_pool2d` with :func:`fastconv.avg_pool2d_backward`.

    ``AvgPool2dFunction.apply(input, kernel_size, stride, padding, ceil_mode,
    count_include_pad, divisor_override, algorithm)``.
    """

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, kernel_size: Any, stride: Any, padding: Any,
                ceil_mode: bool, count_include_pad: bool, divisor_override: int | None,
                algorithm: str) -> torch.Tensor:
        (x,) = _float_arrays("avg_pool2d", input=input)
        ctx.params = (kernel_size, stride, padding, ceil_mode, count_include_pad,
                      divisor_override)
        ctx.input_shape = _shape(input)
        ctx.algorithm = algorithm
        return _tensor(ops.avg_pool2d(x, *ctx.params, algorithm=algorithm))

    @staticmethod
    @_differentiable_once
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        grad_input = ops.avg_pool2d_backward(_array(grad_output), ctx.input_shape, *ctx.params,
                                             algorithm=ctx.algorithm)
        return (_tensor(grad_input), None, None, None, None, None, None, None)


class MaxUnpool2dFunction(torch.autograd.Function):
    """:func:`fastconv.max_unpool2d` with :func:`fastconv.max_unpool2d_backward`.

    ``MaxUnpool2dFunction.apply(input, indices, kernel_size, stride, padding,
    output_size, algorithm)``; differentiable in ``input`` only.
    """

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, indices: torch.Tensor, kernel_size: Any,
                stride: Any, padding: Any, output_size: Any, algorithm: str) -> torch.Tensor:
        (x,) = _float_arrays("max_unpool2d", input=input)
        where = _index_array("max_unpool2d", indices, input)
        if output_size is not None:
            output_size = [int(n) for n in output_size]
        ctx.save_for_backward(indices)
        ctx.algorithm = algorithm
        return _tensor(ops.max_unpool2d(x, where, kernel_size, stride, padding, output_size,
                                        algorithm=algorithm))

    @staticmethod
    @_differentiable_once
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        (indices,) = ctx.saved_tensors
        grad_input = ops.max_unpool2d_backward(_array(grad_output), _array(indices),
                                               algorithm=ctx.algorithm)
        return (_tensor(grad_input), None, None, None, None, None, None)


class RepeatUnpool2dFunction(torch.autograd.Function):
    """:func:`fastconv.repeat_unpool2d` with :func:`fastconv.repeat_unpool2d_backward`.

    ``RepeatUnpool2dFunction.apply(input, scale, algorithm)``.
    """

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, scale: Any, algorithm: str) -> torch.Tensor:
        (x,) = _float_arrays("repeat_unpool2d", input=input)
        ctx.scale = scale
        ctx.algorithm = algorithm
        return _tensor(ops.repeat_unpool2d(x, scale, algorithm=algorithm))

    @staticmethod
    @_differentiable_once
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        grad_input = ops.repeat_unpool2d_backward(_array(grad_output), ctx.scale,
                                                  algorithm=ctx.algorithm)
        return (_tensor(grad_input), None, None)


# --- functionals ---------------------------------------------------------------------------


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: Any = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    algorithm: str = "auto",
) -> torch.Tensor:
    """``torch.nn.functional.conv2d`` computed by :func:`fastconv.conv2d`, differentiable.

    Shapes: ``input`` ``(N, C, H, W)`` or ``(C, H, W)``, ``weight``
    ``(K, C/groups, R, S)``, ``bias`` ``(K,)`` or None; output
    ``(N, K, H_out, W_out)`` with
    ``H_out = floor((H + pad_top + pad_bottom - dilation_h * (R - 1) - 1) / stride_h) + 1``.
    ``padding`` takes every form :func:`fastconv.conv2d` accepts: an int, a
    pair, ``((top, bottom), (left, right))``, ``"valid"`` or ``"same"`` (also
    with stride > 1, unlike PyTorch). ``algorithm`` picks the kernel of the
    forward and of both weight and input gradients.

    >>> x = torch.ones(1, 1, 4, 4)
    >>> conv2d(x, torch.ones(2, 1, 3, 3), torch.tensor([0.0, 1.0]), padding=1)[0, 1]
    tensor([[ 5.,  7.,  7.,  5.],
            [ 7., 10., 10.,  7.],
            [ 7., 10., 10.,  7.],
            [ 5.,  7.,  7.,  5.]])
    """
    return Conv2dFunction.apply(input, weight, bias, stride, padding, dilation, groups,
                                algorithm)


def conv_transpose2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    output_padding: int | tuple[int, int] = 0,
    groups: int = 1,
    dilation: int | tuple[int, int] = 1,
    *,
    algorithm: str = "auto",
) -> torch.Tensor:
    """``torch.nn.functional.conv_transpose2d`` computed by :func:`fastconv.conv_transpose2d`.

    Shapes: ``input`` ``(N, C_in, H, W)`` or ``(C_in, H, W)``, ``weight``
    ``(C_in, C_out/groups, R, S)``, ``bias`` ``(C_out,)`` or None; output
    ``(N, C_out, H_out, W_out)`` with ``H_out = (H - 1) * stride_h - 2 * pad_h
    + dilation_h * (R - 1) + output_padding_h + 1``.

    >>> conv_transpose2d(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2), stride=2).shape
    torch.Size([1, 1, 4, 4])
    """
    return ConvTranspose2dFunction.apply(input, weight, bias, stride, padding, output_padding,
                                         groups, dilation, algorithm)


def max_pool2d(
    input: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
    *,
    algorithm: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``torch.nn.functional.max_pool2d`` computed by :func:`fastconv.max_pool2d`.

    Shapes: ``input`` ``(N, C, H, W)`` or ``(C, H, W)``; output (and int64
    indices, flat positions ``h * W + w`` as PyTorch's) ``(N, C, H_out, W_out)``
    with ``H_out = floor((H + 2 * pad_h - dilation_h * (kernel_h - 1) - 1) / stride_h) + 1``
    (``ceil`` with ``ceil_mode``). ``stride=None`` means ``kernel_size``.
    The indices the backward needs are computed only where a backward can follow
    (grad mode on and ``input`` requiring grad) or ``return_indices`` asks for them.

    >>> x = torch.tensor([[[1.0, 0, 1, 0], [2, 1, 3, 2], [1, 2, 0, 4], [2, 2, 3, 0]]])
    >>> max_pool2d(x, 2, return_indices=True)
    (tensor([[[2., 3.],
             [2., 4.]]]), tensor([[[ 4,  6],
             [ 9, 11]]]))
    """
    needs_indices = return_indices or (torch.is_grad_enabled()
                                       and isinstance(input, torch.Tensor)
                                       and input.requires_grad)
    if not needs_indices:
        # no graph will be built (the Function's forward runs under no_grad and cannot
        # tell), so the plain forward, without indices
        (x,) = _float_arrays("max_pool2d", input=input)
        return _tensor(ops.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode,
                                      algorithm=algorithm))
    return MaxPool2dFunction.apply(input, kernel_size, stride, padding, dilation, ceil_mode,
                                   return_indices, algorithm)


def avg_pool2d(
    input: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    *,
    algorithm: str = "auto",
) -> torch.Tensor:
    """``torch.nn.functional.avg_pool2d`` computed by :func:`fastconv.avg_pool2d`.

    Shapes: ``input`` ``(N, C, H, W)`` or ``(C, H, W)``; output
    ``(N, C, H_out, W_out)`` with ``H_out = floor((H + 2 * pad_h - kernel_h) / stride_h) + 1``
    (``ceil`` with ``ceil_mode``); the divisor follows PyTorch's rules (see
    :func:`fastconv.avg_pool2d`).

    >>> avg_pool2d(torch.arange(16.0).reshape(1, 4, 4), 2)
    tensor([[[ 2.5000,  4.5000],
             [10.5000, 12.5000]]])
    """
    return AvgPool2dFunction.apply(input, kernel_size, stride, padding, ceil_mode,
                                   count_include_pad, divisor_override, algorithm)


def max_unpool2d(
    input: torch.Tensor,
    indices: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    output_size: Sequence[int] | None = None,
    *,
    algorithm: str = "auto",
) -> torch.Tensor:
    """``torch.nn.functional.max_unpool2d`` computed by :func:`fastconv.max_unpool2d`.

    Puts each value back at its index, zeros elsewhere. Shapes: ``input`` and
    ``indices`` ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, C, H_out, W_out)``
    with ``H_out = (H - 1) * stride_h - 2 * pad_h + kernel_h`` unless
    ``output_size`` (``(H_out, W_out)`` or a full shape) says otherwise.

    >>> y, indices = max_pool2d(torch.tensor([[[1.0, 2], [4, 3]]]), 2, return_indices=True)
    >>> max_unpool2d(y, indices, 2)
    tensor([[[0., 0.],
             [4., 0.]]])
    """
    return MaxUnpool2dFunction.apply(input, indices, kernel_size, stride, padding, output_size,
                                     algorithm)


def repeat_unpool2d(
    input: torch.Tensor,
    scale: int | tuple[int, int],
    *,
    algorithm: str = "auto",
) -> torch.Tensor:
    """Each value copied into a ``scale_h x scale_w`` block, by :func:`fastconv.repeat_unpool2d`:
    ``torch.nn.functional.interpolate(input, scale_factor=scale, mode="nearest")``
    for an integer ``scale``.

    Shapes: ``input`` ``(N, C, H, W)`` or ``(C, H, W)``; output
    ``(N, C, H * scale_h, W * scale_w)``.

    >>> repeat_unpool2d(torch.tensor([[[1.0, 2.0]]]), (2, 1))
    tensor([[[1., 2.],
             [1., 2.]]])
    """
    return RepeatUnpool2dFunction.apply(input, scale, algorithm)


# --- modules -------------------------------------------------------------------------------


def _check_module_args(cls: str, padding_mode: str = "zeros", dtype: Any = None) -> None:
    if padding_mode != "zeros":
        raise ValueError(
            f"fastconv.torch.{cls} supports padding_mode='zeros' only, got {padding_mode!r}; "
            f"pad the input first (torch.nn.functional.pad(x, pads, mode=...)) and use padding=0"
        )
    if dtype is not None and dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"fastconv.torch.{cls}: dtype={dtype} is not supported; fastconv computes in "
            f"torch.float32 or torch.float64 only"
        )


class _WithAlgorithm(torch.nn.Module):
    """Shows a non-default ``algorithm`` in the module's repr."""

    algorithm: str

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.algorithm != "auto":
            text += f", algorithm={self.algorithm!r}"
        return text


class Conv2d(_WithAlgorithm, torch.nn.Conv2d):
    """``torch.nn.Conv2d`` computed by :func:`conv2d`.

    Same constructor, parameters ``weight`` ``(out_channels, in_channels/groups,
    kernel_h, kernel_w)`` and ``bias`` ``(out_channels,)``, initialisation and
    ``state_dict`` as ``torch.nn.Conv2d`` (a subclass of it that replaces
    ``forward``), plus ``algorithm`` (see :func:`fastconv.conv2d`).
    ``padding_mode`` must be ``"zeros"``.

    Shape: input ``(N, C_in, H, W)`` or ``(C_in, H, W)``; output
    ``(N, C_out, H_out, W_out)`` as in :func:`conv2d`.

    >>> conv = Conv2d(3, 8, 3, padding=1, algorithm="im2col")
    >>> conv
    Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), algorithm='im2col')
    >>> conv(torch.randn(2, 3, 5, 5)).shape
    torch.Size([2, 8, 5, 5])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        algorithm: str = "auto",
    ) -> None:
        _check_module_args("Conv2d", padding_mode, dtype)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        self.algorithm = algorithm

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        _check_module_args("Conv2d", self.padding_mode)
        return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                      self.groups, algorithm=self.algorithm)


class ConvTranspose2d(_WithAlgorithm, torch.nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` computed by :func:`conv_transpose2d`.

    Same constructor, parameters ``weight`` ``(in_channels, out_channels/groups,
    kernel_h, kernel_w)`` and ``bias`` ``(out_channels,)``, initialisation and
    ``state_dict`` as ``torch.nn.ConvTranspose2d``, plus ``algorithm``.
    ``forward(input, output_size=None)``: ``output_size`` (``(H_out, W_out)`` or
    a full shape) picks the output padding as in PyTorch.

    >>> up = ConvTranspose2d(4, 2, 3, stride=2, padding=1)
    >>> x = torch.randn(1, 4, 5, 5)
    >>> up(x).shape, up(x, output_size=(10, 10)).shape
    (torch.Size([1, 2, 9, 9]), torch.Size([1, 2, 10, 10]))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        output_padding: int | tuple[int, int] = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: int | tuple[int, int] = 1,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        algorithm: str = "auto",
    ) -> None:
        _check_module_args("ConvTranspose2d", padding_mode, dtype)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding,
                         output_padding, groups, bias, dilation, padding_mode, device, dtype)
        self.algorithm = algorithm

    def forward(self, input: torch.Tensor,
                output_size: Sequence[int] | None = None) -> torch.Tensor:
        _check_module_args("ConvTranspose2d", self.padding_mode)
        # torch's own rule (and messages) for turning output_size into output_padding
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 2, self.dilation)
        return conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                tuple(output_padding), self.groups, self.dilation,
                                algorithm=self.algorithm)


class MaxPool2d(_WithAlgorithm, torch.nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` computed by :func:`max_pool2d`: same constructor
    (``kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
    ceil_mode=False``) plus ``algorithm``.

    >>> pool = MaxPool2d(2, return_indices=True)
    >>> y, indices = pool(torch.randn(1, 3, 4, 4))
    >>> y.shape, indices.dtype
    (torch.Size([1, 3, 2, 2]), torch.int64)
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
        *,
        algorithm: str = "auto",
    ) -> None:
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)
        self.algorithm = algorithm

    def forward(self, input: torch.Tensor) -> Any:
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                          self.ceil_mode, self.return_indices, algorithm=self.algorithm)


class AvgPool2d(_WithAlgorithm, torch.nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` computed by :func:`avg_pool2d`: same constructor
    (``kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
    divisor_override=None``) plus ``algorithm``.

    >>> AvgPool2d(3, stride=2, padding=1, count_include_pad=False)(torch.ones(1, 1, 4, 4))
    tensor([[[[1., 1.],
              [1., 1.]]]])
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
        *,
        algorithm: str = "auto",
    ) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad,
                         divisor_override)
        self.algorithm = algorithm

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                          self.count_include_pad, self.divisor_override,
                          algorithm=self.algorithm)


class MaxUnpool2d(_WithAlgorithm, torch.nn.MaxUnpool2d):
    """``torch.nn.MaxUnpool2d`` computed by :func:`max_unpool2d`: same constructor
    (``kernel_size, stride=None, padding=0``) plus ``algorithm``;
    ``forward(input, indices, output_size=None)``.

    >>> pool, unpool = MaxPool2d(2, return_indices=True), MaxUnpool2d(2)
    >>> x = torch.randn(1, 1, 5, 5)
    >>> y, indices = pool(x)
    >>> unpool(y, indices, output_size=x.shape).shape  # the default would be 4 x 4
    torch.Size([1, 1, 5, 5])
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        *,
        algorithm: str = "auto",
    ) -> None:
        super().__init__(kernel_size, stride, padding)
        self.algorithm = algorithm

    def forward(self, input: torch.Tensor, indices: torch.Tensor,
                output_size: Sequence[int] | None = None) -> torch.Tensor:
        return max_unpool2d(input, indices, self.kernel_size, self.stride, self.padding,
                            output_size, algorithm=self.algorithm)


class RepeatUnpool2d(_WithAlgorithm):
    """Unpooling by repetition, :func:`repeat_unpool2d`: the same as
    ``torch.nn.Upsample(scale_factor=scale, mode="nearest")`` for an integer ``scale``
    (an int or ``(scale_h, scale_w)``).

    >>> RepeatUnpool2d(2)(torch.ones(1, 1, 2, 3)).shape
    torch.Size([1, 1, 4, 6])
    """

    def __init__(self, scale: int | tuple[int, int], *, algorithm: str = "auto") -> None:
        super().__init__()
        self.scale = scale
        self.algorithm = algorithm

    def extra_repr(self) -> str:
        return f"scale={self.scale!r}" + super().extra_repr()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return repeat_unpool2d(input, self.scale, algorithm=self.algorithm)
