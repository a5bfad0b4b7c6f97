"""Training loops on "tpu" match eager PyTorch and stop compiling after the first steps."""

from __future__ import annotations

import pytest
import torch

import torchtpu


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4)
    )


def _train(device: str, make_opt, steps: int = 8) -> tuple[list[float], list[int]]:  # noqa: ANN001
    model = _mlp().to(device)
    opt = make_opt(model.parameters())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    g = torch.Generator().manual_seed(1)
    losses, compiles = [], []
    for _ in range(steps):
        x = torch.randn(8, 16, generator=g).to(device)
        y = torch.randint(0, 4, (8,), generator=g).to(device)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        sched.step()
        losses.append(loss.item())
        compiles.append(torchtpu.metrics()["fused_compiles"])
    for p in model.parameters():
        assert p.device.type == device
    return losses, compiles


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4),
        lambda ps: torch.optim.Adam(ps, lr=1e-2),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    ],
    ids=["sgd", "adam", "adamw"],
)
def test_training_loop_matches_eager_and_stops_compiling(make_opt):
    expected, _ = _train("cpu", make_opt)
    losses, compiles = _train("tpu", make_opt)
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-5)
    # The first step differs (no optimizer state yet); from then on only cache hits.
    assert compiles[-1] == compiles[2] and compiles[-1] <= 4
    assert torchtpu.metrics()["syncs"]["optimizer_step"] == 8
    assert torchtpu.metrics()["fallbacks"] == {}


def test_gpt2_trains_on_the_device_with_tied_weights():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=2,
        n_head=4,
        n_embd=64,
        vocab_size=128,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )

    def run(device: str) -> tuple[list[float], torch.nn.Module]:
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(3):
            ids = torch.randint(0, config.vocab_size, (2, 16), generator=g).to(device)
            loss = model(ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
        return losses, model

    expected, ref = run("cpu")
    losses, model = run("tpu")
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.device.type == "tpu"
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        model.transformer.wte.weight.cpu(), ref.transformer.wte.weight, rtol=1e-4, atol=1e-5
    )
    assert torchtpu.metrics()["fallbacks"] == {}
