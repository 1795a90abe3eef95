"""Train a small LeNet-style CNN on the 8 x 8 digits of scikit-learn with fastconv.nn.

``python -m fastconv demo`` (or :func:`run`) builds the network of the
lecture's convolution layer: convolution, bias, ReLU activation, then max
pooling, twice, and a dense layer::

    (N, 1, 8, 8) -> Conv2d(1, 16, 3, padding=1) + ReLU -> MaxPool2d(2)   (N, 16, 4, 4)
                 -> Conv2d(16, 32, 3, padding=1) + ReLU -> MaxPool2d(2)  (N, 32, 2, 2)
                 -> Flatten -> Linear(128, 10)                          (N, 10)

and trains it with softmax cross-entropy and SGD with momentum (the
learning rate decays to 0 along a cosine) on ``sklearn.datasets.load_digits``
(1797 images, no download), holding out a stratified 25 % as the test set.
It prints the time the JIT compilation took (one forward and backward pass
on one batch, before training), its progress (a bar on a terminal, a line per
epoch in a log), the test accuracy and where
each training step spends its time, and saves two PNGs: the learned
first-layer filters with their feature maps of a test digit, and the loss
curve with the test accuracy after each epoch.

The kernels run on one Numba thread unless ``threads`` says otherwise: a
batch of 32 images of 8 x 8 gives each kernel call microseconds of work,
less than a parallel region costs to start, and on a busy machine a parallel
region waits for its slowest thread to be scheduled (10x slower steps were
seen on a shared 2-core machine).

Needs the ``demo`` extra: scikit-learn and matplotlib, and tqdm for the progress bar
(without it, a line per epoch).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO, cast

import numpy as np

from . import nn
from .warmup import warmup_backward

#: The test split is always the same, whatever ``seed`` (which sets the
#: initialisation and the batch order), so runs with different seeds compare.
SPLIT_SEED = 0
TEST_FRACTION = 0.25
EPOCHS = 20
QUICK_EPOCHS = 3
BATCH_SIZE = 32
LR = 0.03
MOMENTUM = 0.9
#: Rows of the breakdown, in the order a step runs them.
OPS = ("conv forward", "pool forward", "dense forward", "loss", "dense backward",
       "pool backward", "conv backward", "optimizer")
ALGORITHMS = ("auto", "direct", "im2col", "winograd")


@dataclasses.dataclass
class DemoResult:
    """What :func:`run` measured. Times are wall-clock seconds.

    Attributes:
        test_accuracy, train_accuracy: fraction of images classified right
            after the last epoch.
        epochs, steps: epochs trained and optimiser steps taken.
        wall_s: the whole run: data, compilation, training, evaluation, plots.
        compile_s: the first forward and backward pass on one batch, which
            compiles the kernels (or loads them from Numba's on-disk cache).
        train_s: the training steps (not the per-epoch evaluation).
        images_per_s: training images per second of ``train_s``.
        op_times: seconds per op over all training steps (the rows of
            :data:`OPS` and ``"other"``: batching and the Python in between);
            they add up to ``train_s``.
        losses: the loss of every step; ``epoch_test_accuracy``: the test
            accuracy after each epoch.
        filters_png, loss_png: the saved figures.
    """

    test_accuracy: float
    train_accuracy: float
    epochs: int
    steps: int
    wall_s: float
    compile_s: float
    train_s: float
    images_per_s: float
    op_times: dict[str, float]
    losses: list[float]
    epoch_test_accuracy: list[float]
    filters_png: Path
    loss_png: Path


class _Timed(nn.Module):
    """A layer whose forward and backward add their seconds to ``clock[f"{kind} forward"]``
    and ``clock[f"{kind} backward"]``; the demo's instrumentation, so nn stays untimed."""

    def __init__(self, layer: nn.Module, kind: str, clock: dict[str, float]) -> None:
        self.layer, self.clock = layer, clock
        self.forward_key, self.backward_key = f"{kind} forward", f"{kind} backward"

    def forward(self, x: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        y = self.layer.forward(x)
        self.clock[self.forward_key] += time.perf_counter() - start
        return y

    def backward(self, grad_output: np.ndarray, *,
                 needs_input_grad: bool = True) -> np.ndarray | None:
        start = time.perf_counter()
        grad = self.layer.backward(grad_output, needs_input_grad=needs_input_grad)
        self.clock[self.backward_key] += time.perf_counter() - start
        return grad

    def params(self) -> dict[str, np.ndarray]:
        return self.layer.params()

    def grads(self) -> dict[str, np.ndarray]:
        return self.layer.grads()


def build_model(rng: np.random.Generator, algorithm: str = "auto") -> nn.Sequential:
    """The demo's CNN for ``(N, 1, 8, 8)`` float32 images -> ``(N, 10)`` logits.

    >>> import numpy as np
    >>> model = build_model(np.random.default_rng(0))
    >>> [type(layer).__name__ for layer in model]
    ['Conv2d', 'MaxPool2d', 'Conv2d', 'MaxPool2d', 'Flatten', 'Linear']
    >>> sum(p.size for p in model.params().values())
    6090
    """
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, activation="relu", rng=rng, algorithm=algorithm),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, activation="relu", rng=rng, algorithm=algorithm),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 10, rng=rng),
    )


def _kind(layer: nn.Module) -> str:
    if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
        return "conv"
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        return "pool"
    return "dense"


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits as ``(x_train, y_train, x_test, y_test)``: images ``(N, 1, 8, 8)``
    float32 standardised with the training images' mean and standard deviation,
    labels int64; a stratified 25 % test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images[:, None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED)
    mean, std = x_train.mean(), x_train.std()
    return ((x_train - mean) / std).astype(np.float32), y_train, \
        ((x_test - mean) / std).astype(np.float32), y_test


def _accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 512) -> float:
    right = sum(int((model(x[i:i + batch]).argmax(axis=1) == y[i:i + batch]).sum())
                for i in range(0, len(x), batch))
    return right / len(x)


def _missing_extra(error: ImportError) -> ImportError:
    return ImportError(
        f"the demo needs scikit-learn and matplotlib ({error}); "
        "install them with: pip install 'fastconv[demo]'")


class _Progress:
    """The training's progress on ``stream`` (default: stderr at construction).

    A tqdm bar over the ``total`` images with the loss, where tqdm is installed and
    tqdm's ``disable=None`` shows it: the stream is a terminal (or, through
    ``tqdm.auto``, a notebook). Elsewhere (a log, a pipe, no tqdm) nothing per step,
    which would fill a log with ``\\r`` frames, and one line per epoch. Nothing at all
    when ``enabled`` is False.
    """

    def __init__(self, total: int, epochs: int, *, enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        self.epochs, self.enabled = epochs, enabled
        self.stream = sys.stderr if stream is None else stream
        self.bar: Any = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        bar = tqdm(total=total, unit="img", unit_scale=True, desc="training",
                   file=self.stream, dynamic_ncols=True, disable=None)
        if bar.disable:
            bar.close()
        else:
            self.bar = bar

    def step(self, images: int, epoch: int, losses: Sequence[float]) -> None:
        """A training step on ``images`` images in ``epoch`` (from 1); ``losses`` so far."""
        if self.bar is not None:
            self.bar.update(images)
            if len(losses) % 10 == 0:
                self.bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses[-10:]):.3f}",
                                     refresh=False)

    def epoch(self, epoch: int, loss: float, test_accuracy: float) -> None:
        """Epoch ``epoch`` (from 1) done: its mean loss and the test accuracy after it."""
        if self.enabled and self.bar is None:
            print(f"training: epoch {epoch}/{self.epochs}, loss {loss:.3f}, test accuracy "
                  f"{test_accuracy:.2%}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def run(
    epochs: int = EPOCHS,
    *,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    momentum: float = MOMENTUM,
    seed: int = 0,
    out_dir: str | Path = "demo-output",
    algorithm: str = "auto",
    threads: int | None = 1,
    progress: bool = True,
    stream: TextIO | None = None,
) -> DemoResult:
    """Train the demo CNN (see the module docstring) and report on it.

    Args:
        epochs: passes over the 1347 training images.
        batch_size: images per SGD step.
        lr, momentum: of the SGD optimiser; the learning rate follows
            ``lr * (1 + cos(pi * step / steps)) / 2`` down to 0 at the last step.
        seed: a non-negative int; sets the initialisation and the batch order (not
            the test split).
        out_dir: folder for ``filters.png`` and ``loss.png``, created if missing and
            checked to be writable before anything is compiled or trained.
        algorithm: the convolution layers' ``algorithm=`` (``"auto"``, ``"direct"``, ...).
        threads: Numba threads for the run (restored afterwards); None keeps the
            current number (all cores unless set otherwise).
        progress: show the progress on stderr: a tqdm bar with the loss and images/s
            where tqdm is installed and stderr is a terminal (or in a notebook), else a
            line per epoch (no ``\\r`` frames in logs); False shows nothing.
        stream: where the report goes; None is ``sys.stdout``.

    Returns:
        A :class:`DemoResult` with the accuracies, times, per-op breakdown and PNG paths.

    Raises:
        ImportError: scikit-learn or matplotlib is missing (tqdm is optional).
        OSError: ``out_dir`` cannot be created or written to (raised first).
        ValueError: ``epochs`` or ``batch_size`` below 1, ``seed`` negative, ``lr`` or
            ``momentum`` not accepted by :class:`fastconv.nn.SGD` (not finite, or out
            of range), ``threads`` outside 1 .. the number Numba started with.
        TypeError: ``lr`` or ``momentum`` not a real number.
    """
    import numba

    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    nn.SGD(nn.Sequential(), lr=lr, momentum=momentum)  # its checks, before any training

    start = time.perf_counter()
    folder = _output_folder(out_dir)
    out = sys.stdout if stream is None else stream

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    try:
        data = load_data()
    except ImportError as error:
        raise _missing_extra(error) from None
    x_train, y_train, x_test, y_test = data
    say(f"data: sklearn digits, {len(x_train)} training and {len(x_test)} test images "
        f"of 8x8, 10 classes")
    rng = np.random.default_rng(seed)
    model = build_model(rng, algorithm)
    say(f"model: {model!r}")

    previous_threads = numba.get_num_threads()
    if threads is not None:
        numba.set_num_threads(threads)
    try:
        say(f"numba threads: {numba.get_num_threads()}")
        compile_s = _compile(model, x_train[:batch_size], y_train[:batch_size])
        say(f"JIT compilation (first forward and backward on one batch): {compile_s:.2f} s")
        with _Progress(epochs * len(x_train), epochs, enabled=progress) as bar:
            training = _train(model, data, epochs, batch_size, lr, momentum, rng, bar)
        train_accuracy = _accuracy(model, x_train, y_train)
    finally:
        numba.set_num_threads(previous_threads)
    losses, epoch_test_accuracy, train_s, clock = training
    test_accuracy = epoch_test_accuracy[-1] if epochs else _accuracy(model, x_test, y_test)
    images_per_s = epochs * len(x_train) / train_s if train_s else 0.0
    say(f"trained {epochs} epochs ({len(losses)} steps of {batch_size} images, lr {lr}, "
        f"momentum {momentum}) in {train_s:.2f} s, {images_per_s:,.0f} images/s")
    say(f"test accuracy: {test_accuracy:.2%} ({round(test_accuracy * len(x_test))}/"
        f"{len(x_test)}); train accuracy: {train_accuracy:.2%}")
    say(_breakdown(clock, train_s, len(losses)))

    try:
        filters_png = _plot_filters(model, x_test[0], folder / "filters.png")
        loss_png = _plot_losses(losses, -(-len(x_train) // batch_size), epoch_test_accuracy,
                                folder / "loss.png")
    except ImportError as error:
        raise _missing_extra(error) from None
    wall_s = time.perf_counter() - start
    say(f"saved {filters_png} and {loss_png}")
    say(f"wall time: {wall_s:.2f} s (JIT compilation {compile_s:.2f} s, "
        f"training {train_s:.2f} s)")
    return DemoResult(test_accuracy, train_accuracy, epochs, len(losses), wall_s, compile_s,
                      train_s, images_per_s, clock, losses, epoch_test_accuracy, filters_png,
                      loss_png)


def _output_folder(out_dir: str | Path) -> Path:
    """``out_dir`` as a Path, created if missing and checked by writing (and deleting) a
    file in it, so that a bad folder fails before the training rather than after it."""
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        message = f"cannot write the figures to {str(folder)!r}: {error.strerror or error}"
        if error.errno is None:
            raise OSError(message) from None
        raise OSError(error.errno, message) from None  # FileExistsError, PermissionError ...
    return folder


def _compile(model: nn.Sequential, x: np.ndarray, y: np.ndarray) -> float:
    """Seconds of a first forward and backward pass, which compiles every kernel a
    training step runs (or loads it from Numba's cache; the backward's compiled by a
    helper process meanwhile, :func:`fastconv.warmup_backward`); gradients are reset
    after."""
    from .dispatch import available_algorithms

    available_algorithms("conv2d")  # imports Numba and the kernels: not compilation
    start = time.perf_counter()
    loss_fn = nn.CrossEntropyLoss()
    # the backward's kernels compile in a helper process beside the forward's here
    with warmup_backward(model, x.shape, x.dtype):
        logits = model(x)
    loss_fn(logits, y)
    model.backward(loss_fn.backward(), needs_input_grad=False)
    seconds = time.perf_counter() - start
    model.zero_grad()
    return seconds


def _train(model: nn.Sequential, data: tuple, epochs: int, batch_size: int, lr: float,
           momentum: float, rng: np.random.Generator, progress: _Progress) -> tuple:
    """SGD over ``epochs``, timing each op, telling ``progress``; returns the losses per
    step, the test accuracy per epoch, the seconds of the steps and the seconds per op."""
    x_train, y_train, x_test, y_test = data
    clock = dict.fromkeys((*OPS, "other"), 0.0)
    timed = nn.Sequential(*(_Timed(layer, _kind(layer), clock) for layer in model))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = nn.SGD(model, lr=lr, momentum=momentum)
    total_steps = epochs * -(-len(x_train) // batch_size)
    losses: list[float] = []
    epoch_test_accuracy: list[float] = []
    train_s = 0.0
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        for first in range(0, len(x_train), batch_size):
            step_start = time.perf_counter()
            optimizer.lr = lr * 0.5 * (1.0 + math.cos(math.pi * len(losses) / total_steps))
            chosen = order[first:first + batch_size]
            x, y = x_train[chosen], y_train[chosen]
            logits = timed(x)
            loss_start = time.perf_counter()
            loss = loss_fn(logits, y)
            grad = loss_fn.backward()
            loss_end = time.perf_counter()
            timed.backward(grad, needs_input_grad=False)
            optimizer_start = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad()
            step_end = time.perf_counter()
            clock["loss"] += loss_end - loss_start
            clock["optimizer"] += step_end - optimizer_start
            train_s += step_end - step_start
            losses.append(loss)
            progress.step(len(chosen), epoch + 1, losses)
        epoch_test_accuracy.append(_accuracy(model, x_test, y_test))
        steps_per_epoch = -(-len(x_train) // batch_size)
        progress.epoch(epoch + 1, float(np.mean(losses[-steps_per_epoch:])),
                       epoch_test_accuracy[-1])
    clock["other"] = max(train_s - sum(clock[name] for name in OPS), 0.0)
    return losses, epoch_test_accuracy, train_s, clock


def _breakdown(clock: dict[str, float], train_s: float, steps: int) -> str:
    """The per-op table: seconds over all steps, milliseconds per step, share of the step."""
    per_step = 1e3 * train_s / steps if steps else 0.0
    lines = [f"time per training step: {per_step:.3f} ms, by op:",
             f"  {'op':<16}{'total s':>9}{'ms/step':>9}{'share':>8}"]
    for name, seconds in clock.items():
        share = seconds / train_s if train_s else 0.0
        ms = 1e3 * seconds / steps if steps else 0.0
        lines.append(f"  {name:<16}{seconds:>9.3f}{ms:>9.3f}{share:>8.1%}")
    return "\n".join(lines)


def _plot_filters(model: nn.Sequential, image: np.ndarray, path: Path) -> Path:
    """The first layer's 3 x 3 filters (top rows) and their ReLU feature maps of ``image``
    ``(1, 8, 8)`` (bottom rows, the digit itself on the left), eight a row."""
    from matplotlib.figure import Figure

    conv = cast(nn.Conv2d, model[0])  # build_model() begins with a Conv2d
    weights = conv.weight[:, 0]
    maps = conv(image[None])[0]
    per_row = 8
    rows = -(-len(weights) // per_row)
    fig = Figure(figsize=(1.1 * (per_row + 1), 1.2 * 2 * rows + 0.4), layout="constrained")
    axes = fig.subplots(2 * rows, per_row + 1)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    axes[0, 0].text(0.5, 0.5, "filters\nblue < 0 < red", ha="center", va="center", fontsize=8)
    axes[rows, 0].imshow(image[0], cmap="gray_r")
    axes[rows, 0].set_title("input", fontsize=8)
    limit = float(np.abs(weights).max())
    for k in range(len(weights)):
        row, col = divmod(k, per_row)
        axes[row, col + 1].imshow(weights[k], cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes[row, col + 1].set_title(f"filter {k}", fontsize=7)
        axes[rows + row, col + 1].imshow(maps[k], cmap="gray_r")
        axes[rows + row, col + 1].set_title(f"map {k}", fontsize=7)
    fig.suptitle("first conv layer: learned 3x3 filters and their ReLU feature maps of a "
                 "test digit", fontsize=9)
    fig.savefig(path, dpi=100)
    return path


def _plot_losses(losses: list[float], steps_per_epoch: int, test_accuracy: list[float],
                 path: Path) -> Path:
    """The loss per step and per epoch (top) and the test accuracy after each epoch
    (bottom)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 5.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    steps = np.arange(1, len(losses) + 1) / steps_per_epoch
    epochs = np.arange(1, len(test_accuracy) + 1)
    per_epoch = [float(np.mean(losses[(e - 1) * steps_per_epoch:e * steps_per_epoch]))
                 for e in epochs]
    top.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="per step")
    top.plot(epochs, per_epoch, "o-", color="tab:blue", label="mean over the epoch")
    top.set_yscale("log")
    top.set_ylabel("cross-entropy loss")
    top.legend(loc="upper right")
    top.set_title("training the demo CNN on sklearn digits")
    bottom.plot(epochs, test_accuracy, "s-", color="tab:orange")
    bottom.set_ylabel("test accuracy")
    bottom.set_xlabel("epoch")
    bottom.set_ylim(min(0.9, *test_accuracy) if test_accuracy else 0.9, 1.0)
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.grid(alpha=0.3)
    fig.savefig(path, dpi=100)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``fastconv demo ARGS`` (``argv``, default ``sys.argv[1:]``), parsed by the command
    line's parser (:mod:`fastconv.cli`); returns the exit status: 0; 1 after one line on
    stderr when scikit-learn or matplotlib is missing or the output folder (``--out``)
    cannot be written, which is checked before the training; 2 after argparse's usage
    error for a bad argument; 0 after ``--help``."""
    from . import cli

    return cli.main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
