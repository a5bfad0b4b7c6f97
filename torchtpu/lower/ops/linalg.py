"""Matrix products and linear algebra.

float32 products honour ``torch.get_float32_matmul_precision()``: "highest"
(PyTorch's default) keeps full float32 on TPUs and GPUs, whose XLA default
would round operands to bfloat16 or TF32.
"""

from __future__ import annotations

import jax.numpy as jnp
import torch
from jax import lax

from torchtpu.lower.dtypes import Promote
from torchtpu.lower.ops._util import aten
from torchtpu.lower.registry import register

_PRECISION = {
    "highest": lax.Precision.HIGHEST,
    "high": lax.Precision.HIGH,
    "medium": lax.Precision.DEFAULT,
}


def _precision(x):
    if x.dtype in (jnp.float32, jnp.complex64):
        return _PRECISION[torch.get_float32_matmul_precision()]
    return None


def _matmul(a, b):
    out_dtype = a.dtype
    if jnp.issubdtype(a.dtype, jnp.integer) or a.dtype == jnp.bool_:
        return jnp.matmul(a, b)
    return jnp.matmul(a, b, precision=_precision(a), preferred_element_type=None).astype(out_dtype)


@register(
    aten.mm.default,
    aten.bmm.default,
    aten.matmul.default,
    aten.mv.default,
    aten.dot.default,
    aten.vdot.default,
    promote=Promote.NO_OPMATH,
)
def mm(a, b):
    return _matmul(a, b)


@register(
    aten.addmm.default,
    aten.baddbmm.default,
    aten.addmv.default,
    promote=Promote.NO_OPMATH,
    promote_args=(0, 1, 2),
)
def addmm(bias, a, b, *, beta=1, alpha=1):
    prod = _matmul(a, b)
    if alpha != 1:
        prod = prod * alpha
    if beta == 0:
        return prod
    return prod + (bias if beta == 1 else bias * beta)


@register(aten.outer.default, promote=Promote.NO_OPMATH)
def outer(a, b):
    return jnp.outer(a, b)


@register(aten.linalg_cholesky_ex.default)
def cholesky_ex(a, *, upper=False, check_errors=False):
    low = jnp.linalg.cholesky(a)
    info = jnp.where(jnp.isnan(low).any(axis=(-2, -1)), 1, 0).astype(jnp.int32)
    return (jnp.swapaxes(low, -1, -2).conj() if upper else low), info


@register(aten.linalg_inv_ex.default)
def inv_ex(a, *, check_errors=False):
    return jnp.linalg.inv(a), jnp.zeros(a.shape[:-2], jnp.int32)


@register(aten._linalg_det.default)
def linalg_det(a):
    lu, piv, _ = lax.linalg.lu(a)
    return jnp.linalg.det(a), lu, piv.astype(jnp.int32) + 1


@register(aten.linalg_solve_triangular.default)
def solve_triangular(a, b, *, upper, left=True, unitriangular=False):
    return lax.linalg.triangular_solve(
        a, b, left_side=left, lower=not upper, unit_diagonal=unitriangular, transpose_a=False
    )
