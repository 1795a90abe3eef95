"""fastconv.shapes, conv_output_size and receptive_field: invariants over random
arguments, every argument form, errors, and PyTorch's own output shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import shapes
from tests.cases import explicit_padding

size = fastconv.conv_output_size

sizes = st.integers(1, 64)
kernels = st.integers(1, 8)
strides = st.integers(1, 5)
pads = st.integers(0, 8)
dilations = st.integers(1, 4)


def effective(k: int, d: int) -> int:
    """Span of a kernel of k taps, d apart."""
    return d * (k - 1) + 1


# --- one axis: floor mode -------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(n=sizes, k=kernels, s=strides, before=pads, after=pads, d=dilations)
def test_floor_mode_invariant(n, k, s, before, after, d):
    padded = n + before + after
    if padded < effective(k, d):
        with pytest.raises(ValueError, match="larger than the padded input"):
            size(n, k, stride=s, padding=(before, after), dilation=d)
        return
    out = size(n, k, stride=s, padding=(before, after), dilation=d)
    assert isinstance(out, int) and out >= 1
    # the last window fits, and one more stride would not
    assert (out - 1) * s + effective(k, d) <= padded < out * s + effective(k, d)
    # by counting window starts
    assert out == sum(1 for start in range(padded) if start % s == 0
                      and start + effective(k, d) <= padded)


@settings(max_examples=100, deadline=None)
@given(n=sizes, k=kernels, s=strides, p=pads, d=dilations)
def test_int_padding_means_both_sides(n, k, s, p, d):
    assume(n + 2 * p >= effective(k, d))
    assert size(n, k, s, p, d) == size(n, k, s, (p, p), d) == size(n, k, s, [p, p], d)
    assert size(n, k, s, p, d) == math.floor((n + 2 * p - effective(k, d)) / s) + 1


# --- one axis: ceil mode -----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(n=sizes, k=kernels, s=strides, before=pads, after=pads, d=dilations)
def test_ceil_mode_rule(n, k, s, before, after, d):
    eff = effective(k, d)
    assume(after < eff)  # so every floor-mode window starts inside the input or left padding
    padded = n + before + after
    assume(padded >= eff)
    floor_out = size(n, k, stride=s, padding=(before, after), dilation=d)
    ceil_out = size(n, k, stride=s, padding=(before, after), dilation=d, ceil_mode=True)
    assert ceil_out in (floor_out, floor_out + 1)
    # the last window starts inside the input or its left padding
    assert (ceil_out - 1) * s < n + before
    # one extra, partial window exactly when floor mode leaves a remainder that a
    # window starting inside the input or left padding can cover
    extra = (padded - eff) % s != 0 and floor_out * s < n + before
    assert ceil_out == floor_out + extra


@settings(max_examples=300, deadline=None)
@given(n=sizes, k=kernels, s=strides, before=pads, after=pads, d=dilations)
def test_ceil_mode_last_window_never_starts_in_right_padding(n, k, s, before, after, d):
    # The documented rule, for any padding. Padding as wide as the window may be
    # rejected instead (PyTorch's pooling allows at most half the window).
    eff = effective(k, d)
    assume(n + before + after >= eff)
    try:
        ceil_out = size(n, k, stride=s, padding=(before, after), dilation=d, ceil_mode=True)
    except ValueError:
        assert max(before, after) >= eff
        return
    assert (ceil_out - 1) * s < n + before


def test_ceil_mode_with_right_padding_wider_than_the_window():
    # n=1, k=1, padding (0, 2): floor mode has windows starting at 0, 1, 2; the last
    # two start in the right padding, so ceil mode must drop them (-> 1) or reject.
    try:
        out = size(1, 1, padding=(0, 2), ceil_mode=True)
    except ValueError:
        return
    assert out == 1


def test_ceil_mode_examples():
    assert size(5, 2, stride=2) == 2
    assert size(5, 2, stride=2, ceil_mode=True) == 3
    assert size(4, 2, stride=2, ceil_mode=True) == 2  # no remainder
    assert size(6, 3, stride=2, padding=1, ceil_mode=True) == 4
    # the window that would start in the right padding is dropped: n=5, p=1, k=2, s=2
    # floor gives starts 0, 2, 4; ceil would add 6 >= 5 + 1 in the right padding
    assert size(5, 2, stride=2, padding=1) == 3
    assert size(5, 2, stride=2, padding=1, ceil_mode=True) == 3


# --- "same" ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(n=sizes, k=kernels, s=strides, d=dilations)
def test_same_padding(n, k, s, d):
    out = math.ceil(n / s)
    assert size(n, k, stride=s, padding="same", dilation=d) == out
    before, after = shapes.same_padding(n, k, s, d)
    assert 0 <= before and after - before in (0, 1)  # the odd extra pad goes at the end
    total = before + after
    assert size(n, k, stride=s, padding=(before, after), dilation=d) == out
    if total:  # and it is the least padding that does so
        assert (n + total - 1 - effective(k, d)) // s + 1 < out
    assert total == max(0, (out - 1) * s + effective(k, d) - n)
    # the 2-D normaliser splits each axis the same way
    assert shapes.padding2d("same", (n, 7), (k, 3), (s, 1), (d, 1))[0] == (before, after)


def test_same_padding_examples():
    assert shapes.same_padding(5, 3) == (1, 1)
    assert shapes.same_padding(5, 4) == (1, 2)          # even kernel: extra at the end
    assert shapes.same_padding(7, 4, stride=2) == (1, 2)
    assert shapes.same_padding(6, 3, stride=2) == (0, 1)
    assert shapes.same_padding(10, 1, stride=3) == (0, 0)
    assert shapes.same_padding(11, 1, stride=3) == (0, 0)  # would be -1: clamped
    assert shapes.same_padding(5, 3, dilation=2) == (2, 2)
    assert size((5, 8), (3, 4), stride=(1, 3), padding="same") == (5, 3)
    assert size(5, 3, padding="valid") == 3


# --- 2-D forms ---------------------------------------------------------------------------

padding_forms = st.one_of(
    st.integers(0, 3),
    st.tuples(st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)),
              st.tuples(st.integers(0, 3), st.integers(0, 3))),
    st.sampled_from(["valid", "same"]),
)


def int_or_pair(values):
    return st.one_of(values, st.tuples(values, values))


def as_pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


@settings(max_examples=200, deadline=None)
@given(hw=st.tuples(st.integers(1, 30), st.integers(1, 30)), k=int_or_pair(st.integers(1, 6)),
       s=int_or_pair(st.integers(1, 4)), p=padding_forms, d=int_or_pair(st.integers(1, 3)))
def test_pair_forms_are_two_axes(hw, k, s, p, d):
    (top, bottom), (left, right) = explicit_padding(p, hw, k, s, d)
    assert shapes.padding2d(p, hw, as_pair(k), as_pair(s), as_pair(d)) == ((top, bottom),
                                                                           (left, right))
    axes = [(hw[0], as_pair(k)[0], as_pair(s)[0], (top, bottom), as_pair(d)[0]),
            (hw[1], as_pair(k)[1], as_pair(s)[1], (left, right), as_pair(d)[1])]
    if any(n + sum(pp) < effective(kk, dd) for n, kk, _, pp, dd in axes):
        with pytest.raises(ValueError):
            size(hw, k, s, p, d)
        return
    expected = tuple(size(n, kk, ss, pp, dd) for n, kk, ss, pp, dd in axes)
    assert size(hw, k, s, p, d) == expected
    # lists and numpy integers are the same as tuples and ints
    as_list = lambda v: [as_list(x) for x in v] if isinstance(v, tuple) else v  # noqa: E731
    assert size(list(hw), as_list(k), as_list(s), as_list(p), as_list(d)) == expected
    assert size(tuple(np.int64(v) for v in hw), k, s, p, d) == expected


def test_pair_normaliser():
    assert shapes.pair(3, "stride") == (3, 3)
    assert shapes.pair((1, 2), "stride") == (1, 2)
    assert shapes.pair([2, 1], "stride") == (2, 1)
    assert shapes.pair(np.int64(2), "stride") == (2, 2)
    assert shapes.pair((0, 1), "padding", minimum=0) == (0, 1)
    assert all(type(v) is int for v in shapes.pair((np.int32(1), np.int64(2)), "stride"))
    with pytest.raises(TypeError, match="stride.*True"):
        shapes.pair(True, "stride")
    # a one-element tuple is both axes, as in PyTorch's conv2d and pooling
    assert shapes.pair((2,), "stride") == shapes.pair([2], "stride") == (2, 2)
    with pytest.raises(ValueError, match=r"stride.*\(1,\)"):
        shapes.pair((1,), "stride", single=False)
    with pytest.raises(ValueError, match=r"stride.*\(\)"):
        shapes.pair((), "stride")
    with pytest.raises(ValueError, match=r"stride.*positive.*\(1, 0\)"):
        shapes.pair((1, 0), "stride")


def test_padding2d_forms():
    p2 = lambda p: shapes.padding2d(p, (9, 9), (3, 3), (1, 1), (1, 1))  # noqa: E731
    assert p2(0) == p2("valid") == ((0, 0), (0, 0))
    assert p2(2) == ((2, 2), (2, 2))
    assert p2((2, 1)) == p2([2, 1]) == ((2, 2), (1, 1))
    assert p2(((0, 1), (2, 3))) == p2([[0, 1], [2, 3]]) == ((0, 1), (2, 3))
    assert p2("same") == ((1, 1), (1, 1))


# --- conv2d agrees with conv_output_size ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(hw=st.tuples(st.integers(1, 16), st.integers(1, 16)),
       k=st.tuples(st.integers(1, 5), st.integers(1, 5)),
       s=int_or_pair(st.integers(1, 3)), p=padding_forms, d=int_or_pair(st.integers(1, 3)))
def test_conv2d_output_shape_is_conv_output_size(hw, k, s, p, d):
    try:
        expected = size(hw, k, s, p, d)
    except ValueError:
        expected = None
    x = np.ones((2, 1, *hw), np.float32)
    w = np.ones((3, 1, *k), np.float32)
    if expected is None:
        with pytest.raises(ValueError):
            fastconv.conv2d(x, w, stride=s, padding=p, dilation=d)
        return
    assert fastconv.conv2d(x, w, stride=s, padding=p, dilation=d).shape == (2, 3, *expected)
    assert fastconv.conv2d(x[0], w, stride=s, padding=p, dilation=d).shape == (3, *expected)


# --- against PyTorch --------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 40), k=kernels, s=strides, p=st.integers(0, 4), d=dilations)
def test_floor_mode_matches_torch_conv2d(n, k, s, p, d):
    torch = pytest.importorskip("torch")
    assume(n + 2 * p >= effective(k, d))
    y = torch.nn.functional.conv2d(torch.zeros(1, 1, n, 1), torch.zeros(1, 1, k, 1),
                                   stride=(s, 1), padding=(p, 0), dilation=(d, 1))
    assert size(n, k, stride=s, padding=p, dilation=d) == y.shape[2]


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 40), k=kernels, s=strides, d=dilations, data=st.data())
def test_ceil_mode_matches_torch_max_pool2d(n, k, s, d, data):
    torch = pytest.importorskip("torch")
    p = data.draw(st.integers(0, k // 2))  # torch's limit on pooling padding
    assume(n + 2 * p >= effective(k, d))
    for ceil_mode in (False, True):
        y = torch.nn.functional.max_pool2d(torch.zeros(1, 1, n, 1), (k, 1), stride=(s, 1),
                                           padding=(p, 0), dilation=(d, 1), ceil_mode=ceil_mode)
        assert size(n, k, stride=s, padding=p, dilation=d, ceil_mode=ceil_mode) == y.shape[2]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
def test_same_matches_torch_for_stride_1():
    torch = pytest.importorskip("torch")
    for n in range(1, 12):
        for k in range(1, 8):
            for d in (1, 2, 3):
                y = torch.nn.functional.conv2d(torch.zeros(1, 1, n, 1), torch.zeros(1, 1, k, 1),
                                               padding="same", dilation=(d, 1))
                assert size(n, k, padding="same", dilation=d) == y.shape[2] == n


# --- receptive field ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.tuples(kernels, strides), st.tuples(kernels, strides, dilations)),
                max_size=8))
def test_receptive_field_is_the_walk_back(layers):
    # RF_i = (RF_{i+1} - 1) * stride_i + span_i, from the output back to the input
    field = 1
    for layer in reversed(layers):
        k, s = layer[0], layer[1]
        d = layer[2] if len(layer) == 3 else 1
        field = (field - 1) * s + effective(k, d)
    assert fastconv.receptive_field(layers) == field
    assert fastconv.receptive_field([list(layer) for layer in layers]) == field


def test_receptive_field_examples():
    assert fastconv.receptive_field([]) == 1
    assert fastconv.receptive_field([(3, 1, 2)]) == 5
    assert fastconv.receptive_field([(7, 2), (3, 2), (3, 1)]) == 7 + 2 * 2 + 2 * 4


@pytest.mark.parametrize("layers, error, match", [
    (None, TypeError, "layers must be a sequence"),
    ("3,1", TypeError, "layers must be a sequence"),
    (3, TypeError, "layers must be a sequence"),
    ([(3,)], ValueError, r"layers\[0\].*\(3,\)"),
    ([(3, 1), (3, 0)], ValueError, r"layers\[1\].*positive.*\(3, 0\)"),
    ([(3, 1, 0)], ValueError, r"layers\[0\].*\(3, 1, 0\)"),
    ([(3, 1, 1, 1)], ValueError, r"layers\[0\]"),
    ([3], ValueError, r"layers\[0\].*got 3"),
    ([(3.0, 1)], ValueError, r"layers\[0\].*3\.0"),
    ([(True, 1)], ValueError, r"layers\[0\].*True"),
    ([(-3, 1)], ValueError, r"layers\[0\].*-3"),
])
def test_receptive_field_errors(layers, error, match):
    with pytest.raises(error, match=match):
        fastconv.receptive_field(layers)


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((0, 3), {}, ValueError, r"size.*positive.*got 0"),
    ((-4, 3), {}, ValueError, r"size.*got -4"),
    ((True, 3), {}, (ValueError, TypeError), r"size.*got True"),
    ((5.0, 3), {}, (ValueError, TypeError), r"size.*got 5\.0"),
    (("5", 3), {}, (ValueError, TypeError), r"size.*got '5'"),
    (((5,), 3), {}, ValueError, r"size.*pair.*\(5,\)"),
    (((5, 5, 5), 3), {}, ValueError, r"size.*\(5, 5, 5\)"),
    ((5, 0), {}, ValueError, r"kernel_size.*positive.*got 0"),
    ((5, True), {}, TypeError, r"kernel_size.*True"),
    (((5, 5), (3, 3, 3)), {}, ValueError, r"kernel_size.*\(3, 3, 3\)"),
    ((5, 3), dict(stride=0), ValueError, r"stride.*positive.*got 0"),
    ((5, 3), dict(stride=-1), ValueError, r"stride.*got -1"),
    ((5, 3), dict(stride=1.5), TypeError, r"stride.*got 1\.5"),
    (((5, 5), 3), dict(stride=(1, 0)), ValueError, r"stride.*\(1, 0\)"),
    ((5, 3), dict(dilation=0), ValueError, r"dilation.*positive.*got 0"),
    ((5, 3), dict(padding=-1), ValueError, r"padding.*non-negative.*got -1"),
    ((5, 3), dict(padding=(1, -1)), ValueError, r"padding.*\(1, -1\)"),
    ((5, 3), dict(padding=(1, 2, 3)), ValueError, r"padding.*\(1, 2, 3\)"),
    ((5, 3), dict(padding=1.0), TypeError, r"padding.*1\.0"),
    ((5, 3), dict(padding=None), TypeError, r"padding.*None"),
    ((5, 3), dict(padding="full"), ValueError, r"padding.*'valid' or 'same'.*'full'"),
    (((5, 5), 3), dict(padding=((1, 1),)), ValueError, r"padding.*\(\(1, 1\),\)"),
    (((5, 5), 3), dict(padding=((0, -1), (0, 0))), ValueError, r"padding\[0\].*\(0, -1\)"),
    (((5, 5), 3), dict(padding=((0, 0), (1, 2, 3))), ValueError, r"padding\[1\].*\(1, 2, 3\)"),
    ((2, 3), {}, ValueError, r"kernel_size 3.*larger than the padded input 2"),
    ((4, 3), dict(dilation=2), ValueError, r"dilation 2.*larger than the padded input 4"),
    (((9, 4), 3), dict(dilation=(1, 2)), ValueError, r"larger than the padded input"),
])
def test_conv_output_size_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        size(*args, **kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=(3, 5)), dict(kernel_size=3, stride=(1, 2)),
    dict(kernel_size=3, dilation=(2, 1)),
])
def test_one_axis_rejects_unequal_pairs(kwargs):
    # An int size is one axis: a pair with two different values has no meaning
    # there and must not be silently cut to its first element.
    with pytest.raises((ValueError, TypeError)):
        size(9, **kwargs)


# --- ceil_mode windows larger than the input, transposed lengths, the integer bound -----------


def torch_pooling_output_shape(n, k, s, p, d, ceil_mode):
    """ATen's pooling_output_shape (Pool.h), written out: floor division rounds down."""
    out = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def test_output_length_is_torch_pooling_rule_on_every_small_problem():
    # every pooling problem PyTorch takes (pad <= kernel // 2), windows larger than the
    # input included: where PyTorch's size is >= 1 fastconv's is the same, else <= 0
    for n in range(1, 9):
        for k in range(1, 7):
            for s in range(1, 6):
                for d in range(1, 4):
                    for p in range(k // 2 + 1):
                        for ceil_mode in (False, True):
                            expected = torch_pooling_output_shape(n, k, s, p, d, ceil_mode)
                            got = shapes.output_length(n, k, s, (p, p), d, ceil_mode)
                            assert got == expected if expected >= 1 else got <= 0, \
                                (n, k, s, p, d, ceil_mode)


@settings(max_examples=300, deadline=None)
@given(n=sizes, k=kernels, s=strides, before=pads, after=pads, d=dilations)
def test_ceil_mode_invariant_without_room_for_a_window(n, k, s, before, after, d):
    # a window may overhang the padded input by less than stride; each counted window
    # starts inside the input or its left padding; one more stride would overhang by
    # stride or more, or start in the right padding
    padded, span = n + before + after, effective(k, d)
    out = shapes.output_length(n, k, s, (before, after), d, ceil_mode=True)
    if out <= 0:
        assert span - padded >= s
        with pytest.raises(ValueError, match="by stride or more"):
            size(n, k, stride=s, padding=(before, after), dilation=d, ceil_mode=True)
        return
    assert size(n, k, stride=s, padding=(before, after), dilation=d, ceil_mode=True) == out
    last = (out - 1) * s
    assert last < n + before and last + span - padded < s
    assert out * s >= n + before or out * s + span - padded >= s


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 12), k=kernels, s=strides, d=dilations, data=st.data())
def test_ceil_mode_matches_torch_max_pool2d_also_for_windows_larger_than_the_input(n, k, s, d,
                                                                                  data):
    torch = pytest.importorskip("torch")
    p = data.draw(st.integers(0, k // 2))
    try:
        y = torch.nn.functional.max_pool2d(torch.zeros(1, 1, n, 1), (k, 1), stride=(s, 1),
                                           padding=(p, 0), dilation=(d, 1), ceil_mode=True)
    except RuntimeError:  # "Output size is too small"
        with pytest.raises(ValueError, match="larger than the padded input"):
            size(n, k, stride=s, padding=p, dilation=d, ceil_mode=True)
        return
    assert size(n, k, stride=s, padding=p, dilation=d, ceil_mode=True) == y.shape[2]


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 20), k=kernels, s=strides, before=pads, after=pads, d=dilations,
       data=st.data())
def test_transposed_length_is_inverted_by_the_convolution(n, k, s, before, after, d, data):
    # the convolution with the same arguments maps the transposed length back to
    # n + output_padding // stride, for every output_padding PyTorch allows
    extra = data.draw(st.integers(0, max(s, d) - 1))
    shapes.check_output_padding((extra, extra), (s, s), (d, d))
    length = shapes.transposed_output_length(n, k, s, (before, after), d, extra)
    assume(length >= 1)
    assert shapes.output_length(length, k, s, (before, after), d) == n + extra // s
    assert length == shapes.transposed_output_length(n, k, s, (before, after), d) + extra


@pytest.mark.parametrize("extra, stride, dilation, ok", [
    ((0, 0), (1, 1), (1, 1), True), ((1, 0), (1, 1), (2, 1), True),
    ((1, 1), (2, 1), (1, 2), True), ((2, 0), (2, 1), (2, 1), False),
    ((0, 1), (1, 1), (1, 1), False), ((2, 0), (2, 1), (3, 1), True),
    ((3, 0), (2, 1), (3, 1), False),
])
def test_output_padding_bound_is_torchs(extra, stride, dilation, ok):
    if ok:
        shapes.check_output_padding(extra, stride, dilation)
        return
    with pytest.raises(ValueError, match="output_padding must be smaller than stride or "
                                         "dilation in each dimension"):
        shapes.check_output_padding(extra, stride, dilation)


@pytest.mark.parametrize("value", [2**31, 2**40, 2**62, 2**63, 2**70])
def test_sizes_above_the_bound_are_value_errors_naming_the_argument(value):
    for call, name in [(lambda: shapes.pair(value, "stride"), "stride"),
                       (lambda: shapes.pair((1, value), "dilation"), "dilation"),
                       (lambda: shapes.bounded_int(value, "groups"), "groups"),
                       (lambda: size(value, 3), "size"),
                       (lambda: size((4, value), 3), "size"),
                       (lambda: size(9, 3, stride=value), "stride"),
                       (lambda: size(9, 3, padding=value), "padding"),
                       (lambda: size((9, 9), 3, padding=((0, value), (0, 0))), "padding")]:
        with pytest.raises(ValueError, match=rf"^{name}.*at most 2\*\*31 - 1.*got .*{value}"):
            call()
    assert shapes.pair(shapes.MAX_INT, "stride") == (2**31 - 1,) * 2
    assert size(9, 3, stride=shapes.MAX_INT) == 1


# --- max_unpool2d's output size -------------------------------------------------------------

unpool_pairs = st.tuples(st.integers(1, 5), st.integers(1, 5))


@settings(max_examples=300, deadline=None)
@given(hw=st.tuples(st.integers(1, 12), st.integers(1, 12)), k=unpool_pairs,
       s=st.none() | unpool_pairs, p=st.tuples(st.integers(0, 3), st.integers(0, 3)))
def test_unpool_default_is_the_transposed_length(hw, k, s, p):
    step = k if s is None else s  # stride=None means kernel_size
    default = tuple(shapes.transposed_output_length(hw[a], k[a], step[a], (p[a], p[a]))
                    for a in range(2))
    assert default == tuple((hw[a] - 1) * step[a] - 2 * p[a] + k[a] for a in range(2))
    if min(default) < 1:
        with pytest.raises(ValueError, match=r"max_unpool2d output would be .* crops more than"):
            shapes.unpool_output_size(hw, k, s, p)
        return
    assert shapes.unpool_output_size(hw, k, s, p) == default
    assert shapes.unpool_output_size(list(hw), k, s, p, None) == default


@settings(max_examples=200, deadline=None)
@given(hw=st.tuples(st.integers(1, 12), st.integers(1, 12)), k=unpool_pairs,
       s=st.none() | unpool_pairs, p=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       lead=st.sampled_from([(), (3,), (2, 3)]))
def test_unpool_output_size_reaches_exactly_within_stride_of_the_default(hw, k, s, p, lead):
    step = k if s is None else s
    default = tuple((hw[a] - 1) * step[a] - 2 * p[a] + k[a] for a in range(2))
    assume(min(default) >= 1)
    reachable = [range(max(default[a] - step[a] + 1, 1), default[a] + step[a]) for a in range(2)]
    for out_h in reachable[0]:
        for out_w in reachable[1]:
            # any 2-D, 3-D or 4-D shape ending in (H_out, W_out), as a tuple or a list
            wanted = (*lead, out_h, out_w)
            assert shapes.unpool_output_size(hw, k, s, p, wanted) == (out_h, out_w)
            assert shapes.unpool_output_size(hw, k, s, p, list(wanted)) == (out_h, out_w)
    outside = [(reachable[0].stop, default[1]), (default[0], reachable[1].stop)]
    if reachable[0].start > 1:
        outside.append((reachable[0].start - 1, default[1]))
    if reachable[1].start > 1:
        outside.append((default[0], reachable[1].start - 1))
    for out in outside:
        with pytest.raises(ValueError, match=r"is not reachable: .* each size must lie within "
                                             r"stride of"):
            shapes.unpool_output_size(hw, k, s, p, (*lead, *out))


@settings(max_examples=60, deadline=None)
@given(hw=st.tuples(st.integers(1, 12), st.integers(1, 12)), k=unpool_pairs,
       s=st.none() | unpool_pairs, data=st.data())
def test_max_unpool2d_of_max_pool2d_restores_the_input_shape(hw, k, s, data):
    assume(all(hw[a] >= k[a] for a in range(2)))
    p = tuple(data.draw(st.integers(0, k[a] // 2)) for a in range(2))  # PyTorch's bound
    x = np.random.default_rng(sum(hw)).permutation(hw[0] * hw[1]).astype(np.float64)
    x = x.reshape(1, 1, *hw)
    pooled, indices = fastconv.max_pool2d(x, k, s, p, return_indices=True)
    # the pooling drops fewer than stride rows and columns, so the input size is reachable
    assert shapes.unpool_output_size(pooled.shape[2:], k, s, p, output_size=hw) == hw
    unpooled = fastconv.max_unpool2d(pooled, indices, k, s, p, output_size=x.shape)
    assert unpooled.shape == x.shape
    np.testing.assert_array_equal(unpooled.reshape(-1)[indices.reshape(-1)], pooled.reshape(-1))


def test_unpool_argument_forms_are_pytorch_max_unpool2ds():
    assert shapes.unpool_stride(None, (3, 2)) == (3, 2)
    assert shapes.unpool_stride(2, (3, 3)) == (2, 2)
    assert shapes.unpool_output_size((2, 2), 2) == (4, 4)
    assert shapes.unpool_output_size((2, 2), (3, 2), (1, 2), (1, 0)) == (2, 4)
    for stride in [(), (2,)]:  # pooling takes them, max_unpool2d does not
        assert shapes.pool_stride(stride, (2, 2)) == (2, 2)
        with pytest.raises(ValueError, match="stride must be an int or a pair of ints"):
            shapes.unpool_stride(stride, (2, 2))
        with pytest.raises(ValueError, match="stride must be an int or a pair of ints"):
            shapes.unpool_output_size((2, 2), 2, stride)
    with pytest.raises(ValueError, match="kernel_size must be an int or a pair of ints"):
        shapes.unpool_output_size((2, 2), (2,))
    for bad in [7, (7,), (1, 2, 3, 4, 5), "ab"]:
        with pytest.raises(ValueError, match=r"output_size must be \(H_out, W_out\) or a 3-D/4-D "
                                             r"shape ending in them"):
            shapes.unpool_output_size((2, 2), 2, output_size=bad)
