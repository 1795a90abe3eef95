"""Command line: ``python -m fastconv {bench,info}``, also installed as ``fastconv``.

Usage errors print one line to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__, bench, config


class _UsageError(Exception):
    """A bad command line; its message is the whole line printed."""


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
        "--repeat", metavar="N", type=_positive_int,
        help=f"timed calls per cell (default: as many as fit in {bench.BUDGET_S:g} s, "
        f"{bench.MIN_CALLS} to {bench.MAX_CALLS})",
    )
    run.add_argument(
        "--json", metavar="FILE", type=Path, help="also write machine info and rows as JSON"
    )
    run.add_argument(
        "--compile", action="store_true",
        help="also time the JIT compilation of every kernel in a fresh process, with an empty "
        "and with a warm cache (adds tens of seconds)",
    )
    run.set_defaults(handler=_bench)

    info = commands.add_parser(
        "info",
        help="versions, CPU, threads, cache and algorithms",
        description="Print versions, CPU, Numba's threading layer and threads, the JIT cache, "
        "the BLAS, fastconv's configuration and the available algorithms.",
    )
    info.set_defaults(handler=_info)
    return parser


def _bench(args: argparse.Namespace) -> int:
    try:
        layers = bench.select_layers(args.layers)
        cases = bench.select_op_cases(args.cases)
        implementations = (
            None if args.algorithms is None else bench.select_implementations(args.algorithms)
        )
    except ValueError as error:
        raise _UsageError(f"fastconv bench: error: {error}") from None
    if args.json is not None and not args.json.parent.is_dir():
        folder = str(args.json.parent)
        raise _UsageError(f"fastconv bench: error: --json: no directory {folder!r}")

    def progress(message: str) -> None:
        print(f"timing {message}", file=sys.stderr, flush=True)

    rows: list[bench.Row] = []
    op_rows: list[bench.OpRow] | None = None
    if args.suite in ("conv2d", "all"):
        conv_names = implementations
        if conv_names is not None:
            known = bench.implementation_names(include_torch=True)
            conv_names = [name for name in conv_names if name in known]
        rows = bench.run(
            layers, conv_names, quick=args.quick, repeat=args.repeat, progress=progress
        )
    if args.suite in ("ops", "all"):
        missing = sorted({case.spec.function for case in cases if not case.available()})
        if missing:
            print(f"fastconv bench: not timing {', '.join(missing)}: not in this fastconv yet",
                  file=sys.stderr)
        op_rows = bench.run_ops(
            cases, implementations, quick=args.quick, repeat=args.repeat, progress=progress
        )
    machine = bench.machine_info()
    if args.suite in ("conv2d", "all"):
        print(bench.format_table(rows, machine))
    if op_rows is not None:
        if args.suite == "all":
            print()
        print(bench.format_op_table(op_rows, machine))
    extra: dict[str, object] = {
        "settings": {"suite": args.suite, "quick": args.quick, "repeat": args.repeat}
    }
    if args.compile:
        progress("compilation, empty cache")
        cold = bench.cold_compile_time()
        progress("compilation, warm cache")
        warm = bench.warm_compile_time()
        print(
            f"compile: fastconv.warmup() ({len(warm.kernels)} algorithm/dtype pairs) in a fresh "
            f"process: {cold.warmup_s:.2f} s with an empty cache, {warm.warmup_s:.3f} s with a "
            f"warm one; importing numba and the backend before it: {warm.import_s:.2f} s"
        )
        extra["compile"] = {"cold": dataclasses.asdict(cold), "warm": dataclasses.asdict(warm)}
    if args.json is not None:
        document = bench.rows_to_json(rows, machine, op_rows=op_rows, **extra)
        try:
            args.json.write_text(document + "\n", encoding="utf-8")
        except OSError as error:
            print(f"fastconv bench: error: cannot write {args.json}: {error.strerror}",
                  file=sys.stderr)
            return 1
    return 0


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
    ]
    print("\n".join(lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        return args.handler(args)
    except _UsageError as error:
        print(error, file=sys.stderr)
        return 2
    except SystemExit as done:  # --help and --version
        return done.code if isinstance(done.code, int) else 0
    except KeyboardInterrupt:
        print("fastconv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
