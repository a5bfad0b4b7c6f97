"""Matrix products and linear algebra.

float32 products honour ``torch.get_float32_matmul_precision()``: "highest"
(PyTorch's default) keeps full float32 on TPUs and GPUs, whose XLA default
would round operands to bfloat16 or TF32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import torch
from jax import lax
from jax.experimental.layout import Layout, with_layout_constraint

from torchtpu.lower.dtypes import Promote
from torchtpu.lower.ops._util import LOW_PRECISION, aten
from torchtpu.lower.registry import register
from torchtpu.runtime import platform_name

_PRECISION = {
    "highest": lax.Precision.HIGHEST,
    "high": lax.Precision.HIGH,
    "medium": lax.Precision.DEFAULT,
}


def _precision(x):
    if x.dtype in (jnp.float32, jnp.complex64):
        return _PRECISION[torch.get_float32_matmul_precision()]
    return None


def row_major(x):
    """``x``, as an operand of a low-precision product on the CPU, laid out row-major.

    XLA makes a transpose free by giving its result a column-major layout, so a product
    whose operand is a transpose is done with that operand's other dimension contracted:
    the left one's first (a weight gradient, ``x.T @ grad``) or the right one's last
    (``x @ w.T``: ``nn.Linear``, and every input gradient). XLA:CPU's bfloat16 dot kernels
    (YNNPACK) take ``[M, K] @ [K, N]`` only, and run any other form by converting both
    operands to float32 first, at half the speed (2048x512x1536: 350 against 760 GFLOP/s).
    A row-major layout constraint on ``a @ b``'s operands makes each transpose a copy
    instead, and the product one of the fast form. Only bfloat16 and float16 operands: in
    float32 the copies cost more than they gain (gpt2-small's ``compile_step`` took 0.257 s
    a step with them on the left operand, 0.237 s without). Elsewhere than the CPU the
    operand is left as it is (TPU and GPU compilers choose their own layouts).
    """
    if x.ndim < 2 or x.dtype not in LOW_PRECISION or platform_name() != "cpu":
        return x
    return with_layout_constraint(x, Layout(major_to_minor=tuple(range(x.ndim))))


def _matmul(a, b, keep_wide=False):
    """``a @ b``; bfloat16 and float16 accumulate in float32 and, unless
    ``keep_wide``, round once at the end, as PyTorch's kernels do."""
    if jnp.issubdtype(a.dtype, jnp.integer) or a.dtype == jnp.bool_:
        return jnp.matmul(a, b)
    a, b = row_major(a), row_major(b)
    wide = jnp.float32 if a.dtype in LOW_PRECISION else None
    out = jnp.matmul(a, b, precision=_precision(a), preferred_element_type=wide)
    return out if keep_wide else out.astype(a.dtype)


@register(
    aten.mm.default,
    aten.bmm.default,
    aten.matmul.default,
    aten.mv.default,
    aten.dot.default,
    promote=Promote.NO_OPMATH,
)
def mm(a, b):
    return _matmul(a, b)


@torch.library.custom_op("torchtpu::sum_of_mm", mutates_args=())
def sum_of_mm(lhs: list[torch.Tensor], rhs: list[torch.Tensor]) -> torch.Tensor:
    """``sum(a @ b for a, b in zip(lhs, rhs))``, all of one shape, as one product:
    what ``torchtpu.shard.reassociate`` makes of a sum of matrix products."""
    return sum(a @ b for a, b in zip(lhs, rhs, strict=True))


@sum_of_mm.register_fake
def _(lhs: list[torch.Tensor], rhs: list[torch.Tensor]) -> torch.Tensor:
    return lhs[0].new_empty((lhs[0].shape[0], rhs[0].shape[1]))


@register(torch.ops.torchtpu.sum_of_mm.default)
def sum_of_mm_lowering(lhs, rhs):
    """One ``dot_general`` contracting the stacked products' axis and ``K`` together:
    under a mesh that splits ``K``, the partitioner then all-reduces the sum once
    rather than each product (XLA:CPU has no all-reduce reassociation pass)."""
    a, b = jnp.stack(lhs), jnp.stack(rhs)
    wide = jnp.float32 if a.dtype in LOW_PRECISION else None
    out = lax.dot_general(
        a, b, (((0, 2), (0, 1)), ((), ())), precision=_precision(a), preferred_element_type=wide
    )
    return out.astype(a.dtype)


@register(aten.vdot.default, promote=Promote.NO_OPMATH)
def vdot(a, b):
    return _matmul(jnp.conj(a), b)


def _scalars_like(a, *scalars):
    # PyTorch converts alpha and beta to the tensors' dtype: 0.6 is 0 for ints.
    if jnp.issubdtype(a.dtype, jnp.integer) or a.dtype == jnp.bool_:
        return tuple(int(s) for s in scalars)
    return scalars


@register(
    aten.addmm.default,
    aten.baddbmm.default,
    aten.addmv.default,
    promote=Promote.NO_OPMATH,
    promote_args=(0, 1, 2),
)
def addmm(bias, a, b, *, beta=1, alpha=1):
    alpha, beta = _scalars_like(a, alpha, beta)
    prod = _matmul(a, b, keep_wide=True)
    if alpha != 1:
        prod = prod * alpha
    if beta != 0:
        prod = prod + (bias if beta == 1 else bias * beta).astype(prod.dtype)
    return prod.astype(a.dtype)


@register(aten.outer.default, promote=Promote.NO_OPMATH)
def outer(a, b):
    return jnp.outer(a, b)


@register(aten._linalg_check_errors.default)
def check_errors(info, api_name, *, is_matrix):
    # PyTorch raises here when ``info`` flags a singular or non-positive-definite
    # input. A compiled program cannot raise mid-step without a host sync every
    # call, so, like other XLA backends, the result carries the NaN/inf instead.
    return None


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
    # PyTorch factors A^T (a row-major A is A^T to LAPACK), and its backward
    # solves with that factorization, so return the same one.
    return (jnp.linalg.det(a), *_lu(_mT(a)))


@register(aten.linalg_solve_triangular.default)
def solve_triangular(a, b, *, upper, left=True, unitriangular=False):
    return lax.linalg.triangular_solve(
        a, b, left_side=left, lower=not upper, unit_diagonal=unitriangular, transpose_a=False
    )


# --- factorizations and solvers (LAPACK conventions: 1-based int32 pivots) ------------


def _mT(a):
    return jnp.swapaxes(a, -1, -2)


def _mH(a):
    return jnp.conj(_mT(a))


def _info(a):
    return jnp.zeros(a.shape[:-2], jnp.int32)


def _lu(a):
    lu, piv, _ = lax.linalg.lu(a)
    return lu, piv.astype(jnp.int32) + 1


@register(aten.addbmm.default, promote=Promote.NO_OPMATH, promote_args=(0, 1, 2))
def addbmm(bias, b1, b2, *, beta=1, alpha=1):
    alpha, beta = _scalars_like(b1, alpha, beta)
    prod = jnp.sum(_matmul(b1, b2, keep_wide=True), axis=0) * alpha
    prod = prod if beta == 0 else prod + (bias * beta).astype(prod.dtype)
    return prod.astype(b1.dtype)


@register(aten._linalg_svd.default)
def linalg_svd(a, full_matrices=False, compute_uv=True, *, driver=None):
    if not compute_uv:
        empty = jnp.zeros((0,), a.dtype)
        return empty, jnp.linalg.svd(a, compute_uv=False), empty
    u, s, vh = jnp.linalg.svd(a, full_matrices=full_matrices)
    return u, s, vh


@register(aten.linalg_qr.default)
def linalg_qr(a, mode="reduced"):
    if mode == "r":
        return jnp.zeros((0,), a.dtype), jnp.linalg.qr(a, mode="r")
    q, r = jnp.linalg.qr(a, mode=mode)
    return q, r


@register(aten._linalg_eigh.default)
def linalg_eigh(a, UPLO="L", compute_v=True):
    w, v = jnp.linalg.eigh(a, UPLO=UPLO, symmetrize_input=False)
    return w, (v if compute_v else jnp.zeros((0,), a.dtype))


@register(aten.linalg_eig.default)
def linalg_eig(a):
    w, v = jnp.linalg.eig(a)
    return w, v


@register(aten._linalg_slogdet.default)
def linalg_slogdet(a):
    sign, logabs = jnp.linalg.slogdet(a)
    return (sign, logabs, *_lu(_mT(a)))  # A^T's factorization, as in linalg_det


@register(aten.linalg_lu_factor_ex.default)
def lu_factor_ex(a, *, pivot=True, check_errors=False):
    return (*_lu(a), _info(a))


@register(aten.linalg_lu.default)
def linalg_lu(a, *, pivot=True):
    return jax.scipy.linalg.lu(a)


def _pivots_to_perm(pivots, m):
    return lax.linalg.lu_pivots_to_permutation(pivots.astype(jnp.int32) - 1, m)


@register(aten.lu_unpack.default)
def lu_unpack(lu, pivots, unpack_data=True, unpack_pivots=True):
    m, n = lu.shape[-2:]
    k = min(m, n)
    low = jnp.tril(lu[..., :, :k], -1) + jnp.eye(m, k, dtype=lu.dtype)
    up = jnp.triu(lu[..., :k, :])
    perm = _pivots_to_perm(pivots, m)
    p = (perm[..., None, :] == jnp.arange(m)[:, None]).astype(lu.dtype)
    return p, low, up


@register(aten.linalg_lu_solve.default)
def lu_solve(lu, pivots, b, *, left=True, adjoint=False):
    batch = jnp.broadcast_shapes(lu.shape[:-2], b.shape[:-2])
    lu = jnp.broadcast_to(lu, batch + lu.shape[-2:])
    piv = jnp.broadcast_to(pivots.astype(jnp.int32) - 1, batch + pivots.shape[-1:])
    b = jnp.broadcast_to(b, batch + b.shape[-2:])
    if left:
        return jax.scipy.linalg.lu_solve((lu, piv), b, trans=2 if adjoint else 0)
    # X op(A) = B  <=>  op(A)^T X^T = B^T, and (A^H)^T = conj(A).
    if adjoint:
        return _mH(jax.scipy.linalg.lu_solve((lu, piv), _mH(b), trans=0))
    return _mT(jax.scipy.linalg.lu_solve((lu, piv), _mT(b), trans=1))


def _is_vector_rhs(a, b):
    return b.ndim == 1 or (b.ndim == a.ndim - 1 and b.shape == a.shape[:-1])


@register(aten._linalg_solve_ex.default)
def linalg_solve_ex(a, b, *, left=True, check_errors=False):
    vector = _is_vector_rhs(a, b)
    rhs = b[..., None] if vector else b
    if not left:
        rhs = _mT(rhs)
    batch = jnp.broadcast_shapes(a.shape[:-2], rhs.shape[:-2])
    a_ = jnp.broadcast_to(a if left else _mT(a), batch + a.shape[-2:])
    x = jnp.linalg.solve(a_, jnp.broadcast_to(rhs, batch + rhs.shape[-2:]))
    x = x if left else _mT(x)
    return (x[..., 0] if vector else x, *_lu(a), _info(a))


@register(aten.linalg_matrix_exp.default)
def matrix_exp(a):
    # JAX's expm needs float32 or wider; PyTorch computes bfloat16 in float32 too.
    wide = a.astype(jnp.float32) if a.dtype in (jnp.bfloat16, jnp.float16) else a
    out = jnp.vectorize(jax.scipy.linalg.expm, signature="(n,n)->(n,n)")(wide)
    return out.astype(a.dtype)


@register(aten.linalg_pinv.atol_rtol_tensor)
def pinv(a, *, atol=None, rtol=None, hermitian=False):
    m, n = a.shape[-2:]
    if hermitian:
        s, u = jnp.linalg.eigh(a, symmetrize_input=False)
        vh, s_abs = _mH(u * jnp.sign(s)[..., None, :]), jnp.abs(s)
    else:
        u, s_abs, vh = jnp.linalg.svd(a, full_matrices=False)
    # PyTorch: rtol defaults to eps * max(m, n) unless a positive atol is given.
    eps = jnp.finfo(s_abs.dtype).eps * max(m, n)
    atol_ = jnp.zeros((), s_abs.dtype) if atol is None else atol
    rtol_ = (eps if atol is None else jnp.where(atol_ > 0, 0.0, eps)) if rtol is None else rtol
    smax = jnp.max(s_abs, axis=-1, initial=0.0)
    cutoff = jnp.maximum(
        jnp.asarray(atol_)[..., None], jnp.asarray(rtol_)[..., None] * smax[..., None]
    )
    s_inv = jnp.where(s_abs > cutoff, 1 / jnp.where(s_abs > cutoff, s_abs, 1), 0)
    return (_mH(vh) * s_inv[..., None, :].astype(a.dtype)) @ _mH(u)


@register(aten.linalg_householder_product.default)
def householder_product(a, tau):
    return lax.linalg.householder_product(a, tau)


@register(aten.geqrf.default)
def geqrf(a):
    h, taus = jnp.linalg.qr(a, mode="raw")
    return _mT(h), taus


@register(aten.ormqr.default)
def ormqr(a, tau, c, left=True, transpose=False):
    m = a.shape[-2]
    full = jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, m - a.shape[-1])])
    taus = jnp.pad(tau, [(0, 0)] * (tau.ndim - 1) + [(0, m - tau.shape[-1])])
    q = lax.linalg.householder_product(full, taus)
    q = _mH(q) if transpose else q
    return q @ c if left else c @ q


@register(aten.cholesky.default)
def cholesky(a, upper=False):
    low = jnp.linalg.cholesky(a, symmetrize_input=False)
    return _mH(low) if upper else low


def _cho_solve(factor, b, upper):
    batch = jnp.broadcast_shapes(factor.shape[:-2], b.shape[:-2])
    factor = jnp.broadcast_to(factor, batch + factor.shape[-2:])
    b = jnp.broadcast_to(b, batch + b.shape[-2:])
    return jax.scipy.linalg.cho_solve((factor, not upper), b)


@register(aten.cholesky_solve.default)
def cholesky_solve(b, factor, upper=False):
    return _cho_solve(factor, b, upper)


@register(aten.cholesky_inverse.default)
def cholesky_inverse(factor, upper=False):
    eye = jnp.broadcast_to(jnp.eye(factor.shape[-1], dtype=factor.dtype), factor.shape)
    return _cho_solve(factor, eye, upper)


@register(aten.triangular_solve.default)
def triangular_solve(b, a, upper=True, transpose=False, unitriangular=False):
    batch = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a_ = jnp.broadcast_to(a, batch + a.shape[-2:])
    x = lax.linalg.triangular_solve(
        a_,
        jnp.broadcast_to(b, batch + b.shape[-2:]),
        left_side=True,
        lower=not upper,
        transpose_a=transpose,
        unit_diagonal=unitriangular,
    )
    return x, a_
