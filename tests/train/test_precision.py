"""Mixed precision in compile_step."""

import pytest
import torch

import torchtpu
from torchtpu.train.precision import stochastic_round_to_bf16


def test_stochastic_rounding_is_unbiased():
    torch.manual_seed(0)
    # 1 + 2**-10 lies between two bf16 neighbours (1 and 1 + 2**-7), 1/8 of the way.
    x = torch.full((200_000,), 1 + 2**-10)
    rounded = stochastic_round_to_bf16(x).float()
    assert set(rounded.unique().tolist()) == {1.0, 1 + 2**-7}
    up = (rounded > 1).float().mean().item()
    assert abs(up - 1 / 8) < 0.005  # binomial sd ~0.0007
    assert abs(rounded.mean().item() - x[0].item()) < 2e-5
    # Round-to-nearest would always give 1.0.
    assert x.to(torch.bfloat16).float().unique().tolist() == [1.0]


def _model_and_step(precision, stochastic_rounding=False):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step(x, y):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return model, torchtpu.compile_step(
        step, precision=precision, stochastic_rounding=stochastic_rounding
    )


def test_bf16_mixed_computes_in_bf16_and_keeps_fp32_weights():
    model, step = _model_and_step("bf16-mixed")
    x, y = torch.randn(16, 8), torch.randn(16, 1)
    loss = step(x, y)
    assert loss.dtype == torch.float32
    text = step._last.programs[-1].lowered_text()
    assert "bf16" in text  # the matmuls
    step.sync()
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("stochastic_rounding", [False, True])
def test_bf16_true_keeps_bf16_weights_on_device(stochastic_rounding):
    model, step = _model_and_step("bf16-true", stochastic_rounding)
    x, y = torch.randn(16, 8), torch.randn(16, 1)
    assert step(x, y).dtype == torch.bfloat16
    assert step.store.get(("param", 0)).dtype.name == "bfloat16"
    step(x, y)
    step.sync()
    # Written back into the fp32 model: values are bf16-representable.
    w = model[0].weight
    assert w.dtype == torch.float32
    assert torch.equal(w, w.to(torch.bfloat16).float())


def test_stochastic_rounding_keeps_small_updates():
    """With lr * grad far below bf16's resolution, round-to-nearest loses every update,
    while stochastic rounding moves the weights by the right amount on average."""
    moved = {}
    for sr in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Linear(4096, 1, bias=False)
        torch.nn.init.ones_(model.weight)
        opt = torch.optim.SGD(model.parameters(), lr=2**-12)

        def step(model=model, opt=opt):
            model.weight.sum().backward()  # grad 1 everywhere: each step subtracts 2**-12
            opt.step()
            opt.zero_grad()

        compiled = torchtpu.compile_step(
            step, precision="bf16-true", stochastic_rounding=sr, models=[model], optimizers=[opt]
        )
        for _ in range(16):
            compiled()
        compiled.sync()
        moved[sr] = (1 - model.weight.detach()).mean().item()
    assert moved[False] == 0.0
    assert abs(moved[True] - 16 * 2**-12) < 0.1 * 16 * 2**-12


def test_parameters_used_directly_are_refused_clearly():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)

    def step(w=w):
        w.sum().backward()
        opt.step()

    with pytest.raises(torchtpu.TorchTPUError, match="directly"):
        torchtpu.compile_step(step, optimizers=[opt], models=[])()
    assert w.grad is None
