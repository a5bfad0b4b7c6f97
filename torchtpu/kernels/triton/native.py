"""Users' ``@triton.jit`` kernels as Triton's own GPU code inside an XLA program (issue 15).

On a CUDA GPU the translator (``launch.py``) is not the fastest way to run a Triton kernel:
Triton's compiler is. This module compiles the kernel with Triton for the GPU's target and
puts the result into the XLA program as one custom call, ``triton_kernel_call_ffi``, whose
handler JAX's CUDA plugin (``jax-cuda12-plugin``) registers: it launches the kernel on XLA's
stream with XLA's buffers as the kernel's pointers. The stages, each a value:

1. ``specialize(fn, args)``: the kernel's Triton signature, constexprs and attributes for
   these arguments, computed by Triton's own launcher code (so the kernel compiled is the one
   ``kernel[grid](...)`` on CUDA tensors would compile: same 16-byte alignment and
   divisibility hints, ints equal to 1 folded as constants);
2. ``compile_for_gpu(fn, signature, constexprs, ...)``: Triton's compiler for one CUDA
   target (runs without a GPU), cached; a ``CompiledKernel`` (name, PTX, cubin, warps,
   shared memory, cluster shape, the runtime parameters in order);
3. ``native_launch(compiled, grid, args, ...)``: a JAX primitive whose lowering for the
   ``cuda`` platform is the custom call. It has no other lowering: callers ask
   ``why_not(platform)`` first and use the translator when it answers a reason.

The switch: ``TORCHTPU_TRITON_NATIVE=1`` (default off). Nothing here has run on a GPU yet;
see docs/triton_native.md for what is tested where.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import shutil
import subprocess
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import ShapedArray
from jax.extend.core import Primitive
from jax.interpreters import mlir

log = logging.getLogger("torchtpu")

ENV = "TORCHTPU_TRITON_NATIVE"
PTX_ENV = "TORCHTPU_TRITON_PTX_VERSION"
# The typed-FFI registration of the plugin's Triton kernel call (jaxlib >= 0.10): the same
# zlib-compressed kernel-call proto as the older ``triton_kernel_call`` target, passed as the
# ``opaque`` attribute, and usable inside XLA's command buffers (CUDA graphs).
TARGET = "triton_kernel_call_ffi"
# XLA hands the custom call buffers at least this aligned; Triton's launcher assumes the same
# of torch tensors. The plugin checks each pointer at launch and fails the call otherwise.
POINTER_ALIGN = 16
# Triton (3.9) appends two pointer parameters to every kernel (global and profiling scratch);
# the plugin passes null for both, so kernels that need either are refused.
_HIDDEN_PARAMS = 2


# -- the switch ------------------------------------------------------------------------------


def enabled() -> bool:
    """Whether ``TORCHTPU_TRITON_NATIVE=1`` asks for the native path.

    Example::

        os.environ["TORCHTPU_TRITON_NATIVE"] = "1"
        assert enabled()
    """
    return os.environ.get(ENV, "") == "1"


def plugin() -> Any | None:
    """``jaxlib.gpu_triton`` when JAX's CUDA plugin provides its Triton kernel-call objects
    (``TritonKernel``, ``TritonKernelCall``...), else None. Importing it also registers the
    custom call targets with XLA, which must happen before a program using them compiles."""
    try:
        from jaxlib import gpu_triton
    except ImportError:
        return None
    return gpu_triton if getattr(gpu_triton, "_cuda_triton", None) is not None else None


def why_not(platform: str | None = None) -> str | None:
    """Why a launch lowered for ``platform`` cannot take the native path (None when it can).
    ``platform`` is the lowering platform (``"cuda"``; JAX devices say ``"gpu"``, taken as
    CUDA when the CUDA plugin is there); None means JAX's default backend.

    Example::

        reason = why_not("cpu")  # "TORCHTPU_TRITON_NATIVE is not 1 ..." or "... not cuda"
    """
    if not enabled():
        return f"{ENV} is not 1 (the native path is off by default)"
    if platform is None:
        platform = jax.default_backend()
    if platform not in ("cuda", "gpu"):
        return f"the program is lowered for {platform}, not cuda"
    if plugin() is None:
        return (
            "JAX's CUDA plugin with its Triton kernel call (jaxlib.gpu_triton) is not "
            'installed: pip install "torchtpu[cuda]"'
        )
    return None


def use_native(kernel_name: str, platform: str | None = None) -> bool:
    """``why_not(platform) is None``, with the reason logged when the switch is on and the
    translator is used anyway (warning, once per kernel and reason; debug when it is off).

    Example::

        if use_native(fn.__name__, "gpu"): ...  # else the translator
    """
    reason = why_not(platform)
    if reason is None:
        return True
    if enabled():
        _warn_once(kernel_name, reason)
    else:
        log.debug("Triton kernel %s: translated to JAX (%s)", kernel_name, reason)
    return False


@functools.cache
def _warn_once(kernel_name: str, reason: str) -> None:
    log.warning(
        "Triton kernel %s: %s=1 but %s; running it through the Triton -> JAX translator",
        kernel_name,
        ENV,
        reason,
    )


# -- stage 1: the kernel's signature for these arguments -------------------------------------

# Element types as Triton names them in pointer signatures (``"*fp32"``), keyed by the dtype's
# name, which torch (after "torch."), NumPy and JAX share. A bool tensor is ``u1``, as
# Triton's launcher types a torch.bool tensor.
TRITON_TYPES = {
    "float16": "fp16",
    "bfloat16": "bf16",
    "float32": "fp32",
    "float64": "fp64",
    "float8_e4m3fn": "fp8e4nv",
    "float8_e5m2": "fp8e5",
    "int8": "i8",
    "int16": "i16",
    "int32": "i32",
    "int64": "i64",
    "uint8": "u8",
    "uint16": "u16",
    "uint32": "u32",
    "uint64": "u64",
    "bool": "u1",
}


def triton_type(dtype: Any) -> str:
    """Triton's name for a torch, NumPy or JAX dtype, as its launcher types a tensor of it.

    Example::

        triton_type(torch.bfloat16)  # "bf16"; a pointer to it is "*bf16"
    """
    text = str(dtype)
    key = text.removeprefix("torch.") if text.startswith("torch.") else np.dtype(dtype).name
    try:
        return TRITON_TYPES[key]
    except KeyError:
        raise TypeError(
            f"no Triton element type for {dtype}; supported: {', '.join(TRITON_TYPES)}"
        ) from None


def is_array(value: Any) -> bool:
    """Whether a launch argument is a buffer (a pointer parameter), not a scalar."""
    return hasattr(value, "shape") and hasattr(value, "dtype")


class _Pointer:
    """What Triton's launcher asks of a tensor argument to specialize it: its dtype and an
    address (one aligned to ``POINTER_ALIGN``, as every XLA buffer is)."""

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype

    def data_ptr(self) -> int:
        return POINTER_ALIGN


@dataclasses.dataclass(frozen=True)
class Specialization:
    """Triton's compile inputs for one launch: ``signature`` (parameter name -> ``"*fp32"``,
    ``"i32"``..., ``"constexpr"``), ``constexprs`` (name -> value, including ints Triton
    folds) and ``attrs`` (parameter index path -> ``[["tt.divisibility", 16]]``)."""

    signature: dict[str, str]
    constexprs: dict[str, Any]
    attrs: dict[tuple[int, ...], Any]


def specialize(
    jit_fn: Any, args: Mapping[str, Any], *, compute_capability: int = 90
) -> Specialization:
    """The signature, constexprs and attributes Triton's own launcher would compile ``jit_fn``
    with for these arguments (``args``: parameter name -> an array-like with a ``dtype`` for a
    pointer, else the Python value; defaults filled in).

    Example::

        spec = specialize(add_kernel, {"x_ptr": x, "y_ptr": y, "out_ptr": out, "n": 1000,
                                       "BLOCK": 1024})
        spec.signature  # {"x_ptr": "*fp32", ..., "n": "i32", "BLOCK": "constexpr"}
    """
    backend, binder = _binder(jit_fn, compute_capability)
    bound, specialization, _ = binder(**{k: _stand_in(v) for k, v in args.items()})
    _, signature, constexprs, attrs = jit_fn._pack_args(backend, {}, bound, specialization, {})
    names = list(jit_fn.arg_names)
    tuples = [names[p[0]] for p in constexprs if len(p) != 1]
    tuples += [n for n, t in signature.items() if not isinstance(t, str)]
    if tuples:
        raise NotImplementedError(
            f"Triton kernel {jit_fn.__name__}: tuple arguments ({', '.join(tuples)}) are not "
            "supported by the native path; the translator can run it (docs/triton_native.md)"
        )
    return Specialization(
        dict(signature), {names[p[0]]: v for p, v in constexprs.items()}, dict(attrs)
    )


def _stand_in(value: Any) -> Any:
    if is_array(value):
        return _Pointer(triton_type(value.dtype))
    return tuple(map(_stand_in, value)) if isinstance(value, tuple) else value


@functools.lru_cache(maxsize=256)
def _binder(jit_fn: Any, compute_capability: int) -> tuple[Any, Any]:
    """Triton's CUDA backend for the target and the kernel's argument binder (the generated
    function its launcher calls to type and specialize arguments)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", compute_capability, 32))
    return backend, create_function_from_signature(jit_fn.signature, jit_fn.params, backend)


# -- stage 2: Triton's compiler for a CUDA target --------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class CompiledKernel:
    """One kernel compiled by Triton for one CUDA target: what the custom call launches.

    ``params`` are the kernel's runtime parameters in order, ``(name, type)``: pointers
    ``"*fp32"``, scalars ``"i32"``/``"fp32"``...; parameters compiled in as constants are not
    among them (``constexprs`` holds their values). Compared by identity: the compile cache
    returns one object per kernel and specialization.
    """

    name: str
    ptx: str
    cubin: bytes
    ttir: str
    num_warps: int
    num_ctas: int
    cluster_dims: tuple[int, int, int]
    shared_mem: int
    compute_capability: int
    params: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, Any], ...]
    divisibility: tuple[int, ...]  # per runtime parameter: the pointer alignment assumed

    def as_text(self) -> str:
        params = ", ".join(f"{n}: {t}" for n, t in self.params)
        return (
            f"{self.name}({params}) sm_{self.compute_capability}, {self.num_warps} warps, "
            f"{self.shared_mem} B shared, cluster {self.cluster_dims}"
        )


def compile_for_gpu(
    jit_fn: Any,
    signature: Mapping[str, str],
    constexprs: Mapping[str, Any],
    num_warps: int = 4,
    num_stages: int = 3,
    compute_capability: int = 90,
    attrs: Mapping[tuple[int, ...], Any] | None = None,
) -> CompiledKernel:
    """``jit_fn`` compiled by Triton's compiler for ``sm_<compute_capability>``, cached by
    kernel (and its source), signature, constants, attributes and options. Needs no GPU.
    The PTX version is the one the ptxas XLA uses accepts (``ptx_version_for_xla``).

    Example::

        k = compile_for_gpu(add_kernel, {"x_ptr": "*fp32", "y_ptr": "*fp32",
                                         "out_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"},
                            {"BLOCK": 1024})
        k.name, k.num_warps  # ("add_kernel", 4)
    """
    key = (
        jit_fn,
        jit_fn.cache_key,
        tuple(signature.items()),
        tuple(sorted(constexprs.items())),
        tuple(sorted((k, tuple(tuple(a) for a in v)) for k, v in (attrs or {}).items())),
        num_warps,
        num_stages,
        compute_capability,
        ptx_version_for_xla(),
    )
    return _compile(key)


@functools.lru_cache(maxsize=256)
def _compile(key: tuple[Any, ...]) -> CompiledKernel:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jit_fn, _, signature, constexprs, attrs, num_warps, num_stages, cc, ptx_version = key
    signature, constexprs = dict(signature), dict(constexprs)
    attrs = {path: [list(a) for a in values] for path, values in attrs}
    options: dict[str, Any] = {"num_warps": num_warps, "num_stages": num_stages}
    if ptx_version is not None:
        options["ptx_version"] = ptx_version
    source = ASTSource(fn=jit_fn, signature=signature, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(source, target=GPUTarget("cuda", cc, 32), options=options)
    meta = kernel.metadata
    name = jit_fn.__name__
    refuse = [
        (meta.global_scratch_size > 0, "needs a global scratch buffer"),
        (meta.profile_scratch_size > 0, "needs a profiling scratch buffer"),
        (getattr(meta, "launch_cooperative_grid", False), "is a cooperative-grid launch"),
        (getattr(meta, "launch_pdl", False), "uses programmatic dependent launch"),
        (bool(getattr(meta, "tensordesc_meta", None)), "takes TMA tensor descriptors"),
    ]
    for bad, what in refuse:
        if bad:
            raise NotImplementedError(
                f"Triton kernel {name} {what}, which the CUDA plugin's kernel call does not "
                "provide; the translator can run it (docs/triton_native.md)"
            )
    params = tuple((n, t) for n, t in signature.items() if t != "constexpr")
    ptx = kernel.asm["ptx"]
    _check_entry(name, meta.name, ptx, len(params))
    names = list(jit_fn.arg_names)
    divisible = {
        names[path[0]]
        for path, values in attrs.items()
        if ["tt.divisibility", POINTER_ALIGN] in values
    }
    return CompiledKernel(
        name=meta.name,
        ptx=ptx,
        cubin=kernel.asm["cubin"],
        ttir=kernel.asm["ttir"],
        num_warps=meta.num_warps,
        num_ctas=meta.num_ctas,
        cluster_dims=(meta.num_ctas, 1, 1),
        shared_mem=meta.shared,
        compute_capability=cc,
        params=params,
        constexprs=tuple(sorted(constexprs.items())),
        divisibility=tuple(
            POINTER_ALIGN if t.startswith("*") and n in divisible else 0 for n, t in params
        ),
    )


def _check_entry(kernel: str, entry: str, ptx: str, n_params: int) -> None:
    """The plugin passes the runtime parameters, then two null pointers: refuse a kernel
    whose PTX entry takes another number of parameters (another Triton ABI)."""
    match = re.search(rf"\.entry {re.escape(entry)}\((.*?)\)", ptx, re.S)
    found = match.group(1).count(".param") if match else -1
    if found != n_params + _HIDDEN_PARAMS:
        raise NotImplementedError(
            f"Triton kernel {kernel}: its PTX entry {entry} takes {found} parameters, not "
            f"{n_params} + {_HIDDEN_PARAMS} (this Triton's ABI differs from the one the CUDA "
            "plugin launches); the translator can run it (docs/triton_native.md)"
        )


def ptx_version_for_xla() -> int | None:
    """The PTX ISA version to compile for, as Triton numbers it (``84`` for 8.4): the highest
    one accepted by the ptxas that XLA runs on the custom call's PTX. Triton 3.9 otherwise
    targets its own ptxas (CUDA 13, PTX 9.x), which a CUDA 12 ptxas refuses. From
    ``$TORCHTPU_TRITON_PTX_VERSION``, else ``ptxas --version`` in JAX's CUDA directory or on
    ``PATH``; None (Triton's default) without the plugin or a ptxas.

    Example::

        ptx_version_for_xla()  # 88 with jax-cuda12-plugin's CUDA 12.9 ptxas
    """
    if os.environ.get(PTX_ENV):
        return int(os.environ[PTX_ENV])
    return _detected_ptx_version() if plugin() is not None else None


@functools.cache
def _detected_ptx_version() -> int | None:
    from triton.backends.nvidia.compiler import ptx_get_version

    for ptxas in _ptxas_candidates():
        try:
            out = subprocess.run([ptxas, "--version"], capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        release = re.search(r"release (\d+\.\d+)", out.stdout)
        if release:
            return ptx_get_version(release.group(1))
    log.warning(
        "torchtpu: no ptxas found for XLA's CUDA; Triton kernels get Triton's default PTX "
        "version, which XLA's ptxas may refuse (set %s, e.g. 88)",
        PTX_ENV,
    )
    return None


def _ptxas_candidates() -> list[str]:
    found = []
    try:
        from jax._src import lib  # where JAX points XLA for ptxas (xla_gpu_cuda_data_dir)

        if getattr(lib, "cuda_path", None):
            found.append(os.path.join(lib.cuda_path, "bin", "ptxas"))
    except ImportError:
        pass
    if shutil.which("ptxas"):
        found.append(shutil.which("ptxas"))
    return [p for p in found if os.path.exists(p)]


# -- stage 3: the custom call -----------------------------------------------------------------

native_launch_p = Primitive("torchtpu_triton_native")
native_launch_p.multiple_results = True


@dataclasses.dataclass(frozen=True)
class _Param:
    """One runtime parameter of the launch: an operand pointer, a result pointer, a scalar."""

    kind: str  # "operand" | "result" | "scalar"
    index: int = 0  # operand or XLA result index
    value: Any = None
    type: str = ""
    divisibility: int = 0
    bytes_to_zero: int = 0


def native_launch(
    compiled: CompiledKernel,
    grid: int | tuple[int, ...],
    args: Mapping[str, Any],
    out_shapes: Mapping[str, Any] | None = None,
    input_output_aliases: Iterable[str] = (),
    zeroed_outputs: Iterable[str] = (),
) -> dict[str, jax.Array]:
    """Launch ``compiled`` on ``grid`` inside the XLA program being traced.

    ``args``: each runtime parameter by name, a JAX array for a pointer (flat or not: the
    kernel sees its row-major elements) or a Python number. ``input_output_aliases``: the
    pointer arguments the kernel writes; each comes back as a new array (the kernel writes
    into a copy of the operand, none when the operand is donated or dead afterwards).
    ``out_shapes``: pointer parameters given a fresh buffer instead (``jax.ShapeDtypeStruct``;
    uninitialized unless named in ``zeroed_outputs``); they must come after every array in
    ``args`` among the kernel's parameters (the plugin binds pointers to XLA's operands, then
    its results, in order). Returns the new arrays by name. Lowers only for ``cuda``.

    Example::

        k = compile_for_gpu(add_kernel, spec.signature, spec.constexprs, attrs=spec.attrs)
        out = native_launch(k, (cdiv(n, 1024),), {"x_ptr": x, "y_ptr": y, "out_ptr": out,
                            "n": n}, input_output_aliases=["out_ptr"])["out_ptr"]
    """
    out_shapes = dict(out_shapes or {})
    aliased = list(dict.fromkeys(input_output_aliases))
    zeroed = set(zeroed_outputs)
    grid3 = _grid3(compiled.name, grid)
    known = {n for n, _ in compiled.params} | {n for n, _ in compiled.constexprs}
    for name in [*args, *out_shapes]:
        if name not in known:
            raise TypeError(f"Triton kernel {compiled.name}: no parameter {name!r}")
    for name in aliased:
        if name not in args or not is_array(args[name]):
            raise TypeError(
                f"Triton kernel {compiled.name}: {name!r} is written but is not an array argument"
            )
    if zeroed - set(out_shapes):
        raise TypeError(
            f"Triton kernel {compiled.name}: zeroed outputs {sorted(zeroed - set(out_shapes))} "
            "are not in out_shapes"
        )
    for name, value in compiled.constexprs:
        if name in args and not is_array(args[name]) and args[name] != value:
            raise ValueError(
                f"Triton kernel {compiled.name}: {name}={args[name]!r}, but it was compiled "
                f"with {name}={value!r}; compile it for this value"
            )

    for name, ty in compiled.params:
        value = out_shapes.get(name, args.get(name))
        if ty.startswith("*") and is_array(value) and triton_type(value.dtype) != ty[1:]:
            raise TypeError(
                f"Triton kernel {compiled.name}: {name} is a {value.dtype} array, but the "
                f"kernel was compiled for {ty}; compile it for this dtype"
            )
    if 0 in grid3:  # no program runs (Triton's launcher launches nothing either)
        return {n: args[n] for n in aliased} | {
            n: jnp.zeros(s.shape, s.dtype) for n, s in out_shapes.items()
        }

    operands: list[Any] = []
    operand_of: dict[str, int] = {}
    fresh = [n for n, _ in compiled.params if n in out_shapes]
    results = [*fresh, *aliased]  # the plugin binds fresh results right after the operands
    plan: list[_Param] = []
    for (name, ty), div in zip(compiled.params, compiled.divisibility, strict=True):
        if name in out_shapes:
            shape = out_shapes[name]
            size = int(np.prod(shape.shape)) * np.dtype(shape.dtype).itemsize
            zero = size if name in zeroed else 0
            plan.append(_Param("result", fresh.index(name), None, ty, div, zero))
        elif name not in args:
            raise TypeError(f"Triton kernel {compiled.name}: missing argument {name!r}")
        elif ty.startswith("*"):
            if not is_array(args[name]):
                raise TypeError(
                    f"Triton kernel {compiled.name}: {name} is a pointer ({ty}); got "
                    f"{type(args[name]).__name__}"
                )
            if any(p.kind == "result" for p in plan):
                raise ValueError(
                    f"Triton kernel {compiled.name}: the fresh output {fresh[0]!r} comes "
                    f"before the array argument {name!r} among the kernel's parameters; "
                    "pass it as an array and alias it instead"
                )
            operand_of[name] = len(operands)
            plan.append(_Param("operand", len(operands), None, ty, div))
            operands.append(args[name])
        else:
            plan.append(_Param("scalar", 0, _scalar(compiled.name, name, args[name], ty), ty))
    avals = [out_shapes[n] for n in fresh] + [args[n] for n in aliased]
    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]
    aliases = tuple((operand_of[n], len(fresh) + i) for i, n in enumerate(aliased))
    outs = native_launch_p.bind(
        *operands,
        kernel=compiled,
        grid=grid3,
        plan=tuple(plan),
        out_avals=tuple(avals),
        aliases=aliases,
    )
    return dict(zip(results, outs, strict=True))


def _grid3(name: str, grid: int | tuple[int, ...]) -> tuple[int, int, int]:
    grid = (grid,) if isinstance(grid, int) else tuple(int(g) for g in grid)
    if not 1 <= len(grid) <= 3 or min(grid) < 0:
        raise ValueError(f"Triton kernel {name}: grid {grid} is not 1 to 3 sizes >= 0")
    return grid + (1,) * (3 - len(grid))  # type: ignore[return-value]


# The scalar types the plugin's kernel call can pass (its ``create_scalar_parameter``).
_SCALARS = {"i1": bool, "u1": bool, "i32": int, "u32": int, "i64": int, "u64": int}
_SCALARS |= {"fp32": float, "fp64": float}


def _scalar(kernel: str, name: str, value: Any, ty: str) -> Any:
    if ty not in _SCALARS:
        raise NotImplementedError(
            f"Triton kernel {kernel}: scalar {name} is {ty}, which the CUDA plugin's kernel "
            f"call cannot pass (it takes {', '.join(_SCALARS)}); the translator can run it "
            "(docs/triton_native.md)"
        )
    return _SCALARS[ty](value.item() if isinstance(value, np.generic) else value)


@native_launch_p.def_abstract_eval
def _abstract_eval(*avals: Any, out_avals: tuple[Any, ...], **_: Any) -> list[Any]:
    return [ShapedArray(a.shape, a.dtype) for a in out_avals]


def kernel_call(
    lib: Any, compiled: CompiledKernel, grid: tuple[int, int, int], plan: tuple[_Param, ...]
) -> bytes:
    """The ``opaque`` attribute of the custom call: the plugin's kernel call for this launch,
    serialized (its protobuf) and zlib-compressed, as the plugin's handler reads it."""
    params = []
    for p in plan:
        if p.kind == "scalar":
            ty = "i1" if p.type == "u1" else p.type  # the plugin names a bool i1
            params.append(lib.create_scalar_parameter(p.value, ty))
        else:
            params.append(lib.create_array_parameter(p.bytes_to_zero, p.divisibility))
    kernel = lib.TritonKernel(
        compiled.name,
        compiled.num_warps,
        compiled.num_ctas,
        compiled.shared_mem,
        compiled.ptx,
        compiled.ttir,
        compiled.compute_capability,
    )
    call = lib.TritonKernelCall(kernel, *grid, params)
    return zlib.compress(call.to_proto(compiled.name, b""))


def _lowering(
    ctx: Any,
    *operands: Any,
    kernel: CompiledKernel,
    grid: tuple[int, int, int],
    plan: tuple[_Param, ...],
    out_avals: tuple[Any, ...],
    aliases: tuple[tuple[int, int], ...],
) -> Any:
    lib = plugin()
    if lib is None:
        raise RuntimeError(
            f"Triton kernel {kernel.name}: lowering its native call for cuda needs JAX's CUDA "
            f"plugin ({why_not('cuda')}); callers check why_not() and use the translator"
        )
    opaque = kernel_call(lib, kernel, grid, plan)
    rule = jax.ffi.ffi_lowering(TARGET, operand_output_aliases=dict(aliases))
    return rule(ctx, *operands, opaque=opaque)


mlir.register_lowering(native_launch_p, _lowering, platform="cuda")


# -- what launch.py calls ---------------------------------------------------------------------


def run(
    fn: Any,
    grid: tuple[int, ...],
    args: Mapping[str, Any],
    written: Iterable[str] | None = None,
    **options: Any,
) -> dict[str, jax.Array]:
    """``launch.run``'s contract on the native path: ``args`` maps each parameter to a Python
    value or a ``launch.Buffer`` (flat ``data``, element ``offset``, triton ``dtype``); returns
    the new flat contents of the buffers in ``written`` (every buffer when None: correct, but
    each is then copied). ``options``: those of ``launcher``.

    Example::

        if use_native(fn.__name__, "gpu"):
            new = run(fn, grid, {"x_ptr": Buffer(x, 0, tl.float32), ..., "BLOCK": 1024},
                      written=["out_ptr"])
    """
    call = launcher(fn, grid, args, written, **options)
    return call(*(v.data for v in args.values() if _is_buffer(v)))


def launcher(
    fn: Any,
    grid: tuple[int, ...],
    args: Mapping[str, Any],
    written: Iterable[str] | None = None,
    *,
    num_warps: int = 4,
    num_stages: int = 3,
    compute_capability: int | None = None,
    donate: bool = False,
) -> Any:
    """The jitted launch ``run`` calls: a function of the buffers' flat arrays (in ``args``
    order) returning the written ones by name. Cached by kernel, grid, scalar values, buffer
    layouts and options; the kernel is compiled for the GPU of JAX's device 0 unless
    ``compute_capability`` is given. ``donate`` hands the written buffers to XLA so the kernel
    writes them in place (the caller's arrays are deleted).

    Example::

        f = launcher(add_kernel, (4,), args, ["out_ptr"], compute_capability=90)
        print(f.trace(x, y, out).lower(lowering_platforms=("cuda",)).as_text())
    """
    buffers = tuple(k for k, v in args.items() if _is_buffer(v))
    names = tuple(buffers if written is None else written)
    grid3 = _grid3(fn.__name__, grid)
    layout = tuple(
        (k, tuple(v.data.shape), str(v.data.dtype), v.offset) if k in buffers else (k, v)
        for k, v in args.items()
    )
    key = (fn, grid3, layout, names, num_warps, num_stages, compute_capability, donate)
    try:
        call = _LAUNCHES.get(key)
    except TypeError:  # an unhashable scalar argument: build the launch afresh
        call, key = None, None
    if call is None:
        values = {k: v.data if k in buffers else v for k, v in args.items()}  # dtypes only
        cc = _device_capability() if compute_capability is None else compute_capability
        spec = specialize(fn, values, compute_capability=cc)
        compiled = compile_for_gpu(
            fn, spec.signature, spec.constexprs, num_warps, num_stages, cc, spec.attrs
        )
        call = _jitted(compiled, grid3, layout, buffers, names, donate)
        if key is not None:
            if len(_LAUNCHES) >= 256:
                _LAUNCHES.pop(next(iter(_LAUNCHES)))
            _LAUNCHES[key] = call
    return call


def _is_buffer(value: Any) -> bool:
    return hasattr(value, "data") and hasattr(value, "offset")


_LAUNCHES: dict[Any, Any] = {}


def _jitted(
    compiled: CompiledKernel,
    grid: tuple[int, int, int],
    layout: tuple[tuple[Any, ...], ...],
    buffers: tuple[str, ...],
    written: tuple[str, ...],
    donate: bool,
) -> Any:
    """One launch as a jitted function of the buffers' flat arrays: each sliced from its
    offset for the kernel, the written ones put back in place."""
    runtime = {n for n, _ in compiled.params}
    offsets = {entry[0]: entry[3] for entry in layout if entry[0] in buffers}
    scalars = {entry[0]: entry[1] for entry in layout if entry[0] not in buffers}

    def launch(*data: Any) -> dict[str, Any]:
        flat = dict(zip(buffers, data, strict=True))
        args = {k: v for k, v in scalars.items() if k in runtime}
        args |= {k: v[offsets[k] :] if offsets[k] else v for k, v in flat.items()}
        new = native_launch(compiled, grid, args, input_output_aliases=written)
        return {k: flat[k].at[offsets[k] :].set(v) if offsets[k] else v for k, v in new.items()}

    donated = tuple(i for i, n in enumerate(buffers) if n in written) if donate else ()
    return jax.jit(launch, donate_argnums=donated)


def _device_capability() -> int:
    lib = plugin()
    if lib is None:
        raise RuntimeError(f"no CUDA compute capability: {why_not('cuda')}")
    return int(lib.get_compute_capability(0))
