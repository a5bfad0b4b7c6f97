"""Random ops. Every one takes its key from the program (``rng=True``), never a constant."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import torch

from torchtpu.lower.ops._util import aten, jdtype
from torchtpu.lower.registry import register


def _shape(size):
    return tuple(int(s) for s in size)


def _float(dtype, like=None):
    return jdtype(dtype, like.dtype if like is not None else jnp.float32)


@register(aten.rand.default, aten.rand.generator, rng=True)
def rand(size, *, dtype=None, layout=None, device=None, pin_memory=None, generator=None, key):
    return jax.random.uniform(key, _shape(size), _float(dtype))


@register(aten.randn.default, aten.randn.generator, rng=True)
def randn(size, *, dtype=None, layout=None, device=None, pin_memory=None, generator=None, key):
    return jax.random.normal(key, _shape(size), _float(dtype))


def _as(draws, dtype):
    return draws if jnp.issubdtype(dtype, jnp.floating) else draws.astype(dtype)


def _real(dtype):
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32


@register(aten.rand_like.default, aten.rand_like.generator, rng=True)
def rand_like(
    x,
    *,
    generator=None,
    dtype=None,
    layout=None,
    device=None,
    pin_memory=None,
    memory_format=None,
    key,
):
    want = _float(dtype, x)
    return _as(jax.random.uniform(key, x.shape, _real(want)), want)


@register(aten.randn_like.default, aten.randn_like.generator, rng=True)
def randn_like(
    x,
    *,
    generator=None,
    dtype=None,
    layout=None,
    device=None,
    pin_memory=None,
    memory_format=None,
    key,
):
    want = _float(dtype, x)
    return _as(jax.random.normal(key, x.shape, _real(want)), want)


@register(aten.randint.low, aten.randint.low_generator, rng=True)
def randint_low(
    low, high, size, *, dtype=None, layout=None, device=None, pin_memory=None, generator=None, key
):
    return jax.random.randint(key, _shape(size), low, high, jdtype(dtype, jnp.int64))


@register(aten.randint.default, aten.randint.generator, rng=True)
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
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        # PyTorch draws the real and imaginary parts independently.
        parts = jax.random.uniform(key, (2, *x.shape), jnp.float32, low, high)
        return jax.lax.complex(parts[0], parts[1]).astype(x.dtype)
    return jax.random.uniform(key, x.shape, _real(x.dtype), low, high).astype(x.dtype)


@register(aten.normal_functional.default, rng=True)
def normal(x, mean=0.0, std=1.0, *, generator=None, key):
    return (mean + std * jax.random.normal(key, x.shape, jnp.float32)).astype(x.dtype)


@register(aten.exponential.default, rng=True)
def exponential(x, lambd=1.0, *, generator=None, key):
    return (jax.random.exponential(key, x.shape, jnp.float32) / lambd).astype(x.dtype)


@register(aten.randperm.default, aten.randperm.generator, rng=True)
def randperm(n, *, dtype=None, layout=None, device=None, pin_memory=None, generator=None, key):
    return jax.random.permutation(key, n).astype(jdtype(dtype, jnp.int64))


@register(
    aten.randint_like.default,
    aten.randint_like.low_dtype,
    aten.randint_like.generator,
    aten.randint_like.low_generator_dtype,
    rng=True,
)
def randint_like(
    x,
    *bounds,
    generator=None,
    dtype=None,
    layout=None,
    device=None,
    pin_memory=None,
    memory_format=None,
    key,
):
    low, high = (0, bounds[0]) if len(bounds) == 1 else bounds
    draws = jax.random.randint(key, x.shape, low, high, jnp.int64)
    return draws.astype(jdtype(dtype, x.dtype))


@register(aten.multinomial.default, rng=True)
def multinomial(probs, num_samples, replacement=False, *, generator=None, key):
    logits = jnp.log(probs.astype(jnp.float32))
    if replacement:
        shape = (num_samples, *probs.shape[:-1])
        draws = jax.random.categorical(key, logits, axis=-1, shape=shape)
        return jnp.moveaxis(draws, 0, -1).astype(jnp.int64)
    # Without replacement: the top-k of Gumbel-perturbed logits.
    gumbel = jax.random.gumbel(key, probs.shape, jnp.float32)
    return jax.lax.top_k(logits + gumbel, num_samples)[1].astype(jnp.int64)


@register(aten.rrelu_with_noise_functional.default, rng=True)
def rrelu_with_noise(x, noise, lower=0.125, upper=1 / 3, training=False, generator=None, *, key):
    if not training:
        return jnp.where(x >= 0, x, x * ((lower + upper) / 2)).astype(x.dtype), noise
    slope = jax.random.uniform(key, x.shape, jnp.float32, lower, upper).astype(x.dtype)
    new_noise = jnp.where(x >= 0, jnp.ones_like(x), slope).astype(noise.dtype)
    return jnp.where(x >= 0, x, x * slope), new_noise


@register(torch.ops.prims.normal.default, rng=True)
def prims_normal(shape, *, mean, std, dtype, device, requires_grad, generator=None, key):
    return (mean + std * jax.random.normal(key, _shape(shape), jnp.float32)).astype(jdtype(dtype))
