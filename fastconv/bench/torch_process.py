"""PyTorch timed in a process of its own.

Two thread pools in one process fight over the cores: PyTorch's OpenMP workers keep
spinning for a while after each of its ops, and Numba's workers (TBB or OpenMP) after
each of fastconv's, so whichever library runs next in the same process may find a core
busy (benchmarks/RESULTS.md, "Measurements behind the design"). The CPU suites
(:func:`fastconv.bench.run_cases`) therefore time torch's cells in a child process
(:class:`TorchProcess`): a fresh interpreter that imports torch, never starts Numba's
thread pool, and times each cell with the same rule (:func:`~fastconv.bench.time_cell`),
on the same seeded inputs, with as many threads and the same allocator set-up as the
parent. The parent never runs a torch op, so no torch thread spins beside fastconv's
timings; the child waits on its pipe (asleep) while the parent times fastconv.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
from typing import Any, BinaryIO

from .cases import OpCase
from .timing import BUDGET_S, Timing, allocator, configure_allocator, time_cell

# The child: serve(threads, allocator) reads one request at a time from stdin.
_CHILD = "import sys; from fastconv.bench.torch_process import serve; serve(sys.argv[1:])"


class TorchProcess:
    """A child process that times torch on the cases it is sent (:meth:`time`), with
    ``threads`` threads and, where this process has called
    :func:`~fastconv.bench.configure_allocator`, the same allocator set-up. Use it as a
    context manager, or :meth:`close` it."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._errors = tempfile.TemporaryFile()
        configured = allocator() != "system default"
        self._child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(threads), "1" if configured else "0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errors,
        )

    def time(self, case: OpCase, *, quick: bool = False, repeat: int | None = None,
             budget_s: float = BUDGET_S, seed: int = 0) -> Timing:
        """torch's timing of ``case`` (inputs from ``seed``), as
        :func:`~fastconv.bench.time_cell` times a cell; RuntimeError with the child's
        message where it failed."""
        assert self._child.stdin is not None and self._child.stdout is not None
        try:
            pickle.dump((case, quick, repeat, budget_s, seed), self._child.stdin)
            self._child.stdin.flush()
            status, answer = pickle.load(self._child.stdout)
        except (OSError, EOFError, pickle.UnpicklingError):
            raise RuntimeError(f"the torch timing process stopped:\n{self._stderr()}") from None
        if status != "ok":
            raise RuntimeError(f"torch failed on {case.id} in its own process:\n{answer}")
        return Timing(*answer)

    def _stderr(self) -> str:
        self._child.wait(timeout=60)
        self._errors.seek(0)
        return self._errors.read().decode(errors="replace")

    def close(self) -> None:
        """End the child (it exits when its stdin closes)."""
        if self._child.stdin is not None and not self._child.stdin.closed:
            self._child.stdin.close()
        try:
            self._child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
        self._errors.close()

    def __enter__(self) -> TorchProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _answer(stream: BinaryIO, message: Any) -> None:
    pickle.dump(message, stream)
    stream.flush()


def serve(argv: list[str]) -> None:
    """The child's loop: ``argv`` is ``[threads, allocator]`` (``"1"``: configure it);
    each request is a pickled ``(case, quick, repeat, budget_s, seed)``, each answer
    ``("ok", (median_s, min_s, calls))`` or ``("error", text)``; ends at end of input."""
    import traceback

    import torch

    from .implementations import HostSide, bind

    threads, configured = int(argv[0]), argv[1] == "1"
    if configured:
        configure_allocator()
    torch.set_num_threads(threads)
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the answers
    side = HostSide()
    while True:
        try:
            case, quick, repeat, budget_s, seed = pickle.load(requests)
        except EOFError:
            return
        try:
            # bound.torch, not bound.prepare("torch"): that asks Numba for its threads,
            # which would start Numba's pool in this process
            fn = bind(case, seed, side).torch(torch)
            timing = time_cell(fn, "torch", quick=quick, repeat=repeat, budget_s=budget_s)
        except Exception:  # noqa: BLE001 - the parent says what failed
            _answer(answers, ("error", traceback.format_exc()))
            continue
        _answer(answers, ("ok", (timing.median_s, timing.min_s, timing.calls)))

