"""``torch.autocast("tpu")``: PyTorch's mixed-precision policy for the tpu device.

PyTorch ships autocast kernels for CUDA and CPU only, so the tpu device gets
its own, with CUDA's policy: matrix products and convolutions run in the
autocast dtype, numerically sensitive ops (softmax, norms, losses, exp/log)
in float32, everything else as its inputs come. Kernels cast the floating
tensor arguments, then call the op again below the autocast key.
"""

from __future__ import annotations

from typing import Any

import torch

# CUDA's "lower_precision_fp" and "fp32" lists, restricted to what models use.
LOWER_PRECISION = [
    "mm",
    "bmm",
    "addmm",
    "addbmm",
    "baddbmm",
    "matmul",
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d.input",
    "_convolution",
    "scaled_dot_product_attention",
    "prelu",
]
FLOAT32 = [
    "softmax.int",
    "log_softmax.int",
    "layer_norm",
    "group_norm",
    "cross_entropy_loss",
    "nll_loss",
    "mse_loss",
    "l1_loss",
    "smooth_l1_loss",
    "binary_cross_entropy_with_logits",
    "exp",
    "log",
    "log1p",
    "pow.Tensor_Scalar",
    "rsqrt",
    "norm.Scalar",
    "cosine_similarity",
    "cumsum",
    "sum",
    "prod",
]

_LIBRARIES: list[torch.library.Library] = []
_KEY = torch._C.DispatchKey.AutocastPrivateUse1


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _kernel(op: Any, to_float32: bool) -> Any:
    def kernel(*args: Any, **kwargs: Any) -> Any:
        dtype = torch.float32 if to_float32 else torch.get_autocast_dtype("tpu")
        args = _cast(args, dtype)
        kwargs = {k: _cast(v, dtype) for k, v in kwargs.items()}
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_KEY)):
            return op(*args, **kwargs)

    return kernel


def install() -> None:
    """Register the tpu autocast kernels (once per process)."""
    if _LIBRARIES:
        return
    fallthrough = torch.library.Library("_", "IMPL")
    fallthrough.fallback(torch.library.fallthrough_kernel, "AutocastPrivateUse1")
    kernels = torch.library.Library("aten", "IMPL")
    for names, to_float32 in ((LOWER_PRECISION, False), (FLOAT32, True)):
        for name in names:
            packet, _, overload = name.partition(".")
            op = getattr(getattr(torch.ops.aten, packet), overload or "default")
            kernels.impl(name, _kernel(op, to_float32), "AutocastPrivateUse1")
    _LIBRARIES.extend([fallthrough, kernels])
