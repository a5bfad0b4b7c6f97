"""The one comparison used by the conformance tests, forward and backward.

Results from torchtpu are compared with eager PyTorch on the CPU by
``torch.testing.assert_close`` with per-dtype tolerances. bfloat16 is looser
because XLA computes bfloat16 ops in float32 and rounds once, where PyTorch's
CPU kernels sometimes round intermediate values; one bfloat16 ulp is 2**-8.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


@dataclasses.dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# float32 and complex64: XLA's transcendental functions differ from PyTorch's
# (SLEEF / libm) by a few ulp, so rtol is a little above torch's own 1.3e-6.
DEFAULT_TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float32: Tolerance(atol=1e-5, rtol=1e-5),
    torch.complex64: Tolerance(atol=1e-5, rtol=1e-5),
    torch.bfloat16: Tolerance(atol=1e-2, rtol=1.6e-2),
    torch.float16: Tolerance(atol=1e-3, rtol=1e-3),
    torch.float64: Tolerance(atol=1e-7, rtol=1e-7),
}
EXACT = Tolerance(atol=0.0, rtol=0.0)

# Gradients sum many products in an order that differs between XLA and
# PyTorch's backward kernels, so float32 gradients get a few more ulp.
GRADIENT_TOLERANCE = Tolerance(atol=5e-5, rtol=1e-4)


def tolerance_for(dtype: torch.dtype, override: Tolerance | None = None) -> Tolerance:
    """The tolerance for results computed at ``dtype``; integers and bools are exact."""
    if override is not None:
        return override
    return DEFAULT_TOLERANCES.get(dtype, EXACT)


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in _flatten(v)]
    return [value]


def _looser(a: Tolerance, b: Tolerance) -> Tolerance:
    return Tolerance(atol=max(a.atol, b.atol), rtol=max(a.rtol, b.rtol))


def compare(
    actual: Any,
    expected: Any,
    dtype: torch.dtype,
    override: Tolerance | None = None,
    what: str = "output",
) -> None:
    """Raise ``AssertionError`` naming ``what`` unless ``actual`` matches ``expected``.

    ``dtype`` is the dtype the sample was made at; each tensor is held to the
    looser of its own dtype's tolerance and that one (a float32 result computed
    from bfloat16 inputs carries bfloat16 error). dtypes must agree exactly, as
    torchtpu promises PyTorch's type promotion; strides are not compared and
    NaN matches NaN.
    """
    got, want = _flatten(actual), _flatten(expected)
    if len(got) != len(want):
        raise AssertionError(f"{what}: {len(got)} values, eager PyTorch gives {len(want)}")
    for i, (a, e) in enumerate(zip(got, want, strict=True)):
        name = what if len(want) == 1 else f"{what}[{i}]"
        tol = override
        if tol is None:
            own = tolerance_for(e.dtype) if isinstance(e, torch.Tensor) else EXACT
            tol = _looser(own, tolerance_for(dtype))
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu()
        if isinstance(e, torch.Tensor):
            e = e.detach().cpu()
        try:
            torch.testing.assert_close(
                a,
                e,
                atol=tol.atol,
                rtol=tol.rtol,
                equal_nan=True,
                check_dtype=True,
                check_device=False,
                check_stride=False,
                check_layout=False,
            )
        except (AssertionError, TypeError, ValueError) as exc:
            msg = " ".join(str(exc).split())
            raise AssertionError(f"{name} differs from eager PyTorch: {msg}") from None


def compare_meta(actual: Any, expected: Any, what: str = "output") -> None:
    """Shape and dtype only: for random ops and ops whose values are unspecified."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            raise AssertionError(f"{what}: expected a tensor, got {type(actual).__name__}")
        if actual.shape != expected.shape or actual.dtype != expected.dtype:
            raise AssertionError(
                f"{what}: got {tuple(actual.shape)}:{actual.dtype}, "
                f"eager gives {tuple(expected.shape)}:{expected.dtype}"
            )
        return
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
            raise AssertionError(f"{what}: structure differs from eager")
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            compare_meta(a, e, f"{what}[{i}]")
