"""Grouped matmuls, the experts of mixture-of-experts layers: ``aten._grouped_mm``
(``torch.nn.functional.grouped_mm``) and the grouped-matmul custom ops libraries
ship, lowered to ``jax.lax.ragged_dot``, which XLA compiles on every platform.

A group's rows are given by ``offs``, the running end of each group: group
``g`` holds rows ``offs[g-1]:offs[g]`` of the ragged dimension (rows past the
last offset belong to no group and come out zero). The offsets are checked
inside the program (non-decreasing, within the ragged size) and a bad one
raises when results are read, as an index out of range does.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from torchtpu.errors import LoweringUnsupported
from torchtpu.lower.checks import condition
from torchtpu.lower.ops._util import aten
from torchtpu.lower.registry import register, register_library


def _sizes(op: str, offs, total: int):
    """Group sizes from running offsets, checked on the device."""
    offs = offs.astype(jnp.int32)
    sizes = jnp.diff(offs, prepend=jnp.zeros((1,), jnp.int32))
    condition(
        op,
        jnp.any(sizes < 0) | (offs[-1] > total),
        offs[-1],
        f"the offsets must be non-decreasing and end at most at {total}, the size of the "
        "grouped dimension (the last offset is {value})",
    )
    return sizes


def _f32(a, b):
    """Accumulate low-precision products in float32, as PyTorch's kernels do."""
    low = {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)}
    return jnp.float32 if jnp.dtype(a.dtype) in low or jnp.dtype(b.dtype) in low else None


def rows_grouped(op: str, a, b, offs):
    """``a`` (M, K), ``b`` (G, K, N): row group g of ``a`` times ``b[g]`` -> (M, N)."""
    out = lax.ragged_dot(a, b, _sizes(op, offs, a.shape[0]), preferred_element_type=_f32(a, b))
    return out


def contraction_grouped(op: str, a, b, offs):
    """``a`` (M, K), ``b`` (K, N), K split in groups: one (M, N) product per group ->
    (G, M, N). The weight gradient of :func:`rows_grouped`."""
    numbers = lax.RaggedDotDimensionNumbers(
        dot_dimension_numbers=(([1], [0]), ([], [])),
        lhs_ragged_dimensions=[1],
        rhs_group_dimensions=[],
    )
    sizes = _sizes(op, offs, a.shape[1])
    return lax.ragged_dot_general(a, b, sizes, numbers, preferred_element_type=_f32(a, b))


@register(aten._grouped_mm.default)
def grouped_mm(a, b, offs=None, bias=None, out_dtype=None):
    if bias is not None:
        raise LoweringUnsupported("_grouped_mm with a bias (PyTorch's kernels take none yet)")
    dtype = jnp.dtype(out_dtype) if out_dtype is not None else a.dtype
    if offs is None:
        if a.ndim != 3 or b.ndim != 3:
            raise LoweringUnsupported(
                f"_grouped_mm without offs needs 3-d operands, got {a.shape} and {b.shape}"
            )
        out = jnp.matmul(a, b, preferred_element_type=_f32(a, b))
    elif a.ndim == 2 and b.ndim == 3:
        out = rows_grouped("_grouped_mm", a, b, offs)
    elif a.ndim == 3 and b.ndim == 2:
        # (G, M, K) x (K, N) with N split in groups: the transpose of rows_grouped.
        out = rows_grouped("_grouped_mm", b.T, jnp.swapaxes(a, 1, 2), offs).T
    elif a.ndim == 2 and b.ndim == 2:
        out = contraction_grouped("_grouped_mm", a, b, offs)
    else:
        raise LoweringUnsupported(f"_grouped_mm of {a.ndim}-d and {b.ndim}-d operands")
    return out.astype(dtype)


@register_library("transformers::grouped_mm_fallback.default")
def transformers_grouped_mm(a, b, offs):
    return rows_grouped("transformers.grouped_mm_fallback", a, b, offs).astype(a.dtype)


@register_library("transformers::grouped_mm_fallback_backward.default")
def transformers_grouped_mm_backward(a, b, offs, grad):
    op = "transformers.grouped_mm_fallback_backward"
    grad_a = rows_grouped(op, grad, jnp.swapaxes(b, 1, 2), offs)
    grad_b = contraction_grouped(op, a.T, grad, offs)
    return grad_a.astype(a.dtype), grad_b.astype(b.dtype)
