"""The CPU's convolution formulations (non-overlapping windows and small outputs'
im2col as one matrix product, depthwise as shifted slices) against PyTorch: forward,
input, weight and bias gradients, and that the CPU lowering really takes them (no
``convolution`` op left)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
import torch

from torchtpu.lower.ops import conv

# (input shape, out channels, kernel, stride, padding, dilation, groups, CPU form)
CASES = {
    "1x1": ((2, 6, 5, 7), 4, (1, 1), 1, 0, 1, 1, "windows"),
    "1x1-stride2-odd": ((2, 6, 7, 9), 5, (1, 1), 2, 0, 1, 1, "windows"),
    "1x1-dilated": ((2, 3, 6, 6), 4, (1, 1), (2, 3), 0, 2, 1, "windows"),
    "patchify-4-remainder": ((2, 3, 13, 10), 8, (4, 4), 4, 0, 1, 1, "windows"),
    "2x2-stride2": ((3, 6, 8, 6), 10, (2, 2), 2, 0, 1, 1, "windows"),
    "2x1-stride3x2": ((2, 4, 11, 9), 5, (2, 1), (3, 2), 0, 1, 1, "windows"),
    "depthwise-7x7": ((2, 6, 9, 8), 6, (7, 7), 1, 3, 1, 6, "depthwise"),
    "depthwise-3x5-dilated": ((2, 4, 11, 9), 4, (3, 5), 1, (2, 1), (2, 1), 4, "depthwise"),
    "depthwise-unpadded": ((3, 5, 6, 7), 5, (3, 3), 1, 0, 1, 5, "depthwise"),
    "depthwise-overpadded": ((1, 3, 4, 4), 3, (3, 3), 1, 3, 1, 3, "depthwise"),
    "3x3": ((2, 4, 7, 7), 6, (3, 3), 1, 1, 1, 1, "im2col"),
    "3x3-stride2-odd": ((2, 5, 9, 7), 6, (3, 3), 2, 1, 1, 1, "im2col"),
    "3x3-stride2-unpadded": ((2, 3, 8, 10), 4, (3, 3), (2, 3), 0, 1, 1, "im2col"),
    "5x3-dilated": ((2, 3, 11, 9), 4, (5, 3), 1, (2, 1), (2, 3), 1, "im2col"),
    "3x3-overpadded": ((1, 2, 3, 3), 3, (3, 3), 1, 3, 1, 1, "im2col"),
    "1x1-padded": ((2, 4, 5, 5), 6, (1, 1), 1, 1, 1, 1, "im2col"),
    # XLA's convolution stays for these:
    "3x3-large-output": ((1, 2, 17, 17), 3, (3, 3), 1, 1, 1, 1, None),
    "1x1-groups2": ((2, 4, 5, 5), 6, (1, 1), 1, 0, 1, 2, None),
    "depthwise-stride2": ((2, 4, 9, 9), 4, (3, 3), 2, 1, 1, 4, None),
    "depthwise-multiplier2": ((2, 3, 6, 6), 6, (3, 3), 1, 1, 1, 3, None),
}


def _inputs(shape, out_channels, kernel, groups, dtype):
    torch.manual_seed(0)
    x = torch.randn(shape).to(dtype)
    w = (torch.randn(out_channels, shape[1] // groups, *kernel) / 3).to(dtype)
    b = torch.randn(out_channels).to(dtype)
    return x, w, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(CASES))
def test_conv_cpu_matches_pytorch(name, dtype):
    shape, out_channels, kernel, stride, padding, dilation, groups, _ = CASES[name]
    x, w, b = _inputs(shape, out_channels, kernel, groups, dtype)

    def fn(x, w, b):
        return torch.nn.functional.conv2d(x, w, b, stride, padding, dilation, groups)

    # The reference: float32 arithmetic on the same (possibly bf16-rounded) values.
    ref = [t.detach().float().requires_grad_() for t in (x, w, b)]
    expected = fn(*ref)
    grad = torch.randn(expected.shape)
    expected.backward(grad)

    got_args = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    got = torch.compile(fn, backend="tpu", options={"strict": True})(*got_args)
    got.backward(grad.to(dtype))
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 5e-2}
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, **tol)
    for arg, want in zip(got_args, ref, strict=True):
        assert arg.grad.dtype == dtype
        torch.testing.assert_close(arg.grad.float(), want.grad, **tol)


def _lowered(name, mask=None):
    shape, out_channels, kernel, stride, padding, dilation, groups, _ = CASES[name]
    x, w, _ = (
        jnp.asarray(t.numpy()) for t in _inputs(shape, out_channels, kernel, groups, torch.float32)
    )
    n = len(kernel)
    args = ([stride] * n if isinstance(stride, int) else list(stride),)
    args += ([padding] * n if isinstance(padding, int) else list(padding),)
    args += ([dilation] * n if isinstance(dilation, int) else list(dilation),)
    if mask is None:
        fn = lambda x, w: conv.convolution(x, w, None, *args, False, [0, 0], groups)  # noqa: E731
        return jax.jit(fn).lower(x, w).as_text()
    out = jax.eval_shape(
        lambda x, w: conv.convolution(x, w, None, *args, False, [0, 0], groups), x, w
    )
    g = jnp.ones(out.shape, out.dtype)
    fn = lambda g, x, w: conv.convolution_backward(  # noqa: E731
        g, x, w, [out_channels], *args, False, [0, 0], groups, mask
    )
    return jax.jit(fn).lower(g, x, w).as_text()


@pytest.mark.parametrize("name", list(CASES))
def test_cpu_lowering_takes_the_fast_form(name):
    """Where a CPU form applies, neither the forward nor the gradients hold a
    convolution; where none does, XLA's convolution is still there."""
    form = CASES[name][-1]
    for mask in (None, [True, False, False], [False, True, False]):
        text = _lowered(name, mask)
        assert ("stablehlo.convolution" in text) == (form is None), (name, mask)


def test_other_platforms_keep_xlas_convolution(monkeypatch):
    monkeypatch.setattr(conv, "platform_name", lambda: "tpu")
    for name in ("1x1", "depthwise-7x7", "3x3"):
        assert "stablehlo.convolution" in _lowered(name)
        assert "stablehlo.convolution" in _lowered(name, [True, True, False])


@pytest.mark.parametrize("name", ["1x1-stride2-odd", "depthwise-7x7", "3x3"])
def test_backward_output_mask(name):
    shape, out_channels, kernel, stride, padding, dilation, groups, _ = CASES[name]
    x, w, _ = (
        jnp.asarray(t.numpy()) for t in _inputs(shape, out_channels, kernel, groups, torch.float32)
    )
    args = (
        [stride] * 2 if isinstance(stride, int) else list(stride),
        [padding] * 2,
        [dilation] * 2,
    )
    out = conv.convolution(x, w, None, *args, False, [0, 0], groups)
    g = jnp.ones_like(out)
    dx, dw, db = conv.convolution_backward(
        g, x, w, [out_channels], *args, False, [0, 0], groups, [False, True, True]
    )
    assert dx is None and dw.shape == w.shape and db.shape == (out_channels,)
    dx, dw, db = conv.convolution_backward(
        g, x, w, [out_channels], *args, False, [0, 0], groups, [True, False, False]
    )
    assert dx.shape == x.shape and dw is None and db is None


def test_unbatched_input():
    torch.manual_seed(0)
    x, w = torch.randn(6, 5, 7, requires_grad=True), torch.randn(4, 6, 1, 1, requires_grad=True)
    expected = torch.nn.functional.conv2d(x, w, stride=2)
    expected.sum().backward()
    grads = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    got = torch.compile(lambda x, w: torch.nn.functional.conv2d(x, w, stride=2), backend="tpu")(
        x, w
    )
    torch.testing.assert_close(got, expected)
    got.sum().backward()
    torch.testing.assert_close(x.grad, grads[0])
    torch.testing.assert_close(w.grad, grads[1])


@pytest.mark.parametrize(
    "shape, kernel, stride, padding, dilation, ceil_mode",
    [
        ((2, 3, 9, 11), 3, 2, 1, 1, False),  # ResNet's stem pool, odd sizes
        ((2, 3, 10, 10), 3, 2, 1, 1, True),
        ((1, 2, 8, 8), 2, 2, 0, 1, False),
        ((2, 4, 12, 12), 3, 1, 1, 2, False),
        ((1, 1, 7, 7), 3, 3, 1, 1, True),
    ],
)
def test_max_pool_by_slices_matches_pytorch(shape, kernel, stride, padding, dilation, ceil_mode):
    """On the CPU a max pool is one strided slice per window position (no reduce-window),
    with PyTorch's values, indices (first maximum; NaN wins) and gradients."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    x[0, 0, 1, 1] = float("nan")
    x[0, -1, :3, :3] = float("-inf")
    x[-1, 0, 2, :] = 5.0  # ties: the first position wins
    x.requires_grad_()

    def f(x):
        return torch.nn.functional.max_pool2d(
            x, kernel, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True
        )

    want, want_idx = f(x)
    x2 = x.detach().clone().requires_grad_()
    got, got_idx = torch.compile(f, backend="tpu", options={"strict": True})(x2)
    assert torch.equal(got_idx, want_idx)
    torch.testing.assert_close(got, want, equal_nan=True)
    g = torch.randn_like(want)
    (want_grad,) = torch.autograd.grad(want, x, g)
    (got_grad,) = torch.autograd.grad(got, x2, g)
    torch.testing.assert_close(got_grad, want_grad)

    pool = [[kernel] * 2, [stride] * 2, [padding] * 2, [dilation] * 2, ceil_mode]
    lowered = jax.jit(lambda v: conv.max_pool_with_indices(v, *pool))
    with jax.enable_x64(True):  # int64 indices, as torchtpu traces them
        text = lowered.lower(jnp.asarray(x.detach().numpy())).as_text()
    assert "reduce_window" not in text
