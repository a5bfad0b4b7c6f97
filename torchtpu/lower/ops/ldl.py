"""LDL^T (Bunch-Kaufman) factorization and solve, as LAPACK's ?sytrf/?hetrf and ?sytrs/?hetrs.

XLA has no symmetric-indefinite factorization, so this replays LAPACK's unblocked
lower-triangle algorithm (?sytf2/?hetf2) step by step in a ``while_loop``: the same pivot
tests, the same first-maximum index choice over |re| + |im|, the same arithmetic. The
blocked ?sytrf PyTorch calls makes the same choices, so LD and the 1-based int32 pivots
(negative pairs mark 2x2 blocks) match eager, and ``ldl_solve`` accepts either's output.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
from jax import lax

from torchtpu.lower.ops._util import aten, is_complex
from torchtpu.lower.registry import register

_ALPHA = (1 + math.sqrt(17)) / 8  # Bunch-Kaufman's growth bound


def _abs1(x):
    # LAPACK's i?amax and complex pivot tests compare |re| + |im|, not the modulus.
    return jnp.abs(x.real) + jnp.abs(x.imag) if is_complex(x) else jnp.abs(x)


def _pivot(m, k, idx, hermitian):
    """?sytf2's choice at step ``k``: (pivot row kp, block size, whether column k is zero)."""
    diag_abs = (lambda x: jnp.abs(x.real)) if hermitian else _abs1
    absakk = diag_abs(m[k, k])
    below = jnp.where(idx > k, _abs1(m[:, k]), -1)
    imax = jnp.argmax(below).astype(jnp.int32)  # argmax, like i?amax, takes the first max
    colmax = jnp.maximum(below[imax], 0)
    rowmax = jnp.max(jnp.where((idx >= k) & (idx != imax), _abs1(m[:, imax]), 0))
    keep = (absakk >= _ALPHA * colmax) | (absakk >= _ALPHA * colmax * (colmax / rowmax))
    zero = (jnp.maximum(absakk, colmax) == 0) | jnp.isnan(absakk)
    one = zero | keep | (diag_abs(m[imax, imax]) >= _ALPHA * rowmax)
    return jnp.where(zero | keep, k, imax), jnp.where(one, 1, 2), zero


def _update_1x1(m, k, idx, hermitian):
    conj = jnp.conj if hermitian else (lambda x: x)
    r = 1 / (m[k, k].real if hermitian else m[k, k])
    rest = idx > k
    x = jnp.where(rest, m[:, k], 0)
    out = jnp.where(rest[:, None] & rest[None, :], m + x[:, None] * (-r * conj(x))[None, :], m)
    return jnp.where(rest[:, None] & (idx == k)[None, :], (x * r)[:, None], out)


def _update_2x2(m, k, idx, hermitian):
    ck, ck1 = m[:, k], m[:, k + 1]
    if hermitian:
        d = jnp.abs(m[k + 1, k])
        d11, d22 = m[k + 1, k + 1].real / d, m[k, k].real / d
        d21 = m[k + 1, k] / d
        d = 1 / (d11 * d22 - 1) / d
        wk, wk1 = d * (d11 * ck - d21 * ck1), d * (d22 * ck1 - jnp.conj(d21) * ck)
        upd = m - ck[:, None] * jnp.conj(wk)[None, :] - ck1[:, None] * jnp.conj(wk1)[None, :]
    else:
        d21 = m[k + 1, k]
        d11, d22 = m[k + 1, k + 1] / d21, m[k, k] / d21
        d21 = 1 / (d11 * d22 - 1) / d21
        wk, wk1 = d21 * (d11 * ck - ck1), d21 * (d22 * ck1 - ck)
        upd = m - ck[:, None] * wk[None, :] - ck1[:, None] * wk1[None, :]
    rest = idx > k + 1
    out = jnp.where(rest[:, None] & rest[None, :], upd, m)
    out = jnp.where(rest[:, None] & (idx == k)[None, :], wk[:, None], out)
    return jnp.where(rest[:, None] & (idx == k + 1)[None, :], wk1[:, None], out)


def _factor(a, hermitian):
    n = a.shape[-1]
    idx = jnp.arange(n, dtype=jnp.int32)
    lower = idx[:, None] >= idx[None, :]
    trans = (lambda x: jnp.conj(x.T)) if hermitian else (lambda x: x.T)

    def step(state):
        k, m, piv, info = state
        # LAPACK reads only the lower triangle; mirror it so rows and columns read alike.
        m = jnp.where(lower, m, trans(m))
        kp, kstep, zero = _pivot(m, k, idx, hermitian)
        kk = k + kstep - 1
        # Swap rows and columns kk and kp of the trailing block only: L's finished
        # columns keep their rows, which is why ldl_solve replays the swaps.
        swap = idx.at[kk].set(kp).at[kp].set(kk)
        trailing = (idx >= k)[:, None] & (idx >= k)[None, :]
        m = jnp.where(trailing, m[swap][:, swap], m)
        updated = jnp.where(
            kstep == 1, _update_1x1(m, k, idx, hermitian), _update_2x2(m, k, idx, hermitian)
        )
        m = jnp.where(zero, m, updated)  # a zero column is left as is, like LAPACK
        p = jnp.where(kstep == 1, kp + 1, -(kp + 1))
        piv = jnp.where((idx == k) | ((idx == k + 1) & (kstep == 2)), p, piv)
        info = jnp.where((info == 0) & zero, k + 1, info)
        return k + kstep, m, piv, info

    state = (jnp.int32(0), a, jnp.zeros(n, jnp.int32), jnp.int32(0))
    _, m, piv, info = lax.while_loop(lambda s: s[0] < n, step, state)
    ld = jnp.tril(m)
    if hermitian:  # ?hetf2 stores D's diagonal as real numbers
        ld = jnp.where(idx[:, None] == idx[None, :], ld.real.astype(ld.dtype), ld)
    return ld, piv, info


@register(aten.linalg_ldl_factor_ex.default)
def ldl_factor_ex(a, *, hermitian=False, check_errors=False):
    n = a.shape[-1]
    if n == 0:
        return a, jnp.zeros(a.shape[:-1], jnp.int32), jnp.zeros(a.shape[:-2], jnp.int32)
    factor = functools.partial(_factor, hermitian=hermitian and is_complex(a))
    return jnp.vectorize(factor, signature="(n,n)->(n,n),(n),()")(a)


def _unpack(ld, piv):
    """Unit-lower L' and row order ``perm`` with A = P L' D L'^T P^T, P = I[:, perm].

    LAPACK's L is a product P1 L1 P2 L2 ...; moving each later swap past the finished
    columns of L (as getrf does for LU) gives one permutation and one triangular factor,
    so the solve runs as two batched triangular solves instead of n small steps.
    """
    n = ld.shape[-1]
    idx = jnp.arange(n, dtype=jnp.int32)

    def step(state):
        k, low, perm, start = state
        two = piv[k] < 0
        kk = k + two.astype(jnp.int32)
        kp = jnp.abs(piv[k]) - 1
        swap = idx.at[kk].set(kp).at[kp].set(kk)
        low = jnp.where(idx[None, :] < k, low[swap], low)
        start = start | ((idx == k) & two)
        return kk + 1, low, perm[swap], start

    state = (jnp.int32(0), ld, idx, jnp.zeros(n, bool))
    _, low, perm, start = lax.while_loop(lambda s: s[0] < n, step, state)
    # The subdiagonal entry of each 2x2 block belongs to D, not L.
    in_d = (idx[:, None] == idx[None, :] + 1) & start[None, :]
    low = jnp.where(in_d, 0, jnp.tril(low, -1)) + jnp.eye(n, dtype=ld.dtype)
    return low, perm, start


def _solve_d(ld, start, y, hermitian):
    """D^{-1} y with D's 1x1 and 2x2 blocks, scaled by the off-diagonal as ?sytrs does."""
    d = jnp.diagonal(ld)
    e = jnp.pad(jnp.diagonal(ld, -1), (0, 1), constant_values=1)  # a 2x2 block's b
    ec = jnp.conj(e) if hermitian else e
    c = jnp.pad(d[1:], (0, 1), constant_values=1)
    akm1, ak = (d / ec)[:, None], (c / e)[:, None]
    den = akm1 * ak - 1
    bkm1, bk = y / ec[:, None], jnp.pad(y[1:], ((0, 1), (0, 0))) / e[:, None]
    first, second = (ak * bkm1 - bk) / den, (akm1 * bk - bkm1) / den
    second = jnp.pad(second[:-1], ((1, 0), (0, 0)))
    is_second = jnp.pad(start[:-1], (1, 0))
    one = y * (1 / (d.real if hermitian else d))[:, None]
    return jnp.where(start[:, None], first, jnp.where(is_second[:, None], second, one))


def _solve(ld, piv, b, hermitian):
    low, perm, start = _unpack(ld, piv)
    solve = functools.partial(lax.linalg.triangular_solve, left_side=True, lower=True)
    y = solve(low, b[perm], unit_diagonal=True)
    z = _solve_d(ld, start, y, hermitian)
    w = solve(low, z, unit_diagonal=True, transpose_a=True, conjugate_a=hermitian)
    return jnp.zeros_like(w).at[perm].set(w)


@register(aten.linalg_ldl_solve.default)
def ldl_solve(ld, pivots, b, *, hermitian=False):
    batch = jnp.broadcast_shapes(ld.shape[:-2], b.shape[:-2])
    if ld.shape[-1] == 0 or b.shape[-1] == 0 or math.prod(batch) == 0:
        return jnp.zeros(batch + b.shape[-2:], b.dtype)
    solve = functools.partial(_solve, hermitian=hermitian and is_complex(ld))
    return jnp.vectorize(solve, signature="(n,n),(n),(n,m)->(n,m)")(ld, pivots, b)
