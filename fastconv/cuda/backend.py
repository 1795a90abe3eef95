"""CUDA backend: Numba CUDA kernels, registered with :mod:`fastconv.dispatch` on import.

Imported by the dispatcher on first CUDA use, never by ``import fastconv``;
importing compiles nothing. Kernels take C-contiguous 4-D device arrays and
plain ints, with the CPU kernels' signatures (:mod:`fastconv.cpu`).

``algorithm="reference"`` runs the reference loops of :mod:`fastconv.ops`'s table
(:mod:`fastconv.reference_kernels`) on host copies of the arrays and copies the
results back, so that every op has the same names on both devices.
"""

from __future__ import annotations

from .. import config, ops
from ..dispatch import register, register_chooser
from . import conv, pool  # noqa: F401  (registers the kernels)
from ._jit import from_host, to_host

# --- the reference loops, on host copies -------------------------------------------------

#: Per op, the positions of the arguments its kernel writes.
_OUTPUTS = {op.name: op.output_positions for op in ops.TABLE.values()}


def _on_host(op):
    """The reference kernel of ``op`` on the GPU: host copies in, the table's reference
    loops (:mod:`fastconv.reference_kernels`), device copies out."""
    run = ops.TABLE[op].reference

    def kernel(*args):
        host = [to_host(a) if hasattr(a, "copy_to_host") else a for a in args]
        result = run(*host)
        for position in _OUTPUTS[op]:
            if args[position] is not None:
                from_host(args[position], host[position])
        return result

    kernel.__name__ = kernel.__qualname__ = f"_{op}_reference"
    return kernel


# --- algorithm="auto" --------------------------------------------------------------------


def _choose_conv(weight_shape, problem, transposed=False):
    """The direct kernel for depthwise layers and where one output needs few multiply-adds
    (``C_g * R * S <= AUTO_DIRECT_MAX_DEPTH``), which leave a GEMM tile mostly empty;
    else the implicit GEMM. grad_input's GEMM runs every tap at every input position,
    so with stride > 1 it does ``sh * sw`` times the work and the direct gather is chosen."""
    _, group_channels, kh, kw = weight_shape
    depth = group_channels * kh * kw
    if group_channels == 1:
        return "direct", "a depthwise layer leaves a GEMM tile mostly empty"
    if depth <= config.AUTO_DIRECT_MAX_DEPTH:
        return "direct", (f"each output needs C/groups*R*S = {depth} <= "
                          f"AUTO_DIRECT_MAX_DEPTH = {config.AUTO_DIRECT_MAX_DEPTH} multiply-adds")
    if transposed and tuple(problem.get("stride", (1, 1))) != (1, 1):
        return "direct", "grad_input's GEMM with stride > 1 would run every tap everywhere"
    return "implicit_gemm", f"C/groups*R*S = {depth} multiply-adds per output fill a GEMM tile"


def _conv_chooser(op):
    def choose(*, weight_shape, **problem):
        return _choose_conv(weight_shape, problem, transposed=op == "conv2d_grad_input")

    choose.__name__ = choose.__qualname__ = f"_choose_{op}"
    return choose


def _choose_direct(**_):
    """grad_bias, pooling and unpooling have one kernel each: the direct one."""
    return "direct", "this op has one GPU kernel: the direct one"


_CHOOSERS = {"conv": _conv_chooser, "single": lambda op: _choose_direct}

# every op of the table: its reference loops (on host copies) and its kind of chooser
for _op in ops.TABLE.values():
    register(_op.name, "cuda", "reference")(_on_host(_op.name))
    register_chooser(_op.name, "cuda")(_CHOOSERS[_op.chooser](_op.name))
