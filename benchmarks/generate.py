"""Generation benchmark: HF `model.generate` tokens/s and compiles, against eager PyTorch.

    .venv/bin/python benchmarks/generate.py
    .venv/bin/python benchmarks/generate.py --new 256 --layers 4 --width 256 --rounds 3

One GPT-2-style model (random weights) generates greedily from the same prompt
under eager PyTorch on the CPU and on the tpu device (device mode, and with its
forward under torch.compile(backend="tpu")), taking turns, several rounds; the
table gives median tokens/s, ratios to eager and the programs each torchtpu
system compiled for its first call and for all later ones (which, for the same
cache bucket, is none).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
import transformers

import torchtpu

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--new", type=int, default=128, help="new tokens per call")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    cfg = transformers.GPT2Config(
        n_layer=args.layers,
        n_embd=args.width,
        n_head=max(args.width // 64, 1),
        vocab_size=8192,
        n_positions=1024,
    )
    torch.manual_seed(0)
    eager = transformers.GPT2LMHeadModel(cfg).eval()
    device = copy.deepcopy(eager).to("tpu")
    compiled = copy.deepcopy(eager).to("tpu")
    compiled.forward = torch.compile(compiled.forward, backend="tpu")
    prompt = torch.randint(0, 8192, (args.batch, 16), generator=torch.Generator().manual_seed(1))
    systems = {
        "eager (CPU)": (eager, prompt),
        "tpu device mode": (device, prompt.to("tpu")),
        "tpu, torch.compile'd forward": (compiled, prompt.to("tpu")),
    }

    def run(model, ids):
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=args.new, do_sample=False, pad_token_id=0)
        return out.cpu()

    first, compiles, outputs = {}, {}, {}
    for name, (model, ids) in systems.items():
        before = torchtpu.metrics()["compiles"]
        start = time.perf_counter()
        outputs[name] = run(model, ids)
        first[name] = time.perf_counter() - start
        compiles[name] = [torchtpu.metrics()["compiles"] - before, 0]
    times = {name: [] for name in systems}
    for _ in range(args.rounds):
        for name, (model, ids) in systems.items():
            before = torchtpu.metrics()["compiles"]
            start = time.perf_counter()
            run(model, ids)
            times[name].append(time.perf_counter() - start)
            compiles[name][1] += torchtpu.metrics()["compiles"] - before
    same = all(torch.equal(o, outputs["eager (CPU)"]) for o in outputs.values())
    tokens = args.new * args.batch
    base = statistics.median(times["eager (CPU)"])
    print(
        f"\nGPT-2 {args.layers}x{args.width}, batch {args.batch}, {args.new} new tokens, "
        f"greedy; {args.rounds} interleaved rounds; tokens equal to eager: {same}\n"
    )
    print("| system | first call (s) | tokens/s | vs eager | compiles: first call | later calls |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in systems:
        t = statistics.median(times[name])
        c0, c1 = compiles[name]
        first_c, later_c = ("n/a", "n/a") if name.startswith("eager") else (c0, c1)
        print(
            f"| {name} | {first[name]:.2f} | {tokens / t:,.0f} | {base / t:.2f}x | "
            f"{first_c} | {later_c} |"
        )
    print("\nvs eager: tokens/s ratio (higher is faster).")


if __name__ == "__main__":
    main()
