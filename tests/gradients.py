"""Checks shared by the gradient tests of conv2d and conv_transpose2d: comparing a
``(grad_input, grad_weight, grad_bias)`` triple, the ``needs_*`` flags, and central
finite differences."""

from __future__ import annotations

import numpy as np

from tests.cases import sum_tolerance, tolerance

GRAD_NAMES = ("grad_input", "grad_weight", "grad_bias")
NEEDS_FLAGS = ("needs_input_grad", "needs_weight_grad", "needs_bias_grad")
#: Every combination of the three flags, and pytest ids for them ("iwb", "-w-", ...).
NEEDS_FLAG_SETS = [tuple(bool(m >> i & 1) for i in range(3)) for m in range(8)]


def flags_id(flags: tuple[bool, ...]) -> str:
    return "".join("iwb"[i] if wanted else "-" for i, wanted in enumerate(flags))


def assert_grads_close(actual, expected, dtype, grad_output) -> None:
    """Compare ``(grad_input, grad_weight, grad_bias)`` with an oracle's: dtypes and shapes
    exactly, grad_input with :func:`tolerance`, and grad_weight and grad_bias, which sum
    up to N * H_out * W_out terms of ``grad_output``, with :func:`sum_tolerance`."""
    terms = grad_output.size // grad_output.shape[-3]
    tolerances = (tolerance(dtype), sum_tolerance(dtype, terms), sum_tolerance(dtype, terms))
    for name, a, e, tol in zip(GRAD_NAMES, actual, expected, tolerances, strict=False):
        assert a is not None, name
        assert a.dtype == np.dtype(dtype), name
        assert a.shape == e.shape, name
        np.testing.assert_allclose(a, e, **tol, err_msg=name)


def assert_needs_respected(got, expected, flags) -> None:
    """``got`` is the triple computed with ``flags``: None where a flag is off, the
    float64 oracle's value elsewhere."""
    assert isinstance(got, tuple) and len(got) == 3
    for name, wanted, a, e in zip(NEEDS_FLAGS, flags, got, expected, strict=False):
        if wanted:
            assert a is not None, name
            np.testing.assert_allclose(a, e, **tolerance(np.float64), err_msg=name)
        else:
            assert a is None, name


def numeric_gradient(loss, array: np.ndarray, step: float = 1e-3) -> np.ndarray:
    """Central differences of ``loss()`` for every entry of ``array``, which is perturbed
    in place and restored. Exact but for rounding where ``loss`` is linear in ``array``."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + step
        up = loss()
        array[index] = saved - step
        down = loss()
        array[index] = saved
        grad[index] = (up - down) / (2 * step)
    return grad
