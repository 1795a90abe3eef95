"""Per-call cost: the small calls of a trainer, fastconv against PyTorch.

Two groups of calls on float32 NCHW arrays:

- ``tiny``: the six calls of issue 10 on a (1, 4, 8, 8) input with 4 filters of
  3x3, where the Python around the kernel decides the time;
- ``trainer``: LeNet- and CIFAR-sized layers (conv2d forward, and conv2d_backward
  with all three gradients) at batches 1, 4 and 32.

Run as a script, it times fastconv in this process and PyTorch in a subprocess
of its own (so neither library's idle thread pool competes with the other's
work), on the same number of threads, and prints a markdown table of the
medians and ratios (torch time / fastconv time: above 1 is fastconv faster)::

    python benchmarks/percall.py [--threads N] [--repeat 7]

``bench_percall.py`` times the same calls with pytest-benchmark
(``pytest benchmarks/ --benchmark-only -k percall``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import timeit
from collections.abc import Callable

import numpy as np

#: (group, name, op, input shape, filters, kernel, padding): op is "conv2d",
#: "conv2d_backward", "conv_transpose2d", "max_pool2d", "avg_pool2d" or
#: "max_pool2d_backward" (pools: kernel 2, stride 2).
CALLS: list[tuple[str, str, str, tuple[int, int, int, int], int, int, int]] = [
    ("tiny", "conv2d", "conv2d", (1, 4, 8, 8), 4, 3, 0),
    ("tiny", "conv2d_backward", "conv2d_backward", (1, 4, 8, 8), 4, 3, 0),
    ("tiny", "conv_transpose2d", "conv_transpose2d", (1, 4, 8, 8), 4, 3, 0),
    ("tiny", "max_pool2d", "max_pool2d", (1, 4, 8, 8), 0, 2, 0),
    ("tiny", "avg_pool2d", "avg_pool2d", (1, 4, 8, 8), 0, 2, 0),
    ("tiny", "max_pool2d_backward", "max_pool2d_backward", (1, 4, 8, 8), 0, 2, 0),
]
for _batch in (1, 4, 32):
    for _label, _shape, _filters, _kernel, _pad in (
        ("lenet1 C1->6 28x28 5x5", (1, 28, 28), 6, 5, 0),
        ("lenet2 C6->16 12x12 5x5", (6, 12, 12), 16, 5, 0),
        ("cifar1 C3->16 32x32 3x3", (3, 32, 32), 16, 3, 1),
        ("cifar2 C16->32 16x16 3x3", (16, 16, 16), 32, 3, 1),
        ("cifar3 C32->64 8x8 3x3", (32, 8, 8), 64, 3, 1),
    ):
        for _op in ("conv2d", "conv2d_backward"):
            CALLS.append(("trainer", f"{_op} {_label} N{_batch}", _op, (_batch, *_shape),
                          _filters, _kernel, _pad))


def arrays(op: str, shape: tuple[int, ...], filters: int, kernel: int, padding: int) -> dict:
    """The call's numpy arrays, from a fixed seed."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    n, c, h, w = shape
    if op.startswith("conv"):
        weight = rng.standard_normal((filters, c, kernel, kernel), dtype=np.float32)
        out = (h + 2 * padding - kernel + 1, w + 2 * padding - kernel + 1)
        grad = rng.standard_normal((n, filters, *out), dtype=np.float32)
        return {"x": x, "weight": weight, "grad": grad}
    pooled = rng.standard_normal((n, c, h // kernel, w // kernel), dtype=np.float32)
    return {"x": x, "grad": pooled}


def fastconv_call(op: str, a: dict, kernel: int, padding: int) -> Callable[[], object]:
    import fastconv

    x, grad = a["x"], a["grad"]
    if op == "conv2d":
        weight = a["weight"]
        return lambda: fastconv.conv2d(x, weight, padding=padding)
    if op == "conv2d_backward":
        weight = a["weight"]
        return lambda: fastconv.conv2d_backward(grad, x, weight, padding=padding)
    if op == "conv_transpose2d":
        weight = np.ascontiguousarray(a["weight"].transpose(1, 0, 2, 3))
        return lambda: fastconv.conv_transpose2d(x, weight, padding=padding)
    if op == "max_pool2d":
        return lambda: fastconv.max_pool2d(x, kernel)
    if op == "avg_pool2d":
        return lambda: fastconv.avg_pool2d(x, kernel)
    _, where = fastconv.max_pool2d(x, kernel, return_indices=True)
    return lambda: fastconv.max_pool2d_backward(grad, where, x.shape)


def torch_call(op: str, a: dict, kernel: int, padding: int) -> Callable[[], object]:
    import torch
    import torch.nn.functional as F  # noqa: N812

    x, grad = torch.from_numpy(a["x"]), torch.from_numpy(a["grad"])
    if op == "conv2d":
        weight = torch.from_numpy(a["weight"])
        return lambda: F.conv2d(x, weight, padding=padding)
    if op == "conv2d_backward":
        weight = torch.from_numpy(a["weight"])
        backward = torch.ops.aten.convolution_backward
        bias_sizes = [weight.shape[0]]
        return lambda: backward(grad, x, weight, bias_sizes, [1, 1], [padding, padding], [1, 1],
                                False, [0, 0], 1, [True, True, True])
    if op == "conv_transpose2d":
        weight = torch.from_numpy(np.ascontiguousarray(a["weight"].transpose(1, 0, 2, 3)))
        return lambda: F.conv_transpose2d(x, weight, padding=padding)
    if op == "max_pool2d":
        return lambda: F.max_pool2d(x, kernel)
    if op == "avg_pool2d":
        return lambda: F.avg_pool2d(x, kernel)
    _, where = F.max_pool2d(x, kernel, return_indices=True)
    backward = torch.ops.aten.max_pool2d_with_indices_backward
    return lambda: backward(grad, x, [kernel, kernel], [kernel, kernel], [0, 0], [1, 1], False,
                            where)


def median_us(fn: Callable[[], object], repeat: int) -> float:
    """The median over ``repeat`` rounds of the mean time per call in microseconds, each
    round about 20 ms; after untimed calls that compile or load the kernels."""
    for _ in range(5):
        fn()
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, number // 10)  # autorange aims at 0.2 s; rounds of ~20 ms
    rounds = sorted(t / number for t in timer.repeat(repeat, number))
    return rounds[len(rounds) // 2] * 1e6


def time_all(library: str, repeat: int) -> dict[str, float]:
    make = fastconv_call if library == "fastconv" else torch_call
    return {name: median_us(make(op, arrays(op, shape, k, r, p), r, p), repeat)
            for _, name, op, shape, k, r, p in CALLS}


def _torch_in_subprocess(threads: int, repeat: int) -> dict[str, float]:
    code = (f"import json, sys, torch; torch.set_num_threads({threads}); "
            f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import percall; print(json.dumps(percall.time_all('torch', {repeat})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout.splitlines()[-1])


def _profile_counts(fn: Callable[[], object]) -> tuple[int, int]:
    """Python-level and C-level calls one ``fn()`` makes (``sys.setprofile`` events)."""
    counts = {"call": 0, "c_call": 0}

    def profile(frame, event, arg):
        if event in counts:
            counts[event] += 1

    fn()
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return counts["call"] - 1, counts["c_call"]  # less the profiled lambda itself


def breakdown(repeat: int) -> list[tuple[str, str, float, int, int]]:
    """Where a tiny call's microseconds go: the whole call; the cached plan run on its
    own (no key, no lookup); the registered kernel's host side on preallocated arrays;
    and the floor of a Numba call with as many arguments (an empty jitted function).
    ``(call, stage, microseconds, Python calls, C calls)``."""
    import numba

    import fastconv
    from fastconv import dispatch, plans
    from fastconv.functional._planned import kernel_arrays, runner

    rows = []
    a = arrays("conv2d", (1, 4, 8, 8), 4, 3, 0)
    x, weight = a["x"], a["weight"]
    out = np.empty((1, 4, 6, 6), np.float32)
    pooled = np.empty((1, 4, 4, 4), np.float32)
    fastconv.conv2d(x, weight)
    fastconv.max_pool2d(x, 2)
    conv_plan = plans.get(plans.key("conv2d", (x, weight, None), (), (1, 0, 1, 1, None),
                                    "auto"))
    pool_plan = plans.get(plans.key("max_pool2d", (x,), (), (2, None, 0, 1, False, False),
                                    "auto"))
    conv_host = dispatch._KERNELS["conv2d", "cpu", "direct"]
    pool_host = dispatch._KERNELS["max_pool2d", "cpu", "direct"]
    conv_params = ((1, 1), ((0, 0), (0, 0)), (1, 1), 1)
    pool_params = ((2, 2), (2, 2), (0, 0), (1, 1), False)
    # what a plan runs: the host side prepared once for these shapes
    conv_run = runner(conv_host, kernel_arrays(x.dtype, x.shape, weight.shape, None, out.shape),
                      conv_params)
    pool_run = runner(pool_host, kernel_arrays(x.dtype, x.shape, pooled.shape, None),
                      pool_params)
    empty16 = numba.njit(lambda *args: None)
    empty8 = numba.njit(lambda *args: None)
    conv_args = (x, weight, None, out, 1, 1, 0, 0, 8, 1, 1, 1, 4, 6, pooled, 0)
    pool_args = (x, pooled, 2, 2, 2, 2, 0, 0)
    stages = [
        ("conv2d", "fastconv.conv2d(x, w)", lambda: fastconv.conv2d(x, weight)),
        ("conv2d", "its cached plan", lambda: conv_plan(x, weight, None)),
        ("conv2d", "its prepared kernel (direct)", lambda: conv_run(x, weight, None, out)),
        ("conv2d", "kernel host side unprepared", lambda: conv_host(x, weight, None, out,
                                                                     *conv_params)),
        ("conv2d", "an empty Numba call, 16 args", lambda: empty16(*conv_args)),
        ("max_pool2d", "fastconv.max_pool2d(x, 2)", lambda: fastconv.max_pool2d(x, 2)),
        ("max_pool2d", "its cached plan", lambda: pool_plan(x)),
        ("max_pool2d", "its prepared kernel (direct)", lambda: pool_run(x, pooled, None)),
        ("max_pool2d", "kernel host side unprepared",
         lambda: pool_host(x, pooled, None, *pool_params)),
        ("max_pool2d", "an empty Numba call, 8 args", lambda: empty8(*pool_args)),
    ]
    for call, stage, fn in stages:
        python_calls, c_calls = _profile_counts(fn)
        rows.append((call, stage, median_us(fn, repeat), python_calls, c_calls))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of both libraries (default: Numba's count)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--breakdown", action="store_true",
                        help="also where a tiny call's microseconds go")
    args = parser.parse_args(argv)
    import numba

    import fastconv.cpu  # noqa: F401  (TBB before Numba's pool starts)

    threads = args.threads or numba.get_num_threads()
    numba.set_num_threads(threads)
    ours = time_all("fastconv", args.repeat)
    theirs = _torch_in_subprocess(threads, args.repeat)
    print(f"threads: {threads}; times are medians per call in microseconds; "
          f"ratio = torch / fastconv\n")
    print("| group | call | fastconv (us) | torch (us) | ratio |")
    print("|---|---|---:|---:|---:|")
    ratios: dict[str, list[float]] = {}
    for group, name, *_ in CALLS:
        ratio = theirs[name] / ours[name]
        ratios.setdefault(group, []).append(ratio)
        print(f"| {group} | {name} | {ours[name]:.1f} | {theirs[name]:.1f} | {ratio:.2f} |")
    for group, values in ratios.items():
        mean = math.exp(sum(map(math.log, values)) / len(values))
        print(f"\n{group}: geometric mean {mean:.2f}x, lowest {min(values):.2f}x "
              f"over {len(values)} calls")
    if args.breakdown:
        print("\n| call | stage | us | Python calls | C calls |")
        print("|---|---|---:|---:|---:|")
        for call, stage, us, python_calls, c_calls in breakdown(args.repeat):
            print(f"| {call} | {stage} | {us:.2f} | {python_calls} | {c_calls} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
