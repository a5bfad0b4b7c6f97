"""Convolution and pooling, with their backwards."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from torchtpu.lower.ops._util import LOW_PRECISION, accum_dtype, aten, is_float
from torchtpu.lower.registry import register

_SPATIAL = {1: "H", 2: "HW", 3: "DHW"}


def _dims(n):
    s = _SPATIAL[n]
    return ("NC" + s, "OI" + s, "NC" + s)


def _expand(value, n):
    value = list(value)
    return value * n if len(value) == 1 else value


def _conv(x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    n = x.ndim - 2
    unbatched = n == 0 or w.ndim - 2 != n
    if unbatched:  # conv1d/2d on an input without a batch dimension
        x = x[None]
        n = x.ndim - 2
    stride, padding = _expand(stride, n), _expand(padding, n)
    dilation, output_padding = _expand(dilation, n), _expand(output_padding, n)
    precision = lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
    # bfloat16 and float16 products accumulate in float32 and the bias is added
    # there, rounding once at the end as PyTorch's kernels do; the inputs stay
    # low precision so TPU and GPU matrix units run at their bf16 rate.
    acc = jnp.float32 if x.dtype in LOW_PRECISION else None
    if not transposed:
        out = lax.conv_general_dilated(
            x,
            w,
            window_strides=stride,
            padding=[(p, p) for p in padding],
            rhs_dilation=dilation,
            dimension_numbers=_dims(n),
            feature_group_count=groups,
            precision=precision,
            preferred_element_type=acc,
        )
    else:
        cin, cout_g, *k = w.shape
        w = w.reshape(groups, cin // groups, cout_g, *k)
        w = jnp.swapaxes(w, 1, 2).reshape(groups * cout_g, cin // groups, *k)
        w = jnp.flip(w, axis=tuple(range(2, 2 + n)))
        pads = [
            (d * (kk - 1) - p, d * (kk - 1) - p + op)
            for d, kk, p, op in zip(dilation, k, padding, output_padding, strict=True)
        ]
        out = lax.conv_general_dilated(
            x,
            w,
            window_strides=[1] * n,
            padding=pads,
            lhs_dilation=stride,
            rhs_dilation=dilation,
            dimension_numbers=_dims(n),
            feature_group_count=groups,
            precision=precision,
            preferred_element_type=acc,
        )
    if bias is not None:
        out = out + bias.reshape((1, -1) + (1,) * n)
    out = out.astype(x.dtype)
    return out[0] if unbatched else out


@register(aten.convolution.default)
def convolution(x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    return _conv(x, w, bias, stride, padding, dilation, transposed, output_padding, groups)


@register(aten.convolution_backward.default)
def convolution_backward(
    grad,
    x,
    w,
    bias_sizes,
    stride,
    padding,
    dilation,
    transposed,
    output_padding,
    groups,
    output_mask,
):
    def f(x_, w_):
        return _conv(x_, w_, None, stride, padding, dilation, transposed, output_padding, groups)

    _, vjp = jax.vjp(f, x, w)
    dx, dw = vjp(grad.astype(x.dtype))
    axes = (0,) + tuple(range(2, grad.ndim))
    db = jnp.sum(grad.astype(accum_dtype(grad)), axis=axes).astype(grad.dtype)
    return (
        dx if output_mask[0] else None,
        dw if output_mask[1] else None,
        db if output_mask[2] else None,
    )


# --- pooling ---------------------------------------------------------------------------


def _pool_geometry(in_size, kernel, stride, padding, dilation, ceil_mode):
    """Output size and the extra high-side padding PyTorch's ceil_mode implies."""
    eff = dilation * (kernel - 1) + 1
    span = in_size + 2 * padding - eff
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= in_size + padding:
        out -= 1
    extra = max((out - 1) * stride + eff - (in_size + 2 * padding), 0)
    return out, extra


def _pool_args(x, kernel, stride, padding, dilation, ceil_mode):
    n = len(kernel)
    stride = list(stride) or list(kernel)
    stride, padding, dilation = _expand(stride, n), _expand(padding, n), _expand(dilation, n)
    kernel = _expand(kernel, n)
    spatial = x.shape[-n:]
    geo = [
        _pool_geometry(s, k, st, p, d, ceil_mode)
        for s, k, st, p, d in zip(spatial, kernel, stride, padding, dilation, strict=True)
    ]
    lead = x.ndim - n
    window = (1,) * lead + tuple(kernel)
    strides = (1,) * lead + tuple(stride)
    dil = (1,) * lead + tuple(dilation)
    pads = ((0, 0),) * lead + tuple((p, p + e) for p, (_, e) in zip(padding, geo, strict=True))
    return window, strides, dil, pads


def _max_pool_with_indices(x, kernel, stride, padding, dilation, ceil_mode):
    window, strides, dil, pads = _pool_args(x, kernel, stride, padding, dilation, ceil_mode)
    n = len(kernel)
    plane = math.prod(x.shape[-n:])
    flat = jnp.broadcast_to(jnp.arange(plane, dtype=jnp.int64).reshape(x.shape[-n:]), x.shape)
    low = jnp.array(
        -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min, x.dtype
    )

    def pick(a, b):
        (va, ia), (vb, ib) = a, b
        take_b = (vb > va) | ((vb == va) & (ib < ia))
        if jnp.issubdtype(va.dtype, jnp.floating):
            take_b = take_b | (jnp.isnan(vb) & ~jnp.isnan(va))
        return jnp.where(take_b, vb, va), jnp.where(take_b, ib, ia)

    values, indices = lax.reduce_window(
        (x, flat),
        (low, jnp.array(np.iinfo(np.int64).max, jnp.int64)),
        pick,
        window,
        strides,
        pads,
        window_dilation=dil,
    )
    return values, indices


@register(aten.max_pool2d_with_indices.default, aten.max_pool3d_with_indices.default)
def max_pool_with_indices(x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    kernel = list(kernel_size)
    n = 3 if len(kernel) == 3 or x.ndim == 5 else 2
    kernel = _expand(kernel, n)
    return _max_pool_with_indices(
        x,
        kernel,
        stride,
        _expand([padding] if isinstance(padding, int) else padding, n),
        _expand([dilation] if isinstance(dilation, int) else dilation, n),
        ceil_mode,
    )


@register(
    aten.max_pool2d_with_indices_backward.default, aten.max_pool3d_with_indices_backward.default
)
def max_pool_backward(grad, x, kernel_size, stride, padding, dilation, ceil_mode, indices):
    n = len(_expand(kernel_size, 3 if x.ndim == 5 else 2))
    return _scatter_plane(grad, x, indices, n)


def _scatter_plane(grad, x, indices, n):
    """Add ``grad`` into a zero input at the flat plane positions in ``indices``."""
    lead = x.shape[:-n]
    plane = math.prod(x.shape[-n:])
    g = grad.reshape(*lead, -1)
    idx = indices.reshape(*lead, -1)
    out = jnp.zeros((*lead, plane), jnp.float32)
    batch = tuple(jnp.meshgrid(*[jnp.arange(s) for s in lead], indexing="ij", sparse=True))
    batch = tuple(b[..., None] for b in batch)
    out = out.at[(*batch, idx)].add(g.astype(jnp.float32))
    return out.reshape(x.shape).astype(grad.dtype)


def _avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    n = len(kernel)
    window, strides, dil, pads = _pool_args(x, kernel, stride, padding, [1] * n, ceil_mode)
    acc = x.dtype
    # A Python zero, so JAX sees a windowed sum it can differentiate (an array
    # init value makes it a generic reduce_window, which it cannot).
    zero = 0.0 if jnp.issubdtype(acc, jnp.inexact) else 0
    total = lax.reduce_window(x, zero, lax.add, window, strides, pads)
    if divisor_override:
        return total / divisor_override
    if count_include_pad:
        # Padding counts, but the ceil_mode overhang beyond it does not.
        ones = jnp.ones(x.shape[-n:], acc)
        sym = [(0, 0)] * (len(pads) - n) + [(p, p) for p in _expand(padding, n)]
        ones = jnp.pad(ones, sym[-n:], constant_values=1)
        extra = [(0, hi - lo) for lo, hi in pads[-n:]]
        count = lax.reduce_window(ones, zero, lax.add, window[-n:], strides[-n:], extra)
    else:
        count = lax.reduce_window(
            jnp.ones(x.shape[-n:], acc),
            zero,
            lax.add,
            window[-n:],
            strides[-n:],
            pads[-n:],
        )
    return total / count


@register(aten.avg_pool2d.default, aten.avg_pool3d.default, accumulate=True)
def avg_pool(
    x,
    kernel_size,
    stride=(),
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    n = 3 if x.ndim == 5 and len(kernel_size) != 2 else 2
    kernel = _expand(kernel_size, n)
    padding = _expand([padding] if isinstance(padding, int) else padding, n)
    return _avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)


@register(aten.avg_pool2d_backward.default, aten.avg_pool3d_backward.default, accumulate=True)
def avg_pool_backward(
    grad, x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
):
    _, vjp = jax.vjp(
        lambda x_: avg_pool(
            x_, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        ),
        x,
    )
    return vjp(grad)[0]


@register(aten._adaptive_avg_pool2d.default, accumulate=True)
def adaptive_avg_pool2d(x, output_size):
    h, w = x.shape[-2:]
    oh, ow = output_size
    if h % oh == 0 and w % ow == 0:
        shaped = x.reshape(*x.shape[:-2], oh, h // oh, ow, w // ow)
        return jnp.mean(shaped, axis=(-3, -1))
    rows = [_adaptive_range(i, h, oh) for i in range(oh)]
    cols = [_adaptive_range(j, w, ow) for j in range(ow)]
    out = jnp.stack(
        [
            jnp.stack(
                [jnp.mean(x[..., r0:r1, c0:c1], axis=(-2, -1)) for c0, c1 in cols],
                axis=-1,
            )
            for r0, r1 in rows
        ],
        axis=-2,
    )
    return out


def _adaptive_range(i, size, out):
    return (i * size) // out, -(-((i + 1) * size) // out)


@register(aten._adaptive_avg_pool2d_backward.default, accumulate=True)
def adaptive_avg_pool2d_backward(grad, x):
    _, vjp = jax.vjp(lambda x_: adaptive_avg_pool2d(x_, grad.shape[-2:]), x)
    return vjp(grad)[0]


def _adaptive_matrix(size, out):
    """(out, size) averaging weights of PyTorch's adaptive pooling windows."""
    weights = np.zeros((out, size), np.float32)
    for i in range(out):
        start, end = _adaptive_range(i, size, out)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def _adaptive_avg_pool(x, output_size):
    n = len(output_size)
    out = x
    for k, size in enumerate(output_size):
        axis = x.ndim - n + k
        w = jnp.asarray(_adaptive_matrix(x.shape[axis], int(size)), out.dtype)
        moved = jnp.moveaxis(out, axis, -1)
        out = jnp.moveaxis(jnp.matmul(moved, w.T, precision=lax.Precision.HIGHEST), -1, axis)
    return out


@register(aten._adaptive_avg_pool3d.default, accumulate=True)
def adaptive_avg_pool3d(x, output_size):
    return _adaptive_avg_pool(x, output_size)


@register(aten._adaptive_avg_pool3d_backward.default, accumulate=True)
def adaptive_avg_pool3d_backward(grad, x):
    _, vjp = jax.vjp(lambda x_: _adaptive_avg_pool(x_, grad.shape[-3:]), x)
    return vjp(grad)[0]


def _adaptive_windows(size, out):
    """(out, longest) input positions of each window, and which of them are real."""
    ranges = [_adaptive_range(i, size, out) for i in range(out)]
    longest = max(end - start for start, end in ranges)
    pos = np.array([[min(start + k, end - 1) for k in range(longest)] for start, end in ranges])
    return pos, longest


def _adaptive_max_pool(x, output_size):
    # Gather every window, padded by repeating its last element (harmless for a
    # max whose first occurrence wins), and reduce; the index is the flat
    # position in the input plane, as PyTorch returns it.
    n = len(output_size)
    lead, spatial = x.shape[:-n], x.shape[-n:]
    grids, flat = [], 0
    for k, size in enumerate(spatial):
        pos = _adaptive_windows(size, int(output_size[k]))[0]
        shape = [1] * (2 * n)
        shape[2 * k], shape[2 * k + 1] = pos.shape
        grids.append(pos.reshape(shape))
        flat = flat * size + grids[-1]
    order = [2 * k for k in range(n)] + [2 * k + 1 for k in range(n)]
    window_shape = np.broadcast_shapes(*[g.shape for g in grids])
    flat = np.broadcast_to(flat, window_shape).transpose(order).reshape(*output_size, -1)
    patches = x[(..., *grids)]
    patches = jnp.transpose(patches, [*range(len(lead)), *(len(lead) + o for o in order)])
    patches = patches.reshape(*lead, *output_size, -1)
    key = jnp.where(jnp.isnan(patches), jnp.inf, patches) if is_float(x) else patches
    best = jnp.argmax(key, axis=-1)[..., None]
    values = jnp.take_along_axis(patches, best, axis=-1)[..., 0]
    indices = jnp.take_along_axis(jnp.broadcast_to(flat, patches.shape), best, axis=-1)[..., 0]
    return values, indices.astype(jnp.int64)


@register(aten.adaptive_max_pool2d.default, aten.adaptive_max_pool3d.default)
def adaptive_max_pool(x, output_size):
    return _adaptive_max_pool(x, [int(o) for o in output_size])


@register(aten.adaptive_max_pool2d_backward.default)
def adaptive_max_pool2d_backward(grad, x, indices):
    return _scatter_plane(grad, x, indices, 2)


@register(aten.adaptive_max_pool3d_backward.default)
def adaptive_max_pool3d_backward(grad, x, indices):
    return _scatter_plane(grad, x, indices, 3)


# --- fractional max pooling (window starts come from the given random samples) ---------


def _fractional_starts(sample, size, out, kernel):
    # PyTorch's generate_intervals: alpha-spaced starts, the last window flush right.
    if out == 1:
        return jnp.full(sample.shape + (1,), size - kernel, jnp.int64)
    alpha = (size - kernel) / (out - 1)
    i = jnp.arange(out - 1)
    starts = (
        jnp.floor((i + sample[..., None]) * alpha) - jnp.floor(sample[..., None] * alpha)
    ).astype(jnp.int64)
    last = jnp.full(sample.shape + (1,), size - kernel, jnp.int64)
    return jnp.concatenate([starts, last], axis=-1)


def _fractional_max_pool(x, kernel, output_size, samples):
    n = len(kernel)
    batched = x.ndim == n + 2
    if not batched:
        x = x[None]
    spatial = x.shape[-n:]
    grids, flat = [], jnp.zeros((), jnp.int64)
    for k in range(n):
        # PyTorch's 2-d kernel reads the samples width first, the 3-d one depth first.
        dim = n - 1 - k if n == 2 else k
        starts = _fractional_starts(
            samples[..., k].astype(jnp.float32), spatial[dim], output_size[dim], kernel[dim]
        )
        pos = starts[..., None] + jnp.arange(kernel[dim])  # (N, C, out, kernel)
        shape = list(pos.shape[:2]) + [1] * (2 * n)
        shape[2 + 2 * dim], shape[3 + 2 * dim] = pos.shape[2:]
        grids.append((dim, pos.reshape(shape)))
    grids.sort(key=lambda g: g[0])
    for dim, g in grids:
        flat = flat * spatial[dim] + g
    b = jnp.arange(x.shape[0]).reshape((-1, 1) + (1,) * (2 * n))
    c = jnp.arange(x.shape[1]).reshape((1, -1) + (1,) * (2 * n))
    patches = x[(b, c, *[g for _, g in grids])]
    order = [0, 1] + [2 + 2 * k for k in range(n)] + [3 + 2 * k for k in range(n)]
    patches = jnp.transpose(patches, order).reshape(*x.shape[:2], *output_size, -1)
    flat = jnp.transpose(
        jnp.broadcast_to(flat, jnp.shape(patches[..., 0])[:2] + flat.shape[2:]), order
    )
    flat = flat.reshape(patches.shape)
    key = jnp.where(jnp.isnan(patches), jnp.inf, patches) if is_float(x) else patches
    best = jnp.argmax(key, axis=-1)[..., None]
    values = jnp.take_along_axis(patches, best, axis=-1)[..., 0]
    indices = jnp.take_along_axis(flat, best, axis=-1)[..., 0].astype(jnp.int64)
    return (values, indices) if batched else (values[0], indices[0])


@register(aten.fractional_max_pool2d.default, aten.fractional_max_pool3d.default)
def fractional_max_pool(x, kernel_size, output_size, random_samples):
    return _fractional_max_pool(x, list(kernel_size), list(output_size), random_samples)


@register(aten.fractional_max_pool2d_backward.default)
def fractional_max_pool2d_backward(grad, x, kernel_size, output_size, indices):
    return _scatter_plane(grad, x, indices, 2)


@register(aten.fractional_max_pool3d_backward.default)
def fractional_max_pool3d_backward(grad, x, kernel_size, output_size, indices):
    return _scatter_plane(grad, x, indices, 3)


# --- antialiased bilinear resampling ---------------------------------------------------


def _aa_weights(size, out, scale):
    """(out, size) weights of PyTorch's antialiased linear filter along one axis."""
    scale = size / out if scale is None or scale <= 0 else 1.0 / scale
    support = scale if scale >= 1.0 else 1.0
    weights = np.zeros((out, size), np.float64)
    for i in range(out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), size)
        taps = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((taps - center + 0.5) / max(scale, 1.0)))
        total = w.sum()
        weights[i, lo:hi] = w / total if total > 0 else w
    return weights


def _upsample_aa(x, output_size, scales):
    out = x
    for k, (size, scale) in enumerate(zip(output_size, scales, strict=True)):
        axis = x.ndim - 2 + k
        w = jnp.asarray(_aa_weights(x.shape[axis], int(size), scale), out.dtype)
        moved = jnp.moveaxis(out, axis, -1)
        out = jnp.moveaxis(jnp.matmul(moved, w.T, precision=lax.Precision.HIGHEST), -1, axis)
    return out


def _not_aligned(align_corners: bool) -> bool | str:
    return not align_corners or "antialiased resampling with align_corners=True"


@register(
    aten._upsample_bilinear2d_aa.default,
    accumulate=True,
    supports=lambda x, output_size, align_corners, *a, **kw: _not_aligned(align_corners),
)
def upsample_bilinear2d_aa(x, output_size, align_corners, scales_h=None, scales_w=None):
    return _upsample_aa(x, output_size, (scales_h, scales_w))


@register(
    aten._upsample_bilinear2d_aa_backward.default,
    accumulate=True,
    supports=lambda g, out_size, in_size, align_corners, *a, **kw: _not_aligned(align_corners),
)
def upsample_bilinear2d_aa_backward(
    grad, output_size, input_size, align_corners, scales_h=None, scales_w=None
):
    x = jnp.zeros(tuple(int(s) for s in input_size), grad.dtype)
    _, vjp = jax.vjp(lambda x_: _upsample_aa(x_, output_size, (scales_h, scales_w)), x)
    return vjp(grad)[0]
