"""The benchmarks behind ``python -m fastconv bench``, the pytest benchmarks in
``benchmarks/`` and the GPU check (``benchmarks/gpu_check.py``):

- :mod:`~fastconv.bench.cases`: the one case table (:data:`CASES`): the conv2d layer
  suite (:data:`LAYERS`) and the op suite (:data:`OP_CASES`: conv2d's gradients on
  layers c, d and g, conv_transpose2d, pooling and unpooling), each case named
  ``op:name``;
- :mod:`~fastconv.bench.implementations`: what ``reference``, each fastconv algorithm,
  ``auto`` and ``torch`` run on a case;
- :mod:`~fastconv.bench.timing`: the one timing rule (CPU and GPU alike), the
  allocator set-up and the compile times;
- :mod:`~fastconv.bench.torch_process`: torch timed in a process of its own, as the
  CPU suites do by default;
- :mod:`~fastconv.bench.suite`: the runner (:func:`run_cases`; :func:`run` for layers,
  :func:`run_ops` for the op suite) and its rows;
- :mod:`~fastconv.bench.gpu`: the GPU side (:func:`run_gpu`: the table at batch 64,
  results checked against PyTorch's);
- :mod:`~fastconv.bench.report`: the table (100 columns), markdown, CSV, JSON, the
  comparison with an earlier run, plots;
- :mod:`~fastconv.bench.machine`: what a timing depends on.

The rates are GFLOP/s for the conv ops and GB/s (bytes of the arrays read and
written) for the others; "torch/auto" is torch's median over auto's, both timed in the same
three interleaved rounds where torch runs in a process of its own
(:func:`~fastconv.bench.suite.rounds_for`). No function here
changes the process: :func:`configure_allocator` is for the command line and the timed
pytest benchmarks to call. numba is imported inside functions only, and torch only
when torch is benchmarked (by the CPU suites in a process of their own, by default).
"""

from __future__ import annotations

from ..ops import TABLE as KERNEL_OPS
from .cases import (
    BACKWARD_LAYERS,
    CASES,
    CONV2D_CASES,
    CONV2D_SPEC,
    LAYERS,
    OP_CASES,
    OP_SPECS,
    POOL_SHAPE,
    POOL_WINDOWS,
    SPECS,
    TRANSPOSE_LAYER,
    UNPOOL_SHAPE,
    Layer,
    OpCase,
    OpSpec,
    Window,
    conv2d_case,
    custom_layer,
    select_cases,
    select_layers,
    select_op_cases,
    tie_free,
)
from .gpu import GPU_BATCH, TOLERANCE, GpuSide, gpu_cases, run_gpu, tiny_case, wrong_rows
from .implementations import (
    Bound,
    Calls,
    HostSide,
    algorithm_of,
    all_implementation_names,
    bind,
    implementation_names,
    op_implementation_names,
    prepare,
    probe,
    refusal,
    select_implementations,
    torch_installed,
    trace_dispatch,
)
from .machine import _cpu_model, _numba_cache, machine_info
from .report import (
    FORMATS,
    NOISY,
    WIDTH,
    Comparison,
    compare,
    document,
    format_csv,
    format_markdown,
    format_op_table,
    format_rows,
    format_table,
    geometric_mean,
    plot_rows,
    rows_to_json,
)
from .suite import (
    OpRow,
    Row,
    batches,
    case_implementations,
    count_cells,
    op_benchmarks,
    run,
    run_cases,
    run_ops,
)
from .timing import (
    BUDGET_S,
    MAX_CALLS,
    MIN_CALLS,
    QUICK_CALLS,
    WARMUP_S,
    CompileTiming,
    Timing,
    calls_for,
    cold_compile_time,
    compile_time,
    configure_allocator,
    time_calls,
    time_cell,
    warm_compile_time,
    warm_up,
)
from .torch_process import TorchProcess

#: The op suite's specs by op (the name tests/test_ops.py checks them by).
_OP_SPECS = OP_SPECS


def kernel_op_cases(cases=CASES) -> dict[str, tuple[str, ...]]:
    """Each kernel op of :data:`fastconv.ops.TABLE` with the ids of the ``cases`` whose
    fastconv call runs it; an op with none is reached by no case (``tests/test_ops.py``
    fails on it).

    >>> kernel_op_cases(gpu_cases(tiny=True))["conv2d_grad_bias"][:2]
    ('grad_weight:c', 'grad_weight:d')
    """
    found: dict[str, list[str]] = {name: [] for name in KERNEL_OPS}
    for case in cases:
        for op in case.spec.kernel_ops:
            found.setdefault(op, []).append(case.id)
    return {op: tuple(ids) for op, ids in found.items()}


def kernel_op_benchmarks() -> dict[str, tuple[str, ...]]:
    """Each kernel op of :data:`fastconv.ops.TABLE` with the benchmarks that run it: the
    layer suite's layers (``layer a``) and the op suite's case ids (``op:name``). An op
    with none is benchmarked nowhere (``tests/test_ops.py`` fails on it).

    >>> kernel_op_benchmarks()["conv2d_grad_bias"][:2]
    ('grad_weight:c', 'grad_weight:d')
    """
    found: dict[str, list[str]] = {name: [] for name in KERNEL_OPS}
    for layer in LAYERS:
        for op, _ in layer.dispatched():
            found.setdefault(op, []).append(f"layer {layer.id}")
    for case in OP_CASES:
        for op in case.spec.kernel_ops:
            found.setdefault(op, []).append(case.id)
    return {op: tuple(ids) for op, ids in found.items()}


__all__ = [
    "BACKWARD_LAYERS", "BUDGET_S", "CASES", "CONV2D_CASES", "CONV2D_SPEC", "FORMATS",
    "GPU_BATCH", "KERNEL_OPS", "LAYERS", "MAX_CALLS", "MIN_CALLS", "NOISY", "OP_CASES",
    "OP_SPECS", "POOL_SHAPE", "POOL_WINDOWS", "QUICK_CALLS", "SPECS", "TOLERANCE",
    "TRANSPOSE_LAYER", "UNPOOL_SHAPE", "WARMUP_S", "WIDTH", "Bound", "Calls", "Comparison",
    "CompileTiming", "GpuSide", "HostSide", "Layer", "OpCase", "OpRow", "OpSpec", "Row",
    "Timing", "TorchProcess", "Window", "algorithm_of", "all_implementation_names", "batches",
    "bind",
    "calls_for", "case_implementations", "cold_compile_time", "compare", "compile_time",
    "configure_allocator", "conv2d_case", "count_cells", "custom_layer", "document",
    "format_csv", "format_markdown", "format_op_table", "format_rows", "format_table",
    "geometric_mean", "gpu_cases", "implementation_names", "kernel_op_benchmarks",
    "kernel_op_cases", "machine_info", "op_benchmarks", "op_implementation_names", "plot_rows",
    "prepare", "probe", "refusal", "rows_to_json", "run", "run_cases", "run_gpu", "run_ops",
    "select_cases", "select_implementations", "select_layers", "select_op_cases", "tie_free",
    "time_calls", "time_cell", "tiny_case", "torch_installed", "trace_dispatch",
    "warm_compile_time", "warm_up",
    "wrong_rows", "_cpu_model", "_numba_cache", "_OP_SPECS",
]
