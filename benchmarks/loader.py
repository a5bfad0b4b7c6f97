"""Input-pipeline benchmark: how much of a training step waits for data.

    .venv/bin/python benchmarks/loader.py                   # defaults: MLP, 10 ms per batch
    .venv/bin/python benchmarks/loader.py --steps 50 --rounds 2 --load-ms 20

A synthetic loader (a ``DataLoader`` over a dataset whose every batch costs
``--load-ms`` of host time, spent sleeping as reading and decoding would wait
on I/O, plus generating the batch) feeds a small MLP's training step, run:

- in eager PyTorch and with ``torch.compile`` (inductor), from the plain loader;
- as a ``torchtpu.compile_step`` program with the model on ``tpu``, from the
  plain loader with ``x.to("tpu")`` in the loop, and from
  ``torchtpu.data.DeviceLoader`` with ``device_prefetch`` 0, 1, 2 and 4.

Each round runs one epoch of ``--steps`` batches per system, the systems
taking turns in a rotating order so that noise on a shared machine hits them
alike; the table gives medians over rounds. ``input fraction`` is the time
spent waiting for a batch (and copying it to the device, on the loop's
thread) over the step time: ``DeviceLoader.stats()["input_fraction"]`` for
the DeviceLoader rows, measured the same way around the plain loop for the
others. One process holds every system (unlike ``train_step.py``): the model
is small and the subject is the loader's thread.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch

import torchtpu
from torchtpu.data import DeviceLoader

warnings.filterwarnings("ignore")


class SyntheticBatches(torch.utils.data.Dataset):
    """``steps`` whole batches; each costs ``load_ms`` of waiting and its generation."""

    def __init__(self, steps: int, batch: int, features: int, classes: int, load_ms: float):
        self.steps, self.batch, self.features, self.classes = steps, batch, features, classes
        self.load_s = load_ms / 1000

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int):
        time.sleep(self.load_s)
        g = torch.Generator().manual_seed(i)
        x = torch.randn(self.batch, self.features, generator=g)
        return x, torch.randint(0, self.classes, (self.batch,), generator=g)


def mlp(features: int, width: int, classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(features, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, classes),
    )


def _step_fn(model: torch.nn.Module, opt: torch.optim.Optimizer) -> Callable:
    def step(x, y):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def _plain_epoch(loader, step, to_device: str | None) -> tuple[float, float]:
    """(seconds, input fraction) of one epoch of a plain loop, timed around ``next()``."""
    waited = 0.0
    start = time.perf_counter()
    it = iter(loader)
    loss = None
    while True:
        t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            waited += time.perf_counter() - t0
            break
        if to_device is not None:
            x, y = x.to(to_device), y.to(to_device)
        waited += time.perf_counter() - t0
        loss = step(x, y)
    float(loss)  # the last step has finished
    total = time.perf_counter() - start
    return total, waited / total


def _device_epoch(loader, step, prefetch: int) -> tuple[float, float]:
    device_loader = DeviceLoader(loader, device_prefetch=prefetch)
    start = time.perf_counter()
    loss = None
    for x, y in device_loader:
        loss = step(x, y)
    float(loss)
    return time.perf_counter() - start, device_loader.stats()["input_fraction"]


def systems(args) -> dict[str, Callable[[], tuple[float, float]]]:
    data = SyntheticBatches(args.steps, args.batch, args.features, 10, args.load_ms)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=args.workers)
    out = {}

    model = mlp(args.features, args.width, 10)
    step = _step_fn(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    out["eager"] = lambda: _plain_epoch(loader, step, None)

    model = mlp(args.features, args.width, 10)
    compiled = torch.compile(model)
    step_i = _step_fn(compiled, torch.optim.AdamW(model.parameters(), lr=1e-3))
    out["inductor"] = lambda: _plain_epoch(loader, step_i, None)

    def compile_step():
        model = mlp(args.features, args.width, 10).to("tpu")
        return torchtpu.compile_step(_step_fn(model, torch.optim.AdamW(model.parameters())))

    plain = compile_step()
    out['compile_step, plain loop + .to("tpu")'] = lambda: _plain_epoch(loader, plain, "tpu")
    for prefetch in args.prefetch:
        step_p = compile_step()
        out[f"compile_step, DeviceLoader(prefetch={prefetch})"] = (
            lambda step_p=step_p, prefetch=prefetch: _device_epoch(loader, step_p, prefetch)
        )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100, help="batches per epoch (one per round)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--load-ms", type=float, default=10.0, help="host time per batch")
    p.add_argument("--workers", type=int, default=0, help="DataLoader num_workers")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--features", type=int, default=784)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--prefetch", default="0,1,2,4", help="device_prefetch values")
    args = p.parse_args(argv)
    args.prefetch = [int(v) for v in args.prefetch.split(",") if v]

    runs = systems(args)
    for run in runs.values():  # warm-up epoch: compiles, caches, the heap
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    fractions: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for r in range(args.rounds):
        shift = r % len(order)
        for name in order[shift:] + order[:shift]:
            seconds, fraction = runs[name]()
            times[name].append(seconds / args.steps)
            fractions[name].append(fraction)

    eager = statistics.median(times["eager"])
    inductor = statistics.median(times["inductor"])
    print(
        f"\nMLP {args.features}-{args.width}-{args.width}-10, batch {args.batch}, "
        f"{args.steps} steps/round x {args.rounds} rounds, loader {args.load_ms:g} ms/batch, "
        f"num_workers={args.workers}\n"
    )
    print("| system | step (ms) | input fraction | vs eager | vs inductor |")
    print("|---|---:|---:|---:|---:|")
    for name in runs:
        t = statistics.median(times[name])
        frac = statistics.median(fractions[name])
        print(f"| {name} | {t * 1000:.1f} | {frac:.2f} | {t / eager:.2f}x | {t / inductor:.2f}x |")
    print("\nRatios are step-time ratios (lower is faster).")


if __name__ == "__main__":
    main()
