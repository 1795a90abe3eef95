"""PyTorch bridge: fastconv's ops as PyTorch custom operators, functionals and ``nn.Module``s.

``import fastconv.torch`` (``import fastconv`` alone never imports torch) gives
three layers over the same kernels:

- custom operators in the ``fastconv`` namespace, registered with
  ``torch.library.custom_op``: ``torch.ops.fastconv.conv2d``,
  ``conv_transpose2d``, ``max_pool2d``, ``max_pool2d_with_indices``,
  ``avg_pool2d``, ``max_unpool2d``, ``repeat_unpool2d`` and one ``*_backward``
  op each. Each has a fake (shape) function and the forward ops an autograd
  formula that calls the backward op, so ``torch.compile(model, fullgraph=True)``
  traces a model built from this module's layers, forward and backward,
  without graph breaks. The ops take normalised arguments (pairs of ints,
  explicit pads ``[top, bottom, left, right]``); the functionals below
  normalise every form fastconv accepts. The backward ops have
  no derivative: a backward with ``create_graph=True`` whose gradients would
  need a second derivative (a gradient penalty through a convolution whose
  input and weight both require grad, or any loss not linear in the output)
  raises a RuntimeError rather than return a detached gradient.
- functionals with ``torch.nn.functional``'s signatures plus an
  ``algorithm=`` keyword: :func:`conv2d`, :func:`conv_transpose2d`,
  :func:`max_pool2d`, :func:`avg_pool2d`, :func:`max_unpool2d`, and
  :func:`repeat_unpool2d` (nearest-neighbour upsampling by an integer factor).
  They normalise every argument form fastconv accepts, then run the op by one
  of two routes to the same implementation. In plain eager mode they call the
  implementation directly: through a ``torch.autograd.Function`` that uses the
  op's autograd formula when grad mode is on and an input requires grad, else
  with no autograd at all, skipping the dispatcher's Python layers around a
  custom op. Anything that traces, transforms or intercepts the call gets the
  custom op: ``torch.compile`` and ``torch.export``, ``torch.jit.trace``,
  ``torch.func`` transforms, a TorchDispatchMode (``FakeTensorMode``,
  ``make_fx``) or TorchFunctionMode, and tensor subclasses other than
  ``Parameter``. Both routes give bitwise the same results and gradients, the
  same errors, autocast casts and thread counts.
  ``Conv2dFunction.apply(...)`` and its siblings remain as positional
  spellings of the functionals.
- modules :class:`Conv2d`, :class:`ConvTranspose2d`, :class:`MaxPool2d`,
  :class:`AvgPool2d`, :class:`MaxUnpool2d` subclass their ``torch.nn``
  namesakes and replace only ``forward``: the constructor arguments,
  parameters (``weight``, ``bias``), initialisation and ``state_dict`` are
  torch's, so the two load each other's weights. :class:`Conv2d` also takes
  the padding forms torch refuses (``"same"`` with stride > 1, asymmetric
  ``((top, bottom), (left, right))``). :class:`RepeatUnpool2d` has no
  ``torch.nn`` namesake. Each takes a keyword-only ``algorithm=``.

Dtypes: tensors must be float32 or float64, all of one dtype (others are a
TypeError naming the dtype). Under ``torch.autocast`` every op casts its
float16/bfloat16 inputs to float32, computes in float32 and returns float32,
as autocast's float32 ops and ``custom_fwd(cast_inputs=torch.float32)`` do.
Tensors live on one device: CPU tensors reach the kernels as numpy views (no
copy; any memory layout) and results come back as CPU tensors; CUDA tensors
go to fastconv's CUDA backend as they are, and its results are CUDA tensors.

Threads: on the CPU, a call runs fastconv's Numba kernels on
``min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)`` threads,
setting Numba's (per-thread) count for the call only and restoring it after;
PyTorch's thread settings are never changed. Importing this module starts
Numba's OpenMP layer on PyTorch's own OpenMP runtime where it can
(:func:`fastconv.cpu.threads.share_torch_pool`), so the two libraries share one
pool of threads instead of spinning against each other.

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

import operator
from collections.abc import Sequence
from typing import Any, Literal, overload

import numba  # loaded by fastconv.cpu anyway, which this module imports
import torch  # the real torch: absolute imports never find this module

from . import functional as ops
from . import plans, shapes
from ._checks import divisor as _divisor
from ._checks import flag as _flag
from ._checks import positive_int
from .cpu import threads as _threads

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


def _check_tensor(op: str, name: str, tensor: object) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.layout != torch.strided:
        raise TypeError(f"{op}: {name} must be a dense (strided) tensor, got {tensor.layout}")
    if not (tensor.is_cpu or tensor.is_cuda):
        raise ValueError(
            f"{op}: {name} is on {tensor.device}; fastconv runs on CPU and CUDA tensors only"
        )
    return tensor


def _check_tensors(op: str, **tensors: Any) -> None:
    """What the functionals check before calling an op: each argument is a dense CPU or
    CUDA tensor (or None), all on one device."""
    first_name, first = None, None
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        _check_tensor(op, name, tensor)
        if first is None:
            first_name, first = name, tensor
        elif tensor.device != first.device:
            raise ValueError(
                f"{op}: {name} is on {tensor.device} but {first_name} is on {first.device}; "
                f"move them to one device"
            )


def _check_dtypes(op: str, **tensors: torch.Tensor | None) -> None:
    """What the ops (and their fake functions) check, after autocast has cast: float32 or
    float64, all of one dtype."""
    first_name, first = None, None
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if tensor.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"{op}: {name} has dtype {tensor.dtype}, but fastconv computes in torch.float32 "
                f"or torch.float64 only; convert it first, e.g. {name}.float() (under "
                f"torch.autocast float16 and bfloat16 inputs are cast to float32)"
            )
        if first is None:
            first_name, first = name, tensor
        elif tensor.dtype != first.dtype:
            raise TypeError(
                f"{op}: {name} has dtype {tensor.dtype} but {first_name} has dtype "
                f"{first.dtype}; mixed dtypes are not supported, cast one of them"
            )


def _check_indices(op: str, indices: object, input: torch.Tensor) -> None:
    """max_unpool2d's ``indices``: an integer tensor on ``input``'s device."""
    tensor = _check_tensor(op, "indices", indices)
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(
            f"{op}: indices must be an integer tensor (torch.int64, as "
            f"max_pool2d(..., return_indices=True) returns), got dtype {tensor.dtype}"
        )
    if isinstance(input, torch.Tensor) and tensor.device != input.device:
        raise ValueError(
            f"{op}: indices is on {tensor.device} but input is on {input.device}; "
            f"move them to one device"
        )


def _array(tensor: torch.Tensor | None) -> Any:
    """A tensor as fastconv's ops take it: on the CPU a numpy view of the same memory, on
    a GPU the (detached) tensor itself, read through ``__cuda_array_interface__``."""
    if tensor is None:
        return None
    if tensor.is_cuda:  # pragma: no cover - runs on a GPU machine only
        return tensor.detach()
    # detach().resolve_conj().resolve_neg().numpy() in one call: numpy cannot express
    # torch's lazy negation bit, and resolving it is free when unset (no copy)
    return tensor.numpy(force=True)


def _tensor(array: Any) -> torch.Tensor:
    """A result of fastconv's ops as a tensor: a numpy array is wrapped without a copy
    (copied only where ``torch.from_numpy`` cannot take it: read-only or negative
    strides); the CUDA backend already returns tensors."""
    if isinstance(array, torch.Tensor):  # pragma: no cover - the CUDA backend, on a GPU
        return array
    flags = array.flags
    if flags.c_contiguous and flags.writeable:  # the ops' own results
        return torch.from_numpy(array)
    if not flags.writeable or any(step < 0 for step in array.strides):
        array = array.copy()
    return torch.from_numpy(array)


def _placeholder(like: torch.Tensor) -> torch.Tensor:
    """A gradient the backward ops were not asked for (custom ops cannot return None)."""
    return like.new_empty(0)


# --- Numba's threads follow PyTorch's ----------------------------------------------------

# Before Numba's thread pool starts: run fastconv's parallel loops on PyTorch's OpenMP
# pool where it can (fastconv.cpu.threads.share_torch_pool), so the two libraries do not
# keep two pools spinning on the same cores.
_threads.share_torch_pool()


class _TorchThreads:
    """Runs fastconv's CPU kernels on ``min(torch.get_num_threads(), NUMBA_NUM_THREADS)``
    Numba threads: sets Numba's count (a per-thread setting) only when it differs, and
    restores it on exit. PyTorch's settings are only read."""

    __slots__ = ("previous",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.previous = None
        if tensor.is_cuda:  # pragma: no cover - GPU kernels do not use Numba's CPU threads
            return
        wanted = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
        current = plans.thread_count()  # numba.get_num_threads() without its lock
        if wanted != current:
            numba.set_num_threads(wanted)
            self.previous = current

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            numba.set_num_threads(self.previous)


# --- one implementation per op, two routes to it -------------------------------------------
#
# Each op below is one implementation function (``_conv2d_impl``, ...) on normalised
# arguments, registered as a custom op, plus an autograd formula (a setup function and a
# backward function) shared by the custom op and by an autograd.Function of the same
# implementation. The functionals call an ``_Op``, which picks the route per call: the custom
# op wherever PyTorch traces, transforms or intercepts the call, else (plain eager mode) the
# implementation itself, through the autograd.Function only when a graph is recorded. Plain
# eager skips the dispatcher's Python layers around a custom op (autograd redispatch, alias
# checks, argument binding: some 20-40 us per op call and as much again for its backward on
# a small layer); the results, gradients and errors are the same.

_PLAIN_TENSOR_TYPES = frozenset((torch.Tensor, torch.nn.Parameter))
_AUTOCAST_DEVICES = tuple(device for device in ("cpu", "cuda")
                          if torch.amp.is_autocast_available(device))


def _plain_eager(tensors: Sequence[Any]) -> bool:
    """Whether a call with these tensor arguments may run the implementation directly.

    Not plain eager, so through the custom op, whose registrations those systems use:
    ``torch.compile`` and ``torch.export`` (:func:`torch.compiler.is_compiling`, which
    Dynamo folds to True, so that it traces none of the other checks), ``torch.jit.trace``,
    ``torch.func`` transforms, an active TorchDispatchMode (``FakeTensorMode``, ``make_fx``'s
    proxy mode, a user's mode) or TorchFunctionMode (pre-dispatch tracing,
    ``with torch.device(...)``), and a tensor of another type than ``torch.Tensor`` or
    ``torch.nn.Parameter`` (a FakeTensor outside its mode, a FunctionalTensor, any subclass).
    """
    if (torch.compiler.is_compiling() or torch._C._is_torch_function_mode_enabled()
            or torch._C._len_torch_dispatch_stack()
            or torch._C._are_functorch_transforms_active()
            or torch._C._get_tracing_state() is not None):
        return False
    for tensor in tensors:
        if tensor is not None and type(tensor) not in _PLAIN_TENSOR_TYPES:
            return False
    return True


def _autocast_cast(args: tuple, count: int, device: str) -> tuple:
    """What the ops' autocast registration (``register_autocast(device, torch.float32)``) does
    to the first ``count`` arguments, the tensors: a floating tensor on ``device`` other
    than float64 becomes float32."""
    cast = [tensor.to(torch.float32)
            if (tensor is not None and tensor.is_floating_point()
                and tensor.dtype != torch.float64 and tensor.device.type == device)
            else tensor for tensor in args[:count]]
    return (*cast, *args[count:])


class _Op:
    """One fastconv op as the functionals call it, with the op's arguments (tensors first).

    ``op`` is the custom op; ``impl`` the implementation it registers; ``function`` an
    autograd.Function running ``impl`` with the op's autograd formula (None for the backward
    ops, which have none); ``tensors`` the number of leading tensor arguments. In plain
    eager mode (:func:`_plain_eager`) a call casts for autocast as the op's registration
    does, then runs ``function`` when grad mode is on and a tensor requires grad, else
    ``impl`` itself; otherwise it calls ``op``.
    """

    __slots__ = ("op", "impl", "function", "tensors", "apply")

    def __init__(self, op: Any, impl: Any, function: Any, tensors: int) -> None:
        self.op, self.impl, self.function, self.tensors = op, impl, function, tensors
        # autograd's own apply, without torch.autograd.Function.apply's Python layer: that
        # layer binds default arguments (none here) and unwraps functorch's dead wrappers,
        # and in plain eager mode no functorch transform is active (1.5 us a call)
        self.apply = (None if function is None
                      else super(torch.autograd.Function, function).apply)  # type: ignore[misc]

    def __call__(self, *args: Any) -> Any:
        count = self.tensors
        if not _plain_eager(args[:count]):
            return self.op(*args)
        device = "cuda" if args[0].is_cuda else "cpu"
        if device in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device):
            args = _autocast_cast(args, count, device)
        if (self.apply is not None and torch.is_grad_enabled()
                and torch._C._any_requires_grad(*args[:count])):
            return self.apply(*args)
        return self.impl(*args)


def _op(name: str, impl: Any, schema: str, tensors: int, setup_context: Any = None,
        backward: Any = None) -> _Op:
    """Registers ``impl`` as the custom op ``fastconv::<name>`` (with autocast casting to
    float32 and, given ``backward``, an autograd formula) and returns its :class:`_Op`,
    whose autograd.Function ``Fastconv<Name>`` uses the same formula. The fake (shape)
    function is registered by the caller on ``_Op.op``."""
    op = torch.library.custom_op(f"fastconv::{name}", impl, mutates_args=(), schema=schema)
    for device_type in _AUTOCAST_DEVICES:
        op.register_autocast(device_type, torch.float32)
    function = None
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)

        def forward(ctx: Any, *args: Any) -> Any:
            output = impl(*args)
            setup_context(ctx, args, output)
            return output

        title = "".join(part[:1].upper() + part[1:] for part in name.split("_"))
        function = type(f"Fastconv{title}", (torch.autograd.Function,), {
            "__doc__": f"fastconv::{name} in plain eager mode: its implementation and its "
                       f"autograd formula, without the dispatcher.",
            "__module__": __name__,
            "forward": staticmethod(forward),
            "backward": staticmethod(backward),
        })
    return _Op(op, impl, function, tensors)


def _pads(padding: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """An op's ``[top, bottom, left, right]`` as fastconv's ``((top, bottom), (left, right))``."""
    top, bottom, left, right = padding
    return (top, bottom), (left, right)


def _spatial(op: str, tensor: torch.Tensor, name: str = "input") -> None:
    if tensor.dim() not in (3, 4):
        raise ValueError(f"{op}: {name} must be 4-D (N, C, H, W) or 3-D (C, H, W), got shape "
                         f"{tuple(tensor.shape)}")


def _out_size(op: str, size: Sequence[Any]) -> list[Any]:
    if min(size) <= 0:
        raise ValueError(f"{op}: the output would have size {tuple(size)}: the window is "
                         f"larger than the padded input")
    return list(size)


def _refuse_double_backward(op: str, ctx: Any, grads: Sequence[Any]) -> None:
    """A backward run with grad mode on (``create_graph=True``) must raise when its result
    depends on a tensor that requires grad, since the backward ops have no derivative:

    - a ``grad_output`` that requires grad (the loss is not linear in the output);
    - two saved tensors that require grad: the convolutions save ``input`` and ``weight``,
      and their backward is bilinear (``grad_input`` from ``grad_output`` and ``weight``,
      ``grad_weight`` from ``grad_output`` and ``input``). With a loss linear in the output
      (``grad_output`` a constant, as in a WGAN-GP critic) the gradients would silently
      be detached from them. (With only one of the two requiring grad, the one gradient
      computed depends on neither and is exact.)

    The pooling ops save no float tensors, so for them only the first case applies.
    """
    incoming = any(isinstance(grad, torch.Tensor) and grad.requires_grad for grad in grads)
    saved = sum(tensor.requires_grad for tensor in ctx.saved_tensors)
    if incoming or saved > 1:
        raise RuntimeError(
            f"fastconv.torch: double backward (create_graph=True) is not supported; "
            f"fastconv::{op} is differentiable once. Use torch.nn.functional's op where a "
            f"second derivative is needed (e.g. a gradient penalty), or call backward "
            f"without create_graph=True")


def _backward(op: str, ctx: Any, grads: Sequence[Any], run: Any) -> Any:
    """``run()``, the backward op's call, with no graph recorded for it (see
    :func:`_refuse_double_backward` for when that would be wrong)."""
    if not torch.is_grad_enabled():
        return run()
    _refuse_double_backward(op, ctx, grads)
    with torch.no_grad():
        return run()


_MASK = "bool[3] output_mask"

# conv2d ---------------------------------------------------------------------------------

_CONV = "int[2] stride, SymInt[4] padding, int[2] dilation, int groups"


def _conv2d_impl(input, weight, bias, stride, padding, dilation, groups, algorithm):
    _check_dtypes("conv2d", input=input, weight=weight, bias=bias)
    x, w, b = _array(input), _array(weight), _array(bias)
    with _TorchThreads(input):
        return _tensor(ops.conv2d(x, w, b, stride, _pads(padding), dilation, groups,
                                  algorithm=algorithm))


def _conv2d_backward_impl(grad_output, input, weight, stride, padding, dilation, groups,
                          output_mask, algorithm):
    _check_dtypes("conv2d_backward", grad_output=grad_output, input=input, weight=weight)
    dy, x, w = _array(grad_output), _array(input), _array(weight)
    with _TorchThreads(input):
        grads = ops.conv2d_backward(
            dy, x, w, stride, _pads(padding), dilation, groups,
            needs_input_grad=output_mask[0], needs_weight_grad=output_mask[1],
            needs_bias_grad=output_mask[2], algorithm=algorithm)
    return tuple(_placeholder(input) if g is None else _tensor(g) for g in grads)


def _conv_setup(ctx, inputs, output):
    input, weight, _bias, *params, algorithm = inputs
    ctx.save_for_backward(input, weight)
    ctx.params = params
    ctx.algorithm = algorithm


def _conv2d_grads(ctx, grad_output):
    input, weight = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:3])
    grads = _backward("conv2d", ctx, (grad_output,), lambda: _CONV2D_BACKWARD(
        grad_output, input, weight, *ctx.params, mask, ctx.algorithm))
    return (*(g if needed else None for g, needed in zip(grads, mask, strict=True)),
            None, None, None, None, None)


_CONV2D = _op("conv2d", _conv2d_impl,
              f"(Tensor input, Tensor weight, Tensor? bias, {_CONV}, str algorithm) -> Tensor",
              3, _conv_setup, _conv2d_grads)
_CONV2D_BACKWARD = _op(
    "conv2d_backward", _conv2d_backward_impl,
    f"(Tensor grad_output, Tensor input, Tensor weight, {_CONV}, {_MASK}, str algorithm) "
    f"-> (Tensor, Tensor, Tensor)", 3)


@_CONV2D.op.register_fake
def _(input, weight, bias, stride, padding, dilation, groups, algorithm):
    _check_dtypes("conv2d", input=input, weight=weight, bias=bias)
    _spatial("conv2d", input)
    size = [shapes.output_length(input.shape[-2 + a], weight.shape[2 + a], stride[a],
                                 (padding[2 * a], padding[2 * a + 1]), dilation[a])
            for a in range(2)]
    return input.new_empty((*input.shape[:-3], weight.shape[0], *_out_size("conv2d", size)))


@_CONV2D_BACKWARD.op.register_fake
def _(grad_output, input, weight, stride, padding, dilation, groups, output_mask, algorithm):
    return _conv_grads_like(input, weight, weight.shape[0], output_mask)


def _conv_grads_like(input, weight, channels, output_mask):
    shapes_ = (input.shape, weight.shape, (channels,))
    return tuple(input.new_empty(shape) if needed else _placeholder(input)
                 for shape, needed in zip(shapes_, output_mask, strict=True))


# conv_transpose2d -----------------------------------------------------------------------

_TRANSPOSE = ("int[2] stride, SymInt[4] padding, int[2] output_padding, int groups, "
              "int[2] dilation")


def _conv_transpose2d_impl(input, weight, bias, stride, padding, output_padding, groups,
                           dilation, algorithm):
    _check_dtypes("conv_transpose2d", input=input, weight=weight, bias=bias)
    x, w, b = _array(input), _array(weight), _array(bias)
    with _TorchThreads(input):
        return _tensor(ops.conv_transpose2d(x, w, b, stride, _pads(padding), output_padding,
                                            groups, dilation, algorithm=algorithm))


def _conv_transpose2d_backward_impl(grad_output, input, weight, stride, padding,
                                    output_padding, groups, dilation, output_mask, algorithm):
    _check_dtypes("conv_transpose2d_backward", grad_output=grad_output, input=input,
                  weight=weight)
    dy, x, w = _array(grad_output), _array(input), _array(weight)
    with _TorchThreads(input):
        grads = ops.conv_transpose2d_backward(
            dy, x, w, stride, _pads(padding), output_padding, groups, dilation,
            needs_input_grad=output_mask[0], needs_weight_grad=output_mask[1],
            needs_bias_grad=output_mask[2], algorithm=algorithm)
    return tuple(_placeholder(input) if g is None else _tensor(g) for g in grads)


def _conv_transpose2d_grads(ctx, grad_output):
    input, weight = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:3])
    grads = _backward("conv_transpose2d", ctx, (grad_output,),
                      lambda: _CONV_TRANSPOSE2D_BACKWARD(grad_output, input, weight,
                                                         *ctx.params, mask, ctx.algorithm))
    return (*(g if needed else None for g, needed in zip(grads, mask, strict=True)),
            None, None, None, None, None, None)


_CONV_TRANSPOSE2D = _op(
    "conv_transpose2d", _conv_transpose2d_impl,
    f"(Tensor input, Tensor weight, Tensor? bias, {_TRANSPOSE}, str algorithm) -> Tensor",
    3, _conv_setup, _conv_transpose2d_grads)
_CONV_TRANSPOSE2D_BACKWARD = _op(
    "conv_transpose2d_backward", _conv_transpose2d_backward_impl,
    f"(Tensor grad_output, Tensor input, Tensor weight, {_TRANSPOSE}, {_MASK}, "
    f"str algorithm) -> (Tensor, Tensor, Tensor)", 3)


@_CONV_TRANSPOSE2D.op.register_fake
def _(input, weight, bias, stride, padding, output_padding, groups, dilation, algorithm):
    _check_dtypes("conv_transpose2d", input=input, weight=weight, bias=bias)
    _spatial("conv_transpose2d", input)
    size = [shapes.transposed_output_length(
        input.shape[-2 + a], weight.shape[2 + a], stride[a],
        (padding[2 * a], padding[2 * a + 1]), dilation[a], output_padding[a]) for a in range(2)]
    return input.new_empty((*input.shape[:-3], weight.shape[1] * groups,
                            *_out_size("conv_transpose2d", size)))


@_CONV_TRANSPOSE2D_BACKWARD.op.register_fake
def _(grad_output, input, weight, stride, padding, output_padding, groups, dilation,
      output_mask, algorithm):
    return _conv_grads_like(input, weight, weight.shape[1] * groups, output_mask)


# max_pool2d -----------------------------------------------------------------------------

_MAX_POOL = ("int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
             "bool ceil_mode, str algorithm")


def _pool_size(input, kernel_size, stride, padding, dilation, ceil_mode):
    _spatial("max_pool2d", input)
    size = [shapes.output_length(input.shape[-2 + a], kernel_size[a], stride[a],
                                 (padding[a], padding[a]), dilation[a], ceil_mode)
            for a in range(2)]
    return (*input.shape[:-2], *_out_size("pooling", size))


def _max_pool2d_impl(input, kernel_size, stride, padding, dilation, ceil_mode, algorithm):
    _check_dtypes("max_pool2d", input=input)
    with _TorchThreads(input):
        return _tensor(ops.max_pool2d(_array(input), kernel_size, stride, padding, dilation,
                                      ceil_mode, algorithm=algorithm))


def _max_pool2d_with_indices_impl(input, kernel_size, stride, padding, dilation, ceil_mode,
                                  algorithm):
    _check_dtypes("max_pool2d", input=input)
    with _TorchThreads(input):
        out, indices = ops.max_pool2d(_array(input), kernel_size, stride, padding, dilation,
                                      ceil_mode, return_indices=True, algorithm=algorithm)
    return _tensor(out), _tensor(indices)


def _max_pool2d_backward_impl(grad_output, indices, input_shape, algorithm):
    _check_dtypes("max_pool2d_backward", grad_output=grad_output)
    with _TorchThreads(grad_output):
        return _tensor(ops.max_pool2d_backward(_array(grad_output), _array(indices),
                                               tuple(input_shape), algorithm=algorithm))


def _max_pool2d_setup(ctx, inputs, output):
    input, *_, algorithm = inputs
    indices = output[1]
    ctx.mark_non_differentiable(indices)
    ctx.save_for_backward(indices)
    ctx.input_shape = list(input.shape)
    ctx.algorithm = algorithm


def _max_pool2d_grads(ctx, grad_output, _grad_indices):
    (indices,) = ctx.saved_tensors
    grad_input = _backward("max_pool2d", ctx, (grad_output,), lambda: _MAX_POOL2D_BACKWARD(
        grad_output, indices, ctx.input_shape, ctx.algorithm))
    return grad_input, None, None, None, None, None, None


def _max_pool2d_plain_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.window = inputs[1:]


def _max_pool2d_plain_grads(ctx, grad_output):
    """The functionals call the op without indices only where no backward can follow;
    called directly, it finds the indices again in its backward."""
    (input,) = ctx.saved_tensors

    def run():
        _, indices = _MAX_POOL2D_WITH_INDICES(input.detach(), *ctx.window)
        return _MAX_POOL2D_BACKWARD(grad_output, indices, list(input.shape), ctx.window[-1])

    return _backward("max_pool2d", ctx, (grad_output,), run), None, None, None, None, None, None


_MAX_POOL2D = _op("max_pool2d", _max_pool2d_impl, f"(Tensor input, {_MAX_POOL}) -> Tensor",
                  1, _max_pool2d_plain_setup, _max_pool2d_plain_grads)
_MAX_POOL2D_WITH_INDICES = _op(
    "max_pool2d_with_indices", _max_pool2d_with_indices_impl,
    f"(Tensor input, {_MAX_POOL}) -> (Tensor, Tensor)", 1, _max_pool2d_setup,
    _max_pool2d_grads)
_MAX_POOL2D_BACKWARD = _op(
    "max_pool2d_backward", _max_pool2d_backward_impl,
    "(Tensor grad_output, Tensor indices, SymInt[] input_shape, str algorithm) -> Tensor", 2)


@_MAX_POOL2D.op.register_fake
def _(input, kernel_size, stride, padding, dilation, ceil_mode, algorithm):
    _check_dtypes("max_pool2d", input=input)
    return input.new_empty(_pool_size(input, kernel_size, stride, padding, dilation, ceil_mode))


@_MAX_POOL2D_WITH_INDICES.op.register_fake
def _(input, kernel_size, stride, padding, dilation, ceil_mode, algorithm):
    _check_dtypes("max_pool2d", input=input)
    size = _pool_size(input, kernel_size, stride, padding, dilation, ceil_mode)
    return input.new_empty(size), input.new_empty(size, dtype=torch.int64)


@_MAX_POOL2D_BACKWARD.op.register_fake
def _(grad_output, indices, input_shape, algorithm):
    return grad_output.new_empty(input_shape)


# avg_pool2d -----------------------------------------------------------------------------

_AVG_POOL = ("int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode, "
             "bool count_include_pad, int? divisor_override, str algorithm")


def _avg_pool2d_impl(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, algorithm):
    _check_dtypes("avg_pool2d", input=input)
    with _TorchThreads(input):
        return _tensor(ops.avg_pool2d(_array(input), kernel_size, stride, padding, ceil_mode,
                                      count_include_pad, divisor_override, algorithm=algorithm))


def _avg_pool2d_backward_impl(grad_output, input_shape, kernel_size, stride, padding,
                              ceil_mode, count_include_pad, divisor_override, algorithm):
    _check_dtypes("avg_pool2d_backward", grad_output=grad_output)
    with _TorchThreads(grad_output):
        return _tensor(ops.avg_pool2d_backward(
            _array(grad_output), tuple(input_shape), kernel_size, stride, padding, ceil_mode,
            count_include_pad, divisor_override, algorithm=algorithm))


def _avg_pool2d_setup(ctx, inputs, output):
    input, *params, algorithm = inputs
    ctx.input_shape = list(input.shape)
    ctx.params = params
    ctx.algorithm = algorithm


def _avg_pool2d_grads(ctx, grad_output):
    grad_input = _backward("avg_pool2d", ctx, (grad_output,), lambda: _AVG_POOL2D_BACKWARD(
        grad_output, ctx.input_shape, *ctx.params, ctx.algorithm))
    return grad_input, None, None, None, None, None, None, None


_AVG_POOL2D = _op("avg_pool2d", _avg_pool2d_impl, f"(Tensor input, {_AVG_POOL}) -> Tensor", 1,
                  _avg_pool2d_setup, _avg_pool2d_grads)
_AVG_POOL2D_BACKWARD = _op(
    "avg_pool2d_backward", _avg_pool2d_backward_impl,
    f"(Tensor grad_output, SymInt[] input_shape, {_AVG_POOL}) -> Tensor", 1)


@_AVG_POOL2D.op.register_fake
def _(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
      algorithm):
    _check_dtypes("avg_pool2d", input=input)
    return input.new_empty(_pool_size(input, kernel_size, stride, padding, (1, 1), ceil_mode))


@_AVG_POOL2D_BACKWARD.op.register_fake
def _(grad_output, input_shape, *_params):
    return grad_output.new_empty(input_shape)


# max_unpool2d ---------------------------------------------------------------------------


def _max_unpool2d_impl(input, indices, kernel_size, stride, padding, output_size, algorithm):
    _check_dtypes("max_unpool2d", input=input)
    with _TorchThreads(input):
        return _tensor(ops.max_unpool2d(_array(input), _array(indices), kernel_size, stride,
                                        padding, output_size, algorithm=algorithm))


def _max_unpool2d_backward_impl(grad_output, indices, algorithm):
    _check_dtypes("max_unpool2d_backward", grad_output=grad_output)
    with _TorchThreads(grad_output):
        return _tensor(ops.max_unpool2d_backward(_array(grad_output), _array(indices),
                                                 algorithm=algorithm))


def _max_unpool2d_setup(ctx, inputs, output):
    _input, indices, *_, algorithm = inputs
    ctx.save_for_backward(indices)
    ctx.algorithm = algorithm


def _max_unpool2d_grads(ctx, grad_output):
    (indices,) = ctx.saved_tensors
    grad_input = _backward("max_unpool2d", ctx, (grad_output,),
                           lambda: _MAX_UNPOOL2D_BACKWARD(grad_output, indices, ctx.algorithm))
    return grad_input, None, None, None, None, None, None


_MAX_UNPOOL2D = _op(
    "max_unpool2d", _max_unpool2d_impl,
    "(Tensor input, Tensor indices, int[2] kernel_size, int[2] stride, int[2] padding, "
    "SymInt[]? output_size, str algorithm) -> Tensor", 2, _max_unpool2d_setup,
    _max_unpool2d_grads)
_MAX_UNPOOL2D_BACKWARD = _op(
    "max_unpool2d_backward", _max_unpool2d_backward_impl,
    "(Tensor grad_output, Tensor indices, str algorithm) -> Tensor", 2)


@_MAX_UNPOOL2D.op.register_fake
def _(input, indices, kernel_size, stride, padding, output_size, algorithm):
    _check_dtypes("max_unpool2d", input=input)
    _spatial("max_unpool2d", input)
    if output_size is None:
        # PyTorch's default: a transposed convolution's length, (H - 1) * stride - 2 * pad + k
        size = [shapes.transposed_output_length(input.shape[-2 + a], kernel_size[a], stride[a],
                                                (padding[a], padding[a])) for a in range(2)]
    else:
        size = list(output_size[-2:])
    return input.new_empty((*input.shape[:-2], *_out_size("max_unpool2d", size)))


@_MAX_UNPOOL2D_BACKWARD.op.register_fake
def _(grad_output, indices, algorithm):
    return grad_output.new_empty(indices.shape)


# repeat_unpool2d ------------------------------------------------------------------------


def _repeat_unpool2d_impl(input, scale, algorithm):
    _check_dtypes("repeat_unpool2d", input=input)
    with _TorchThreads(input):
        return _tensor(ops.repeat_unpool2d(_array(input), scale, algorithm=algorithm))


def _repeat_unpool2d_backward_impl(grad_output, scale, algorithm):
    _check_dtypes("repeat_unpool2d_backward", grad_output=grad_output)
    with _TorchThreads(grad_output):
        return _tensor(ops.repeat_unpool2d_backward(_array(grad_output), scale,
                                                    algorithm=algorithm))


def _repeat_unpool2d_setup(ctx, inputs, output):
    _input, ctx.scale, ctx.algorithm = inputs


def _repeat_unpool2d_grads(ctx, grad_output):
    grad_input = _backward("repeat_unpool2d", ctx, (grad_output,),
                           lambda: _REPEAT_UNPOOL2D_BACKWARD(grad_output, ctx.scale,
                                                             ctx.algorithm))
    return grad_input, None, None


_REPEAT_UNPOOL2D = _op("repeat_unpool2d", _repeat_unpool2d_impl,
                       "(Tensor input, int[2] scale, str algorithm) -> Tensor", 1,
                       _repeat_unpool2d_setup, _repeat_unpool2d_grads)
_REPEAT_UNPOOL2D_BACKWARD = _op(
    "repeat_unpool2d_backward", _repeat_unpool2d_backward_impl,
    "(Tensor grad_output, int[2] scale, str algorithm) -> Tensor", 1)


@_REPEAT_UNPOOL2D.op.register_fake
def _(input, scale, algorithm):
    _check_dtypes("repeat_unpool2d", input=input)
    _spatial("repeat_unpool2d", input)
    return input.new_empty((*input.shape[:-2], input.shape[-2] * scale[0],
                            input.shape[-1] * scale[1]))


@_REPEAT_UNPOOL2D_BACKWARD.op.register_fake
def _(grad_output, scale, algorithm):
    _spatial("repeat_unpool2d_backward", grad_output, "grad_output")
    return grad_output.new_empty((*grad_output.shape[:-2], grad_output.shape[-2] // scale[0],
                                  grad_output.shape[-1] // scale[1]))


# --- arguments: every form fastconv accepts, normalised for the ops ----------------------


def _algorithm(algorithm: object) -> str:
    if not isinstance(algorithm, str):
        raise TypeError(f"algorithm must be a str such as 'auto', got {algorithm!r}")
    return algorithm


def _pair(value: object, name: str, minimum: int = 1, single: bool = True) -> list[int]:
    """:func:`fastconv.shapes.pair` as a list, with a fast path for what modules pass."""
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int \
            and type(value[1]) is int and minimum <= value[0] <= shapes.MAX_INT \
            and minimum <= value[1] <= shapes.MAX_INT:
        return [value[0], value[1]]
    if type(value) is int and minimum <= value <= shapes.MAX_INT:
        return [value, value]
    return list(shapes.pair(value, name, minimum=minimum, single=single))


def _conv_args(op: str, input: torch.Tensor, weight: torch.Tensor, stride: Any, padding: Any,
               dilation: Any, weight_form: str) -> tuple[list[int], list[int], list[int]]:
    """``stride`` and ``dilation`` as pairs, ``padding`` (any form) as explicit
    ``[top, bottom, left, right]``: ``"same"`` needs the input and kernel sizes."""
    _spatial(op, input)
    if weight.dim() != 4:
        raise ValueError(f"{op}: weight must be 4-D {weight_form}, got shape "
                         f"{tuple(weight.shape)}")
    stride2 = _pair(stride, "stride")
    dilation2 = _pair(dilation, "dilation")
    if type(padding) is int or (type(padding) is tuple and len(padding) == 2
                                and type(padding[0]) is int and type(padding[1]) is int):
        pad_h, pad_w = _pair(padding, "padding", minimum=0)
        return stride2, [pad_h, pad_h, pad_w, pad_w], dilation2
    (top, bottom), (left, right) = shapes.padding2d(
        padding, (input.shape[-2], input.shape[-1]), (weight.shape[2], weight.shape[3]),
        (stride2[0], stride2[1]), (dilation2[0], dilation2[1]))
    return stride2, [top, bottom, left, right], dilation2


def _window_args(kernel_size: Any, stride: Any, padding: Any,
                 single: bool = True) -> tuple[list[int], ...]:
    """A pooling window's pairs; ``stride=None`` (and, for pooling, ``()``) means
    ``kernel_size``; ``single=False`` refuses ``(v,)`` and ``()`` as max_unpool2d does."""
    kernel = _pair(kernel_size, "kernel_size", single=single)
    if stride is None:
        step = kernel
    elif single:
        step = list(shapes.pool_stride(stride, (kernel[0], kernel[1])))
    else:
        step = _pair(stride, "stride", single=False)
    return kernel, step, _pair(padding, "padding", minimum=0, single=single)


# --- functionals ---------------------------------------------------------------------------


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: shapes.Padding = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    algorithm: str = "auto",
) -> torch.Tensor:
    """``torch.nn.functional.conv2d`` computed by :func:`fastconv.conv2d`, differentiable
    (the op ``torch.ops.fastconv.conv2d``).

    Shapes: ``input`` ``(N, C, H, W)`` or ``(C, H, W)``, ``weight``
    ``(K, C/groups, R, S)``, ``bias`` ``(K,)`` or None; output
    ``(N, K, H_out, W_out)`` with
    ``H_out = floor((H + pad_top + pad_bottom - dilation_h * (R - 1) - 1) / stride_h) + 1``.
    ``padding`` takes every form :func:`fastconv.conv2d` accepts: an int, a
    pair, ``((top, bottom), (left, right))``, ``"valid"`` or ``"same"`` (also
    with stride > 1, unlike PyTorch: the output is ``ceil(H / stride)``).
    ``algorithm`` picks the kernel of the forward and of both weight and input gradients.

    >>> x = torch.ones(1, 1, 4, 4)
    >>> conv2d(x, torch.ones(2, 1, 3, 3), torch.tensor([0.0, 1.0]), padding=1)[0, 1]
    tensor([[ 5.,  7.,  7.,  5.],
            [ 7., 10., 10.,  7.],
            [ 7., 10., 10.,  7.],
            [ 5.,  7.,  7.,  5.]])
    >>> conv2d(torch.ones(1, 1, 5, 5), torch.ones(1, 1, 3, 3), stride=2, padding="same").shape
    torch.Size([1, 1, 3, 3])
    """
    _check_tensors("conv2d", input=input, weight=weight, bias=bias)
    stride2, pads, dilation2 = _conv_args("conv2d", input, weight, stride, padding, dilation,
                                          "(K, C/groups, R, S)")
    return _CONV2D(input, weight, bias, stride2, pads, dilation2,
                   positive_int(groups, "groups"), _algorithm(algorithm))


def conv_transpose2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: shapes.TransposedPadding = 0,
    output_padding: int | tuple[int, int] = 0,
    groups: int = 1,
    dilation: int | tuple[int, int] = 1,
    *,
    algorithm: str = "auto",
) -> torch.Tensor:
    """``torch.nn.functional.conv_transpose2d`` computed by :func:`fastconv.conv_transpose2d`
    (the op ``torch.ops.fastconv.conv_transpose2d``).

    Shapes: ``input`` ``(N, C_in, H, W)`` or ``(C_in, H, W)``, ``weight``
    ``(C_in, C_out/groups, R, S)``, ``bias`` ``(C_out,)`` or None; output
    ``(N, C_out, H_out, W_out)`` with ``H_out = (H - 1) * stride_h - pad_top - pad_bottom
    + dilation_h * (R - 1) + output_padding_h + 1``. ``padding``: an int, a pair or
    ``((top, bottom), (left, right))``.

    >>> conv_transpose2d(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2), stride=2).shape
    torch.Size([1, 1, 4, 4])
    """
    _check_tensors("conv_transpose2d", input=input, weight=weight, bias=bias)
    if isinstance(padding, str):
        raise ValueError(
            "conv_transpose2d: padding must be an int, a pair (pad_h, pad_w) or "
            f"((top, bottom), (left, right)), got {padding!r}")
    stride2, pads, dilation2 = _conv_args("conv_transpose2d", input, weight, stride, padding,
                                          dilation, "(C_in, C_out/groups, R, S)")
    extra = _pair(output_padding, "output_padding", minimum=0)
    return _CONV_TRANSPOSE2D(input, weight, bias, stride2, pads, extra,
                             positive_int(groups, "groups"), dilation2, _algorithm(algorithm))


@overload
def max_pool2d(input: torch.Tensor, kernel_size: int | tuple[int, int],
               stride: int | tuple[int, int] | None = ..., padding: int | tuple[int, int] = ...,
               dilation: int | tuple[int, int] = ..., ceil_mode: bool = ...,
               return_indices: Literal[False] = ..., *,
               algorithm: str = ...) -> torch.Tensor: ...
@overload
def max_pool2d(input: torch.Tensor, kernel_size: int | tuple[int, int],
               stride: int | tuple[int, int] | None, padding: int | tuple[int, int],
               dilation: int | tuple[int, int], ceil_mode: bool, return_indices: Literal[True],
               *, algorithm: str = ...) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def max_pool2d(input: torch.Tensor, kernel_size: int | tuple[int, int],
               stride: int | tuple[int, int] | None = ..., padding: int | tuple[int, int] = ...,
               dilation: int | tuple[int, int] = ..., ceil_mode: bool = ..., *,
               return_indices: Literal[True],
               algorithm: str = ...) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def max_pool2d(input: torch.Tensor, kernel_size: int | tuple[int, int],
               stride: int | tuple[int, int] | None = ..., padding: int | tuple[int, int] = ...,
               dilation: int | tuple[int, int] = ..., ceil_mode: bool = ...,
               return_indices: bool = ..., *,
               algorithm: str = ...) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...
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
    """``torch.nn.functional.max_pool2d`` computed by :func:`fastconv.max_pool2d` (the ops
    ``torch.ops.fastconv.max_pool2d`` and ``max_pool2d_with_indices``).

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
    _check_tensors("max_pool2d", input=input)
    kernel, step, pad = _window_args(kernel_size, stride, padding)
    args = (input, kernel, step, pad, _pair(dilation, "dilation"),
            _flag(ceil_mode, "ceil_mode"), _algorithm(algorithm))
    if _flag(return_indices, "return_indices", ints=True):
        return _MAX_POOL2D_WITH_INDICES(*args)
    if torch.is_grad_enabled() and input.requires_grad:
        return _MAX_POOL2D_WITH_INDICES(*args)[0]
    return _MAX_POOL2D(*args)


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
    """``torch.nn.functional.avg_pool2d`` computed by :func:`fastconv.avg_pool2d` (the op
    ``torch.ops.fastconv.avg_pool2d``).

    Shapes: ``input`` ``(N, C, H, W)`` or ``(C, H, W)``; output
    ``(N, C, H_out, W_out)`` with ``H_out = floor((H + 2 * pad_h - kernel_h) / stride_h) + 1``
    (``ceil`` with ``ceil_mode``); the divisor follows PyTorch's rules (see
    :func:`fastconv.avg_pool2d`).

    >>> avg_pool2d(torch.arange(16.0).reshape(1, 4, 4), 2)
    tensor([[[ 2.5000,  4.5000],
             [10.5000, 12.5000]]])
    """
    _check_tensors("avg_pool2d", input=input)
    kernel, step, pad = _window_args(kernel_size, stride, padding)
    divisor = _divisor(divisor_override)
    return _AVG_POOL2D(input, kernel, step, pad, _flag(ceil_mode, "ceil_mode"),
                       _flag(count_include_pad, "count_include_pad"), divisor,
                       _algorithm(algorithm))


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
    """``torch.nn.functional.max_unpool2d`` computed by :func:`fastconv.max_unpool2d` (the
    op ``torch.ops.fastconv.max_unpool2d``).

    Puts each value back at its index, zeros elsewhere. Shapes: ``input`` and
    ``indices`` ``(N, C, H, W)`` or ``(C, H, W)``; output ``(N, C, H_out, W_out)``
    with ``H_out = (H - 1) * stride_h - 2 * pad_h + kernel_h`` unless
    ``output_size`` (``(H_out, W_out)`` or a full shape) says otherwise.

    >>> y, indices = max_pool2d(torch.tensor([[[1.0, 2], [4, 3]]]), 2, return_indices=True)
    >>> max_unpool2d(y, indices, 2)
    tensor([[[0., 0.],
             [4., 0.]]])
    """
    _check_tensors("max_unpool2d", input=input)
    _check_indices("max_unpool2d", indices, input)
    kernel, step, pad = _window_args(kernel_size, stride, padding, single=False)
    if output_size is not None:
        form = "output_size must be (H_out, W_out) or a 3-D/4-D shape ending in them"
        if not isinstance(output_size, (tuple, list)) or len(output_size) not in (2, 3, 4):
            raise ValueError(f"max_unpool2d: {form}, got {output_size!r}")
        try:
            output_size = [operator.index(n) for n in output_size]
        except TypeError:
            raise TypeError(f"max_unpool2d: {form}, ints, got {output_size!r}") from None
        shapes.pair(tuple(output_size[-2:]), "output_size[-2:]")  # the functional's check
    return _MAX_UNPOOL2D(input, indices, kernel, step, pad, output_size, _algorithm(algorithm))


def repeat_unpool2d(
    input: torch.Tensor,
    scale: int | tuple[int, int],
    *,
    algorithm: str = "auto",
) -> torch.Tensor:
    """Each value copied into a ``scale_h x scale_w`` block, by :func:`fastconv.repeat_unpool2d`
    (the op ``torch.ops.fastconv.repeat_unpool2d``):
    ``torch.nn.functional.interpolate(input, scale_factor=scale, mode="nearest")``
    for an integer ``scale``.

    Shapes: ``input`` ``(N, C, H, W)`` or ``(C, H, W)``; output
    ``(N, C, H * scale_h, W * scale_w)``.

    >>> repeat_unpool2d(torch.tensor([[[1.0, 2.0]]]), (2, 1))
    tensor([[[1., 2.],
             [1., 2.]]])
    """
    _check_tensors("repeat_unpool2d", input=input)
    return _REPEAT_UNPOOL2D(input, _pair(scale, "scale"), _algorithm(algorithm))


# --- the functionals with positional arguments only, as the autograd Functions were ------
#
# Plain classes, not torch.autograd.Function subclasses: Dynamo traces the ``forward`` of any
# Function subclass whose ``apply`` it meets, ignoring an overriding ``apply``, so an ``apply``
# taking the functionals' arguments would compile wrongly. The eager route's Functions are
# the ``_Op.function`` of each op.


class Conv2dFunction:
    """``Conv2dFunction.apply(input, weight, bias, stride, padding, dilation, groups,
    algorithm)``, all positional, is :func:`conv2d` (``bias`` may be None).

    >>> x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    >>> w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    >>> torch.autograd.gradcheck(Conv2dFunction.apply, (x, w, None, 1, 1, 1, 1, "auto"))
    True
    """

    @staticmethod
    def apply(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Any,
              padding: shapes.Padding, dilation: Any, groups: int,
              algorithm: str) -> torch.Tensor:
        return conv2d(input, weight, bias, stride, padding, dilation, groups,
                      algorithm=algorithm)


class ConvTranspose2dFunction:
    """``ConvTranspose2dFunction.apply(input, weight, bias, stride, padding, output_padding,
    groups, dilation, algorithm)``, all positional, is :func:`conv_transpose2d`."""

    @staticmethod
    def apply(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Any,
              padding: shapes.TransposedPadding, output_padding: Any, groups: int,
              dilation: Any, algorithm: str) -> torch.Tensor:
        return conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups,
                                dilation, algorithm=algorithm)


class MaxPool2dFunction:
    """``MaxPool2dFunction.apply(input, kernel_size, stride, padding, dilation, ceil_mode,
    return_indices, algorithm)`` is :func:`max_pool2d`."""

    @overload
    @staticmethod
    def apply(input: torch.Tensor, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
              ceil_mode: bool, return_indices: Literal[False],
              algorithm: str) -> torch.Tensor: ...
    @overload
    @staticmethod
    def apply(input: torch.Tensor, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
              ceil_mode: bool, return_indices: Literal[True],
              algorithm: str) -> tuple[torch.Tensor, torch.Tensor]: ...
    @overload
    @staticmethod
    def apply(input: torch.Tensor, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
              ceil_mode: bool, return_indices: bool,
              algorithm: str) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...
    @staticmethod
    def apply(input: torch.Tensor, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
              ceil_mode: bool, return_indices: bool,
              algorithm: str) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode,
                          return_indices, algorithm=algorithm)


class AvgPool2dFunction:
    """``AvgPool2dFunction.apply(input, kernel_size, stride, padding, ceil_mode,
    count_include_pad, divisor_override, algorithm)`` is :func:`avg_pool2d`."""

    @staticmethod
    def apply(input: torch.Tensor, kernel_size: Any, stride: Any, padding: Any, ceil_mode: bool,
              count_include_pad: bool, divisor_override: int | None,
              algorithm: str) -> torch.Tensor:
        return avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                          divisor_override, algorithm=algorithm)


class MaxUnpool2dFunction:
    """``MaxUnpool2dFunction.apply(input, indices, kernel_size, stride, padding, output_size,
    algorithm)`` is :func:`max_unpool2d`; differentiable in ``input`` only."""

    @staticmethod
    def apply(input: torch.Tensor, indices: torch.Tensor, kernel_size: Any, stride: Any,
              padding: Any, output_size: Any, algorithm: str) -> torch.Tensor:
        return max_unpool2d(input, indices, kernel_size, stride, padding, output_size,
                            algorithm=algorithm)


class RepeatUnpool2dFunction:
    """``RepeatUnpool2dFunction.apply(input, scale, algorithm)`` is :func:`repeat_unpool2d`."""

    @staticmethod
    def apply(input: torch.Tensor, scale: Any, algorithm: str) -> torch.Tensor:
        return repeat_unpool2d(input, scale, algorithm=algorithm)


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
    ``padding`` takes every form :func:`conv2d` accepts, also those torch.nn.Conv2d
    refuses (``"same"`` with stride > 1); ``padding_mode`` must be ``"zeros"``.

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
        padding: shapes.Padding = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: Literal["zeros"] = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        algorithm: str = "auto",
    ) -> None:
        _check_module_args("Conv2d", padding_mode, dtype)
        # torch.nn.Conv2d refuses "same" with stride > 1, which fastconv computes
        strided_same = (isinstance(padding, str) and padding == "same"
                        and shapes.pair(stride, "stride") != (1, 1))
        # torch.nn.Conv2d keeps ((top, bottom), (left, right)) as it is, which its types
        # (str, int or a pair) leave out
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         0 if strided_same else padding,  # type: ignore[arg-type]
                         dilation, groups, bias, padding_mode, device, dtype)
        if strided_same:
            self.padding = "same"
        self.algorithm = algorithm

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        _check_module_args("Conv2d", self.padding_mode)
        # torch types stride, padding and dilation tuple[int, ...] (padding also str): they
        # are the pairs and the padding form __init__ checked
        return conv2d(input, self.weight, self.bias, self.stride,  # type: ignore[arg-type]
                      self.padding, self.dilation,  # type: ignore[arg-type]
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
        padding_mode: Literal["zeros"] = "zeros",
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
        # torch's own rule (and messages) for turning output_size into output_padding; torch
        # types the pairs tuple[int, ...] (padding also str) and this method's list[int]
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding,  # type: ignore[arg-type]
            self.kernel_size, 2, self.dilation)  # type: ignore[arg-type]
        return conv_transpose2d(input, self.weight, self.bias,
                                self.stride, self.padding,  # type: ignore[arg-type]
                                tuple(output_padding), self.groups,  # type: ignore[arg-type]
                                self.dilation,  # type: ignore[arg-type]
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
