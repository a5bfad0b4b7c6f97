"""State trees to plain data and back: JSON for the structure, tensors kept apart.

A ``state_dict()`` is a tree of dicts, lists and tuples whose leaves are tensors,
numbers, strings, ``None`` and the odd ``torch.dtype``. :func:`encode` turns it
into JSON-able data in which every tensor is a reference ``{"t": "tensor",
"key": ...}`` into a flat ``{key: host tensor}`` map (saved as safetensors), and
:func:`decode` turns that back into the same tree: dict keys keep their types
(an optimizer's state is keyed by int), tuples stay tuples, non-finite floats
survive. Nothing here is pickled, so reading a tree runs no code.

Host copies are taken once per buffer: a tied weight appears twice in a model's
``state_dict`` but is stored once, and a tpu tensor's copies are all started
before the first is waited for. An array split across processes (not fully
addressable) is never gathered: the snapshot keeps only the shards this process
owns (:class:`Split`), which :mod:`torchtpu.checkpoint.sharded` writes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np
import torch

from torchtpu.errors import CheckpointError
from torchtpu.lower import checks
from torchtpu.lower.dtypes import from_numpy, to_torch_dtype

_DTYPES = {
    str(d).removeprefix("torch."): d for d in vars(torch).values() if isinstance(d, torch.dtype)
}


Bounds = tuple[tuple[int, int], ...]  # [start, stop) in each dimension


@dataclasses.dataclass
class Split:
    """An array split across processes, as this process saves it: the global shape,
    torch dtype and sharding, and the shards it owns (``replica_id == 0``) with
    their global bounds. Another process owns the rest."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    sharding: str
    pieces: list[tuple[Bounds, torch.Tensor]]


def bounds(index: tuple[slice, ...], shape: tuple[int, ...]) -> Bounds:
    """A shard's ``index`` (slices, as ``jax.Array.addressable_shards`` gives them)
    as ``((start, stop), ...)`` in each dimension of ``shape``."""
    return tuple(sl.indices(n)[:2] for sl, n in zip(index, shape, strict=True))


class Snapshot:
    """Host copies of a state's tensors, gathered while it is encoded.

    ``add(tensor, path)`` returns the key the tensor is stored under; device values
    are copied to the host asynchronously and waited for in :meth:`finish`.
    Arrays split across processes end in :attr:`split`, as this process's shards."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.split: dict[str, Split] = {}
        self._seen: dict[Any, str] = {}
        self._keys: set[str] = set()
        self._pending: list[tuple[str, jax.Array, torch.dtype]] = []
        self._pending_split: list[tuple[str, jax.Array, torch.dtype | None, list]] = []

    def add(self, value: torch.Tensor | jax.Array, path: str) -> str:
        from torchtpu.device.tensor import device_array, is_tpu

        path = self._unique(path)
        if isinstance(value, jax.Array):
            return self._add_device(value, None, path, (id(value),))
        if is_tpu(value):
            array = device_array(value, "checkpoint")
            return self._add_device(array, value.dtype, path, (id(array), value.dtype))
        identity = _storage_identity(value)
        if identity in self._seen:
            return self._seen[identity]
        # A copy: training goes on changing the live tensor while the save is written.
        self.tensors[path] = value.detach().to("cpu", copy=True).contiguous()
        self._seen[identity] = path
        return path

    def _unique(self, path: str) -> str:
        # Paths join keys with ".", so {"a.b": x} and {"a": {"b": y}} would collide.
        key, n = path, 1
        while key in self._keys:
            key, n = f"{path}#{n}", n + 1
        self._keys.add(key)
        return key

    def _add_device(
        self, array: jax.Array, dtype: torch.dtype | None, path: str, identity: Any
    ) -> str:
        if identity in self._seen:
            return self._seen[identity]
        if array.is_fully_addressable:
            array.copy_to_host_async()
            self._pending.append((path, array, dtype))
        else:  # only the shards this process owns; the others write the rest
            owned = [s for s in array.addressable_shards if s.replica_id == 0]
            for shard in owned:
                shard.data.copy_to_host_async()
            self._pending_split.append((path, array, dtype, owned))
        self._seen[identity] = path
        return path

    def finish(self) -> dict[str, torch.Tensor]:
        """Wait for the device-to-host copies; the tensors by key."""
        for path, array, dtype in self._pending:
            host = from_numpy(np.array(array, copy=True))
            self.tensors[path] = host if dtype is None else host.to(dtype)
        self._pending.clear()
        for path, array, dtype, owned in self._pending_split:
            dtype = dtype or to_torch_dtype(array.dtype)
            shape = tuple(array.shape)
            pieces = [
                (bounds(s.index, shape), from_numpy(np.array(s.data, copy=True)).to(dtype))
                for s in owned
            ]
            self.split[path] = Split(shape, dtype, _sharding_text(array), pieces)
        self._pending_split.clear()
        checks.raise_pending()  # an index out of range in the step that made these values
        return self.tensors


def _storage_identity(t: torch.Tensor) -> tuple:
    if t.layout != torch.strided:
        raise CheckpointError(f"cannot save a {t.layout} tensor; convert it with .to_dense()")
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def encode(value: Any, path: str, snap: Snapshot) -> Any:
    """``value`` as JSON-able data; its tensors go to ``snap`` (keys derived from ``path``)."""
    if isinstance(value, torch.Tensor | jax.Array):
        device = "jax" if isinstance(value, jax.Array) else value.device.type
        out = {"t": "tensor", "key": snap.add(value, path), "device": device}
        if isinstance(value, jax.Array):
            out["sharding"] = _sharding_text(value)
        return out
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"t": "float", "v": repr(value)}
    if isinstance(value, dict):
        items = list(value.items())
        return {
            "t": "dict",
            "k": [_key(k, path) for k, _ in items],
            "v": [encode(v, f"{path}.{k}", snap) for k, v in items],
        }
    if isinstance(value, list | tuple):
        kind = "list" if isinstance(value, list) else "tuple"
        return {"t": kind, "v": [encode(v, f"{path}.{i}", snap) for i, v in enumerate(value)]}
    if isinstance(value, torch.dtype):
        return {"t": "dtype", "v": str(value).removeprefix("torch.")}
    if isinstance(value, bytes):
        return {"t": "bytes", "v": value.hex()}
    if isinstance(value, np.generic):
        return encode(value.item(), path, snap)
    raise CheckpointError(
        f"cannot save {type(value).__module__}.{type(value).__qualname__} at {path}: a "
        "checkpoint stores tensors, numbers, strings, bytes, None, torch dtypes and "
        "dicts/lists/tuples of them (nothing is pickled). Convert it, or leave it out "
        "of the state."
    )


def _key(k: Any, path: str) -> Any:
    if isinstance(k, bool | int | str | float) or k is None:
        return {"t": type(k).__name__, "v": k} if not isinstance(k, str) else k
    raise CheckpointError(
        f"cannot save a dict keyed by {type(k).__qualname__} at {path}: keys must be "
        "str, int, float, bool or None"
    )


def _sharding_text(array: jax.Array) -> str:
    sharding = array.sharding
    spec = getattr(sharding, "spec", None)
    return str(spec) if spec is not None else type(sharding).__name__


def decode(data: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """The tree :func:`encode` made, with tensors taken from ``tensors`` (on the CPU)."""
    if data is None or isinstance(data, bool | int | float | str):
        return data
    if isinstance(data, list):
        raise CheckpointError(f"malformed checkpoint tree at {path or 'the root'}: a bare list")
    kind = data.get("t")
    if kind == "tensor":
        key = data["key"]
        if key not in tensors:
            raise CheckpointError(f"checkpoint tree refers to tensor {key!r}, which is not stored")
        return tensors[key]
    if kind == "dict":
        keys = [_unkey(k) for k in data["k"]]
        return {k: decode(v, tensors, f"{path}.{k}") for k, v in zip(keys, data["v"], strict=True)}
    if kind in ("list", "tuple"):
        items = [decode(v, tensors, f"{path}.{i}") for i, v in enumerate(data["v"])]
        return items if kind == "list" else tuple(items)
    if kind == "float":
        return float(data["v"])
    if kind == "dtype":
        if data["v"] not in _DTYPES:
            raise CheckpointError(f"unknown torch dtype {data['v']!r} at {path}")
        return _DTYPES[data["v"]]
    if kind == "bytes":
        return bytes.fromhex(data["v"])
    raise CheckpointError(f"malformed checkpoint tree at {path or 'the root'}: kind {kind!r}")


def _unkey(k: Any) -> Any:
    if isinstance(k, str):
        return k
    kind, v = k["t"], k["v"]
    return {"int": int, "float": float, "bool": bool, "NoneType": lambda _: None}[kind](v)
