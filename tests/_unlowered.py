"""A custom op with no lowering, and never one: for fallback and examine tests.

Defined once here: registering the same op name from two test modules in one
process breaks torch.library (a native error under fake tensors).
"""

import torch

OP = "torchtpu_test.mystery.default"


@torch.library.custom_op("torchtpu_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return torch.special.bessel_j0(x)


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


@torch.library.custom_op("torchtpu_test::mystery_cpu", mutates_args=(), device_types="cpu")
def mystery_cpu(x: torch.Tensor) -> torch.Tensor:
    """A kernel for the CPU only: on tpu tensors it can only take the eager fallback."""
    return torch.special.bessel_j0(x)


@mystery_cpu.register_fake
def _(x):
    return torch.empty_like(x)
