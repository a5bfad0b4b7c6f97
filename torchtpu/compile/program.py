"""One XLA program: a segment traced with JAX, lowered to StableHLO and compiled.

A :class:`Program` keeps each stage as a value: ``lowered_text()`` is the
StableHLO, ``compiled_text()`` the optimised HLO, ``cost_analysis()`` and
``memory_analysis()`` what XLA reports. Programs are cached in memory by a
fingerprint of their nodes and input types, and on disk by JAX's persistent
compilation cache (see ``torchtpu.runtime.device``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import torch
import torch.fx

from torchtpu.compile.partition import Segment
from torchtpu.config import options
from torchtpu.lower.interpreter import RngStream, needs_rng, run_nodes
from torchtpu.metrics import bump
from torchtpu.runtime import platform_name


class Program:
    """A compiled segment. Call it with the device arrays of its array inputs."""

    def __init__(
        self,
        lowered: Any,
        compiled: Any,
        static_outputs: dict[int, Any],
        treedef: Any,
        n_outputs: int,
        uses_rng: bool,
        seconds: float,
    ) -> None:
        self.lowered = lowered
        self.compiled = compiled
        self.static_outputs = static_outputs
        self.treedef = treedef
        self.n_outputs = n_outputs
        self.uses_rng = uses_rng
        self.compile_seconds = seconds

    def __call__(self, arrays: Sequence[jax.Array], seed: jax.Array | None) -> list[Any]:
        results = self.compiled(seed, *arrays) if self.uses_rng else self.compiled(*arrays)
        leaves = iter(results)
        flat = [
            self.static_outputs[i] if i in self.static_outputs else next(leaves)
            for i in range(self.n_outputs)
        ]
        return jax.tree_util.tree_unflatten(self.treedef, flat)

    def lowered_text(self) -> str:
        """The program as StableHLO text."""
        return self.lowered.as_text()

    def compiled_text(self) -> str:
        """The optimised HLO XLA produced."""
        return self.compiled.as_text()

    def cost_analysis(self) -> dict[str, float]:
        """XLA's estimate: flops, bytes accessed, and more."""
        cost = self.compiled.cost_analysis()
        return dict(cost[0] if isinstance(cost, list) else cost or {})

    def memory_analysis(self) -> Any:
        """XLA's buffer sizes (arguments, outputs, temporaries) for this program."""
        return self.compiled.memory_analysis()


def fingerprint(segment: Segment) -> str:
    """A key equal for segments that compute the same thing."""
    index = {n: i for i, n in enumerate(segment.inputs)}
    index.update({n: len(index) + i for i, n in enumerate(segment.nodes)})
    digest = hashlib.sha256()

    def encode(value: Any) -> str:
        if isinstance(value, torch.fx.Node):
            return f"%{index[value]}"
        if isinstance(value, (list, tuple)):
            return "[" + ",".join(encode(v) for v in value) + "]"
        if isinstance(value, dict):
            return "{" + ",".join(f"{k}:{encode(v)}" for k, v in sorted(value.items())) + "}"
        return repr(value)

    for node in segment.nodes:
        meta = node.meta.get("val")
        dtype = getattr(meta, "dtype", None)
        digest.update(
            f"{node.op}|{node.target}|{encode(node.args)}|{encode(node.kwargs)}|{dtype}\n".encode()
        )
        if node.op == "get_attr":
            digest.update(_constant_digest(node))
    digest.update(("out:" + encode(segment.outputs)).encode())
    digest.update(torch.get_float32_matmul_precision().encode())
    return digest.hexdigest()


def _constant_digest(node: torch.fx.Node) -> bytes:
    value = node.graph.owning_module
    for part in str(node.target).split("."):
        value = getattr(value, part)
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous()
        raw = data.reshape(-1).view(torch.uint8)
        return hashlib.sha256(raw.numpy().tobytes()).digest() + str(data.dtype).encode()
    return repr(value).encode()


def build_program(
    segment: Segment, treedef: Any, leaves: Sequence[Any], donate: Sequence[int] = ()
) -> Program:
    """Trace ``segment`` with JAX for these inputs, lower it and compile it.

    The segment's inputs are ``treedef`` unflattened over ``leaves``: a device
    array (or ``jax.ShapeDtypeStruct``) for each array and the Python value
    itself for each static leaf (sizes of dynamic shapes, ``None``).
    ``donate`` lists leaf positions whose buffers XLA may reuse for outputs.
    """
    uses_rng = needs_rng(segment.nodes)
    array_pos = [i for i, v in enumerate(leaves) if _is_array_like(v)]
    static = {i: v for i, v in enumerate(leaves) if not _is_array_like(v)}
    static_outputs: dict[int, Any] = {}
    out_treedefs: list[Any] = []

    def program(*args: Any) -> list[Any]:
        seed, arrays = (args[0], args[1:]) if uses_rng else (None, args)
        it = iter(arrays)
        flat_in = [static[i] if i in static else next(it) for i in range(len(leaves))]
        env = dict(zip(segment.inputs, jax.tree_util.tree_unflatten(treedef, flat_in), strict=True))
        key = jax.random.key(seed) if uses_rng else None
        run_nodes(segment.nodes, env, RngStream(key))
        flat, out_treedef = jax.tree_util.tree_flatten([env[n] for n in segment.outputs])
        out_treedefs.append(out_treedef)
        static_outputs.clear()
        traced = []
        for i, leaf in enumerate(flat):
            if isinstance(leaf, jax.Array):
                traced.append(leaf)
            else:
                static_outputs[i] = leaf
        return traced

    specs = [jax.ShapeDtypeStruct(leaves[i].shape, leaves[i].dtype) for i in array_pos]
    if uses_rng:
        specs.insert(0, jax.ShapeDtypeStruct((), jnp.uint32))
    offset = 1 if uses_rng else 0
    donate_argnums = tuple(array_pos.index(i) + offset for i in donate if i in array_pos)
    start = time.perf_counter()
    lowered = jax.jit(program, donate_argnums=donate_argnums).lower(*specs)
    traced_at = time.perf_counter()
    compiled = lowered.compile(compiler_options=_compiler_options())
    done = time.perf_counter()
    bump("trace_seconds", traced_at - start)
    bump("compile_seconds", done - traced_at)
    bump("compiles")
    out_treedef = out_treedefs[-1]
    return Program(
        lowered,
        compiled,
        dict(static_outputs),
        out_treedef,
        out_treedef.num_leaves,
        uses_rng,
        done - start,
    )


def _compiler_options() -> dict[str, Any]:
    if platform_name() == "cpu":
        return {
            "xla_backend_optimization_level": options().cpu_opt_level,
            # Without region analysis XLA:CPU cannot prove that a donated weight's
            # last read (dX = dY @ W^T) precedes its in-place update, and copies
            # every parameter at the start of a training step (GPU XLA uses it).
            "xla_cpu_copy_insertion_use_region_analysis": True,
        }
    return {}


def _is_array_like(value: Any) -> bool:
    return isinstance(value, (jax.Array, jax.ShapeDtypeStruct))
