"""The one place that turns :mod:`fastconv.config` into Numba decorators."""

from __future__ import annotations

import numba

from .. import config


def kernel(*, parallel: bool = False):
    """``numba.njit`` with fastconv's flags; ``parallel`` also needs ``config.PARALLEL``."""
    return numba.njit(
        cache=config.CACHE,
        fastmath=set(config.FASTMATH),
        parallel=parallel and config.PARALLEL,
        nogil=True,
        error_model="numpy",
    )
