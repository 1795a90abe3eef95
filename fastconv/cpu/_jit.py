"""The one place that turns :mod:`fastconv.config` into Numba decorators."""

from __future__ import annotations

import numba

from .. import config

_DEFAULT_FASTMATH = frozenset({"reassoc", "contract", "nsz", "arcp"})


def disk_cache() -> bool:
    """Whether compiled kernels go to Numba's disk cache.

    Numba keys its cache by signature and CPU, not by compile flags: a kernel
    cached with ``parallel=True`` would be loaded as it is under
    ``FASTCONV_PARALLEL=0``, ``FASTCONV_FASTMATH=0`` or ``NUMBA_BOUNDSCHECK=1``.
    So only the default flags are cached; other settings compile in memory."""
    return (config.CACHE and config.PARALLEL and config.FASTMATH == _DEFAULT_FASTMATH
            and not numba.config.BOUNDSCHECK)


def kernel(*, parallel: bool = False):
    """``numba.njit`` with fastconv's flags; ``parallel`` also needs ``config.PARALLEL``."""
    return numba.njit(
        cache=disk_cache(),
        fastmath=set(config.FASTMATH),
        parallel=parallel and config.PARALLEL,
        nogil=True,
        error_model="numpy",
    )
