"""Moving tensors between PyTorch and the XLA device.

Hand-over is DLPack, zero-copy where both sides share memory (CPU tensors on
the CPU platform, CUDA tensors on a GPU). A tensor that goes to the device is
remembered with its version counter, so parameters and buffers are uploaded
once and again only after PyTorch changes them (an optimizer step, an in-place
edit, ``load_state_dict``); on the CPU platform a zero-copy upload is the
tensor's own memory, so it is not sent again at all (see :class:`Residency`).
Outputs are remembered the same way, so a tensor that the forward program
produced and the backward program consumes never round-trips through the host.
"""

from __future__ import annotations

import weakref
from typing import Any

import jax
import numpy as np
import torch

from torchtpu.lower import checks
from torchtpu.lower.dtypes import from_numpy, to_numpy
from torchtpu.metrics import bump


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference-mode tensors have no version counter
        return None


class Residency:
    """Maps live torch tensors to the device arrays that hold their values.

    An array that a CPU tensor was uploaded to zero-copy on the CPU platform shares the
    tensor's memory: an in-place change of the tensor (an optimizer step, a buffer's
    ``copy_``) is already in it, so it stays the tensor's array while the tensor keeps
    that memory, shape, strides and dtype, and the version counter is not consulted.
    Nothing donates such an array (the executor donates only a whole step's state), so
    no program writes into the tensor. On a GPU the same sharing would race with
    PyTorch's stream, so a changed CUDA tensor is uploaded again."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, t: torch.Tensor, device: jax.Device) -> jax.Array | None:
        entry = self._entries.get(id(t))
        if entry is None:
            return None
        ref, version, ptr, array, shared = entry
        if ref() is not t or ptr != t.data_ptr():
            return None
        if shared is not None:
            if shared != (t.shape, t.stride(), t.dtype):
                return None
        elif version is None or version != _version(t):
            return None
        if not _placed_on(array, device):
            return None
        return array

    def remember(self, t: torch.Tensor, array: jax.Array, shares_memory: bool = False) -> None:
        """``shares_memory``: ``array`` is ``t``'s own CPU memory (a zero-copy upload on
        the CPU platform), so it follows in-place changes of ``t``."""
        key = id(t)
        entries = self._entries

        def _forget(dead: weakref.ref, key: int = key) -> None:
            current = entries.get(key)
            if current is not None and current[0] is dead:
                del entries[key]

        try:
            ref = weakref.ref(t, _forget)
        except TypeError:
            return
        shared = (t.shape, t.stride(), t.dtype) if shares_memory else None
        entries[key] = (ref, _version(t), t.data_ptr(), array, shared)

    def forget(self, t: torch.Tensor) -> None:
        """Drop ``t``'s entry (and our weak reference to it, which would stop
        ``torch.utils.swap_tensors`` from moving it to another device)."""
        self._entries.pop(id(t), None)

    def clear(self) -> None:
        self._entries.clear()


residency = Residency()


def _placed_on(array: jax.Array, where: Any) -> bool:
    """``array`` lives on device ``where``, or (``where`` a sharding) on its mesh, in
    any layout: a sharded step's value is used where it lies."""
    if isinstance(where, jax.sharding.NamedSharding):
        sharding = array.sharding
        return isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh == where.mesh
    return array.devices() == {where}


def upload(t: torch.Tensor, device: jax.Device, copy: bool = False) -> jax.Array:
    """A device array holding CPU (or CUDA) tensor ``t``'s value, counted as a transfer.

    ``copy=False`` hands the memory over zero-copy where both sides share it,
    so the array sees later in-place edits of ``t`` (callers track versions);
    ``copy=True`` always snapshots the value, as ``tensor.to("tpu")`` must.
    """
    bump("host_to_device")
    bump("host_to_device_bytes", t.numel() * t.element_size())
    return _upload(t, device, copy)


def _upload(t: torch.Tensor, device: jax.Device, copy: bool = False) -> jax.Array:
    t = t.detach()
    if t.dtype == torch.complex32:  # held as complex64 (torchtpu.lower.dtypes)
        t = t.to(torch.complex64)
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if t.stride() != _row_major_strides(t.shape):
        # is_contiguous() ignores the strides of size-1 dims, but DLPack passes them
        # on, and XLA would see a layout it did not compile for.
        t = t.clone(memory_format=torch.contiguous_format)
    if not isinstance(device, jax.Device):  # a sharding over a mesh: no zero-copy
        return jax.device_put(to_numpy(t.cpu() if t.device.type != "cpu" else t), device)
    same_memory = (t.device.type == "cpu" and device.platform == "cpu") or (
        t.device.type == "cuda" and device.platform in {"gpu", "cuda", "rocm"}
    )
    if same_memory and t.numel() > 0 and not copy:
        try:
            array = jax.dlpack.from_dlpack(t)
            if array.devices() == {device}:
                return array
        except (TypeError, RuntimeError, BufferError):
            pass
    host = to_numpy(t.cpu() if t.device.type != "cpu" else t)
    return jax.device_put(np.array(host, copy=True) if copy else host, device)


def _row_major_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def to_device(t: torch.Tensor, device: jax.Device) -> jax.Array:
    """The device array for torch tensor ``t``, uploading only if it changed."""
    array = residency.lookup(t, device)
    if array is not None:
        bump("resident_hits")
        return array
    array = upload(t, device)
    residency.remember(t, array, _shares_memory(t, array))
    return array


def _shares_memory(t: torch.Tensor, array: jax.Array) -> bool:
    """``array`` is ``t``'s own memory on the CPU platform (see :class:`Residency`)."""
    if t.device.type != "cpu" or t.numel() == 0:
        return False
    devices = array.devices()
    if len(devices) != 1 or next(iter(devices)).platform != "cpu":
        return False
    try:
        return array.unsafe_buffer_pointer() == t.data_ptr()
    except Exception:  # noqa: BLE001  (arrays that expose no pointer share nothing we know)
        return False


def host_copy(array: jax.Array) -> np.ndarray:
    """``array``'s whole value on this host. An array that spans other processes'
    devices (a job of several processes) is read from a local replica when it is
    replicated, else gathered with ``process_allgather``: a collective, which
    every process reaches at the same point of the same SPMD program."""
    if array.is_fully_addressable:
        return np.asarray(jax.device_get(array))
    if array.is_fully_replicated:
        return np.asarray(array.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def from_device(array: jax.Array, like: torch.device | None = None) -> torch.Tensor:
    """A torch tensor holding ``array``: zero-copy when the memory is shared.

    ``like`` is the torch device the result should live on (CPU by default).
    """
    checks.raise_pending()  # an index out of range in the program that made it
    target = like or torch.device("cpu")
    platform = next(iter(array.devices())).platform
    shared = (target.type == "cpu" and platform == "cpu") or (
        target.type == "cuda" and platform in {"gpu", "cuda", "rocm"}
    )
    if shared:
        try:
            out = torch.from_dlpack(array)
            residency.remember(out, array)
            return out
        except (TypeError, RuntimeError, BufferError):
            pass
    bump("device_to_host")
    out = from_numpy(host_copy(array)).to(target)
    residency.remember(out, array)
    return out
