"""Discrete Fourier transforms: the three primitives every ``torch.fft`` function becomes.

ATen's ``normalization`` is 0 (none), 1 (1/sqrt(n)) or 2 (1/n), applied in
either direction, so each transform runs unscaled and scales once at the end.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from torchtpu.lower.ops._util import aten, canon_dim
from torchtpu.lower.registry import register


def _axes(x, dim):
    return tuple(canon_dim(d, x.ndim) for d in dim)


def _scale(out, n, normalization):
    if normalization == 0 or n == 0:
        return out
    factor = 1 / math.sqrt(n) if normalization == 1 else 1 / n
    return out * jnp.asarray(factor, jnp.real(out).dtype)


def _complex_dtype(x):
    return jnp.complex128 if x.dtype == jnp.float64 else jnp.complex64


@register(aten._fft_c2c.default)
def fft_c2c(x, dim, normalization, forward):
    axes = _axes(x, dim)
    fn = jnp.fft.fftn if forward else jnp.fft.ifftn
    out = fn(x, axes=axes, norm="backward" if forward else "forward")
    return _scale(out, math.prod(x.shape[a] for a in axes), normalization)


@register(aten._fft_r2c.default)
def fft_r2c(x, dim, normalization, onesided):
    axes = _axes(x, dim)
    if onesided:
        out = jnp.fft.rfftn(x, axes=axes)
    else:
        out = jnp.fft.fftn(x.astype(_complex_dtype(x)), axes=axes)
    return _scale(out, math.prod(x.shape[a] for a in axes), normalization)


@register(aten._fft_c2r.default)
def fft_c2r(x, dim, normalization, last_dim_size):
    axes = _axes(x, dim)
    sizes = [x.shape[a] for a in axes[:-1]] + [int(last_dim_size)]
    out = jnp.fft.irfftn(x, s=sizes, axes=axes, norm="forward")
    return _scale(out, math.prod(sizes), normalization)
