"""The main job: train a byte-level GPT on the Python standard library with
``torch.compile(model, backend="tpu")``, then compare it with eager PyTorch.

    make demo                      # defaults: about 3 minutes on 2 CPU cores
    make demo ARGS="--steps 50 --layers 2 --width 128 --platform cpu"

The training loop is ordinary PyTorch; the one torchtpu-specific line is the
``torch.compile`` call. The loss, learning rate, step time, tokens/s and
torchtpu's compile and transfer counts go to a TensorBoard run under
``--logdir`` (``torchtpu.monitor``); the command to view it is printed at the
end. At the end it also prints a table measured in this run:
eager's and torchtpu's steady step times (interleaved rounds), the first-step
(compile) time from a cold compilation cache, and the first-step time of a
second process that starts warm from the persistent cache.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpt import GPT, GPTConfig  # noqa: E402
from stdlib_text import batches, stdlib_corpus  # noqa: E402

import torchtpu  # noqa: E402  (metrics and options only; the backend needs no import)
import torchtpu.monitor  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="training steps")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=128, help="bytes per sequence")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--platform",
        choices=["cpu", "gpu", "tpu"],
        default=None,
        help="XLA platform (default: TPU, else GPU, else CPU)",
    )
    p.add_argument(
        "--compare-rounds",
        type=int,
        default=10,
        help="interleaved eager/torchtpu step pairs timed at the end",
    )
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--sample-bytes", type=int, default=200)
    p.add_argument(
        "--logdir",
        default="runs/lm_demo",
        help="TensorBoard directory; each run writes a subdirectory named by its start time",
    )
    p.add_argument("--log-every", type=int, default=10, help="steps between TensorBoard points")
    p.add_argument("--warm-start-probe", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[GPT, torch.optim.Optimizer, object]:
    torch.manual_seed(args.seed)
    cfg = GPTConfig(context=args.context, layers=args.layers, width=args.width, heads=args.heads)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    warmup = max(args.steps // 10, 1)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(args.steps - warmup, 1), 1.0)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def train_step(model, opt, sched, x, y) -> float:
    loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if sched is not None:
        sched.step()
    return loss.item()


def timed(fn, *a) -> tuple[float, float]:
    start = time.perf_counter()
    out = fn(*a)
    return out, time.perf_counter() - start


def warm_start_probe(args: argparse.Namespace) -> None:
    """Run in a second process: the first compiled step, with the cache already filled."""
    model, opt, sched = build(args)
    compiled = torch.compile(model, backend="tpu")
    train, _, _ = stdlib_corpus()
    x, y = next(batches(train, args.batch, args.context, torch.Generator().manual_seed(1)))
    _, first = timed(train_step, compiled, opt, sched, x, y)
    m = torchtpu.metrics()
    print(
        json.dumps(
            {
                "first_step": first,
                "xla_compile": m["compile_seconds"],
                "disk_hits": m["persistent_cache_hits"],
            }
        )
    )


def held_out_loss(compiled, val: torch.Tensor, args: argparse.Namespace) -> float:
    gen = torch.Generator().manual_seed(1234)
    it = batches(val, args.batch, args.context, gen)
    with torch.no_grad():
        losses = [compiled(*next(it)).item() for _ in range(args.eval_batches)]
    return sum(losses) / len(losses)


def sample(compiled, prompt: torch.Tensor, n: int, context: int) -> str:
    gen = torch.Generator().manual_seed(7)
    ctx = prompt[-context:].long().unsqueeze(0)
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = compiled(ctx[:, -context:])[0, -1]
            probs = torch.softmax(logits / 0.8, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen)
            out.append(int(nxt))
            ctx = torch.cat([ctx[:, 1:], nxt.view(1, 1)], dim=1)
    return bytes(out).decode("utf-8", errors="replace")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.platform:
        torchtpu.set_options(platform=args.platform)
    if args.warm_start_probe:
        warm_start_probe(args)
        return

    # A fresh cache directory, so the compile time below is a cold one.
    cache_dir = tempfile.mkdtemp(prefix="torchtpu-demo-cache-")
    torchtpu.set_options(cache_dir=cache_dir)
    train, val, held_names = stdlib_corpus()
    model, opt, sched = build(args)
    eager_model = copy.deepcopy(model)
    eager_opt = torch.optim.AdamW(eager_model.parameters(), lr=args.lr, weight_decay=0.1)
    params = sum(p.numel() for p in model.parameters())
    device = torchtpu.runtime.default_device()
    print(
        f"torchtpu demo: byte-level GPT, {params / 1e6:.2f}M parameters "
        f"({args.layers} layers x {args.width} wide, context {args.context}, batch {args.batch})"
    )
    print(
        f"data: {len(train) / 1e6:.2f} MB of Python stdlib source for training, "
        f"{len(val) / 1e6:.2f} MB held out ({len(held_names)} files)"
    )
    print(f"XLA device: {device.platform} ({device.device_kind})")

    compiled = torch.compile(model, backend="tpu")  # the one torchtpu line
    data = batches(train, args.batch, args.context, torch.Generator().manual_seed(args.seed))
    tokens = args.batch * args.context

    run_dir = Path(args.logdir) / time.strftime("%Y%m%d-%H%M%S")
    tb = torchtpu.monitor.TensorBoard(run_dir, every=args.log_every, tokens_per_step=tokens)
    lr = sched.get_last_lr()[0]
    x, y = next(data)
    loss, first_step = timed(train_step, compiled, opt, sched, x, y)
    tb.log(0, loss=loss, lr=lr)
    cold_xla = torchtpu.metrics()["compile_seconds"]
    bar = torchtpu.monitor.progress(
        range(1, args.steps),
        monitor=tb,  # shows the last logged loss and tokens/s
        desc="train",
        mininterval=0.5 if sys.stderr.isatty() else 10.0,
    )
    for step in bar:
        lr = sched.get_last_lr()[0]
        x, y = next(data)
        loss = train_step(compiled, opt, sched, x, y)
        tb.log(step, loss=loss, lr=lr)
    bar.close()
    tb.close()

    model.eval()
    val_loss = held_out_loss(compiled, val, args)
    print(
        f"held-out loss: {val_loss:.4f} nats/byte ({val_loss / math.log(2):.3f} bits/byte) "
        f"after {args.steps} steps; train loss {loss:.4f}"
    )
    prompt = val[: args.context]
    text = sample(compiled, prompt, args.sample_bytes, args.context)
    print("sample (prompt: first bytes of a held-out file):")
    print("  " + prompt.numpy().tobytes().decode("utf-8", "replace")[-80:].replace("\n", "\n  "))
    print("  >>> " + text.replace("\n", "\n  "))
    model.train()

    # Steady step times, interleaved so that machine noise hits both alike.
    eager_times, tpu_times = [], []
    eager_step = lambda: train_step(eager_model, eager_opt, None, x, y)  # noqa: E731
    tpu_step = lambda: train_step(compiled, opt, None, x, y)  # noqa: E731
    for fn in (eager_step, eager_step):
        fn()
    for r in range(args.compare_rounds):
        order = [(eager_step, eager_times), (tpu_step, tpu_times)]
        for fn, sink in order if r % 2 == 0 else reversed(order):
            sink.append(timed(fn)[1])
    eager_s, tpu_s = statistics.median(eager_times), statistics.median(tpu_times)

    env = {**os.environ, "TORCHTPU_CACHE_DIR": cache_dir}
    probe_args = [
        sys.executable,
        __file__,
        "--warm-start-probe",
        "--layers",
        str(args.layers),
        "--width",
        str(args.width),
        "--heads",
        str(args.heads),
        "--context",
        str(args.context),
        "--batch",
        str(args.batch),
        "--seed",
        str(args.seed),
    ]
    if args.platform:
        probe_args += ["--platform", args.platform]
    probe = subprocess.run(probe_args, capture_output=True, text=True, env=env, check=True)
    warm = json.loads(probe.stdout.strip().splitlines()[-1])
    shutil.rmtree(cache_dir, ignore_errors=True)

    rows = [
        (
            "eager PyTorch step (median)",
            f"{eager_s * 1e3:8.1f} ms",
            f"{tokens / eager_s:10,.0f}",
            "1.00x",
        ),
        (
            "torchtpu step (median)",
            f"{tpu_s * 1e3:8.1f} ms",
            f"{tokens / tpu_s:10,.0f}",
            f"{eager_s / tpu_s:.2f}x",
        ),
        ("first step, cold cache", f"{first_step:8.2f} s", "", f"XLA {cold_xla:.2f} s"),
        (
            "first step, warm start",
            f"{warm['first_step']:8.2f} s",
            "",
            f"XLA {warm['xla_compile']:.2f} s, {warm['disk_hits']} disk hits",
        ),
    ]
    print()
    print(f"{'measured in this run':<30} {'time':>11} {'tokens/s':>10}  vs eager / notes")
    print("-" * 78)
    for name, t, tps, note in rows:
        print(f"{name:<30} {t:>11} {tps:>10}  {note}")
    print(
        f"held-out loss {val_loss:.4f}; compile time = first step - steady step = "
        f"{first_step - tpu_s:.2f} s"
    )
    torchtpu.report()
    print(f"\nTensorBoard run {run_dir}; view it with:")
    print(f"  tensorboard --logdir {shlex.quote(str(Path(args.logdir).resolve()))}")


if __name__ == "__main__":
    main()
