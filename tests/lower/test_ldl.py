"""LDL^T (Bunch-Kaufman) factor and solve against eager PyTorch (LAPACK ?sytrf/?hetrf).

The inputs are indefinite, with zero and tiny diagonals, so the factorizations mix 1x1
and 2x2 pivot blocks with row interchanges; pivots must match exactly.
"""

import pytest
import torch


def strict(fn):
    return torch.compile(fn, backend="tpu", options={"strict": True}, dynamic=False)


def _indefinite(dtype, hermitian, n=6):
    torch.manual_seed(0)
    a = torch.randn(3, n, n, dtype=dtype)
    a = a + (a.mH if hermitian else a.mT)
    a[0].diagonal().zero_()  # no usable 1x1 pivot at the start: 2x2 blocks
    a[1].diagonal().mul_(1e-3)  # tiny diagonal: interchanges
    return a


def _factor_and_solve(a, b, hermitian):
    ld, pivots, info = torch.linalg.ldl_factor_ex(a, hermitian=hermitian)
    return ld, pivots, info, torch.linalg.ldl_solve(ld, pivots, b, hermitian=hermitian)


@pytest.mark.parametrize("hermitian", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_ldl_factor_and_solve_match_eager(dtype, hermitian):
    a = _indefinite(dtype, hermitian)
    b = torch.randn(3, 6, 2, dtype=dtype)
    ld, pivots, info, x = strict(_factor_and_solve)(a, b, hermitian)
    want_ld, want_pivots, want_info, want_x = _factor_and_solve(a, b, hermitian)
    assert (want_pivots < 0).any() and (want_pivots > 0).any()
    assert torch.equal(pivots, want_pivots) and torch.equal(info, want_info)
    torch.testing.assert_close(ld, want_ld, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x, want_x, rtol=1e-4, atol=1e-4)
    eager_x = torch.linalg.ldl_solve(want_ld, want_pivots, b, hermitian=hermitian)
    torch.testing.assert_close(a @ eager_x, b, rtol=1e-3, atol=1e-3)


def test_ldl_factor_of_singular_matrix_sets_info():
    torch.manual_seed(0)
    a = torch.randn(2, 5, 5, dtype=torch.float64)
    a = a + a.mT
    a[0, 2, :] = a[0, :, 2] = 0  # a zero column: D(k, k) == 0 at some step k
    a[1] = 0

    def fn(a):
        return torch.linalg.ldl_factor_ex(a)

    got, want = strict(fn)(a), fn(a)
    assert (want.info > 0).all()
    assert torch.equal(got.pivots, want.pivots) and torch.equal(got.info, want.info)
    torch.testing.assert_close(got.LD, want.LD)


def test_ldl_solve_broadcasts_batches():
    a = _indefinite(torch.float64, hermitian=False, n=5)
    ld, pivots, _ = torch.linalg.ldl_factor_ex(a)

    def fn(ld, pivots, ld1, pivots1, b, b_batched):
        return torch.linalg.ldl_solve(ld, pivots, b), torch.linalg.ldl_solve(
            ld1, pivots1, b_batched
        )

    b, b_batched = torch.randn(5, 3, dtype=a.dtype), torch.randn(2, 5, 1, dtype=a.dtype)
    args = (ld, pivots, ld[0], pivots[0], b, b_batched)
    torch.testing.assert_close(strict(fn)(*args), fn(*args))
