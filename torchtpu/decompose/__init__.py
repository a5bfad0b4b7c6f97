"""Stage 2, decomposition: which ATen ops AOTAutograd breaks into smaller ones.

We start from PyTorch's core ATen decompositions, add every other
decomposition PyTorch registers (``torch._decomp.decomposition_table``: the
non-core ops such as ``special_i1``, ``grid_sampler_2d`` or ``native_group_norm``,
which would otherwise fall back to eager), and keep whole every op we lower
directly, since those lowerings exist to be faster or more exact than
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


# PyTorch decompositions we must not take: they write into a fresh tensor in
# place (complex, polar), which AOTAutograd's functionalization rejects, or
# read a tensor's value on the host (bucketize), which tracing cannot do.
_REJECTED = {
    aten.complex.default,
    aten.polar.default,
    aten.bucketize.Tensor,
    aten.bucketize.Scalar,
}


@functools.cache
def decomposition_table() -> dict[Any, Any]:
    """The decompositions torchtpu hands to AOTAutograd.

    Example::

        from torchtpu.decompose import decomposition_table
        torch.ops.aten.silu.default in decomposition_table()
    """
    table = dict(core_aten_decompositions())
    table.update(torch._decomp.get_decompositions(_EXTRA))
    for op, decomposition in torch._decomp.decomposition_table.items():
        if op not in _REJECTED:
            table.setdefault(op, decomposition)
    for op in registered_ops():
        table.pop(op, None)
    return table
