"""Pooling and unpooling, forward and backward, float32 NCHW: max_pool2d and
avg_pool2d on (8, 64, 56, 56) with 2x2/s2 and 3x3/s2/p1 windows; max_unpool2d
(indices of a 2x2/s2 max_pool2d of a tie-free input) and repeat_unpool2d by 2 on
(8, 64, 28, 28). One group per case (``max_pool2d|3x3s2p1``), one benchmark per
implementation, GB/s (bytes read and written) in ``extra_info``; the torch call
per op is listed in :data:`fastconv.bench.OP_SPECS`.

Skipped while fastconv has no pooling. The max_pool2d reference runs on a reduced
batch (``max_pool2d|2x2s2|N2``) and is skipped under ``--benchmark-disable``.
"""

from __future__ import annotations

OPS = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
       "max_unpool2d", "max_unpool2d_backward", "repeat_unpool2d", "repeat_unpool2d_backward"]


def test_pool(time_op, op_benchmark):
    time_op(*op_benchmark)
