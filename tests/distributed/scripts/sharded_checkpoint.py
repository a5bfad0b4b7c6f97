"""Checkpoints of a state split across two processes: ``compile_step(strategy=FSDP())``
over both processes' devices, saved with each process writing its own shards.

    torchrun --nproc_per_node=2 sharded_checkpoint.py OUT ROOT

Trains 2 steps, saves ``ROOT/c`` (``checkpoint.save``) and ``ROOT/m/step_2``
(``checkpoint.Manager``, in the background), trains 2 more steps; then loads
``ROOT/c`` into the same objects and redoes those 2 steps, and loads
``ROOT/m/step_2`` into a freshly built model and optimizer and redoes them again.
A last save fails on purpose in process 1. Each rank writes what it saw to
``OUT.<rank>`` (JSON); rank 0 also writes the gathered saved values to ``OUT.values``.
"""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import torch
import torch.nn as nn
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from safetensors import safe_open

import torchtpu
from torchtpu import checkpoint
from torchtpu.checkpoint import sharded, store
from torchtpu.device.tensor import device_array
from torchtpu.shard.launch import initialize_from_env, process_devices

initialize_from_env()
rank = jax.process_index()
out_path, root = sys.argv[1], Path(sys.argv[2])
batches = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(5))


def build():
    strategy = torchtpu.FSDP()
    torch.manual_seed(0)
    with torchtpu.shard.meta_init():
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    torchtpu.shard.materialize(model, strategy)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)

    def train(x):
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return model, opt, torchtpu.compile_step(train, strategy=strategy)


def run(step, first, last):
    """Steps ``first..last-1``, each process giving its own 4 rows of the batch."""
    return [float(step(batches[i][4 * rank : 4 * rank + 4])) for i in range(first, last)]


def gathered(model, opt):
    """Every value of the state, whole (a collective: ``.cpu()`` gathers)."""
    values = {f"model.{k}": v.cpu() for k, v in model.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        values.update({f"optim.{i}.{k}": v.cpu() for k, v in state.items()})
    return values


class Holder:
    """A state_dict of jax.Arrays, to restore onto shardings of our choosing."""

    def __init__(self, arrays):
        self.arrays = arrays

    def state_dict(self):
        return self.arrays

    def load_state_dict(self, arrays):
        self.arrays = arrays


def bits(values):
    return {k: v.numpy().tobytes().hex() for k, v in values.items()}


def shardings(model, opt):
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        tensors.update({f"optim.{i}.{k}": v for k, v in state.items()})
    return {k: str(device_array(v, "test").sharding) for k, v in tensors.items()}


# Which checkpoint files a load hashes (Python's open, seen by an audit hook) and
# reads (safetensors' safe_open, which opens files in Rust: wrapped here).
hashed, read = [], []


def _audit(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].startswith(str(root)):
        hashed.append(Path(args[0]).name)


def _reading(path, *args, **kwargs):
    read.append(Path(path).name)
    return safe_open(path, *args, **kwargs)


sys.addaudithook(_audit)
sharded.safe_open = store.safe_open = _reading


def files_used():
    used = {"hashed": sorted(set(hashed)), "read": sorted(set(read))}
    del hashed[:], read[:]
    return used


out = {}
model, opt, step = build()
out["before"] = run(step, 0, 2)
state = {"model": model, "optim": opt, "step": 2}
saved_values = gathered(model, opt)
out["split"] = not device_array(model[0].weight, "test").is_fully_addressable
checkpoint.save(root / "c", state)
manager = checkpoint.Manager(root / "m", keep=1, async_save=True)
manager.save(2, state)
manager.wait()
out["manager_steps"] = manager.steps()
out["reference"] = run(step, 2, 4)
reference = bits(gathered(model, opt))
placed = shardings(model, opt)

# In place: the same objects, back to step 2, on the same shardings.
files_used()
state = {"model": model, "optim": opt, "step": 0}
checkpoint.load(root / "c", state)
out["used"] = files_used()
out["step"] = state["step"]
out["in_place_shardings"] = shardings(model, opt) == placed
out["in_place"] = run(step, 2, 4)
out["in_place_bitwise"] = bits(gathered(model, opt)) == reference

# A fresh model and optimizer (a resumed job), through the manager.
model2, opt2, step2 = build()
state2 = {"model": model2, "optim": opt2, "step": 0}
manager.restore(state2)
out["fresh_shardings"] = shardings(model2, opt2) == placed
out["fresh"] = run(step2, 2, 4)
out["fresh_bitwise"] = bits(gathered(model2, opt2)) == reference

# Onto another mesh: replicated over both processes, and split on the other dimension.
mesh = Mesh(np.array(process_devices()), ("x",))
split_cols = NamedSharding(mesh, PartitionSpec(None, "x"))
targets = {
    "0.weight": jax.device_put(np.zeros((16, 8), np.float32), NamedSharding(mesh, PartitionSpec())),
    "2.weight": jax.device_put(np.zeros((4, 16), np.float32), split_cols),
}
holder = Holder(dict(targets))
files_used()
checkpoint.load(root / "c", {"model": holder}, strict=False, restore_rng=False)
out["other_mesh_used"] = files_used()
out["other_mesh"] = {
    key: holder.arrays[key].sharding == targets[key].sharding
    and all(
        np.array_equal(np.asarray(s.data), saved_values[f"model.{key}"].numpy()[s.index])
        for s in holder.arrays[key].addressable_shards
    )
    for key in targets
}

# Saved by one process (CPU tensors, the one-process format), loaded into the split model.
if rank == 0:
    cpu = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    cpu.load_state_dict({k[6:]: v for k, v in saved_values.items() if k.startswith("model.")})
    checkpoint.save(root / "one", {"model": cpu})
multihost_utils.sync_global_devices("saved by process 0")
checkpoint.load(root / "one", {"model": model2}, strict=False, restore_rng=False)
out["one_shardings"] = shardings(model2, opt2) == placed
out["one_values"] = all(
    torch.equal(v.cpu(), saved_values[f"model.{k}"]) for k, v in model2.state_dict().items()
)
out["one_step"] = run(step2, 2, 3)


# A save that fails in process 1 after writing its files: nothing is committed.
def fail_in_one(point):
    if point == "arrays" and rank == 1:
        raise OSError("disk full (on purpose)")


store.reached = fail_in_one
try:
    checkpoint.save(root / "failed", {"model": model})
    out["failed_save"] = "no error"
except Exception as e:  # noqa: BLE001 - the test reads the message
    out["failed_save"] = f"{type(e).__name__}: {e}"

if rank == 0:
    values = {k: v.tolist() for k, v in saved_values.items()}
    Path(f"{out_path}.values").write_text(json.dumps(values))
Path(f"{out_path}.{rank}").write_text(json.dumps(out))
