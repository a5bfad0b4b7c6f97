"""The ``tpu`` backend end to end: semantics real models rely on."""

import subprocess
import sys

import pytest
import torch

import torchtpu


def compiled(fn, **options):
    return torch.compile(fn, backend="tpu", options=options or None)


def test_backend_needs_no_import(tmp_path):
    code = (
        "import sys, torch\n"
        "m = torch.nn.Linear(3, 2)\n"
        "x = torch.randn(4, 3)\n"
        "out = torch.compile(m, backend='tpu')(x)\n"
        "assert torch.allclose(out, m(x), atol=1e-6)\n"
        "print('loaded', 'torchtpu' in sys.modules)\n"
    )
    env = {"TORCHTPU_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loaded True" in result.stdout


def test_forward_and_backward_match_eager():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    x = torch.randn(5, 8, requires_grad=True)
    out = compiled(model)(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *model.parameters()])
    ref = model(x)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *model.parameters()])
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)
    assert torchtpu.metrics()["compiles"] == 2  # one forward, one backward program


@pytest.fixture
def uploaded(monkeypatch) -> list[torch.Tensor]:
    """Every tensor uploaded to the device (``transfer._upload``) while the test runs."""
    import torchtpu.runtime.transfer as transfer

    seen = []
    real_upload = transfer._upload

    def spy(t, device, copy=False):
        seen.append(t)
        return real_upload(t, device, copy)

    monkeypatch.setattr(transfer, "_upload", spy)
    return seen


def test_weights_stay_on_device_until_pytorch_changes_them(uploaded):
    model = torch.nn.Linear(32, 32)
    params = {id(p) for p in model.parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = compiled(model)
    x = torch.randn(4, 32)
    step(x).sum().backward()
    assert params <= {id(t) for t in uploaded}
    uploaded.clear()
    for _ in range(3):
        step(x).sum().backward()
    assert not params & {id(t) for t in uploaded}  # no weight re-sent
    opt.step()
    out = step(x)
    # On the CPU each weight's device array is the weight's own memory (a zero-copy
    # upload): the optimizer's in-place update is already in it, so nothing is sent
    # again, and the program sees the new weights.
    assert not params & {id(t) for t in uploaded}
    torch.testing.assert_close(out, model(x))


def test_a_weight_uploaded_as_a_copy_is_sent_again_after_a_change(uploaded):
    model = torch.nn.Linear(32, 32)
    # A transposed weight is not row-major: its upload is a contiguous copy.
    model.weight = torch.nn.Parameter(torch.randn(32, 32).t())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = compiled(model)
    x = torch.randn(4, 32)
    step(x).sum().backward()
    uploaded.clear()
    step(x)
    assert not any(t is model.weight for t in uploaded)  # unchanged: not sent again
    opt.step()
    out = step(x)
    assert any(t is model.weight for t in uploaded)  # changed, and a copy: sent again
    assert any(t is model.bias for t in uploaded) is False  # the bias shares its memory
    torch.testing.assert_close(out, model(x))


def test_load_state_dict_refreshes_device_copy():
    model = torch.nn.Linear(4, 4)
    step = compiled(model)
    x = torch.randn(2, 4)
    step(x)
    other = torch.nn.Linear(4, 4)
    model.load_state_dict(other.state_dict())
    torch.testing.assert_close(step(x), other(x))


def test_batchnorm_running_stats_are_updated():
    torch.manual_seed(0)
    ref = torch.nn.BatchNorm2d(3)
    ours = torch.nn.BatchNorm2d(3)
    ours.load_state_dict(ref.state_dict())
    step = compiled(ours)
    for _ in range(3):
        x = torch.randn(4, 3, 5, 5)
        torch.testing.assert_close(step(x), ref(x))
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert ours.num_batches_tracked.item() == 3


def test_in_place_buffer_update():
    class Counter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("count", torch.zeros(3))

        def forward(self, x):
            self.count.add_(1)
            return x * self.count

    module = Counter()
    step = compiled(module)
    for i in range(1, 4):
        out = step(torch.ones(3))
        assert out.tolist() == [float(i)] * 3
    assert module.count.tolist() == [3.0] * 3


def test_input_mutation():
    def f(x, y):
        x.mul_(2)
        y[0] = 7.0
        return x + y

    a, b = torch.ones(3), torch.zeros(3)
    out = compiled(f)(a, b)
    assert a.tolist() == [2.0] * 3
    assert b.tolist() == [7.0, 0.0, 0.0]
    assert out.tolist() == [9.0, 2.0, 2.0]


def test_aliased_outputs():
    def f(x):
        y = x * 2
        return y, y.t(), y[0], x.view(-1)

    x = torch.randn(3, 4)
    outs = compiled(f)(x)
    for o, r in zip(outs, f(x), strict=True):
        torch.testing.assert_close(o, r)
    assert outs[3].data_ptr() == x.data_ptr()  # a view of the input stays a view


def test_tied_weights():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 6)
            self.head = torch.nn.Linear(6, 10, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, idx):
            return self.head(torch.tanh(self.emb(idx)))

    torch.manual_seed(0)
    model = Tied()
    idx = torch.tensor([[1, 2, 3], [4, 5, 1]])
    out = compiled(model)(idx)
    (grad,) = torch.autograd.grad(out.sum(), [model.emb.weight])
    ref = model(idx)
    (ref_grad,) = torch.autograd.grad(ref.sum(), [model.emb.weight])
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, ref_grad)


def test_int64_values_survive():
    def f(idx, table):
        return table[idx] + idx.unsqueeze(-1), idx * (2**40)

    idx = torch.tensor([0, 2, 1])
    table = torch.randn(3, 5)
    out, big = compiled(f)(idx, table)
    ref, ref_big = f(idx, table)
    torch.testing.assert_close(out, ref)
    assert big.dtype == torch.int64
    assert torch.equal(big, ref_big)


def test_dropout_is_reproducible_from_manual_seed():
    drop = compiled(torch.nn.Dropout(0.5))
    x = torch.ones(4000)
    torch.manual_seed(123)
    a = drop(x)
    torch.manual_seed(123)
    b = drop(x)
    c = drop(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    kept = (a != 0).float()
    assert abs(kept.mean().item() - 0.5) < 0.05  # binomial sd is 0.008
    assert torch.allclose(a[a != 0], torch.tensor(2.0))


def test_dynamic_shapes_are_specialized_with_counted_recompiles():
    model = torch.nn.Linear(4, 2)
    step = compiled(model)
    for n in [2, 3, 4, 5, 3]:
        x = torch.randn(n, 4)
        torch.testing.assert_close(step(x), model(x))
    m = torchtpu.metrics()
    assert m["compiles"] == 4  # batch 3 comes back and reuses its program
    assert m["recompiles"] + m["graphs"] >= 4


def test_identical_graphs_share_programs():
    def f(x):
        return torch.sin(x) * 2

    def g(x):
        return torch.sin(x) * 2

    x = torch.randn(7)
    compiled(f)(x)
    compiled(g)(x)
    assert torchtpu.metrics()["compiles"] == 1
    assert torchtpu.metrics()["cache_hits"] == 1


def test_unknown_compile_option_is_rejected():
    with pytest.raises(Exception, match="unknown option 'strictt'"):
        compiled(torch.sin, strictt=True)(torch.randn(2))


def test_pytorch_level_mistake_is_a_pytorch_error():
    def f(a, b):
        return a @ b

    with pytest.raises(Exception) as info:
        compiled(f)(torch.randn(2, 3), torch.randn(4, 5))
    text = "".join(str(e) for e in _chain(info.value))
    assert "jax" not in text.lower().split("torch._dynamo")[0][:200]
    assert "2x3" in text or "[2, 3]" in text or "(2, 3)" in text


def _chain(exc):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def test_dynamo_never_traces_the_runtime():
    """An op on tpu tensors that runs eagerly under a compiled frame (DDP's and FSDP2's
    hooks, a graph break) reaches torchtpu's Python kernel: Dynamo must run it, and
    JAX, as they are rather than compile their frames as user code."""
    import jax.numpy as jnp
    from torch._dynamo import trace_rules

    from torchtpu.compile.program import compile_function
    from torchtpu.device.tensor import kernel
    from torchtpu.lower.interpreter import run_nodes
    from torchtpu.shard.c10d import ProcessGroupTPU

    for runtime in (kernel, run_nodes, compile_function, ProcessGroupTPU.allreduce, jnp.reshape):
        assert trace_rules.check(runtime), runtime
    # The user-facing entry points stay traceable.
    assert not trace_rules.check(torchtpu.compile_step)
