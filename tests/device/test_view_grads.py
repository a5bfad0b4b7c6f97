"""Autograd through in-place writes into views of tpu tensors. A tpu view owns its
storage, so autograd rebuilds views by replaying their ops (not ``as_strided``);
before it did, these gradients were silently wrong (DeepSeek-V3's attention
fills its keys this way)."""

import torch

import torchtpu  # noqa: F401


def _grads(fn, *shapes):
    torch.manual_seed(0)
    xs = [torch.randn(s, requires_grad=True) for s in shapes]
    fn(*xs).backward()
    ys = [x.detach().to("tpu").requires_grad_() for x in xs]
    fn(*ys).backward()
    return [(x.grad, y.grad.cpu()) for x, y in zip(xs, ys, strict=True)]


def test_copy_into_slices_of_a_new_tensor():
    weight = torch.randn(2, 4, 5, 24)

    def fill(a, b):
        keys = a.new_empty(2, 4, 5, 24)
        keys[..., :16].copy_(a)
        keys[..., 16:].copy_(b.expand(-1, 4, -1, -1))
        return (keys * weight.to(a.device)).sum()

    for expected, got in _grads(fill, (2, 4, 5, 16), (2, 1, 5, 8)):
        torch.testing.assert_close(got, expected)


def test_in_place_ops_through_transposed_and_selected_views():
    def write(a, b):
        out = torch.zeros(3, 4, device=a.device)
        out.t()[1:3].mul_(2).add_(b)
        out[0].copy_(a.sin())
        return (out * torch.arange(12.0, device=a.device).view(3, 4)).sum()

    for expected, got in _grads(write, (4,), (2, 3)):
        torch.testing.assert_close(got, expected)
