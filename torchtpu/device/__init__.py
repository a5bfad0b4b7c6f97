"""Device mode: unmodified eager PyTorch on ``torch.device("tpu")``.

After ``import torchtpu``, tensors and modules move to ``"tpu"`` with
``.to("tpu")``. Their ops are recorded (``lazy.py``) and run as fused, cached
XLA programs when a value is needed: ``.item()``, ``.cpu()``, printing,
``torchtpu.sync()``, the end of ``optimizer.step()``. ``TORCHTPU_EAGER=1`` runs
each op at once instead; ``TORCHTPU_BLOCKING=1`` also waits for it, so errors
surface at the line that caused them.
"""

from __future__ import annotations

from typing import Literal

from torchtpu.config import options, set_options
from torchtpu.device import lazy
from torchtpu.device.backend import install
from torchtpu.device.cuda_compat import patch_cuda
from torchtpu.device.tensor import is_tpu

Mode = Literal["fused", "eager", "blocking"]


def sync() -> None:
    """Run the ops recorded so far on the device (asynchronously) and start a new graph.

    Example::

        import torch, torchtpu
        x = torch.ones(4, device="tpu") * 3
        torchtpu.sync()
    """
    lazy.sync("explicit")


def device_mode() -> Mode:
    """``"fused"`` (the default), ``"eager"`` or ``"blocking"``: how tpu ops run now."""
    opts = options()
    return "blocking" if opts.blocking else "eager" if opts.eager else "fused"


def set_device_mode(mode: Mode) -> Mode:
    """Choose how ops on tpu tensors run, and return the previous mode.

    ``"fused"`` records ops and runs them as one cached program at each sync;
    ``"eager"`` runs each op at once, asynchronously; ``"blocking"`` runs each
    op at once and waits for it (for debugging: an error points at its line).

    Example::

        import torchtpu
        previous = torchtpu.set_device_mode("eager")
        torchtpu.set_device_mode(previous)
    """
    if mode not in ("fused", "eager", "blocking"):
        raise ValueError(f"device mode must be 'fused', 'eager' or 'blocking', not {mode!r}")
    previous = device_mode()
    lazy.sync("explicit")
    set_options(eager=mode == "eager", blocking=mode == "blocking")
    return previous


install()

__all__ = ["device_mode", "install", "is_tpu", "patch_cuda", "set_device_mode", "sync"]
