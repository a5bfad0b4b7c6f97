"""Errors torchtpu raises. Each message says what happened and what to do, and
where a page explains more, names its section of ``docs/errors.md``."""

from __future__ import annotations

import os
import sys
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


class LoweringError(TorchTPUError):
    """An op's lowering crashed: a bug in torchtpu, never the user's mistake."""


class CompileError(TorchTPUError):
    """XLA could not compile a program (docs/errors.md#compile-error)."""


class DeviceError(TorchTPUError):
    """The device failed while running a program (docs/errors.md#device-error)."""


class OutOfMemoryError(DeviceError):
    """The device ran out of memory running a program (docs/errors.md#out-of-memory)."""


class IndexOutOfRangeError(TorchTPUError, IndexError):
    """An indexing op in a compiled program got an index out of range
    (docs/errors.md#index-out-of-range). Raised when the program's results are
    next read; an ``IndexError`` (as eager PyTorch raises) and a ``RuntimeError``."""


class CheckpointError(TorchTPUError):
    """A checkpoint cannot be written or read as asked: a value of a type it does not
    store, a missing entry, an existing directory (docs/lifecycle.md#checkpoints)."""


class CheckpointIntegrityError(CheckpointError):
    """A checkpoint's files do not match its manifest: a changed, truncated, missing,
    unlisted or linked file (docs/lifecycle.md#checkpoints). Nothing of it is used."""


class ShardingError(TorchTPUError, ValueError):
    """A strategy cannot place a tensor or a batch on its mesh
    (docs/errors.md#sharding)."""


class CollectiveError(TorchTPUError):
    """A collective the ``tpu`` process group cannot run, or one that failed
    because another process died (docs/distributed.md)."""


class RecompileError(TorchTPUError):
    """A graph recompiled more often than ``max_recompiles`` allows
    (docs/errors.md#recompiles)."""


class RecompileWarning(UserWarning):
    """A graph has recompiled ``warn_recompiles`` times (docs/errors.md#recompiles)."""


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
        "torchtpu.examine(model, *inputs) lists every such op up front. "
        "See docs/errors.md#unsupported-op."
    )


import jax  # noqa: E402

_OUR_DIRS = (
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.abspath(jax.__file__)),
    os.path.dirname(os.path.abspath(torch.__file__)),
    os.path.dirname(os.path.abspath(os.__file__)),
)


def is_user_frame(filename: str) -> bool:
    path = os.path.abspath(filename)
    return not path.startswith(_OUR_DIRS) and not filename.startswith("<")


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning raised by our caller point at the user's line."""
    frame, level = sys._getframe(1), 1
    while frame is not None:
        if is_user_frame(frame.f_code.co_filename):
            return level
        frame, level = frame.f_back, level + 1
    return 1


def user_site() -> str:
    """``file:line`` of the innermost caller outside torch, torchtpu and the stdlib."""
    frame = sys._getframe(1)
    while frame is not None:
        if is_user_frame(frame.f_code.co_filename):
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"
