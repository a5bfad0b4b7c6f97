"""Grouped matmuls lowered to ``jax.lax.ragged_dot``: every operand layout of
``aten._grouped_mm`` and transformers' grouped-matmul custom ops, forward and
backward, against PyTorch's CPU kernels; bad offsets raise when read."""

from __future__ import annotations

import pytest
import torch

import torchtpu

# An empty group included. PyTorch's kernels leave rows past the last offset
# uninitialised, so comparisons use offsets that cover every row.
OFFS = torch.tensor([2, 2, 8], dtype=torch.int32)


@pytest.mark.parametrize(
    "shapes",
    [
        ((8, 4), (3, 4, 8)),  # rows of a in groups, one weight per group
        ((3, 8, 4), (4, 8)),  # columns of b in groups
        ((8, 8), (8, 4)),  # the contraction in groups: one product per group
        ((3, 8, 4), (3, 4, 8)),  # batched, no offsets
    ],
    ids=["2d-3d", "3d-2d", "2d-2d", "3d-3d"],
)
def test_grouped_mm_matches_pytorch_forward_and_backward(shapes):
    torch.manual_seed(0)
    a, b = (torch.randn(s, requires_grad=True) for s in shapes)
    offs = None if len(shapes[0]) == len(shapes[1]) == 3 else OFFS

    def fn(a, b):
        return torch._grouped_mm(a, b, offs=offs)

    expected = fn(a, b)
    expected.square().sum().backward()
    grads = [a.grad.clone(), b.grad.clone()]
    a.grad = b.grad = None
    got = torch.compile(fn, backend="tpu", options={"strict": True})(a, b)
    torch.testing.assert_close(got, expected)
    got.square().sum().backward()
    for x, g in zip((a, b), grads, strict=True):
        torch.testing.assert_close(x.grad, g)


def test_grouped_mm_on_tpu_tensors_takes_float32():
    """PyTorch's meta kernel allows bfloat16 only (CUDA's limit); XLA runs float32."""
    torch.manual_seed(0)
    a, b = torch.randn(8, 4), torch.randn(3, 4, 8)
    got = torch._grouped_mm(a.to("tpu"), b.to("tpu"), offs=OFFS.to("tpu")).cpu()
    torch.testing.assert_close(got, torch._grouped_mm(a, b, offs=OFFS))


def test_rows_past_the_last_offset_are_zero():
    a, b = torch.randn(8, 4), torch.randn(3, 4, 8)
    offs = torch.tensor([2, 2, 6], dtype=torch.int32)
    out = torch.compile(lambda a, b: torch._grouped_mm(a, b, offs=offs), backend="tpu")(a, b)
    torch.testing.assert_close(out[6:], torch.zeros(2, 8))
    torch.testing.assert_close(out[2:6], a[2:6] @ b[2])


def test_transformers_grouped_mm_fallback_lowers_forward_and_backward():
    pytest.importorskip("transformers")
    from transformers.integrations import moe  # noqa: F401  (defines the custom ops)

    torch.manual_seed(0)
    a, b = torch.randn(8, 4, requires_grad=True), torch.randn(3, 4, 8, requires_grad=True)

    def fn(a, b):
        return torch.ops.transformers.grouped_mm_fallback(a, b, OFFS)

    fn(a, b).square().sum().backward()
    grads = [a.grad.clone(), b.grad.clone()]
    a.grad = b.grad = None
    torchtpu.reset_metrics()
    out = torch.compile(fn, backend="tpu", options={"strict": True})(a, b)
    torch.testing.assert_close(out, fn(a, b))
    out.square().sum().backward()
    for x, g in zip((a, b), grads, strict=True):
        torch.testing.assert_close(x.grad, g)
    assert torchtpu.metrics()["fallbacks"] == {}


def test_bad_offsets_raise_when_read():
    a, b = torch.randn(8, 4), torch.randn(3, 4, 8)
    compiled = torch.compile(lambda a, b, o: torch._grouped_mm(a, b, offs=o), backend="tpu")
    with pytest.raises(IndexError, match=r"_grouped_mm: the offsets must be non-decreasing.*9"):
        compiled(a, b, torch.tensor([2, 1, 9], dtype=torch.int32))
