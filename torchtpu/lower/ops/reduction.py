"""Reductions and scans. Low-precision floats accumulate in float32, as in PyTorch."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from torchtpu.lower.ops._util import (
    accum_dtype,
    aten,
    canon_dim,
    canon_dims,
    is_float,
    is_integral,
    jdtype,
)
from torchtpu.lower.registry import register


def _sum_dtype(x, dtype):
    # Bodies registered with accumulate=True already see bfloat16 and float16 as
    # float32; an explicit low-precision dtype still accumulates in float32 (the
    # node's dtype rounds the result), as PyTorch does.
    if dtype is not None:
        return accum_dtype(jnp.zeros((), jdtype(dtype)))
    return jnp.int64 if is_integral(x) else x.dtype


@register(aten.sum.dim_IntList, aten.sum.default, accumulate=True)
def sum_(x, dim=None, keepdim=False, *, dtype=None):
    axes = canon_dims(dim, x.ndim)
    return jnp.sum(x.astype(_sum_dtype(x, dtype)), axis=axes, keepdims=keepdim)


@register(aten.mean.dim, aten.mean.default, accumulate=True)
def mean(x, dim=None, keepdim=False, *, dtype=None):
    axes = canon_dims(dim, x.ndim)
    return jnp.mean(x.astype(_sum_dtype(x, dtype)), axis=axes, keepdims=keepdim)


@register(aten.prod.default, aten.prod.dim_int, accumulate=True)
def prod(x, dim=None, keepdim=False, *, dtype=None):
    axes = canon_dims(dim, x.ndim)
    return jnp.prod(x.astype(_sum_dtype(x, dtype)), axis=axes, keepdims=keepdim)


@register(aten.amax.default)
def amax(x, dim=(), keepdim=False):
    return jnp.max(x, axis=canon_dims(dim, x.ndim), keepdims=keepdim)


@register(aten.amin.default)
def amin(x, dim=(), keepdim=False):
    return jnp.min(x, axis=canon_dims(dim, x.ndim), keepdims=keepdim)


@register(aten.max.default)
def max_all(x):
    return jnp.max(x)


@register(aten.min.default)
def min_all(x):
    return jnp.min(x)


def _arg_extreme(x, dim, keepdim, find_max):
    if dim is None:
        flat = x.reshape(-1)
        idx = jnp.argmax(flat) if find_max else jnp.argmin(flat)
        if keepdim:
            idx = idx.reshape((1,) * x.ndim)
        return idx
    axis = canon_dim(dim, x.ndim)
    if x.ndim == 0:
        return jnp.zeros((), jnp.int64)
    fn = jnp.argmax if find_max else jnp.argmin
    return fn(x, axis=axis, keepdims=keepdim)


@register(aten.argmax.default)
def argmax(x, dim=None, keepdim=False):
    return _arg_extreme(x, dim, keepdim, True)


@register(aten.argmin.default)
def argmin(x, dim=None, keepdim=False):
    return _arg_extreme(x, dim, keepdim, False)


@register(aten.max.dim)
def max_dim(x, dim, keepdim=False):
    idx = _arg_extreme(x, dim, True, True)
    return _take_extreme(x, dim, idx, keepdim)


@register(aten.min.dim)
def min_dim(x, dim, keepdim=False):
    idx = _arg_extreme(x, dim, True, False)
    return _take_extreme(x, dim, idx, keepdim)


def _take_extreme(x, dim, idx, keepdim):
    if x.ndim == 0:
        return x, jnp.zeros((), jnp.int64)
    axis = canon_dim(dim, x.ndim)
    values = jnp.take_along_axis(x, idx, axis=axis)
    if not keepdim:
        values, idx = jnp.squeeze(values, axis), jnp.squeeze(idx, axis)
    return values, idx


@register(aten.any.default, aten.any.dim, aten.any.dims)
def any_(x, dim=None, keepdim=False):
    return jnp.any(x != 0, axis=canon_dims(dim, x.ndim), keepdims=keepdim)


@register(aten.all.default, aten.all.dim, aten.all.dims)
def all_(x, dim=None, keepdim=False):
    return jnp.all(x != 0, axis=canon_dims(dim, x.ndim), keepdims=keepdim)


@register(aten.var.correction, aten.var.dim, accumulate=True)
def var(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    return _var(x, dim, _correction(unbiased, correction), keepdim)


@register(aten.std.correction, aten.std.dim, accumulate=True)
def std(x, dim=None, unbiased=None, keepdim=False, *, correction=None):
    return jnp.sqrt(_var(x, dim, _correction(unbiased, correction), keepdim))


@register(aten.var_mean.correction, accumulate=True)
def var_mean(x, dim=None, *, correction=None, keepdim=False):
    axes = canon_dims(dim, x.ndim)
    mean_ = jnp.mean(x, axis=axes, keepdims=keepdim)
    return _var(x, dim, _correction(None, correction), keepdim), mean_


def _correction(unbiased, correction):
    if correction is not None:
        return correction
    return 1 if unbiased is None or unbiased else 0


def _var(x, dim, correction, keepdim):
    axes = canon_dims(dim, x.ndim)
    xa = x
    n = 1
    for a in axes:
        n *= x.shape[a]
    centered = xa - jnp.mean(xa, axis=axes, keepdims=True)
    sq = jnp.real(centered * jnp.conj(centered))
    total = jnp.sum(sq, axis=axes, keepdims=keepdim)
    return (total / jnp.maximum(n - correction, 0)).astype(jnp.real(x).dtype)


@register(aten.logsumexp.default, accumulate=True)
def logsumexp(x, dim, keepdim=False):
    xa = x.astype(jnp.float32) if is_integral(x) else x
    return jax.scipy.special.logsumexp(xa, axis=canon_dims(dim, x.ndim), keepdims=keepdim)


@register(aten.cumsum.default, accumulate=True)
def cumsum(x, dim, *, dtype=None):
    if x.ndim == 0:
        return x.astype(_sum_dtype(x, dtype))
    return jnp.cumsum(x.astype(_sum_dtype(x, dtype)), axis=canon_dim(dim, x.ndim))


@register(aten.cumprod.default, accumulate=True)
def cumprod(x, dim, *, dtype=None):
    if x.ndim == 0:
        return x.astype(_sum_dtype(x, dtype))
    return jnp.cumprod(x.astype(_sum_dtype(x, dtype)), axis=canon_dim(dim, x.ndim))


@register(aten.logcumsumexp.default)
def logcumsumexp(x, dim):
    if x.ndim == 0:
        return x
    return lax.cumlogsumexp(x, axis=canon_dim(dim, x.ndim))


def _cum_extreme(x, dim, find_max):
    if x.ndim == 0:
        return x, jnp.zeros((), jnp.int64)
    axis = canon_dim(dim, x.ndim)
    n = x.shape[axis]
    shape = [1] * x.ndim
    shape[axis] = n
    idx = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int64).reshape(shape), x.shape)

    def combine(a, b):
        (va, ia), (vb, ib) = a, b
        better = (vb >= va) if find_max else (vb <= va)
        if jnp.issubdtype(va.dtype, jnp.floating):
            better = better | jnp.isnan(vb)
            better = better & ~(jnp.isnan(va) & ~jnp.isnan(vb))
        return jnp.where(better, vb, va), jnp.where(better, ib, ia)

    return lax.associative_scan(combine, (x, idx), axis=axis)


@register(aten.cummax.default)
def cummax(x, dim):
    return _cum_extreme(x, dim, True)


@register(aten.cummin.default)
def cummin(x, dim):
    return _cum_extreme(x, dim, False)


@register(aten.linalg_vector_norm.default, accumulate=True)
def vector_norm(x, ord=2, dim=None, keepdim=False, *, dtype=None):
    if dtype is not None:
        x = x.astype(_sum_dtype(x, dtype))
    xa = jnp.abs(x)
    axes = canon_dims(dim, x.ndim)
    if ord == float("inf"):
        out = jnp.max(xa, axis=axes, keepdims=keepdim)
    elif ord == float("-inf"):
        out = jnp.min(xa, axis=axes, keepdims=keepdim)
    elif ord == 0:
        out = jnp.sum((xa != 0).astype(xa.dtype), axis=axes, keepdims=keepdim)
    elif ord == 1:
        out = jnp.sum(xa, axis=axes, keepdims=keepdim)
    elif ord == 2:
        out = jnp.sqrt(jnp.sum(xa * xa, axis=axes, keepdims=keepdim))
    else:
        out = jnp.sum(xa**ord, axis=axes, keepdims=keepdim) ** (1.0 / ord)
    return out.astype(jnp.real(x).dtype)


# --- order statistics (NaN sorts last, as in PyTorch) ------------------------------------


def _sorted_along(x, dim):
    axis = canon_dim(dim, x.ndim)
    order = jnp.argsort(x, axis=axis, stable=True)
    return jnp.take_along_axis(x, order, axis=axis), order, axis


def _pick(values, order, axis, k, keepdim):
    v = jnp.take_along_axis(values, k, axis=axis)
    i = jnp.take_along_axis(order, k, axis=axis).astype(jnp.int64)
    return (v, i) if keepdim else (jnp.squeeze(v, axis), jnp.squeeze(i, axis))


def _median_rank(x, axis, ignore_nan):
    n = x.shape[axis]
    if not ignore_nan or not jnp.issubdtype(x.dtype, jnp.floating):
        has_nan = jnp.any(jnp.isnan(x), axis=axis, keepdims=True) if is_float(x) else False
        return jnp.where(has_nan, n - 1, (n - 1) // 2)
    count = jnp.sum(~jnp.isnan(x), axis=axis, keepdims=True)
    return jnp.where(count == 0, n - 1, (count - 1) // 2)


def _median_dim(x, dim, keepdim, ignore_nan):
    if x.ndim == 0:
        return x, jnp.zeros((), jnp.int64)
    values, order, axis = _sorted_along(x, dim)
    k = _median_rank(x, axis, ignore_nan)
    shape = list(x.shape)
    shape[axis] = 1
    return _pick(values, order, axis, jnp.broadcast_to(k, shape), keepdim)


@register(aten.median.dim)
def median_dim(x, dim, keepdim=False):
    return _median_dim(x, dim, keepdim, ignore_nan=False)


@register(aten.nanmedian.dim)
def nanmedian_dim(x, dim, keepdim=False):
    return _median_dim(x, dim, keepdim, ignore_nan=True)


@register(aten.median.default)
def median(x):
    return _median_dim(x.reshape(-1), 0, False, ignore_nan=False)[0]


@register(aten.nanmedian.default)
def nanmedian(x):
    return _median_dim(x.reshape(-1), 0, False, ignore_nan=True)[0]


@register(aten.kthvalue.default)
def kthvalue(x, k, dim=-1, keepdim=False):
    if x.ndim == 0:
        return x, jnp.zeros((), jnp.int64)
    values, order, axis = _sorted_along(x, dim)
    shape = list(x.shape)
    shape[axis] = 1
    return _pick(values, order, axis, jnp.full(shape, k - 1), keepdim)


@register(aten.mode.default)
def mode(x, dim=-1, keepdim=False):
    # The most frequent value, the smallest among equals; its index is the last
    # occurrence, as PyTorch's CPU kernel returns.
    if x.ndim == 0:
        return x, jnp.zeros((), jnp.int64)
    axis = canon_dim(dim, x.ndim)
    m = jnp.moveaxis(x, axis, -1)
    counts = jnp.sum(m[..., :, None] == m[..., None, :], axis=-1)
    best = jnp.max(counts, axis=-1, keepdims=True)
    value = jnp.min(jnp.where(counts == best, m, _largest(m.dtype)), axis=-1, keepdims=True)
    n = m.shape[-1]
    last = jnp.max(jnp.where(m == value, jnp.arange(n), -1), axis=-1, keepdims=True)
    value, last = jnp.moveaxis(value, -1, axis), jnp.moveaxis(last.astype(jnp.int64), -1, axis)
    return (value, last) if keepdim else (jnp.squeeze(value, axis), jnp.squeeze(last, axis))


def _largest(dtype):
    if dtype == jnp.bool_:
        return True
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.inf
    return jnp.iinfo(dtype).max


# --- histograms ---------------------------------------------------------------------


def _hist_range(x, low, high, widen):
    if low == high:
        low, high = jnp.min(x, initial=jnp.inf), jnp.max(x, initial=-jnp.inf)
        low, high = jnp.where(x.size == 0, 0, low), jnp.where(x.size == 0, 0, high)
    low, high = jnp.asarray(low, x.dtype), jnp.asarray(high, x.dtype)
    same = low == high
    return jnp.where(same, low - widen, low), jnp.where(same, high + widen, high)


def _bin_counts(x, bins, low, high, weight=None):
    flat = x.reshape(-1)
    inside = (flat >= low) & (flat <= high)
    idx = ((flat - low) * bins / (high - low)).astype(jnp.int64)
    idx = jnp.clip(idx, 0, bins - 1)
    w = jnp.ones_like(flat) if weight is None else weight.reshape(-1).astype(flat.dtype)
    return jnp.zeros((bins,), flat.dtype).at[idx].add(jnp.where(inside, w, 0))


@register(aten.histc.default)
def histc(x, bins=100, min=0, max=0):
    low, high = _hist_range(x, min, max, widen=1)
    return _bin_counts(x, bins, low, high)


@register(aten.histogram.bin_ct)
def histogram(x, bins=100, *, range=None, weight=None, density=False):
    low, high = _hist_range(x, *(range or (0, 0)), widen=0.5)
    edges = jnp.linspace(low, high, bins + 1).astype(x.dtype)
    hist = _bin_counts(x, bins, low, high, weight)
    if density:
        hist = hist / (jnp.sum(hist) * (edges[1:] - edges[:-1]))
    return hist, edges


# PyTorch's histogramdd kernels bin each coordinate with libstdc++'s std::upper_bound over
# the edges. On sorted edges any binary search agrees with it; replaying its steps exactly
# also gives PyTorch's answer for edges the user did not sort.
def _upper_bound(edges, values):
    first = jnp.zeros(values.shape, jnp.int64)
    length = jnp.full(values.shape, edges.shape[0], jnp.int64)
    for _ in range(edges.shape[0].bit_length()):
        half = length >> 1
        middle = first + half
        below = values < edges[jnp.clip(middle, 0, edges.shape[0] - 1)]
        active = length > 0
        first = jnp.where(active & ~below, middle + 1, first)
        length = jnp.where(active, jnp.where(below, half, length - half - 1), length)
    return first


def _torch_linspace(start, end, steps, dtype):
    """``torch.linspace``'s own formula (from both ends), so edges round as eager's do."""
    start, end = start.astype(dtype), end.astype(dtype)
    step = (end - start) / (steps - 1)
    i = jnp.arange(steps, dtype=dtype)
    return jnp.where(i < steps // 2, start + step * i, end - step * (steps - 1 - i))


def _histogramdd_edges(x, bins, hist_range):
    points = x.reshape(-1, len(bins))
    if hist_range is not None:
        pairs = [
            (lo, hi) if lo != hi else (lo - 0.5, hi + 0.5)
            for lo, hi in zip(hist_range[0::2], hist_range[1::2], strict=True)
        ]
        low, high = (jnp.asarray(v, jnp.float64) for v in zip(*pairs, strict=True))
    elif points.shape[0] == 0:
        low, high = jnp.zeros(len(bins)), jnp.ones(len(bins))  # numpy's default range
    else:
        low, high = jnp.min(points, axis=0), jnp.max(points, axis=0)
        same = low == high
        low, high = jnp.where(same, low - 0.5, low), jnp.where(same, high + 0.5, high)
    return [_torch_linspace(low[d], high[d], n + 1, x.dtype) for d, n in enumerate(bins)]


def _histogramdd(x, edges, weight, density):
    points = x.reshape(-1, len(edges))
    cell = jnp.zeros(points.shape[:1], jnp.int64)
    inside = jnp.ones(points.shape[:1], jnp.bool_)
    for d, e in enumerate(edges):
        v, n = points[:, d], e.shape[0] - 1
        # Bin i holds [edge i, edge i+1); the last bin also takes its right edge.
        pos = jnp.clip(_upper_bound(e, v) - 1, 0, n - 1)
        inside &= (v >= e[0]) & (v <= e[-1])
        cell = cell * n + pos
    shape = tuple(e.shape[0] - 1 for e in edges)
    w = jnp.ones_like(points[:, 0]) if weight is None else weight.reshape(-1).astype(x.dtype)
    hist = jnp.zeros(math.prod(shape), x.dtype).at[cell].add(jnp.where(inside, w, 0))
    hist = hist.reshape(shape)
    if density:
        hist = hist / jnp.sum(hist)
        for d, e in enumerate(edges):
            hist = hist / jnp.diff(e).reshape([-1 if i == d else 1 for i in range(len(edges))])
    return hist


@register(aten._histogramdd_bin_edges.default)
def histogramdd_bin_edges(x, bins, *, range=None, weight=None, density=False):
    return _histogramdd_edges(x, bins, range)


@register(aten._histogramdd_from_bin_cts.default)
def histogramdd_from_bin_cts(x, bins, *, range=None, weight=None, density=False):
    return _histogramdd(x, _histogramdd_edges(x, bins, range), weight, density)


@register(aten._histogramdd_from_bin_tensors.default)
def histogramdd_from_bin_tensors(x, bins, *, weight=None, density=False):
    return _histogramdd(x, bins, weight, density)


@register(aten.hash_tensor.default)
def hash_tensor(x, dim=(), keepdim=False, *, mode=0):
    # XOR of each element's bits, widened to its 64-bit float or integer type.
    wide = jnp.float64 if jnp.issubdtype(x.dtype, jnp.floating) else jnp.int64
    wide = jnp.uint64 if jnp.issubdtype(x.dtype, jnp.unsignedinteger) else wide
    bits = lax.bitcast_convert_type(x.astype(wide), jnp.uint64)
    axes = canon_dims(dim, x.ndim)
    out = lax.reduce(bits, jnp.uint64(0), lax.bitwise_xor, axes)
    return jnp.expand_dims(out, axes) if keepdim else out


# What PyTorch gives an empty segment when no ``initial`` is passed.
_SEGMENT_EMPTY = {"sum": 0, "mean": jnp.nan, "max": -jnp.inf, "min": jnp.inf, "prod": 1}


def _flat_segments(*args, lengths=None, offsets=None, axis=0, **kwargs) -> bool | str:
    segments = lengths if lengths is not None else offsets
    if segments is not None and segments.ndim != 1 or axis != 0:
        return "segment_reduce over batched lengths or axis != 0"
    return True


@register(aten.segment_reduce.default, supports=_flat_segments)
def segment_reduce(
    data, reduce, *, lengths=None, indices=None, offsets=None, axis=0, unsafe=False, initial=None
):
    if lengths is None:
        lengths = offsets[..., 1:] - offsets[..., :-1]
    n = lengths.shape[0]
    ids = jnp.searchsorted(jnp.cumsum(lengths), jnp.arange(data.shape[0]), side="right")
    fn = {
        "sum": jax.ops.segment_sum,
        "mean": jax.ops.segment_sum,
        "max": jax.ops.segment_max,
        "min": jax.ops.segment_min,
        "prod": jax.ops.segment_prod,
    }[reduce]
    out = fn(data, ids, num_segments=n)
    empty = (lengths == 0).reshape((-1,) + (1,) * (data.ndim - 1))
    if initial is not None:
        combine = {"sum": jnp.add, "mean": jnp.add, "prod": jnp.multiply, "max": jnp.maximum}
        out = combine.get(reduce, jnp.minimum)(out, jnp.asarray(initial, data.dtype))
    if reduce == "mean":
        out = out / jnp.maximum(lengths, 1).reshape(empty.shape).astype(data.dtype)
    fill = _SEGMENT_EMPTY[reduce] if initial is None else initial
    return jnp.where(empty, jnp.asarray(fill, data.dtype), out).astype(data.dtype)


@register(aten._segment_reduce_backward.default, supports=_flat_segments)
def segment_reduce_backward(
    grad, output, data, reduce, *, lengths=None, offsets=None, axis=0, initial=None
):
    if lengths is None:
        lengths = offsets[..., 1:] - offsets[..., :-1]
    ids = jnp.searchsorted(jnp.cumsum(lengths), jnp.arange(data.shape[0]), side="right")
    ids = jnp.clip(ids, 0, lengths.shape[0] - 1)
    g = grad[ids]
    if reduce == "mean":
        return g / jnp.maximum(lengths, 1)[ids].reshape((-1,) + (1,) * (data.ndim - 1))
    if reduce in ("max", "min"):
        # Ties share the gradient equally, as in PyTorch.
        hit = (data == output[ids]).astype(data.dtype)
        count = jax.ops.segment_sum(hit, ids, num_segments=lengths.shape[0])
        return g * hit / jnp.maximum(count[ids], 1)
    if reduce == "prod":
        _, vjp = jax.vjp(
            lambda d: segment_reduce(d, "prod", lengths=lengths, initial=initial), data
        )
        return vjp(grad)[0]
    return g


@register(aten.histogram.bins_tensor)
def histogram_edges(x, bins, *, weight=None, density=False):
    # Bin i holds [edge i, edge i+1); the last bin also takes its right edge.
    flat = x.reshape(-1)
    n = bins.shape[0] - 1
    idx = jnp.searchsorted(bins, flat, side="right") - 1
    idx = jnp.where(flat == bins[-1], n - 1, idx)
    inside = (flat >= bins[0]) & (flat <= bins[-1])
    w = jnp.ones_like(flat) if weight is None else weight.reshape(-1).astype(flat.dtype)
    hist = jnp.zeros((n,), flat.dtype).at[jnp.clip(idx, 0, n - 1)].add(jnp.where(inside, w, 0))
    if density:
        hist = hist / (jnp.sum(hist) * (bins[1:] - bins[:-1]))
    return hist, bins
