"""Run by tests/test_kernel_paths.py in a subprocess with ``NUMBA_NUM_THREADS`` set:
``python -m tests._paths_check THREADS OUT.npz`` computes the forced-tile matrix on
THREADS Numba threads, checks each tiling as the in-process tests do, and saves the
results to OUT.npz (keys ``"op/algorithm/case"``)."""

from __future__ import annotations

import sys

import numba
import numpy as np


def main(threads: int, out: str) -> None:
    numba.set_num_threads(threads)
    assert numba.get_num_threads() == threads, (numba.get_num_threads(), threads)
    from tests.test_kernel_paths import compute_all

    np.savez(out, **compute_all())


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
