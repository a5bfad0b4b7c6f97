"""Ops AOTAutograd wraps in ``with_effects`` (linalg error checks) lower in strict mode."""

from __future__ import annotations

import torch

import torchtpu
from torchtpu.examine import LOWERS


def _spd(n: int) -> torch.Tensor:
    a = torch.randn(n, n)
    return a @ a.T + n * torch.eye(n)


def test_checked_linalg_ops_run_in_one_program_with_gradients():
    def fn(a, b):
        return (
            torch.linalg.inv(a).sum()
            + torch.linalg.cholesky(a).sum()
            + torch.linalg.solve(a, b).sum()
        )

    a, b = _spd(4).requires_grad_(), torch.randn(4, 2).requires_grad_()
    before = torchtpu.metrics()["executions"]
    out = torch.compile(fn, backend="tpu", options={"strict": True})(a, b)
    assert torchtpu.metrics()["executions"] > before
    torch.testing.assert_close(out, fn(a, b))
    got = torch.autograd.grad(out, (a, b))
    want = torch.autograd.grad(fn(a, b), (a, b))
    torch.testing.assert_close(got, want)


def test_examine_sees_the_wrapped_op():
    report = torchtpu.examine(torch.linalg.inv, _spd(3))
    statuses = {use.op: use.status for use in report.ops}
    assert statuses["aten._linalg_check_errors.default"] == LOWERS
    assert report.fully_lowered


def test_singular_input_gives_non_finite_values_instead_of_raising():
    # Documented difference: eager raises; a compiled program cannot, so the
    # result carries the inf/NaN that the factorization produced.
    out = torch.compile(torch.linalg.inv, backend="tpu")(torch.zeros(3, 3))
    assert not torch.isfinite(out).all()
