"""Explicit SIMD vectors for Numba kernels: float32 or float64 vectors of the target's width.

Numba's auto-vectoriser follows LLVM's preferences for the host CPU, and some
AVX-512 CPUs (LLVM's ``rocketlake``, ``skylake-avx512``, ...) prefer 256-bit
vectors, so every plain loop there runs at half the machine's width. A value of
LLVM type ``<16 x float>`` (``<8 x double>``) is one zmm register on an AVX-512
CPU whatever the preference. Where the CPU Numba compiles for has no AVX-512 the
vectors are 256 bits (``<8 x float>``, one ymm register of AVX2): LLVM would
split a 512-bit vector into two, and the micro-kernels' blocks of 24 sums, sized
for AVX-512's 32 registers, would then spill out of AVX2's 16 (the blocked
forward ran at a third of its speed on a Zen 2). ``FASTCONV_SIMD_BITS`` forces
either width; both run on any CPU (LLVM splits a vector wider than the
machine's, into four xmm registers on SSE or NEON). Nothing here changes
Numba's process-wide target.

Inside a kernel::

    v = load(a, i)            # a[i : i + lanes(a)] as one vector (a: 1-D contiguous)
    store(a, i, v)            # a[i : i + lanes(a)] = v
    v = load_first(a, i, n)   # a[i : i + n] in the first n lanes, zeros after (masked)
    store_first(a, i, v, n)   # a[i : i + n] = the first n lanes of v (nothing past them)
    w = splat(a[k], a)        # a[k] in every lane (the second argument gives the width)
    w = broadcast(a, k)       # the same, read unchecked (checked as load is)
    prefetch(a, i)            # a hint: a[i]'s cache line into the L1 (never checked)
    acc = fma(w, v, acc)      # w * v + acc, lane by lane, one rounding
    d = sub(v, w)             # v - w (add(v, w): v + w)
    acc = zeros(a)            # a zero vector of a's dtype
    acc = maximum(acc, zeros(a))
    v = keep(v, m)            # v's lanes where m's bits are all set, zeros elsewhere
    s = total(acc)            # the sum of the lanes
    e = deinterleave(v, w, False)  # the even lanes of v, then of w (True: the odd)
    r = weave(e, o, False)    # e[0], o[0], e[1], o[1], ... of the first halves (True: second)
    n = shift_in(v, w)        # v[1], v[2], ..., v[lanes - 1], w[0]: one position on
    transpose(a, i, m, count, b, j, n)  # a block of lanes x lanes values, rows to columns

``lanes(a)`` is 16 for float32 and 8 for float64 at 512 bits, 8 and 4 at 256.
``store_first`` of ``n >= lanes`` values is one plain store; fewer are a masked store on
512-bit vectors and pieces of 4, 2 and 1 lanes on narrower ones, where AVX2's masked
store (``vmaskmovps``) costs about 11 cycles on AMD's Zen 2 against one for a store (and
``store_parity`` stores its lanes one by one there).
The loads and stores are unaligned and unchecked; under ``NUMBA_BOUNDSCHECK=1``
(read when this module is imported) they raise IndexError for a vector that does
not lie within the array.
"""

from __future__ import annotations

import numba
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_jitable, register_model

from .. import config
from ._jit import jit_options, uncounted_options


def _target_bits() -> int:
    """Bits in one vector for the CPU Numba compiles for: ``FASTCONV_SIMD_BITS`` where
    set, else 512 where the target has AVX-512F and 256 elsewhere. The target's features
    are Numba's: ``NUMBA_CPU_FEATURES`` where set, else the host's (a ``NUMBA_CPU_NAME``
    given with ``NUMBA_CPU_FEATURES=""`` compiles for that CPU's own features, which LLVM
    does not list: 256 bits, right on any CPU)."""
    if config.SIMD_BITS:
        return config.SIMD_BITS
    features = numba.config.CPU_FEATURES
    if features is None:
        try:
            features = llvm.get_host_cpu_features().flatten()
        except RuntimeError:  # LLVM cannot read them on every platform
            features = ""
    return 512 if "+avx512f" in features.split(",") else 256


#: Bits in one vector: 512 on AVX-512 (a vector is one of 32 registers), 256 elsewhere
#: (one of AVX2's 16 registers; two of NEON's 32).
WIDTH_BITS = _target_bits()
#: Bytes in one vector.
WIDTH_BYTES = WIDTH_BITS // 8
#: Whether a micro-kernel's block of 24 sums fits in the vector registers (32 of them on
#: AVX-512); where it does not, :mod:`.microkernels` splits the blocks in halves.
WIDE = WIDTH_BITS == 512

_CHECK = bool(numba.config.BOUNDSCHECK)


class Vector(types.Type):
    """Numba type of a vector of ``lanes`` values of ``dtype``."""

    def __init__(self, dtype: types.Float, lanes: int) -> None:
        self.dtype = dtype
        self.lanes = lanes
        super().__init__(name=f"Vector({dtype}, {lanes})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        scalar = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(scalar, fe_type.lanes))


def _vector_of(dtype) -> Vector:
    if not isinstance(dtype, types.Float):
        raise numba.core.errors.TypingError(f"simd vectors hold float32 or float64, not {dtype}")
    return Vector(dtype, WIDTH_BITS // dtype.bitwidth)


def _element_pointer(context, builder, array_type, array, index, index_type, vector):
    ary = context.make_array(array_type)(context, builder, array)
    i = context.cast(builder, index, index_type, types.intp)
    return builder.bitcast(builder.gep(ary.data, [i]),
                           context.get_value_type(vector).as_pointer())


def _contiguous_1d(array) -> bool:
    return isinstance(array, types.Array) and array.ndim == 1 and array.layout in "CF"


def vectors_fit(a, b) -> bool:
    """Whether two array types can be read and written on vectors of one kind: both 1-D
    contiguous, of one dtype (an overload's choice between its vector form and a loop)."""
    return _contiguous_1d(a) and _contiguous_1d(b) and a.dtype == b.dtype


def _splat_ir(context, builder, vector, value):
    """``value`` (an LLVM scalar of the vector's dtype) in every lane."""
    vector_type = context.get_value_type(vector)
    single = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value,
                                    ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), vector.lanes), [0] * vector.lanes)
    return builder.shuffle_vector(single, ir.Constant(vector_type, ir.Undefined), mask)


def _call_intrinsic(context, builder, vector, name, args):
    """``llvm.<name>`` on vectors of type ``vector``."""
    vector_type = context.get_value_type(vector)
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vector_type, [vector_type] * len(args)),
        f"llvm.{name}.v{vector.lanes}f{vector.dtype.bitwidth}")
    return builder.call(function, args)


@intrinsic
def _load(typingctx, array, index):
    if not _contiguous_1d(array) or not isinstance(index, types.Integer):
        return None
    vector = _vector_of(array.dtype)

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1],
                                   signature.args[1], vector)
        return builder.load(pointer, align=array.dtype.bitwidth // 8)

    return vector(array, index), codegen


@intrinsic
def _store(typingctx, array, index, value):
    if (not _contiguous_1d(array) or not isinstance(index, types.Integer)
            or value != _vector_of(array.dtype)):
        return None

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1],
                                   signature.args[1], value)
        builder.store(args[2], pointer, align=array.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(array, index, value), codegen


def _splat_i32(builder, lanes, value, value_type, context):
    """``value`` (an integer of ``value_type``) as int32 in every lane of an LLVM
    ``<lanes x i32>``."""
    vector = ir.VectorType(ir.IntType(32), lanes)
    n = context.cast(builder, value, value_type, types.int32)
    return builder.shuffle_vector(
        builder.insert_element(ir.Constant(vector, ir.Undefined), n,
                               ir.Constant(ir.IntType(32), 0)),
        ir.Constant(vector, ir.Undefined), ir.Constant(vector, [0] * lanes))


def _first_mask(builder, lanes, count, count_type, context):
    """The lanes ``< count`` as an LLVM ``<lanes x i1>`` mask."""
    index = ir.Constant(ir.VectorType(ir.IntType(32), lanes), list(range(lanes)))
    return builder.icmp_signed("<", index, _splat_i32(builder, lanes, count, count_type, context))


def _masked_store_ir(builder, vector_type, value, pointer, mask, bits):
    """``llvm.masked.store`` of ``value`` (a vector of ``bits``-bit floats) at ``pointer``,
    the lanes of ``mask``."""
    lanes = vector_type.count
    align = ir.Constant(ir.IntType(32), bits // 8)
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [vector_type, vector_type.as_pointer(),
                                                        align.type, mask.type]),
        f"llvm.masked.store.v{lanes}f{bits}.p0v{lanes}f{bits}")
    builder.call(function, [value, pointer, align, mask])


def _piece_stores_ir(builder, value, pointer, lanes, count, align):
    """Store the first ``count`` lanes of ``value`` at ``pointer`` (a pointer to the vector
    type), ``0 < count < lanes`` known at compile time, as pieces of 4, 2 and 1 lanes
    (``vmovups xmm``, ``vmovlps``, ``vmovss`` on x86)."""
    element = pointer.type.pointee.element
    base = builder.bitcast(pointer, element.as_pointer())
    offset, size = 0, lanes // 2
    while size:
        if count & size:
            at = builder.gep(base, [ir.Constant(ir.IntType(64), offset)])
            if size == 1:
                builder.store(builder.extract_element(value, ir.Constant(ir.IntType(32), offset)),
                              at, align=align)
            else:
                piece = builder.shuffle_vector(
                    value, ir.Constant(value.type, ir.Undefined),
                    ir.Constant(ir.VectorType(ir.IntType(32), size),
                                list(range(offset, offset + size))))
                builder.store(piece, builder.bitcast(at, piece.type.as_pointer()), align=align)
            offset += size
        size //= 2


def _store_first_ir(context, builder, vector, value, pointer, count, count_type):
    """The first ``count`` lanes of ``value`` at ``pointer``: one plain store where
    ``count >= lanes``; else a masked store on 512-bit vectors (AVX-512's masks cost no
    more than a store), and on narrower ones a switch on ``count`` to its pieces
    (:func:`_piece_stores_ir`): AVX2's ``vmaskmovps`` store measured 11 cycles on a Zen
    2, against one for a plain store."""
    lanes = vector.lanes
    align = vector.dtype.bitwidth // 8
    n = context.cast(builder, count, count_type, types.intp)
    full = builder.icmp_signed(">=", n, ir.Constant(n.type, lanes))
    with builder.if_else(full, likely=True) as (whole, part):
        with whole:
            builder.store(value, pointer, align=align)
        with part:
            if WIDE:
                mask = _first_mask(builder, lanes, count, count_type, context)
                _masked_store_ir(builder, pointer.type.pointee, value, pointer, mask,
                                 vector.dtype.bitwidth)
            else:
                done = builder.append_basic_block("store_first.done")
                switch = builder.switch(n, done)
                for k in range(1, lanes):
                    block = builder.append_basic_block(f"store_first.{k}")
                    switch.add_case(ir.Constant(n.type, k), block)
                    builder.position_at_end(block)
                    _piece_stores_ir(builder, value, pointer, lanes, k, align)
                    builder.branch(done)
                builder.position_at_end(done)


def _masked_access(context, builder, signature, args, vector, store):
    """``llvm.masked.load`` (zeros in the lanes past ``count``) or a store of the first
    ``count`` lanes (:func:`_store_first_ir`) at ``array[index:]``: the codegen of
    :func:`_load_first` (args ``array, index, count``) and :func:`_store_first` (args
    ``array, index, value, count``)."""
    count_at = 3 if store else 2
    pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1],
                               signature.args[1], vector)
    vector_type = context.get_value_type(vector)
    if store:
        _store_first_ir(context, builder, vector, args[2], pointer, args[3], signature.args[3])
        return context.get_dummy_value()
    mask = _first_mask(builder, vector.lanes, args[count_at], signature.args[count_at], context)
    align = ir.Constant(ir.IntType(32), vector.dtype.bitwidth // 8)
    suffix = f"v{vector.lanes}f{vector.dtype.bitwidth}.p0v{vector.lanes}f{vector.dtype.bitwidth}"
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vector_type, [vector_type.as_pointer(), align.type,
                                                      mask.type, vector_type]),
        f"llvm.masked.load.{suffix}")
    return builder.call(function, [pointer, align, mask, ir.Constant(vector_type, None)])


@intrinsic
def _load_first(typingctx, array, index, count):
    if (not _contiguous_1d(array) or not isinstance(index, types.Integer)
            or not isinstance(count, types.Integer)):
        return None
    vector = _vector_of(array.dtype)

    def codegen(context, builder, signature, args):
        return _masked_access(context, builder, signature, args, vector, False)

    return vector(array, index, count), codegen


@intrinsic
def _store_first(typingctx, array, index, value, count):
    if (not _contiguous_1d(array) or not isinstance(index, types.Integer)
            or value != _vector_of(array.dtype) or not isinstance(count, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        return _masked_access(context, builder, signature, args, value, True)

    return types.none(array, index, value, count), codegen


def _parity_stores_ir(context, builder, vector, value, pointer, parity, parity_type, count,
                      count_type):
    """:func:`store_parity` on vectors narrower than 512 bits: each lane of the parity
    stored alone where it is ``< count`` (AVX2's masked store costs 11 cycles on a Zen 2,
    see :func:`_store_first_ir`; a load, blend and store would race with the stores of the
    other parity)."""
    align = vector.dtype.bitwidth // 8
    n = context.cast(builder, count, count_type, types.intp)
    odd = builder.icmp_signed("!=", context.cast(builder, parity, parity_type, types.intp),
                              ir.Constant(n.type, 0))
    base = builder.bitcast(pointer, pointer.type.pointee.element.as_pointer())
    with builder.if_else(odd) as (odd_lanes, even_lanes):
        for block, first in ((odd_lanes, 1), (even_lanes, 0)):
            with block:
                for lane in range(first, vector.lanes, 2):
                    inside = builder.icmp_signed(">", n, ir.Constant(n.type, lane))
                    with builder.if_then(inside, likely=True):
                        builder.store(
                            builder.extract_element(value, ir.Constant(ir.IntType(32), lane)),
                            builder.gep(base, [ir.Constant(ir.IntType(64), lane)]), align=align)


@intrinsic
def _store_parity(typingctx, array, index, value, parity, count):
    if (not _contiguous_1d(array) or not isinstance(index, types.Integer)
            or value != _vector_of(array.dtype) or not isinstance(parity, types.Integer)
            or not isinstance(count, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        lanes = value.lanes
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1],
                                   signature.args[1], value)
        if not WIDE:
            _parity_stores_ir(context, builder, value, args[2], pointer, args[3],
                              signature.args[3], args[4], signature.args[4])
            return context.get_dummy_value()
        first = _first_mask(builder, lanes, args[4], signature.args[4], context)
        lane_parity = ir.Constant(ir.VectorType(ir.IntType(32), lanes),
                                  [lane % 2 for lane in range(lanes)])
        wanted = _splat_i32(builder, lanes, args[3], signature.args[3], context)
        mask = builder.and_(first, builder.icmp_signed("==", lane_parity, wanted))
        _masked_store_ir(builder, context.get_value_type(value), args[2], pointer, mask,
                         value.dtype.bitwidth)
        return context.get_dummy_value()

    return types.none(array, index, value, parity, count), codegen


@intrinsic
def splat(typingctx, scalar, like):
    """``scalar`` (cast to ``like``'s dtype) in every lane of a vector of ``like``'s dtype
    (``like``: an array or a vector)."""
    dtype = like.dtype if isinstance(like, (types.Array, Vector)) else None
    if dtype is None or not isinstance(scalar, (types.Float, types.Integer)):
        return None
    vector = _vector_of(dtype)

    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[0], signature.args[0], dtype)
        return _splat_ir(context, builder, vector, value)

    return vector(scalar, like), codegen


@intrinsic
def _broadcast(typingctx, array, index):
    if not _contiguous_1d(array) or not isinstance(index, types.Integer):
        return None
    vector = _vector_of(array.dtype)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i = context.cast(builder, args[1], signature.args[1], types.intp)
        return _splat_ir(context, builder, vector, builder.load(builder.gep(ary.data, [i])))

    return vector(array, index), codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Ask for the cache line of ``array[index]`` in the L1 (a hint, ``llvm.prefetch``:
    ``prefetcht0`` on x86). Unchecked under ``NUMBA_BOUNDSCHECK=1`` too: a prefetch
    of an address outside the array reads nothing and cannot fault."""
    if not _contiguous_1d(array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i = context.cast(builder, args[1], signature.args[1], types.intp)
        pointer = builder.bitcast(builder.gep(ary.data, [i]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [pointer.type, i32, i32, i32]),
            "llvm.prefetch.p0")
        # a read, kept in every level of the caches, of data
        builder.call(function, [pointer, ir.Constant(i32, 0), ir.Constant(i32, 3),
                                ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(array, index), codegen


@intrinsic
def zeros(typingctx, like):
    """A vector of zeros of ``like``'s dtype (``like``: an array or a vector)."""
    dtype = like.dtype if isinstance(like, (types.Array, Vector)) else None
    if dtype is None:
        return None
    vector = _vector_of(dtype)

    def codegen(context, builder, signature, args):
        return ir.Constant(context.get_value_type(vector), None)

    return vector(like), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` lane by lane with one rounding (``llvm.fma``)."""
    if not (isinstance(a, Vector) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return _call_intrinsic(context, builder, a, "fma", args)

    return a(a, b, c), codegen


@intrinsic
def add(typingctx, a, b):
    """``a + b`` lane by lane."""
    if not (isinstance(a, Vector) and a == b):
        return None

    def codegen(context, builder, signature, args):
        return builder.fadd(*args)

    return a(a, b), codegen


@intrinsic
def sub(typingctx, a, b):
    """``a - b`` lane by lane."""
    if not (isinstance(a, Vector) and a == b):
        return None

    def codegen(context, builder, signature, args):
        return builder.fsub(*args)

    return a(a, b), codegen


@intrinsic
def maximum(typingctx, a, b):
    """The larger of ``a`` and ``b`` lane by lane, NaN where ``a`` is NaN: ``b`` is a
    floor, never NaN (an activation's, :func:`fastconv.activations.floor`), and the
    result is ``b if a < b else a``, as the kernels' scalar loops store it. One
    ``vmaxps`` (its operands in that order); ``llvm.maximum``, which also orders the
    zeros and takes either operand's NaN, took six instructions a vector on AVX-512."""
    if not (isinstance(a, Vector) and a == b):
        return None

    def codegen(context, builder, signature, args):
        value, floor = args
        return builder.select(builder.fcmp_ordered("<", value, floor), floor, value)

    return a(a, b), codegen


@intrinsic
def keep(typingctx, a, mask):
    """``a`` where ``mask``'s lanes have every bit set, +0.0 where they are all zero (a
    bitwise and: exact whatever ``a`` holds, where ``a * 0`` would give NaN for an Inf).
    ``mask``: a vector of ``a``'s type, loaded from an array of such lanes (e.g.
    ``np.array([-1, 0], np.int32).view(np.float32)``)."""
    if not (isinstance(a, Vector) and a == mask):
        return None

    def codegen(context, builder, signature, args):
        bits = ir.VectorType(ir.IntType(a.dtype.bitwidth), a.lanes)
        value, keep_bits = (builder.bitcast(v, bits) for v in args)
        return builder.bitcast(builder.and_(value, keep_bits), args[0].type)

    return a(a, mask), codegen


@intrinsic
def total(typingctx, a):
    """The sum of ``a``'s lanes (in any order: a tree of vector additions)."""
    if not isinstance(a, Vector):
        return None

    def codegen(context, builder, signature, args):
        scalar = context.get_value_type(a.dtype)
        vector_type = context.get_value_type(a)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(scalar, [scalar, vector_type]),
            f"llvm.vector.reduce.fadd.v{a.lanes}f{a.dtype.bitwidth}")
        return builder.call(function, [ir.Constant(scalar, 0.0), args[0]],
                            fastmath=("reassoc", "nsz"))

    return a.dtype(a), codegen


def _shuffle(mask):
    """The code of a shuffle of two vectors by the constant lane indices ``mask`` (an
    index past the first vector's lanes takes from the second)."""

    def codegen(context, builder, signature, args):
        lanes_mask = ir.Constant(ir.VectorType(ir.IntType(32), len(mask)), mask)
        return builder.shuffle_vector(args[0], args[1], lanes_mask)

    return codegen


def _interleave_mask(lanes: int, width: int, high: bool) -> list[int]:
    """The shuffle mask of :func:`interleave` (``block = width``)."""
    first, mask = width if high else 0, []
    for lane in range(lanes):
        group, within = divmod(lane, 2 * width)
        source = group * 2 * width + first + within % width
        mask.append(source if within < width else lanes + source)
    return mask


@intrinsic(prefer_literal=True)
def interleave(typingctx, a, b, block, high):
    """Blocks of ``block`` lanes taken in turn from ``a`` and ``b``: the lower half of
    every ``2 * block`` lanes of each (``high`` False) or the upper half (True). Four
    rounds (blocks of 8, 4, 2, 1) transpose 16 vectors of 16 lanes."""
    if not (isinstance(a, Vector) and a == b and isinstance(block, types.IntegerLiteral)
            and isinstance(high, types.BooleanLiteral)
            and 1 <= block.literal_value <= a.lanes // 2):
        return None
    mask = _interleave_mask(a.lanes, block.literal_value, high.literal_value)
    return a(a, b, block, high), _shuffle(mask)


@intrinsic(prefer_literal=True)
def deinterleave(typingctx, a, b, odd):
    """The even lanes (``odd`` False) or the odd lanes of ``a`` then of ``b``: a row of
    ``2 * lanes`` values dealt into its two stride-2 phases."""
    if not (isinstance(a, Vector) and a == b and isinstance(odd, types.BooleanLiteral)):
        return None
    mask = [2 * lane + int(odd.literal_value) for lane in range(a.lanes)]

    return a(a, b, odd), _shuffle(mask)


@intrinsic
def shift_in(typingctx, a, b):
    """``a``'s lanes from the second on, then ``b``'s first lane: ``a`` moved one lane
    down, ``b`` shifted in (the values one position on, of a run split over two
    vectors)."""
    if not (isinstance(a, Vector) and a == b):
        return None
    return a(a, b), _shuffle(list(range(1, a.lanes + 1)))


@intrinsic(prefer_literal=True)
def weave(typingctx, a, b, high):
    """The lanes of ``a`` and ``b`` in turn, ``a[m], b[m]`` for the first half of ``m``
    (``high`` False) or the second: two stride-2 phases put back in one row, the inverse
    of :func:`deinterleave`."""
    if not (isinstance(a, Vector) and a == b and isinstance(high, types.BooleanLiteral)):
        return None
    first = a.lanes // 2 if high.literal_value else 0
    mask = [first + lane // 2 + (a.lanes if lane % 2 else 0) for lane in range(a.lanes)]

    return a(a, b, high), _shuffle(mask)


@intrinsic
def lanes(typingctx, array):
    """Values in one vector of ``array``'s dtype (an array or a vector), a compile-time
    constant (``64 // array.itemsize`` would read the itemsize at run time and divide
    by it, in every loop that steps by it)."""
    dtype = array.dtype if isinstance(array, (types.Array, Vector)) else None
    if not isinstance(dtype, types.Float):
        return None
    count = WIDTH_BITS // dtype.bitwidth

    def codegen(context, builder, signature, args):
        return ir.Constant(context.get_value_type(types.intp), count)

    return types.intp(array), codegen


@register_jitable(**jit_options())
def _check(array, index):
    if index < 0 or index + WIDTH_BYTES // array.itemsize > array.size:
        raise IndexError("simd vector outside the array")


@register_jitable(**jit_options())
def load(array, index):
    """``array[index : index + lanes(array)]`` as one vector."""
    if _CHECK:
        _check(array, index)
    return _load(array, index)


@register_jitable(**jit_options())
def broadcast(array, index):
    """``array[index]`` in every lane of a vector of ``array``'s dtype, read without
    the negative-index wraparound of ``array[index]`` (a broadcast load: the
    multiply-add's operand straight from memory)."""
    if _CHECK and (index < 0 or index >= array.size):
        raise IndexError("simd broadcast outside the array")
    return _broadcast(array, index)


@register_jitable(**jit_options())
def store(array, index, value):
    """``array[index : index + lanes(array)] = value``."""
    if _CHECK:
        _check(array, index)
    _store(array, index, value)


@register_jitable(**jit_options())
def _check_first(array, index, count):
    if count > 0 and (index < 0 or index + min(count, WIDTH_BYTES // array.itemsize) > array.size):
        raise IndexError("simd vector outside the array")


@register_jitable(**jit_options())
def load_first(array, index, count):
    """``array[index : index + count]`` in the first ``count`` lanes of a vector, zeros in
    the rest (a masked load: nothing past them is read, so a row's tail may end the
    array)."""
    if _CHECK:
        _check_first(array, index, count)
    return _load_first(array, index, count)


@register_jitable(**jit_options())
def store_first(array, index, value, count):
    """``array[index : index + count] = value``'s first ``count`` lanes (a masked store:
    nothing past them is written)."""
    if _CHECK:
        _check_first(array, index, count)
    _store_first(array, index, value, count)


@register_jitable(**jit_options())
def store_parity(array, index, value, parity, count):
    """``array[index + m] = value[m]`` for the lanes ``m < count`` of parity ``parity`` (0:
    the even lanes, 1: the odd ones), nothing else written (a masked store): with
    :func:`weave` (v, v, ...), a stride-2 phase's values put into their columns of a row
    whose other phase is written by another store."""
    if _CHECK:
        _check_first(array, index, count)
    _store_parity(array, index, value, parity, count)


if not _CHECK:
    # unchecked, the accesses are the intrinsics themselves: a call of a jitable per
    # access cost its typing at every call site (the checked forms above stay for
    # NUMBA_BOUNDSCHECK=1)
    load, broadcast, store = _load, _broadcast, _store  # noqa: F811
    load_first, store_first, store_parity = _load_first, _store_first, _store_parity  # noqa: F811


@register_jitable(**jit_options())
def _transpose_checked(src, first, stride, count, dst, dst_first, dst_stride):
    """:func:`transpose` with each of its loads and stores checked as :func:`load` and
    :func:`store` are (``NUMBA_BOUNDSCHECK=1``)."""
    n = lanes(src)
    for r in range(min(count, n)):
        _check(src, first + r * stride)
    for q in range(n):
        _check(dst, dst_first + q * dst_stride)
    _transpose_block(src, first, stride, count, dst, dst_first, dst_stride)


@intrinsic
def _transpose_block(typingctx, src, first, stride, count, dst, dst_first, dst_stride):
    """:func:`transpose` as one intrinsic: its loads (masked off past ``count``: nothing
    read there), the ``log2(lanes)`` rounds of :func:`interleave` and its stores, built
    here, where the same network written as 64 calls of the intrinsics took 0.8 s of
    typing on each first compile."""
    integers = (first, stride, count, dst_first, dst_stride)
    if not (_contiguous_1d(src) and _contiguous_1d(dst) and src.dtype == dst.dtype
            and all(isinstance(i, types.Integer) for i in integers)):
        return None
    vector = _vector_of(src.dtype)
    lanes = vector.lanes

    def codegen(context, builder, signature, args):
        src_ary, first_v, stride_v, count_v, dst_ary, dst_first_v, dst_stride_v = args
        (src_t, first_t, stride_t, count_t, dst_t, dst_first_t, dst_stride_t) = signature.args
        intp = context.get_value_type(types.intp)
        first_i = context.cast(builder, first_v, first_t, types.intp)
        stride_i = context.cast(builder, stride_v, stride_t, types.intp)
        count_i = context.cast(builder, count_v, count_t, types.intp)
        vector_type = context.get_value_type(vector)
        align = ir.Constant(ir.IntType(32), vector.dtype.bitwidth // 8)
        suffix = f"v{lanes}f{vector.dtype.bitwidth}.p0v{lanes}f{vector.dtype.bitwidth}"
        masked_load = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector_type, [vector_type.as_pointer(), align.type,
                                                          ir.VectorType(ir.IntType(1), lanes),
                                                          vector_type]),
            f"llvm.masked.load.{suffix}")
        rows = []
        for r in range(lanes):
            at = builder.add(first_i, builder.mul(stride_i, ir.Constant(intp, r)))
            pointer = _element_pointer(context, builder, src_t, src_ary, at, types.intp, vector)
            inside = builder.icmp_signed(">", count_i, ir.Constant(intp, r))
            mask = builder.insert_element(
                ir.Constant(ir.VectorType(ir.IntType(1), lanes), ir.Undefined), inside,
                ir.Constant(ir.IntType(32), 0))
            mask = builder.shuffle_vector(
                mask, ir.Constant(ir.VectorType(ir.IntType(1), lanes), ir.Undefined),
                ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))
            rows.append(builder.call(masked_load, [pointer, align, mask,
                                                   ir.Constant(vector_type, None)]))
        width = lanes // 2
        while width >= 1:
            low_mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes),
                                   _interleave_mask(lanes, width, False))
            high_mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes),
                                    _interleave_mask(lanes, width, True))
            for group in range(0, lanes, 2 * width):
                for i in range(group, group + width):
                    a, b = rows[i], rows[i + width]
                    rows[i] = builder.shuffle_vector(a, b, low_mask)
                    rows[i + width] = builder.shuffle_vector(a, b, high_mask)
            width //= 2
        dst_first_i = context.cast(builder, dst_first_v, dst_first_t, types.intp)
        dst_stride_i = context.cast(builder, dst_stride_v, dst_stride_t, types.intp)
        for q in range(lanes):
            at = builder.add(dst_first_i, builder.mul(dst_stride_i, ir.Constant(intp, q)))
            pointer = _element_pointer(context, builder, dst_t, dst_ary, at, types.intp, vector)
            builder.store(rows[q], pointer, align=vector.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(src, first, stride, count, dst, dst_first, dst_stride), codegen


def transpose(src, first, stride, count, dst, dst_first, dst_stride):
    """Write a ``lanes x lanes`` block transposed: row ``r < count`` of the block is
    ``src[first + r * stride :][:lanes]`` (rows past ``count`` are zeros), and column
    ``q`` goes to ``dst[dst_first + q * dst_stride :][:lanes]``. In shuffles: for 16
    lanes, 16 loads, 64 two-vector shuffles and 16 stores."""


@overload(transpose, jit_options=uncounted_options())
def _transpose(src, first, stride, count, dst, dst_first, dst_stride):
    if not _contiguous_1d(src):
        return None
    return _transpose_checked if _CHECK else _transpose_unchecked


def _transpose_unchecked(src, first, stride, count, dst, dst_first, dst_stride):
    _transpose_block(src, first, stride, count, dst, dst_first, dst_stride)
