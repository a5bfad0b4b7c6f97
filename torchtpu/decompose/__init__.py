"""Stage 2, decomposition: which ATen ops AOTAutograd breaks into smaller ones.

We start from PyTorch's core ATen decompositions and keep whole every op we
lower directly, since those lowerings exist to be faster or more exact than
their decompositions (fused attention, layer norm and its backward computed
in float32, convolution backward through XLA's own transposed convolution).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch._decomp import core_aten_decompositions

from torchtpu.lower.registry import registered_ops

aten = torch.ops.aten

# Ops PyTorch would leave whole that are better broken up before lowering.
_EXTRA = [
    aten.upsample_nearest2d.vec,
    aten.upsample_bilinear2d.vec,
    aten.linspace.default,
    aten.logspace.default,
]


@functools.cache
def decomposition_table() -> dict[Any, Any]:
    """The decompositions torchtpu hands to AOTAutograd.

    Example::

        from torchtpu.decompose import decomposition_table
        torch.ops.aten.silu.default in decomposition_table()
    """
    table = dict(core_aten_decompositions())
    table.update(torch._decomp.get_decompositions(_EXTRA))
    for op in registered_ops():
        table.pop(op, None)
    return table
