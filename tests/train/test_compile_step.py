"""torchtpu.compile_step: one XLA program per step, exact optimizer semantics."""

import copy

import pytest
import torch

import torchtpu


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 3),
    )


OPTIMIZERS = {
    "sgd": (torch.optim.SGD, {"lr": 0.05}),
    "sgd_momentum_nesterov_wd": (
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
    ),
    "sgd_dampening": (torch.optim.SGD, {"lr": 0.05, "momentum": 0.8, "dampening": 0.1}),
    "adam": (torch.optim.Adam, {"lr": 1e-2}),
    "adam_wd_amsgrad": (torch.optim.Adam, {"lr": 1e-2, "weight_decay": 1e-2, "amsgrad": True}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
}


def make_steps(opt_name, clip=True):
    cls, kwargs = OPTIMIZERS[opt_name]
    ref, ours = mlp(), mlp()
    ref_opt, our_opt = cls(ref.parameters(), **kwargs), cls(ours.parameters(), **kwargs)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=4, gamma=0.5)
    our_sched = torch.optim.lr_scheduler.StepLR(our_opt, step_size=4, gamma=0.5)

    def body(model, opt, x, y):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
        return loss

    def eager(x, y):
        return body(ref, ref_opt, x, y)

    def step(x, y):
        return body(ours, our_opt, x, y)

    return (ref, ref_opt, ref_sched), (ours, our_opt, our_sched), eager, step


@pytest.mark.parametrize("opt_name", OPTIMIZERS)
def test_twenty_steps_match_eager(opt_name):
    (ref, ref_opt, ref_sched), (ours, our_opt, our_sched), eager, step = make_steps(opt_name)
    compiled = torchtpu.compile_step(step)
    gen = torch.Generator().manual_seed(1)
    for i in range(20):
        x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)
        torch.testing.assert_close(compiled(x, y), eager(x, y), rtol=1e-5, atol=1e-5)
        if i == 1:
            compiles_after_two = torchtpu.metrics()["compiles"]
        ref_sched.step()
        our_sched.step()
    compiled.sync()  # parameters are brought up to date lazily (state_dict() does it too)
    for p, q in zip(ref.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-5)
    ref_state, our_state = ref_opt.state_dict(), our_opt.state_dict()
    for i, st in ref_state["state"].items():
        for key, value in st.items():
            torch.testing.assert_close(our_state["state"][i][key], value, rtol=1e-5, atol=1e-5)
    # The first step may differ (it creates optimizer state); after that the
    # scheduler changed the learning rate 4 times without a recompile.
    assert compiles_after_two <= 2
    assert torchtpu.metrics()["compiles"] == compiles_after_two


def test_state_stays_on_device_and_eager_can_resume():
    (ref, ref_opt, _), (ours, our_opt, _), eager, step = make_steps("adamw")
    compiled = torchtpu.compile_step(step)
    x, y = torch.randn(8, 6), torch.randn(8, 3)
    for _ in range(3):
        compiled(x, y)
        eager(x, y)
    uploads = torchtpu.metrics()["host_to_device"]
    compiled(x, y)
    eager(x, y)
    assert torchtpu.metrics()["host_to_device"] == uploads  # nothing re-sent between steps
    # Eager training resumes from the compiled state (the forward hook syncs first).
    for _ in range(2):
        torch.testing.assert_close(step(x, y), eager(x, y), rtol=1e-5, atol=1e-5)
    # And compiled training resumes from what eager changed (version counters).
    torch.testing.assert_close(compiled(x, y), eager(x, y), rtol=1e-5, atol=1e-5)


def test_load_state_dict_is_seen_by_the_next_step():
    _, (ours, our_opt, _), _, step = make_steps("sgd")
    compiled = torchtpu.compile_step(step)
    x, y = torch.randn(8, 6), torch.randn(8, 3)
    compiled(x, y)
    fresh = mlp()
    ours.load_state_dict(fresh.state_dict())
    expected = torch.nn.functional.mse_loss(fresh(x), y)
    torch.testing.assert_close(compiled(x, y), expected)


def test_batchnorm_buffers_and_dict_outputs():
    torch.manual_seed(0)
    ref = torch.nn.Sequential(
        torch.nn.Linear(4, 8, bias=False),
        torch.nn.BatchNorm1d(8),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 2),
    )
    ours = copy.deepcopy(ref)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    our_opt = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)

    def body(model, opt, x, y):
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return {"loss": loss, "accuracy": (out.argmax(-1) == y).float().mean()}

    compiled = torchtpu.compile_step(lambda x, y: body(ours, our_opt, x, y))
    for _ in range(5):
        x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
        got, want = compiled(x, y), body(ref, ref_opt, x, y)
        assert set(got) == {"loss", "accuracy"}
        torch.testing.assert_close(got["loss"], want["loss"], rtol=1e-5, atol=1e-5)
    sd_ref, sd_ours = ref.state_dict(), ours.state_dict()
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        torch.testing.assert_close(sd_ours[key], sd_ref[key], rtol=1e-5, atol=1e-5)


def test_gradient_accumulation_over_micro_batches():
    (ref, ref_opt, _), (ours, our_opt, _), _, _ = make_steps("adam")

    def body(model, opt, x, y):
        for xb, yb in zip(x.chunk(4), y.chunk(4), strict=True):
            (torch.nn.functional.mse_loss(model(xb), yb) / 4).backward()
        opt.step()
        opt.zero_grad()

    compiled = torchtpu.compile_step(lambda x, y: body(ours, our_opt, x, y))
    for _ in range(3):
        x, y = torch.randn(16, 6), torch.randn(16, 3)
        compiled(x, y)
        body(ref, ref_opt, x, y)
    compiled.sync()
    for p, q in zip(ref.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-5)


def test_grads_carried_across_calls_without_zero_grad():
    (ref, ref_opt, _), (ours, _, _), _, _ = make_steps("sgd")

    def accumulate(model, x, y):
        torch.nn.functional.mse_loss(model(x), y).backward()

    compiled = torchtpu.compile_step(lambda x, y: accumulate(ours, x, y), models=[ours])
    for _ in range(3):
        x, y = torch.randn(8, 6), torch.randn(8, 3)
        compiled(x, y)
        accumulate(ref, x, y)
    compiled.sync()
    for p, q in zip(ref.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-5)


def test_scheduler_inside_the_step_is_refused_clearly():
    _, (ours, our_opt, our_sched), _, _ = make_steps("sgd")

    def step(x, y):
        torch.nn.functional.mse_loss(ours(x), y).backward()
        our_opt.step()
        our_opt.zero_grad()
        our_sched.step()

    with pytest.raises(torchtpu.TorchTPUError, match="scheduler.step"):
        torchtpu.compile_step(step)(torch.randn(8, 6), torch.randn(8, 3))


def test_bad_arguments():
    with pytest.raises(ValueError, match="precision"):
        torchtpu.compile_step(lambda: None, precision="fp8")
    with pytest.raises(ValueError, match="bf16-true"):
        torchtpu.compile_step(lambda: None, stochastic_rounding=True)
    with pytest.raises(torchtpu.TorchTPUError, match="models="):
        torchtpu.compile_step(lambda x: x * 2)


def test_memory_and_cost_analysis():
    _, _, _, step = make_steps("adamw")
    compiled = torchtpu.compile_step(step)
    compiled(torch.randn(8, 6), torch.randn(8, 3))
    assert compiled.memory_analysis().argument_size_in_bytes > 0
    assert compiled.cost_analysis()["flops"] > 0


def test_activation_checkpointing_recomputes_and_matches():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from gpt import GPT, GPTConfig

    results = {}
    for checkpoint in (False, True):
        torch.manual_seed(0)
        model = GPT(GPTConfig(layers=2, width=64, heads=4, context=32))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(x, model=model, opt=opt):
            loss = model(x, x)
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss

        compiled = torchtpu.compile_step(step, checkpoint=checkpoint)
        x = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
        losses = [compiled(x).item() for _ in range(3)]
        results[checkpoint] = (losses, compiled.cost_analysis()["flops"])
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-5)
    assert results[True][1] > results[False][1]  # the blocks' forward runs twice


def test_activation_checkpointing_refuses_dropout():
    model = torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Dropout(0.1)]))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)

    def step(x):
        for block in model[0]:
            x = block(x)
        return x.sum()

    with pytest.raises(torchtpu.TorchTPUError, match="dropout"):
        torchtpu.compile_step(step, checkpoint=True, models=[model], optimizers=[opt])(
            torch.ones(3, requires_grad=True)
        )


def test_grads_zeroed_in_the_step_are_not_resurrected_from_stale_torch_grads():
    (ref, ref_opt, _), (ours, our_opt, _), eager, step = make_steps("sgd", clip=False)
    x, y = torch.randn(8, 6), torch.randn(8, 3)
    # An eager backward leaves grads on both models; the step accumulates onto them
    # once, then zero_grad() clears them, so later steps start from None.
    for model in (ref, ours):
        torch.nn.functional.mse_loss(model(x), y).backward()
    compiled = torchtpu.compile_step(step)
    for _ in range(3):
        torch.testing.assert_close(compiled(x, y), eager(x, y), rtol=1e-5, atol=1e-5)
    compiled.sync()
    for p, q in zip(ref.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-5)
        assert q.grad is None and p.grad is None
