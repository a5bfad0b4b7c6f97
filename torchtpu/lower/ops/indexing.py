"""Gather, scatter, advanced indexing, embedding, sort and top-k."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from torchtpu.errors import LoweringUnsupported
from torchtpu.lower.checks import bounds
from torchtpu.lower.ops._util import aten, canon_dim
from torchtpu.lower.registry import register


def _wrap(index, n):
    """PyTorch accepts negative indices; XLA's gather would clamp them."""
    return jnp.where(index < 0, index + n, index)


def _along(x, dim, index):
    """Full index tuple addressing ``x`` at ``index`` along ``dim`` (gather/scatter)."""
    axis = canon_dim(dim, x.ndim)
    if x.ndim == 0:
        return (), axis
    grids = jnp.meshgrid(*[jnp.arange(n) for n in index.shape], indexing="ij", sparse=True)
    grids[axis] = _wrap(index, x.shape[axis])
    return tuple(grids), axis


@register(aten.gather.default)
def gather(x, dim, index, *, sparse_grad=False):
    if x.ndim == 0:
        bounds("gather", index, 1, dim=0, negative=False)
        return x.reshape(index.shape)
    axis = canon_dim(dim, x.ndim)
    bounds("gather", index, x.shape[axis], dim=axis, negative=False)
    idx, _ = _along(x, dim, index)
    return x[idx]


@register(aten.take.default)
def take(x, index):
    # Lowered rather than decomposed: the decomposition indexes with a 0-d index as with a
    # Python int, which reads it on the host. PyTorch raises for an index outside
    # [-numel, numel); a compiled program cannot raise, so such an index reads what the
    # gathers above read: one past the end reads the last element, and one below -numel
    # is wrapped once more, as JAX indexing does, then clamped (-numel - 1 reads the last
    # element, -2 * numel - 1 the first).
    flat = x.reshape(-1)
    bounds("take", index, flat.shape[0], negative=True)
    return flat[_wrap(index, flat.shape[0])]


@register(aten.index_select.default)
def index_select(x, dim, index):
    axis = canon_dim(dim, x.ndim)
    if x.ndim == 0:
        bounds("index_select", index, 1, dim=0, negative=False)
        return x
    bounds("index_select", index, x.shape[axis], dim=axis, negative=False)
    return jnp.take(x, _wrap(index, x.shape[axis]), axis=axis)


_SCATTER_MODES = {
    None: "set",
    "add": "add",
    "sum": "add",
    "multiply": "multiply",
    "prod": "multiply",
    "amax": "max",
    "amin": "min",
}


def _mode(reduce, dtype):
    """The ``.at[]`` method for a reduction; on bool, add is "or" and multiply "and"."""
    mode = _SCATTER_MODES[reduce]
    if dtype == jnp.bool_:
        return {"add": "max", "multiply": "min"}.get(mode, mode)
    return mode


def _scatter(x, dim, index, src, reduce=None, op="scatter"):
    if x.ndim == 0:
        bounds(op, index, 1, dim=0, negative=False)
        return jnp.asarray(src, x.dtype).reshape(()) if index.size else x
    axis = canon_dim(dim, x.ndim)
    bounds(op, index, x.shape[axis], dim=axis, negative=False)
    idx, _ = _along(x, dim, index)
    if not hasattr(src, "shape") or src.ndim == 0:
        values = jnp.broadcast_to(jnp.asarray(src, x.dtype), index.shape)
    else:
        values = src[tuple(slice(0, n) for n in index.shape)].astype(x.dtype)
    return getattr(x.at[idx], _mode(reduce, x.dtype))(values)


@register(aten.scatter.src, aten.scatter.value)
def scatter(x, dim, index, src):
    return _scatter(x, dim, index, src)


@register(aten.scatter.reduce, aten.scatter.value_reduce)
def scatter_reduce_legacy(x, dim, index, src, *, reduce):
    return _scatter(x, dim, index, src, reduce)


@register(aten.scatter_add.default)
def scatter_add(x, dim, index, src):
    return _scatter(x, dim, index, src, "add", op="scatter_add")


@register(aten.scatter_reduce.two)
def scatter_reduce(x, dim, index, src, reduce, *, include_self=True):
    axis = canon_dim(dim, max(x.ndim, 1))
    bounds("scatter_reduce", index, x.shape[axis] if x.ndim else 1, dim=axis, negative=False)
    if reduce == "mean":
        hits = _scatter(
            jnp.zeros(x.shape, x.dtype), dim, index, jnp.ones(index.shape, x.dtype), "add"
        )
        base = x if include_self else jnp.where(hits == 0, x, 0).astype(x.dtype)
        total = _scatter(base, dim, index, src, "add")
        count = jnp.maximum(hits + (1 if include_self else 0), 1)
        out = total / count if jnp.issubdtype(x.dtype, jnp.inexact) else total // count
        return out.astype(x.dtype)
    if not include_self:
        identity = {"sum": 0, "prod": 1, "amax": _lowest(x.dtype), "amin": _highest(x.dtype)}
        touched = _scatter(jnp.zeros(x.shape, jnp.bool_), dim, index, True)
        base = jnp.where(touched, jnp.asarray(identity[reduce], x.dtype), x)
        return _scatter(base, dim, index, src, reduce)
    return _scatter(x, dim, index, src, reduce)


def _lowest(dtype):
    if dtype == jnp.bool_:
        return False
    return -jnp.inf if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype).min


def _highest(dtype):
    if dtype == jnp.bool_:
        return True
    return jnp.inf if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype).max


def _advanced_index(x, indices, op="index"):
    """PyTorch's ``x[indices]`` where ``None`` entries keep a dimension whole."""
    index = []
    for axis, ix in enumerate(indices):
        if ix is None:
            index.append(slice(None))
        elif ix.dtype == jnp.bool_:
            raise LoweringUnsupported(
                "boolean-mask indexing has a data-dependent shape; use torch.where instead"
            )
        else:
            bounds(op, ix, x.shape[axis], dim=axis, negative=True)
            index.append(_wrap(ix, x.shape[axis]))
    return tuple(index)


@register(aten.index.Tensor)
def index(x, indices):
    return x[_advanced_index(x, indices)]


@register(aten.index_put.default, aten._unsafe_index_put.default)
def index_put(x, indices, values, accumulate=False):
    values = values.astype(x.dtype)
    masked = _mask_put(x, indices, values, accumulate)
    if masked is not None:
        return masked
    at = x.at[_advanced_index(x, indices, "index_put")]
    return getattr(at, _mode("add", x.dtype))(values) if accumulate else at.set(values)


@register(aten._index_put_impl.default)
def index_put_impl(x, indices, values, accumulate=False, unsafe=False):
    """The functional form of ``index_put_``'s kernel (autograd's index backward)."""
    return index_put(x, indices, values, accumulate)


def _mask_put(x, indices, values, accumulate):
    """``x[mask] = values`` for one boolean mask and values that broadcast over it.

    Then the result needs no count of the selected elements: it is a select.
    """
    bools = [i for i, ix in enumerate(indices) if ix is not None and ix.dtype == jnp.bool_]
    others = [ix for ix in indices if ix is not None and ix.dtype != jnp.bool_]
    if len(bools) != 1 or others:
        return None
    start, mask = bools[0], indices[bools[0]]
    rest = x.shape[start + mask.ndim :]
    if values.ndim > len(rest) and values.shape[0] != 1:
        return None
    shape = (1,) * start + mask.shape + (1,) * len(rest)
    where = mask.reshape(shape)
    fill = jnp.broadcast_to(values.reshape(values.shape[-len(rest) :] if rest else ()), x.shape)
    if values.ndim > len(rest):
        fill = jnp.broadcast_to(values.reshape(values.shape[1:]), x.shape)
    if accumulate:
        fill = (x | fill) if x.dtype == jnp.bool_ else x + fill
    return jnp.where(where, fill, x)


@register(aten._unsafe_index.Tensor)
def unsafe_index(x, indices):
    return x[_advanced_index(x, indices)]


def _along_dim(fn, negative=False):
    """Apply ``fn(moved, index, *rest)`` with ``dim`` moved to the front, the index
    checked (``negative``: PyTorch accepts indices from ``-size``).

    A 0-d ``x`` is treated as a 1-element vector, as PyTorch does.
    """

    def lowering(x, dim, index, *rest, **kwargs):
        scalar = x.ndim == 0
        x1 = x.reshape(1) if scalar else x
        axis = canon_dim(dim, x1.ndim)
        bounds(fn.__name__, index, x1.shape[axis], dim=axis, negative=negative)
        rest = [
            (jnp.moveaxis(r.reshape(1) if r.ndim == 0 else r, axis, 0) if hasattr(r, "ndim") else r)
            for r in rest
        ]
        idx = _wrap(index.reshape(-1), x1.shape[axis])
        out = jnp.moveaxis(fn(jnp.moveaxis(x1, axis, 0), idx, *rest, **kwargs), 0, axis)
        return out.reshape(()) if scalar else out

    return lowering


@register(aten.index_add.default)
@_along_dim
def index_add(x, index, source, *, alpha=1):
    source = source if x.dtype == jnp.bool_ else source * alpha
    return getattr(x.at[index], _mode("add", x.dtype))(source.astype(x.dtype))


@register(aten.index_copy.default)
@_along_dim
def index_copy(x, index, source):
    return x.at[index].set(source.astype(x.dtype))


@register(aten.index_fill.int_Scalar, aten.index_fill.int_Tensor)
@functools.partial(_along_dim, negative=True)
def index_fill(x, index, value):
    return x.at[index].set(jnp.asarray(value, x.dtype))


@register(aten.index_reduce.default)
@_along_dim
def index_reduce(x, index, source, reduce, *, include_self=True):
    source = source.astype(x.dtype)
    if not include_self:
        identity = {"prod": 1, "mean": 0, "amax": _lowest(x.dtype), "amin": _highest(x.dtype)}
        x = x.at[index].set(jnp.asarray(identity[reduce], x.dtype))
    if reduce == "mean":
        count = jnp.zeros(x.shape[:1], x.dtype).at[index].add(1) + (1 if include_self else 0)
        count = jnp.maximum(count, 1).reshape((-1,) + (1,) * (x.ndim - 1))
        total = x.at[index].add(source)
        return total / count if jnp.issubdtype(x.dtype, jnp.inexact) else total // count
    mode = {"prod": "multiply", "amax": "max", "amin": "min"}[reduce]
    return getattr(x.at[index], mode)(source)


@register(aten.put.default)
def put(x, index, source, accumulate=False):
    flat = x.reshape(-1)
    bounds("put", index, flat.shape[0], negative=True)
    at = flat.at[_wrap(index.reshape(-1), flat.shape[0])]
    values = source.reshape(-1).astype(x.dtype)
    out = getattr(at, _mode("add", x.dtype))(values) if accumulate else at.set(values)
    return out.reshape(x.shape)


@register(aten.nonzero_static.default)
def nonzero_static(x, *, size, fill_value=-1):
    if x.ndim == 0:
        return jnp.zeros((size, 0), jnp.int64)
    coords = jnp.nonzero(x, size=size, fill_value=fill_value)
    return jnp.stack(coords, axis=-1).astype(jnp.int64)


def _searchsorted_1d(seq, values, side):
    return jnp.searchsorted(seq, values, side=side, method="compare_all")


@register(aten.searchsorted.Tensor, aten.searchsorted.Scalar)
def searchsorted(seq, values, *, out_int32=False, right=False, side=None, sorter=None):
    side = "right" if right or side == "right" else "left"
    if sorter is not None:
        seq = jnp.take_along_axis(seq, sorter, axis=-1)
    common = jnp.promote_types(seq.dtype, jnp.asarray(values).dtype)
    seq, values = seq.astype(common), jnp.asarray(values, common)
    if seq.ndim == 1:
        out = _searchsorted_1d(seq, values, side)
    else:
        lead = seq.shape[:-1]
        out = jax.vmap(lambda s, v: _searchsorted_1d(s, v, side))(
            seq.reshape(-1, seq.shape[-1]), values.reshape(-1, values.shape[-1])
        ).reshape(*lead, values.shape[-1])
    return out.astype(jnp.int32 if out_int32 else jnp.int64)


@register(aten.embedding.default)
def embedding(weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    bounds("embedding", indices, weight.shape[0], dim=0, negative=False)
    return jnp.take(weight, indices, axis=0)


@register(aten.embedding_dense_backward.default)
def embedding_dense_backward(grad, indices, num_weights, padding_idx, scale_grad_by_freq):
    flat_idx = indices.reshape(-1)
    flat_grad = grad.reshape(-1, grad.shape[-1])
    if padding_idx >= 0:
        flat_grad = jnp.where((flat_idx == padding_idx)[:, None], 0, flat_grad)
    if scale_grad_by_freq:
        counts = jnp.zeros((num_weights,), grad.dtype).at[flat_idx].add(1)
        flat_grad = flat_grad / counts[flat_idx][:, None]
    out = jnp.zeros((num_weights, grad.shape[-1]), jnp.float32)
    return out.at[flat_idx].add(flat_grad.astype(jnp.float32)).astype(grad.dtype)


@register(aten.sort.default, aten.sort.stable)
def sort(x, dim=-1, descending=False, *, stable=False):
    if x.ndim == 0:
        return x, jnp.zeros((), jnp.int64)
    axis = canon_dim(dim, x.ndim)
    # A stable sort, with NaN sorted as the largest value, as in PyTorch.
    keys = -x if descending and x.dtype != jnp.bool_ else x
    if descending and x.dtype == jnp.bool_:
        keys = ~x
    if descending and jnp.issubdtype(x.dtype, jnp.floating):
        keys = jnp.where(jnp.isnan(x), -jnp.inf, keys)
        nan_rank = jnp.where(jnp.isnan(x), 0, 1)
        order = jnp.lexsort((keys, nan_rank), axis=axis)
    else:
        order = jnp.argsort(keys, axis=axis, stable=True)
    return jnp.take_along_axis(x, order, axis=axis), order.astype(jnp.int64)


@register(aten.topk.default)
def topk(x, k, dim=-1, largest=True, sorted=True):
    if x.ndim == 0:
        return x, jnp.zeros((), jnp.int64)
    axis = canon_dim(dim, x.ndim)
    values, order = sort(x, axis, descending=largest)
    return (lax.slice_in_dim(values, 0, k, axis=axis), lax.slice_in_dim(order, 0, k, axis=axis))


@register(aten.argsort.default, aten.argsort.stable)
def argsort(x, dim=-1, descending=False, *, stable=False):
    return sort(x, dim, descending)[1]


@register(aten.masked_scatter.default)
def masked_scatter(x, mask, source):
    x = jnp.broadcast_to(x, jnp.broadcast_shapes(x.shape, mask.shape))
    mask = jnp.broadcast_to(mask, x.shape).reshape(-1)
    positions = jnp.cumsum(mask) - 1
    taken = source.reshape(-1)[jnp.clip(positions, 0, source.size - 1)]
    return jnp.where(mask, taken.astype(x.dtype), x.reshape(-1)).reshape(x.shape)


@register(aten.bucketize.Tensor, aten.bucketize.Scalar)
def bucketize(values, boundaries, *, out_int32=False, right=False):
    return searchsorted(boundaries, values, out_int32=out_int32, right=right)


def _bags(indices, offsets, include_last_offset):
    num_bags = offsets.shape[0] - (1 if include_last_offset else 0)
    bag = jnp.searchsorted(offsets, jnp.arange(indices.shape[0]), side="right") - 1
    return jnp.clip(bag, 0, num_bags - 1), num_bags


def _embedding_bag_values(weight, indices, offsets, mode, weights, last, padding_idx):
    bag, n = _bags(indices, offsets, last)
    keep = (indices != padding_idx) if padding_idx is not None and padding_idx >= 0 else None
    keep = jnp.ones(indices.shape, jnp.bool_) if keep is None else keep
    rows = jnp.take(weight, indices, axis=0)
    if weights is not None:
        rows = rows * weights[:, None].astype(rows.dtype)
    count = jax.ops.segment_sum(keep.astype(jnp.int64), bag, num_segments=n)
    if mode == 2:
        low = jnp.asarray(_lowest(weight.dtype), weight.dtype)
        masked = jnp.where(keep[:, None], rows, low)
        best = jax.ops.segment_max(masked, bag, num_segments=n)
        # The weight row each maximum came from (first on ties), for the backward.
        first = jnp.where(masked == best[bag], jnp.arange(indices.shape[0])[:, None], indices.size)
        pos = jax.ops.segment_min(first, bag, num_segments=n)
        argmax = jnp.where(count[:, None] > 0, indices[jnp.clip(pos, 0, indices.size - 1)], -1)
        return jnp.where(count[:, None] > 0, best, 0).astype(weight.dtype), bag, count, argmax
    acc = rows.astype(jnp.float32) if weight.dtype == jnp.bfloat16 else rows
    total = jax.ops.segment_sum(jnp.where(keep[:, None], acc, 0), bag, num_segments=n)
    if mode == 1:
        total = total / jnp.maximum(count, 1)[:, None].astype(total.dtype)
    return total.astype(weight.dtype), bag, count, jnp.zeros(count.shape, jnp.int64)


@register(aten._embedding_bag.default, aten._embedding_bag_forward_only.default)
def embedding_bag(
    weight,
    indices,
    offsets,
    scale_grad_by_freq=False,
    mode=0,
    sparse=False,
    per_sample_weights=None,
    include_last_offset=False,
    padding_idx=-1,
):
    out, bag, count, argmax = _embedding_bag_values(
        weight, indices, offsets, mode, per_sample_weights, include_last_offset, padding_idx
    )
    return out, bag.astype(jnp.int64), count, argmax.astype(jnp.int64)


@register(aten._embedding_bag_dense_backward.default)
def embedding_bag_dense_backward(
    grad,
    indices,
    offset2bag,
    bag_size,
    maximum_indices,
    num_weights,
    scale_grad_by_freq,
    mode,
    per_sample_weights,
    padding_idx=-1,
):
    out = jnp.zeros((num_weights, grad.shape[-1]), jnp.float32)
    if mode == 2:
        cols = jnp.broadcast_to(jnp.arange(grad.shape[-1]), maximum_indices.shape)
        rows = jnp.where(maximum_indices < 0, num_weights, maximum_indices)
        return out.at[rows, cols].add(grad, mode="drop").astype(grad.dtype)
    g = grad[offset2bag].astype(jnp.float32)
    if mode == 1:
        g = g / jnp.maximum(bag_size[offset2bag], 1)[:, None]
    if per_sample_weights is not None:
        g = g * per_sample_weights[:, None]
    if scale_grad_by_freq:
        freq = jnp.zeros((num_weights,), jnp.float32).at[indices].add(1)
        g = g / freq[indices][:, None]
    g = jnp.where((indices == padding_idx)[:, None], 0, g) if padding_idx >= 0 else g
    return out.at[indices].add(g).astype(grad.dtype)


@register(aten._embedding_bag_per_sample_weights_backward.default)
def embedding_bag_per_sample_weights_backward(
    grad, weight, indices, offsets, offset2bag, mode, padding_idx=-1
):
    out = jnp.sum(grad[offset2bag] * jnp.take(weight, indices, axis=0), axis=-1)
    return jnp.where(indices == padding_idx, 0, out) if padding_idx >= 0 else out


@register(aten._embedding_bag_backward.default)
def embedding_bag_backward(
    grad,
    indices,
    offsets,
    offset2bag,
    bag_size,
    maximum_indices,
    num_weights,
    scale_grad_by_freq,
    mode,
    sparse,
    per_sample_weights,
    padding_idx=-1,
):
    # PyTorch's fast path leaves offset2bag empty, so recompute it from offsets.
    bag = jnp.clip(
        jnp.searchsorted(offsets, jnp.arange(indices.shape[0]), side="right") - 1,
        0,
        grad.shape[0] - 1,
    )
    keep = indices != padding_idx if padding_idx >= 0 else jnp.ones(indices.shape, jnp.bool_)
    counts = jax.ops.segment_sum(keep.astype(jnp.int64), bag, num_segments=grad.shape[0])
    return embedding_bag_dense_backward(
        grad,
        indices,
        bag,
        counts,
        maximum_indices,
        num_weights,
        scale_grad_by_freq,
        mode,
        per_sample_weights,
        padding_idx,
    )
