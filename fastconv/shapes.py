"""Shape rules of convolution and pooling, in pure Python.

One place knows how a window of ``kernel_size`` taps, spaced ``dilation``
apart, slides with ``stride`` over an input padded by ``(before, after)``:

    out = floor((n + before + after - dilation * (kernel_size - 1) - 1) / stride) + 1

(``ceil`` instead of ``floor`` with ``ceil_mode``, where the last window must
still start inside the input or its left padding, as in PyTorch). Kernels,
the reference and the public functions all take their sizes from here.

This module imports neither numpy nor numba.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Union

IntOrPair = Union[int, "tuple[int, int]"]

PADDING_FORMS = (
    "an int, a pair (pad_h, pad_w), ((top, bottom), (left, right)), 'valid' or 'same'"
)


def _as_int(value: object) -> int | None:
    """``int(value)`` for an integer that is not a bool, else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def pair(value: object, name: str, *, minimum: int = 1) -> tuple[int, int]:
    """Normalise an int or a pair of ints to ``(h, w)``, each ``>= minimum``.

    >>> pair(3, "stride")
    (3, 3)
    >>> pair((1, 2), "dilation")
    (1, 2)
    """
    kind = "positive" if minimum == 1 else f">= {minimum}" if minimum else "non-negative"
    expected = f"an int or a pair of ints, each {kind}"
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be {expected}, got {value!r}")
        items = [_as_int(v) for v in value]
    else:
        items = [_as_int(value)] * 2
    if any(v is None for v in items):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    if any(v < minimum for v in items):  # type: ignore[operator]
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return items[0], items[1]  # type: ignore[return-value]


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
            f"padding must be {PADDING_FORMS}, each value >= 0; got {padding!r}"
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

    Returns 0 or less when the dilated kernel is longer than the padded input;
    callers turn that into an error that names their own arguments.
    """
    span = size + padding[0] + padding[1] - dilation * (kernel_size - 1) - 1
    if span < 0:
        return 0
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    # PyTorch: the last window must start inside the input or its left padding.
    return min(out, (size + padding[0] - 1) // stride + 1)


def conv_output_size(
    size: IntOrPair,
    kernel_size: IntOrPair,
    stride: IntOrPair = 1,
    padding: object = 0,
    dilation: IntOrPair = 1,
    ceil_mode: bool = False,
) -> IntOrPair:
    """Output size of a convolution or pooling window sliding over ``size``.

    ``out = floor((size + pad_before + pad_after - dilation * (kernel_size - 1) - 1)
    / stride) + 1``, with ``ceil`` instead of ``floor`` when ``ceil_mode`` is true (then, as in
    PyTorch, a last window that would start in the right padding is dropped).

    Args:
        size: input length ``n``, or ``(H, W)``.
        kernel_size, stride, dilation: an int or, for 2-D, a pair.
        padding: an int (both sides), ``(before, after)`` for a 1-D size; for a
            2-D size every form ``conv2d`` accepts: int, ``(pad_h, pad_w)``,
            ``((top, bottom), (left, right))``, ``"valid"``, ``"same"``.
        ceil_mode: round the window count up (pooling).

    Returns:
        An int for an int ``size``, a pair ``(H_out, W_out)`` for a pair.

    Raises:
        ValueError: if the dilated kernel is larger than the padded input.

    >>> conv_output_size(32, 5)                      # the lecture: (32 - 5) / 1 + 1
    28
    >>> conv_output_size(7, 3, stride=2, padding=1)
    4
    >>> conv_output_size((224, 224), 7, stride=2, padding=3)
    (112, 112)
    >>> conv_output_size(5, 2, stride=2, ceil_mode=True)
    3
    """
    if isinstance(ceil_mode, str) or ceil_mode not in (True, False):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    if isinstance(size, (tuple, list)):
        hw = pair(size, "size")
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
            )
        return out  # type: ignore[return-value]
    n = _as_int(size)
    if n is None or n < 1:
        raise ValueError(f"size must be a positive int or a pair of positive ints, got {size!r}")
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
            f"{n + p1[0] + p1[1]} (size {n}, padding {p1})"
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
