"""The Triton -> JAX translator's core (work in progress, issue 15): tutorial-style kernels,
written fresh, launched on CPU tensors and compared with PyTorch. Skipped where the triton
package is not installed (it is not yet in requirements.txt)."""

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from torchtpu.kernels.triton.launch import launch_cpu  # noqa: E402


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


def test_vector_add_odd_n():
    x, y, out = torch.randn(1001), torch.randn(1001), torch.empty(1001)
    launch_cpu(add_kernel, lambda meta: (triton.cdiv(meta["n"], 128),), x, y, out, 1001, BLOCK=128)
    torch.testing.assert_close(out, x + y)


def test_softmax_strided_input_rows_not_power_of_two():
    a = torch.randn(37, 7).t()  # a transposed view: the kernel walks its strides
    out = torch.empty(7, 37)
    launch_cpu(softmax_kernel, (7,), out, a, a.stride(0), a.stride(1), out.stride(0), 37, BLOCK=64)
    torch.testing.assert_close(out, torch.softmax(a, -1))


def test_grouped_matmul_fp16_fp32_accumulator():
    M, N, K = 70, 50, 90
    a = torch.randn(M, K, dtype=torch.float16)
    b = torch.randn(K, N, dtype=torch.float16)
    c = torch.empty(M, N, dtype=torch.float16)
    grid = (triton.cdiv(M, 32) * triton.cdiv(N, 16),)
    launch_cpu(
        matmul_kernel,
        grid,
        a,
        b,
        c,
        M,
        N,
        K,
        *a.stride(),
        *b.stride(),
        *c.stride(),
        BM=32,
        BN=16,
        BK=32,
        GROUP=2,
    )
    torch.testing.assert_close(c.float(), a.float() @ b.float(), atol=2e-2, rtol=2e-3)


def test_histogram_atomic_add():
    x = torch.randint(0, 10, (333,), dtype=torch.int32)
    out = torch.zeros(10, dtype=torch.int32)
    launch_cpu(histogram_kernel, (triton.cdiv(333, 64),), x, out, 333, BLOCK=64)
    assert out.tolist() == torch.bincount(x, minlength=10).tolist()


def test_launch_on_tpu_tensors_and_cpu_tensors_by_subscript():
    from torchtpu.kernels.triton.launch import install

    install()
    x, y = torch.randn(300), torch.randn(300)
    out = torch.empty(300)
    add_kernel[(3,)](x, y, out, 300, BLOCK=128, num_warps=4)
    torch.testing.assert_close(out, x + y)
    a = torch.randn(9, 5).to("tpu").t()  # a view of a tpu tensor
    o = torch.empty(5, 9, device="tpu")
    softmax_kernel[(5,)](o, a, a.stride(0), a.stride(1), o.stride(0), 9, BLOCK=16)
    assert o.device.type == "tpu"
    torch.testing.assert_close(o.cpu(), torch.softmax(a.cpu(), -1))


def test_launch_inside_torch_compile_is_lowered_into_the_program():
    from torchtpu.kernels.triton.launch import install

    install()

    def f(x, y):
        out = torch.empty_like(x)
        add_kernel[(triton.cdiv(x.numel(), 64),)](x, y, out, x.numel(), BLOCK=64)
        return out * 2

    x, y = torch.randn(200), torch.randn(200)
    compiled = torch.compile(f, backend="tpu", fullgraph=True, options={"strict": True})
    got = compiled(x, y)
    torch.testing.assert_close(got, (x + y) * 2)
