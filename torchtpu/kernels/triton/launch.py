"""Running a ``@triton.jit`` kernel as a JAX function (work in progress, issue 15).

``run(fn, grid, args)``: ``args`` maps each parameter to a Python value (constexprs, ints,
floats) or a ``Buffer`` (a tensor's elements laid out by its strides, flat). The kernel body
runs once, under ``jax.vmap`` over every program id, with Triton's own semantic over
``JaxBuilder``; the stores it recorded are then applied as one scatter each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import triton.language as tl
from triton.language.semantic import TritonSemantic
from triton.runtime.jit import JITFunction

from torchtpu.kernels.triton.builder import JaxBuilder, NeedsSequential, Value, np_dtype


@dataclasses.dataclass
class Buffer:
    data: Any  # 1-D jax array
    offset: int  # the tensor's first element
    dtype: Any  # triton element dtype


_SEMANTIC: list[TritonSemantic] = []


@contextlib.contextmanager
def _patched_lang(semantic: TritonSemantic) -> Iterator[None]:
    """tl's builtins take ``_semantic=``: give them ours, and restore them after."""
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
    put(tl, "reduce", _reduce)
    put(tl.core, "reduce", _reduce)
    put(tl, "range", _range)
    put(tl, "static_range", _range)
    put(JITFunction, "__call__", lambda self, *a, **k: self.fn(*a, **k))  # @jit helpers
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


_MISSING = object()


def _range(a: Any, b: Any = None, step: Any = None, **_: Any) -> range:
    start, stop = (0, a) if b is None else (a, b)
    return range(int(start), int(stop), 1 if step is None else int(step))


def _concrete(t: Any, what: str) -> Any:
    data = t.handle.data
    if isinstance(data, jax.core.Tracer):
        raise NotImplementedError(
            f"{what} of a value that depends on the program id: data-dependent control flow "
            "is not supported by torchtpu's Triton translator yet"
        )
    return np.asarray(data)


def _bool(self: Any) -> bool:
    return bool(_concrete(self, "a Python branch on").all())


def _index(self: Any) -> int:
    return int(_concrete(self, "a Python int").reshape(()))


def _reduce(input: Any, axis: Any, combine_fn: Any, keep_dims: bool = False, **_: Any) -> Any:
    std = tl.standard
    ops = [(std._sum_combine, jnp.sum), (std._elementwise_max, jnp.max)]
    ops.append((std._elementwise_min, jnp.min))  # compared by identity: JITFunctions hash slowly
    reducer = next((r for f, r in ops if f is combine_fn), None)
    if isinstance(input, tuple) or reducer is None:
        raise NotImplementedError(
            f"tl.reduce with the combine function {getattr(combine_fn, '__name__', combine_fn)}"
        )
    data = jnp.asarray(input.handle.data)
    out = reducer(data, axis=axis, keepdims=keep_dims)
    dt = input.dtype
    if not out.shape:
        return tl.tensor(Value(out, dt), dt)
    return tl.tensor(Value(out, dt), tl.block_type(dt, list(out.shape)))


def run(fn: Any, grid: tuple[int, ...], args: dict[str, Any]) -> dict[str, Any]:
    """New flat contents of every buffer the kernel stored to, by parameter name."""
    grid3 = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    names = [n for n, v in args.items() if isinstance(v, Buffer)]
    buffers = [args[n].data for n in names]
    meta: dict[str, Any] = {}

    def program(pid: Any) -> list[tuple[Any, Any, Any]]:
        builder = JaxBuilder(buffers, grid3)
        ny, nz = grid3[1], grid3[2]
        builder.pid = (pid // (ny * nz), (pid // nz) % ny, pid % nz)
        call: dict[str, Any] = {}
        for name, value in args.items():
            if isinstance(value, Buffer):
                ty = tl.pointer_type(value.dtype)
                handle = Value(np.int32(value.offset), ty, names.index(name))
                call[name] = tl.tensor(handle, ty)
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                call[name] = value
            elif name in meta.setdefault("constexprs", _constexprs(fn)):
                call[name] = value
            else:
                ty = tl.int32 if isinstance(value, int) else tl.float32
                call[name] = tl.tensor(Value(np.asarray(value, np_dtype(ty)), ty), ty)
        with _patched_lang(TritonSemantic(builder)):
            fn.fn(**call)
        meta["records"] = [(r.kind, r.buf) for r in builder.records]
        return [(r.offsets, r.values, r.mask) for r in builder.records]

    n = grid3[0] * grid3[1] * grid3[2]
    try:
        stacked = jax.vmap(program)(jnp.arange(n, dtype=jnp.int32))
    except NeedsSequential as exc:
        raise NotImplementedError(
            f"Triton kernel {fn.__name__}: {exc}; such kernels need the sequential mode, "
            "which torchtpu's translator does not have yet"
        ) from exc
    out = list(buffers)
    for (kind, b), (off, vals, mask) in zip(meta["records"], stacked, strict=True):
        size = out[b].shape[0]
        idx = jnp.where(mask, off, size).reshape(-1)
        vals = vals.reshape(-1).astype(out[b].dtype)
        at = out[b].at[idx]
        out[b] = {"store": at.set, "add": at.add, "max": at.max, "min": at.min}[kind](
            vals, mode="drop"
        )
    stored = {b for _, b in meta["records"]}
    return {names[b]: out[b] for b in stored}


def _constexprs(fn: Any) -> set[str]:
    params = inspect.signature(fn.fn).parameters
    return {n for n, p in params.items() if "constexpr" in str(p.annotation)} | {
        p.name for p in getattr(fn, "params", []) if getattr(p, "is_constexpr", False)
    }


_TL = {
    "torch.float16": tl.float16,
    "torch.bfloat16": tl.bfloat16,
    "torch.float32": tl.float32,
    "torch.float64": tl.float64,
    "torch.int8": tl.int8,
    "torch.int16": tl.int16,
    "torch.int32": tl.int32,
    "torch.int64": tl.int64,
    "torch.uint8": tl.uint8,
    "torch.bool": tl.int1,
}


def launch_cpu(fn: Any, grid: Any, *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)`` on CPU tensors: translated, run by XLA, written back.
    Each tensor becomes a buffer of its own storage, so strides and views are honoured;
    tensors sharing a storage are separate buffers here (not yet one)."""
    import torch

    bound = inspect.signature(fn.fn).bind(*args, **kwargs)
    bound.apply_defaults()
    values: dict[str, Any] = {}
    tensors: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if isinstance(value, torch.Tensor):
            flat = (
                value.detach()
                .new_empty(0)
                .set_(
                    value.untyped_storage(),
                    0,
                    (value.untyped_storage().nbytes() // value.element_size(),),
                )
            )
            values[name] = Buffer(
                jnp.asarray(flat.numpy()), value.storage_offset(), _TL[str(value.dtype)]
            )
            tensors[name] = flat
        else:
            values[name] = value
    g = grid(bound.arguments) if callable(grid) else grid
    g = (g,) if isinstance(g, int) else tuple(g)
    for name, data in run(fn, g, values).items():
        tensors[name].copy_(torch.from_numpy(np.array(data)))


def _strided_offsets(shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    offsets = np.zeros((), np.int64)
    for size, stride in zip(shape, strides, strict=True):
        offsets = offsets[..., None] + np.arange(size, dtype=np.int64) * stride
    return offsets.reshape(-1)


def launch_tpu(fn: Any, grid: Any, *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args)`` on tpu tensors: each tensor's value laid out by its own strides
    into a buffer, the translated kernel run on the device, stored values written back
    (through views). Nothing is copied to the host."""
    import torch

    from torchtpu.device import tensor as dt

    bound = inspect.signature(fn.fn).bind(*args, **kwargs)
    bound.apply_defaults()
    values: dict[str, Any] = {}
    layouts: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if not isinstance(value, torch.Tensor):
            values[name] = value
            continue
        if not dt.is_tpu(value):
            raise TypeError(
                f"Triton kernel {fn.__name__}: argument {name} is a {value.device} tensor "
                f"{tuple(value.shape)} {value.dtype} among tpu tensors; move it with .to('tpu')"
            )
        array = dt.device_array(value, "a Triton kernel's input")
        if value.is_contiguous():
            flat, idx = array.reshape(-1), None
        else:
            idx = _strided_offsets(tuple(value.shape), tuple(value.stride()))
            size = int(idx.max()) + 1 if idx.size else 0
            flat = jnp.zeros(size, array.dtype).at[idx].set(array.reshape(-1))
        values[name] = Buffer(flat, 0, _TL[str(value.dtype)])
        layouts[name] = (value, idx)
    g = grid(bound.arguments) if callable(grid) else grid
    g = (g,) if isinstance(g, int) else tuple(g)
    for name, data in run(fn, g, values).items():
        tensor, idx = layouts[name]
        new = data if idx is None else data[idx]
        dt.set_device_array(tensor, new.reshape(tuple(tensor.shape)))


def install() -> None:
    """Route ``kernel[grid](...)`` launches whose tensors are on tpu or the CPU through the
    translator; launches on CUDA tensors keep Triton's own path."""
    if getattr(JITFunction.run, "_torchtpu", False):
        return
    original = JITFunction.run

    def run_(self: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
        import torch

        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        devices = {t.device.type for t in tensors}
        if not tensors or "cuda" in devices:
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)
        if warmup:
            return None
        params = set(inspect.signature(self.fn).parameters)
        kwargs = {k: v for k, v in kwargs.items() if k in params}  # num_warps, num_stages...
        launcher = launch_tpu if devices == {"tpu"} else launch_cpu
        if devices - {"tpu", "cpu"} or devices == {"tpu", "cpu"}:
            raise TypeError(
                f"Triton kernel {self.__name__}: tensors on {sorted(devices)}; put every "
                "tensor argument on one device (tpu, or the CPU)"
            )
        return launcher(self, grid, *args, **kwargs)

    run_._torchtpu = True  # type: ignore[attr-defined]
    JITFunction.run = run_
    # Dynamo captures a launch only where torch thinks Triton can run; the translator can.
    import torch.utils._triton as torch_triton

    torch_triton.has_triton = lambda: True
    register_lowering()


_JAX_TL = {
    "float16": tl.float16,
    "bfloat16": tl.bfloat16,
    "float32": tl.float32,
    "float64": tl.float64,
    "int8": tl.int8,
    "int16": tl.int16,
    "int32": tl.int32,
    "int64": tl.int64,
    "uint8": tl.uint8,
    "bool": tl.int1,
}


def _functional_supports(**hop: Any) -> bool | str:
    """Compiled graphs hand the lowering values, not layouts: take contiguous tensors only,
    so the kernel's stride arguments agree with the buffers (others fall back, counted)."""
    import torch
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    for name, value in hop["kwargs"].items():
        if isinstance(value, torch.Tensor) and not value.is_contiguous():
            return (
                f"argument {name} {tuple(value.shape)} {value.dtype} is not contiguous "
                f"(strides {tuple(value.stride())}); call .contiguous() before the launch"
            )
    if len(hop["grid"]) != 1 or hop.get("tma_descriptor_metadata"):
        return "an autotuned launch with several grids, or a TMA descriptor"
    if not isinstance(kernel_side_table.get_kernel(hop["kernel_idx"]), JITFunction):
        return "an autotuned or heuristic kernel inside a compiled graph"
    return True


def _functional(**hop: Any) -> dict[str, Any]:
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    fn = kernel_side_table.get_kernel(hop["kernel_idx"])
    consts = kernel_side_table.get_constant_args(hop["constant_args_idx"])
    params = list(inspect.signature(fn.fn).parameters)
    values: dict[str, Any] = {}
    shapes: dict[str, Any] = {}
    for name in params:
        if name in hop["kwargs"]:
            array = jnp.asarray(hop["kwargs"][name])
            values[name] = Buffer(array.reshape(-1), 0, _JAX_TL[str(array.dtype)])
            shapes[name] = array.shape
        elif name in consts:
            values[name] = consts[name]
    stored = run(fn, tuple(hop["grid"][0]), values)
    return {
        name: stored[name].reshape(shapes[name]) if name in stored else hop["kwargs"][name]
        for name in hop["tensors_to_clone"]
    }


def register_lowering() -> None:
    """The lowering of ``triton_kernel_wrapper_functional``, the op Dynamo and AOTAutograd
    make of a launch in a compiled function."""
    import torch

    from torchtpu.lower.registry import lookup, register

    op = torch.ops.higher_order.triton_kernel_wrapper_functional
    if lookup(op) is None:
        register(op, supports=_functional_supports)(_functional)
