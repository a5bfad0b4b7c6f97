"""One process per device: JAX's distributed runtime, started from torchrun's environment.

``torchrun --nproc_per_node=N`` starts N processes and tells each its place in
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
:func:`initialize_from_env` turns that into ``jax.distributed.initialize``:

- ``num_processes = WORLD_SIZE``, ``process_id = RANK``, and
  ``local_device_ids = [LOCAL_RANK]``, so each process owns one device; with
  one process per host (``LOCAL_WORLD_SIZE=1``) it owns all of the host's;
- the coordinator runs in process 0 on ``MASTER_ADDR`` at ``MASTER_PORT + 1``
  (``MASTER_PORT`` itself is torch's TCPStore), or at
  ``TORCHTPU_COORDINATOR_PORT``;
- on the CPU, collectives between processes go over gloo
  (``jax_cpu_collectives_implementation``);
- a process that dies is noticed by the others through missed heartbeats
  (``TORCHTPU_HEARTBEAT_TIMEOUT`` seconds, default 30): they stop with an error
  instead of waiting forever.

All of it must happen before JAX creates its backend (the first tpu tensor,
the first program), so ``torchtpu run`` calls it before the script starts and
the ``tpu`` process group calls it when it is created. A second call is a no-op.
"""

from __future__ import annotations

import dataclasses
import os

import jax
from jax._src import xla_bridge

from torchtpu.errors import TorchTPUError
from torchtpu.runtime import default_device

DOCS = "docs/distributed.md"


@dataclasses.dataclass(frozen=True)
class Launch:
    """Where this process stands in the job: what ``jax.distributed`` was started with."""

    world_size: int
    rank: int
    local_rank: int
    coordinator: str


_launched: Launch | None = None


def launched() -> Launch | None:
    """The job this process joined with :func:`initialize_from_env`, or ``None``."""
    return _launched


def _int_env(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise TorchTPUError(f"{name}={value!r} must be an integer") from exc


def initialize_from_env(rank: int | None = None, world_size: int | None = None) -> Launch | None:
    """Join the job torchrun started (``jax.distributed.initialize``); idempotent.

    ``rank`` and ``world_size`` default to ``RANK`` and ``WORLD_SIZE``. Returns
    ``None`` for a job of one process, which needs no distributed runtime.

    Example::

        # under torchrun --nproc_per_node=2 ...
        from torchtpu.shard.launch import initialize_from_env
        job = initialize_from_env()
        job.rank, job.world_size       # (0, 2) in the first process
    """
    global _launched
    world = world_size if world_size is not None else _int_env("WORLD_SIZE", 1)
    me = rank if rank is not None else _int_env("RANK", 0)
    if _launched is not None:
        if (world, me) != (_launched.world_size, _launched.rank):
            raise TorchTPUError(
                f"this process joined a job as rank {_launched.rank} of "
                f"{_launched.world_size}; it cannot join again as rank {me} of {world}. "
                f"One process belongs to one job (see {DOCS})"
            )
        return _launched
    if world <= 1:
        return None
    local_rank = _int_env("LOCAL_RANK", me)
    # One process per device (torchrun --nproc_per_node=N): each its own device.
    # One process per host (N=1, as on a TPU pod slice): every device of the host.
    per_host = _int_env("LOCAL_WORLD_SIZE", None)
    local_ids = None if per_host == 1 else [local_rank]
    addr = os.environ.get("MASTER_ADDR")
    master_port = _int_env("MASTER_PORT")
    port = _int_env("TORCHTPU_COORDINATOR_PORT", None if master_port is None else master_port + 1)
    if not addr or port is None:
        raise TorchTPUError(
            f"rank {me} of {world}: JAX's coordinator needs an address; set MASTER_ADDR and "
            "MASTER_PORT (torchrun sets both) or TORCHTPU_COORDINATOR_PORT "
            f"(see {DOCS})"
        )
    if xla_bridge.backends_are_initialized():
        raise TorchTPUError(
            f"rank {me} of {world}: JAX's backend already exists, so this process can no "
            "longer join the job. Create the process group (dist.init_process_group) "
            "before the first tpu tensor or program, or launch the script with "
            f"`torchrun ... --no-python torchtpu run script.py`, which joins at start (see {DOCS})"
        )
    # Only the CPU client reads it; on GPUs and TPUs the devices' own links are used.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    heartbeat = _int_env("TORCHTPU_HEARTBEAT_TIMEOUT", 30)
    coordinator = f"{addr}:{port}"
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=world,
        process_id=me,
        local_device_ids=local_ids,
        initialization_timeout=_int_env("TORCHTPU_INIT_TIMEOUT", 300),
        heartbeat_timeout_seconds=heartbeat,
        shutdown_timeout_seconds=max(2 * heartbeat, 10),
    )
    _launched = Launch(world, me, local_rank, coordinator)
    return _launched


def process_devices() -> list[jax.Device]:
    """One device per process, in rank order: the devices the process group's
    collectives run over."""
    local = default_device()
    devices: dict[int, jax.Device] = {}
    for d in jax.devices(local.platform):
        devices.setdefault(d.process_index, d)
    devices[local.process_index] = local
    return [devices[p] for p in sorted(devices)]
