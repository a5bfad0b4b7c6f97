"""Triton kernels shared by the translator's tests, written fresh in the tutorials' style,
each with a plain-torch reference.

Kernels (``M`` rows of ``N`` features, row stride ``stride``; every tensor contiguous):

- ``layernorm_fwd_kernel(X, Y, W, B, Mean, Rstd, stride, N, eps, BLOCK_N)``, grid ``(M,)``:
  one program per row, looping over the row in ``BLOCK_N`` chunks; writes ``Y`` (M, N),
  ``Mean`` and ``Rstd`` (M,) float32.
- ``layernorm_bwd_dx_kernel(X, DY, DX, W, Mean, Rstd, stride, N, BLOCK_N)``, grid ``(M,)``:
  one program per row, the whole row in one block (``N <= BLOCK_N``); writes ``DX``.
- ``layernorm_bwd_dwdb_kernel(X, DY, Mean, Rstd, DW, DB, M, N, stride, BLOCK_M, BLOCK_N)``,
  grid ``(cdiv(N, BLOCK_N),)``: each program owns ``BLOCK_N`` columns, sums ``dy * xhat`` and
  ``dy`` over ``BLOCK_M``-row blocks into a partial (BLOCK_M, BLOCK_N) sum, then reduces it
  over rows: no locks, no atomics.
- ``dropout_kernel(X, OUT, n, p, seed, BLOCK)``, grid ``(cdiv(n, BLOCK),)``: keeps ``x / (1 - p)``
  where ``tl.rand(seed, offset) > p``, else 0.

References: ``layernorm_fwd_ref``, ``layernorm_bwd_ref``, ``dropout_ref`` (given the keep mask,
since PyTorch's generator is not Philox; ``philox_rand_ref`` computes ``tl.rand`` in NumPy).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl


@triton.jit
def layernorm_fwd_kernel(X, Y, W, B, Mean, Rstd, stride, N, eps, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    X += row * stride
    Y += row * stride
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        acc += tl.load(X + cols, mask=cols < N, other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=0) / N
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        x = tl.load(X + cols, mask=cols < N, other=0.0).to(tl.float32)
        d = tl.where(cols < N, x - mean, 0.0)
        acc += d * d
    rstd = 1 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        ok = cols < N
        x = tl.load(X + cols, mask=ok, other=0.0).to(tl.float32)
        w = tl.load(W + cols, mask=ok)
        b = tl.load(B + cols, mask=ok)
        tl.store(Y + cols, (x - mean) * rstd * w + b, mask=ok)


@triton.jit
def layernorm_bwd_dx_kernel(X, DY, DX, W, Mean, Rstd, stride, N, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    ok = cols < N
    x = tl.load(X + row * stride + cols, mask=ok, other=0.0).to(tl.float32)
    dy = tl.load(DY + row * stride + cols, mask=ok, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    mean = tl.load(Mean + row)
    rstd = tl.load(Rstd + row)
    xhat = tl.where(ok, (x - mean) * rstd, 0.0)
    wdy = w * dy
    c1 = tl.sum(xhat * wdy, axis=0) / N
    c2 = tl.sum(wdy, axis=0) / N
    dx = (wdy - (xhat * c1 + c2)) * rstd
    tl.store(DX + row * stride + cols, dx, mask=ok)


@triton.jit
def layernorm_bwd_dwdb_kernel(
    X, DY, Mean, Rstd, DW, DB, M, N, stride, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr
):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dw = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start in range(0, M, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        ok = (rows[:, None] < M) & (cols[None, :] < N)
        at = rows[:, None] * stride + cols[None, :]
        x = tl.load(X + at, mask=ok, other=0.0).to(tl.float32)
        dy = tl.load(DY + at, mask=ok, other=0.0).to(tl.float32)
        mean = tl.load(Mean + rows, mask=rows < M, other=0.0)
        rstd = tl.load(Rstd + rows, mask=rows < M, other=0.0)
        xhat = (x - mean[:, None]) * rstd[:, None]
        dw += tl.where(ok, dy * xhat, 0.0)
        db += dy
    tl.store(DW + cols, tl.sum(dw, axis=0), mask=cols < N)
    tl.store(DB + cols, tl.sum(db, axis=0), mask=cols < N)


@triton.jit
def dropout_kernel(X, OUT, n, p, seed, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    x = tl.load(X + offs, mask=ok, other=0.0)
    keep = tl.rand(seed, offs) > p
    tl.store(OUT + offs, tl.where(keep, x / (1 - p), 0.0), mask=ok)


def layernorm_fwd_ref(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, mean, rstd)`` of a layer norm over the last dimension, statistics in float32."""
    xf = x.float()
    mean = xf.mean(-1)
    rstd = torch.rsqrt(xf.var(-1, unbiased=False) + eps)
    y = torch.nn.functional.layer_norm(xf, (x.shape[-1],), w.float(), b.float(), eps)
    return y.to(x.dtype), mean, rstd


def layernorm_bwd_ref(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float, dy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dw, db)`` of ``layer_norm(x, w, b, eps)`` for the output gradient ``dy``."""
    xs, ws, bs = (t.detach().float().requires_grad_() for t in (x, w, b))
    y = torch.nn.functional.layer_norm(xs, (x.shape[-1],), ws, bs, eps)
    dx, dw, db = torch.autograd.grad(y, (xs, ws, bs), dy.float())
    return dx, dw, db


def dropout_ref(x: torch.Tensor, p: float, keep: torch.Tensor) -> torch.Tensor:
    """Dropout of ``x`` with the given keep mask (``dropout_kernel`` draws it by Philox); the
    kernel's ``p`` is a float32 scalar, so ``1 - p`` is taken in float32 here too."""
    scale = 1 - torch.tensor(p, dtype=torch.float32)
    return torch.where(keep, x / scale, torch.zeros((), dtype=x.dtype))


def philox_rand_ref(seed: int, offsets: np.ndarray) -> np.ndarray:
    """``tl.rand(seed, offsets)`` for int32 offsets, from the Philox-4x32-10 definition
    (Salmon et al., SC'11): counter ``(offset, 0, 0, 0)``, key ``(seed lo, seed hi)``, the first
    output word scaled into [0, 1) as Triton's ``uint_to_uniform_float`` does."""
    mask = np.uint64(0xFFFFFFFF)
    c = [offsets.astype(np.uint32).astype(np.uint64)] + [np.zeros_like(offsets, np.uint64)] * 3
    k0 = np.uint64(seed & 0xFFFFFFFF)
    k1 = np.uint64((seed >> 32) & 0xFFFFFFFF)
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [
            ((p1 >> np.uint64(32)) ^ c[1] ^ k0) & mask,
            p1 & mask,
            ((p0 >> np.uint64(32)) ^ c[3] ^ k1) & mask,
            p0 & mask,
        ]
        k0 = (k0 + np.uint64(0x9E3779B9)) & mask
        k1 = (k1 + np.uint64(0xBB67AE85)) & mask
    x = c[0].astype(np.uint32).view(np.int32)
    x = np.where(x < 0, -x - 1, x)  # uint_to_uniform_float: a non-negative int31
    return (x.astype(np.float32) * np.float32(4.6566127342e-10)).astype(np.float32)


# Vector add, row softmax, grouped matmul and histogram (moved from test_triton.py):
# - ``add_kernel(x, y, out, n, BLOCK)``, grid ``(cdiv(n, BLOCK),)``: ``out = x + y``.
# - ``softmax_kernel(out, in, in_row, in_col, out_row, n_cols, BLOCK)``, grid ``(rows,)``: one
#   program per row of a strided input (``other=-inf`` past the row), ``BLOCK >= n_cols``.
# - ``matmul_kernel(a, b, c, M, N, K, strides..., BM, BN, BK, GROUP)``, grid
#   ``(cdiv(M, BM) * cdiv(N, BN),)``: grouped program ids, fp16 inputs, fp32 accumulator.
# - ``histogram_kernel(x, out, n, BLOCK)``, grid ``(cdiv(n, BLOCK),)``: ``out[x[i]] += 1`` by
#   ``tl.atomic_add``.


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=m) + tl.load(y_ptr + offs, mask=m), mask=m)


@triton.jit
def softmax_kernel(out_ptr, in_ptr, in_row, in_col, out_row, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    x = tl.load(in_ptr + row * in_row + cols * in_col, mask=ok, other=-float("inf"))
    e = tl.exp(x - tl.max(x, axis=0))
    tl.store(out_ptr + row * out_row + cols, e / tl.sum(e, axis=0), mask=ok)


@triton.jit
def matmul_kernel(
    a,
    b,
    c,
    M,
    N,
    K,
    sam,
    sak,
    sbk,
    sbn,
    scm,
    scn,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    GROUP: tl.constexpr,
):
    pid = tl.program_id(0)
    per_group = GROUP * tl.cdiv(N, BN)
    first = (pid // per_group) * GROUP
    size = tl.minimum(tl.cdiv(M, BM) - first, GROUP)
    pm = first + (pid % per_group) % size
    pn = (pid % per_group) // size
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BK)):
        rk = k * BK + tl.arange(0, BK)
        x = tl.load(
            a + rm[:, None] * sam + rk[None, :] * sak,
            mask=(rm[:, None] < M) & (rk[None, :] < K),
            other=0.0,
        )
        y = tl.load(
            b + rk[:, None] * sbk + rn[None, :] * sbn,
            mask=(rk[:, None] < K) & (rn[None, :] < N),
            other=0.0,
        )
        acc += tl.dot(x, y)
    tl.store(
        c + rm[:, None] * scm + rn[None, :] * scn,
        acc.to(tl.float16),
        mask=(rm[:, None] < M) & (rn[None, :] < N),
    )


@triton.jit
def histogram_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x_ptr + offs, mask=offs < n, other=0)
    tl.atomic_add(out_ptr + v, 1, mask=offs < n)
