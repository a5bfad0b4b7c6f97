"""Shape arithmetic in graphs with data-dependent sizes: sizes, strides and checks.

These ops compute on Python ints while a program is traced (every shape is
concrete then), so they cost nothing at run time. Python's own operators on
sizes (``operator.mul``, ``torch.sym_max``...) are handled by the interpreter.
"""

from __future__ import annotations

import math

import torch

from torchtpu.errors import TorchTPUError
from torchtpu.lower.registry import register

aten = torch.ops.aten


@register(aten.sym_size.int)
def sym_size(x, dim):
    return x.shape[dim]


@register(aten.sym_numel.default)
def sym_numel(x):
    return math.prod(x.shape)


@register(aten.sym_stride.int)
def sym_stride(x, dim):
    # torchtpu's arrays are row-major and contiguous.
    return math.prod(x.shape[dim % x.ndim + 1 :]) if x.ndim else 1


@register(aten.sym_storage_offset.default)
def sym_storage_offset(x):
    return 0


@register(aten._assert_scalar.default)
def assert_scalar(cond, msg):
    # Conditions on sizes: concrete here, and the program is only reused for
    # the same sizes, so checking once while tracing checks every run.
    if isinstance(cond, bool) and not cond:
        raise TorchTPUError(f"a size check of the graph failed: {msg}")


@register(aten.sym_constrain_range_for_size.default, aten.sym_constrain_range.default)
def sym_constrain_range(size, *, min=None, max=None):
    return None


@register(aten._assert_tensor_metadata.default)
def assert_tensor_metadata(a, size=None, stride=None, dtype=None, *, device=None, layout=None):
    # torch.export's graphs assert a tensor's dtype and device after a ``.to()``;
    # tracing already fixed both, so there is nothing left to check.
    return None
