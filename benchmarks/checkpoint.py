"""Checkpoint benchmark: save (blocking and total) and restore of a training state.

    .venv/bin/python benchmarks/checkpoint.py                          # gpt2-medium, CPU state
    .venv/bin/python benchmarks/checkpoint.py --model gpt2-small --where cpu,tpu --rounds 3

The state is a GPT-2 (HF ``GPT2LMHeadModel`` built from its config, random
weights, the real 50257-token vocabulary) with AdamW's moments, so about three
times the model's bytes. ``--where tpu`` keeps model and optimizer on the tpu
device, so saving copies device buffers to the host. Systems, interleaved
round by round in a rotating order (the machine is noisy):

- ``torch.save``: ``torch.save({"model": ..., "optim": ...})`` and ``torch.load``
  (``weights_only=True``) with ``load_state_dict``, the baseline;
- ``checkpoint sync``: ``checkpoint.Manager(async_save=False)``: the save blocks
  until committed;
- ``checkpoint async``: ``checkpoint.Manager(async_save=True)``: the save
  blocks for the host copies only; ``total`` is until ``wait()`` returns.

Each save goes to a fresh directory; files are fsynced (torch.save's are too,
here, for a fair comparison). Restore verifies every file's SHA-256 first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import torchtpu
from torchtpu import checkpoint

warnings.filterwarnings("ignore")

SIZES = {
    "gpt2-small": {"n_embd": 768, "n_layer": 12, "n_head": 12},
    "gpt2-medium": {"n_embd": 1024, "n_layer": 24, "n_head": 16},
}


def build(name: str, where: str) -> dict:
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_positions=1024, **SIZES[name])
    model = transformers.GPT2LMHeadModel(config).to(where)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():  # AdamW's state, without a forward pass
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad()
    if where == "tpu":
        torchtpu.sync()
    return {"model": model, "optim": opt, "step": 1}


def nbytes(state: dict) -> int:
    tensors = list(state["model"].state_dict().values())
    for s in state["optim"].state_dict()["state"].values():
        tensors += [t for t in s.values() if isinstance(t, torch.Tensor)]
    seen, total = set(), 0
    for t in tensors:
        key = id(t) if t.device.type == "tpu" else t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def torch_save(state: dict, root: Path) -> tuple[float, float]:
    path = root / "state.pt"
    start = time.perf_counter()
    blob = {"model": state["model"].state_dict(), "optim": state["optim"].state_dict()}
    with open(path, "wb") as f:
        torch.save(blob, f)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - start
    return seconds, seconds


def torch_load(state: dict, root: Path) -> float:
    start = time.perf_counter()
    blob = torch.load(root / "state.pt", map_location="cpu", weights_only=True)
    state["model"].load_state_dict(blob["model"])
    state["optim"].load_state_dict(blob["optim"])
    return time.perf_counter() - start


def manager_save(state: dict, root: Path, async_save: bool) -> tuple[float, float]:
    manager = checkpoint.Manager(root, keep=None, async_save=async_save)
    start = time.perf_counter()
    manager.save(1, state)
    blocking = time.perf_counter() - start
    manager.wait()
    return blocking, time.perf_counter() - start


def manager_load(state: dict, root: Path) -> float:
    start = time.perf_counter()
    checkpoint.Manager(root).restore(state)
    return time.perf_counter() - start


SYSTEMS = {
    "torch.save": (torch_save, torch_load),
    "checkpoint sync": (lambda s, r: manager_save(s, r, False), manager_load),
    "checkpoint async": (lambda s, r: manager_save(s, r, True), manager_load),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(SIZES), default="gpt2-medium")
    p.add_argument("--where", default="cpu", help="comma-separated: cpu, tpu")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = p.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="torchtpu-ckpt-bench-"))
    for where in args.where.split(","):
        state = build(args.model, where)
        size = nbytes(state)
        times: dict[str, dict[str, list[float]]] = {
            n: {"blocking": [], "total": [], "restore": []} for n in SYSTEMS
        }
        names = list(SYSTEMS)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                root = base / f"{where}-{name.replace(' ', '_')}-{r}"
                root.mkdir(parents=True)
                save, load = SYSTEMS[name]
                blocking, total = save(state, root)
                restore = load(state, root)
                times[name]["blocking"].append(blocking)
                times[name]["total"].append(total)
                times[name]["restore"].append(restore)
                shutil.rmtree(root)
        print(
            f"\n{args.model}, state on {where}: {size / 2**30:.2f} GiB "
            f"(model + AdamW), median of {args.rounds} rounds\n"
        )
        print(
            "| system | save, blocking (s) | save, total (s) | restore (s) | GiB/s saved "
            "| blocking vs torch.save |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        base_blocking = statistics.median(times["torch.save"]["blocking"])
        for name in names:
            med = {k: statistics.median(v) for k, v in times[name].items()}
            print(
                f"| {name} | {med['blocking']:.2f} | {med['total']:.2f} | {med['restore']:.2f} "
                f"| {size / 2**30 / med['total']:.2f} | {med['blocking'] / base_blocking:.2f}x |"
            )
        del state
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
