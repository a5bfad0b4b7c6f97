"""Evaluate FX nodes of ATen ops with JAX: the heart of the lowering stage.

``run_nodes`` walks nodes in order, looks each op up in the registry, applies
the registered policy (type promotion, RNG key) and the node's recorded output
dtype, and leaves JAX values in ``env``. It is called while ``jax.jit`` traces,
so its cost is paid once per compile, never per step.
"""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import torch
import torch.fx
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

from torchtpu.errors import LoweringUnsupported
from torchtpu.lower import checks
from torchtpu.lower.custom import missing_reason
from torchtpu.lower.dtypes import (
    is_array,
    promoted_dtypes,
    round_complex32,
    to_jax_dtype,
    to_numpy,
)
from torchtpu.lower.registry import Lowering, SizedLowering, lookup, sized_lowering


class NoLowering(LoweringUnsupported):
    """The node's op has no lowering (``kind="missing"``), its lowering refused these
    arguments (``"refused"``), or its lowering crashed (``"crashed"``)."""

    def __init__(self, node: torch.fx.Node, message: str, kind: str = "missing") -> None:
        super().__init__(message)
        self.node = node
        self.kind = kind


class RngStream:
    """Hands each random op its own key.

    A program's seed input is a scalar (one seed per run: each random op folds
    its own index into it) or a vector (device mode: one seed per random op,
    drawn when the op was recorded, as eager PyTorch draws at each call)."""

    def __init__(self, seed: jax.Array | None) -> None:
        self._seed = seed
        self._key = jax.random.key(seed) if seed is not None and seed.ndim == 0 else None
        self._count = 0

    def next(self) -> jax.Array:
        if self._seed is None:
            raise LoweringUnsupported("random op in a program compiled without an RNG key")
        self._count += 1
        if self._key is None:
            return jax.random.key(self._seed[self._count - 1])
        return jax.random.fold_in(self._key, self._count)


# AOTAutograd wraps ops with side effects (aten._linalg_check_errors) as
# with_effects(token, op, *args) -> (new_token, *results), threading a token
# through the graph to order them. XLA programs are already ordered, so the
# token passes straight through and the wrapped op is lowered as itself.
WITH_EFFECTS = torch.ops.higher_order.with_effects


# Python functions on sizes and scalars that graphs with symbolic sizes call
# (``sym_size * 2``, ``torch.sym_max(a, b)``): evaluated as they are, on Python
# numbers while tracing, or on JAX scalars for values read from the device.
PYTHON_FUNCTIONS = frozenset(
    {
        *(
            getattr(operator, name)
            for name in (
                "add mul sub truediv floordiv mod pow neg pos abs eq ne lt le gt ge "
                "and_ or_ xor not_ invert getitem"
            ).split()
        ),
        builtins.min,
        builtins.max,
        math.floor,
        math.ceil,
        math.sqrt,
        math.trunc,
        torch.sym_max,
        torch.sym_min,
        torch.sym_not,
        torch.sym_float,
        torch.sym_int,
        torch.sym_ite,
        torch.sym_sum,
        torch._sym_sqrt,
    }
)


def node_op(node: torch.fx.Node) -> Any:
    """The op a call node runs: the wrapped op for ``with_effects``."""
    return node.args[1] if node.target is WITH_EFFECTS else node.target


def is_lowerable(node: torch.fx.Node) -> bool:
    return lowering_status(node)[0] == "lowers"


def lowering_status(node: torch.fx.Node) -> tuple[str, str]:
    """``("lowers", "")``, ``("missing", reason)`` or ``("refused", reason)`` for ``node``,
    decided from its recorded arguments before anything is traced: the
    lowering's ``supports=`` checker sees FakeTensors for tensors. A library op
    lowered through its own implementation (``torchtpu.lower.custom``) whose
    implementation cannot be lowered is ``"missing"``, with the reason."""
    if node.op != "call_function" or node.target in PYTHON_FUNCTIONS or is_sized(node):
        return "lowers", ""
    op = node_op(node)
    lowering = lookup(op)
    if lowering is None:
        return "missing", missing_reason(op, node.args)
    if lowering.supports is not None:
        args, kwargs = meta_args(node)
        if node.target is WITH_EFFECTS:
            args = args[2:]
        reason = lowering.refuses(args, kwargs)
        if reason:
            return ("missing" if lowering.via else "refused"), reason
    return "lowers", ""


def meta_args(node: torch.fx.Node) -> tuple[tuple, dict]:
    """The node's arguments with each input replaced by its recorded value (a FakeTensor)."""
    values = {n: n.meta.get("val") for n in node.all_input_nodes}
    return tuple(map_args(node.args, values)), map_args(node.kwargs, values)


def is_sized(node: torch.fx.Node) -> bool:
    """Whether the node runs as a sized op (see ``torchtpu.lower.sized``): its output
    size, or its value for ``.item()``, depends on data. Other nodes whose sizes
    PyTorch could not know (a slice from an ``.item()`` start) have static sizes
    once their inputs are known, and lower as usual."""
    target = node.target
    if target is torch.ops.aten._local_scalar_dense.default:
        return True
    if sized_lowering(target) is None:
        return False
    if target is torch.ops.aten.index.Tensor:  # only boolean masks make sizes
        indices = node.args[1] if len(node.args) > 1 else []
        return any(
            isinstance(ix, torch.fx.Node)
            and getattr(ix.meta.get("val"), "dtype", None) == torch.bool
            for ix in indices
        )
    # A repeated nonzero of the same tensor reuses the first one's symbols (PyTorch
    # memoizes it), so the node binds none of its own, but its size still depends on data.
    return bool(node.meta.get("unbacked_bindings")) or bool(
        free_unbacked_symbols(node.meta.get("val"))
    )


def node_sized_lowering(node: torch.fx.Node) -> SizedLowering | None:
    return sized_lowering(node.target)


def needs_rng(nodes: Iterable[torch.fx.Node]) -> bool:
    for node in nodes:
        if node.op == "call_function" and node.target not in PYTHON_FUNCTIONS:
            lowering = lookup(node_op(node))
            if lowering is not None and lowering.rng:
                return True
    return False


def map_args(value: Any, env: dict[torch.fx.Node, Any]) -> Any:
    if isinstance(value, torch.fx.Node):
        return env[value]
    if isinstance(value, (list, tuple)):
        return (
            type(value)(map_args(v, env) for v in value)
            if isinstance(value, tuple)
            else [map_args(v, env) for v in value]
        )
    if isinstance(value, dict):
        return {k: map_args(v, env) for k, v in value.items()}
    return value


def run_nodes(
    nodes: Iterable[torch.fx.Node], env: dict[torch.fx.Node, Any], rng: RngStream
) -> None:
    """Evaluate ``nodes`` (no placeholders or output) into ``env`` with JAX."""
    for node in nodes:
        if node.op == "call_function":
            checks.at_node(node)
            env[node] = _call(node, env, rng)
        elif node.op == "get_attr":
            env[node] = _constant(node)
        else:
            raise AssertionError(f"run_nodes got a {node.op} node: {node.format_node()}")


def _constant(node: torch.fx.Node) -> Any:
    value = node.graph.owning_module
    for part in str(node.target).split("."):
        value = getattr(value, part)
    if isinstance(value, torch.Tensor):
        return to_jax_constant(value)
    return value


def to_jax_constant(t: torch.Tensor) -> jax.Array:
    return jnp.asarray(to_numpy(t))


def _call(node: torch.fx.Node, env: dict[torch.fx.Node, Any], rng: RngStream) -> Any:
    args = map_args(node.args, env)
    kwargs = map_args(node.kwargs, env)
    if node.target in PYTHON_FUNCTIONS:
        return node.target(*args, **kwargs)
    target, effects = node.target, node.target is WITH_EFFECTS
    if effects:
        token, target, *args = args  # AOTAutograd passes the token as None
    lowering = lookup(target)
    if lowering is None:
        raise NoLowering(node, missing_reason(target))
    if lowering.node_meta:
        kwargs = {**kwargs, "node_meta": meta_args(node)}
    try:
        out = apply(lowering, tuple(args), kwargs, rng)
    except LoweringUnsupported as exc:
        if lowering.via:  # the op's own implementation did not lower: it has no lowering
            raise NoLowering(node, f"no lowering, and {exc}") from exc
        raise NoLowering(node, str(exc), kind="refused") from exc
    except Exception as exc:
        # PyTorch already checked the arguments while tracing, so a failure here
        # is a bug in our lowering: report it as one, and let the op fall back.
        reason = f"{type(exc).__name__}: {exc}"
        raise NoLowering(node, reason, kind="crashed") from exc
    meta = node.meta.get("val")
    if not effects:
        return match_meta(out, meta)
    results = out if isinstance(out, tuple) else () if out is None else (out,)
    return (token, *match_meta(results, meta[1:] if isinstance(meta, tuple) else None))


def apply(lowering: Lowering, args: tuple, kwargs: dict, rng: RngStream) -> Any:
    """Run one lowering with its registered policy."""
    if lowering.accumulate:
        args = tuple(_accumulating(a) for a in args)
        kwargs = {k: _accumulating(v) for k, v in kwargs.items()}
    result_dtype = None
    if lowering.promote is not None:
        positions = lowering.promote_args or range(len(args))
        taking_part = [args[i] for i in positions if i < len(args) and args[i] is not None]
        compute, result_dtype = promoted_dtypes(taking_part, lowering.promote)
        compute_jax = to_jax_dtype(compute)
        args = tuple(
            a.astype(compute_jax) if i in positions and is_array(a) else a
            for i, a in enumerate(args)
        )
    if lowering.rng:
        if kwargs.get("generator") is not None:
            raise LoweringUnsupported(
                "an explicit generator= inside a compiled program: its random numbers come "
                "from the program's seed, drawn from the device's generator (seed it with "
                "torch.manual_seed); the op runs in eager PyTorch to honour this generator"
            )
        kwargs = {**kwargs, "key": rng.next()}
    out = lowering.fn(*args, **kwargs)
    if result_dtype is not None and is_array(out):
        out = out.astype(to_jax_dtype(result_dtype))
    return out


_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _accumulating(value: Any) -> Any:
    """bfloat16 and float16 arrays as float32 (``accumulate=True``); the node's
    recorded dtype casts the result back."""
    if is_array(value) and value.dtype in _LOW_PRECISION:
        return value.astype(jnp.float32)
    if isinstance(value, (list, tuple)):
        return type(value)(_accumulating(v) for v in value)
    return value


def match_meta(out: Any, meta: Any) -> Any:
    """Cast to the dtype PyTorch recorded for this node, so results match eager's."""
    if isinstance(meta, torch.Tensor) and is_array(out):
        want = to_jax_dtype(meta.dtype)
        out = out if out.dtype == want else out.astype(want)
        return round_complex32(out) if meta.dtype == torch.complex32 else out
    if isinstance(meta, (list, tuple)) and isinstance(out, (list, tuple)):
        matched = [match_meta(o, m) for o, m in zip(out, meta, strict=False)]
        return matched if isinstance(out, list) else tuple(matched)  # named tuples too
    return out
