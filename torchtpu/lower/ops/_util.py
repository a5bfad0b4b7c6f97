"""Small helpers shared by the op families."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import torch

from torchtpu.lower.dtypes import to_jax_dtype

aten = torch.ops.aten

# Accumulate these in float32, as PyTorch's CPU and CUDA kernels do.
LOW_PRECISION = {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)}


def jdtype(dtype: torch.dtype | None, default: Any = None) -> Any:
    return default if dtype is None else to_jax_dtype(dtype)


def canon_dim(dim: int, ndim: int) -> int:
    """PyTorch's dim wrapping; a 0-d tensor accepts dim 0 and -1."""
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"Dimension out of range (expected to be in [{-n}, {n - 1}], got {dim})")
    return dim % n


def canon_dims(dims: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """Normalised reduction dims; ``None`` or ``[]`` means every dim."""
    if dims is None:
        return tuple(range(ndim))
    if isinstance(dims, int):
        dims = [dims]
    if len(dims) == 0:
        return tuple(range(ndim))
    return tuple(sorted({canon_dim(d, ndim) for d in dims if ndim > 0}))


def accum_dtype(x: Any) -> Any:
    return jnp.float32 if x.dtype in LOW_PRECISION else x.dtype


def is_float(x: Any) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating)


def is_complex(x: Any) -> bool:
    return jnp.issubdtype(x.dtype, jnp.complexfloating)


def is_integral(x: Any, include_bool: bool = True) -> bool:
    if x.dtype == jnp.bool_:
        return include_bool
    return jnp.issubdtype(x.dtype, jnp.integer)
