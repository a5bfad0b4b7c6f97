"""Where programs run: on one device, or SPMD over a mesh of devices.

A sharded step (``compile_step(..., strategy=s)``) runs its programs on the
strategy's mesh. While it does, :func:`current_mesh` names that mesh, and any
value a program is given that does not live on the mesh yet (an eager
fallback's result, a random seed, a CPU tensor) is put there replicated, so
one program never mixes arrays committed to different devices.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from torchtpu.metrics import bump

_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("torchtpu_mesh", default=None)


@contextlib.contextmanager
def on_mesh(mesh: Mesh | None) -> Iterator[Mesh | None]:
    """Run the enclosed programs on ``mesh`` (``None``: on the default device)."""
    token = _MESH.set(mesh)
    try:
        yield mesh
    finally:
        _MESH.reset(token)


def current_mesh() -> Mesh | None:
    """The mesh programs run on now, or ``None`` for the default device."""
    return _MESH.get()


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def onto_mesh(value: Any, mesh: Mesh) -> jax.Array:
    """``value`` (a device array or host data) as an array on ``mesh``: kept as it is
    if it lives there already, else copied there replicated (counted as a reshard)."""
    if isinstance(value, jax.Array):
        sharding = value.sharding
        if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
            return value
        if value.devices() == set(mesh.devices.flat) and len(value.devices()) > 1:
            return value
        bump("reshards")
    host = value if isinstance(value, jax.Array) else np.asarray(value)
    return put(host, replicated(mesh))


def put(value: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """``value`` (a device array or host data) placed by ``sharding``. A sharding that
    spans several processes takes each process's own copy of the whole value (every
    process holds the same one, as a model built from one seed does) and keeps the
    pieces its devices own, sliced on the device."""
    if sharding.is_fully_addressable or not isinstance(value, jax.Array):
        return jax.device_put(value, sharding)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def sharding_key(value: Any) -> Any:
    """What a program's cache key needs from an input's placement: its
    ``NamedSharding`` on a mesh, ``None`` on one device."""
    sharding = getattr(value, "sharding", None)
    return sharding if isinstance(sharding, NamedSharding) else None
