"""The Triton translator's language coverage (issue 15): Philox random numbers, reductions and
scans, control flow over traced values, sequential mode, errors, and the builder's coverage of
Triton's interpreter builder. Random and integer kernels are compared bit for bit with Triton's
own interpreter (``TRITON_INTERPRET=1``, run once in a subprocess for the whole module)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from torchtpu.kernels.triton.builder import UNSUPPORTED, JaxBuilder  # noqa: E402
from torchtpu.kernels.triton.errors import TritonTranslationError  # noqa: E402
from torchtpu.kernels.triton.launch import launch_cpu  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import triton_kernels as tk  # noqa: E402
from triton.language.extra import libdevice  # noqa: E402

# ----------------------------------------------------------------------------- kernels


@triton.jit
def rng_kernel(U, G, RI, R4, seed, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    tl.store(U + offs, tl.rand(seed, offs), mask=ok)
    tl.store(G + offs, tl.randn(seed, offs), mask=ok)
    tl.store(RI + offs, tl.randint(seed, offs), mask=ok)
    a, b, c, d = tl.randint4x(seed + 1, offs)
    tl.store(R4 + offs * 4 + 0, a, mask=ok)
    tl.store(R4 + offs * 4 + 1, b, mask=ok)
    tl.store(R4 + offs * 4 + 2, c, mask=ok)
    tl.store(R4 + offs * 4 + 3, d, mask=ok)


@triton.jit
def argminmax_kernel(X, AMAX, AMIN, N, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    x = tl.load(X + row * N + cols, mask=cols < N, other=-1000)
    tl.store(AMAX + row, tl.argmax(x, axis=0))
    x = tl.load(X + row * N + cols, mask=cols < N, other=1000)
    tl.store(AMIN + row, tl.argmin(x, axis=0))


@triton.jit
def _affine(a1, b1, a2, b2):  # x -> a*x + b, composed: first (a1, b1) then (a2, b2)
    return a1 * a2, b1 * a2 + b2


@triton.jit
def scan_kernel(X, CS, CP, RA, RB, RED, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    x = tl.load(X + row * BLOCK + cols)
    tl.store(CS + row * BLOCK + cols, tl.cumsum(x, axis=0))
    tl.store(CP + row * BLOCK + cols, tl.cumprod(x % 3 + 1, axis=0, reverse=True))
    a, b = tl.associative_scan((x % 5 - 2, x), axis=0, combine_fn=_affine)
    tl.store(RA + row * BLOCK + cols, a)
    tl.store(RB + row * BLOCK + cols, b)
    ra, rb = tl.reduce((x % 5 - 2, x), 0, _affine)  # order matters: not commutative
    tl.store(RED + row, ra * 7 + rb)


@triton.jit
def trans_kernel(X, T, P, M: tl.constexpr, N: tl.constexpr):
    rm = tl.arange(0, M)
    rn = tl.arange(0, N)
    x = tl.load(X + rm[:, None] * N + rn[None, :])
    tl.debug_barrier()
    tl.store(T + rn[:, None] * M + rm[None, :], tl.trans(x))
    y = tl.reshape(x, (M, N // 2, 2))
    z = tl.permute(y, (2, 0, 1))  # (2, M, N // 2)
    r2 = tl.arange(0, 2)
    rh = tl.arange(0, N // 2)
    at = r2[:, None, None] * (M * (N // 2)) + rm[None, :, None] * (N // 2) + rh[None, None, :]
    tl.store(P + at, z)


@triton.jit
def pid_loop_kernel(X, OUT, LENS, N, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, pid + 1):  # a trip count from the program id
        acc += tl.load(X + i * N + cols, mask=cols < N, other=0.0)
    n = tl.load(LENS + pid)  # a trip count from loaded data
    k = 0
    for j in tl.range(0, n, 2):
        acc += 1.0
        k += j
    if pid % 2 == 0 and k > 0:  # a branch on traced scalars
        acc = -acc
    else:
        acc = acc * 2
    tl.store(OUT + pid * N + cols, acc + k, mask=cols < N)


@triton.jit
def early_exit_kernel(X, OUT, n_rows, N, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    if row >= n_rows:
        return
    cols = tl.arange(0, BLOCK)
    x = tl.load(X + row * N + cols, mask=cols < N)
    tl.store(OUT + row * N + cols, x + 1, mask=cols < N)


@triton.jit
def collatz_kernel(X, STEPS):
    pid = tl.program_id(0)
    x = tl.load(X + pid)
    steps = 0
    while x != 1:
        x = tl.where(x % 2 == 0, x // 2, 3 * x + 1)
        steps += 1
    tl.store(STEPS + pid, steps)


@triton.jit
def reverse_via_scratch_kernel(X, SCRATCH, OUT, BLOCK: tl.constexpr):
    base = tl.program_id(0) * BLOCK
    i = tl.arange(0, BLOCK)
    tl.store(SCRATCH + base + i, tl.load(X + base + i) * 2)
    tl.debug_barrier()
    tl.store(OUT + base + i, tl.load(SCRATCH + base + BLOCK - 1 - i))  # reads what it stored


@triton.jit
def ticket_kernel(COUNTER, ORDER):
    ticket = tl.atomic_add(COUNTER, 1)  # the old value: who came before
    tl.store(ORDER + ticket, tl.program_id(0) * 10)


@triton.jit
def asm_kernel(X, OUT):
    x = tl.load(X + tl.arange(0, 4))
    y = tl.inline_asm_elementwise(
        "mov.b32 $0, $1;", "=r,r", [x], dtype=tl.int32, is_pure=True, pack=1
    )
    tl.store(OUT + tl.arange(0, 4), y)


@triton.jit
def break_kernel(X, OUT):
    n = tl.load(X + tl.program_id(0))
    acc = 0
    for i in range(n):
        if i > 3:
            break
        acc += i
    tl.store(OUT + tl.program_id(0), acc)


@triton.jit
def carry_type_kernel(X, OUT, BLOCK: tl.constexpr):
    n = tl.load(X + tl.program_id(0))
    acc = 0
    for _ in range(n):
        acc += tl.load(X + tl.arange(0, BLOCK))  # a scalar becomes a block: Triton refuses too
    tl.store(OUT + tl.arange(0, BLOCK), acc)


# ----------------------------------------------------------------------------- Triton's interpreter

_N_RNG = 300
_SEED = 2**33 + 12345  # a 64-bit seed: the high word reaches the Philox key
_RNG_JOBS = {
    "rng": (
        "test_triton_lang",
        "rng_kernel",
        [3],
        [("f32", _N_RNG), ("f32", _N_RNG), ("i32", _N_RNG), ("i32", 4 * _N_RNG), _SEED, _N_RNG],
        {"BLOCK": 128},
    ),
    "dropout": (
        "triton_kernels",
        "dropout_kernel",
        [3],
        [("x", _N_RNG), ("f32", _N_RNG), _N_RNG, 0.25, 777],
        {"BLOCK": 128},
    ),
    "scan": (
        "test_triton_lang",
        "scan_kernel",
        [3],
        [("ints", 3 * 16)] + [("i32", 3 * 16)] * 4 + [("i32", 3)],
        {"BLOCK": 16},
    ),
    "argminmax": (
        "test_triton_lang",
        "argminmax_kernel",
        [6],
        [("ties", 6 * 13), ("i32", 6), ("i32", 6), 13],
        {"BLOCK": 16},
    ),
}


def _make(spec: tuple[str, int]) -> np.ndarray:
    kind, n = spec
    rng = np.random.default_rng(n)
    if kind == "x":
        return rng.standard_normal(n).astype(np.float32)
    if kind == "ints":
        return rng.integers(-4, 5, n).astype(np.int32)
    if kind == "ties":  # few distinct values: many ties for argmax/argmin
        return rng.integers(0, 3, n).astype(np.int32)
    return np.zeros(n, {"f32": np.float32, "i32": np.int32}[kind])


_SCRIPT = """
import json, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
spec = json.load(open(sys.argv[2]))
arrays = dict(np.load(sys.argv[3]))
out = {}
for name, (module, kernel, grid, args, kwargs) in spec.items():
    fn = getattr(__import__(module), kernel)
    tensors = [torch.from_numpy(arrays[f"{name}:{i}"].copy()) if isinstance(a, list) else a
               for i, a in enumerate(args)]
    fn[tuple(grid)](*tensors, **kwargs)
    for i, t in enumerate(tensors):
        if isinstance(t, torch.Tensor):
            out[f"{name}:{i}"] = t.numpy()
np.savez(sys.argv[4], **out)
"""


@pytest.fixture(scope="module")
def interpreted() -> dict[str, np.ndarray]:
    """Every job in ``_RNG_JOBS`` run by Triton's interpreter (one subprocess)."""
    arrays = {
        f"{name}:{i}": _make(a)
        for name, (_, _, _, args, _) in _RNG_JOBS.items()
        for i, a in enumerate(args)
        if isinstance(a, tuple)
    }
    with tempfile.TemporaryDirectory() as tmp:
        spec = os.path.join(tmp, "spec.json")
        with open(spec, "w") as f:
            json.dump(_RNG_JOBS, f)
        np.savez(os.path.join(tmp, "in.npz"), **arrays)
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        cmd = [sys.executable, "-c", _SCRIPT, os.path.dirname(__file__), spec]
        cmd += [os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")]
        subprocess.run(cmd, check=True, env=env, timeout=300)
        return dict(np.load(os.path.join(tmp, "out.npz")))


def _ours(name: str) -> dict[str, np.ndarray]:
    """The same job run by the translator."""
    module, kernel, grid, args, kwargs = _RNG_JOBS[name]
    fn = getattr(tk if module == "triton_kernels" else sys.modules[__name__], kernel)
    values = [torch.from_numpy(_make(a)) if isinstance(a, tuple) else a for a in args]
    launch_cpu(fn, tuple(grid), *values, **kwargs)
    return {f"{name}:{i}": v.numpy() for i, v in enumerate(values) if isinstance(v, torch.Tensor)}


# tl.randn is Box-Muller over tl.rand (bit-exact): its log and cos are NumPy's libm in the
# interpreter and XLA's (fused, polynomial) here; everything else is compared bit for bit.
_NOT_BIT_EXACT = {"rng:1": 1e-5}


@pytest.mark.parametrize("job", ["rng", "dropout", "scan", "argminmax"])
def test_bit_equal_to_tritons_interpreter(job, interpreted):
    for key, ours in _ours(job).items():
        theirs = interpreted[key]
        assert ours.dtype == theirs.dtype, key
        if key in _NOT_BIT_EXACT:
            tol = _NOT_BIT_EXACT[key]
            np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol, err_msg=key)
            continue
        np.testing.assert_array_equal(ours.view(np.uint8), theirs.view(np.uint8), err_msg=key)


# ----------------------------------------------------------------------------- references


def test_rand_matches_philox_definition():
    u = torch.empty(_N_RNG)
    launch_cpu(
        rng_kernel,
        (3,),
        u,
        torch.empty(_N_RNG),
        torch.empty(_N_RNG, dtype=torch.int32),
        torch.empty(4 * _N_RNG, dtype=torch.int32),
        1234,
        _N_RNG,
        BLOCK=128,
    )
    want = tk.philox_rand_ref(1234, np.arange(_N_RNG, dtype=np.int32))
    np.testing.assert_array_equal(u.numpy(), want)


def test_dropout_against_reference():
    x = torch.randn(1000)
    out = torch.empty(1000)
    launch_cpu(tk.dropout_kernel, (triton.cdiv(1000, 256),), x, out, 1000, 0.4, 99, BLOCK=256)
    keep = torch.from_numpy(tk.philox_rand_ref(99, np.arange(1000, dtype=np.int32)) > 0.4)
    torch.testing.assert_close(out, tk.dropout_ref(x, 0.4, keep), rtol=0, atol=0)
    assert 0.5 < keep.float().mean() < 0.7


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_layernorm_forward_backward(dtype):
    M, N, eps = 7, 45, 1e-5
    x = torch.randn(M, N, dtype=dtype)
    w, b = torch.randn(N, dtype=dtype), torch.randn(N, dtype=dtype)
    y, mean, rstd = torch.empty_like(x), torch.empty(M), torch.empty(M)
    launch_cpu(tk.layernorm_fwd_kernel, (M,), x, y, w, b, mean, rstd, N, N, eps, BLOCK_N=16)
    y_ref, mean_ref, rstd_ref = tk.layernorm_fwd_ref(x, w, b, eps)
    tol = {"atol": 1e-2, "rtol": 1e-2} if dtype == torch.float16 else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(mean, mean_ref)
    torch.testing.assert_close(rstd, rstd_ref, atol=1e-4, rtol=1e-4)

    dy = torch.randn(M, N, dtype=dtype)
    dx = torch.empty_like(x)
    launch_cpu(tk.layernorm_bwd_dx_kernel, (M,), x, dy, dx, w, mean, rstd, N, N, BLOCK_N=64)
    dw, db = torch.empty(N), torch.empty(N)
    launch_cpu(
        tk.layernorm_bwd_dwdb_kernel,
        (triton.cdiv(N, 16),),
        x,
        dy,
        mean,
        rstd,
        dw,
        db,
        M,
        N,
        N,
        BLOCK_M=4,
        BLOCK_N=16,
    )
    dx_ref, dw_ref, db_ref = tk.layernorm_bwd_ref(x, w, b, eps, dy)
    tol = {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.float16 else {"atol": 1e-4, "rtol": 1e-4}
    torch.testing.assert_close(dx.float(), dx_ref, **tol)
    torch.testing.assert_close(dw, dw_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(db, db_ref, atol=1e-4, rtol=1e-4)


def test_argmax_argmin_tie_break_left():
    x = torch.tensor([[1, 3, 3, 0, 3], [2, 2, 0, 0, 1]], dtype=torch.int32)
    amax, amin = torch.empty(2, dtype=torch.int32), torch.empty(2, dtype=torch.int32)
    launch_cpu(argminmax_kernel, (2,), x, amax, amin, 5, BLOCK=8)
    assert amax.tolist() == [1, 0] and amin.tolist() == [3, 2]


def test_trans_permute_and_debug_barrier():
    x = torch.arange(4 * 8, dtype=torch.float32).reshape(4, 8)
    t, p = torch.empty(8, 4), torch.empty(2, 4, 4)
    launch_cpu(trans_kernel, (1,), x, t, p, M=4, N=8)
    torch.testing.assert_close(t, x.t())
    torch.testing.assert_close(p, x.reshape(4, 4, 2).permute(2, 0, 1))


# ----------------------------------------------------------------------------- control flow


def test_loops_and_branches_on_traced_values():
    P, N = 4, 5
    x = torch.randn(P, N)
    lens = torch.tensor([0, 3, 4, 7], dtype=torch.int32)
    out = torch.empty(P, N)
    launch_cpu(pid_loop_kernel, (P,), x, out, lens, N, BLOCK=8)
    for pid in range(P):
        acc = x[: pid + 1].sum(0) + len(range(0, int(lens[pid]), 2))
        k = sum(range(0, int(lens[pid]), 2))
        acc = -acc if pid % 2 == 0 and k > 0 else acc * 2
        torch.testing.assert_close(out[pid], acc + k)


def test_early_return_on_program_id():
    x = torch.randn(6, 3)
    out = torch.zeros(6, 3)
    launch_cpu(early_exit_kernel, (6,), x, out, 4, 3, BLOCK=4)
    torch.testing.assert_close(out[:4], x[:4] + 1)
    assert (out[4:] == 0).all()


def test_while_loop_on_loaded_data():
    x = torch.tensor([1, 6, 7, 27], dtype=torch.int32)
    steps = torch.empty(4, dtype=torch.int32)
    launch_cpu(collatz_kernel, (4,), x, steps)
    assert steps.tolist() == [0, 8, 16, 111]


# ----------------------------------------------------------------------------- sequential mode


def test_read_after_write_runs_programs_in_order(caplog):
    x = torch.randn(3, 8)
    scratch, out = torch.zeros(3, 8), torch.zeros(3, 8)
    with caplog.at_level(logging.INFO, logger="torchtpu"):
        launch_cpu(reverse_via_scratch_kernel, (3,), x, scratch, out, BLOCK=8)
    torch.testing.assert_close(scratch, x * 2)
    torch.testing.assert_close(out, (x * 2).flip(1))
    assert "running its 3 programs one after another" in caplog.text


def test_atomic_old_value_ticket_counter(caplog):
    counter = torch.zeros(1, dtype=torch.int32)
    order = torch.full((5,), -1, dtype=torch.int32)
    with caplog.at_level(logging.INFO, logger="torchtpu"):
        launch_cpu(ticket_kernel, (5,), counter, order)
    assert counter.item() == 5 and order.tolist() == [0, 10, 20, 30, 40]
    assert "atomic" in caplog.text


# ----------------------------------------------------------------------------- errors


def _line_of(fn, text: str) -> int:
    import inspect

    lines, start = inspect.getsourcelines(fn.fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


def test_error_names_construct_and_kernel_line():
    with pytest.raises(TritonTranslationError) as err:
        launch_cpu(
            asm_kernel, (1,), torch.zeros(4, dtype=torch.int32), torch.zeros(4, dtype=torch.int32)
        )
    msg = str(err.value)
    assert "inline_asm_elementwise" in msg and "create_inline_asm" in msg
    assert f"{__file__}:{_line_of(asm_kernel, 'inline_asm_elementwise')}" in msg


def test_error_for_break_in_a_traced_loop():
    with pytest.raises(TritonTranslationError) as err:
        launch_cpu(
            break_kernel,
            (1,),
            torch.tensor([5], dtype=torch.int32),
            torch.zeros(1, dtype=torch.int32),
        )
    assert f"{__file__}:{_line_of(break_kernel, 'for i in range(n)')}" in str(err.value)


def test_error_for_a_carried_value_changing_type():
    with pytest.raises(TritonTranslationError) as err:
        launch_cpu(
            carry_type_kernel,
            (1,),
            torch.tensor([2, 0, 0, 0], dtype=torch.int32),
            torch.zeros(4, dtype=torch.int32),
            BLOCK=4,
        )
    assert "'acc'" in str(err.value) and "changes the type" in str(err.value)


# ----------------------------------------------------------------------------- builder coverage


def test_every_interpreter_builder_method_is_implemented_or_listed():
    from triton.runtime.interpreter import InterpreterBuilder

    names = {n for n in dir(InterpreterBuilder) if n.startswith(("create_", "get_"))}
    ours = {n for n in names if n in dir(JaxBuilder)}
    missing = names - ours - set(UNSUPPORTED)
    assert not missing, f"Triton builder methods neither implemented nor listed: {missing}"
    assert not ours & set(UNSUPPORTED), "listed as unsupported but implemented"
    assert not set(UNSUPPORTED) - names, "listed methods Triton no longer has"


@triton.jit
def ragged_rows_kernel(LENS, OUT, W: tl.constexpr):
    row = tl.program_id(0)
    n = tl.load(LENS + row)
    for i in range(n):  # stores inside a loop over a loaded bound: run in order
        tl.store(OUT + row * W + i, i * 10 + row)


def test_stores_inside_a_traced_loop():
    lens = torch.tensor([2, 0, 4], dtype=torch.int32)
    out = torch.full((3, 4), -1, dtype=torch.int32)
    launch_cpu(ragged_rows_kernel, (3,), lens, out, W=4)
    want = [[0, 10, -1, -1], [-1, -1, -1, -1], [2, 12, 22, 32]]
    assert out.tolist() == want


@triton.jit
def misc_kernel(X, OUT, BITS, HIST, CNT, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    x = tl.load(X + i)  # int32
    x = tl.multiple_of(x, 1)
    tl.static_assert(BLOCK % 2 == 0)
    a, b = tl.split(tl.reshape(x, (BLOCK // 2, 2)))
    j = tl.join(b, a)  # swap neighbours
    tl.store(OUT + i, tl.reshape(j, (BLOCK,)))
    tl.store(BITS + 0, tl.xor_sum(x, axis=0))
    tl.store(BITS + 1, tl.reduce_or(x, axis=0))
    tl.store(BITS + 2, tl.sum(tl.gather(x, BLOCK - 1 - i, 0) * i, axis=0))
    tl.store(BITS + 3, (x.to(tl.uint32) >> 28).to(tl.int32).sum(axis=0))  # logical shift
    tl.store(BITS + 4, tl.sum(x >> 28, axis=0))  # arithmetic shift
    tl.store(BITS + 5, tl.sum(x // 3 + x % 3, axis=0))  # C division
    tl.store(HIST + tl.arange(0, 8), tl.histogram(x & 7, 8))
    tl.atomic_or(CNT + 0 * i, x)  # every lane at one address
    tl.atomic_xor(CNT + 1 + 0 * i, x)
    tl.atomic_max(CNT + 2 + 0 * i, x)
    old = tl.atomic_cas(CNT + 3, 0, 42)
    tl.atomic_add(CNT + 4, old + 1)


def test_shapes_bits_and_atomics():
    x = torch.tensor([5, -7, 1 << 30, -(1 << 29), 9, 0, 3, -1], dtype=torch.int32)
    out, bits = torch.empty(8, dtype=torch.int32), torch.empty(6, dtype=torch.int32)
    hist, cnt = torch.empty(8, dtype=torch.int32), torch.zeros(5, dtype=torch.int32)
    launch_cpu(misc_kernel, (1,), x, out, bits, hist, cnt, BLOCK=8)
    v = x.tolist()
    assert out.tolist() == [v[1], v[0], v[3], v[2], v[5], v[4], v[7], v[6]]
    xor = or_ = 0
    for e in v:
        xor, or_ = xor ^ e, or_ | e
    n = np.array(v, np.int32)
    want = [
        xor,
        or_,
        int((n[::-1] * np.arange(8, dtype=np.int32)).sum(dtype=np.int32)),  # wraps, as int32
        int((n.view(np.uint32) >> 28).astype(np.int64).sum()),
        int((n >> 28).sum()),
        int((np.trunc(n / 3).astype(np.int32) + np.fmod(n, 3)).sum()),
    ]
    assert bits.tolist() == want
    assert hist.tolist() == np.bincount(n & 7, minlength=8).tolist()
    assert cnt.tolist() == [or_, xor, max(v), 42, 1]


@triton.jit
def _sign_and_abs(v):  # value returns on a traced condition, in a helper
    if v < 0:
        return -1, -v
    if v == 0:
        return 0, v
    return 1, v


@triton.jit
def helper_return_kernel(X, SIGN, ABS):
    pid = tl.program_id(0)
    s, a = _sign_and_abs(tl.load(X + pid))
    tl.store(SIGN + pid, s)
    tl.store(ABS + pid, a)


def test_helper_with_early_value_returns():
    x = torch.tensor([-3, 0, 5, -1], dtype=torch.int32)
    sign, absolute = torch.empty_like(x), torch.empty_like(x)
    launch_cpu(helper_return_kernel, (4,), x, sign, absolute)
    assert sign.tolist() == [-1, 0, 1, -1] and absolute.tolist() == [3, 0, 5, 1]


def test_a_second_launch_reuses_the_traced_program():
    from torchtpu.kernels.triton import launch

    x, out = torch.arange(6, dtype=torch.int32), torch.empty(6, dtype=torch.int32)
    launch_cpu(early_exit_kernel, (6,), x.reshape(6, 1), out.reshape(6, 1), 6, 1, BLOCK=2)
    plans = len(launch._PLANS)
    launch_cpu(early_exit_kernel, (6,), x.reshape(6, 1) * 2, out.reshape(6, 1), 6, 1, BLOCK=2)
    assert len(launch._PLANS) == plans and out.tolist() == (x * 2 + 1).tolist()


@triton.jit
def float_atomics_kernel(X, MX, MN, B, BOUT, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    x = tl.load(X + offs, mask=ok)
    tl.atomic_max(MX + offs % 3, x, mask=ok)  # Triton bitcasts the pointer to int32/uint32
    tl.atomic_min(MN + offs % 3, x, mask=ok)
    b = tl.load(B + offs, mask=ok)  # a bool tensor: read through an int8 view
    tl.store(BOUT + offs, b == 0, mask=ok)


def test_float_atomic_max_min_and_bool_tensors():
    x = torch.randn(50)
    mx, mn = torch.full((3,), -float("inf")), torch.full((3,), float("inf"))
    b = torch.rand(50) > 0.5
    bout = torch.empty(50, dtype=torch.bool)
    launch_cpu(float_atomics_kernel, (4,), x, mx, mn, b, bout, 50, BLOCK=16)
    idx = torch.arange(50) % 3
    for k in range(3):
        assert mx[k] == x[idx == k].max() and mn[k] == x[idx == k].min()
    assert (bout == ~b).all()


@triton.jit
def libdevice_kernel(X, OUT, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    x = tl.load(X + i)
    tl.store(OUT + i, libdevice.pow(tl.abs(x), 1.5) + libdevice.tanh(x) + libdevice.atan2(x, 2.0))


@triton.jit
def libdevice_unknown_kernel(X, OUT):
    tl.store(OUT, libdevice.j0(tl.load(X)))


def test_libdevice_functions():
    x = torch.randn(16)
    out = torch.empty(16)
    launch_cpu(libdevice_kernel, (1,), x, out, BLOCK=16)
    want = x.abs() ** 1.5 + torch.tanh(x) + torch.atan2(x, torch.tensor(2.0))
    torch.testing.assert_close(out, want)
    with pytest.raises(TritonTranslationError, match="libdevice.j0"):
        launch_cpu(libdevice_unknown_kernel, (1,), x, out)


@triton.jit
def stdlib_kernel(X, S, F, SM, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    x = tl.load(X + i)
    tl.store(S + i, tl.sort(x, descending=True))  # bitonic: constexpr ^ tensor inside
    tl.store(F + i, tl.flip(x, 0))
    tl.store(SM + i, tl.softmax(x))


def test_triton_standard_library_functions():
    x = torch.randn(16)
    s, f, sm = torch.empty(16), torch.empty(16), torch.empty(16)
    launch_cpu(stdlib_kernel, (1,), x, s, f, sm, BLOCK=16)
    assert torch.equal(s, x.sort(descending=True).values) and torch.equal(f, x.flip(0))
    torch.testing.assert_close(sm, x.softmax(0))
