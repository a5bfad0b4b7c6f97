"""Device-mode overhead: microseconds per op, and a cached training step against torch.compile.

    .venv/bin/python benchmarks/dispatch.py            # both tables
    .venv/bin/python benchmarks/dispatch.py --ops 4000 --steps 20

Per op: a chain of small elementwise ops (``y = y * 1.0001 + x`` on a 64x64
float32 tensor) under torch CPU eager, torchtpu's strict eager mode (each op
its own program, dispatched asynchronously) and fused mode, where recording
is timed apart from running the cached program.

Per step: one AdamW training step of a small GPT-2 (random weights) under
eager PyTorch on the CPU, ``torch.compile(model, backend="tpu")`` and device
mode (``model.to("tpu")``, fused, after the programs are cached). Times are
medians; both run in this process on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import torchtpu


def _chain(x: torch.Tensor, y: torch.Tensor, n_ops: int) -> torch.Tensor:
    for _ in range(n_ops // 2):
        y = y * 1.0001 + x
    return y


def per_op(n_ops: int, repeats: int) -> list[tuple[str, float]]:
    x_cpu = torch.randn(64, 64)
    rows = []

    def best(fn) -> float:  # noqa: ANN001
        fn()
        return min(_timed(fn) for _ in range(repeats)) / n_ops * 1e6

    rows.append(("torch CPU eager", best(lambda: _chain(x_cpu, x_cpu, n_ops))))

    x = x_cpu.to("tpu")
    torchtpu.set_device_mode("eager")

    def strict() -> None:
        _chain(x, x, n_ops).cpu()

    rows.append(("torchtpu strict eager (async, incl. final wait)", best(strict)))
    torchtpu.set_device_mode("fused")

    def record_only() -> None:
        _chain(x, x, n_ops)
        torchtpu.sync()

    def record_time() -> float:
        start = time.perf_counter()
        out = _chain(x, x, n_ops)
        elapsed = time.perf_counter() - start
        torchtpu.sync()
        out.cpu()
        return elapsed

    record_only()
    rows.append(
        ("torchtpu fused: recording", min(record_time() for _ in range(repeats)) / n_ops * 1e6)
    )
    rows.append(("torchtpu fused: record + cached run", best(lambda: _chain(x, x, n_ops).cpu())))
    return rows


def _timed(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def per_step(steps: int) -> list[tuple[str, float]]:
    """Median step time (ms) per system; systems take turns, one step per round."""
    import transformers

    config = transformers.GPT2Config(
        n_layer=2,
        n_head=4,
        n_embd=128,
        vocab_size=512,
        n_positions=128,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
    )
    ids = torch.randint(0, config.vocab_size, (8, 64))

    def system(forward_of, device: str):  # noqa: ANN001, ANN202
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config).to(device)
        forward = forward_of(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        batch = ids.to(device)

        def step() -> None:
            loss = forward(batch, labels=batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            loss.item()

        return step

    systems = {
        "eager PyTorch (CPU)": system(lambda m: m, "cpu"),
        "torch.compile (inductor)": system(torch.compile, "cpu"),
        'torch.compile(backend="tpu")': system(lambda m: torch.compile(m, backend="tpu"), "cpu"),
        "device mode, fused (cached)": system(lambda m: m, "tpu"),
    }
    for step in systems.values():
        for _ in range(3):  # compile and warm up
            step()
    times: dict[str, list[float]] = {name: [] for name in systems}
    names = list(systems)
    for r in range(steps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            time.sleep(0.05)  # let the other runtime's worker threads go idle
            times[name].append(_timed(systems[name]))
    return [(name, statistics.median(t) * 1e3) for name, t in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=2000, help="ops per timed chain")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--skip-step", action="store_true", help="only the per-op table")
    args = parser.parse_args()

    print(f"per op ({args.ops} elementwise ops on a 64x64 float32 tensor, best of {args.repeats})")
    for name, us in per_op(args.ops, args.repeats):
        print(f"  {name:<50} {us:8.1f} us/op")
    if args.skip_step:
        return
    print(f"\ntraining step (GPT-2 2x128, batch 8x64, AdamW; median of {args.steps} interleaved)")
    rows = dict(per_step(args.steps))
    eager, inductor = rows["eager PyTorch (CPU)"], rows["torch.compile (inductor)"]
    tpu = rows['torch.compile(backend="tpu")']
    print(f"  {'system':<32} {'ms':>8} {'vs eager':>9} {'vs inductor':>12} {'vs tpu backend':>15}")
    for name, ms in rows.items():
        print(f"  {name:<32} {ms:8.1f} {ms / eager:8.2f}x {ms / inductor:11.2f}x {ms / tpu:14.2f}x")
    metrics = torchtpu.metrics()
    print(
        f"\ndevice mode: {metrics['fused_compiles']} fused compiles, "
        f"{metrics['fused_cache_hits']} cache hits, syncs {dict(metrics['syncs'])}"
    )


if __name__ == "__main__":
    main()
