"""HF mixture-of-experts models (Mixtral, Qwen2-MoE, DeepSeek-V3) from small configs
with random weights, in strict mode, through each front end: logits and three
AdamW steps equal eager's. Their experts run as grouped matmuls
(``transformers.grouped_mm_fallback`` on the CPU, ``aten._grouped_mm`` on tpu),
lowered to ``jax.lax.ragged_dot``; the routing (top-k, a sort by expert) has
static shapes, so nothing falls back and nothing is read on the host."""

import copy

import pytest
import torch

import torchtpu

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB = 96
SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    num_experts_per_tok=2,
)


def mixtral():
    cfg = transformers.MixtralConfig(
        **SMALL, intermediate_size=64, num_key_value_heads=2, num_local_experts=4
    )
    return transformers.MixtralForCausalLM(cfg)


def qwen2_moe():
    cfg = transformers.Qwen2MoeConfig(
        **SMALL,
        intermediate_size=64,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        num_key_value_heads=2,
        num_experts=4,
    )
    return transformers.Qwen2MoeForCausalLM(cfg)


def deepseek_v3():
    cfg = transformers.DeepseekV3Config(
        **SMALL,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_key_value_heads=4,
        n_routed_experts=4,
        n_shared_experts=1,
        first_k_dense_replace=1,
        kv_lora_rank=16,
        q_lora_rank=32,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        n_group=1,
        topk_group=1,
    )
    return transformers.DeepseekV3ForCausalLM(cfg)


MODELS = {"mixtral": mixtral, "qwen2_moe": qwen2_moe, "deepseek_v3": deepseek_v3}
FRONT_ENDS = ["torch.compile", "compile_step", "device mode"]
# CI runs each model once and each front end once (a Latin square); the whole
# matrix is `pytest -m slow tests/models/test_moe.py`.
IN_CI = {
    ("mixtral", "compile_step"),
    ("qwen2_moe", "device mode"),
    ("deepseek_v3", "torch.compile"),
}
CASES = [
    pytest.param(name, front_end, marks=() if (name, front_end) in IN_CI else pytest.mark.slow)
    for name in MODELS
    for front_end in FRONT_ENDS
]


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))


def _losses(model, front_end: str, steps: int = 3) -> tuple[list[float], torch.Tensor]:
    """Train ``model`` for ``steps`` AdamW steps by ``front_end``: losses, first logits."""
    ids = _ids()
    if front_end == "device mode":
        model.to("tpu")
        ids = ids.to("tpu")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    forward = torch.compile(model, backend="tpu") if front_end == "torch.compile" else model

    def step():
        out = forward(ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        return out.loss, out.logits

    if front_end == "compile_step":
        step = torchtpu.compile_step(step, models=[model], optimizers=[opt])
    losses, first = [], None
    for _ in range(steps):
        loss, logits = step()
        losses.append(loss.item())
        first = logits.detach().cpu() if first is None else first
    return losses, first


@pytest.mark.parametrize("name, front_end", CASES)
def test_moe_trains_as_eager_in_strict_mode(name, front_end):
    torch.manual_seed(0)
    model = MODELS[name]()
    assert model.config._experts_implementation == "grouped_mm"
    ours = copy.deepcopy(model)
    ref_losses, ref_logits = _losses(model, "eager")
    torchtpu.set_options(strict=True)
    try:
        torchtpu.reset_metrics()
        losses, logits = _losses(ours, front_end)
    finally:
        torchtpu.set_options(strict=False)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    assert losses == pytest.approx(ref_losses, abs=1e-4)
    # Adam: where a gradient is near zero, rounding can move an element by one lr.
    # (state_dict(): compile_step keeps a CPU model's state on the device until read.)
    theirs = ours.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, theirs[key].cpu(), rtol=0, atol=1e-3, msg=key)
    assert torchtpu.metrics()["fallbacks"] == {}


def test_load_balancing_loss_trains_as_eager():
    """Mixtral's auxiliary load-balancing loss (``output_router_logits``): the router
    logits of every layer feed a loss term, through compile_step in strict mode."""
    torch.manual_seed(0)
    model = mixtral()
    model.config.output_router_logits = True
    model.config.router_aux_loss_coef = 0.5
    ours = copy.deepcopy(model)
    ref_losses, _ = _losses(model, "eager")
    torchtpu.set_options(strict=True)
    try:
        torchtpu.reset_metrics()
        losses, _ = _losses(ours, "compile_step")
    finally:
        torchtpu.set_options(strict=False)
    out = model(_ids(), labels=_ids())
    assert out.aux_loss is not None and out.aux_loss.item() > 0  # the term is in the loss
    assert losses == pytest.approx(ref_losses, abs=1e-4)
    router = "model.layers.0.mlp.gate.weight"
    torch.testing.assert_close(
        model.state_dict()[router], ours.state_dict()[router].cpu(), rtol=0, atol=1e-3
    )
    assert torchtpu.metrics()["fallbacks"] == {}
