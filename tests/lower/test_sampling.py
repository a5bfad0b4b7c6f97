"""grid_sampler_2d/3d and their backwards against eager PyTorch, every mode at once.

Each test compiles one function that samples with every (mode, padding, align_corners)
combination on its own inputs, so one forward and one backward program cover them all.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F

PADDINGS = ("zeros", "border", "reflection")
# Exact ties and edges, where the semantics are easiest to get wrong: the borders
# (gradient zero there), half-pixel ties (nearest rounds half to even) and points
# beyond the input (reflected more than once).
SPECIAL = (-1.0, 1.0, 0.0, -0.5, 0.5, 0.25, -1.25, 1.5, 3.1, -2.6)


def combos(modes):
    return list(itertools.product(modes, PADDINGS, (False, True)))


def make_grid(n, out, ndim, dtype=torch.float32):
    grid = torch.rand(n, *out, ndim) * 2.6 - 1.3
    flat = grid.view(-1)
    flat[: len(SPECIAL)] = torch.tensor(SPECIAL)
    flat[-len(SPECIAL) :] = torch.tensor(SPECIAL[::-1])
    return grid.to(dtype)


def sample_all(cases):
    def fn(pairs):
        return [
            F.grid_sample(x, g, mode=m, padding_mode=p, align_corners=a)
            for (x, g), (m, p, a) in zip(pairs, cases, strict=True)
        ]

    return fn


def check_against_eager(cases, inputs):
    fn = sample_all(cases)
    out = torch.compile(fn, backend="tpu", options={"strict": True})(inputs)
    ref = fn(inputs)
    leaves = [t for pair in inputs for t in pair]
    cotangents = [torch.randn_like(r) for r in ref]
    grads = torch.autograd.grad(out, leaves, cotangents)
    ref_grads = torch.autograd.grad(ref, leaves, cotangents)
    for i, case in enumerate(cases):
        torch.testing.assert_close(out[i], ref[i], msg=lambda m, c=case: f"{c}: {m}")
        for k, name in enumerate(("input", "grid")):
            torch.testing.assert_close(
                grads[2 * i + k],
                ref_grads[2 * i + k],
                atol=1e-4,
                rtol=1e-4,
                msg=lambda m, c=case, n=name: f"{c} grad {n}: {m}",
            )


def test_grid_sample_2d_every_mode():
    torch.manual_seed(0)
    cases = combos(("bilinear", "nearest", "bicubic"))
    inputs = [
        (torch.randn(2, 3, 4, 5, requires_grad=True), make_grid(2, (3, 4), 2).requires_grad_())
        for _ in cases
    ]
    check_against_eager(cases, inputs)


def test_grid_sample_3d_every_mode():
    torch.manual_seed(0)
    cases = combos(("bilinear", "nearest"))
    inputs = [
        (
            torch.randn(2, 2, 3, 4, 5, requires_grad=True),
            make_grid(2, (2, 3, 2), 3).requires_grad_(),
        )
        for _ in cases
    ]
    check_against_eager(cases, inputs)


@pytest.mark.parametrize("wrt", ["input", "grid"])
def test_gradient_of_one_argument_only(wrt):
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 4, requires_grad=wrt == "input")
    grid = make_grid(1, (3, 3), 2).requires_grad_(wrt == "grid")
    target = x if wrt == "input" else grid

    def fn(x, grid):
        return F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)

    out = torch.compile(fn, backend="tpu", options={"strict": True})(x, grid)
    (grad,) = torch.autograd.grad(out.sum(), [target])
    (ref,) = torch.autograd.grad(fn(x, grid).sum(), [target])
    torch.testing.assert_close(grad, ref, atol=1e-4, rtol=1e-4)


def test_bfloat16_reads_the_pixels_eager_reads():
    # PyTorch's CPU kernel rounds each coordinate step to bfloat16; at a half-pixel
    # tie that decides which pixel nearest sampling returns, so values match exactly.
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 20, dtype=torch.bfloat16)
    grid = make_grid(2, (13, 10), 2, torch.bfloat16)

    def fn(x, grid):
        return [
            F.grid_sample(x, grid, mode="nearest", padding_mode=p, align_corners=a)
            for p, a in itertools.product(PADDINGS, (False, True))
        ]

    out = torch.compile(fn, backend="tpu", options={"strict": True})(x, grid)
    for o, r in zip(out, fn(x, grid), strict=True):
        torch.testing.assert_close(o, r, atol=0, rtol=0)
