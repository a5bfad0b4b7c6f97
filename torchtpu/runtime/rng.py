"""Where torchtpu's random numbers come from.

Programs never hold a constant key: each one takes a seed input, drawn when it
runs (compiled graphs) or when each random op is recorded (device mode). The
seeds come from a ``torch.Generator``: PyTorch's default one for graphs on CPU
tensors, and the tpu device's own for tpu tensors, as CUDA has its own.
``torch.manual_seed`` seeds both (through ``torch.tpu.manual_seed_all``), so a
seeded run is reproducible; ``torch.tpu.get_rng_state``/``set_rng_state`` save
and restore the device's, which is what ``torch.random.fork_rng`` and
``torch.utils.checkpoint(preserve_rng_state=True)`` do.
"""

from __future__ import annotations

import jax
import numpy as np
import torch

_TPU = torch.Generator()
_TPU.manual_seed(torch.initial_seed())


def tpu_generator() -> torch.Generator:
    """The generator random ops on tpu tensors draw their seeds from."""
    return _TPU


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A 32-bit seed from ``generator`` (PyTorch's default one when ``None``)."""
    return int(torch.randint(0, 2**32 - 1, (), dtype=torch.int64, generator=generator))


def next_seed(device: jax.Device, generator: torch.Generator | None = None) -> jax.Array:
    """A seed input for a program's random ops, on ``device``."""
    return jax.device_put(np.uint32(draw_seed(generator)), device)
