"""A Triton IR builder whose values are JAX arrays (work in progress, issue 15).

Triton's ``TritonSemantic`` (promotion, broadcasting, constexpr rules) calls a builder's
``create_*``/``get_*`` methods; this builder answers them with JAX (or NumPy, for values that
do not depend on the program id) instead of MLIR. Pointers are ``Value``s whose data are
element offsets into one flat buffer, named by ``buf``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import triton.language as tl


class NeedsSequential(Exception):
    """The kernel reads what it wrote, or uses an atomic's result: run programs in order."""


@dataclasses.dataclass
class Value:
    data: Any
    dtype: Any
    buf: int | None = None

    def get_element_ty(self) -> Any:
        dt = self.dtype
        while hasattr(dt, "element_ty"):
            dt = dt.element_ty
        return dt

    def set_attr(self, key: str, value: Any) -> None:  # divisibility hints: ignored
        pass


_NP = {
    "int1": np.bool_,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "fp16": np.float16,
    "bf16": jnp.bfloat16,
    "fp32": np.float32,
    "fp64": np.float64,
}


def np_dtype(tt: Any) -> Any:
    tt = tt.scalar if hasattr(tt, "scalar") else tt
    if tt.is_ptr():
        return np.int32
    try:
        return _NP[tt.name]
    except KeyError:
        raise NotImplementedError(f"Triton dtype {tt} has no JAX equivalent here") from None


def _xp(*xs: Any) -> Any:
    return jnp if any(isinstance(x, jax.Array) for x in xs) else np


@dataclasses.dataclass
class Record:
    kind: str  # "store", "add", "max", "min"
    buf: int
    offsets: Any
    values: Any
    mask: Any


class JaxBuilder:
    """State of one trace: the buffers (read-only in vectorised mode) and the stores made."""

    def __init__(self, buffers: list[Any], grid: tuple[int, int, int]) -> None:
        self.buffers = buffers
        self.grid_dim = grid
        self.pid: tuple[Any, Any, Any] = (0, 0, 0)
        self.records: list[Record] = []
        self.written: set[int] = set()
        self.options = _Options()
        self.codegen_fns = {"min_dot_size": lambda a, b: (1, 1, 1)}

    # types
    def get_block_ty(self, dtype: Any, shape: Any) -> Any:
        return tl.block_type(dtype, shape)

    def get_ptr_ty(self, elt: Any, space: Any) -> Any:
        return tl.pointer_type(elt, space)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("get_") and name.endswith("_ty"):
            key = {
                "half": "fp16",
                "bf16": "bf16",
                "float": "fp32",
                "double": "fp64",
            }.get(name[4:-3], name[4:-3])
            return lambda: tl.str_to_ty(key, None) if key[0] in "iu" else getattr(tl, _TY[key])
        if name.startswith("get_") and name[4:] in _CONST:
            ty = _CONST[name[4:]]
            return lambda v: Value(np.asarray(v, np_dtype(ty)), ty)
        raise AttributeError(
            f"torchtpu's Triton translator does not support builder.{name} yet; see docs/triton.md"
        )

    def get_null_value(self, ty: Any) -> Value:
        return Value(np.zeros((), np_dtype(ty)), ty)

    def get_all_ones_value(self, ty: Any) -> Value:
        return Value(np.asarray(-1).astype(np_dtype(ty)), ty)

    # programming model
    def create_get_program_id(self, axis: int) -> Value:
        return Value(self.pid[axis], tl.int32)

    def create_get_num_programs(self, axis: int) -> Value:
        return Value(np.int32(self.grid_dim[axis]), tl.int32)

    def get_cache_policy(self, *a: Any) -> None:
        return None

    # memory
    def create_load(self, ptr: Value, cache: Any, volatile: Any) -> Value:
        return self.create_masked_load(ptr, None, None, cache, volatile)

    def create_masked_load(self, ptr: Value, mask: Any, other: Any, cache: Any, vol: Any) -> Value:
        if ptr.buf in self.written:
            raise NeedsSequential("a load from a buffer the kernel already stored to")
        buf = self.buffers[ptr.buf]
        off = jnp.asarray(ptr.data)
        got = jnp.take(buf, off, mode="clip")
        dt = ptr.get_element_ty()
        if mask is not None:
            fill = jnp.zeros((), got.dtype) if other is None else jnp.asarray(other.data, got.dtype)
            got = jnp.where(jnp.asarray(mask.data) & (off >= 0) & (off < buf.shape[0]), got, fill)
        return Value(got, dt)

    def create_store(self, ptr: Value, val: Value, cache: Any) -> None:
        self.create_masked_store(ptr, val, None, cache)

    def create_masked_store(self, ptr: Value, val: Value, mask: Any, cache: Any) -> None:
        self._record("store", ptr, val, mask)

    def _record(self, kind: str, ptr: Value, val: Value, mask: Any) -> None:
        off = jnp.asarray(ptr.data)
        vals = jnp.broadcast_to(jnp.asarray(val.data), off.shape)
        m = jnp.ones(off.shape, bool) if mask is None else jnp.broadcast_to(mask.data, off.shape)
        self.records.append(Record(kind, ptr.buf, off, vals, m))
        self.written.add(ptr.buf)

    def create_atomic_rmw(self, op: Any, ptr: Value, val: Value, mask: Any, sem: Any, scope: Any):
        from triton._C.libtriton import ir

        kinds = {ir.ATOMIC_OP.ADD: "add", ir.ATOMIC_OP.FADD: "add", ir.ATOMIC_OP.MAX: "max"}
        kinds[ir.ATOMIC_OP.MIN] = "min"
        if op not in kinds:
            raise NotImplementedError(f"atomic {op} is not supported by the translator yet")
        self._record(kinds[op], ptr, val, mask)
        return Value(_Unused("the result of an atomic"), val.dtype)

    def create_barrier(self) -> None:
        return None

    # casts
    def _cast(self, src: Value, dst: Any, *rest: Any) -> Value:
        xp = _xp(src.data)
        return Value(xp.asarray(src.data).astype(np_dtype(dst)), dst.scalar)

    create_si_to_fp = create_ui_to_fp = create_fp_to_si = create_fp_to_ui = _cast
    create_fp_ext = create_fp_trunc = create_int_cast = create_fp_to_fp = _cast

    def create_bitcast(self, src: Value, dst: Any) -> Value:
        return Value(jax.lax.bitcast_convert_type(jnp.asarray(src.data), np_dtype(dst)), dst.scalar)

    # arithmetic
    def _bin(self, fn: Any) -> Any:
        def op(lhs: Value, rhs: Value) -> Value:
            xp = _xp(lhs.data, rhs.data)
            out = getattr(xp, fn)(lhs.data, rhs.data)
            dt = lhs.dtype.scalar
            if fn in _COMPARE:
                dt = tl.int1
            return Value(xp.asarray(out).astype(np_dtype(dt)), dt)

        return op

    def create_addptr(self, ptr: Value, offset: Value) -> Value:
        xp = _xp(ptr.data, offset.data)
        return Value(xp.add(ptr.data, offset.data), ptr.dtype, ptr.buf)

    def create_idiv(self, lhs: Value, rhs: Value) -> Value:
        xp = _xp(lhs.data, rhs.data)
        q = xp.fix(xp.true_divide(lhs.data, rhs.data)) if xp is np else None
        if q is None:
            q = jax.lax.div(
                jnp.asarray(lhs.data), jnp.asarray(rhs.data, jnp.asarray(lhs.data).dtype)
            )
        return Value(xp.asarray(q).astype(np_dtype(lhs.dtype)), lhs.dtype.scalar)

    def create_srem(self, lhs: Value, rhs: Value) -> Value:
        xp = _xp(lhs.data, rhs.data)
        return Value(xp.fmod(lhs.data, rhs.data), lhs.dtype.scalar)

    create_urem = create_frem = create_srem
    create_sdiv = create_udiv = create_idiv

    def create_select(self, cond: Value, a: Value, b: Value) -> Value:
        xp = _xp(cond.data, a.data, b.data)
        if a.buf != b.buf:
            raise NotImplementedError("tl.where between pointers into different tensors")
        return Value(xp.where(cond.data, a.data, b.data), b.dtype.scalar, a.buf)

    def create_fma(self, x: Value, y: Value, z: Value) -> Value:
        return Value(x.data * y.data + z.data, z.dtype.scalar)

    def _un(self, fn: Any) -> Any:
        def op(arg: Value) -> Value:
            return Value(getattr(_xp(arg.data), fn)(arg.data), arg.dtype.scalar)

        return op

    def create_rsqrt(self, arg: Value) -> Value:
        return Value(jax.lax.rsqrt(jnp.asarray(arg.data)), arg.dtype.scalar)

    def create_erf(self, arg: Value) -> Value:
        return Value(jax.scipy.special.erf(jnp.asarray(arg.data)), arg.dtype.scalar)

    def create_umulhi(self, lhs: Value, rhs: Value) -> Value:
        a = jnp.asarray(lhs.data).astype(jnp.uint32).astype(jnp.uint64)
        b = jnp.asarray(rhs.data).astype(jnp.uint32).astype(jnp.uint64)
        hi = ((a * b) >> 32).astype(jnp.uint32)
        return Value(hi.astype(np_dtype(lhs.dtype)), lhs.dtype.scalar)

    # shapes
    def create_make_range(self, ty: Any, start: int, stop: int) -> Value:
        return Value(np.arange(start, stop, dtype=np.int32), tl.int32)

    def create_splat(self, ty: Any, arg: Value) -> Value:
        xp = _xp(arg.data)
        return Value(xp.broadcast_to(arg.data, ty.shape), arg.dtype.scalar, arg.buf)

    def create_broadcast(self, arg: Value, shape: Any) -> Value:
        xp = _xp(arg.data)
        return Value(xp.broadcast_to(arg.data, shape), arg.dtype.scalar, arg.buf)

    def create_expand_dims(self, arg: Value, axis: int) -> Value:
        return Value(_xp(arg.data).expand_dims(arg.data, axis), arg.dtype.scalar, arg.buf)

    def create_reshape(self, arg: Value, shape: Any, allow_reorder: bool) -> Value:
        return Value(_xp(arg.data).reshape(arg.data, shape), arg.dtype.scalar, arg.buf)

    def create_trans(self, arg: Value, perm: Any) -> Value:
        return Value(_xp(arg.data).transpose(arg.data, perm), arg.dtype.scalar, arg.buf)

    def create_dot(self, a: Value, b: Value, d: Value, precision: Any, imprecise: Any) -> Value:
        acc = jnp.asarray(d.data)
        out = jnp.matmul(jnp.asarray(a.data), jnp.asarray(b.data), preferred_element_type=acc.dtype)
        return Value(out + acc, d.dtype.scalar)


class _Options:
    default_dot_input_precision = "ieee"
    allowed_dot_input_precisions = ("tf32", "tf32x3", "ieee")
    max_num_imprecise_acc_default = 0
    supported_fp8_dtypes = ()
    deprecated_fp8_dot_operand_dtypes = ()
    sanitize_overflow = False
    debug = False


class _Unused:
    def __init__(self, what: str) -> None:
        self.what = what

    def __array__(self, *a: Any, **k: Any) -> Any:
        raise NeedsSequential(f"the kernel uses {self.what}")


_TY = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "fp64": "float64"}
_CONST = {
    "int1": tl.int1,
    "int8": tl.int8,
    "int16": tl.int16,
    "int32": tl.int32,
    "int64": tl.int64,
    "uint8": tl.uint8,
    "uint16": tl.uint16,
    "uint32": tl.uint32,
    "uint64": tl.uint64,
    "fp16": tl.float16,
    "bf16": tl.bfloat16,
    "fp32": tl.float32,
    "fp64": tl.float64,
}
_COMPARE = {"less", "less_equal", "greater", "greater_equal", "equal", "not_equal"}
_BINARY = {
    "add": "add fadd",
    "subtract": "sub fsub",
    "multiply": "mul fmul",
    "true_divide": "fdiv precise_divf approx_divf",
    "minimum": "minsi minui minimumf minnumf",
    "maximum": "maxsi maxui maximumf maxnumf",
    "bitwise_and": "and",
    "bitwise_or": "or",
    "bitwise_xor": "xor",
    "left_shift": "shl",
    "right_shift": "lshr ashr",
    "less": "icmpSLT icmpULT fcmpOLT fcmpULT",
    "less_equal": "icmpSLE icmpULE fcmpOLE fcmpULE",
    "greater": "icmpSGT icmpUGT fcmpOGT fcmpUGT",
    "greater_equal": "icmpSGE icmpUGE fcmpOGE fcmpUGE",
    "equal": "icmpEQ fcmpOEQ fcmpUEQ",
    "not_equal": "icmpNE fcmpONE fcmpUNE",
}
_UNARY = {
    "exp": "exp",
    "exp2": "exp2",
    "log": "log",
    "log2": "log2",
    "sin": "sin",
    "cos": "cos",
    "sqrt": "sqrt precise_sqrt",
    "abs": "fabs iabs",
    "floor": "floor",
    "ceil": "ceil",
    "negative": "fneg",
}
for _fn, _names in _BINARY.items():
    for _n in _names.split():
        setattr(JaxBuilder, f"create_{_n}", lambda self, a, b, _fn=_fn: self._bin(_fn)(a, b))
for _fn, _names in _UNARY.items():
    for _n in _names.split():
        setattr(JaxBuilder, f"create_{_n}", lambda self, a, _fn=_fn: self._un(_fn)(a))
