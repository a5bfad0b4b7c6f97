"""The ``tpu`` c10d process group: PyTorch's own distributed code on XLA collectives.

``dist.init_process_group("tpu")`` (or ``"nccl"`` under ``torchtpu run``) makes
a :class:`ProcessGroupTPU`, so ``DistributedDataParallel``, FSDP2 and plain
``dist.all_reduce`` run unchanged, one process per device as torchrun starts
them. Creating the group joins JAX's distributed runtime
(:func:`~torchtpu.shard.launch.initialize_from_env`).

How a collective on tpu tensors runs: each process's tensor is the local block
of one global ``jax.Array`` over a mesh of one device per process (axis
``"proc"``), and a cached program, a ``shard_map`` over that mesh with
``psum``/``all_gather``/``psum_scatter``/``all_to_all``, runs it as an XLA
collective across the processes; the local block of the result is written
back into the tensor. The pending device-mode graph runs first (sync reason
``collective``). Programs are made by the one compile path
(``compile_function``) and cached in the one program cache, keyed by the op,
the group and the shapes and dtypes.

CPU tensors go to a gloo group made alongside (the same ranks, the same
store), as they do under ``"cpu:gloo,cuda:nccl"``; a collective mixing CPU and
tpu tensors is refused.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.distributed as dist
from jax.sharding import Mesh
from torch._C._distributed_c10d import ReduceOp, _create_work_from_future

from torchtpu.compile.program import CACHE, Program, compile_function
from torchtpu.device.tensor import (
    DEVICE_TYPE,
    device_array,
    is_tpu,
    reallocate,
    release,
    set_device_array,
)
from torchtpu.errors import CollectiveError, TorchTPUError
from torchtpu.lower.ops.collective import ProcessBlocks
from torchtpu.metrics import bump
from torchtpu.runtime import jax_scope
from torchtpu.shard import launch

AXIS = "proc"
BACKEND = "tpu"
DOCS = "docs/distributed.md"
_R = ReduceOp.RedOpType


# --- the programs ---------------------------------------------------------------------


def _gathered_reduce(g: jax.Array, op: _R) -> jax.Array:
    """Reduce the gathered blocks ``g`` (leading axis: processes) with ``op``."""
    if op == _R.PRODUCT:
        return jnp.prod(g, axis=0, dtype=g.dtype)
    if op == _R.BAND:
        return functools.reduce(jnp.bitwise_and, list(g))
    if op == _R.BOR:
        return functools.reduce(jnp.bitwise_or, list(g))
    return functools.reduce(jnp.bitwise_xor, list(g))


def _reduce(x: jax.Array, op: _R, n: int) -> jax.Array:
    """All-reduce block ``x`` over the processes."""
    if x.dtype == jnp.bool_:
        as_int = _reduce(x.astype(jnp.int32), op, n)
        return as_int.astype(jnp.bool_)
    if op == _R.SUM:
        return jax.lax.psum(x, AXIS)
    if op == _R.AVG:
        return (jax.lax.psum(x, AXIS) / n).astype(x.dtype)
    if op == _R.MAX:
        return jax.lax.pmax(x, AXIS)
    if op == _R.MIN:
        return jax.lax.pmin(x, AXIS)
    return _gathered_reduce(jax.lax.all_gather(x, AXIS), op)


def _reduce_scatter(x: jax.Array, op: _R, n: int) -> jax.Array:
    """Reduce block ``x`` (leading dim ``n * k``) over the processes; keep rows ``k*i..``."""
    if op in (_R.SUM, _R.AVG) and x.dtype != jnp.bool_:
        out = jax.lax.psum_scatter(x, AXIS, scatter_dimension=0, tiled=True)
        return (out / n).astype(x.dtype) if op == _R.AVG else out
    full = _reduce(x, op, n)
    k = x.shape[0] // n
    return jax.lax.dynamic_slice_in_dim(full, jax.lax.axis_index(AXIS) * k, k, axis=0)


def _block(kind: str, op: _R, n: int, extra: int) -> Callable[[jax.Array], jax.Array]:
    """What one process computes on its block ``x`` inside the ``shard_map``."""
    if kind == "allreduce":
        return lambda x: _reduce(x, op, n)
    if kind == "allgather":
        return lambda x: jax.lax.all_gather(x, AXIS, axis=0, tiled=True)
    if kind == "reduce_scatter":
        return lambda x: _reduce_scatter(x, op, n)
    if kind == "alltoall":
        return lambda x: jax.lax.all_to_all(x, AXIS, 0, 0, tiled=True)
    if kind == "broadcast":
        # Gathered and indexed, not a masked psum: exact for -0.0 and NaN payloads.
        return lambda x: jax.lax.all_gather(x, AXIS)[extra]
    raise AssertionError(kind)


def _program(
    kind: str, group: ProcessGroupTPU, op: _R, extra: int, specs: Sequence[tuple]
) -> Program:
    """The cached program running collective ``kind`` on blocks of ``specs``
    (local ``(shape, dtype)`` each, leading dim 1 or more) over ``group``'s mesh."""
    key = ("collective", kind, group.mesh_key, int(op), extra, tuple(specs))
    program = CACHE.get(key)
    if program is not None:
        bump("cache_hits")
        return program
    n = group.size()
    block = _block(kind, op, n, extra)

    def blocks(*xs: jax.Array) -> list[jax.Array]:
        return [block(x) for x in xs]

    program = compile_function(
        blocks,
        [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in specs],
        name=f"c10d {kind} over {n} process{'es' if n > 1 else ''}",
        origin=f"ProcessGroupTPU({group.getGroupName() or 'default'})",
        n_ops=len(specs),
        blocks=ProcessBlocks(group.mesh),
    )
    return CACHE.put(key, program)


def _run(
    kind: str, group: ProcessGroupTPU, op: _R, arrays: Sequence[jax.Array], extra: int = 0
) -> list[jax.Array]:
    """Run collective ``kind`` on this process's ``arrays``; the local results."""
    with jax_scope():
        # 0-d values get a leading dim of 1: the blocks are stacked along dim 0.
        local = [a.reshape(1) if a.ndim == 0 else a for a in arrays]
        specs = tuple((tuple(a.shape), a.dtype) for a in local)
        program = _program(kind, group, op, extra, specs)
        try:
            outs = program(local)
        except (ValueError, TorchTPUError) as exc:
            # What XLA's cross-process collective says when a peer is gone.
            shapes = ", ".join(f"{dtype}{list(shape)}" for shape, dtype in specs)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CollectiveError(
                f"c10d {kind} of {shapes} over ranks {group.global_ranks} failed: {first}. "
                "If another process died, its log has the cause; this one stops too "
                f"(see {DOCS})"
            ) from exc
    return outs


# --- the process group ----------------------------------------------------------------


def _completed(result: Any) -> dist.Work:
    future: torch.futures.Future = torch.futures.Future()
    future.set_result(result)
    return _create_work_from_future(future)


class _Waited:
    """The gloo group, each collective waited before it returns.

    Compiled graphs lower ``wait_tensor`` as the identity (an XLA program is
    ordered), so a functional collective that ran eagerly on CPU tensors must be
    complete when it returns; XLA collectives on tpu tensors are already."""

    def __init__(self, group: dist.ProcessGroup) -> None:
        self._group = group

    def __getattr__(self, name: str) -> Callable[..., dist.Work]:
        call = getattr(self._group, name)

        def waited(*args: Any) -> dist.Work:
            work = call(*args)
            work.wait()
            return work

        return waited


def _describe(tensors: Sequence[torch.Tensor]) -> str:
    return ", ".join(f"{t.dtype}{list(t.shape)} on {t.device}" for t in tensors[:4]) + (
        ", ..." if len(tensors) > 4 else ""
    )


class ProcessGroupTPU(dist.ProcessGroup):
    """A c10d process group whose collectives on tpu tensors are XLA collectives.

    Made by ``dist.init_process_group("tpu")`` and ``dist.new_group(...,
    backend="tpu")``; not constructed directly.

    Example::

        import torch, torch.distributed as dist, torchtpu
        dist.init_process_group("tpu")          # under torchrun
        x = torch.ones(4, device="tpu")
        dist.all_reduce(x)                      # x == world size everywhere
    """

    def __init__(
        self,
        store: dist.Store,
        rank: int,
        size: int,
        timeout: datetime.timedelta,
        global_ranks: Sequence[int],
    ) -> None:
        super().__init__(rank, size)
        self._rank = rank
        self._size = size
        self.global_ranks = list(global_ranks)
        self._p2p = dist.ProcessGroupGloo(dist.PrefixStore("gloo/", store), rank, size, timeout)
        self._gloo = _Waited(self._p2p)
        self._mesh: Mesh | None = None
        self._name = ""
        self._desc = ""

    # Names torch asks of a process group.
    def getBackendName(self) -> str:  # noqa: N802 - c10d's name
        return BACKEND

    def name(self) -> str:
        return BACKEND

    # c10d keeps a group's name on its backends; a Python group keeps its own.
    def setGroupName(self, name: str) -> None:  # noqa: N802 - c10d's name
        self._name = name

    def getGroupName(self) -> str:  # noqa: N802 - c10d's name
        return self._name

    def setGroupDesc(self, desc: str) -> None:  # noqa: N802 - c10d's name
        self._desc = desc

    def getGroupDesc(self) -> str:  # noqa: N802 - c10d's name
        return self._desc

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size

    @property
    def mesh(self) -> Mesh:
        """One device per process of the group, in group-rank order (axis ``"proc"``)."""
        if self._mesh is None:
            devices = launch.process_devices()
            if len(devices) <= max(self.global_ranks):
                raise CollectiveError(
                    f"process group of ranks {self.global_ranks}: JAX sees "
                    f"{len(devices)} processes. Start every process with torchrun so that "
                    f"each joins JAX's distributed runtime (see {DOCS})"
                )
            self._mesh = Mesh(np.array([devices[r] for r in self.global_ranks]), (AXIS,))
        return self._mesh

    @property
    def mesh_key(self) -> tuple[int, ...]:
        return tuple(self.global_ranks)

    # --- which road a call takes

    def _road(self, call: str, tensors: Sequence[torch.Tensor]) -> str:
        on_tpu = [t.device.type == DEVICE_TYPE for t in tensors]
        if all(on_tpu):
            for t in tensors:
                if not is_tpu(t):
                    raise CollectiveError(
                        f"{call} on {_describe(tensors)}: a tpu tensor holds no value "
                        "(a fake or meta tensor reached the process group)"
                    )
            return "tpu"
        if not any(on_tpu) and all(t.device.type == "cpu" for t in tensors):
            return "cpu"
        raise CollectiveError(
            f"{call} on {_describe(tensors)} over ranks {self.global_ranks}: the tpu "
            "process group takes tensors all on tpu (XLA collectives) or all on the CPU "
            "(gloo). Move them to one device first."
        )

    def _refuse(self, call: str, tensors: Sequence[torch.Tensor], why: str) -> None:
        raise CollectiveError(
            f"{call} on {_describe(tensors)} over ranks {self.global_ranks} (backend "
            f"{BACKEND!r}): {why} (see {DOCS})"
        )

    def _op(self, call: str, tensors: Sequence[torch.Tensor], op: Any) -> _R:
        kind = op.op if hasattr(op, "op") else op
        kind = _R(int(kind))
        if kind == _R.PREMUL_SUM:
            self._refuse(call, tensors, "PREMUL_SUM is not supported; scale, then use SUM")
        floating = all(t.is_floating_point() or t.is_complex() for t in tensors)
        if kind == _R.AVG and not floating:
            self._refuse(call, tensors, "AVG needs floating-point tensors; use SUM")
        if kind in (_R.BAND, _R.BOR, _R.BXOR) and floating:
            self._refuse(call, tensors, f"{kind.name} needs integer or bool tensors")
        return kind

    @staticmethod
    def _arrays(tensors: Sequence[torch.Tensor]) -> list[jax.Array]:
        return [device_array(t, "collective") for t in tensors]

    # --- collectives

    def allreduce(self, tensors: list[torch.Tensor], opts: Any = None) -> dist.Work:
        opts = opts if opts is not None else dist.AllreduceOptions()
        if self._road("allreduce", tensors) == "cpu":
            return self._gloo.allreduce(tensors, opts)
        op = self._op("allreduce", tensors, opts.reduceOp)
        for t, out in zip(tensors, _run("allreduce", self, op, self._arrays(tensors)), strict=True):
            set_device_array(t, out.reshape(t.shape))
        return _completed(tensors)

    def allreduce_coalesced(self, tensors: list[torch.Tensor], opts: Any = None) -> dist.Work:
        opts = opts if opts is not None else dist.AllreduceCoalescedOptions()
        if self._road("allreduce_coalesced", tensors) == "cpu":
            return self._gloo.allreduce_coalesced(tensors, opts)
        single = dist.AllreduceOptions()
        single.reduceOp = opts.reduceOp
        return self.allreduce(tensors, single)

    def reduce(self, tensors: list[torch.Tensor], opts: Any) -> dist.Work:
        if self._road("reduce", tensors) == "cpu":
            return self._gloo.reduce(tensors, opts)
        op = self._op("reduce", tensors, opts.reduceOp)
        outs = _run("allreduce", self, op, self._arrays(tensors))
        if self._rank == opts.rootRank:
            for t, out in zip(tensors, outs, strict=True):
                set_device_array(t, out.reshape(t.shape))
        return _completed(tensors)

    def broadcast(self, tensors: list[torch.Tensor], opts: Any = None) -> dist.Work:
        opts = opts if opts is not None else dist.BroadcastOptions()
        if self._road("broadcast", tensors) == "cpu":
            return self._gloo.broadcast(tensors, opts)
        outs = _run("broadcast", self, _R.SUM, self._arrays(tensors), extra=opts.rootRank)
        for t, out in zip(tensors, outs, strict=True):
            set_device_array(t, out.reshape(t.shape))
        return _completed(tensors)

    def allgather(
        self, outputs: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any = None
    ) -> dist.Work:
        opts = opts if opts is not None else dist.AllgatherOptions()
        flat = [t for ts in outputs for t in ts]
        if self._road("allgather", [*inputs, *flat]) == "cpu":
            return self._gloo.allgather(outputs, inputs, opts)
        arrays = [a.reshape(1, *a.shape) for a in self._arrays(inputs)]
        for outs, gathered in zip(outputs, _run("allgather", self, _R.SUM, arrays), strict=True):
            if len(outs) != self._size:
                self._refuse("allgather", flat, f"give {self._size} output tensors per input")
            for i, t in enumerate(outs):
                set_device_array(t, gathered[i].astype(gathered.dtype))
        return _completed(outputs)

    def all_gather_single(
        self, output: torch.Tensor, input: torch.Tensor, opts: Any = None
    ) -> dist.Work:
        opts = opts if opts is not None else dist.AllgatherOptions()
        if self._road("all_gather_into_tensor", [output, input]) == "cpu":
            return self._gloo._allgather_base(output, input, opts)
        if output.numel() != input.numel() * self._size:
            self._refuse(
                "all_gather_into_tensor",
                [output, input],
                f"the output needs {self._size}x the input's elements",
            )
        (a,) = self._arrays([input])
        (out,) = _run("allgather", self, _R.SUM, [a.reshape(1, -1)])
        set_device_array(output, out.reshape(output.shape))
        return _completed([output])

    _allgather_base = all_gather_single

    def allgather_into_tensor_coalesced(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any = None
    ) -> dist.Work:
        for output, input in zip(outputs, inputs, strict=True):
            self.all_gather_single(output, input, opts)
        return _completed(outputs)

    all_gather_single_coalesced = allgather_into_tensor_coalesced

    def reduce_scatter(
        self, outputs: list[torch.Tensor], inputs: list[list[torch.Tensor]], opts: Any = None
    ) -> dist.Work:
        opts = opts if opts is not None else dist.ReduceScatterOptions()
        flat = [t for ts in inputs for t in ts]
        if self._road("reduce_scatter", [*outputs, *flat]) == "cpu":
            return self._gloo.reduce_scatter(outputs, inputs, opts)
        op = self._op("reduce_scatter", flat, opts.reduceOp)
        stacked = []
        for ins in inputs:
            if len(ins) != self._size:
                self._refuse("reduce_scatter", flat, f"give {self._size} input tensors per output")
            stacked.append(jnp.stack(self._arrays(ins)))
        for t, out in zip(outputs, _run("reduce_scatter", self, op, stacked), strict=True):
            set_device_array(t, out.reshape(t.shape))
        return _completed(outputs)

    def reduce_scatter_single(
        self, output: torch.Tensor, input: torch.Tensor, opts: Any = None
    ) -> dist.Work:
        opts = opts if opts is not None else dist.ReduceScatterOptions()
        if self._road("reduce_scatter_tensor", [output, input]) == "cpu":
            return self._gloo._reduce_scatter_base(output, input, opts)
        op = self._op("reduce_scatter_tensor", [input], opts.reduceOp)
        if input.numel() != output.numel() * self._size:
            self._refuse(
                "reduce_scatter_tensor",
                [output, input],
                f"the input needs {self._size}x the output's elements",
            )
        (a,) = self._arrays([input])
        (out,) = _run("reduce_scatter", self, op, [a.reshape(self._size, -1)])
        set_device_array(output, out.reshape(output.shape))
        return _completed([output])

    _reduce_scatter_base = reduce_scatter_single

    def reduce_scatter_tensor_coalesced(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any = None
    ) -> dist.Work:
        for output, input in zip(outputs, inputs, strict=True):
            self.reduce_scatter_single(output, input, opts)
        return _completed(outputs)

    reduce_scatter_single_coalesced = reduce_scatter_tensor_coalesced

    def all_to_all_single(
        self,
        output: torch.Tensor,
        input: torch.Tensor,
        output_split_sizes: list[int],
        input_split_sizes: list[int],
        opts: Any = None,
    ) -> dist.Work:
        opts = opts if opts is not None else dist.AllToAllOptions()
        if self._road("all_to_all_single", [output, input]) == "cpu":
            return self._gloo.alltoall_base(
                output, input, output_split_sizes, input_split_sizes, opts
            )
        even = input.shape[0] // self._size if input.dim() else 0
        uneven = any(s != even for s in [*output_split_sizes, *input_split_sizes])
        if uneven or input.dim() == 0 or input.shape[0] % self._size or output.shape != input.shape:
            self._refuse(
                "all_to_all_single",
                [output, input],
                "only even splits of dim 0 are supported (XLA's all_to_all has static "
                "sizes); pad to equal splits",
            )
        (a,) = self._arrays([input])
        (out,) = _run("alltoall", self, _R.SUM, [a])
        set_device_array(output, out)
        return _completed([output])

    alltoall_base = all_to_all_single

    def barrier(self, opts: Any = None) -> dist.Work:
        # Every process reaching this point is what a barrier means; gloo says so
        # without a device program.
        work = self._gloo.barrier(dist.BarrierOptions())
        work.wait()
        return _completed(None)

    # --- what is not built for tpu tensors: CPU tensors still go to gloo

    def _cpu_only(self, call: str, tensors: Sequence[torch.Tensor], instead: str) -> None:
        if self._road(call, tensors) == "tpu":
            self._refuse(call, tensors, f"not supported on tpu tensors; {instead}")

    def send(self, tensors: list[torch.Tensor], dst: int, tag: int) -> dist.Work:
        self._cpu_only("send", tensors, "send CPU tensors, or use a collective")
        return self._p2p.send(tensors, dst, tag)

    def recv(self, tensors: list[torch.Tensor], src: int, tag: int) -> dist.Work:
        self._cpu_only("recv", tensors, "receive CPU tensors, or use a collective")
        return self._p2p.recv(tensors, src, tag)

    def gather(
        self, outputs: list[list[torch.Tensor]], inputs: list[torch.Tensor], opts: Any
    ) -> dist.Work:
        flat = [*inputs, *(t for ts in outputs for t in ts)]
        if self._road("gather", flat) == "cpu":
            return self._gloo.gather(outputs, inputs, opts)
        # An all-gather whose result only the root keeps: SPMD has no one-sided gather.
        (gathered,) = _run("allgather", self, _R.SUM, [self._arrays(inputs)[0][None]])
        if self._rank == opts.rootRank:
            for i, t in enumerate(outputs[0]):
                set_device_array(t, gathered[i].reshape(t.shape))
        return _completed(outputs)

    def scatter(
        self, outputs: list[torch.Tensor], inputs: list[list[torch.Tensor]], opts: Any
    ) -> dist.Work:
        flat = [*outputs, *(t for ts in inputs for t in ts)]
        if self._road("scatter", flat) == "cpu":
            return self._gloo.scatter(outputs, inputs, opts)
        # DTensor's distribute_tensor scatters from its source rank: the root's pieces
        # are broadcast stacked and each rank keeps its own.
        (out,) = outputs
        with jax_scope():
            if self._rank == opts.rootRank:
                stacked = jnp.stack([a.reshape(out.shape) for a in self._arrays(inputs[0])])
            else:
                array = self._arrays([out])[0]
                stacked = jnp.zeros((self._size, *out.shape), array.dtype)
        (full,) = _run("broadcast", self, _R.SUM, [stacked], extra=opts.rootRank)
        set_device_array(out, full[self._rank].reshape(out.shape))
        return _completed(outputs)

    def alltoall(
        self, outputs: list[torch.Tensor], inputs: list[torch.Tensor], opts: Any
    ) -> dist.Work:
        self._cpu_only("all_to_all", [*outputs, *inputs], "use all_to_all_single on one tensor")
        return self._gloo.alltoall(outputs, inputs, opts)


_fsdp_patched = False


def _fsdp2_storage_on_tpu() -> None:
    """FSDP2 frees and re-allocates unsharded parameters with ``storage.resize_``,
    which a tpu tensor's storage (empty; the value is a device buffer) cannot do:
    torch 2.13 lets only a C++ backend implement resizing. On tpu tensors FSDP2's
    two helpers drop and re-make the device buffer instead (``release`` and
    ``reallocate``), so between uses an unsharded parameter holds no memory, as on
    CUDA; other devices keep FSDP2's own."""
    global _fsdp_patched
    if _fsdp_patched:
        return
    _fsdp_patched = True
    from torch.distributed.fsdp._fully_shard import _fsdp_param, _fsdp_param_group

    alloc, free = _fsdp_param.alloc_storage, _fsdp_param.free_storage

    def alloc_storage(tensor: torch.Tensor) -> None:
        if tensor.device.type == DEVICE_TYPE:
            reallocate(tensor)
        else:
            alloc(tensor)

    def free_storage(tensor: torch.Tensor) -> None:
        if tensor.device.type == DEVICE_TYPE:
            release(tensor)
        else:
            free(tensor)

    # On CUDA the unsharded parameter is a view sharing the all-gather output's memory;
    # a tpu view caches the value it last read, so it is released too.
    free_unsharded = _fsdp_param.FSDPParam.free_unsharded_param

    def free_unsharded_param(self: Any) -> None:
        free_unsharded(self)
        param = getattr(self, "_unsharded_param", None)
        if param is not None and is_tpu(param):
            release(param)

    _fsdp_param.alloc_storage = _fsdp_param_group.alloc_storage = alloc_storage
    _fsdp_param.free_storage = free_storage
    _fsdp_param.FSDPParam.free_unsharded_param = free_unsharded_param


def _create(options: Any, backend_options: Any) -> ProcessGroupTPU:
    """``Backend.register_backend``'s creator (extended API: it needs the global ranks)."""
    ranks = list(options.global_ranks_in_group)
    if not ranks:
        # The default group: this is where a process joins the job.
        launch.initialize_from_env(options.group_rank, options.group_size)
        ranks = list(range(options.group_size))
    elif launch.launched() is None:
        raise CollectiveError(
            f"new_group({ranks}, backend={BACKEND!r}) without a {BACKEND!r} default group; "
            f"call dist.init_process_group({BACKEND!r}) first (see {DOCS})"
        )
    _fsdp2_storage_on_tpu()
    return ProcessGroupTPU(
        options.store, options.group_rank, options.group_size, options.timeout, ranks
    )


def register() -> None:
    """Register ``"tpu"`` as a c10d backend (done when ``torchtpu`` is imported)."""
    if BACKEND.upper() not in dist.Backend._plugins:
        dist.Backend.register_backend(
            BACKEND, _create, extended_api=True, devices=[DEVICE_TYPE, "cpu"]
        )


if dist.is_available():
    register()
