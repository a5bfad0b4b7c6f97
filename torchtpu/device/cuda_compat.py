"""``patch_cuda()``: run a script written for CUDA on the ``tpu`` device, unchanged.

``torchtpu run script.py`` calls it before the script starts. Every way a
script names CUDA is sent to ``tpu``: ``.cuda()``, ``device="cuda"`` (through a
global ``TorchFunctionMode`` that rewrites device arguments),
``Module.to("cuda")``, ``torch.autocast("cuda")``, ``torch.amp.GradScaler("cuda")``,
``torch.load(..., map_location="cuda")``, and the ``torch.cuda`` calls scripts
make, which go to ``torch.tpu`` (``torchtpu/device/module.py``). CUDA features
with no counterpart on XLA raise a ``TorchTPUError`` naming the call and what
to do, never an ``AttributeError`` from inside torch.

:data:`MAPPED` and :data:`REFUSED` list them; ``docs/device_mode.md`` shows both.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from torchtpu.device.module import TPUModule
from torchtpu.device.tensor import DEVICE_TYPE
from torchtpu.errors import TorchTPUError

_PATCHED = False

# torch.cuda.<name> -> the torch.tpu function that answers it.
MAPPED = [
    "is_available",
    "is_initialized",
    "init",
    "device_count",
    "current_device",
    "set_device",
    "device",
    "get_device_name",
    "get_device_capability",
    "get_device_properties",
    "synchronize",
    "is_bf16_supported",
    "manual_seed",
    "manual_seed_all",
    "seed",
    "seed_all",
    "initial_seed",
    "get_rng_state",
    "set_rng_state",
    "get_rng_state_all",
    "set_rng_state_all",
    "memory_allocated",
    "max_memory_allocated",
    "memory_reserved",
    "max_memory_reserved",
    "reset_peak_memory_stats",
    "reset_max_memory_allocated",
    "memory_stats",
    "mem_get_info",
    "empty_cache",
    "current_stream",
    "default_stream",
    "stream",
    "set_stream",
    "Stream",
    "Event",
]

# torch.cuda.<name> with no XLA counterpart -> what to do instead.
REFUSED = {
    "CUDAGraph": "XLA compiles whole programs already: use torch.compile(model, backend='tpu') "
    "or torchtpu.compile_step, which replay one compiled program per step",
    "graph": "XLA compiles whole programs already: use torch.compile or torchtpu.compile_step",
    "make_graphed_callables": "use torch.compile(fn, backend='tpu'), which compiles the callable",
    "set_per_process_memory_fraction": "XLA's allocator is configured by the environment: "
    "XLA_PYTHON_CLIENT_MEM_FRACTION on GPUs; TPUs give a process the whole chip",
    "caching_allocator_alloc": "tpu memory belongs to XLA: allocate tensors instead",
    "caching_allocator_delete": "tpu memory belongs to XLA: drop the tensor instead",
    "get_allocator_backend": "tpu memory belongs to XLA, which has no PyTorch allocator",
}


def _to_tpu(value: Any) -> Any:
    if isinstance(value, str) and value.split(":")[0] == "cuda":
        return DEVICE_TYPE
    if isinstance(value, torch.device) and value.type == "cuda":
        return torch.device(DEVICE_TYPE, 0)
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


def _refusal(name: str, what: str, original: Any) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise TorchTPUError(
            f"torch.cuda.{name} has no counterpart on the {DEVICE_TYPE} device (XLA): {what}."
        )

    refuse.__name__ = name
    if isinstance(original, type):
        # Still a class, which libraries name in annotations (``torch.cuda.CUDAGraph | None``).
        return type(name, (), {"__init__": refuse, "__doc__": f"Refused on tpu: {what}."})
    return refuse


def _nvtx_noop(*args: Any, **kwargs: Any) -> Any:
    return _NullRange()


class _NullRange:
    """``torch.cuda.nvtx.range``: profiler markers, which XLA's profiler does not take."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _local_index(device: Any) -> Any:
    """CUDA device ``LOCAL_RANK`` (torchrun's one device per process) is this process's
    tpu device, ``tpu:0``."""
    local = os.environ.get("LOCAL_RANK")
    index = device.index if isinstance(device, torch.device) else device
    if isinstance(device, str):
        index = torch.device(device).index
    if local is not None and index == int(local):
        return 0
    return _to_tpu(device)


def _local_set_device(device: Any) -> None:
    TPUModule.set_device(_local_index(device))


def _local_device(device: Any) -> Any:
    return TPUModule.device(_local_index(device))


def _nccl_to_tpu(init_process_group: Any) -> Any:
    """``init_process_group("nccl")`` (or ``"cuda:nccl,cpu:gloo"``, or no backend, which
    means NCCL on CUDA) makes the ``tpu`` process group, which runs XLA collectives
    on tpu tensors and sends CPU tensors to gloo."""

    @functools.wraps(init_process_group)
    def init(backend: Any = None, *args: Any, **kwargs: Any) -> Any:
        name = str(backend if backend is not None else kwargs.pop("backend", "") or "")
        if not name or "nccl" in name:
            import torchtpu.shard.c10d  # noqa: F401 - registers the "tpu" backend

            backend = "tpu"
        if "device_id" in kwargs:
            kwargs["device_id"] = None
        return init_process_group(backend, *args, **kwargs)

    return init


def _ddp_on_tpu(ddp: type) -> None:
    """``DDP(model, device_ids=[local_rank], output_device=local_rank)`` name CUDA
    devices; on tpu they are this process's one device."""
    original = ddp.__init__

    @functools.wraps(original)
    def __init__(
        self: Any,
        module: Any,
        device_ids: Any = None,
        output_device: Any = None,
        *a: Any,
        **kw: Any,
    ) -> None:
        if device_ids is not None:
            device_ids = [_local_index(d) for d in device_ids]
        if output_device is not None:
            output_device = _local_index(output_device)
        original(self, module, device_ids, output_device, *a, **kw)

    ddp.__init__ = __init__


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
    for name in MAPPED:
        setattr(cuda, name, getattr(TPUModule, name))
    for name, what in REFUSED.items():
        setattr(cuda, name, _refusal(name, what, getattr(cuda, name, None)))
    cuda.get_arch_list = lambda: []
    cuda.is_current_stream_capturing = lambda: False
    for name in ("range_push", "range_pop", "mark", "range"):
        setattr(cuda.nvtx, name, _nvtx_noop)
    _patch_init(torch.amp.autocast_mode.autocast, 0, "device_type")
    _patch_init(torch.amp.GradScaler, 0, "device")
    import torch.distributed as dist

    if dist.is_available():
        dist.init_process_group = _nccl_to_tpu(dist.init_process_group)
        cuda.set_device = _local_set_device
        cuda.device = _local_device
        _ddp_on_tpu(torch.nn.parallel.DistributedDataParallel)
    from torchtpu.device import backend

    backend.cuda_means_tpu = True
    CudaToTPU().__enter__()
