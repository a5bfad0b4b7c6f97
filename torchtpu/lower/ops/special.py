"""Special functions: polygamma, Bessel functions JAX has, orthogonal polynomials.

The polynomials take their degree ``n`` as a tensor, so they run the three-term
recurrence in a ``while_loop`` up to the largest degree present, picking each
element's value when the loop reaches its own degree.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import torch
from jax import lax

from torchtpu.lower.dtypes import Promote
from torchtpu.lower.ops._util import aten
from torchtpu.lower.registry import register

INT_TO_FLOAT = Promote.INT_TO_FLOAT


@register(aten.polygamma.default, promote=INT_TO_FLOAT, promote_args=(1,))
def polygamma(n, x):
    if n == 0:
        return jnp.where(x == 0, -jnp.inf, jax.scipy.special.digamma(x))
    # JAX's Hurwitz zeta loses all accuracy for q below about -8, so shift x
    # up with psi_n(x) = psi_n(x + 1) + (-1)^(n+1) n! / x^(n+1) first.
    sign_fact = (-1.0) ** (n + 1) * math.factorial(n)

    def body(state):
        x_, acc = state
        low = x_ < 1
        acc = acc + jnp.where(low, sign_fact / x_ ** (n + 1), 0)
        return jnp.where(low, x_ + 1, x_), acc

    x_, acc = lax.while_loop(lambda s: jnp.any(s[0] < 1), body, (x, jnp.zeros_like(x)))
    order = jnp.asarray(n, jnp.int32)
    return (jax.scipy.special.polygamma(order, x_) + acc).astype(x.dtype)


@register(aten.special_modified_bessel_i0.default, promote=INT_TO_FLOAT)
def modified_bessel_i0(x):
    return jax.scipy.special.i0(x)


@register(aten.special_modified_bessel_i1.default, promote=INT_TO_FLOAT)
def modified_bessel_i1(x):
    return jax.scipy.special.i1(x)


def _recurrence(x, n, p1, step):
    """p_n(x) from p_0 = 1, p_1 and p_{k+1} = step(k, p_k, p_{k-1}); 0 for n < 0."""
    # PyTorch truncates the degree to an integer; NaN counts as negative.
    x, n = jnp.broadcast_arrays(x, jnp.trunc(jnp.asarray(n, x.dtype)))
    n = jnp.where(jnp.isnan(n), -1, n)
    p0, p1 = jnp.ones_like(x), jnp.broadcast_to(p1, x.shape)
    out = jnp.where(n == 0, p0, jnp.where(n == 1, p1, jnp.zeros_like(x)))
    top = jnp.max(n, initial=0).astype(jnp.int64)

    def body(state):
        k, prev, cur, out = state
        nxt = step(k.astype(x.dtype), cur, prev)
        return k + 1, cur, nxt, jnp.where(n == k + 1, nxt, out)

    return lax.while_loop(lambda s: s[0] < top, body, (jnp.int64(1), p0, p1, out))[3]


def _chebyshev(first):
    return lambda x, n: _recurrence(x, n, first(x), lambda k, c, p: 2 * x * c - p)


_POLYNOMIALS = {
    aten.special_chebyshev_polynomial_t.default: _chebyshev(lambda x: x),
    aten.special_chebyshev_polynomial_u.default: _chebyshev(lambda x: 2 * x),
    aten.special_chebyshev_polynomial_v.default: _chebyshev(lambda x: 2 * x - 1),
    aten.special_chebyshev_polynomial_w.default: _chebyshev(lambda x: 2 * x + 1),
    aten.special_hermite_polynomial_h.default: lambda x, n: _recurrence(
        x, n, 2 * x, lambda k, c, p: 2 * x * c - 2 * k * p
    ),
    aten.special_hermite_polynomial_he.default: lambda x, n: _recurrence(
        x, n, x, lambda k, c, p: x * c - k * p
    ),
    aten.special_laguerre_polynomial_l.default: lambda x, n: _recurrence(
        x, n, 1 - x, lambda k, c, p: ((2 * k + 1 - x) * c - k * p) / (k + 1)
    ),
    aten.special_legendre_polynomial_p.default: lambda x, n: _recurrence(
        x, n, x, lambda k, c, p: ((2 * k + 1) * x * c - k * p) / (k + 1)
    ),
}
_SHIFTED = {
    aten.special_shifted_chebyshev_polynomial_t.default: aten.special_chebyshev_polynomial_t,
    aten.special_shifted_chebyshev_polynomial_u.default: aten.special_chebyshev_polynomial_u,
    aten.special_shifted_chebyshev_polynomial_v.default: aten.special_chebyshev_polynomial_v,
    aten.special_shifted_chebyshev_polynomial_w.default: aten.special_chebyshev_polynomial_w,
}
for _op, _fn in _POLYNOMIALS.items():
    register(_op, promote=INT_TO_FLOAT)(lambda x, n, _fn=_fn: _fn(x, n))
for _op, _base in _SHIFTED.items():
    _fn = _POLYNOMIALS[_base.default]
    register(_op, promote=INT_TO_FLOAT)(lambda x, n, _fn=_fn: _fn(2 * x - 1, n))


# --- prims that PyTorch's decompositions of special functions end in --------------------

prims = torch.ops.prims
_PRIMS_UNARY = {
    prims.bessel_i0.default: jax.scipy.special.i0,
    prims.bessel_i1.default: jax.scipy.special.i1,
    prims.bessel_i0e.default: jax.scipy.special.i0e,
    prims.bessel_i1e.default: jax.scipy.special.i1e,
    prims.ndtri.default: jax.scipy.special.ndtri,
    prims.erfcx.default: jax.scipy.special.erfcx,
}
for _op, _fn in _PRIMS_UNARY.items():
    register(_op)(lambda x, _fn=_fn: _fn(x))


@register(prims.spherical_bessel_j0.default)
def spherical_bessel_j0(x):
    small = jnp.abs(x) < 0.5
    safe = jnp.where(small, 1.0, x)
    series = 1 - x * x / 6 * (1 - x * x / 20 * (1 - x * x / 42))
    return jnp.where(small, series, jnp.sin(safe) / safe)


@register(prims.zeta.default)
def zeta(x, q):
    # Cephes (and PyTorch) is undefined below x = 1, where JAX returns inf at q = 0.
    return jnp.where(x < 1, jnp.nan, jax.scipy.special.zeta(x, q))


@register(prims.igamma.default)
def igamma(a, x):
    return jax.scipy.special.gammainc(a, x)


@register(prims.igammac.default)
def igammac(a, x):
    return jax.scipy.special.gammaincc(a, x)


@register(prims.nextafter.default)
def nextafter(x, y):
    return jnp.nextafter(x, y)


@register(prims.gcd.default)
def prims_gcd(x, y):
    return jnp.gcd(x, y)


@register(prims.frexp.default)
def frexp(x):
    mantissa, exponent = jnp.frexp(x)
    return mantissa, exponent.astype(jnp.int32)
