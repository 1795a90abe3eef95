"""The runner: time implementations on cases (:func:`run_cases`, one runner for the
layer suite, the op suite and the GPU check), with :func:`run` and :func:`run_ops` for
the two CPU suites.

The reference is timed on a smaller batch (``reference_batch`` of a case): its Python
loops take about 3 us per output value, so a full layer takes seconds to minutes. Its
rates are comparable with the other columns, its milliseconds are not; ``auto`` is
timed beside it on that batch ("ref/auto"). Where one image alone takes over a second
(layer i) it is not timed.

Nothing here changes the process (the allocator: :func:`fastconv.bench.configure_allocator`
is the command line's and the pytest benchmarks' to call).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .cases import CONV2D_CASES, LAYERS, OP_CASES, Layer, OpCase, conv2d_case
from .implementations import HostSide, bind, probe, refusal
from .timing import BUDGET_S, Timing, time_cell
from .torch_process import TorchProcess


@dataclass
class Row:
    """One timed cell: ``impl`` on case ``op:case`` (``conv2d:a``; :attr:`id`).

    ``rate`` is in ``unit``: GFLOP/s for the conv ops, GB/s (bytes of the arrays read and
    written) for the others. ``vs_torch`` is torch's median over this one on the same
    case (> 1: faster than torch); None where torch was not timed on it. ``error`` (the
    GPU check) is the largest difference from torch's result relative to its largest
    magnitude, and ``first_call_s`` the first call's seconds (compilation included)."""

    op: str
    case: str
    batch: int
    reduced: bool  # timed on the case's ``reference_batch``, not its own batch
    impl: str
    algorithm: str
    median_ms: float
    min_ms: float
    calls: int
    rate: float
    unit: str
    vs_torch: float | None = None
    device: str = "cpu"
    error: float | None = None
    first_call_s: float | None = None

    @property
    def id(self) -> str:
        return f"{self.op}:{self.case}"

    @property
    def layer(self) -> str:
        """The layer id of a conv2d row (its case name)."""
        return self.case

    @property
    def gflops(self) -> float:
        """The rate of a conv row (GFLOP/s)."""
        return self.rate


#: The rows of the op suite are rows like the others.
OpRow = Row

_Case = TypeVar("_Case", Layer, OpCase)


def batches(case: _Case, implementations: Sequence[str]) -> list[tuple[_Case, bool, list[str]]]:
    """``(case, reduced, implementations)`` to time for ``case`` (a :class:`Layer` or an
    :class:`OpCase`): the full case, and the reference with ``auto`` beside it on the
    reference batch.

    >>> [(c.batch, reduced, names) for c, reduced, names in batches(LAYERS[2], ["reference"])]
    [(8, False, []), (1, True, ['reference'])]
    """
    full: list[str] = [name for name in implementations if name != "reference"]
    small = case.reference_case() if "reference" in implementations else None
    if small is None:
        return [(case, False, full)]
    if small.batch == case.batch:
        return [(case, False, ["reference", *full])]
    companions: list[str] = ["auto"] if "auto" in implementations else []
    return [(case, False, full), (small, True, ["reference", *companions])]


def _versus_torch(timed: Sequence[Row]) -> None:
    """Set each row's ``vs_torch`` from the torch row among ``timed`` (one case)."""
    torch_ms = next((row.median_ms for row in timed if row.impl == "torch"), None)
    for row in timed:
        row.vs_torch = None if torch_ms is None else torch_ms / row.median_ms


def case_implementations(case: OpCase, implementations: Sequence[str] | None,
                         device: str = "cpu") -> list[str]:
    """The implementations timed on ``case``: those of its op on ``device`` (none where this
    fastconv lacks the op), or those among ``implementations``."""
    if not case.available():
        return []
    names = case.implementation_names(device=device)
    return [name for name in names if implementations is None or name in implementations]


def run_cases(
    cases: Iterable[OpCase],
    implementations: Sequence[str] | None = None,
    *,
    quick: bool = False,
    repeat: int | None = None,
    budget_s: float = BUDGET_S,
    progress: Callable[[str], None] | None = None,
    side: Any = None,
    torch_process: bool = True,
) -> list[Row]:
    """Time ``implementations`` (default: all available on each case) on ``cases``; cases
    whose op this fastconv lacks, and algorithms that cannot run a case (:func:`refusal`),
    are left out.

    ``quick``: two warm-up calls and ``QUICK_CALLS`` timed ones per cell, for smoke
    tests. ``repeat``: exactly this many timed calls per cell. ``progress`` is told what
    is about to be timed. ``side`` places the inputs (default: host memory;
    :class:`fastconv.bench.gpu.GpuSide`: a GPU's, where each result is also checked
    against torch's).

    ``torch_process``: on the host, time torch in a process of its own
    (:class:`~fastconv.bench.torch_process.TorchProcess`, started at the first torch
    cell, with as many threads as Numba), so that neither library's idle thread pool
    spins beside the other's timings; False: in this process, after the warm-up. On a
    GPU torch always runs here (it gives the results fastconv's are checked against).
    """
    side = HostSide() if side is None else side
    with ExitStack() as stack:
        own: list[TorchProcess] = []

        def torch_timing(case: OpCase, budget_s: float) -> Timing:
            if not own:
                import numba

                own.append(stack.enter_context(TorchProcess(numba.get_num_threads())))
            return own[0].time(case, quick=quick, repeat=repeat, budget_s=budget_s)

        separate = torch_process and isinstance(side, HostSide)
        return _run(cases, implementations, side, quick=quick, repeat=repeat,
                    budget_s=budget_s, progress=progress,
                    torch_timing=torch_timing if separate else None)


def _run(
    cases: Iterable[OpCase],
    implementations: Sequence[str] | None,
    side: Any,
    *,
    quick: bool,
    repeat: int | None,
    budget_s: float,
    progress: Callable[[str], None] | None,
    torch_timing: Callable[[OpCase, float], Timing] | None,
) -> list[Row]:
    """:func:`run_cases`, with torch's cells timed by ``torch_timing`` where given: a case
    batch that has torch in a process of its own beside fastconv's implementations and no
    reference is timed in :data:`ROUNDS` interleaved rounds (:func:`rounds_for`)."""

    def tell(message: str) -> None:
        if progress is not None:
            progress(message)

    rows: list[Row] = []
    for op_case in cases:
        names = case_implementations(op_case, implementations, side.device)
        for case, reduced, impls in batches(op_case, names):
            if not impls:
                continue
            bound = bind(case, side=side)
            expected = side.expected(bound) if side.check else None
            cells: list[_Cell] = []
            for name in impls:
                refused = refusal(case, name, side.device)
                if refused is not None:
                    tell(f"{case.id} N={case.batch} {name}")
                    tell(f"{case.id} {name}: not timed, {refused}")
                    continue
                if name == "torch" and torch_timing is not None:
                    cells.append(_Cell(name, None, name))
                    continue
                fn = bound.prepare(name)
                error = first_call_s = None
                if expected is not None and name != "torch":
                    start = time.perf_counter()
                    try:
                        result = fn()
                    except ValueError as refused_here:  # a kernel that does not take it
                        tell(f"{case.id} N={case.batch} {name}")
                        tell(f"{case.id} {name}: not timed, {refused_here}")
                        continue
                    side.sync()
                    first_call_s = time.perf_counter() - start
                    error = side.error(result, expected)
                algorithm = probe(case, name, fn)  # calls fn where name is auto
                called = (first_call_s is not None) + (name == "auto")
                cells.append(_Cell(name, fn, algorithm, called, error, first_call_s))
            n_rounds = rounds_for([cell.name for cell in cells], torch_timing is not None,
                                  quick=quick, repeat=repeat)
            for round_ in range(n_rounds):
                for cell in cells:
                    tell(f"{case.id} N={case.batch} {cell.name}"
                         + (f" (round {round_ + 1} of {n_rounds})" if n_rounds > 1 else ""))
                    if cell.fn is None:
                        assert torch_timing is not None
                        cell.timings.append(torch_timing(case, budget_s / n_rounds))
                        continue
                    cell.timings.append(time_cell(
                        cell.fn, cell.name, quick=quick, repeat=repeat,
                        budget_s=budget_s / n_rounds, sync=side.sync,
                        called=cell.called if round_ == 0 else 2))
            timed = [_row(case, reduced, cell.name, cell.algorithm, combine(cell.timings),
                          bound.work, side, error=cell.error, first_call_s=cell.first_call_s)
                     for cell in cells]
            _versus_torch(timed)
            rows.extend(timed)
    return rows


#: Interleaved rounds of a case's cells where torch runs in a process of its own
#: (:func:`rounds_for`): each round times every implementation, torch's included, on a
#: third of the cell's budget, and a cell is the median of its rounds' medians. The VM
#: these figures come from changes speed by 10-40 % within a minute (benchmarks/RESULTS.md);
#: timed one after the other, fastconv's cells and torch's could land on either side of
#: such a change, where interleaved each side sees the same minutes.
ROUNDS = 3


def rounds_for(names: Sequence[str], torch_apart: bool, *, quick: bool = False,
               repeat: int | None = None) -> int:
    """Rounds in which a case's cells ``names`` are timed: :data:`ROUNDS` where torch is
    among them and timed in a process of its own (``torch_apart``) beside one of fastconv's
    implementations, without the reference (seconds a call: it keeps its one round);
    one otherwise, and in quick mode or with a fixed ``repeat``.

    >>> rounds_for(["auto", "direct", "torch"], True), rounds_for(["auto", "torch"], False)
    (3, 1)
    >>> rounds_for(["reference", "auto", "torch"], True), rounds_for(["torch"], True)
    (1, 1)
    """
    if quick or repeat is not None or not torch_apart or "reference" in names:
        return 1
    return ROUNDS if "torch" in names and len(names) > 1 else 1


def combine(timings: Sequence[Timing]) -> Timing:
    """One cell from its rounds: the median of their medians, the least of their minima,
    all their calls.

    >>> combine([Timing(2.0, 1.0, 5), Timing(3.0, 1.5, 5), Timing(9.0, 0.5, 4)])
    Timing(median_s=3.0, min_s=0.5, calls=14)
    """
    return Timing(statistics.median(t.median_s for t in timings),
                  min(t.min_s for t in timings), sum(t.calls for t in timings))


@dataclass
class _Cell:
    """An implementation to time on a case: ``fn`` (None: torch, in its own process),
    what it ran (``algorithm``), calls already made (``called``), its error and first
    call, and its rounds' timings."""

    name: str
    fn: Callable[[], object] | None
    algorithm: str
    called: int = 0
    error: float | None = None
    first_call_s: float | None = None
    timings: list[Timing] = field(default_factory=list)


def _row(case: OpCase, reduced: bool, impl: str, algorithm: str, timing: Timing, work: float,
         side: Any, *, error: float | None = None, first_call_s: float | None = None) -> Row:
    return Row(
        op=case.op, case=case.name, batch=case.batch, reduced=reduced, impl=impl,
        algorithm=algorithm, median_ms=timing.median_s * 1e3, min_ms=timing.min_s * 1e3,
        calls=timing.calls, rate=work / timing.median_s / 1e9, unit=case.unit,
        device=side.device, error=error, first_call_s=first_call_s,
    )


def run(
    layers: Iterable[Layer] = LAYERS,
    implementations: Sequence[str] | None = None,
    *,
    quick: bool = False,
    repeat: int | None = None,
    budget_s: float = BUDGET_S,
    progress: Callable[[str], None] | None = None,
    torch_process: bool = True,
) -> list[Row]:
    """Time ``implementations`` (default: all available) on conv2d of ``layers``
    (:func:`run_cases` on their conv2d cases); algorithms that cannot run a layer
    (:func:`refusal`) are left out. Changes nothing in the process: no allocator set-up
    (that is :func:`fastconv.bench.configure_allocator`, for the command line)."""
    cases = [conv2d_case(layer) for layer in layers]
    return run_cases(cases, implementations, quick=quick, repeat=repeat, budget_s=budget_s,
                     progress=progress, torch_process=torch_process)


def run_ops(
    cases: Iterable[OpCase] | None = None,
    implementations: Sequence[str] | None = None,
    *,
    quick: bool = False,
    repeat: int | None = None,
    budget_s: float = BUDGET_S,
    progress: Callable[[str], None] | None = None,
    torch_process: bool = True,
) -> list[Row]:
    """:func:`run_cases` on ``cases`` (default: the op suite, :data:`OP_CASES`)."""
    return run_cases(OP_CASES if cases is None else cases, implementations, quick=quick,
                     repeat=repeat, budget_s=budget_s, progress=progress,
                     torch_process=torch_process)


def count_cells(cases: Iterable[OpCase], implementations: Sequence[str] | None = None,
                device: str = "cpu", *, quick: bool = False, repeat: int | None = None,
                torch_apart: bool = False) -> int:
    """The cells :func:`run_cases` announces to ``progress`` on ``cases``: each refused one
    once, each timed one once a round (:func:`rounds_for`; ``torch_apart``: torch timed in
    a process of its own, as ``run_cases`` does on the host by default)."""
    total = 0
    for op_case in cases:
        names = case_implementations(op_case, implementations, device)
        for case, _, impls in batches(op_case, names):
            timed = [name for name in impls if refusal(case, name, device) is None]
            total += len(impls) - len(timed) + len(timed) * rounds_for(
                timed, torch_apart, quick=quick, repeat=repeat)
    return total


def op_benchmarks(ops: Iterable[str]) -> list[tuple[str, OpCase, str, bool]]:
    """``(id, case, implementation, reduced)`` for each pytest benchmark of ``ops``'
    cases: every implementation on the full case, and the reference beside ``auto`` on
    its reference batch (``reduced``), as :func:`run_ops` times them; none where fastconv
    refuses the implementation (:func:`refusal`).

    >>> [(id, reduced) for id, *_, reduced in op_benchmarks(["grad_input"])][-2:]
    [('grad_input-g-reference-N4', True), ('grad_input-g-auto-N4', True)]
    """
    params = []
    for op_case in (*CONV2D_CASES, *OP_CASES):
        if op_case.op not in ops:
            continue
        names = op_case.implementation_names(include_torch=True)
        for case, reduced, impls in batches(op_case, names):
            suffix = f"-N{case.batch}" if reduced else ""
            params += [(f"{case.op}-{case.name}-{impl}{suffix}", case, impl, reduced)
                       for impl in impls if refusal(case, impl) is None]
    return params
