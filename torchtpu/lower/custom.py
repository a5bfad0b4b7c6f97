"""Library ops lowered through their own implementation.

A ``torch.library`` op (any namespace but ``aten`` and ``prims``) that has no
lowering in the registry but whose CPU kernel is Python code is lowered by
tracing that code: ``make_fx`` runs the kernel the dispatcher would pick for a
CPU call (a ``CPU`` kernel, else ``CompositeExplicitAutograd``, else
``CompositeImplicitAutograd``; ``torch.library.custom_op`` bodies and
``register_kernel``/``Library.impl`` functions alike) on FakeTensors of the
call's shapes and dtypes, with torchtpu's decomposition table, then
functionalizes the ATen graph it recorded. The resulting ATen graph is lowered node by node through
the same registry, inside the same XLA program, so the op costs no transfer
and no extra program. Graphs are cached per (op, tensor shapes and dtypes,
other arguments).

What stays an eager fallback, with the reason in the warning (and in the
``UnsupportedOpError`` of strict mode):

- a kernel registered from C++ (compiled code: nothing to trace);
- a Python kernel that cannot be traced: it reads values (``.item()``,
  ``.numpy()``, ``if x.sum() > 0``), or its output size depends on the data;
- a kernel whose graph uses an op torchtpu cannot lower, or draws random
  numbers (no RNG key is threaded into library ops yet);
- an op that mutates its arguments (``mutates_args``): not functionalized
  here, it runs in eager PyTorch.

Example::

    @torch.library.custom_op("mylib::scaled_gelu", mutates_args=())
    def scaled_gelu(x: torch.Tensor, scale: float) -> torch.Tensor:
        return torch.nn.functional.gelu(x) * scale

    scaled_gelu.register_fake(lambda x, scale: torch.empty_like(x))
    torch.compile(lambda x: scaled_gelu(x, 2.0), backend="tpu")(torch.randn(4))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax.numpy as jnp
import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from torchtpu.errors import LoweringUnsupported
from torchtpu.lower.dtypes import is_array, to_numpy, to_torch_dtype
from torchtpu.lower.registry import Lowering, lookup

THROUGH_IMPLEMENTATION = "its own implementation"

_NATIVE = frozenset({"aten", "prims"})
_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
# The kernels a CPU call can run, in the order the dispatcher prefers them.
_CPU_KERNELS = (
    "CPU",
    "CompositeExplicitAutogradNonFunctional",
    "CompositeExplicitAutograd",
    "CompositeImplicitAutograd",
)


def is_library_op(op: Any) -> bool:
    """Whether ``op`` is an op overload of a library namespace (not ``aten``/``prims``).

    Example::

        is_library_op(torch.ops.aten.sin.default)  # False
    """
    return isinstance(op, torch._ops.OpOverload) and op.namespace not in _NATIVE


def python_kernel(op: torch._ops.OpOverload) -> tuple[str | None, str]:
    """The dispatch key of the Python kernel a CPU call of ``op`` runs, with ``""``;
    or ``None`` and why there is none to trace.

    Example::

        python_kernel(torch.ops.mylib.scaled_gelu.default)  # ("CompositeExplicitAutograd", "")
    """
    for key in _CPU_KERNELS:
        if op.has_kernel_for_dispatch_key(key):
            if _registered_from_python(op, key):
                return key, ""
            return None, (
                f"its {key} kernel is compiled code registered from C++, which torchtpu "
                "cannot trace"
            )
    return None, "it has no CPU or composite kernel that torchtpu could trace"


def _registered_from_python(op: torch._ops.OpOverload, key: str) -> bool:
    # torch.library records every Python registration (torch.library.custom_op,
    # register_kernel, Library.impl) as "namespace/name/DispatchKey".
    namespace, name = op._schema.name.split("::")
    names = (name, f"{name}.{op._overloadname}")
    registered = getattr(torch.library, "_impls", frozenset())  # none known: all opaque
    return any(f"{namespace}/{n}/{key}" in registered for n in names)


# How AOTAutograd wraps a call of an op that mutates its arguments.
_AUTO_FUNCTIONALIZED = tuple(
    getattr(torch.ops.higher_order, name)
    for name in ("auto_functionalized", "auto_functionalized_v2")
    if hasattr(torch.ops.higher_order, name)
)


def missing_reason(op: Any, args: tuple = ()) -> str:
    """Why ``op`` (called with FX arguments ``args``) has no lowering: ``"no lowering"``,
    and for a library op why its own implementation cannot stand in for one.

    Example::

        missing_reason(torch.ops.quantized.embedding_bag_byte_prepack.default)
        # "no lowering, and its CPU kernel is compiled code registered from C++, ..."
    """
    if op in _AUTO_FUNCTIONALIZED and args and is_library_op(args[0]):
        return (
            f"no lowering, and it is AOTAutograd's functional form of {args[0]}, which "
            f"{_MUTATES[3:]}"
        )
    if not is_library_op(op):
        return "no lowering"
    _, why = python_kernel(op)
    if not why and op._schema.is_mutable:
        why = _MUTATES
    return f"no lowering, and {why}" if why else "no lowering"


def through_implementation(op: Any) -> Lowering | None:
    """The lowering of library op ``op`` through its Python kernel, or ``None`` when it
    has no Python kernel (see :func:`python_kernel`).

    Example::

        lowering = through_implementation(torch.ops.mylib.scaled_gelu.default)
        lowering.via  # "its own implementation"
    """
    if not is_library_op(op):
        return None
    key, _ = python_kernel(op)
    if key is None:
        return None
    return Lowering(
        op,
        functools.partial(_lower, op),
        supports=functools.partial(_supports, op),
        via=THROUGH_IMPLEMENTATION,
    )


# --- tracing --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A tensor argument of a traced call: its shape and dtype."""

    shape: tuple[int, ...]
    dtype: torch.dtype


class Untraceable(LoweringUnsupported):
    """The op's implementation cannot be lowered; the message says why."""


# (op, arguments) -> the traced graph, or why it cannot be traced.
_TRACED: dict[Any, torch.fx.GraphModule | str] = {}
_MUTATES = (
    "it mutates its arguments (mutates_args), and torchtpu does not functionalize "
    "library ops' implementations"
)


def traced(op: torch._ops.OpOverload, args: tuple, kwargs: dict) -> torch.fx.GraphModule:
    """The ATen graph of ``op``'s Python kernel for a call, cached per (op, arguments).

    ``args``/``kwargs`` hold a :class:`TensorSpec` for each tensor; the graph takes
    those tensors, in order, as its placeholders. Raises :class:`Untraceable`.

    Example::

        gm = traced(op, (TensorSpec((2, 3), torch.float32), 2.0), {})
        print(gm.code)
    """
    if op._schema.is_mutable:
        raise Untraceable(_MUTATES)
    try:
        key: Any = (op, _hashable(args), _hashable(kwargs))
        found = _TRACED.get(key)
    except TypeError:  # an argument that cannot be hashed: trace every time
        key, found = None, None
    if isinstance(found, str):
        raise Untraceable(found)
    if found is not None:
        return found
    try:
        gm = _trace(op, args, kwargs)
    except Untraceable as exc:
        if key is not None:
            _TRACED[key] = str(exc)
        raise
    if key is not None:
        _TRACED[key] = gm
    return gm


def _trace(op: torch._ops.OpOverload, args: tuple, kwargs: dict) -> torch.fx.GraphModule:
    from torchtpu.decompose import decomposition_table

    specs: list[TensorSpec] = []
    _collect(args, specs)
    _collect(kwargs, specs)
    mode = FakeTensorMode()
    with mode:
        fakes = [torch.empty(s.shape, dtype=s.dtype, device="cpu") for s in specs]

    def kernel(*tensors: torch.Tensor) -> Any:
        supply = iter(tensors)
        a, k = _fill(args, supply), _fill(kwargs, supply)
        return op.redispatch(_CPU, *a, **k)  # the Python kernel a CPU call runs

    table = decomposition_table()
    try:
        with mode:
            # The kernel sees plain FakeTensors first: reading their values (.item(),
            # .numpy(), Python control flow on data) raises. Functionalization's
            # wrappers would let .numpy() read garbage, so it runs on the ATen graph.
            first = make_fx(kernel, decomposition_table=table)(*fakes)
            functional = torch.func.functionalize(first, remove="mutations_and_views")
            return make_fx(functional, decomposition_table=table)(*fakes)
    except Exception as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise Untraceable(f"its implementation cannot be traced ({detail})") from exc


def _collect(value: Any, specs: list[TensorSpec]) -> None:
    if isinstance(value, TensorSpec):
        specs.append(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _collect(v, specs)
    elif isinstance(value, dict):
        for v in value.values():
            _collect(v, specs)


def _fill(value: Any, tensors: Any) -> Any:
    if isinstance(value, TensorSpec):
        return next(tensors)
    if isinstance(value, (list, tuple)):
        return type(value)(_fill(v, tensors) for v in value)
    if isinstance(value, dict):
        return {k: _fill(v, tensors) for k, v in value.items()}
    return value


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, *(_hashable(v) for v in value))
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    hash(value)
    return value


# --- the two sides of the lowering ------------------------------------------------------


def _supports(op: torch._ops.OpOverload, /, *args: Any, **kwargs: Any) -> bool | str:
    """Whether the implementation lowers for these arguments (FakeTensors or meta
    tensors), decided before anything is traced with JAX."""
    from torchtpu.lower.interpreter import is_sized, lowering_status, node_op

    try:
        gm = traced(op, _specs_of_tensors(args), _specs_of_tensors(kwargs))
    except LoweringUnsupported as exc:
        return str(exc)
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        inner = node_op(node)
        if is_sized(node):
            return f"its implementation calls {inner}, whose output size depends on the data"
        status, reason = lowering_status(node)
        if status != "lowers":
            return f"its implementation calls {inner}, which torchtpu cannot lower ({reason})"
        lowering = lookup(inner)
        if lowering is not None and lowering.rng:
            return (
                f"its implementation draws random numbers ({inner}); torchtpu threads no "
                "RNG key into library ops"
            )
    return True


def _specs_of_tensors(value: Any) -> Any:
    """FakeTensors and meta tensors as :class:`TensorSpec`, with concrete sizes."""
    if isinstance(value, torch.Tensor):
        return TensorSpec(tuple(_concrete(s) for s in value.shape), value.dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_specs_of_tensors(v) for v in value)
    if isinstance(value, dict):
        return {k: _specs_of_tensors(v) for k, v in value.items()}
    return value


def _concrete(size: Any) -> int:
    if isinstance(size, int):
        return size
    hint = getattr(getattr(size, "node", None), "hint", None)
    if hint is None:
        raise Untraceable(
            f"a size with no known value ({size}): its implementation is traced for concrete sizes"
        )
    return int(hint)


def _lower(op: torch._ops.OpOverload, /, *args: Any, **kwargs: Any) -> Any:
    """Lower one call: trace the implementation for the JAX arguments' shapes and dtypes,
    then evaluate its graph with the registry's lowerings on those arguments."""
    from torchtpu.lower.interpreter import NoLowering, RngStream, map_args, run_nodes

    arrays: list[Any] = []
    schema = {a.name: a for a in op._schema.arguments}
    positional = [a.name for a in op._schema.arguments if not a.kwarg_only]
    spec_args = tuple(
        _specs_of_arrays(v, schema.get(positional[i]) if i < len(positional) else None, arrays)
        for i, v in enumerate(args)
    )
    spec_kwargs = {k: _specs_of_arrays(v, schema.get(k), arrays) for k, v in kwargs.items()}
    gm = traced(op, spec_args, spec_kwargs)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    env: dict[torch.fx.Node, Any] = dict(zip(placeholders, arrays, strict=True))
    body = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    try:
        run_nodes(body, env, RngStream(None))
    except NoLowering as exc:
        inner = exc.node.target
        if exc.kind == "crashed":
            raise RuntimeError(f"the lowering of {inner}, in its implementation: {exc}") from exc
        raise Untraceable(
            f"its implementation calls {inner}, which torchtpu cannot lower ({exc})"
        ) from exc
    except LoweringUnsupported as exc:
        raise Untraceable(f"its implementation cannot be lowered ({exc})") from exc
    output = next(n for n in gm.graph.nodes if n.op == "output")
    return map_args(output.args[0], env)


def _specs_of_arrays(value: Any, argument: Any, arrays: list[Any]) -> Any:
    """JAX arrays in tensor arguments as :class:`TensorSpec` (collected into ``arrays``)."""
    tensor_typed = argument is None or "Tensor" in str(argument.type)
    if is_array(value):
        if not tensor_typed:
            # Device mode passes some Python scalars as program inputs: the
            # implementation is traced for a value, so ask for it as a constant.
            raise LoweringUnsupported(
                f"argument {argument.name} is a program input, not a Python value: the "
                "implementation is traced for its value"
            )
        if not all(isinstance(d, int) for d in value.shape):
            raise LoweringUnsupported(
                f"symbolic sizes {value.shape}: its implementation is traced for concrete sizes"
            )
        arrays.append(value)
        return TensorSpec(tuple(value.shape), to_torch_dtype(value.dtype))
    if isinstance(value, torch.Tensor):  # a constant the front end kept as a tensor
        arrays.append(jnp.asarray(to_numpy(value)))
        return TensorSpec(tuple(value.shape), value.dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_specs_of_arrays(v, argument, arrays) for v in value)
    return value
