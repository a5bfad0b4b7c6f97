"""The 8-device side of the sharding tests, run in a subprocess (XLA_FLAGS must be
set before JAX starts). Prints one JSON line per result.

``python tests/shard/_spmd.py gpt2:one,dp,fsdp llama:tp checks``: train small
GPT-2 and Llama configs for 5 AdamW steps under each strategy (losses, final
parameters, memory, compiles); ``checks``: the error messages, ``describe``,
the collectives of a data-parallel step, and sharded initialisation from meta.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import torch  # noqa: E402
import transformers  # noqa: E402

import torchtpu  # noqa: E402
from torchtpu.shard import FSDP, DataParallel, TensorParallel  # noqa: E402

transformers.logging.set_verbosity_error()
VOCAB, BATCH, SEQ, STEPS = 128, 8, 16, 5

STRATEGIES = {
    "one": lambda: None,
    "dp": DataParallel,
    "fsdp": FSDP,
    "tp": TensorParallel,
    "fsdp_tp": lambda: FSDP(model=2),
    "dp_fsdp": lambda: FSDP(data=2),
    "dp_tp": lambda: TensorParallel(data=2),
}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "gpt2":
        cfg = transformers.GPT2Config(
            n_layer=2, n_embd=64, n_head=8, vocab_size=VOCAB, n_positions=SEQ,
            resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
        )  # fmt: skip
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=8,
        num_key_value_heads=8, vocab_size=VOCAB, max_position_embeddings=SEQ,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg)


def train(base: torch.nn.Module, strategy: object) -> dict:
    model = copy.deepcopy(base)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    compiled = torchtpu.compile_step(_lm_step_for(model, opt), strategy=strategy)
    gen = torch.Generator().manual_seed(1)
    losses = []
    torchtpu.reset_metrics()
    for _ in range(STEPS):
        ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
        losses.append(float(compiled(ids)))
    compiles = torchtpu.metrics()["compiles"]
    memory = compiled.memory_analysis()
    state = model.state_dict()  # syncs the trained values into torch
    return {
        "losses": losses,
        "argument_bytes": memory.argument_size_in_bytes,
        "param_bytes": sum(p.numel() * 4 for p in model.parameters()),
        "layer_bytes": sum(p.numel() * 4 for p in _layer(model).parameters()),
        "batch_bytes": BATCH * SEQ * 8,
        "compiles": compiles,
        "params": {k: v.double().sum().item() for k, v in state.items()},
    }


def _layer(model: torch.nn.Module) -> torch.nn.Module:
    blocks = model.transformer.h if hasattr(model, "transformer") else model.model.layers
    return blocks[0]


# --- checks ---------------------------------------------------------------------------


def _bf16_runs() -> dict:
    """bf16-mixed AdamW steps of the MLP on one device, with FSDP and with tensor parallel:
    the CPU's row-major layouts for bf16 products (linalg.row_major) inside SPMD programs."""
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    runs = {}
    tp = TensorParallel(rules=[(r"0\.weight$", ("model", None)), (r"2\.weight$", (None, "model"))])
    for key, strategy in (("one", None), ("fsdp", FSDP()), ("tp", tp)):
        model = _mlp()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        kw = {} if strategy is None else {"strategy": strategy}
        step = torchtpu.compile_step(_step_for(model, opt), precision="bf16-mixed", **kw)
        runs[key] = [float(step(x)) for _ in range(3)]
    return runs


def _error(fn) -> str:
    try:
        fn()
    except Exception as exc:  # the message is what the test reads
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64)
    )  # fmt: skip


def _lm_step_for(model, opt):
    """A language model's training step on token ids (they are the labels too)."""

    def step(ids):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return step


def _step_for(model, opt):
    def step(x):
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return step


def checks() -> dict:
    out: dict = {}
    odd = torch.nn.Sequential(torch.nn.Linear(64, 12), torch.nn.Linear(12, 64))
    tp = torchtpu.Strategy({"model": 8}, rules=[(r"0\.weight$", ("model", None))])
    out["not_divisible"] = _error(lambda: tp.plan(list(_shapes(odd))))
    nothing = torchtpu.Strategy({"model": 8}, rules=[(r"attn\.q\.weight$", ("model",))])
    out["matches_nothing"] = _error(lambda: nothing.plan(list(_shapes(odd))))
    out["bad_axis"] = _error(lambda: torchtpu.Strategy({"data": 8}, rules=[("w", ("tp",))]))
    out["too_large"] = _error(lambda: torchtpu.Strategy({"data": 4, "model": 4}))
    out["auto_rules"] = _error(lambda: TensorParallel().plan(list(_shapes(odd))))
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dp = torchtpu.compile_step(_step_for(model, opt), strategy=DataParallel())
    out["batch_not_divisible"] = _error(lambda: dp(torch.randn(12, 64)))

    # Data parallel: one all-reduce of the gradients, 2(N-1)/N of their bytes per device.
    dp(torch.randn(16, 64))
    found = torchtpu.shard.collectives(dp.executor.programs[-1].compiled_text(), 8)
    weights = sum(p.numel() * 4 for p in model.parameters())
    out["dp_wire_over_weights"] = sum(c.wire_bytes for c in found) / weights
    out["dp_kinds"] = sorted({c.kind for c in found})

    # Tensor parallel (Llama): the four all-reduces of the activations per layer that
    # Megatron needs, no more: the q/k/v and gate/up input gradients are each summed
    # before their one all-reduce (torchtpu/shard/reassociate.py).
    llama = build("llama")
    opt = torch.optim.AdamW(llama.parameters(), lr=1e-3)

    tp_step = torchtpu.compile_step(_lm_step_for(llama, opt), strategy=TensorParallel())
    tp_step(torch.randint(0, VOCAB, (BATCH, SEQ)))
    found = torchtpu.shard.collectives(tp_step.executor.programs[-1].compiled_text(), 8)
    activation = BATCH * SEQ * llama.config.hidden_size * 4
    megatron = llama.config.num_hidden_layers * 4 * 2 * 7 / 8 * activation
    out["tp_wire_over_megatron"] = sum(c.wire_bytes for c in found) / megatron
    out["tp_kinds"] = sorted({c.kind for c in found})

    gpt2 = build("gpt2")
    opt = torch.optim.AdamW(gpt2.parameters(), lr=1e-3)

    strategy = FSDP(model=2)
    step = torchtpu.compile_step(_lm_step_for(gpt2, opt), strategy=strategy)
    step(torch.randint(0, VOCAB, (BATCH, SEQ)))
    with open(os.devnull, "w") as sink:
        description = strategy.describe(gpt2, step, file=sink)
    out["describe"] = description.table()
    out["describe_rows"] = [
        [r.name, list(r.spec), list(r.shard_shape), r.xla_in, r.xla_out] for r in description.rows
    ]
    out["materialize"] = _materialize()
    out["torch_compile"] = _torch_compile()
    out["loader"] = _loader()
    out["checkpoint"] = _checkpoint()
    out["bf16"] = _bf16_runs()
    return out


def _checkpoint() -> dict:
    """A sharded model on tpu saved mid-run with torchtpu.checkpoint and restored
    into a fresh one continues as the run that never stopped."""
    import tempfile

    def run(model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return opt, torchtpu.compile_step(_step_for(model, opt), strategy=strategy)

    strategy = FSDP()
    xs = [torch.randn(16, 256, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    torch.manual_seed(0)
    with torchtpu.shard.meta_init():
        model = Tower()
    torchtpu.shard.materialize(model, strategy)
    opt, step = run(model)
    straight = [float(step(x)) for x in xs[:2]]
    directory = Path(tempfile.mkdtemp()) / "ckpt"
    torchtpu.checkpoint.save(directory, {"model": model, "optim": opt})
    straight += [float(step(x)) for x in xs[2:]]
    with torchtpu.shard.meta_init():
        fresh = Tower()
    torchtpu.shard.materialize(fresh, strategy)
    fresh_opt, fresh_step = run(fresh)
    torchtpu.checkpoint.load(directory, {"model": fresh, "optim": fresh_opt})
    resumed = [float(fresh_step(x)) for x in xs[2:]]
    from torchtpu.device.tensor import device_array

    layout = str(device_array(fresh.layers[0].weight, "test").sharding.spec)
    return {"straight": straight, "resumed": resumed, "layout": layout}


def _torch_compile() -> dict:
    """torch.compile(options={"strategy": s}) against eager: losses and the layout of
    the forward program's first weight, for a CPU model; and for a model on tpu
    ("fsdp_tpu"), trained with AdamW in device mode, where its parameters and
    optimizer state live."""
    from torchtpu.device.tensor import device_array

    base, x = _mlp(), torch.randn(32, 64)
    out: dict = {}
    for key in ["eager", "dp", "fsdp", "eager_adam", "fsdp_tpu"]:
        model = copy.deepcopy(base)
        on_tpu = key == "fsdp_tpu"
        if on_tpu:
            model.to("tpu")
        adam = key in ("eager_adam", "fsdp_tpu")
        opt_cls = torch.optim.AdamW if adam else torch.optim.SGD
        opt = opt_cls(model.parameters(), lr=0.01 if adam else 0.1)
        run = model
        if not key.startswith("eager"):
            torch._dynamo.reset()
            torchtpu.clear_program_cache()
            options = {"strategy": STRATEGIES[key.removesuffix("_tpu")]()}
            run = torch.compile(model, backend="tpu", options=options)
        losses = []
        for _ in range(3):
            loss = run(x.to("tpu") if on_tpu else x).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        out[key] = {"losses": losses}
        if not key.startswith("eager"):
            forward = [p for p in torchtpu.compile.programs() if p.name == "forward"][-1]
            shardings = forward.compiled.input_shardings[0]
            out[key]["first_input_spec"] = str(shardings[0].spec)
        if on_tpu:
            weight = next(model.parameters())
            state = opt.state[weight]
            out[key]["held_specs"] = [
                str(device_array(t, "test").sharding.spec)
                for t in (weight, state["exp_avg"], state["exp_avg_sq"])
            ]
    return out


def _loader() -> dict:
    """DeviceLoader(strategy=s) hands compile_step batches already split over the mesh."""
    data = torch.utils.data.TensorDataset(torch.randn(64, 64))
    batches = torch.utils.data.DataLoader(data, batch_size=16)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    strategy = FSDP()
    step = torchtpu.compile_step(_step_for(model, opt), strategy=strategy)
    from torchtpu.device.tensor import device_array

    losses, specs = [], []
    torchtpu.reset_metrics()
    for (x,) in torchtpu.data.DeviceLoader(batches, strategy=strategy):
        specs.append(str(device_array(x, "test").sharding.spec))
        losses.append(float(step(x)))
    eager_model = _mlp()
    eager_opt = torch.optim.SGD(eager_model.parameters(), lr=0.1)
    eager = [float(_step_for(eager_model, eager_opt)(x).detach()) for (x,) in batches]
    return {"losses": losses, "eager": eager, "specs": specs}


def _shapes(model):
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


class Tower(torch.nn.Module):
    """8 x Linear(256, 256) and a buffer: 2 MiB of parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(256, 256) for _ in range(8))
        self.register_buffer("scale", torch.full((256,), 0.5))

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x)) * self.scale
        return x


def _materialize() -> dict:
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    eager = Tower()
    torch.manual_seed(0)
    with torchtpu.shard.meta_init():
        model = Tower()
    meta = all(p.is_meta for p in model.parameters())
    strategy = FSDP()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        torchtpu.shard.materialize(model, strategy)
    # The torch CPU allocator's live bytes over time: each op's own allocations, and frees.
    events = sorted(
        (e for e in prof.events() if e.self_cpu_memory_usage),
        key=lambda e: e.time_range.start,
    )
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    from torchtpu.device.tensor import device_array

    shards = {
        n: [list(s.data.shape) for s in device_array(p, "test").addressable_shards]
        for n, p in model.named_parameters()
    }
    same = all(
        torch.equal(p.detach().cpu(), q.detach())
        for p, q in zip(model.parameters(), eager.parameters(), strict=True)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = torchtpu.compile_step(_step_for(model, opt), strategy=strategy)
    eager_opt = torch.optim.AdamW(eager.parameters(), lr=1e-3)
    x = torch.randn(16, 256)
    loss = float(step(x))
    eager_loss = float(_step_for(eager, eager_opt)(x))
    return {
        "meta_before": meta,
        "peak_host_bytes": peak,
        "model_bytes": sum(p.numel() * 4 for p in eager.parameters()),
        "layer_bytes": sum(p.numel() * 4 for p in eager.layers[0].parameters()),
        "shards": shards,
        "same_values": same,
        "loss": loss,
        "eager_loss": eager_loss,
    }


def main(argv: list[str]) -> None:
    for arg in argv:
        if arg == "checks":
            try:
                result = checks()
            except Exception:
                result = {"crash": traceback.format_exc()}
            print(json.dumps({"checks": result}), flush=True)
            continue
        name, strategies = arg.split(":")
        base = build(name)
        for key in strategies.split(","):
            result = train(base, STRATEGIES[key]())
            print(json.dumps({"model": name, "strategy": key, **result}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
