"""Pallas kernels as torch custom ops: :func:`pallas_op`.

A kernel is written as a JAX function (calling ``jax.experimental.pallas``'s
``pallas_call``) and becomes a ``torch.library`` custom op whose lowering, in
torchtpu's one lowering registry, is that function. So the same kernel runs:

- inside ``torch.compile(backend="tpu")`` and ``torchtpu.compile_step``: the
  op's FX node is lowered like any ATen op, and the Pallas call sits inside the
  graph's XLA program;
- on tpu tensors (device mode): the op is recorded like an ATen op and lowered
  by the same registry entry at the next sync;
- on CPU tensors in eager PyTorch: the function is compiled as a program of its
  own (the one program cache) and run on torchtpu's device, results handed back
  through DLPack (zero-copy on the CPU platform).

Its backward is a second custom op (``<name>_backward``) registered the same
way, attached with ``register_autograd``. Output shapes for FakeTensors come
from ``jax.eval_shape`` of the forward, so no fake implementation is written.

On a platform Pallas cannot compile for (the CPU), ``pallas_call`` below runs
kernels in Pallas's interpret mode.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any

import jax
import torch
from jax.experimental import pallas as pl

from torchtpu.errors import TorchTPUError
from torchtpu.lower.dtypes import to_jax_dtype, to_torch_dtype
from torchtpu.lower.registry import register


class KernelError(TorchTPUError, ValueError):
    """A Pallas op was defined or called with arguments it cannot take."""


# --- interpret mode ---------------------------------------------------------------------


def interpret_mode() -> bool:
    """Whether Pallas kernels run in interpret mode: when torchtpu's platform is
    neither a TPU nor a GPU, the platforms Pallas compiles kernels for."""
    from torchtpu.runtime import platform_name

    return platform_name() not in {"tpu", "gpu"}


def pallas_call(kernel: Callable[..., None], *, interpret: bool | None = None, **kwargs: Any):
    """``jax.experimental.pallas.pallas_call`` with ``interpret`` chosen for
    torchtpu's platform (``None``: interpret mode on the CPU). Decided when the
    kernel is traced, that is, when torchtpu builds the program holding it.

    Example::

        import jax, jax.numpy as jnp
        from torchtpu.kernels.pallas import pallas_call

        def add_one(x_ref, o_ref):
            o_ref[...] = x_ref[...] + 1

        x = jnp.zeros(8)
        pallas_call(add_one, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype))(x)
    """
    mode = interpret_mode() if interpret is None else interpret
    return pl.pallas_call(kernel, interpret=mode, **kwargs)


# --- the signature: schema, tensors and the rest -----------------------------------------


def _is_array_type(ann: Any) -> bool:
    return ann is torch.Tensor or ann is jax.Array


def _returns(ann: Any, name: str) -> int:
    """How many arrays the forward returns; 0 for a single (unpacked) one."""
    if _is_array_type(ann):
        return 0
    args = typing.get_args(ann)
    if typing.get_origin(ann) is tuple and args and Ellipsis not in args:
        if all(_is_array_type(a) for a in args):
            return len(args)
    raise KernelError(
        f"pallas_op({name!r}): the forward must be annotated to return jax.Array or "
        f"tuple[jax.Array, ...] of fixed length, not {ann!r}. What to do: annotate its "
        "return, e.g. `-> tuple[jax.Array, jax.Array]`."
    )


class _Signature:
    """The forward's parameters as a torch schema: tensors (``jax.Array`` or
    ``torch.Tensor`` annotations) and static values (ints, floats, bools, strings,
    optional or sequences of them), which the kernel gets as Python values."""

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:
            raise KernelError(
                f"pallas_op({name!r}): cannot resolve the annotations of {fn.__qualname__}: "
                f"{exc}. What to do: annotate every parameter with types importable in its module."
            ) from exc
        params = []
        self.tensors: list[str] = []
        self.static: list[inspect.Parameter] = []
        for p in inspect.signature(fn).parameters.values():
            ann = hints.get(p.name, inspect.Parameter.empty)
            if ann is inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise KernelError(
                    f"pallas_op({name!r}): parameter {p.name!r} of {fn.__qualname__} needs a type "
                    "annotation (jax.Array for tensors; int, float, bool, str or optional ones "
                    "for static values) and cannot be *args or **kwargs."
                )
            if _is_array_type(ann):
                if p.kind is p.KEYWORD_ONLY:
                    raise KernelError(
                        f"pallas_op({name!r}): tensor parameter {p.name!r} is keyword-only; "
                        "tensors come first, positionally."
                    )
                self.tensors.append(p.name)
                ann = torch.Tensor
            else:
                self.static.append(p.replace(annotation=ann))
            params.append(p.replace(annotation=ann))
        if not self.tensors:
            raise KernelError(f"pallas_op({name!r}): the forward takes no jax.Array parameter")
        self.n_out = _returns(hints.get("return"), name)
        ret = torch.Tensor if self.n_out == 0 else tuple[(torch.Tensor,) * self.n_out]
        self.forward = inspect.Signature(params, return_annotation=ret)
        self.backward = self._backward_signature(name)

    @property
    def outputs(self) -> int:
        return max(self.n_out, 1)

    def _backward_signature(self, name: str) -> inspect.Signature:
        """``(*tensors, *outputs, *output grads, *, <static values>) -> one grad per tensor``."""
        tensor = inspect.Parameter.POSITIONAL_OR_KEYWORD
        names = [*self.tensors]
        names += [f"output{i}" for i in range(self.outputs)]
        names += [f"grad_output{i}" for i in range(self.outputs)]
        clash = set(names[len(self.tensors) :]) & {p.name for p in self.static}
        if clash:
            raise KernelError(f"pallas_op({name!r}): rename parameter(s) {sorted(clash)}")
        params = [inspect.Parameter(n, tensor, annotation=torch.Tensor) for n in names]
        params += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in self.static]
        n = len(self.tensors)
        ret = torch.Tensor if n == 1 else tuple[(torch.Tensor,) * n]
        return inspect.Signature(params, return_annotation=ret)


def _schema(signature: inspect.Signature) -> str:
    def prototype(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("only a signature")

    prototype.__signature__ = signature  # type: ignore[attr-defined]
    # A kernel's ints (block sizes, dims) are compile-time constants, not sizes
    # that may be symbolic: `int`, where infer_schema would write `SymInt`.
    return torch.library.infer_schema(prototype, mutates_args=()).replace("SymInt", "int")


# --- splitting a call into arrays and static values ---------------------------------------


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, torch.dtype | torch.device):
        return str(value)
    return value


def _split(args: tuple, kwargs: dict) -> tuple[list[torch.Tensor], Callable[..., Any], Any]:
    """The call's tensors, a function that puts arrays back in their places, and
    a hashable key of everything else."""
    tensors: list[torch.Tensor] = []
    slots: list[Any] = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            slots.append(len(tensors))
            tensors.append(a)
        else:
            slots.append(None)
    n_args, names = len(args), list(kwargs)
    values = (*args, *kwargs.values())

    def place(arrays: Sequence[Any]) -> tuple[tuple, dict]:
        filled = [arrays[s] if s is not None else v for s, v in zip(slots, values, strict=True)]
        return tuple(filled[:n_args]), dict(zip(names, filled[n_args:], strict=True))

    key = (
        tuple(s is None and _hashable(v) for s, v in zip(slots, values, strict=True)),
        tuple(names),
    )
    return tensors, place, key


def _specs(tensors: Sequence[torch.Tensor]) -> list[jax.ShapeDtypeStruct]:
    # int() specialises a symbolic size (torch.compile(dynamic=True)): a kernel's
    # grid and blocks are static, so each size gets a program of its own, as
    # torchtpu compiles every size it sees.
    return [
        jax.ShapeDtypeStruct(tuple(int(d) for d in t.shape), to_jax_dtype(t.dtype)) for t in tensors
    ]


def _describe_call(name: str, args: tuple, kwargs: dict) -> str:
    from torchtpu.errors import describe_value

    parts = [describe_value(a) for a in args] + [
        f"{k}={describe_value(v)}" for k, v in kwargs.items()
    ]
    return f"{name}({', '.join(parts)})"


_OPS: dict[str, Any] = {}


def _defined(name: str) -> bool:
    namespace, op = name.split("::", 1)
    return name in _OPS or hasattr(getattr(torch.ops, namespace), op)


# --- the op --------------------------------------------------------------------------


class PallasOp:
    """A Pallas kernel registered as a torch custom op. Call it like the forward,
    with tensors where the forward takes arrays; ``op`` and ``backward_op`` are the
    ``torch.ops`` overloads (what FX graphs hold)."""

    def __init__(
        self,
        name: str,
        forward: Callable[..., Any],
        backward: Callable[..., Any] | None,
    ) -> None:
        if "::" not in name:
            raise KernelError(
                f"pallas_op({name!r}): name the op 'namespace::name', e.g. 'mylib::{name}'"
            )
        for taken in (name, f"{name}_backward" if backward is not None else None):
            if taken is not None and _defined(taken):
                raise KernelError(
                    f"pallas_op({name!r}): torch.ops already has an op {taken!r}"
                    + (f" (registered by {_OPS[taken]!r})" if taken in _OPS else "")
                    + ". What to do: give the kernel a name of its own."
                )
        self.name = name
        self.forward = forward
        self.backward = backward
        self.signature = _Signature(forward, name)
        self._shapes: dict[Any, Any] = {}
        self._custom = torch.library.custom_op(
            name, self._eager_forward, mutates_args=(), schema=_schema(self.signature.forward)
        )
        self.op = self._custom._opoverload
        self._custom.register_fake(self._fake_forward)
        self._custom.register_kernel("privateuseone", functools.partial(_on_device, self.op))
        register(self.op)(self._lower_forward)
        self.backward_op = None
        if backward is not None:
            self._define_backward()
        _OPS[name] = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._custom(*args, **kwargs)

    def __repr__(self) -> str:
        grad = f", backward={self.backward.__qualname__}" if self.backward else ""
        return f"PallasOp({self.op._schema}, forward={self.forward.__qualname__}{grad})"

    # forward: lowering, FakeTensor shapes, eager on CPU tensors

    def _lower_forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.forward(*args, **kwargs)
        if self.signature.n_out == 0:
            return out
        return tuple(out)

    def _fake_forward(self, *args: Any, **kwargs: Any) -> Any:
        tensors, place, key = _split(args, kwargs)
        specs = _specs(tensors)
        key = (tuple(specs), key)
        shapes = self._shapes.get(key)
        if shapes is None:
            from torchtpu.runtime import jax_scope

            def call(*arrays: Any) -> Any:
                a, k = place(arrays)
                return self._lower_forward(*a, **k)

            with jax_scope():
                shapes = jax.eval_shape(call, *specs)
            flat = shapes if self.signature.n_out else (shapes,)
            if len(flat) != self.signature.outputs or not all(hasattr(s, "shape") for s in flat):
                raise KernelError(
                    f"{_describe_call(self.name, args, kwargs)}: the forward returned "
                    f"{shapes}, not the {self.signature.outputs} array(s) its annotation says"
                )
            self._shapes[key] = shapes
        like = tensors[0]
        flat = shapes if self.signature.n_out else (shapes,)
        made = tuple(like.new_empty(s.shape, dtype=to_torch_dtype(s.dtype)) for s in flat)
        return made if self.signature.n_out else made[0]

    def _eager_forward(self, *args: Any, **kwargs: Any) -> Any:
        return _eager(self.name, self._lower_forward, args, kwargs)

    # backward: a second op, attached with register_autograd

    def _define_backward(self) -> None:
        name = f"{self.name}_backward"
        custom = torch.library.custom_op(
            name, self._eager_backward, mutates_args=(), schema=_schema(self.signature.backward)
        )
        self.backward_op = custom._opoverload
        custom.register_fake(self._fake_backward)
        custom.register_kernel("privateuseone", functools.partial(_on_device, self.backward_op))
        register(self.backward_op)(self._lower_backward)
        self._custom.register_autograd(self._autograd_backward, setup_context=self._setup_context)
        self._backward_custom = custom

    def _setup_context(
        self, ctx: Any, inputs: tuple, output: Any, keyword_only_inputs: dict | None = None
    ) -> None:
        # PyTorch hands the positional parameters (defaults filled in) as ``inputs``
        # and the keyword-only ones apart; gradients go to the positional ones.
        params = list(self.signature.forward.parameters)
        by_name = {**dict(zip(params, inputs, strict=False)), **(keyword_only_inputs or {})}
        outputs = output if self.signature.n_out else (output,)
        ctx.save_for_backward(*(by_name[n] for n in self.signature.tensors), *outputs)
        ctx.static = {p.name: by_name[p.name] for p in self.signature.static}
        ctx.positional = params[: len(inputs)]

    def _autograd_backward(self, ctx: Any, *grads: Any) -> tuple:
        saved = ctx.saved_tensors
        outputs = saved[len(self.signature.tensors) :]
        grads = tuple(
            torch.zeros_like(o) if g is None else g for g, o in zip(grads, outputs, strict=True)
        )
        result = self._backward_custom(*saved, *grads, **ctx.static)
        result = (result,) if len(self.signature.tensors) == 1 else result
        by_name = dict(zip(self.signature.tensors, result, strict=True))
        return tuple(by_name.get(n) for n in ctx.positional)

    def _lower_backward(self, *args: Any, **kwargs: Any) -> Any:
        tensors = args[: len(self.signature.tensors)]
        grads = self.backward(*args, **kwargs)
        if len(tensors) == 1 and not isinstance(grads, (tuple, list)):
            grads = (grads,)
        grads = tuple(grads) if isinstance(grads, (tuple, list)) else (grads,)
        if len(grads) != len(tensors):
            raise KernelError(
                f"{self.name}: the backward returned {len(grads)} gradient(s), one per tensor "
                f"input is needed ({', '.join(self.signature.tensors)}); return None for an "
                "input without one"
            )
        out = []
        for name, x, g in zip(self.signature.tensors, tensors, grads, strict=True):
            if g is None:
                g = jax.numpy.zeros(x.shape, x.dtype)
            if tuple(g.shape) != tuple(x.shape):
                raise KernelError(
                    f"{self.name}: the backward's gradient for {name!r} has shape "
                    f"{list(g.shape)}, but {name!r} has shape {list(x.shape)}. What to do: "
                    "return one gradient per tensor input, shaped like that input."
                )
            out.append(g.astype(x.dtype))
        return out[0] if len(out) == 1 else tuple(out)

    def _fake_backward(self, *args: Any, **kwargs: Any) -> Any:
        made = tuple(torch.empty_like(t) for t in args[: len(self.signature.tensors)])
        return made[0] if len(made) == 1 else made

    def _eager_backward(self, *args: Any, **kwargs: Any) -> Any:
        return _eager(f"{self.name}_backward", self._lower_backward, args, kwargs)


def _on_device(op: Any, *args: Any, **kwargs: Any) -> Any:
    """The op on tpu tensors: recorded like an ATen op, so the lowering registered
    for it runs in device mode's fused programs."""
    from torchtpu.device import tensor

    # Every non-tensor argument is a compile-time constant of the kernel (a block
    # size, a scale closed over by the kernel body), never a traced scalar.
    tensor._STATIC_SCALAR_OPS.add(op)
    return tensor._functional(op, args, kwargs)


def _eager(name: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """Run ``fn`` (the lowering) on CPU tensors: a program of its own, cached by
    the arguments' shapes, dtypes and static values."""
    from torchtpu.compile.program import CACHE, compile_function
    from torchtpu.errors import user_site
    from torchtpu.runtime import jax_scope
    from torchtpu.runtime.transfer import from_device, to_device

    tensors, place, static = _split(args, kwargs)
    specs = _specs(tensors)
    key = ("op", "pallas", name, tuple(specs), static)
    with jax_scope() as device:
        program = CACHE.get(key)
        if program is None:

            def call(*arrays: Any) -> Any:
                a, k = place(arrays)
                return fn(*a, **k)

            program = CACHE.put(
                key, compile_function(call, specs, name=f"pallas {name}", origin=user_site())
            )
        results = program([to_device(t, device) for t in tensors])
    like = tensors[0].device
    if isinstance(results, (tuple, list)):
        return tuple(from_device(r, like) for r in results)
    return from_device(results, like)


def pallas_op(
    name: str,
    forward: Callable[..., Any] | None = None,
    *,
    backward: Callable[..., Any] | None = None,
) -> Any:
    """Register a JAX function built on Pallas kernels as the torch custom op ``name``.

    ``forward`` takes arrays (parameters annotated ``jax.Array``) first, then
    static values (``int``, ``float``, ``bool``, ``str``, optional ones, lists):
    its annotations are the op's schema. It returns ``jax.Array`` or a fixed
    ``tuple[jax.Array, ...]``, as annotated.

    ``backward``, if given, takes the forward's arrays, then its outputs, then
    one gradient per output (zeros for an output no gradient reached), then the
    static values by keyword; it returns one gradient per array input (``None``
    for one without). It becomes the op ``<name>_backward``.

    Used as a decorator when ``forward`` is omitted. Returns a :class:`PallasOp`.

    Example::

        import jax, jax.numpy as jnp, torch
        from torchtpu.kernels.pallas import pallas_call, pallas_op

        def _double(x_ref, o_ref):
            o_ref[...] = x_ref[...] * 2

        def double(x: jax.Array) -> jax.Array:
            return pallas_call(_double, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype))(x)

        def double_backward(x: jax.Array, out: jax.Array, grad: jax.Array) -> jax.Array:
            return double(grad)

        op = pallas_op("mylib::double", forward=double, backward=double_backward)
        op(torch.ones(8, requires_grad=True)).sum().backward()
    """
    if forward is None:
        return lambda fn: PallasOp(name, fn, backward)
    return PallasOp(name, forward, backward)
