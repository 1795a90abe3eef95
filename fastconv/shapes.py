"""Shape rules of convolution and pooling, in pure Python.

One place knows how a window of ``kernel_size`` taps, spaced ``dilation``
apart, slides with ``stride`` over an input padded by ``(before, after)``:

    out = floor((n + before + after - dilation * (kernel_size - 1) - 1) / stride) + 1

(``ceil`` instead of ``floor`` with ``ceil_mode``, where the last window must
still start inside the input or its left padding, as in PyTorch). Kernels,
the reference and the public functions all take their sizes from here.

Every size-like integer argument (kernel_size, stride, padding, dilation,
output_padding, groups, scale, and the entries of a shape passed as an
argument) is at most :data:`MAX_INT` ``= 2**31 - 1``: PyTorch's pooling
refuses larger values too (it keeps them in 32-bit ints), a stride or
dilation past the input's length changes nothing a larger one would not, and
with every argument below ``2**31`` the kernels' int64 index arithmetic
cannot overflow.

This module imports neither numpy nor numba.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Literal, TypeAlias, Union, overload

IntOrPair = Union[int, "tuple[int, int]"]

# typing.Union, not X | Y: a value evaluated at import, also by Python 3.10
Padding: TypeAlias = Union[  # noqa: UP007
    int, tuple[int, int], tuple[tuple[int, int], tuple[int, int]], Literal["same", "valid"]
]
"""The padding forms of :func:`fastconv.conv2d` (and :func:`conv_output_size`): an int, a pair
``(pad_h, pad_w)``, ``((top, bottom), (left, right))``, ``"same"`` or ``"valid"``."""

TransposedPadding: TypeAlias = Union[  # noqa: UP007
    int, tuple[int, int], tuple[tuple[int, int], tuple[int, int]]
]
"""The padding forms of :func:`fastconv.conv_transpose2d`: :data:`Padding` without the strings."""

PADDING_FORMS = (
    "an int, a pair (pad_h, pad_w), ((top, bottom), (left, right)), 'valid' or 'same'"
)

MAX_INT = 2**31 - 1
"""The largest value of a size-like integer argument."""


def _as_int(value: object) -> int | None:
    """``int(value)`` for an integer that is not a bool, else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def _too_large(name: str, expected: str, value: object) -> ValueError:
    return ValueError(f"{name} must be {expected} and at most 2**31 - 1 = {MAX_INT}, "
                      f"got {value!r}")


def bounded_int(value: object, name: str, *, minimum: int = 1) -> int:
    """``value`` as an int in ``[minimum, MAX_INT]``: a TypeError for a non-integer (a bool
    included), a ValueError naming ``name`` and ``value`` for one out of range.

    >>> bounded_int(3, "groups")
    3
    """
    kind = "positive" if minimum == 1 else f">= {minimum}" if minimum else "non-negative"
    expected = f"a {kind} int"
    number = _as_int(value)
    if number is None:
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    if number < minimum:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    if number > MAX_INT:
        raise _too_large(name, expected, value)
    return number


def pair(value: object, name: str, *, minimum: int = 1,
         single: bool = True) -> tuple[int, int]:
    """Normalise an int or a pair of ints to ``(h, w)``, each in ``[minimum, MAX_INT]``.

    A one-element tuple or list ``(v,)`` means ``(v, v)``, as in PyTorch's
    convolution and pooling functions (``single=False`` refuses it, as
    ``max_unpool2d`` does).

    >>> pair(3, "stride")
    (3, 3)
    >>> pair((1, 2), "dilation")
    (1, 2)
    >>> pair((2,), "stride")
    (2, 2)
    """
    kind = "positive" if minimum == 1 else f">= {minimum}" if minimum else "non-negative"
    expected = f"an int or a pair of ints, each {kind}"
    if isinstance(value, (tuple, list)):
        if len(value) == 1 and single:
            value_items = [value[0], value[0]]
        elif len(value) == 2:
            value_items = list(value)
        else:
            raise ValueError(f"{name} must be {expected}, got {value!r}")
        if any(isinstance(v, (tuple, list)) for v in value_items):
            raise ValueError(f"{name} must be {expected}, got {value!r}")
        items = [_as_int(v) for v in value_items]
    else:
        items = [_as_int(value)] * 2
    if any(v is None for v in items):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    if any(v < minimum for v in items):  # type: ignore[operator]
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    if any(v > MAX_INT for v in items):  # type: ignore[operator]
        raise _too_large(name, expected, value)
    return items[0], items[1]  # type: ignore[return-value]


def pool_stride(stride: object, kernel_size: tuple[int, int]) -> tuple[int, int]:
    """A pooling stride as ``(h, w)``: None or an empty tuple/list (PyTorch's default)
    means ``kernel_size``; else every form :func:`pair` takes.

    >>> pool_stride(None, (3, 3)), pool_stride((), (2, 3)), pool_stride((1,), (2, 2))
    ((3, 3), (2, 3), (1, 1))
    """
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        return kernel_size
    return pair(stride, "stride")


def _one_axis(value: object, name: str) -> int:
    """A positive int for a 1-D size; a pair is accepted only with equal entries."""
    h, w = pair(value, name)
    if h != w:
        raise ValueError(f"{name} must be one positive int for an int size, got {value!r}")
    return h


def same_padding(size: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1) -> tuple[int, int]:
    """``(before, after)`` padding that makes the output ``ceil(size / stride)`` long.

    The total is split evenly; an odd extra pad goes after (bottom/right).
    For stride 1 this equals PyTorch's ``padding="same"``.

    >>> same_padding(5, 3)
    (1, 1)
    >>> same_padding(7, 4, stride=2)
    (1, 2)
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel_size - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def padding2d(
    padding: object,
    input_size: tuple[int, int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Normalise every accepted padding form to ``((top, bottom), (left, right))``.

    >>> padding2d(1, (5, 5), (3, 3), (1, 1), (1, 1))
    ((1, 1), (1, 1))
    >>> padding2d("same", (7, 7), (4, 4), (2, 2), (1, 1))
    ((1, 2), (1, 2))
    >>> padding2d(((0, 1), (2, 3)), (5, 5), (3, 3), (1, 1), (1, 1))
    ((0, 1), (2, 3))
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            return (
                same_padding(input_size[0], kernel_size[0], stride[0], dilation[0]),
                same_padding(input_size[1], kernel_size[1], stride[1], dilation[1]),
            )
        raise ValueError(f"padding must be {PADDING_FORMS}; got unknown string {padding!r}")
    if (
        isinstance(padding, (tuple, list))
        and len(padding) == 2
        and all(isinstance(p, (tuple, list)) for p in padding)
    ):
        (top, bottom) = pair(padding[0], "padding[0] (top, bottom)", minimum=0)
        (left, right) = pair(padding[1], "padding[1] (left, right)", minimum=0)
        return (top, bottom), (left, right)
    try:
        ph, pw = pair(padding, "padding", minimum=0)
    except (TypeError, ValueError) as err:
        raise type(err)(
            f"padding must be {PADDING_FORMS}, each value >= 0 and at most 2**31 - 1; "
            f"got {padding!r}"
        ) from None
    return (ph, ph), (pw, pw)


def output_length(
    size: int,
    kernel_size: int,
    stride: int = 1,
    padding: tuple[int, int] = (0, 0),
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Number of window positions along one axis; ``padding`` is ``(before, after)``.

    With ``span = size + before + after - dilation * (kernel_size - 1) - 1``:
    ``floor(span / stride) + 1``, or with ``ceil_mode`` ``ceil(span / stride) + 1``
    (PyTorch's pooling rule, which also holds for a negative span: a window that
    overhangs the padded input by less than ``stride`` still counts) less the
    windows that would start in the right padding, at or after ``size + before``.

    Returns 0 or less when no window fits; callers turn that into an error
    that names their own arguments.

    >>> output_length(7, 3, 3), output_length(7, 3, 3, ceil_mode=True)
    (2, 3)
    >>> output_length(2, 3), output_length(2, 3, 3, ceil_mode=True)
    (0, 1)
    """
    span = size + padding[0] + padding[1] - dilation * (kernel_size - 1) - 1
    if not ceil_mode:
        return span // stride + 1 if span >= 0 else 0
    out = -(-span // stride) + 1
    # PyTorch: the last window must start inside the input or its left padding.
    return max(min(out, (size + padding[0] - 1) // stride + 1), 0)


def transposed_output_length(
    size: int,
    kernel_size: int,
    stride: int = 1,
    padding: tuple[int, int] = (0, 0),
    dilation: int = 1,
    output_padding: int = 0,
) -> int:
    """Output length of a transposed convolution along one axis:
    ``(size - 1) * stride - before - after + dilation * (kernel_size - 1) + output_padding + 1``.

    The convolution with the same arguments maps that length back to
    ``size + output_padding // stride``; ``output_padding`` must be smaller
    than ``stride`` or than ``dilation`` (PyTorch's rule, see
    :func:`check_output_padding`).

    >>> transposed_output_length(3, 3, stride=2, output_padding=1)
    8
    """
    return ((size - 1) * stride - padding[0] - padding[1] + dilation * (kernel_size - 1)
            + output_padding + 1)


def check_output_padding(output_padding: tuple[int, int], stride: tuple[int, int],
                         dilation: tuple[int, int], given: object = None) -> None:
    """PyTorch's bound: on each axis ``output_padding < stride`` or
    ``output_padding < dilation``; a ValueError (showing ``given``, the argument as the
    caller received it) otherwise.

    >>> check_output_padding((1, 1), (1, 1), (2, 2))   # stride 1, dilation 2: allowed
    """
    for a in range(2):
        if not (output_padding[a] < stride[a] or output_padding[a] < dilation[a]):
            raise ValueError(
                f"output_padding must be smaller than stride or dilation in each dimension, got "
                f"output_padding={output_padding if given is None else given!r} with stride "
                f"{stride} and dilation {dilation}"
            )


def unpool_stride(stride: object, kernel_size: tuple[int, int]) -> tuple[int, int]:
    """max_unpool2d's stride as ``(h, w)``: None means ``kernel_size``; else an int or a
    pair (PyTorch's max_unpool2d refuses ``(v,)`` and ``()``, which :func:`pool_stride`
    takes).

    >>> unpool_stride(None, (3, 2)), unpool_stride(2, (3, 3)), unpool_stride((1, 2), (3, 3))
    ((3, 2), (2, 2), (1, 2))
    """
    return kernel_size if stride is None else pair(stride, "stride", single=False)


def unpool_output_size(size: Sequence[int], kernel_size: object, stride: object = None,
                       padding: object = 0, output_size: object = None) -> tuple[int, int]:
    """max_unpool2d's output ``(H_out, W_out)`` from an input of spatial ``size``
    ``(H, W)``: PyTorch's default, the transposed convolution's length
    ``(H - 1) * stride - 2 * pad + kernel`` (:func:`transposed_output_length`), or
    ``output_size`` (``(H_out, W_out)`` or a longer shape ending in them), each of
    which must lie strictly within ``stride`` of the default. PyTorch's forms:
    ``kernel_size``, ``stride`` and ``padding`` an int or a pair, no one-element tuple,
    ``stride=None`` (not ``()``) for ``kernel_size`` (:func:`unpool_stride`).

    Raises ValueError for an output of fewer than one row or column, or an
    ``output_size`` out of reach.

    >>> unpool_output_size((3, 3), 2), unpool_output_size((3, 3), 3, 2, 1)
    ((6, 6), (5, 5))
    >>> unpool_output_size((3, 3), 2, output_size=(1, 8, 7, 5))   # within stride 2 of 6
    (7, 5)
    >>> unpool_output_size((3, 3), 2, output_size=(8, 6))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: output_size (8, 6) is not reachable: ... in [5, 7] x [5, 7]
    """
    size = tuple(size)
    kernel = pair(kernel_size, "kernel_size", single=False)
    step = unpool_stride(stride, kernel)
    pad = pair(padding, "padding", minimum=0, single=False)
    default = tuple(transposed_output_length(size[a], kernel[a], step[a], (pad[a], pad[a]))
                    for a in range(2))
    if output_size is None:
        if min(default) < 1:
            raise ValueError(
                f"max_unpool2d output would be {default}: padding {pad} crops more than the "
                f"(H - 1) * stride + kernel_size values of an input of size {size}"
            )
        return default  # type: ignore[return-value]
    form = "output_size must be (H_out, W_out) or a 3-D/4-D shape ending in them"
    if not isinstance(output_size, (tuple, list)) or len(output_size) not in (2, 3, 4):
        raise ValueError(f"{form}, got {output_size!r}")
    out = pair(tuple(output_size[-2:]), "output_size[-2:]")
    low = tuple(max(default[a] - step[a] + 1, 1) for a in range(2))
    high = tuple(default[a] + step[a] - 1 for a in range(2))
    if not all(low[a] <= out[a] <= high[a] for a in range(2)):
        raise ValueError(
            f"output_size {tuple(output_size)} is not reachable: from an input of size {size} "
            f"with kernel_size {kernel}, stride {step} and padding {pad} each size must lie within "
            f"stride of {default}, in [{low[0]}, {high[0]}] x [{low[1]}, {high[1]}]"
        )
    return out


_CEIL_NOTE = " by stride or more (ceil_mode computes a window that overhangs it by less)"


@overload
def conv_output_size(size: int, kernel_size: IntOrPair, stride: IntOrPair = ...,
                     padding: Padding = ..., dilation: IntOrPair = ...,
                     ceil_mode: bool = ...) -> int: ...
@overload  # also tuple[int, ...], the type of an array's shape[-2:]
def conv_output_size(size: tuple[int, ...] | list[int], kernel_size: IntOrPair,
                     stride: IntOrPair = ..., padding: Padding = ..., dilation: IntOrPair = ...,
                     ceil_mode: bool = ...) -> tuple[int, int]: ...
def conv_output_size(
    size: int | tuple[int, ...] | list[int],
    kernel_size: IntOrPair,
    stride: IntOrPair = 1,
    padding: Padding = 0,
    dilation: IntOrPair = 1,
    ceil_mode: bool = False,
) -> int | tuple[int, int]:
    """Output size of a convolution or pooling window sliding over ``size``.

    ``out = floor((size + pad_before + pad_after - dilation * (kernel_size - 1) - 1)
    / stride) + 1``, with ``ceil`` instead of ``floor`` when ``ceil_mode`` is true (then, as in
    PyTorch's pooling, a last window that would start in the right padding is dropped, and
    a window that overhangs the padded input by less than ``stride`` still counts; see
    :func:`output_length`).

    Args:
        size: input length ``n``, or ``(H, W)``.
        kernel_size, stride, dilation: an int or, for 2-D, a pair (a one-element
            tuple ``(v,)`` is ``(v, v)``), each at most ``2**31 - 1``.
        padding: an int (both sides), ``(before, after)`` for a 1-D size; for a
            2-D size every form ``conv2d`` accepts: int, ``(pad_h, pad_w)``,
            ``((top, bottom), (left, right))``, ``"valid"``, ``"same"``.
        ceil_mode: round the window count up (pooling).

    Returns:
        An int for an int ``size``, a pair ``(H_out, W_out)`` for a pair.

    Raises:
        ValueError: if no window fits: the dilated kernel is larger than the padded
            input (with ``ceil_mode``: by ``stride`` or more).

    >>> conv_output_size(32, 5)                      # the lecture: (32 - 5) / 1 + 1
    28
    >>> conv_output_size(7, 3, stride=2, padding=1)
    4
    >>> conv_output_size((224, 224), 7, stride=2, padding=3)
    (112, 112)
    >>> conv_output_size(5, 2, stride=2, ceil_mode=True)
    3
    >>> conv_output_size((2, 7), 3, stride=3, ceil_mode=True)   # a 3-row window on 2 rows
    (1, 3)
    """
    if isinstance(ceil_mode, str) or ceil_mode not in (True, False):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    if isinstance(size, (tuple, list)):
        hw = pair(size, "size", single=False)
        k = pair(kernel_size, "kernel_size")
        s = pair(stride, "stride")
        d = pair(dilation, "dilation")
        pads = padding2d(padding, hw, k, s, d)
        out = tuple(
            output_length(hw[i], k[i], s[i], pads[i], d[i], ceil_mode) for i in range(2)
        )
        if min(out) <= 0:
            raise ValueError(
                f"kernel_size {k} with dilation {d} is larger than the padded input "
                f"{tuple(hw[i] + sum(pads[i]) for i in range(2))} (size {hw}, padding {pads})"
                + _CEIL_NOTE * bool(ceil_mode)
            )
        return out  # type: ignore[return-value]
    n = _as_int(size)
    if n is None or n < 1:
        raise ValueError(f"size must be a positive int or a pair of positive ints, got {size!r}")
    n = bounded_int(n, "size")
    k1 = _one_axis(kernel_size, "kernel_size")
    s1 = _one_axis(stride, "stride")
    d1 = _one_axis(dilation, "dilation")
    if isinstance(padding, str):
        p1 = padding2d(padding, (n, n), (k1, k1), (s1, s1), (d1, d1))[0]
    elif isinstance(padding, (tuple, list)):
        p1 = pair(padding, "padding (before, after)", minimum=0)
    else:
        p1 = (pair(padding, "padding", minimum=0)[0],) * 2
    out1 = output_length(n, k1, s1, p1, d1, ceil_mode)
    if out1 <= 0:
        raise ValueError(
            f"kernel_size {k1} with dilation {d1} is larger than the padded input "
            f"{n + p1[0] + p1[1]} (size {n}, padding {p1})" + _CEIL_NOTE * bool(ceil_mode)
        )
    return out1


def receptive_field(layers: Sequence[Sequence[int]]) -> int:
    """Receptive-field size, on the input, of one unit of the last layer.

    ``layers`` lists ``(kernel_size, stride)`` or ``(kernel_size, stride,
    dilation)`` from input to output. With ``jump`` the product of the
    strides before a layer, each layer adds ``dilation * (kernel_size - 1) * jump``.

    >>> receptive_field([(3, 1), (2, 2), (3, 1), (2, 2), (3, 1), (3, 1), (2, 2)])
    30
    >>> receptive_field([(3, 1, 2)])
    5
    """
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(
            "layers must be a sequence of (kernel_size, stride) "
            f"or (kernel_size, stride, dilation), got {layers!r}"
        )
    field, jump = 1, 1
    for i, layer in enumerate(layers):
        values = [_as_int(v) for v in layer] if isinstance(layer, (tuple, list)) else None
        if values is None or len(values) not in (2, 3) or any(v is None or v < 1 for v in values):
            raise ValueError(
                f"layers[{i}] must be (kernel_size, stride) or (kernel_size, stride, dilation) "
                f"of positive ints, got {layer!r}"
            )
        kernel, stride = values[0], values[1]
        dilation = values[2] if len(values) == 3 else 1
        field += dilation * (kernel - 1) * jump  # type: ignore[operator]
        jump *= stride  # type: ignore[operator]
    return field
