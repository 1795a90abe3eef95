"""Public ops: normalise and validate the arguments, then dispatch to a kernel.

Everything a user passes is checked here, and errors name the argument, the
value received and the form expected; kernels see only C-contiguous arrays
and plain ints.
"""

from __future__ import annotations

import numpy as np

from . import dispatch, shapes

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _as_float_array(value: object, name: str) -> np.ndarray:
    """``value`` as an ndarray of float32 or float64, or a TypeError saying why not."""
    array = value if isinstance(value, np.ndarray) else None
    if array is None:
        try:
            array = np.asarray(value)
        except Exception:  # noqa: BLE001 - any failure means "not array-like"
            raise TypeError(
                f"{name} must be a numpy.ndarray of float32 or float64, got {type(value).__name__}"
            ) from None
        if array.dtype == object:
            raise TypeError(
                f"{name} must be a numpy.ndarray of float32 or float64, got {type(value).__name__}"
            )
    if array.dtype in _FLOATS:
        return array
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        hint = f"; convert it first, e.g. {name}.astype(np.float32)"
    elif np.issubdtype(array.dtype, np.complexfloating):
        hint = "; complex convolution is not supported, convolve real and imaginary parts separately"
    else:
        hint = f"; convert it first, e.g. {name}.astype(np.float32)"
    raise TypeError(f"{name} must have dtype float32 or float64, got {array.dtype}{hint}")


def _check_same_dtype(reference: np.ndarray, other: np.ndarray, name: str) -> None:
    if other.dtype != reference.dtype:
        raise TypeError(
            f"{name} has dtype {other.dtype} but input has dtype {reference.dtype}; "
            f"mixed dtypes are not supported, cast one of them (e.g. {name}.astype(np.{reference.dtype}))"
        )


def _check_out(out: object, shape: tuple[int, ...], dtype: np.dtype, inputs: tuple) -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray of shape {shape} and dtype {dtype}, got {type(out).__name__}")
    if out.shape != shape or out.dtype != dtype:
        raise ValueError(
            f"out must have shape {shape} and dtype {dtype}, got shape {out.shape} and dtype {out.dtype}"
        )
    if not out.flags.writeable:
        raise ValueError("out must be writeable, got a read-only array")
    for other in inputs:
        if other is not None and np.shares_memory(out, other):
            raise ValueError("out must not share memory with an input")
    return out


def _choose_groups(groups: object) -> int:
    value = shapes._as_int(groups)
    if value is None:
        raise TypeError(f"groups must be a positive int, got {groups!r}")
    if value < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    return value


def conv2d(
    input: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: int | tuple[int, int] = 1,
    padding: object = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    algorithm: str = "auto",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """2-D convolution (cross-correlation) of an image batch, as ``torch.nn.functional.conv2d``.

    ``out[n, k, i, j] = bias[k] + sum_{c, r, s} weight[k, c, r, s] *
    x_padded[n, g(k) * C/groups + c, i * stride_h + r * dilation_h, j * stride_w + s * dilation_w]``
    where ``g(k) = k // (K / groups)`` is the group of output channel ``k``.

    Shapes (N images, C input channels, K filters, R x S kernel):

    - ``input``: ``(N, C, H, W)``, or ``(C, H, W)`` for one image (the output
      then has no batch axis either).
    - ``weight``: ``(K, C / groups, R, S)``.
    - ``bias``: ``(K,)`` or None.
    - output: ``(N, K, H_out, W_out)`` with
      ``H_out = floor((H + pad_top + pad_bottom - dilation_h * (R - 1) - 1) / stride_h) + 1``
      and likewise ``W_out`` (see :func:`fastconv.conv_output_size`).

    Args:
        input, weight, bias: float32 or float64 numpy arrays of one dtype,
            which the output has too. Any memory layout is accepted (strided
            views, Fortran order, read-only); inputs are never modified.
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
            ``"direct"``, ``"im2col"``, ``"reference"``.
        out: optional array of the output's shape and dtype to write into.

    Returns:
        The output array (``out`` itself when given).

    Raises:
        TypeError: non-float, complex or mixed dtypes, non-array arguments.
        ValueError: wrong shapes, channel/group mismatches, non-positive
            stride or dilation, negative padding, a kernel larger than the
            padded input, empty dimensions, a bad ``out``.

    Example:

    >>> import numpy as np, fastconv
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> w = np.ones((2, 1, 3, 3), dtype=np.float32)
    >>> y = fastconv.conv2d(x, w, np.array([0.0, 1.0], np.float32), padding=1)
    >>> y.shape
    (1, 2, 4, 4)
    >>> y[0, 0].tolist()
    [[10.0, 18.0, 24.0, 18.0], [27.0, 45.0, 54.0, 39.0], [51.0, 81.0, 90.0, 63.0], [42.0, 66.0, 72.0, 50.0]]
    """
    x = _as_float_array(input, "input")
    w = _as_float_array(weight, "weight")
    b = None if bias is None else _as_float_array(bias, "bias")
    _check_same_dtype(x, w, "weight")
    if b is not None:
        _check_same_dtype(x, b, "bias")
    if x.ndim not in (3, 4):
        raise ValueError(
            f"input must be 4-D (N, C, H, W) or 3-D (C, H, W), got shape {x.shape}"
        )
    if w.ndim != 4:
        raise ValueError(f"weight must be 4-D (K, C/groups, R, S), got shape {w.shape}")
    unbatched = x.ndim == 3
    x4 = x[None] if unbatched else x
    n_img, channels, height, width = x4.shape
    out_channels, group_channels, kh, kw = w.shape
    if 0 in x4.shape[1:]:
        raise ValueError(f"input must have non-empty C, H and W, got shape {x.shape}")
    if 0 in w.shape:
        raise ValueError(f"weight must have no empty dimension, got shape {w.shape}")
    groups = _choose_groups(groups)
    if channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide both the input channels C={channels} "
            f"and the output channels K={out_channels}"
        )
    if group_channels * groups != channels:
        raise ValueError(
            f"weight.shape[1] must be C/groups = {channels}/{groups} = {channels // groups}, "
            f"got weight of shape {w.shape} for input of shape {x.shape}"
        )
    if b is not None and b.shape != (out_channels,):
        raise ValueError(f"bias must have shape (K,) = ({out_channels},), got {b.shape}")
    stride2 = shapes.pair(stride, "stride")
    dilation2 = shapes.pair(dilation, "dilation")
    pads = shapes.padding2d(padding, (height, width), (kh, kw), stride2, dilation2)
    out_h = shapes.output_length(height, kh, stride2[0], pads[0], dilation2[0])
    out_w = shapes.output_length(width, kw, stride2[1], pads[1], dilation2[1])
    if out_h <= 0 or out_w <= 0:
        raise ValueError(
            f"kernel of size {(kh, kw)} with dilation {dilation2} spans "
            f"{(dilation2[0] * (kh - 1) + 1, dilation2[1] * (kw - 1) + 1)}, larger than the padded "
            f"input {(height + sum(pads[0]), width + sum(pads[1]))} "
            f"(input {(height, width)}, padding {pads})"
        )
    out_shape = (n_img, out_channels, out_h, out_w)
    result_shape = out_shape[1:] if unbatched else out_shape
    if out is not None:
        _check_out(out, result_shape, x.dtype, (input, weight, bias))
    name, kernel = dispatch.select(
        "conv2d", "cpu", algorithm,
        input_shape=x4.shape, weight_shape=w.shape, stride=stride2, padding=pads,
        dilation=dilation2, groups=groups, dtype=x.dtype,
    )
    if out is not None and out.flags.c_contiguous:
        target = out.reshape(out_shape)
    else:
        target = np.empty(out_shape, dtype=x.dtype)
    if n_img:
        kernel(
            np.ascontiguousarray(x4), np.ascontiguousarray(w),
            None if b is None else np.ascontiguousarray(b),
            target, stride2, pads, dilation2, groups,
        )
    result = target[0] if unbatched else target
    if out is None:
        return result
    if not np.shares_memory(out, target):
        out[...] = result
    return out
