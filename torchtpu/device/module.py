"""``torch.tpu``: the device module PyTorch looks up for the ``tpu`` device.

It answers what scripts and libraries ask a device module (``torch.cuda`` has
the same names, and ``patch_cuda()`` points them here): availability and
device selection, synchronisation, the device's random generator, memory
statistics from JAX's device, streams and events, device properties.

One device (``tpu:0``) is visible to a process; XLA orders a program's work
itself, so every stream is the one stream of the device and an event is a
point in it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import torch

from torchtpu.device import lazy
from torchtpu.runtime import default_device, tpu_generator

DEVICE_TYPE = "tpu"


def _check_index(device: Any, call: str) -> None:
    index = device.index if isinstance(device, torch.device) else device
    if isinstance(device, str):
        index = torch.device(device).index
    if index not in (None, 0, -1):
        raise ValueError(
            f"{call}({device!r}): this process sees one device, {DEVICE_TYPE}:0 (run one "
            "process per device, as torchrun does)"
        )


class _DeviceContext:
    """``torch.tpu.device(i)``: selects device ``i`` for a block (there is one, ``tpu:0``)."""

    def __init__(self, device: Any) -> None:
        _check_index(device, f"torch.{DEVICE_TYPE}.device")

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


class Stream:
    """The device's stream. XLA orders each program's work, so every stream is the
    same one: waiting on one is waiting for the device."""

    def __init__(self, device: Any = None, priority: int = 0, **kwargs: Any) -> None:
        _check_index(device, f"torch.{DEVICE_TYPE}.Stream")
        self.priority = priority

    @property
    def device(self) -> torch.device:
        return torch.device(DEVICE_TYPE, 0)

    def synchronize(self) -> None:
        lazy.wait()

    def query(self) -> bool:
        return True

    def wait_stream(self, stream: Any) -> None:
        return None

    def wait_event(self, event: Any) -> None:
        return None

    def record_event(self, event: Event | None = None) -> Event:
        event = event or Event()
        event.record(self)
        return event

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stream)

    def __hash__(self) -> int:
        return hash(Stream)


_STREAM = Stream()


class Event:
    """A point in the device's work. ``record()`` runs what was recorded and waits
    for it, so ``elapsed_time`` between two events measures the device's work
    between them (in milliseconds, as ``torch.cuda.Event`` does)."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, **kwargs: Any):
        self.enable_timing = enable_timing
        self._time: float | None = None

    def record(self, stream: Any = None) -> None:
        lazy.wait()
        self._time = time.perf_counter()

    def synchronize(self) -> None:
        lazy.wait()

    def wait(self, stream: Any = None) -> None:
        return None

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: Event) -> float:
        if not (self.enable_timing and end.enable_timing):
            raise RuntimeError(
                f"torch.{DEVICE_TYPE}.Event.elapsed_time: both events need enable_timing=True"
            )
        if self._time is None or end._time is None:
            raise RuntimeError(
                f"torch.{DEVICE_TYPE}.Event.elapsed_time: record() both events first"
            )
        return (end._time - self._time) * 1000.0


@dataclasses.dataclass(frozen=True)
class DeviceProperties:
    """What ``get_device_properties`` reports, with ``torch.cuda``'s field names."""

    name: str
    total_memory: int
    major: int = 0
    minor: int = 0
    multi_processor_count: int = 1
    is_integrated: bool = False
    is_multi_gpu_board: bool = False
    platform: str = ""


# --- memory ------------------------------------------------------------------------

_PEAK = [0]


def _stats() -> dict[str, int]:
    """JAX's memory statistics of the device; on XLA:CPU, which keeps none, the bytes
    of the live arrays on it."""
    device = default_device()
    stats = device.memory_stats()
    if stats:
        return stats
    in_use = sum(a.nbytes for a in jax.live_arrays() if device in a.devices())
    _PEAK[0] = max(_PEAK[0], in_use)
    return {"bytes_in_use": in_use, "peak_bytes_in_use": _PEAK[0], "bytes_reserved": in_use}


def _bytes_limit() -> int:
    stats = default_device().memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


class TPUModule:
    """``torch.tpu``. Example::

    import torch, torchtpu
    torch.tpu.manual_seed(0)
    x = torch.randn(4, device="tpu")
    torch.tpu.synchronize()
    """

    # Read by torch.utils.checkpoint: an initialised device has RNG state to preserve.
    _initialized = True
    device = _DeviceContext
    Stream = Stream
    Event = Event

    # --- devices ---

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def is_initialized() -> bool:
        return True

    @staticmethod
    def init() -> None:
        default_device()

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
        _check_index(device, f"torch.{DEVICE_TYPE}.set_device")

    @staticmethod
    def get_device_name(device: Any = None) -> str:
        xla = default_device()
        return f"{xla.device_kind} (torchtpu on XLA {xla.platform})"

    @staticmethod
    def get_device_capability(device: Any = None) -> tuple[int, int]:
        return (0, 0)

    @staticmethod
    def get_device_properties(device: Any = None) -> DeviceProperties:
        xla = default_device()
        return DeviceProperties(
            name=TPUModule.get_device_name(device),
            total_memory=_bytes_limit(),
            multi_processor_count=getattr(xla, "core_count", 1) or 1,
            platform=xla.platform,
        )

    @staticmethod
    def synchronize(device: Any = None) -> None:
        """Run the pending graph and wait for every result."""
        lazy.wait()

    @staticmethod
    def get_amp_supported_dtype() -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16]

    @staticmethod
    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return True

    # --- streams ---

    @staticmethod
    def current_stream(device: Any = None) -> Stream:
        return _STREAM

    default_stream = current_stream

    @staticmethod
    def stream(stream: Any = None) -> Stream:
        return stream if stream is not None else _STREAM

    @staticmethod
    def set_stream(stream: Any) -> None:
        return None

    # --- random numbers ---

    @staticmethod
    def manual_seed(seed: int) -> None:
        """Seed the tpu device's generator (``torch.manual_seed`` calls this too)."""
        tpu_generator().manual_seed(int(seed))

    manual_seed_all = manual_seed

    @staticmethod
    def seed() -> None:
        tpu_generator().seed()

    seed_all = seed

    @staticmethod
    def initial_seed() -> int:
        return tpu_generator().initial_seed()

    @staticmethod
    def get_rng_state(device: Any = None) -> torch.Tensor:
        """The device generator's state, a CPU ByteTensor (as ``torch.cuda`` gives)."""
        return tpu_generator().get_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, device: Any = None) -> None:
        tpu_generator().set_state(state)

    @staticmethod
    def get_rng_state_all() -> list[torch.Tensor]:
        return [tpu_generator().get_state()]

    @staticmethod
    def set_rng_state_all(states: list[torch.Tensor]) -> None:
        tpu_generator().set_state(states[0])

    # --- memory ---

    @staticmethod
    def memory_allocated(device: Any = None) -> int:
        return int(_stats().get("bytes_in_use", 0))

    @staticmethod
    def max_memory_allocated(device: Any = None) -> int:
        return int(_stats().get("peak_bytes_in_use", 0))

    @staticmethod
    def memory_reserved(device: Any = None) -> int:
        stats = _stats()
        return int(stats.get("bytes_reserved", stats.get("bytes_in_use", 0)))

    max_memory_reserved = max_memory_allocated

    @staticmethod
    def reset_peak_memory_stats(device: Any = None) -> None:
        _PEAK[0] = int(_stats().get("bytes_in_use", 0))

    reset_max_memory_allocated = reset_peak_memory_stats

    @staticmethod
    def memory_stats(device: Any = None) -> dict[str, int]:
        stats = _stats()
        return {
            "allocated_bytes.all.current": int(stats.get("bytes_in_use", 0)),
            "allocated_bytes.all.peak": int(stats.get("peak_bytes_in_use", 0)),
            "reserved_bytes.all.current": int(stats.get("bytes_reserved", 0)),
        }

    @staticmethod
    def mem_get_info(device: Any = None) -> tuple[int, int]:
        total = _bytes_limit()
        return max(total - TPUModule.memory_allocated(), 0), total

    @staticmethod
    def empty_cache() -> None:
        """XLA frees a buffer when its last array goes; nothing is cached to release."""
        return None
