"""fastconv.ops, the one table of kernel ops: every op in it has a reference, a chooser on
each device, a warm-up call and a benchmark; every registered kernel names an op of it;
and the package's module-level imports have no cycle (fastconv.cuda never imports
fastconv.functional)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import bench, dispatch, functional, ops

NAMES = list(ops.NAMES)
PACKAGE = Path(fastconv.__file__).parent


@pytest.fixture(scope="module")
def backends():
    """Both backends loaded (the CUDA one under Numba's simulator without a GPU)."""
    dispatch._load("cpu")
    dispatch._load("cuda")


def test_the_table_is_the_registrys_list_of_ops():
    assert dispatch.OPS == ops.NAMES == tuple(ops.TABLE)
    assert ops.NAMES == (
        "conv2d", "conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias", "max_pool2d",
        "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "max_unpool2d",
        "max_unpool2d_backward", "repeat_unpool2d", "repeat_unpool2d_backward")
    assert all(name == op.name for name, op in ops.TABLE.items())
    conv2d = ops.TABLE["conv2d"]
    assert conv2d.arguments == ("x", "weight", "bias", "out", "stride", "padding", "dilation",
                                "groups", "activation")
    assert (conv2d.outputs, conv2d.output_positions, conv2d.chooser) == (("out",), (3,), "conv")
    with pytest.raises(dataclasses.FrozenInstanceError):
        conv2d.name = "conv3d"  # type: ignore[misc]


def test_an_entry_checks_its_chooser_kind_and_outputs():
    conv2d = ops.TABLE["conv2d"]
    with pytest.raises(ValueError, match="chooser must be one of"):
        dataclasses.replace(conv2d, chooser="fastest")
    with pytest.raises(ValueError, match="outputs .* must be some of its arguments"):
        dataclasses.replace(conv2d, outputs=("y",))


def _positional(function):
    """The names of ``function``'s positional parameters, or None where it takes ``*args``
    (the CUDA backend's reference wrappers) or has no signature."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return None
    return tuple(p.name for p in parameters
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


@pytest.mark.parametrize("name", NAMES)
def test_every_op_has_a_reference_with_its_kernel_arguments(name):
    op = ops.TABLE[name]
    assert callable(op.reference), name
    assert _positional(op.reference) == op.arguments


@pytest.mark.parametrize("name", NAMES)
def test_every_op_is_registered_on_both_devices(name, backends):
    op = ops.TABLE[name]
    for device in ("cpu", "cuda"):
        assert (name, device) in dispatch._CHOOSERS, (name, device)
        names = dispatch.available_algorithms(name, device)
        assert names[0] == "auto" and "direct" in names, (name, device, names)
    assert ("reference" in dispatch.available_algorithms(name, "cpu")) == op.reference_on_cpu
    if op.reference_on_cpu:
        assert dispatch._KERNELS[name, "cpu", "reference"] is op.reference
    assert "reference" in dispatch.available_algorithms(name, "cuda")


def test_registered_kernels_name_ops_of_the_table_and_take_their_arguments(backends):
    assert dispatch._KERNELS
    for (name, device, algorithm), kernel in dispatch._KERNELS.items():
        assert name in ops.TABLE, (name, device, algorithm)
        positional = _positional(kernel)
        if positional is not None:
            assert positional == ops.TABLE[name].arguments, (name, device, algorithm)
    for name, device in dispatch._CHOOSERS:
        assert name in ops.TABLE, (name, device)


def test_the_cuda_backend_copies_back_the_tables_outputs(backends):
    from fastconv.cuda import backend

    assert backend._OUTPUTS == {
        "conv2d": (3,), "conv2d_grad_input": (2,), "conv2d_grad_weight": (2,),
        "conv2d_grad_bias": (1,), "max_pool2d": (1, 2), "max_pool2d_backward": (2,),
        "avg_pool2d": (1,), "avg_pool2d_backward": (1,), "max_unpool2d": (2,),
        "max_unpool2d_backward": (2,), "repeat_unpool2d": (1,), "repeat_unpool2d_backward": (1,),
    }


def test_one_kernel_choosers_keep_their_reasons(backends):
    single = [name for name in NAMES if ops.TABLE[name].chooser == "single"]

    def picks(device):
        choices = {name: dispatch.choose(name, device, "auto") for name in single}
        return {name: (c.algorithm, c.reason) for name, c in choices.items()}

    cpu = picks("cpu")
    assert cpu.pop("conv2d_grad_bias") == ("direct",
                                           "grad_bias has one kernel: a sum over N, H and W")
    assert set(cpu.values()) == {
        ("direct", "pooling and unpooling have one fast kernel: direct loops over each plane")}
    assert set(picks("cuda").values()) == {("direct", "this op has one GPU kernel: the direct one")}


@pytest.mark.parametrize("name", NAMES)
def test_every_warm_up_call_runs_its_op(name, backends):
    op = ops.TABLE[name]
    assert callable(op.warm_up)
    # the reference loops where the CPU has them; grad_bias's call runs its one kernel
    algorithm = "reference" if op.reference_on_cpu else "direct"
    picked = bench.trace_dispatch(lambda: op.warm_up(functional, np.dtype(np.float32),
                                                     algorithm))
    assert (name, algorithm) in picked, picked


def _unbenchmarked(found):
    return sorted(name for name in ops.NAMES if not found.get(name))


def test_every_op_has_a_benchmark():
    found = bench.kernel_op_benchmarks()
    assert set(found) == set(ops.NAMES), "a benchmark runs a kernel op missing from the table"
    assert _unbenchmarked(found) == [], "ops no case of bench.OP_CASES (or LAYERS) runs"
    assert found["conv2d"][0] == "layer a"
    assert all(case.available() for case in bench.OP_CASES)
    # each spec's ops include those its case's dispatcher choices name
    for case in bench.OP_CASES:
        assert {op for op, _ in case.dispatched()} <= set(case.spec.kernel_ops), case.id
    specs = {case.op for case in bench.OP_CASES}
    assert specs == set(bench._OP_SPECS)


def test_a_new_op_without_a_benchmark_is_flagged(monkeypatch):
    new = dataclasses.replace(ops.TABLE["max_pool2d"], name="lp_pool2d")
    monkeypatch.setattr(bench, "KERNEL_OPS", {**ops.TABLE, new.name: new})
    monkeypatch.setattr(ops, "NAMES", (*ops.NAMES, new.name))
    assert _unbenchmarked(bench.kernel_op_benchmarks()) == ["lp_pool2d"]


def test_every_op_has_a_gpu_case():
    found = bench.kernel_op_cases(bench.gpu_cases(tiny=True))
    assert set(found) == set(ops.NAMES)
    assert _unbenchmarked(found) == [], "ops no GPU case runs"
    with pytest.raises(ValueError, match="op must be one of"):
        dataclasses.replace(bench.gpu_cases(tiny=True)[0], op="conv3d")


# --- the import graph ------------------------------------------------------------------------


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module under fastconv/: dotted name -> (path, is a package)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def _imports(node: ast.AST, *, in_functions: bool):
    """The import statements under ``node``: those that run when the module is imported
    (class bodies and ``if``/``try`` blocks included), and also those inside functions
    with ``in_functions``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and not in_functions:
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        yield from _imports(child, in_functions=in_functions)


def _targets(name: str, path: Path, package: bool, modules, *, in_functions: bool) -> set[str]:
    """The fastconv modules that ``name`` imports: ``from X import y`` imports ``X.y`` where
    that is a module, else ``X``; relative and absolute alike."""
    here = name if package else name.rpartition(".")[0]
    found = set()
    for node in _imports(ast.parse(path.read_text()), in_functions=in_functions):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = here.split(".")[: len(here.split(".")) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules
                      else source)
    return {target for target in found if target.partition(".")[0] == "fastconv"}


def _graph(*, in_functions: bool = False) -> dict[str, set[str]]:
    modules = _modules()
    return {name: _targets(name, path, package, modules, in_functions=in_functions)
            for name, (path, package) in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as the list of its modules, or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_import_graph_is_read_right():
    graph = _graph()
    assert "fastconv.dispatch" in graph["fastconv.functional.conv"]  # from .. import dispatch
    assert "fastconv.placement" in graph["fastconv.functional.conv"]  # from ..placement import
    assert "fastconv.cuda" in graph["fastconv.bench.gpu"]  # from ..cuda import simulated
    assert "fastconv" in graph["fastconv.bench.cases"]  # import fastconv
    assert "fastconv.cuda.arrays" not in graph["fastconv.placement"]  # inside placement()
    assert "fastconv.cuda.arrays" in _graph(in_functions=True)["fastconv.placement"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_module_level_imports_have_no_cycle():
    assert _cycle(_graph()) is None


def test_the_cuda_backend_never_imports_functional():
    for name, targets in _graph(in_functions=True).items():
        if name == "fastconv.cuda" or name.startswith("fastconv.cuda."):
            wrong = sorted(t for t in targets if t.startswith("fastconv.functional"))
            assert not wrong, f"{name} imports {wrong}"


def test_the_op_table_and_placement_import_neither_numba_nor_functional_nor_cuda():
    modules = _modules()
    for name in ("fastconv.ops", "fastconv.reference_kernels", "fastconv.placement",
                 "fastconv._checks"):
        imported = set()
        for node in _imports(ast.parse(modules[name][0].read_text()), in_functions=False):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            else:
                imported.add(node.module or "")
                imported.update(alias.name for alias in node.names)
        assert not {m for m in imported if m.startswith("numba")}, name
        assert not {m for m in imported if "functional" in m or "cuda" in m}, name
