"""Every collective of the ``tpu`` process group, functional collectives in compiled
functions, then FSDP2, DTensor tensor parallelism (eager and compiled), compiled
DDP and FSDP2 models, and a native ``compile_step(strategy=FSDP())`` over both
processes, in one torchrun launch.

Each rank writes what it saw to ``<out>.<rank>`` (JSON); the test checks it.
"""

import json
import sys

import jax
import numpy as np
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.nn.parallel import DistributedDataParallel

import torchtpu
import torchtpu.shard.c10d  # noqa: F401 - registers "tpu"
from torchtpu.compile.program import programs
from torchtpu.lower.ops.collective import process_mesh_trace
from torchtpu.lower.registry import lookup
from torchtpu.shard.launch import process_devices

dist.init_process_group("tpu")
r, n = dist.get_rank(), dist.get_world_size()
out = {}


def tpu(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype, device="tpu")


def train_step(run, opt, x):
    """One SGD/AdamW step of ``run`` on ``x`` with the test's loss; the loss."""
    loss = run(x).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss


x = tpu([0.0, 1.0, 2.0, 3.0]) + r
dist.all_reduce(x)
out["sum"] = x.cpu().tolist()
x = tpu([0.0, 1.0, 2.0, 3.0]) + r
dist.all_reduce(x, op=dist.ReduceOp.AVG)
out["avg"] = x.cpu().tolist()
x = tpu([5.0, -1.0]) * (r + 1)
dist.all_reduce(x, op=dist.ReduceOp.MIN)
out["min"] = x.cpu().tolist()
x = tpu(float(r + 2))
dist.all_reduce(x, op=dist.ReduceOp.PRODUCT)
out["prod_0d"] = x.item()
x = tpu([r + 1, 2**40], dtype=torch.int64)
dist.all_reduce(x)
out["int64"] = x.cpu().tolist()
x = tpu([r == 0, True], dtype=torch.bool)
dist.all_reduce(x, op=dist.ReduceOp.MIN)
out["bool_min"] = x.cpu().tolist()
x = tpu([6, 3], dtype=torch.int32) + r
dist.all_reduce(x, op=dist.ReduceOp.BAND)
out["band"] = x.cpu().tolist()
x = tpu([1.0, 2.0])
work = dist.all_reduce(x, async_op=True)
work.wait()
out["async"] = x.cpu().tolist()

gathered = [torch.empty(2, 3, device="tpu") for _ in range(n)]
dist.all_gather(gathered, torch.full((2, 3), float(r), device="tpu"))
out["all_gather"] = [t.cpu().tolist() for t in gathered]
flat = torch.empty(2 * n, 3, device="tpu")
dist.all_gather_into_tensor(flat, torch.full((2, 3), float(r), device="tpu"))
out["all_gather_into_tensor"] = flat.cpu().tolist()
part = torch.empty(2, device="tpu")
dist.reduce_scatter_tensor(part, torch.arange(2.0 * n, device="tpu") * (r + 1))
out["reduce_scatter_tensor"] = part.cpu().tolist()
part = torch.empty(2, device="tpu")
dist.reduce_scatter(part, [torch.full((2,), float(10 * i + r), device="tpu") for i in range(n)])
out["reduce_scatter"] = part.cpu().tolist()
b = torch.full((3,), float(r + 5), device="tpu")
dist.broadcast(b, src=1)
out["broadcast"] = b.cpu().tolist()
a = torch.arange(2.0 * n, device="tpu") + 10 * r
a2a = torch.empty_like(a)
dist.all_to_all_single(a2a, a)
out["all_to_all_single"] = a2a.cpu().tolist()
c = torch.ones(3) * (r + 1)
dist.all_reduce(c)
out["cpu_all_reduce"] = c.tolist()
objects = [None] * n
dist.all_gather_object(objects, {"rank": r})
out["all_gather_object"] = objects
dist.barrier()

errors = {}
for name, call in {
    "premul_sum": lambda: dist.all_reduce(tpu([1.0]), op=dist._make_nccl_premul_sum(2.0)),
    "band_float": lambda: dist.all_reduce(tpu([1.0]), op=dist.ReduceOp.BAND),
    "uneven_a2a": lambda: dist.all_to_all_single(
        torch.empty(3, device="tpu"), torch.ones(3, device="tpu"), [1, 2], [2, 1]
    ),
    "mixed": lambda: dist.all_gather([torch.empty(1) for _ in range(n)], tpu([1.0])),
    "send": lambda: dist.send(tpu([1.0]), dst=1 - r),
}.items():
    try:
        call()
        errors[name] = "no error"
    except Exception as exc:  # noqa: BLE001 - the test reads the message
        errors[name] = f"{type(exc).__name__}: {exc}"
out["errors"] = errors

# A group of rank 1 alone: its mesh is one process's device.
solo = dist.new_group([1], backend="tpu")
if r == 1:
    x = tpu([3.0])
    dist.all_reduce(x, group=solo)
    out["solo"] = x.cpu().tolist()

# _c10d_functional eagerly on tpu tensors, and in compiled functions, whose programs
# are traced over the process mesh: XLA collectives inside the compiled program.
x = torch.full((2,), float(r + 1), device="tpu")
out["funcol_eager"] = funcol.all_reduce(x, "sum", dist.group.WORLD).cpu().tolist()


@torch.compile(backend="tpu")
def doubled_sum(x):
    return funcol.all_reduce(x * 2, "sum", dist.group.WORLD) + 1


@torch.compile(backend="tpu")
def tripled_then_reduced(x):
    y = x * 3
    dist.all_reduce(y)  # in place: Dynamo rewrites it to the functional op
    return y.sum()


@torch.compile(backend="tpu")
def gathered(x):
    return funcol.all_gather_tensor(x + 1, 0, dist.group.WORLD) * 2


out["funcol_compiled"] = doubled_sum(x).cpu().tolist()
out["inplace_compiled"] = tripled_then_reduced(x).item()
out["cpu_compiled"] = gathered(torch.full((2,), float(r))).tolist()
compiled = [p for p in programs() if p.name == "inference"]
out["compiled_collectives"] = sorted(
    {c for p in compiled for c in ("all-reduce", "all-gather") if c in p.compiled_text()}
)

# The lowerings themselves, traced in a shard_map over the process mesh: XLA collectives.
F = torch.ops._c10d_functional
mesh = Mesh(np.array(process_devices()), ("proc",))
sharding = NamedSharding(mesh, PartitionSpec("proc"))
local = jax.device_put(np.arange(4, dtype=np.float32) + 10 * r, process_devices()[r])
block = jax.make_array_from_single_device_arrays((4 * n,), sharding, [local])
name = dist.group.WORLD.group_name
lowered = {}
for key, op, args in [
    ("all_reduce", F.all_reduce.default, ("sum", name)),
    ("all_gather", F.all_gather_into_tensor.default, (n, name)),
    ("reduce_scatter", F.reduce_scatter_tensor.default, ("sum", n, name)),
    ("all_to_all", F.all_to_all_single.default, ([2, 2], [2, 2], name)),
    ("broadcast", F.broadcast.default, (1, name)),
]:
    lowering = lookup(op)
    with process_mesh_trace(n):
        assert lowering.refuses((torch.empty(4, device="meta"), *args), {}) is None
        fn = jax.shard_map(
            lambda v, fn=lowering.fn, args=args: fn(v, *args),
            mesh=mesh,
            in_specs=PartitionSpec("proc"),
            out_specs=PartitionSpec("proc"),
        )
        result = jax.jit(fn)(block)
    lowered[key] = np.asarray(result.addressable_shards[0].data).tolist()
out["lowered"] = lowered
out["refused_outside_mesh"] = lookup(F.all_reduce.default).refuses(
    (torch.empty(4, device="meta"), "sum", name), {}
)

# FSDP2: each Linear sharded over the two processes, against the same model on one.
torch.manual_seed(1)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
reference = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
reference.load_state_dict(model.state_dict())
model.to("tpu")
for layer in model:
    if isinstance(layer, nn.Linear):
        fully_shard(layer)
fully_shard(model)
opt = torch.optim.AdamW(model.parameters(), lr=0.05)
ref_opt = torch.optim.AdamW(reference.parameters(), lr=0.05)
data = torch.arange(16.0).reshape(4, 4) / 10
fsdp_losses, ref_losses = [], []
for _ in range(3):
    loss = train_step(model, opt, data[2 * r : 2 * r + 2].to("tpu"))
    reported = loss.detach().clone()
    dist.all_reduce(reported, op=dist.ReduceOp.AVG)
    fsdp_losses.append(reported.item())
    ref_losses.append(train_step(reference, ref_opt, data).item())
out["fsdp_shard_shape"] = list(model[0].weight.to_local().shape)
out["fsdp_losses"] = fsdp_losses
# Between steps the unsharded parameters hold no device memory, as on CUDA: no live
# buffer has a whole weight's shape, and reading one says it was freed.
torchtpu.sync()
full_shapes = {tuple(q.shape) for q in reference.parameters() if q.dim() == 2}
out["fsdp_live_full_params"] = sorted(
    {tuple(a.shape) for a in jax.live_arrays()} & full_shapes, key=str
)
unsharded = model[0]._get_fsdp_state()._fsdp_param_group.fsdp_params[0]._unsharded_param
try:
    unsharded.cpu()
    out["fsdp_unsharded_read"] = "no error"
except Exception as exc:  # noqa: BLE001 - the test reads the message
    out["fsdp_unsharded_read"] = f"{type(exc).__name__}: {exc}"
out["ref_losses"] = ref_losses
out["fsdp_max_diff"] = max(
    (p.full_tensor().cpu() - q).abs().max().item()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True)
)

# DTensor: Megatron column/row parallel with parallelize_module over a DeviceMesh.
mesh = init_device_mesh("tpu", (n,))
torch.manual_seed(2)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
reference = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
reference.load_state_dict(model.state_dict())
model = parallelize_module(model.to("tpu"), mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
opt = torch.optim.SGD(model.parameters(), lr=0.1)
ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
tp_losses, tp_ref = [], []
for _ in range(3):
    loss = train_step(model, opt, data.to("tpu"))
    tp_losses.append(loss.item())
    tp_ref.append(train_step(reference, ref_opt, data).item())
out["tp_shard_shape"] = list(model[0].weight.to_local().shape)
out["tp_losses"], out["tp_ref"] = tp_losses, tp_ref

# The same under torch.compile: DTensor's collectives are in the captured forward and
# backward graphs, and run as XLA collectives inside their programs.
# A replicated first layer makes the column-parallel input's gradient a partial sum:
# the backward all-reduces it.
torch.manual_seed(2)
model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
reference = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
reference.load_state_dict(model.state_dict())
model = parallelize_module(model.to("tpu"), mesh, {"1": ColwiseParallel(), "3": RowwiseParallel()})
compiled_model = torch.compile(model, backend="tpu")
# The first layer's parameters are plain tensors, the others DTensors: no foreach.
opt = torch.optim.SGD(model.parameters(), lr=0.1, foreach=False)
ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
tp_losses, tp_ref = [], []
for _ in range(3):
    loss = train_step(compiled_model, opt, data.to("tpu"))
    tp_losses.append(loss.item())
    tp_ref.append(train_step(reference, ref_opt, data).item())
out["tp_compiled_losses"], out["tp_compiled_ref"] = tp_losses, tp_ref
out["tp_compiled_graphs"] = {
    p.name: "all-reduce" in p.compiled_text()
    for p in programs()
    if p.name in ("forward", "backward")
}

# DDP and FSDP2 models under torch.compile (their collectives run in their hooks,
# through the group), against one process on the whole batch.
for wrap in ("ddp", "fsdp2"):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    reference = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    reference.load_state_dict(model.state_dict())
    model.to("tpu")
    if wrap == "ddp":
        wrapped = DistributedDataParallel(model)
    else:
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        wrapped = fully_shard(model)
    compiled_model = torch.compile(wrapped, backend="tpu")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    for _ in range(2):
        train_step(compiled_model, opt, data[2 * r : 2 * r + 2].to("tpu"))
        train_step(reference, ref_opt, data)
    full = [getattr(q, "full_tensor", lambda q=q: q)() for q in model.parameters()]
    out[f"{wrap}_compiled_max_diff"] = max(
        (a.detach().cpu() - b.detach()).abs().max().item()
        for a, b in zip(full, reference.parameters(), strict=True)
    )

# compile_step with hand-written data parallelism: the gradients' all-reduces are in
# the one compiled step, over the process mesh.
torch.manual_seed(3)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
reference = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
reference.load_state_dict(model.state_dict())
opt = torch.optim.AdamW(model.parameters(), lr=0.05)
ref_opt = torch.optim.AdamW(reference.parameters(), lr=0.05)


def averaged_step(x):
    loss = model(x).square().mean()
    loss.backward()
    for param in model.parameters():
        param.grad = funcol.all_reduce(param.grad, "avg", dist.group.WORLD)
    opt.step()
    opt.zero_grad()
    return funcol.all_reduce(loss.detach(), "avg", dist.group.WORLD)


step = torchtpu.compile_step(averaged_step)
step_losses, step_ref = [], []
for _ in range(3):
    step_losses.append(float(step(data[2 * r : 2 * r + 2])))
    step_ref.append(train_step(reference, ref_opt, data).item())
out["step_losses"], out["step_ref"] = step_losses, step_ref
out["step_max_diff"] = max(
    (p - q).abs().max().item()
    for p, q in zip(model.state_dict().values(), reference.state_dict().values(), strict=True)
)

# The native SPMD path in the same job: compile_step over the mesh of both
# processes' devices, each process giving its own rows of the global batch; a model
# on the CPU, and one moved to tpu first (each process's copy is put onto the mesh).
for where in ("cpu", "tpu"):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    reference = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    reference.load_state_dict(model.state_dict())
    model.to(where)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=0.05)

    def spmd_step(x, model=model, opt=opt):
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    step = torchtpu.compile_step(spmd_step, strategy=torchtpu.FSDP())
    spmd_losses, spmd_ref = [], []
    for _ in range(3):
        spmd_losses.append(float(step(data[2 * r : 2 * r + 2].to(where))))
        spmd_ref.append(train_step(reference, ref_opt, data).item())
    key = "spmd" if where == "cpu" else "spmd_tpu"
    out[f"{key}_losses"], out[f"{key}_ref"] = spmd_losses, spmd_ref
    out[f"{key}_devices"] = step.strategy.mesh.devices.size
    out[f"{key}_max_diff"] = max(
        (p.cpu() - q).abs().max().item()
        for p, q in zip(model.state_dict().values(), reference.state_dict().values(), strict=True)
    )

out["programs"] = sorted({p.name for p in programs() if p.name.startswith("c10d")})
out["fallbacks"] = dict(torchtpu.metrics()["fallbacks"])

with open(f"{sys.argv[1]}.{r}", "w") as f:
    json.dump(out, f)
dist.destroy_process_group()
