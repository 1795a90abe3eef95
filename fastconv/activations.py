"""The output activations :func:`fastconv.conv2d` applies as its kernels store
(``activation=``, fastconv's own keyword, not in ``torch.nn.functional.conv2d``).

Each kernel stores ``max(y, floor)`` through one comparison: ``floor`` is 0 for
``"relu"`` and ``-inf`` for None, so the same compiled code serves both, and a
NaN output stays NaN (``NaN < floor`` is false), as in ``torch.relu``.

>>> floor("relu", np.dtype(np.float32)), floor(None, np.dtype(np.float64))
(np.float32(0.0), np.float64(-inf))
"""

from __future__ import annotations

import numpy as np

#: The values ``activation=`` takes.
ACTIVATIONS: tuple[str | None, ...] = (None, "relu")


def check(activation: object) -> str | None:
    """``activation`` when it is one of :data:`ACTIVATIONS`, else a TypeError (not a str)
    or ValueError (another name) saying so."""
    if activation is None or activation == "relu":
        return activation  # type: ignore[return-value]
    if not isinstance(activation, str):
        raise TypeError(f"activation must be None or 'relu', got {activation!r}")
    raise ValueError(f"activation must be None or 'relu', got {activation!r}")


def floor(activation: str | None, dtype: np.dtype) -> np.floating:
    """The value a kernel clamps its outputs to from below, in ``dtype``."""
    value = _FLOORS.get((activation, dtype))
    if value is None:
        value = _FLOORS[activation, dtype] = dtype.type(0 if activation == "relu" else -np.inf)
    return value


_FLOORS: dict[tuple[str | None, np.dtype], np.floating] = {}


def apply(out: np.ndarray, activation: str | None) -> np.ndarray:
    """``out`` with the activation applied in place (the reference's epilogue)."""
    if activation == "relu":
        np.copyto(out, 0, where=out < 0)
    return out
