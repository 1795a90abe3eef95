"""Window arithmetic shared by every CPU kernel that slides a window.

Output position ``o`` of a window tap reads input position
``o * stride + offset`` with ``offset = tap * dilation - pad_before``; it is
inside the input of ``length`` for ``lo <= o < hi``. Kernels loop over that
range only, so padding is never materialised and indices stay non-negative.
"""

from __future__ import annotations

from ._jit import kernel


@kernel()
def valid_range(offset, stride, length, out_length):
    """``(lo, hi)``: the outputs ``o`` in ``[0, out_length)`` with
    ``0 <= o * stride + offset < length``; ``lo == hi`` when there are none."""
    lo = 0 if offset >= 0 else (-offset + stride - 1) // stride
    last = length - 1 - offset
    hi = last // stride + 1 if last >= 0 else 0
    if hi > out_length:
        hi = out_length
    if lo > hi:
        lo = hi
    return lo, hi
