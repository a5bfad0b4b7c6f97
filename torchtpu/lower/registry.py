"""The one lowering registry: ATen op overload -> JAX function, filled by a decorator.

Policy lives here, declared at registration, not inside each body:

- ``promote``: PyTorch's elementwise type-promotion kind. Tensor arguments are
  cast to the computation dtype before the body runs and the result is cast to
  the result dtype after, exactly as ``torch._prims_common.elementwise_dtypes``
  says, so bodies never repeat promotion logic.
- ``promote_args``: which positional arguments take part (default: all).
- ``rng``: the body takes a ``key=`` argument, a JAX PRNG key threaded in from
  the program's inputs. No lowering ever makes its own key.

A second registration of the same overload is an error, never a warning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from torchtpu.errors import RegistryError
from torchtpu.lower.dtypes import Promote


@dataclasses.dataclass(frozen=True)
class Lowering:
    op: Any
    fn: Callable[..., Any]
    promote: Promote | None = None
    promote_args: tuple[int, ...] | None = None
    rng: bool = False

    @property
    def name(self) -> str:
        return str(self.op)


_REGISTRY: dict[Any, Lowering] = {}


def register(
    *ops: Any,
    promote: Promote | None = None,
    promote_args: Sequence[int] | None = None,
    rng: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as the JAX lowering of each op overload in ``ops``."""

    _load_ops()  # our own lowerings first, so a later duplicate is the one refused

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for op in ops:
            if not isinstance(op, torch._ops.OpOverload):
                raise RegistryError(f"register() takes overloads (aten.add.Tensor), got {op!r}")
            if op in _REGISTRY:
                first = _REGISTRY[op].fn
                raise RegistryError(
                    f"{op} is registered twice: by {first.__module__}.{first.__name__} "
                    f"and by {fn.__module__}.{fn.__name__}"
                )
            args = tuple(promote_args) if promote_args is not None else None
            _REGISTRY[op] = Lowering(op, fn, promote, args, rng)
        return fn

    return decorate


def lookup(op: Any) -> Lowering | None:
    """The lowering registered for ``op``, or ``None``."""
    _load_ops()
    return _REGISTRY.get(op)


def registered_ops() -> list[Any]:
    """Every op overload with a lowering."""
    _load_ops()
    return list(_REGISTRY)


_loaded = False
_loading = False


def _load_ops() -> None:
    # Marked loaded only once the import succeeded: a module that fails to import
    # raises here, and again on the next lookup, rather than leaving the registry
    # silently half-filled for the rest of the process.
    global _loaded, _loading
    if _loaded or _loading:
        return
    _loading = True
    try:
        import torchtpu.lower.ops  # noqa: F401  (fills the registry)

        _loaded = True
    finally:
        _loading = False
