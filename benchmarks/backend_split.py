"""Where a ``torch.compile(backend="tpu")`` training step's time goes, beside eager's.

    .venv/bin/python benchmarks/backend_split.py [--models resnet,resnet18,resnet50] [--rounds 15]

The ``tpu`` backend compiles the model's forward and backward into XLA programs; the
optimizer (here AdamW) runs eagerly in PyTorch on the CPU tensors, as it does in eager
mode. Each step is split into forward plus backward and ``optimizer.step()``, timed apart,
and the forward plus backward into the time inside the XLA programs (each call waited
for) and the rest: the hand-over of every input and output tensor between PyTorch and
JAX, Dynamo's guards and AOTAutograd's wrappers. Eager and the backend train their own
copies of the model in the same process, taking turns each round; medians. What this
shows is which part of a step keeps the backend from eager's time, not a headline figure
(``train_step.py`` gives those, each system in its own process).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import warnings
from pathlib import Path

import jax
import torch

import torchtpu
from torchtpu.compile import program as program_mod

sys.path.insert(0, str(Path(__file__).parent))
import train_step as bench  # noqa: E402

_inside = [0.0]


def _count_program_time() -> None:
    call = program_mod.Program.__call__

    def timed(self, arrays, seed=None):  # noqa: ANN001
        start = time.perf_counter()
        out = call(self, arrays, seed)
        jax.block_until_ready(out)
        _inside[0] += time.perf_counter() - start
        return out

    program_mod.Program.__call__ = timed


def _split(model, opt, batch) -> tuple[float, float, float]:  # noqa: ANN001
    """(forward + backward, time inside XLA programs, optimizer step) in seconds."""
    time.sleep(0.05)
    gc.disable()
    try:
        _inside[0] = 0.0
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        float(loss.detach())
        mid = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        end = time.perf_counter()
        return mid - start, _inside[0], end - mid
    finally:
        gc.enable()
        gc.collect(0)


def measure(name: str, rounds: int) -> dict[str, list[tuple[float, float, float]]]:
    factory, batch_fn = bench.MODELS[name]
    systems = {}
    for system in ("eager", "tpu backend"):
        torch.manual_seed(0)
        model, size = factory()
        model.train()
        batch, _, _ = batch_fn(size)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        run = model if system == "eager" else torch.compile(model, backend="tpu")
        systems[system] = (run, opt, batch)
    times: dict[str, list] = {s: [] for s in systems}
    for _ in range(bench.WARMUP + 1):
        for run, opt, batch in systems.values():
            _split(run, opt, batch)
    for r in range(rounds):
        order = list(systems) if r % 2 == 0 else list(reversed(systems))
        for s in order:
            times[s].append(_split(*systems[s]))
    return times


def table(name: str, times: dict[str, list]) -> str:
    med = {s: [statistics.median(t[i] for t in v) for i in range(3)] for s, v in times.items()}
    eager_step = sum(med["eager"][i] for i in (0, 2))
    lines = [
        f"### {name}",
        "",
        "| system | step (ms) | vs eager | forward + backward (ms) | in XLA programs (ms) | "
        "hand-over and wrappers (ms) | optimizer step (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s, (fb, inside, opt) in med.items():
        xla = f"{inside * 1e3:.1f}" if s != "eager" else "-"
        rest = f"{(fb - inside) * 1e3:.1f}" if s != "eager" else "-"
        lines.append(
            f"| {s} | {(fb + opt) * 1e3:.1f} | {(fb + opt) / eager_step:.2f}x | "
            f"{fb * 1e3:.1f} | {xla} | {rest} | {opt * 1e3:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet,resnet18,resnet50")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    _count_program_time()
    print(f"torchtpu {torchtpu.__version__}, torch {torch.__version__}, jax {jax.__version__}")
    for name in args.models.split(","):
        print(table(name, measure(name, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
