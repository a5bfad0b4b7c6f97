"""Convolution and pooling, with their backwards.

On the CPU three kinds of 2-d convolution run as other operations, because XLA:CPU
runs them well below its GEMM rate, some (3x3 convolutions of 2x2 outputs, 7x7
depthwise ones) at 1-3 GFLOP/s; ``benchmarks/conv_cpu.py`` measures every kind that
ResNet-50 and ConvNeXt use, at their shapes:

- windows that do not overlap (kernel no larger than the stride, no padding: 1x1
  convolutions of any stride, ConvNeXt's 4x4/4 patchify and 2x2/2 downsampling) are
  one matrix product over the windows' pixels, forward and both gradients, the
  columns made by a reshape. XLA's weight gradient of a 1x1 convolution (a
  transposed convolution) runs at a quarter of the product's rate.
- depthwise convolutions of stride 1 (ConvNeXt's 7x7) are sums of shifted slices
  times per-channel weights, and their weight gradient is one batched product per
  channel over shifted copies (:func:`_depthwise_weight_grad`).
- other ungrouped convolutions with at most 16x16 outputs (ResNet's 3x3 after the
  stem) are im2col: strided slices stacked into columns and one product; the input
  gradient adds the product's columns back (col2im), the weight gradient is one
  product with the columns.

The rest (larger outputs such as the 7x7 stem's 32x32, where XLA's convolution was
as fast or faster; other groupings; transposed convolutions) and every other
platform keep ``lax.conv_general_dilated``, which TPU and GPU compilers handle
natively.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from torchtpu.lower.ops._util import LOW_PRECISION, accum_dtype, aten, is_float
from torchtpu.lower.registry import register
from torchtpu.runtime import platform_name

_SPATIAL = {1: "H", 2: "HW", 3: "DHW"}


def _dims(n):
    s = _SPATIAL[n]
    return ("NC" + s, "OI" + s, "NC" + s)


def _expand(value, n):
    value = list(value)
    return value * n if len(value) == 1 else value


def _args(x, w, stride, padding, dilation, output_padding):
    """``x`` with a batch dimension, whether it had none, and the per-dimension lists."""
    n = x.ndim - 2
    unbatched = n == 0 or w.ndim - 2 != n
    if unbatched:  # conv1d/2d on an input without a batch dimension
        x = x[None]
        n = x.ndim - 2
    stride, padding = _expand(stride, n), _expand(padding, n)
    dilation, output_padding = _expand(dilation, n), _expand(output_padding, n)
    return x, unbatched, stride, padding, dilation, output_padding


def _conv(x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    x, unbatched, stride, padding, dilation, output_padding = _args(
        x, w, stride, padding, dilation, output_padding
    )
    form = _cpu_form(x, w, stride, padding, dilation, transposed, groups)
    if form == "windows":
        out = _windows_conv(x, w, stride)
    elif form == "depthwise":
        out = _depthwise_conv(x, w, padding, dilation)
    elif form == "im2col":
        out = _im2col_conv(x, w, stride, padding, dilation)
    else:
        out = _xla_conv(x, w, stride, padding, dilation, transposed, output_padding, groups)
    n = x.ndim - 2
    if bias is not None:
        out = out + bias.reshape((1, -1) + (1,) * n)
    out = out.astype(x.dtype)
    return out[0] if unbatched else out


def _xla_conv(x, w, stride, padding, dilation, transposed, output_padding, groups):
    """``lax.conv_general_dilated`` of a batched ``x``, in float32 for low precision."""
    n = x.ndim - 2
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
    return out


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
    dx, dw = _conv_grads(
        grad, x, w, stride, padding, dilation, transposed, output_padding, groups, output_mask
    )
    axes = (0,) + tuple(range(2, grad.ndim))
    db = jnp.sum(grad.astype(accum_dtype(grad)), axis=axes).astype(grad.dtype)
    return (
        dx if output_mask[0] else None,
        dw if output_mask[1] else None,
        db if output_mask[2] else None,
    )


def _conv_grads(grad, x, w, stride, padding, dilation, transposed, output_padding, groups, mask):
    """The input and weight gradients, by the CPU's forms where they apply (each
    computed only if ``mask`` asks for it), else by ``jax.vjp`` of the forward."""
    xb, unbatched, stride_, padding_, dilation_, _ = _args(
        x, w, stride, padding, dilation, output_padding
    )
    form = _cpu_form(xb, w, stride_, padding_, dilation_, transposed, groups)
    if form is None:

        def f(x_, w_):
            return _conv(
                x_, w_, None, stride, padding, dilation, transposed, output_padding, groups
            )

        _, vjp = jax.vjp(f, x, w)
        return vjp(grad.astype(x.dtype))
    g = grad[None] if unbatched else grad
    if form == "windows":
        dx = _windows_input_grad(g, xb.shape, w, stride_) if mask[0] else None
        dw = _windows_weight_grad(g, xb, w.shape, stride_) if mask[1] else None
    elif form == "depthwise":
        dx = _depthwise_input_grad(g, xb.shape, w, padding_, dilation_) if mask[0] else None
        dw = _depthwise_weight_grad(g, xb, w.shape, padding_, dilation_) if mask[1] else None
    else:
        geometry = (stride_, padding_, dilation_)
        dx = _im2col_input_grad(g, xb.shape, w, *geometry) if mask[0] else None
        dw = _im2col_weight_grad(g, xb, w.shape, *geometry) if mask[1] else None
    if dx is not None:
        dx = dx.astype(x.dtype)
        dx = dx[0] if unbatched else dx
    return dx, None if dw is None else dw.astype(w.dtype)


# --- the CPU's formulations (see the module's docstring) -------------------------------


def _cpu_form(x, w, stride, padding, dilation, transposed, groups):
    """``"windows"``, ``"depthwise"``, ``"im2col"`` or None (XLA's convolution) for a
    batched 2-d convolution traced for the CPU (see the module's docstring)."""
    if transposed or x.ndim != 4 or x.size == 0 or w.size == 0 or platform_name() != "cpu":
        return None
    kernel = w.shape[2:]
    no_padding = all(p == 0 for p in padding)
    if groups == 1 and no_padding and all(k <= s for k, s in zip(kernel, stride, strict=True)):
        if all(k == 1 or d == 1 for k, d in zip(kernel, dilation, strict=True)):
            return "windows"
    if groups == x.shape[1] == w.shape[0] and w.shape[1] == 1 and all(s == 1 for s in stride):
        return "depthwise"
    # Up to 16x16 outputs, im2col was faster; at the stem's 32x32, XLA's convolution.
    if groups == 1 and math.prod(_out_size(x.shape, kernel, stride, padding, dilation)) <= 256:
        return "im2col"
    return None


def _dot(a, b, contract, batch=((), ())):
    """``dot_general`` at full float32 precision, low precision accumulated in float32."""
    low = a.dtype in LOW_PRECISION
    return lax.dot_general(
        a,
        b,
        (contract, batch),
        precision=None if low else lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32 if low else None,
    )


def _resize(x, sizes):
    """Crop or zero-extend the trailing two dimensions of ``x`` at their high ends."""
    pads = [(0, 0, 0)] * (x.ndim - 2) + [
        (0, t - s, 0) for s, t in zip(x.shape[-2:], sizes, strict=True)
    ]
    return lax.pad(x, jnp.zeros((), x.dtype), pads)


def _window_geometry(shape, kernel, stride):
    (n, c, h, w), (kh, kw), (sh, sw) = shape, kernel, stride
    return n, c, (h - kh) // sh + 1, (w - kw) // sw + 1


def _columns(x, kernel, stride):
    """The (C*kh*kw, N*Ho*Wo) columns of windows that do not overlap (kernel <= stride)."""
    n, c, ho, wo = _window_geometry(x.shape, kernel, stride)
    (kh, kw), (sh, sw) = kernel, stride
    x = _resize(x, (ho * sh, wo * sw)).reshape(n, c, ho, sh, wo, sw)[:, :, :, :kh, :, :kw]
    return jnp.transpose(x, (1, 3, 5, 0, 2, 4)).reshape(c * kh * kw, n * ho * wo)


def _rows(g):
    """(N, O, Ho, Wo) -> (O, N*Ho*Wo), the layout of :func:`_columns`'s products."""
    return jnp.transpose(g, (1, 0, 2, 3)).reshape(g.shape[1], -1)


def _windows_conv(x, w, stride):
    n, _, ho, wo = _window_geometry(x.shape, w.shape[2:], stride)
    out = _dot(w.reshape(w.shape[0], -1), _columns(x, w.shape[2:], stride), ((1,), (0,)))
    return jnp.transpose(out.reshape(-1, n, ho, wo), (1, 0, 2, 3))


def _windows_input_grad(g, x_shape, w, stride):
    n, c, ho, wo = _window_geometry(x_shape, w.shape[2:], stride)
    (kh, kw), (sh, sw) = w.shape[2:], stride
    cols = _dot(w.reshape(w.shape[0], -1), _rows(g.astype(w.dtype)), ((0,), (0,)))
    dx = jnp.transpose(cols.reshape(c, kh, kw, n, ho, wo), (3, 0, 4, 1, 5, 2))
    # The pixels a stride skips get zeros.
    unread = [(0, 0, 0)] * 3 + [(0, sh - kh, 0), (0, 0, 0), (0, sw - kw, 0)]
    dx = lax.pad(dx, jnp.zeros((), dx.dtype), unread).reshape(n, c, ho * sh, wo * sw)
    return _resize(dx, x_shape[2:])


def _windows_weight_grad(g, x, w_shape, stride):
    dw = _dot(_rows(g.astype(x.dtype)), _columns(x, w_shape[2:], stride), ((1,), (1,)))
    return dw.reshape(w_shape)


def _out_size(shape, kernel, stride, padding, dilation):
    return [
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, k, s, p, d in zip(shape[2:], kernel, stride, padding, dilation, strict=True)
    ]


def _im2col(x, kernel, stride, padding, dilation):
    """(C*kh*kw, N*Ho*Wo): each window's pixels, one column per output position."""
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = _out_size(x.shape, kernel, stride, padding, dilation)
    xp = jnp.pad(jnp.transpose(x, (1, 0, 2, 3)), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = [
        xp[:, :, r : r + sh * (ho - 1) + 1 : sh, c : c + sw * (wo - 1) + 1 : sw]
        for _, _, r, c in _taps(kernel, dilation)
    ]
    return jnp.stack(cols, axis=1).reshape(x.shape[1] * len(cols), -1)


def _im2col_conv(x, w, stride, padding, dilation):
    ho, wo = _out_size(x.shape, w.shape[2:], stride, padding, dilation)
    cols = _im2col(x, w.shape[2:], stride, padding, dilation)
    out = _dot(w.reshape(w.shape[0], -1), cols, ((1,), (0,)))
    return jnp.transpose(out.reshape(-1, x.shape[0], ho, wo), (1, 0, 2, 3))


def _im2col_input_grad(g, x_shape, w, stride, padding, dilation):
    # The product's columns, each added back where its window read the input (col2im).
    n, c, h, wd = x_shape
    (sh, sw), (ph, pw), (ho, wo) = stride, padding, g.shape[2:]
    cols = _dot(w.reshape(w.shape[0], -1), _rows(g.astype(w.dtype)), ((0,), (0,)))
    cols = cols.reshape(c, -1, n, ho, wo)
    dx = jnp.zeros((c, n, h, wd), cols.dtype)
    zero = jnp.zeros((), cols.dtype)
    for t, (_, _, r, col) in enumerate(_taps(w.shape[2:], dilation)):
        r, col = r - ph, col - pw  # the window's first pixel in x
        rows = (r, h - 1 - r - sh * (ho - 1), sh - 1)
        columns = (col, wd - 1 - col - sw * (wo - 1), sw - 1)
        dx = dx + lax.pad(cols[:, t], zero, [(0, 0, 0), (0, 0, 0), rows, columns])
    return jnp.transpose(dx, (1, 0, 2, 3))


def _im2col_weight_grad(g, x, w_shape, stride, padding, dilation):
    cols = _im2col(x, w_shape[2:], stride, padding, dilation)
    return _dot(_rows(g.astype(x.dtype)), cols, ((1,), (1,))).reshape(w_shape)


def _taps(kernel, dilation):
    """Each kernel tap's (row, column) offset into the padded input."""
    (kh, kw), (dh, dw) = kernel, dilation
    return [(i, j, i * dh, j * dw) for i in range(kh) for j in range(kw)]


def _depthwise_conv(x, w, padding, dilation):
    acc = accum_dtype(x)
    (ph, pw), (kh, kw) = padding, w.shape[2:]
    ho = x.shape[2] + 2 * ph - dilation[0] * (kh - 1)
    wo = x.shape[3] + 2 * pw - dilation[1] * (kw - 1)
    xp = jnp.pad(x.astype(acc), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    w = w.astype(acc)
    out = jnp.zeros((x.shape[0], x.shape[1], ho, wo), acc)
    for i, j, r, c in _taps(w.shape[2:], dilation):
        out = out + xp[:, :, r : r + ho, c : c + wo] * w[None, :, 0, i, j, None, None]
    return out


def _depthwise_input_grad(g, x_shape, w, padding, dilation):
    # A stride-1 convolution's input gradient is the convolution of its output
    # gradient, padded by the kernel's reach less the padding, with the kernel
    # flipped: slices again (summing padded pieces instead runs 5x slower).
    acc = accum_dtype(g)
    g, w = g.astype(acc), w.astype(acc)
    (h, wd), (kh, kw), (dh, dw) = x_shape[2:], w.shape[2:], dilation
    reach = [(0, 0, 0)] * 2 + [
        (d * (k - 1) - p, d * (k - 1) - p, 0)
        for d, k, p in zip(dilation, w.shape[2:], padding, strict=True)
    ]
    gp = lax.pad(g, jnp.zeros((), acc), reach)
    dx = jnp.zeros(x_shape, acc)
    for i, j, _, _ in _taps(w.shape[2:], dilation):
        r, c = (kh - 1 - i) * dh, (kw - 1 - j) * dw
        dx = dx + gp[:, :, r : r + h, c : c + wd] * w[None, :, 0, i, j, None, None]
    return dx


def _depthwise_weight_grad(g, x, w_shape, padding, dilation):
    # dw[c, i, j] = sum over (n, y, z) of g[n, c, y, z] * xp[n, c, y + i*dh, z + j*dw].
    # With g shifted right by j*dw across the padded width (kw copies) and xp shifted
    # down by i*dh (kh copies), that is one (kh, M) x (M, kw) product per channel:
    # kh + kw copies of the data rather than the kh*kw of a full im2col.
    (ph, pw), (dh, dw), (kh, kw) = padding, dilation, w_shape[2:]
    xp = jnp.pad(jnp.transpose(x, (1, 0, 2, 3)), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    gt = jnp.transpose(g.astype(x.dtype), (1, 0, 2, 3))
    c, _, ho, wo = gt.shape
    wp = xp.shape[3]
    shifted_g = jnp.stack(
        [jnp.pad(gt, ((0, 0), (0, 0), (0, 0), (j * dw, wp - wo - j * dw))) for j in range(kw)], 1
    )
    shifted_x = jnp.stack([xp[:, :, i * dh : i * dh + ho] for i in range(kh)], 1)
    out = _dot(
        shifted_x.reshape(c, kh, -1), shifted_g.reshape(c, kw, -1), ((2,), (2,)), ((0,), (0,))
    )
    return out.reshape(w_shape)


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

    none = jnp.array(np.iinfo(np.int64).max, jnp.int64)
    if platform_name() == "cpu":
        return _max_pool_by_slices(x, flat, (low, none), pick, window, strides, dil, pads)
    values, indices = lax.reduce_window(
        (x, flat), (low, none), pick, window, strides, pads, window_dilation=dil
    )
    return values, indices


def _max_pool_by_slices(x, flat, init, pick, window, strides, dil, pads):
    """The same reduction as ``lax.reduce_window(..., pick, ...)``, as ``pick`` over one
    strided slice of the padded input per window position. XLA:CPU runs a variadic
    reduce-window (value and index) as a scalar loop: ResNet's 3x3/2 max pool of 16 images of
    32x32x32 took 4.2 ms of a 28 ms training step; the slices fuse into one elementwise loop.
    ``pick`` is a total order (larger value, then smaller index; NaN wins), so the result is
    the same whatever order the window's elements are taken in."""
    config = [(lo, hi, 0) for lo, hi in pads]
    xp, ip = lax.pad(x, init[0], config), lax.pad(flat, init[1], config)
    out = [
        (n - d * (k - 1) - 1) // s + 1
        for n, k, s, d in zip(xp.shape, window, strides, dil, strict=True)
    ]
    best = None
    for offset in itertools.product(*[range(k) for k in window]):
        start = [o * d for o, d in zip(offset, dil, strict=True)]
        limit = [b + (m - 1) * s + 1 for b, m, s in zip(start, out, strides, strict=True)]
        here = (lax.slice(xp, start, limit, strides), lax.slice(ip, start, limit, strides))
        best = here if best is None else pick(best, here)
    return best


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
