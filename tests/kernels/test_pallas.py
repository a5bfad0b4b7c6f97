"""Pallas kernels as torch custom ops (``torchtpu.kernels.pallas``) and the flash
attention kernel: against plain PyTorch, in eager code on CPU tensors, under
``torch.compile(backend="tpu")`` in strict mode, under ``compile_step``, on tpu
tensors, and as SDPA's lowering with ``TORCHTPU_FLASH=1``. Interpret mode on the
CPU; tiny shapes, since every new shape compiles an interpreted kernel."""

from __future__ import annotations

import copy
import functools
import math

import jax
import jax.numpy as jnp
import pytest
import torch
import torch.nn.functional as F
from jax.experimental import pallas as pl

import torchtpu
from torchtpu.kernels import flash_attention as fa
from torchtpu.kernels.pallas import KernelError, interpret_mode, pallas_call, pallas_op

STRICT = {"strict": True}
BLOCKS = {"block_q": 32, "block_k": 32}


@pytest.fixture(autouse=True)
def quick_compiles():
    # Interpreted kernels are large programs; XLA:CPU's lowest optimisation level
    # compiles them about a quarter faster, and these shapes run in milliseconds
    # either way. (conftest restores the options after each test.)
    torchtpu.set_options(cpu_opt_level=0)


def reference(q, k, v, causal=False, scale=None):
    """Plain PyTorch attention in float32: the output and each row's log-sum-exp."""
    q, k, v = (t.float() for t in (q, k, v))
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = q @ k.transpose(-1, -2) * scale
    if causal:
        keep = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril()
        logits = logits.masked_fill(~keep, -math.inf)
    lse = logits.logsumexp(-1)
    return (logits - lse[..., None]).exp() @ v, lse


def inputs(shape_q, shape_kv, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    make = lambda s: torch.randn(s, generator=gen).to(dtype).requires_grad_()  # noqa: E731
    return make(shape_q), make(shape_kv), make(shape_kv)


def grads_of(fn, q, k, v, seed=1):
    """``fn``'s outputs and the gradients of a random weighting of them (the
    log-sum-exp too when ``fn`` returns it) with respect to q, k and v."""
    outs = fn(q, k, v)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o.float() * torch.randn(o.shape, generator=gen).to(o.device)).sum() for o in outs)
    return [o.detach() for o in outs], torch.autograd.grad(loss, (q, k, v))


# --- flash attention against PyTorch ------------------------------------------------------


@pytest.mark.parametrize(
    "shape_q, shape_kv, causal, kwargs",
    [
        ((1, 2, 64, 16), (1, 2, 96, 16), False, BLOCKS),
        # 80 is no multiple of the blocks; 2 query heads share 1 key/value head.
        ((1, 2, 80, 16), (1, 1, 80, 16), True, {"block_q": 32, "block_k": 16, "scale": 0.3}),
    ],
    ids=["full-seq_k96", "causal-seq80-gqa-scaled"],
)
def test_flash_matches_pytorch_forward_and_backward(shape_q, shape_kv, causal, kwargs):
    q, k, v = inputs(shape_q, shape_kv)
    (out, lse), grads = grads_of(lambda *a: fa.op(*a, causal=causal, **kwargs), q, k, v)
    scale = kwargs.get("scale")
    (want, want_lse), want_grads = grads_of(
        lambda *a: reference(*a, causal=causal, scale=scale), q, k, v
    )
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, want_lse, atol=1e-5, rtol=1e-5)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_flash_bfloat16_accumulates_in_float32():
    q, k, v = inputs((1, 2, 64, 16), (1, 2, 64, 16), torch.bfloat16)
    (out,), grads = grads_of(lambda *a: fa.flash_attention(*a, causal=True, **BLOCKS), q, k, v)
    (want,), want_grads = grads_of(lambda *a: reference(*a, causal=True)[0], q, k, v)
    assert out.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in grads)
    torch.testing.assert_close(out.float(), want, atol=2e-2, rtol=2e-2)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got.float(), expected.float(), atol=5e-2, rtol=5e-2)


def test_flash_refuses_what_it_cannot_take_naming_shapes():
    with pytest.raises(KernelError, match=r"query=\[2, 8, 4\]:float32.*4-d"):
        fa.flash_attention(*inputs((2, 8, 4), (2, 8, 4)))
    with pytest.raises(KernelError, match="2 heads are not a multiple of the key/value's 3"):
        fa.flash_attention(*inputs((1, 2, 8, 4), (1, 3, 8, 4)))
    with pytest.raises(KernelError, match="float64"):
        fa.flash_attention(*inputs((1, 1, 8, 4), (1, 1, 8, 4), torch.float64))


# --- the front ends -------------------------------------------------------------------------


def causal_flash(q, k, v):
    return fa.flash_attention(q, k, v, causal=True, **BLOCKS)


def test_flash_in_torch_compile_fullgraph_strict():
    q, k, v = inputs((1, 2, 64, 16), (1, 2, 64, 16))
    compiled = torch.compile(causal_flash, backend="tpu", fullgraph=True, options=STRICT)
    (out,), grads = grads_of(compiled, q, k, v)
    assert torchtpu.metrics()["compiles"] == 2  # the forward and the backward program
    (want,), want_grads = grads_of(lambda *a: reference(*a, causal=True)[0], q, k, v)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torchtpu.metrics()["fallbacks"]


class Attention(torch.nn.Module):
    def __init__(self, attend):
        super().__init__()
        self.qkv = torch.nn.Linear(16, 3 * 32)
        self.attend = attend

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, 2, 16).permute(2, 0, 3, 1, 4)
        return self.attend(q, k, v).square().mean()


def test_flash_in_compile_step_trains_like_eager_sdpa():
    torch.manual_seed(0)
    ours = Attention(causal_flash)
    ref = copy.deepcopy(ours)
    ref.attend = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    our_opt = torch.optim.SGD(ours.parameters(), lr=0.5)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)

    def step(model, opt, x):
        loss = model(x)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    compiled = torchtpu.compile_step(lambda x: step(ours, our_opt, x))
    x = torch.randn(1, 64, 16)
    for _ in range(2):
        torch.testing.assert_close(compiled(x), step(ref, ref_opt, x), atol=1e-5, rtol=1e-5)
    compiled.sync()
    torch.testing.assert_close(ours.qkv.weight, ref.qkv.weight, atol=1e-5, rtol=1e-5)
    assert not torchtpu.metrics()["fallbacks"]


def test_flash_on_tpu_tensors_is_recorded_and_lowered():
    q, k, v = inputs((1, 2, 64, 16), (1, 2, 64, 16))

    def fn(q, k, v):
        return fa.flash_attention(q, k, v, causal=True, scale=0.2, **BLOCKS)

    (want,), want_grads = grads_of(lambda *a: reference(*a, causal=True, scale=0.2)[0], q, k, v)
    on_tpu = [t.detach().to("tpu").requires_grad_() for t in (q, k, v)]
    (out,), grads = grads_of(fn, *on_tpu)
    assert out.device.type == "tpu" and all(g.device.type == "tpu" for g in grads)
    torch.testing.assert_close(out.cpu(), want, atol=1e-5, rtol=1e-5)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)
    metrics = torchtpu.metrics()
    assert not metrics["fallbacks"]
    assert metrics["fused_compiles"] >= 1


# --- scaled_dot_product_attention with TORCHTPU_FLASH=1 ----------------------------------


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_sdpa_takes_the_flash_kernel_only_when_switched_on(monkeypatch):
    q, k, v = inputs((1, 2, 64, 16), (1, 2, 64, 16))
    # Counts lowerings: no program may come from the disk cache (compile/lowered_cache.py).
    monkeypatch.setattr(torchtpu.options(), "cache_dir", "")

    def run():
        torch._dynamo.reset()
        torchtpu.clear_program_cache()
        before = fa.traces()
        result = grads_of(torch.compile(sdpa, backend="tpu", options=STRICT), q, k, v)
        return result, fa.traces() - before

    monkeypatch.delenv("TORCHTPU_FLASH", raising=False)
    ((plain,), plain_grads), plain_traces = run()
    monkeypatch.setenv("TORCHTPU_FLASH", "1")
    ((flash,), flash_grads), flash_traces = run()
    assert plain_traces == 0
    assert flash_traces == 2  # the forward and the backward lowering
    torch.testing.assert_close(flash, plain, atol=1e-5, rtol=1e-5)
    for got, expected in zip(flash_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_sdpa_with_a_mask_keeps_the_existing_lowering(monkeypatch):
    monkeypatch.setenv("TORCHTPU_FLASH", "1")
    q, k, v = (t.detach() for t in inputs((1, 2, 16, 8), (1, 2, 16, 8)))
    mask = torch.rand(16, 16) > 0.3
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # noqa: E731
    before = fa.traces()
    out = torch.compile(fn, backend="tpu", options=STRICT)(q, k, v)
    assert fa.traces() == before
    torch.testing.assert_close(out, fn(q, k, v))


# --- pallas_op: registering a kernel ------------------------------------------------------


def _scaled_square_kernel(x_ref, o_ref, *, alpha):
    o_ref[...] = alpha * x_ref[...] * x_ref[...]


def _mul_kernel(a_ref, b_ref, o_ref, *, alpha):
    o_ref[...] = 2 * alpha * a_ref[...] * b_ref[...]


def _rows(x, kernel, *arrays):
    """A kernel over blocks of 4 rows of 2-d ``x``."""
    spec = pl.BlockSpec((4, x.shape[1]), lambda i: (i, 0))
    return pallas_call(
        kernel,
        grid=(x.shape[0] // 4,),
        in_specs=[spec] * len(arrays),
        out_specs=spec,
        out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
    )(*arrays)


def scaled_square(x: jax.Array, *, alpha: float = 1.0) -> jax.Array:
    return _rows(x, functools.partial(_scaled_square_kernel, alpha=alpha), x)


def scaled_square_backward(
    x: jax.Array, out: jax.Array, grad: jax.Array, *, alpha: float = 1.0
) -> jax.Array:
    return _rows(x, functools.partial(_mul_kernel, alpha=alpha), x, grad)


square = pallas_op("torchtpu_test::scaled_square", scaled_square, backward=scaled_square_backward)


def test_pallas_op_eager_gradcheck_compile_and_device():
    assert interpret_mode()  # the CPU platform
    x = torch.randn(8, 8, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(square(x, alpha=0.5), 0.5 * x * x)
    assert torch.autograd.gradcheck(lambda x: square(x, alpha=0.5), (x,))

    y = torch.randn(8, 8, requires_grad=True)
    fn = lambda y: square(y, alpha=1.5).sum()  # noqa: E731
    torch.compile(fn, backend="tpu", fullgraph=True, options=STRICT)(y).backward()
    torch.testing.assert_close(y.grad, 3 * y.detach())

    on_tpu = y.detach().to("tpu").requires_grad_()
    fn(on_tpu).backward()
    torch.testing.assert_close(on_tpu.grad.cpu(), 3 * y.detach())
    assert not torchtpu.metrics()["fallbacks"]


def test_pallas_op_is_in_the_graph_as_one_node():
    gm = torch.fx.experimental.proxy_tensor.make_fx(lambda x: square(x, alpha=2.0))(
        torch.randn(8, 8)
    )
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets == [square.op]


def test_pallas_op_errors_name_the_op_and_what_to_do():
    def no_annotations(x):
        return x

    with pytest.raises(KernelError, match="parameter 'x' .* needs a type annotation"):
        pallas_op("torchtpu_test::bare", no_annotations)

    def untyped_return(x: jax.Array):
        return x

    with pytest.raises(KernelError, match="annotated to return jax.Array"):
        pallas_op("torchtpu_test::untyped", untyped_return)

    with pytest.raises(KernelError, match="already has an op 'torchtpu_test::scaled_square'"):
        pallas_op("torchtpu_test::scaled_square", scaled_square)

    def wrong_grad(x: jax.Array, out: jax.Array, grad: jax.Array) -> jax.Array:
        return jnp.zeros((3,), x.dtype)

    def ident(x: jax.Array) -> jax.Array:
        return x * 1

    op = pallas_op("torchtpu_test::wrong_grad", ident, backward=wrong_grad)
    x = torch.randn(4, requires_grad=True)
    with pytest.raises(KernelError, match=r"gradient for 'x' has shape \[3\].*shape \[4\]"):
        op(x).sum().backward()
