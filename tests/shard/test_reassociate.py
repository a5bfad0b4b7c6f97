"""Sums of matrix products fused into one product (torchtpu/shard/reassociate.py)."""

from __future__ import annotations

import torch
from torch.fx.experimental.proxy_tensor import make_fx

import torchtpu  # noqa: F401 - registers torchtpu::sum_of_mm and its lowering
from torchtpu.run.executor import GraphExecutor
from torchtpu.shard.reassociate import fuse_sums_of_products


def _targets(gm: torch.fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def _qkv_input_grad(x, wq, wk, wv, residual):
    """What a tensor-parallel backward computes for the input of q/k/v: a sum of
    products viewed back to (batch, tokens, width), plus the residual's gradient."""
    terms = [(x @ w).view(2, 3, 4) for w in (wq, wk, wv)]
    return (residual + (terms[0] + terms[1] + terms[2]),)


def _inputs():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=gen)
    ws = [torch.randn(5, 4, generator=gen) for _ in range(3)]
    return (x, *ws, torch.randn(2, 3, 4, generator=gen))


def test_a_sum_of_viewed_products_becomes_one_product():
    args = _inputs()
    gm = make_fx(_qkv_input_grad)(*args)
    assert fuse_sums_of_products(gm) == 1
    targets = _targets(gm)
    assert targets.count(torch.ops.torchtpu.sum_of_mm.default) == 1
    assert torch.ops.aten.mm.default not in targets
    assert targets.count(torch.ops.aten.add.Tensor) == 1  # the residual's, kept apart
    torch.testing.assert_close(gm(*args), _qkv_input_grad(*args))
    # ... and lowered: XLA computes the same.
    out = GraphExecutor(gm)(list(args))
    torch.testing.assert_close(tuple(out), _qkv_input_grad(*args), rtol=1e-5, atol=1e-5)


def test_unlike_or_shared_products_are_left_alone():
    x, wq, wk, _, _ = _inputs()

    def unlike(x, wq, w_wide):  # products of different shapes
        return (x @ wq).sum() + (x @ w_wide).sum()

    gm = make_fx(unlike)(x, wq, torch.randn(5, 7))
    assert fuse_sums_of_products(gm) == 0

    def shared(x, wq, wk):  # a product used twice must stay
        a = x @ wq
        return a + x @ wk, a

    gm = make_fx(shared)(x, wq, wk)
    assert fuse_sums_of_products(gm) == 0
    assert torch.ops.torchtpu.sum_of_mm.default not in _targets(gm)
