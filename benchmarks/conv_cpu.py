"""Convolutions on the CPU, per kind that ResNet-50 and ConvNeXt-tiny use, at the
training benchmark's shapes (16 images of 64x64, so feature maps 32x32 down to 2x2),
fp32: forward, input gradient and weight gradient, in GFLOP/s (the convolution's
nominal 2*N*O*Ho*Wo*C/groups*kh*kw for every direction) and as time against eager.

- ``xla``: ``lax.conv_general_dilated`` and ``jax.vjp`` of it (the lowering before
  the CPU forms, and still the lowering on TPU and GPU);
- ``torchtpu``: the lowering as it is now (``torchtpu/lower/ops/conv.py``);
- ``im2col``: every window's columns (strided slices, channels first) and one
  product, the input gradient as the product's columns added back (col2im), the
  weight gradient as one product with the columns;
- ``nhwc``: the same with channels last;
- ``eager``: PyTorch (oneDNN), ``conv2d`` and ``aten.convolution_backward``.

Each is timed in rounds, interleaved (A B A B ...), best round kept, with a pause
between JAX and PyTorch so that neither's thread pool spins while the other runs.

    .venv/bin/python benchmarks/conv_cpu.py [--rounds 4] [--kinds 1x1,dw7x7]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax import lax

from torchtpu.lower.ops import conv

HIGHEST = lax.Precision.HIGHEST
BATCH = 16

# name: (C, H=W, O, kernel, stride, padding, groups), the models' layers at 64x64 input
KINDS = {
    "stem 7x7/2": (3, 64, 64, 7, 2, 3, 1),
    "stem 7x7/2 3->32": (3, 64, 32, 7, 2, 3, 1),  # the small ResNet of train_step.py
    "1x1 64->256 16x16": (64, 16, 256, 1, 1, 0, 1),
    "1x1 256->64 16x16": (256, 16, 64, 1, 1, 0, 1),
    "1x1 256->1024 4x4": (256, 4, 1024, 1, 1, 0, 1),
    "1x1/2 256->512 16x16": (256, 16, 512, 1, 2, 0, 1),
    "3x3 64 16x16": (64, 16, 64, 3, 1, 1, 1),
    "3x3 256 4x4": (256, 4, 256, 3, 1, 1, 1),
    "3x3/2 128 16x16": (128, 16, 128, 3, 2, 1, 1),
    "3x3/2 512 4x4": (512, 4, 512, 3, 2, 1, 1),
    "3x3 512 2x2": (512, 2, 512, 3, 1, 1, 1),
    "patchify 4x4/4": (3, 64, 96, 4, 4, 0, 1),
    "down 2x2/2 96->192": (96, 16, 192, 2, 2, 0, 1),
    "dw7x7 96 16x16": (96, 16, 96, 7, 1, 3, 96),
    "dw7x7 384 4x4": (384, 4, 384, 7, 1, 3, 384),
    "dw7x7 768 2x2": (768, 2, 768, 7, 1, 3, 768),
}


def _args(s, p):
    return [s, s], [p, p], [1, 1], False, [0, 0]


def xla_forms(s, p, groups):
    def fwd(x, w):
        return conv._xla_conv(x, w, *_args(s, p), groups)

    def dx(x, w, g):
        return jax.vjp(lambda x_: fwd(x_, w), x)[1](g)[0]

    def dw(x, w, g):
        return jax.vjp(lambda w_: fwd(x, w_), w)[1](g)[0]

    return fwd, dx, dw


def torchtpu_forms(s, p, groups):
    def fwd(x, w):
        return conv.convolution(x, w, None, *_args(s, p), groups)

    def grads(mask):
        def f(x, w, g):
            out = conv.convolution_backward(g, x, w, None, *_args(s, p), groups, mask)
            return out[0] if mask[0] else out[1]

        return f

    return fwd, grads([True, False, False]), grads([False, True, False])


def _taps(k, s, out):
    last = s * (out - 1) + 1
    return [
        (i, j, slice(i, i + last, s), slice(j, j + last, s)) for i in range(k) for j in range(k)
    ]


def im2col_forms(s, p, channels_last):
    """Explicit columns; ``channels_last`` puts them (N*Ho*Wo, kh*kw*C), else (C*kh*kw, N*Ho*Wo)."""

    def geometry(x, w):
        k, h = w.shape[-1], x.shape[-1]
        return k, (h + 2 * p - k) // s + 1

    def columns(x, w):
        k, out = geometry(x, w)
        if channels_last:
            xp = jnp.pad(jnp.transpose(x, (0, 2, 3, 1)), ((0, 0), (p, p), (p, p), (0, 0)))
            cols = jnp.stack([xp[:, r, c, :] for _, _, r, c in _taps(k, s, out)], axis=3)
            return cols.reshape(-1, k * k * x.shape[1])
        xp = jnp.pad(jnp.transpose(x, (1, 0, 2, 3)), ((0, 0), (0, 0), (p, p), (p, p)))
        cols = jnp.stack([xp[:, :, r, c] for _, _, r, c in _taps(k, s, out)], axis=1)
        return cols.reshape(x.shape[1] * k * k, -1)

    def weights(w):  # matches the columns' order: (O, C*k*k) or (O, k*k*C)
        return (jnp.transpose(w, (0, 2, 3, 1)) if channels_last else w).reshape(w.shape[0], -1)

    def grad_rows(g):  # (O, N*Ho*Wo) or (N*Ho*Wo, O)
        if channels_last:
            return jnp.transpose(g, (0, 2, 3, 1)).reshape(-1, g.shape[1])
        return jnp.transpose(g, (1, 0, 2, 3)).reshape(g.shape[1], -1)

    def fwd(x, w):
        _, out = geometry(x, w)
        if channels_last:
            y = lax.dot_general(columns(x, w), weights(w), (((1,), (1,)), ((), ())), HIGHEST)
            return jnp.transpose(y.reshape(x.shape[0], out, out, -1), (0, 3, 1, 2))
        y = lax.dot_general(weights(w), columns(x, w), (((1,), (0,)), ((), ())), HIGHEST)
        return jnp.transpose(y.reshape(-1, x.shape[0], out, out), (1, 0, 2, 3))

    def dx(x, w, g):
        k, out = geometry(x, w)
        n, c, h, _ = x.shape
        if channels_last:
            cols = lax.dot_general(grad_rows(g), weights(w), (((1,), (0,)), ((), ())), HIGHEST)
            cols = jnp.moveaxis(cols.reshape(n, out, out, k * k, c), 3, 0)
            cols = jnp.transpose(cols, (0, 1, 4, 2, 3))  # (k*k, N, C, Ho, Wo)
        else:
            cols = lax.dot_general(weights(w), grad_rows(g), (((0,), (0,)), ((), ())), HIGHEST)
            cols = jnp.transpose(cols.reshape(c, k * k, n, out, out), (1, 2, 0, 3, 4))
        total = jnp.zeros(x.shape, x.dtype)
        for t, (i, j, _, _) in enumerate(_taps(k, s, out)):
            hi_i, hi_j = h - 1 - (i - p) - s * (out - 1), h - 1 - (j - p) - s * (out - 1)
            pads = [(0, 0, 0), (0, 0, 0), (i - p, hi_i, s - 1), (j - p, hi_j, s - 1)]
            total = total + lax.pad(cols[t], jnp.zeros((), x.dtype), pads)
        return total

    def dw(x, w, g):
        k = w.shape[-1]
        if channels_last:
            d = lax.dot_general(grad_rows(g), columns(x, w), (((0,), (0,)), ((), ())), HIGHEST)
            return jnp.transpose(d.reshape(w.shape[0], k, k, -1), (0, 3, 1, 2))
        d = lax.dot_general(grad_rows(g), columns(x, w), (((1,), (1,)), ((), ())), HIGHEST)
        return d.reshape(w.shape)

    return fwd, dx, dw


def eager_forms(s, p, groups):
    def fwd(x, w):
        with torch.no_grad():
            return torch.nn.functional.conv2d(x, w, stride=s, padding=p, groups=groups)

    def grads(mask):
        def f(x, w, g):
            out = torch.ops.aten.convolution_backward(g, x, w, None, *_args(s, p), groups, mask)
            return out[0] if mask[0] else out[1]

        return f

    return fwd, grads([True, False, False]), grads([False, True, False])


_last_runtime = None  # whether the last timed call was JAX's


def _timer(fn, args, is_jax):
    """A callable running ``fn`` ``reps`` times and returning the seconds per call."""
    if is_jax:
        fn = jax.jit(fn)
        jax.block_until_ready(fn(*args))
    else:
        fn(*args)

    def run(reps):
        # The other runtime's worker threads spin for a while after their last call
        # and would take the cores from this one: let them go idle first.
        global _last_runtime
        if _last_runtime != is_jax:
            time.sleep(0.25)
            _last_runtime = is_jax
        start = time.perf_counter()
        for _ in range(reps):
            out = fn(*args)
        if is_jax:
            jax.block_until_ready(out)
        return (time.perf_counter() - start) / reps

    return run


def measure(name, rounds):
    c, h, o, k, s, p, groups = KINDS[name]
    rng = np.random.default_rng(0)
    out = (h + 2 * p - k) // s + 1
    arrays = [
        rng.standard_normal(shape, np.float32)
        for shape in ((BATCH, c, h, h), (o, c // groups, k, k), (BATCH, o, out, out))
    ]
    flops = 2 * BATCH * o * out * out * (c // groups) * k * k
    systems = {"xla": xla_forms(s, p, groups), "torchtpu": torchtpu_forms(s, p, groups)}
    if groups == 1:
        systems["im2col"] = im2col_forms(s, p, channels_last=False)
        systems["nhwc"] = im2col_forms(s, p, channels_last=True)
    systems["eager"] = eager_forms(s, p, groups)
    jax_args = [jnp.asarray(a) for a in arrays]
    torch_args = [torch.from_numpy(a) for a in arrays]
    rows = []
    for d, direction in enumerate(("forward", "input grad", "weight grad")):
        timers, want = {}, None
        for system, forms in systems.items():
            is_jax = system != "eager"
            args = (jax_args if is_jax else torch_args)[: 2 if d == 0 else 3]
            timers[system] = _timer(forms[d], args, is_jax)
            got = np.asarray(forms[d](*args))
            if want is None:
                want = got
            scale = np.abs(want).max()
            if not np.allclose(got, want, rtol=1e-3, atol=1e-4 * scale):
                raise AssertionError(f"{name} {direction}: {system} disagrees with xla")
        # Enough repetitions for about 20 ms a round, from one call of the xla form.
        reps = max(2, min(200, int(0.02 / max(timers["xla"](1), 1e-6))))
        best = {system: float("inf") for system in timers}
        for _ in range(rounds):
            for system, run in timers.items():
                best[system] = min(best[system], run(reps))
        rows.append((name, direction, {sy: flops / t / 1e9 for sy, t in best.items()}, best))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--kinds", default="", help="comma-separated substrings of kind names")
    opts = parser.parse_args()
    wanted = [k for k in KINDS if not opts.kinds or any(s in k for s in opts.kinds.split(","))]
    systems = ["xla", "torchtpu", "im2col", "nhwc", "eager"]
    print(f"batch {BATCH}, fp32, {jax.devices()[0]}, torch threads {torch.get_num_threads()}")
    print(f"GFLOP/s, best of {opts.rounds} interleaved rounds; x eager = time against eager\n")
    head = " | ".join(systems)
    print(f"| kind | direction | {head} | xla x eager | torchtpu x eager |")
    print("|---|---|" + "---:|" * (len(systems) + 2))
    for name in wanted:
        for kind, direction, rate, best in measure(name, opts.rounds):
            cells = " | ".join(f"{rate[s]:.1f}" if s in rate else "-" for s in systems)
            ratios = f"{best['xla'] / best['eager']:.2f}x | {best['torchtpu'] / best['eager']:.2f}x"
            print(f"| {kind} | {direction} | {cells} | {ratios} |", flush=True)


if __name__ == "__main__":
    main()
