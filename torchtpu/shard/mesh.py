"""Device meshes: the devices of a job, laid out on named axes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from torchtpu.errors import ShardingError
from torchtpu.runtime import default_device

CPU_HINT = (
    "On the CPU, XLA_FLAGS=--xla_force_host_platform_device_count=8 (set before JAX "
    "starts) gives 8 virtual devices."
)


def make_mesh(axes: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh of ``devices`` (default: every device of torchtpu's platform, on every
    host) with the named ``axes``; one size may be ``-1``, for the devices left over.

    Example::

        mesh = torchtpu.shard.make_mesh({"fsdp": -1, "model": 2})
    """
    if devices is None:
        devices = jax.devices(default_device().platform)
    devices = list(devices)
    names = tuple(axes)
    sizes = [int(n) for n in axes.values()]
    if not names:
        raise ShardingError("make_mesh: give at least one axis, e.g. {'data': -1}")
    free = [i for i, n in enumerate(sizes) if n == -1]
    if len(free) > 1 or any(n == 0 or n < -1 for n in sizes):
        raise ShardingError(
            f"make_mesh({dict(axes)}): axis sizes must be positive, with at most one -1"
        )
    if free:
        rest = math.prod(n for n in sizes if n != -1)
        if len(devices) % rest:
            raise ShardingError(
                f"make_mesh({dict(axes)}): {len(devices)} devices do not split into axes "
                f"of {rest} for the fixed sizes; pick sizes that divide {len(devices)}"
            )
        sizes[free[0]] = len(devices) // rest
    need = math.prod(sizes)
    if need > len(devices):
        platform = devices[0].platform if devices else default_device().platform
        raise ShardingError(
            f"make_mesh({dict(zip(names, sizes, strict=True))}): the mesh needs {need} "
            f"devices, but JAX sees {len(devices)} {platform} device(s). Use a smaller "
            f"mesh, or more devices. {CPU_HINT}"
        )
    if need == len(jax.devices()) and devices == list(jax.devices()):
        # JAX's own layout: on TPU it follows the physical torus. Auto axes: XLA
        # propagates shardings from the parameters' and the batch's.
        auto = (jax.sharding.AxisType.Auto,) * len(names)
        return jax.make_mesh(tuple(sizes), names, axis_types=auto, devices=devices)
    return Mesh(np.array(devices[:need], dtype=object).reshape(sizes), names)


def describe_mesh(mesh: Mesh) -> str:
    """``"fsdp=4 x model=2 (8 cpu devices)"``."""
    axes = " x ".join(f"{name}={size}" for name, size in mesh.shape.items())
    platform = next(iter(mesh.devices.flat)).platform
    return f"{axes} ({mesh.devices.size} {platform} device(s))"
