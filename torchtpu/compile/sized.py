"""Running an op whose output size depends on data (see ``torchtpu.lower.sized``).

The ``tpu`` backend, ``compile_step`` and device mode all run such ops here: a
program computes the result padded to its largest size and the true size; the
size (a few bytes) is read back to the host and counted in
``metrics()["size_reads"]``; the result is sliced to it. The programs are
ordinary :class:`~torchtpu.compile.program.Program` objects in the one cache.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import numpy as np

from torchtpu.compile.program import CACHE, compile_function
from torchtpu.errors import LoweringUnsupported, unsupported_message, user_site
from torchtpu.lower.registry import sized_lowering
from torchtpu.metrics import bump


class SizedFailure(LoweringUnsupported):
    """The op's padded lowering cannot take these arguments."""


def run_sized(op: Any, args: tuple, kwargs: dict, device: jax.Device, meta: Any = None) -> Any:
    """``op(*args, **kwargs)`` on device arrays, for an op with a sized lowering.

    Returns device arrays (and Python values for ``.item()``), with the sizes
    of this run. ``meta`` (the node's recorded value, when there is one) gives
    the Python type of a scalar result.
    """
    lowering = sized_lowering(op)
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    statics = {i: v for i, v in enumerate(leaves) if not isinstance(v, jax.Array)}
    arrays = [v for v in leaves if isinstance(v, jax.Array)]
    signature = (
        treedef,
        tuple(
            (v.shape, v.dtype) if isinstance(v, jax.Array) else ("static", _hashable(v))
            for v in leaves
        ),
    )
    key = ("sized", op, signature)
    program = CACHE.get(key)
    if program is None:

        def padded(*given: jax.Array) -> Any:
            it = iter(given)
            flat = [statics[i] if i in statics else next(it) for i in range(len(leaves))]
            a, k = jax.tree_util.tree_unflatten(treedef, flat)
            outputs, size = lowering.padded(*a, **k)
            return [outputs, size]

        specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays]
        try:
            program = compile_function(
                padded, specs, name=f"sized {op}", origin=user_site(), n_ops=1
            )
        except Exception as exc:
            reason = f"its padded lowering failed with {type(exc).__name__}: {exc}"
            raise SizedFailure(unsupported_message(op, args, kwargs, reason)) from exc
        CACHE.put(key, program)
    outputs, size = program(arrays)
    bump("size_reads")
    size = _python_scalar(size, meta)
    return lowering.cut(args, kwargs)(outputs, size)


def run_follow_up(key: Hashable, fn: Callable[..., Any], arrays: Sequence[jax.Array]) -> Any:
    """Run ``fn`` on ``arrays`` as a cached program: the second half of a sized op whose
    output has no bound to pad to (``bincount``'s counts, once its length is known)."""
    full_key = ("sized-follow-up", key, tuple((a.shape, a.dtype) for a in arrays))
    program = CACHE.get(full_key)
    if program is None:
        specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays]
        program = compile_function(
            lambda *xs: [fn(*xs)], specs, name=f"sized {key[0]}", origin=user_site(), n_ops=1
        )
        CACHE.put(full_key, program)
    (out,) = program(list(arrays))
    return out


def _python_scalar(value: jax.Array, meta: Any) -> Any:
    import torch

    item = np.asarray(value).item()
    if isinstance(meta, (torch.SymBool, bool)):
        return bool(item)
    if isinstance(meta, (torch.SymFloat, float)):
        return float(item)
    return item


def _hashable(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)
