"""How well the planner's step model predicts: on this machine, and against published runs.

    .venv/bin/python benchmarks/plan_accuracy.py                  # both parts
    .venv/bin/python benchmarks/plan_accuracy.py --part published # no compiling, instant
    .venv/bin/python benchmarks/plan_accuracy.py --part local --workloads mlp,decode

(a) local: five workloads are compiled and planned on the chip ``local``
(measured here), then run; the table puts the predicted step time, split by op
class (the per-operation rooflines of ``torchtpu/plan/hlo.py``), next to the
median measured one. Target: within 25%.

(b) published: results from their stated configurations (sources below),
predicted from the catalog. Their programs cannot be compiled here (a 405B
model), so these workloads are described by numbers: 6 * params * tokens
FLOPs, ``torchtpu.plan.analytic_workload``, labelled as such; the planner
itself never uses that formula for a real model. Target: within 30%; where a
prediction misses, the table says which term is off.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore")

import torchtpu  # noqa: E402
import torchtpu.plan  # noqa: E402
from torchtpu.plan import Collective, analytic_workload, chip, decode_estimate, estimate  # noqa: E402
from torchtpu.plan.model import pipeline_bubble  # noqa: E402

# --- (a) local workloads ---------------------------------------------------------------


def _step_for(model: torch.nn.Module, loss_of):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    @torchtpu.compile_step
    def step(batch):
        loss = loss_of(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return step


def mlp():
    model = torch.nn.Sequential(
        torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 1024)
    )
    batch = {"x": torch.randn(512, 1024), "y": torch.randn(512, 1024)}
    loss = lambda m, b: torch.nn.functional.mse_loss(m(b["x"]), b["y"])  # noqa: E731
    return _step_for(model, loss), batch


def hf(factory, batch_factory):
    def build():
        model, vocab = factory()
        batch = batch_factory(vocab)[0]
        return _step_for(model, lambda m, b: m(**b).loss), batch

    return build


class DecodeLM(torch.nn.Module):
    """One decode step of a small transformer: one new token per sequence attending
    over a KV cache of ``context`` tokens (the cache is an input, read every step)."""

    def __init__(self, layers=6, width=1024, heads=16, vocab=8192) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.ModuleList(torch.nn.Linear(width, 3 * width) for _ in range(layers))
        self.out = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(layers))
        self.up = torch.nn.ModuleList(torch.nn.Linear(width, 4 * width) for _ in range(layers))
        self.down = torch.nn.ModuleList(torch.nn.Linear(4 * width, width) for _ in range(layers))
        self.head = torch.nn.Linear(width, vocab, bias=False)

    def forward(self, x, k_cache, v_cache):
        b, _, d = x.shape
        h = self.heads
        for i in range(len(self.qkv)):
            q = self.qkv[i](x)[..., :d].view(b, 1, h, d // h).transpose(1, 2)
            att = torch.nn.functional.scaled_dot_product_attention(q, k_cache[i], v_cache[i])
            x = x + self.out[i](att.transpose(1, 2).reshape(b, 1, d))
            x = x + self.down[i](torch.nn.functional.gelu(self.up[i](x)))
        return self.head(x)


def decode_step():
    model = DecodeLM().eval()
    b, context, layers, heads, dh = 8, 1024, 6, 16, 64
    x = torch.randn(b, 1, 1024)
    k = torch.randn(layers, b, heads, context, dh)
    v = torch.randn(layers, b, heads, context, dh)
    return model, (x, k, v)


def _train_step_factories():
    import train_step as ts  # benchmarks/train_step.py: the same model configurations

    return {
        "gpt2-small": hf(lambda: ts.gpt2(6, 512), lambda v: ts.lm_batch(v, 4, 128)),
        "llama-small": hf(lambda: ts.llama(6, 512), lambda v: ts.lm_batch(v, 4, 128)),
        "resnet": hf(ts.resnet, lambda c: ts.image_batch(c, 16, 64)),
    }


def _time(fn, steps: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def local_rows(names: list[str], steps: int) -> list[tuple]:
    builders = {"mlp": mlp, **_train_step_factories()}
    rows = []
    for name in names:
        if name == "decode":
            model, inputs = decode_step()
            with torch.no_grad():
                row = torchtpu.plan(model, *inputs, chips=["local"]).row("local")
                compiled = torch.compile(model, backend="tpu")
                measured = _time(lambda: compiled(*inputs).sum().item(), steps)  # noqa: B023
        else:
            step, batch = builders[name]()
            step(batch)
            row = torchtpu.plan(step, chips=["local"]).row("local")
            measured = _time(lambda: float(step(batch)), steps)  # noqa: B023
        rows.append((name, row, measured))
        print(f"  {name}: predicted {row['step_s'] * 1e3:.1f} ms, measured {measured * 1e3:.1f} ms")
    return rows


def print_local(rows: list[tuple]) -> None:
    print("\n(a) predicted vs measured step time on the local chip (target +-25%)\n")
    print("| workload | matmul | matvec | conv | other | predicted | measured | error | bound |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, r, measured in rows:
        err = r["step_s"] / measured - 1
        parts = " | ".join(
            f"{r['by_class'][k] * 1e3:.1f} ms" if r["by_class"].get(k) else "-"
            for k in ("matmul", "matvec", "conv", "other")
        )
        print(
            f"| {name} | {parts} | {r['step_s'] * 1e3:.1f} ms | {measured * 1e3:.1f} ms | "
            f"{100 * err:+.0f}% | {r['bound']} |"
        )


# --- (b) published results -------------------------------------------------------------

LLAMA3_TABLE4 = "Llama 3 paper, arXiv:2407.21783, Table 4 (2024-07)"
MAXTEXT_V5P = "AI-Hypercomputer/maxtext src/maxtext/configs/tpu/v5p/README.md (@e591f30)"
TORCHTITAN = "pytorch/torchtitan benchmarks/llama3_h100_202412_torchtitan.md (2024-12)"
AA_SERVING = "Artificial Analysis, 2025-11-27 (x.com/ArtificialAnlys/status/1993878037226557519)"


def llama3_405b(gpus: int, dp: int, published_mfu: float) -> tuple:
    """Llama 3.1 405B pre-training, BF16, TP8 PP16, 16M tokens a step, seq 8192.

    Pipeline bubble: Table 4's batch per DP rank (16M tokens / DP / 8192 = 32 sequences
    on 8,192 GPUs, 16 on 16,384) as that many microbatches of one sequence (an
    assumption: the paper does not state the microbatch size), over 16 stages; the
    paper's schedule is interleaved but does not state its virtual stages, so v = 1,
    the non-interleaved bubble (p-1)/m, an upper bound.

    The DP all-reduce is priced as the hierarchical ring (8 ranks on NVLink, the
    rest over the NICs); a real DP group has one GPU per node and crosses the NICs
    throughout, but either way it hides under the 2/3 of compute that is backward.

    Per chip: 6 N T / gpus FLOPs. Communication: the tensor-parallel all-reduces
    (2 forward + 2 backward per layer, each of the stage's tokens x d_model bf16,
    over the 8 GPUs of an NVLink domain, on the critical path) and the DP gradient
    all-reduce of the chip's 1/128 of the weights (hidden under the backward)."""
    params, layers, d_model, tokens = 405e9, 126, 16384, 16 * 2**20
    tp, pp = 8, 16
    tokens_per_replica = tokens / dp
    tp_bytes = tokens_per_replica * d_model * 2
    tp_comm = tuple(Collective("all-reduce", tp_bytes, tp) for _ in range(4 * layers // pp))
    w = analytic_workload(params=params, tokens=tokens, chips=gpus, extra_comm=tp_comm)
    w = _with_grads(w, params / (tp * pp) * 2)
    e = estimate(w, chip("h100"), dp, "dp")
    microbatches = int(tokens / dp / 8192)
    bubble = pipeline_bubble(pp, microbatches)
    return (
        f"Llama 3.1 405B, {gpus} H100 (TP8 PP16 DP{dp})",
        "MFU",
        published_mfu,
        e.mfu / (1 + bubble),
        f"bubble (p-1)/m = 15/{microbatches} = {bubble:.2f} of the step (v = 1: an upper "
        "bound); non-matmul time is not in the analytic workload; exposed TP all-reduce "
        f"{e.exposed_comm_s:.2f} s of {e.step_s:.2f} s",
        LLAMA3_TABLE4,
    )


def _with_grads(w, grad_bytes: float):
    return dataclasses.replace(w, grad_bytes=grad_bytes)


def maxtext_32b() -> tuple:
    """MaxText 32B dense on v5p-128 (64 chips), FSDP over all of them. The per-device
    batch is not in the README we read: 8 x 2048 tokens assumed (compute-bound either
    way: FSDP hides its gathers once a chip has > C/W ~ 765 tokens)."""
    params, chips_n, tokens = 32e9, 64, 64 * 8 * 2048
    w = analytic_workload(params=params, tokens=tokens, chips=chips_n)
    w = _with_grads(w, params * 2)  # FSDP gathers the whole bf16 weights
    e = estimate(w, chip("tpu-v5p"), chips_n, "fsdp")
    return (
        "MaxText 32B dense, v5p-128 (64 chips, FSDP)",
        "MFU",
        0.715,
        e.mfu,
        "compute-bound: MFU = the catalog's v5p matmul efficiency (an estimate, EST-TPU, "
        "itself read from MaxText's MFUs: not an independent check)",
        MAXTEXT_V5P,
    )


def torchtitan_8b() -> tuple:
    """torchtitan Llama 3.1 8B, FSDP on 8 H100, torch.compile, BF16: 6,667 tok/s/GPU,
    local batch 1 x 8192 tokens. FLOPs: 6 N per token plus causal attention's
    6 * layers * seq * d_model per token (forward + backward, half of 12 for causal)."""
    params, layers, seq, d_model = 8.03e9, 32, 8192, 4096
    gpus = 8
    tokens = gpus * seq
    w = analytic_workload(params=params, tokens=tokens, chips=gpus)
    attention = 6 * layers * seq * d_model * tokens / gpus
    w = dataclasses.replace(w, flops=w.flops + attention, grad_bytes=params * 2)
    e = estimate(w, chip("h100"), gpus, "fsdp")
    tok_s = w.tokens / e.step_s
    return (
        "torchtitan Llama 3.1 8B, 8 H100 (FSDP + compile)",
        "tok/s/GPU",
        6667,
        tok_s,
        "the roofline's compute term at MAMF efficiency (80%) is the large-matmul bound; "
        "torchtitan reaches 33-39% MFU: norms, softmax, elementwise (memory-bound ops the "
        "analytic workload has no bytes for) and FSDP exposure are missing",
        TORCHTITAN,
    )


def serving_70b() -> list[tuple]:
    """Llama 3.3 70B at 30 output tok/s per query, cost per 1M input + 1M output tokens.
    Assumed: 8 chips per replica, bf16 weights, KV cache 80 layers x 8 KV heads x 128
    x 2 (K, V) x 2 bytes = 327,680 B/token, mean context 1,500 tokens (1k in, 1k out)."""
    kv = 80 * 8 * 128 * 2 * 2
    rows = []
    for key, published in (("h100", 1.06), ("tpu-v6e", 5.13)):
        d = decode_estimate(
            chip(key),
            params=70.6e9,
            kv_bytes_per_token=kv,
            context=1500,
            tokens_per_s_per_query=30,
            n=8,
        )
        rows.append(
            (
                f"Llama 3.3 70B serving at 30 tok/s, 8x {key}",
                "$/1M in+out",
                published,
                d.cost_per_1m_output,
                f"batch {d.batch} ({d.bound}-bound): the roofline batch a perfect server "
                "reaches; vLLM's measured throughput at that speed is lower, more so on TPU",
                AA_SERVING,
            )
        )
    return rows


def print_published() -> None:
    rows = [
        llama3_405b(8192, 64, 0.43),
        llama3_405b(16384, 128, 0.41),
        maxtext_32b(),
        torchtitan_8b(),
        *serving_70b(),
    ]
    print("\n(b) published results from their stated configurations (target +-30%)\n")
    print("| result | figure | published | predicted | error | what is off | source |")
    print("|---|---|---|---|---|---|---|")
    for name, figure, published, predicted, note, source in rows:
        err = predicted / published - 1
        ok = "" if abs(err) <= 0.30 else " (miss)"
        print(
            f"| {name} | {figure} | {_fmt(published, figure)} | {_fmt(predicted, figure)} | "
            f"{100 * err:+.0f}%{ok} | {note} | {source} |"
        )
    h100, v6e = serving_70b()
    print(
        f"\nserving ratio v6e / H100: published {5.13 / 1.06:.2f}x, "
        f"predicted {v6e[3] / h100[3]:.2f}x"
    )


def _fmt(x: float, figure: str) -> str:
    if figure == "MFU":
        return f"{100 * x:.1f}%"
    if figure.startswith("$"):
        return f"${x:.2f}"
    return f"{x:,.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["local", "published", "both"], default="both")
    p.add_argument("--workloads", default="mlp,gpt2-small,llama-small,resnet,decode")
    p.add_argument("--steps", type=int, default=5, help="timed steps per local workload")
    args = p.parse_args(argv)
    if args.part in {"published", "both"}:
        print_published()
    if args.part in {"local", "both"}:
        rows = local_rows(args.workloads.split(","), args.steps)
        print_local(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
