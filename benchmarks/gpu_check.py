"""The real-GPU check of the CUDA backend: one script, under four minutes on one H100.

    python benchmarks/gpu_check.py [--skip-tests] [--cases NAMES] [--json FILE]

1. runs the GPU tests (tests/test_cuda_api.py, tests/test_cuda_kernels.py) on the
   GPU, PyTorch CUDA comparisons included;
2. checks every op and GPU algorithm against PyTorch on the GPU (float32, TF32
   off) and times fastconv against PyTorch/cuDNN on the layer suite at batch 64,
   conv2d's gradients, conv_transpose2d, pooling and unpooling, printing one
   table of ratios with the speed bars (:mod:`fastconv.cuda.bench`).

It needs only what the GPU machine has: PyTorch with CUDA, numba and numba-cuda.
``--tiny`` runs the same code on tiny shapes under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``), which is how the test suite keeps it working on
machines without a GPU. The exit status is 1 if a test failed or a result was
wrong, 0 otherwise (a missed speed bar is reported, not an error).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-tests", action="store_true", help="only check and time")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes, one timed call (for the CUDA simulator)")
    parser.add_argument("--cases", metavar="NAMES",
                        help="comma-separated ops or op:case (e.g. conv2d:c); default all")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import fastconv.cuda
    from fastconv.cuda import bench as gpu_bench

    start = time.perf_counter()
    if not fastconv.cuda.is_available():
        print("gpu_check: no GPU (fastconv.cuda.is_available() is False)", file=sys.stderr)
        return 1
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
    rows = gpu_bench.run(args.cases, tiny=args.tiny, repeat=1 if args.tiny else None,
                         progress=lambda text: print(f"  {text}", file=sys.stderr, flush=True))
    print(gpu_bench.format_table(rows, device))
    if any(not row.note and not row.ok for row in rows):
        status = 1
    if args.json is not None:
        args.json.write_text(json.dumps({"device": device, "rows": [asdict(r) for r in rows]},
                                        indent=1) + "\n", encoding="utf-8")
    print(f"gpu_check: {time.perf_counter() - start:.0f} s in all", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
