"""Convolution: forward, gradients, and transposed convolution."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .. import activations, dispatch, plans, shapes
from .._checks import check_out, check_rank, check_size, positive_int
from ..placement import HOST, Host, placement
from ..plans import param
from ..shapes import Padding, TransposedPadding
from ._planned import as_batched, described, kernel_arrays, make_plan, runner

_BATCHED = "4-D (N, C, H, W) or 3-D (C, H, W)"


def _check_ranks(transposed: bool = False, **arrays: object) -> None:
    """Each argument's number of dimensions, before any dtype check (``conv2d(3.0, w)`` is
    about the input's shape, not its dtype)."""
    if transposed:
        forms = {"input": "4-D (N, C_in, H, W) or 3-D (C_in, H, W)", "grad_output": _BATCHED,
                 "weight": "4-D (C_in, C_out/groups, R, S)", "bias": "1-D (C_out,)"}
    else:
        forms = {"input": _BATCHED, "grad_output": _BATCHED,
                 "weight": "4-D (K, C/groups, R, S)", "bias": "1-D (K,)"}
    for name, value in arrays.items():
        check_rank(value, name, forms[name], (1,) if name == "bias" else
                   (4,) if name == "weight" else (3, 4))


class _ConvGeometry(NamedTuple):
    """A conv2d problem, normalised: ``x4`` is the C-contiguous 4-D input."""

    x4: np.ndarray
    unbatched: bool
    weight_shape: tuple[int, int, int, int]
    stride: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    dilation: tuple[int, int]
    groups: int
    out_channels: int
    out_size: tuple[int, int]

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.x4.shape[0], self.out_channels, *self.out_size)

    def result_shape(self, shape4: tuple[int, ...]) -> tuple[int, ...]:
        """What the user sees of a 4-D shape: no batch axis for unbatched input."""
        return shape4[1:] if self.unbatched else shape4

    def batched(self, place: Host, array, name: str, shape4: tuple[int, ...], what: str):
        """``array`` (checked to have the user's view of ``shape4``) as a C-contiguous 4-D array."""
        expected = self.result_shape(shape4)
        if tuple(array.shape) != expected:
            raise ValueError(
                f"{name} must have the shape of {what}, {expected}, got {tuple(array.shape)}")
        return place.batched(array)

    def params(self) -> tuple:
        """The trailing kernel arguments: stride, padding, dilation, groups."""
        return self.stride, self.padding, self.dilation, self.groups

    def problem(self) -> dict:
        """What a chooser decides on."""
        return dict(input_shape=self.x4.shape, weight_shape=self.weight_shape,
                    stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups, dtype=self.x4.dtype)


def _conv_geometry(place, x, w, stride, padding, dilation, groups, *, input_name="input",
                   weight_form="(K, C/groups, R, S)") -> _ConvGeometry:
    """Validate a conv2d problem (input ``(N, C, H, W)`` or ``(C, H, W)``, weight
    ``(K, C/groups, R, S)``, their ranks checked by :func:`_check_ranks`) and normalise
    every argument form."""
    unbatched = len(x.shape) == 3
    shape4 = (1, *x.shape) if unbatched else tuple(x.shape)
    _, channels, height, width = shape4
    out_channels, group_channels, kh, kw = w.shape
    if 0 in shape4[2:]:
        raise ValueError(f"{input_name} must have non-empty H and W, got shape {x.shape}")
    if 0 in (out_channels, kh, kw):
        raise ValueError(f"weight must have non-empty K, R and S, got shape {w.shape}")
    groups = positive_int(groups, "groups")
    if channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide both the input channels C={channels} "
            f"and the output channels K={out_channels} (weight {weight_form} = {w.shape})"
        )
    if group_channels * groups != channels:
        raise ValueError(
            f"weight.shape[1] must be C/groups = {channels}/{groups} = {channels // groups}, "
            f"got weight of shape {w.shape} for {input_name} of shape {x.shape}"
        )
    stride2 = shapes.pair(stride, "stride")
    dilation2 = shapes.pair(dilation, "dilation")
    pads = shapes.padding2d(padding, (height, width), (kh, kw), stride2, dilation2)
    out_h = shapes.output_length(height, kh, stride2[0], pads[0], dilation2[0])
    out_w = shapes.output_length(width, kw, stride2[1], pads[1], dilation2[1])
    if out_h <= 0 or out_w <= 0:
        raise ValueError(
            f"kernel of size {(kh, kw)} with dilation {dilation2} spans "
            f"{(dilation2[0] * (kh - 1) + 1, dilation2[1] * (kw - 1) + 1)}, larger than the padded "
            f"{input_name} {(height + sum(pads[0]), width + sum(pads[1]))} "
            f"({input_name} {(height, width)}, padding {pads})"
        )
    check_size((shape4[0], out_channels, out_h, out_w), w.dtype.itemsize, "conv2d's output",
               f"check padding={padding!r}")
    return _ConvGeometry(place.batched(x), unbatched, tuple(w.shape), stride2, pads, dilation2,
                         groups, out_channels, (out_h, out_w))


def conv2d(
    input: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: int | tuple[int, int] = 1,
    padding: Padding = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    algorithm: str = "auto",
    out: np.ndarray | None = None,
    device: str | None = None,
    activation: str | None = None,
) -> np.ndarray:
    """2-D convolution (cross-correlation) of an image batch, as ``torch.nn.functional.conv2d``.

    ``out[n, k, i, j] = bias[k] + sum_{c, r, s} weight[k, c, r, s] *
    x_padded[n, g(k) * C/groups + c, i * stride_h + r * dilation_h, j * stride_w + s * dilation_w]``
    where ``g(k) = k // (K / groups)`` is the group of output channel ``k``.

    Shapes (N images, C input channels, K filters, R x S kernel):

    - ``input``: ``(N, C, H, W)``, or ``(C, H, W)`` for one image (the output
      then has no batch axis either). ``N = 0`` gives an empty batch; ``C = 0``
      (with a ``(K, 0, R, S)`` weight) gives every output its bias, the sum over no
      channels (PyTorch 2.13 returns an empty ``(N, 0, H_out, W_out)`` there).
    - ``weight``: ``(K, C / groups, R, S)``.
    - ``bias``: ``(K,)`` or None.
    - output: ``(N, K, H_out, W_out)`` with
      ``H_out = floor((H + pad_top + pad_bottom - dilation_h * (R - 1) - 1) / stride_h) + 1``
      and likewise ``W_out`` (see :func:`fastconv.conv_output_size`).

    Every size-like int (stride, padding, dilation, groups) is at most
    ``2**31 - 1``; numpy integers count as ints, bools do not; a one-element
    tuple ``(v,)`` means ``(v, v)``, as in PyTorch.

    Args:
        input, weight, bias: float32 or float64 arrays of one dtype, which
            the output has too: numpy arrays, or GPU arrays (Numba device
            arrays, CuPy arrays, PyTorch CUDA tensors), all on one side. Any
            memory layout is accepted (strided views, Fortran order,
            read-only); inputs are never modified.
        stride: int or ``(stride_h, stride_w)``, each >= 1.
        padding: zeros added around the input: an int, ``(pad_h, pad_w)``,
            ``((top, bottom), (left, right))``, ``"valid"`` (no padding) or
            ``"same"``. ``"same"`` makes ``H_out = ceil(H / stride_h)``; the
            padding total is split evenly and an odd extra pad goes to the
            bottom/right. Unlike PyTorch, ``"same"`` is accepted with
            stride > 1.
        dilation: int or ``(dilation_h, dilation_w)``, each >= 1: spacing of
            the kernel taps.
        groups: splits C and K into ``groups`` independent convolutions; must
            divide both. ``groups == C`` with ``K == C`` is depthwise.
        algorithm: ``"auto"`` (chosen by shape), or one of
            :func:`fastconv.available_algorithms` ``("conv2d")``:
            ``"direct"``, ``"im2col"``, ``"winograd"`` (3x3 and 5x5 kernels at stride
            1, or 3x3 and 4x4 kernels at stride 2 with one group; dilation 1; another
            problem is a ValueError), ``"reference"``.
            On the GPU: ``"direct"``, ``"implicit_gemm"``, ``"reference"``.
        out: optional array of the output's shape and dtype to write into
            (on the GPU, a GPU array).
        activation: None (the default), or ``"relu"``: every kernel stores
            ``max(y, 0)`` as it writes its output (fastconv's own keyword, not
            in PyTorch; ``torch.relu(conv2d(...))`` in one pass, a NaN stays
            NaN). The gradient of the ReLU is the output's sign: pass
            ``grad_output * (y > 0)`` to :func:`conv2d_backward`.
        device: where to run. None (the default) follows the data: GPU
            arrays run on the GPU (:mod:`fastconv.cuda`) and give a result of
            the same kind (a PyTorch CUDA tensor in, one out), numpy arrays on
            the CPU. ``"cpu"``; ``"cuda"`` or ``"cuda:N"`` copies numpy
            arguments to the GPU and the result back.

    Returns:
        The output array (``out`` itself when given).

    Raises:
        TypeError: non-float, complex or mixed dtypes, non-array arguments
            (a scalar or None for an array), non-int sizes.
        ValueError: wrong shapes, channel/group mismatches, non-positive
            stride or dilation, negative padding, a size above ``2**31 - 1``
            or an output too large for any array, a kernel larger than the
            padded input, empty H, W, K, R or S, a bad ``out``, host and GPU
            arrays mixed (with ``device=None``), a GPU array with
            ``device="cpu"``, arrays on two GPUs.
        RuntimeError: the GPU is asked for but :func:`fastconv.cuda.is_available`
            is False.

    Example:

    >>> import numpy as np, fastconv
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> w = np.ones((2, 1, 3, 3), dtype=np.float32)
    >>> y = fastconv.conv2d(x, w, np.array([0.0, 1.0], np.float32), padding=1)
    >>> y.shape
    (1, 2, 4, 4)
    >>> y[0, 0].tolist()  # doctest: +NORMALIZE_WHITESPACE
    [[10.0, 18.0, 24.0, 18.0], [27.0, 45.0, 54.0, 39.0],
     [51.0, 81.0, 90.0, 63.0], [42.0, 66.0, 72.0, 50.0]]
    """
    try:  # plans.key's tuple, built inline: this is the per-call cost of every hit
        problem = None if device is not None else (
            "conv2d", algorithm if type(algorithm) is str else param(algorithm),
            type(input), input.shape, input.strides, input.dtype,
            type(weight), weight.shape, weight.strides, weight.dtype,
            *((None,) if bias is None else (type(bias), bias.shape, bias.strides, bias.dtype)),
            stride if type(stride) is int else param(stride),
            padding if type(padding) is int else param(padding),
            dilation if type(dilation) is int else param(dilation),
            groups if type(groups) is int else param(groups),
            activation if activation is None else param(activation),
            *((None,) if out is None else (type(out), out.shape, out.strides, out.dtype)),
            *plans.state())
    except plans.NOT_KEYED:
        problem = None
    plan = plans.get(problem)
    if plan is None:
        problem = plans.cacheable(problem, (input, weight, bias, out))
        plan = plans.put(problem, _conv2d_plan(problem is not None, input, weight, bias, stride,
                                               padding, dilation, groups, algorithm, out, device,
                                               activation))
    return plan(input, weight, bias, out)


def _conv2d_plan(cacheable, input, weight, bias, stride, padding, dilation, groups, algorithm,
                 out, device, activation):
    """Check a conv2d call, choose its kernel and return the plan that runs it on the
    arrays: ``plan(input, weight, bias, out)``. A ``cacheable`` plan (host ndarrays, an
    ``out`` of one too or None) takes any arrays of the same key (and checks what the key
    cannot hold: that ``out`` is writeable and shares no memory with an input); another
    runs once, on these."""
    activation = activations.check(activation)
    place = placement(device, input=input, weight=weight, bias=bias, out=out)
    with place.active():
        _check_ranks(input=input, weight=weight, bias=bias)
        x, w, b = place.floats(input=input, weight=weight, bias=bias)
        geo = _conv_geometry(place, x, w, stride, padding, dilation, groups)
        if b is not None and tuple(b.shape) != (geo.out_channels,):
            raise ValueError(
                f"bias must have shape (K,) = ({geo.out_channels},), got {tuple(b.shape)}")
        if out is not None:
            place.check_out(out, geo.result_shape(geo.out_shape), x.dtype, (input, weight, bias))
        empty_sum = geo.x4.shape[1] == 0
        if empty_sum:
            # C = 0: every output is an empty sum plus its bias. Computed as the same
            # convolution of one zero channel per group with a zero weight, on every device.
            n_img, _, height, width = geo.x4.shape
            geo = geo._replace(x4=place.zeros((n_img, geo.groups, height, width), x.dtype))
            w = place.zeros((w.shape[0], 1, *w.shape[2:]), x.dtype)
        arrays = kernel_arrays(x.dtype, geo.x4.shape, w.shape, None if b is None else b.shape,
                               geo.out_shape)
        choice = dispatch.choose("conv2d", place.device, algorithm, arrays=arrays,
                                 params=geo.params(), **geo.problem())
        # the activation only when there is one: a kernel registered without the argument
        # still runs every call without it
        params = geo.params() if activation is None else (*geo.params(), activation)
        run = runner(choice.kernel, arrays, params)
        shape4, dtype, unbatched = geo.out_shape, x.dtype, geo.unbatched
        if cacheable and not empty_sum:
            x_ready, w_ready = x.flags.c_contiguous, w.flags.c_contiguous
            b_ready = b is None or b.flags.c_contiguous
            out_ready = out is not None and out.flags.c_contiguous
            result_shape = geo.result_shape(shape4)

            def plan(input, weight, bias, out):
                x4 = as_batched(input, unbatched, x_ready)
                weight = weight if w_ready else np.ascontiguousarray(weight)
                bias = bias if b_ready else np.ascontiguousarray(bias)
                if out is None:
                    target = np.empty(shape4, dtype)
                else:
                    if not out.flags.writeable or _may_overlap(out, input, weight, bias):
                        check_out(out, result_shape, dtype, (input, weight, bias))
                    target = out.reshape(shape4) if out_ready else np.empty(shape4, dtype)
                if shape4[0]:
                    run(x4, weight, bias, target)
                if out is None:
                    return target[0] if unbatched else target
                if not out_ready:
                    out[...] = target[0] if unbatched else target
                return out
        else:
            x4, w, b = geo.x4, place.contiguous(w), place.contiguous(b)

            def plan(_input, _weight, _bias, _out):
                return place.run(lambda target: run(x4, w, b, target), shape4, dtype, unbatched,
                                 out)

        return described(plan, ("conv2d", choice), cacheable=cacheable and not empty_sum)


def _may_overlap(out: np.ndarray, *inputs: np.ndarray | None) -> bool:
    """Whether ``out``'s memory bounds meet an input's (:func:`numpy.may_share_memory`: a
    cached plan's cheap test; where it says yes, :func:`.check_out`'s exact one decides)."""
    return any(other is not None and np.may_share_memory(out, other) for other in inputs)


def _needs(**flags: object) -> tuple[bool, ...]:
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {value!r}")
    return tuple(bool(v) for v in flags.values())


def conv2d_backward(
    grad_output: np.ndarray,
    input: np.ndarray,
    weight: np.ndarray,
    stride: int | tuple[int, int] = 1,
    padding: Padding = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    needs_input_grad: bool = True,
    needs_weight_grad: bool = True,
    needs_bias_grad: bool = True,
    algorithm: str = "auto",
    device: str | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Gradients of :func:`conv2d` with respect to its input, weight and bias.

    With ``y = conv2d(x, w, b, stride, padding, dilation, groups)`` and
    ``grad_output = dL/dy``:

    - ``grad_input = conv_transpose2d(grad_output, w, stride, padding, dilation, groups)``
      cropped/extended to ``x``'s size: every output sends ``w * grad_output``
      back to the window it read. With stride 1 that is a plain convolution
      of ``grad_output`` with ``w`` flipped in space and its channels swapped,
      padded by ``dilation * (R - 1) - padding``.
    - ``grad_weight[k, c, r, s] = sum_{n,i,j} grad_output[n, k, i, j] *
      x_padded[n, c', i*stride_h + r*dilation_h, j*stride_w + s*dilation_w]``:
      a correlation of the input with ``grad_output``.
    - ``grad_bias[k] = sum_{n,i,j} grad_output[n, k, i, j]``.

    Shapes: ``grad_output`` ``(N, K, H_out, W_out)`` (or ``(K, H_out, W_out)``
    with an unbatched input ``(C, H, W)``), ``input`` ``(N, C, H, W)``,
    ``weight`` ``(K, C/groups, R, S)``; the gradients have the shapes of
    ``input``, ``weight`` and ``(K,)``. ``stride``, ``padding``, ``dilation``
    and ``groups`` take every form :func:`conv2d` accepts.

    Args:
        needs_input_grad, needs_weight_grad, needs_bias_grad: compute that
            gradient; the ones not asked for are returned as None.
        algorithm: for grad_input and grad_weight, as in :func:`conv2d`
            (``available_algorithms("conv2d_grad_input")``); grad_bias always
            runs its one kernel. grad_weight sums per-thread partial results in
            a fixed order: the same inputs give the same bits on every run with
            the same thread count (on the GPU: on every run).
        device: as in :func:`conv2d`.

    Returns:
        ``(grad_input, grad_weight, grad_bias)``, None for each not asked for.

    Example:

    >>> import numpy as np, fastconv
    >>> x = np.ones((1, 1, 3, 3))
    >>> w = np.ones((1, 1, 2, 2))
    >>> gx, gw, gb = fastconv.conv2d_backward(np.ones((1, 1, 2, 2)), x, w)
    >>> gx[0, 0].tolist()
    [[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]
    >>> gw[0, 0].tolist(), gb.tolist()
    ([[4.0, 4.0], [4.0, 4.0]], [4.0])
    """
    flags = (needs_input_grad, needs_weight_grad, needs_bias_grad)
    problem = (None if device is not None else
               plans.key("conv2d_backward", (grad_output, input, weight), (),
                         (stride, padding, dilation, groups, *flags), algorithm))
    plan = plans.get(problem)
    if plan is None:
        problem = plans.cacheable(problem, (grad_output, input, weight))
        plan = plans.put(problem, _conv2d_backward_plan(
            problem is not None, grad_output, input, weight, stride, padding, dilation, groups,
            flags, algorithm, device))
    return plan(grad_output, input, weight)


def _gradient_kernels(place, geo, dtype, needs, algorithm, grad_input, grad_weight):
    """The kernels of a convolution's gradients: ``(op, Choice)`` (None where not needed)
    for grad_input, grad_weight and grad_bias. ``grad_input`` and ``grad_weight`` are
    ``(op, shapes of the kernel's array arguments)`` of the first two."""
    found: list = []
    for need, (op, arrays) in zip(needs[:2], (grad_input, grad_weight), strict=True):
        found.append((op, dispatch.choose(op, place.device, algorithm,
                                          arrays=kernel_arrays(dtype, *arrays),
                                          params=geo.params(), **geo.problem()))
                     if need else None)
    found.append(("conv2d_grad_bias", dispatch.choose("conv2d_grad_bias", place.device, "auto"))
                 if needs[2] else None)
    return found


def _conv2d_backward_plan(cacheable, grad_output, input, weight, stride, padding, dilation,
                          groups, flags, algorithm, device):
    """Check a conv2d_backward call, choose its kernels and return the plan:
    ``plan(grad_output, input, weight)`` (see :func:`_conv2d_plan`)."""
    place = placement(device, grad_output=grad_output, input=input, weight=weight)
    with place.active():
        _check_ranks(grad_output=grad_output, input=input, weight=weight)
        dy, x, w = place.floats(grad_output=grad_output, input=input, weight=weight)
        needs = _needs(needs_input_grad=flags[0], needs_weight_grad=flags[1],
                       needs_bias_grad=flags[2])
        geo = _conv_geometry(place, x, w, stride, padding, dilation, groups)
        dy4 = geo.batched(place, dy, "grad_output", geo.out_shape, "conv2d's output")
        w4 = place.contiguous(w)
        unbatched, params = geo.unbatched, geo.params()
        # C = 0: grad_input and grad_weight are empty, no kernel runs
        some = needs if geo.x4.shape[1] else (False, False, needs[2])
        kernels = _gradient_kernels(
            place, geo, dy4.dtype, some, algorithm,
            ("conv2d_grad_input", (dy4.shape, w4.shape, geo.x4.shape)),
            ("conv2d_grad_weight", (geo.x4.shape, dy4.shape, w4.shape)))
        x_shape, w_shape, n_img = tuple(geo.x4.shape), tuple(w4.shape), geo.x4.shape[0]
        dtype = dy4.dtype
        run_in, run_w, run_b = (
            None if k is None else runner(k[1].kernel, kernel_arrays(dtype, *shapes), p)
            for k, shapes, p in zip(kernels, ((dy4.shape, w_shape, x_shape),
                                              (x_shape, dy4.shape, w_shape),
                                              (dy4.shape, (dy4.shape[1],))),
                                    (params, params, ()), strict=True))

        def compute(dy4, x4, w):
            grad_input = grad_weight = grad_bias = None
            if needs[0]:
                if n_img and run_in is not None:
                    # a grad_input kernel writes every value (conv_transpose2d relies on it
                    # too): no zeros to write first (a fresh zeroed buffer page-faults)
                    grad_input = place.empty(x_shape, dtype)
                    run_in(dy4, w, grad_input)
                else:
                    grad_input = place.zeros(x_shape, dtype)
            if needs[1]:
                grad_weight = place.zeros(w_shape, dtype)
                if n_img and run_w is not None:
                    run_w(x4, dy4, grad_weight)
            if needs[2]:
                grad_bias = place.zeros((dy4.shape[1],), dtype)
                if n_img:
                    run_b(dy4, grad_bias)
            return (place.give(grad_input, unbatched), place.give(grad_weight),
                    place.give(grad_bias))

        return make_plan(place, cacheable, compute, (dy, x, w), (dy4, geo.x4, w4),
                         ("values", "values", "plain"), unbatched,
                         *[k for k in kernels if k is not None])


def _transpose_geometry(place, x, w, stride, padding, output_padding, groups, dilation,
                        output_size):
    """Validate a transposed convolution and describe it as the conv2d it is the adjoint of:
    that conv2d's input is the transposed convolution's output (ranks checked by
    :func:`_check_ranks`)."""
    unbatched = len(x.shape) == 3
    shape4 = (1, *x.shape) if unbatched else tuple(x.shape)
    n_img, in_channels, height, width = shape4
    if 0 in shape4[1:]:
        raise ValueError(f"input must have non-empty C_in, H and W, got shape {x.shape}")
    if 0 in w.shape:
        raise ValueError(f"weight must have no empty dimension, got shape {w.shape}")
    groups = positive_int(groups, "groups")
    if w.shape[0] != in_channels:
        raise ValueError(
            f"weight.shape[0] must be the input channels C_in={in_channels} "
            f"(weight is (C_in, C_out/groups, R, S)), got weight of shape {w.shape}"
        )
    if in_channels % groups:
        raise ValueError(f"groups={groups} must divide the input channels C_in={in_channels}")
    if isinstance(padding, str):
        raise ValueError(
            "padding of conv_transpose2d must be an int, a pair (pad_h, pad_w) or "
            f"((top, bottom), (left, right)), got {padding!r}"
        )
    stride2, pads, dilation2, out_size = transposed_size(
        (height, width), tuple(w.shape[2:]), stride, padding, output_padding, dilation,
        output_size)
    out_channels = w.shape[1] * groups
    check_size((n_img, out_channels, *out_size), w.dtype.itemsize, "conv_transpose2d's output",
               "check stride, dilation, output_padding and output_size")
    return _ConvGeometry(place.batched(x), unbatched, tuple(w.shape), stride2, pads, dilation2,
                         groups, out_channels, out_size)


def transposed_size(in_size: tuple[int, int], kernel_size: tuple[int, int], stride: object,
                    padding: object, output_padding: object, dilation: object,
                    output_size: Any = None) -> tuple:
    """A transposed convolution's ``(stride, padding, dilation, (H_out, W_out))``, normalised,
    from an input of spatial ``in_size``, or the ValueError :func:`conv_transpose2d` raises:
    what it and :meth:`fastconv.nn.ConvTranspose2d.output_shape` both compute."""
    height, width = in_size
    stride2 = shapes.pair(stride, "stride")
    dilation2 = shapes.pair(dilation, "dilation")
    pads = shapes.padding2d(padding, (height, width), kernel_size,  # type: ignore[arg-type]
                            stride2, dilation2)
    extra = shapes.pair(output_padding, "output_padding", minimum=0)
    smallest = [shapes.transposed_output_length(n, k, s, p, d)
                for n, s, p, d, k in zip((height, width), stride2, pads, dilation2, kernel_size,
                                         strict=False)]
    if output_size is not None:
        size = output_size
        if isinstance(size, (tuple, list)) and len(size) == 4:
            size = size[2:]
        elif isinstance(size, (tuple, list)) and len(size) == 3:
            size = size[1:]
        out_size = shapes.pair(size, "output_size", single=False)
        for a in range(2):
            if not smallest[a] <= out_size[a] <= smallest[a] + stride2[a] - 1:
                raise ValueError(
                    f"output_size {tuple(output_size)} is not reachable: with this input, "
                    f"stride, padding and kernel each output size must lie in "
                    f"[{smallest[0]}, {smallest[0] + stride2[0] - 1}] x "
                    f"[{smallest[1]}, {smallest[1] + stride2[1] - 1}]"
                )
    else:
        shapes.check_output_padding(extra, stride2, dilation2, output_padding)
        out_size = (smallest[0] + extra[0], smallest[1] + extra[1])
    if min(out_size) <= 0:
        raise ValueError(
            f"conv_transpose2d output would be {out_size}: padding {pads} crops more than "
            f"the {(smallest[0] + sum(pads[0]), smallest[1] + sum(pads[1]))} values the "
            f"input of size {(height, width)} spreads to"
        )
    return stride2, pads, dilation2, out_size


def conv_transpose2d(
    input: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: int | tuple[int, int] = 1,
    padding: TransposedPadding = 0,
    output_padding: int | tuple[int, int] = 0,
    groups: int = 1,
    dilation: int | tuple[int, int] = 1,
    *,
    output_size: tuple[int, ...] | None = None,
    algorithm: str = "auto",
    device: str | None = None,
) -> np.ndarray:
    """Transposed convolution ("deconvolution"), as ``torch.nn.functional.conv_transpose2d``.

    The adjoint of :func:`conv2d`: each input value stamps
    ``input[n, c, i, j] * weight[c]`` onto the output window starting at
    ``(i * stride_h - pad_top, j * stride_w - pad_left)`` with taps
    ``dilation`` apart; overlapping stamps add up; ``bias`` is added. It
    upsamples by ``stride``, and equals ``grad_input`` of a ``conv2d`` with the
    same weight and arguments.

    Shapes (note the weight's layout, as in PyTorch):

    - ``input``: ``(N, C_in, H, W)`` or ``(C_in, H, W)``.
    - ``weight``: ``(C_in, C_out / groups, R, S)``.
    - ``bias``: ``(C_out,)`` or None.
    - output: ``(N, C_out, H_out, W_out)`` with
      ``H_out = (H - 1) * stride_h - pad_top - pad_bottom
      + dilation_h * (R - 1) + output_padding_h + 1``
      (:func:`fastconv.shapes.transposed_output_length`). An output with no rows
      or columns (padding crops all of it) is a ValueError; PyTorch returns an
      empty array when padding crops exactly all of it.

    Every size-like int is at most ``2**31 - 1``; a one-element tuple ``(v,)``
    means ``(v, v)`` (not for ``output_size``), as in PyTorch.

    Args:
        stride, dilation: int or pair, each >= 1.
        padding: int, ``(pad_h, pad_w)`` or ``((top, bottom), (left, right))``:
            rows/columns cropped from the full stamped output.
        output_padding: int or pair, each smaller than stride or than
            dilation (PyTorch's rule: stride 1 with dilation 2 allows 1):
            extra rows/columns at the bottom/right. Several ``conv2d`` input
            sizes give the same output size when stride > 1; this picks one.
        groups: must divide C_in (C_in >= 1, as in PyTorch).
        output_size: ``(H_out, W_out)`` (a 3-D or 4-D shape's last two entries);
            overrides ``output_padding``; each must lie in
            ``[H_min, H_min + stride - 1]`` (``torch.nn.ConvTranspose2d``'s rule).
        algorithm: ``"auto"`` or one of ``available_algorithms("conv2d_grad_input")``.
        device: as in :func:`conv2d`.

    Example:

    >>> import numpy as np, fastconv
    >>> x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])        # (1, 1, 2, 2)
    >>> w = np.ones((1, 1, 2, 2))
    >>> fastconv.conv_transpose2d(x, w, stride=2)[0, 0].tolist()
    [[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0], [3.0, 3.0, 4.0, 4.0], [3.0, 3.0, 4.0, 4.0]]
    >>> fastconv.conv_transpose2d(x, w, stride=2, output_size=(5, 5)).shape
    (1, 1, 5, 5)
    """
    params = (stride, padding, output_padding, groups, dilation, output_size)
    try:  # plans.key's tuple, built inline: this is the per-call cost of every hit
        problem = None if device is not None else (
            "conv_transpose2d", algorithm if type(algorithm) is str else param(algorithm),
            type(input), input.shape, input.strides, input.dtype,
            type(weight), weight.shape, weight.strides, weight.dtype,
            *((None,) if bias is None else (type(bias), bias.shape, bias.strides, bias.dtype)),
            stride if type(stride) is int else param(stride),
            padding if type(padding) is int else param(padding),
            output_padding if type(output_padding) is int else param(output_padding),
            groups if type(groups) is int else param(groups),
            dilation if type(dilation) is int else param(dilation),
            output_size if output_size is None else param(output_size), *plans.state())
    except plans.NOT_KEYED:
        problem = None
    plan = plans.get(problem)
    if plan is None:
        problem = plans.cacheable(problem, (input, weight, bias))
        plan = plans.put(problem, _conv_transpose2d_plan(problem is not None, input, weight, bias,
                                                         *params, algorithm, device))
    return plan(input, weight, bias)


def _conv_transpose2d_plan(cacheable, input, weight, bias, stride, padding, output_padding,
                           groups, dilation, output_size, algorithm, device):
    """Check a conv_transpose2d call, choose its kernel and return the plan:
    ``plan(input, weight, bias)`` (see :func:`_conv2d_plan`)."""
    place = placement(device, input=input, weight=weight, bias=bias)
    with place.active():
        _check_ranks(True, input=input, weight=weight, bias=bias)
        x, w, b = place.floats(input=input, weight=weight, bias=bias)
        geo = _transpose_geometry(place, x, w, stride, padding, output_padding, groups, dilation,
                                  output_size)
        if b is not None and tuple(b.shape) != (geo.out_channels,):
            raise ValueError(
                f"bias must have shape (C_out,) = ({geo.out_channels},), got {tuple(b.shape)}"
            )
        params = geo.params()
        # conv2d's view of the problem: its input is this one's output
        choice = dispatch.choose(
            "conv2d_grad_input", place.device, algorithm,
            arrays=kernel_arrays(x.dtype, geo.x4.shape, w.shape, geo.out_shape), params=params,
            **dict(geo.problem(), input_shape=geo.out_shape))
        run = runner(choice.kernel, kernel_arrays(x.dtype, geo.x4.shape, w.shape, geo.out_shape),
                     params)
        shape4, dtype, unbatched = geo.out_shape, x.dtype, geo.unbatched

        if place is HOST:
            # a runner that adds the bias as it stores (the blocked kernels'), else a pass
            adds_bias = getattr(run, "adds_bias", False)

            def compute(x4, w, b):  # place.run's work, inline: a plan's per-call cost
                target = np.empty(shape4, dtype)
                if shape4[0]:
                    if b is not None and adds_bias:
                        run(x4, w, target, b)
                    else:
                        run(x4, w, target)
                        if b is not None:
                            target += b[:, None, None]
                return target[0] if unbatched else target
        else:
            def compute(x4, w, b):
                def fill(target):
                    run(x4, w, target)
                    if b is not None:
                        place.add_channel_bias(target, b)

                return place.run(fill, shape4, dtype, unbatched)

        return make_plan(place, cacheable, compute, (x, w, b),
                         (geo.x4, place.contiguous(w), place.contiguous(b)),
                         ("values", "plain", "plain"), unbatched, ("conv2d_grad_input", choice))


def conv_transpose2d_backward(
    grad_output: np.ndarray,
    input: np.ndarray,
    weight: np.ndarray,
    stride: int | tuple[int, int] = 1,
    padding: TransposedPadding = 0,
    output_padding: int | tuple[int, int] = 0,
    groups: int = 1,
    dilation: int | tuple[int, int] = 1,
    *,
    output_size: tuple[int, ...] | None = None,
    needs_input_grad: bool = True,
    needs_weight_grad: bool = True,
    needs_bias_grad: bool = True,
    algorithm: str = "auto",
    device: str | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Gradients of :func:`conv_transpose2d` with respect to input, weight and bias.

    A transposed convolution is conv2d's ``grad_input`` map, so its gradients
    are conv2d's other maps: ``grad_input = conv2d(grad_output, weight,
    stride, padding, dilation, groups)`` (the forward convolution), and
    ``grad_weight[c, k, r, s] = sum_{n,i,j} input[n, c, i, j] *
    grad_output_padded[n, k', i*stride_h + r*dilation_h, j*stride_w + s*dilation_w]``
    (conv2d's weight gradient with ``grad_output`` as the input and ``input``
    as the output gradient); ``grad_bias`` sums ``grad_output`` over N, H, W.

    Shapes: ``grad_output`` has the shape of ``conv_transpose2d``'s output;
    the gradients have the shapes of ``input``, ``weight`` and ``(C_out,)``.
    Arguments (``device`` too) as in :func:`conv_transpose2d`; ``needs_*`` as
    in :func:`conv2d_backward`.

    Example:

    >>> import numpy as np, fastconv
    >>> x, w = np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2))
    >>> gx, gw, gb = fastconv.conv_transpose2d_backward(np.ones((1, 1, 4, 4)), x, w, stride=2)
    >>> gx[0, 0].tolist(), gw[0, 0].tolist(), gb.tolist()
    ([[4.0, 4.0], [4.0, 4.0]], [[4.0, 4.0], [4.0, 4.0]], [16.0])
    """
    flags = (needs_input_grad, needs_weight_grad, needs_bias_grad)
    params = (stride, padding, output_padding, groups, dilation, output_size)
    problem = (None if device is not None else
               plans.key("conv_transpose2d_backward", (grad_output, input, weight), (),
                         (*params, *flags), algorithm))
    plan = plans.get(problem)
    if plan is None:
        problem = plans.cacheable(problem, (grad_output, input, weight))
        plan = plans.put(problem, _conv_transpose2d_backward_plan(
            problem is not None, grad_output, input, weight, *params, flags, algorithm, device))
    return plan(grad_output, input, weight)


def _conv_transpose2d_backward_plan(cacheable, grad_output, input, weight, stride, padding,
                                    output_padding, groups, dilation, output_size, flags,
                                    algorithm, device):
    """Check a conv_transpose2d_backward call, choose its kernels and return the plan:
    ``plan(grad_output, input, weight)`` (see :func:`_conv2d_plan`)."""
    place = placement(device, grad_output=grad_output, input=input, weight=weight)
    with place.active():
        _check_ranks(True, grad_output=grad_output, input=input, weight=weight)
        dy, x, w = place.floats(grad_output=grad_output, input=input, weight=weight)
        needs = _needs(needs_input_grad=flags[0], needs_weight_grad=flags[1],
                       needs_bias_grad=flags[2])
        geo = _transpose_geometry(place, x, w, stride, padding, output_padding, groups, dilation,
                                  output_size)
        dy4 = geo.batched(place, dy, "grad_output", geo.out_shape, "conv_transpose2d's output")
        w4 = place.contiguous(w)
        # conv2d's view of the same problem: its input is grad_output, its output the input
        conv = geo._replace(x4=dy4, out_channels=w.shape[0], out_size=tuple(geo.x4.shape[2:]))
        # a bigger conv2d output only where output_padding >= stride: crop it
        full = (dy4.shape[0], w.shape[0],
                *(shapes.output_length(dy4.shape[2 + a], w.shape[2 + a], geo.stride[a],
                                       geo.padding[a], geo.dilation[a]) for a in range(2)))
        x_shape, unbatched, params = tuple(geo.x4.shape), geo.unbatched, geo.params()
        kernels = _gradient_kernels(place, conv, dy4.dtype, needs, algorithm,
                                    ("conv2d", (dy4.shape, w4.shape, None, full)),
                                    ("conv2d_grad_weight", (dy4.shape, geo.x4.shape, w4.shape)))
        run_in, run_w, run_b = (None if k is None else k[1].kernel for k in kernels)

        def compute(dy4, x4, w):
            grad_input = grad_weight = grad_bias = None
            if needs[0]:
                target = place.empty(full, dy4.dtype)
                if full[0]:
                    run_in(dy4, w, None, target, *params)
                grad_input = (target if full[2:] == x_shape[2:]
                              else place.crop(target, *x_shape[2:]))
            if needs[1]:
                grad_weight = place.zeros(tuple(w.shape), dy4.dtype)
                if x4.shape[0]:
                    run_w(dy4, x4, grad_weight, *params)
            if needs[2]:
                grad_bias = place.zeros((dy4.shape[1],), dy4.dtype)
                if dy4.shape[0]:
                    run_b(dy4, grad_bias)
            return (place.give(grad_input, unbatched), place.give(grad_weight),
                    place.give(grad_bias))

        return make_plan(place, cacheable, compute, (dy, x, w), (dy4, geo.x4, w4),
                         ("values", "values", "plain"), unbatched,
                         *[k for k in kernels if k is not None])
