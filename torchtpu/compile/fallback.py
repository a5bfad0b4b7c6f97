"""What happens when an op cannot run as XLA: one policy for every front end.

The ``tpu`` backend, ``compile_step`` and device mode all ask :func:`fall_back`
before they run an op in eager PyTorch on the CPU. In strict mode it raises
the same :class:`~torchtpu.errors.UnsupportedOpError` whichever front end hit
the op; otherwise it warns once per op and the fallback is counted in
``torchtpu.metrics()["fallbacks"]`` each time it runs. The warning says why:
the op has no lowering, its lowering refused these arguments, or its lowering
crashed (a torchtpu bug, reported as one). For a library op with no lowering
it also says why its own implementation could not be lowered instead
(``torchtpu.lower.custom``): a C++ kernel, a body that cannot be traced, or an
op inside it that does not lower.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from torchtpu.config import Options, options
from torchtpu.errors import (
    LoweringError,
    UnsupportedOpError,
    unsupported_message,
    user_stacklevel,
)
from torchtpu.metrics import count_fallback

Kind = Literal["missing", "refused", "crashed"]

_WARNED: set[str] = set()


def fall_back(
    op: Any,
    args: Any,
    kwargs: dict,
    reason: str,
    *,
    kind: Kind = "missing",
    opts: Options | None = None,
    count: bool = True,
) -> None:
    """Allow ``op`` to run in eager PyTorch, or raise in strict mode.

    ``args``/``kwargs`` describe the call (tensors or FakeTensors, for the
    message); ``reason`` says why it cannot lower; ``count`` counts one run now
    (front ends that decide once and run later count each run themselves).
    """
    opts = opts or options()
    name = str(op)
    if opts.strict:
        message = unsupported_message(name, tuple(args), dict(kwargs), reason)
        if kind == "crashed":
            raise LoweringError(
                message + "\nThis is a bug in torchtpu's lowering; please report it."
            )
        raise UnsupportedOpError(message + "\n(strict mode is on)")
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(_warning(name, reason, kind), stacklevel=user_stacklevel())
    if count:
        count_fallback(name)


def _warning(name: str, reason: str, kind: Kind) -> str:
    counted = "; it runs in eager PyTorch on the CPU (counted in torchtpu.metrics()['fallbacks'])."
    strict = " Set TORCHTPU_STRICT=1 to make this an error."
    tail = counted + strict
    if kind == "crashed":
        return (
            f"torchtpu: the XLA lowering of {name} crashed ({reason}){tail} This is a bug in "
            "torchtpu; please report it."
        )
    if kind == "refused":
        return f"torchtpu: {name} cannot be lowered for these arguments ({reason}){tail}"
    if reason.startswith("no lowering, and "):
        # A library op: why its own implementation could not stand in for a lowering
        # (compiled code, a body that cannot be traced, an op inside it that does not lower).
        why = reason.removeprefix("no lowering, and ")
        return (
            f"torchtpu: {name} has no XLA lowering{counted} Not lowered through its own "
            f"implementation because {why}.{strict}"
        )
    return f"torchtpu: {name} has no XLA lowering{tail}"


def reset_warnings() -> None:
    """Warn again for every op (tests use this)."""
    _WARNED.clear()
