"""The fused optimizer ops: ``torch.optim.Adam/AdamW/SGD(..., fused=True)``.

PyTorch's fused optimizers call one op per step for all parameters
(``_fused_adamw_`` and friends). Their functional forms are lowered here as
the arithmetic PyTorch's CPU kernels do per element, in the same order, so a
fused optimizer on ``tpu`` updates exactly as on the CPU up to float rounding.
With a GradScaler the gradients arrive scaled: they are divided by
``grad_scale``, and when ``found_inf`` is set the whole step leaves every
tensor as it was, as the kernels do.
"""

from __future__ import annotations

import jax.numpy as jnp

from torchtpu.lower.ops._util import aten
from torchtpu.lower.registry import register


def _unscaled(grads, grad_scale):
    if grad_scale is None:
        return list(grads)
    return [g / grad_scale.astype(g.dtype) for g in grads]


def _keep_if_inf(found_inf, new, old):
    if found_inf is None:
        return new
    skip = found_inf.reshape(()) != 0
    return [jnp.where(skip, o, n) for n, o in zip(new, old, strict=True)]


def _adam(
    decoupled,
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    max_exp_avg_sqs,
    state_steps,
    *,
    lr,
    beta1,
    beta2,
    weight_decay,
    eps,
    amsgrad,
    maximize,
    grad_scale=None,
    found_inf=None,
):
    grads_out = _unscaled(grads, grad_scale)
    new_p, new_m, new_v, new_vmax = [], [], [], []
    for i, (p, g, m, v, step) in enumerate(
        zip(params, grads_out, exp_avgs, exp_avg_sqs, state_steps, strict=True)
    ):
        g = -g if maximize else g
        step = step.astype(jnp.float32)
        bias1 = 1 - beta1**step
        bias2_sqrt = jnp.sqrt(1 - beta2**step)
        if decoupled:
            p = p - lr * weight_decay * p
        else:
            g = g + weight_decay * p
        m = m + (g - m) * (1 - beta1)
        v = v * beta2 + (1 - beta2) * g * g
        if amsgrad:
            vmax = jnp.maximum(max_exp_avg_sqs[i], v)
            new_vmax.append(vmax)
            denom = jnp.sqrt(vmax) / bias2_sqrt + eps
        else:
            denom = jnp.sqrt(v) / bias2_sqrt + eps
        p = p - (lr / bias1) * m / denom
        new_p.append(p.astype(params[i].dtype))
        new_m.append(m.astype(exp_avgs[i].dtype))
        new_v.append(v.astype(exp_avg_sqs[i].dtype))
    return (
        _keep_if_inf(found_inf, new_p, list(params)),
        grads_out,
        _keep_if_inf(found_inf, new_m, list(exp_avgs)),
        _keep_if_inf(found_inf, new_v, list(exp_avg_sqs)),
        _keep_if_inf(found_inf, new_vmax, list(max_exp_avg_sqs)) if amsgrad else [],
    )


@register(aten._fused_adam.default, aten._fused_adam.tensor_lr)
def fused_adam(*args, **kwargs):
    return _adam(False, *args, **kwargs)


@register(aten._fused_adamw.default, aten._fused_adamw.tensor_lr)
def fused_adamw(*args, **kwargs):
    return _adam(True, *args, **kwargs)


@register(aten._fused_sgd.default, aten._fused_sgd.tensor_lr)
def fused_sgd(
    params,
    grads,
    momentum_buffers,
    *,
    weight_decay,
    momentum,
    lr,
    dampening,
    nesterov,
    maximize,
    is_first_step,
    grad_scale=None,
    found_inf=None,
):
    grads_out = _unscaled(grads, grad_scale)
    new_p, new_b = [], []
    for i, (p, g) in enumerate(zip(params, grads_out, strict=True)):
        g = -g if maximize else g
        g = g + weight_decay * p
        if momentum_buffers:
            buf = g if is_first_step else momentum_buffers[i] * momentum + (1 - dampening) * g
            new_b.append(buf.astype(momentum_buffers[i].dtype))
            g = g + momentum * buf if nesterov else buf
        new_p.append((p - lr * g).astype(p.dtype))
    return (
        _keep_if_inf(found_inf, new_p, list(params)),
        grads_out,
        _keep_if_inf(found_inf, new_b, list(momentum_buffers)) if momentum_buffers else [],
    )
