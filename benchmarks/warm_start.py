"""Warm starts: the first training step of a new process whose on-disk caches an earlier
process filled, against the first step of a process that started with them empty.

Each round, for each system, two fresh processes share one new, empty cache directory
(``TORCHTPU_CACHE_DIR`` and ``TORCHINDUCTOR_CACHE_DIR``): the first (cold) fills it, the
second (warm) reads it. Timed is the first training step (tracing, lowering, compiling or
loading the program, and the step itself), not the imports or building the model; the
second step is printed for scale. The systems are those of ``train_step.py``:

- ``compile_step``: XLA's persistent cache, the step-graph cache
  (``torchtpu/train/graph_cache.py``) and the lowered-program cache
  (``torchtpu/compile/lowered_cache.py``);
- ``tpu backend``: ``torch.compile(backend="tpu")``, the persistent cache (Dynamo and
  AOTAutograd run again in every process);
- ``inductor``: its FX-graph, AOTAutograd and kernel caches;
- ``eager``, which caches nothing, for scale.

Issue 14's target: compile_step's warm first step at most 0.5x its cold one.

    .venv/bin/python benchmarks/warm_start.py [--models gpt2-small,llama-medium] [--rounds 3]
        [--systems ...] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPORT = HERE / "warm_start.md"
SYSTEMS = ("eager", "inductor", "tpu backend", "compile_step")
COUNTERS = (
    "graph_cache_hits",
    "lowered_cache_hits",
    "persistent_cache_hits",
    "persistent_cache_misses",
    "trace_seconds",
    "compile_seconds",
)


def worker(model_name: str, system: str) -> None:
    """One process: build, time the first and second steps, print them as JSON."""
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(HERE))
    import torch
    import train_step

    import torchtpu

    factory, batch_fn = train_step.MODELS[model_name]
    torch.manual_seed(0)
    model, size = factory()
    model.train()
    batch, _, _ = batch_fn(size)
    step = train_step.SYSTEMS[system](model, batch, "fp32")
    first = train_step._timed(step)
    second = train_step._timed(step)
    m = torchtpu.metrics()
    print(json.dumps({"first": first, "second": second, **{k: m[k] for k in COUNTERS}}))


def _process(model_name: str, system: str, cache: str) -> dict:
    env = {
        **os.environ,
        "TORCHTPU_CACHE_DIR": os.path.join(cache, "torchtpu"),
        "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache, "inductor"),
    }
    out = subprocess.run(
        [sys.executable, __file__, "--worker", model_name, system],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{model_name} / {system} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench(model_name: str, systems: list[str], rounds: int) -> dict[str, list[tuple]]:
    runs: dict[str, list[tuple]] = {s: [] for s in systems}
    for r in range(rounds):
        for system in systems:
            with tempfile.TemporaryDirectory(prefix="warm_start_") as cache:
                time.sleep(0.5)  # let the last process's threads go
                cold = _process(model_name, system, cache)
                warm = _process(model_name, system, cache)
            runs[system].append((cold, warm))
            print(
                f"  round {r + 1} {system}: cold {cold['first']:.2f} s, warm {warm['first']:.2f} s",
                flush=True,
            )
    return runs


def table(model_name: str, runs: dict[str, list[tuple]]) -> str:
    med = {
        s: (
            statistics.median(c["first"] for c, _ in v),
            statistics.median(w["first"] for _, w in v),
            statistics.median(w["second"] for _, w in v),
            statistics.median(w["first"] / c["first"] for c, w in v),
        )
        for s, v in runs.items()
    }
    lines = [
        f"### {model_name}",
        "",
        "| system | cold first step (s) | warm first step (s) | warm / cold | "
        "warm vs eager's first step | warm vs inductor's warm | later step (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s, (cold, warm, later, ratio) in med.items():
        eager = f"{warm / med['eager'][1]:.2f}x" if "eager" in med else "-"
        ind = f"{warm / med['inductor'][1]:.2f}x" if "inductor" in med else "-"
        lines.append(
            f"| {s} | {cold:.2f} | {warm:.2f} | {ratio:.2f}x | {eager} | {ind} | {later:.3f} |"
        )
    if "compile_step" in runs:
        lines += ["", "compile_step's warm processes, per round:", ""]
        lines.append(
            "| round | step graph loaded | lowering loaded | XLA programs loaded / compiled | "
            "lowering (s) | XLA load or compile (s) | warm / cold |"
        )
        lines.append("|---:|---:|---:|---:|---:|---:|---:|")
        for i, (c, w) in enumerate(runs["compile_step"]):
            lines.append(
                f"| {i + 1} | {w['graph_cache_hits']} | {w['lowered_cache_hits']} | "
                f"{w['persistent_cache_hits']} / {w['persistent_cache_misses']} | "
                f"{w['trace_seconds']:.2f} | {w['compile_seconds']:.2f} | "
                f"{w['first'] / c['first']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="gpt2-small,llama-medium")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--write", action="store_true", help=f"write {REPORT.name}")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return
    systems = [s for s in args.systems.split(",") if s]
    sections = []
    for model_name in [m for m in args.models.split(",") if m]:
        print(f"{model_name} ...", flush=True)
        sections.append(table(model_name, bench(model_name, systems, args.rounds)))
        print(sections[-1], flush=True)
    import jax
    import torch

    text = (
        "# Warm starts\n\n"
        f"{time.strftime('%Y-%m-%d')}; {os.cpu_count()} cores; torch {torch.__version__}, "
        f"jax {jax.__version__}; medians of {args.rounds} rounds, each a cold process (empty "
        "caches) then a warm one (the caches it filled).\n\n"
        f"Command: `.venv/bin/python benchmarks/warm_start.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n\n" + "\n".join(sections)
    )
    if args.write:
        REPORT.write_text(text)
        print(f"written to {REPORT}")


if __name__ == "__main__":
    main()
