"""The tpu device: transfers, factories, views, in-place ops, device rules, fallbacks."""

from __future__ import annotations

import io

import pytest
import torch

import torchtpu
from torchtpu.device import is_tpu


def test_device_is_real_and_round_trips():
    cpu = torch.randn(3, 4)
    x = cpu.to("tpu")
    assert is_tpu(x) and type(x) is torch.Tensor and x.device == torch.device("tpu", 0) and x.is_tpu
    assert torch.equal(x.cpu(), cpu)
    assert x.tolist() == cpu.tolist()
    assert (x * 2).sum().item() == pytest.approx(float((cpu * 2).sum()), rel=1e-6)
    cpu.add_(1)  # the device copy is a copy
    assert not torch.equal(x.cpu(), cpu)


def test_factories_on_the_device():
    assert torch.equal(torch.zeros(2, 3, device="tpu").cpu(), torch.zeros(2, 3))
    assert torch.equal(torch.arange(1, 7, 2, device="tpu").cpu(), torch.arange(1, 7, 2))
    assert torch.equal(torch.full((2,), 1.5, device="tpu").cpu(), torch.full((2,), 1.5))
    assert torch.equal(torch.tensor([1, 2], device="tpu").cpu(), torch.tensor([1, 2]))
    assert torch.equal(torch.eye(3, device="tpu").cpu(), torch.eye(3))
    r = torch.randn(1000, device="tpu")
    assert r.device.type == "tpu" and abs(r.mean().item()) < 0.2


def test_printing_shows_values_and_device():
    x = torch.tensor([1.5, 2.0]).to("tpu").requires_grad_()
    assert repr(x) == "tensor([1.5000, 2.0000], device='tpu:0', requires_grad=True)"
    assert "grad_fn=<MulBackward0>" in repr(x * 2)
    assert f"{x.sum():.1f}" == "3.5"


def test_torch_save_of_device_tensors(tmp_path):
    model = torch.nn.Linear(3, 2).to("tpu")
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)
    assert torch.equal(loaded["weight"], model.weight.cpu())


def test_views_alias_their_base():
    base = torch.arange(12.0).reshape(3, 4).to("tpu")
    row = base[1]
    col = base[:, 2]
    row.mul_(10)  # in-place on a view writes through to the base and its other views
    expected = torch.arange(12.0).reshape(3, 4)
    expected[1] *= 10
    assert torch.equal(base.cpu(), expected)
    assert torch.equal(col.cpu(), expected[:, 2])
    base.t()[0].fill_(-1)
    expected.t()[0].fill_(-1)
    assert torch.equal(base.cpu(), expected)
    a, b = base.split(2, dim=0)
    b.zero_()
    expected[2:] = 0
    assert torch.equal(base.cpu(), expected)
    base[0, 1] = 7.0
    expected[0, 1] = 7.0
    assert torch.equal(base.cpu(), expected)
    detached = base.detach()
    detached.add_(1)
    assert torch.equal(base.cpu(), expected + 1)


def test_in_place_casts_to_self_dtype_and_checks_shape():
    x = torch.ones(3, dtype=torch.int32).to("tpu")
    x.add_(torch.tensor(2))
    assert x.dtype == torch.int32 and x.cpu().tolist() == [3, 3, 3]
    with pytest.raises(RuntimeError, match="doesn't match the broadcast shape"):
        x.add_(torch.ones(2, 3, dtype=torch.int32).to("tpu"))


def test_foreach_ops_run_per_tensor():
    ts = [torch.ones(2).to("tpu"), torch.zeros(3).to("tpu")]
    torch._foreach_add_(ts, 1.0)
    assert [t.cpu().tolist() for t in ts] == [[2.0, 2.0], [1.0, 1.0, 1.0]]


def test_mixing_devices_follows_pytorch_rules():
    x = torch.ones(3).to("tpu")
    with pytest.raises(RuntimeError, match="tpu:0 and cpu"):
        x + torch.ones(3)
    with pytest.raises(RuntimeError, match="tpu:0 and cpu"):
        torch.ones(3) * x
    # A 0-dim CPU tensor is a scalar, as on CUDA.
    assert (x * torch.tensor(2.0)).cpu().tolist() == [2.0, 2.0, 2.0]


def test_user_errors_are_raised_at_the_op():
    a = torch.ones(2, 3).to("tpu")
    with pytest.raises(RuntimeError, match=r"\[2, 3\]"):
        a @ a


def test_ops_without_lowering_fall_back_visibly():
    from _unlowered import mystery, mystery_cpu

    x = torch.tensor([3.0, 1.0, 3.0, 2.0]).to("tpu")
    with pytest.warns(UserWarning, match="has no XLA lowering; it runs in eager PyTorch"):
        out = mystery_cpu(x)
    assert out.device.type == "tpu"
    torch.testing.assert_close(out.cpu(), torch.special.bessel_j0(x.cpu()))
    assert torchtpu.metrics()["fallbacks"] == {"torchtpu_test.mystery_cpu.default": 1}
    # A library op with a Python implementation runs that implementation on the device.
    torch.testing.assert_close(mystery(x).cpu(), out.cpu())
    assert torchtpu.metrics()["fallbacks"] == {"torchtpu_test.mystery_cpu.default": 1}
    torchtpu.set_options(strict=True)
    with pytest.raises(torchtpu.UnsupportedOpError, match="strict mode"):
        mystery_cpu(x)


def test_data_dependent_sizes_run_on_the_device():
    torchtpu.set_options(strict=True)  # no eager fallback: each runs as a sized program
    x = torch.tensor([1.0, -2.0, 3.0, 3.0]).to("tpu")
    assert x[x > 0].cpu().tolist() == [1.0, 3.0, 3.0]
    assert x.nonzero().cpu().tolist() == [[0], [1], [2], [3]]
    assert torch.unique(x).cpu().tolist() == [-2.0, 1.0, 3.0]
    assert torch.masked_select(x, x < 2).cpu().tolist() == [1.0, -2.0]
    assert torchtpu.metrics()["size_reads"] == 4
    assert torchtpu.metrics()["fallbacks"] == {}


def test_autograd_through_composite_ops():
    torch.manual_seed(0)
    w = torch.randn(4, 3)
    x = torch.randn(2, 3)
    ref_w = w.clone().requires_grad_()
    torch.nn.functional.linear(x, ref_w).tanh().sum().backward()
    dev_w = w.to("tpu").requires_grad_()
    out = torch.nn.functional.linear(x.to("tpu"), dev_w).tanh().sum()
    assert out.grad_fn is not None
    out.backward()
    torch.testing.assert_close(dev_w.grad.cpu(), ref_w.grad)


def test_tied_weights_stay_tied():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

    model = Tied().to("tpu")
    assert model.head.weight is model.embed.weight
    assert isinstance(model.head.weight, torch.nn.Parameter)
    assert len(list(model.parameters())) == 1


def test_a_freed_storage_holds_no_buffer_until_reallocated():
    """FSDP2's free_storage/alloc_storage on tpu tensors: release drops the buffer (its
    views too), reading says so, reallocate and a write make it usable again."""
    from torchtpu.device.tensor import FreedError, handle, reallocate, release

    base = torch.arange(6.0, device="tpu")
    view = base.view(2, 3)
    assert view.sum().item() == 15.0  # the view caches a value of its own
    release(base)
    release(view)
    assert handle(base).st.value.array is None and handle(view).cv.array is None
    with pytest.raises(FreedError, match=r"torch.float32\[2, 3\] \(a view of torch.float32\[6\]\)"):
        view.cpu()
    with pytest.raises(FreedError, match="after its storage was freed"):
        (base + 1).cpu()
    reallocate(base)
    base.copy_(torch.ones(6))
    assert view.cpu().tolist() == [[1.0] * 3] * 2
