"""Stage 0, the runtime: which XLA device runs programs, and how tensors get there.

Everything that touches JAX's global state (device choice, 64-bit mode, the
persistent compilation cache) is here, so the other stages stay pure.
"""

from torchtpu.runtime.device import default_device, jax_scope, platform_name
from torchtpu.runtime.rng import draw_seed, next_seed, tpu_generator
from torchtpu.runtime.transfer import from_device, residency, to_device, upload

__all__ = [
    "default_device",
    "draw_seed",
    "from_device",
    "jax_scope",
    "next_seed",
    "platform_name",
    "residency",
    "to_device",
    "tpu_generator",
    "upload",
]
