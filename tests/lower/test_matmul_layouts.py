"""Low-precision products on the CPU keep bfloat16 operands: a transposed operand is laid
out row-major first (``linalg.row_major``), so XLA:CPU runs every form of ``a @ b`` through
its bfloat16 kernels instead of converting both operands to float32."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from torchtpu.lower.ops import linalg, nn


def _dot_operand_types(fn, *args) -> list[tuple[str, str]]:  # noqa: ANN001
    """The element types of each ``dot``'s two operands in ``fn``'s compiled program."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    found = []
    for comp in re.split(r"\n(?=\S)", text):
        types = dict(re.findall(r"(%[\w.-]+) = (\w+)\[", comp))
        for a, b in re.findall(r"= \w+\[[\d,]*\]\{[\d,]*\} dot\((%[\w.-]+), (%[\w.-]+)\)", comp):
            found.append((types[a], types[b]))
    return found


FORMS = {  # a @ b with either operand a transpose (XLA folds it into the product)
    "g @ w": lambda x, w, g: linalg.mm(g, w),
    "x @ w.T (a linear layer)": lambda x, w, g: linalg.mm(x, w.T),
    "x.T @ g (a weight gradient)": lambda x, w, g: linalg.mm(x.T, g),
    "batched q @ k.T": lambda x, w, g: linalg.mm(
        x.reshape(4, 16, 24), x[::-1].reshape(4, 16, 24).mT
    ),  # noqa: E501
}


@pytest.mark.parametrize("form", list(FORMS))
def test_bf16_products_keep_bf16_operands(form):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((64, 24)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((20, 24)), jnp.bfloat16)
    g = jnp.asarray(rng.standard_normal((64, 20)), jnp.bfloat16)
    fn = FORMS[form]
    types = _dot_operand_types(fn, x, w, g)
    assert types and all(t == ("bf16", "bf16") for t in types), types
    wide = fn(*(a.astype(jnp.float32) for a in (x, w, g)))
    np.testing.assert_allclose(
        np.asarray(fn(x, w, g), np.float32), np.asarray(wide), rtol=2e-2, atol=5e-2
    )


def test_float32_products_are_left_to_xla():
    x = jnp.ones((64, 24), jnp.float32)
    g = jnp.ones((64, 20), jnp.float32)
    text = jax.jit(lambda x, g: linalg.mm(x.T, g)).lower(x, g).compile().as_text()
    assert "transpose" not in text and "copy" not in text  # no transpose made before the dot


def test_bf16_attention_scores_in_bf16_products_float32_accumulation():
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 3, 16, 8)), jnp.bfloat16) for _ in range(3))
    types = _dot_operand_types(lambda q, k, v: nn._attention(q, k, v, None, True, None)[0], q, k, v)
    assert ("bf16", "bf16") in types  # the scores
    out, _ = nn._attention(q, k, v, None, True, None)
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(np.asarray(a, np.float32)) for a in (q, k, v)), is_causal=True
    )
    torch.testing.assert_close(torch.from_numpy(np.asarray(out, np.float32)), ref, **_BF16)


_BF16 = {"rtol": 2e-2, "atol": 2e-2}
