"""``triton.language`` as the translator runs it: builtins bound to our semantic, reductions
and scans over JAX arrays, and ``@triton.jit`` calls through the control-flow rewrite.

Triton's builtins take a ``_semantic=`` argument that its code generator passes; like Triton's
interpreter, we patch each builtin (and ``tl.tensor``'s methods) to pass ours, for the length of
one trace. ``tl.reduce`` and ``tl.associative_scan`` build MLIR regions in Triton; here they are
replaced: ``sum``/``max``/``min``, ``cumsum``/``cumprod`` map to ``jnp``, and any other combine
function (``argmax``'s, a user's) runs on whole blocks, as a pairwise tree for a reduction (the
order of elements kept, so an associative, non-commutative combine is right) and as a
doubling (Hillis-Steele) scan.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import triton.language as tl
from triton.language.semantic import TritonSemantic
from triton.runtime.jit import JITFunction

from torchtpu.kernels.triton.builder import Value, np_dtype
from torchtpu.kernels.triton.control import transform
from torchtpu.kernels.triton.errors import unsupported

_SEMANTIC: list[TritonSemantic] = []
_TRITON_DIR = os.path.dirname(tl.__file__)
_MISSING = object()


def current_semantic() -> TritonSemantic:
    """The semantic of the trace in progress."""
    return _SEMANTIC[-1]


@contextlib.contextmanager
def patched_lang(semantic: TritonSemantic) -> Iterator[None]:
    """tl's builtins take ``_semantic=``: give them ours, and restore them after.

    Example::

        with patched_lang(TritonSemantic(JaxBuilder(buffers, (4, 1, 1)))):
            transform(kernel.fn)(**args)
    """
    saved: list[tuple[Any, str, Any]] = []

    def put(obj: Any, name: str, value: Any) -> None:
        saved.append((obj, name, obj.__dict__.get(name, _MISSING)))
        setattr(obj, name, value)

    def wrap(member: Any) -> Any:
        def call(*a: Any, **k: Any) -> Any:
            k.pop("_semantic", None)
            return member(*a, **k, _semantic=semantic)

        return call

    for owner in (tl, tl.core, tl.math, tl.tensor):
        for name, member in list(vars(owner).items()):
            if tl.core.is_builtin(member):
                put(owner, name, wrap(member))
    for name, member in list(vars(tl.tensor).items()):
        if isinstance(member, JITFunction):  # x.sum(), x.argmax(): bind x as the first argument
            put(tl.tensor, name, lambda self, *a, _f=member, **k: transform(_f.fn)(self, *a, **k))
    for owner in (tl, tl.core):
        put(owner, "reduce", _reduce)
        put(owner, "associative_scan", _scan)
        put(owner, "range", _range)
        put(owner, "static_range", _range)
        put(owner, "static_assert", _static_assert)
        put(owner, "static_print", print)
        put(owner, "debug_barrier", _debug_barrier)
        for hint in ("multiple_of", "max_contiguous", "max_constancy"):
            put(owner, hint, _hint)
    from triton.language.extra import libdevice

    for name, member in list(vars(libdevice).items()):
        if (
            callable(member)
            and not name.startswith("_")
            and member.__module__ == libdevice.__name__
        ):
            put(libdevice, name, _libdevice(name))
    put(JITFunction, "__call__", lambda self, *a, **k: transform(self.fn)(*a, **k))  # helpers
    for name, member in list(vars(tl.constexpr).items()):
        if name in _BINARY_DUNDERS:
            put(tl.constexpr, name, _constexpr_op(member))
    put(tl.dtype, "to_ir", lambda self, builder: self)  # scalar types are their own IR type
    put(tl.tensor, "__bool__", _bool)
    put(tl.tensor, "__index__", _index)
    _SEMANTIC.append(semantic)
    try:
        yield
    finally:
        _SEMANTIC.pop()
        for obj, name, old in reversed(saved):
            if old is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, old)


_BINARY_DUNDERS = {
    f"__{r}{op}__"
    for op in "add sub mul truediv floordiv mod pow and or xor lshift rshift".split()
    for r in ("", "r")
} | {f"__{op}__" for op in "lt le gt ge eq ne".split()}


def _constexpr_op(method: Any) -> Any:
    """``constexpr OP tensor`` is a tensor in Triton's code generator (it calls the tensor's
    reflected method); Python would wrap the tensor in a constexpr instead."""

    def op(self: Any, other: Any) -> Any:
        if isinstance(other, tl.tensor):
            return NotImplemented
        return method(self, other)

    return op


def _range(a: Any, b: Any = None, step: Any = None, **_: Any) -> range:
    """``tl.static_range`` (and ``range`` left to Python): a Python range of ints."""
    start, stop = (0, a) if b is None else (a, b)
    return range(_index(start), _index(stop), 1 if step is None else _index(step))


def _static_assert(cond: Any, msg: str = "", **_: Any) -> None:
    if not (cond.value if isinstance(cond, tl.constexpr) else cond):
        raise AssertionError(f"tl.static_assert failed: {msg}")


def _hint(input: Any, values: Any, **_: Any) -> Any:
    """``tl.multiple_of`` and kin: alignment hints for Triton's code generator; XLA lays out
    memory itself, so the value passes through."""
    return input


# libdevice functions are stubs that Triton's code generator swaps for the backend's; these
# are their JAX equivalents (the rest raise, naming the function).
_LIBDEVICE: dict[str, Any] = {
    **{n: getattr(jnp, n) for n in "tanh sinh cosh tan asin acos atan asinh acosh atanh".split()},
    **{n: getattr(jnp, n) for n in "exp exp2 log log2 log10 log1p expm1 sqrt cbrt".split()},
    **{n: getattr(jnp, n) for n in "sin cos floor ceil trunc rint fmod hypot".split()},
    "abs": jnp.abs,
    "pow": jnp.power,
    "atan2": jnp.arctan2,
    "nearbyint": jnp.rint,
    "round": lambda x: jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5),  # halves away from zero
    "rsqrt": jax.lax.rsqrt,
    "erf": jax.scipy.special.erf,
    "erfc": jax.scipy.special.erfc,
    "isnan": jnp.isnan,
    "isinf": jnp.isinf,
    "signbit": jnp.signbit,
    "fast_expf": jnp.exp,
    "fast_logf": jnp.log,
}
_BOOL_RESULT = {"isnan", "isinf", "signbit"}


def _libdevice(name: str) -> Any:
    def call(*args: Any, **_: Any) -> Any:
        if name not in _LIBDEVICE:
            raise unsupported(f"libdevice.{name}", "has no JAX equivalent in the translator",
                              "use a triton.language function instead")  # fmt: skip
        sem = current_semantic()
        ts = [sem.to_tensor(a.value if isinstance(a, tl.constexpr) else a) for a in args]
        for i in range(1, len(ts)):
            ts[0], ts[i] = sem.binary_op_type_checking_impl(ts[0], ts[i])
        ty = ts[0].type
        data = _LIBDEVICE[name](*[jnp.asarray(t.handle.data) for t in ts])
        if name in _BOOL_RESULT:
            ty = tl.block_type(tl.int1, ty.shape) if ty.is_block() else tl.int1
        return tl.tensor(Value(data.astype(np_dtype(ty)), ty.scalar), ty)

    return call


def _debug_barrier(**_: Any) -> None:
    """A no-op: the translator runs each program's block as one value (no threads within a
    program to synchronise), and programs see each other's stores only in sequential mode,
    where they run one after another."""


def _concrete(t: Any, what: str) -> Any:
    data = t.handle.data
    if isinstance(data, jax.core.Tracer):
        raise unsupported(
            what,
            "on a value that depends on the program id or on loaded data is outside what the "
            "translator rewrites (a loop with break/continue/return, a return inside a nested "
            "branch, or a non-range loop)",
            "use a range()/tl.range() loop or an if/else without those",
        )
    return np.asarray(data)


def _bool(self: Any) -> bool:
    import sys

    if _TRITON_DIR in sys._getframe(1).f_code.co_filename:
        return True  # Triton's own code writes `other.handle if other else None`: a None test
    data = _concrete(self, "a Python truth test (if/while/and/or/assert)")
    if data.size != 1:
        raise unsupported(
            "a Python truth test", f"on a block of shape {data.shape}", "reduce it to a scalar"
        )
    return bool(data.reshape(()))


def _index(self: Any) -> int:
    if isinstance(self, tl.constexpr):
        self = self.value
    if not isinstance(self, tl.tensor):
        return int(self)
    return int(_concrete(self, "a Python int (range bound, index)").reshape(()))


# ----------------------------------------------------------------------------- reductions, scans


def _block(data: Any, dtype: Any) -> Any:
    """A tl.tensor over a JAX array of any shape."""
    ty = tl.block_type(dtype, list(data.shape)) if data.shape else dtype
    return tl.tensor(Value(data, dtype), ty)


def _combine(combine_fn: Any, dtypes: list[Any], a: list[Any], b: list[Any]) -> list[Any]:
    fn = transform(combine_fn.fn if isinstance(combine_fn, JITFunction) else combine_fn)
    args = [_block(x, t) for x, t in zip(a, dtypes, strict=True)]
    out = fn(*args, *[_block(x, t) for x, t in zip(b, dtypes, strict=True)])
    out = out if isinstance(out, tuple) else (out,)
    shape = jnp.broadcast_shapes(*(x.shape for x in a))
    return [
        jnp.broadcast_to(
            jnp.asarray(o.handle.data if isinstance(o, tl.tensor) else o), shape
        ).astype(np_dtype(t))
        for o, t in zip(out, dtypes, strict=True)
    ]


def _tree_reduce(datas: list[Any], axis: int, combine_fn: Any, dtypes: list[Any]) -> list[Any]:
    n = datas[0].shape[axis]
    while n > 1:
        half = n // 2
        evens = [jax.lax.slice_in_dim(d, 0, 2 * half, 2, axis) for d in datas]
        odds = [jax.lax.slice_in_dim(d, 1, 2 * half, 2, axis) for d in datas]
        pairs = _combine(combine_fn, dtypes, evens, odds)
        if n % 2:
            last = [jax.lax.slice_in_dim(d, n - 1, n, 1, axis) for d in datas]
            pairs = [jnp.concatenate([p, t], axis) for p, t in zip(pairs, last, strict=True)]
        datas, n = pairs, half + n % 2
    return [jnp.squeeze(d, axis) for d in datas]


def _doubling_scan(
    datas: list[Any], axis: int, combine_fn: Any, dtypes: list[Any], reverse: bool
) -> list[Any]:
    """An inclusive scan in log2(n) steps (Hillis-Steele): step ``d`` combines each element
    with the partial result ``d`` places before it. Every call of the combine function sees
    whole blocks of the input's own shape (Triton types need power-of-two shapes), and earlier
    elements always come first, so an associative combine is enough."""
    if reverse:
        datas = [jnp.flip(d, axis) for d in datas]
    n = datas[0].shape[axis]
    pos = jax.lax.broadcasted_iota(jnp.int32, datas[0].shape, axis)
    d = 1
    while d < n:
        before = [jnp.roll(x, d, axis) for x in datas]
        combined = _combine(combine_fn, dtypes, before, datas)
        datas = [jnp.where(pos >= d, c, x) for c, x in zip(combined, datas, strict=True)]
        d *= 2
    return [jnp.flip(x, axis) for x in datas] if reverse else datas


def _fast_reducer(combine_fn: Any) -> Any:
    std = tl.standard
    for f, r in ((std._sum_combine, "sum"), (std._elementwise_max, "max")):
        if f is combine_fn:
            return r
    return "min" if combine_fn is std._elementwise_min else None


def _operands(input: Any, axis: Any) -> tuple[bool, Any, list[Any], list[Any]]:
    """A reduction's or scan's block(s) (one tensor or a tuple) as JAX arrays: whether it
    was one tensor, the axis as a value, the Triton dtypes and the arrays."""
    single = isinstance(input, tl.tensor)
    inputs = (input,) if single else tuple(input)
    axis = axis.value if isinstance(axis, tl.constexpr) else axis
    dtypes = [t.dtype for t in inputs]
    return single, axis, dtypes, [jnp.asarray(t.handle.data, np_dtype(t.dtype)) for t in inputs]


def _reduce(input: Any, axis: Any, combine_fn: Any, keep_dims: bool = False, **_: Any) -> Any:
    """``tl.reduce``: known combine functions by ``jnp``, any other as a pairwise tree."""
    single, axis, dtypes, datas = _operands(input, axis)
    keep_dims = keep_dims.value if isinstance(keep_dims, tl.constexpr) else keep_dims
    shape = datas[0].shape
    if axis is None:
        datas, ax = [d.reshape(-1) for d in datas], 0
    else:
        ax = axis % len(shape)
    fast = _fast_reducer(combine_fn) if single else None
    if fast == "sum":
        outs = [jnp.sum(datas[0], axis=ax, dtype=datas[0].dtype)]
    elif fast is not None:  # tl.maximum/minimum ignore NaN (propagate_nan=NONE): so do these
        f = jnp.nanmax if fast == "max" else jnp.nanmin
        outs = [
            f(datas[0], axis=ax)
            if jnp.issubdtype(datas[0].dtype, jnp.floating)
            else (jnp.max if fast == "max" else jnp.min)(datas[0], axis=ax)
        ]
    else:
        outs = _tree_reduce(datas, ax, combine_fn, dtypes)
    if keep_dims:
        outs = [
            jnp.expand_dims(o, ax) if axis is not None else o.reshape((1,) * len(shape))
            for o in outs
        ]
    result = tuple(_block(o, t) for o, t in zip(outs, dtypes, strict=True))
    return result[0] if single else result


def _scan(input: Any, axis: Any, combine_fn: Any, reverse: bool = False, **_: Any) -> Any:
    """``tl.associative_scan``: cumsum/cumprod by ``jnp``, any other combine by a doubling
    scan."""
    single, axis, dtypes, datas = _operands(input, axis)
    reverse = reverse.value if isinstance(reverse, tl.constexpr) else reverse
    ax = axis % datas[0].ndim
    std = tl.standard
    if single and combine_fn in (std._sum_combine, std._prod_combine):
        f = jnp.cumsum if combine_fn is std._sum_combine else jnp.cumprod
        d = jnp.flip(datas[0], ax) if reverse else datas[0]
        out = f(d, axis=ax, dtype=d.dtype)
        outs = [jnp.flip(out, ax) if reverse else out]
    else:
        outs = _doubling_scan(datas, ax, combine_fn, dtypes, reverse)
    result = tuple(_block(o, t) for o, t in zip(outs, dtypes, strict=True))
    return result[0] if single else result
