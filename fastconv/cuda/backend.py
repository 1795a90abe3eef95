"""CUDA backend: Numba CUDA kernels, registered with :mod:`fastconv.dispatch` on import.

Imported by the dispatcher on first CUDA use, never by ``import fastconv``;
importing compiles nothing. Kernels take C-contiguous 4-D device arrays and
plain ints, with the CPU kernels' signatures (:mod:`fastconv.cpu`).

``algorithm="reference"`` runs the CPU reference loops on host copies of the
arrays and copies the results back, so that every op has the same names on
both devices.
"""

from __future__ import annotations

from .. import config, dispatch
from ..dispatch import register, register_chooser
from . import conv, pool  # noqa: F401  (registers the kernels)
from ._jit import from_host, to_host

# --- the reference loops, on host copies -------------------------------------------------

#: Per op, the positions of the arguments its kernel writes.
_OUTPUTS = {
    "conv2d": (3,), "conv2d_grad_input": (2,), "conv2d_grad_weight": (2,),
    "conv2d_grad_bias": (1,), "max_pool2d": (1, 2), "max_pool2d_backward": (2,),
    "avg_pool2d": (1,), "avg_pool2d_backward": (1,), "max_unpool2d": (2,),
    "max_unpool2d_backward": (2,), "repeat_unpool2d": (1,), "repeat_unpool2d_backward": (1,),
}


def _grad_bias_reference(grad_out, grad_bias):
    grad_bias[...] = grad_out.sum(axis=(0, 2, 3))  # as fastconv.reference.conv2d_backward


def _on_host(op):
    """The reference kernel of ``op`` on the GPU: host copies in, the CPU's reference
    registration (or, for grad_bias, the reference's sum), device copies out."""

    def kernel(*args):
        run = (_grad_bias_reference if op == "conv2d_grad_bias"
               else dispatch.select(op, "cpu", "reference")[1])
        host = [to_host(a) if hasattr(a, "copy_to_host") else a for a in args]
        result = run(*host)
        for position in _OUTPUTS[op]:
            if args[position] is not None:
                from_host(args[position], host[position])
        return result

    kernel.__name__ = kernel.__qualname__ = f"_{op}_reference"
    return kernel


for _op in dispatch.OPS:
    register(_op, "cuda", "reference")(_on_host(_op))


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


@register_chooser("conv2d", "cuda")
def _choose_conv2d(*, weight_shape, **problem):
    return _choose_conv(weight_shape, problem)


@register_chooser("conv2d_grad_input", "cuda")
def _choose_conv2d_grad_input(*, weight_shape, **problem):
    return _choose_conv(weight_shape, problem, transposed=True)


@register_chooser("conv2d_grad_weight", "cuda")
def _choose_conv2d_grad_weight(*, weight_shape, **problem):
    return _choose_conv(weight_shape, problem)


@register_chooser("conv2d_grad_bias", "cuda")
@register_chooser("max_pool2d", "cuda")
@register_chooser("max_pool2d_backward", "cuda")
@register_chooser("avg_pool2d", "cuda")
@register_chooser("avg_pool2d_backward", "cuda")
@register_chooser("max_unpool2d", "cuda")
@register_chooser("max_unpool2d_backward", "cuda")
@register_chooser("repeat_unpool2d", "cuda")
@register_chooser("repeat_unpool2d_backward", "cuda")
def _choose_direct(**_):
    """grad_bias, pooling and unpooling have one kernel each: the direct one."""
    return "direct", "this op has one GPU kernel: the direct one"
