"""Blocked flash attention in Pallas: forward (online softmax, saving the
log-sum-exp) and backward (dq, dk, dv), causal or not, with an optional scale.

Shapes are PyTorch's: ``(batch, heads, seq, head_dim)``; key/value may have
fewer heads than the query (grouped-query attention) when the query's heads are
a multiple of theirs. float32, bfloat16 and float16 inputs are computed with
float32 accumulation; the output has the input's dtype, the log-sum-exp is
float32 ``(batch, heads, seq_q)``.

Sequence lengths need not divide the block sizes: the wrapper pads query and
key/value to whole blocks and the kernels mask the padding (padded keys get no
weight, padded query rows no gradient), then slices the results back.

Causal masking is PyTorch's ``is_causal``: query ``i`` sees keys ``j <= i``
(aligned at the top left, as ``torch.tril`` of the ``(seq_q, seq_k)`` matrix).
Blocks above the diagonal are skipped, not just masked.

The kernels are written for any Pallas backend (TPU's Mosaic needs blocks whose
sequence dims are multiples of 8, 128 for the log-sum-exp rows, and head dims
that are the whole dim); on the CPU they run in Pallas's interpret mode (see
``torchtpu.kernels.pallas.pallas_call``).
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import torch
from jax.experimental import pallas as pl

from torchtpu.kernels.pallas import KernelError, pallas_call, pallas_op

# Logits of masked entries. Finite, so a block whose entries are all masked for
# a row leaves exp(mask - max) at 1 rather than NaN; the rescaling by
# exp(m_old - m_new) wipes that out as soon as the row sees a real key.
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)

DEFAULT_BLOCK = 128


_traces = 0


def traces() -> int:
    """How many times the flash kernels were traced (forward and backward each
    count; shape inference counts too): what tests read to know the flash path ran."""
    return _traces


# --- the kernels --------------------------------------------------------------------


# Index arithmetic stays int32 (what grids and Mosaic use), even when torchtpu
# traces with 64-bit types on.
def _i32(n):
    return jnp.asarray(n, jnp.int32)


def _cdiv(a, b: int):
    return (a + (b - 1)) // b


def _scores(q, k, scale):
    # q (bq, d) @ k (bk, d)^T in float32, whatever the inputs' dtype (also dO @ V^T).
    s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return s * scale


def _valid(rows, cols, seq_q, seq_k, causal):
    """Which (row, col) of a tile are real entries: inside both sequences, and on
    or below the diagonal when causal."""
    ok = (rows < seq_q) & (cols < seq_k)
    return ok & (cols <= rows) if causal else ok


def _forward_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *, scale, causal, bq, bk, seq_q, seq_k):
    i = pl.program_id(2)
    n_kv = k_ref.shape[0] // bk
    q = q_ref[...]
    rows = i * bq + jax.lax.broadcasted_iota(jnp.int32, (bq, bk), 0)

    def step(j, carry):
        m, denom, acc = carry
        k = k_ref[pl.ds(j * bk, bk), :]
        v = v_ref[pl.ds(j * bk, bk), :]
        cols = j * bk + jax.lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
        s = jnp.where(_valid(rows, cols, seq_q, seq_k, causal), _scores(q, k, scale), _MASKED)
        m_new = jnp.maximum(m, s.max(axis=1))
        p = jnp.exp(s - m_new[:, None])
        alpha = jnp.exp(m - m_new)
        pv = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return m_new, alpha * denom + p.sum(axis=1), alpha[:, None] * acc + pv

    # Causal: key blocks wholly right of this query block's last row are skipped.
    stop = jnp.minimum(n_kv, _cdiv((i + 1) * bq, bk)) if causal else _i32(n_kv)
    init = (
        jnp.full((bq,), _MASKED, jnp.float32),
        jnp.zeros((bq,), jnp.float32),
        jnp.zeros((bq, v_ref.shape[1]), jnp.float32),
    )
    m, denom, acc = jax.lax.fori_loop(_i32(0), stop, step, init)
    o_ref[...] = (acc / denom[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(denom)


def _dkdv_kernel(
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, scale, causal, bq, bk,
    seq_q, seq_k,
):  # fmt: skip
    j = pl.program_id(2)
    n_q = q_ref.shape[0] // bq
    k, v = k_ref[...], v_ref[...]
    cols = j * bk + jax.lax.broadcasted_iota(jnp.int32, (bq, bk), 1)

    def step(i, carry):
        dk, dv = carry
        q = q_ref[pl.ds(i * bq, bq), :]
        do = do_ref[pl.ds(i * bq, bq), :]
        lse = lse_ref[pl.ds(i * bq, bq)]
        delta = delta_ref[pl.ds(i * bq, bq)]
        rows = i * bq + jax.lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
        valid = _valid(rows, cols, seq_q, seq_k, causal)
        p = jnp.where(valid, jnp.exp(_scores(q, k, scale) - lse[:, None]), 0.0)
        dv = dv + jax.lax.dot_general(
            p.astype(do.dtype), do, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
        )
        dp = jax.lax.dot_general(
            do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
        )
        ds = p * (dp - delta[:, None])
        dk = dk + jax.lax.dot_general(
            ds.astype(q.dtype), q, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
        )
        return dk, dv

    # Causal: query blocks wholly above this key block's first column see none of it.
    start = (j * bk) // bq if causal else _i32(0)
    init = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    dk, dv = jax.lax.fori_loop(start, _i32(n_q), step, init)
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *, scale, causal, bq, bk, seq_q,
    seq_k,
):  # fmt: skip
    i = pl.program_id(2)
    n_kv = k_ref.shape[0] // bk
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    rows = i * bq + jax.lax.broadcasted_iota(jnp.int32, (bq, bk), 0)

    def step(j, dq):
        k = k_ref[pl.ds(j * bk, bk), :]
        v = v_ref[pl.ds(j * bk, bk), :]
        cols = j * bk + jax.lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
        valid = _valid(rows, cols, seq_q, seq_k, causal)
        p = jnp.where(valid, jnp.exp(_scores(q, k, scale) - lse[:, None]), 0.0)
        dp = jax.lax.dot_general(
            do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
        )
        ds = p * (dp - delta[:, None])
        return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    stop = jnp.minimum(n_kv, _cdiv((i + 1) * bq, bk)) if causal else _i32(n_kv)
    dq = jax.lax.fori_loop(_i32(0), stop, step, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


# --- the JAX functions: padding, grids, block specs ------------------------------------


def _blocks(n: int, block: int) -> int:
    return -(-n // block)


def _pad_seq(x, to: int):
    extra = to - x.shape[2]
    return x if extra == 0 else jnp.pad(x, [(0, 0), (0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 3))


def _spec(block_rows: int | None, cols: int | None, index):
    """A block of ``block_rows`` (whole sequence if ``None``) by ``cols`` (no last
    dim if ``None``: the log-sum-exp rows) of one (batch, head)."""
    shape = (None, None, block_rows) if cols is None else (None, None, block_rows, cols)
    return pl.BlockSpec(shape, index)


def _repeat_heads(q, k, v):
    rep = q.shape[1] // k.shape[1]
    if rep == 1:
        return k, v
    return jnp.repeat(k, rep, axis=1), jnp.repeat(v, rep, axis=1)


def _sizes(q, k, block_q, block_k):
    bq, bk = min(block_q, q.shape[2]), min(block_k, k.shape[2])
    lq, lk = _blocks(q.shape[2], bq) * bq, _blocks(k.shape[2], bk) * bk
    return bq, bk, lq, lk


def forward(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    scale: float | None = None,
    block_q: int = DEFAULT_BLOCK,
    block_k: int = DEFAULT_BLOCK,
) -> tuple[jax.Array, jax.Array]:
    """Flash attention of JAX arrays: ``(out, lse)``, ``out`` in ``q``'s dtype and
    ``lse`` (the log-sum-exp of each query's scaled logits) in float32."""
    check(q, k, v, block_q=block_q, block_k=block_k)
    global _traces
    _traces += 1
    b, h, seq_q, d = q.shape
    seq_k, dv = k.shape[2], v.shape[3]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    k, v = _repeat_heads(q, k, v)
    bq, bk, lq, lk = _sizes(q, k, block_q, block_k)
    kernel = functools.partial(
        _forward_kernel, scale=scale, causal=causal, bq=bq, bk=bk, seq_q=seq_q, seq_k=seq_k
    )
    out, lse = pallas_call(
        kernel,
        grid=(b, h, lq // bq),
        in_specs=[
            _spec(bq, d, lambda b, h, i: (b, h, i, 0)),
            _spec(lk, d, lambda b, h, i: (b, h, 0, 0)),
            _spec(lk, dv, lambda b, h, i: (b, h, 0, 0)),
        ],
        out_specs=[
            _spec(bq, dv, lambda b, h, i: (b, h, i, 0)),
            _spec(bq, None, lambda b, h, i: (b, h, i)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, h, lq, dv), q.dtype),
            jax.ShapeDtypeStruct((b, h, lq), jnp.float32),
        ],
        name="flash_attention_forward",
    )(_pad_seq(q, lq), _pad_seq(k, lk), _pad_seq(v, lk))
    return out[:, :, :seq_q], lse[:, :, :seq_q]


def backward(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    out: jax.Array,
    lse: jax.Array,
    d_out: jax.Array,
    d_lse: jax.Array | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    block_q: int = DEFAULT_BLOCK,
    block_k: int = DEFAULT_BLOCK,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The gradients ``(dq, dk, dv)`` of :func:`forward`, from its saved ``out``
    and ``lse``, the gradient of ``out`` and (optionally) of ``lse``."""
    check(q, k, v, block_q=block_q, block_k=block_k)
    global _traces
    _traces += 1
    b, h, seq_q, d = q.shape
    hk, seq_k, dv = k.shape[1], k.shape[2], v.shape[3]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    k, v = _repeat_heads(q, k, v)
    bq, bk, lq, lk = _sizes(q, k, block_q, block_k)
    d_out = d_out.astype(q.dtype)
    # delta_i = sum_j P_ij dP_ij = dO_i . O_i; a gradient of the log-sum-exp adds
    # P_ij * d_lse_i to dS_ij, which is the same as taking it off delta.
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
    if d_lse is not None:
        delta = delta - d_lse.astype(jnp.float32)
    args = (
        _pad_seq(q, lq),
        _pad_seq(k, lk),
        _pad_seq(v, lk),
        _pad_seq(d_out, lq),
        _pad_seq(lse.astype(jnp.float32), lq),
        _pad_seq(delta, lq),
    )
    static = dict(scale=scale, causal=causal, bq=bq, bk=bk, seq_q=seq_q, seq_k=seq_k)
    whole = lambda b, h, _: (b, h, 0, 0)  # noqa: E731
    whole_rows = lambda b, h, _: (b, h, 0)  # noqa: E731
    dk, dv_ = pallas_call(
        functools.partial(_dkdv_kernel, **static),
        grid=(b, h, lk // bk),
        in_specs=[
            _spec(lq, d, whole),
            _spec(bk, d, lambda b, h, j: (b, h, j, 0)),
            _spec(bk, dv, lambda b, h, j: (b, h, j, 0)),
            _spec(lq, dv, whole),
            _spec(lq, None, whole_rows),
            _spec(lq, None, whole_rows),
        ],
        out_specs=[
            _spec(bk, d, lambda b, h, j: (b, h, j, 0)),
            _spec(bk, dv, lambda b, h, j: (b, h, j, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, h, lk, d), k.dtype),
            jax.ShapeDtypeStruct((b, h, lk, dv), v.dtype),
        ],
        name="flash_attention_dkdv",
    )(*args)
    dq = pallas_call(
        functools.partial(_dq_kernel, **static),
        grid=(b, h, lq // bq),
        in_specs=[
            _spec(bq, d, lambda b, h, i: (b, h, i, 0)),
            _spec(lk, d, whole),
            _spec(lk, dv, whole),
            _spec(bq, dv, lambda b, h, i: (b, h, i, 0)),
            _spec(bq, None, lambda b, h, i: (b, h, i)),
            _spec(bq, None, lambda b, h, i: (b, h, i)),
        ],
        out_specs=_spec(bq, d, lambda b, h, i: (b, h, i, 0)),
        out_shape=jax.ShapeDtypeStruct((b, h, lq, d), q.dtype),
        name="flash_attention_dq",
    )(*args)
    dk, dv_ = dk[:, :, :seq_k], dv_[:, :, :seq_k]
    if hk != h:  # grouped-query attention: each key/value head served h // hk query heads
        dk = dk.reshape(b, hk, h // hk, seq_k, d).sum(axis=2)
        dv_ = dv_.reshape(b, hk, h // hk, seq_k, dv).sum(axis=2)
    return dq[:, :, :seq_q], dk, dv_


# --- what the kernel takes --------------------------------------------------------------

_FLOATS = {jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)}


def _describe(x) -> str:
    return f"{list(x.shape)}:{jnp.dtype(x.dtype) if not isinstance(x, torch.Tensor) else x.dtype}"


def unsupported(
    q, k, v, *, block_q: int = DEFAULT_BLOCK, block_k: int = DEFAULT_BLOCK
) -> str | None:
    """Why the flash kernel cannot take these arguments (JAX arrays, torch or fake
    tensors), or ``None`` if it can."""
    if not (q.ndim == k.ndim == v.ndim == 4):
        return "it takes 4-d (batch, heads, seq, head_dim) query, key and value"
    (b, h, _, d), (bk_, hk, seq_k, dk), (bv, hv, seq_v, _) = q.shape, k.shape, v.shape
    if not (b == bk_ == bv and hk == hv and seq_k == seq_v and d == dk):
        return (
            "query, key and value must agree on batch, key and value on heads and sequence "
            "length, query and key on head_dim"
        )
    if hk == 0 or h % hk:
        return f"the query's {h} heads are not a multiple of the key/value's {hk}"
    dtypes = {str(t.dtype).removeprefix("torch.") for t in (q, k, v)}
    if len(dtypes) != 1 or not dtypes <= {"float32", "bfloat16", "float16"}:
        return "query, key and value must share one dtype: float32, bfloat16 or float16"
    if min(q.shape[2], seq_k) == 0:
        return "an empty sequence"
    if block_q <= 0 or block_k <= 0:
        return f"block sizes must be positive (block_q={block_q}, block_k={block_k})"
    return None


def check(q, k, v, *, block_q: int = DEFAULT_BLOCK, block_k: int = DEFAULT_BLOCK) -> None:
    """Raise :class:`KernelError` naming the shapes if the kernel cannot take them."""
    reason = unsupported(q, k, v, block_q=block_q, block_k=block_k)
    if reason is not None:
        raise KernelError(
            f"torchtpu.flash_attention(query={_describe(q)}, key={_describe(k)}, "
            f"value={_describe(v)}, block_q={block_q}, block_k={block_k}): {reason}. "
            "What to do: pass (batch, heads, seq, head_dim) tensors of one floating dtype, "
            "or use torch.nn.functional.scaled_dot_product_attention, which takes any shape."
        )


# --- the torch op ----------------------------------------------------------------------


op = pallas_op("torchtpu::flash_attention", forward=forward, backward=backward)


def flash_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    block_q: int = DEFAULT_BLOCK,
    block_k: int = DEFAULT_BLOCK,
) -> torch.Tensor:
    """Softmax attention of ``(batch, heads, seq, head_dim)`` tensors with the
    Pallas flash kernel; differentiable, and the same op on CPU tensors, on tpu
    tensors and inside ``torch.compile(backend="tpu")`` / ``compile_step``.

    Example::

        import torch
        from torchtpu.kernels.flash_attention import flash_attention
        q = k = v = torch.randn(1, 2, 64, 16)
        out = flash_attention(q, k, v, causal=True, block_q=32, block_k=32)
    """
    out, _ = op(query, key, value, causal=causal, scale=scale, block_q=block_q, block_k=block_k)
    return out


# --- scaled_dot_product_attention with TORCHTPU_FLASH=1 ---------------------------------


def enabled() -> bool:
    """Whether ``TORCHTPU_FLASH=1``: SDPA's lowerings use this kernel where it
    applies. Read when a program is traced, so a change takes effect for programs
    built after it (``torchtpu.clear_program_cache()`` drops the built ones)."""
    return os.environ.get("TORCHTPU_FLASH", "").strip().lower() in {"1", "true", "yes", "on"}


def sdpa_takes(q, k, v, attn_mask) -> bool:
    """Whether SDPA's flash lowering should run this call with the kernel."""
    return enabled() and attn_mask is None and unsupported(q, k, v) is None
