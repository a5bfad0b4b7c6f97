"""dtype correspondence between PyTorch and JAX, and PyTorch's promotion rules."""

from __future__ import annotations

from numbers import Number
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch._prims_common import ELEMENTWISE_TYPE_PROMOTION_KIND as Promote
from torch._prims_common import elementwise_dtypes

_TORCH_TO_JAX: dict[torch.dtype, Any] = {
    torch.float32: jnp.float32,
    torch.float64: jnp.float64,
    torch.float16: jnp.float16,
    torch.bfloat16: jnp.bfloat16,
    torch.int8: jnp.int8,
    torch.int16: jnp.int16,
    torch.int32: jnp.int32,
    torch.int64: jnp.int64,
    torch.uint8: jnp.uint8,
    torch.uint16: jnp.uint16,
    torch.uint32: jnp.uint32,
    torch.uint64: jnp.uint64,
    torch.bool: jnp.bool_,
    torch.complex64: jnp.complex64,
    torch.complex128: jnp.complex128,
    torch.float8_e4m3fn: jnp.float8_e4m3fn,
    torch.float8_e5m2: jnp.float8_e5m2,
}
_JAX_TO_TORCH = {np.dtype(v): k for k, v in _TORCH_TO_JAX.items()}
# JAX has no complex32: PyTorch's is held as complex64 whose parts are float16
# values (see round_complex32), and becomes complex32 again when it leaves.
_TORCH_TO_JAX[torch.complex32] = jnp.complex64


def to_jax_dtype(dtype: torch.dtype) -> Any:
    try:
        return _TORCH_TO_JAX[dtype]
    except KeyError:
        raise TypeError(f"torchtpu has no JAX dtype for torch dtype {dtype}") from None


def to_torch_dtype(dtype: Any) -> torch.dtype:
    try:
        return _JAX_TO_TORCH[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"torchtpu has no torch dtype for JAX dtype {dtype}") from None


def round_complex32(x: Any) -> Any:
    """Round a complex64 array's parts to float16, as a complex32 tensor holds them."""
    half = lambda part: part.astype(jnp.float16).astype(jnp.float32)  # noqa: E731
    return (half(x.real) + 1j * half(x.imag)).astype(jnp.complex64)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A NumPy view of CPU tensor ``t`` (contiguous), bfloat16 included.

    NumPy has no bfloat16 of its own: the bits go through int16 and come out
    as ml_dtypes' bfloat16, which JAX uses.
    """
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.complex32:
        t = t.to(torch.complex64)
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_TORCH_TO_JAX[torch.bfloat16])
    return t.numpy()


def from_numpy(a: np.ndarray) -> torch.Tensor:
    """A torch tensor owning a copy of ``a``, bfloat16 included."""
    a = np.array(a, order="C", copy=True)  # not ascontiguousarray: it makes 0-d arrays 1-d
    if a.dtype == np.dtype(_TORCH_TO_JAX[torch.bfloat16]):
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def meta_like(value: Any) -> Any:
    """A meta tensor with ``value``'s shape and dtype; Python numbers pass through."""
    if isinstance(value, (Number, torch.SymInt, torch.SymFloat, torch.SymBool)):
        return value
    if jax.export.is_symbolic_dim(value):  # a symbolic size used as a number
        return 1
    # Only the rank takes part in promotion: a symbolic size (an exported program's
    # batch, say) stands in as 1.
    shape = tuple(1 if jax.export.is_symbolic_dim(d) else d for d in value.shape)
    return torch.empty(shape, dtype=to_torch_dtype(value.dtype), device="meta")


def promoted_dtypes(args: list[Any], kind: Promote) -> tuple[torch.dtype, torch.dtype]:
    """PyTorch's (computation dtype, result dtype) for an elementwise op on ``args``."""
    return elementwise_dtypes(*[meta_like(a) for a in args], type_promotion_kind=kind)


def is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, Number)
