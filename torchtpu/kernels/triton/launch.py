"""Running a ``@triton.jit`` kernel as a JAX function (work in progress, issue 15).

``run(fn, grid, args)``: ``args`` maps each parameter to a Python value (constexprs, ints,
floats) or a ``Buffer`` (a tensor's elements laid out by its strides, flat). The kernel body
runs once, under ``jax.vmap`` over every program id, with Triton's own semantic over
``JaxBuilder``; the stores it recorded are then applied, an affine store as slices and
reshapes (``affine.py``), any other as one scatter.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import triton.language as tl
from triton.language.semantic import TritonSemantic
from triton.runtime.jit import JITFunction

from torchtpu import config
from torchtpu.kernels.triton import affine
from torchtpu.kernels.triton.builder import (
    JaxBuilder,
    NeedsSequential,
    Value,
    as_view,
    np_dtype,
    scatter,
)
from torchtpu.kernels.triton.control import transform
from torchtpu.kernels.triton.lang import patched_lang
from torchtpu.kernels.triton.padding import rerun


@dataclasses.dataclass
class Buffer:
    data: Any  # jax array, row-major: the storage, or a contiguous tensor in its own shape
    offset: int  # the tensor's first element
    dtype: Any  # triton element dtype


log = logging.getLogger("torchtpu")


def _scalar_arg(value: Any) -> Any:
    """A Python number argument as Triton types it (ints by range, floats as fp32)."""
    if isinstance(value, float):
        ty = tl.float32
    elif -(2**31) <= value < 2**31:
        ty = tl.int32
    elif value < 2**63:
        ty = tl.int64
    else:
        ty = tl.uint64
    return tl.tensor(Value(np.asarray(value, np_dtype(ty)), ty), ty)


def run(fn: Any, grid: tuple[int, ...], args: dict[str, Any]) -> dict[str, Any]:
    """New flat contents of every buffer the kernel stored to, by parameter name.

    All programs run at once under ``jax.vmap``; a kernel that reads what it stored, or uses
    an atomic's old value, runs its programs one after another instead (logged at info level).
    The traced program is cached by kernel, grid, scalar arguments and buffer layouts.

    Example::

        out = run(add_kernel, (4,), {"x_ptr": Buffer(x, 0, tl.float32), ..., "BLOCK": 128})
    """
    grid3 = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    key = _plan_key(fn, grid3, args)
    plan = _PLANS.get(key) if key is not None else None
    if plan is None:
        plan = _Plan(fn, grid3, args)
        if key is not None:
            if len(_PLANS) >= _MAX_PLANS:
                _PLANS.pop(next(iter(_PLANS)))
            _PLANS[key] = plan
    return plan(tuple(args[name].data for name in plan.names))


_PLANS: dict[Any, _Plan] = {}
_MAX_PLANS = 256


def _plan_key(fn: Any, grid3: tuple[int, ...], args: dict[str, Any]) -> Any:
    parts: list[Any] = [id(fn), grid3]
    for name, value in args.items():
        if isinstance(value, Buffer):
            data = value.data
            parts.append((name, tuple(data.shape), str(data.dtype), value.offset, str(value.dtype)))
        else:
            parts.append((name, type(value).__name__, value))
    key = tuple(parts)
    try:
        hash(key)
    except TypeError:
        return None  # an unhashable argument: trace afresh
    return key


def lower(fn: Any, grid: tuple[int, ...], args: dict[str, Any]) -> jax.stages.Lowered:
    """The vectorised program ``run(fn, grid, args)`` runs, lowered and not compiled: its
    ``as_text()`` is the StableHLO, where an affine load or store (docs/triton.md) shows as
    slices and reshapes and any other as a ``gather`` or ``scatter``. Raises
    ``NeedsSequential`` for a kernel that runs its programs one after another.

    Example::

        text = lower(add_kernel, (4,), {"x_ptr": Buffer(x, 0, tl.float32), ...}).as_text()
        assert "gather" not in text
    """
    grid3 = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    plan = _Plan(fn, grid3, args)
    with jax.enable_x64(True):
        return plan.vectorised_jit.lower(tuple(args[name].data for name in plan.names))


class _Plan:
    """One kernel traced for one grid, scalar arguments and buffer layouts: vectorised under
    ``jax.vmap`` if it can be, else sequential (decided by the first trace)."""

    def __init__(self, fn: Any, grid3: tuple[int, ...], args: dict[str, Any]) -> None:
        self.fn, self.grid3 = fn, grid3
        self.names = [n for n, v in args.items() if isinstance(v, Buffer)]
        self.args = {n: v if not isinstance(v, Buffer) else Buffer(None, v.offset, v.dtype)
                     for n, v in args.items()}  # fmt: skip
        self.body = transform(fn.fn)
        self.constexprs = _constexprs(fn)
        self.n = grid3[0] * grid3[1] * grid3[2]
        self.written: set[int] = set()
        self.records: list[tuple[str, int, Any, Any]] = []
        self.chunks = 1
        self.vectorised_jit = jax.jit(self._flat(self.bounded, every=False))
        self.sequential_jit: Any = None

    def __call__(self, start: tuple[Any, ...]) -> dict[str, Any]:
        with jax.enable_x64(True):  # int64 offsets and uint64 seeds keep their width
            if self.sequential_jit is None:
                try:
                    final = self.vectorised_jit(start)
                    names = [self.names[b] for b in sorted(self.written)]
                    return dict(zip(names, final, strict=True))
                except NeedsSequential as exc:
                    log.info(
                        "Triton kernel %s: %s; running its %d programs one after another",
                        self.fn.__name__,
                        exc,
                        self.n,
                    )
                    self.sequential_jit = jax.jit(self._flat(self.sequential, every=True))
            final = self.sequential_jit(start)
        return {self.names[b]: final[b] for b in sorted(self.written)}

    def call_args(self) -> dict[str, Any]:
        call: dict[str, Any] = {}
        for name, value in self.args.items():
            if isinstance(value, Buffer):
                ty = tl.pointer_type(value.dtype)
                buf = self.names.index(name)
                call[name] = tl.tensor(Value(np.int32(value.offset), ty, buf), ty)
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                call[name] = value
            elif name in self.constexprs:
                call[name] = value
            else:
                call[name] = _scalar_arg(value)
        return call

    def trace(self, builder: JaxBuilder, pid: Any, programs: tuple[int, int] = (0, 0)) -> None:
        ny, nz = self.grid3[1], self.grid3[2]
        builder.pid = (pid // (ny * nz), (pid // nz) % ny, pid % nz)
        if not builder.sequential:  # each traced program's id, for the affine forms of offsets
            every = np.arange(*programs, dtype=np.int64)
            builder.flat_pid = pid
            builder.programs = (every // (ny * nz), (every // nz) % ny, every % nz)
        with patched_lang(TritonSemantic(builder)):
            self.body(**self.call_args())

    def _flat(self, f: Any, every: bool) -> Any:
        """``f`` on the buffers flattened, its results in the buffers' own shapes (a reshape
        inside the program is free; outside, each is a copy). ``every``: ``f`` returns every
        buffer, else those stored to."""

        def run(buffers: tuple[Any, ...]) -> tuple[Any, ...]:
            out = f(tuple(b.reshape(-1) for b in buffers))
            which = range(len(buffers)) if every else sorted(self.written)
            return tuple(o.reshape(buffers[i].shape) for o, i in zip(out, which, strict=True))

        return run

    def bounded(self, buffers: tuple[Any, ...]) -> tuple[Any, ...]:
        """``vectorised`` over the whole grid, or in chunks of programs where the whole grid
        would make an array over ``options().triton_chunk_bytes``; padded lanes left out
        (padding.py). The trace over the whole grid decides, and is not run otherwise."""
        closed = jax.make_jaxpr(self.vectorised)(buffers)
        limit = config.options().triton_chunk_bytes
        largest = _largest_batched(closed.jaxpr, self.n)
        self.chunks = min(self.n, _MAX_CHUNKS, -(-largest // max(limit, 1)))
        if self.chunks > 1:
            log.info(
                "Triton kernel %s: its %d programs at once make a %.1f MiB array; running them "
                "in %d chunks (options().triton_chunk_bytes)",
                self.fn.__name__,
                self.n,
                largest / 2**20,
                self.chunks,
            )
            closed = jax.make_jaxpr(lambda b: self.vectorised(b, self.chunks))(buffers)
        return tuple(rerun(closed, list(buffers)))

    def vectorised(self, buffers: tuple[Any, ...], chunks: int = 1) -> tuple[Any, ...]:
        """The new contents of the buffers stored to, in order (returning the others too
        would copy them: the inputs are not donated). The programs run under ``jax.vmap``,
        all at once or ``chunks`` runs of them one after another; every program loads from
        the buffers as they were before the launch."""
        out = list(buffers)
        written: set[int] = set()
        edges = np.linspace(0, self.n, chunks + 1).round().astype(int)
        for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):

            def program(pid: Any, lo: int = lo, hi: int = hi) -> list[tuple[Any, Any, Any]]:
                builder = JaxBuilder(list(buffers), self.grid3)
                self.trace(builder, pid, (lo, hi))
                self.records = [(r.kind, r.buf, r.view, r.layout) for r in builder.records]
                return [(r.offsets, r.values, r.mask) for r in builder.records]

            stacked = jax.vmap(program)(jnp.arange(lo, hi, dtype=jnp.int32))
            for rec, (off, vals, mask) in zip(self.records, stacked, strict=True):
                kind, b, view, layout = rec
                if layout is not None and (layout.per_program or hi - lo == 1):
                    if not layout.per_program:
                        vals, mask = vals[0], mask[0]
                    target = out[b] if view is None else as_view(out[b], view)
                    new = affine.store(target, layout, vals, mask)
                    out[b] = new if view is None else as_view(new, out[b].dtype)
                else:
                    out[b] = scatter(out[b], kind, off, vals, mask, view)
            written |= {b for _, b, _, _ in self.records}
        self.written = written
        return tuple(out[b] for b in sorted(self.written))

    def sequential(self, buffers: tuple[Any, ...]) -> tuple[Any, ...]:
        def in_order(pid: Any, buffers: tuple[Any, ...]) -> tuple[Any, ...]:
            builder = JaxBuilder(list(buffers), self.grid3, sequential=True)
            self.trace(builder, pid)
            self.written = set(builder.written)
            return tuple(builder.buffers)

        return jax.lax.fori_loop(0, self.n, in_order, buffers)


_MAX_CHUNKS = 64  # each chunk is traced (and compiled) on its own: bound the program's size


def _largest_batched(jaxpr: Any, n: int) -> int:
    """The bytes of the largest array in ``jaxpr`` (sub-jaxprs included) with a dimension
    of ``n``, the programs run at once: what running them in chunks makes smaller."""
    largest = 0
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            shape = getattr(v.aval, "shape", ())
            if n > 1 and n in shape:
                size = int(np.prod(shape)) * np.dtype(v.aval.dtype).itemsize
                largest = max(largest, size)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    largest = max(largest, _largest_batched(inner, n))
    return largest


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


def dispatch(
    fn: Any,
    grid: tuple[int, ...],
    values: dict[str, Any],
    platform: str | None,
    written: list[str] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``run(fn, grid, values)``, or on CUDA with ``TORCHTPU_TRITON_NATIVE=1`` the kernel's
    own compiled code as an XLA custom call (``native.py``); a kernel the native path
    cannot launch is translated, and the log says why. ``written``: the buffers the
    kernel stores to, when known (else found by translating it abstractly)."""
    from torchtpu.kernels.triton import native

    if not native.use_native(fn.__name__, platform):
        return run(fn, grid, values)
    if written is None:
        from torchtpu.errors import TorchTPUError

        try:
            written = stored_names(fn, grid, values)
        except (TorchTPUError, NotImplementedError):
            written = None  # every buffer: correct, each one copied
    try:
        return native.run(fn, grid, values, written, **(options or {}))
    except NotImplementedError as exc:
        log.warning("Triton kernel %s: %s; running it through the translator", fn.__name__, exc)
        return run(fn, grid, values)


def stored_names(fn: Any, grid: tuple[int, ...], values: dict[str, Any]) -> list[str]:
    """The buffers ``fn`` stores to (or updates atomically), found by translating it
    abstractly (``jax.eval_shape``): the buffers' ``data`` may be ``ShapeDtypeStruct`` s.
    Raises what the translation raises for a kernel it cannot express."""
    names = [k for k, v in values.items() if isinstance(v, Buffer)]

    def trace(*flat: Any) -> dict[str, Any]:
        rebuilt = {
            k: Buffer(a, values[k].offset, values[k].dtype)
            for k, a in zip(names, flat, strict=True)
        }
        return run(fn, grid, {**values, **rebuilt})

    return list(jax.eval_shape(trace, *(values[k].data for k in names)))


def _strided_offsets(shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    offsets = np.zeros((), np.int64)
    for size, stride in zip(shape, strides, strict=True):
        offsets = offsets[..., None] + np.arange(size, dtype=np.int64) * stride
    return offsets.reshape(-1)


def launch_tpu(
    fn: Any, grid: Any, *args: Any, options: dict[str, Any] | None = None, **kwargs: Any
) -> None:
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
            flat, idx = array, None  # flattened inside the kernel's program
        else:
            idx = _strided_offsets(tuple(value.shape), tuple(value.stride()))
            size = int(idx.max()) + 1 if idx.size else 0
            flat = jnp.zeros(size, array.dtype).at[idx].set(array.reshape(-1))
        values[name] = Buffer(flat, 0, _TL[str(value.dtype)])
        layouts[name] = (value, idx)
    g = grid(bound.arguments) if callable(grid) else grid
    g = (g,) if isinstance(g, int) else tuple(g)
    platform = next(iter(values[next(iter(layouts))].data.devices())).platform if layouts else None
    for name, data in dispatch(fn, g, values, platform, options=options).items():
        tensor, idx = layouts[name]
        new = data if idx is None else data[idx]
        if new.shape != tuple(tensor.shape):
            new = new.reshape(tuple(tensor.shape))
        dt.set_device_array(tensor, new)


def install() -> None:
    """Route ``kernel[grid](...)`` launches whose tensors are on tpu or the CPU through the
    translator; launches on CUDA tensors keep Triton's own path. (``ops.install``, which
    ``import torchtpu`` runs, calls this and also makes Dynamo capture launches.)"""
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
        # Launch options (num_warps, num_stages) matter only to the native GPU path.
        options = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
        kwargs = {k: v for k, v in kwargs.items() if k in params}
        if devices - {"tpu", "cpu"} or devices == {"tpu", "cpu"}:
            raise TypeError(
                f"Triton kernel {self.__name__}: tensors on {sorted(devices)}; put every "
                "tensor argument on one device (tpu, or the CPU)"
            )
        if devices == {"tpu"}:
            return launch_tpu(self, grid, *args, options=options, **kwargs)
        return launch_cpu(self, grid, *args, **kwargs)

    run_._torchtpu = True  # type: ignore[attr-defined]
    JITFunction.run = run_
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
    """Whether the lowering takes a compiled launch (``hop`` holds FakeTensors): one plain
    ``@triton.jit`` kernel (an autotuned one as its chosen config, see ``ops.normalize``),
    one grid, no TMA descriptors, and a kernel the translator can express, found by
    translating it abstractly now, so a construct it cannot is a reason to fall back
    (listed by ``torchtpu.examine``, an ``UnsupportedOpError`` in strict mode)."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    from torchtpu.errors import TorchTPUError
    from torchtpu.kernels.triton import ops

    hop.pop("node_meta", None)
    hop = ops.normalize(hop)
    if len(hop["grid"]) != 1 or hop.get("tma_descriptor_metadata"):
        return "an autotuned launch with several grids, or a TMA descriptor"
    if not isinstance(kernel_side_table.get_kernel(hop["kernel_idx"]), JITFunction):
        return "a @triton.heuristics kernel Dynamo did not fold into the launch"
    try:
        ops.stored_arguments(hop, tuple(hop["grid"][0]))
    except (TorchTPUError, NotImplementedError) as exc:
        return str(exc)
    return True


def _functional(*, node_meta: tuple[tuple, dict], **hop: Any) -> dict[str, Any]:
    """A compiled launch: each tensor's value laid out into a buffer by the strides eager
    PyTorch gives it (``node_meta``'s FakeTensors), since the kernel's stride arguments
    were taken from them, then the translated kernel, then the stored buffers read back
    through the same layout."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    from torchtpu.kernels.triton import ops

    fakes = node_meta[1]["kwargs"]
    hop = ops.normalize(hop)
    fn = kernel_side_table.get_kernel(hop["kernel_idx"])
    consts = kernel_side_table.get_constant_args(hop["constant_args_idx"])
    values: dict[str, Any] = {}
    layouts: dict[str, Any] = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in hop["kwargs"]:
            array = jnp.asarray(hop["kwargs"][name])
            flat, idx = _laid_out(array, fakes[name])
            values[name] = Buffer(flat, 0, _JAX_TL[str(array.dtype)])
            layouts[name] = (array.shape, idx)
        elif name in consts:
            values[name] = consts[name]
    from torchtpu.runtime import platform_name

    written = [n for n in hop["tensors_to_clone"] if n in layouts]
    stored = dispatch(fn, tuple(hop["grid"][0]), values, platform_name(), written)
    out = {}
    for name in hop["tensors_to_clone"]:
        if name not in stored:
            out[name] = hop["kwargs"][name]
            continue
        shape, idx = layouts[name]
        data = stored[name] if idx is None else stored[name][idx]
        out[name] = data.reshape(shape)
    return out


def _laid_out(array: Any, fake: Any) -> tuple[Any, Any]:
    """``array``'s values as a flat buffer laid out by ``fake``'s strides (offsets from its
    first element), and the offsets to read them back (``None`` when contiguous)."""
    if fake.is_contiguous():
        return array.reshape(-1), None
    idx = _strided_offsets(tuple(fake.shape), tuple(int(s) for s in fake.stride()))
    size = int(idx.max()) + 1 if idx.size else 0
    return jnp.zeros(size, array.dtype).at[idx].set(array.reshape(-1)), idx


def register_lowering() -> None:
    """The lowering of ``triton_kernel_wrapper_functional``, the op Dynamo and AOTAutograd
    make of a launch in a compiled function."""
    import torch

    from torchtpu.lower.registry import lookup, register

    op = torch.ops.higher_order.triton_kernel_wrapper_functional
    if lookup(op) is None:
        register(op, supports=_functional_supports, node_meta=True)(_functional)
