"""A PyTorch training step with fastconv.torch layers against the same model with
torch.nn layers, in one process with default settings (both thread pools alive).

    python benchmarks/bridge_step.py [--batch 32 4] [--steps 60]

The model: three blocks of 3x3 conv (padding 1) + ReLU + 2x2 max-pool on 3x32x32
input (16, 32, 64 channels), then a linear layer to 10 classes; cross-entropy,
SGD. Each step is forward, backward and the optimiser step. Both models start from
the same parameters; the two are timed in alternating rounds and the median step
time is reported. Prints one line per batch size: fastconv's and torch's median step
and the ratio torch / fastconv (above 1: fastconv is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastconv.torch as fct


def model(conv, pool) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    channels = 3
    for width in (16, 32, 64):
        layers += [conv(channels, width, 3, padding=1), torch.nn.ReLU(), pool(2)]
        channels = width
    return torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(64 * 4 * 4, 10))


def step_time(net, x, labels, steps: int) -> list[float]:
    optimiser = torch.optim.SGD(net.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimiser.zero_grad()
        loss_fn(net(x), labels).backward()
        optimiser.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 4])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    reference = model(torch.nn.Conv2d, torch.nn.MaxPool2d)
    ours = model(fct.Conv2d, fct.MaxPool2d)
    ours.load_state_dict(reference.state_dict())
    for batch in args.batch:
        x = torch.randn(batch, 3, 32, 32)
        labels = torch.randint(0, 10, (batch,))
        for net in (ours, reference):  # warm-up: compile and first-touch
            step_time(net, x, labels, 3)
        mine: list[float] = []
        theirs: list[float] = []
        for _ in range(args.rounds):
            mine += step_time(ours, x, labels, args.steps)
            theirs += step_time(reference, x, labels, args.steps)
        a, b = statistics.median(mine), statistics.median(theirs)
        print(f"batch {batch:3d}: fastconv.torch {a * 1e3:7.3f} ms/step, torch.nn "
              f"{b * 1e3:7.3f} ms/step, torch / fastconv = {b / a:.2f}x", flush=True)


if __name__ == "__main__":
    main()
