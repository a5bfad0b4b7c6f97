"""torchtpu against PyTorch's OpInfo database (``op_db``), op by op.

Every sample runs through ``torch.compile(backend="tpu")`` in strict mode and
is compared with eager PyTorch on the CPU (see ``_harness.py``). By default
one sample per op at float32 and bfloat16, forward only: the CI subset.
``pytest -m slow tests/conformance`` runs every sample at every dtype and the
gradients; ``pytest -k <opname>`` runs one op. Expected failures, tolerance
overrides and ops compared by shape and dtype only live in ``expected.py``,
each with its reason. Expected failures are strict: one that passes fails the
test until its entry is removed or narrowed.
"""

from __future__ import annotations

import pytest

pytest.importorskip("expecttest", reason="torch.testing's OpInfo database needs expecttest")

import _harness as h  # noqa: E402
import expected  # noqa: E402

OPS = h.all_ops()


def _params(dtypes, grad: bool, one_sample: bool = False):
    for op in OPS:
        if grad and not h.supports_grad(op):
            continue
        for dtype in [h.GRAD_DTYPE] if grad else h.forward_dtypes(op, dtypes):
            reason = h.expected_reason(op, dtype, grad, one_sample)
            marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
            name = f"{h.op_id(op)}-{h.dtype_name(dtype)}"
            yield pytest.param(op, dtype, id=name, marks=marks)


def _check(results: list[h.Result]) -> None:
    failures = [r for r in results if r.status == "fail"]
    if failures:
        lines = [f"{r.kind}: {r.detail}" for r in failures[:5]]
        more = f"\n... and {len(failures) - 5} more" if len(failures) > 5 else ""
        pytest.fail(f"{len(failures)}/{len(results)} samples failed:\n" + "\n".join(lines) + more)
    if all(r.status == "skip" for r in results):
        pytest.skip(results[0].detail or "no sample could run")


def test_table_names_ops():
    ids = {h.op_id(op) for op in OPS}
    unknown = sorted({e.op for e in expected.TABLE} - ids)
    assert not unknown, f"expected.py names ops that op_db does not have: {unknown}"


@pytest.mark.parametrize("op, dtype", list(_params(h.FAST_DTYPES, grad=False, one_sample=True)))
def test_forward_one_sample(op, dtype):
    _check(h.run_op(op, dtype, grad=False, limit=1))


@pytest.mark.slow
@pytest.mark.parametrize("op, dtype", list(_params(h.FORWARD_DTYPES, grad=False)))
def test_forward(op, dtype):
    _check(h.run_op(op, dtype, grad=False))


@pytest.mark.slow
@pytest.mark.parametrize("op, dtype", list(_params((), grad=True)))
def test_gradient(op, dtype):
    _check(h.run_op(op, dtype, grad=True))
