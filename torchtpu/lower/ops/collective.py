"""``_c10d_functional`` collectives: XLA collectives over the process mesh.

With one process per device, a program holding these ops is the same SPMD
program in every process, traced inside a ``shard_map`` over a mesh of one
device per process (axis ``"proc"``, as the ``tpu`` process group's own
programs are, ``torchtpu/shard/c10d.py``): each input is this process's block,
and ``psum``, ``all_gather``, ``psum_scatter`` and ``all_to_all`` are real
collectives across the processes.

The graph executor (``torch.compile(backend="tpu")``, ``compile_step``) finds
the mesh with :func:`process_mesh`, checks and traces the graph's ops under
:func:`process_mesh_trace`, and builds each program that holds a collective
with :class:`ProcessBlocks`: the program's inputs are this process's tensors
as blocks of global arrays, its outputs this process's blocks. Outside such a
trace (device mode, a strategy's own mesh) there is no axis to reduce over, so
``supports=`` refuses the call (it then runs in eager PyTorch, where the op
calls the process group itself), with the reason.

The group must be a ``tpu`` process group of every process: the mesh axis is
all of them.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import torch
import torch.fx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from torchtpu.lower.registry import register

AXIS = "proc"
_IN_MESH: contextvars.ContextVar[int] = contextvars.ContextVar("torchtpu_process_mesh", default=0)


@contextlib.contextmanager
def process_mesh_trace(n_processes: int) -> Iterator[None]:
    """Trace the enclosed lowerings as the body of a ``shard_map`` whose axis
    ``"proc"`` spans ``n_processes`` processes."""
    token = _IN_MESH.set(n_processes)
    try:
        yield
    finally:
        _IN_MESH.reset(token)


def to_global(arrays: Sequence[jax.Array], mesh: Mesh) -> list[jax.Array]:
    """This process's ``arrays`` as its blocks of global arrays over the process mesh,
    stacked along dim 0 (a 0-d value gets a dim of 1). No copy."""
    n = mesh.size
    sharding = NamedSharding(mesh, P(AXIS))
    out = []
    for a in arrays:
        block = a.reshape(1) if a.ndim == 0 else a
        shape = (n * block.shape[0], *block.shape[1:])
        out.append(jax.make_array_from_single_device_arrays(shape, sharding, [block]))
    return out


def to_local(arrays: Sequence[jax.Array]) -> list[jax.Array]:
    """This process's block of each global array (no copy)."""
    return [a.addressable_shards[0].data for a in arrays]


class ProcessBlocks:
    """A program over the process mesh: ``wrap`` turns a function of this process's
    values into a ``shard_map`` of global arrays, ``enter``/``leave`` convert the
    arrays of a call. Every process runs the same program on its own blocks."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self._scalar_outputs: set[int] = set()

    def wrap(
        self, fn: Callable[..., list[Any]], specs: Sequence[jax.ShapeDtypeStruct]
    ) -> tuple[Callable[..., list[Any]], list[jax.ShapeDtypeStruct]]:
        """``fn`` (a function of arrays returning a list of arrays) and its ``specs``,
        as a function of global arrays and their specs."""
        n = self.mesh.size
        scalar = [s.ndim == 0 for s in specs]

        def body(*blocks: jax.Array) -> list[jax.Array]:
            args = [b.reshape(()) if s else b for b, s in zip(blocks, scalar, strict=True)]
            with process_mesh_trace(n):
                outs = list(fn(*args))
            self._scalar_outputs = {i for i, o in enumerate(outs) if o.ndim == 0}
            return [o.reshape(1) if o.ndim == 0 else o for o in outs]

        mapped = jax.shard_map(body, mesh=self.mesh, in_specs=P(AXIS), out_specs=P(AXIS))
        sharding = NamedSharding(self.mesh, P(AXIS))
        global_specs = [
            jax.ShapeDtypeStruct(
                (n * (s.shape[0] if s.ndim else 1), *s.shape[1:]),
                s.dtype,
                weak_type=getattr(s, "weak_type", False),
                sharding=sharding,
            )
            for s in specs
        ]
        return mapped, global_specs

    def enter(self, arrays: Sequence[jax.Array]) -> list[jax.Array]:
        return to_global(arrays, self.mesh)

    def leave(self, arrays: Sequence[jax.Array]) -> list[jax.Array]:
        local = to_local(arrays)
        return [a.reshape(()) if i in self._scalar_outputs else a for i, a in enumerate(local)]


_COLLECTIVES = "_c10d_functional"


def is_collective(node: torch.fx.Node) -> bool:
    """Whether ``node`` is a ``_c10d_functional`` collective (not ``wait_tensor``)."""
    target = node.target
    return (
        node.op == "call_function"
        and isinstance(target, torch._ops.OpOverload)
        and target.namespace == _COLLECTIVES
        and target._schema.name != f"{_COLLECTIVES}::wait_tensor"
    )


def process_mesh(nodes: Iterable[torch.fx.Node]) -> Mesh | None:
    """The process mesh the graph of ``nodes`` is traced over: that of its
    collectives' ``tpu`` group when every collective's group spans every process;
    ``None`` when it holds none, or one that cannot run as an XLA collective (which
    then falls back, with the reason, when its support is checked)."""
    groups = {node.args[-1] for node in nodes if is_collective(node)}
    if not groups or any(isinstance(_group_size(g), str) for g in groups):
        return None
    import torch.distributed as dist

    return dist.distributed_c10d._resolve_process_group(next(iter(groups))).mesh


def _group_size(group_name: Any) -> int | str:
    """The size of the ``tpu`` group ``group_name`` spanning every process, or why not."""
    import torch.distributed as dist

    from torchtpu.shard.c10d import ProcessGroupTPU

    try:
        group = dist.distributed_c10d._resolve_process_group(group_name)
    except Exception as exc:  # noqa: BLE001 - the reason is the message
        return f"process group {group_name!r} is unknown ({exc})"
    if not isinstance(group, ProcessGroupTPU):
        return f"process group {group_name!r} is not a 'tpu' process group"
    if group.global_ranks != list(range(dist.get_world_size())):
        return (
            f"process group {group_name!r} spans ranks {group.global_ranks}, not every "
            "process; compiled collectives run over the whole process mesh"
        )
    return group.size()


def _supported(group_name: Any) -> bool | str:
    n = _IN_MESH.get()
    if not n:
        return (
            "a collective in a compiled program needs the program traced over the process "
            "mesh (one process per device), as torch.compile(backend='tpu') and compile_step "
            "trace it; here (device mode, or under a strategy's own mesh) it runs in eager "
            "PyTorch through the process group"
        )
    size = _group_size(group_name)
    if isinstance(size, str):
        return size
    return True if size == n else f"the group has {size} processes, the mesh {n}"


def _reduce(x: jax.Array, op: str) -> jax.Array:
    if op == "sum":
        return jax.lax.psum(x, AXIS)
    if op == "avg":
        return (jax.lax.psum(x, AXIS) / jax.lax.axis_size(AXIS)).astype(x.dtype)
    if op == "max":
        return jax.lax.pmax(x, AXIS)
    if op == "min":
        return jax.lax.pmin(x, AXIS)
    raise NotImplementedError(f"reduce op {op!r}: torchtpu lowers sum, avg, max and min")


def _reduce_supported(x: Any, op: str, *rest: Any) -> bool | str:
    if op not in ("sum", "avg", "max", "min"):
        return f"reduce op {op!r} on {x.dtype}{list(x.shape)}: torchtpu lowers sum, avg, max, min"
    return _supported(rest[-1])


def _reduce_list_supported(xs: Any, op: str, group_name: Any) -> bool | str:
    return _reduce_supported(xs[0], op, group_name) if xs else True


def _last_group(*args: Any) -> bool | str:
    return _supported(args[-1])


def all_reduce(x, reduce_op, group_name):
    return _reduce(x, reduce_op.lower())


def all_reduce_coalesced(xs, reduce_op, group_name):
    return [_reduce(x, reduce_op.lower()) for x in xs]


def all_gather_into_tensor(x, group_size, group_name):
    return jax.lax.all_gather(x, AXIS, axis=0, tiled=True)


def all_gather_into_tensor_coalesced(xs, group_size, group_name):
    return [jax.lax.all_gather(x, AXIS, axis=0, tiled=True) for x in xs]


def _scatter(x: jax.Array, op: str) -> jax.Array:
    if op not in ("sum", "avg"):
        raise NotImplementedError(f"reduce_scatter with {op!r}: torchtpu lowers sum and avg")
    out = jax.lax.psum_scatter(x, AXIS, scatter_dimension=0, tiled=True)
    return (out / jax.lax.axis_size(AXIS)).astype(x.dtype) if op == "avg" else out


def _scatter_supported(x: Any, op: str, group_size: int, group_name: Any) -> bool | str:
    x0 = x[0] if isinstance(x, list | tuple) else x
    if op not in ("sum", "avg"):
        return f"reduce_scatter with {op!r} on {x0.dtype}{list(x0.shape)}: sum and avg lower"
    return _supported(group_name)


def reduce_scatter_tensor(x, reduce_op, group_size, group_name):
    return _scatter(x, reduce_op.lower())


def reduce_scatter_tensor_coalesced(xs, reduce_op, group_size, group_name):
    return [_scatter(x, reduce_op.lower()) for x in xs]


def _even_splits(x: Any, out_splits: Any, in_splits: Any, group_name: Any) -> bool | str:
    n = _IN_MESH.get()
    sizes = [*out_splits, *in_splits]
    if sizes and (len(set(sizes)) != 1 or (n and sizes[0] * n != x.shape[0])):
        return (
            f"all_to_all_single of {x.dtype}{list(x.shape)} with splits {list(out_splits)}/"
            f"{list(in_splits)}: XLA's all_to_all needs equal splits of dim 0"
        )
    return _supported(group_name)


def all_to_all_single(x, output_split_sizes, input_split_sizes, group_name):
    return jax.lax.all_to_all(x, AXIS, 0, 0, tiled=True)


def broadcast(x, src, group_name):
    # Gathered and indexed rather than a masked psum: exact for -0.0 and NaN payloads.
    return jax.lax.all_gather(x, AXIS)[src]


def wait_tensor(x):
    # An XLA program is ordered already: the collective's result is there when used.
    return x


# One table: the op, its check, its lowering.
if torch.distributed.is_available():
    F = torch.ops._c10d_functional
    register(F.all_reduce.default, supports=_reduce_supported)(all_reduce)
    register(F.all_reduce_coalesced.default, supports=_reduce_list_supported)(all_reduce_coalesced)
    register(F.all_gather_into_tensor.default, supports=_last_group)(all_gather_into_tensor)
    register(F.all_gather_into_tensor_coalesced.default, supports=_last_group)(
        all_gather_into_tensor_coalesced
    )
    register(F.reduce_scatter_tensor.default, supports=_scatter_supported)(reduce_scatter_tensor)
    register(F.reduce_scatter_tensor_coalesced.default, supports=_scatter_supported)(
        reduce_scatter_tensor_coalesced
    )
    register(F.all_to_all_single.default, supports=_even_splits)(all_to_all_single)
    register(F.broadcast.default, supports=_last_group)(broadcast)
    register(F.wait_tensor.default)(wait_tensor)
