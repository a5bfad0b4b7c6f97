"""A small training run used by the checkpoint tests, in-process or as a script.

It has what makes resuming hard: dropout, a shuffled DataLoader with workers
whose dataset draws random augmentations, AdamW, an LR schedule, gradient
accumulation over two micro-batches and bf16 autocast, all in one
``compile_step``. As a script it trains, saves and prints one JSON line:

    python _train.py ROOT --steps N [--save-at K] [--resume [--control]] [--eager] [--kill-at POINT]

``--control`` then resumes a second time with the RNG left alone (a negative
control); ``--eager`` runs the step in eager PyTorch with an in-process loader
(quicker to start, for the kill tests, which are about the save).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import torch

import torchtpu
from torchtpu import checkpoint
from torchtpu.checkpoint import store
from torchtpu.data import DeviceLoader

VOCAB, CONTEXT = 32, 8


class Tokens(torch.utils.data.Dataset):
    """Fixed sequences; each read masks one random position (a draw in the worker)."""

    def __init__(self, n: int = 48) -> None:
        self.data = torch.randint(
            0, VOCAB, (n, CONTEXT + 1), generator=torch.Generator().manual_seed(1)
        )

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.data[i].clone()
        row[torch.randint(0, CONTEXT, ())] = 0
        return row[:-1], row[1:]


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 16)
        self.hidden = torch.nn.Linear(16, 32)
        self.drop = torch.nn.Dropout(0.2)
        self.head = torch.nn.Linear(32, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.hidden(self.embed(x)))))


def build(seed: int = 0, compiled: bool = True) -> dict:
    torch.manual_seed(seed)
    model = Model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    data = torch.utils.data.DataLoader(
        Tokens(), batch_size=4, shuffle=True, num_workers=2 if compiled else 0
    )
    loader = DeviceLoader(data, device_prefetch=2) if compiled else data

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for xs, ys in ((x[:2], y[:2]), (x[2:], y[2:])):  # gradient accumulation
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(xs)
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ys.flatten())
            (loss / 2).backward()
            total = total + loss.detach() / 2
        opt.step()
        opt.zero_grad()
        return total

    if compiled:
        step = torchtpu.compile_step(step)
    state = {"model": model, "optim": opt, "sched": sched, "step": 0}
    if compiled:  # an eager run's batches stay on the CPU, so a plain DataLoader
        state["loader"] = loader
    return {"state": state, "step": step, "data": data}


def train(run: dict, steps: int, on_step=None) -> list[float]:
    """Train until ``state["step"] == steps``; the per-step losses (as float32 bits)."""
    state, step = run["state"], run["step"]
    losses = []
    while state["step"] < steps:
        for x, y in state.get("loader", run["data"]):
            losses.append(float(step(x, y)))
            state["sched"].step()
            state["step"] += 1
            if on_step is not None:
                on_step(state)
            if state["step"] == steps:
                break
    return losses


def params(model: torch.nn.Module) -> dict[str, list]:
    return {k: v.detach().float().flatten().tolist() for k, v in model.state_dict().items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--save-at", type=int, action="append", default=[])
    p.add_argument("--resume", action="store_true")
    p.add_argument("--control", action="store_true")
    p.add_argument("--eager", action="store_true")
    p.add_argument("--kill-at", choices=["arrays", "manifest", "renamed"])
    args = p.parse_args(argv)
    # A resumed run must not depend on the seed it starts with.
    run = build(seed=123 if args.resume else 0, compiled=not args.eager)
    manager = checkpoint.Manager(args.root, keep=2, async_save=True)
    if args.resume:
        manager.restore(run["state"])
    last = max(args.save_at, default=None)

    def on_step(state: dict) -> None:
        if state["step"] not in args.save_at:
            return
        manager.wait()  # the earlier checkpoint is committed
        with open(os.path.join(args.root, f"expected_{state['step']}.json"), "w") as f:
            json.dump(params(state["model"]), f)
        if args.kill_at and state["step"] == last:

            def die(point: str) -> None:
                if point == args.kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

            store.reached = die
        manager.save(state["step"], state)

    losses = train(run, args.steps, on_step)
    manager.wait()
    result = {"losses": losses, "params": params(run["state"]["model"])}
    if args.control:
        torch.manual_seed(123)
        manager.restore(run["state"], restore_rng=False)
        result["control_losses"] = train(run, args.steps)
    print("RESULT " + json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
