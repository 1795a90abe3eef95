"""Argument checks shared by the public ops.

Every message names the argument, the value received and the form expected.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import shapes

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_array(value: object, name: str) -> np.ndarray:
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
    if array.dtype.kind == "f" and array.dtype.newbyteorder("=") in _FLOATS:
        return array.astype(array.dtype.newbyteorder("="))  # byte-swapped float32/float64
    raise float_dtype_error(array.dtype, name)


def float_dtype_error(dtype: np.dtype, name: str) -> TypeError:
    """The error for an array ``name`` of a dtype other than float32/float64."""
    if np.issubdtype(dtype, np.complexfloating):
        hint = ("; complex convolution is not supported, "
                "convolve real and imaginary parts separately")
    else:
        hint = f"; convert it first, e.g. {name}.astype(np.float32)"
    return TypeError(f"{name} must have dtype float32 or float64, got {dtype}{hint}")


def index_dtype_error(value: object, dtype: np.dtype, name: str) -> TypeError:
    """The error for indices ``name`` that are not integers."""
    return TypeError(
        f"{name} must be an integer array (int64, as max_pool2d(..., return_indices=True) "
        f"returns), got {type(value).__name__} of dtype {dtype}"
    )


def check_same_dtype(reference: np.ndarray, other: np.ndarray, name: str,
                     reference_name: str = "input") -> None:
    if other.dtype != reference.dtype:
        raise TypeError(
            f"{name} has dtype {other.dtype} but {reference_name} has dtype {reference.dtype}; "
            f"mixed dtypes are not supported, cast one of them "
            f"(e.g. {name}.astype(np.{reference.dtype}))"
        )


def check_out(out: object, shape: tuple[int, ...], dtype: np.dtype, inputs: tuple) -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(
            f"out must be a numpy.ndarray of shape {shape} and dtype {dtype}, "
            f"got {type(out).__name__}"
        )
    if out.shape != shape or out.dtype != dtype:
        raise ValueError(
            f"out must have shape {shape} and dtype {dtype}, "
            f"got shape {out.shape} and dtype {out.dtype}"
        )
    if not out.flags.writeable:
        raise ValueError("out must be writeable, got a read-only array")
    for other in inputs:
        if other is not None and np.shares_memory(out, other):
            raise ValueError("out must not share memory with an input")
    return out


def positive_int(value: object, name: str) -> int:
    """``value`` as an int in ``[1, 2**31 - 1]`` (a bool is not an int here)."""
    return shapes.bounded_int(value, name)


def divisor(value: object, name: str = "divisor_override") -> int | None:
    """None, or a non-zero int that fits in int64 (PyTorch's rule: negative divisors are
    allowed, and flip the sign of the average)."""
    if value is None:
        return None
    expected = "None or a non-zero int (of magnitude below 2**63)"
    number = shapes._as_int(value)
    if number is None:
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    if number == 0 or not -(2**63) < number < 2**63:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def check_not_scalar(value: Any, name: str, form: str) -> None:
    """A TypeError for a Python scalar, string or other non-array where ``form`` (e.g.
    ``"4-D (N, C, H, W) or 3-D (C, H, W)"``) is expected; None is left to the dtype checks,
    arrays (0-D ones too) to the shape checks."""
    if value is None or hasattr(value, "shape"):
        return
    try:
        scalar = np.ndim(value) == 0
    except Exception:  # noqa: BLE001 - a ragged list and the like: as_float_array says why
        return
    if scalar:
        raise TypeError(f"{name} must be a {form} array, got {type(value).__name__} {value!r}")


def check_rank(value: Any, name: str, form: str, ranks: tuple[int, ...] = (3, 4)) -> None:
    """Refuse, before any dtype check, an argument that is not an array of one of ``ranks``
    dimensions: a TypeError for a scalar (:func:`check_not_scalar`), a ValueError for an
    array of another rank. ``form`` names the dimensions, e.g.
    ``"4-D (N, C, H, W) or 3-D (C, H, W)"``."""
    check_not_scalar(value, name, form)
    if value is None:  # as_float_array's TypeError says what is expected
        return
    try:
        ndim = np.ndim(value)  # reads .ndim where there is one (GPU arrays: no copy)
    except Exception:  # noqa: BLE001 - a ragged list and the like: as_float_array says why
        return
    if ndim not in ranks:
        raise ValueError(f"{name} must be {form}, got shape {tuple(np.shape(value))}")


def check_size(shape: tuple[int, ...], itemsize: int, what: str, because: str) -> None:
    """A ValueError when an array of ``shape`` could not exist at all (more bytes than an
    address holds), naming the arguments ``because`` that made it so large."""
    count = 1
    for n in shape:
        count *= int(n)
    if count * itemsize > np.iinfo(np.intp).max:
        raise ValueError(
            f"{what} would have shape {tuple(int(n) for n in shape)}, {count} elements: more "
            f"than any array can hold; {because}"
        )


def flag(value: object, name: str, *, ints: bool = False) -> bool:
    """A bool (numpy's too); with ``ints``, also the ints 0 and 1 (PyTorch takes
    ``return_indices=1``, but refuses ``ceil_mode=1`` and ``count_include_pad=1``)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if ints and shapes._as_int(value) in (0, 1):
        return bool(shapes._as_int(value))
    raise TypeError(f"{name} must be a bool, got {value!r}")
