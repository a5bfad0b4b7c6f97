"""``prims`` ops that PyTorch's own decompositions emit (in-place ops traced
outside AOTAutograd, e.g. by ``torchtpu.compile_step``). Prims take operands of
one dtype already, so there is no promotion policy here."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import torch

from torchtpu.lower.ops._util import jdtype
from torchtpu.lower.registry import register

prims = torch.ops.prims

for _op, _fn in {
    prims.add.default: jnp.add,
    prims.sub.default: jnp.subtract,
    prims.mul.default: jnp.multiply,
    prims.div.default: jnp.divide,
    prims.maximum.default: jnp.maximum,
    prims.minimum.default: jnp.minimum,
    prims.pow.default: jnp.power,
    prims.eq.default: jnp.equal,
    prims.ne.default: jnp.not_equal,
    prims.lt.default: jnp.less,
    prims.le.default: jnp.less_equal,
    prims.gt.default: jnp.greater,
    prims.ge.default: jnp.greater_equal,
}.items():
    register(_op)(lambda x, y, _fn=_fn: _fn(x, y))

for _op, _fn in {
    prims.neg.default: jnp.negative,
    prims.abs.default: jnp.abs,
    prims.sqrt.default: jnp.sqrt,
    prims.rsqrt.default: jax.lax.rsqrt,
    prims.exp.default: jnp.exp,
    prims.log.default: jnp.log,
}.items():
    register(_op)(lambda x, _fn=_fn: _fn(x))


@register(prims.convert_element_type.default)
def convert_element_type(x, dtype):
    return x.astype(jdtype(dtype))


@register(prims.where.default)
def where(pred, a, b):
    return jnp.where(pred, a, b)
