"""float32 accuracy of a ResNet-18 training step through ``fastconv.torch``.

    python benchmarks/accuracy.py [--batch 4] [--size 112] [--algorithms auto direct ...]

The network: ResNet-18 (BasicBlocks, BatchNorm in training mode, no final pooling
or linear layer), loss ``y.square().sum()``. One forward and backward in float64
through ``torch.nn`` is the truth; each variant computes the same step in float32
from the same parameters and input. The error of a variant is, over all parameters,
the largest ``max |grad - grad64| / max |grad64|`` (each parameter's gradient
against its own largest value); the table gives its median and largest value over
the seeds, and in how many seeds it is over 1e-3.

With ReLU and max pooling, that error has two sources: the rounding of the
convolutions, amplified by batch norm over few values, and discrete flips: a
ReLU input or a max-pool candidate within rounding of its threshold decides the
other way in float32, which changes a gradient by up to a few tenths (PyTorch
itself flips in some seeds). ``--smooth`` (GELU and average pooling) leaves the
rounding alone.

Variants: ``torch`` (torch.nn in float32), and fastconv with ``algorithm=`` one of
``auto``, ``direct``, ``im2col``, ``winograd`` on every 3x3 stride-1 layer
(other layers ``auto``), and ``first-winograd``: only the first 64-channel 3x3
layer on ``winograd``, every other on ``auto``.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import fastconv.torch as fct


def _conv(cin, cout, k, stride, algorithm_of):
    padding = k // 2
    algorithm = algorithm_of(cin, cout, k, stride)
    if algorithm is None:
        return torch.nn.Conv2d(cin, cout, k, stride, padding, bias=False)
    return fct.Conv2d(cin, cout, k, stride, padding, bias=False, algorithm=algorithm)


class _Block(torch.nn.Module):
    def __init__(self, cin, cout, stride, algorithm_of, act):
        super().__init__()
        self.act = act
        self.conv1 = _conv(cin, cout, 3, stride, algorithm_of)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = _conv(cout, cout, 3, 1, algorithm_of)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = torch.nn.Sequential(_conv(cin, cout, 1, stride, algorithm_of),
                                            torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(y + (x if self.down is None else self.down(x)))


def resnet18(algorithm_of, smooth: bool = False) -> torch.nn.Sequential:
    """ResNet-18's convolutions and batch norms; ``smooth``: GELU for ReLU and average
    for max pooling, so that no rounding flips a discrete choice."""
    act = torch.nn.functional.gelu if smooth else torch.relu
    layers = [_conv(3, 64, 7, 2, algorithm_of), torch.nn.BatchNorm2d(64),
              torch.nn.GELU() if smooth else torch.nn.ReLU(),
              torch.nn.AvgPool2d(3, 2, 1) if smooth else torch.nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [_Block(cin, cout, stride, algorithm_of, act),
                   _Block(cout, cout, 1, algorithm_of, act)]
        cin = cout
    return torch.nn.Sequential(*layers)


def _everywhere(name):
    def algorithm_of(cin, cout, k, stride):
        if name == "winograd":
            return "winograd" if (k, stride) == (3, 1) else "auto"
        return name
    return algorithm_of


def _first_winograd():
    seen = []

    def algorithm_of(cin, cout, k, stride):
        first = (k, stride, cin) == (3, 1, 64) and not seen
        if first:
            seen.append(True)
        return "winograd" if first else "auto"
    return algorithm_of


def variants(names):
    for name in names:
        if name == "torch":
            yield name, lambda *_: None
        elif name == "first-winograd":
            yield name, _first_winograd()
        else:
            yield name, _everywhere(name)


def layer_errors(algorithms) -> None:
    """One 3x3 layer (N4, 64 -> 64 channels, 28x28, ReLU'd normal input, weights scaled
    to unit output variance) in float32 against float64: rms and largest error
    relative to the output's rms, per algorithm and for torch."""
    import numpy as np

    import fastconv

    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((4, 64, 28, 28)), 0).astype(np.float32)
    w = (rng.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32)
    exact = torch.nn.functional.conv2d(torch.from_numpy(x).double(),
                                       torch.from_numpy(w).double(), padding=1).numpy()
    rms = np.sqrt((exact ** 2).mean())
    print("One layer: N4, 64 -> 64 channels, 28x28, 3x3; float32 error / output rms")
    print("| algorithm | rms error | largest error |")
    print("|---|---|---|")
    outputs = {"torch": torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                                   padding=1).numpy()}
    for name in algorithms:
        if name not in ("torch", "first-winograd"):
            outputs[name] = fastconv.conv2d(x, w, padding=1, algorithm=name)
    for name, y in outputs.items():
        error = y - exact
        print(f"| {name} | {np.sqrt((error ** 2).mean()) / rms:.2g} | "
              f"{np.abs(error).max() / rms:.2g} |")
    print()


def gradients(net, x):
    net.zero_grad()
    net(x).square().sum().backward()
    return {name: p.grad.detach().clone() for name, p in net.named_parameters()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--smooth", action="store_true",
                        help="GELU and average pooling instead of ReLU and max pooling")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--algorithms", nargs="+",
                        default=["torch", "auto", "direct", "im2col", "winograd",
                                 "first-winograd"])
    args = parser.parse_args(argv)
    layer_errors(args.algorithms)
    print(f"ResNet-18, batch {args.batch}, {args.size}x{args.size}, BatchNorm in training "
          f"mode, loss y.square().sum(); float32 parameter gradients against float64, "
          f"seeds {args.seeds}")
    errors: dict[str, list[float]] = {name: [] for name in args.algorithms}
    for seed in args.seeds:
        torch.manual_seed(seed)
        truth_net = resnet18(lambda *_: None, args.smooth).double().train()
        state = truth_net.state_dict()
        x64 = torch.randn(args.batch, 3, args.size, args.size, dtype=torch.float64)
        truth = gradients(truth_net, x64)
        for name, algorithm_of in variants(args.algorithms):
            net = resnet18(algorithm_of, args.smooth).train()
            net.load_state_dict({k: v.float() if v.is_floating_point() else v
                                 for k, v in state.items()})
            grads = gradients(net, x64.float())
            errors[name].append(max(
                (grads[key].double() - g64).abs().max().item() / (g64.abs().max().item() or 1.0)
                for key, g64 in truth.items()))
    print("| variant | median | largest | seeds over 1e-3 | per seed |")
    print("|---|---|---|---|---|")
    for name, values in errors.items():
        over = sum(v > 1e-3 for v in values)
        print(f"| {name} | {statistics.median(values):.2g} | {max(values):.2g} | "
              f"{over} of {len(values)} | {' '.join(f'{v:.1g}' for v in values)} |")

if __name__ == "__main__":
    main()
