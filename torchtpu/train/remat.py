"""Activation checkpointing for ``compile_step(..., checkpoint=True)``.

While the step is traced, each block of every ``nn.ModuleList`` in the model
(the layers of a transformer, the stages of a ResNet) runs under PyTorch's
non-reentrant ``torch.utils.checkpoint``: its activations are not kept for the
backward but recomputed there. The recomputation's inputs pass through an
optimization barrier so that XLA cannot fold the recomputation back into the
forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.utils.checkpoint

from torchtpu.errors import TorchTPUError


def blocks(models: list[torch.nn.Module]) -> list[torch.nn.Module]:
    found: dict[int, torch.nn.Module] = {}
    for model in models:
        for module in model.modules():
            if isinstance(module, torch.nn.ModuleList):
                for block in module:
                    found.setdefault(id(block), block)
    return list(found.values())


@contextlib.contextmanager
def checkpointed(models: list[torch.nn.Module]) -> Iterator[None]:
    targets = blocks(models)
    if not targets:
        raise TorchTPUError(
            "compile_step(checkpoint=True) found no nn.ModuleList of blocks to checkpoint in "
            "the model; it recomputes the blocks of ModuleLists (transformer layers, stages)."
        )
    for block in targets:
        for m in block.modules():
            p = getattr(m, "p", 0.0)
            if m.training and isinstance(m, torch.nn.modules.dropout._DropoutNd) and p > 0:
                raise TorchTPUError(
                    f"compile_step(checkpoint=True): block {type(block).__name__} has active "
                    f"dropout ({type(m).__name__}, p={p}); its recomputation would draw a new "
                    "mask. Set dropout to 0 or leave checkpoint off."
                )
    originals = []
    for block in targets:
        originals.append((block, block.forward))
        block.forward = _checkpointed_forward(block.forward)
    try:
        yield
    finally:
        for block, forward in originals:
            block.forward = forward


def _checkpointed_forward(forward):
    def run(*args, **kwargs):
        calls, grads = [0], []

        def body(*a, **k):
            calls[0] += 1
            if calls[0] > 1:  # the recomputation, inside the backward
                a, k = _fence(a, k, grads[-1:])
            return forward(*a, **k)

        out = torch.utils.checkpoint.checkpoint(body, *args, use_reentrant=False, **kwargs)
        return _tap_first_tensor(out, grads)

    return run


class _GradTap(torch.autograd.Function):
    """Identity that records the gradient reaching a block's output.

    The backward reaches this tap before the block's own backward nodes, so the
    recomputation can be fenced on that gradient: XLA then cannot schedule it
    (and the activations it makes) before the backward gets to the block.
    """

    @staticmethod
    def forward(ctx, stash, x):
        ctx.stash = stash
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.stash.append(grad)
        return None, grad


def _tap_first_tensor(out, grads):
    flat, spec = torch.utils._pytree.tree_flatten(out)
    for i, value in enumerate(flat):
        if isinstance(value, torch.Tensor) and value.requires_grad:
            flat[i] = _GradTap.apply(grads, value)
            break
    return torch.utils._pytree.tree_unflatten(flat, spec)


def _fence(args: tuple, kwargs: dict, extra: list[torch.Tensor]) -> tuple[tuple, dict]:
    flat, spec = torch.utils._pytree.tree_flatten((args, kwargs))
    positions = [i for i, v in enumerate(flat) if isinstance(v, torch.Tensor)]
    fenced = torch.ops.torchtpu.optimization_barrier([flat[i] for i in positions] + extra)
    for i, t in zip(positions, fenced[: len(positions)], strict=True):
        flat[i] = t
    return torch.utils._pytree.tree_unflatten(flat, spec)
