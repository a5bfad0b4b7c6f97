"""Mixture-of-experts benchmark: a Mixtral-style MoE block's training step, and the
grouped matmul its experts run on.

    .venv/bin/python benchmarks/moe.py                     # 2048 tokens, hidden 512
    .venv/bin/python benchmarks/moe.py --rounds 10 --write # and write benchmarks/moe.md

The block is Hugging Face's ``MixtralSparseMoeBlock`` (8 experts, top-2; the
router, a sort by expert, two grouped matmuls per expert MLP, the weighted
combine). Its training step (forward, backward, AdamW on a squared-error loss)
runs under eager PyTorch, inductor (``torch.compile``'s default backend),
``torchtpu.compile_step`` and ``torch.compile(backend="tpu")``, each system in a
worker process of its own, taking turns one step per round (benchmarks/train_step.py
runs them: the same workers, warm-up and timing as the model benchmark).

The grouped matmul is timed alone as well: the tokens of one up projection
((2 x tokens, hidden) rows in 8 groups of the block's own routing, times
(8, hidden, 2 x intermediate) weights) as torchtpu lowers ``aten._grouped_mm``,
against the dense GEMM rate of the same machine measured in the same run
(benchmarks/peak.py) and eager PyTorch's ``torch._grouped_mm``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import torch

import torchtpu

sys.path.insert(0, str(Path(__file__).parent))
import peak as peak_gemm  # noqa: E402  (benchmarks/peak.py: the measured GEMM peak)
import train_step  # noqa: E402  (its systems, workers and timing)

RESULTS = Path(__file__).with_name("moe.md")
SYSTEMS = ["eager", "inductor", "compile_step", "tpu backend"]
EXPERTS, TOP_K = 8, 2
# The worker processes are spawned: they read the sizes from the environment.
_SIZES = "TORCHTPU_MOE_BENCH"


# --- the block -----------------------------------------------------------------------


def _config(hidden: int, intermediate: int):
    t = train_step._transformers()
    config = t.MixtralConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_local_experts=EXPERTS,
        num_experts_per_tok=TOP_K,
        router_jitter_noise=0.0,
    )
    # What a Mixtral model sets up for its blocks: the sort-based grouped-matmul experts
    # (a bare block would get the per-expert Python loop, with data-dependent sizes).
    config._experts_implementation = "grouped_mm"
    return config


class MoEBlock(torch.nn.Module):
    """Mixtral's sparse MoE block with a squared-error loss, called as the model
    benchmark calls its models: ``block(**batch).loss``."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

        self.block = MixtralSparseMoeBlock(_config(hidden, intermediate))
        for p in self.parameters():
            torch.nn.init.normal_(p, std=hidden**-0.5)

    def forward(self, hidden_states: torch.Tensor, labels: torch.Tensor):
        from transformers.modeling_outputs import CausalLMOutput

        out = self.block(hidden_states)
        return CausalLMOutput(loss=(out - labels).square().mean(), logits=out)


def _sizes() -> tuple[int, int, int]:
    tokens, hidden, intermediate = os.environ[_SIZES].split(",")
    return int(tokens), int(hidden), int(intermediate)


def _model():
    tokens, hidden, intermediate = _sizes()
    return MoEBlock(hidden, intermediate), tokens


def _batch(tokens: int):
    hidden = _sizes()[1]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, tokens, hidden, generator=gen)
    y = torch.randn(1, tokens, hidden, generator=gen)
    return {"hidden_states": x, "labels": y}, tokens, "tokens"


# Registered here and, in each spawned worker, again as this module is re-imported.
train_step.MODELS["moe-block"] = (_model, _batch)


# --- the grouped matmul alone ------------------------------------------------------


def _routing_sizes(tokens: int, hidden: int, intermediate: int) -> torch.Tensor:
    """The group sizes the block's own router gives the benchmark's tokens."""
    torch.manual_seed(0)
    model = MoEBlock(hidden, intermediate)
    batch, _, _ = _batch(tokens)
    with torch.no_grad():
        _, _, index = model.block.gate(batch["hidden_states"].reshape(-1, hidden))
    return torch.bincount(index.reshape(-1), minlength=EXPERTS)


def _best_rates(runs: dict, flops: float, seconds: float) -> dict:
    """Each run's best FLOP/s, the runs taking turns for about ``seconds``. Each timing
    repeats a run for at least 20 ms and starts after a pause (XLA's and torch's
    thread pools would otherwise spin on each other's cores) and an untimed run
    (waking a thread pool from its sleep costs up to tens of milliseconds)."""
    reps = {}
    for name, run in runs.items():
        run()  # compile, allocate
        start = time.perf_counter()
        run()
        reps[name] = max(1, int(0.02 / max(time.perf_counter() - start, 1e-9)) + 1)
    best = dict.fromkeys(runs, float("inf"))
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or any(t == float("inf") for t in best.values()):
        for name, run in runs.items():
            time.sleep(0.1)
            run()
            start = time.perf_counter()
            for _ in range(reps[name]):
                run()
            best[name] = min(best[name], (time.perf_counter() - start) / reps[name])
    return {name: flops / t for name, t in best.items()}


def grouped_rates(tokens: int, hidden: int, intermediate: int, seconds: float) -> dict:
    """FLOP/s of the up projection's grouped matmul: torchtpu's lowering of
    ``aten._grouped_mm`` (in one jitted program, as in a step) and eager PyTorch's."""
    from torchtpu.lower.ops.grouped import grouped_mm
    from torchtpu.runtime import jax_scope

    sizes = _routing_sizes(tokens, hidden, intermediate)
    rows, n = int(sizes.sum()), 2 * intermediate
    offs = torch.cumsum(sizes, 0).to(torch.int32)
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(rows, hidden, generator=gen)
    b = torch.randn(EXPERTS, hidden, n, generator=gen)
    flops = 2 * rows * hidden * n
    with jax_scope() as device:
        ja, jb, joffs = (jax.device_put(jnp.asarray(t.numpy()), device) for t in (a, b, offs))
        program = jax.jit(lambda a, b, offs: grouped_mm(a, b, offs))
        program(ja, jb, joffs).block_until_ready()

    def xla() -> None:
        with jax_scope():
            program(ja, jb, joffs).block_until_ready()

    def eager() -> None:
        torch._grouped_mm(a, b, offs)

    rates = _best_rates({"torchtpu (XLA)": xla, "eager torch._grouped_mm": eager}, flops, seconds)
    return {"rates": rates, "shape": (rows, hidden, n), "sizes": sizes.tolist()}


# --- report --------------------------------------------------------------------------


def step_table(result: dict) -> str:
    med, first = result["median"], result["first"]
    eager, inductor = med.get("eager"), med.get("inductor")
    lines = [
        "| system | first step (s) | step (ms) | tokens/s | vs eager | vs inductor |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, t in med.items():
        cells = [
            name,
            f"{first[name]:.2f}",
            f"{t * 1e3:.1f}",
            f"{result['units'] / t:,.0f}",
            f"{t / eager:.2f}x" if eager else "n/a",
            f"{t / inductor:.2f}x" if inductor else "n/a",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for name, err in result["errors"].items():
        lines.append(f"| {name} | failed: {err} | | | | |")
    return "\n".join(lines)


def grouped_table(grouped: dict, gemm: peak_gemm.Peak) -> str:
    dense = gemm.best(dtype="fp32")
    rows, k, n = grouped["shape"]
    lines = [
        f"Grouped matmul ({rows} x {k}) rows in {EXPERTS} groups (sizes {grouped['sizes']}) "
        f"times ({EXPERTS}, {k}, {n}), fp32, against the best dense fp32 GEMM measured in "
        f"this run: {dense.flops / 1e9:,.1f} GFLOP/s ({dense.library}, "
        f"{dense.n} x {dense.n}).\n",
        "| grouped matmul | GFLOP/s | of the dense GEMM rate |",
        "|---|---:|---:|",
    ]
    for name, rate in grouped["rates"].items():
        lines.append(f"| {name} | {rate / 1e9:,.1f} | {rate / dense.flops:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8, help="interleaved timed steps per system")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"from {', '.join(SYSTEMS)}")
    p.add_argument("--peak-seconds", type=float, default=4.0, help="time spent on each rate")
    p.add_argument("--write", action="store_true", help=f"write {RESULTS.name}")
    args = p.parse_args(argv)
    os.environ[_SIZES] = f"{args.tokens},{args.hidden},{args.intermediate}"
    gemm = peak_gemm.measure(seconds=args.peak_seconds)
    print(f"machine: {train_step.machine()}; {gemm.header()}", flush=True)
    grouped = grouped_rates(args.tokens, args.hidden, args.intermediate, args.peak_seconds)
    print(grouped_table(grouped, gemm), flush=True)
    systems = [s for s in args.systems.split(",") if s]
    result = train_step.bench_model("moe-block", systems, args.rounds, "fp32")
    steps = step_table(result)
    print(steps, flush=True)
    if args.write:
        command = " ".join(argv if argv is not None else sys.argv[1:])
        RESULTS.write_text(
            f"# MoE benchmark\n\n{datetime.date.today().isoformat()}; {train_step.machine()}; "
            f"python {sys.version.split()[0]}, torch {torch.__version__}, jax "
            f"{jax.__version__}, torchtpu {torchtpu.__version__}.\n\n"
            f"Command: `.venv/bin/python benchmarks/moe.py {command}`\n\n"
            f"## Training step of a Mixtral MoE block\n\n{EXPERTS} experts, top-{TOP_K}, "
            f"{args.tokens} tokens, hidden {args.hidden}, intermediate {args.intermediate}, "
            f"fp32, AdamW; medians of {args.rounds} interleaved rounds, each system in its "
            f"own process.\n\n{steps}\n\n## Grouped matmul\n\n"
            f"{grouped_table(grouped, gemm)}\n\n## Measured peak\n\n{gemm.table()}\n"
        )
        print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
