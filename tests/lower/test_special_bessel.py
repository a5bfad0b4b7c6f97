"""Bessel and Airy functions ported from Cephes agree with eager PyTorch across their range."""

import jax
import jax.numpy as jnp
import pytest
import torch

from torchtpu.lower.registry import lookup
from torchtpu.runtime import jax_scope

NAMES = [
    "bessel_j0",
    "bessel_j1",
    "bessel_y0",
    "bessel_y1",
    "modified_bessel_k0",
    "modified_bessel_k1",
    "scaled_modified_bessel_k0",
    "scaled_modified_bessel_k1",
    "airy_ai",
]
inf, nan = float("inf"), float("nan")
# Every branch threshold, both sides of zero, under- and overflow, and the non-finite values.
# No subnormals: XLA's CPU flushes them to zero, where PyTorch keeps them.
EDGES = [-inf, -1e30, -60.0, -5.0, -2.09, -2.0, -1e-30, -0.0, 0.0, 1e-30, 1e-6]
EDGES += [1e-5, 2.0, 2.09, 5.0, 8.3203353, 26.0, 50.0, 103.892, 103.9, 200.0, 1e30, inf, nan]


@pytest.mark.parametrize("name", NAMES)
def test_matches_eager_pytorch(name):
    op = getattr(torch.special, name)
    x = torch.cat([torch.linspace(-30, 30, 2401), torch.tensor(EDGES)])
    n = torch.arange(-10, 11)
    out, out_int = torch.compile(lambda x, n: (op(x), op(n)), backend="tpu")(x, n)
    torch.testing.assert_close(out, op(x), atol=1e-5, rtol=1e-5, equal_nan=True)
    torch.testing.assert_close(out_int, op(n), atol=1e-5, rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_has_no_nan_from_the_branch_not_taken(name):
    lowering = lookup(getattr(torch.ops.aten, f"special_{name}").default).fn
    low = 0.01 if name[-2] in "yk" else -60.0  # Y and K are defined for x > 0 only
    with jax_scope():
        x = jnp.concatenate([jnp.linspace(low, 60, 1001, dtype=jnp.float32), jnp.float32([150])])
        grad = jax.vmap(jax.grad(lowering))(x)
        assert bool(jnp.isfinite(grad).all())
