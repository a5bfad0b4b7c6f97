"""Ops whose output size depends on their input's values.

``nonzero``, ``masked_select``, ``x[mask]``, ``unique`` and ``.item()`` have
no static output shape, which XLA needs. Dynamo captures them into the graph
when ``torch._dynamo.config.capture_dynamic_output_shape_ops`` (and, for
``.item()``, ``capture_scalar_outputs``) is on, marking the node with the
unbacked size symbols it introduces. The executor runs each such node as an
XLA program of its own that computes the result padded to the largest size it
can have, together with the true size; it reads the size back to the host (a
few bytes) and slices. Everything after the node is compiled for the true
sizes, one program per size seen, like any other shape change.

Each op is registered with ``register_sized`` (``torchtpu.lower.registry``,
which refuses duplicates): the decorated ``padded`` function runs inside
``jax.jit`` and returns ``(outputs, size)``; ``cut(args, kwargs)`` gives the
function that slices those outputs (device arrays, outside the program) to a
size, a Python int.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import torch

from torchtpu.errors import LoweringUnsupported
from torchtpu.lower.registry import register_sized

aten = torch.ops.aten


Cut = Callable[[Any, int], Any]


def _along(dim: int) -> Cut:
    def cut(out: Any, n: int) -> Any:
        return out[(slice(None),) * dim + (slice(0, n),)]

    return cut


def _sized(op: Any, cut: Callable[[tuple, dict], Cut] = lambda args, kwargs: _along(0)):
    return register_sized(op, cut)


def _coords(mask: Any) -> tuple[Any, Any]:
    """Row-major coordinates of ``mask``'s true elements, padded with zeros, and their count."""
    size = max(mask.size, 1)
    if mask.ndim == 0:
        return jnp.zeros((size, 0), jnp.int64), jnp.sum(mask, dtype=jnp.int64)
    coords = jnp.nonzero(mask, size=size, fill_value=0)
    return jnp.stack(coords, axis=-1).astype(jnp.int64), jnp.sum(mask, dtype=jnp.int64)


@_sized(aten.nonzero.default)
def nonzero(x):
    return _coords(x != 0)


@_sized(aten.masked_select.default)
def masked_select(x, mask):
    shape = jnp.broadcast_shapes(x.shape, mask.shape)
    flat = jnp.broadcast_to(x, shape).reshape(-1)
    coords, n = _coords(jnp.broadcast_to(mask, shape).reshape(-1))
    return flat[coords[:, 0]], n


def _mask_position(args: tuple, kwargs: dict) -> Cut:
    return _along(next(i for i, ix in enumerate(args[1]) if ix is not None))


@_sized(aten.index.Tensor, cut=_mask_position)
def index_by_mask(x, indices):
    """``x[..., mask, ...]`` for one boolean mask (leading entries ``None``)."""
    tensors = [i for i, ix in enumerate(indices) if ix is not None]
    if len(tensors) != 1 or indices[tensors[0]].dtype != jnp.bool_:
        raise LoweringUnsupported("only one boolean mask, with no other tensor index, is sized")
    start, mask = tensors[0], indices[tensors[0]]
    coords, n = _coords(mask)
    index = (slice(None),) * start + tuple(coords[:, k] for k in range(mask.ndim))
    if mask.ndim == 0:  # x[True] adds a dimension of size 1 (0 for False)
        return jnp.expand_dims(x, start), n
    return x[index], n


def _unique_values(x, dim):
    """Sorted unique values (slices along ``dim``), inverse indices and counts, padded."""
    source = x.reshape(-1) if dim is None else x
    values, inverse, counts = jnp.unique(
        source,
        return_inverse=True,
        return_counts=True,
        size=max(source.shape[dim or 0], 1),
        axis=dim,
        fill_value=0,
    )
    inverse = inverse.reshape(x.shape if dim is None else (-1,))
    return values, inverse, counts, jnp.sum(counts > 0, dtype=jnp.int64)


def _unique_cut(dim: int) -> Cut:
    def cut(out: Any, n: int) -> Any:
        values, inverse, counts = out
        return _along(dim)(values, n), inverse, counts[:n]

    return cut


@_sized(aten._unique2.default, cut=lambda args, kwargs: _unique_cut(0))
def unique2(x, sorted=True, return_inverse=False, return_counts=False):
    values, inverse, counts, n = _unique_values(x, None)
    return (values, inverse.astype(jnp.int64), counts.astype(jnp.int64)), n


@_sized(aten._unique.default, cut=lambda args, kwargs: lambda out, n: (out[0][:n], out[1]))
def unique(x, sorted=True, return_inverse=False):
    values, inverse, _, n = _unique_values(x, None)
    return (values, inverse.astype(jnp.int64)), n


def _dim_arg(position: int) -> Callable[[tuple, dict], Cut]:
    def cut(args: tuple, kwargs: dict) -> Cut:
        dim = kwargs.get("dim", args[position] if len(args) > position else None)
        return _unique_cut(0 if dim is None else dim % max(args[0].ndim, 1))

    return cut


@_sized(aten.unique_dim.default, cut=_dim_arg(1))
def unique_dim(x, dim, sorted=True, return_inverse=False, return_counts=False):
    if x.ndim == 0:
        raise LoweringUnsupported("unique along a dimension of a 0-d tensor")
    values, inverse, counts, n = _unique_values(x, dim % x.ndim)
    return (values, inverse.astype(jnp.int64), counts.astype(jnp.int64)), n


def _consecutive(x, return_inverse=False, return_counts=False, dim=None):
    """Runs of equal values (slices along ``dim``): first of each run, run ids, lengths."""
    if dim is None:
        moved = x.reshape(-1, 1)
    else:
        if x.ndim == 0:
            raise LoweringUnsupported("unique_consecutive along a dimension of a 0-d tensor")
        moved = jnp.moveaxis(x, dim, 0).reshape(x.shape[dim], -1)
    length = moved.shape[0]
    if length == 0:
        empty = jnp.zeros((0,), jnp.int64)
        values = x.reshape(-1) if dim is None else x
        return (values, empty.reshape(x.shape if dim is None else (0,)), empty), jnp.int64(0)
    change = jnp.any(moved[1:] != moved[:-1], axis=1)
    starts = jnp.concatenate([jnp.ones((1,), bool), change])
    run = jnp.cumsum(starts.astype(jnp.int64)) - 1
    n = run[-1] + 1
    first = jnp.nonzero(starts, size=length, fill_value=0)[0]
    counts = jnp.zeros((length,), jnp.int64).at[run].add(1)
    if dim is None:
        values, inverse = x.reshape(-1)[first], run.reshape(x.shape)
    else:
        values, inverse = jnp.take(x, first, axis=dim), run
    return (values, inverse, counts), n


@_sized(aten.unique_consecutive.default, cut=_dim_arg(3))
def unique_consecutive(x, return_inverse=False, return_counts=False, dim=None):
    return _consecutive(x, return_inverse, return_counts, dim)


def _bincount_cut(args: tuple, kwargs: dict) -> Cut:
    from torchtpu.compile.sized import run_follow_up

    x = args[0]
    weights = args[1] if len(args) > 1 else kwargs.get("weights")
    arrays = [x] if weights is None else [x, weights]

    def cut(out: Any, length: int) -> Any:
        def counts(x, weights=None):
            ones = weights is None
            values = jnp.ones(x.shape, jnp.int64) if ones else weights.astype(jnp.float64)
            return jnp.zeros((length,), values.dtype).at[x].add(values)

        return run_follow_up(("bincount", length), counts, arrays)

    return cut


@_sized(aten.bincount.default, cut=_bincount_cut)
def bincount(x, weights=None, minlength=0):
    """The length, max(input) + 1 (at least ``minlength``), has no bound to pad to:
    the size is computed first, then the counts by a program for that length."""
    top = jnp.max(x, initial=-1) if x.size else jnp.int64(-1)
    return (), jnp.maximum(top.astype(jnp.int64) + 1, minlength)


def _scalar(args: tuple, kwargs: dict) -> Cut:
    return lambda out, value: value


@_sized(aten._local_scalar_dense.default, cut=_scalar)
def local_scalar_dense(x):
    """``.item()``: the "size" read back is the value itself."""
    return (), x.reshape(())
