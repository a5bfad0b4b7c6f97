"""On an NVIDIA GPU: torchtpu compiles for the GPU platform, matches eager CUDA, and
takes CUDA memory from PyTorch without a copy. Skipped without a CUDA GPU and a
CUDA JAX (``pip install "torchtpu[cuda]"``); ``benchmarks/gpu.sh`` runs them.

The skip is decided without starting JAX's backends, so collecting these tests
on a CPU machine changes nothing for the rest of the session.
"""

from __future__ import annotations

import copy
from importlib import metadata

import pytest
import torch

import torchtpu
from torchtpu.runtime import default_device, from_device, jax_scope, to_device


def _cuda_jax() -> str | None:
    """The installed CUDA plugin of JAX, or None."""
    for dist in ("jax-cuda12-plugin", "jax-cuda13-plugin"):
        try:
            metadata.version(dist)
            return dist
        except metadata.PackageNotFoundError:
            continue
    return None


def _why_skip() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    if _cuda_jax() is None:
        return 'no CUDA JAX (pip install "torchtpu[cuda]")'
    return None


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or ""),
]


@pytest.fixture(autouse=True)
def on_gpu():
    torchtpu.set_options(platform="gpu")  # conftest's fixture restores the options after
    assert default_device().platform in {"gpu", "cuda"}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128),
        torch.nn.LayerNorm(128),
        torch.nn.GELU(),
        torch.nn.Linear(128, 10),
    )


def test_compiled_model_on_cuda_tensors_matches_eager_cuda():
    eager = _model().cuda()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend="tpu", options={"strict": True})
    x = torch.randn(32, 64, device="cuda")

    expected = eager(x)
    expected.square().mean().backward()
    torchtpu.reset_metrics()
    out = compiled(x)
    out.square().mean().backward()

    assert out.device.type == "cuda"
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    for got, want in zip(compiled_model.parameters(), eager.parameters(), strict=True):
        assert got.grad.device.type == "cuda"
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-4)
    # Inputs, weights and results crossed by DLPack: nothing went through the host.
    assert torchtpu.metrics().get("device_to_host", 0) == 0


def test_cuda_tensors_hand_over_to_jax_zero_copy():
    t = torch.randn(256, 256, device="cuda")
    with jax_scope() as device:
        array = to_device(t, device)
        assert array.unsafe_buffer_pointer() == t.data_ptr()
        doubled = array * 2
        back = from_device(doubled, like=torch.device("cuda"))
    assert back.device.type == "cuda"
    assert back.data_ptr() == doubled.unsafe_buffer_pointer()
    torch.testing.assert_close(back, t * 2)


def test_compile_step_on_the_gpu_matches_eager_cuda():
    eager = _model().cuda()
    on_tpu = copy.deepcopy(eager).to("tpu")
    x = torch.randn(32, 64)
    y = torch.randint(0, 10, (32,))

    def make_step(model, inputs, labels):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

        def step():
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss

        return step, opt

    eager_step, _ = make_step(eager, x.cuda(), y.cuda())
    step, opt = make_step(on_tpu, x.to("tpu"), y.to("tpu"))
    compiled_step = torchtpu.compile_step(step, models=[on_tpu], optimizers=[opt])
    for _ in range(3):
        want, got = eager_step(), compiled_step()
        torch.testing.assert_close(got.cpu(), want.cpu(), rtol=1e-4, atol=1e-4)
    for got, want in zip(on_tpu.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(got.cpu(), want.cpu(), rtol=1e-4, atol=1e-4)
