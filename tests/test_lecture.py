"""The lecture's worked examples (notebooks/lecture.md), recomputed.

The slides reached us through OCR and some printed numbers are wrong; every
expected value below was recomputed from the definition (cross-correlation,
zero padding) and, where it differs from the slide, the comment says so (see
notebooks/lecture.md, "Slide errata"). All values are small integers, exact in float32
and float64, so they are compared exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import reference

#: The algorithms that sum the products exactly as the definition does, so that the
#: lecture's integer examples come out exact. Winograd's transforms round (1e-16
#: relative in float64): it is checked against the same definitions with a tolerance
#: in test_conv2d.py.
ALGORITHMS = [a for a in fastconv.available_algorithms("conv2d") if a != "winograd"]
DTYPES = [np.float32, np.float64]

#: The "X" kernel of the padding and stride examples.
X3 = [[1, 0, 1],
      [0, 1, 0],
      [1, 0, 1]]


def conv(image, kernel, algorithm, dtype=np.float64, **kwargs):
    """One single-channel image through one single-channel filter, as 2-D arrays."""
    x = np.asarray(image, dtype)[None, None]
    w = np.asarray(kernel, dtype)[None, None]
    y = fastconv.conv2d(x, w, algorithm=algorithm, **kwargs)
    assert y.dtype == dtype
    return y[0, 0]


algorithms_and_dtypes = pytest.mark.parametrize(
    "algorithm, dtype",
    [(a, d) for a in ALGORITHMS for d in DTYPES],
    ids=[f"{a}-{np.dtype(d).name}" for a in ALGORITHMS for d in DTYPES],
)


@algorithms_and_dtypes
def test_local_connection_example(algorithm, dtype):
    # "局部连接": 5x5 binary image, X kernel; the slide shows only the first
    # output (4); the rest is from the definition.
    image = [[1, 1, 1, 0, 0],
             [0, 1, 1, 1, 0],
             [0, 0, 1, 1, 1],
             [0, 0, 1, 1, 0],
             [0, 1, 1, 0, 0]]
    y = conv(image, X3, algorithm, dtype)
    assert y[0, 0] == 4
    np.testing.assert_array_equal(y, [[4, 3, 4], [2, 4, 3], [2, 3, 4]])


@algorithms_and_dtypes
def test_elementwise_product_sum_example(algorithm, dtype):
    # "卷积操作" (a)-(d): 0x1 + 1x2 + 2x4 + 3x5 = 25, ... = 31, 43, 49
    image = [[1, 2, 3],
             [4, 5, 6],
             [7, 8, 9]]
    np.testing.assert_array_equal(conv(image, [[0, 1], [2, 3]], algorithm, dtype),
                                  [[25, 31], [43, 49]])


@algorithms_and_dtypes
def test_4x4_example(algorithm, dtype):
    image = [[1, 1, 1, 1],
             [1, 1, 0, 1],
             [1, 0, 1, 0],
             [0, 1, 0, 1]]
    np.testing.assert_array_equal(conv(image, X3, algorithm, dtype), [[5, 2], [1, 5]])


SIX_BY_SIX = [[1, 1, 1, 1, 0, 0],
              [1, 1, 0, 1, 1, 0],
              [1, 0, 1, 0, 0, 0],
              [0, 1, 0, 1, 1, 1],
              [0, 0, 1, 1, 0, 1],
              [0, 1, 1, 1, 0, 1]]


@algorithms_and_dtypes
def test_6x6_without_padding(algorithm, dtype):
    # "Padding操作": output size 6 - 3 + 1 = 4
    y = conv(SIX_BY_SIX, X3, algorithm, dtype)
    np.testing.assert_array_equal(y, [[5, 2, 3, 2],
                                      [1, 5, 2, 3],
                                      [4, 1, 3, 3],
                                      [1, 5, 3, 4]])


@algorithms_and_dtypes
def test_6x6_with_padding_1(algorithm, dtype):
    # Output size 6 + 2 - 3 + 1 = 6. The slide shows row 3 as [2,1,5,2,3,2] and
    # row 6 as [0,1,2,2,2,1]; the definition gives 3 and 2 in those places.
    y = conv(SIX_BY_SIX, X3, algorithm, dtype, padding=1)
    assert y.shape == (6, 6)
    np.testing.assert_array_equal(y[2], [3, 1, 5, 2, 3, 2])
    np.testing.assert_array_equal(y[5], [0, 2, 2, 2, 2, 1])
    np.testing.assert_array_equal(y, [[2, 2, 3, 2, 1, 1],
                                      [2, 5, 2, 3, 2, 0],
                                      [3, 1, 5, 2, 3, 2],
                                      [0, 4, 1, 3, 3, 1],
                                      [2, 1, 5, 3, 4, 2],
                                      [0, 2, 2, 2, 2, 1]])
    # padding keeps the unpadded result in the interior
    np.testing.assert_array_equal(y[1:-1, 1:-1], conv(SIX_BY_SIX, X3, algorithm, dtype))
    # and equals an explicitly zero-padded 8x8 input (the slide's middle matrix)
    padded = np.pad(np.array(SIX_BY_SIX), 1)
    assert padded.shape == (8, 8)
    np.testing.assert_array_equal(conv(padded, X3, algorithm, dtype), y)


@algorithms_and_dtypes
def test_5x5_stride_2_padding_1(algorithm, dtype):
    # "卷积计算输出大小计算公式": (5 + 2*1 - 3) / 2 + 1 = 3. The slide's first row
    # reads [2, 2, 1]; the definition gives [2, 3, 1].
    image = [[1, 1, 1, 1, 0],
             [1, 1, 0, 1, 1],
             [1, 0, 1, 0, 0],
             [0, 1, 0, 1, 1],
             [0, 0, 1, 1, 0]]
    y = conv(image, X3, algorithm, dtype, stride=2, padding=1)
    np.testing.assert_array_equal(y, [[2, 3, 1], [3, 5, 2], [1, 3, 1]])
    # stride 2 keeps every other output of stride 1
    np.testing.assert_array_equal(y, conv(image, X3, algorithm, dtype, padding=1)[::2, ::2])


# --- the handwritten "X" images ---------------------------------------------------

X5 = [[1, -1, -1, -1, 1],
      [-1, 1, -1, 1, -1],
      [-1, -1, 1, -1, -1],
      [-1, 1, -1, 1, -1],
      [1, -1, -1, -1, 1]]

HANDWRITTEN_X_241 = [[241, 0, 0, 0, 241],
                     [229, 241, 242, 242, 243],
                     [0, 240, 242, 242, 0],
                     [242, 242, 237, 241, 0],
                     [0, 0, 0, 0, 242]]
HANDWRITTEN_X_230 = [[230, 0, 0, 0, 240],
                     [0, 205, 232, 240, 27],
                     [0, 0, 236, 0, 0],
                     [225, 219, 238, 237, 0],
                     [0, 0, 0, 239, 0]]


@algorithms_and_dtypes
def test_handwritten_x_scores(algorithm, dtype):
    # The slide prints 646 under the first image and 257 under the second; the
    # element-wise products it shows sum to 257 and 646 respectively.
    assert conv(HANDWRITTEN_X_241, X5, algorithm, dtype).tolist() == [[257]]
    assert conv(HANDWRITTEN_X_230, X5, algorithm, dtype).tolist() == [[646]]
    # both at once: a batch of two images
    x = np.array([HANDWRITTEN_X_241, HANDWRITTEN_X_230], dtype)[:, None]
    y = fastconv.conv2d(x, np.array(X5, dtype)[None, None], algorithm=algorithm)
    assert y.reshape(-1).tolist() == [257, 646]


def test_handwritten_x_products_on_the_slide():
    # The slide's element-wise product of the first image with the kernel
    products = np.array([[241, 0, 0, 0, 241],
                         [-229, 241, -242, 242, -243],
                         [0, -240, 242, -242, 0],
                         [-242, 242, -237, 241, 0],
                         [0, 0, 0, 0, 242]])
    np.testing.assert_array_equal(np.multiply(HANDWRITTEN_X_241, X5), products)
    assert reference.conv2d(np.array(HANDWRITTEN_X_241, float)[None, None],
                            np.array(X5, float)[None, None]).item() == products.sum() == 257


# --- the 7x7 handwritten digits and the cross-feature kernel ("交叉特征") ----------------

X7 = [[1, 1, -1, -1, -1, 1, 1],
      [1, 1, 1, -1, 1, 1, 1],
      [-1, 1, 1, 1, 1, 1, -1],
      [-1, -1, 1, 1, 1, -1, -1],
      [-1, 1, 1, 1, 1, 1, -1],
      [1, 1, 1, -1, 1, 1, 1],
      [1, 1, -1, -1, -1, 1, 1]]

DIGITS_7X7 = [
    [[165, 253, 180, 5, 0, 151, 238],
     [212, 253, 168, 0, 100, 247, 249],
     [185, 253, 209, 122, 241, 253, 69],
     [0, 189, 254, 254, 254, 132, 0],
     [0, 142, 253, 253, 253, 202, 140],
     [56, 231, 183, 96, 148, 234, 254],
     [230, 239, 39, 0, 0, 122, 254]],
    [[204, 47, 0, 0, 0, 28, 208],
     [253, 230, 115, 5, 35, 200, 253],
     [220, 254, 254, 229, 230, 254, 0],
     [0, 199, 253, 253, 254, 253, 0],
     [241, 253, 253, 223, 156, 241, 253],
     [253, 241, 145, 17, 0, 126, 253],
     [243, 67, 0, 0, 0, 2, 184]],
    [[0, 0, 0, 0, 246, 254, 28],
     [254, 254, 254, 254, 254, 162, 1],
     [109, 133, 230, 254, 254, 198, 0],
     [0, 0, 203, 254, 254, 0, 0],
     [0, 17, 232, 224, 121, 254, 0],
     [0, 155, 254, 102, 4, 240, 241],
     [1, 192, 225, 14, 0, 239, 246]],
    [[234, 103, 6, 0, 0, 154, 225],
     [195, 254, 184, 24, 129, 235, 35],
     [0, 101, 240, 254, 254, 66, 0],
     [0, 0, 172, 254, 254, 108, 0],
     [2, 154, 253, 98, 190, 254, 104],
     [91, 254, 131, 0, 13, 212, 225],
     [238, 254, 29, 0, 0, 55, 244]],
]

#: The sums of the slide's "特征提取" (element-wise product) matrices; the slide
#: prints the products, not their sums. Its product matrices agree entry by
#: entry with image * kernel.
DIGIT_SCORES = [5895, 5006, 4711, 5736]


@algorithms_and_dtypes
def test_digit_feature_extraction(algorithm, dtype):
    x = np.array(DIGITS_7X7, dtype)[:, None]  # four images, one channel
    w = np.array(X7, dtype)[None, None]
    y = fastconv.conv2d(x, w, algorithm=algorithm)
    assert y.shape == (4, 1, 1, 1)
    assert y.reshape(-1).tolist() == DIGIT_SCORES


def test_digit_products_on_the_slide():
    # first image's row 1 and row 3 of the slide's product matrix
    products = np.multiply(DIGITS_7X7[0], X7)
    assert products[0].tolist() == [165, 253, -180, -5, 0, 151, 238]
    assert products[2].tolist() == [-185, 253, 209, 122, 241, 253, -69]
    assert products.sum() == DIGIT_SCORES[0]


# --- Sobel kernels ("不同卷积核的效果") ---

SOBEL_HORIZONTAL_LINES = [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]  # "发现水平直线"
SOBEL_VERTICAL_LINES = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]   # "发现垂直直线"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_sobel_kernels_find_their_edges(algorithm):
    # An image dark on the left three columns and bright on the right three:
    # one vertical edge. Each window row contributes 1*(right - left) * (1, 2, 1).
    vertical_edge = np.array([[0, 0, 0, 1, 1, 1]] * 6, np.float64)
    x = np.stack([vertical_edge, vertical_edge.T])[:, None]  # batch: vertical, horizontal edge
    w = np.array([SOBEL_VERTICAL_LINES, SOBEL_HORIZONTAL_LINES], np.float64)[:, None]
    y = fastconv.conv2d(x, w, algorithm=algorithm)
    assert y.shape == (2, 2, 4, 4)
    np.testing.assert_array_equal(y[0, 0], [[0, 4, 4, 0]] * 4)  # vertical kernel, vertical edge
    np.testing.assert_array_equal(y[0, 1], np.zeros((4, 4)))   # horizontal kernel sees nothing
    np.testing.assert_array_equal(y[1, 1], np.array([[0, 4, 4, 0]] * 4).T)
    np.testing.assert_array_equal(y[1, 0], np.zeros((4, 4)))


# --- multi-channel convolution and bias -------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_multichannel_is_the_sum_over_channels_plus_bias(algorithm, rng):
    # Z^p = sum_d W^{p,d} (x) X^d + b^p: an RGB image, two filters with one bias each
    x = rng.integers(0, 256, (1, 3, 7, 7)).astype(np.float64)
    w = rng.integers(-2, 3, (2, 3, 3, 3)).astype(np.float64)
    b = np.array([0.5, -3.0])
    y = fastconv.conv2d(x, w, b, padding=1, algorithm=algorithm)
    for p in range(2):
        per_channel = sum(conv(x[0, d], w[p, d], algorithm, padding=1) for d in range(3))
        np.testing.assert_array_equal(y[0, p], per_channel + b[p])


# --- output-size formula ------------------------------------------------------------


def test_output_size_examples():
    size = fastconv.conv_output_size
    assert size(6, 3) == 6 - 3 + 1 == 4                          # 6x6, 3x3
    assert size(6, 3, padding=1) == 6 + 2 - 3 + 1 == 6            # p = 1
    assert size(5, 3, stride=2, padding=1) == (5 + 2 * 1 - 3) // 2 + 1 == 3
    assert size((6, 6), (3, 3), padding=1) == (6, 6)
    # "感受野大小计算": 5x5 -> 3x3 -> 1x1 and 7x7 -> 5x5 -> 3x3 -> 1x1
    assert size(5, 3) == 3 and size(3, 3) == 1
    assert size(7, 3) == 5 and size(5, 3) == 3 and size(3, 3) == 1
    # "池化层步长": 4x4 input, 2x2 window: stride 1 -> 3x3, stride 2 -> 2x2
    assert size(4, 2, stride=1) == 3
    assert size(4, 2, stride=2) == 2
    assert size((4, 4), 2, stride=2) == (2, 2)


# --- receptive field ----------------------------------------------------------------

#: The lecture's table: (kernel_size, stride) from the input to the output
LECTURE_LAYERS = [("conv1", 3, 1), ("pool1", 2, 2), ("conv2", 3, 1), ("pool2", 2, 2),
                  ("conv3", 3, 1), ("conv4", 3, 1), ("pool3", 2, 2)]


def test_receptive_field_of_stacked_3x3_convs():
    assert fastconv.receptive_field([(3, 1)]) == 3
    assert fastconv.receptive_field([(3, 1), (3, 1)]) == 5       # 5x5 input -> 1x1
    assert fastconv.receptive_field([(3, 1)] * 3) == 7           # 7x7 input -> 1x1


def test_receptive_field_table():
    layers = [(k, s) for _, k, s in LECTURE_LAYERS]
    assert fastconv.receptive_field(layers) == 30
    # The lecture walks back from pool3: RF_i = (RF_{i+1} - 1) * stride_i + k_i, i.e.
    # the field of one pool3 unit measured on the input of layer i.
    walked_back = {"pool3": 2, "conv4": 4, "conv3": 6, "pool2": 12, "conv2": 14,
                   "pool1": 28, "conv1": 30}
    field = 1
    for i in reversed(range(len(layers))):
        name, kernel, stride = LECTURE_LAYERS[i]
        field = (field - 1) * stride + kernel
        assert field == walked_back[name]
        assert fastconv.receptive_field(layers[i:]) == walked_back[name]
    # Forwards: the field on the image of one unit of each layer.
    forwards = {"conv1": 3, "pool1": 4, "conv2": 8, "pool2": 10, "conv3": 18,
                "conv4": 26, "pool3": 30}
    for i, (name, _, _) in enumerate(LECTURE_LAYERS):
        assert fastconv.receptive_field(layers[: i + 1]) == forwards[name]


def test_receptive_field_table_measured_with_conv2d():
    # Measure the field instead of computing it: push one impulse per input pixel
    # through the lecture's network, with each 2x2/s2 pooling written as an
    # average-pooling convolution, and see which pixels reach the single output.
    size = 32  # 32 -> 30 -> 15 -> 13 -> 6 -> 4 -> 2 -> 1
    x = np.eye(size * size).reshape(size * size, 1, size, size)
    for _, kernel, stride in LECTURE_LAYERS:
        w = np.full((1, 1, kernel, kernel), 1.0 / kernel**2)
        x = fastconv.conv2d(x, w, stride=stride)
    assert x.shape == (size * size, 1, 1, 1)
    reached = (x.reshape(size, size) > 0)
    rows, cols = np.nonzero(reached)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (0, 29, 0, 29)
    assert reached[:30, :30].all()


# --- back-propagation identities ("卷积网络的梯度反向传播") ---


def test_gradients_are_correlations(rng):
    # The lecture's setting: a^1 is 3x3, w^2 is 2x2, net^2 = conv(w^2, a^1) + w_b is 2x2.
    # E = sum(delta * net) has dE/dnet = delta; as E is linear in w, b and a, one
    # unit step of a parameter changes E by exactly its gradient.
    a = rng.integers(-5, 6, (3, 3)).astype(np.float64)
    w = rng.integers(-5, 6, (2, 2)).astype(np.float64)
    delta = rng.integers(-5, 6, (2, 2)).astype(np.float64)

    def loss(a_, w_, bias):
        return float(np.sum(delta * (conv(a_, w_, "auto") + bias)))

    base = loss(a, w, 0.0)

    def unit(shape, i, j):
        step = np.zeros(shape)
        step[i, j] = 1.0
        return step

    # dE/dw_{m,n} = sum_ij delta_ij a_{i+m, j+n}: the correlation of a with delta
    grad_w = np.array([[loss(a, w + unit(w.shape, m, n), 0.0) - base for n in range(2)]
                       for m in range(2)])
    np.testing.assert_array_equal(grad_w, conv(a, delta, "auto"))
    assert grad_w[0, 0] == (delta * a[:2, :2]).sum()

    # dE/dw_b = sum_ij delta_ij
    assert loss(a, w, 1.0) - base == delta.sum()

    # dE/da: a "full" correlation of delta with the flipped kernel; the lecture's
    # delta^1_{1,2} (1-based) = delta_11 w_12 + delta_12 w_11 (before f').
    grad_a = np.array([[loss(a + unit(a.shape, i, j), w, 0.0) - base for j in range(3)]
                       for i in range(3)])
    assert grad_a[0, 1] == delta[0, 0] * w[0, 1] + delta[0, 1] * w[0, 0]
    np.testing.assert_array_equal(grad_a, conv(delta, w[::-1, ::-1], "auto", padding=1))
