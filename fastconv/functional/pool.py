"""Pooling and unpooling: max and average pooling, their gradients, and two unpoolings.

Pooling slides the same windows as a convolution (:mod:`fastconv.shapes`
sizes both), with a max or a mean in place of the weighted sum. Unpooling
goes the other way: :func:`max_unpool2d` puts each value back where
:func:`max_pool2d` found it, :func:`repeat_unpool2d` copies it into a block.

Every op takes ``device=`` as :func:`fastconv.conv2d` does: None follows the
data (GPU arrays run on the GPU and give GPU arrays of the same kind), ``"cpu"``,
or ``"cuda"`` / ``"cuda:N"``, which copies numpy arguments to the GPU and the
result back.

Argument forms are PyTorch's: kernel_size, stride, padding and dilation take an
int, a pair or a one-element tuple ``(v,)`` meaning ``(v, v)``; pooling's
``stride=None`` or ``()`` means kernel_size (max_unpool2d, like PyTorch's, takes
only an int or a pair, and ``stride=None``). Every size-like int is at most
``2**31 - 1`` (PyTorch's pooling keeps them in 32-bit ints); numpy integers
count as ints, bools do not.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, overload

import numpy as np

from .. import dispatch, plans, shapes
from .._checks import check_not_scalar, check_rank, check_size, divisor, flag
from ..placement import Host, placement
from ..plans import param
from ._planned import kernel_arrays, make_plan, runner


def _plan(op: str, build, device, values: tuple, indices: tuple, params: tuple, algorithm):
    """The cached plan of a call (see :mod:`fastconv.plans`), or a new one from ``build``:
    ``build(cacheable, *values, *indices, *params, algorithm, device)``."""
    problem = None if device is not None else plans.key(op, values, indices, params, algorithm)
    return _keyed_plan(problem, build, device, values, indices, params, algorithm)


def _keyed_plan(problem: tuple | None, build, device, values: tuple, indices: tuple,
                params: tuple, algorithm):
    """:func:`_plan` with the key :func:`fastconv.plans.key` gives already built (the hot
    ops build it inline)."""
    plan = plans.get(problem)
    if plan is None:
        problem = plans.cacheable(problem, values, indices)
        plan = plans.put(problem, build(problem is not None, *values, *indices, *params,
                                        algorithm, device))
    return plan

_BATCHED = "4-D (N, C, H, W) or 3-D (C, H, W)"


class _Window(NamedTuple):
    """A pooling window, normalised: pairs ``(h, w)`` and the output size."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out_size: tuple[int, int]
    ceil_mode: bool


def _batched(place: Host, x, name: str) -> tuple:
    """``x`` (``(N, C, H, W)`` or ``(C, H, W)``, its rank checked by :func:`check_rank`) as a
    C-contiguous 4-D array, and whether it was unbatched."""
    shape = tuple(x.shape)
    if 0 in shape[-3:]:
        raise ValueError(f"{name} must have non-empty C, H and W, got shape {shape}")
    return place.batched(x), len(shape) == 3


def _input_shape(value: object, name: str = "input_shape") -> tuple[tuple[int, ...], bool]:
    """A shape ``(N, C, H, W)`` or ``(C, H, W)`` as a 4-D shape, and whether it was 3-D."""
    expected = (f"{name} must be a shape (N, C, H, W) or (C, H, W) with N >= 0 and "
                f"C, H, W >= 1, each at most 2**31 - 1")
    if not isinstance(value, (tuple, list)) or len(value) not in (3, 4):
        raise ValueError(f"{expected}, got {value!r}")
    found = [shapes._as_int(v) for v in value]
    sizes = [v for v in found if v is not None]
    if len(sizes) != len(found):
        raise TypeError(f"{expected}, got {value!r}")
    if min(sizes[-3:]) < 1 or sizes[0] < 0 or max(sizes) > shapes.MAX_INT:
        raise ValueError(f"{expected}, got {value!r}")
    unbatched = len(sizes) == 3
    return tuple([1] * unbatched + sizes), unbatched


def _window(size: tuple[int, int], kernel_size: object, stride: object, padding: object,
            dilation: object, ceil_mode: object, input_name: str = "input") -> _Window:
    """Validate a pooling window over an input of ``size`` ``(H, W)``, as PyTorch does:
    ``stride=None`` (or ``()``) is ``kernel_size``, each pad is at most half the (undilated)
    kernel, a one-element tuple ``(v,)`` is ``(v, v)``."""
    kernel = shapes.pair(kernel_size, "kernel_size")
    step = shapes.pool_stride(stride, kernel)
    pad = shapes.pair(padding, "padding", minimum=0)
    spacing = shapes.pair(dilation, "dilation")
    ceil = flag(ceil_mode, "ceil_mode")
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(
            f"padding must be at most half of kernel_size (pad <= kernel_size // 2 on each axis, "
            f"as in PyTorch), got padding={padding!r} with kernel_size={kernel}"
        )
    out = tuple(shapes.output_length(size[a], kernel[a], step[a], (pad[a], pad[a]), spacing[a],
                                     ceil) for a in range(2))
    if min(out) <= 0:
        span = tuple(spacing[a] * (kernel[a] - 1) + 1 for a in range(2))
        raise ValueError(
            f"kernel_size {kernel} with dilation {spacing} spans {span}, larger than the padded "
            f"{input_name} {(size[0] + 2 * pad[0], size[1] + 2 * pad[1])} "
            f"({input_name} {size}, padding {pad})" + shapes._CEIL_NOTE * ceil
        )
    for a in range(2):
        _check_windows_touch_input(size[a], kernel[a], step[a], pad[a], spacing[a], out[a],
                                   "HW"[a], input_name)
    return _Window(kernel, step, pad, spacing, out, ceil)  # type: ignore[arg-type]


def _check_windows_touch_input(length, kernel, stride, pad, dilation, out_length, axis,
                               input_name):
    """With dilation a window can fall between the input's edge and the far padding; its
    max would be -inf with no position to report (PyTorch returns an index outside the
    plane), so such a window is an error."""
    if dilation == 1:  # pad <= kernel // 2 keeps every plain window on the input
        return
    for o in range(out_length):
        start = o * stride - pad
        first = 0 if start >= 0 else -(start // dilation)  # first tap at or after 0
        if first >= kernel or start + first * dilation >= length:
            raise ValueError(
                f"window {o} along {axis} reads only padding: its taps {start}, "
                f"{start + dilation}, ... (kernel_size {kernel}, dilation {dilation}, padding "
                f"{pad}) skip over the {input_name} of length {length}; reduce padding or dilation"
            )


def _index_array(place: Host, value: object, name: str, shape: tuple[int, ...] | None = None,
                 what: str = ""):
    """``value`` as a C-contiguous int64 array (of ``shape``, with ``what`` naming it, if given)."""
    array = place.indices(value, name)
    if shape is not None and tuple(array.shape) != shape:
        raise ValueError(
            f"{name} must have the shape of {what}, {shape}, got {tuple(array.shape)}")
    return array


def _raise_bad_index(place: Host, position: int, indices, name: str, plane: tuple[int, int],
                     what: str) -> None:
    if position < 0:
        return
    where = np.unravel_index(position, tuple(indices.shape))
    raise ValueError(
        f"{name} holds {place.item(indices, position)} at {tuple(int(i) for i in where)}, "
        f"outside [0, {plane[0] * plane[1]}): each index must be a flat position h * W + w in "
        f"a {plane[0]} x {plane[1]} plane of {what}"
    )


def _filled(place: Host, kernel, source_shape: tuple[int, ...], shape: tuple[int, ...], dtype,
            unbatched: bool, params: tuple):
    """``compute(source)`` of a plan: a new array of ``shape`` that ``kernel(source, out,
    *params)`` fills (``source`` of ``source_shape``), in the user's view."""
    run = runner(kernel, kernel_arrays(dtype, source_shape, shape), params)

    def compute(source):
        out = place.empty(shape, dtype)
        if shape[0]:
            run(source, out)
        return place.give(out, unbatched)

    return compute


def _gathered(place: Host, kernel, sources: tuple, shape: tuple[int, ...], dtype,
              unbatched: bool, plane: tuple[int, ...], what: str):
    """``compute(values, where)`` of a plan whose ``kernel(values, where, out)`` moves
    values by their indices (``sources``: the shapes of the two) and reports the first
    index outside the ``plane`` of ``what`` (a ValueError here), or -1."""
    run = runner(kernel, kernel_arrays(dtype, *sources, shape), ())

    def compute(values, where):
        out = place.empty(shape, dtype)
        if shape[0]:
            bad = run(values, where, out)
            _raise_bad_index(place, bad, where, "indices", plane, what)
        return place.give(out, unbatched)

    return compute


def _as4(array, unbatched: bool):
    """A C-contiguous 3-D array with a batch axis of 1 in front when ``unbatched``."""
    return array.reshape(1, *array.shape) if unbatched else array


@overload
def max_pool2d(input: np.ndarray, kernel_size: int | tuple[int, int],
               stride: int | tuple[int, int] | None = ..., padding: int | tuple[int, int] = ...,
               dilation: int | tuple[int, int] = ..., ceil_mode: bool = ...,
               return_indices: Literal[False] = ..., *, algorithm: str = ...,
               device: str | None = ...) -> np.ndarray: ...
@overload
def max_pool2d(input: np.ndarray, kernel_size: int | tuple[int, int],
               stride: int | tuple[int, int] | None, padding: int | tuple[int, int],
               dilation: int | tuple[int, int], ceil_mode: bool, return_indices: Literal[True],
               *, algorithm: str = ...,
               device: str | None = ...) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def max_pool2d(input: np.ndarray, kernel_size: int | tuple[int, int],
               stride: int | tuple[int, int] | None = ..., padding: int | tuple[int, int] = ...,
               dilation: int | tuple[int, int] = ..., ceil_mode: bool = ..., *,
               return_indices: Literal[True], algorithm: str = ...,
               device: str | None = ...) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def max_pool2d(input: np.ndarray, kernel_size: int | tuple[int, int],
               stride: int | tuple[int, int] | None = ..., padding: int | tuple[int, int] = ...,
               dilation: int | tuple[int, int] = ..., ceil_mode: bool = ...,
               return_indices: bool = ..., *, algorithm: str = ...,
               device: str | None = ...) -> np.ndarray | tuple[np.ndarray, np.ndarray]: ...
def max_pool2d(
    input: np.ndarray,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
    *,
    algorithm: str = "auto",
    device: str | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """2-D max pooling, as ``torch.nn.functional.max_pool2d``.

    ``out[n, c, i, j] = max_{r, s} x[n, c, i * stride_h + r * dilation_h - pad_h,
    j * stride_w + s * dilation_w - pad_w]`` over the taps inside the input
    (the padding counts as -inf).

    Shapes (N images, C channels, kernel ``kernel_h x kernel_w``):

    - ``input``: ``(N, C, H, W)``, or ``(C, H, W)`` for one image (the output
      then has no batch axis either).
    - output and indices: ``(N, C, H_out, W_out)`` with
      ``H_out = floor((H + 2 * pad_h - dilation_h * (kernel_h - 1) - 1) / stride_h) + 1``
      (``ceil`` with ``ceil_mode``), and likewise ``W_out``; see
      :func:`fastconv.conv_output_size`.

    Args:
        input: float32 or float64 array, any memory layout; never modified.
        kernel_size: int or ``(kernel_h, kernel_w)``, each >= 1.
        stride: int or pair, each >= 1; None (the default) or ``()`` means
            ``kernel_size``.
        padding: int or ``(pad_h, pad_w)`` on both sides of each axis, each
            at most ``kernel_size // 2`` (as in PyTorch).
        dilation: int or pair, each >= 1: spacing of the window's taps.
        ceil_mode: a bool: round the output size up, keeping a last, partial
            window only where it starts inside the input or its left/top
            padding. As in PyTorch, such a window may be larger than the whole
            padded input (``max_pool2d(x, 3, ceil_mode=True)`` on 2 rows gives
            one row) as long as it overhangs it by less than ``stride``.
        return_indices: also return where each maximum came from (a bool, or
            the int 0 or 1 as PyTorch takes).
        algorithm: ``"auto"`` or one of
            :func:`fastconv.available_algorithms` ``("max_pool2d")``.
        device: None (follow the data), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``,
            as in :func:`fastconv.conv2d`.

    Returns:
        The pooled array in the input's dtype; with ``return_indices``,
        ``(output, indices)`` where ``indices`` (int64) holds the flat
        position ``h * W + w`` of each maximum within its ``H x W`` plane,
        PyTorch's format, ready for :func:`max_unpool2d` and
        :func:`max_pool2d_backward`. Ties go to the first maximum in row-major
        order over the window; a window holding NaN gives NaN, and its index
        is the last NaN's (as PyTorch's CPU kernel does).

    Raises:
        TypeError: a non-float input, a non-int size, a non-bool flag.
        ValueError: wrong input shape, non-positive kernel_size, stride or
            dilation, negative padding or padding above half the kernel, a
            size above ``2**31 - 1``, a window larger than the padded input (by
            ``stride`` or more with ``ceil_mode``), a dilated window that reads
            only padding: its taps all fall in the padding, so it has no maximum
            and no position. PyTorch returns -inf there with an index that is
            not in the window (often outside the plane, and its backward then
            writes out of bounds); fastconv refuses such a window instead.

    Example (2 x 2 max pooling of a 4 x 4 image, stride 1 and stride 2):

    >>> import numpy as np, fastconv
    >>> x = np.array([[1, 0, 1, 0], [2, 1, 3, 2], [1, 2, 0, 4], [2, 2, 3, 0]], np.float32)
    >>> fastconv.max_pool2d(x[None], 2, stride=1)[0].tolist()
    [[2.0, 3.0, 3.0], [2.0, 3.0, 4.0], [2.0, 3.0, 4.0]]
    >>> y, indices = fastconv.max_pool2d(x[None], 2, return_indices=True)
    >>> y[0].tolist(), indices[0].tolist()
    ([[2.0, 3.0], [2.0, 4.0]], [[4, 6], [9, 11]])
    """
    try:  # plans.key's tuple, built inline: this is the per-call cost of every hit
        problem = None if device is not None else (
            "max_pool2d", algorithm if type(algorithm) is str else param(algorithm),
            type(input), input.shape, input.strides, input.dtype,
            kernel_size if type(kernel_size) is int else param(kernel_size),
            stride if type(stride) is int or stride is None else param(stride),
            padding if type(padding) is int else param(padding),
            dilation if type(dilation) is int else param(dilation),
            param(ceil_mode), param(return_indices), *plans.state())
    except plans.NOT_KEYED:
        problem = None
    return _keyed_plan(problem, _max_pool2d_plan, device, (input,), (),
                       (kernel_size, stride, padding, dilation, ceil_mode, return_indices),
                       algorithm)(input)


def _max_pool2d_plan(cacheable, input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices, algorithm, device):
    place = placement(device, input=input)
    with place.active():
        check_rank(input, "input", _BATCHED)
        (x,) = place.floats(input=input)
        x4, unbatched = _batched(place, x, "input")
        win = _window(x4.shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
        with_indices = flag(return_indices, "return_indices", ints=True)
        choice = dispatch.choose("max_pool2d", place.device, algorithm,
                                 input_shape=tuple(x4.shape), window=win, dtype=x4.dtype)
        kernel, dtype, shape = choice.kernel, x4.dtype, (*x4.shape[:2], *win.out_size)
        window = (win.kernel_size, win.stride, win.padding, win.dilation, win.ceil_mode)

        run = runner(kernel, kernel_arrays(dtype, tuple(x4.shape), shape,
                                           shape if with_indices else None), window)

        def compute(x4):
            out = place.empty(shape, dtype)
            indices = place.empty(shape, np.int64) if with_indices else None
            if shape[0]:
                run(x4, out, indices)
            if with_indices:
                return place.give(out, unbatched), place.give(indices, unbatched)
            return place.give(out, unbatched)

        return make_plan(place, cacheable, compute, (x,), (x4,), ("values",), unbatched,
                         ("max_pool2d", choice))


def max_pool2d_backward(
    grad_output: np.ndarray,
    indices: np.ndarray,
    input_shape: tuple[int, ...],
    *,
    algorithm: str = "auto",
    device: str | None = None,
) -> np.ndarray:
    """Gradient of :func:`max_pool2d` with respect to its input.

    Only the maximum of each window moved the output, so
    ``grad_input[n, c].flat[indices[n, c, i, j]] += grad_output[n, c, i, j]``;
    a position that is the maximum of several overlapping windows gets the
    sum, every other position 0.

    Shapes: ``grad_output`` and ``indices`` ``(N, C, H_out, W_out)`` (or
    ``(C, H_out, W_out)``); ``input_shape`` ``(N, C, H, W)`` (or
    ``(C, H, W)``), the shape of the pooled input and of the result.

    Args:
        grad_output: float32 or float64 array; the result has its dtype.
        indices: integer array from ``max_pool2d(..., return_indices=True)``:
            flat positions ``h * W + w``, each in ``[0, H * W)``.
        input_shape: the pooled input's shape, with grad_output's N and C.
        algorithm: ``"auto"`` or one of ``available_algorithms("max_pool2d_backward")``.

    Raises:
        TypeError: non-float grad_output, non-integer indices.
        ValueError: mismatched shapes, an index outside ``[0, H * W)``.

    Example:

    >>> import numpy as np, fastconv
    >>> x = np.array([[[1.0, 5.0, 2.0], [0.0, 3.0, 4.0]]])      # (C, H, W) = (1, 2, 3)
    >>> y, indices = fastconv.max_pool2d(x, 2, stride=1, return_indices=True)
    >>> indices.tolist()
    [[[1, 1]]]
    >>> fastconv.max_pool2d_backward(np.ones_like(y), indices, x.shape).tolist()
    [[[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]]
    """
    try:  # plans.key's tuple, built inline
        problem = None if device is not None else (
            "max_pool2d_backward", algorithm if type(algorithm) is str else param(algorithm),
            type(grad_output), grad_output.shape, grad_output.strides, grad_output.dtype,
            type(indices), indices.shape, indices.strides, indices.dtype, param(input_shape),
            *plans.state())
    except plans.NOT_KEYED:
        problem = None
    return _keyed_plan(problem, _max_pool2d_backward_plan, device, (grad_output,), (indices,),
                       (input_shape,), algorithm)(grad_output, indices)


def _max_pool2d_backward_plan(cacheable, grad_output, indices, input_shape, algorithm, device):
    place = placement(device, grad_output=grad_output, indices=indices)
    with place.active():
        check_rank(grad_output, "grad_output", _BATCHED)
        check_not_scalar(indices, "indices", _BATCHED)
        (dy,) = place.floats(grad_output=grad_output)
        dy4, unbatched = _batched(place, dy, "grad_output")
        shape4, shape_unbatched = _input_shape(input_shape)
        check_size(shape4, dy4.dtype.itemsize, "grad_input", "check input_shape")
        if shape_unbatched != unbatched or shape4[:2] != tuple(dy4.shape[:2]):
            raise ValueError(
                f"input_shape must have grad_output's {'C' if unbatched else 'N, C'} and be "
                f"{'3' if unbatched else '4'}-D, got input_shape {tuple(input_shape)} for "
                f"grad_output of shape {tuple(dy.shape)}"
            )
        where = _index_array(place, indices, "indices", tuple(dy.shape), "grad_output")
        where4 = _as4(where, unbatched)
        choice = dispatch.choose("max_pool2d_backward", place.device, algorithm,
                                 input_shape=shape4, dtype=dy4.dtype)
        kernel, dtype = choice.kernel, dy4.dtype

        compute = _gathered(place, kernel, (tuple(dy4.shape), tuple(where4.shape)), shape4, dtype,
                            unbatched, shape4[2:],
                            "the pooled input")

        return make_plan(place, cacheable, compute, (dy, indices), (dy4, where4),
                         ("values", "indices"), unbatched, ("max_pool2d_backward", choice))


def avg_pool2d(
    input: np.ndarray,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    *,
    algorithm: str = "auto",
    device: str | None = None,
) -> np.ndarray:
    """2-D average pooling, as ``torch.nn.functional.avg_pool2d``.

    ``out[n, c, i, j] = sum_{r, s} x_padded[n, c, i * stride_h + r, j * stride_w + s] / divisor``
    with zero padding, where ``divisor`` is, as in PyTorch:

    - ``divisor_override`` when given;
    - else, with ``count_include_pad`` (the default), the size of the window
      clipped to the padded input: ``(h_end - h_start) * (w_end - w_start)``
      with ``h_start = i * stride_h - pad_h`` and
      ``h_end = min(h_start + kernel_h, H + pad_h)`` (only a ``ceil_mode``
      window runs past the padding and is clipped);
    - else the number of the window's taps inside the input.

    Shapes: ``input`` ``(N, C, H, W)`` or ``(C, H, W)``; output
    ``(N, C, H_out, W_out)`` with
    ``H_out = floor((H + 2 * pad_h - kernel_h) / stride_h) + 1`` (``ceil``
    with ``ceil_mode``; see :func:`max_pool2d`).

    Args:
        input: float32 or float64 array, any memory layout; never modified.
        kernel_size: int or ``(kernel_h, kernel_w)``, each >= 1.
        stride: int or pair, each >= 1; None (the default) or ``()`` means
            ``kernel_size``.
        padding: int or ``(pad_h, pad_w)``, each at most ``kernel_size // 2``.
        ceil_mode: a bool: round the output size up, as in :func:`max_pool2d`.
        count_include_pad: a bool: count the zero padding in the divisor.
        divisor_override: a non-zero int to divide every sum by (negative
            too, as PyTorch allows; magnitude below ``2**63``), or None.
        algorithm: ``"auto"`` or one of ``available_algorithms("avg_pool2d")``.

    Raises:
        TypeError, ValueError: as :func:`max_pool2d`, and for a
        ``divisor_override`` that is not a non-zero int.

    Example:

    >>> import numpy as np, fastconv
    >>> x = np.array([[[1, 0, 1, 0], [2, 1, 3, 2], [1, 2, 0, 4], [2, 2, 3, 0]]], np.float64)
    >>> fastconv.avg_pool2d(x, 2).tolist()
    [[[1.0, 1.5], [1.75, 1.75]]]
    >>> fastconv.avg_pool2d(x, 3, stride=2, padding=1)[0, 0].tolist()       # 4 / 9
    [0.4444444444444444, 0.7777777777777778]
    >>> fastconv.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)[0, 0].tolist()
    [1.0, 1.1666666666666667]
    """
    try:  # plans.key's tuple, built inline
        problem = None if device is not None else (
            "avg_pool2d", algorithm if type(algorithm) is str else param(algorithm),
            type(input), input.shape, input.strides, input.dtype,
            kernel_size if type(kernel_size) is int else param(kernel_size),
            stride if type(stride) is int or stride is None else param(stride),
            padding if type(padding) is int else param(padding),
            param(ceil_mode), param(count_include_pad),
            divisor_override if divisor_override is None else param(divisor_override),
            *plans.state())
    except plans.NOT_KEYED:
        problem = None
    return _keyed_plan(problem, _avg_pool2d_plan, device, (input,), (),
                       (kernel_size, stride, padding, ceil_mode, count_include_pad,
                        divisor_override), algorithm)(input)


def _avg_pool2d_plan(cacheable, input, kernel_size, stride, padding, ceil_mode,
                     count_include_pad, divisor_override, algorithm, device):
    place = placement(device, input=input)
    with place.active():
        check_rank(input, "input", _BATCHED)
        (x,) = place.floats(input=input)
        x4, unbatched = _batched(place, x, "input")
        win = _window(x4.shape[2:], kernel_size, stride, padding, 1, ceil_mode)
        include_pad = flag(count_include_pad, "count_include_pad")
        factor = divisor(divisor_override)
        choice = dispatch.choose("avg_pool2d", place.device, algorithm,
                                 input_shape=tuple(x4.shape), window=win, dtype=x4.dtype)
        kernel, dtype, shape = choice.kernel, x4.dtype, (*x4.shape[:2], *win.out_size)
        window = (win.kernel_size, win.stride, win.padding, win.ceil_mode, include_pad, factor)

        compute = _filled(place, kernel, tuple(x4.shape), shape, dtype, unbatched, window)

        return make_plan(place, cacheable, compute, (x,), (x4,), ("values",), unbatched,
                         ("avg_pool2d", choice))


def avg_pool2d_backward(
    grad_output: np.ndarray,
    input_shape: tuple[int, ...],
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    *,
    algorithm: str = "auto",
    device: str | None = None,
) -> np.ndarray:
    """Gradient of :func:`avg_pool2d` with respect to its input.

    Each output was ``sum(window) / divisor``, so every tap of a window inside
    the input receives ``grad_output[n, c, i, j] / divisor``; overlapping
    windows add up. (The transposed average pooling: a transposed convolution
    of ``grad_output / divisor`` with a kernel of ones.)

    Shapes: ``grad_output`` ``(N, C, H_out, W_out)`` (or ``(C, H_out, W_out)``),
    exactly avg_pool2d's output shape for ``input_shape`` ``(N, C, H, W)`` (or
    ``(C, H, W)``), which is the result's shape. The other arguments are those
    of the forward call, in every form :func:`avg_pool2d` accepts.

    Example:

    >>> import numpy as np, fastconv
    >>> fastconv.avg_pool2d_backward(np.ones((1, 2, 2)), (1, 3, 3), 2, stride=1).tolist()
    [[[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]]]
    """
    return _plan("avg_pool2d_backward", _avg_pool2d_backward_plan, device, (grad_output,), (),
                 (input_shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
                  divisor_override), algorithm)(grad_output)


def _avg_pool2d_backward_plan(cacheable, grad_output, input_shape, kernel_size, stride, padding,
                              ceil_mode, count_include_pad, divisor_override, algorithm, device):
    place = placement(device, grad_output=grad_output)
    with place.active():
        check_rank(grad_output, "grad_output", _BATCHED)
        (dy,) = place.floats(grad_output=grad_output)
        shape4, unbatched = _input_shape(input_shape)
        check_size(shape4, dy.dtype.itemsize, "grad_input", "check input_shape")
        win = _window(shape4[2:], kernel_size, stride, padding, 1, ceil_mode, "input_shape")
        include_pad = flag(count_include_pad, "count_include_pad")
        factor = divisor(divisor_override)
        expected = (*shape4[:2], *win.out_size)
        if tuple(dy.shape) != expected[unbatched:]:
            raise ValueError(
                f"grad_output must have the shape of avg_pool2d's output for input_shape "
                f"{tuple(input_shape)}, {expected[unbatched:]}, got {tuple(dy.shape)}"
            )
        dy4 = place.batched(dy)
        choice = dispatch.choose("avg_pool2d_backward", place.device, algorithm,
                                 input_shape=shape4, window=win, dtype=dy.dtype)
        kernel, dtype = choice.kernel, dy.dtype
        window = (win.kernel_size, win.stride, win.padding, win.ceil_mode, include_pad, factor)

        compute = _filled(place, kernel, tuple(dy4.shape), shape4, dtype, unbatched, window)

        return make_plan(place, cacheable, compute, (dy,), (dy4,), ("values",), unbatched,
                         ("avg_pool2d_backward", choice))


def max_unpool2d(
    input: np.ndarray,
    indices: np.ndarray,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    output_size: tuple[int, ...] | None = None,
    *,
    algorithm: str = "auto",
    device: str | None = None,
) -> np.ndarray:
    """Max unpooling, as ``torch.nn.functional.max_unpool2d``: the partial inverse of
    :func:`max_pool2d`.

    Each value goes back to the position its maximum was taken from and
    every other position is 0:
    ``out[n, c].flat[indices[n, c, i, j]] = input[n, c, i, j]``. Where several
    ``(i, j)`` of one plane hold the same index, fastconv's rule (the same on
    the CPU and the GPU, every run) keeps the value of the last of them in
    row-major order. PyTorch promises no order there (its multi-threaded and
    GPU kernels write in any order).

    Shapes: ``input`` and ``indices`` ``(N, C, H, W)`` (or ``(C, H, W)``);
    output ``(N, C, H_out, W_out)`` with, by default,
    ``H_out = (H - 1) * stride_h - 2 * pad_h + kernel_h`` (the size of the
    pooled input, up to the rows the pooling dropped), likewise ``W_out``.

    Args:
        input: float32 or float64 array, any memory layout; never modified.
        indices: integer array from ``max_pool2d(..., return_indices=True)``,
            each in ``[0, H_out * W_out)``.
        kernel_size, stride, padding: the pooling's, an int or a pair each
            (``stride=None`` means ``kernel_size``; PyTorch's max_unpool2d refuses
            ``(v,)`` and ``stride=()``, and so does this); they only set the
            output size.
        output_size: ``(H_out, W_out)``, or a longer shape whose last two
            entries are; each must lie strictly within ``stride`` of the
            default (PyTorch's rule). Use it to restore an odd input size.
        algorithm: ``"auto"`` or one of ``available_algorithms("max_unpool2d")``.

    Raises:
        TypeError: non-float input, non-integer indices.
        ValueError: mismatched shapes, an unreachable ``output_size``, an index
            outside ``[0, H_out * W_out)``.

    Example: unpooling puts each maximum back where it was found.

    >>> import numpy as np, fastconv
    >>> x = np.array([[[1, 0, 1, 0], [2, 1, 3, 2], [1, 2, 0, 4], [2, 2, 3, 0]]], np.float32)
    >>> y, indices = fastconv.max_pool2d(x, 2, return_indices=True)
    >>> fastconv.max_unpool2d(y, indices, 2)[0].tolist()
    [[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 3.0, 0.0], [0.0, 2.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]]
    """
    return _plan("max_unpool2d", _max_unpool2d_plan, device, (input,), (indices,),
                 (kernel_size, stride, padding, output_size), algorithm)(input, indices)


def _max_unpool2d_plan(cacheable, input, indices, kernel_size, stride, padding, output_size,
                       algorithm, device):
    place = placement(device, input=input, indices=indices)
    with place.active():
        check_rank(input, "input", _BATCHED)
        check_not_scalar(indices, "indices", _BATCHED)
        (x,) = place.floats(input=input)
        x4, unbatched = _batched(place, x, "input")
        where = _index_array(place, indices, "indices", tuple(x.shape), "input")
        where4 = _as4(where, unbatched)
        out_size = shapes.unpool_output_size(tuple(x4.shape[2:]), kernel_size, stride,
                                              padding, output_size)
        check_size((*x4.shape[:2], *out_size), x4.dtype.itemsize, "max_unpool2d's output",
                   "check kernel_size, stride and padding")
        choice = dispatch.choose("max_unpool2d", place.device, algorithm,
                                 input_shape=tuple(x4.shape), out_size=out_size, dtype=x4.dtype)
        kernel, dtype, shape = choice.kernel, x4.dtype, (*x4.shape[:2], *out_size)

        compute = _gathered(place, kernel, (tuple(x4.shape), tuple(where4.shape)), shape, dtype,
                            unbatched, out_size, "the output")

        return make_plan(place, cacheable, compute, (x, indices), (x4, where4),
                         ("values", "indices"), unbatched, ("max_unpool2d", choice))


def max_unpool2d_backward(
    grad_output: np.ndarray,
    indices: np.ndarray,
    *,
    algorithm: str = "auto",
    device: str | None = None,
) -> np.ndarray:
    """Gradient of :func:`max_unpool2d` with respect to its input: a gather,
    ``grad_input[n, c, i, j] = grad_output[n, c].flat[indices[n, c, i, j]]``.

    Shapes: ``grad_output`` ``(N, C, H_out, W_out)`` (or ``(C, H_out, W_out)``),
    the unpooled output's shape; ``indices`` ``(N, C, H, W)`` (or
    ``(C, H, W)``), each in ``[0, H_out * W_out)``; the result has the shape of
    ``indices`` and the dtype of ``grad_output``. As in PyTorch, every input
    reads its position, also where two indices are equal.

    Example:

    >>> import numpy as np, fastconv
    >>> dy = np.arange(16.0).reshape(1, 4, 4)
    >>> fastconv.max_unpool2d_backward(dy, np.array([[[4, 6], [9, 11]]])).tolist()
    [[[4.0, 6.0], [9.0, 11.0]]]
    """
    return _plan("max_unpool2d_backward", _max_unpool2d_backward_plan, device, (grad_output,),
                 (indices,), (), algorithm)(grad_output, indices)


def _max_unpool2d_backward_plan(cacheable, grad_output, indices, algorithm, device):
    place = placement(device, grad_output=grad_output, indices=indices)
    with place.active():
        check_rank(grad_output, "grad_output", _BATCHED)
        check_not_scalar(indices, "indices", _BATCHED)
        (dy,) = place.floats(grad_output=grad_output)
        dy4, unbatched = _batched(place, dy, "grad_output")
        where = _index_array(place, indices, "indices")
        dy_shape, where_shape = tuple(dy.shape), tuple(where.shape)
        if (len(where_shape) != len(dy_shape) or where_shape[:-2] != dy_shape[:-2]
                or 0 in where_shape[-2:]):
            raise ValueError(
                f"indices must be {len(dy_shape)}-D with grad_output's leading sizes "
                f"{dy_shape[:-2]} and non-empty H, W ((N, C, H, W) or (C, H, W)), got shape "
                f"{where_shape}"
            )
        where4 = _as4(where, unbatched)
        choice = dispatch.choose("max_unpool2d_backward", place.device, algorithm,
                                 input_shape=tuple(where4.shape), dtype=dy4.dtype)
        kernel, dtype = choice.kernel, dy4.dtype
        shape, plane = tuple(where4.shape), tuple(dy4.shape[2:])

        compute = _gathered(place, kernel, (tuple(dy4.shape), shape), shape, dtype, unbatched,
                            plane, "grad_output")

        return make_plan(place, cacheable, compute, (dy, indices), (dy4, where4),
                         ("values", "indices"), unbatched, ("max_unpool2d_backward", choice))


def repeat_unpool2d(
    input: np.ndarray,
    scale: int | tuple[int, int],
    *,
    algorithm: str = "auto",
    device: str | None = None,
) -> np.ndarray:
    """Unpooling by simple repetition: each value fills a ``scale_h x scale_w`` block,
    ``out[n, c, i * scale_h + a, j * scale_w + b] = input[n, c, i, j]``.

    The same as nearest-neighbour upsampling by an integer factor
    (``torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")``).

    Shapes: ``input`` ``(N, C, H, W)`` (or ``(C, H, W)``); output
    ``(N, C, H * scale_h, W * scale_w)``.

    Args:
        input: float32 or float64 array, any memory layout; never modified.
        scale: int or ``(scale_h, scale_w)``, each >= 1.
        algorithm: ``"auto"`` or one of ``available_algorithms("repeat_unpool2d")``.

    Example:

    >>> import numpy as np, fastconv
    >>> fastconv.repeat_unpool2d(np.array([[[2.0, 3.0], [2.0, 4.0]]]), 2)[0].tolist()
    [[2.0, 2.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0], [2.0, 2.0, 4.0, 4.0], [2.0, 2.0, 4.0, 4.0]]
    """
    return _plan("repeat_unpool2d", _repeat_unpool2d_plan, device, (input,), (), (scale,),
                 algorithm)(input)


def _repeat_unpool2d_plan(cacheable, input, scale, algorithm, device):
    place = placement(device, input=input)
    with place.active():
        check_rank(input, "input", _BATCHED)
        (x,) = place.floats(input=input)
        x4, unbatched = _batched(place, x, "input")
        factor = shapes.pair(scale, "scale")
        check_size((*x4.shape[:2], x4.shape[2] * factor[0], x4.shape[3] * factor[1]),
                   x4.dtype.itemsize, "repeat_unpool2d's output", f"check scale={scale!r}")
        choice = dispatch.choose("repeat_unpool2d", place.device, algorithm,
                                 input_shape=tuple(x4.shape), scale=factor, dtype=x4.dtype)
        kernel, dtype = choice.kernel, x4.dtype
        shape = (*x4.shape[:2], x4.shape[2] * factor[0], x4.shape[3] * factor[1])

        compute = _filled(place, kernel, tuple(x4.shape), shape, dtype, unbatched, (factor,))

        return make_plan(place, cacheable, compute, (x,), (x4,), ("values",), unbatched,
                         ("repeat_unpool2d", choice))


def repeat_unpool2d_backward(
    grad_output: np.ndarray,
    scale: int | tuple[int, int],
    *,
    algorithm: str = "auto",
    device: str | None = None,
) -> np.ndarray:
    """Gradient of :func:`repeat_unpool2d`: each value's gradient is the sum of
    ``grad_output`` over the block it was copied to.

    Shapes: ``grad_output`` ``(N, C, H * scale_h, W * scale_w)`` (or without N),
    whose height and width must be multiples of the scale; the result is
    ``(N, C, H, W)``.

    Example:

    >>> import numpy as np, fastconv
    >>> fastconv.repeat_unpool2d_backward(np.arange(16.0).reshape(1, 4, 4), 2).tolist()
    [[[10.0, 18.0], [42.0, 50.0]]]
    """
    return _plan("repeat_unpool2d_backward", _repeat_unpool2d_backward_plan, device,
                 (grad_output,), (), (scale,), algorithm)(grad_output)


def _repeat_unpool2d_backward_plan(cacheable, grad_output, scale, algorithm, device):
    place = placement(device, grad_output=grad_output)
    with place.active():
        check_rank(grad_output, "grad_output", _BATCHED)
        (dy,) = place.floats(grad_output=grad_output)
        dy4, unbatched = _batched(place, dy, "grad_output")
        factor = shapes.pair(scale, "scale")
        shape4 = tuple(dy4.shape)
        if shape4[2] % factor[0] or shape4[3] % factor[1]:
            raise ValueError(
                f"grad_output's height and width {shape4[2:]} must be multiples of scale "
                f"{factor}, got grad_output of shape {shape4[unbatched:]}"
            )
        choice = dispatch.choose("repeat_unpool2d_backward", place.device, algorithm,
                                 input_shape=shape4, scale=factor, dtype=dy4.dtype)
        kernel, dtype = choice.kernel, dy4.dtype
        shape = (*shape4[:2], shape4[2] // factor[0], shape4[3] // factor[1])

        compute = _filled(place, kernel, shape4, shape, dtype, unbatched, (factor,))

        return make_plan(place, cacheable, compute, (dy,), (dy4,), ("values",), unbatched,
                         ("repeat_unpool2d_backward", choice))
