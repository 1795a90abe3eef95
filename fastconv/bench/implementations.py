"""What each implementation name runs on a case: ``reference`` (:mod:`fastconv.reference`,
Python loops), a fastconv algorithm by name or ``auto`` (the fastconv function with
``algorithm=``), and ``torch`` (PyTorch's call of the same op).

Each op has one binder, which makes a case's inputs (seeded, on the host) and the
three calls on them, whatever memory holds them: :func:`bind` binds them to host
arrays, :mod:`fastconv.bench.gpu` to GPU arrays. A bound call allocates its result,
as a user's call does.

torch is imported only when torch is called, and runs on as many threads as Numba.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NamedTuple

import numpy as np

import fastconv

from .. import dispatch, plans, reference
from .cases import Layer, OpCase, conv2d_case, tie_free


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def implementation_names(
    op: str = "conv2d", *, include_torch: bool | None = None, device: str = "cpu"
) -> tuple[str, ...]:
    """``reference`` (on the CPU), each fastconv algorithm of ``op`` on ``device`` by name,
    ``auto``, and ``torch`` (by default only where it is installed), in the order of the
    table."""
    algorithms = [
        name
        for name in dispatch.available_algorithms(op, device)
        if name not in ("auto", "reference")
    ]
    if include_torch is None:
        include_torch = torch_installed()
    first = ("reference",) if device == "cpu" else ()
    return (*first, *algorithms, "auto", *(("torch",) if include_torch else ()))


def op_implementation_names(*, include_torch: bool | None = None) -> tuple[str, ...]:
    """Every implementation name of the op suite, in the order of the table."""
    from .cases import OP_CASES

    names = [name for case in OP_CASES
             for name in case.implementation_names(include_torch=include_torch)]
    algorithms = sorted(set(names) - {"reference", "auto", "torch"})
    return tuple(name for name in ("reference", *algorithms, "auto", "torch") if name in names)


def all_implementation_names(*, include_torch: bool = True, device: str = "cpu"
                             ) -> tuple[str, ...]:
    """Every implementation name of the case table on ``device``, in the order of the
    tables: ``reference``, the algorithms (sorted), ``auto``, ``torch``."""
    from .cases import CASES

    names = {name for case in CASES
             for name in case.implementation_names(include_torch=include_torch, device=device)}
    algorithms = sorted(names - {"reference", "auto", "torch"})
    return tuple(name for name in ("reference", *algorithms, "auto", "torch") if name in names)


def select_implementations(names: str | None, device: str = "cpu") -> list[str] | None:
    """The implementations named in a comma-separated list (None: all available, returned
    as None), checked against those of the case table on ``device``."""
    if names is None:
        return None
    from .cases import _pick

    known = all_implementation_names(device=device)
    wanted = _pick(names, list(known), "algorithm")
    if "torch" in wanted and not torch_installed():
        raise ValueError("torch is not installed; install it with pip install 'fastconv[bench]'")
    return wanted


def _torch():
    """torch, set to as many threads as Numba uses; ImportError where it is missing."""
    import numba
    import torch

    torch.set_num_threads(numba.get_num_threads())
    return torch


# --- binders: an op's inputs and calls ----------------------------------------------------

Arrays = Mapping[str, Any]


class Calls(NamedTuple):
    """A case's host inputs and each implementation's call on them, wherever they are."""

    #: The inputs, seeded, on the host (numpy arrays).
    inputs: dict[str, np.ndarray]
    #: Floating-point operations (conv ops) or bytes read and written (the others) of one call.
    work: float
    #: ``(arrays, algorithm) -> call`` of the fastconv function.
    fastconv: Callable[[Arrays, str], Callable[[], object]]
    #: ``arrays -> call`` of the reference (host arrays only).
    reference: Callable[[Arrays], Callable[[], object]]
    #: ``(torch, tensors) -> call`` of PyTorch.
    torch: Callable[[Any, Arrays], Callable[[], object]]


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def _nbytes(*arrays_or_shapes: np.ndarray | tuple[int, ...], itemsize: int = 4) -> int:
    """Bytes of arrays, or of float32 arrays of the given shapes."""
    total = 0
    for item in arrays_or_shapes:
        total += item.nbytes if isinstance(item, np.ndarray) else int(np.prod(item)) * itemsize
    return total


def _conv2d(case: OpCase, rng: np.random.Generator) -> Calls:
    """conv2d forward with bias on ``case.layer``."""
    layer = case.conv
    x, w, b = layer.make_inputs()
    s, p, g = layer.stride, layer.padding, layer.groups
    return Calls(
        {"x": x, "w": w, "b": b}, layer.flops,
        fastconv=lambda a, algorithm: partial(fastconv.conv2d, a["x"], a["w"], a["b"], stride=s,
                                              padding=p, groups=g, algorithm=algorithm),
        reference=lambda a: partial(reference.conv2d, a["x"], a["w"], a["b"], stride=s,
                                    padding=p, groups=g),
        torch=lambda torch, t: partial(torch.nn.functional.conv2d, t["x"], t["w"], t["b"],
                                       stride=s, padding=p, groups=g),
    )


def _conv_grad(case: OpCase, rng: np.random.Generator) -> Calls:
    """grad_input, or grad_weight with grad_bias, of conv2d on ``case.layer``."""
    layer = case.conv
    x, w, _ = layer.make_inputs()
    dy = _normal(rng, layer.output_shape)
    s, p, g = layer.stride, layer.padding, layer.groups
    grad_input = case.op == "grad_input"  # else grad_weight and grad_bias
    pair = [s] * 2, [p] * 2, [1, 1]
    return Calls(
        {"dy": dy, "x": x, "w": w}, layer.flops,
        fastconv=lambda a, algorithm: partial(
            fastconv.conv2d_backward, a["dy"], a["x"], a["w"], stride=s, padding=p, groups=g,
            needs_input_grad=grad_input, needs_weight_grad=not grad_input,
            needs_bias_grad=not grad_input, algorithm=algorithm),
        # the reference computes grad_input and grad_weight in one loop
        reference=lambda a: partial(reference.conv2d_backward, a["dy"], a["x"], a["w"],
                                    stride=s, padding=p, groups=g),
        torch=lambda torch, t: partial(torch.ops.aten.convolution_backward, t["dy"], t["x"],
                                       t["w"], [layer.filters], *pair, False, [0, 0], g,
                                       [grad_input, not grad_input, not grad_input]),
    )


def _conv_transpose(case: OpCase, rng: np.random.Generator) -> Calls:
    """conv_transpose2d, or its backward (all three gradients), as the adjoint of the
    conv2d ``case.layer``: its input is that layer's output, its output the layer's input."""
    layer = case.conv
    _, w, _ = layer.make_inputs()  # (C_in, C_out, R, S) for the transposed convolution
    x = _normal(rng, layer.output_shape)
    s, p = layer.stride, layer.padding
    if case.op == "conv_transpose2d":
        return Calls(
            {"x": x, "w": w, "b": _normal(rng, (layer.channels,))}, layer.flops,
            fastconv=lambda a, algorithm: partial(fastconv.conv_transpose2d, a["x"], a["w"],
                                                  a["b"], stride=s, padding=p,
                                                  algorithm=algorithm),
            reference=lambda a: partial(reference.conv_transpose2d, a["x"], a["w"], a["b"],
                                        stride=s, padding=p),
            torch=lambda torch, t: partial(torch.nn.functional.conv_transpose2d, t["x"],
                                           t["w"], t["b"], stride=s, padding=p),
        )
    pair = [s] * 2, [p] * 2, [1, 1]
    return Calls(
        {"dy": _normal(rng, layer.input_shape), "x": x, "w": w},
        2 * layer.flops,  # grad_input (a conv2d) and grad_weight (a correlation)
        fastconv=lambda a, algorithm: partial(fastconv.conv_transpose2d_backward, a["dy"],
                                              a["x"], a["w"], stride=s, padding=p,
                                              algorithm=algorithm),
        reference=lambda a: partial(reference.conv_transpose2d_backward, a["dy"], a["x"],
                                    a["w"], stride=s, padding=p),
        torch=lambda torch, t: partial(torch.ops.aten.convolution_backward, t["dy"], t["x"],
                                       t["w"], [layer.channels], *pair, True, [0, 0], 1,
                                       [True] * 3),
    )


def _pool(case: OpCase, rng: np.random.Generator) -> Calls:
    """max_pool2d or avg_pool2d, forward or backward, on ``case.shape``."""
    k, s, p = case.pool.kernel, case.pool.stride, case.pool.padding
    shape = case.nchw
    x = tie_free(shape, rng=rng)
    out_shape = case.pool.output_shape(shape)
    if case.op in ("max_pool2d", "avg_pool2d"):
        forward = getattr(fastconv, case.op)
        return Calls(
            {"x": x}, _nbytes(x, out_shape),
            fastconv=lambda a, algorithm: partial(forward, a["x"], k, s, p, algorithm=algorithm),
            reference=lambda a: partial(getattr(reference, case.op), a["x"], k, s, p),
            torch=lambda torch, t: partial(getattr(torch.nn.functional, case.op), t["x"], k, s,
                                           p),
        )
    dy = _normal(rng, out_shape)
    if case.op == "avg_pool2d_backward":
        return Calls(
            {"dy": dy, "x": x}, _nbytes(dy, x),
            fastconv=lambda a, algorithm: partial(fastconv.avg_pool2d_backward, a["dy"], shape,
                                                  k, s, p, algorithm=algorithm),
            reference=lambda a: partial(reference.avg_pool2d_backward, a["dy"], shape, k, s, p),
            torch=lambda torch, t: partial(torch.ops.aten.avg_pool2d_backward, t["dy"], t["x"],
                                           [k, k], [s, s], [p, p], False, True, None),
        )
    _, indices = fastconv.max_pool2d(x, k, s, p, return_indices=True)
    return Calls(
        {"dy": dy, "indices": indices, "x": x}, _nbytes(dy, indices, x),
        fastconv=lambda a, algorithm: partial(fastconv.max_pool2d_backward, a["dy"],
                                              a["indices"], shape, algorithm=algorithm),
        reference=lambda a: partial(reference.max_pool2d_backward, a["dy"], a["indices"], shape),
        torch=lambda torch, t: partial(torch.ops.aten.max_pool2d_with_indices_backward,
                                       t["dy"], t["x"], [k, k], [s, s], [p, p], [1, 1], False,
                                       t["indices"]),
    )


def _max_unpool(case: OpCase, rng: np.random.Generator) -> Calls:
    """max_unpool2d or its backward: ``case.shape`` is the pooled shape, the indices
    those of ``case.window``'s max_pool2d of a tie-free input."""
    k, s = case.pool.kernel, case.pool.stride
    n, c, h, w = case.nchw
    full_shape = (n, c, h * s, w * s)
    pooled, indices = fastconv.max_pool2d(tie_free(full_shape, rng=rng), k, s,
                                          return_indices=True)
    if case.op == "max_unpool2d":
        size = full_shape[2:]
        return Calls(
            {"x": pooled, "indices": indices}, _nbytes(pooled, indices, full_shape),
            fastconv=lambda a, algorithm: partial(fastconv.max_unpool2d, a["x"], a["indices"],
                                                  k, s, output_size=size, algorithm=algorithm),
            reference=lambda a: partial(reference.max_unpool2d, a["x"], a["indices"], k, s,
                                        output_size=size),
            torch=lambda torch, t: partial(torch.nn.functional.max_unpool2d, t["x"],
                                           t["indices"], k, s, output_size=size),
        )
    dy = _normal(rng, full_shape)

    def torch_call(torch, t):
        # what autograd runs for max_unpool2d (max_pool_double_backward): a gather
        dy_t, indices_t = t["dy"], t["indices"]
        flat = (*indices.shape[:2], -1)
        return lambda: dy_t.view(flat).gather(2, indices_t.view(flat)).view(indices_t.shape)

    return Calls(
        {"dy": dy, "indices": indices}, _nbytes(dy, indices, pooled),
        fastconv=lambda a, algorithm: partial(fastconv.max_unpool2d_backward, a["dy"],
                                              a["indices"], algorithm=algorithm),
        reference=lambda a: partial(reference.max_unpool2d_backward, a["dy"], a["indices"]),
        torch=torch_call,
    )


def _repeat_unpool(case: OpCase, rng: np.random.Generator) -> Calls:
    """repeat_unpool2d by ``case.window.stride`` or its backward; ``case.shape`` is the
    small (pooled) shape."""
    scale = case.pool.stride
    n, c, h, w = small = case.nchw
    big = (n, c, h * scale, w * scale)
    if case.op == "repeat_unpool2d":
        x = _normal(rng, small)

        def torch_call(torch, t):
            x_t = t["x"]
            return lambda: x_t.repeat_interleave(scale, 2).repeat_interleave(scale, 3)

        return Calls(
            {"x": x}, _nbytes(x, big),
            fastconv=lambda a, algorithm: partial(fastconv.repeat_unpool2d, a["x"], scale,
                                                  algorithm=algorithm),
            reference=lambda a: partial(reference.repeat_unpool2d, a["x"], scale),
            torch=torch_call,
        )
    dy = _normal(rng, big)
    return Calls(
        {"dy": dy}, _nbytes(dy, small),
        fastconv=lambda a, algorithm: partial(fastconv.repeat_unpool2d_backward, a["dy"], scale,
                                              algorithm=algorithm),
        reference=lambda a: partial(reference.repeat_unpool2d_backward, a["dy"], scale),
        torch=lambda torch, t: partial(torch.ops.aten.upsample_nearest2d_backward, t["dy"],
                                       big[2:], small, float(scale), float(scale)),
    )


#: Each op's binder.
BINDERS: dict[str, Callable[[OpCase, np.random.Generator], Calls]] = {
    "conv2d": _conv2d,
    "grad_input": _conv_grad,
    "grad_weight": _conv_grad,
    "conv_transpose2d": _conv_transpose,
    "conv_transpose2d_backward": _conv_transpose,
    "max_pool2d": _pool,
    "max_pool2d_backward": _pool,
    "avg_pool2d": _pool,
    "avg_pool2d_backward": _pool,
    "max_unpool2d": _max_unpool,
    "max_unpool2d_backward": _max_unpool,
    "repeat_unpool2d": _repeat_unpool,
    "repeat_unpool2d_backward": _repeat_unpool,
}


def calls(case: OpCase, seed: int = 0) -> Calls:
    """``case``'s inputs (from a generator seeded with ``seed``) and calls."""
    return BINDERS[case.op](case, np.random.default_rng(seed))


class Bound(NamedTuple):
    """A case's inputs, made once and placed, and the calls of each implementation on them."""

    #: Floating-point operations (conv ops) or bytes read and written (the others) of one call.
    work: float
    #: ``algorithm -> call`` of the fastconv function.
    fastconv: Callable[[str], Callable[[], object]]
    reference: Callable[[], object]
    #: ``torch module -> call`` on tensors of the inputs.
    torch: Callable[[Any], Callable[[], object]]

    def prepare(self, impl: str) -> Callable[[], object]:
        """A no-argument call of ``impl``, which allocates its result as a user's call does."""
        if impl == "reference":
            return self.reference
        if impl == "torch":
            return self.torch(_torch())
        return self.fastconv(impl)


class HostSide:
    """Where the inputs of a CPU run live: numpy arrays, and torch tensors sharing their
    memory. :class:`fastconv.bench.gpu.GpuSide` is the GPU's."""

    device = "cpu"
    #: Whether each fastconv result is checked against torch's (the GPU check).
    check = False
    #: Called after each timed call (a GPU's wait), or None.
    sync: Callable[[], None] | None = None

    def arrays(self, inputs: dict[str, np.ndarray]) -> Arrays:
        return inputs

    def tensors(self, torch, inputs: dict[str, np.ndarray]) -> Arrays:
        return {name: torch.from_numpy(array) for name, array in inputs.items()}


def bind(case: OpCase | Layer, seed: int = 0, side: Any = None) -> Bound:
    """Make ``case``'s inputs (seeded) and bind every implementation to them, placed by
    ``side`` (default: on the host); a :class:`Layer` is its conv2d case."""
    if isinstance(case, Layer):
        case = conv2d_case(case)
    side = HostSide() if side is None else side
    made = calls(case, seed)
    arrays = side.arrays(made.inputs)
    return Bound(
        work=made.work,
        fastconv=lambda algorithm: made.fastconv(arrays, algorithm),
        reference=made.reference(made.inputs),
        torch=lambda torch: made.torch(torch, side.tensors(torch, made.inputs)),
    )


def prepare(case: Layer | OpCase, impl: str) -> Callable[[], object]:
    """A no-argument function that runs ``impl`` on ``case``'s inputs (a :class:`Layer`:
    conv2d on it), as a user would call it (allocating the output)."""
    op_case = conv2d_case(case) if isinstance(case, Layer) else case
    known = op_case.implementation_names(include_torch=True)
    if impl not in known:
        raise ValueError(f"unknown implementation {impl!r}; choose from {known}")
    return bind(op_case).prepare(impl)


def refusal(case: Layer | OpCase, impl: str, device: str = "cpu") -> str | None:
    """Why fastconv's dispatcher refuses ``impl`` on ``case`` (a :class:`Layer` or an
    :class:`OpCase`) on ``device``, in its words, or None where it runs it. Decided from
    the problem (:func:`fastconv.dispatch.unsupported_reason`) without calling anything:
    such a cell is not timed (``-`` in the tables) and has no benchmark in
    ``benchmarks/``.

    >>> from fastconv.bench import LAYERS
    >>> refusal(LAYERS[8], "winograd")  # doctest: +ELLIPSIS
    "algorithm 'winograd' cannot compute this conv2d: winograd needs a 3x3 or 5x5 kernel ..."
    >>> refusal(LAYERS[2], "winograd"), refusal(LAYERS[8], "auto")
    (None, None)
    """
    if impl in ("reference", "torch"):
        return None
    for op, problem in case.dispatched():
        if impl not in dispatch.available_algorithms(op, device):
            return f"fastconv has no algorithm {impl!r} for {op}" + (
                f" on {device}" if device != "cpu" else "")
        reason = dispatch.unsupported_reason(op, device, impl, **problem)
        if reason is not None:
            return f"algorithm {impl!r} cannot compute this {op}: {reason}"
    return None


def algorithm_of(layer: Layer, impl: str) -> str:
    """The kernel that runs for ``impl`` on conv2d of ``layer``: the chooser's pick for
    ``auto`` (without running it), else ``impl``."""
    if impl != "auto":
        return impl
    name, _ = dispatch.select("conv2d", "cpu", "auto", **layer.problem())
    return name


def trace_dispatch(fn: Callable[[], object]) -> list[tuple[str, str]]:
    """Run ``fn`` once and return the ``(op, algorithm)`` the dispatcher picked, in order."""
    picked: list[tuple[str, str]] = []
    choose = dispatch.choose

    def spy(op: str, device: str, algorithm: str, **problem: Any):
        choice = choose(op, device, algorithm, **problem)
        picked.append((op, choice.algorithm))
        return choice

    dispatch.choose = spy  # the functional modules look it up on each call
    plans.clear()  # a cached plan would not ask the dispatcher
    try:
        fn()
    finally:
        dispatch.choose = choose
    return picked


def probe(case: OpCase, impl: str, fn: Callable[[], object]) -> str:
    """The kernel that runs for ``impl``: for ``auto``, the dispatcher's picks in a
    call of ``fn`` (``a+b`` where it picked several), else ``impl``."""
    if impl != "auto":
        return impl
    kernel_ops = [op for op, _ in case.dispatched()] or [case.spec.algorithms]
    return "+".join(dict.fromkeys(name for op, name in trace_dispatch(fn) if op in kernel_ops))
