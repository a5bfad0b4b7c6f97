"""Unchanged-script benchmark: the char-level GPT trainer (tests/scripts/chargpt.py).

    .venv/bin/python benchmarks/scripts.py
    .venv/bin/python benchmarks/scripts.py --rounds 3 --iters 8

The same file runs as people run it: `python chargpt.py --compile 0` (eager
PyTorch on the CPU), `python chargpt.py` (its default torch.compile: inductor on
the CPU) and `torchtpu run chargpt.py` (the tpu device: its torch.compile
compiles with the tpu backend, its fused AdamW and GradScaler run on the device).
The model is the issue's size (6 layers, 384 wide, context 256, batch 12, no
gradient accumulation). Each system runs in a fresh process per round, the
systems taking turns; each process reports its median step time after two
warm-up steps, and the table gives the median over rounds.

The script chooses its precision as nanoGPT does: bfloat16 autocast where the
accelerator has bf16 (`torch.cuda.is_bf16_supported()`, true under torchtpu),
float32 on the CPU. `--dtype float32` forces float32 everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "chargpt.py"


def _text(path: Path) -> None:
    words = "the quick brown fox jumps over the lazy dog while a cat naps in the sun".split()
    path.write_text(" ".join(words[(i * 7) % len(words)] for i in range(60000)))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--systems", default="eager,inductor,torchtpu run")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="scripts_bench_"))
    data = work / "input.txt"
    _text(data)
    model = ["--n_layer", "6", "--n_embd", "384", "--n_head", "6", "--block_size", "256"]
    common = [str(SCRIPT), "--data", str(data), "--out", str(work / "ckpt.pt"), *model]
    common += ["--batch_size", "12", "--grad_accum", "1", "--max_iters", str(args.iters)]
    common += ["--dtype", args.dtype]
    commands = {
        "eager": [sys.executable, *common, "--compile", "0"],
        "inductor": [sys.executable, *common, "--compile", "1"],
        "torchtpu run": [sys.executable, "-m", "torchtpu.cli", "run", *common],
    }
    systems = [s for s in args.systems.split(",") if s]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor")}
    env["TORCHTPU_CACHE_DIR"] = str(work / "torchtpu")
    times: dict[str, list[float]] = {s: [] for s in systems}
    for r in range(args.rounds):
        order = systems[r % len(systems) :] + systems[: r % len(systems)]
        for name in order:
            done = subprocess.run(commands[name], capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
            times[name].append(json.loads(line.removeprefix("RESULT "))["step_s"])
            print(f"round {r + 1}: {name} {times[name][-1]:.3f} s/step", flush=True)
    med = {s: statistics.median(t) for s, t in times.items()}
    eager, inductor = med.get("eager"), med.get("inductor")
    print(
        f"\nchar GPT 6x384, context 256, batch 12 ({12 * 256} tokens/step); dtype {args.dtype}; "
        f"{args.rounds} rounds, median of steps 3-{args.iters} per run\n"
    )
    print("| system | step (s) | tokens/s | vs eager | vs inductor |")
    print("|---|---:|---:|---:|---:|")
    for name, t in med.items():
        ve = f"{t / eager:.2f}x" if eager else "n/a"
        vi = f"{t / inductor:.2f}x" if inductor else "n/a"
        print(f"| {name} | {t:.3f} | {12 * 256 / t:,.0f} | {ve} | {vi} |")
    print("\nRatios are step-time ratios (lower is faster).")


if __name__ == "__main__":
    main()
