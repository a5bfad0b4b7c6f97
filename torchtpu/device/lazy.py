"""The recorded graph of device mode: ops are recorded, then fused into cached XLA programs.

Every value a ``tpu`` tensor holds is a :class:`Value`: a concrete ``jax.Array``
or a pending slot in the current :class:`Graph`. Recording an op costs one
dictionary lookup when its *signature* (op, input shapes and dtypes, static
arguments) was seen before: the :class:`Recipe` for that signature already
knows the output shapes and dtypes and which lowering computes them.

At a sync point (a value is needed on the host, ``torchtpu.sync()``, the end
of ``optimizer.step()``, or the graph grew past ``max_graph_ops``) the pending
nodes whose results are still referenced become one JAX function. Its
fingerprint is the sequence of (recipe, input slots) pairs plus the live
outputs, so a training loop that records the same ops each step reuses one
compiled program. Python floats in ``Scalar`` positions (a learning rate, a
bias correction) are program inputs, not constants, and never force a
recompile.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
import weakref
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from torchtpu.config import options
from torchtpu.lower.dtypes import to_jax_dtype
from torchtpu.lower.interpreter import RngStream, apply
from torchtpu.metrics import _COUNTERS, bump
from torchtpu.runtime import default_device, jax_scope


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
    """How to compute one op signature with JAX: the lowering, its template, its outputs.

    ``template`` holds the op's arguments with every tensor replaced by
    ``TENSOR`` and every dynamic scalar by ``SCALAR``; ``outputs`` is the flat
    list of (shape, dtype) of the op's tensor results, ``structure`` rebuilds
    the op's return value from them.
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
    ) -> None:
        self.uid = next(Recipe._uids)
        self.op = op
        self.lowering = lowering
        self.template = template
        self.n_tensors = n_tensors
        self.outputs = outputs
        self.structure = structure
        self.out_jax_dtypes = [to_jax_dtype(d) for _, d in outputs]
        self.specs: list[jax.ShapeDtypeStruct] = []
        self._compiled: Any = None

    def __repr__(self) -> str:
        return f"Recipe({self.op}, {len(self.outputs)} output(s))"

    def compute(self, ins: Sequence[Any], rng: RngStream) -> list[Any]:
        """The op's flat tensor results on JAX values ``ins`` (tensors, then scalars)."""
        tensors = iter(ins[: self.n_tensors])
        scalars = iter(ins[self.n_tensors :])
        args, kwargs = fill(self.template, tensors, scalars)
        out = flatten_arrays(apply(self.lowering, args, kwargs, rng))
        return [
            o if o.dtype == want else o.astype(want)
            for o, want in zip(out, self.out_jax_dtypes, strict=True)
        ]

    def run_now(self, ins: Sequence[Any]) -> list[jax.Array]:
        """Strict eager mode: run this op alone, asynchronously, as its own program."""
        if self._compiled is None:
            uses_rng = self.lowering.rng

            def one_op(seed: Any, *xs: Any) -> list[Any]:
                key = jax.random.key(seed) if uses_rng else None
                return self.compute(xs, RngStream(key))

            seed_spec = jax.ShapeDtypeStruct((), jnp.uint32)
            self._compiled = jax.jit(one_op).lower(seed_spec, *self.specs).compile()
            bump("compiles")
            bump("fused_compiles")
        seed = _next_seed() if self.lowering.rng else _ZERO_SEED
        return self._compiled(seed, *ins)


_ZERO_SEED = np.uint32(0)


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


def flatten_arrays(value: Any) -> list[Any]:
    """The arrays in an op's result, in order (tuples and lists walked, the rest dropped)."""
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in flatten_arrays(v)]
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return [value]
    return []


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
        self.uses_rng = False

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
            self.input_specs.append(jax.ShapeDtypeStruct(array.shape, array.dtype))
            ref = self._input_ids[id(array)] = -len(self.inputs)
        return ref

    def scalar_ref(self, scalar: Any) -> int:
        self.inputs.append(scalar)
        self.input_specs.append(_scalar_spec(scalar))
        return -len(self.inputs)


def _scalar_spec(scalar: Any) -> jax.ShapeDtypeStruct:
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
_WARNED_LIMIT = False


def current_graph() -> Graph:
    """The graph ops are being recorded into."""
    return _GRAPH


def record(recipe: Recipe, values: Sequence[Value], scalars: Sequence[Any]) -> list[Value]:
    """Record ``recipe`` on ``values`` and dynamic ``scalars``; return its pending results."""
    opts = options()
    if opts.eager or opts.blocking:
        return _run_eagerly(recipe, values, scalars, opts.blocking)
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
    graph.nodes.append((recipe, refs_t, first))
    graph.keys.append((recipe.uid, refs_t))
    if recipe.lowering.rng:
        graph.uses_rng = True
    if len(graph.nodes) >= opts.max_graph_ops:
        sync("graph_size")
    return outs


def _run_eagerly(
    recipe: Recipe, values: Sequence[Value], scalars: Sequence[Any], blocking: bool
) -> list[Value]:
    ins = [v.array for v in values] + list(scalars)
    with jax_scope():
        arrays = recipe.run_now(ins)
        if blocking:
            jax.block_until_ready(arrays)
    bump("eager_ops")
    return [
        Value(shape, dtype, a) for (shape, dtype), a in zip(recipe.outputs, arrays, strict=True)
    ]


def constant(array: jax.Array, dtype: torch.dtype) -> Value:
    """A ready value holding ``array``."""
    return Value(tuple(array.shape), dtype, array)


# --- sync: compile (once per fingerprint) and run ----------------------------------

_PROGRAMS: dict[Any, FusedProgram] = {}


class FusedProgram:
    """A compiled fused graph. ``lowered_text()`` and ``compiled_text()`` show it."""

    def __init__(self, lowered: Any, compiled: Any, n_ops: int, uses_rng: bool, seconds: float):
        self.lowered = lowered
        self.compiled = compiled
        self.n_ops = n_ops
        self.uses_rng = uses_rng
        self.compile_seconds = seconds
        self.runs = 0

    def __repr__(self) -> str:
        return f"FusedProgram({self.n_ops} ops, compiled in {self.compile_seconds:.2f}s)"

    def lowered_text(self) -> str:
        """The program as StableHLO text."""
        return self.lowered.as_text()

    def compiled_text(self) -> str:
        """The optimised HLO XLA produced."""
        return self.compiled.as_text()


def sync(reason: str = "explicit") -> None:
    """Compile (or reuse) and run the pending graph; its live results become concrete."""
    global _GRAPH
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
    key = (tuple(graph.keys), tuple(slots), graph.uses_rng)
    with jax_scope():
        program = _PROGRAMS.get(key)
        if program is None:
            program = _compile(graph, slots, reason)
            _PROGRAMS[key] = program
        else:
            bump("fused_cache_hits")
        args = list(graph.inputs)
        if program.uses_rng:
            args.insert(0, _next_seed())
        arrays = program.compiled(*args)
    program.runs += 1
    bump("fused_runs")
    bump("fused_ops", len(graph.nodes))
    counters = _COUNTERS
    counters["fused_max_ops"] = max(counters["fused_max_ops"], len(graph.nodes))
    for v, a in zip(live, arrays, strict=True):
        v.array = a
        v.graph = None


def _compile(graph: Graph, out_slots: list[int], reason: str) -> FusedProgram:
    nodes = list(graph.nodes)
    n_inputs = len(graph.inputs)
    uses_rng = graph.uses_rng

    def fused(*args: Any) -> list[Any]:
        if uses_rng:
            rng = RngStream(jax.random.key(args[0]))
            args = args[1:]
        else:
            rng = RngStream(None)
        env: dict[int, Any] = {}
        for recipe, refs, first in nodes:
            ins = [args[-r - 1] if r < 0 else env[r] for r in refs]
            for i, out in enumerate(recipe.compute(ins, rng)):
                env[first + i] = out
        return [env[s] for s in out_slots]

    specs = list(graph.input_specs)
    assert len(specs) == n_inputs
    if uses_rng:
        specs.insert(0, jax.ShapeDtypeStruct((), jnp.uint32))
    start = time.perf_counter()
    lowered = jax.jit(fused).lower(*specs)
    traced = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    bump("trace_seconds", traced - start)
    bump("compile_seconds", done - traced)
    bump("compiles")
    bump("fused_compiles")
    if options().debug:
        site = user_site()
        _count("compile_sites", f"{site} ({reason}, {len(nodes)} ops)")
        _COMPILE_LOG.append(
            f"device mode: {len(nodes)} ops fused in {done - start:.2f}s, "
            f"sync by {reason} at {site}"
        )
    return FusedProgram(lowered, compiled, len(nodes), uses_rng, done - start)


_COMPILE_LOG: list[str] = []


def _count(name: str, key: str) -> None:
    _COUNTERS[name][key] += 1


def compile_log() -> list[str]:
    """With ``TORCHTPU_DEBUG=1``: one line per fused compile and the Python line that caused it."""
    return list(_COMPILE_LOG)


def programs() -> list[FusedProgram]:
    """Every fused program compiled in this process."""
    return list(_PROGRAMS.values())


def clear_programs() -> None:
    """Forget the compiled fused programs (the disk cache stays)."""
    _PROGRAMS.clear()


def _next_seed() -> Any:
    # Drawn from PyTorch's default generator, so torch.manual_seed decides it.
    seed = int(torch.randint(0, 2**32 - 1, (), dtype=torch.int64))
    return jax.device_put(np.uint32(seed), default_device())


_OUR_DIRS = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    os.path.dirname(os.path.abspath(torch.__file__)),
    os.path.dirname(os.path.abspath(os.__file__)),
)


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the user's line."""
    frame, level = sys._getframe(1), 1
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(_OUR_DIRS) and not filename.startswith("<"):
            return level
        frame, level = frame.f_back, level + 1
    return 1


def user_site() -> str:
    """``file:line`` of the innermost caller outside torch, torchtpu and the stdlib."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(_OUR_DIRS) and not filename.startswith("<"):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


def wait() -> None:
    """Run the pending graph and block until every result of the last program is ready."""
    graph = _GRAPH
    pending = [r() for r in graph.values]
    sync("explicit")
    ready = [v.array for v in pending if v is not None and v.array is not None]
    jax.block_until_ready(ready)
