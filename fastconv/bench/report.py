"""Results as text: a plain table that fits :data:`WIDTH` columns (:func:`format_table`),
markdown, CSV (one line per cell) and JSON (everything: :func:`document`), the ratios
to an earlier run's JSON (:func:`compare`), and bar charts (:func:`plot_rows`).

Every format shows the same rows, those of :func:`fastconv.bench.run_cases` (CPU or GPU).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .cases import CASES, SPECS, OpCase
from .gpu import TOLERANCE
from .implementations import all_implementation_names
from .suite import Row

#: The plain table's width: every line fits it.
WIDTH = 100
#: A cell whose median exceeds its minimum by this factor is marked noisy.
NOISY = 1.5
#: The formats of :func:`format_rows`.
FORMATS = ("table", "markdown", "csv", "json")


def _ms(row: Row) -> str:
    value = row.median_ms
    text = f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.1f}"
    return text + ("!" if value > NOISY * row.min_ms else "")


def _rate(value: float) -> str:
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.2f}x" if value < 100 else f"{value:.0f}x"


def _grid(lines: list[list[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(line[i]) for line in lines) for i in range(len(right))]
    return [
        "  ".join(
            cell.rjust(width) if flush_right else cell.ljust(width)
            for cell, width, flush_right in zip(line, widths, right, strict=True)
        ).rstrip()
        for line in lines
    ]


def _wrap(lines: Iterable[str], width: int = WIDTH) -> list[str]:
    """Each line cut at ``width`` on spaces, its continuation indented by two more."""
    out = []
    for line in lines:
        if len(line) <= width:
            out.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip()) + 2)
        out += textwrap.wrap(line, width, subsequent_indent=indent, break_on_hyphens=False)
    return out


def geometric_mean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _order(rows: Sequence[Row]) -> list[str]:
    """The implementations of ``rows`` in the tables' order: reference, the algorithms,
    auto, torch."""
    device = rows[0].device if rows else "cpu"
    known = list(all_implementation_names(device=device))
    found = dict.fromkeys(row.impl for row in rows)
    rank = {name: index for index, name in enumerate(known)}
    return sorted(found, key=lambda name: rank.get(name, len(known)))


class _Shown:
    """What a table's line shows per case: each implementation's row on the full case,
    except the reference, which runs on its reference batch; ``auto`` timed on that
    batch gives ref/auto."""

    def __init__(self, rows: Sequence[Row]) -> None:
        self.cells: dict[str, dict[str, Row]] = {}
        self.auto_beside_ref: dict[str, Row] = {}
        for row in rows:
            cells = self.cells.setdefault(row.id, {})
            if not row.reduced or row.impl == "reference":
                cells[row.impl] = row
            elif row.impl == "auto":
                self.auto_beside_ref[row.id] = row

    def versus_torch(self, case: str, impl: str = "auto") -> float | None:
        row = self.cells[case].get(impl)
        return row.vs_torch if row else None

    def versus_reference(self, case: str) -> float | None:
        ref = self.cells[case].get("reference")
        auto = self.cells[case].get("auto")
        if ref and ref.reduced:
            auto = self.auto_beside_ref.get(case)
        return ref.median_ms / auto.median_ms if ref and auto else None


@dataclass
class _Column:
    title: str  # over the column group, on the first header line
    head: str
    cells: list[str]
    right: bool = True


def _sections(rows: Sequence[Row]) -> list[tuple[str, list[Row]]]:
    """The rows by table: conv2d forward, the other conv ops (GFLOP/s), pooling and
    unpooling (GB/s); each in the order of the rows."""
    parts = [
        ("conv2d forward with bias", lambda row: row.op == "conv2d"),
        ("conv2d gradients and conv_transpose2d", lambda row: row.op != "conv2d"
         and row.unit == "GFLOP/s"),
        ("pooling and unpooling", lambda row: row.unit != "GFLOP/s"),
    ]
    return [(title, chosen) for title, keep in parts
            if (chosen := [row for row in rows if keep(row)])]


def _matrix(rows: Sequence[Row]) -> tuple[list[str], list[list[_Column]]]:
    """The case ids of ``rows`` and the column groups of their table: per implementation
    its ms and rate (and auto's picks), then torch/auto, ref/auto and the GPU check's
    largest error."""
    shown = _Shown(rows)
    keys = list(shown.cells)
    impls = _order(rows)
    unit = rows[0].unit
    groups = []
    for impl in impls:
        cells = [shown.cells[key].get(impl) for key in keys]
        title = impl + ("*" if impl == "reference" else "")
        group = [_Column(title, "ms", [_ms(row) if row else "-" for row in cells]),
                 _Column("", unit, [_rate(row.rate) if row else "-" for row in cells])]
        if impl == "auto":
            group.append(_Column("", "picks", [row.algorithm if row else "-" for row in cells],
                                 right=False))
        groups.append(group)
    if "auto" in impls and "torch" in impls:
        groups.append([_Column("torch/", "auto",
                               [_ratio(shown.versus_torch(key)) for key in keys])])
    if "auto" in impls and "reference" in impls:
        groups.append([_Column("ref/", "auto",
                               [_ratio(shown.versus_reference(key)) for key in keys])])
    if any(row.error is not None for row in rows):
        worst = []
        for key in keys:
            errors = [row.error for row in rows if row.id == key and row.error is not None]
            value = max(errors, key=lambda e: -1.0 if math.isnan(e) else e) if errors else None
            flag = "" if value is None or value <= TOLERANCE else "!"
            worst.append("-" if value is None else f"{value:.1e}{flag}")
        groups.append([_Column("error", "max", worst)])
    return keys, groups


def _blocks(keys: list[str], groups: list[list[_Column]], width: int = WIDTH,
            *, heads: bool = True) -> list[str]:
    """The grid of ``groups`` beside the case column, cut into blocks of whole groups that
    each fit ``width`` columns (the case column repeated), a blank line between blocks.
    The header is the groups' titles and the columns' heads, or (``heads=False``) the
    titles alone."""

    def render(chosen: list[list[_Column]]) -> list[str]:
        columns = [_Column("", "case", keys, right=False)] + [c for g in chosen for c in g]
        if heads:
            lines = [[c.title for c in columns], [c.head for c in columns]]
        else:
            lines = [["case", *(c.title for c in columns[1:])]]
        lines += [[c.cells[i] for c in columns] for i in range(len(keys))]
        return _grid(lines, [c.right for c in columns])

    blocks: list[list[str]] = []
    current: list[list[_Column]] = []
    for group in groups:
        if current and max(map(len, render([*current, group]))) > width:
            blocks.append(render(current))
            current = []
        current.append(group)
    if current:
        blocks.append(render(current))
    out: list[str] = []
    for block in blocks:
        out += ([""] if out else []) + block
    return out


def _threads(count: Any) -> str:
    return f"{count} thread" + ("" if count == 1 else "s")


def _machine_lines(machine: dict[str, Any]) -> list[str]:
    where = {"own": ", a process of its own", "this": ", this process"}.get(
        machine.get("torch_process", ""), "")
    torch_threads = (f" ({_threads(machine['torch_threads'])}{where})"
                     if machine.get("torch_threads") else "")
    lines = [
        f"CPU: {machine['cpu']}, {machine['cores']} cores; numba {machine['numba']} "
        f"({_threads(machine['numba_threads'])}, {machine['threading_layer']} layer); "
        f"numpy {machine['numpy']}; torch {machine['torch'] or 'not installed'}{torch_threads}",
        f"BLAS: {machine['blas']}; allocator: {machine['allocator']}",
    ]
    if machine.get("gpus"):
        lines.append("GPU: " + "; ".join(machine["gpus"]))
    return lines


def _title(rows: Sequence[Row], machine: dict[str, Any]) -> str:
    if machine.get("device") == "cuda" or (rows and rows[0].device == "cuda"):
        return ("fastconv CUDA vs PyTorch (float32 NCHW, TF32 off): median ms of timed calls, "
                "each waiting for the GPU")
    return ("fastconv vs the reference and PyTorch (float32 NCHW): median ms of timed calls "
            "after warm-up")


def _cases_by_id(cases: Iterable[OpCase] | None) -> dict[str, OpCase]:
    """The cases whose descriptions the legend gives: ``cases``, then the table's."""
    found = {case.id: case for case in CASES}
    found.update((case.id, case) for case in cases or ())
    return found


def _legend(rows: Sequence[Row], cases: Iterable[OpCase] | None = None) -> list[str]:
    known = _cases_by_id(cases)
    lines = []
    for key, cells in _Shown(rows).cells.items():
        first = next(iter(cells.values()))
        case = known.get(key)
        if case is not None and case.batch != first.batch and not first.reduced:
            case = case.with_batch(first.batch)  # the GPU's batch
        description = case.description if case is not None else "?"
        ref = cells.get("reference")
        note = f"; reference on N={ref.batch}" if ref and ref.reduced else ""
        torch = f"; torch: {SPECS[first.op].torch}" if first.op != "conv2d" else ""
        lines.append([f"  {key}", f"{description}{note}{torch}"])
    return _grid(lines, [False, False]) if lines else []


def _notes(rows: Sequence[Row]) -> list[str]:
    units = {row.unit for row in rows}
    impls = {row.impl for row in rows}
    text = []
    if "GFLOP/s" in units:
        others = any(row.op != "conv2d" and row.unit == "GFLOP/s" for row in rows)
        text.append("GFLOP/s = 2*N*K*Ho*Wo*C/groups*R*S of the conv2d / median" + (
            " (conv_transpose2d: of the conv2d it is the adjoint of; its backward: twice "
            "that)" if others else ""))
    if "GB/s" in units:
        text.append("GB/s = bytes of the arrays read (input, gradient, indices) and written "
                    "(result) / median")
    if "torch" in impls:
        text.append("torch/auto > 1: fastconv's auto is faster than torch")
    if "reference" in impls:
        text.append("* the reference runs on the batch named with the case: its ms are for "
                    "that batch, its rates comparable; ref/auto times auto on that batch; "
                    "'-': not timed")
    if any(row.median_ms > NOISY * row.min_ms for row in rows):
        text.append(f"! after ms: median over {NOISY}x the fastest call: the machine was busy, "
                    "rerun")
    if any(row.error is not None for row in rows):
        text.append(f"error: largest difference from torch's result relative to its largest "
                    f"magnitude ('!' beyond {TOLERANCE:g})")
    return text


def _summary(rows: Sequence[Row]) -> list[str]:
    """torch/auto per op: geometric mean and minimum over the cases timed with both."""
    shown = _Shown(rows)
    per_op: dict[str, dict[str, float]] = {}
    for key in shown.cells:
        value = shown.versus_torch(key)
        if value is not None:
            per_op.setdefault(key.partition(":")[0], {})[key] = value
    if not per_op:
        return []
    lines = [["  op", "geo. mean", "minimum", "", "cases"]]
    for op, values in per_op.items():
        worst = min(values, key=values.__getitem__)
        lines.append([f"  {op}", _ratio(geometric_mean(list(values.values()))),
                      _ratio(values[worst]), f"({worst})", str(len(values))])
    return ["torch/auto per op:", *_grid(lines, [False, True, True, False, True])]


def _correctness(rows: Sequence[Row]) -> list[str]:
    checked = [(row, row.error) for row in rows if row.error is not None]
    if not checked:
        return []
    wrong = [(row, error) for row, error in checked if not error <= TOLERANCE]
    if not wrong:
        return [f"correctness: all results within {TOLERANCE:g} of PyTorch's "
                f"({len(checked)} checked, largest {max(e for _, e in checked):.1e})"]
    return [f"correctness: {len(wrong)} results beyond {TOLERANCE:g} of PyTorch's: "
            + ", ".join(f"{row.id} {row.impl} ({error:.1e})" for row, error in wrong)]


def format_table(rows: Sequence[Row], machine: dict[str, Any] | None = None,
                 *, compile: dict[str, Any] | None = None,
                 cases: Iterable[OpCase] | None = None) -> str:
    """The plain-text report, every line at most :data:`WIDTH` columns: a grid per kind
    of op (a line per case, ms and rate per implementation, auto's picks, torch/auto and
    ref/auto, cut into blocks that fit), the cases, notes, torch/auto per op, the GPU
    check's verdict and the machine. ``cases``: those the rows were timed on, for their
    descriptions, where not the table's (custom layers, the GPU check's tiny shapes)."""
    if machine is None:
        from .machine import machine_info

        machine = machine_info()
    text = [_title(rows, machine), *_machine_lines(machine)]
    if not rows:
        return "\n".join(_wrap([*text, "", "no case timed"]))
    for title, chosen in _sections(rows):
        keys, groups = _matrix(chosen)
        text += ["", f"{title} ({chosen[0].unit}):", *_blocks(keys, groups)]
    text += ["", "cases (N images, C channels HxW, K filters RxS, stride s, padding p):",
             *_legend(rows, cases), *_notes(rows), *_summary(rows), *_correctness(rows)]
    if compile is not None:
        text.append(_compile_line(compile))
    return "\n".join(_wrap(text))


#: The op suite's table is the same report.
format_op_table = format_table


def _compile_line(compile: dict[str, Any]) -> str:
    cold, warm = compile["cold"], compile["warm"]
    return (f"compile: fastconv.warmup() ({len(warm['kernels'])} algorithm/dtype pairs) in a "
            f"fresh process: {cold['warmup_s']:.2f} s with an empty cache, "
            f"{warm['warmup_s']:.3f} s with a warm one; importing numba and the backend "
            f"before it: {warm['import_s']:.2f} s")


def _markdown_table(head: list[str], lines: list[list[str]], right: Sequence[bool]) -> list[str]:
    def cells(values: list[str]) -> str:
        return "| " + " | ".join(value.replace("|", "\\|") for value in values) + " |"

    return [cells(head), "|" + "|".join("---:" if r else ":---" for r in right) + "|",
            *(cells(line) for line in lines)]


def format_markdown(rows: Sequence[Row], machine: dict[str, Any] | None = None,
                    *, compile: dict[str, Any] | None = None,
                    cases: Iterable[OpCase] | None = None) -> str:
    """The report as markdown: a table per kind of op, with every column."""
    if machine is None:
        from .machine import machine_info

        machine = machine_info()
    text = [f"**{_title(rows, machine)}**", "", *(f"- {line}" for line in _machine_lines(machine))]
    for title, chosen in _sections(rows):
        keys, groups = _matrix(chosen)
        columns = [c for group in groups for c in group]
        heads, owner = [], ""
        for group in groups:
            for column in group:
                owner = column.title or owner
                heads.append(f"{owner}{column.head}" if owner.endswith("/")
                             else f"{owner} {column.head}".strip())
        lines = [[key, *(c.cells[i] for c in columns)] for i, key in enumerate(keys)]
        text += ["", f"### {title} ({chosen[0].unit})", "",
                 *_markdown_table(["case", *heads], lines, [False, *(c.right for c in columns)])]
    if rows:
        text += ["", "Cases:", ""]
        text += [f"- `{key.strip()}`: {description}" for key, description in
                 (line.split(None, 1) for line in _legend(rows, cases))]
        text += ["", *(f"{line}  " for line in [*_notes(rows), *_correctness(rows)])]
        summary = _summary(rows)
        if summary:
            text += ["", "```", *summary, "```"]
    if compile is not None:
        text += ["", _compile_line(compile)]
    return "\n".join(text)


#: The CSV columns: every field of a row, and its case id.
CSV_FIELDS = ("id", *(field.name for field in dataclasses.fields(Row)))


def format_csv(rows: Sequence[Row], comparison: Sequence[Comparison] | None = None) -> str:
    """One line per row (every field; ``new_over_old`` with a comparison)."""
    out = io.StringIO()
    fields = [*CSV_FIELDS, *(("new_over_old",) if comparison is not None else ())]
    writer = csv.DictWriter(out, fields, lineterminator="\n")
    writer.writeheader()
    ratios = {id(c.row): c.ratio for c in comparison or ()}
    for row in rows:
        line = {"id": row.id, **dataclasses.asdict(row)}
        if comparison is not None:
            line["new_over_old"] = ratios.get(id(row), "")
        writer.writerow(line)
    return out.getvalue().rstrip("\n")


def document(rows: Sequence[Row], machine: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The JSON document of a run: ``{"machine": ..., "rows": [...], **extra}`` (extra: the
    settings, the compile times, a comparison)."""
    return {"machine": machine, "rows": [dataclasses.asdict(row) for row in rows], **extra}


def rows_to_json(
    rows: Sequence[Row],
    machine: dict[str, Any],
    *,
    op_rows: Sequence[Row] | None = None,
    **extra: Any,
) -> str:
    """:func:`document` as indented JSON, of ``rows`` and ``op_rows`` together."""
    return json.dumps(document([*rows, *(op_rows or ())], machine, **extra), indent=2)


# --- comparison with an earlier run -------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """A cell of this run and the same cell (case, implementation, batch) of an earlier one."""

    row: Row
    old_ms: float

    @property
    def ratio(self) -> float:
        """new ms / old ms: below 1, faster now."""
        return self.row.median_ms / self.old_ms


def old_cells(old: dict[str, Any]) -> dict[tuple[str, str, int | None], float]:
    """``(case id, implementation, batch) -> median ms`` of an earlier run's JSON (this
    version's, or an older one's with ``op_rows`` and conv2d rows named by ``layer``)."""
    if not isinstance(old, dict):
        raise ValueError("not a JSON object of a fastconv bench run")
    rows = [*(old.get("rows") or ()), *(old.get("op_rows") or ())]
    cells = {}
    for row in rows:
        if not isinstance(row, dict) or "median_ms" not in row or "impl" not in row:
            continue
        case = row.get("case", row.get("layer"))
        if case is None:
            continue
        key = (f"{row.get('op', 'conv2d')}:{case}", row["impl"], row.get("batch"))
        cells[key] = float(row["median_ms"])
    return cells


def compare(rows: Sequence[Row], old: dict[str, Any]) -> list[Comparison]:
    """Each row that the earlier run ``old`` (its JSON document) also timed, with its time
    there; ratios new/old by :attr:`Comparison.ratio`."""
    cells = old_cells(old)
    found = []
    for row in rows:
        old_ms = cells.get((row.id, row.impl, row.batch))
        if old_ms is not None and old_ms > 0:
            found.append(Comparison(row, old_ms))
    return found


def _old_run(old: dict[str, Any]) -> str:
    found = old.get("machine")
    machine: dict[str, Any] = found if isinstance(found, dict) else {}
    parts = [f"fastconv {machine.get('fastconv', '?')}", str(machine.get("cpu", "?")),
             f"{machine.get('numba_threads', '?')} threads"]
    if machine.get("gpus"):
        parts.append("; ".join(machine["gpus"]))
    return ", ".join(parts)


def format_comparison(comparison: Sequence[Comparison], old: dict[str, Any], name: str,
                      fmt: str = "table") -> str:
    """The ratios new ms / old ms, a line per case and a column per implementation, and
    their geometric mean; as a plain table (``fmt="table"``) or markdown."""
    head = ["compared with an earlier run: new ms / old ms per cell (< 1: faster now)",
            f"the earlier run: {name}: {_old_run(old)}"]
    if not comparison:
        return "\n".join(_wrap([*head, "no cell in common (case, implementation and batch)"]))
    rows = [c.row for c in comparison]
    ratio = {id(c.row): c.ratio for c in comparison}
    shown = _Shown(rows)
    keys = list(shown.cells)
    impls = _order(rows)
    columns = [_Column(impl, "", [_ratio(ratio[id(shown.cells[key][impl])])
                                  if impl in shown.cells[key] else "-" for key in keys])
               for impl in impls]
    mean = geometric_mean([c.ratio for c in comparison])
    tail = f"geometric mean of new/old over {len(comparison)} cells: {_ratio(mean)}"
    if fmt == "markdown":
        lines = [[key, *(c.cells[i] for c in columns)] for i, key in enumerate(keys)]
        return "\n".join([*(f"{line}  " for line in head), "",
                          *_markdown_table(["case", *impls], lines, [False, *[True] * len(impls)]),
                          "", tail])
    grid = _blocks(keys, [[column] for column in columns], heads=False)
    return "\n".join(_wrap([*head, *grid, tail]))


def format_rows(rows: Sequence[Row], machine: dict[str, Any], fmt: str = "table", *,
                compile: dict[str, Any] | None = None,
                comparison: Sequence[Comparison] | None = None,
                old: dict[str, Any] | None = None, old_name: str = "",
                settings: dict[str, Any] | None = None,
                cases: Iterable[OpCase] | None = None) -> str:
    """The report of a run in ``fmt`` (:data:`FORMATS`): the rows, the compile times
    where measured, and the comparison with an earlier run ``old`` where given."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if fmt == "json":
        extra: dict[str, Any] = {}
        if settings is not None:
            extra["settings"] = settings
        if compile is not None:
            extra["compile"] = compile
        if comparison is not None:
            extra["compare"] = {"file": old_name, "cells": [
                {"id": c.row.id, "impl": c.row.impl, "batch": c.row.batch,
                 "median_ms": c.row.median_ms, "old_median_ms": c.old_ms,
                 "new_over_old": c.ratio} for c in comparison]}
        return json.dumps(document(rows, machine, **extra), indent=2)
    if fmt == "csv":
        return format_csv(rows, comparison)
    text = (format_markdown if fmt == "markdown" else format_table)(rows, machine,
                                                                    compile=compile, cases=cases)
    if comparison is not None:
        text += "\n\n" + format_comparison(comparison, old or {}, old_name, fmt)
    return text


# --- plots -----------------------------------------------------------------------------------


def plot_rows(
    rows: Sequence[Row],
    path: str | os.PathLike[str],
    machine: dict[str, Any] | None = None,
    *,
    op_rows: Sequence[Row] | None = None,
) -> None:
    """Save a bar chart of the results as a PNG (needs matplotlib): a panel of GFLOP/s
    per conv2d case and implementation, and one per case of the other ops of each
    fastconv implementation's speed relative to torch (torch ms / ms), or of its rates
    where torch was not timed. Log scales: the reference is about 1000x slower. A panel
    is left out where it has no rows."""
    from matplotlib.figure import Figure

    if machine is None:
        from .machine import machine_info

        machine = machine_info()
    info: dict[str, Any] = machine
    everything = [*rows, *(op_rows or ())]
    conv = [row for row in everything if row.op == "conv2d"]
    others = [row for row in everything if row.op != "conv2d"]
    panels: list[tuple[dict[str, dict[str, float]], str, str]] = []
    if conv:
        panels.append(({case: {impl: row.rate for impl, row in shown.items()}
                        for case, shown in _Shown(conv).cells.items()},
                       "conv2d forward, float32 (reference on its smaller batch)", "GFLOP/s"))
    if others:
        by_case = _Shown(others).cells
        if any(row.vs_torch is not None for row in others):
            panels.append(({case: {impl: row.vs_torch for impl, row in shown.items()
                                   if impl != "torch" and row.vs_torch is not None}
                            for case, shown in by_case.items()},
                           "other ops: speed relative to torch (> 1: faster than torch)",
                           "torch ms / ms"))
        else:
            panels.append(({case: {impl: row.rate for impl, row in shown.items()}
                            for case, shown in by_case.items()},
                           "other ops", "GFLOP/s (conv ops) or GB/s (the others)"))
    if not panels:
        raise ValueError("no rows to plot")
    impls = _order(everything)
    palette = [f"C{index}" for index in range(10)]
    colours = {impl: palette[index % len(palette)] for index, impl in enumerate(impls)}
    widest = max(len(cells) for cells, *_ in panels)
    figure = Figure(figsize=(max(8.0, 0.7 * widest), 4.5 * len(panels)), layout="constrained")
    for axes, (cells, title, unit) in zip(figure.subplots(len(panels), squeeze=False)[:, 0],
                                          panels, strict=True):
        shown = [impl for impl in impls if any(impl in cell for cell in cells.values())]
        width = 0.8 / len(shown)
        for index, impl in enumerate(shown):
            offset = (index - (len(shown) - 1) / 2) * width
            bars = [(x + offset, cell[impl]) for x, cell in enumerate(cells.values())
                    if impl in cell]
            axes.bar(*zip(*bars, strict=True), width, label=impl, color=colours[impl])
        if unit == "torch ms / ms":
            axes.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        axes.set_yscale("log")
        axes.set_xticks(range(len(cells)), list(cells), rotation=30 if widest > 9 else 0,
                        ha="right" if widest > 9 else "center")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.grid(axis="y", which="major", alpha=0.3)
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    where = ("; ".join(info["gpus"]) if info.get("gpus")
             else f"{info['cpu']}, {info['numba_threads']} threads")
    figure.suptitle(
        f"fastconv {info['fastconv']} vs torch {info['torch'] or '(not installed)'}: "
        f"{where}"
    )
    figure.savefig(path, format="png", dpi=120)
