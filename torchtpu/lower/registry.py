"""The lowering registries: ATen op overload -> JAX function, filled by decorators.

Policy lives here, declared at registration, not inside each body:

- ``promote``: PyTorch's elementwise type-promotion kind. Tensor arguments are
  cast to the computation dtype before the body runs and the result is cast to
  the result dtype after, exactly as ``torch._prims_common.elementwise_dtypes``
  says, so bodies never repeat promotion logic.
- ``promote_args``: which positional arguments take part (default: all).
- ``accumulate``: bfloat16 and float16 array arguments are computed in
  float32 and the results cast back to the op's dtype, as PyTorch's CPU and
  CUDA kernels accumulate reductions, norms and pooling in float32.
- ``rng``: the body takes a ``key=`` argument, a JAX PRNG key threaded in from
  the program's inputs. No lowering ever makes its own key.
- ``supports``: a checker of the call's arguments (FakeTensors or meta
  tensors for tensors, Python values for the rest) that returns ``True`` or
  the reason the lowering refuses them. ``partition`` and ``examine`` consult
  it before anything is traced, so such a call falls back (or is reported) up
  front instead of failing while traced.

Library ops (a ``torch.library`` namespace other than ``aten`` and ``prims``)
with no lowering here but a Python kernel get one made on first lookup, which
traces that kernel to ATen ops (``torchtpu.lower.custom``); its ``via`` says so.

Ops whose output size depends on data have a second registry, of
:class:`SizedLowering` (``register_sized``); see ``torchtpu.lower.sized``.
A second registration of the same overload, in either registry, is an error,
never a warning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from torchtpu.errors import RegistryError
from torchtpu.lower.dtypes import Promote

Supports = Callable[..., "bool | str"]


@dataclasses.dataclass(frozen=True)
class Lowering:
    op: Any
    fn: Callable[..., Any]
    promote: Promote | None = None
    promote_args: tuple[int, ...] | None = None
    rng: bool = False
    accumulate: bool = False
    supports: Supports | None = None
    # How the op lowers when it is not by a lowering of ours: "its own implementation"
    # for library ops traced through their Python kernel (torchtpu.lower.custom).
    via: str = ""
    # The lowering also takes ``node_meta=``: the node's recorded arguments (FakeTensors,
    # with the strides eager PyTorch would give them), for ops that address memory by
    # strides (users' Triton kernels).
    node_meta: bool = False

    @property
    def name(self) -> str:
        return str(self.op)

    def refuses(self, args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
        """Why this lowering refuses the call, or ``None`` if it takes it."""
        if self.supports is None:
            return None
        verdict = self.supports(*args, **kwargs)
        if verdict is True:
            return None
        reason = (
            verdict if isinstance(verdict, str) else "the lowering does not take these arguments"
        )
        # Through its own implementation, a refusal means the op has no lowering at all.
        return f"no lowering, and {reason}" if self.via else reason


@dataclasses.dataclass(frozen=True)
class SizedLowering:
    """An op whose output size depends on data. ``padded`` runs inside ``jax.jit`` and
    returns ``(outputs, size)``: the outputs padded to the largest size they can
    have, and the true size. ``cut(args, kwargs)`` gives the function that slices
    those outputs (device arrays, outside the program) to a size, a Python int."""

    op: Any
    padded: Callable[..., tuple[Any, Any]]
    cut: Callable[[tuple, dict], Callable[[Any, int], Any]]


_REGISTRY: dict[Any, Lowering] = {}
_SIZED: dict[Any, SizedLowering] = {}


def _check_new(op: Any, table: dict[Any, Any], fn: Callable[..., Any], what: str) -> None:
    if not isinstance(op, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)):
        raise RegistryError(f"{what}() takes overloads (aten.add.Tensor), got {op!r}")
    if op in table:
        first = getattr(table[op], "fn", None) or table[op].padded
        raise RegistryError(
            f"{op} is registered twice in {what}: by {first.__module__}.{first.__name__} "
            f"and by {fn.__module__}.{fn.__name__}"
        )


def register(
    *ops: Any,
    promote: Promote | None = None,
    promote_args: Sequence[int] | None = None,
    rng: bool = False,
    accumulate: bool = False,
    supports: Supports | None = None,
    node_meta: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as the JAX lowering of each op overload in ``ops``."""

    _load_ops()  # our own lowerings first, so a later duplicate is the one refused

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for op in ops:
            _check_new(op, _REGISTRY, fn, "register")
            args = tuple(promote_args) if promote_args is not None else None
            _REGISTRY[op] = Lowering(
                op, fn, promote, args, rng, accumulate, supports, node_meta=node_meta
            )
        return fn

    return decorate


_BY_NAME: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}


def register_library(
    *names: str, **policy: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as the lowering of ops another library defines, named
    ``"namespace::op.overload"`` (``"transformers::grouped_mm_fallback.default"``).

    The library need not be imported: the lowering is bound to the op overload
    the first time a graph holds it. ``policy`` takes :func:`register`'s options."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name in names:
            if name in _BY_NAME:
                raise RegistryError(f"{name} is registered twice in register_library")
            _BY_NAME[name] = (fn, policy)
        return fn

    return decorate


def _by_name(op: Any) -> Lowering | None:
    schema = getattr(op, "_schema", None)
    if schema is None:
        return None
    found = _BY_NAME.get(f"{schema.name}.{op._overloadname}")
    if found is None:
        return None
    fn, policy = found
    args = policy.get("promote_args")
    _REGISTRY[op] = Lowering(
        op,
        fn,
        policy.get("promote"),
        tuple(args) if args is not None else None,
        policy.get("rng", False),
        policy.get("accumulate", False),
        policy.get("supports"),
    )
    return _REGISTRY[op]


def register_sized(
    op: Any, cut: Callable[[tuple, dict], Callable[[Any, int], Any]]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as the padded lowering of data-dependent-size op ``op``."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        _check_new(op, _SIZED, fn, "register_sized")
        _SIZED[op] = SizedLowering(op, fn, cut)
        return fn

    return decorate


_THROUGH_IMPLEMENTATION: dict[Any, Lowering] = {}


def lookup(op: Any) -> Lowering | None:
    """The lowering registered for ``op``; for a library op with none, the lowering
    through its own Python implementation (``torchtpu.lower.custom``); else ``None``.

    Example::

        lookup(torch.ops.aten.sin.default).fn  # the JAX function of aten.sin
    """
    _load_ops()
    found = _REGISTRY.get(op)
    if found is None and _BY_NAME:
        found = _by_name(op)
    if found is None and isinstance(op, torch._ops.OpOverload):
        found = _THROUGH_IMPLEMENTATION.get(op)
        if found is None:
            from torchtpu.lower.custom import through_implementation

            found = through_implementation(op)
            if found is not None:
                _THROUGH_IMPLEMENTATION[op] = found
    return found


def sized_lowering(op: Any) -> SizedLowering | None:
    """The sized lowering registered for ``op``, or ``None``."""
    _load_ops()
    return _SIZED.get(op)


def registered_ops() -> list[Any]:
    """Every op overload with a lowering."""
    _load_ops()
    return list(_REGISTRY)


def sized_ops() -> list[Any]:
    """Every op overload with a sized lowering."""
    _load_ops()
    return list(_SIZED)


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
        import torchtpu.lower.sized  # noqa: F401  (fills the sized registry)

        _loaded = True
    finally:
        _loading = False
