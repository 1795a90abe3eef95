"""conv_transpose2d on N8 C128 16x16 -> C64 32x32, 4x4 kernel, stride 2, padding 1,
with bias, and its backward (grad_input, grad_weight and grad_bias): groups
``conv_transpose2d|N8C128`` and ``conv_transpose2d_backward|N8C128``, one benchmark
per implementation, GFLOP/s in ``extra_info``.

The reference runs on two images (``...|N8C128|N2``) and is skipped under
``--benchmark-disable``, where every other case runs once as a smoke test.
"""

from __future__ import annotations

OPS = ["conv_transpose2d", "conv_transpose2d_backward"]


def test_conv_transpose2d(time_op, op_benchmark):
    time_op(*op_benchmark)
