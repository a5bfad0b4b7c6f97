"""One XLA program: a segment of an ATen graph traced with JAX, lowered to StableHLO
and compiled. Every front end (the ``tpu`` backend, ``compile_step``, device mode,
the sized ops) builds its programs here, with one set of compiler options, one
in-memory cache and one compile log.

A :class:`Program` keeps each stage as a value: ``lowered_text()`` is the
StableHLO, ``compiled_text()`` the optimised HLO, ``cost_analysis()`` and
``memory_analysis()`` what XLA reports. On disk, JAX's persistent compilation
cache (see ``torchtpu.runtime.device``) lets a second process start warm.

A compile error or a run-time error from XLA becomes a
:class:`~torchtpu.errors.CompileError` or :class:`~torchtpu.errors.DeviceError`
naming the program, the user's line that built it, its input shapes, and the
section of ``docs/errors.md`` that explains it.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import torch
import torch.fx

from torchtpu.compile import lowered_cache
from torchtpu.compile.partition import Segment
from torchtpu.config import options
from torchtpu.errors import (
    CompileError,
    DeviceError,
    LoweringUnsupported,
    OutOfMemoryError,
    describe_value,
)
from torchtpu.lower import checks as index_checks
from torchtpu.lower.checks import Check
from torchtpu.lower.dtypes import to_numpy
from torchtpu.lower.interpreter import RngStream, map_args, needs_rng, run_nodes
from torchtpu.metrics import bump
from torchtpu.runtime import default_device, platform_name
from torchtpu.runtime.placement import sharding_key

log = logging.getLogger("torchtpu")


class Program:
    """A compiled XLA program. Call it with the device arrays of its array inputs
    (and a seed, if it uses random numbers)."""

    def __init__(
        self,
        name: str,
        origin: str,
        lowered: Any,
        compiled: Any,
        in_avals: Sequence[Any],
        static_outputs: dict[int, Any],
        treedef: Any,
        n_outputs: int,
        uses_rng: bool,
        n_ops: int,
        seconds: float,
        checks: list[Check] | None = None,
        replay: Callable[[Sequence[Any], Any], None] | None = None,
        blocks: Any = None,
    ) -> None:
        self.name = name
        self.origin = origin
        self.lowered = lowered
        self.compiled = compiled
        # A program over the process mesh (``ProcessBlocks``): called with this
        # process's arrays, which it converts to and from global ones.
        self.blocks = blocks
        self.in_avals = list(in_avals)
        self.static_outputs = static_outputs
        self.treedef = treedef
        self.n_outputs = n_outputs
        self.uses_rng = uses_rng
        self.n_ops = n_ops
        self.compile_seconds = seconds
        self.runs = 0
        # Bounds checks compiled in: the program's last output holds their flags.
        self.checks = checks or []
        # Runs the program's ops one at a time and names the first to make a NaN or
        # Inf (TORCHTPU_DEBUG_NANS); None for programs not built from FX nodes.
        self.replay = replay

    def __call__(self, arrays: Sequence[Any], seed: Any = None) -> Any:
        args = [seed, *arrays] if self.uses_rng else list(arrays)
        if self.blocks is not None:
            args = self.blocks.enter(args)
        try:
            results = self.compiled(*args)
        except jax.errors.JaxRuntimeError as exc:
            raise _device_error(self, exc) from exc
        if self.blocks is not None:
            results = self.blocks.leave(results)
        self.runs += 1
        if self.checks:
            *results, flags = results
            index_checks.pending(flags, self.checks)
        if self.replay is not None and options().debug_nans and _non_finite(results):
            self.replay(arrays, seed)
        if self.treedef is None:
            return results
        if not self.static_outputs:
            return jax.tree_util.tree_unflatten(self.treedef, results)
        leaves = iter(results)
        flat = [
            self.static_outputs[i] if i in self.static_outputs else next(leaves)
            for i in range(self.n_outputs)
        ]
        return jax.tree_util.tree_unflatten(self.treedef, flat)

    def __repr__(self) -> str:
        cost = self.cost_analysis()
        flops = cost.get("flops", 0.0)
        memory = self.memory_analysis()
        temps = getattr(memory, "temp_size_in_bytes", 0) or 0
        return (
            f"Program({self.name}: {self.n_ops} ops, {len(self.in_avals)} inputs -> "
            f"{self.n_outputs} outputs, {_si(flops)}FLOP, {_si(temps)}B of temporaries, "
            f"compiled in {self.compile_seconds:.2f}s, built at {self.origin})"
        )

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

    def input_shapes(self) -> str:
        return ", ".join(_aval_text(a) for a in self.in_avals[:8]) + (
            ", ..." if len(self.in_avals) > 8 else ""
        )


def _si(value: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} "


def _aval_text(aval: Any) -> str:
    return f"{aval.dtype}{list(aval.shape)}"


# --- the cache ----------------------------------------------------------------------


class ProgramCache:
    """Every compiled program of this process, keyed by what makes it unique.

    Keys are tuples whose first element names the kind of program (``"segment"``,
    ``"fused"``, ``"op"``, ``"sized"``). ``generation`` changes on :meth:`clear`,
    so holders of direct references (executors, recipes) know to look again.
    """

    def __init__(self) -> None:
        self._programs: dict[Hashable, Program] = {}
        self.generation = 0

    def __len__(self) -> int:
        return len(self._programs)

    def get(self, key: Hashable) -> Program | None:
        return self._programs.get(key)

    def put(self, key: Hashable, program: Program) -> Program:
        self._programs[key] = program
        return program

    def programs(self) -> list[Program]:
        return list(self._programs.values())

    def clear(self) -> None:
        self._programs.clear()
        self.generation += 1


CACHE = ProgramCache()


def clear_program_cache() -> None:
    """Forget every compiled program held in memory, for every front end: the
    ``tpu`` backend, ``compile_step``, device mode (fused and per-op programs) and
    the data-dependent-size programs. The disk cache stays; a program needed
    again is rebuilt (and found there).

    Example::

        import torchtpu
        torchtpu.clear_program_cache()
    """
    CACHE.clear()


def programs() -> list[Program]:
    """Every program compiled (and still cached) in this process, in compile order."""
    return CACHE.programs()


# --- building -------------------------------------------------------------------------


class Lowered:
    """A program traced and lowered to StableHLO, not yet compiled: the stage
    ``torchtpu.stages`` can stop at. :meth:`compile` makes the :class:`Program`."""

    def __init__(
        self,
        name: str,
        origin: str,
        lowered: Any,
        specs: Sequence[Any],
        uses_rng: bool,
        n_ops: int,
        out_info: Callable[[], tuple[Any, dict[int, Any]]] | None,
        trace_seconds: float,
        checks: Callable[[], list[Check]] | None = None,
        replay: Callable[[Sequence[Any], Any], None] | None = None,
        blocks: Any = None,
    ) -> None:
        self.name = name
        self.origin = origin
        self.lowered = lowered
        self.blocks = blocks
        self.specs = list(specs)
        self.uses_rng = uses_rng
        self.n_ops = n_ops
        self.out_info = out_info
        self.trace_seconds = trace_seconds
        self.checks = checks
        self.replay = replay

    def __repr__(self) -> str:
        return f"Lowered({self.name}: {self.n_ops} ops, built at {self.origin})"

    def as_text(self) -> str:
        """The program as StableHLO text."""
        return self.lowered.as_text()

    def compile(self) -> Program:
        """Compile with torchtpu's compiler options."""
        start = time.perf_counter()
        try:
            compiled = self.lowered.compile(compiler_options=compiler_options())
        except Exception as exc:  # XLA reports compile failures with several exception types
            raise _compile_error(self.name, self.origin, self.specs, exc) from exc
        seconds = time.perf_counter() - start
        bump("compile_seconds", seconds)
        bump("compiles")
        if self.out_info is not None:
            treedef, static_outputs = self.out_info()
            n_outputs = treedef.num_leaves
        else:
            # fn's own result structure: the compiled program returns it as it is.
            treedef, static_outputs = None, {}
            n_outputs = compiled.out_tree.num_leaves
        program = Program(
            self.name,
            self.origin,
            self.lowered,
            compiled,
            self.specs,
            static_outputs,
            treedef,
            n_outputs,
            self.uses_rng,
            self.n_ops,
            self.trace_seconds + seconds,
            self.checks() if self.checks is not None else None,
            self.replay,
            self.blocks,
        )
        _log_compile(program)
        return program


def lower_function(
    fn: Callable[..., Any],
    specs: Sequence[jax.ShapeDtypeStruct],
    *,
    name: str,
    origin: str,
    uses_rng: bool = False,
    seed_shape: tuple[int, ...] = (),
    donate: Sequence[int] = (),
    n_ops: int = 0,
    out_info: Callable[[], tuple[Any, dict[int, Any]]] | None = None,
    checks: Callable[[], list[Check]] | None = None,
    replay: Callable[[Sequence[Any], Any], None] | None = None,
    blocks: Any = None,
    cache_key: str | None = None,
) -> Lowered:
    """Trace ``fn`` (a function of JAX arrays) for ``specs`` and lower it to StableHLO.

    ``uses_rng``: ``fn``'s first argument is a uint32 seed of ``seed_shape`` (not
    in ``specs``): a scalar, or one seed per random op (device mode).
    ``donate``: positions in ``specs`` whose buffers XLA may reuse for outputs.
    ``out_info``: called after tracing, gives the output treedef and the outputs
    that are Python values rather than arrays; by default the compiled program
    returns ``fn``'s result structure.
    ``checks``: called after tracing, gives the bounds checks whose flags ``fn``
    returns as its last output (see ``torchtpu.lower.checks``).
    ``replay``: ``replay(arrays, seed)`` reruns the program op by op to name the
    first op that makes a NaN or Inf (``TORCHTPU_DEBUG_NANS``).
    ``blocks``: a :class:`~torchtpu.lower.ops.collective.ProcessBlocks`: ``fn``, a
    function of this process's values returning a list, is traced as the body of a
    ``shard_map`` over the process mesh (a program with collectives between processes).
    ``cache_key``: made through ``jax.export`` and cached on disk under this key
    (:mod:`~torchtpu.compile.lowered_cache`): a later process loads it instead of tracing.
    For a one-device program with ``out_info`` and ``checks``, as :func:`lower_segment`
    gives it.
    """
    all_specs = list(specs)
    if uses_rng:
        all_specs.insert(0, jax.ShapeDtypeStruct(seed_shape, jnp.uint32))
    if blocks is not None:
        fn, all_specs = blocks.wrap(fn, all_specs)
    offset = 1 if uses_rng else 0
    donate_argnums = tuple(i + offset for i in donate)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # Donation is an offer: XLA reuses the buffers it can and says so for the rest.
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        lowered = None
        if cache_key is not None:
            lowered, out_info, checks = _lower_cached(
                fn, all_specs, donate_argnums, cache_key, out_info, checks
            )
        if lowered is None:
            lowered = jax.jit(fn, donate_argnums=donate_argnums).lower(*all_specs)
    seconds = time.perf_counter() - start
    bump("trace_seconds", seconds)
    return Lowered(
        name, origin, lowered, specs, uses_rng, n_ops, out_info, seconds, checks, replay, blocks
    )


def _lower_cached(
    fn: Callable[..., Any],
    specs: list[Any],
    donate_argnums: tuple[int, ...],
    cache_key: str,
    out_info: Callable[[], tuple[Any, dict[int, Any]]],
    checks: Callable[[], list[Check]],
) -> tuple[Any, Any, Any]:
    """Lower ``jax.jit(exported.call)``, the export loaded from the disk cache or made now
    and stored; ``(None, out_info, checks)`` when ``jax.export`` refuses ``fn``. The cold
    and the warm process lower the same module, so XLA's own cache hits on the warm one."""
    entry = lowered_cache.load(cache_key)
    if entry is None:
        try:
            exported = jax.export.export(
                jax.jit(fn, donate_argnums=donate_argnums), platforms=(default_device().platform,)
            )(*specs)
        except Exception as exc:  # noqa: BLE001  (export's checks raise several types)
            log.info("torchtpu: not caching this lowering: jax.export refused it (%s)", exc)
            bump("lowered_cache_skips")
            return None, out_info, checks
        entry = lowered_cache.Entry(exported, *out_info(), checks())
        lowered_cache.store(cache_key, entry)
    lowered = jax.jit(entry.exported.call, donate_argnums=donate_argnums).lower(*specs)
    return lowered, lambda: (entry.out_treedef, dict(entry.static_outputs)), lambda: entry.checks


def compile_function(fn: Callable[..., Any], specs: Sequence[Any], **kwargs: Any) -> Program:
    """:func:`lower_function`, then compile: the one way a program is made."""
    return lower_function(fn, specs, **kwargs).compile()


class SegmentFunction:
    """A segment as a function of JAX arrays, ready to trace: what
    :func:`lower_segment` lowers and :func:`export_segment` exports.

    ``fn(*args)`` (``seed, *arrays`` when ``uses_rng``) runs the segment's nodes
    and returns its array outputs, then the bounds checks' flags if it has any;
    ``out_info()`` and ``checks()`` describe the last trace.
    """

    def __init__(
        self,
        segment: Segment,
        treedef: Any,
        leaves: Sequence[Any],
        out_shardings: dict[torch.fx.Node, Any] | None = None,
    ) -> None:
        self.segment = segment
        # Outputs pinned to a sharding (a sharded step's state keeps its layout).
        self._out_shardings = out_shardings or {}
        self.uses_rng = needs_rng(segment.nodes)
        array_pos = [i for i, v in enumerate(leaves) if _is_array_like(v)]
        self.array_pos = array_pos
        self._static = {i: v for i, v in enumerate(leaves) if not _is_array_like(v)}
        self._treedef = treedef
        self._n_leaves = len(leaves)
        self._static_outputs: dict[int, Any] = {}
        self._out_treedefs: list[Any] = []
        self._checks: list[Check] = []
        self.specs = [
            jax.ShapeDtypeStruct(
                leaves[i].shape,
                leaves[i].dtype,
                weak_type=_weak(leaves[i]),
                sharding=sharding_key(leaves[i]),
            )
            for i in array_pos
        ]

    def inputs(self, arrays: Sequence[Any]) -> dict[torch.fx.Node, Any]:
        it = iter(arrays)
        flat_in = [
            self._static[i] if i in self._static else next(it) for i in range(self._n_leaves)
        ]
        tree = jax.tree_util.tree_unflatten(self._treedef, flat_in)
        return dict(zip(self.segment.inputs, tree, strict=True))

    def fn(self, *args: Any) -> list[Any]:
        seed, arrays = (args[0], args[1:]) if self.uses_rng else (None, args)
        env = self.inputs(arrays)
        found = index_checks.collecting()
        try:
            run_nodes(self.segment.nodes, env, RngStream(seed))
        finally:
            index_checks.done(found)
        for node, sharding in self._out_shardings.items():
            env[node] = jax.lax.with_sharding_constraint(env[node], sharding)
        flat, out_treedef = jax.tree_util.tree_flatten([env[n] for n in self.segment.outputs])
        self._out_treedefs.append(out_treedef)
        self._static_outputs.clear()
        traced = []
        for i, leaf in enumerate(flat):
            if isinstance(leaf, jax.Array):
                traced.append(leaf)
            else:
                self._static_outputs[i] = leaf
        self._checks.clear()
        if found:
            flags, compiled = index_checks.packed(found)
            self._checks.extend(compiled)
            traced.append(flags)
        return traced

    def out_info(self) -> tuple[Any, dict[int, Any]]:
        return self._out_treedefs[-1], dict(self._static_outputs)

    def checks(self) -> list[Check]:
        return list(self._checks)


def lower_segment(
    segment: Segment,
    treedef: Any,
    leaves: Sequence[Any],
    donate: Sequence[int] = (),
    *,
    name: str = "graph",
    origin: str | None = None,
    seed_shape: tuple[int, ...] = (),
    out_shardings: dict[torch.fx.Node, Any] | None = None,
    blocks: Any = None,
    cache_as: str | None = None,
) -> Lowered:
    """Trace ``segment`` with JAX for these inputs and lower it.

    The segment's inputs are ``treedef`` unflattened over ``leaves``: a device
    array (or ``jax.ShapeDtypeStruct``) for each array and the Python value
    itself for each static leaf (sizes of dynamic shapes, ``None``). Arrays
    sharded over a mesh make an SPMD program for that mesh; ``out_shardings``
    pins some outputs (segment output nodes) to a sharding. ``blocks`` traces it
    over the process mesh (see :func:`lower_function`).
    ``donate`` lists leaf positions whose buffers XLA may reuse for outputs.
    ``cache_as``: the segment's :func:`fingerprint`, to keep the lowering on disk under
    for later processes (one device, no pinned outputs;
    :mod:`~torchtpu.compile.lowered_cache`).
    """
    traced = SegmentFunction(segment, treedef, leaves, out_shardings)
    donated = [traced.array_pos.index(i) for i in donate if i in traced.array_pos]
    cache_key = None
    if cache_as is not None and blocks is None and not out_shardings:
        cache_key = lowered_cache.key(
            cache_as,
            traced.specs,
            name=name,
            donate=donated,
            uses_rng=traced.uses_rng,
            seed_shape=seed_shape,
        )
    return lower_function(
        traced.fn,
        traced.specs,
        name=name,
        origin=origin or segment_origin(segment),
        uses_rng=traced.uses_rng,
        seed_shape=seed_shape,
        donate=donated,
        n_ops=len(segment.nodes),
        out_info=traced.out_info,
        checks=traced.checks,
        # Op by op, collectives would run outside their shard_map: no replay there.
        replay=None
        if blocks is not None
        else lambda arrays, seed: _replay(segment, traced.inputs(arrays), seed, name, origin),
        blocks=blocks,
        cache_key=cache_key,
    )


def export_segment(
    segment: Segment,
    treedef: Any,
    leaves: Sequence[Any],
    *,
    platforms: Sequence[str],
) -> tuple[jax.export.Exported, SegmentFunction]:
    """Trace ``segment`` as :func:`lower_segment` does and export it with
    ``jax.export`` for ``platforms``: a serializable program that runs without
    torch. ``leaves`` may hold ``jax.ShapeDtypeStruct`` s with symbolic dimensions
    (``jax.export.symbolic_shape``). Returns the ``Exported`` and the traced
    function, whose ``out_info()`` and ``checks()`` describe its outputs.

    Example::

        exported, traced = export_segment(segment, treedef, specs, platforms=("cpu",))
        exported.serialize()
    """
    traced = SegmentFunction(segment, treedef, leaves)
    specs = list(traced.specs)
    if traced.uses_rng:
        specs.insert(0, jax.ShapeDtypeStruct((), jnp.uint32))
    start = time.perf_counter()
    exported = jax.export.export(jax.jit(traced.fn), platforms=tuple(platforms))(*specs)
    bump("trace_seconds", time.perf_counter() - start)
    return exported, traced


def _non_finite(values: Any) -> bool:
    return any(
        isinstance(v, jax.Array)
        and jnp.issubdtype(v.dtype, jnp.inexact)
        and not bool(jnp.isfinite(v).all())
        for v in jax.tree_util.tree_leaves(values)
    )


def _replay(
    segment: Segment, env: dict[torch.fx.Node, Any], seed: Any, name: str, origin: str | None
) -> None:
    """Run ``segment``'s ops one at a time on these inputs (JAX runs each at once) and
    raise ``FloatingPointError`` naming the first whose result is not finite."""
    bad_inputs = [n.name for n in segment.inputs if _non_finite(env.get(n))]
    rng = RngStream(seed)
    for node in segment.nodes:
        run_nodes([node], env, rng)
        if node.op == "call_function" and _non_finite(env[node]):
            where = index_checks.node_line(node) or origin or segment_origin(segment)
            inputs = [describe_value(a) for a in map_args(node.args, env)]
            held = (
                f" The program's inputs {bad_inputs} already held NaN or Inf." if bad_inputs else ""
            )
            raise FloatingPointError(
                f"TORCHTPU_DEBUG_NANS: {node.target}({', '.join(inputs)}) made a NaN or Inf, "
                f"at {where} (the first op to, in the {name} program).{held} "
                "See docs/errors.md#nan-or-inf."
            )


def build_program(*args: Any, **kwargs: Any) -> Program:
    """:func:`lower_segment`, then compile."""
    return lower_segment(*args, **kwargs).compile()


def _weak(leaf: Any) -> bool:
    return bool(getattr(leaf, "weak_type", False))


def compiler_options() -> dict[str, Any]:
    """The XLA options every torchtpu program is compiled with."""
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


# --- fingerprints and origins ---------------------------------------------------------


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
    digest.update(f"bounds={options().check_bounds}".encode())
    return digest.hexdigest()


def _constant_digest(node: torch.fx.Node) -> bytes:
    value = node.graph.owning_module
    for part in str(node.target).split("."):
        value = getattr(value, part)
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu()
        shape = f"{list(data.shape)}{data.dtype}".encode()
        return hashlib.sha256(to_numpy(data).tobytes()).digest() + shape
    return repr(value).encode()


def segment_origin(segment: Segment) -> str:
    """The user's source line the segment's first traced op came from, or ``<unknown>``.

    Dynamo records each node's user stack (``node.meta["stack_trace"]``); its
    last frame is the line in the user's code."""
    for node in segment.nodes:
        trace = node.meta.get("stack_trace")
        if trace:
            frames = index_checks.FRAME.findall(trace)
            if frames:
                path, line = frames[-1]
                return f"{path}:{line}"
    return "<unknown>"


# --- errors and the compile log -------------------------------------------------------

_COMPILE_LOG: list[str] = []


def _log_compile(program: Program) -> None:
    if options().debug:
        _COMPILE_LOG.append(
            f"{program.name}: {program.n_ops} ops in {program.compile_seconds:.2f}s, "
            f"built at {program.origin}; inputs {program.input_shapes()}"
        )


def compile_log() -> list[str]:
    """With ``TORCHTPU_DEBUG=1``: one line per XLA compile, for every front end: what
    was compiled, how long it took, and the user's line that built it."""
    return list(_COMPILE_LOG)


def _compile_error(name: str, origin: str, specs: Sequence[Any], exc: Exception) -> CompileError:
    shapes = ", ".join(_aval_text(s) for s in specs[:8])
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CompileError(
        f"XLA could not compile program {name!r} (built at {origin}; inputs {shapes}): "
        f"{first}\nSee docs/errors.md#compile-error for the causes and what to do."
    )


def _device_error(program: Program, exc: Exception) -> DeviceError:
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    where = f"program {program.name!r} (built at {program.origin}; inputs {program.input_shapes()})"
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
        memory = program.memory_analysis()
        need = sum(
            getattr(memory, f, 0) or 0
            for f in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")
        )
        return OutOfMemoryError(
            f"the device ran out of memory running {where}; the program needs about "
            f"{_si(need)}B for arguments, outputs and temporaries: {first}\n"
            "See docs/errors.md#out-of-memory for what to do."
        )
    return DeviceError(
        f"the device failed running {where}: {first}\n"
        "See docs/errors.md#device-error for the causes and what to do."
    )


__all__ = [
    "CACHE",
    "LoweringUnsupported",
    "Program",
    "ProgramCache",
    "build_program",
    "clear_program_cache",
    "compile_function",
    "compile_log",
    "Lowered",
    "SegmentFunction",
    "export_segment",
    "lower_function",
    "lower_segment",
    "compiler_options",
    "fingerprint",
    "programs",
    "segment_origin",
]
