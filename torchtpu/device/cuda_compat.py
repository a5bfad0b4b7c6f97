"""``patch_cuda()``: run a script written for CUDA on the ``tpu`` device, unchanged.

Every way a script names CUDA is sent to ``tpu``: ``.cuda()``,
``device="cuda"`` (through a global ``TorchFunctionMode`` that rewrites device
arguments), ``Module.to("cuda")``, the ``torch.cuda`` queries a script asks
(``is_available``, ``synchronize``, ``device_count``, ...),
``torch.autocast("cuda")`` and ``torch.amp.GradScaler("cuda")``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from torchtpu.device import lazy
from torchtpu.device.tensor import DEVICE_TYPE

_PATCHED = False


def _to_tpu(value: Any) -> Any:
    if isinstance(value, str) and value.split(":")[0] == "cuda":
        return DEVICE_TYPE
    if isinstance(value, torch.device) and value.type == "cuda":
        return torch.device(DEVICE_TYPE, 0)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return value


def _rewrite_kwargs(kwargs: dict) -> dict:
    if "device" in kwargs:
        kwargs = {**kwargs, "device": _to_tpu(kwargs["device"])}
    return kwargs


class CudaToTPU(TorchFunctionMode):
    """Rewrites ``device="cuda"`` (and ``tensor.to("cuda")``) to the tpu device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = _rewrite_kwargs(kwargs or {})
        if func is torch.Tensor.to:
            args = tuple(_to_tpu(a) for a in args)
        return func(*args, **kwargs)


def _tensor_cuda(self: torch.Tensor, device: Any = None, non_blocking: bool = False, **_: Any):
    return self.to(DEVICE_TYPE, non_blocking=non_blocking)


def _module_cuda(self: torch.nn.Module, device: Any = None) -> torch.nn.Module:
    return self.to(DEVICE_TYPE)


def _patch_init(cls: type, position: int, name: str) -> None:
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > position:
            args = (*args[:position], _to_tpu(args[position]), *args[position + 1 :])
        if name in kwargs:
            kwargs[name] = _to_tpu(kwargs[name])
        original(self, *args, **kwargs)

    cls.__init__ = __init__


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def patch_cuda() -> None:
    """Map CUDA to the tpu device for the rest of this process.

    Example::

        import torch, torchtpu
        torchtpu.patch_cuda()
        x = torch.ones(3, device="cuda")      # a tpu tensor
        assert torch.cuda.is_available()
    """
    global _PATCHED
    if _PATCHED:
        return
    _PATCHED = True
    torch.Tensor.cuda = _tensor_cuda
    torch.nn.Module.cuda = _module_cuda
    module_to = torch.nn.Module.to

    @functools.wraps(module_to)
    def to(self: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
        return module_to(self, *(_to_tpu(a) for a in args), **_rewrite_kwargs(kwargs))

    torch.nn.Module.to = to
    cuda = torch.cuda
    cuda.is_available = lambda: True
    cuda.device_count = lambda: 1
    cuda.current_device = lambda: 0
    cuda.is_bf16_supported = lambda *a, **k: True
    cuda.get_device_name = lambda *a, **k: f"torchtpu ({DEVICE_TYPE})"
    cuda.synchronize = lambda *a, **k: lazy.wait()
    for name in ("set_device", "empty_cache", "manual_seed", "manual_seed_all"):
        setattr(cuda, name, _noop)
    for name in ("memory_allocated", "max_memory_allocated", "memory_reserved"):
        setattr(cuda, name, lambda *a, **k: 0)
    cuda.reset_peak_memory_stats = _noop
    _patch_init(torch.amp.autocast_mode.autocast, 0, "device_type")
    _patch_init(torch.amp.GradScaler, 0, "device")
    CudaToTPU().__enter__()
