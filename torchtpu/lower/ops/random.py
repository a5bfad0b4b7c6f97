"""Random ops. Every one takes its key from the program (``rng=True``), never a constant."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from torchtpu.lower.ops._util import aten, jdtype
from torchtpu.lower.registry import register


def _shape(size):
    return tuple(int(s) for s in size)


def _float(dtype, like=None):
    return jdtype(dtype, like.dtype if like is not None else jnp.float32)


@register(aten.rand.default, rng=True)
def rand(size, *, dtype=None, layout=None, device=None, pin_memory=None, generator=None, key):
    return jax.random.uniform(key, _shape(size), _float(dtype))


@register(aten.randn.default, rng=True)
def randn(size, *, dtype=None, layout=None, device=None, pin_memory=None, generator=None, key):
    return jax.random.normal(key, _shape(size), _float(dtype))


@register(aten.rand_like.default, rng=True)
def rand_like(x, *, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None, key):
    return jax.random.uniform(key, x.shape, _float(dtype, x))


@register(aten.randn_like.default, rng=True)
def randn_like(
    x, *, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None, key
):
    return jax.random.normal(key, x.shape, _float(dtype, x))


@register(aten.randint.low, rng=True)
def randint_low(
    low, high, size, *, dtype=None, layout=None, device=None, pin_memory=None, generator=None, key
):
    return jax.random.randint(key, _shape(size), low, high, jdtype(dtype, jnp.int64))


@register(aten.randint.default, rng=True)
def randint(
    high, size, *, dtype=None, layout=None, device=None, pin_memory=None, generator=None, key
):
    return jax.random.randint(key, _shape(size), 0, high, jdtype(dtype, jnp.int64))


@register(aten.bernoulli.default, rng=True)
def bernoulli(x, *, generator=None, key):
    return jax.random.bernoulli(key, x.astype(jnp.float32)).astype(x.dtype)


@register(aten.bernoulli.p, rng=True)
def bernoulli_p(x, p=0.5, *, generator=None, key):
    return jax.random.bernoulli(key, p, x.shape).astype(x.dtype)


@register(aten.uniform.default, rng=True)
def uniform(x, low=0.0, high=1.0, *, generator=None, key):
    return jax.random.uniform(key, x.shape, x.dtype, low, high)


@register(aten.normal_functional.default, rng=True)
def normal(x, mean=0.0, std=1.0, *, generator=None, key):
    return (mean + std * jax.random.normal(key, x.shape, jnp.float32)).astype(x.dtype)


@register(aten.exponential.default, rng=True)
def exponential(x, lambd=1.0, *, generator=None, key):
    return (jax.random.exponential(key, x.shape, jnp.float32) / lambd).astype(x.dtype)


@register(aten.randperm.default, rng=True)
def randperm(n, *, dtype=None, layout=None, device=None, pin_memory=None, generator=None, key):
    return jax.random.permutation(key, n).astype(jdtype(dtype, jnp.int64))
