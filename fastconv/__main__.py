"""Command line: ``python -m fastconv {bench,info,demo}``, also installed as ``fastconv``.

Usage errors (bad arguments, an option whose package is missing, a folder that
does not exist) print one line to stderr and exit with status 2; failures while
running (a file that cannot be written, the demo's packages missing) print one
line and exit with status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import __version__, bench, config


class _UsageError(Exception):
    """A bad command line; its message is the whole line printed."""


class _Failure(Exception):
    """A command that could not do its work; its message is the whole line printed."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse would print the usage block and exit; one line is enough.
        raise _UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _parser() -> _Parser:
    parser = _Parser(
        prog="fastconv",
        description="fastconv: fast convolution and pooling for numpy arrays, written with Numba.",
    )
    parser.add_argument("--version", action="version", version=f"fastconv {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "bench",
        help="time conv2d (and the other ops) against the reference and torch",
        description=(
            "Time conv2d forward (float32, NCHW) on the standard layer suite: the slow reference, "
            "each fastconv algorithm, auto, and torch.nn.functional.conv2d. Prints a table of "
            "milliseconds and GFLOP/s with torch/auto ratios. Takes about a minute; compilation "
            "is kept out of the timings (see --compile). --suite ops times the other ops the "
            "same way: conv2d's gradients on layers c, d and g, conv_transpose2d, pooling and "
            "unpooling (GFLOP/s or GB/s), with a line per speed bar."
        ),
    )
    run.add_argument(
        "--suite", choices=("conv2d", "ops", "all"), default="conv2d",
        help="conv2d: the layer suite (default); ops: the op suite; all: both",
    )
    layers = ", ".join(f"{layer.id} ({layer.description})" for layer in bench.LAYERS)
    run.add_argument(
        "--layers", metavar="IDS",
        help=f"conv2d suite: comma-separated layer ids, default all: {layers}",
    )
    ops = ", ".join(dict.fromkeys(case.op for case in bench.OP_CASES))
    run.add_argument(
        "--cases", metavar="NAMES",
        help=f"op suite: comma-separated ops (all their cases) or cases op|name such as "
        f"'max_pool2d|3x3s2p1', default all; the ops: {ops}",
    )
    run.add_argument(
        "--algorithms", metavar="NAMES",
        help="comma-separated implementations: reference, a fastconv algorithm (direct, "
        "im2col, ...), auto, torch; default all, torch where installed",
    )
    run.add_argument("--quick", action="store_true", help="a smoke test: 1-2 timed calls per cell")
    run.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu",
        help="cpu: the suites above (default); cuda: every op of the CUDA backend checked "
        "against PyTorch on the GPU and timed against PyTorch/cuDNN at batch 64, one table "
        "(--cases selects ops or op:case such as conv2d:c; --json writes the rows)",
    )
    run.add_argument(
        "--repeat", metavar="N", type=_positive_int,
        help=f"timed calls per cell (default: as many as fit in {bench.BUDGET_S:g} s, "
        f"{bench.MIN_CALLS} to {bench.MAX_CALLS})",
    )
    run.add_argument(
        "--json", metavar="FILE", type=Path, help="also write machine info and rows as JSON"
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
        "threads, the JIT cache, the BLAS, the CUDA backend and its GPUs, fastconv's "
        "configuration and the available algorithms.",
    )
    info.set_defaults(handler=_info)

    # The demo parses its own arguments (fastconv.demo.main), --help included: main()
    # passes it what this parser does not know.
    demo = commands.add_parser(
        "demo", add_help=False,
        help="train a small CNN on scikit-learn's digits with fastconv.nn "
        "(see fastconv demo --help)",
    )
    demo.set_defaults(handler=_demo)
    return parser


def _check_output(option: str, path: Path | None) -> None:
    if path is not None and not path.parent.is_dir():
        raise _UsageError(f"fastconv bench: error: {option}: no directory {str(path.parent)!r}")


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


def _cells(
    layers: Sequence[bench.Layer] | None,
    conv_names: Sequence[str] | None,
    cases: Sequence[bench.OpCase] | None,
    implementations: Sequence[str] | None,
) -> int:
    """The cells that bench.run (on ``layers``) and bench.run_ops (on ``cases``) time."""
    total = 0
    if layers is not None:
        names = bench.implementation_names() if conv_names is None else conv_names
        total += sum(len(impls) for layer in layers for *_, impls in bench.batches(layer, names))
    for case in cases or ():
        if case.available():
            names = [name for name in case.implementation_names()
                     if implementations is None or name in implementations]
            total += sum(len(impls) for *_, impls in bench.batches(case, names))
    return total


def _bench_cuda(args: argparse.Namespace) -> int:
    """``bench --device cuda``: :mod:`fastconv.cuda.bench`'s table."""
    import fastconv.cuda

    if not fastconv.cuda.is_available():
        raise _Failure("fastconv bench: error: --device cuda: no GPU (fastconv.cuda."
                       "is_available() is False; see python -m fastconv info)")
    if importlib.util.find_spec("torch") is None:
        raise _UsageError("fastconv bench: error: --device cuda compares with PyTorch on the "
                          "GPU: install torch with CUDA")
    from fastconv.cuda import bench as gpu_bench

    _check_output("--json", args.json)
    tiny = fastconv.cuda.simulated()
    try:
        rows = gpu_bench.run(args.cases, tiny=tiny, repeat=1 if args.quick or tiny else args.repeat,
                             progress=lambda text: print(f"timing {text}", file=sys.stderr,
                                                         flush=True))
    except ValueError as error:
        raise _UsageError(f"fastconv bench: error: {error}") from None
    device = "; ".join(fastconv.cuda.devices())
    print(gpu_bench.format_table(rows, device))
    if args.json is not None:
        import json

        document = {"device": device, "rows": [dataclasses.asdict(row) for row in rows]}
        with _writing(args.json):
            args.json.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.device == "cuda":
        return _bench_cuda(args)
    try:
        layers = bench.select_layers(args.layers)
        cases = bench.select_op_cases(args.cases)
        implementations = (
            None if args.algorithms is None else bench.select_implementations(args.algorithms)
        )
    except ValueError as error:
        raise _UsageError(f"fastconv bench: error: {error}") from None
    _check_output("--json", args.json)
    _check_output("--plot", args.plot)
    if args.plot is not None:
        if args.plot.suffix.lower() != ".png":
            raise _UsageError(f"fastconv bench: error: --plot: expected a file name ending in "
                              f".png, got {str(args.plot)!r}")
        if importlib.util.find_spec("matplotlib") is None:
            raise _UsageError("fastconv bench: error: --plot needs matplotlib: "
                              "pip install matplotlib")

    conv_suite, op_suite = args.suite in ("conv2d", "all"), args.suite in ("ops", "all")
    conv_names = implementations
    if conv_names is not None:
        known = bench.implementation_names(include_torch=True)
        conv_names = [name for name in conv_names if name in known]
    if op_suite:
        missing = sorted({case.spec.function for case in cases if not case.available()})
        if missing:
            print(f"fastconv bench: not timing {', '.join(missing)}: not in this fastconv yet",
                  file=sys.stderr)
    rows: list[bench.Row] = []
    op_rows: list[bench.OpRow] | None = None
    total = _cells(layers if conv_suite else None, conv_names, cases if op_suite else None,
                   implementations)
    with _progress(total) as progress:
        if conv_suite:
            rows = bench.run(
                layers, conv_names, quick=args.quick, repeat=args.repeat, progress=progress
            )
        if op_suite:
            op_rows = bench.run_ops(
                cases, implementations, quick=args.quick, repeat=args.repeat, progress=progress
            )
    machine = bench.machine_info()
    if conv_suite:
        print(bench.format_table(rows, machine))
    if op_rows is not None:
        if args.suite == "all":
            print()
        print(bench.format_op_table(op_rows, machine))
    extra: dict[str, object] = {
        "settings": {"suite": args.suite, "quick": args.quick, "repeat": args.repeat}
    }
    if args.compile:
        print("timing compilation, empty cache", file=sys.stderr, flush=True)
        cold = bench.cold_compile_time()
        print("timing compilation, warm cache", file=sys.stderr, flush=True)
        warm = bench.warm_compile_time()
        print(
            f"compile: fastconv.warmup() ({len(warm.kernels)} algorithm/dtype pairs) in a fresh "
            f"process: {cold.warmup_s:.2f} s with an empty cache, {warm.warmup_s:.3f} s with a "
            f"warm one; importing numba and the backend before it: {warm.import_s:.2f} s"
        )
        extra["compile"] = {"cold": dataclasses.asdict(cold), "warm": dataclasses.asdict(warm)}
    if args.json is not None:
        document = bench.rows_to_json(rows, machine, op_rows=op_rows, **extra)
        with _writing(args.json):
            args.json.write_text(document + "\n", encoding="utf-8")
    if args.plot is not None:
        with _writing(args.plot):
            bench.plot_rows(rows, args.plot, machine, op_rows=op_rows)
    return 0


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn an OSError while writing ``path`` into one line."""
    try:
        yield
    except OSError as error:
        raise _Failure(
            f"fastconv bench: error: cannot write {path}: {error.strerror or error}"
        ) from None


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
    target = numba.config.CPU_NAME
    compiles = f"; numba compiles for {target} (NUMBA_CPU_NAME)" if target else ""
    return f"CPU features: {found} (LLVM: {host}){compiles}"


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

    version = bench._version("numba-cuda")
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


def _info(args: argparse.Namespace) -> int:
    import numpy as np

    import fastconv

    # Numba names its threading layer only once a parallel kernel has run.
    probe = np.zeros((1, 1, 1, 1), np.float32)
    fastconv.conv2d(probe, probe, algorithm="direct")
    machine = bench.machine_info()
    settings = {name: getattr(config, name) for name in dir(config) if name.isupper()}
    lines = [
        f"fastconv {machine['fastconv']} (python {machine['python']}, {sys.executable})",
        (
            f"numpy {machine['numpy']}, numba {machine['numba']} "
            f"(llvmlite {machine['llvmlite']}), torch {machine['torch'] or 'not installed'}"
        ),
        f"CPU: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable)",
        _cpu_features(),
        (
            f"numba threads: {machine['numba_threads']}; threading layer: "
            f"{machine['threading_layer']} (requested: {machine['threading_layer_requested']})"
        ),
        f"numba cache: {machine['numba_cache']}",
        f"BLAS: {machine['blas']}",
        "config: " + ", ".join(
            f"{name}={sorted(value) if isinstance(value, frozenset) else value}"
            for name, value in settings.items()
        ),
        "conv2d algorithms: " + ", ".join(fastconv.available_algorithms("conv2d")),
        *_cuda_lines(),
    ]
    print("\n".join(lines))
    return 0


#: What ``fastconv.demo`` imports beyond fastconv: the ``demo`` extra.
_DEMO_PACKAGES = ("sklearn", "tqdm", "matplotlib")
_DEMO_NEEDS = ("fastconv demo needs scikit-learn, tqdm and matplotlib: "
               "pip install 'fastconv[demo]'")


def _demo(args: argparse.Namespace) -> int:
    argv = args.demo_argv
    asks_help = any(arg in ("-h", "--help") for arg in argv)
    # checked first: the demo would find matplotlib missing only after training
    if not asks_help and any(importlib.util.find_spec(name) is None for name in _DEMO_PACKAGES):
        raise _Failure(_DEMO_NEEDS)
    try:
        from . import demo
    except ModuleNotFoundError as error:
        if error.name not in _DEMO_PACKAGES:
            raise
        raise _Failure(_DEMO_NEEDS) from None
    return demo.main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if args.command == "demo":
            args.demo_argv = rest
        elif rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args.handler(args)
    except _UsageError as error:
        print(error, file=sys.stderr)
        return 2
    except _Failure as error:
        print(error, file=sys.stderr)
        return 1
    except SystemExit as done:  # --help and --version
        return done.code if isinstance(done.code, int) else 0
    except KeyboardInterrupt:
        print("fastconv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
