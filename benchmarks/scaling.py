"""Scale-out benchmark: each strategy's compiled step on 8 virtual CPU devices.

    .venv/bin/python benchmarks/scaling.py                     # GPT-2 and Llama, all strategies
    .venv/bin/python benchmarks/scaling.py --models llama --rounds 3

For each model and strategy it prints:

- the steady step time, against eager PyTorch and inductor on one CPU, all
  measured in the same run and interleaved (one step each per round, in a
  rotating order). The 8 virtual devices share this machine's cores, so this
  is NOT a scaling measurement: it shows what the partitioned program costs
  here, nothing about real chips;
- the compiles (one per strategy is the target) and per-device memory from
  XLA's ``memory_analysis`` (the step's state: parameters, gradients, optimizer
  state; and its temporaries);
- the collectives read from the compiled HLO: the bytes one device sends per
  step on a ring, against the ideal: data parallel 2(N-1)/N x the weight
  bytes, FSDP (resharding in the backward) 3(N-1)/N x the weight bytes, tensor
  parallel 4 all-reduces of the activations per layer (2 forward, 2 backward),
  2(N-1)/N each, and the hybrids as those compose (see ``ideal``);
- the time per step those collectives take on a real interconnect, as the
  planner prices them (``torchtpu.plan.model.collective_seconds``: bytes over
  the catalog's link bandwidth, per topology), for 8 and 256 chips. This is
  the communication alone; it is not overlapped with compute here.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import copy  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import train_step as bench  # noqa: E402  (the model builders of the step benchmark)

import torchtpu  # noqa: E402
from torchtpu.plan.catalog import chip as catalog_chip  # noqa: E402
from torchtpu.plan.model import Collective, collective_seconds  # noqa: E402
from torchtpu.shard import FSDP, DataParallel, TensorParallel, collectives  # noqa: E402

warnings.filterwarnings("ignore")

STRATEGIES = {
    "dp": DataParallel,
    "fsdp": FSDP,
    "tp": TensorParallel,
    "fsdp x tp": lambda: FSDP(model=2),
    "dp x fsdp": lambda: FSDP(data=2),
    "dp x tp": lambda: TensorParallel(data=2),
}
CHIPS = [("tpu-v5p", 8), ("tpu-v5p", 256), ("h100", 8)]


def systems(base, batch) -> dict:
    out = {}
    for name in ["eager", "inductor", "one device", *STRATEGIES]:
        model = copy.deepcopy(base)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        if name == "eager":
            out[name] = (lambda m=model, o=opt: bench._train_step(m, o, batch)), None
        elif name == "inductor":
            compiled = torch.compile(model)
            out[name] = (lambda m=compiled, o=opt: bench._train_step(m, o, batch)), None
        else:
            strategy = STRATEGIES[name]() if name in STRATEGIES else None
            step = torchtpu.compile_step(
                lambda b, m=model, o=opt: bench._train_step(m, o, b),
                models=[model],
                optimizers=[opt],
                strategy=strategy,
            )
            out[name] = (lambda s=step: s(batch)), step
    return out


def ideal(
    name: str, weights: int, activation: int, layers: int, strategy: Any, model: Any
) -> float | None:
    """The bytes one device sends per step on a ring, at best, for strategy ``name``.

    With ``ring(k) = (k-1)/k`` over an axis of ``k`` devices, ``W`` the weight bytes,
    ``W_t`` one tensor-parallel group's share of them (a parameter split over the
    ``model`` axis counts 1/t of its bytes), ``A`` the activation bytes of the whole
    batch and ``L`` the layers:

    - dp: ``2 ring(d) W``; fsdp: ``3 ring(f) W`` (gathered in the forward and again
      in the backward, gradients reduce-scattered);
    - tp: ``L * 4 * 2 ring(t) A`` (two all-reduces of the activations in the
      forward, two in the backward, per layer);
    - dp x fsdp: ``3 ring(f) W + 2 ring(d) W / f`` (each gradient shard is then
      all-reduced across the data axis);
    - dp x tp: ``2 ring(d) W_t + L * 4 * 2 ring(t) A / d``;
    - fsdp x tp: ``3 ring(f) W_t + L * 4 * 2 ring(t) A / f``.
    """
    axes = dict(strategy.mesh.shape)
    d, f, t = axes.get("data", 1), axes.get("fsdp", 1), axes.get("model", 1)

    def ring(k: int) -> float:
        return (k - 1) / k

    def tp(a: float) -> float:
        return layers * 4 * 2 * ring(t) * a

    if t > 1:
        named = [(n_, tuple(p.shape)) for n_, p in model.named_parameters()]
        plan = strategy.plan(named, check=False)
        split = {n_ for n_, _ in named if "model" in str(plan[n_].spec)}
        w_t = sum(p.numel() * 4 / (t if n_ in split else 1) for n_, p in model.named_parameters())
    if name == "dp":
        return 2 * ring(d) * weights
    if name == "fsdp":
        return 3 * ring(f) * weights
    if name == "tp":
        return tp(activation)
    if name == "dp x fsdp":
        return 3 * ring(f) * weights + 2 * ring(d) * weights / f
    if name == "dp x tp":
        return 2 * ring(d) * w_t + tp(activation / d)
    if name == "fsdp x tp":
        return 3 * ring(f) * w_t + tp(activation / f)
    return None


def _sync(value):
    return float(value) if isinstance(value, torch.Tensor) else value


def measure(model_name: str, args) -> list[dict]:
    factory, batch_factory = bench.MODELS[model_name]
    torch.manual_seed(0)
    base, vocab = factory()
    batch, _, _ = batch_factory(vocab)
    batch = {k: v.repeat(args.batch // v.shape[0], 1) for k, v in batch.items()}
    runs = systems(base, batch)
    rows = {}
    for name, (run, _) in runs.items():
        torchtpu.reset_metrics()
        start = time.perf_counter()
        _sync(run())
        first = time.perf_counter() - start
        for _ in range(2):
            _sync(run())
        rows[name] = {"first": first, "times": [], "compiles": torchtpu.metrics()["compiles"]}
    names = list(runs)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            _sync(runs[name][0]())
            rows[name]["times"].append(time.perf_counter() - start)
    weights = sum(p.numel() * 4 for p in base.parameters())
    config = base.config
    width = getattr(config, "n_embd", None) or config.hidden_size
    layers = getattr(config, "n_layer", None) or config.num_hidden_layers
    tokens = args.batch * batch["input_ids"].shape[1]
    activation = tokens * width * 4
    out = []
    for name, (_, step) in runs.items():
        row = {"model": model_name, "system": name, **rows[name]}
        row["step"] = statistics.median(row["times"])
        if step is not None:
            program = step.executor.programs[-1]
            memory = program.memory_analysis()
            row["state_mib"] = memory.argument_size_in_bytes / 2**20
            row["temp_mib"] = memory.temp_size_in_bytes / 2**20
            n = jax.device_count() if step.strategy is not None else 1
            found = collectives(program.compiled_text(), n) if n > 1 else []
            row["wire"] = sum(c.wire_bytes for c in found)
            row["kinds"] = ", ".join(
                f"{sum(1 for c in found if c.kind == k)} {k}"
                for k in sorted({c.kind for c in found})
            )
            row["ideal"] = (
                ideal(name, weights, activation, layers, step.strategy, base) if n > 1 else None
            )
            row["predicted"] = {
                f"{c} x{k}": sum(
                    collective_seconds(
                        Collective(x.kind, x.bytes, k if x.group_size == n else x.group_size),
                        catalog_chip(c),
                    )[0]
                    for x in found
                )
                for c, k in CHIPS
            }
        out.append(row)
    return out


def table(rows: list[dict]) -> str:
    eager = {r["model"]: r["step"] for r in rows if r["system"] == "eager"}
    inductor = {r["model"]: r["step"] for r in rows if r["system"] == "inductor"}
    chips = [f"{c} x{k}" for c, k in CHIPS]
    head = ["model", "system", "step (ms)", "vs eager", "vs inductor", "compiles"]
    head += ["state MiB/dev", "temp MiB/dev", "collectives", "sent MiB/dev", "ideal MiB", "/ideal"]
    head += [f"comm ms {c}" for c in chips]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["model"], r["system"], f"{r['step'] * 1e3:.1f}"]
        for baseline in (eager, inductor):
            cells.append(f"{baseline[r['model']] / r['step']:.2f}x")
        cells.append(str(r["compiles"]) if "state_mib" in r else "-")
        if "state_mib" in r:
            cells += [f"{r['state_mib']:.2f}", f"{r['temp_mib']:.2f}", r["kinds"] or "none"]
            cells.append(f"{r['wire'] / 2**20:.2f}")
            ideal_bytes = r["ideal"]
            cells.append(f"{ideal_bytes / 2**20:.2f}" if ideal_bytes else "-")
            cells.append(f"{r['wire'] / ideal_bytes:.2f}" if ideal_bytes else "-")
            cells += [f"{r['predicted'][c] * 1e3:.3f}" if r["wire"] else "0" for c in chips]
        else:
            cells += ["-"] * (6 + len(chips))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="gpt2-small,llama-small")
    parser.add_argument("--batch", type=int, default=16, help="global batch (rows of 128 tokens)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if jax.device_count() < 8:
        sys.exit("scaling.py needs 8 devices: start it with XLA_FLAGS unset or =8 devices")
    devices = f"{jax.device_count()} virtual {jax.devices()[0].platform} devices"
    print(f"{devices} on {os.cpu_count()} cores: step times are not a scaling measurement")
    for name in args.models.split(","):
        print(table(measure(name, args)), flush=True)  # each model as soon as it is measured


if __name__ == "__main__":
    main()
