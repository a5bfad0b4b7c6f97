"""Run an ATen graph: XLA programs for its segments, eager PyTorch for fallbacks.

A :class:`GraphExecutor` is what the ``tpu`` backend hands back to
AOTAutograd for each forward, backward or inference graph. The first call
with new input types traces and compiles; later calls look the programs up by
the inputs' shapes and dtypes and only run them.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any

import jax
import numpy as np
import torch
import torch.fx
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

from torchtpu.compile.partition import Segment, partition
from torchtpu.compile.program import Program, build_program, fingerprint
from torchtpu.config import Options, options
from torchtpu.errors import UnsupportedOpError, describe_value, unsupported_message
from torchtpu.lower.interpreter import (
    PYTHON_FUNCTIONS,
    NoLowering,
    RngStream,
    is_lowerable,
    is_sized,
    map_args,
    match_meta,
    run_nodes,
    sized_lowering,
)
from torchtpu.metrics import bump, count_fallback
from torchtpu.runtime import from_device, jax_scope, to_device

_PROGRAMS: dict[tuple[str, Any], Program] = {}
_WARNED: set[str] = set()


def clear_program_cache() -> None:
    """Forget every compiled program held in memory (the disk cache stays)."""
    _PROGRAMS.clear()


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
    ) -> None:
        self.gm = gm
        self.name = name
        # An instance attribute, so the wrappers AOTAutograd puts around us copy it.
        self._boxed_call = True
        self.opts = opts or options()
        self.placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.output_node = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
        self.eager_nodes: set[torch.fx.Node] = set()
        for node in gm.graph.nodes:
            if not is_lowerable(node):
                self._fall_back(node, reason="no lowering")
        self.sized_nodes = {n for n in gm.graph.nodes if n.op == "call_function" and is_sized(n)}
        self._complex32_outputs = [
            i
            for i, n in enumerate(self.output_node.args[0])
            if isinstance(n, torch.fx.Node)
            and getattr(n.meta.get("val"), "dtype", None) == torch.complex32
        ]
        self._data_dependent_views = {
            i: n
            for i, n in enumerate(self.output_node.args[0])
            if isinstance(n, torch.fx.Node) and _is_data_dependent_view(n)
        }
        self.segments = self._partition()
        self._fingerprints: dict[int, str] = {}
        self._programs: dict[tuple[int, Any], Program] = {}
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
        return self._run_with_fallbacks(inputs, to_torch=True)

    def _run_with_fallbacks(self, args: list[Any], to_torch: bool) -> list[Any]:
        """Run; a node whose lowering fails while traced falls back and we re-partition."""
        with jax_scope() as device:
            while True:
                try:
                    return self._run(args, device, to_torch)
                except NoLowering as exc:
                    self._fall_back(exc.node, reason=str(exc))
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

    def _fall_back(self, node: torch.fx.Node, reason: str) -> None:
        name = str(node.target)
        if self.opts.strict:
            if reason == "no lowering":
                args = map_args(node.args, {n: n.meta.get("val") for n in node.all_input_nodes})
                kwargs = map_args(node.kwargs, {n: n.meta.get("val") for n in node.all_input_nodes})
                reason = unsupported_message(name, args, kwargs, "no lowering")
            raise UnsupportedOpError(f"{reason}\n(strict mode is on)") from None
        if name not in _WARNED:
            _WARNED.add(name)
            warnings.warn(
                f"torchtpu: {name} has no XLA lowering here; it runs in eager PyTorch on the "
                "CPU (counted in torchtpu.metrics()['fallbacks']). Set TORCHTPU_STRICT=1 to "
                "make this an error.",
                stacklevel=2,
            )
        self.eager_nodes.add(node)

    # --- execution ---------------------------------------------------------------

    def _run(self, args: list[Any], device: jax.Device, to_torch: bool) -> list[Any]:
        env: dict[torch.fx.Node, Any] = dict(zip(self.placeholders, args, strict=True))
        torch_device = next(
            (a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu")
        )
        for index, segment in enumerate(self.segments):
            if segment.eager:
                self._run_eager(segment, env)
            elif segment.sized:
                _run_sized(segment.nodes[0], env, device)
            elif index in self._host_segments:
                run_nodes(segment.nodes, env, RngStream(None))
            else:
                self._run_xla(index, segment, env, device)
        bump("executions")
        results = map_args(self.output_node.args[0], env)
        if not to_torch:
            return results
        out = [_to_torch(r, torch_device) for r in results]
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
        args = _tree_to_torch(map_args(node.args, env))
        kwargs = _tree_to_torch(map_args(node.kwargs, env))
        if node.op == "get_attr":
            value: Any = self.gm
            for part in str(node.target).split("."):
                value = getattr(value, part)
            env[node] = value
            return
        count_fallback(str(node.target))
        env[node] = node.target(*args, **kwargs)

    def _run_xla(
        self, index: int, segment: Segment, env: dict[torch.fx.Node, Any], device: jax.Device
    ) -> None:
        values = [env[n] for n in segment.inputs]
        leaves, treedef, signature = _device_leaves(values, device)
        program = self._programs.get((index, signature))
        if program is None:
            program = self._program_for(index, segment, treedef, leaves, signature, values)
        arrays = [v for v in leaves if isinstance(v, jax.Array)]
        seed = _next_seed(device) if program.uses_rng else None
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
        key = (self._fingerprints[index], signature)
        program = _PROGRAMS.get(key)
        if program is not None:
            bump("cache_hits")
        else:
            if any(k[0] == index for k in self._programs):
                bump("recompiles")
            start = time.perf_counter()
            program = build_program(segment, treedef, leaves, self._donated_leaves(segment, values))
            if self.opts.debug:
                _log_compile(self.name, segment, time.perf_counter() - start)
            _PROGRAMS[key] = program
        self._programs[(index, signature)] = program
        return program

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
                value.untyped_storage().nbytes() // value.element_size(),
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
    extent = layout.storage_offset() + 1
    extent += sum((n - 1) * st for n, st in zip(layout.shape, layout.stride(), strict=True))
    storage = torch.empty(extent if layout.numel() else 0, dtype=data.dtype, device=data.device)
    out = storage.as_strided(layout.shape, layout.stride(), layout.storage_offset())
    with contextlib.suppress(RuntimeError):  # overlapping layouts (expand) take no copy
        out.copy_(data)
    return out


_SIZED_PROGRAMS: dict[Any, Any] = {}


def _run_sized(node: torch.fx.Node, env: dict[torch.fx.Node, Any], device: jax.Device) -> None:
    """Run a node whose output size depends on data (see ``torchtpu.lower.sized``):
    its padded program, one read of the size to the host, then the slice."""
    lowering = sized_lowering(node)
    args, kwargs = map_args(node.args, env), map_args(node.kwargs, env)
    leaves, treedef, signature = _device_leaves((args, kwargs), device)
    statics = {i: v for i, v in enumerate(leaves) if not isinstance(v, jax.Array)}
    arrays = [v for v in leaves if isinstance(v, jax.Array)]
    key = (node.target, signature)
    program = _SIZED_PROGRAMS.get(key)
    if program is None:

        def padded(*given: jax.Array) -> Any:
            it = iter(given)
            flat = [statics[i] if i in statics else next(it) for i in range(len(leaves))]
            a, k = jax.tree_util.tree_unflatten(treedef, flat)
            return lowering.padded(*a, **k)

        try:
            program = jax.jit(padded).lower(*arrays).compile()
        except Exception as exc:
            reason = f"its padded lowering failed with {type(exc).__name__}: {exc}"
            raise NoLowering(node, unsupported_message(node.target, args, kwargs, reason)) from exc
        bump("compiles")
        _SIZED_PROGRAMS[key] = program
    outputs, size = program(*arrays)
    bump("size_reads")
    size = _python_scalar(size, node.meta.get("val"))
    a, k = jax.tree_util.tree_unflatten(treedef, leaves)
    env[node] = match_meta(lowering.cut(a, k)(outputs, size), node.meta.get("val"))


def _python_scalar(value: jax.Array, meta: Any) -> Any:
    item = np.asarray(value).item()
    if isinstance(meta, (torch.SymBool, bool)):
        return bool(item)
    if isinstance(meta, (torch.SymFloat, float)):
        return float(item)
    return item


def _device_leaves(values: Any, device: jax.Device) -> tuple[list[Any], Any, Any]:
    """``values`` flattened, tensors as device arrays, with the signature programs are
    keyed by: the tree, and each leaf's shape and dtype, or its value if static."""
    leaves, treedef = jax.tree_util.tree_flatten(values)
    leaves = [to_device(v, device) if isinstance(v, torch.Tensor) else v for v in leaves]
    signature = (
        treedef,
        tuple(
            (v.shape, v.dtype) if isinstance(v, jax.Array) else ("static", _hashable(v))
            for v in leaves
        ),
    )
    return leaves, treedef, signature


def _hashable(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def _next_seed(device: jax.Device) -> jax.Array:
    # Drawn from PyTorch's default generator, so torch.manual_seed decides it.
    seed = int(torch.randint(0, 2**32 - 1, (), dtype=torch.int64))
    return jax.device_put(np.uint32(seed), device)


def _to_torch(value: Any, torch_device: torch.device) -> Any:
    if isinstance(value, jax.Array):
        return from_device(value, torch_device)
    return value


def _tree_to_torch(value: Any) -> Any:
    if isinstance(value, jax.Array):
        return from_device(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_tree_to_torch(v) for v in value)
    if isinstance(value, dict):
        return {k: _tree_to_torch(v) for k, v in value.items()}
    return value


_COMPILE_LOG: list[str] = []


def _log_compile(name: str, segment: Segment, seconds: float) -> None:
    shapes = ", ".join(describe_value(n.meta.get("val")) for n in segment.inputs[:6])
    _COMPILE_LOG.append(f"{name}: {segment} in {seconds:.2f}s, inputs {shapes}")


def compile_log() -> list[str]:
    """With ``TORCHTPU_DEBUG=1``: one line per XLA compile, saying what and why."""
    return list(_COMPILE_LOG)
