"""Normalisation, softmax, dropout, attention and the chunked linear_cross_entropy ops."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.modules.linear_cross_entropy  # noqa: F401  (defines the torch_nn ops)

from torchtpu.lower.ops._util import accum_dtype, aten, canon_dim, jdtype
from torchtpu.lower.ops.linalg import row_major
from torchtpu.lower.registry import register

_lce = torch.ops.torch_nn


# Softmaxes and norms accumulate in float32 (accumulate=True); the node's recorded
# dtype (bfloat16 in, bfloat16 out; float32 for half_to_float) rounds the result.


@register(aten._softmax.default, accumulate=True)
def softmax(x, dim, half_to_float=False):
    return jax.nn.softmax(x, axis=canon_dim(dim, x.ndim))


@register(aten._log_softmax.default, accumulate=True)
def log_softmax(x, dim, half_to_float=False):
    return jax.nn.log_softmax(x, axis=canon_dim(dim, x.ndim))


@register(aten._softmax_backward_data.default, accumulate=True)
def softmax_backward(grad, out, dim, input_dtype):
    axis = canon_dim(dim, out.ndim)
    return out * (grad - jnp.sum(grad * out, axis=axis, keepdims=True))


@register(aten._log_softmax_backward_data.default, accumulate=True)
def log_softmax_backward(grad, out, dim, input_dtype):
    axis = canon_dim(dim, out.ndim)
    return grad - jnp.exp(out) * jnp.sum(grad, axis=axis, keepdims=True)


@register(aten.native_layer_norm.default, accumulate=True)
def native_layer_norm(x, normalized_shape, weight, bias, eps):
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    xa = x
    mean = jnp.mean(xa, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(xa - mean), axis=axes, keepdims=True)
    rstd = jax.lax.rsqrt(var + eps)
    out = (xa - mean) * rstd
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out, mean, rstd


@register(aten.native_layer_norm_backward.default, accumulate=True)
def native_layer_norm_backward(grad, x, normalized_shape, mean, rstd, weight, bias, mask):
    # Built from the saved mean and rstd, so eps need not be known here.
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    xa, g = x, grad
    xhat = (xa - mean) * rstd
    gw = g * weight if weight is not None else g
    n = math.prod(x.shape[a] for a in axes)
    dx = (
        rstd
        / n
        * (
            n * gw
            - jnp.sum(gw, axis=axes, keepdims=True)
            - xhat * jnp.sum(gw * xhat, axis=axes, keepdims=True)
        )
    )
    lead = tuple(range(x.ndim - len(normalized_shape)))
    dw = jnp.sum(g * xhat, axis=lead) if weight is not None and mask[1] else None
    db = jnp.sum(g, axis=lead) if bias is not None and mask[2] else None
    return dx if mask[0] else None, dw, db


def _bn_shape(x):
    return (1, -1) + (1,) * (x.ndim - 2)


# Batch norm computes in float32 (accumulate=True): the statistics, the
# normalisation and the running-stat updates, each rounded once to its dtype.


def _bn_apply(x, mean, invstd, weight, bias):
    out = (x - mean.reshape(_bn_shape(x))) * invstd.reshape(_bn_shape(x))
    if weight is not None:
        out = out * weight.reshape(_bn_shape(x))
    if bias is not None:
        out = out + bias.reshape(_bn_shape(x))
    return out


def _bn_batch_stats(x, eps):
    axes = (0,) + tuple(range(2, x.ndim))
    xa = x
    mean = jnp.mean(xa, axis=axes)
    var = jnp.mean(jnp.square(xa - mean.reshape(_bn_shape(x))), axis=axes)
    n = x.size // x.shape[1]
    return mean, var, jax.lax.rsqrt(var + eps), n


@register(aten._native_batch_norm_legit_functional.default, accumulate=True)
def batch_norm_functional(x, weight, bias, running_mean, running_var, training, momentum, eps):
    if not training:
        out, _, _ = batch_norm_no_training(
            x, weight, bias, running_mean, running_var, momentum, eps
        )
        empty = jnp.zeros((0,), jnp.float32)
        return out, empty, empty, running_mean, running_var
    mean, var, invstd, n = _bn_batch_stats(x, eps)
    new_mean = (1 - momentum) * running_mean + momentum * mean
    unbiased = var * (n / max(n - 1, 1))
    new_var = (1 - momentum) * running_var + momentum * unbiased
    return _bn_apply(x, mean, invstd, weight, bias), mean, invstd, new_mean, new_var


@register(aten._native_batch_norm_legit_no_training.default, accumulate=True)
def batch_norm_no_training(x, weight, bias, running_mean, running_var, momentum, eps):
    invstd = jax.lax.rsqrt(running_var + eps)
    out = _bn_apply(x, running_mean, invstd, weight, bias)
    empty = jnp.zeros((0,), jnp.float32)
    return out, empty, empty


@register(aten._native_batch_norm_legit.no_stats, accumulate=True)
def batch_norm_no_stats(x, weight, bias, training, momentum, eps):
    mean, _, invstd, _ = _bn_batch_stats(x, eps)
    return _bn_apply(x, mean, invstd, weight, bias), mean, invstd


@register(aten.native_batch_norm_backward.default, accumulate=True)
def batch_norm_backward(
    grad, x, weight, running_mean, running_var, save_mean, save_invstd, train, eps, mask
):
    axes = (0,) + tuple(range(2, x.ndim))
    if train:
        mean, invstd = save_mean, save_invstd
    else:
        mean = running_mean
        invstd = jax.lax.rsqrt(running_var + eps)
    g, xa = grad, x
    xhat = (xa - mean.reshape(_bn_shape(x))) * invstd.reshape(_bn_shape(x))
    w = jnp.ones_like(mean) if weight is None else weight
    dbias = jnp.sum(g, axis=axes)
    dweight = jnp.sum(g * xhat, axis=axes)
    scale = (w * invstd).reshape(_bn_shape(x))
    if train:
        n = x.size // x.shape[1]
        dx = scale * (g - (dbias.reshape(_bn_shape(x)) + xhat * dweight.reshape(_bn_shape(x))) / n)
    else:
        dx = g * scale
    return dx if mask[0] else None, dweight if mask[1] else None, dbias if mask[2] else None


@register(aten.native_dropout.default, rng=True)
def native_dropout(x, p, train, *, key):
    if not train or p == 0:
        return x, jnp.ones(x.shape, jnp.bool_)
    if p == 1:
        return jnp.zeros_like(x), jnp.zeros(x.shape, jnp.bool_)
    keep = jax.random.bernoulli(key, 1.0 - p, x.shape)
    return jnp.where(keep, x * (1.0 / (1.0 - p)), 0).astype(x.dtype), keep


@register(aten.native_dropout_backward.default)
def native_dropout_backward(grad, mask, scale):
    # No cast to grad's dtype: a bool grad times a float scale is float32 in PyTorch,
    # and the interpreter casts to the dtype PyTorch recorded.
    return grad * mask * scale


def _attention(q, k, v, attn_mask, is_causal, scale):
    """Softmax attention in float32 accumulation; the reference the backward differentiates."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if k.shape[-3] != q.shape[-3]:  # grouped-query attention: repeat key/value heads
        rep = q.shape[-3] // k.shape[-3]
        k, v = jnp.repeat(k, rep, axis=-3), jnp.repeat(v, rep, axis=-3)
    acc = accum_dtype(q)
    if k.dtype == q.dtype:  # low-precision products are exact in float32: no upcast needed
        kt = row_major(jnp.swapaxes(k, -1, -2))  # [.., d, k]: XLA:CPU's fast bf16 form
        logits = jnp.matmul(row_major(q), kt, preferred_element_type=acc) * scale
    else:
        logits = jnp.einsum("...qd,...kd->...qk", q.astype(acc), k.astype(acc)) * scale
    if is_causal:
        lq, lk = q.shape[-2], k.shape[-2]
        causal = jnp.tril(jnp.ones((lq, lk), jnp.bool_))
        logits = jnp.where(causal, logits, -jnp.inf)
    if attn_mask is not None:
        if attn_mask.dtype == jnp.bool_:
            logits = jnp.where(attn_mask, logits, -jnp.inf)
        else:
            logits = logits + attn_mask.astype(acc)
    lse = jax.scipy.special.logsumexp(logits, axis=-1)
    probs = jnp.exp(logits - lse[..., None])
    out = jnp.einsum("...qk,...kd->...qd", probs, v.astype(acc))
    return out.astype(q.dtype), lse


def _flash_kernel(q, k, v, attn_mask):
    """The Pallas flash-attention module when ``TORCHTPU_FLASH=1`` and it takes this
    call (no mask, 4-d, one float dtype; see docs/pallas.md), else ``None``."""
    if attn_mask is not None or "TORCHTPU_FLASH" not in os.environ:
        return None
    from torchtpu.kernels import flash_attention

    return flash_attention if flash_attention.sdpa_takes(q, k, v, attn_mask) else None


def _no_attention_dropout(dropout_p: float) -> bool | str:
    return dropout_p == 0 or f"attention dropout (dropout_p={dropout_p}) inside the fused kernel"


@register(
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    supports=lambda q, k, v, dropout_p=0.0, *a, **kw: _no_attention_dropout(dropout_p),
)
def sdpa_flash_cpu(q, k, v, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None):
    flash = _flash_kernel(q, k, v, attn_mask)
    if flash is not None:
        return flash.forward(q, k, v, causal=is_causal, scale=scale)
    return _attention(q, k, v, attn_mask, is_causal, scale)


@register(
    aten._scaled_dot_product_flash_attention_for_cpu_backward.default,
    supports=lambda grad, q, k, v, out, lse, dropout_p, *a, **kw: _no_attention_dropout(dropout_p),
)
def sdpa_flash_cpu_backward(
    grad, q, k, v, out, lse, dropout_p, is_causal, *, attn_mask=None, scale=None
):
    flash = _flash_kernel(q, k, v, attn_mask)
    if flash is not None:
        return flash.backward(q, k, v, out, lse, grad, causal=is_causal, scale=scale)

    def forward(q_, k_, v_):
        return _attention(q_, k_, v_, attn_mask, is_causal, scale)[0]

    _, vjp = jax.vjp(forward, q, k, v)
    return vjp(grad.astype(q.dtype))


# --- pairwise distances and bilinear forms ---------------------------------------------


def _p_norm(diff, p, axis):
    a = jnp.abs(diff)
    if p == 0:
        return jnp.sum((a != 0).astype(a.dtype), axis=axis)
    if p == float("inf"):
        return jnp.max(a, axis=axis, initial=0.0)
    if p == 1:
        return jnp.sum(a, axis=axis)
    # Roots guarded at zero, so their gradient there is 0 as in PyTorch, not NaN.
    total = jnp.sum(a * a if p == 2 else a**p, axis=axis)
    safe = jnp.where(total == 0, 1, total)
    return jnp.where(total == 0, 0, jnp.sqrt(safe) if p == 2 else safe ** (1.0 / p))


@register(aten._cdist_forward.default)
def cdist(x1, x2, p, compute_mode=None):
    batch = jnp.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
    x1 = jnp.broadcast_to(x1, batch + x1.shape[-2:])
    x2 = jnp.broadcast_to(x2, batch + x2.shape[-2:])
    return _p_norm(x1[..., :, None, :] - x2[..., None, :, :], p, axis=-1)


@register(aten._cdist_backward.default)
def cdist_backward(grad, x1, x2, p, dist):
    _, vjp = jax.vjp(lambda a: cdist(a, x2, p), x1)
    return vjp(grad)[0]


@register(aten._pdist_forward.default)
def pdist(x, p=2.0):
    i, j = np.triu_indices(x.shape[0], k=1)
    return _p_norm(x[i] - x[j], p, axis=-1)


@register(aten._trilinear.default)
def trilinear(i1, i2, i3, expand1, expand2, expand3, sumdim, unroll_dim=1):
    def expanded(t, dims):
        for d in sorted(dims):
            t = jnp.expand_dims(t, d)
        return t

    prod = expanded(i1, expand1) * expanded(i2, expand2) * expanded(i3, expand3)
    return jnp.sum(prod, axis=tuple(sumdim)) if sumdim else prod


@register(aten._pdist_backward.default)
def pdist_backward(grad, x, p, dist):
    _, vjp = jax.vjp(lambda a: pdist(a, p), x)
    return vjp(grad)[0]


# --- linear_cross_entropy's chunked custom ops ------------------------------------------
# F.linear_cross_entropy(..., options=...) calls these opaque torch_nn ops, which loop over
# batch chunks in Python to bound memory. XLA sees the whole computation, so one fused
# expression serves; the chunk size only changes the order of the sums.


def _linear_ce_terms(x, linear_weight, target, bias, weight, ignore_index, acc):
    """Per-row class weight (0 where ignored) and per-row -log_softmax at the target."""
    logits = x.astype(acc) @ linear_weight.astype(acc).T
    if bias is not None:
        logits = logits + bias.astype(acc)
    ignored = target == ignore_index
    picked = jnp.where(ignored, 0, target)  # PyTorch also zeroes ignored rows' targets
    w = jnp.ones(target.shape, acc) if weight is None else weight.astype(acc)[picked]
    w = jnp.where(ignored, 0, w)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), picked[:, None], axis=1)[:, 0]
    return w, nll


def _no_label_smoothing(*args, **kwargs) -> bool | str:
    smoothing = args[7] if len(args) > 7 else kwargs.get("label_smoothing", 0.0)
    return not smoothing or "label_smoothing is not lowered for the chunked op"


@register(_lce._linear_cross_entropy_batch_chunked.default, supports=_no_label_smoothing)
def linear_cross_entropy_chunked(
    x,
    linear_weight,
    target,
    bias,
    weight,
    reduction,
    ignore_index,
    label_smoothing,
    batch_chunk_size,
    acc_policy,
    acc_dtype,
    allow_retain_graph,
    compute_input_grad,
    compute_linear_weight_grad,
    compute_linear_bias_grad,
):
    # The op returns the loss and its gradients (for an upstream gradient of 1); its
    # autograd formula only scales them, so the backward needs no lowering of its own.
    # Gradients not asked for are empty tensors of the same rank, as in PyTorch.
    acc = jdtype(acc_dtype)

    def loss(x, linear_weight, bias):
        w, nll = _linear_ce_terms(x, linear_weight, target, bias, weight, ignore_index, acc)
        total = jnp.sum(w * nll)
        return total / jnp.sum(w) if reduction == "mean" else total

    value, vjp = jax.vjp(loss, x, linear_weight, bias)
    grads = vjp(jnp.ones((), acc))
    wanted = (compute_input_grad, compute_linear_weight_grad, compute_linear_bias_grad)
    empty = ((0, 0), (0, 0), (0,))
    grads = [
        g.astype(x.dtype) if want else jnp.zeros(shape, x.dtype)
        for g, want, shape in zip(grads, wanted, empty, strict=True)
    ]
    return (value.astype(x.dtype), *grads)


@register(_lce._linear_cross_entropy_batch_chunked_no_reduction.default)
def linear_cross_entropy_chunked_none(
    x, linear_weight, target, bias, weight, ignore_index, batch_chunk_size, acc_policy, acc_dtype
):
    w, nll = _linear_ce_terms(
        x, linear_weight, target, bias, weight, ignore_index, jdtype(acc_dtype)
    )
    return (w * nll).astype(x.dtype)
