"""GPU training benchmark: bf16 training of a GPT-2 124M and a Llama 1B-class model.

    benchmarks/gpu.sh                     # install, the gpu tests, then this (one H100/H200)
    python benchmarks/gpu.py              # this benchmark alone
    python benchmarks/gpu.py --dry-run    # tiny models on the CPU, 2 steps: checks the script

Systems, each training its own copy from the same initial weights under bf16
autocast (fp32 weights and AdamW state) in a worker process of its own:

- eager: the model on CUDA, eager PyTorch;
- inductor: ``torch.compile(model)``;
- compile_step: ``torchtpu.compile_step(precision="bf16-mixed")`` with the model
  on ``tpu`` (backed by the GPU through XLA): the whole step, AdamW included, as
  one XLA program;
- tpu backend: ``torch.compile(model, backend="tpu")`` on CUDA tensors: forward
  and backward as XLA programs, handed CUDA memory by DLPack without a copy, and
  PyTorch's AdamW on CUDA.

After a first step (the compile) and warm-up steps the systems take turns, one
step each per round in a rotating order. Where the GPU's memory cannot hold every
system's copy of the model at once (estimated from the parameter count and the
batch: ``estimate_bytes``), they run in groups, each with its own eager
worker, so that every ratio to eager is measured in the same group; ratios to
inductor then go through eager's. The table gives tokens/s, MFU, peak memory
and tokens/s ratios to eager and to inductor (higher is faster).

MFU is model FLOPs (6 x matmul parameters x tokens + 12 x layers x width x
sequence x tokens, PaLM's count, attention not halved for causality) over the
GPU's dense bf16 peak from ``torchtpu/plan/chips.toml``, matched by the name
``torch.cuda.get_device_name`` gives. The run also measures torch's and XLA's
bf16 GEMM (``benchmarks/peak.py``). Results go to ``benchmarks/gpu_results.md``.
"""

from __future__ import annotations

import argparse
import datetime
import math
import multiprocessing
import os
import re
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

RESULTS = Path(__file__).with_name("gpu_results.md")
SYSTEMS = ("eager", "inductor", "compile_step", "tpu backend")
TARGETS = "torchtpu >= 1.0x inductor's tokens/s; >= 45% MFU on llama-1b (issue 14)"


# --- models ------------------------------------------------------------------------------


def _config(name: str, dry: bool):
    import transformers

    transformers.logging.set_verbosity_error()
    if name == "gpt2-124m":
        size = dict(n_layer=2, n_embd=64, n_head=2, vocab_size=256) if dry else {}
        cfg = transformers.GPT2Config(n_positions=1024, **size)  # GPT-2's own: 12 x 768, 50257
        return transformers.GPT2LMHeadModel, cfg, cfg.n_layer, cfg.n_embd
    if name == "llama-1b":
        # Llama 3.2 1B's shape (16 x 2048, GQA 32/8 heads, 8192 MLP) with a 32k vocabulary.
        size = dict(
            num_hidden_layers=16,
            hidden_size=2048,
            intermediate_size=8192,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=32000,
        )
        if dry:
            size = dict(
                num_hidden_layers=2,
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=2,
                num_key_value_heads=1,
                vocab_size=256,
            )
        cfg = transformers.LlamaConfig(max_position_embeddings=2048, **size)
        return transformers.LlamaForCausalLM, cfg, cfg.num_hidden_layers, cfg.hidden_size
    raise ValueError(f"unknown model {name!r}: use gpt2-124m or llama-1b")


# (batch, sequence) per step
BATCH = {"gpt2-124m": (8, 1024), "llama-1b": (4, 1024)}
DRY_BATCH = (2, 32)


def model_flops(model: torch.nn.Module, layers: int, width: int, batch: int, seq: int) -> float:
    """PaLM's model FLOPs per training step: 6 x (parameters in matmuls, the output
    layer included even when tied) x tokens, plus 12 x layers x width x seq per token
    for attention's two products."""
    from transformers.pytorch_utils import Conv1D

    matmul = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear | Conv1D)
    )
    tokens = batch * seq
    return 6 * matmul * tokens + 12 * layers * width * seq * tokens


# --- systems -----------------------------------------------------------------------------


def _loss(model, batch):
    return model(**batch).loss


def _build(system: str, model, batch, device: str):
    import train_step  # benchmarks/train_step.py: the same eager step the CPU tables time

    import torchtpu

    autocast = lambda: torch.autocast(device, torch.bfloat16)  # noqa: E731
    if system == "compile_step":
        model = model.to("tpu")
        on_tpu = {k: v.to("tpu") for k, v in batch.items()}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        return torchtpu.compile_step(
            lambda: train_step._train_step(model, opt, on_tpu),
            models=[model],
            optimizers=[opt],
            precision="bf16-mixed",
        ), None
    model = model.to(device)
    batch = {k: v.to(device) for k, v in batch.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if system == "inductor":
        model_fn = torch.compile(model)
    elif system == "tpu backend":
        model_fn = torch.compile(model, backend="tpu")
    else:
        model_fn = model

    def step():
        with autocast():
            return train_step._train_step(model_fn, opt, batch)

    return step, (model if system == "tpu backend" else None)


def _zero_copy(model) -> bool:
    """Whether torchtpu hands the model's first parameter to XLA without a copy."""
    from torchtpu.runtime import jax_scope, to_device

    param = next(model.parameters())
    with jax_scope() as device:
        return to_device(param, device).unsafe_buffer_pointer() == param.data_ptr()


def _memory(device: str) -> tuple[float, float]:
    """(peak bytes this process used on the device, the device's total bytes)."""
    if device == "cuda":
        used = torch.cuda.max_memory_allocated()
        import jax
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():  # else XLA never ran here: nothing to add
            for d in jax.local_devices(backend="gpu"):
                used += (d.memory_stats() or {}).get("peak_bytes_in_use", 0)
        return float(used), float(torch.cuda.mem_get_info()[1])
    # On the CPU: the process's peak resident memory (Linux reports KiB).
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024), float(total)


def _worker(conn, name: str, system: str, device: str, dry: bool, warmup: int) -> None:
    warnings.filterwarnings("ignore")
    try:
        import train_step

        cls, cfg, layers, width = _config(name, dry)
        batch, seq = DRY_BATCH if dry else BATCH[name]
        torch.manual_seed(0)  # every system starts from the same weights
        model = cls(cfg)
        model.train()
        ids = torch.randint(
            0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0)
        )
        params = sum(p.numel() for p in model.parameters())
        flops = model_flops(model, layers, width, batch, seq)
        step, handed = _build(system, model, {"input_ids": ids, "labels": ids}, device)
        first = train_step._timed(step)
        for _ in range(warmup):
            train_step._timed(step)
        zero_copy = _zero_copy(handed) if handed is not None else None
    except Exception as exc:  # a system that cannot run this model is reported, not hidden
        conn.send(("error", _brief(exc)))
        return
    conn.send(("ready", first, params, batch * seq, flops, zero_copy))
    while (request := conn.recv()) != "quit":
        try:
            if request == "step":
                conn.send(train_step._timed(step))
            elif request == "memory":
                conn.send(_memory(device))
        except Exception as exc:
            conn.send(("error", _brief(exc)))


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}"


def _peak_worker(conn, device: str, dry: bool) -> None:
    """Measure the GEMM peak in a process of its own, so its memory is freed after."""
    warnings.filterwarnings("ignore")
    import peak

    sizes = (256, 512) if dry else (4096, 8192)
    dtypes = ("fp32", "bf16") if dry else ("bf16",)
    try:
        conn.send(peak.measure(1.0 if dry else 3.0, sizes, dtypes, device=device))
    except Exception as exc:
        conn.send(_brief(exc))


# --- the run -----------------------------------------------------------------------------


def _start(ctx, name, system, device, dry, warmup):
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker, args=(child, name, system, device, dry, warmup))
    proc.start()
    return proc, parent


def _run_group(ctx, name, systems, device, dry, warmup, rounds, out):
    """Start ``systems`` together (their compiles overlap), then time them in turns."""
    started = {s: _start(ctx, name, s, device, dry, warmup) for s in systems}
    live = {}
    try:
        for s, (proc, conn) in started.items():
            reply = conn.recv()
            if reply[0] == "error":
                out["errors"][s] = reply[1]
                proc.join()
                continue
            _, out["first"][s], out["params"], out["tokens"], out["flops"], zc = reply
            out["zero_copy"][s] = zc
            live[s] = (proc, conn)
        times = {s: [] for s in live}
        order = list(live)
        for r in range(rounds):
            shift = r % len(order) if order else 0
            for s in order[shift:] + order[:shift]:
                if s not in live:
                    continue
                live[s][1].send("step")
                got = live[s][1].recv()
                if isinstance(got, tuple):
                    out["errors"][s] = got[1]
                    proc, conn = live.pop(s)
                    conn.send("quit")
                    proc.join()
                    continue
                times[s].append(got)
        for s, (_, conn) in live.items():
            conn.send("memory")
            got = conn.recv()
            if isinstance(got, tuple) and got[0] != "error":
                out["memory"][s] = got[0]
        return {s: statistics.median(t) for s, t in times.items() if t and s in live}
    finally:
        for proc, conn in live.values():
            conn.send("quit")
            proc.join()


def _groups(systems: list[str], capacity: int) -> list[list[str]]:
    """Systems in groups of at most ``capacity``; each group after the first repeats
    eager, so each system's ratio to eager is measured beside it."""
    if capacity >= len(systems) or "eager" not in systems:
        return [systems[i : i + max(capacity, 1)] for i in range(0, len(systems), max(capacity, 1))]
    others = [s for s in systems if s != "eager"]
    per = max(capacity - 1, 1)
    return [["eager", *others[i : i + per]] for i in range(0, len(others), per)]


def estimate_bytes(name: str, dry: bool) -> tuple[float, int]:
    """A system's device memory for ``name``, estimated before any worker starts: fp32
    weights, gradients and AdamW's two moments (16 bytes a parameter), autocast's bf16
    copies of the weights (2), the layers' saved activations (34 x width bytes per token
    per layer, Korthikanti et al.'s count without the attention matrix, which SDPA does
    not keep) and the logits (10 bytes per token per vocabulary entry), plus 30% for
    workspace and two allocators (torch's and XLA's). Also the parameter count."""
    cls, cfg, layers, width = _config(name, dry)
    with torch.device("meta"):
        params = sum(p.numel() for p in cls(cfg).parameters())
    batch, seq = DRY_BATCH if dry else BATCH[name]
    tokens = batch * seq
    state = 18 * params
    activations = 34 * width * layers * tokens + 10 * cfg.vocab_size * tokens
    return 1.3 * (state + activations), params


def _capacity(name, device, dry, systems, group_size) -> tuple[int, str]:
    """How many systems' workers fit on the device at once, and how that was decided."""
    if group_size:
        return group_size, f"groups of {group_size} (--group-size)"
    need, _ = estimate_bytes(name, dry)
    if device == "cuda":
        total = torch.cuda.mem_get_info()[1]
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cap = max(1, min(len(systems), math.floor(0.9 * total / need)))
    how = f"about {need / 2**30:.1f} GiB a system of {total / 2**30:.0f} GiB"
    return cap, ("all at once, " if cap == len(systems) else f"groups of {cap}, ") + how


def _empty() -> dict:
    return {
        "first": {},
        "errors": {},
        "zero_copy": {},
        "memory": {},
        "params": None,
        "tokens": None,
        "flops": None,
    }


def bench_model(ctx, name, systems, device, dry, warmup, rounds, group_size) -> dict:
    capacity, how = _capacity(name, device, dry, systems, group_size)
    groups = _groups(systems, capacity)
    out = _empty()
    out.update(model=name, groups=groups, grouping=how, median={}, vs_eager={})
    for i, group in enumerate(groups):
        medians = _run_group(ctx, name, group, device, dry, warmup, rounds, out)
        eager = medians.get("eager")
        for s, t in medians.items():
            if s == "eager" and "eager" in out["median"]:
                continue  # the first group's eager is the one reported
            out["median"][s] = t
            out["vs_eager"][s] = eager / t if eager else None
            out.setdefault("group_of", {})[s] = i + 1
    return out


def _peak_flops(device: str) -> tuple[float | None, str]:
    """The GPU's dense bf16 peak from the chip catalog, matched by its name."""
    if device != "cuda":
        return None, "no GPU"
    from torchtpu.plan.catalog import load_catalog

    name = torch.cuda.get_device_name()
    tokens = set(re.findall(r"[a-z0-9]+", name.lower()))
    for key, chip in load_catalog().items():
        if key in tokens:
            note = f"{chip.name} ({key}) in torchtpu/plan/chips.toml, matched from {name!r}"
            if "pcie" in tokens or "nvl" in tokens:
                note += "; the catalog lists the SXM part, so MFU here is against a higher peak"
            return chip.peak("bf16").value, note
    return None, f"{name!r} is not in torchtpu/plan/chips.toml: MFU not given"


def format_tables(results: list[dict], peak: float | None, peak_note: str) -> str:
    lines = []
    for res in results:
        med = res["median"]
        params = f"{res['params'] / 1e6:,.1f}M params, " if res["params"] else ""
        lines.append(
            f"\n### {res['model']} ({params}{res['tokens']} tokens/step; {res['grouping']})\n"
        )
        lines.append(
            "| system | first step (s) | step (ms) | tokens/s | MFU | peak memory (GiB) | "
            "vs eager | vs inductor | zero-copy | group |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
        vs = res["vs_eager"]
        inductor = vs.get("inductor")
        for s, t in med.items():
            mfu = res["flops"] / t / peak if peak and res["flops"] else None
            mem = res["memory"].get(s)
            zc = res["zero_copy"].get(s)
            cells = [
                s,
                f"{res['first'][s]:.1f}",
                f"{t * 1e3:.1f}",
                f"{res['tokens'] / t:,.0f}",
                f"{mfu:.1%}" if mfu is not None else "n/a",
                f"{mem / 2**30:.2f}" if mem else "n/a",
                f"{vs[s]:.2f}x" if vs.get(s) else "n/a",
                f"{vs[s] / inductor:.2f}x" if vs.get(s) and inductor else "n/a",
                {True: "yes", False: "NO", None: ""}[zc],
                str(res["group_of"][s]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        for s, err in res["errors"].items():
            lines.append(f"| {s} | failed: {err} | | | | | | | | |")
    mfu = f"PaLM's model FLOPs over {peak / 1e12:,.3g} TFLOP/s, {peak_note}" if peak else peak_note
    lines.append(
        "\nRatios are tokens/s ratios (higher is faster), each system's to eager measured in "
        "its own group; ratios to inductor go through eager's. First steps include the compile "
        "and overlap with the other systems' of the group. Peak memory: torch's peak allocation "
        "plus XLA's peak bytes in use on the GPU (on the CPU, the process's peak RSS). "
        f"MFU: {mfu}."
    )
    return "\n".join(lines)


def _targets(results: list[dict], peak: float | None, dry: bool) -> list[str]:
    lines = [
        f"Targets: {TARGETS}." + (" Dry run: tiny models on the CPU, not a measure." if dry else "")
    ]
    for res in results:
        vs, ind = res["vs_eager"], res["vs_eager"].get("inductor")
        for s in ("compile_step", "tpu backend"):
            if s not in res["median"]:
                continue
            parts = []
            if ind and vs.get(s):
                ratio = vs[s] / ind
                parts.append(
                    f"{ratio:.2f}x inductor's tokens/s ({'met' if ratio >= 1 else 'not met'})"
                )
            if peak and res["flops"] and res["model"] == "llama-1b":
                mfu = res["flops"] / res["median"][s] / peak
                parts.append(f"MFU {mfu:.1%} ({'met' if mfu >= 0.45 else 'not met'})")
            if parts:
                lines.append(f"- {res['model']} {s}: " + "; ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny models on the CPU, 2 steps")
    p.add_argument("--models", default="gpt2-124m,llama-1b")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"from {', '.join(SYSTEMS)}")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 10; dry 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 3; dry 1)")
    p.add_argument(
        "--group-size", type=int, default=0, help="systems alive at once (default: fit memory)"
    )
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    args = p.parse_args(argv)
    dry = args.dry_run
    rounds = args.rounds or (2 if dry else 10)
    warmup = args.warmup if args.warmup is not None else (1 if dry else 3)
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}: use {', '.join(SYSTEMS)}")
    start = time.perf_counter()
    if dry:
        device = "cpu"
        os.environ["TORCHTPU_PLATFORM"] = "cpu"
        print(
            "dry run: tiny models on the CPU, CPU tensors where the real run uses CUDA ones; "
            "no GPU peak from the catalog (MFU is against the CPU's measured GEMM peak); "
            f"nothing written to {RESULTS.name}",
            flush=True,
        )
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu.py: torch sees no CUDA GPU (use --dry-run on a machine without one)")
        device = "cuda"
        os.environ["TORCHTPU_PLATFORM"] = "gpu"
    # JAX and torch share the GPU: JAX must not take 75% of it up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # Fresh compile caches, so first steps are cold compiles (the workers inherit these).
    fresh = tempfile.mkdtemp(prefix="gpu_bench_caches_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(fresh, "inductor")
    os.environ["TORCHTPU_CACHE_DIR"] = os.path.join(fresh, "torchtpu")
    ctx = multiprocessing.get_context("spawn")

    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_peak_worker, args=(child, device, dry))
    proc.start()
    gemm = parent.recv()
    proc.join()
    if dry:
        peak = gemm.value("bf16") if not isinstance(gemm, str) else None
        peak_note = "the CPU's best measured GEMM (dry run)"
    else:
        peak, peak_note = _peak_flops(device)
    unit, unit_name = (1e9, "GFLOP/s") if dry else (1e12, "TFLOP/s")
    measured = (
        gemm.header(unit, unit_name) if not isinstance(gemm, str) else f"not measured: {gemm}"
    )
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)"
    print(f"device: {name}; {measured}", flush=True)
    print(f"MFU against: {peak / unit if peak else 0:,.1f} {unit_name}, {peak_note}", flush=True)

    results = []
    for model in [m for m in args.models.split(",") if m]:
        print(f"benchmarking {model} ...", flush=True)
        results.append(
            bench_model(ctx, model, systems, device, dry, warmup, rounds, args.group_size)
        )
        print(format_tables(results[-1:], peak, peak_note), flush=True)
    targets = _targets(results, peak, dry)
    print("\n" + "\n".join(targets))
    elapsed = time.perf_counter() - start
    print(f"\nbenchmark took {elapsed:.0f} s", flush=True)
    if dry or args.no_write:
        return
    import jax

    import torchtpu

    text = (
        f"# GPU training benchmark\n\n{datetime.date.today().isoformat()}; {name}; "
        f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"jax {jax.__version__}, torchtpu {torchtpu.__version__}; bf16 autocast, AdamW; "
        f"{warmup} warm-up steps, {rounds} interleaved rounds; empty compile caches at the "
        f"start; {elapsed:.0f} s.\n\n{measured}.\n\n"
        f"Command: `benchmarks/gpu.sh` (`python benchmarks/gpu.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`)\n"
        + format_tables(results, peak, peak_note)
        + "\n\n"
        + "\n".join(targets)
        + "\n"
    )
    RESULTS.write_text(text)
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
