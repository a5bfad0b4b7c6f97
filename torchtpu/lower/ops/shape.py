"""Views, copies, concatenation and tensor factories.

Functionalization has already turned every view into a value, so a "view" here
is just a new array; XLA decides what to copy.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from torchtpu.lower.dtypes import Promote, promoted_dtypes, to_jax_dtype
from torchtpu.lower.ops._util import aten, canon_dim, jdtype
from torchtpu.lower.registry import register


def _size(shape):
    return tuple(s if jax.export.is_symbolic_dim(s) else int(s) for s in shape)


@register(
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.view_copy.default
)
def view(x, size):
    return jnp.reshape(x, _size(size))


@register(aten.view.dtype)
def view_dtype(x, dtype):
    want = to_jax_dtype(dtype)
    if np.dtype(want).itemsize == x.dtype.itemsize:
        return lax.bitcast_convert_type(x, want)
    return _bitcast_resize(x, want)


def _bitcast_resize(x, dtype):
    src, dst = x.dtype.itemsize, np.dtype(dtype).itemsize
    if src > dst:
        out = lax.bitcast_convert_type(x, dtype)
        return out.reshape(*x.shape[:-1], x.shape[-1] * (src // dst))
    grouped = x.reshape(*x.shape[:-1], x.shape[-1] // (dst // src), dst // src)
    return lax.bitcast_convert_type(grouped, dtype)


@register(aten.permute.default, aten.permute_copy.default)
def permute(x, dims):
    return jnp.transpose(x, [canon_dim(d, x.ndim) for d in dims])


@register(aten.transpose.int, aten.transpose_copy.int)
def transpose(x, dim0, dim1):
    if x.ndim < 2:
        return x
    return jnp.swapaxes(x, canon_dim(dim0, x.ndim), canon_dim(dim1, x.ndim))


@register(aten.t.default)
def t(x):
    return x.T if x.ndim == 2 else x


@register(aten.expand.default, aten.expand_copy.default)
def expand(x, size, *, implicit=False):
    size = _size(size)
    lead = len(size) - x.ndim
    shape = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(size))
    return jnp.broadcast_to(x, shape)


@register(aten.unsqueeze.default, aten.unsqueeze_copy.default)
def unsqueeze(x, dim):
    return jnp.expand_dims(x, canon_dim(dim, x.ndim + 1))


@register(aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze_copy.dims)
def squeeze(x, dim=None):
    if x.ndim == 0:
        return x
    dims = range(x.ndim) if dim is None else [dim] if isinstance(dim, int) else dim
    axes = tuple(a for a in (canon_dim(d, x.ndim) for d in dims) if x.shape[a] == 1)
    return jnp.squeeze(x, axes) if axes else x


def _slice_bounds(n, start, end, step):
    start = 0 if start is None else start
    end = n if end is None else end
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    start, end = min(max(start, 0), n), min(max(end, 0), n)
    return start, max(end, start), step


@register(aten.slice.Tensor, aten.slice_copy.Tensor)
def slice_(x, dim=0, start=None, end=None, step=1):
    axis = canon_dim(dim, x.ndim)
    start, end, step = _slice_bounds(x.shape[axis], start, end, step)
    return lax.slice_in_dim(x, start, end, step, axis=axis)


@register(aten.slice_scatter.default)
def slice_scatter(x, src, dim=0, start=None, end=None, step=1):
    axis = canon_dim(dim, x.ndim)
    start, end, step = _slice_bounds(x.shape[axis], start, end, step)
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, end, step)
    return x.at[tuple(index)].set(src.astype(x.dtype))


@register(aten.select.int, aten.select_copy.int)
def select(x, dim, index):
    axis = canon_dim(dim, x.ndim)
    return lax.index_in_dim(x, index % x.shape[axis], axis, keepdims=False)


@register(aten.select_scatter.default)
def select_scatter(x, src, dim, index):
    axis = canon_dim(dim, x.ndim)
    idx = [slice(None)] * x.ndim
    idx[axis] = index % x.shape[axis]
    return x.at[tuple(idx)].set(src.astype(x.dtype))


@register(aten.diagonal.default, aten.diagonal_copy.default)
def diagonal(x, offset=0, dim1=0, dim2=1):
    return jnp.diagonal(x, offset, canon_dim(dim1, x.ndim), canon_dim(dim2, x.ndim))


@register(aten.diagonal_scatter.default)
def diagonal_scatter(x, src, offset=0, dim1=0, dim2=1):
    d1, d2 = canon_dim(dim1, x.ndim), canon_dim(dim2, x.ndim)
    n = src.shape[-1]
    i = jnp.arange(n) + max(-offset, 0)
    j = jnp.arange(n) + max(offset, 0)
    moved = jnp.moveaxis(x, (d1, d2), (-2, -1))
    moved = moved.at[..., i, j].set(src.astype(x.dtype))
    return jnp.moveaxis(moved, (-2, -1), (d1, d2))


def _flat_strided_index(size, stride, offset):
    index = np.full(tuple(size), offset, dtype=np.int64)
    for axis, (n, s) in enumerate(zip(size, stride, strict=True)):
        shape = [1] * len(size)
        shape[axis] = n
        index = index + (np.arange(n) * s).reshape(shape)
    return index


@register(aten.as_strided.default, aten.as_strided_copy.default)
def as_strided(x, size, stride, storage_offset=None):
    index = _flat_strided_index(_size(size), _size(stride), storage_offset or 0)
    return jnp.reshape(x, -1)[index]


@register(aten.as_strided_scatter.default)
def as_strided_scatter(x, src, size, stride, storage_offset=None):
    index = _flat_strided_index(_size(size), _size(stride), storage_offset or 0)
    flat = jnp.reshape(x, -1).at[index].set(src.astype(x.dtype))
    return flat.reshape(x.shape)


@register(aten.cat.default)
def cat(tensors, dim=0):
    # PyTorch skips legacy empty 1-d tensors and promotes across the list.
    _, dtype = promoted_dtypes(list(tensors), Promote.NO_OPMATH)
    parts = [t for t in tensors if not (t.ndim == 1 and t.shape[0] == 0)]
    if not parts:
        return jnp.zeros((0,), to_jax_dtype(dtype))
    axis = canon_dim(dim, parts[0].ndim)
    return jnp.concatenate([p.astype(to_jax_dtype(dtype)) for p in parts], axis=axis)


@register(aten.stack.default)
def stack(tensors, dim=0):
    _, dtype = promoted_dtypes(list(tensors), Promote.NO_OPMATH)
    axis = canon_dim(dim, tensors[0].ndim + 1)
    return jnp.stack([t.astype(to_jax_dtype(dtype)) for t in tensors], axis=axis)


@register(aten.split_with_sizes.default, aten.split_with_sizes_copy.default)
def split_with_sizes(x, split_sizes, dim=0):
    axis = canon_dim(dim, x.ndim)
    offsets = np.cumsum([0, *split_sizes])
    return [
        lax.slice_in_dim(x, int(a), int(b), axis=axis)
        for a, b in zip(offsets[:-1], offsets[1:], strict=True)
    ]


@register(aten.split.Tensor, aten.split_copy.Tensor)
def split(x, split_size, dim=0):
    axis = canon_dim(dim, x.ndim)
    n = x.shape[axis]
    sizes = [min(split_size, n - i) for i in range(0, n, split_size)] or [0]
    return split_with_sizes(x, sizes, axis)


@register(aten.unbind.int, aten.unbind_copy.int)
def unbind(x, dim=0):
    axis = canon_dim(dim, x.ndim)
    return [lax.index_in_dim(x, i, axis, keepdims=False) for i in range(x.shape[axis])]


@register(aten.constant_pad_nd.default)
def constant_pad_nd(x, pad, value=0):
    pairs = [(0, 0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        pairs[x.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]), 0)
    return lax.pad(x, jnp.asarray(value, x.dtype), pairs)


@register(aten.flip.default)
def flip(x, dims):
    return jnp.flip(x, [canon_dim(d, x.ndim) for d in dims]) if dims else x


@register(aten.roll.default)
def roll(x, shifts, dims=()):
    if not dims:
        return jnp.roll(x.reshape(-1), shifts[0]).reshape(x.shape)
    return jnp.roll(x, tuple(shifts), tuple(canon_dim(d, x.ndim) for d in dims))


@register(aten.repeat.default)
def repeat(x, repeats):
    repeats = _size(repeats)
    x = x.reshape((1,) * (len(repeats) - x.ndim) + x.shape)
    return jnp.tile(x, repeats)


@register(aten.tril.default)
def tril(x, diagonal=0):
    return jnp.tril(x, diagonal)


@register(aten.triu.default)
def triu(x, diagonal=0):
    return jnp.triu(x, diagonal)


# --- copies and casts -----------------------------------------------------------


@register(
    aten.clone.default,
    aten.alias.default,
    aten.lift_fresh_copy.default,
    aten.detach.default,
    aten.alias_copy.default,
    aten.detach_copy.default,
    aten.lift_fresh.default,
    aten.contiguous.default,
)
def identity(x, *, memory_format=None):
    return x


@register(aten._to_copy.default)
def to_copy(
    x,
    *,
    dtype=None,
    layout=None,
    device=None,
    pin_memory=None,
    non_blocking=False,
    memory_format=None,
):
    return x if dtype is None else _cast(x, to_jax_dtype(dtype))


def _cast(x, dtype):
    # PyTorch truncates floats toward zero when casting to integers, and maps
    # any non-zero value to True; XLA agrees on both.
    if jnp.issubdtype(x.dtype, jnp.complexfloating) and not jnp.issubdtype(
        dtype, jnp.complexfloating
    ):
        x = jnp.real(x)
    return x.astype(dtype)


@register(aten.copy.default)
def copy(x, src, non_blocking=False):
    return jnp.broadcast_to(_cast(src, x.dtype), x.shape)


@register(aten.fill.Scalar, aten.fill.Tensor)
def fill(x, value):
    return jnp.full(x.shape, value, x.dtype)


@register(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def masked_fill(x, mask, value):
    return jnp.where(mask, jnp.asarray(value).astype(x.dtype), x)


# --- factories (dtype=None resolves through the node's recorded dtype) ------------


@register(aten.full.default)
def full(size, fill_value, *, dtype=None, layout=None, device=None, pin_memory=None):
    return jnp.full(_size(size), fill_value, jdtype(dtype, jnp.result_type(fill_value)))


@register(aten.full_like.default)
def full_like(
    x, fill_value, *, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None
):
    return jnp.full(x.shape, fill_value, jdtype(dtype, x.dtype))


@register(
    aten.zeros.default, aten.empty.memory_format, aten.new_zeros.default, aten.new_empty.default
)
def zeros(*args, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    size = args[-1]
    default = args[0].dtype if len(args) == 2 else jnp.float32
    return jnp.zeros(_size(size), jdtype(dtype, default))


@register(aten.empty_strided.default)
def empty_strided(size, stride, *, dtype=None, layout=None, device=None, pin_memory=None):
    return jnp.zeros(_size(size), jdtype(dtype, jnp.float32))


@register(aten.ones.default, aten.new_ones.default)
def ones(*args, dtype=None, layout=None, device=None, pin_memory=None):
    size = args[-1]
    default = args[0].dtype if len(args) == 2 else jnp.float32
    return jnp.ones(_size(size), jdtype(dtype, default))


@register(aten.new_full.default)
def new_full(x, size, fill_value, *, dtype=None, layout=None, device=None, pin_memory=None):
    return jnp.full(_size(size), fill_value, jdtype(dtype, x.dtype))


@register(aten.zeros_like.default, aten.empty_like.default)
def zeros_like(x, *, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return jnp.zeros(x.shape, jdtype(dtype, x.dtype))


@register(aten.ones_like.default)
def ones_like(x, *, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return jnp.ones(x.shape, jdtype(dtype, x.dtype))


@register(aten.scalar_tensor.default)
def scalar_tensor(s, *, dtype=None, layout=None, device=None, pin_memory=None):
    return jnp.asarray(s, jdtype(dtype, jnp.float32))


@register(aten.arange.start_step, aten.arange.default, aten.arange.start)
def arange(*args, dtype=None, layout=None, device=None, pin_memory=None):
    start, end, step = (0, args[0], 1) if len(args) == 1 else (*args, 1)[:3]
    # A symbolic size (an exported program's sequence length) is an int too.
    is_int = all(isinstance(v, int) or jax.export.is_symbolic_dim(v) for v in (start, end, step))
    want = jdtype(dtype, jnp.int64 if is_int else jnp.float32)
    n = max(-((start - end) // step) if is_int else math.ceil((end - start) / step), 0)
    # PyTorch computes start + i * step in the output's precision class.
    acc = jnp.float64 if jnp.issubdtype(want, jnp.floating) or not is_int else jnp.int64
    return (start + jnp.arange(n, dtype=acc) * step).astype(want)


@register(aten._efficientzerotensor.default)
def efficient_zero_tensor(size, *, dtype=None, layout=None, device=None, pin_memory=None):
    return jnp.zeros(_size(size), jdtype(dtype, jnp.float32))


@register(aten.empty_permuted.default)
def empty_permuted(size, physical_layout, *, dtype=None, layout=None, device=None, pin_memory=None):
    return jnp.zeros(_size(size), jdtype(dtype, jnp.float32))


@register(aten.view_as_complex.default)
def view_as_complex(x):
    return lax.complex(x[..., 0], x[..., 1])


@register(aten.view_as_real.default)
def view_as_real(x):
    return jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)


def _replicate_pad(x, pad):
    """PyTorch's replicate padding: output j reads input clamp(j - left, 0, n - 1)."""
    for i in range(len(pad) // 2):
        axis = x.ndim - 1 - i
        lo, hi = int(pad[2 * i]), int(pad[2 * i + 1])
        n = x.shape[axis]
        source = np.clip(np.arange(n + lo + hi) - lo, 0, n - 1)
        x = jnp.take(x, source, axis=axis)
    return x


@register(
    aten.replication_pad1d_backward.default,
    aten.replication_pad2d_backward.default,
    aten.replication_pad3d_backward.default,
)
def replication_pad_backward(grad, x, padding):
    _, vjp = jax.vjp(lambda x_: _replicate_pad(x_, padding), x)
    return vjp(grad.astype(x.dtype))[0]


@register(aten.masked_scatter_backward.default)
def masked_scatter_backward(grad, mask, sizes):
    # The gradient of masked_scatter's source: grad at the masked positions, in order.
    n = math.prod(_size(sizes))
    taken = jnp.broadcast_to(mask, grad.shape).reshape(-1)
    slot = jnp.where(taken, jnp.cumsum(taken) - 1, n)
    out = jnp.zeros((n,), grad.dtype).at[slot].add(grad.reshape(-1), mode="drop")
    return out.reshape(_size(sizes))
