"""The recorded graph of device mode: ops are recorded, then run as cached XLA programs.

Every value a tpu tensor holds is a :class:`Value`: a concrete ``jax.Array``
or a pending slot in the current :class:`Graph`. Recording an op costs one
dictionary lookup when its *signature* (op, input shapes and dtypes, static
arguments) was seen before: the :class:`Recipe` for that signature already
knows the output shapes and dtypes and which lowering computes them.

At a sync point (a value is needed on the host, ``torchtpu.sync()``, the end
of ``optimizer.step()``, or the graph grew past ``max_graph_ops``) the pending
nodes whose results are still referenced become an ATen FX graph, which goes
through the same compile path as every other front end
(``torchtpu.compile.program.build_program``: the lowering registry, the
compiler options, the one program cache). Its key is the sequence of (recipe,
input slots) pairs plus the live outputs, so a training loop that records the
same ops each step reuses one compiled program. Python floats in ``Scalar``
positions (a learning rate, a bias correction) are program inputs, not
constants, and never force a recompile.

An input buffer that nothing but the pending graph still refers to (a weight
the optimizer step has just overwritten, say) is donated to the program, so
XLA updates it in place instead of allocating a second copy.
"""

from __future__ import annotations

import collections
import itertools
import operator
import sys
import weakref
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.fx

from torchtpu.compile.partition import Segment
from torchtpu.compile.program import CACHE, Program, build_program
from torchtpu.config import options
from torchtpu.errors import user_site
from torchtpu.lower import checks
from torchtpu.lower.checks import CHECKED_OPS
from torchtpu.lower.dtypes import to_jax_dtype
from torchtpu.lower.interpreter import RngStream, apply
from torchtpu.metrics import _COUNTERS, bump
from torchtpu.runtime import draw_seed, jax_scope, tpu_generator
from torchtpu.runtime.placement import sharding_key


class Value:
    """One device value: ``array`` when computed, else slot ``slot`` of ``graph``."""

    __slots__ = ("shape", "dtype", "array", "graph", "slot", "__weakref__")

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        array: jax.Array | None = None,
        graph: Graph | None = None,
        slot: int = -1,
    ) -> None:
        self.shape = shape
        self.dtype = dtype
        self.array = array
        self.graph = graph
        self.slot = slot

    def __repr__(self) -> str:
        state = "ready" if self.array is not None else f"pending %{self.slot}"
        return f"Value({list(self.shape)}, {self.dtype}, {state})"


class Recipe:
    """How to compute one op signature: the op, its lowering, its template, its outputs.

    ``template`` holds the op's arguments with every tensor replaced by
    ``TENSOR`` and every dynamic scalar by ``SCALAR``; ``outputs`` is the flat
    list of (shape, dtype) of the op's tensor results, ``structure`` rebuilds
    the op's return value from them, ``meta_out`` is that return value as meta
    tensors (the node's recorded value in the FX graph).
    """

    _uids = itertools.count()

    def __init__(
        self,
        op: Any,
        lowering: Any,
        template: tuple[tuple, dict],
        n_tensors: int,
        outputs: list[tuple[tuple[int, ...], torch.dtype]],
        structure: Any,
        meta_out: Any,
    ) -> None:
        self.uid = next(Recipe._uids)
        self.op = op
        self.lowering = lowering
        self.template = template
        self.n_tensors = n_tensors
        self.outputs = outputs
        self.structure = structure
        self.meta_out = meta_out
        self.paths = _paths(meta_out)
        self.specs: list[jax.ShapeDtypeStruct] = []
        schema = getattr(op, "_schema", None)
        self.checked = schema is not None and schema.name.split("::")[-1] in CHECKED_OPS

    def __repr__(self) -> str:
        return f"Recipe({self.op}, {len(self.outputs)} output(s))"

    def check(self) -> None:
        """Trace the lowering on this signature's shapes (no compile): a lowering that
        refuses them raises here, and the op takes another road."""
        with jax_scope():
            shapes = jax.eval_shape(
                lambda *xs: self.compute(xs, RngStream(jnp.uint32(0))), *self.specs
            )
        got = [tuple(s.shape) for s in shapes]
        if got != [shape for shape, _ in self.outputs]:
            raise ValueError(f"the lowering gives shapes {got}, PyTorch {self.outputs}")

    def compute(self, ins: Sequence[Any], rng: RngStream) -> list[Any]:
        """The op's flat tensor results on JAX values ``ins`` (tensors, then scalars)."""
        tensors = iter(ins[: self.n_tensors])
        scalars = iter(ins[self.n_tensors :])
        args, kwargs = fill(self.template, tensors, scalars)
        out = apply(self.lowering, args, kwargs, rng)
        flat = [_follow(out, path) for path in self.paths]
        return [
            o if o.dtype == to_jax_dtype(d) else o.astype(to_jax_dtype(d))
            for o, (_, d) in zip(flat, self.outputs, strict=True)
        ]


def _paths(meta: Any, prefix: tuple = ()) -> list[tuple]:
    """Where each tensor sits in an op's result: index paths into nested tuples."""
    if isinstance(meta, torch.Tensor):
        return [prefix]
    if isinstance(meta, (list, tuple)):
        return [p for i, m in enumerate(meta) for p in _paths(m, (*prefix, i))]
    return []


def _follow(value: Any, path: tuple) -> Any:
    for index in path:
        value = value[index]
    return value


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


TENSOR = _Marker("TENSOR")
SCALAR = _Marker("SCALAR")


def fill(template: Any, tensors: Any, scalars: Any) -> Any:
    """``template`` with each ``TENSOR`` and ``SCALAR`` taken in order from the iterators."""
    if template is TENSOR:
        return next(tensors)
    if template is SCALAR:
        return next(scalars)
    if type(template) is tuple:
        return tuple(fill(t, tensors, scalars) for t in template)
    if type(template) is list:
        return [fill(t, tensors, scalars) for t in template]
    if type(template) is dict:
        return {k: fill(v, tensors, scalars) for k, v in template.items()}
    return template


# --- the graph being recorded -------------------------------------------------------


class Graph:
    """The ops recorded since the last sync.

    Nodes refer to their inputs by slot: ``-(i + 1)`` is input ``i`` (a
    concrete array or a dynamic scalar), ``s >= 0`` is output slot ``s`` of an
    earlier node. Graphs never hold pending :class:`Value` objects, only weak
    references, so a result nobody keeps is dropped from the program.
    """

    def __init__(self) -> None:
        self.inputs: list[Any] = []
        self.input_specs: list[Any] = []
        self._input_ids: dict[int, int] = {}
        self.nodes: list[tuple[Recipe, tuple[int, ...], int]] = []
        self.keys: list[tuple[int, tuple[int, ...]]] = []
        self.values: list[weakref.ref] = []
        self.seeds: list[int] = []  # one per random op, drawn when it was recorded
        self.sites: dict[int, str] = {}  # node -> user's line, for indexing ops' checks
        # Input positions of arrays on a mesh (a sharded step's state), with their
        # shardings: the program is compiled for them, and they are part of its key.
        self.placed: list[tuple[int, Any]] = []

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        lines = [f"Graph({len(self.inputs)} inputs, {len(self.nodes)} ops)"]
        for recipe, refs, first in self.nodes:
            outs = ", ".join(f"%{first + i}" for i in range(len(recipe.outputs)))
            ins = ", ".join(f"in{-r - 1}" if r < 0 else f"%{r}" for r in refs)
            lines.append(f"  {outs} = {recipe.op}({ins})")
        return "\n".join(lines)

    def array_ref(self, array: jax.Array) -> int:
        ref = self._input_ids.get(id(array))
        if ref is None:
            self.inputs.append(array)
            self.input_specs.append(self._array_spec(array))
            ref = self._input_ids[id(array)] = -len(self.inputs)
        return ref

    def _array_spec(self, array: jax.Array) -> jax.ShapeDtypeStruct:
        sharding = sharding_key(array)
        if sharding is None:
            return jax.ShapeDtypeStruct(array.shape, array.dtype)
        self.placed.append((len(self.inputs) - 1, sharding))
        return jax.ShapeDtypeStruct(array.shape, array.dtype, sharding=sharding)

    def add_input(self, value: Any) -> int:
        """A new input slot for ``value`` (an array or a scalar), never shared."""
        self.inputs.append(value)
        spec = self._array_spec(value) if isinstance(value, jax.Array) else scalar_spec(value)
        self.input_specs.append(spec)
        return -len(self.inputs)

    def scalar_ref(self, scalar: Any) -> int:
        self.inputs.append(scalar)
        self.input_specs.append(scalar_spec(scalar))
        return -len(self.inputs)

    def to_fx(self, out_slots: Sequence[int]) -> tuple[torch.fx.GraphModule, Segment]:
        """The recorded ops as an ATen FX graph, and the one segment covering it."""
        graph = torch.fx.Graph()
        placeholders = []
        for i, spec in enumerate(self.input_specs):
            node = graph.placeholder(f"in{i}")
            node.meta["val"] = _spec_meta(spec, self.inputs[i])
            placeholders.append(node)
        slots: dict[int, torch.fx.Node] = {}
        body: list[torch.fx.Node] = []
        for k, (recipe, refs, first) in enumerate(self.nodes):
            ins = [placeholders[-r - 1] if r < 0 else slots[r] for r in refs]
            args, kwargs = fill(
                recipe.template, iter(ins[: recipe.n_tensors]), iter(ins[recipe.n_tensors :])
            )
            node = graph.call_function(recipe.op, tuple(args), kwargs)
            node.meta["val"] = recipe.meta_out
            if k in self.sites:
                node.meta["torchtpu_site"] = self.sites[k]
            body.append(node)
            for i, path in enumerate(recipe.paths):
                item, meta = node, recipe.meta_out
                for index in path:
                    meta = meta[index]
                    item = graph.call_function(operator.getitem, (item, index))
                    item.meta["val"] = meta
                    body.append(item)
                slots[first + i] = item
        outputs = [slots[s] for s in out_slots]
        graph.output(outputs)
        gm = torch.fx.GraphModule(torch.nn.Module(), graph)
        return gm, Segment(body, placeholders, outputs, eager=False)


def _spec_meta(spec: jax.ShapeDtypeStruct, value: Any) -> Any:
    if isinstance(value, jax.Array):
        from torchtpu.lower.dtypes import to_torch_dtype

        return torch.empty(spec.shape, dtype=to_torch_dtype(spec.dtype), device="meta")
    return value


def scalar_spec(scalar: Any) -> jax.ShapeDtypeStruct:
    # Weakly typed, as JAX types Python numbers: a float32 tensor times a
    # learning rate stays float32.
    if isinstance(scalar, bool):
        return _SPECS[bool]
    if isinstance(scalar, int):
        return _SPECS[int]
    return _SPECS[float]


_SPECS = {
    bool: jax.ShapeDtypeStruct((), jnp.bool_),
    int: jax.ShapeDtypeStruct((), jnp.int64, weak_type=True),
    float: jax.ShapeDtypeStruct((), jnp.float64, weak_type=True),
}


_GRAPH = Graph()
_STEP_ENDED = False


def end_of_step() -> None:
    """``optimizer.step()`` finished: the step's graph runs before the next op is
    recorded (or at the next sync), not now. In between, ``zero_grad()`` drops the
    gradients, so the program need not write them out."""
    global _STEP_ENDED
    if _GRAPH.nodes:
        _STEP_ENDED = True


def current_graph() -> Graph:
    """The graph ops are being recorded into."""
    return _GRAPH


def record(
    recipe: Recipe,
    values: Sequence[Value],
    scalars: Sequence[Any],
    generator: torch.Generator | None = None,
) -> list[Value]:
    """Record ``recipe`` on ``values`` and dynamic ``scalars``; return its pending results.

    A random op draws its seed now, from ``generator`` or the tpu device's, as
    eager PyTorch draws from its generator at each call: a restored generator
    state (``fork_rng``, activation checkpointing) replays the same numbers."""
    if _STEP_ENDED:
        sync("optimizer_step")
    opts = options()
    seed = draw_seed(generator or tpu_generator()) if recipe.lowering.rng else None
    if opts.eager or opts.blocking:
        return _run_eagerly(recipe, values, scalars, seed, opts.blocking)
    graph = _GRAPH
    refs = []
    for v in values:
        if v.array is not None:
            refs.append(graph.array_ref(v.array))
        else:
            refs.append(v.slot)
    for s in scalars:
        refs.append(graph.scalar_ref(s))
    refs_t = tuple(refs)
    first = len(graph.values)
    outs = []
    for shape, dtype in recipe.outputs:
        out = Value(shape, dtype, None, graph, len(graph.values))
        graph.values.append(weakref.ref(out))
        outs.append(out)
    if opts.check_bounds and recipe.checked:
        graph.sites[len(graph.nodes)] = user_site()
    graph.nodes.append((recipe, refs_t, first))
    graph.keys.append((recipe.uid, refs_t))
    if seed is not None:
        graph.seeds.append(seed)
    if len(graph.nodes) >= opts.max_graph_ops:
        sync("graph_size")
    return outs


def _run_eagerly(
    recipe: Recipe,
    values: Sequence[Value],
    scalars: Sequence[Any],
    seed: int | None,
    blocking: bool,
) -> list[Value]:
    """Strict eager mode: run this op alone, asynchronously, as its own program."""
    for v in values:
        if v.array is None:  # recorded before the mode changed
            sync("explicit")
    ins = [v.array for v in values] + list(scalars)
    with jax_scope():
        key = ("op", recipe.uid, options().check_bounds)
        program = CACHE.get(key)
        if program is None:
            graph = Graph()
            refs = tuple(graph.add_input(x) for x in ins)
            graph.nodes.append((recipe, refs, 0))
            if seed is not None:
                graph.seeds.append(seed)
            program = _build(graph, list(range(len(recipe.outputs))), (), "eager op")
            CACHE.put(key, program)
        seeds = np.asarray([seed], np.uint32) if seed is not None else None
        arrays = program(ins, seeds)
        if blocking:
            jax.block_until_ready(arrays)
            checks.raise_pending()  # at the op's own line
    bump("eager_ops")
    return [
        Value(shape, dtype, a) for (shape, dtype), a in zip(recipe.outputs, arrays, strict=True)
    ]


def constant(array: jax.Array, dtype: torch.dtype) -> Value:
    """A ready value holding ``array``."""
    return Value(tuple(array.shape), dtype, array)


# --- sync: compile (once per key) and run ----------------------------------------------


def sync(reason: str = "explicit") -> None:
    """Compile (or reuse) and run the pending graph; its live results become concrete."""
    global _GRAPH, _STEP_ENDED
    if _STEP_ENDED:
        _STEP_ENDED = False
        reason = "optimizer_step"
    graph = _GRAPH
    if not graph.nodes:
        return
    _GRAPH = Graph()
    live: list[Value] = []
    slots: list[int] = []
    for slot, ref in enumerate(graph.values):
        v = ref()
        if v is not None and v.graph is graph:
            live.append(v)
            slots.append(slot)
    _count("syncs", reason)
    if not live:
        return
    donate = _donatable(graph.inputs, live)
    key = ("fused", tuple(graph.keys), tuple(slots), donate, options().check_bounds)
    if graph.placed:
        key += (tuple(graph.placed),)
    with jax_scope():
        program = CACHE.get(key)
        if program is None:
            program = _build(graph, slots, donate, reason)
            CACHE.put(key, program)
            bump("fused_compiles")
        else:
            bump("fused_cache_hits")
        seeds = np.asarray(graph.seeds, np.uint32) if graph.seeds else None
        inputs = graph.inputs
        graph.inputs = []  # so the donated buffers die with the call
        graph._input_ids.clear()
        arrays = program(inputs, seeds)
        del inputs
    bump("fused_runs")
    bump("fused_ops", len(graph.nodes))
    counters = _COUNTERS
    counters["fused_max_ops"] = max(counters["fused_max_ops"], len(graph.nodes))
    for v, a in zip(live, arrays, strict=True):
        v.array = a
        v.graph = None


def _donatable(inputs: list[Any], outputs: list[Value]) -> tuple[int, ...]:
    """Input buffers nothing but the graph refers to, each matching an output's shape
    and dtype: the old value of a tensor the recorded ops overwrote (a weight after
    ``optimizer.step()``). Donating them lets XLA write the new value in place."""
    wanted = collections.Counter((v.shape, np.dtype(to_jax_dtype(v.dtype))) for v in outputs)
    donate = []
    for i in range(len(inputs)):
        value = inputs[i]
        if not isinstance(value, jax.Array):
            continue
        kind = (tuple(value.shape), value.dtype)
        # References: the list, this variable, getrefcount's argument.
        if wanted[kind] > 0 and sys.getrefcount(value) <= 3:
            wanted[kind] -= 1
            donate.append(i)
    return tuple(donate)


def _build(graph: Graph, out_slots: Sequence[int], donate: Sequence[int], reason: str) -> Program:
    _, segment = graph.to_fx(out_slots)
    site = user_site()
    if options().debug:
        _count("compile_sites", f"{site} ({reason}, {len(graph.nodes)} ops)")
    return build_program(
        segment,
        jax.tree_util.tree_structure(list(graph.input_specs)),
        list(graph.input_specs),
        donate,
        name="device mode",
        origin=site,
        seed_shape=(len(graph.seeds),),
    )


def _count(name: str, key: str) -> None:
    _COUNTERS[name][key] += 1


def wait() -> None:
    """Run the pending graph and block until every result of the last program is ready."""
    graph = _GRAPH
    pending = [r() for r in graph.values]
    sync("explicit")
    ready = [v.array for v in pending if v is not None and v.array is not None]
    jax.block_until_ready(ready)
