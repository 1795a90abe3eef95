"""Layers outside the suite: conv2d, grad_input and grad_weight+bias against PyTorch.

    python benchmarks/outside.py [--rounds 2] [--layers 8,512,7,7,512,3,1,1 ...]

The suite's nine layers are what the speed bars name; a user's network has others.
This times ``auto`` on a sweep of layers from ResNet-18/50, MobileNetV2, VGG, LeNet
and batch-1 inference (:data:`LAYERS`, or ``--layers`` in the form of ``python -m
fastconv bench --shape``), with the suite's timing rule and allocator, PyTorch in a
process of its own (:class:`fastconv.bench.TorchProcess`), and prints torch's median
over fastconv's per layer and op: the ratio the issues' bars are written in (> 1:
fastconv is faster). ``--rounds`` repeats the whole sweep (this VM's speed drifts
between minutes); each cell then shows the range over the rounds.
"""

from __future__ import annotations

import argparse
import sys

from fastconv import bench

#: ``(name, N,C,H,W,K,R[,stride,pad,groups])`` of the sweep.
LAYERS: tuple[tuple[str, str], ...] = (
    ("ResNet C512 3x3 on 7x7", "8,512,7,7,512,3,1,1"),
    ("ResNet C256 -> 512 3x3 s2 on 14x14", "8,256,14,14,512,3,2,1"),
    ("ResNet C128 -> 256 3x3 s2 on 28x28", "8,128,28,28,256,3,2,1"),
    ("shortcut C64 -> 128 1x1 s2 on 56x56", "8,64,56,56,128,1,2,0"),
    ("shortcut C256 -> 512 1x1 s2 on 14x14", "8,256,14,14,512,1,2,0"),
    ("bottleneck C256 -> 64 1x1 on 56x56", "8,256,56,56,64,1"),
    ("bottleneck C64 -> 256 1x1 on 56x56", "8,64,56,56,256,1"),
    ("C1024 -> 256 1x1 on 14x14", "8,1024,14,14,256,1"),
    ("C512 -> 2048 1x1 on 7x7", "8,512,7,7,2048,1"),
    ("depthwise C144 3x3 on 56x56", "8,144,56,56,144,3,1,1,144"),
    ("depthwise C144 3x3 s2 on 56x56", "8,144,56,56,144,3,2,1,144"),
    ("depthwise C960 3x3 on 7x7", "8,960,7,7,960,3,1,1,960"),
    ("pointwise C24 -> 144 on 56x56", "8,24,56,56,144,1"),
    ("pointwise C160 -> 960 on 7x7", "8,160,7,7,960,1"),
    ("N1 C256 3x3 on 14x14", "1,256,14,14,256,3,1,1"),
    ("N1 C64 3x3 on 56x56", "1,64,56,56,64,3,1,1"),
    ("N1 C512 -> 2048 1x1 on 7x7", "1,512,7,7,2048,1"),
    ("VGG's first, N2 C3 -> 64 3x3 on 224x224", "2,3,224,224,64,3,1,1"),
    ("N32 C32 -> 48 5x5 on 14x14", "32,32,14,14,48,5,1,2"),
    ("N32 C16 -> 32 3x3 on 32x32", "32,16,32,32,32,3,1,1"),
    ("C32 3x3 on 56x56", "8,32,56,56,32,3,1,1"),
    ("C32 -> 64 3x3 on 16x16", "8,32,16,16,64,3,1,1"),
    ("C64 5x5 on 28x28", "8,64,28,28,64,5,1,2"),
    ("grouped C128 3x3 groups 32 on 28x28", "8,128,28,28,128,3,1,1,32"),
    ("C3 -> 32 3x3 s2 on 224x224 (MobileNet's first)", "8,3,224,224,32,3,2,1"),
    ("DCGAN-like C64 -> 128 4x4 s2 on 32x32", "8,64,32,32,128,4,2,1"),
)

OPS = ("conv2d", "grad_input", "grad_weight")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="sweeps (default 1)")
    parser.add_argument("--layers", nargs="+", metavar="SHAPE",
                        help="N,C,H,W,K,R[,stride,pad,groups] instead of the sweep's layers")
    args = parser.parse_args(argv)
    named = [(shape, shape) for shape in args.layers] if args.layers else list(LAYERS)
    layers = [(name, bench.custom_layer(shape)) for name, shape in named]
    cases = [bench.OpCase(op, layer.id, layer=layer) for _, layer in layers for op in OPS]
    bench.configure_allocator()
    ratios: dict[tuple[str, str], list[float]] = {}
    for round_ in range(args.rounds):
        print(f"round {round_ + 1} of {args.rounds}", file=sys.stderr, flush=True)
        for row in bench.run_cases(cases, ["auto", "torch"]):
            if row.impl == "auto" and row.vs_torch is not None:
                ratios.setdefault((row.op, row.case), []).append(row.vs_torch)
    machine = bench.machine_info()
    print(f"{machine['cpu']}, {machine['cores']} cores; numba {machine['numba']} "
          f"({machine['numba_threads']} threads), torch {machine['torch']} (as many threads, "
          "a process of its own); torch / fastconv auto, medians\n")
    print("| layer | " + " | ".join(OPS) + " |")
    print("|---" * (len(OPS) + 1) + "|")
    for name, layer in layers:
        cells = []
        for op in OPS:
            got = ratios.get((op, layer.id), [])
            low, high = (min(got), max(got)) if got else (0.0, 0.0)
            cells.append("-" if not got else f"{low:.2f}" if len(got) == 1 or
                         f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}")
        print(f"| {name} ({layer.description}) | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
