"""Zero-padded row strips: the scratch layout the direct kernels read their input from.

A direct task copies the padded input rows that a band of output rows reads
into a strip on the padded row pitch, so no tap ever indexes outside the input;
:func:`band_rows` sizes bands within ``config.DIRECT_TILE_BYTES``.
"""

from __future__ import annotations

from .. import config
from ._jit import kernel


def band_rows(n_rows: int, fixed: int, per_row: int, item: int) -> int:
    """Rows per band (at least 1, at most ``n_rows``) for a scratch of ``fixed + per_row *
    (rows - 1)`` values of ``item`` bytes each, within ``config.DIRECT_TILE_BYTES``."""
    budget = config.DIRECT_TILE_BYTES // item
    return max(1, min(n_rows, 1 + (budget - fixed) // max(1, per_row)))


@kernel()
def _to_pitch(buffer, rows, offset, pitch):
    """buffer[offset + i * pitch + j] = rows[i, j]: a plane copied into a buffer of a
    wider row pitch (the junk columns around it stay as they are)."""
    height, width = rows.shape
    for i in range(height):
        dst = buffer[offset + i * pitch :]
        src = rows[i]
        for j in range(width):
            dst[j] = src[j]


@kernel()
def _padded_rows(buffer, plane, first, n_rows, pad_left, pitch, clear):
    """Rows ``first .. first + n_rows`` of the zero-padded plane on ``pitch`` (``first``
    counts from the first image row and may be negative): ``plane[first + q, j]`` at
    ``buffer[q * pitch + pad_left + j]``, and, if ``clear``, zeros in the rows outside
    the image (without, they must be zero already: the last copy had the same rows).
    The padding columns are never written: they stay zero from the buffer's first
    clearing."""
    height, width = plane.shape
    inside_first = max(0, -first)
    inside_last = max(inside_first, min(n_rows, height - first))
    for q in range(inside_first, inside_last):
        dst = buffer[q * pitch + pad_left :]
        src = plane[first + q]
        for j in range(width):
            dst[j] = src[j]
    if clear:
        for q in range(n_rows):
            if q < inside_first or q >= inside_last:
                dst = buffer[q * pitch + pad_left :]
                for j in range(width):
                    dst[j] = 0
