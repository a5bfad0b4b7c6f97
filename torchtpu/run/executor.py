"""Run an ATen graph: XLA programs for its segments, eager PyTorch for fallbacks.

A :class:`GraphExecutor` is what the ``tpu`` backend hands back to
AOTAutograd for each forward, backward or inference graph, and what
``compile_step`` runs its whole step with. The first call with new input
types traces and compiles; later calls look the programs up by the inputs'
shapes and dtypes and only run them.

Inputs may be CPU tensors (uploaded once, then found resident until PyTorch
changes them) or tpu tensors (their device buffers are used as they are).
Each output lands on the device its graph recorded for it: a tpu tensor
holding the program's buffer, so weights, gradients and optimizer state of a
model on "tpu" never leave the device.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import jax
import torch
import torch.fx
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

from torchtpu.compile.fallback import fall_back
from torchtpu.compile.partition import Segment, partition
from torchtpu.compile.program import (
    CACHE,
    Program,
    build_program,
    fingerprint,
    lower_segment,
    segment_origin,
)
from torchtpu.compile.recompiles import note_recompile
from torchtpu.compile.sized import SizedFailure, run_sized
from torchtpu.config import Options, options
from torchtpu.errors import TorchTPUError, user_site
from torchtpu.lower.dtypes import to_torch_dtype
from torchtpu.lower.interpreter import (
    PYTHON_FUNCTIONS,
    NoLowering,
    RngStream,
    is_sized,
    lowering_status,
    map_args,
    match_meta,
    meta_args,
    node_op,
    run_nodes,
)
from torchtpu.lower.ops.collective import (
    ProcessBlocks,
    is_collective,
    process_mesh,
    process_mesh_trace,
)
from torchtpu.metrics import bump, count_fallback
from torchtpu.runtime import from_device, jax_scope, next_seed, to_device, tpu_generator
from torchtpu.runtime.placement import current_mesh, on_mesh, onto_mesh, put, sharding_key
from torchtpu.shard.reassociate import fuse_sums_of_products

DEVICE_TYPE = "tpu"


class GraphExecutor:
    """Callable running ``gm`` (an ATen FX graph) through XLA.

    Example::

        ex = GraphExecutor(gm)        # gm from AOTAutograd or make_fx
        outputs = ex(list_of_tensors)
    """

    def __init__(
        self,
        gm: torch.fx.GraphModule,
        opts: Options | None = None,
        name: str = "graph",
        donate: frozenset[int] = frozenset(),
        origin: str | None = None,
        input_names: list[str] | None = None,
        out_shardings: dict[int, Any] | None = None,
        param_names: dict[int, str] | None = None,
        cache_lowering: bool = True,
    ) -> None:
        self.gm = gm
        # Keep the lowered programs on disk for later processes (warm starts), where
        # options().cache_dir is set: torchtpu/compile/lowered_cache.py.
        self.cache_lowering = cache_lowering
        # Input position -> the parameter's name in its model (torch.compile's
        # forward), which a strategy's rules place.
        self.param_names = dict(param_names or {})
        self._input_shardings: dict[int, Any] = {}
        # Graph output position -> the sharding it must have (a sharded step's state).
        self.out_shardings = dict(out_shardings or {})
        self.name = name
        self.origin = origin
        # Where the graph was captured from: the line that called the compiled code,
        # for programs whose nodes carry no source line of their own.
        self._site = user_site()
        # An instance attribute, so the wrappers AOTAutograd puts around us copy it.
        self._boxed_call = True
        self.opts = opts or options()
        self._strict_error: TorchTPUError | None = None
        self.placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        # What recompile reports call each input: the user's names where the
        # front end knows them, else the graph's.
        self._input_names = {n: n.name for n in self.placeholders}
        if input_names is not None and len(input_names) == len(self.placeholders):
            self._input_names.update(zip(self.placeholders, input_names, strict=True))
        self.output_node = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
        strategy = self.opts.strategy
        if strategy is not None and strategy.mesh.size > 1:
            fuse_sums_of_products(gm)  # one all-reduce per sum of split products
        self.eager_nodes: set[torch.fx.Node] = set()
        # Collectives between processes (DTensor, funcol, c10d under Dynamo): the
        # programs holding them are traced over the process mesh.
        self._process_mesh = None if self.opts.strategy else process_mesh(gm.graph.nodes)
        with self._process_trace():
            for node in gm.graph.nodes:
                status, reason = lowering_status(node)
                if status != "lowers":
                    self._fall_back(node, reason, status)
        self.sized_nodes = {n for n in gm.graph.nodes if n.op == "call_function" and is_sized(n)}
        outputs = self.output_node.args[0]
        self._out_devices = [_meta_device(n) for n in outputs]
        # A graph on tpu tensors draws its seeds from the device's generator, as CUDA
        # graphs draw from CUDA's; a graph on CPU tensors from PyTorch's default one.
        on_tpu = any(
            d is not None and d.type == DEVICE_TYPE
            for d in [_meta_device(n) for n in self.placeholders] + self._out_devices
        )
        self._generator = tpu_generator() if on_tpu else None
        self._complex32_outputs = [
            i
            for i, n in enumerate(outputs)
            if isinstance(n, torch.fx.Node)
            and getattr(n.meta.get("val"), "dtype", None) == torch.complex32
        ]
        self._data_dependent_views = {
            i: n
            for i, n in enumerate(outputs)
            if isinstance(n, torch.fx.Node) and _is_data_dependent_view(n)
        }
        self.segments = self._partition()
        self._fingerprints: dict[int, str] = {}
        self._programs: dict[tuple[int, Any], Program] = {}
        self._generation = CACHE.generation
        # Placeholders whose device buffers may be reused for outputs. Only safe
        # when one program consumes them and none is returned unchanged.
        returned = set(self.output_node.all_input_nodes)
        self._donate = {self.placeholders[i] for i in donate} - returned

    def __repr__(self) -> str:
        xla = sum(not s.eager for s in self.segments)
        return (
            f"GraphExecutor({self.name}: {len(self.placeholders)} inputs, "
            f"{xla} XLA segment(s), {len(self.eager_nodes)} eager node(s))"
        )

    @property
    def programs(self) -> list[Program]:
        """Every program compiled for this graph so far."""
        return list(self._programs.values())

    def run_on_device(self, args: list[Any]) -> list[Any]:
        """Like calling the executor, but outputs stay device arrays.

        Used by ``torchtpu.compile_step``, whose state lives on the device.
        """
        return self._run_with_fallbacks(args, to_torch=False)

    def __call__(self, *args: Any) -> list[Any]:
        # AOTAutograd calls with one list (the boxed convention, which lets us
        # drop the caller's references early) or, through wrappers, unboxed.
        boxed = len(args) == 1 and isinstance(args[0], list)
        inputs = list(args[0]) if boxed else list(args)
        if boxed:
            args[0].clear()
        steps = sys.modules.get("torchtpu.train.step")  # loaded once a compile_step exists
        if steps is not None:
            steps.sync_pending()  # a CPU model's trained values, before we read its tensors
        return self._run_with_fallbacks(inputs, to_torch=True)

    def _run_with_fallbacks(self, args: list[Any], to_torch: bool) -> list[Any]:
        """Run; a node whose lowering fails while traced falls back and we re-partition."""
        if self._strict_error is not None:
            raise self._strict_error
        strategy = self.opts.strategy
        with jax_scope() as device, on_mesh(strategy.mesh if strategy else current_mesh()):
            if strategy is not None and to_torch:
                args = self._placed(args, strategy)
            while True:
                try:
                    return self._run(args, device, to_torch)
                except NoLowering as exc:
                    self._fall_back(exc.node, str(exc), exc.kind)
                    self._repartition()
                except SizedFailure as exc:
                    node = self._running_sized
                    self._fall_back(node, str(exc).split(": ", 1)[-1], "crashed")
                    self._repartition()
                if self._strict_error is not None:
                    raise self._strict_error

    def _placed(self, args: list[Any], strategy: Any) -> list[Any]:
        """torch.compile's inputs on the strategy's mesh: parameters as its rules place
        them, the batch split over its data axes, the rest replicated. CPU tensors are
        uploaded so; a tpu parameter moves onto the mesh itself, once (what follows,
        the optimizer's step too, keeps it there); other tpu tensors are passed placed."""
        if not self._input_shardings:
            named = [(self.param_names[i], tuple(args[i].shape)) for i in self.param_names]
            # A graph may hold part of a model (a graph break): no rule need match here.
            plan = strategy.plan(named, check=False)
            for i, value in enumerate(args):
                if i in self.param_names:
                    spec = plan[self.param_names[i]].spec
                    self._input_shardings[i] = strategy.sharding(spec)
                elif isinstance(value, torch.Tensor):
                    self._input_shardings[i] = _input_sharding(strategy, value)
        from torchtpu.device.tensor import device_array, set_device_array

        out = list(args)
        for i, value in enumerate(args):
            if not isinstance(value, torch.Tensor):
                continue
            sharding = self._input_shardings[i]
            if value.device.type != DEVICE_TYPE:
                out[i] = to_device(value, sharding)
                continue
            array = device_array(value, "compiled_input")
            if array.sharding != sharding:
                array = put(array, sharding)
                if i in self.param_names:
                    bump("reshards")
                    set_device_array(value, array)
            out[i] = array
        return out

    def _process_trace(self) -> contextlib.AbstractContextManager:
        mesh = self._process_mesh
        return process_mesh_trace(mesh.size) if mesh is not None else contextlib.nullcontext()

    def _blocks(self, segment: Segment) -> ProcessBlocks | None:
        """How a segment holding a collective is traced over the process mesh."""
        if self._process_mesh is None or not any(is_collective(n) for n in segment.nodes):
            return None
        return ProcessBlocks(self._process_mesh)

    def _repartition(self) -> None:
        self.segments = self._partition()
        self._programs.clear()
        self._fingerprints.clear()

    def _partition(self) -> list[Segment]:
        segments = partition(self.gm.graph, self.eager_nodes, self.sized_nodes - self.eager_nodes)
        # Segments of shape arithmetic alone run on Python ints, with no program.
        self._host_segments = {
            i
            for i, s in enumerate(segments)
            if not s.eager and not s.sized and all(_is_shape_arithmetic(n) for n in s.nodes)
        }
        return segments

    # --- fallback ----------------------------------------------------------------

    def _fall_back(self, node: torch.fx.Node, reason: str, kind: str) -> None:
        op = node_op(node) if node.op == "call_function" else node.target
        args, kwargs = meta_args(node)
        try:
            # Counted when the node runs (_run_eager), not here.
            fall_back(op, args, kwargs, reason, kind=kind, opts=self.opts, count=False)
        except TorchTPUError as exc:
            # Raised when the graph runs, as device mode and compile_step raise it,
            # rather than inside Dynamo, which would wrap it in BackendCompilerFailed.
            self._strict_error = exc
        self.eager_nodes.add(node)

    # --- execution ---------------------------------------------------------------

    def _run(self, args: list[Any], device: jax.Device, to_torch: bool) -> list[Any]:
        if self._generation != CACHE.generation:  # clear_program_cache() was called
            self._programs.clear()
            self._generation = CACHE.generation
        env: dict[torch.fx.Node, Any] = dict(zip(self.placeholders, args, strict=True))
        for index, segment in enumerate(self.segments):
            if segment.eager:
                self._run_eager(segment, env)
            elif segment.sized:
                self._run_sized(segment.nodes[0], env, device)
            elif index in self._host_segments:
                run_nodes(segment.nodes, env, RngStream(None))
            else:
                self._run_xla(index, segment, env, device)
        bump("executions")
        results = map_args(self.output_node.args[0], env)
        if not to_torch:
            return results
        out = [_to_torch(r, d) for r, d in zip(results, self._out_devices, strict=True)]
        for i in self._complex32_outputs:
            out[i] = out[i].to(torch.complex32)
        for i, node in self._data_dependent_views.items():
            try:
                layout = _replay_view(node, env, {})
            except _NotAnInputView:
                continue  # a view of a computed value: AOTAutograd keeps ours as it is
            out[i] = _with_view_layout(out[i], layout)
        return out

    def _run_eager(self, segment: Segment, env: dict[torch.fx.Node, Any]) -> None:
        (node,) = segment.nodes
        if node.op == "get_attr":
            value: Any = self.gm
            for part in str(node.target).split("."):
                value = getattr(value, part)
            env[node] = value
            return
        args = _tree_to_torch(map_args(node.args, env))
        kwargs = _tree_to_torch(map_args(node.kwargs, env))
        count_fallback(str(node_op(node)))
        env[node] = node.target(*args, **kwargs)

    def _run_sized(self, node: torch.fx.Node, env: dict[torch.fx.Node, Any], device) -> None:
        args = _tree_to_device(map_args(node.args, env), device)
        kwargs = _tree_to_device(map_args(node.kwargs, env), device)
        self._running_sized = node
        out = run_sized(node.target, args, kwargs, device, node.meta.get("val"))
        env[node] = match_meta(out, node.meta.get("val"))

    def _run_xla(
        self, index: int, segment: Segment, env: dict[torch.fx.Node, Any], device: jax.Device
    ) -> None:
        values = [env[n] for n in segment.inputs]
        leaves, treedef, signature = device_leaves(values, device)
        program = self._programs.get((index, signature))
        if program is None:
            program = self._program_for(index, segment, treedef, leaves, signature, values)
        arrays = [v for v in leaves if isinstance(v, jax.Array)]
        seed = next_seed(device, self._generator) if program.uses_rng else None
        mesh = current_mesh()
        if seed is not None and mesh is not None:
            seed = onto_mesh(seed, mesh)
        for node, value in zip(segment.outputs, program(arrays, seed), strict=True):
            env[node] = value

    def _program_for(
        self,
        index: int,
        segment: Segment,
        treedef: Any,
        leaves: list[Any],
        signature: Any,
        values: list[Any],
    ) -> Program:
        if index not in self._fingerprints:
            self._fingerprints[index] = fingerprint(segment)
        blocks = self._blocks(segment)
        key = ("segment", self._fingerprints[index], signature)
        if blocks is not None:
            key += (tuple(d.id for d in blocks.mesh.devices.flat),)
        program = CACHE.get(key)
        if program is not None:
            bump("cache_hits")
        else:
            before = [k[1] for k in self._programs if k[0] == index]
            if before:
                note_recompile(
                    f"{self._origin(segment)} ({self.name})",
                    [_shapes(sig) for sig in [*before, signature]],
                    self.opts,
                    [self._input_names.get(n, n.name) for n in segment.inputs]
                    if len(leaves) == len(segment.inputs)
                    else (),
                )
            program = build_program(
                segment,
                treedef,
                leaves,
                self._donated_leaves(segment, values),
                name=self.name,
                origin=self._origin(segment),
                out_shardings=self._pinned_outputs(segment),
                blocks=blocks,
                cache_as=self._fingerprints[index] if self.cache_lowering else None,
            )
            CACHE.put(key, program)
        self._programs[(index, signature)] = program
        return program

    def _origin(self, segment: Segment) -> str:
        if self.origin:
            return self.origin
        found = segment_origin(segment)
        return found if found != "<unknown>" else self._site

    def _pinned_outputs(self, segment: Segment) -> dict[torch.fx.Node, Any]:
        """The segment's outputs that are graph outputs with a sharding to keep."""
        if not self.out_shardings:
            return {}
        produced = set(segment.outputs)
        pinned: dict[torch.fx.Node, Any] = {}
        for i, node in enumerate(self.output_node.args[0]):
            if i in self.out_shardings and node in produced:
                pinned.setdefault(node, self.out_shardings[i])
        return pinned

    def _donated_leaves(self, segment: Segment, values: list[Any]) -> list[int]:
        if not self._donate or len(self.segments) != 1:
            return []
        donated, position = [], 0
        for node, value in zip(segment.inputs, values, strict=True):
            count = len(jax.tree_util.tree_leaves(value))
            if node in self._donate and count == 1:
                donated.append(position)
            position += count
        return donated

    # --- stages --------------------------------------------------------------------

    def _recorded_segments(self) -> list[tuple[int, Segment, Any]]:
        """Each XLA segment with its inputs as the graph recorded them (specs, not
        arrays); ``None`` for one whose input sizes depend on data."""
        out = []
        for index, segment in enumerate(self.segments):
            if segment.eager or segment.sized or index in self._host_segments:
                continue
            values = [n.meta.get("val") for n in segment.inputs]
            if any(_has_unbacked(v) for v in values):
                out.append((index, segment, None))
            else:
                out.append((index, segment, (values, *device_leaves(values, None))))
        return out

    def lower(self) -> list[tuple[Segment, Any]]:
        """Each XLA segment with its StableHLO (a :class:`~torchtpu.compile.program.Lowered`)
        for the shapes the graph recorded, compiling and running nothing."""
        out = []
        with jax_scope():
            for _, segment, recorded in self._recorded_segments():
                if recorded is None:
                    out.append((segment, None))
                    continue
                values, leaves, treedef, _ = recorded
                lowered = lower_segment(
                    segment,
                    treedef,
                    leaves,
                    self._donated_leaves(segment, values),
                    name=self.name,
                    origin=self._origin(segment),
                    out_shardings=self._pinned_outputs(segment),
                    blocks=self._blocks(segment),
                )
                out.append((segment, lowered))
        return out

    def compile(self) -> list[tuple[Segment, Program | None]]:
        """Each XLA segment with its program for the recorded shapes (from the cache, or
        compiled now), running nothing."""
        out = []
        with jax_scope():
            for index, segment, recorded in self._recorded_segments():
                if recorded is None:
                    out.append((segment, None))
                    continue
                values, leaves, treedef, signature = recorded
                program = self._programs.get((index, signature)) or self._program_for(
                    index, segment, treedef, leaves, signature, values
                )
                out.append((segment, program))
        return out


_SHAPE_OPS = frozenset(
    {
        torch.ops.aten.sym_size.int,
        torch.ops.aten.sym_numel.default,
        torch.ops.aten.sym_stride.int,
        torch.ops.aten.sym_storage_offset.default,
        torch.ops.aten._assert_scalar.default,
        torch.ops.aten.sym_constrain_range.default,
        torch.ops.aten.sym_constrain_range_for_size.default,
    }
)


def _is_shape_arithmetic(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and (
        node.target in _SHAPE_OPS
        or (node.target in PYTHON_FUNCTIONS and not isinstance(node.meta.get("val"), torch.Tensor))
    )


def _meta_device(node: Any) -> torch.device | None:
    meta = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return meta.device if isinstance(meta, torch.Tensor) else None


def _has_unbacked(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(free_unbacked_symbols(value.shape))
    return isinstance(value, torch.SymInt | torch.SymFloat | torch.SymBool)


def _is_data_dependent_view(node: torch.fx.Node) -> bool:
    meta = node.meta.get("val")
    return (
        node.op == "call_function"
        and isinstance(node.target, torch._ops.OpOverload)
        and node.target.is_view
        and isinstance(meta, torch.Tensor)
        and bool(free_unbacked_symbols((meta.shape, meta.stride(), meta.storage_offset())))
    )


def _replay_view(node: torch.fx.Node, env: dict[torch.fx.Node, Any], memo: dict) -> Any:
    """``node``'s value with its inputs' real layouts: meta tensors for tensors.

    A graph output that is a view of an input is rebuilt by AOTAutograd from that
    input with the size, strides and offset of the tensor we return, which for a
    fresh array are not the view's. When those depend on data (``x.narrow(0,
    t.item(), 2)``), PyTorch cannot give them ahead of time, so the chain of views
    is replayed here on meta tensors with the run's values.
    """
    if node in memo:
        return memo[node]
    meta = node.meta.get("val")
    if node.op == "placeholder":
        value = env[node]
        if isinstance(value, torch.Tensor):
            value = torch.empty(
                value.untyped_storage().nbytes() // value.element_size()
                if value.device.type != DEVICE_TYPE
                else value.numel(),
                dtype=value.dtype,
                device="meta",
            ).as_strided(value.shape, value.stride(), value.storage_offset())
    elif not isinstance(meta, torch.Tensor) and node in env:
        value = env[node]
    elif node.op == "call_function" and (
        _is_shape_arithmetic(node) or getattr(node.target, "is_view", False)
    ):
        args = map_args(node.args, _Lazy(env, memo))
        kwargs = map_args(node.kwargs, _Lazy(env, memo))
        value = node.target(*args, **kwargs)
    else:
        raise _NotAnInputView(node.format_node())
    memo[node] = value
    return value


class _NotAnInputView(Exception):
    """The chain of views does not start at a graph input."""


class _Lazy(dict):
    def __init__(self, env: dict, memo: dict) -> None:
        super().__init__()
        self.env, self.memo = env, memo

    def __getitem__(self, node: torch.fx.Node) -> Any:
        return _replay_view(node, self.env, self.memo)


def _with_view_layout(data: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
    """``data`` in a tensor with ``layout``'s size, strides and storage offset."""
    if data.device.type == DEVICE_TYPE:
        return data  # tpu tensors are laid out contiguously; AOTAutograd re-views them
    extent = layout.storage_offset() + 1
    extent += sum((n - 1) * st for n, st in zip(layout.shape, layout.stride(), strict=True))
    storage = torch.empty(extent if layout.numel() else 0, dtype=data.dtype, device=data.device)
    out = storage.as_strided(layout.shape, layout.stride(), layout.storage_offset())
    with contextlib.suppress(RuntimeError):  # overlapping layouts (expand) take no copy
        out.copy_(data)
    return out


def _shapes(signature: Any) -> list[tuple[int, ...] | None]:
    """A signature's input shapes, ``None`` for static leaves (for recompile reports)."""
    return [None if leaf[0] == "static" else tuple(leaf[0]) for leaf in signature[1]]


def device_leaves(values: Any, device: jax.Device | None) -> tuple[list[Any], Any, Any]:
    """``values`` flattened, tensors as device arrays, with the signature programs are
    keyed by: the tree, and each leaf's shape and dtype, or its value if static.

    ``device=None`` makes specs instead of arrays (for lowering without running).
    While a step runs on a mesh, every array is on that mesh (see
    :mod:`torchtpu.runtime.placement`) and its sharding is part of the signature."""
    leaves, treedef = jax.tree_util.tree_flatten(values)
    leaves = [_leaf(v, device) if isinstance(v, torch.Tensor) else v for v in leaves]
    mesh = current_mesh() if device is not None else None
    if mesh is not None:
        leaves = [onto_mesh(v, mesh) if isinstance(v, jax.Array) else v for v in leaves]
    signature = (
        treedef,
        tuple(
            (v.shape, v.dtype, sharding_key(v))
            if isinstance(v, jax.Array | jax.ShapeDtypeStruct)
            else ("static", _hashable(v))
            for v in leaves
        ),
    )
    return leaves, treedef, signature


def _input_sharding(strategy: Any, t: torch.Tensor) -> Any:
    try:
        return strategy.batch_sharding("input", tuple(t.shape), t.dtype)
    except TorchTPUError:  # not a batch (its first dimension does not split): replicated
        return strategy.sharding(())


def _leaf(t: torch.Tensor, device: jax.Device | None) -> Any:
    if device is None:
        from torchtpu.lower.dtypes import to_jax_dtype

        return jax.ShapeDtypeStruct(tuple(t.shape), to_jax_dtype(t.dtype))
    if t.device.type == DEVICE_TYPE:
        from torchtpu.device.tensor import device_array

        return device_array(t, "compiled_input")
    return to_device(t, device)


def _hashable(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def _to_torch(value: Any, torch_device: torch.device | None) -> Any:
    if isinstance(value, jax.Array):
        if torch_device is not None and torch_device.type == DEVICE_TYPE:
            from torchtpu.device.tensor import from_array

            return from_array(value, to_torch_dtype(value.dtype))
        return from_device(value, torch_device)
    if (
        isinstance(value, torch.Tensor)
        and torch_device is not None
        and value.device.type != torch_device.type
    ):
        return value.to(torch_device)  # an eager fallback's CPU result, on a tpu graph
    return value


def _tree_to_torch(value: Any) -> Any:
    if isinstance(value, jax.Array):
        return from_device(value)
    if isinstance(value, torch.Tensor) and value.device.type == DEVICE_TYPE:
        from torchtpu.device.tensor import to_cpu

        return to_cpu(value, "fallback")
    if isinstance(value, (list, tuple)):
        return type(value)(_tree_to_torch(v) for v in value)
    if isinstance(value, dict):
        return {k: _tree_to_torch(v) for k, v in value.items()}
    return value


def _tree_to_device(value: Any, device: jax.Device) -> Any:
    if isinstance(value, torch.Tensor):
        return _leaf(value, device)
    if isinstance(value, (list, tuple)):
        return type(value)(_tree_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _tree_to_device(v, device) for k, v in value.items()}
    return value
