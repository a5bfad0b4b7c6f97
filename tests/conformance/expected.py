"""The one table of expected failures and tolerance overrides, each with its reason.

An entry names an OpInfo op by its id (``name`` or ``name.variant``), and
optionally narrows itself to some dtypes and to the forward or the gradient
check. ``xfail`` entries mark tests ``xfail(strict=False)`` and are listed with
their reason in ``docs/conformance.md``; ``tolerance`` entries loosen the
comparison for that op only, and must say why the looser bound is still right.
"""

from __future__ import annotations

import dataclasses

from _compare import Tolerance


@dataclasses.dataclass(frozen=True)
class Entry:
    op: str
    reason: str
    dtypes: tuple[str, ...] = ()  # empty: every dtype
    grad: bool | None = None  # None: both checks; True: gradient only; False: forward only
    tol: Tolerance | None = None  # set for a tolerance override, None for an expected failure

    def matches(self, op_id: str, dtype: str, grad: bool) -> bool:
        if self.op != op_id or (self.dtypes and dtype not in self.dtypes):
            return False
        return self.grad is None or self.grad == grad


def xfail(op: str, reason: str, *, dtypes: tuple[str, ...] = (), grad: bool | None = None):
    return Entry(op, reason, dtypes, grad)


def tolerance(
    op: str,
    reason: str,
    *,
    atol: float,
    rtol: float,
    dtypes: tuple[str, ...] = (),
    grad: bool | None = None,
):
    return Entry(op, reason, dtypes, grad, Tolerance(atol=atol, rtol=rtol))


TABLE: list[Entry] = []


def expected_failure(op_id: str, dtype: str, grad: bool) -> str | None:
    """The reason ``op_id`` is expected to fail at ``dtype``, or ``None``."""
    for entry in TABLE:
        if entry.tol is None and entry.matches(op_id, dtype, grad):
            return entry.reason
    return None


def tolerance_override(op_id: str, dtype: str, grad: bool) -> Tolerance | None:
    for entry in TABLE:
        if entry.tol is not None and entry.matches(op_id, dtype, grad):
            return entry.tol
    return None
