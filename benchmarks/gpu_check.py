"""The real-GPU check of the CUDA backend: one script, under four minutes on one H100.

    python benchmarks/gpu_check.py [--skip-tests] [--cases NAMES] [--json FILE]

1. runs the GPU tests (tests/test_cuda_api.py, tests/test_cuda_kernels.py) on the
   GPU, PyTorch CUDA comparisons included;
2. checks every op and GPU algorithm against PyTorch on the GPU (float32, TF32
   off) and times fastconv against PyTorch/cuDNN on the case table of
   :mod:`fastconv.bench` at batch 64 (the conv2d layer suite, conv2d's gradients,
   conv_transpose2d, pooling and unpooling), with the timing rule of the CPU suites
   (:func:`fastconv.bench.run_gpu`), and prints the table of
   ``python -m fastconv bench --device cuda``;
3. then this project's own speed targets on the GPU (:data:`TARGETS`), marked as
   targets: they are the project's acceptance bars, not results.

It needs only what the GPU machine has: PyTorch with CUDA, numba and numba-cuda.
``--tiny`` runs the same code on tiny shapes under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``), which is how the test suite keeps it working on
machines without a GPU. The exit status is 1 if a test failed or a result was
wrong, 2 for an unknown case, 0 otherwise (a missed target is reported, not an error).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The project's GPU speed targets: (name, which auto rows count, least torch ms / auto ms
#: over them).
TARGETS = (
    ("pooling", lambda row: row.op in ("max_pool2d", "avg_pool2d", "max_pool2d_backward",
                                       "avg_pool2d_backward"), 1.0),
    ("depthwise conv2d forward", lambda row: row.op == "conv2d" and row.case == "h", 1.0),
    ("dense conv2d forward (c-f)", lambda row: row.op == "conv2d" and row.case in tuple("cdef"),
     0.3),
)


def targets(rows) -> list[str]:
    """A line per target with timed cases: the least torch/auto over them, met or not."""
    lines = []
    for name, counts, need in TARGETS:
        ratios = {row.id: row.vs_torch for row in rows
                  if row.impl == "auto" and row.vs_torch is not None and counts(row)}
        if ratios:
            worst = min(ratios, key=ratios.__getitem__)
            lines.append(f"project target (not a result), {name}: auto >= {need:g}x torch on "
                         f"every case: least {ratios[worst]:.2f}x ({worst}): "
                         + ("met" if ratios[worst] >= need else "not met"))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-tests", action="store_true", help="only check and time")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes, one timed call (for the CUDA simulator)")
    parser.add_argument("--cases", metavar="NAMES",
                        help="comma-separated ops or op:case (e.g. conv2d:c); default all")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import fastconv.cuda
    from fastconv import bench

    start = time.perf_counter()
    if not fastconv.cuda.is_available():
        print("gpu_check: no GPU (fastconv.cuda.is_available() is False)", file=sys.stderr)
        return 1
    try:
        cases = bench.select_cases(args.cases)
    except ValueError as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2
    device = "; ".join(fastconv.cuda.devices())
    print(f"gpu_check on {device}", flush=True)
    status = 0
    if not args.skip_tests:
        tests = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/test_cuda_api.py",
             "tests/test_cuda_kernels.py", "-q", "-p", "no:cacheprovider",
             "--benchmark-disable"], cwd=ROOT, check=False)
        print(f"GPU tests: exit status {tests.returncode} after "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        status |= int(tests.returncode != 0)
    placed = bench.gpu_cases(cases, tiny=args.tiny)
    rows = bench.run_gpu(placed, batch=None, tiny=False, quick=args.tiny,
                         repeat=1 if args.tiny else None,
                         progress=lambda text: print(f"  {text}", file=sys.stderr, flush=True))
    machine = bench.machine_info("cuda")
    print(bench.format_table(rows, machine, cases=placed))
    print("\n".join(targets(rows)))
    if bench.wrong_rows(rows):
        status = 1
    if args.json is not None:
        args.json.write_text(bench.format_rows(rows, machine, "json") + "\n", encoding="utf-8")
    print(f"gpu_check: {time.perf_counter() - start:.0f} s in all", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
