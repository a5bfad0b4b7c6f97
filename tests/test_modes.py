"""Any front end after any other, in one process: a model trained a while by one of
``torch.compile(backend="tpu")``, ``compile_step`` and device mode (eager on tpu
tensors) carries on in another, and ends where four eager steps on the CPU end."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import torchtpu

MODES = ["device", "compile", "compile_step"]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Embedding(16, 8), torch.nn.Flatten(), torch.nn.Linear(24, 4)
    )


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 16, (5, 3), generator=g), torch.randn(5, 4, generator=g)


class Trainer:
    """One model and one AdamW, stepped by whichever front end is asked."""

    def __init__(self, device: str) -> None:
        self.model = _model().to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-2)
        self.compiled = None
        self.step = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _eager(self, forward, x, y) -> torch.Tensor:
        loss = F.mse_loss(forward(x), y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        return loss

    def run(self, mode: str) -> float:
        x, y = (t.to(self.device) for t in _batch())
        if mode == "device":
            return self._eager(self.model, x, y).item()
        if mode == "compile":
            self.compiled = self.compiled or torch.compile(self.model, backend="tpu")
            return self._eager(self.compiled, x, y).item()
        if self.step is None:
            model, opt = self.model, self.opt

            @torchtpu.compile_step
            def step(x, y):
                loss = F.mse_loss(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad()
                return loss

            self.step = step
        return self.step(x, y).item()

    def move(self, device: str) -> None:
        self.model.to(device)
        for state in self.opt.state.values():
            for name, value in state.items():
                if isinstance(value, torch.Tensor) and name != "step":
                    state[name] = value.to(device)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.model.state_dict().items()}


@pytest.fixture(scope="module")
def reference() -> tuple[list[float], dict[str, torch.Tensor]]:
    eager = Trainer("cpu")
    losses = [eager._eager(eager.model, *_batch()).item() for _ in range(4)]
    return losses, eager.state()


def _assert_same(trainer: Trainer, losses: list[float], reference) -> None:
    ref_losses, ref_state = reference
    assert losses == pytest.approx(ref_losses, abs=1e-4)
    state = trainer.state()
    for name, value in ref_state.items():
        torch.testing.assert_close(state[name], value, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("first, then", list(itertools.permutations(MODES, 2)))
def test_every_ordered_pair_on_tpu(first, then, reference):
    torch._dynamo.reset()
    trainer = Trainer("tpu")
    losses = [trainer.run(first) for _ in range(2)] + [trainer.run(then) for _ in range(2)]
    _assert_same(trainer, losses, reference)


@pytest.mark.parametrize("first, then", [("compile", "compile_step"), ("compile_step", "compile")])
def test_pairs_on_the_cpu(first, then, reference):
    # No dynamo reset: an earlier compile of a model of the same code must not
    # hide the step's trained values (Dynamo does not guard on module hooks).
    trainer = Trainer("cpu")
    losses = [trainer.run(first) for _ in range(2)] + [trainer.run(then) for _ in range(2)]
    _assert_same(trainer, losses, reference)


@pytest.mark.parametrize("start, end", [("cpu", "tpu"), ("tpu", "cpu")])
@pytest.mark.parametrize("then", ["compile_step", "device"])
def test_compile_step_then_move(start, end, then, reference):
    trainer = Trainer(start)
    losses = [trainer.run("compile_step") for _ in range(2)]
    trainer.move(end)  # syncs the step's device copies first, then moves them
    losses += [trainer.run(then) for _ in range(2)]
    _assert_same(trainer, losses, reference)


def test_compiled_model_can_move_to_tpu():
    """The finding: after one compiled call, ``model.to("tpu")`` failed in
    ``swap_tensors`` on the backend's weak references to the parameters."""
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4))
    x = torch.tensor([[1, 2, 3]])
    expected = torch.compile(model, backend="tpu")(x)
    model.to("tpu")
    assert model[0].weight.device.type == "tpu"
    torch.testing.assert_close(model(x.to("tpu")).cpu(), expected)
