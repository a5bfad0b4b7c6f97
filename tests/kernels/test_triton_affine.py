"""Affine tile accesses (issue 15): loads and stores whose offsets are affine in the program
id and the block's indices are slices and reshapes of the flat buffer, and a ``tl.dot``
K-loop over affine tiles is one ``dot_general``. Results are checked against the references
(masked edges, strided views, a kernel that is not affine), and the lowered programs of the
tutorial kernels are checked to hold no gather or scatter, so that removing the fast path
fails here."""

from __future__ import annotations

import os
import re
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from torchtpu.kernels.triton import affine  # noqa: E402
from torchtpu.kernels.triton.launch import Buffer, launch_cpu, lower  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import triton_kernels as tk  # noqa: E402

_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.int32: tl.int32}


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def _buffer(t: torch.Tensor) -> Buffer:
    """A tensor's storage as the translator's flat buffer (views keep their offset)."""
    flat = (
        t.detach()
        .new_empty(0)
        .set_(t.untyped_storage(), 0, (t.untyped_storage().nbytes() // t.element_size(),))
    )
    return Buffer(jnp.asarray(flat.numpy()), t.storage_offset(), _TL[t.dtype])


def _ops(fn, grid, **args) -> dict[str, int]:
    """How many gathers, scatters and dot_generals the launch's lowered program holds."""
    args = {k: _buffer(v) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    text = lower(fn, grid, args).as_text()
    return {
        op: len(re.findall(rf"(?<!#)stablehlo\.{op}\b", text))
        for op in ("gather", "scatter", "dot_general")
    }


# ----------------------------------------------------------------------------- lowered programs


def _add_case():
    n = 1000
    x, y, out = torch.randn(n), torch.randn(n), torch.empty(n)
    return (
        tk.add_kernel,
        (triton.cdiv(n, 128),),
        dict(x_ptr=x, y_ptr=y, out_ptr=out, n=n, BLOCK=128),
    )


def _softmax_case(transposed: bool):
    x = torch.randn(100, 37).t() if transposed else torch.randn(37, 100)
    out = torch.empty(37, 100)
    args = dict(out_ptr=out, in_ptr=x, in_row=x.stride(0), in_col=x.stride(1))
    return tk.softmax_kernel, (37,), dict(args, out_row=100, n_cols=100, BLOCK=128)


def _layernorm_case():
    M, N = 13, 100
    x, y = torch.randn(M, N), torch.empty(M, N)
    w, b, mean, rstd = torch.randn(N), torch.randn(N), torch.empty(M), torch.empty(M)
    args = dict(X=x, Y=y, W=w, B=b, Mean=mean, Rstd=rstd, stride=N, N=N, eps=1e-5, BLOCK_N=32)
    return tk.layernorm_fwd_kernel, (M,), args


def _matmul_case(M=128, N=64, K=96, BM=32, BN=16, BK=32, GROUP=2):
    a, b = torch.randn(M, K).half(), torch.randn(K, N).half()
    c = torch.empty(M, N, dtype=torch.float16)
    strides = dict(sam=K, sak=1, sbk=N, sbn=1, scm=N, scn=1)
    args = dict(a=a, b=b, c=c, M=M, N=N, K=K, **strides, BM=BM, BN=BN, BK=BK, GROUP=GROUP)
    return tk.matmul_kernel, (triton.cdiv(M, BM) * triton.cdiv(N, BN),), args


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(_add_case, id="add"),
        pytest.param(lambda: _softmax_case(False), id="softmax"),
        pytest.param(lambda: _softmax_case(True), id="softmax-transposed"),
        pytest.param(_layernorm_case, id="layernorm"),
        pytest.param(_matmul_case, id="matmul"),
    ],
)
def test_affine_kernels_lower_to_slices(case):
    fn, grid, args = case()
    ops = _ops(fn, grid, **args)
    assert ops["gather"] == 0 and ops["scatter"] == 0, ops


@pytest.mark.parametrize("size", [128, 100])  # 100: edge tiles masked, rows padded
def test_matmul_k_loop_is_one_dot_general(size):
    fn, grid, args = _matmul_case(M=size, N=size, K=2 * size, BM=32, BN=32, BK=32, GROUP=2)
    assert _ops(fn, grid, **args) == {"gather": 0, "scatter": 0, "dot_general": 1}


def test_grouped_matmul_with_a_partial_last_group_is_one_dot_general_per_run():
    fn, grid, args = _matmul_case(M=96, N=64, K=64, BM=32, BN=32, BK=32, GROUP=2)  # groups 2, 1
    assert _ops(fn, grid, **args) == {"gather": 0, "scatter": 0, "dot_general": 2}


def test_indirect_loads_and_atomics_keep_the_gather_path():
    x = torch.randint(0, 10, (333,), dtype=torch.int32)
    out = torch.zeros(10, dtype=torch.int32)
    ops = _ops(tk.histogram_kernel, (6,), x_ptr=x, out_ptr=out, n=333, BLOCK=64)
    assert ops["gather"] == 0 and ops["scatter"] == 1  # the load is affine, the atomic is not
    src, idx, dst = torch.randn(50), torch.randint(0, 50, (64,), dtype=torch.int32), torch.empty(64)
    ops = _ops(gather_kernel, (2,), src=src, idx=idx, dst=dst, BLOCK=32)
    assert ops["gather"] == 1 and ops["scatter"] == 0


# ----------------------------------------------------------------------------- results


@triton.jit
def gather_kernel(src, idx, dst, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + offs, tl.load(src + tl.load(idx + offs)))


@triton.jit
def copy_2d_kernel(X, Y, M, N, sxm, sxn, sym, syn, BM: tl.constexpr, BN: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    ok = (rm[:, None] < M) & (rn[None, :] < N)
    x = tl.load(X + rm[:, None] * sxm + rn[None, :] * sxn, mask=ok, other=-1.0)
    tl.store(Y + rm[:, None] * sym + rn[None, :] * syn, x * 2, mask=ok)


@triton.jit
def all_to_one_kernel(X, OUT, BLOCK: tl.constexpr):
    x = tl.load(X + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK))
    tl.store(OUT + tl.arange(0, BLOCK), x)  # every program, the same addresses


@triton.jit
def conv1d_kernel(X, W, Y, n, K: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    taps = tl.arange(0, K)
    at = offs[:, None] + taps[None, :]  # windows that overlap: x[i + j]
    x = tl.load(X + at, mask=at < n, other=0.0)
    w = tl.load(W + taps)
    tl.store(Y + offs, tl.sum(x * w[None, :], axis=1), mask=offs < n - K + 1)


def test_sliding_windows_are_shifted_slices():
    n, k = 300, 4
    x, w, y = torch.randn(n), torch.randn(k), torch.zeros(n)
    grid = (triton.cdiv(n, 32),)
    launch_cpu(conv1d_kernel, grid, x, w, y, n, K=k, BLOCK=32)
    want = torch.nn.functional.conv1d(x[None, None], w[None, None])[0, 0]
    torch.testing.assert_close(y[: n - k + 1], want, atol=1e-5, rtol=1e-5)
    assert (y[n - k + 1 :] == 0).all()
    ops = _ops(conv1d_kernel, grid, X=x, W=w, Y=y, n=n, K=k, BLOCK=32)
    assert ops["gather"] == 0 and ops["scatter"] == 0, ops


def test_add_masked_tail():
    n = 1001
    x, y, out = torch.randn(n), torch.randn(n), torch.empty(n)
    launch_cpu(tk.add_kernel, (triton.cdiv(n, 128),), x, y, out, n, BLOCK=128)
    torch.testing.assert_close(out, x + y, rtol=0, atol=0)


@pytest.mark.parametrize("transposed", [False, True])
def test_softmax_rows_not_a_power_of_two(transposed):
    x = torch.randn(100, 37).t() if transposed else torch.randn(37, 100)
    out = torch.empty(37, 100)
    launch_cpu(tk.softmax_kernel, (37,), out, x, x.stride(0), x.stride(1), 100, 100, BLOCK=128)
    torch.testing.assert_close(out, x.softmax(-1))


def test_layernorm_chunks_with_masked_tail():
    M, N, eps = 13, 100, 1e-5
    x, w, b = torch.randn(M, N), torch.randn(N), torch.randn(N)
    y, mean, rstd = torch.empty_like(x), torch.empty(M), torch.empty(M)
    launch_cpu(tk.layernorm_fwd_kernel, (M,), x, y, w, b, mean, rstd, N, N, eps, BLOCK_N=32)
    y_ref, mean_ref, rstd_ref = tk.layernorm_fwd_ref(x, w, b, eps)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mean, mean_ref)
    torch.testing.assert_close(rstd, rstd_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "M,N,K,BM,BN,BK,GROUP",
    [(128, 128, 256, 32, 32, 32, 2), (70, 50, 90, 32, 16, 32, 2), (64, 96, 64, 16, 32, 16, 3)],
)
@pytest.mark.parametrize("b_transposed", [False, True])
def test_matmul(M, N, K, BM, BN, BK, GROUP, b_transposed):
    a = torch.randn(M, K).half()
    b = torch.randn(N, K).half().t() if b_transposed else torch.randn(K, N).half()
    c = torch.empty(M, N, dtype=torch.float16)
    grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
    strides = (*a.stride(), *b.stride(), *c.stride())
    launch_cpu(tk.matmul_kernel, grid, a, b, c, M, N, K, *strides, BM=BM, BN=BN, BK=BK, GROUP=GROUP)
    torch.testing.assert_close(c, (a.float() @ b.float()).half(), atol=2e-2, rtol=2e-3)


@pytest.mark.parametrize("x_transposed", [False, True])
def test_2d_tiles_with_masked_edges_and_strided_views(x_transposed):
    M, N = 37, 24  # rows end mid-tile (masked); transposed, tiles run past a column's end
    x = torch.randn(N, M).t() if x_transposed else torch.randn(M, N)
    y = torch.full((M, 2 * N), 7.0)[:, ::2]  # a strided output view: odd columns kept
    grid = (triton.cdiv(M, 16), triton.cdiv(N, 8))
    args = (x, y, M, N, *x.stride(), *y.stride())
    launch_cpu(copy_2d_kernel, grid, *args, BM=16, BN=8)
    torch.testing.assert_close(y, x * 2)
    assert (y._base[:, 1::2] == 7.0).all()  # lanes between the view's are left alone
    names = ("X", "Y", "M", "N", "sxm", "sxn", "sym", "syn")
    ops = _ops(copy_2d_kernel, grid, **dict(zip(names, args, strict=True)), BM=16, BN=8)
    assert ops["scatter"] == 0 and ops["gather"] == 0, ops


def test_non_affine_kernel_through_the_gather_path():
    src, idx, dst = torch.randn(50), torch.randint(0, 50, (64,), dtype=torch.int32), torch.empty(64)
    launch_cpu(gather_kernel, (2,), src, idx, dst, BLOCK=32)
    torch.testing.assert_close(dst, src[idx.long()])


@triton.jit
def wrapping_offsets_kernel(X, Y, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offs, tl.load(X + (offs * 65536 * 65536 + offs)))  # int32: wraps to offs


def test_offsets_that_wrap_are_gathered_as_they_wrap():
    x, y = torch.randn(64), torch.zeros(64)
    launch_cpu(wrapping_offsets_kernel, (2,), x, y, BLOCK=32)
    torch.testing.assert_close(y, x, rtol=0, atol=0)


def test_programs_storing_to_the_same_addresses_keep_one_value():
    x, out = torch.randn(4 * 16), torch.zeros(16)
    launch_cpu(all_to_one_kernel, (4,), x, out, BLOCK=16)
    assert any(torch.equal(out, row) for row in x.reshape(4, 16))


# ----------------------------------------------------------------------------- the layout engine


def _offsets(base, coef, shape) -> np.ndarray:
    off = np.asarray(base, np.int64).reshape((-1,) + (1,) * len(shape))
    for j, (c, s) in enumerate(zip(coef, shape, strict=True)):
        axis = [1] * len(shape)
        axis[j] = s
        off = off + c * np.arange(s).reshape(axis)
    return off if np.ndim(base) else off[0]


LAYOUTS = {  # name: (base (one per program, or one), coef, block shape, buffer size)
    "rows": (np.arange(6) * 10 - 4, (1,), (8,), 50),
    "tiles": (5, (3, 1), (4, 3), 40),
    "columns": (np.arange(5), (7, 0), (7, 1), 50),
    "transposed": (np.arange(4) * 2, (1, 8), (2, 5), 45),
    "grouped": ((np.arange(8) // 4 * 2 + np.arange(8) % 2) * 16, (4, 1), (4, 4), 64),
    "mixed-radix": (
        np.arange(8) // 4 * 100 + np.arange(8) // 2 % 2 * 16 + np.arange(8) % 2 * 50,
        (4, 1),
        (4, 4),
        190,
    ),  # fmt: skip
    "broadcast": (np.arange(3) * 4, (0, 1), (2, 4), 12),
    "overlapping": (np.arange(4) * 4, (1,), (8,), 24),  # windows: x[4p : 4p + 8]
    "sliding": (np.arange(3) * 4, (1, 1), (4, 3), 20),  # a 1-D convolution's x[i + j]
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layouts_equal_gathers_and_scatters(name):
    base, coef, shape, size = LAYOUTS[name]
    aff = affine.Affine.make(base, coef)
    layout = affine.plan(aff, shape, tuple((0, s) for s in shape), size)
    assert layout is not None
    buf = np.arange(size, dtype=np.float32) + 1
    off = _offsets(base, coef, shape)
    inside = (off >= 0) & (off < size)
    got = np.asarray(affine._pad_box(affine._forward(jnp.asarray(buf), layout.steps), layout))
    want = np.where(inside, buf[np.clip(off, 0, size - 1)], 0)
    np.testing.assert_array_equal(np.where(inside, got, 0), want)
    # a stride-0 axis, or rows that overlap: lanes share addresses, so stores scatter
    assert layout.distinct == (name not in ("broadcast", "grouped", "overlapping", "sliding"))
    if layout.distinct:
        vals = -np.arange(off.size, dtype=np.float32).reshape(off.shape) - 1
        mask = (np.arange(off.size) % 3 != 0).reshape(off.shape)
        new = affine.store(jnp.asarray(buf), layout, jnp.asarray(vals), jnp.asarray(mask))
        want = buf.copy()
        keep = mask & inside
        want[off[keep]] = vals[keep]
        np.testing.assert_array_equal(np.asarray(new), want)


def test_grouped_program_ids_split_into_a_grid():
    base = (np.arange(8) // 4 * 2 + np.arange(8) % 2) * 16
    layout = affine.plan(affine.Affine.make(base, (4, 1)), (4, 4), ((0, 4), (0, 4)), 64)
    assert layout.grid == (2, 2, 2)


def test_bounds_masks_known_for_every_program_are_static():
    offs = affine.Affine.make(np.arange(4) * 128, (1,))
    assert affine.compare("less", offs, affine.Affine.make(512, ()), (128,)) is True
    assert affine.compare("less", offs, affine.Affine.make(500, ()), (128,)) is None
    assert affine.compare("greater_equal", offs, affine.Affine.make(600, ()), (128,)) is False


def test_rows_are_padded_only_where_the_mask_drops_the_lanes_past_them():
    # 3 programs of 5 x 8 tiles over rows of 20 columns: the last tile runs 4 lanes past
    # each row's end, into the next row, unless the mask `col < 20` drops them.
    base, coef, shape, size = np.arange(3) * 8, (20, 1), (5, 8), 100
    aff = affine.Affine.make(base, coef)
    box = ((0, 5), (0, 8))
    assert not affine.plan(aff, shape, box, size).distinct  # windows: loads only
    cols = affine.Affine.make(np.arange(3) * 8 - 20, (0, 1))  # col - 20 < 0
    layout = affine.plan(aff, shape, box, size, ((cols, "less"),))
    assert layout is not None and layout.distinct
    off = _offsets(base, coef, shape)
    keep = _offsets(np.arange(3) * 8, (0, 1), shape) < 20
    buf = np.arange(size, dtype=np.float32) + 1
    got = np.asarray(affine._forward(jnp.asarray(buf), layout.steps))
    np.testing.assert_array_equal(got[keep], buf[off[keep]])
    vals = -np.arange(off.size, dtype=np.float32).reshape(off.shape) - 1
    new = affine.store(jnp.asarray(buf), layout, jnp.asarray(vals), jnp.asarray(keep))
    want = buf.copy()
    want[off[keep]] = vals[keep]
    np.testing.assert_array_equal(np.asarray(new), want)


def _grid_base(rng: np.random.Generator, n: int) -> np.ndarray:
    """One base per program: affine in a random row-major split of ``n``, sometimes with a
    partial last run (as a grouped matmul's last group)."""
    split = [d for d in range(1, n + 1) if n % d == 0]
    inner = int(rng.choice(split))
    outer, lane = np.arange(n) // inner, np.arange(n) % inner
    base = (
        outer * int(rng.integers(0, 40)) + lane * int(rng.integers(0, 9)) + int(rng.integers(-5, 5))
    )
    if rng.random() < 0.3 and n > 2:  # a second run with other strides
        cut = int(rng.integers(1, n))
        base[cut:] = np.arange(n - cut) * int(rng.integers(1, 9)) + int(rng.integers(0, 50))
    return base


@pytest.mark.parametrize("seed", range(2))
def test_random_layouts_equal_gathers_and_scatters(seed):
    rng = np.random.default_rng(seed)
    checked = 0
    for _ in range(14):
        n = int(rng.integers(1, 9))
        shape = tuple(int(s) for s in rng.integers(1, 6, size=int(rng.integers(1, 3))))
        coef = tuple(int(c) for c in rng.integers(0, 9, size=len(shape)))
        base = _grid_base(rng, n) if rng.random() < 0.8 else int(rng.integers(0, 9))
        size = int(rng.integers(20, 120))
        off = _offsets(base, coef, shape)
        terms, live = (), np.ones(off.shape, bool)
        if rng.random() < 0.5:  # a bound on the last axis: `col < limit`
            col = _grid_base(rng, n) if np.ndim(base) else int(rng.integers(0, 4))
            tcoef = (0,) * (len(shape) - 1) + (1,)
            limit = int(rng.integers(1, 8))
            terms = ((affine.Affine.make(np.asarray(col) - limit, tcoef), "less"),)
            live = _offsets(np.asarray(col) - limit, tcoef, shape) < 0
        aff = affine.Affine.make(base, coef)
        layout = affine.plan(aff, shape, tuple((0, s) for s in shape), size, terms)
        if layout is None:
            continue
        checked += 1
        inside = (off >= 0) & (off < size)
        keep = np.broadcast_to(live, off.shape) & inside
        buf = np.arange(size, dtype=np.float32) + 1
        got = np.asarray(affine._blocks(jnp.asarray(buf), layout, 0))
        np.testing.assert_array_equal(np.broadcast_to(got, off.shape)[keep], buf[off[keep]])
        if layout.distinct and (layout.per_program or n == 1):
            if not layout.per_program and np.ndim(base):  # one program: no program axis
                off, keep = off[0], keep[0]
            vals = -np.arange(off.size, dtype=np.float32).reshape(off.shape) - 1
            mask = keep & (rng.random(off.shape) < 0.7)
            if not layout.pieces:  # runs may share addresses (the later one is stored last)
                assert len(set(off[mask].tolist())) == mask.sum()  # no shared address
            new = affine.store(jnp.asarray(buf), layout, jnp.asarray(vals), jnp.asarray(mask))
            want = buf.copy()
            want[off[mask]] = vals[mask]
            np.testing.assert_array_equal(np.asarray(new), want)
    assert checked > 5
