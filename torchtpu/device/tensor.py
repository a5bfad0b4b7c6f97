"""Tensors of the ``tpu`` device, and how each ATen op on them reaches JAX.

A tpu tensor is an ordinary ``torch.Tensor`` whose device is ``tpu``: a
TensorImpl with the PrivateUse1 dispatch key and an empty storage
(``torch._C._acc.create_empty_tensor``). It is not a Python subclass, so
TorchDynamo, AOTAutograd, ``make_fx`` and FakeTensor treat it exactly as they
treat a CUDA tensor: ``torch.compile`` fakeifies it as a FakeTensor on
``tpu:0`` and hands our backend real tpu tensors at run time.

Its value lives on its storage object, as a device buffer lives in a CUDA
tensor's storage: ``tensor.untyped_storage()._torchtpu`` is a :class:`Handle`
pointing at a :class:`Storage` (the value of a base tensor, shared by all its
views) and a *view chain*, the view ops that lead from the base to this
tensor. PyTorch's own alias kernels (``detach``, ``alias``), which make a new
TensorImpl on the same storage, therefore share the value with no help from
us. Reading a view replays the chain on the base's current value; an in-place
op on a view writes through the chain with the matching ``*_scatter`` ops. So
aliasing behaves as in eager PyTorch while every recorded op stays functional,
which is what XLA needs.

Every ATen op on a tpu tensor reaches :func:`kernel` (registered for the
PrivateUse1 key in ``backend.py``). Each op takes one of these roads, decided
once per op:

- a *handler* (transfers, ``copy_``, ``.item()``, AMP helpers);
- a *view*: computed like any op, and its result shares the base's storage;
- an *in-place* or ``out=`` op: its functional twin is computed and written back;
- a *functional* op: a :class:`~torchtpu.device.lazy.Recipe` per signature,
  from the lowering registry, else a decomposition from
  ``torchtpu.decompose.decomposition_table()``, else, for an op whose output
  size depends on data, its sized lowering (``torchtpu.lower.sized``), else
  the counted eager fallback on the CPU (an error in strict mode).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import torch

from torchtpu.compile.fallback import fall_back
from torchtpu.compile.sized import run_sized
from torchtpu.device import lazy
from torchtpu.device.lazy import SCALAR, TENSOR, Recipe, Value
from torchtpu.errors import TorchTPUError
from torchtpu.lower import checks
from torchtpu.lower.custom import missing_reason
from torchtpu.lower.dtypes import from_numpy, to_jax_dtype
from torchtpu.lower.registry import lookup, sized_lowering
from torchtpu.metrics import bump
from torchtpu.runtime import jax_scope, upload
from torchtpu.runtime.transfer import host_copy

aten = torch.ops.aten
DEVICE_TYPE = "tpu"
_META = torch._C.DispatchKeySet(torch._C.DispatchKey.Meta)


class Storage:
    """The current value of a base tensor; ``version`` counts writes to it."""

    __slots__ = ("value", "version")

    def __init__(self, value: Value) -> None:
        self.value = value
        self.version = 0


class Handle:
    """What a tpu tensor's storage holds: its base's :class:`Storage`, the view chain
    from that base, and the value last read through the chain (valid while the
    base's version is ``cver``)."""

    __slots__ = ("st", "chain", "cv", "cver")

    def __init__(self, st: Storage, chain: tuple, cv: Value) -> None:
        self.st = st
        self.chain = chain
        self.cv = cv
        self.cver = st.version


class _NotOurs(Exception):
    """A tensor on the tpu device that torchtpu did not make (see :func:`kernel`)."""


def handle(t: torch.Tensor) -> Handle:
    """The :class:`Handle` of tpu tensor ``t``."""
    h = getattr(t.untyped_storage(), "_torchtpu", None)
    if h is None:
        raise _NotOurs
    return h


def is_tpu(t: Any) -> bool:
    """Whether ``t`` is a tensor on the tpu device that holds a value."""
    return (
        isinstance(t, torch.Tensor)
        and t.device.type == DEVICE_TYPE
        and hasattr(t.untyped_storage(), "_torchtpu")
    )


@functools.cache
def device() -> torch.device:
    return torch.device(DEVICE_TYPE, 0)


def wrap(value: Value, st: Storage | None = None, chain: tuple = ()) -> torch.Tensor:
    """A new tpu tensor holding ``value`` (a view of ``st`` through ``chain``, if given)."""
    out = torch._C._acc.create_empty_tensor(value.shape, value.dtype)
    out.untyped_storage()._torchtpu = Handle(st if st is not None else Storage(value), chain, value)
    return out


def read(t: torch.Tensor) -> Value:
    """The current value of ``t``, replaying its view chain if the base changed."""
    try:
        return read_handle(handle(t))
    except FreedError as exc:
        raise FreedError(exc.freed, t) from None


def read_handle(h: Handle) -> Value:
    chain = h.chain
    if not chain:
        v = h.st.value
        if type(v) is Freed:
            raise FreedError(v)
        return v
    st = h.st
    v = h.cv if h.cver == st.version else st.value
    if type(v) is Freed:
        raise FreedError(v)
    if h.cver == st.version:
        return v
    for step in chain:
        v = _apply_step(step, v)
    h.cv = v
    h.cver = st.version
    return v


def write(t: torch.Tensor, v: Value) -> None:
    """Make ``v`` (already of ``t``'s shape and dtype) the value of ``t``, through its views."""
    h = handle(t)
    st = h.st
    chain = h.chain
    if chain:
        xs = [st.value]
        for step in chain[:-1]:
            xs.append(_apply_step(step, xs[-1]))
        y = v
        for step, x in zip(reversed(chain), reversed(xs), strict=True):
            y = _scatter_step(step, x, y)
        st.value = y
    else:
        st.value = v
    st.version += 1
    h.cv = v
    h.cver = st.version


class Freed(Value):
    """The value of a storage whose buffer was freed (``storage.resize_(0)``): reading
    it is an error until it is re-allocated and written."""

    __slots__ = ()


class FreedError(TorchTPUError):
    """A tpu tensor was read while its storage was freed."""

    def __init__(self, freed: Freed, t: torch.Tensor | None = None) -> None:
        self.freed = freed
        what = f"{freed.dtype}{list(freed.shape)}"
        if t is not None and tuple(t.shape) != freed.shape:
            what = f"{t.dtype}{list(t.shape)} (a view of {what})"
        super().__init__(
            f"a tpu tensor of {what} was read after its storage was freed "
            "(storage.resize_(0), as FSDP2 frees unsharded parameters between uses) and "
            "before it was re-allocated (resize_ to its size) and written"
        )


def release(t: torch.Tensor) -> None:
    """Drop the device buffer behind ``t``'s storage, as ``storage.resize_(0)`` frees a
    CUDA tensor's memory: its views (which share it) hold no value until
    :func:`reallocate`. A view keeps the value it last read until it reads again, or
    until it is released itself. Ops already recorded on the old value keep it until
    they run."""
    h = handle(t)
    st = h.st
    if type(st.value) is not Freed:
        base = st.value
        st.value = Freed(base.shape, base.dtype)
        st.version += 1
    h.cv = st.value
    h.cver = st.version


def reallocate(t: torch.Tensor) -> None:
    """Give a freed storage a buffer again (``storage.resize_(nbytes)``): zeros, which
    the writes that follow replace (device mode never exposes uninitialised memory)."""
    st = handle(t).st
    if type(st.value) is Freed:
        shape, dtype = st.value.shape, st.value.dtype
        st.value = Value(shape, dtype, _zeros(shape, dtype))
        st.version += 1


def device_array(t: torch.Tensor, reason: str) -> jax.Array:
    """The device buffer holding ``t``'s value now, running pending ops if needed."""
    return materialize(read(t), reason)


def set_device_array(t: torch.Tensor, array: jax.Array) -> None:
    """Make the device buffer ``array`` (of ``t``'s shape and dtype) ``t``'s value."""
    write(t, Value(tuple(t.shape), t.dtype, array))


def from_array(array: jax.Array, dtype: torch.dtype) -> torch.Tensor:
    """A tpu tensor holding device buffer ``array``."""
    return wrap(Value(tuple(array.shape), dtype, array))


# --- transfers --------------------------------------------------------------------


def upload_value(t: torch.Tensor) -> Value:
    """A ready value holding a copy of CPU tensor ``t``: later in-place edits of ``t``
    must not reach the device value."""
    with jax_scope() as dev:
        array = upload(t, dev, copy=True)
    return Value(tuple(t.shape), t.dtype, array)


def materialize(v: Value, reason: str) -> jax.Array:
    if v.array is None:
        lazy.sync(reason)
    assert v.array is not None
    return v.array


def to_cpu(t: torch.Tensor, reason: str) -> torch.Tensor:
    """A CPU copy of ``t``'s value, running the pending graph if it is needed."""
    v = read(t)
    # On the CPU platform the host array may view the device buffer itself, which a
    # later program may donate (and XLA reuse) while torch still reads it: from_numpy
    # below copies it (once).
    host = host_copy(materialize(v, reason))
    checks.raise_pending()  # an index out of range in the program that made it
    bump("device_to_host")
    bump("device_to_host_bytes", host.nbytes)
    return from_numpy(host).reshape(v.shape)


# --- dispatch -----------------------------------------------------------------------


def kernel(func: Any, *args: Any, **kwargs: Any) -> Any:
    """The PrivateUse1 kernel of every ATen op: pick the op's road and take it.

    A tensor on the tpu device that holds no value of ours is a FakeTensor's
    meta buffer carrying tpu dispatch keys (PyTorch gives fake tensors the keys
    of the device they model); such calls run the op's meta kernel, as they
    would for a CUDA FakeTensor.
    """
    road = _ROADS.get(func)
    if road is None:
        road = _ROADS[func] = _choose_road(func)
    try:
        return road(func, args, kwargs)
    except _NotOurs:
        return func.redispatch(_META, *args, **kwargs)


def _choose_road(func: Any) -> Callable[..., Any]:
    if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd"):
        return _decompose_implicit
    if func.is_view and func not in _COPYING_VIEWS:
        return _view
    if torch.Tag.inplace_view in func.tags:
        functional = _view_twin(func)
        if functional is not None:
            return functools.partial(_inplace_view, functional=functional)
    schema = func._schema
    if schema.is_mutable:
        twin = _functional_twin(func)
        if twin is not None:
            return functools.partial(_mutating, twin=twin)
        return _fallback
    if func.namespace not in {"aten", "prims"}:
        # A library op is recorded only when it lowers through its own Python kernel
        # (torchtpu.lower.custom); it may still fall back, with the reason, for some calls.
        lowering = lookup(func)
        return _functional if lowering is not None and lowering.via else _fallback
    return _functional


def _view_twin(func: Any) -> Any:
    """``aten.squeeze_.dim`` -> ``aten.squeeze.dim``: the view an in-place view op makes."""
    name = func._schema.name.split("::")[1].removesuffix("_")
    packet = getattr(aten, name, None)
    twin = getattr(packet, func._overloadname, None) if packet is not None else None
    return twin if twin is not None and twin.is_view else None


def _inplace_view(func: Any, args: tuple, kwargs: dict, functional: Any) -> Any:
    """``x.squeeze_()``, ``x.t_()``: ``x`` itself becomes the view (its sizes and its
    view chain), as PyTorch's kernels change a tensor's metadata in place."""
    self = args[0]
    view = _view(functional, args, kwargs)
    with torch.no_grad():
        self.data = view
    return self


def _decompose_implicit(func: Any, args: tuple, kwargs: dict) -> Any:
    # Ops such as aten.to.device that PyTorch implements with other ops.
    return func.decompose(*args, **kwargs)


def _functional_twin(func: Any) -> Any:
    """``aten.add.Tensor`` for ``aten.add_.Tensor`` or ``aten.add.out``; ``None`` if unknown."""
    if func in _TWINS:
        return _TWINS[func]
    name = func._schema.name.split("::")[-1]
    overload = func._overloadname
    written = [a for a in func._schema.arguments if a.alias_info and a.alias_info.is_write]
    if name.endswith("_") and not name.endswith("__") and written and written[0].name == "self":
        packet = getattr(aten, name[:-1], None)
        if packet is None:
            return None
        twin = getattr(packet, overload, None)
        types = [str(a.type) for a in func._schema.arguments]
        if twin is not None and [str(a.type) for a in twin._schema.arguments] == types:
            return twin
        # pow_.Scalar is pow.Tensor_Scalar, not pow.Scalar (a Scalar base): match types.
        for candidate in packet.overloads():
            op = getattr(packet, candidate)
            if not op._schema.is_mutable and [str(a.type) for a in op._schema.arguments] == types:
                return op
        return None
    if written and all(a.kwarg_only for a in written):
        packet = getattr(aten, name, None)
        if packet is None:
            return None
        wanted = [a.name for a in func._schema.arguments if not a.kwarg_only or not a.alias_info]
        for candidate in packet.overloads():
            op = getattr(packet, candidate)
            if op is func or op._schema.is_mutable:
                continue
            if [a.name for a in op._schema.arguments] == wanted:
                return op
    return None


# --- signatures: the key that finds an op's recipe ------------------------------------

_RECIPES: dict[Any, Any] = {}
_STATIC_SCALAR_OPS: set[Any] = set()
_CPU_OK = {aten.index.Tensor, aten.index_put.default, aten._unsafe_index.Tensor}


class _Decomposed:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn


class _Sized:
    """The op's output size depends on data: run its sized lowering."""


class _FallBack:
    def __init__(self, reason: str) -> None:
        self.reason = reason


_SIZED = _Sized()


def _encode(a: Any, vals: list, scalars: list, dyn: bool, func: Any) -> Any:
    t = type(a)
    if t is Value:
        vals.append(a)
        return (a.shape, a.dtype)
    if t is float:
        if dyn:
            scalars.append(a)
            return float
        return (float, a)
    if t is list or t is tuple:
        return tuple(_encode(x, vals, scalars, dyn, func) for x in a)
    if isinstance(a, torch.Tensor):
        if a.device.type == DEVICE_TYPE:
            v = read(a)
            vals.append(v)
            return (v.shape, v.dtype)
        if a.device.type == "cpu" and a.dim() == 0:
            scalars.append(a.item())
            return ("cpu", a.dtype)
        if a.device.type == "cpu" and func in _CPU_OK:
            v = upload_value(a)
            vals.append(v)
            return (v.shape, v.dtype)
        raise RuntimeError(
            "Expected all tensors to be on the same device, but found at least two devices, "
            f"{device()} and {a.device}! (when checking arguments for {func}). Move the tensor "
            f"with .to('{DEVICE_TYPE}'), or use a 0-dim CPU tensor as a scalar."
        )
    if isinstance(a, torch.Generator):
        raise RuntimeError(
            f"{func}: got a torch.Generator where torchtpu expects none ({a!r}); random ops "
            "take it as the keyword generator=."
        )
    if t is bool:  # True == 1 as a key: b + True and b + 1 would share a recipe
        return (bool, a)
    return a


def _template(a: Any, dyn: bool) -> Any:
    t = type(a)
    if t is Value:
        return TENSOR
    if t is float:
        return SCALAR if dyn else a
    if isinstance(a, torch.Tensor):
        if a.device.type == DEVICE_TYPE:
            return TENSOR
        return SCALAR if a.dim() == 0 and a.device.type == "cpu" else TENSOR
    if t is list or t is tuple:
        return t(_template(x, dyn) for x in a)
    return a


def _meta(a: Any) -> Any:
    t = type(a)
    if t is Value:
        return torch.empty(a.shape, dtype=a.dtype, device="meta")
    if isinstance(a, torch.Tensor):
        if a.device.type == DEVICE_TYPE or a.dim() > 0:
            return torch.empty(tuple(a.shape), dtype=a.dtype, device="meta")
        return a
    if isinstance(a, torch.device) and a.type == DEVICE_TYPE:
        return torch.device("meta")
    if t is list or t is tuple:
        return t(_meta(x) for x in a)
    return a


def _all_meta(a: Any) -> Any:
    """``a`` with 0-dim CPU tensors as meta tensors too."""
    if isinstance(a, torch.Tensor) and a.device.type == "cpu":
        return torch.empty((), dtype=a.dtype, device="meta")
    if isinstance(a, dict):
        return {k: _all_meta(v) for k, v in a.items()}
    if type(a) is list or type(a) is tuple:
        return type(a)(_all_meta(x) for x in a)
    return a


def _structure(out: Any, outputs: list) -> Any:
    """``out`` with each tensor replaced by its index in ``outputs`` (which it fills)."""
    if isinstance(out, torch.Tensor):
        outputs.append((tuple(out.shape), out.dtype))
        return _Out(len(outputs) - 1)
    if isinstance(out, (tuple, list)):
        return (
            type(out)(_structure(o, outputs) for o in out)
            if type(out) in (tuple, list)
            else (tuple(_structure(o, outputs) for o in out))
        )
    return out


class _Out:
    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _rebuild(structure: Any, values: list[Value]) -> Any:
    if type(structure) is _Out:
        return wrap(values[structure.index])
    if type(structure) in (tuple, list):
        return type(structure)(_rebuild(s, values) for s in structure)
    return structure


def _lookup(func: Any, args: tuple, kwargs: dict) -> tuple[Any, list[Value], list[Any]]:
    """The recipe for this call (making it on first sight), and its tensor and scalar inputs."""
    while True:
        dyn = func not in _STATIC_SCALAR_OPS
        vals: list[Value] = []
        scalars: list[Any] = []
        key = (
            func,
            _encode(args, vals, scalars, dyn, func),
            tuple((k, _encode(v, vals, scalars, dyn, func)) for k, v in kwargs.items())
            if kwargs
            else (),
        )
        recipe = _RECIPES.get(key)
        if recipe is None:
            recipe = _make_recipe(func, args, kwargs, vals, scalars, dyn)
            if recipe is None:  # dynamic scalars refused: retry with them static
                _STATIC_SCALAR_OPS.add(func)
                continue
            _RECIPES[key] = recipe
        return recipe, vals, scalars


def _make_recipe(
    func: Any, args: tuple, kwargs: dict, vals: list[Value], scalars: list, dyn: bool
) -> Any:
    meta_args = _meta(args)
    meta_kwargs = {k: _meta(v) for k, v in kwargs.items()}
    lowering = lookup(func)
    try:
        try:
            meta_out = func(*meta_args, **meta_kwargs)
        except RuntimeError as exc:
            # A 0-dim CPU tensor is a scalar to us; some meta kernels (masked_fill's
            # value) want it on the op's device, as CUDA's kernels do not.
            if "device" not in str(exc):
                raise
            meta_args, meta_kwargs = _all_meta(meta_args), _all_meta(meta_kwargs)
            meta_out = func(*meta_args, **meta_kwargs)
    except Exception as exc:
        # Meta tensors cannot say how big nonzero(x) or x[mask] is: a sized op.
        if sized_lowering(func) is not None:
            return _SIZED
        meta_out = _meta_from_lowering(func, lowering, exc, vals, scalars, args, kwargs, dyn)
        if meta_out is None and scalars and dyn and lowering is not None and lowering.via:
            return None  # a library op's implementation is traced for its scalars' values
        if meta_out is None:
            if _is_user_error(exc):
                raise
            return _decomposition_or_fallback(func, f"its meta kernel failed: {exc}")
    outputs: list = []
    structure = _structure(meta_out, outputs)
    if lowering is None:
        return _decomposition_or_fallback(func, "no lowering")
    refusal = lowering.refuses(meta_args, meta_kwargs)
    if refusal:
        return _decomposition_or_fallback(func, refusal)
    template = (_template(args, dyn), {k: _template(v, dyn) for k, v in kwargs.items()})
    recipe = Recipe(func, lowering, template, len(vals), outputs, structure, meta_out)
    specs = [jax.ShapeDtypeStruct(v.shape, to_jax_dtype(v.dtype)) for v in vals]
    specs += [lazy.scalar_spec(s) for s in scalars]
    recipe.specs = specs
    try:
        recipe.check()
    except Exception as exc:
        if scalars and dyn:
            return None
        return _decomposition_or_fallback(func, f"its lowering failed: {type(exc).__name__}: {exc}")
    return recipe


# Ops whose meta kernels check the dtype limits of CUDA's kernels (``_grouped_mm``
# takes bfloat16 alone there), which XLA does not share.
_CUDA_LIMITED_META = frozenset({torch.ops.aten._grouped_mm.default})


def _meta_from_lowering(
    func: Any,
    lowering: Any,
    exc: Exception,
    vals: list,
    scalars: list,
    args: tuple,
    kwargs: dict,
    dyn: bool,
) -> Any:
    """The op's results as meta tensors, from tracing its lowering, for an op PyTorch
    has no meta kernel for (``_fused_sgd``) or whose meta kernel refuses what XLA
    runs; ``None`` if that cannot stand in."""
    missing = "no fake impl or Meta kernel" in str(exc)
    if lowering is None or not (missing or func in _CUDA_LIMITED_META):
        return None
    template = (_template(args, dyn), {k: _template(v, dyn) for k, v in kwargs.items()})
    specs = [jax.ShapeDtypeStruct(v.shape, to_jax_dtype(v.dtype)) for v in vals]
    specs += [lazy.scalar_spec(s) for s in scalars]
    n = len(vals)

    def run(*xs: Any) -> Any:
        a, k = lazy.fill(template, iter(xs[:n]), iter(xs[n:]))
        from torchtpu.lower.interpreter import RngStream, apply

        return apply(lowering, a, k, RngStream(jax.numpy.uint32(0)))

    try:
        with jax_scope():
            shapes = jax.eval_shape(run, *specs)
    except Exception:
        return None
    from torchtpu.lower.dtypes import to_torch_dtype

    def meta(value: Any) -> Any:
        if isinstance(value, jax.ShapeDtypeStruct):
            dtype = to_torch_dtype(value.dtype)
            return torch.empty(value.shape, dtype=dtype, device="meta")
        if isinstance(value, (list, tuple)):
            return type(value)(meta(v) for v in value)
        return value

    return meta(shapes)


def _is_data_dependent(exc: Exception) -> bool:
    return type(exc).__name__ in {"DynamicOutputShapeException", "DataDependentOutputException"}


def _is_user_error(exc: Exception) -> bool:
    # Meta kernels check arguments as eager PyTorch does: a shape or dtype
    # mistake is the user's, and is raised here, at the line that made it.
    text = str(exc).lower()
    if isinstance(exc, NotImplementedError) or "meta" in text or "data-dependent" in text:
        return False
    return not _is_data_dependent(exc)


@functools.cache
def _decompositions() -> dict[Any, Any]:
    from torchtpu.decompose import decomposition_table

    return decomposition_table()


def _decomposition_or_fallback(func: Any, reason: str) -> Any:
    fn = _decompositions().get(func)
    if fn is not None:
        return _Decomposed(fn)
    return _FallBack(reason)


# --- the roads ------------------------------------------------------------------------


def _functional(func: Any, args: tuple, kwargs: dict) -> Any:
    generator = kwargs.get("generator")
    if generator is not None:  # a random op: it draws its seed from this generator
        recipe, vals, scalars = _lookup(func, args, _without_generator(kwargs))
    else:
        recipe, vals, scalars = _lookup(func, args, kwargs)
    kind = type(recipe)
    if kind is Recipe:
        return _rebuild(recipe.structure, lazy.record(recipe, vals, scalars, generator))
    if kind is _Decomposed:
        return recipe.fn(*_wrap_values(args), **_wrap_values(kwargs))
    if kind is _Sized:
        return _sized(func, args, kwargs)
    return _fallback(func, args, kwargs, reason=recipe.reason)


def _without_generator(kwargs: dict) -> dict:
    # The seed is drawn from the generator when the op is recorded; the op itself
    # is recorded (and keyed) with generator=None.
    return {**kwargs, "generator": None}


def _values(func: Any, args: tuple, kwargs: dict) -> list[Value]:
    """The flat tensor results of ``func``, as values (for internal steps)."""
    generator = kwargs.get("generator")
    recipe, vals, scalars = _lookup(
        func, args, _without_generator(kwargs) if generator is not None else kwargs
    )
    if type(recipe) is Recipe:
        return lazy.record(recipe, vals, scalars, generator)
    out = _functional(func, _wrap_values(args), _wrap_values(kwargs))
    return [read(t) for t in _flat_tensors(out)]


def _wrap_values(a: Any) -> Any:
    if type(a) is Value:
        return wrap(a)
    if type(a) in (list, tuple):
        return type(a)(_wrap_values(x) for x in a)
    if type(a) is dict:
        return {k: _wrap_values(v) for k, v in a.items()}
    return a


def _flat_tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat_tensors(o)]
    return []


def _fit(v: Value, shape: tuple, dtype: torch.dtype, func: Any) -> Value:
    """``v`` cast to ``dtype`` and broadcast to ``shape``, as an in-place result must be."""
    if v.dtype != dtype:
        (v,) = _values(aten._to_copy.default, (v,), {"dtype": dtype})
    if v.shape != shape:
        try:
            ok = torch.broadcast_shapes(v.shape, shape) == torch.Size(shape)
        except RuntimeError:
            ok = False
        if not ok:
            raise RuntimeError(
                f"{func}: output with shape {list(shape)} doesn't match the broadcast shape "
                f"{_broadcast_text(v.shape, shape)}"
            )
        (v,) = _values(aten.expand.default, (v, list(shape)), {})
    return v


def _broadcast_text(a: tuple, b: tuple) -> str:
    try:
        return str(list(torch.broadcast_shapes(a, b)))
    except RuntimeError:
        return f"of {list(a)} and {list(b)} (they do not broadcast)"


def _mutating(func: Any, args: tuple, kwargs: dict, *, twin: Any) -> Any:
    if "out" in kwargs or (func._schema.arguments and func._schema.arguments[0].name != "self"):
        return _out_variant(func, args, kwargs, twin)
    self = args[0]
    if type(self) in (list, tuple):  # _foreach_*_, _fused_adamw_: the twin lowers whole
        return _mutating_lists(func, args, kwargs, twin)
    if not isinstance(self, torch.Tensor) or self.device.type != DEVICE_TYPE:
        return _fallback(func, args, kwargs, reason="in-place op on a non-tpu tensor")
    (v,) = _values(twin, args, kwargs)[:1]
    write(self, _fit(v, read(self).shape, self.dtype, func))
    return self


def _mutating_lists(func: Any, args: tuple, kwargs: dict, twin: Any) -> Any:
    """An in-place op on lists of tensors: its functional twin returns the new value
    of each list it writes (``self``; for the fused optimizers also the grads and
    moments), in schema order; each tensor takes its new value."""
    schema = func._schema.arguments
    written = [i for i, a in enumerate(schema) if a.alias_info and a.alias_info.is_write]
    targets = [args[i] if i < len(args) else kwargs[schema[i].name] for i in written]
    tensors = [t for group in targets for t in (group if type(group) in (list, tuple) else [])]
    if not all(isinstance(t, torch.Tensor) and t.device.type == DEVICE_TYPE for t in tensors):
        return _fallback(func, args, kwargs, reason="in-place op on non-tpu tensors")
    out = _functional(twin, args, kwargs)
    groups = [out] if len(targets) == 1 else list(out)[: len(targets)]
    for group, results in zip(targets, groups, strict=True):
        for t, r in zip(group, results, strict=True):
            write(t, _fit(read(r), read(t).shape, t.dtype, func))
    return None


def _out_variant(func: Any, args: tuple, kwargs: dict, twin: Any) -> Any:
    written = [a.name for a in func._schema.arguments if a.alias_info and a.alias_info.is_write]
    outs = [kwargs[name] for name in written]
    rest = {k: v for k, v in kwargs.items() if k not in written}
    results = _values(twin, args, rest)
    if len(outs) == 1 and type(outs[0]) in (list, tuple):
        # out=[...] (split_with_sizes_copy, FSDP2's copy-out): each piece, nothing returned.
        _write_outs(func, outs[0], results)
        return None
    _write_outs(func, outs, results)
    return outs[0] if len(outs) == 1 else tuple(outs)


def _write_outs(func: Any, outs: Sequence[torch.Tensor], results: list[Value]) -> None:
    for out, v in zip(outs, results, strict=False):
        if tuple(out.shape) != v.shape:
            raise RuntimeError(
                f"{func}: out= tensors on {DEVICE_TYPE} cannot be resized (out has shape "
                f"{list(out.shape)}, the result {list(v.shape)}); pass an out of the right shape"
            )
        write(out, _fit(v, v.shape, out.dtype, func))


def _sized(func: Any, args: tuple, kwargs: dict) -> Any:
    """An op whose output size depends on data (``nonzero``, ``x[mask]``, ``unique``):
    its padded program on the device, one read of the size, the slice."""
    lazy.sync("size_read")
    with jax_scope() as dev:
        arrays_args = _to_arrays(args, func)
        arrays_kwargs = {k: _to_arrays(v, func) for k, v in kwargs.items()}
        out = run_sized(func, arrays_args, arrays_kwargs, dev)
    return _from_arrays(out)


def _to_arrays(a: Any, func: Any) -> Any:
    if isinstance(a, torch.Tensor):
        if a.device.type == DEVICE_TYPE:
            return materialize(read(a), "size_read")
        if a.device.type == "cpu" and (a.dim() == 0 or func in _CPU_OK):
            return upload_value(a).array
        raise RuntimeError(
            "Expected all tensors to be on the same device, but found at least two devices, "
            f"{device()} and {a.device}! (when checking arguments for {func})"
        )
    if type(a) in (list, tuple):
        return type(a)(_to_arrays(x, func) for x in a)
    return a


def _from_arrays(out: Any) -> Any:
    if isinstance(out, jax.Array):
        from torchtpu.lower.dtypes import to_torch_dtype

        return from_array(out, to_torch_dtype(out.dtype))
    if isinstance(out, (list, tuple)):
        return type(out)(_from_arrays(o) for o in out)
    return out


# --- views ------------------------------------------------------------------------------

# View ops whose results we treat as copies: writing through them is an error
# in PyTorch (expand) or too rare to be worth an inverse.
_COPYING_VIEWS = {
    aten.expand.default,
    aten.unfold.default,
    aten.view.dtype,
    aten.view_as_real.default,
    aten.view_as_complex.default,
    aten._reshape_alias.default,
}


def _view(func: Any, args: tuple, kwargs: dict) -> Any:
    base = args[0]
    if not isinstance(base, torch.Tensor) or base.device.type != DEVICE_TYPE:
        return _fallback(func, args, kwargs, reason="view of a non-tpu tensor")
    bh = handle(base)
    out = _functional(func, args, kwargs)
    rest = tuple(args[1:])
    if isinstance(out, torch.Tensor):
        _alias(out, bh, (func, rest, kwargs))
        return out
    # Multi-output views (split, unbind): each piece is a slice or select of the base.
    dim = _split_dim(func, args, kwargs)
    start = 0
    for piece in out:
        if func is aten.unbind.int:
            step = (aten.select.int, (dim, start), {})
            start += 1
        else:
            size = piece.shape[dim]
            step = (aten.slice.Tensor, (dim, start, start + size), {})
            start += size
        _alias(piece, bh, step)
    return out


def _split_dim(func: Any, args: tuple, kwargs: dict) -> int:
    for name, pos in (("dim", 2), ("dim", 1)):
        if name in kwargs:
            return kwargs[name] % max(args[0].dim(), 1)
        if func is aten.unbind.int and pos == 1 and len(args) > 1:
            return args[1] % max(args[0].dim(), 1)
        if func is not aten.unbind.int and pos == 2 and len(args) > 2:
            return args[2] % max(args[0].dim(), 1)
    return 0


def _alias(out: torch.Tensor, base: Handle, step: tuple) -> None:
    h = handle(out)
    h.st = base.st
    h.chain = base.chain + (step,)
    h.cver = base.st.version


def _apply_step(step: tuple, v: Value) -> Value:
    func, rest, kwargs = step
    return _values(func, (v, *rest), kwargs)[0]


def _scatter_step(step: tuple, base: Value, src: Value) -> Value:
    func, rest, kwargs = step
    scatter = _SCATTERS.get(func)
    if scatter is None:
        raise RuntimeError(
            f"torchtpu: an in-place op wrote to a view made by {func}, which device mode "
            f"cannot write through; call .clone() on the view first"
        )
    return scatter(base, src, rest, kwargs)


def _reshape_back(base: Value, src: Value, rest: tuple, kwargs: dict) -> Value:
    return _values(aten.view.default, (src, list(base.shape)), {})[0]


def _permute_back(base: Value, src: Value, rest: tuple, kwargs: dict) -> Value:
    dims = [d % len(base.shape) for d in rest[0]]
    inverse = [dims.index(i) for i in range(len(dims))]
    return _values(aten.permute.default, (src, inverse), {})[0]


def _transpose_back(base: Value, src: Value, rest: tuple, kwargs: dict) -> Value:
    if not rest:  # t()
        return _values(aten.t.default, (src,), {})[0]
    return _values(aten.transpose.int, (src, *rest), kwargs)[0]


def _scatter_with(op: Any) -> Callable[..., Value]:
    def scatter(base: Value, src: Value, rest: tuple, kwargs: dict) -> Value:
        return _values(op, (base, src, *rest), kwargs)[0]

    return scatter


_SCATTERS: dict[Any, Callable[..., Value]] = {
    # torch.tensor(data, device="tpu") is a lift_fresh view: the whole of its base.
    aten.lift_fresh.default: lambda base, src, rest, kwargs: src,
    aten.slice.Tensor: _scatter_with(aten.slice_scatter.default),
    aten.select.int: _scatter_with(aten.select_scatter.default),
    aten.diagonal.default: _scatter_with(aten.diagonal_scatter.default),
    # DDP's reducer copies each gradient into its bucket through as_strided views.
    aten.as_strided.default: _scatter_with(aten.as_strided_scatter.default),
    aten.t.default: _transpose_back,
    aten.transpose.int: _transpose_back,
    aten.permute.default: _permute_back,
    **{
        op: _reshape_back
        for op in (
            aten.view.default,
            aten._unsafe_view.default,
            aten.reshape.default,
            aten.unsqueeze.default,
            aten.squeeze.default,
            aten.squeeze.dim,
            aten.squeeze.dims,
            aten.flatten.using_ints,
            aten.unflatten.int,
        )
    },
}


# --- handlers -----------------------------------------------------------------------------


def _copy_(func: Any, args: tuple, kwargs: dict) -> Any:
    dst, src = args[0], args[1]
    if dst.device.type != DEVICE_TYPE:
        dst.copy_(to_cpu(src, "to_cpu"))
        return dst
    v = read(src) if src.device.type == DEVICE_TYPE else upload_value(src)
    write(dst, _fit(v, read(dst).shape, dst.dtype, func))
    return dst


def _copy_from(func: Any, args: tuple, kwargs: dict) -> Any:
    src, dst = args[0], args[1]
    return _copy_(aten.copy_.default, (dst, src), {})


def _to_copy(func: Any, args: tuple, kwargs: dict) -> Any:
    src = args[0]
    target = kwargs.get("device")
    dtype = kwargs.get("dtype")
    if src.device.type != DEVICE_TYPE:  # CPU -> tpu
        return wrap(upload_value(src if dtype is None else src.to(dtype)))
    if target is not None and torch.device(target).type != DEVICE_TYPE:
        out = to_cpu(src, "to_cpu")
        if dtype is not None:
            out = out.to(dtype)
        return out.to(target) if torch.device(target).type != "cpu" else out
    if dtype is None or dtype == src.dtype:
        return _functional(aten.clone.default, (src,), {})
    return _functional(aten._to_copy.default, (src,), {"dtype": dtype})


def _item(func: Any, args: tuple, kwargs: dict) -> Any:
    return to_cpu(args[0], "item").item()


def _empty(func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """``torch.empty(..., device="tpu")`` and friends: zero-filled (device mode never
    exposes uninitialised memory)."""
    size = args[0]
    dtype = kwargs.get("dtype") or torch.get_default_dtype()
    return new_zeros(tuple(size), dtype)


def _fallback(func: Any, args: tuple, kwargs: dict, reason: str | None = None) -> Any:
    """Run ``func`` in eager PyTorch on the CPU, visibly (see ``compile/fallback.py``)."""
    fall_back(func, args, kwargs, reason or missing_reason(func))
    written: list[tuple[torch.Tensor, torch.Tensor]] = []
    mutated = {a.name for a in func._schema.arguments if a.alias_info and a.alias_info.is_write}
    names = [a.name for a in func._schema.arguments]

    def host(a: Any, name: str | None = None) -> Any:
        if isinstance(a, torch.Tensor) and a.device.type == DEVICE_TYPE:
            cpu = to_cpu(a, "fallback")
            if name in mutated:
                written.append((a, cpu))
            return cpu
        if type(a) is Value:
            return to_cpu(wrap(a), "fallback")
        if isinstance(a, torch.device) and a.type == DEVICE_TYPE:
            return torch.device("cpu")
        if type(a) in (list, tuple):
            return type(a)(host(x, name) for x in a)
        return a

    cpu_args = tuple(host(a, names[i] if i < len(names) else None) for i, a in enumerate(args))
    cpu_kwargs = {k: host(v, k) for k, v in kwargs.items()}
    out = func(*cpu_args, **cpu_kwargs)
    for t, cpu in written:
        write(t, upload_value(cpu))
    mutated_cpu = {id(cpu): t for t, cpu in written}

    def device_side(o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            return mutated_cpu.get(id(o)) or wrap(upload_value(o))
        if isinstance(o, (list, tuple)):
            return type(o)(device_side(x) for x in o)
        return o

    return device_side(out)


# --- automatic mixed precision helpers (GradScaler) ------------------------------------------


def _amp_unscale(func: Any, args: tuple, kwargs: dict) -> None:
    grads, found_inf, inv_scale = args
    for g in grads:
        g.mul_(inv_scale)
        found_inf.copy_(torch.maximum(found_inf, (~torch.isfinite(g)).any().to(found_inf.dtype)))


def _amp_update_scale(func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    scale, tracker, found_inf, growth, backoff, interval = args
    found = found_inf > 0
    grown = tracker + 1
    grow_now = (~found) & (grown >= interval)
    new_scale = torch.where(found, scale * backoff, torch.where(grow_now, scale * growth, scale))
    tracker.copy_(torch.where(found | grow_now, torch.zeros_like(tracker), grown))
    scale.copy_(new_scale)
    return scale


def _not_pinned(func: Any, args: tuple, kwargs: dict) -> bool:
    return False


_HANDLERS: dict[Any, Callable[..., Any]] = {
    aten.copy_.default: _copy_,
    aten._copy_from.default: _copy_from,
    aten._to_copy.default: _to_copy,
    aten._local_scalar_dense.default: _item,
    aten.is_pinned.default: _not_pinned,
    aten.empty.memory_format: _empty,
    aten.empty_strided.default: _empty,
    aten._amp_foreach_non_finite_check_and_unscale_.default: _amp_unscale,
    aten._amp_update_scale_.default: _amp_update_scale,
}

# The road each op takes, decided on first sight; handlers are fixed roads.
_ROADS: dict[Any, Callable[..., Any]] = dict(_HANDLERS)

# In-place ops whose functional twin has another name.
_TWINS: dict[Any, Any] = {
    aten.normal_.default: aten.normal_functional.default,
    aten.bernoulli_.float: aten.bernoulli.p,
}


def new_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero-filled tpu tensor."""
    return wrap(Value(tuple(shape), dtype, _zeros(shape, dtype)))


def _zeros(shape: tuple[int, ...], dtype: torch.dtype) -> jax.Array:
    with jax_scope() as dev:
        return jax.device_put(np.zeros(shape, to_jax_dtype(dtype)), dev)
