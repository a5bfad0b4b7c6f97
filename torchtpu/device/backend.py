"""Registering ``tpu`` as a PyTorch device: the renamed PrivateUse1 backend.

PyTorch's Python path for a PrivateUse1 backend
(``torch.utils.backend_registration._setup_privateuseone_for_python_backend``)
renames the key, registers a device module (``torch.tpu``) and a device guard,
which is what lets the autograd engine run backward passes on tensors of the
new device. Factory calls (``torch.zeros(3, device="tpu")``) carry no tensor,
so they reach the PrivateUse1 key itself: one boxed fallback kernel sends them
to the same dispatcher as every other op.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from torchtpu.device import amp, lazy
from torchtpu.device.tensor import DEVICE_TYPE, factory

_LIBRARY: torch.library.Library | None = None
_ATEN_LIBRARY: torch.library.Library | None = None

# Factories whose generic kernel fills an empty tensor through an out= variant
# that resizes it; tpu tensors cannot be resized, so these get their own kernel.
_FACTORIES = [
    "arange",
    "arange.start",
    "arange.start_step",
    "eye",
    "eye.m",
    "linspace",
    "logspace",
    "randperm",
    "full",
    "zeros",
    "ones",
    "scalar_tensor",
    "rand",
    "randn",
    "randint",
    "randint.low",
    # Reached here, not through __torch_dispatch__, when PyTorch excludes the
    # Python key (torch.tensor(data, device="tpu") copies that way).
    "copy_",
    "_copy_from",
    "_to_copy",
]


class TPUModule:
    """``torch.tpu``: the device module PyTorch looks up for the ``tpu`` device."""

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def is_initialized() -> bool:
        return True

    @staticmethod
    def _is_in_bad_fork() -> bool:
        return False

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def current_device() -> int:
        return 0

    @staticmethod
    def set_device(device: Any) -> None:
        pass

    @staticmethod
    def manual_seed(seed: int) -> None:
        # Device-side randomness is drawn from PyTorch's default generator, so
        # torch.manual_seed already decides it.
        pass

    manual_seed_all = manual_seed

    @staticmethod
    def synchronize(device: Any = None) -> None:
        """Run the pending graph and wait for every result."""
        lazy.wait()

    @staticmethod
    def get_amp_supported_dtype() -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16]

    @staticmethod
    def is_bf16_supported() -> bool:
        return True


def _after_optimizer_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    lazy.sync("optimizer_step")


def install() -> None:
    """Make ``torch.device("tpu")`` a real device (once per process)."""
    global _LIBRARY
    if _LIBRARY is not None:
        return
    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

    taken = torch._C._get_privateuse1_backend_name()
    if taken not in {"privateuseone", DEVICE_TYPE}:
        raise RuntimeError(
            f"torchtpu cannot register the {DEVICE_TYPE!r} device: PyTorch's PrivateUse1 "
            f"backend is already named {taken!r} by another library in this process"
        )
    _setup_privateuseone_for_python_backend(DEVICE_TYPE, backend_module=TPUModule())
    _LIBRARY = torch.library.Library("_", "IMPL")
    _LIBRARY.fallback(factory, "PrivateUse1")
    global _ATEN_LIBRARY
    _ATEN_LIBRARY = torch.library.Library("aten", "IMPL")
    for name in _FACTORIES:
        packet, _, overload = name.partition(".")
        op = getattr(getattr(torch.ops.aten, packet), overload or "default")
        _ATEN_LIBRARY.impl(name, functools.partial(factory, op), "PrivateUse1")
    amp.install()
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(_after_optimizer_step)
