"""Run OpInfo samples through ``torch.compile(backend="tpu")`` and judge them.

Shared by ``test_opinfo.py`` (pytest) and ``scripts/conformance.py`` (the full
sweep and its report). Every sample runs in strict mode, so an op that would
fall back to eager PyTorch is an error, and a sample whose graph never reached
XLA (Dynamo ran it eagerly) or broke the graph does not count as a pass.

Dynamo runs with ``capture_dynamic_output_shape_ops`` and ``capture_scalar_outputs``
on, PyTorch's switches for capturing ops whose output size depends on data
(``nonzero``, ``x[mask]``, ``unique``) and ``.item()`` into the graph instead of
breaking it; torchtpu runs those ops in XLA (see ``torchtpu.lower.sized``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import signal
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch._dynamo
from _compare import (
    EXACT,
    GRADIENT_TOLERANCE,
    Tolerance,
    compare,
    compare_meta,
    tolerance_for,
)
from expected import expected_failure, shape_only_entry, tolerance_override
from torch.testing._internal import common_methods_invocations as _cmi
from torch.testing._internal.common_methods_invocations import op_db

import torchtpu

FAST_DTYPES = (torch.float32, torch.bfloat16)
FORWARD_DTYPES = (torch.float32, torch.bfloat16, torch.int64, torch.bool, torch.complex64)
GRAD_DTYPE = torch.float32
SAMPLE_TIMEOUT_S = 60

# Sorting ops whose index outputs PyTorch leaves unspecified among equal values
# (its CPU kernels use quickselect or an unstable sort; torchtpu sorts stably),
# with the position of ``dim`` among the sample's args. Their values are compared
# as usual; their indices by the elements they select, which must match eager's,
# and, for permutations, by being distinct.
_TIED_INDEX_DIM_ARG = {"sort": 0, "argsort": 0, "topk": 1, "kthvalue": 1}

# Ops returning eigenvectors, each defined only up to a unit factor (a sign for
# real, a phase for complex input; LAPACK and XLA choose differently): both sides'
# vectors are scaled so their largest entry is real and positive before comparing.
_EIGENVECTOR_OPS = {"linalg.eigh"}


@dataclasses.dataclass(frozen=True)
class Result:
    """One sample's verdict: ``pass``, ``fail`` or ``skip``, with what went wrong."""

    status: str
    kind: str = ""  # for fail: mismatch, unsupported, graph-break, not-compiled, error, timeout
    detail: str = ""


PASS = Result("pass")


def op_id(op: Any) -> str:
    return f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name


def all_ops() -> list[Any]:
    return list(op_db)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def forward_dtypes(op: Any, dtypes: tuple[torch.dtype, ...] = FORWARD_DTYPES) -> list:
    supported = op.supported_dtypes("cpu")
    return [d for d in dtypes if d in supported]


def supports_grad(op: Any) -> bool:
    return op.supports_autograd and GRAD_DTYPE in op.supported_backward_dtypes("cpu")


def samples(op: Any, dtype: torch.dtype, grad: bool, limit: int | None = None) -> list[Any]:
    torch.manual_seed(0)
    return list(itertools.islice(op.sample_inputs("cpu", dtype, requires_grad=grad), limit))


# --- running one sample ----------------------------------------------------------------


def _tree_map(fn: Any, value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_tree_map(fn, v) for v in value)
    if isinstance(value, dict):
        return {k: _tree_map(fn, v) for k, v in value.items()}
    return value


def _leaves(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)


def _clone_args(sample: Any, requires_grad: bool = False) -> tuple[tuple, dict]:
    def clone(t: torch.Tensor) -> torch.Tensor:
        c = t.detach().clone()
        return c.requires_grad_(t.requires_grad) if requires_grad else c

    args = _tree_map(clone, (sample.input, *sample.args))
    return args, _tree_map(clone, dict(sample.kwargs))


def _direct(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


@contextlib.contextmanager
def _unseeded() -> Iterator[None]:
    """Call OpInfo's random ops directly instead of through ``wrapper_set_seed``.

    Its save and restore of every device's RNG state is untraceable by Dynamo
    (and fails for devices without ``get_rng_state``); random ops are compared
    by shape and dtype only (``shape_only`` in ``expected.py``), so the seed it
    sets does not matter.
    """
    saved = _cmi.wrapper_set_seed
    _cmi.wrapper_set_seed = _direct
    try:
        yield
    finally:
        _cmi.wrapper_set_seed = saved


def _compiled(op: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        return op.op(*args, **kwargs)

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    return torch.compile(call, backend="tpu", options={"strict": True}, dynamic=False)


@contextlib.contextmanager
def _timeout(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"sample took longer than {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _describe(exc: BaseException) -> Result:
    chain, seen = exc, set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if isinstance(chain, torchtpu.UnsupportedOpError):
            return Result("fail", "unsupported", _first_line(chain))
        chain = chain.__cause__ or chain.__context__
    if isinstance(exc, TimeoutError):
        return Result("fail", "timeout", str(exc))
    if isinstance(exc, AssertionError):
        return Result("fail", "mismatch", _first_line(exc, 600))
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else ""
    return Result("fail", "error", f"{type(exc).__name__}{where}: {_first_line(exc)}")


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    if "torchtpu cannot lower" in text:
        text = text[text.index("torchtpu cannot lower") :]
    return " ".join(text.split("\n")[0:1] if len(text) < limit else text.split())[:limit]


def _run_compiled(op: Any, args: tuple, kwargs: dict) -> tuple[Any, Result | None]:
    """Call ``op`` compiled; the result is None unless the graph fell short of XLA."""
    before = torchtpu.metrics()["executions"]
    out = _compiled(op)(*args, **kwargs)
    return out, None if torchtpu.metrics()["executions"] > before else Result(
        "fail", "not-compiled", "no graph reached XLA: Dynamo ran the op eagerly"
    )


def _graph_breaks() -> Result | None:
    breaks = torch._dynamo.utils.counters["graph_break"]
    if not breaks:
        return None
    reason = next(iter(breaks))
    return Result(
        "fail", "graph-break", f"Dynamo graph break: {' '.join(str(reason).split())}"[:300]
    )


def _eager(op: Any, sample: Any, seed: int) -> Any:
    torch.manual_seed(seed)
    args, kwargs = _clone_args(sample)
    return op.op(*args, **kwargs)


def _same(a: Any, b: Any, dtype: torch.dtype, tol: Tolerance | None) -> bool:
    try:
        compare(a, b, dtype, tol)
    except AssertionError:
        return False
    return True


def _shape_only(
    op: Any, dtype: torch.dtype, grad: bool, expected: Any, reseeded: Callable[[], Any]
) -> bool | Result:
    """Whether this sample is compared by shape and dtype only, as ``expected.py`` declares.

    ``reseeded()`` gives eager's ``expected`` again under another seed. For an op
    declared with ``random_samples_only``, a sample is random if its result
    changes at all. An undeclared op whose results change by more than the
    tolerance they would be judged by gets a failing verdict saying to declare
    it; smaller changes are not randomness (``linalg.lstsq``'s gelsy driver
    varies in the last bits from run to run).
    """
    column = dtype_name(dtype)
    entry = shape_only_entry(op_id(op), column, grad)
    if entry is not None and not entry.random_samples_only:
        return True
    again = reseeded()
    if _same(expected, again, dtype, EXACT):
        return False
    if entry is not None:
        return True
    tol = tolerance_override(op_id(op), column, grad) or (GRADIENT_TOLERANCE if grad else None)
    if not _same(expected, again, dtype, tol):
        what = "gradients" if grad else "results"
        return Result(
            "fail",
            "undeclared-random",
            f"eager PyTorch's {what} for {op_id(op)} at {column} change with the seed, so they "
            f"cannot be compared by value: declare the op in tests/conformance/expected.py with "
            f"shape_only({op_id(op)!r}, reason, random_samples_only=...), or give the sample "
            "its own random inputs",
        )
    return False


def check_forward(op: Any, sample: Any, dtype: torch.dtype) -> Result:
    """Compare ``op`` on ``sample`` through torchtpu with eager PyTorch.

    Values are compared unless ``expected.py`` declares the op ``shape_only``
    (random or uninitialised outputs); then only shapes and dtypes are.
    """
    try:
        expected = _eager(op, sample, seed=0)
        reseeded = functools.partial(_eager, op, sample, seed=1)
        random = _shape_only(op, dtype, False, expected, reseeded)
    except Exception as exc:  # noqa: BLE001 - a sample eager rejects says nothing about us
        return Result("skip", "eager-error", _first_line(exc))
    if isinstance(random, Result):
        return random
    try:
        with _timeout(SAMPLE_TIMEOUT_S):
            args, kwargs = _clone_args(sample)
            actual, short = _run_compiled(op, args, kwargs)
            short = _graph_breaks() or short
            if short is not None:
                return short
            override = tolerance_override(op_id(op), dtype_name(dtype), False)
            if random:
                compare_meta(actual, expected)
            elif op_id(op) in _EIGENVECTOR_OPS:
                (w, v), (want_w, want_v) = actual, expected
                compare(w, want_w, dtype, override, what="eigenvalues")
                compare(_unit_phase(v), _unit_phase(want_v), dtype, override, what="eigenvectors")
            elif op_id(op) in _TIED_INDEX_DIM_ARG:
                _compare_tied(op, sample, actual, expected, dtype, override)
            else:
                compare(actual, expected, dtype, override)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a verdict
        return _describe(exc)
    return PASS


def _unit_phase(v: torch.Tensor) -> torch.Tensor:
    """Eigenvector columns scaled so each one's largest-magnitude entry is real positive."""
    v = v.detach().cpu()
    if v.numel() == 0:
        return v
    top = v.abs().argmax(dim=-2, keepdim=True)
    pivot = v.gather(-2, top)
    return v * (pivot.abs() / pivot).conj()


def _compare_tied(op: Any, sample: Any, actual: Any, expected: Any, dtype, override) -> None:
    """Values as usual; indices by the input elements they pick (see _TIED_INDEX_DIM_ARG)."""
    name = op_id(op)
    if name == "argsort":
        actual, expected = (None, actual), (None, expected)
    (values, indices), (want_values, want_indices) = actual, expected
    if values is not None:
        compare(values, want_values, dtype, override, what="values")
    x = sample.input
    if x.dim() == 0:
        compare(indices, want_indices, dtype, EXACT, what="indices")
        return
    position = _TIED_INDEX_DIM_ARG[name]
    dim = sample.kwargs.get("dim", sample.args[position] if len(sample.args) > position else -1)
    dim %= x.dim()

    def picked(i: torch.Tensor) -> torch.Tensor:
        i = i.detach().cpu()
        return x.gather(dim, i if i.dim() == x.dim() else i.unsqueeze(dim))

    compare(picked(indices), picked(want_indices), dtype, EXACT, what="elements the indices pick")
    if name != "kthvalue" and indices.numel():
        ordered = indices.detach().cpu().sort(dim).values
        if (ordered.diff(dim=dim) == 0).any():
            raise AssertionError(f"indices: {name} returned the same index twice along dim {dim}")


def _grad_inputs(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    return [t for t in _leaves((args, kwargs)) if t.requires_grad]


def _grads(op: Any, fn: Any, sample: Any, seed: int = 0) -> list[torch.Tensor] | None:
    args, kwargs = _clone_args(sample, requires_grad=True)
    inputs = _grad_inputs(args, kwargs)
    torch.manual_seed(seed)
    out = sample.output_process_fn_grad(fn(*args, **kwargs))
    outs = [t for t in _leaves(out) if t.requires_grad]
    if not inputs or not outs:
        return None
    # Contiguous cotangents: randn_like would follow each output's strides, which
    # may differ between eager and compiled, and give logically different values.
    torch.manual_seed(1000)
    cotangents = [torch.randn(t.shape, dtype=_draw_dtype(t)).to(t.dtype) for t in outs]
    grads = torch.autograd.grad(outs, inputs, cotangents, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for g, i in zip(grads, inputs, strict=True)]


def _draw_dtype(t: torch.Tensor) -> torch.dtype:
    # Drawn at single precision whatever the output's width, so a float64
    # reference run gets the same cotangents.
    return torch.complex64 if t.is_complex() else torch.float32


def check_grad(op: Any, sample: Any) -> Result:
    """Compare ``torch.autograd.grad`` through torchtpu with eager PyTorch's.

    As in :func:`check_forward`, ops declared ``shape_only`` are compared by
    shape and dtype.
    """
    try:
        expected = _grads(op, op.op, sample)
        if expected is None:
            return Result("skip", "no-grad", "no differentiable input or output")
        reseeded = functools.partial(_grads, op, op.op, sample, seed=1)
        random = _shape_only(op, GRAD_DTYPE, True, expected, reseeded)
    except Exception as exc:  # noqa: BLE001
        return Result("skip", "eager-error", _first_line(exc))
    if isinstance(random, Result):
        return random
    try:
        with _timeout(SAMPLE_TIMEOUT_S):
            before = torchtpu.metrics()["executions"]
            actual = _grads(op, _compiled(op), sample)
            short = _graph_breaks()
            if short is None and torchtpu.metrics()["executions"] == before:
                short = Result("fail", "not-compiled", "no graph reached XLA")
            if short is not None:
                return short
            if random:
                compare_meta(actual, expected, what="gradient")
            else:
                override = tolerance_override(op_id(op), dtype_name(GRAD_DTYPE), True)
                tol = override or GRADIENT_TOLERANCE
                compare(actual, expected, GRAD_DTYPE, tol, what="gradient")
    except Exception as exc:  # noqa: BLE001
        return _describe(exc)
    return PASS


def run_op(
    op: Any, dtype: torch.dtype, grad: bool = False, limit: int | None = None
) -> list[Result]:
    """Verdicts for the first ``limit`` samples (all if None) of ``op`` at ``dtype``."""
    try:
        batch = samples(op, dtype, grad, limit)
    except Exception as exc:  # noqa: BLE001
        return [Result("skip", "no-samples", _first_line(exc))]
    if not batch:
        return [Result("skip", "no-samples", "OpInfo gives no sample at this dtype")]
    check = (lambda s: check_grad(op, s)) if grad else (lambda s: check_forward(op, s, dtype))
    with _unseeded(), _capture_data_dependent():
        return [check(s) for s in batch]


def _capture_data_dependent() -> Any:
    return torch._dynamo.config.patch(
        capture_dynamic_output_shape_ops=True, capture_scalar_outputs=True
    )


def expected_reason(
    op: Any, dtype: torch.dtype, grad: bool, one_sample: bool = False
) -> str | None:
    return expected_failure(op_id(op), dtype_name(dtype), grad, one_sample)


def shape_only_reason(op: Any, dtype: torch.dtype, grad: bool) -> str | None:
    entry = shape_only_entry(op_id(op), dtype_name(dtype), grad)
    return entry.reason if entry else None


__all__ = [
    "FAST_DTYPES",
    "FORWARD_DTYPES",
    "GRAD_DTYPE",
    "Result",
    "all_ops",
    "check_forward",
    "check_grad",
    "expected_reason",
    "forward_dtypes",
    "op_id",
    "run_op",
    "shape_only_reason",
    "supports_grad",
    "tolerance_for",
]
