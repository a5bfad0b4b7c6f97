"""Users' kernels on XLA devices.

- :func:`pallas_op` registers a JAX function built on Pallas kernels, with its
  backward, as a torch custom op (``torchtpu.kernels.pallas``);
  ``torchtpu.kernels.flash_attention`` is one such kernel.
- ``torchtpu.kernels.triton`` runs users' ``@triton.jit`` kernels on XLA devices by
  translating Triton's language to JAX.

See docs/kernels.md.
"""

from torchtpu.kernels.pallas import KernelError, PallasOp, pallas_call, pallas_op

__all__ = ["KernelError", "PallasOp", "pallas_call", "pallas_op"]
