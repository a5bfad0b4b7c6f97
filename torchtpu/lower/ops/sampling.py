"""Grid sampling (``F.grid_sample``) in 2-d and 3-d, with its backward.

PyTorch decomposes only the 2-d forward, and into one advanced-indexing gather
per tap; here every tap of every axis becomes one gather from the flattened
input plane, and the backward is the VJP of the same function, so the input
gradient is a single scatter-add and the grid gradient follows the weights.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from torchtpu.lower.ops._util import LOW_PRECISION, accum_dtype, aten
from torchtpu.lower.registry import register

BILINEAR, NEAREST, BICUBIC = 0, 1, 2
ZEROS, BORDER, REFLECTION = 0, 1, 2
_CUBIC_A = -0.75  # PyTorch's bicubic convolution constant (upsample and grid_sample)


class _Coords:
    """Coordinate arithmetic as PyTorch's CPU kernels do it for one grid dtype.

    Which pixel a sample reads (floor, round, reflection) is discontinuous in
    its coordinate, so it must be computed as eager computes it: float32 and
    float64 grids in the vectorised kernel's order of operations (2-d) or the
    scalar kernel's (3-d); bfloat16 and float16 grids in the scalar kernel,
    whose every step rounds to the grid's dtype. ``rnd`` repeats that rounding
    on float32 values (reduce_precision, which XLA keeps, where a round trip
    through the narrow dtype could be elided as excess precision). Weights and
    sums stay in float32.
    """

    def __init__(self, dtype, ndim):
        low = jnp.dtype(dtype) in LOW_PRECISION
        self.scalar = low or ndim == 3
        info = jnp.finfo(dtype)
        self.rnd = (
            (lambda v: lax.reduce_precision(v, info.nexp, info.nmant)) if low else (lambda v: v)
        )
        self.const = (lambda c: float(np.asarray(c, dtype))) if low else float

    def unnormalize(self, coord, size, align_corners):
        """[-1, 1] to pixel coordinates: corner centres, or corner edges without align_corners."""
        rnd, k = self.rnd, self.const
        if self.scalar and align_corners:
            return rnd(rnd(coord + 1) / 2 * k(size - 1))
        if self.scalar:
            return rnd(rnd(rnd(rnd(coord + 1) * k(size)) - 1) / 2)
        if align_corners:
            return (coord + 1) * ((size - 1) / 2)
        return (coord + 1) * (size / 2) - 0.5

    def clip(self, coord, size):
        # where, not clip: PyTorch's gradient is zero *at* the borders too, where
        # jnp.clip would split it between the two branches.
        top = self.const(size - 1)
        return jnp.where(coord <= 0, 0.0, jnp.where(coord >= top, top, coord))

    def reflect(self, coord, twice_low, twice_high):
        """Fold ``coord`` into [low, high] by reflecting off both ends."""
        if twice_low == twice_high:
            return jnp.zeros_like(coord)
        rnd, k = self.rnd, self.const
        low, span = k(twice_low) / 2, k(twice_high - twice_low) / 2
        shifted = rnd(coord - low)
        sign = jnp.where(shifted < 0, -1.0, 1.0)  # abs, with PyTorch's gradient 1 at 0
        distance = shifted * sign
        extra = jnp.fmod(distance, span)
        odd = jnp.fmod(jnp.floor(rnd(distance / span)), 2) == 1
        return jnp.where(odd, rnd(rnd(span - extra) + low), rnd(extra + low))

    def pad(self, coord, size, padding, align_corners):
        """PyTorch's compute_coordinates: where a coordinate outside the input reads."""
        if padding == BORDER:
            return self.clip(coord, size)
        if padding == REFLECTION:
            # The barrier keeps XLA from folding unnormalize's last constant into
            # reflect's first ((v - 0.5) + 0.5 -> v), which skips a rounding that
            # PyTorch does and moves nearest's half-pixel ties.
            coord = lax.optimization_barrier(coord)
            twice = (0, 2 * (size - 1)) if align_corners else (-1, 2 * size - 1)
            return self.clip(self.reflect(coord, *twice), size)
        return coord


def _cubic_weights(t):
    """The four bicubic convolution weights for taps at -1, 0, 1, 2 from the floor."""
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return jnp.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)


def _axis_taps(cs, coord, size, mode, padding, align_corners):
    """Tap positions, weights and in-bounds masks along one axis, each (N, taps, P)."""
    if mode == BICUBIC:
        # Bicubic pads each integer tap, not the continuous coordinate.
        pos = cs.unnormalize(coord, size, align_corners)
        floor = jnp.floor(pos)
        taps = floor[:, None] + jnp.arange(-1, 3, dtype=pos.dtype)[:, None]
        taps = cs.pad(taps, size, padding, align_corners)
        weights = _cubic_weights(pos - floor)
    else:
        pos = cs.pad(cs.unnormalize(coord, size, align_corners), size, padding, align_corners)
        if mode == NEAREST:
            taps = jnp.round(pos)[:, None]  # half to even, as PyTorch's nearbyint
            weights = jnp.ones_like(taps)
        else:
            floor = jnp.floor(pos)
            frac = pos - floor
            taps = jnp.stack([floor, floor + 1], axis=1)
            weights = jnp.stack([1 - frac, frac], axis=1)
    inside = (taps >= 0) & (taps < size)  # NaN coordinates land outside
    return jnp.where(inside, taps, 0), weights, inside


def _grid_sample(x, grid, mode, padding, align_corners):
    """Sample ``x`` (N, C, *spatial) at ``grid`` (N, *out, ndim), PyTorch's grid_sampler."""
    ndim = grid.shape[-1]
    if mode not in (BILINEAR, NEAREST, BICUBIC) or (mode == BICUBIC and ndim != 2):
        raise ValueError(f"grid_sampler_{ndim}d: invalid interpolation mode {mode}")
    if padding not in (ZEROS, BORDER, REFLECTION):
        raise ValueError(f"grid_sampler_{ndim}d: invalid padding mode {padding}")
    dtype = accum_dtype(x)
    n, c, *spatial = x.shape
    out_shape = grid.shape[1:-1]
    coords = grid.astype(dtype).reshape(n, -1, ndim)
    index_dtype = jnp.int32 if math.prod(spatial) < 2**31 else jnp.int64

    # Each axis (grid's last dimension is x, y[, z]: the spatial axes reversed)
    # contributes its taps on a new dimension, so their outer product indexes
    # every combination: flat is (N, taps_0, ..., taps_k, P).
    cs = _Coords(grid.dtype, ndim)
    flat, inside, axis_weights = 0, True, []
    for axis, size in enumerate(spatial):
        coord = coords[..., ndim - 1 - axis]
        taps, weights, mask = _axis_taps(cs, coord, size, mode, padding, align_corners)
        shape = [n] + [1] * ndim + [taps.shape[-1]]
        shape[1 + axis] = taps.shape[1]
        flat = flat * size + taps.astype(index_dtype).reshape(shape)
        inside = inside & mask.reshape(shape)
        axis_weights.append(weights.reshape(shape))

    planes = x.astype(dtype).reshape(n, c, -1)
    values = jax.vmap(lambda plane, idx: jnp.take(plane, idx, axis=1, mode="clip"))(
        planes, flat.reshape(n, -1)
    )
    values = values.reshape(n, c, *flat.shape[1:])
    values = jnp.where(inside[:, None], values, 0)
    # Contract the innermost axis first, as PyTorch's kernels accumulate.
    for axis in reversed(range(ndim)):
        values = jnp.sum(values * axis_weights[axis][:, None], axis=2 + axis, keepdims=True)
    return values.reshape(n, c, *out_shape).astype(x.dtype)


@register(aten.grid_sampler_2d.default, aten.grid_sampler_3d.default)
def grid_sampler(x, grid, interpolation_mode, padding_mode, align_corners):
    return _grid_sample(x, grid, interpolation_mode, padding_mode, align_corners)


@register(aten.grid_sampler_2d_backward.default, aten.grid_sampler_3d_backward.default)
def grid_sampler_backward(
    grad, x, grid, interpolation_mode, padding_mode, align_corners, output_mask
):
    def f(x_, grid_):
        return _grid_sample(x_, grid_, interpolation_mode, padding_mode, align_corners)

    _, vjp = jax.vjp(f, x, grid)
    dx, dgrid = vjp(grad.astype(x.dtype))
    return (dx if output_mask[0] else None, dgrid if output_mask[1] else None)
