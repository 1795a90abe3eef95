"""Run as a script in a fresh process (importing it runs nothing):
``fastconv.warmup(dtypes=(np.float32,))``, then calls of every public op at small and
large sizes (serial and threaded kernels), with each algorithm; prints each Numba
function that compiled after the warm-up and exits 1 if any did.

``tests/test_dispatch.py`` runs it beside the suite with an empty Numba cache.
"""

from __future__ import annotations

import sys

import numpy as np

#: (N, C, H, W), (K, C/groups, R, S), keyword arguments: serial- and threaded-sized calls
CONVS = [
    ((2, 4, 6, 6), (8, 4, 3, 3), {"padding": 1}),
    ((2, 2, 6, 6), (2, 2, 3, 3), {"padding": 1}),
    ((1, 1, 8, 8), (16, 1, 3, 3), {"padding": 1}),
    ((8, 16, 32, 32), (32, 16, 3, 3), {"padding": 1}),
    ((8, 64, 14, 14), (64, 64, 3, 3), {"padding": 1}),
    ((4, 32, 20, 20), (64, 32, 1, 1), {}),
    ((4, 16, 33, 31), (32, 16, 3, 3), {"stride": 2, "padding": 1}),
    ((4, 16, 24, 24), (16, 16, 3, 3), {"dilation": 2, "padding": 2}),
    ((4, 16, 24, 24), (16, 8, 3, 3), {"groups": 2, "padding": 1}),
    ((4, 32, 24, 24), (32, 1, 3, 3), {"groups": 32, "padding": 1}),
    ((4, 32, 24, 24), (32, 1, 5, 5), {"groups": 32, "padding": 2}),
    ((4, 32, 24, 24), (32, 1, 3, 3), {"groups": 32, "stride": 2, "padding": 1}),
    ((1, 4, 9, 9), (8, 1, 3, 3), {"groups": 4, "stride": 2}),
    ((2, 3, 9, 9), (2, 3, 5, 5), {"stride": 2}),
    # few taps per filter: direct's weight gradient as dot products (cpu.fewtaps)
    ((8, 3, 32, 32), (4, 3, 3, 3), {"padding": 1}),
    ((8, 3, 64, 64), (4, 3, 3, 3), {"stride": 2, "padding": 1}),
]
#: conv_transpose2d: input shape, weight shape, stride
TRANSPOSED = [((8, 128, 16, 16), (128, 64, 4, 4), 2), ((2, 4, 5, 5), (4, 4, 3, 3), 1)]
POOLED = [(2, 4, 6, 6), (32, 16, 8, 8), (8, 64, 32, 32)]


def main() -> int:
    from numba.core import event

    import fastconv
    from fastconv.dispatch import available_algorithms

    fastconv.warmup(dtypes=(np.float32,))
    compiled: list[str] = []

    class Listener(event.Listener):
        def on_start(self, ev):
            pass

        def on_end(self, ev):
            function = ev.data["dispatcher"].py_func
            compiled.append(f"{function.__module__}.{function.__qualname__} {ev.data['args']}")

    event.register("numba:compile", Listener())
    rng = np.random.default_rng(0)

    def array(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def algorithms(op):
        return ["auto", *(a for a in available_algorithms(op) if a not in ("auto", "reference"))]

    for x_shape, w_shape, kwargs in CONVS:
        x, w, b = array(*x_shape), array(*w_shape), array(w_shape[0])
        for algorithm in algorithms("conv2d"):
            try:
                y = fastconv.conv2d(x, w, b, algorithm=algorithm, **kwargs)
            except ValueError:  # not this algorithm's case
                continue
            fastconv.conv2d(x, w, b, algorithm=algorithm, activation="relu", **kwargs)
            try:
                fastconv.conv2d_backward(y, x, w, algorithm=algorithm, **kwargs)
            except ValueError:  # winograd's gradients: stride 1 only
                continue
    for x_shape, w_shape, stride in TRANSPOSED:
        x, w = array(*x_shape), array(*w_shape)
        y = fastconv.conv_transpose2d(x, w, array(w_shape[1]), stride=stride, padding=1)
        fastconv.conv_transpose2d_backward(y, x, w, stride=stride, padding=1)
    for shape in POOLED:
        x = array(*shape)
        for algorithm in algorithms("max_pool2d"):
            for args in ((2,), (3, 2, 1), (3, 1, 1, 2)):
                y, where = fastconv.max_pool2d(x, *args, return_indices=True, algorithm=algorithm)
                fastconv.max_pool2d(x, *args, algorithm=algorithm)
                fastconv.max_pool2d_backward(y, where, x.shape, algorithm=algorithm)
                if len(args) < 4:
                    fastconv.max_unpool2d(y, where, *args, output_size=x.shape[2:])
                    fastconv.max_unpool2d_backward(x, where)
        for args in ((2,), (3, 2, 1), (3, 2, 1, True, False), (3, 2, 1, False, True, 5)):
            y = fastconv.avg_pool2d(x, *args)
            fastconv.avg_pool2d_backward(y, x.shape, *args)
        fastconv.repeat_unpool2d_backward(fastconv.repeat_unpool2d(x, 2), 2)
    for name in dict.fromkeys(compiled):
        print(name)
    return 1 if compiled else 0


if __name__ == "__main__":
    sys.exit(main())
