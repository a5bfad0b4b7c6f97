"""Errors torchtpu raises. Each message says what happened and what to do."""

from __future__ import annotations

from typing import Any

import torch


class TorchTPUError(RuntimeError):
    """Base class of torchtpu's errors."""


class RegistryError(TorchTPUError):
    """A lowering was registered twice, or malformed."""


class LoweringUnsupported(TorchTPUError):
    """Raised inside a lowering for a variant it cannot express in JAX.

    The compiler catches it and runs that one node in eager PyTorch instead
    (or raises :class:`UnsupportedOpError` in strict mode).
    """


class UnsupportedOpError(TorchTPUError):
    """An op has no lowering and strict mode forbids the eager fallback."""


def describe_value(value: Any) -> str:
    """A short description of an op argument: shape and dtype for tensors."""
    if isinstance(value, torch.Tensor):
        return f"Tensor{list(value.shape)}:{str(value.dtype).removeprefix('torch.')}"
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"Array{list(shape)}:{dtype}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(describe_value(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    return repr(value)


def unsupported_message(op: object, args: tuple, kwargs: dict, reason: str) -> str:
    described = [describe_value(a) for a in args]
    described += [f"{k}={describe_value(v)}" for k, v in kwargs.items()]
    return (
        f"torchtpu cannot lower {op}({', '.join(described)}): {reason}.\n"
        "What to do: leave strict mode (TORCHTPU_STRICT=0 or "
        "torchtpu.set_options(strict=False)) to run this op in eager PyTorch on the CPU, "
        "rewrite the model to avoid it, or report it so a lowering is added. "
        "torchtpu.examine(model, *inputs) lists every such op up front."
    )
