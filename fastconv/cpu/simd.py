"""Explicit SIMD vectors for Numba kernels: a 512-bit vector of float32 or float64.

Numba's auto-vectoriser follows LLVM's preferences for the host CPU, and some
AVX-512 CPUs (LLVM's ``rocketlake``, ``skylake-avx512``, ...) prefer 256-bit
vectors, so every plain loop there runs at half the machine's width. A value of
LLVM type ``<16 x float>`` (``<8 x double>``) is one zmm register on an AVX-512
CPU whatever the preference, and two ymm (AVX2) or four xmm (NEON, SSE)
registers elsewhere: the same code runs everywhere and is full width where the
machine has it. Nothing here changes Numba's process-wide target.

Inside a kernel::

    v = load(a, i)            # a[i : i + lanes(a)] as one vector (a: 1-D contiguous)
    store(a, i, v)            # a[i : i + lanes(a)] = v
    w = splat(a[k], a)        # a[k] in every lane (the second argument gives the width)
    acc = fma(w, v, acc)      # w * v + acc, lane by lane, one rounding
    acc = zeros(a)            # a zero vector of a's dtype
    acc = maximum(acc, zeros(a))
    s = total(acc)            # the sum of the lanes

``lanes(a)`` is 16 for float32 and 8 for float64. The loads and stores are
unaligned and unchecked; under ``NUMBA_BOUNDSCHECK=1`` (read when this module is
imported) they raise IndexError for a vector that does not lie within the array.
"""

from __future__ import annotations

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_jitable, register_model

#: Bits in one vector.
WIDTH_BITS = 512

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
        vector_type = context.get_value_type(vector)
        single = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value,
                                        ir.Constant(ir.IntType(32), 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), vector.lanes), [0] * vector.lanes)
        return builder.shuffle_vector(single, ir.Constant(vector_type, ir.Undefined), mask)

    return vector(scalar, like), codegen


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
def maximum(typingctx, a, b):
    """The larger of ``a`` and ``b`` lane by lane; NaN where either is NaN, as
    ``np.maximum``."""
    if not (isinstance(a, Vector) and a == b):
        return None

    def codegen(context, builder, signature, args):
        return _call_intrinsic(context, builder, a, "maximum", args)

    return a(a, b), codegen


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


@register_jitable
def lanes(array):
    """Values in one vector of ``array``'s dtype."""
    return 64 // array.itemsize


@register_jitable
def _check(array, index):
    if index < 0 or index + 64 // array.itemsize > array.size:
        raise IndexError("simd vector outside the array")


@register_jitable
def load(array, index):
    """``array[index : index + lanes(array)]`` as one vector."""
    if _CHECK:
        _check(array, index)
    return _load(array, index)


@register_jitable
def store(array, index, value):
    """``array[index : index + lanes(array)] = value``."""
    if _CHECK:
        _check(array, index)
    _store(array, index, value)
