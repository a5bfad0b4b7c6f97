"""``torchtpu::optimization_barrier``: identity for PyTorch, a fence for XLA.

Activation checkpointing recomputes a block's forward inside the backward. The
recomputation is the same arithmetic on the same inputs, so XLA's common
subexpression elimination would merge it back into the forward and keep the
activations alive after all; routing its inputs through
``jax.lax.optimization_barrier`` keeps the two apart (JAX's own remat does the same).
"""

from __future__ import annotations

import jax
import torch

from torchtpu.lower.registry import register


@torch.library.custom_op("torchtpu::optimization_barrier", mutates_args=())
def optimization_barrier(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.clone() for t in tensors]


@optimization_barrier.register_fake
def _(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.empty_like(t) for t in tensors]


@register(torch.ops.torchtpu.optimization_barrier.default)
def barrier(tensors):
    return list(jax.lax.optimization_barrier(tuple(tensors)))
