"""Grouped matmuls, the experts of mixture-of-experts layers: ``aten._grouped_mm``
(``torch.nn.functional.grouped_mm``) and the grouped-matmul custom ops libraries
ship, lowered to ``jax.lax.ragged_dot``, which XLA compiles on every platform.

A group's rows are given by ``offs``, the running end of each group: group
``g`` holds rows ``offs[g-1]:offs[g]`` of the ragged dimension (rows past the
last offset belong to no group and come out zero). The offsets are checked
inside the program (non-decreasing, within the ragged size) and a bad one
raises when results are read, as an index out of range does.

On the CPU, XLA expands ``ragged_dot`` into one dense product over every group
(G times the arithmetic: 1/8 of the GEMM rate for 8 experts), so there the
grouped matmuls run as a loop over row tiles instead (:func:`tiled_rows`,
:func:`tiled_contraction`): each tile of ``TILE`` sorted rows of one group is a
dense (TILE, K) x (K, N) product with its group's weights, the loop runs as
many times as there are tiles (at most M / TILE + G), and a tile's rows past
its group are masked. The waste is at most one partial tile per group. Other
platforms keep ``ragged_dot``, which XLA compiles natively on TPUs.

Under a strategy whose mesh has an ``expert`` axis (``torchtpu.ExpertParallel``)
the experts' grouped matmuls (a 3-d ``b`` of stacked expert weights, and the
contraction form that is their weight gradient) run expert parallel: a
``shard_map`` where each device computes only its own experts and the tokens
reach them by all-to-all (:mod:`torchtpu.shard.expert`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from torchtpu.errors import LoweringUnsupported
from torchtpu.lower.checks import condition
from torchtpu.lower.ops._util import aten
from torchtpu.lower.registry import register, register_library
from torchtpu.runtime import default_device
from torchtpu.runtime.placement import current_mesh

# Rows per tile of the CPU loop: 64 keeps each product near the dense GEMM rate on
# XLA:CPU (measured 87% at K=512, N=2048) while wasting little on partial tiles.
TILE = 64
_ZERO = np.int32(0)


def _expert_mesh():
    """The mesh the program is traced for, if it splits experts over an axis."""
    mesh = current_mesh()
    if mesh is None or mesh.shape.get("expert", 1) <= 1:
        return None
    return mesh


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


def _tiles(sizes, rows: int, tile: int):
    """The loop's work items: for each tile of each group, its group, its first row
    and its row count; and how many there are (a traced int)."""
    groups = sizes.shape[0]
    ends = jnp.cumsum(sizes)
    starts = ends - sizes
    per_group = (sizes + tile - 1) // tile
    cum = jnp.cumsum(per_group)
    bound = rows // tile + groups  # at most this many tiles
    item = jnp.arange(bound, dtype=jnp.int32)
    group = jnp.clip(jnp.searchsorted(cum, item, side="right"), 0, groups - 1).astype(jnp.int32)
    start = starts[group] + (item - (cum[group] - per_group[group])) * tile
    count = jnp.minimum(tile, ends[group] - start)
    # (min: offsets past the rows are flagged by _sizes; the loop stays bounded.)
    return group, start, count, jnp.minimum(cum[-1], bound)


def tiled_rows(a, b, sizes, preferred=None, tile: int = TILE):
    """``ragged_dot(a, b, sizes)`` as a loop of dense (tile, K) x (K, N) products.

    Example::

        out = tiled_rows(jnp.ones((10, 4)), jnp.ones((2, 4, 3)), jnp.array([6, 4]))
    """
    (m, k), n = a.shape, b.shape[2]
    group, start, count, total = _tiles(sizes.astype(jnp.int32), m, tile)
    padded = jnp.pad(a, ((0, tile), (0, 0)))
    dtype = preferred or jnp.result_type(a.dtype, b.dtype)
    row = jnp.arange(tile, dtype=jnp.int32)[:, None]

    def body(i, out):
        at = (start[i], _ZERO)  # int32 indices, also under 64-bit types
        rows = lax.dynamic_slice(padded, at, (tile, k))
        weights = lax.dynamic_index_in_dim(b, group[i], 0, keepdims=False)
        product = jnp.matmul(rows, weights, preferred_element_type=dtype)
        old = lax.dynamic_slice(out, at, (tile, n))
        return lax.dynamic_update_slice(out, jnp.where(row < count[i], product, old), at)

    return lax.fori_loop(0, total, body, _zeros((m + tile, n), dtype, a, b, sizes))[:m]


def tiled_contraction(a, b, sizes, preferred=None, tile: int = TILE):
    """``a`` (K, M) x ``b`` (M, N) with M in groups -> (G, K, N), as a loop of dense
    (K, tile) x (tile, N) products added into their group's slot.

    Example::

        grads = tiled_contraction(jnp.ones((4, 10)), jnp.ones((10, 3)), jnp.array([6, 4]))
    """
    (k, m), n, groups = a.shape, b.shape[1], sizes.shape[0]
    group, start, count, total = _tiles(sizes.astype(jnp.int32), m, tile)
    lhs_all = jnp.pad(a, ((0, 0), (0, tile)))
    rhs_all = jnp.pad(b, ((0, tile), (0, 0)))
    dtype = preferred or jnp.result_type(a.dtype, b.dtype)
    row = jnp.arange(tile, dtype=jnp.int32)[:, None]

    def body(i, out):
        lhs = lax.dynamic_slice(lhs_all, (_ZERO, start[i]), (k, tile))
        rhs = lax.dynamic_slice(rhs_all, (start[i], _ZERO), (tile, n))
        rhs = jnp.where(row < count[i], rhs, jnp.zeros((), rhs.dtype))
        product = jnp.matmul(lhs, rhs, preferred_element_type=dtype)
        at = (group[i], _ZERO, _ZERO)
        old = lax.dynamic_slice(out, at, (1, k, n))
        return lax.dynamic_update_slice(out, old + product[None], at)

    return lax.fori_loop(0, total, body, _zeros((groups, k, n), dtype, a, b, sizes))


def _zeros(shape, dtype, *like):
    """Zeros that vary over the same manual mesh axes as ``like`` (inside a
    ``shard_map`` a loop's carry must keep its type)."""
    zeros = jnp.zeros(shape, dtype)
    for x in like:  # the sum of none of x's elements: an exact 0 of x's type
        zeros = zeros + jnp.sum(x.ravel()[:0]).astype(dtype)
    return zeros


def _on_cpu() -> bool:
    return default_device().platform == "cpu"


def ragged_rows(a, b, sizes, preferred=None):
    """Row group g of ``a`` (M, K) times ``b[g]`` -> (M, N): the tile loop on the CPU,
    ``ragged_dot`` elsewhere (see the module's docstring)."""
    if _on_cpu():
        return tiled_rows(a, b, sizes, preferred)
    return lax.ragged_dot(a, b, sizes, preferred_element_type=preferred)


def ragged_contraction(a, b, sizes, preferred=None):
    """``a`` (K, M) x ``b`` (M, N), M in groups -> (G, K, N), as :func:`ragged_rows`."""
    if _on_cpu():
        return tiled_contraction(a, b, sizes, preferred)
    numbers = lax.RaggedDotDimensionNumbers(
        dot_dimension_numbers=(([1], [0]), ([], [])),
        lhs_ragged_dimensions=[1],
        rhs_group_dimensions=[],
    )
    return lax.ragged_dot_general(a, b, sizes, numbers, preferred_element_type=preferred)


def rows_grouped(op: str, a, b, offs, experts: bool = True):
    """``a`` (M, K), ``b`` (G, K, N): row group g of ``a`` times ``b[g]`` -> (M, N).
    ``experts``: ``b`` holds the experts (split over the ``expert`` axis, if any)."""
    sizes = _sizes(op, offs, a.shape[0])
    mesh = _expert_mesh() if experts else None
    if mesh is not None:
        from torchtpu.shard import expert

        return expert.rows_grouped(a, b, sizes, mesh, op=op, dtype=_f32(a, b))
    return ragged_rows(a, b, sizes, _f32(a, b))


def contraction_grouped(op: str, a, b, offs):
    """``a`` (M, K), ``b`` (K, N), K split in groups: one (M, N) product per group ->
    (G, M, N). The weight gradient of :func:`rows_grouped`."""
    sizes = _sizes(op, offs, a.shape[1])
    mesh = _expert_mesh()
    if mesh is not None:
        from torchtpu.shard import expert

        groups = offs.shape[0]
        return expert.contraction_grouped(a, b, sizes, mesh, op=op, groups=groups, dtype=_f32(a, b))
    return ragged_contraction(a, b, sizes, _f32(a, b))


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
        out = rows_grouped("_grouped_mm", b.T, jnp.swapaxes(a, 1, 2), offs, experts=False).T
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
