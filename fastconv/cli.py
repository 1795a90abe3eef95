"""The command line: ``python -m fastconv {bench,info,demo}``, also installed as ``fastconv``.

One argparse parser (:func:`parser`) holds every subcommand. A subcommand is one
``commands.add_parser(...)`` block there: its options and
``set_defaults(handler=...)``, a function of the parsed arguments that returns the exit
status. A handler reports a bad command line by raising :class:`UsageError` and a
failure while running by raising :class:`Failure`.

Exit status:

- 2, usage errors: argparse's own error (the subcommand's usage, then
  ``fastconv COMMAND: error: ...``), for what argparse finds and what a handler finds
  (an unknown layer id, a folder that does not exist, an option whose package is
  missing); and a bad ``FASTCONV_*`` variable, one line such as
  ``fastconv: FASTCONV_CACHE must be 0 or 1 (...), got 'maybe'`` for every subcommand
  (``--help`` and ``--version`` still answer, after that line on stderr);
- 1, failures while running (a file that cannot be written, the demo's packages
  missing): one line;
- 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import math
import platform
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from . import __version__


class UsageError(Exception):
    """A bad command line that a handler found; :func:`main` passes its message to the
    subcommand's argparse error (usage, then ``fastconv COMMAND: error: MESSAGE``)."""


class Failure(Exception):
    """A command that could not do its work; its message is the whole line printed."""


# --- argument types ----------------------------------------------------------------


def _checked(kind: type, accept: Callable[[Any], bool], expected: str) -> Callable:
    """An argparse type: ``kind(text)`` where ``accept`` holds, else "expected ..." ."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def _positive(kind: type) -> Callable:
    """An argparse type: a ``kind`` (int or float) > 0, finite."""
    expected = "a positive integer" if kind is int else "a finite positive number"
    return _checked(kind, lambda value: math.isfinite(value) and value > 0, expected)


#: argparse types: an int >= 0; a float in [0, 1) (so not nan or inf).
_non_negative_int = _checked(int, lambda value: value >= 0, "a non-negative int")
_momentum = _checked(float, lambda value: 0 <= value < 1, "a number in [0, 1)")


# --- the parser ----------------------------------------------------------------------


def _bench_module() -> ModuleType | None:
    """:mod:`fastconv.bench`, or None where a bad ``FASTCONV_*`` variable keeps
    :mod:`fastconv.config` from importing (which :func:`main` has reported)."""
    try:
        from . import bench
    except ValueError:
        return None
    return bench


def parser() -> argparse.ArgumentParser:
    """The command line's parser: every subcommand, each with its handler."""
    from . import demo

    bench = _bench_module()
    top = argparse.ArgumentParser(
        prog="fastconv",
        description="fastconv: fast convolution and pooling for numpy arrays, written with Numba.",
    )
    top.add_argument("--version", action="version", version=f"fastconv {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "bench",
        help="time conv2d (and the other ops) against the reference and torch",
        description=(
            "Time conv2d forward (float32, NCHW) on the standard layer suite: the slow reference, "
            "each fastconv algorithm, auto, and torch.nn.functional.conv2d. Prints a table of "
            "milliseconds and GFLOP/s with torch/auto ratios, 100 columns wide. Takes about a "
            "minute; compilation is kept out of the timings (see --compile). --suite ops times "
            "the other ops the same way: conv2d's gradients on layers c, d and g, "
            "conv_transpose2d, pooling and unpooling (GFLOP/s or GB/s). --device cuda checks "
            "and times the same cases on the GPU against PyTorch's."
        ),
    )
    run.add_argument(
        "--suite", choices=("conv2d", "ops", "all"), default=None,
        help="conv2d: the layer suite (the default on the CPU); ops: the op suite; all: both "
        "(the default with --cases and with --device cuda)",
    )
    layers = ("unknown here (a FASTCONV_* variable is bad)" if bench is None else
              ", ".join(f"{layer.id} ({layer.description})" for layer in bench.LAYERS))
    run.add_argument(
        "--layers", metavar="IDS",
        help=f"conv2d suite: comma-separated layer ids, default all: {layers}",
    )
    ops = ("unknown here (a FASTCONV_* variable is bad)" if bench is None else
           ", ".join(dict.fromkeys(case.op for case in bench.CASES)))
    run.add_argument(
        "--cases", metavar="NAMES",
        help="comma-separated ops (all their cases) or cases op:name such as conv2d:c or "
        f"max_pool2d:3x3s2p1, the same on every device; default: the suite's. The ops: {ops}. "
        "(The old form op|name still works; it is deprecated.)",
    )
    run.add_argument(
        "--shape", metavar="N,C,H,W,K,R[,stride,pad,groups]", action="append", default=[],
        help="time conv2d on this layer instead of the layer suite (repeatable; the form of "
        "fastconv tune --shape)",
    )
    run.add_argument(
        "--algorithms", metavar="NAMES",
        help="comma-separated implementations: reference, a fastconv algorithm (direct, "
        "im2col, ...), auto, torch; default all, torch where installed",
    )
    run.add_argument(
        "--threads", metavar="N", type=_positive(int),
        help="Numba threads for the run, and as many for torch (default: Numba's, "
        "NUMBA_NUM_THREADS)",
    )
    run.add_argument(
        "--torch-here", action="store_true",
        help="time torch in this process, after each cell's warm-up (default: in a process "
        "of its own, so that neither library's idle threads spin beside the other's timings)",
    )
    run.add_argument("--quick", action="store_true", help="a smoke test: 1-2 timed calls per cell")
    run.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu",
        help="cpu (default); cuda: the cases on the GPU at batch 64, each result checked "
        "against PyTorch's on the GPU and timed against PyTorch/cuDNN",
    )
    budget = ("" if bench is None else f" in {bench.BUDGET_S:g} s, {bench.MIN_CALLS} to "
              f"{bench.MAX_CALLS}")
    run.add_argument(
        "--repeat", metavar="N", type=_positive(int),
        help=f"timed calls per cell (default: as many as fit{budget})",
    )
    run.add_argument(
        "--format", choices=("table", "markdown", "csv", "json"), default="table",
        help="what to print: table (default, 100 columns), markdown, csv (a line per cell) or "
        "json (everything: machine, settings and every row)",
    )
    run.add_argument(
        "--output", metavar="FILE", type=Path,
        help="also save the results as JSON (what --format json prints), for --compare",
    )
    run.add_argument("--json", metavar="FILE", type=Path, help="deprecated: --output FILE")
    run.add_argument(
        "--compare", metavar="FILE", type=Path,
        help="a JSON of an earlier run (--output or --format json): also print each cell's "
        "ratio new ms / old ms",
    )
    run.add_argument(
        "--plot", metavar="FILE.png", type=Path,
        help="also save a bar chart (needs matplotlib): GFLOP/s per layer and implementation, "
        "and for the op suite each implementation's speed relative to torch",
    )
    run.add_argument(
        "--compile", action="store_true",
        help="also time the JIT compilation of every kernel in a fresh process, with an empty "
        "and with a warm cache (adds tens of seconds)",
    )
    run.set_defaults(handler=_bench)

    info = commands.add_parser(
        "info",
        help="versions, CPU, threads, cache, CUDA and algorithms",
        description="Print versions, CPU and its SIMD features, Numba's threading layer and "
        "threads (and which threading layers can load), the JIT cache, the BLAS, the CUDA "
        "backend and its GPUs, fastconv's configuration and the available algorithms. A part "
        "that cannot be found out reads 'unavailable: REASON'.",
    )
    info.set_defaults(handler=_info)

    ahead = commands.add_parser(
        "tune",
        help="time the conv algorithms on layers now and save the choices for auto",
        description="Time every conv2d algorithm (and, unless --forward-only, the input "
        "and weight gradients' algorithms) on the benchmark layers or on given shapes, and "
        "save the fastest in the tuning file, where algorithm='auto' finds them when "
        "autotuning is on (FASTCONV_AUTOTUNE=1 or fastconv.set_autotune(True)). Problems "
        "already in the file are not timed again.",
    )
    ahead.add_argument("--layers", metavar="IDS", default=None,
                       help="benchmark layers to tune, comma-separated (default: all)")
    ahead.add_argument("--shape", metavar="N,C,H,W,K,R[,stride,pad,groups]", action="append",
                       default=[], help="a layer to tune instead (repeatable)")
    ahead.add_argument("--batches", metavar="N,N,...", default=None,
                       help="tune each layer at these batch sizes (default: the layer's own)")
    ahead.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ahead.add_argument("--forward-only", action="store_true",
                       help="tune conv2d only, not its gradients")
    ahead.set_defaults(handler=_tune)

    train = commands.add_parser(
        "demo",
        help="train a small CNN on scikit-learn's digits with fastconv.nn",
        description=(
            "Train a LeNet-style CNN built from fastconv.nn (conv+ReLU, max pool, conv+ReLU, "
            "max pool, dense) on scikit-learn's 8x8 digits with SGD and momentum; print the JIT "
            "compile time, the test accuracy and a per-op time breakdown, and save PNGs of the "
            "first-layer filters and the loss curve. Needs the demo extra "
            "(pip install 'fastconv[demo]')."
        ),
    )
    train.add_argument("--epochs", type=_positive(int), default=None,
                       help=f"passes over the training set (default {demo.EPOCHS}, "
                       f"{demo.QUICK_EPOCHS} with --quick)")
    train.add_argument("--quick", action="store_true",
                       help=f"a short run: {demo.QUICK_EPOCHS} epochs (unless --epochs)")
    train.add_argument("--batch-size", type=_positive(int), default=demo.BATCH_SIZE,
                       help=f"images per step (default {demo.BATCH_SIZE})")
    train.add_argument("--lr", type=_positive(float), default=demo.LR,
                       help=f"learning rate (default {demo.LR})")
    train.add_argument("--momentum", type=_momentum, default=demo.MOMENTUM,
                       help=f"SGD momentum, in [0, 1) (default {demo.MOMENTUM})")
    train.add_argument("--seed", type=_non_negative_int, default=0,
                       help="initialisation and batch order, an int >= 0 (default 0); the "
                       "test split is fixed")
    train.add_argument("--out", type=Path, default=Path("demo-output"), metavar="DIR",
                       help="folder for filters.png and loss.png (default demo-output/)")
    train.add_argument("--algorithm", choices=demo.ALGORITHMS, default="auto",
                       help="conv algorithm of the layers (default auto)")
    train.add_argument("--threads", type=_positive(int), default=1, metavar="N",
                       help="Numba threads (default 1: the batches are too small to share)")
    train.add_argument("--no-progress", action="store_true",
                       help="no progress (by default a bar where stderr is a terminal, "
                       "else a line per epoch)")
    train.set_defaults(handler=_demo)

    # each subcommand's own parser, for the usage errors its handler raises
    for command in commands.choices.values():
        command.set_defaults(command_parser=command)
    return top


# --- bench ---------------------------------------------------------------------------


def _check_output(option: str, path: Path | None) -> None:
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"{option}: no directory {str(path.parent)!r}")


class _Progress:
    """What bench is timing, on stderr: a tqdm bar over the ``total`` cells where tqdm is
    installed and stderr is a terminal, else a line per cell (and per cell not timed)."""

    def __init__(self, total: int) -> None:
        self.bar = None
        self.started = False
        if sys.stderr.isatty() and importlib.util.find_spec("tqdm") is not None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="timing", unit="cell", file=sys.stderr,
                            leave=False, dynamic_ncols=True)

    def __call__(self, message: str) -> None:
        if self.bar is None:
            print(f"timing {message}", file=sys.stderr, flush=True)
        elif ": not timed, " not in message:  # the table shows those cells as '-'
            if self.started:  # told before each cell: the previous one is done
                self.bar.update()
            self.started = True
            self.bar.set_postfix_str(message, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            if self.started:
                self.bar.update()
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def _progress(total: int) -> Iterator[_Progress]:
    progress = _Progress(total)
    try:
        yield progress
    finally:
        progress.close()


def _cells(cases: Sequence, implementations: Sequence[str] | None, device: str = "cpu", *,
           quick: bool = False, repeat: int | None = None, torch_apart: bool = False) -> int:
    """The cells that bench.run_cases announces on ``cases`` (the progress bar's total)."""
    from . import bench

    return bench.count_cells(cases, implementations, device, quick=quick, repeat=repeat,
                             torch_apart=torch_apart)


def _bench_cases(args: argparse.Namespace) -> list:
    """The cases that ``--suite``, ``--layers``, ``--cases`` and ``--shape`` select."""
    from . import bench

    if args.shape:
        if args.layers is not None or args.cases is not None or args.suite not in (None,
                                                                                   "conv2d"):
            raise UsageError("--shape replaces the layer suite: give it without --layers, "
                             "--cases and --suite ops/all")
        try:
            return [bench.conv2d_case(bench.custom_layer(text)) for text in args.shape]
        except ValueError as error:
            raise UsageError(f"--shape: {error}") from None
    suite = args.suite or ("all" if args.cases is not None or args.device == "cuda"
                           else "conv2d")
    cases = [case for case in bench.CASES if suite == "all"
             or (case.op == "conv2d") == (suite == "conv2d")]
    try:
        if args.layers is not None:
            ids = {layer.id for layer in bench.select_layers(args.layers)}
            cases = [case for case in cases if case.op != "conv2d" or case.name in ids]
        return bench.select_cases(args.cases, cases)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _read_compare(path: Path | None) -> dict | None:
    """The JSON document of an earlier run, or a usage error saying why not."""
    if path is None:
        return None
    import json

    from . import bench

    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        bench.report.old_cells(old)
    except OSError as error:
        raise UsageError(f"--compare: cannot read {path}: {error.strerror or error}") from None
    except ValueError as error:  # JSONDecodeError too
        raise UsageError(f"--compare: {path} is not the JSON of a fastconv bench run "
                         f"({error})") from None
    return old


def _set_threads(threads: int | None) -> None:
    """Numba's threads for the run (torch takes as many: fastconv.bench runs it so)."""
    if threads is None:
        return
    import numba

    from . import cpu  # noqa: F401 - makes TBB loadable, as for a kernel

    if threads > numba.config.NUMBA_NUM_THREADS:
        raise UsageError(f"argument --threads: at most {numba.config.NUMBA_NUM_THREADS} "
                         f"(NUMBA_NUM_THREADS), got {threads}")
    numba.set_num_threads(threads)


def _cuda_ready() -> bool:
    """Whether ``--device cuda`` can run; a failure or usage error where not. Returns
    whether the GPU is Numba's simulator (tiny shapes)."""
    import fastconv.cuda

    if not fastconv.cuda.is_available():
        raise Failure("fastconv bench: error: --device cuda: no GPU (fastconv.cuda."
                      "is_available() is False; see python -m fastconv info)")
    if importlib.util.find_spec("torch") is None:
        raise UsageError("--device cuda compares with PyTorch on the GPU: install torch with "
                         "CUDA")
    return fastconv.cuda.simulated()


def _bench(args: argparse.Namespace) -> int:
    from . import bench

    output = args.output if args.output is not None else args.json
    _check_output("--output" if args.output is not None else "--json", output)
    _check_output("--plot", args.plot)
    if args.plot is not None:
        if args.plot.suffix.lower() != ".png":
            raise UsageError(f"--plot: expected a file name ending in .png, got "
                             f"{str(args.plot)!r}")
        if importlib.util.find_spec("matplotlib") is None:
            raise UsageError("--plot needs matplotlib: pip install matplotlib")
    tiny = _cuda_ready() if args.device == "cuda" else False
    cases = _bench_cases(args)
    try:
        implementations = bench.select_implementations(args.algorithms, args.device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    old = _read_compare(args.compare)
    _set_threads(args.threads)
    if args.cases is not None and "|" in args.cases:
        print("fastconv bench: note: --cases op|name is deprecated; write op:name",
              file=sys.stderr)
    if args.json is not None:
        print("fastconv bench: note: --json FILE is deprecated; write --output FILE",
              file=sys.stderr)
    missing = sorted({case.spec.function for case in cases if not case.available()})
    if missing:
        print(f"fastconv bench: not timing {', '.join(missing)}: not in this fastconv yet",
              file=sys.stderr)

    bench.configure_allocator()  # for the rest of this process: the command line's own
    repeat = 1 if args.device == "cuda" and (args.quick or tiny) else args.repeat
    if args.device == "cuda":  # the GPU's batch, except for a layer given by --shape
        cases = bench.gpu_cases(cases, batch=None if args.shape else bench.GPU_BATCH, tiny=tiny)
    torch_apart = args.device == "cpu" and not args.torch_here
    with _progress(_cells(cases, implementations, args.device, quick=args.quick, repeat=repeat,
                          torch_apart=torch_apart)) as progress:
        side = bench.GpuSide() if args.device == "cuda" else None
        rows = bench.run_cases(cases, implementations, quick=args.quick, repeat=repeat,
                               progress=progress, side=side,
                               torch_process=torch_apart)
    machine = bench.machine_info(args.device)
    if args.device == "cpu" and any(row.impl == "torch" for row in rows):
        machine["torch_process"] = "this" if args.torch_here else "own"
        machine["torch_threads"] = machine["numba_threads"]
    compile_times = None
    if args.compile:
        print("timing compilation, empty cache", file=sys.stderr, flush=True)
        cold = bench.cold_compile_time()
        print("timing compilation, warm cache", file=sys.stderr, flush=True)
        warm = bench.warm_compile_time()
        compile_times = {"cold": dataclasses.asdict(cold), "warm": dataclasses.asdict(warm)}
    settings = {"device": args.device, "suite": args.suite, "cases": [c.id for c in cases],
                "algorithms": implementations, "threads": machine["numba_threads"],
                "quick": args.quick, "repeat": repeat}
    comparison = None if old is None else bench.compare(rows, old)

    def report(fmt: str) -> str:
        return bench.format_rows(rows, machine, fmt, compile=compile_times,
                                 comparison=comparison, old=old, old_name=str(args.compare),
                                 settings=settings, cases=cases)

    print(report(args.format))
    if output is not None:
        with _writing(output):
            output.write_text(report("json") + "\n", encoding="utf-8")
    if args.plot is not None:
        with _writing(args.plot):
            bench.plot_rows(rows, args.plot, machine)
    return 0


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn an OSError while writing ``path`` into one line."""
    try:
        yield
    except OSError as error:
        raise Failure(
            f"fastconv bench: error: cannot write {path}: {error.strerror or error}"
        ) from None


# --- info ------------------------------------------------------------------------------


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _one_line(error: BaseException, *, kind: bool = True) -> str:
    """``error`` in one line: its lines joined, after its type unless ``kind`` is False."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if not kind:
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _part(label: str, lines: Callable[[], list[str]]) -> list[str]:
    """The lines of one part of ``info``, or ``LABEL: unavailable: REASON`` where finding
    them out raised: info reports what it can."""
    try:
        return lines()
    except Exception as error:  # noqa: BLE001 - any error: one line, and on to the next part
        return [f"{label}: unavailable: {_one_line(error)}"]


def _versions() -> list[str]:
    import numba
    import numpy as np

    return [
        f"fastconv {__version__} (python {platform.python_version()}, {sys.executable})",
        f"numpy {np.__version__}, numba {numba.__version__} (llvmlite {_version('llvmlite')}), "
        f"torch {_version('torch') or 'not installed'}",
    ]


def _cpu() -> list[str]:
    import os

    from . import bench

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return [f"CPU: {bench._cpu_model()}, {os.cpu_count()} cores ({usable} usable)"]


#: SIMD features that decide how fast the kernels run, as LLVM names them.
_SIMD_FEATURES = ("sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                  "avx512vnni", "avx512bf16", "avx512fp16", "amx-tile", "neon", "sve", "sve2")


def _cpu_features() -> str:
    """The host's SIMD features and the CPU Numba compiles for, from LLVM."""
    import numba
    from llvmlite import binding as llvm

    host = llvm.get_host_cpu_name()
    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:  # LLVM cannot read them on every platform
        found = "unknown"
    else:
        found = " ".join(name for name in _SIMD_FEATURES if features.get(name)) or "none"
    from .cpu import simd

    target = numba.config.CPU_NAME
    compiles = f"; numba compiles for {target} (NUMBA_CPU_NAME)" if target else ""
    return (f"CPU features: {found} (LLVM: {host}){compiles}; kernels on "
            f"{simd.WIDTH_BITS}-bit vectors")


def _threads() -> list[str]:
    """Numba's thread pool as fastconv's kernels get it: its threads and threading layer,
    or why no layer loads (NUMBA_THREADING_LAYER naming one that cannot, say)."""
    import numba

    from . import cpu  # noqa: F401 - makes TBB loadable (cpu.threads), as for a kernel

    requested = numba.config.THREADING_LAYER
    try:
        threads = numba.get_num_threads()  # starts the pool, choosing the layer
        layer = numba.threading_layer()
    except ValueError as error:  # numba's word for "no layer could be loaded"
        return [f"numba threads: none; threading layer: none could be loaded "
                f"(requested: {requested}): {_one_line(error, kind=False)}"]
    from . import config
    from .cpu import threads as cpu_threads

    if not config.PARALLEL:
        runs = "1 part, on the calling thread (FASTCONV_PARALLEL=0)"
    elif cpu_threads.on_numba_pool():
        runs = (f"{threads} threads, on Numba's pool ({layer}; FASTCONV_NUMBA_POOL=0: on "
                f"fastconv's worker threads)")
    else:
        runs = f"{threads} parts, on fastconv's worker threads (FASTCONV_NUMBA_POOL=0)"
    return [f"numba threads: {threads}; threading layer: {layer} (requested: {requested})",
            f"threaded kernels: {runs}"]


#: numba.misc.numba_sysinfo.get_sysinfo()'s keys for each threading layer (the report of
#: ``python -m numba -s``): loadable, why not, and a detail.
_SYSINFO_LAYERS = (
    ("tbb", "TBB Threading", "TBB Threading Error", None),
    ("omp", "OpenMP Threading", "OpenMP Threading Error", "OpenMP vendor"),
    ("workqueue", "Workqueue Threading", "Workqueue Threading Error", None),
)


def _threading_layers() -> list[str]:
    """Which of Numba's threading layers load in this process, as ``python -m numba -s``
    reports them (after fastconv made TBB loadable)."""
    from numba.misc import numba_sysinfo

    from . import cpu  # noqa: F401 - makes TBB loadable, as for a kernel

    with warnings.catch_warnings():  # its probes use deprecated numpy and locale names
        warnings.simplefilter("ignore")
        info = numba_sysinfo.get_sysinfo()
    found = []
    for name, loads, error, detail in _SYSINFO_LAYERS:
        if loads not in info:
            found.append(f"{name} unknown")
        elif info[loads] and not info.get(error):
            found.append(f"{name} loads" + (f" ({info[detail]})" if info.get(detail) else ""))
        else:
            found.append(f"{name} cannot be loaded ({info.get(error) or 'no reason given'})")
    return ["threading layers (numba -s): " + ", ".join(found)]


def _numba_cache() -> list[str]:
    from . import bench

    return [f"numba cache: {bench._numba_cache()}"]


def _blas() -> list[str]:
    from .cpu import blas

    return [f"BLAS: {blas.SOURCE}"]


def _settings() -> list[str]:
    from . import config

    settings = {name: getattr(config, name) for name in dir(config)
                if name.isupper() and not name.startswith("_")}
    return ["config: " + ", ".join(
        f"{name}={sorted(value) if isinstance(value, frozenset) else value}"
        for name, value in settings.items()
    )]


def _algorithms() -> list[str]:
    import fastconv

    return ["conv2d algorithms: " + ", ".join(fastconv.available_algorithms("conv2d"))]


def _tuning() -> list[str]:
    from . import plans, tune

    state = "on" if tune.autotune_enabled() else "off (FASTCONV_AUTOTUNE=1 turns it on)"
    return [f"autotuning: {state}; tuning file: {tune.cache_path()} "
            f"({tune.entry_count()} entries)",
            f"plan cache: up to {plans.max_plans()} plans (FASTCONV_PLAN_CACHE_SIZE)"]


def _cuda_reason() -> str:
    """Why numba.cuda found no GPU, in the CUDA driver's first words where it says."""
    try:
        from numba.cuda.cudadrv.driver import driver

        reason = driver.initialization_error
    except Exception:  # noqa: BLE001 - an internal detail; the plain answer will do
        reason = None
    lines = [line.strip() for line in str(reason or "").splitlines() if line.strip()]
    return lines[0] if lines else "no GPU or CUDA driver found"


def _cuda_lines() -> list[str]:
    """Whether the CUDA backend can run, and on what (fastconv.cuda.devices())."""
    from . import cuda

    version = _version("numba-cuda")
    if version is None:
        return ["CUDA: not available: numba-cuda is not installed "
                "(pip install 'fastconv[cuda]')"]
    if not cuda.is_available():
        return [f"CUDA: not available: numba-cuda {version}: {_cuda_reason()}"]
    try:
        devices = cuda.devices()
    except Exception as error:  # noqa: BLE001 - a broken driver: say so and go on
        devices = [f"cannot list the GPUs: {error}"]
    if cuda.simulated():
        return [f"CUDA: simulated (NUMBA_ENABLE_CUDASIM=1, numba-cuda {version}): "
                + "; ".join(devices)]
    return [f"CUDA: available, numba-cuda {version}, {len(devices)} GPU(s)",
            *(f"  {device}" for device in devices)]


#: The parts of ``info``, in order: the label of a part's ``unavailable`` line, and the
#: function that finds out its lines.
INFO_PARTS: tuple[tuple[str, Callable[[], list[str]]], ...] = (
    ("versions", _versions),
    ("CPU", _cpu),
    ("CPU features", lambda: [_cpu_features()]),
    ("numba threads", _threads),
    ("threading layers", _threading_layers),
    ("numba cache", _numba_cache),
    ("BLAS", _blas),
    ("config", _settings),
    ("conv2d algorithms", _algorithms),
    ("autotuning", _tuning),
    ("CUDA", _cuda_lines),
)


def _info(args: argparse.Namespace) -> int:
    for label, lines in INFO_PARTS:
        print("\n".join(_part(label, lines)), flush=True)
    return 0


# --- tune ------------------------------------------------------------------------------


def _tune(args: argparse.Namespace) -> int:
    from . import bench, tune

    try:
        if args.shape:
            shapes = [tune.parse_shape(text) for text in args.shape]
        else:
            shapes = [(layer.batch, layer.channels, layer.height, layer.width, layer.filters,
                       layer.kernel, layer.stride, layer.padding, layer.groups)
                      for layer in bench.select_layers(args.layers)]
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.batches is not None:
        try:
            batches = [int(part) for part in args.batches.split(",")]
        except ValueError:
            batches = []
        if not batches or min(batches) < 1:
            raise UsageError(f"--batches must be ints >= 1, got {args.batches!r}")
        shapes = [(b, *shape[1:]) for shape in shapes for b in batches]
    print(f"tuning file: {tune.cache_path()}", flush=True)
    for row in tune.tune_layers(shapes, args.dtype, backward=not args.forward_only):
        print(f"{row['layer']:<40} {row['op']:<19} {row['algorithm']:<9} {row['source']:<8} "
              f"{row['reason']}", flush=True)
    return 0


# --- demo ------------------------------------------------------------------------------

#: What :func:`fastconv.demo.run` needs beyond fastconv (tqdm, for its progress bar, is
#: optional); the ``demo`` extra installs them.
_DEMO_PACKAGES = ("sklearn", "matplotlib")
_DEMO_NEEDS = "fastconv demo needs scikit-learn and matplotlib: pip install 'fastconv[demo]'"


def _demo(args: argparse.Namespace) -> int:
    import numba

    if args.threads > numba.config.NUMBA_NUM_THREADS:
        raise UsageError(f"argument --threads: at most {numba.config.NUMBA_NUM_THREADS} "
                         f"(NUMBA_NUM_THREADS), got {args.threads}")
    # checked first: the demo would find matplotlib missing only after training
    if any(importlib.util.find_spec(name) is None for name in _DEMO_PACKAGES):
        raise Failure(_DEMO_NEEDS)
    from . import demo

    epochs = (args.epochs if args.epochs is not None
              else demo.QUICK_EPOCHS if args.quick else demo.EPOCHS)
    try:
        demo.run(epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                 seed=args.seed, out_dir=args.out, algorithm=args.algorithm,
                 threads=args.threads, progress=not args.no_progress)
    except (ImportError, OSError) as error:
        raise Failure(f"fastconv demo: error: {error}") from None
    return 0


# --- main -------------------------------------------------------------------------------


def _config_problems() -> list[str]:
    """What is wrong with the ``FASTCONV_*`` variables, a line each, in
    :mod:`fastconv.config`'s words: the variable, its value and what it accepts."""
    try:
        from . import config  # reads every FASTCONV_* variable
    except ValueError as error:  # a module that reads its own variable on import
        return [_one_line(error, kind=False)]
    return config.problems()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    problems = _config_problems()
    for problem in problems:
        print(f"fastconv: {problem}", file=sys.stderr, flush=True)
    try:
        top = parser()
        # --help and --version exit here, with status 0
        args, unknown = top.parse_known_args(argv)
        if unknown:  # said by the subcommand's parser, with its usage
            args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        if problems:
            return 2
        try:
            return args.handler(args)
        except UsageError as error:
            args.command_parser.error(str(error))  # raises SystemExit(2)
            return 2
    except Failure as error:
        print(error, file=sys.stderr)
        return 1
    except SystemExit as done:  # argparse: --help, --version and usage errors
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(done.code, file=sys.stderr)  # sys.exit("message"), as Python would
        return 1
    except KeyboardInterrupt:
        print("fastconv: interrupted", file=sys.stderr)
        return 130
