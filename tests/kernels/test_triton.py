"""The Triton -> JAX translator's core (issue 15): tutorial-style kernels (tests/kernels/
triton_kernels.py) launched on CPU tensors and compared with PyTorch. Skipped where the triton
package is not installed (requirements.txt pins it). Every entry point for every kernel:
test_triton_entry.py."""

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from triton_kernels import (  # noqa: E402
    add_kernel,
    histogram_kernel,
    matmul_kernel,
    softmax_kernel,
)

from torchtpu.kernels.triton.launch import launch_cpu  # noqa: E402


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
    from torchtpu.kernels.triton import install

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
    from torchtpu.kernels.triton import install

    install()

    def f(x, y):
        out = torch.empty_like(x)
        add_kernel[(triton.cdiv(x.numel(), 64),)](x, y, out, x.numel(), BLOCK=64)
        return out * 2

    x, y = torch.randn(200), torch.randn(200)
    compiled = torch.compile(f, backend="tpu", fullgraph=True, options={"strict": True})
    got = compiled(x, y)
    torch.testing.assert_close(got, (x + y) * 2)
