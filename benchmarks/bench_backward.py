"""conv2d's gradients on layers c, d and g of :mod:`fastconv.bench`: ``grad_input``,
and ``grad_weight`` with ``grad_bias`` (``conv2d_backward(..., needs_input_grad=False)``),
one group per case (``grad_input|c``), one benchmark per implementation. torch runs
``aten.convolution_backward`` with output_mask ``[T, F, F]`` and ``[F, T, T]``.

The reference computes both gradients in one loop; it is timed with ``auto`` beside
it on the layer's reference batch (``grad_input|c|N1``), and skipped under
``--benchmark-disable``, where every other case runs once as a smoke test.
"""

from __future__ import annotations

OPS = ["grad_input", "grad_weight"]


def test_conv2d_backward(time_op, op_benchmark):
    time_op(*op_benchmark)
