"""A Triton IR builder whose values are JAX arrays (issue 15).

Triton's ``TritonSemantic`` (promotion, broadcasting, constexpr rules) calls a builder's
``create_*``/``get_*`` methods; this builder answers them with JAX (or NumPy, for values that
do not depend on the program id) instead of MLIR. Pointers are ``Value``s whose data are
element offsets into one flat buffer, named by ``buf``.

Two modes. Vectorised (the default): all programs run at once under ``jax.vmap``; stores and
atomics are recorded and applied after (an affine store as slices and reshapes, see
``affine.py``, the others as one scatter each), so a load from a buffer already
stored to, or the use of an atomic's old value, raises ``NeedsSequential``. Sequential: programs
run one after another (``fori_loop``), the buffers are this builder's state, and stores and
atomics apply at once, in lane order. ``predicate`` is the condition of the traced ``if``
branches being run (both sides run; each side's stores are masked by it).

Every ``create_*``/``get_*`` method of Triton's interpreter builder is either implemented here
or listed in ``UNSUPPORTED`` with the reason (tests/kernels/test_triton_lang.py checks this).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import triton.language as tl

from torchtpu.kernels.triton import affine
from torchtpu.kernels.triton.errors import unsupported


class NeedsSequential(Exception):
    """The kernel reads what it wrote, or uses an atomic's result: run programs in order."""


@dataclasses.dataclass
class Value:
    data: Any
    dtype: Any
    buf: int | None = None
    aff: affine.Affine | None = None  # integer offsets' affine form (affine.py), if known
    dots: tuple[Any, ...] | None = None  # (base, A, B, tiles): data is base + A @ B (K-loop)
    tile: tuple[Any, ...] | None = None  # an affine load: (buffer, Affine, shape, terms, other)
    cond: tuple[Any, ...] | None = None  # a mask as a conjunction of affine bounds (affine.py)

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
        raise unsupported(
            f"the Triton dtype {tt}",
            "has no JAX equivalent here",
            "use fp16/bf16/fp32/fp64 or an integer type",
        ) from None


def _xp(*xs: Any) -> Any:
    return jnp if any(isinstance(x, jax.Array) for x in xs) else np


@dataclasses.dataclass
class Record:
    kind: str  # "store", "add", "max", "min", "umax", "umin"
    buf: int
    offsets: Any
    values: Any
    mask: Any
    view: Any = None  # the element dtype the pointer sees, where it is not the buffer's
    layout: affine.Layout | None = None  # distinct affine lanes: stored without a scatter


def as_view(x: Any, dtype: Any) -> Any:
    """``x``'s bits as ``dtype`` (same width; bool and int8 convert by value)."""
    dtype = np.dtype(dtype)
    if x.dtype == dtype:
        return x
    if x.dtype == np.bool_ or dtype == np.bool_:
        return x.astype(dtype)
    return jax.lax.bitcast_convert_type(x, dtype)


def scatter(buf: Any, kind: str, off: Any, vals: Any, mask: Any, view: Any = None) -> Any:
    """``buf`` with a record's values stored (or combined, for atomics) at its offsets, masked
    lanes dropped; ``umax``/``umin`` compare the bits as unsigned."""
    if kind in ("umax", "umin") and view is None:
        view = _unsigned(buf.dtype)
    target = buf if view is None else as_view(buf, view)
    idx = jnp.where(mask, off, buf.shape[0]).reshape(-1)
    at = target.at[idx]
    apply = {"store": at.set, "add": at.add, "max": at.max, "min": at.min}
    apply.update(umax=at.max, umin=at.min)
    new = apply[kind](vals.reshape(-1).astype(target.dtype), mode="drop")
    return new if view is None else as_view(new, buf.dtype)


class JaxBuilder:
    """State of one trace: the buffers, the stores made (vectorised mode), and the predicate."""

    def __init__(
        self, buffers: list[Any], grid: tuple[int, int, int], sequential: bool = False
    ) -> None:
        self.buffers = list(buffers)
        self.grid_dim = grid
        self.sequential = sequential
        self.pid: tuple[Any, Any, Any] = (0, 0, 0)
        # Vectorised mode: the flat program id (vmapped) and, per axis, its value in every
        # program (NumPy), which start the affine forms of offsets.
        self.flat_pid: Any = None
        self.programs: tuple[np.ndarray, ...] | None = None
        self.records: list[Record] = []
        self.written: set[int] = set()
        self.predicate: Any = None
        self.options = _Options()
        self.codegen_fns = {"min_dot_size": lambda a, b: (1, 1, 1)}

    # types
    def get_block_ty(self, dtype: Any, shape: Any) -> Any:
        return tl.block_type(dtype, shape)

    def get_ptr_ty(self, elt: Any, space: Any) -> Any:
        return tl.pointer_type(elt, space)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        why = UNSUPPORTED.get(name, "is not part of the subset torchtpu translates")
        if name.startswith(("create_", "get_")):
            raise unsupported(f"builder.{name}", why)
        raise AttributeError(name)

    def get_null_value(self, ty: Any) -> Value:
        return Value(np.zeros((), np_dtype(ty)), ty)

    def get_all_ones_value(self, ty: Any) -> Value:
        return Value(np.asarray(-1).astype(np_dtype(ty)), ty)

    # programming model
    def create_get_program_id(self, axis: int) -> Value:
        if self.programs is None:
            return Value(self.pid[axis], tl.int32)
        return Value(self.pid[axis], tl.int32, aff=affine.Affine.make(self.programs[axis], ()))

    def create_get_num_programs(self, axis: int) -> Value:
        return Value(np.int32(self.grid_dim[axis]), tl.int32)

    def get_cache_policy(self, *a: Any) -> None:
        return None

    # memory
    def create_load(self, ptr: Value, cache: Any, volatile: Any) -> Value:
        return self.create_masked_load(ptr, None, None, cache, volatile)

    def create_masked_load(self, ptr: Value, mask: Any, other: Any, cache: Any, vol: Any) -> Value:
        if ptr.buf in self.written and not self.sequential:
            raise NeedsSequential("a load from a buffer the kernel already stored to")
        buf = self.buffers[ptr.buf]
        off = jnp.asarray(ptr.data)
        layout = self._layout(ptr, mask)
        view = self._view(ptr)
        dt = ptr.get_element_ty()
        fill = _uniform(other)
        tile = None  # what affine.dot needs to take this block from memory itself
        terms = () if mask is None else _terms(mask)
        if layout is not None and view is None and fill is not None and terms is not None:
            fill = np.asarray(fill, buf.dtype)
            tile = (ptr.buf, affine.of(ptr), tuple(np.shape(off)), terms, fill)
        if layout is None:
            got = jnp.take(buf, off, mode="clip")
        elif layout.inside and view is None and fill is not None and _box_mask(mask, layout):
            # Every lane the static mask keeps is read, the rest are `other`: the block
            # padded with it, no select (which would stop XLA fusing the load's consumers).
            got = affine.load(buf, off, self.flat_pid, layout, np.asarray(fill, buf.dtype))
            return Value(got, dt, tile=tile)
        else:
            got = affine.load(buf, off, self.flat_pid, layout)
        if view is not None:
            got = as_view(got, view)
        if mask is not None:
            fill = jnp.zeros((), got.dtype) if other is None else jnp.asarray(other.data, got.dtype)
            ok = jnp.asarray(mask.data)
            if layout is None or not layout.inside:
                ok = ok & (off >= 0) & (off < buf.shape[0])
            got = jnp.where(ok, got, fill)
        return Value(got, dt, tile=tile)

    def _layout(self, ptr: Value, mask: Any) -> affine.Layout | None:
        """Where ``ptr``'s lanes (those a static ``mask`` may keep) are slices and reshapes of
        its buffer, for every program at once: vectorised mode only, else None (a gather)."""
        aff = affine.of(ptr)
        if aff is None or self.sequential:
            return None
        shape = tuple(np.shape(ptr.data))
        box = affine.box_of(None if mask is None else mask.data, shape)
        if box is None:  # a static mask that keeps no lane: nothing is read
            return None
        if aff.base.ndim and self.programs is None:
            return None
        lo, hi = affine.bounds(aff, shape)
        limit = 2 ** (8 * np.dtype(getattr(ptr.data, "dtype", np.int64)).itemsize - 1)
        if lo < -limit or hi >= limit:  # the offsets wrapped: the affine form is not theirs
            return None
        terms = None if mask is None else mask.cond
        return affine.plan(aff, shape, box, self.buffers[ptr.buf].shape[0], terms)

    def create_store(self, ptr: Value, val: Value, cache: Any) -> None:
        self.create_masked_store(ptr, val, None, cache)

    def create_masked_store(self, ptr: Value, val: Value, mask: Any, cache: Any) -> None:
        self._record("store", ptr, val, mask)

    def _lanes(self, ptr: Value, val: Value, mask: Any) -> tuple[Any, Any, Any]:
        off = jnp.asarray(ptr.data)
        vals = jnp.broadcast_to(jnp.asarray(val.data), off.shape)
        m = jnp.ones(off.shape, bool) if mask is None else jnp.broadcast_to(mask.data, off.shape)
        if self.predicate is not None:
            m = m & self.predicate
        return off, vals, m

    def _view(self, ptr: Value) -> Any:
        """The pointer's element dtype where it differs from its buffer's (``ptr.to(
        tl.pointer_type(tl.int32), bitcast=True)``, bool tensors read as int8), else None."""
        have = self.buffers[ptr.buf].dtype
        want = np.dtype(np_dtype(ptr.get_element_ty()))
        if want == have:
            return None
        if want.itemsize != have.itemsize:
            raise unsupported(
                "a pointer bitcast",
                f"reads a {have} tensor as {want} elements (another width)",
                "load the values and convert them (x.to(dtype, bitcast=True))",
            )
        return want

    def _record(self, kind: str, ptr: Value, val: Value, mask: Any) -> None:
        off, vals, m = self._lanes(ptr, val, mask)
        view = self._view(ptr)
        if self.sequential:
            self.buffers[ptr.buf] = scatter(self.buffers[ptr.buf], kind, off, vals, m, view)
        else:
            layout = self._layout(ptr, mask) if kind == "store" else None
            if layout is not None and not layout.distinct:
                layout = None
            self.records.append(Record(kind, ptr.buf, off, vals, m, view, layout))
        self.written.add(ptr.buf)

    def create_atomic_rmw(self, op: Any, ptr: Value, val: Value, mask: Any, sem: Any, scope: Any):
        from triton._C.libtriton import ir

        kind = _ATOMIC_KIND.get(str(op).rsplit(".", 1)[-1])
        if kind is None:
            raise unsupported(f"builder.create_atomic_rmw({op})", "is not supported")
        if self.sequential:
            return self._atomic_in_order(kind, ptr, val, mask, None)
        if kind not in ("add", "max", "min", "umax", "umin", "xchg"):
            raise NeedsSequential(f"atomic {kind}, which has no scatter form")
        del ir
        self._record("store" if kind == "xchg" else kind, ptr, val, mask)
        return Value(_Unused("the result of an atomic"), val.dtype)

    def create_atomic_cas(self, ptr: Value, cmp: Value, val: Value, sem: Any, scope: Any) -> Value:
        if not self.sequential:
            raise NeedsSequential("atomic_cas, whose result orders the programs")
        return self._atomic_in_order("cas", ptr, val, None, cmp)

    def _atomic_in_order(self, kind: str, ptr: Value, val: Value, mask: Any, cmp: Any) -> Value:
        """One lane after another (the order of the block's elements): the old values are
        exact even where lanes share an address."""
        off, vals, m = self._lanes(ptr, val, mask)
        shape = off.shape
        stored = self.buffers[ptr.buf]
        view = self._view(ptr)
        if kind in ("umax", "umin"):  # compare the bits as unsigned
            view, kind = _unsigned(stored.dtype), kind[1:]
        buf0 = stored if view is None else as_view(stored, view)
        size = buf0.shape[0]
        off, m = off.reshape(-1), m.reshape(-1)
        vals = vals.reshape(-1).astype(buf0.dtype)  # same width: int <-> uint keeps the bits
        cmps = None if cmp is None else jnp.broadcast_to(jnp.asarray(cmp.data), shape).reshape(-1)

        def lane(i: Any, carry: Any) -> Any:
            buf, olds = carry
            o = jnp.clip(off[i], 0, size - 1)
            old, v = buf[o], vals[i]
            if kind == "cas":
                new = jnp.where(old == cmps[i].astype(old.dtype), v, old)
            else:
                new = _RMW[kind](old, v)
            ok = m[i] & (off[i] >= 0) & (off[i] < size)
            buf = buf.at[jnp.where(ok, o, size)].set(new, mode="drop")
            return buf, olds.at[i].set(old)

        buf, olds = jax.lax.fori_loop(0, off.shape[0], lane, (buf0, jnp.zeros_like(vals)))
        self.buffers[ptr.buf] = buf if view is None else as_view(buf, stored.dtype)
        self.written.add(ptr.buf)
        olds = olds.reshape(shape).astype(np_dtype(val.dtype))
        return Value(olds, val.dtype)

    def create_barrier(self) -> None:
        """``tl.debug_barrier``: nothing to do. A program's block is one JAX value (no threads
        inside a program to order), and other programs' stores are seen only in sequential
        mode, where programs already run one after another."""
        return None

    def create_assume(self, cond: Value) -> None:
        return None  # an optimisation hint (tl.assume), true by the user's promise

    def create_print(self, prefix: str, hex: bool, values: list[Value], signed: Any) -> None:
        jax.debug.print(prefix + " {}" * len(values), *[jnp.asarray(v.data) for v in values])

    # casts
    def _cast(self, src: Value, dst: Any, *rest: Any) -> Value:
        xp = _xp(src.data)
        dt = np_dtype(dst)
        aff = None
        if src.aff is not None and np.dtype(dt).kind in "iu":  # offsets widened keep their form
            wider = np.dtype(dt).itemsize >= np.dtype(np_dtype(src.dtype)).itemsize
            aff = src.aff if wider else affine.uniform(lambda b: b, [src], dt)
        return Value(xp.asarray(src.data).astype(dt), dst.scalar, aff=aff)

    create_si_to_fp = create_ui_to_fp = create_fp_to_si = create_fp_to_ui = _cast
    create_fp_ext = create_fp_trunc = create_int_cast = create_fp_to_fp = _cast

    def create_bitcast(self, src: Value, dst: Any) -> Value:
        if dst.scalar.is_ptr():  # the same offsets, read as another element type (_view)
            return Value(src.data, dst.scalar, src.buf)
        if isinstance(src.data, np.ndarray | np.generic):
            return Value(np.asarray(src.data).view(np_dtype(dst)), dst.scalar)
        return Value(jax.lax.bitcast_convert_type(jnp.asarray(src.data), np_dtype(dst)), dst.scalar)

    # arithmetic
    def _bin(self, fn: Any) -> Any:
        def op(lhs: Value, rhs: Value) -> Value:
            xp = _xp(lhs.data, rhs.data)
            with np.errstate(over="ignore"):  # integers wrap, as on the device
                out = getattr(xp, fn)(lhs.data, rhs.data)
            dt = lhs.dtype.scalar
            if fn in _COMPARE:
                dt = tl.int1
            aff = cond = None
            signed = np.dtype(np_dtype(lhs.dtype)).kind == "i"
            if lhs.aff is not None or rhs.aff is not None:  # a pointer's offsets being built
                if fn in _COMPARE and signed:  # a bounds mask true (or false) everywhere: static
                    known = affine.compare(fn, affine.of(lhs), affine.of(rhs), np.shape(out))
                    if known is not None:
                        return Value(np.full(np.shape(out), known), dt)
                aff = _affine_bin(fn, lhs, rhs, np_dtype(dt))
            if fn in _COMPARE and signed:  # `rows < M`: kept as a bound, for affine.dot
                cond = affine.bound(fn, affine.of(lhs), affine.of(rhs), np.shape(out))
            elif fn == "bitwise_and" and lhs.dtype.scalar == tl.int1:
                left, right = _terms(lhs), _terms(rhs)
                cond = None if left is None or right is None else left + right
            if fn == "add" and (lhs.dots or rhs.dots):  # acc += tl.dot(a, b): one K-loop matmul
                first, second = (lhs, rhs) if rhs.dots else (rhs, lhs)
                joined = _dot_join(first.dots or (first.data, None, None, None), second.dots)
                if joined is not None and np.shape(out) == np.shape(second.data):
                    return self._dot_value(joined, dt)
            return Value(xp.asarray(out).astype(np_dtype(dt)), dt, aff=aff, cond=cond)

        return op

    def create_fdiv(self, lhs: Value, rhs: Value) -> Value:
        """IEEE division. XLA rewrites ``x / broadcast(d)`` as ``x * (1 / d)``, off by an ulp;
        on the CPU the quotient is taken in float64 (correctly rounded back for fp32 and
        narrower), so kernels match Triton's interpreter bit for bit there."""
        xp = _xp(lhs.data, rhs.data)
        dt = np_dtype(lhs.dtype)
        if xp is np or np.dtype(dt).itemsize > 4 or jax.default_backend() != "cpu":
            return self._bin("true_divide")(lhs, rhs)
        wide = jnp.asarray(lhs.data).astype(jnp.float64) / jnp.asarray(rhs.data, jnp.float64)
        return Value(wide.astype(dt), lhs.dtype.scalar)

    create_precise_divf = create_fdiv

    def create_addptr(self, ptr: Value, offset: Value) -> Value:
        xp = _xp(ptr.data, offset.data)
        aff = None
        if ptr.aff is not None or offset.aff is not None:
            aff = affine.add(affine.of(ptr), affine.of(offset))
        return Value(xp.add(ptr.data, offset.data), ptr.dtype, ptr.buf, aff)

    def create_idiv(self, lhs: Value, rhs: Value) -> Value:
        """Integer division truncating toward zero (C's, not Python's floor)."""
        xp = _xp(lhs.data, rhs.data)
        if xp is np:
            with np.errstate(divide="ignore", invalid="ignore"):
                q = (lhs.data - np.fmod(lhs.data, rhs.data)) // rhs.data
        else:
            a = jnp.asarray(lhs.data)
            q = jax.lax.div(a, jnp.asarray(rhs.data, a.dtype))
        dt = np_dtype(lhs.dtype)
        aff = None
        if lhs.aff is not None or rhs.aff is not None:
            aff = affine.uniform(lambda a, b: (a - np.fmod(a, b)) // b, [lhs, rhs], dt)
        return Value(xp.asarray(q).astype(dt), lhs.dtype.scalar, aff=aff)

    def create_srem(self, lhs: Value, rhs: Value) -> Value:
        xp = _xp(lhs.data, rhs.data)
        aff = None
        if lhs.aff is not None or rhs.aff is not None:
            aff = affine.uniform(np.fmod, [lhs, rhs], np_dtype(lhs.dtype))
        with np.errstate(divide="ignore", invalid="ignore"):
            return Value(xp.fmod(lhs.data, rhs.data), lhs.dtype.scalar, aff=aff)

    create_urem = create_frem = create_srem
    create_sdiv = create_udiv = create_idiv

    def create_lshr(self, lhs: Value, rhs: Value) -> Value:
        """A logical shift: the bits of a signed value shift in zeros."""
        return self._shift(lhs, rhs, unsigned=True)

    def create_ashr(self, lhs: Value, rhs: Value) -> Value:
        return self._shift(lhs, rhs, unsigned=False)

    def _shift(self, lhs: Value, rhs: Value, unsigned: bool) -> Value:
        dt = np.dtype(np_dtype(lhs.dtype))
        view = np.dtype(f"{'u' if unsigned else ''}int{dt.itemsize * 8}")
        if _xp(lhs.data, rhs.data) is np:
            a = np.asarray(lhs.data).view(view)
            out = (a >> np.asarray(rhs.data).astype(view)).view(dt)
        else:
            a = jax.lax.bitcast_convert_type(jnp.asarray(lhs.data), view)
            out = jax.lax.bitcast_convert_type(a >> jnp.asarray(rhs.data).astype(view), dt)
        return Value(out, lhs.dtype.scalar)

    def create_select(self, cond: Value, a: Value, b: Value) -> Value:
        xp = _xp(cond.data, a.data, b.data)
        if a.buf != b.buf:
            raise unsupported(
                "tl.where between pointers into different tensors",
                "cannot be expressed (a pointer here is one buffer's offsets)",
                "select offsets into one tensor, or branch on the condition",
            )
        return Value(xp.where(cond.data, a.data, b.data), b.dtype.scalar, a.buf)

    def create_fma(self, x: Value, y: Value, z: Value) -> Value:
        return Value(x.data * y.data + z.data, z.dtype.scalar)

    def create_clampf(self, x: Value, lo: Value, hi: Value, propagate_nans: Any) -> Value:
        from triton._C.libtriton import ir

        xp = _xp(x.data, lo.data, hi.data)
        if propagate_nans == ir.PROPAGATE_NAN.NONE:
            out = xp.fmin(xp.fmax(x.data, lo.data), hi.data)
        else:
            out = xp.clip(x.data, lo.data, hi.data)
        return Value(out, x.dtype.scalar)

    def _un(self, fn: Any) -> Any:
        def op(arg: Value) -> Value:
            return Value(getattr(_xp(arg.data), fn)(arg.data), arg.dtype.scalar)

        return op

    def create_rsqrt(self, arg: Value) -> Value:
        return Value(jax.lax.rsqrt(jnp.asarray(arg.data)), arg.dtype.scalar)

    def create_erf(self, arg: Value) -> Value:
        return Value(jax.scipy.special.erf(jnp.asarray(arg.data)), arg.dtype.scalar)

    def create_umulhi(self, lhs: Value, rhs: Value) -> Value:
        """The high half of the unsigned product (Philox's ``tl.umulhi``), at 32 or 64 bits."""
        dt = np.dtype(np_dtype(lhs.dtype))
        bits = dt.itemsize * 8
        u = np.dtype(f"uint{bits}")
        xp = _xp(lhs.data, rhs.data)
        cast = (
            (lambda x: np.asarray(x).view(u))
            if xp is np
            else (lambda x: jax.lax.bitcast_convert_type(jnp.asarray(x), u))
        )
        a, b = cast(lhs.data), cast(rhs.data)
        with np.errstate(over="ignore"):
            if bits == 32:
                hi = ((a.astype(np.uint64) * b.astype(np.uint64)) >> 32).astype(np.uint32)
            else:  # 64 x 64 -> high 64 from 32-bit halves
                m = np.uint64(0xFFFFFFFF)
                a_lo, a_hi, b_lo, b_hi = a & m, a >> 32, b & m, b >> 32
                mid1 = a_hi * b_lo + ((a_lo * b_lo) >> 32)
                mid2 = a_lo * b_hi + (mid1 & m)
                hi = a_hi * b_hi + (mid1 >> 32) + (mid2 >> 32)
        back = hi.view(dt) if xp is np else jax.lax.bitcast_convert_type(hi, dt)
        return Value(back, lhs.dtype.scalar)

    # shapes
    def create_make_range(self, ty: Any, start: int, stop: int) -> Value:
        return Value(np.arange(start, stop, dtype=np.int32), tl.int32)

    def create_splat(self, ty: Any, arg: Value) -> Value:
        xp = _xp(arg.data)
        old, new = np.shape(arg.data), tuple(ty.shape)
        aff = affine.broadcast(arg.aff, old, new)
        cond = _map_cond(arg.cond, lambda a: affine.broadcast(a, old, new))
        data = xp.broadcast_to(arg.data, ty.shape)
        return Value(data, arg.dtype.scalar, arg.buf, aff, cond=cond)

    def create_unsplat(self, arg: Value) -> Value:
        return Value(_xp(arg.data).reshape(arg.data, ()), arg.dtype.scalar, arg.buf)

    def create_broadcast(self, arg: Value, shape: Any) -> Value:
        xp = _xp(arg.data)
        old, new = np.shape(arg.data), tuple(shape)
        aff = affine.broadcast(arg.aff, old, new)
        cond = _map_cond(arg.cond, lambda a: affine.broadcast(a, old, new))
        return Value(xp.broadcast_to(arg.data, shape), arg.dtype.scalar, arg.buf, aff, cond=cond)

    def create_expand_dims(self, arg: Value, axis: int) -> Value:
        aff = affine.expand_dims(arg.aff, axis, np.ndim(arg.data))
        cond = _map_cond(arg.cond, lambda a: affine.expand_dims(a, axis, np.ndim(arg.data)))
        data = _xp(arg.data).expand_dims(arg.data, axis)
        return Value(data, arg.dtype.scalar, arg.buf, aff, cond=cond)

    def create_reshape(self, arg: Value, shape: Any, allow_reorder: bool) -> Value:
        return Value(_xp(arg.data).reshape(arg.data, shape), arg.dtype.scalar, arg.buf)

    def create_trans(self, arg: Value, perm: Any) -> Value:
        return Value(_xp(arg.data).transpose(arg.data, perm), arg.dtype.scalar, arg.buf)

    def create_cat(self, lhs: Value, rhs: Value) -> Value:
        xp = _xp(lhs.data, rhs.data)
        return Value(xp.concatenate([lhs.data, rhs.data], 0), lhs.dtype.scalar, lhs.buf)

    def create_join(self, lhs: Value, rhs: Value) -> Value:
        xp = _xp(lhs.data, rhs.data)
        return Value(xp.stack([lhs.data, rhs.data], -1), lhs.dtype.scalar, lhs.buf)

    def create_split(self, val: Value) -> tuple[Value, Value]:
        return tuple(Value(val.data[..., i], val.dtype.scalar, val.buf) for i in (0, 1))

    def create_gather(self, src: Value, index: Value, axis: int) -> Value:
        got = jnp.take_along_axis(jnp.asarray(src.data), jnp.asarray(index.data), axis, mode="clip")
        return Value(got, src.dtype.scalar)

    def create_histogram(self, data: Value, bins: int, mask: Any) -> Value:
        x = jnp.asarray(data.data).reshape(-1)
        ok = (x >= 0) & (x < bins)
        if mask is not None:
            ok = ok & jnp.broadcast_to(jnp.asarray(mask.data), data.data.shape).reshape(-1)
        counts = jnp.zeros(bins, jnp.int32).at[jnp.where(ok, x, bins)].add(1, mode="drop")
        return Value(counts, tl.int32)

    def create_dot(self, a: Value, b: Value, d: Value, precision: Any, imprecise: Any) -> Value:
        """``d + a @ b``, accumulated in ``d``'s dtype (fp32 for fp16/bf16 inputs). A K-loop,
        ``acc = tl.dot(a_k, b_k, acc)`` or ``acc += tl.dot(a_k, b_k)``, is one matmul over
        every tile so far (the tiles concatenated along K; ``Value.dots``): XLA drops the
        partial ones no op reads, so the loop is one ``dot_general``."""
        lhs, rhs = jnp.asarray(a.data), jnp.asarray(b.data)
        tiles = (a.tile, b.tile) if a.tile and b.tile else None
        joined = _dot_join(d.dots, (np.zeros(()), lhs, rhs, tiles))
        return self._dot_value(joined or (d.data, lhs, rhs, tiles), d.dtype.scalar)

    def _dot_value(self, dots: tuple[Any, ...], dtype: Any) -> Value:
        """``base + A @ B``; where A and B are whole affine loads (``tiles``), by one
        ``dot_general`` of the blocks as they lie in memory (``affine.dot``)."""
        base, a, b, tiles = dots
        acc = np_dtype(dtype)
        layouts = None
        if tiles is not None and not self.sequential:
            layouts = [self._tile_layout(t) for t in tiles]
        if layouts is None or None in layouts:
            out = jnp.matmul(a, b, preferred_element_type=acc)
        else:
            bufs = tuple(self.buffers[t[0]] for t in tiles)
            masks = tuple(t[3:] for t in tiles)
            out = affine.dot(bufs, (a, b), self.flat_pid, layouts, masks, acc)
        if not _zero(base):
            out = out + jnp.asarray(base, acc)
        return Value(out, dtype, dots=dots)

    def _tile_layout(self, tile: tuple[Any, ...]) -> affine.Layout | None:
        buf, aff, shape, terms, _ = tile
        box = tuple((0, s) for s in shape)
        layout = affine.plan(aff, shape, box, self.buffers[buf].shape[0], terms)
        return layout if layout is not None and (layout.inside or terms) else None


def _uniform(other: Any) -> Any:
    """A load's ``other`` as one static value (0 if absent), or None."""
    if other is None:
        return 0
    fill = other.data
    if not isinstance(fill, np.ndarray | np.generic) or np.unique(fill).size > 1:
        return None
    return np.asarray(fill).reshape(-1)[0]


def _terms(mask: Value) -> tuple[Any, ...] | None:
    """A mask as affine bounds (``Value.cond``); () for a static all-true mask."""
    if mask.cond is not None:
        return mask.cond
    data = mask.data
    if isinstance(data, np.ndarray | np.generic) and np.all(data):
        return ()
    return None


def _map_cond(cond: Any, f: Any) -> tuple[Any, ...] | None:
    if cond is None:
        return None
    out = tuple((f(a), fn) for a, fn in cond)
    return None if any(a is None for a, _ in out) else out


def _box_mask(mask: Any, layout: affine.Layout) -> bool:
    """Whether ``mask`` (absent, or static) keeps exactly the lanes of ``layout``'s box:
    then the load is the box padded with ``other``."""
    if mask is None:
        return True
    if not isinstance(mask.data, np.ndarray | np.generic):
        return False
    keep = np.zeros(layout.shape, bool)
    keep[tuple(slice(lo, hi) for lo, hi in layout.box)] = True
    return bool(np.array_equal(np.broadcast_to(mask.data, layout.shape), keep))


def _zero(x: Any) -> bool:
    return isinstance(x, np.ndarray | np.generic) and not np.any(x)


def _dot_join(acc: Any, part: Any) -> tuple[Any, ...] | None:
    """``acc`` (base, A, B, tiles) plus ``part`` (a zero base, a, b, tiles) as one
    (base, A|a, B|b, tiles), concatenated along K; None where they do not line up (then the
    sum is computed)."""
    if acc is None or part is None:
        return None
    base, a0, b0, t0 = acc
    zero, a, b, t = part
    if not _zero(zero):
        return None
    if a0 is None:
        return base, a, b, t
    if t0 is None or t is None:  # not affine tiles: per-tile matmuls (no copies of the tiles)
        return None
    rows, cols = (a0.shape[:-1], a0.dtype), (b0.shape[:-2] + b0.shape[-1:], b0.dtype)
    if (rows, cols) != ((a.shape[:-1], a.dtype), (b.shape[:-2] + b.shape[-1:], b.dtype)):
        return None
    ta, tb = _tile_join(t0[0], t[0], -1), _tile_join(t0[1], t[1], -2)
    if ta is None or tb is None:
        return None
    return base, jnp.concatenate([a0, a], -1), jnp.concatenate([b0, b], -2), (ta, tb)


def _tile_join(t0: Any, t: Any, axis: int) -> tuple[Any, ...] | None:
    """One tile of two loads adjacent along ``axis`` (the next K tile: offsets and mask
    bounds shifted by the first tile's extent), or None."""
    (buf0, a0, s0, terms0, fill0), (buf, a, s, terms, fill) = t0, t
    if buf0 != buf or len(s0) != len(s) or len(terms0) != len(terms) or fill0 != fill:
        return None
    if s0[:axis] + s0[axis:][1:] != s[:axis] + s[axis:][1:]:
        return None
    pairs = [(a0, a), *((x0, x) for (x0, _), (x, _) in zip(terms0, terms, strict=True))]
    for x0, x in pairs:
        coef0 = x0.coef or (0,) * len(s0)
        if coef0 != (x.coef or (0,) * len(s)):
            return None
        if not np.array_equal(x.base, x0.base + s0[axis] * coef0[axis]):
            return None
    if [fn for _, fn in terms0] != [fn for _, fn in terms]:
        return None
    shape = list(s0)
    shape[axis] += s[axis]
    return buf0, a0, tuple(shape), terms0, fill0


def _affine_bin(fn: str, lhs: Value, rhs: Value, dtype: Any) -> affine.Affine | None:
    """The affine form of an integer op's result: sums, differences and products by a
    static scalar keep it; any op on per-program scalars is run over every program."""
    if np.dtype(dtype).kind not in "iu":
        return None
    a, b = affine.of(lhs), affine.of(rhs)
    if fn in ("add", "subtract"):
        out = affine.add(a, b, 1 if fn == "add" else -1)
    elif fn == "multiply":
        out = affine.mul(a, b)
    else:
        return affine.uniform(getattr(np, fn), [lhs, rhs], dtype)
    if out is not None and out.base.ndim:  # wrap as the device does
        out = affine.Affine.make(out.base.astype(dtype), out.coef)
    return out


class _Options:
    default_dot_input_precision = "ieee"
    allowed_dot_input_precisions = ("tf32", "tf32x3", "ieee")
    max_num_imprecise_acc_default = 0
    supported_fp8_dtypes = ()
    deprecated_fp8_dot_operand_dtypes = ()
    sanitize_overflow = False
    debug = False  # tl.device_assert emits nothing, as in Triton without TRITON_DEBUG


class _Unused:
    def __init__(self, what: str) -> None:
        self.what = what

    def __array__(self, *a: Any, **k: Any) -> Any:
        raise NeedsSequential(f"the kernel uses {self.what}")


def _unsigned(dtype: Any) -> Any:
    """The unsigned dtype of ``dtype``'s width, to compare bit patterns as unsigned."""
    return np.dtype(f"uint{np.dtype(dtype).itemsize * 8}")


_ATOMIC_KIND = {
    "ADD": "add",
    "FADD": "add",
    "MAX": "max",
    "MIN": "min",
    "UMAX": "umax",
    "UMIN": "umin",
    "AND": "and",
    "OR": "or",
    "XOR": "xor",
    "XCHG": "xchg",
}
_RMW = {
    "add": lambda old, v: old + v,
    "max": jnp.maximum,
    "min": jnp.minimum,
    "and": jnp.bitwise_and,
    "or": jnp.bitwise_or,
    "xor": jnp.bitwise_xor,
    "xchg": lambda old, v: v,
}

# Triton's interpreter builder methods this builder does not implement, and why. A method in
# neither this table nor JaxBuilder fails tests/kernels/test_triton_lang.py (a Triton upgrade).
UNSUPPORTED = {
    "create_int_to_ptr": "pointers are (tensor, offsets) pairs here, not integers",
    "create_ptr_to_int": "pointers are (tensor, offsets) pairs here, not integers",
    "create_extern_elementwise": "calls into libdevice/extern libraries have no JAX equivalent",
    "create_inline_asm": "inline PTX/GCN assembly has no JAX equivalent",
    "create_assert": "device asserts are compiled out (options.debug is False, as in Triton "
    "without TRITON_DEBUG)",
    "create_atomic_load": "memory-ordered loads for spinning between programs: programs here "
    "never run concurrently",
    "create_atomic_store": "memory-ordered stores for signalling between programs: programs "
    "here never run concurrently",
    "create_atomic_poll": "polling another program's store: programs here never run concurrently",
    "create_make_tensor_descriptor": "TMA tensor descriptors are a Hopper/Blackwell memory "
    "unit; use pointer arithmetic",
    "create_descriptor_load": "TMA tensor descriptors: use pointer arithmetic",
    "create_descriptor_store": "TMA tensor descriptors: use pointer arithmetic",
    "create_descriptor_gather": "TMA tensor descriptors: use pointer arithmetic",
    "create_descriptor_scatter": "TMA tensor descriptors: use pointer arithmetic",
    "create_dot_scaled": "microscaled (mxfp) dots need fp8/fp4 types JAX lacks here",
    "get_fp8e4nv_ty": "fp8 types are not translated",
    "get_fp8e4b15_ty": "fp8 types are not translated",
    "get_fp8e4b8_ty": "fp8 types are not translated",
    "get_fp8e5_ty": "fp8 types are not translated",
    "get_fp8e5b16_ty": "fp8 types are not translated",
}

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
_TYPE_GETTERS = {"half": tl.float16, "bf16": tl.bfloat16, "float": tl.float32}
_TYPE_GETTERS["double"] = tl.float64
for _n, _t in _CONST.items():
    if _n[0] in "iu":
        _TYPE_GETTERS[_n] = _t
    setattr(JaxBuilder, f"get_{_n}", lambda self, v, _t=_t: Value(np.asarray(v, np_dtype(_t)), _t))
for _n, _t in _TYPE_GETTERS.items():
    setattr(JaxBuilder, f"get_{_n}_ty", lambda self, _t=_t: _t)

_COMPARE = {"less", "less_equal", "greater", "greater_equal", "equal", "not_equal"}
_BINARY = {
    "add": "add fadd",
    "subtract": "sub fsub",
    "multiply": "mul fmul",
    "true_divide": "approx_divf",
    "minimum": "minsi minui minimumf",
    "maximum": "maxsi maxui maximumf",
    "fmin": "minnumf",  # tl.minimum's default propagate_nan=NONE: a NaN loses
    "fmax": "maxnumf",
    "bitwise_and": "and",
    "bitwise_or": "or",
    "bitwise_xor": "xor",
    "left_shift": "shl",
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
