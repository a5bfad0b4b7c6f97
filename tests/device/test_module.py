"""torch.tpu, torch.accelerator and the PyTorch utilities that use a device module."""

from __future__ import annotations

import io

import pytest
import torch

import torchtpu  # noqa: F401


def test_the_device_module_answers_what_libraries_ask():
    tpu = torch.tpu
    assert tpu.is_available() and tpu.device_count() == 1 and tpu.current_device() == 0
    tpu.set_device(0)
    with pytest.raises(ValueError, match="one device"):
        tpu.set_device(1)
    assert tpu.get_device_properties(0).total_memory > 0
    x = torch.ones(1000, device="tpu") * 2
    tpu.synchronize()
    assert tpu.memory_allocated() >= x.numel() * 4
    assert tpu.max_memory_allocated() >= tpu.memory_allocated()
    start, end = tpu.Event(enable_timing=True), tpu.Event(enable_timing=True)
    start.record()
    (x * 3).sum().item()
    end.record()
    assert start.elapsed_time(end) >= 0


def test_torch_accelerator_finds_the_tpu_device():
    assert torch.accelerator.is_available()
    assert torch.accelerator.current_accelerator().type == "tpu"
    assert torch.accelerator.device_count() == 1
    torch.accelerator.synchronize()
    assert torch.accelerator.memory_allocated() >= 0


def test_fork_rng_and_seeding_cover_the_device_generator():
    torch.manual_seed(0)
    a = torch.rand(4, device="tpu").cpu()
    torch.manual_seed(0)
    assert torch.equal(torch.rand(4, device="tpu").cpu(), a)
    with torch.random.fork_rng(devices=["tpu:0"], device_type="tpu"):
        inside = torch.rand(4, device="tpu").cpu()
    assert torch.equal(torch.rand(4, device="tpu").cpu(), inside)


def test_activation_checkpointing_replays_dropout_masks():
    lin = torch.nn.Linear(8, 8).to("tpu")
    x = torch.randn(4, 8).to("tpu").requires_grad_()

    def block(t):
        return torch.nn.functional.dropout(lin(t), 0.5).sum(-1)

    torch.manual_seed(0)
    torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False).sum().backward()
    checkpointed = x.grad.cpu().clone()
    x.grad = None
    torch.manual_seed(0)
    block(x).sum().backward()
    torch.testing.assert_close(checkpointed, x.grad.cpu())


def test_pin_memory_and_non_blocking_copies_work_with_tpu_as_accelerator():
    host = torch.randn(3, 4)
    pinned = host.pin_memory()
    assert torch.equal(pinned, host)
    moved = pinned.to("tpu", non_blocking=True)
    assert torch.equal(moved.cpu(), host)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.arange(8.0)), batch_size=4, pin_memory=True
    )
    assert [b[0].tolist() for b in loader] == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]


def test_torch_load_onto_the_device_keeps_sharing_and_weights_only(monkeypatch):
    import torch.serialization as serialization

    weight = torch.randn(3, 2)
    state = {"a": weight, "b": weight, "step": 3}
    buffer = io.BytesIO()
    monkeypatch.setattr(serialization, "location_tag", lambda storage: "cuda:0")
    torch.save(state, buffer)  # as a CUDA machine writes it
    monkeypatch.undo()
    buffer.seek(0)
    loaded = torch.load(buffer, map_location="tpu", weights_only=True)
    assert loaded["a"].device.type == "tpu" and loaded["a"] is loaded["b"]
    assert torch.equal(loaded["a"].cpu(), weight) and loaded["step"] == 3


def test_fused_and_foreach_optimizers_match_cpu():
    import copy

    for make in (
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True, weight_decay=0.1),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True, amsgrad=True),
        lambda ps: torch.optim.SGD(ps, lr=1e-2, fused=True, momentum=0.9, nesterov=True),
    ):
        torch.manual_seed(0)
        ref = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
        ours = copy.deepcopy(ref).to("tpu")
        opt_ref, opt_ours = make(ref.parameters()), make(ours.parameters())
        torchtpu.set_options(strict=True)
        for _ in range(3):
            x = torch.randn(4, 8)
            ref(x).square().mean().backward()
            opt_ref.step()
            opt_ref.zero_grad()
            ours(x.to("tpu")).square().mean().backward()
            opt_ours.step()
            opt_ours.zero_grad()
        for p, q in zip(ref.parameters(), ours.parameters(), strict=True):
            torch.testing.assert_close(q.cpu(), p, rtol=1e-5, atol=1e-6)
        torchtpu.set_options(strict=False)
