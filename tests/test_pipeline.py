"""One compile path for every front end: torch.compile on tpu tensors, compile_step on
a model on tpu, device mode and the sized ops all build the same Program, from one
cache, with one set of compiler options; errors name the program and its line."""

from __future__ import annotations

import copy
import logging

import jax
import pytest
import torch
from _unlowered import crashing, mystery_cpu, uncompilable

import torchtpu
from torchtpu.compile import program as programs_module


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256)
    )


def test_the_documented_usage_trains_like_eager_with_no_weight_transfers():
    """model.to("tpu"), torch.compile(backend="tpu"), an unmodified eager optimizer."""
    ref = _mlp()
    model = copy.deepcopy(ref).to("tpu")
    compiled = torch.compile(model, backend="tpu")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3)
    batches = [torch.randn(64, 256, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    for i, x in enumerate(batches):
        device_x = x.to("tpu")
        torchtpu.reset_metrics()
        loss = compiled(device_x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        moved = torchtpu.metrics()
        ref_loss = ref(x).square().mean()
        ref_loss.backward()
        ref_opt.step()
        ref_opt.zero_grad()
        torch.testing.assert_close(loss.cpu(), ref_loss, rtol=1e-5, atol=1e-5)
        assert moved["host_to_device"] == 0 and moved["device_to_host"] == 0, (i, moved)
        # Forward, backward, the fused optimizer step: each compiled once (the step's
        # program runs, and is built, when the next step's first input needs it).
        assert i < 3 or moved["compiles"] == 0, (i, moved["compiles"])
    for p, q in zip(ref.parameters(), model.parameters(), strict=True):
        assert q.device.type == "tpu"
        torch.testing.assert_close(q.cpu(), p, rtol=1e-5, atol=1e-5)


def test_default_torch_compile_on_tpu_tensors_uses_the_tpu_backend(caplog):
    model = _mlp().to("tpu")
    x = torch.randn(8, 256).to("tpu")
    with caplog.at_level(logging.INFO, logger="torchtpu"):
        out = torch.compile(model)(x)  # inductor cannot target tpu
    assert out.device.type == "tpu"
    torch.testing.assert_close(out.cpu(), model(x).cpu(), rtol=1e-5, atol=1e-5)
    assert torchtpu.metrics()["executions"] >= 1  # ran as a torchtpu program
    assert any("backend='tpu'" in r.message for r in caplog.records)


def test_compile_step_trains_a_model_on_tpu_with_state_kept_in_torch():
    ref = _mlp()
    model = copy.deepcopy(ref).to("tpu")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3)

    @torchtpu.compile_step
    def step(x):
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    for i in range(3):
        x = torch.randn(16, 256, generator=torch.Generator().manual_seed(i))
        device_x = x.to("tpu")
        torchtpu.reset_metrics()
        loss = step(device_x)
        moved = torchtpu.metrics()
        ref_loss = ref(x).square().mean()
        ref_loss.backward()
        ref_opt.step()
        ref_opt.zero_grad()
        torch.testing.assert_close(loss.cpu(), ref_loss, rtol=1e-5, atol=1e-5)
        assert moved["host_to_device"] == 0 and moved["compiles"] == (1 if i == 0 else 0)
    # The optimizer's own state is live on the device: no sync needed to read it.
    state = opt.state[model[0].weight]
    assert state["exp_avg"].device.type == "tpu" and float(state["step"].cpu()) == 3.0
    torch.testing.assert_close(model[0].weight.cpu(), ref[0].weight, rtol=1e-5, atol=1e-5)
    # Eager code sees the same values, and a following compiled step continues from them.
    with torch.no_grad():
        model[0].bias.zero_()
    step(torch.randn(16, 256).to("tpu"))
    assert model[0].bias.abs().max().item() < 1e-2


def test_every_front_end_builds_the_one_program_kind_and_clear_empties_it():
    x = torch.randn(8, 16)
    torchtpu.clear_program_cache()
    torch.compile(torch.nn.Linear(16, 4), backend="tpu")(x)  # backend, CPU tensors
    y = (torch.ones(8, device="tpu") * 3).cpu()  # device mode
    torch.nonzero(torch.tensor([1.0, 0.0, 2.0]).to("tpu"))  # a sized program
    assert y.tolist() == [3.0] * 8
    built = programs_module.programs()
    assert {p.name for p in built} >= {"forward", "device mode", "sized aten.nonzero.default"}
    assert all(type(p) is torchtpu.Program for p in built)
    assert "Program(device mode" in repr(next(p for p in built if p.name == "device mode"))
    before = torchtpu.metrics()["compiles"]
    torchtpu.clear_program_cache()
    assert programs_module.programs() == []
    (torch.ones(8, device="tpu") * 3).cpu()  # compiled again: the cache was emptied
    assert torchtpu.metrics()["compiles"] == before + 1


def test_device_mode_compiles_with_torchtpus_compiler_options(monkeypatch):
    seen = []
    real = programs_module.compiler_options

    def spy():
        options = real()
        seen.append(options)
        return options

    monkeypatch.setattr(programs_module, "compiler_options", spy)
    torchtpu.set_options(cpu_opt_level=0)
    (torch.arange(5.0, device="tpu") * 7 - 1).cpu()
    assert seen and seen[-1]["xla_backend_optimization_level"] == 0


def test_stages_show_graphs_stablehlo_and_programs_for_gpt2():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 64, (2, 8))
    stages = torchtpu.stages(model, ids)
    assert [name for name, _ in stages.graphs] == ["forward", "backward"]
    assert "torch.ops.aten.mm.default" in stages.graph_code()
    lowered = stages.lower()
    assert lowered and all("stablehlo" in seg.as_text() for seg in lowered)
    compiled = stages.compile()
    assert compiled[0].cost_analysis()["flops"] > 0
    assert compiled[0].memory_analysis().temp_size_in_bytes >= 0
    text = str(stages)
    for heading in ("captured ATen graphs", "lowered StableHLO", "compiled XLA programs"):
        assert heading in text
    # Running the model compiled finds the programs stages built.
    before = torchtpu.metrics()["compiles"]
    torch.compile(model, backend="tpu")(ids).logits.sum().backward()
    assert torchtpu.metrics()["compiles"] == before


def test_compiled_step_exposes_its_stages():
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    @torchtpu.compile_step
    def step(x):
        loss = model(x).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    stages = step.stages(torch.randn(3, 4))  # traced, not run
    assert [name for name, _ in stages.graphs] == ["train_step"]
    assert torchtpu.metrics()["executions"] == 0
    (program,) = stages.compile()
    assert program.name == "train_step" and "test_pipeline.py" in program.origin


def test_an_xla_compile_error_names_the_program_its_line_and_the_docs():
    def fn(x):
        return uncompilable(x) + 1

    with pytest.raises(torchtpu.CompileError) as info:
        torch.compile(fn, backend="tpu")(torch.randn(3))
    text = str(info.value)
    assert "XLA could not compile program" in text and "float32[3]" in text
    assert "test_pipeline.py" in text and "docs/errors.md#compile-error" in text


def test_a_device_error_names_the_program_and_out_of_memory_is_its_own_error(monkeypatch):
    compiled = torch.compile(torch.nn.Linear(4, 4), backend="tpu")
    x = torch.randn(2, 4)
    compiled(x)
    (program,) = [p for p in programs_module.programs() if p.name == "forward"][-1:]

    class Exhausted:  # the compiled program, failing as an accelerator out of memory does
        def __init__(self, real):
            self.memory_analysis = real.memory_analysis

        def __call__(self, *args):
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1 GB")

    monkeypatch.setattr(program, "compiled", Exhausted(program.compiled))
    with pytest.raises(torchtpu.OutOfMemoryError, match="docs/errors.md#out-of-memory") as info:
        compiled(x)
    assert "'forward'" in str(info.value) and "float32[2, 4]" in str(info.value)
    assert isinstance(info.value, torchtpu.DeviceError)


def test_a_crashing_lowering_is_reported_as_a_crash_not_as_missing():
    def fn(x):
        return crashing(x) - 1

    x = torch.randn(4)
    with pytest.warns(UserWarning, match="lowering of torchtpu_test.crashing.default crashed") as w:
        out = torch.compile(fn, backend="tpu")(x)
    assert not any("has no XLA lowering" in str(r.message) for r in w)
    torch.testing.assert_close(out, x * 2 - 1)
    torch._dynamo.reset()
    with pytest.raises(torchtpu.LoweringError, match="deliberately broken lowering"):
        torch.compile(fn, backend="tpu", options={"strict": True})(x)


def test_strict_mode_raises_the_same_error_from_every_front_end():
    torchtpu.set_options(strict=True)
    x = torch.randn(4)
    messages = []
    with pytest.raises(torchtpu.UnsupportedOpError) as backend:
        torch.compile(lambda t: mystery_cpu(t) + 1, backend="tpu")(x)
    messages.append(str(backend.value))
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    @torchtpu.compile_step
    def step(t):
        loss = model(t).sum()
        loss.backward()
        loss = loss + mystery_cpu(t).sum()  # outside autograd: mystery_cpu has no formula
        opt.step()
        return loss

    with pytest.raises(torchtpu.UnsupportedOpError) as whole_step:
        step(x.reshape(1, 4))
    messages.append(str(whole_step.value))
    with pytest.raises(torchtpu.UnsupportedOpError) as device:
        mystery_cpu(x.to("tpu"))
    messages.append(str(device.value))
    for text in messages:
        assert "torchtpu cannot lower torchtpu_test.mystery_cpu.default(Tensor[" in text
        assert "strict mode is on" in text and "docs/errors.md#unsupported-op" in text


def test_examine_consults_the_lowerings_argument_check():
    def resize(x, align_corners):
        return torch.nn.functional.interpolate(
            x, size=(5, 5), mode="bilinear", antialias=True, align_corners=align_corners
        )

    x = torch.randn(1, 2, 8, 8)
    op = "aten._upsample_bilinear2d_aa.default"
    report = torchtpu.examine(resize, x, True)
    assert report.falls_back == [op]
    assert "antialiased resampling with align_corners=True" in str(report)
    assert torchtpu.examine(resize, x, False).fully_lowered
    # The backend takes the same decision before tracing anything: a counted fallback.
    torch._dynamo.reset()
    with pytest.warns(UserWarning, match="cannot be lowered for these arguments"):
        out = torch.compile(resize, backend="tpu")(x, True)
    torch.testing.assert_close(out, resize(x, True))
    assert torchtpu.metrics()["fallbacks"] == {op: 1}


def test_low_precision_accumulation_is_declared_at_registration():
    from torchtpu.lower.registry import lookup

    aten = torch.ops.aten
    for op in (aten.sum.dim_IntList, aten.native_layer_norm.default, aten._softmax.default):
        assert lookup(op).accumulate
    assert not lookup(aten.add.Tensor).accumulate
    x = torch.full((4099,), 1.0, dtype=torch.bfloat16)  # 4099 is not a bf16 number
    got = torch.compile(torch.sum, backend="tpu")(x)
    assert got.dtype == torch.bfloat16 and got.item() == torch.sum(x).item()


def test_an_explicit_generator_is_honoured_on_the_device():
    def draw(seed):
        return torch.randn(6, device="tpu", generator=torch.Generator().manual_seed(seed)).cpu()

    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))
    torch.manual_seed(1)  # seeds the device's own generator too, as it seeds CUDA's
    assert torch.equal(torch.randn(6, device="tpu").cpu(), draw(1))
    state = torch.tpu.get_rng_state()
    b = torch.rand(5, device="tpu").cpu()
    torch.tpu.set_rng_state(state)
    assert torch.equal(torch.rand(5, device="tpu").cpu(), b)
