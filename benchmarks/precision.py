"""Held-out loss of the demo language model under each compile_step precision.

    .venv/bin/python benchmarks/precision.py            # about 10 minutes on 2 CPU cores
    .venv/bin/python benchmarks/precision.py --steps 100 --no-write

Trains the demo's byte-level GPT (examples/gpt.py) on the Python stdlib from the
same initial weights and the same batches with ``torchtpu.compile_step`` in
fp32, bf16-mixed, bf16-true, and bf16-true with stochastic rounding, then
reports each held-out loss (evaluated in float32 from the trained weights) and
its gap to fp32. Also reports the step program's memory from XLA's memory
analysis. Writes benchmarks/precision.md.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
from pathlib import Path

import jax
import torch

import torchtpu

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from gpt import GPT, GPTConfig  # noqa: E402
from stdlib_text import batches, stdlib_corpus  # noqa: E402

RESULTS = Path(__file__).with_name("precision.md")
RUNS = [
    ("fp32", "fp32", False),
    ("bf16-mixed", "bf16-mixed", False),
    ("bf16-true", "bf16-true", False),
    ("bf16-true + stochastic rounding", "bf16-true", True),
]


def train(args, precision: str, rounding: bool, train_data, val_data) -> dict:
    torch.manual_seed(args.seed)
    cfg = GPTConfig(context=args.context, layers=args.layers, width=args.width, heads=args.heads)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    def step(x, y):
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    compiled = torchtpu.compile_step(step, precision=precision, stochastic_rounding=rounding)
    data = batches(train_data, args.batch, args.context, torch.Generator().manual_seed(1))
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = compiled(*next(data))
    float(loss)
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    compiled.sync()
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    held = batches(val_data, args.batch, args.context, gen)
    with torch.no_grad():
        losses = [model(*next(held)).item() for _ in range(args.eval_batches)]
    return {
        "held_out": sum(losses) / len(losses),
        "train": float(loss),
        "seconds": seconds,
        "memory": mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        + mem.temp_size_in_bytes
        - mem.alias_size_in_bytes,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    train_data, val_data, _ = stdlib_corpus()
    results = {}
    for label, precision, rounding in RUNS:
        print(f"training with {label} ...", flush=True)
        results[label] = train(args, precision, rounding, train_data, val_data)
        print(f"  held-out loss {results[label]['held_out']:.4f}", flush=True)
    base = results["fp32"]["held_out"]
    true_gap = results["bf16-true"]["held_out"] - base
    lines = [
        "| precision | held-out loss (nats/byte) | vs fp32 | train loss | step program memory "
        "| time for the steps |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, r in results.items():
        lines.append(
            f"| {label} | {r['held_out']:.4f} | {(r['held_out'] - base) / base:+.2%} | "
            f"{r['train']:.4f} | {r['memory'] / 2**20:.1f} MiB | {r['seconds']:.0f} s |"
        )
    sr_gap = results["bf16-true + stochastic rounding"]["held_out"] - base
    closed = 1 - sr_gap / true_gap if true_gap > 0 else math.nan
    summary = (
        f"\nbf16-mixed is {abs(results['bf16-mixed']['held_out'] - base) / base:.2%} from fp32; "
        f"stochastic rounding closes {closed:.0%} of the gap round-to-nearest bf16-true leaves "
        f"({true_gap:+.4f} -> {sr_gap:+.4f} nats/byte)."
    )
    table = "\n".join(lines) + "\n" + summary
    print(table)
    if not args.no_write:
        RESULTS.write_text(
            f"# Precision study: the demo language model under compile_step\n\n"
            f"{datetime.date.today().isoformat()}; torch {torch.__version__}, jax "
            f"{jax.__version__}, XLA device {jax.devices()[0]}. Byte-level GPT, "
            f"{args.layers} layers x {args.width} wide, context {args.context}, batch "
            f"{args.batch}, AdamW lr {args.lr}, {args.steps} steps, same weights and batches "
            f"for every run; held-out loss in float32 over {args.eval_batches} batches of "
            f"held-out stdlib files.\n\nCommand: `.venv/bin/python benchmarks/precision.py "
            f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n\n{table}\n"
        )
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
