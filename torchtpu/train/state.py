"""Where a compiled step's state lives between steps.

A step's state is keyed ``("param", i)``, ``("buffer", j)``, ``("grad", i)`` and
``("state", o, i, name)`` (optimizer ``o``'s state ``name`` for parameter
``i``). Each key's device buffer lives in one of two places:

- *bound*: the torch tensor is a tpu tensor of the device dtype, so its own
  storage holds the buffer. The store reads it before a step and rebinds it to
  the step's result after; torch always sees the newest value, with no copy.
- *shadowed*: the torch tensor is on the CPU (or the precision keeps another
  dtype on the device, as ``bf16-true`` does), so the store holds a device
  copy. Torch is brought up to date lazily (:meth:`StateStore.sync`), and a
  change made on the torch side (``load_state_dict``, an in-place edit) is
  seen through its version counter and uploaded before the next step.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from torchtpu.device.tensor import device_array, from_array, is_tpu, set_device_array
from torchtpu.lower.dtypes import from_numpy, to_jax_dtype, to_numpy, to_torch_dtype
from torchtpu.metrics import bump
from torchtpu.runtime.placement import put
from torchtpu.runtime.transfer import host_copy

Key = tuple


class StateStore:
    """The device buffers of a compiled step's state.

    ``device_dtype(key, tensor)`` gives the dtype a key's tensor has on the device;
    ``bind_new``: state the step creates (optimizer moments, grads) becomes tpu
    tensors in torch's own objects (the model lives on ``tpu``), rather than
    device copies synced back later.
    ``place(key, shape)``: the sharding a key's buffer must have on a mesh (a
    sharded step), or ``None`` for the step's one device.
    """

    def __init__(
        self,
        device_dtype: Callable[[Key, torch.Tensor], torch.dtype],
        bind_new: bool,
        place: Callable[[Key, tuple[int, ...]], Any] | None = None,
    ) -> None:
        self._device_dtype = device_dtype
        self.bind_new = bind_new
        self._place = place
        self._bound: dict[Key, torch.Tensor] = {}
        self._shadow: dict[Key, jax.Array] = {}
        self._seen: dict[Key, tuple[int, int]] = {}
        self.dirty = False

    # --- reading --------------------------------------------------------------

    def keys(self) -> Iterator[Key]:
        yield from self._bound
        yield from self._shadow

    def __contains__(self, key: Key) -> bool:
        return key in self._bound or key in self._shadow

    def get(self, key: Key) -> jax.Array:
        tensor = self._bound.get(key)
        if tensor is not None:
            return device_array(tensor, "compiled_input")
        return self._shadow[key]

    def aval(self, key: Key) -> tuple[tuple[int, ...], str]:
        tensor = self._bound.get(key)
        if tensor is not None:
            return tuple(tensor.shape), str(np.dtype(to_jax_dtype(tensor.dtype)))
        array = self._shadow[key]
        return tuple(array.shape), str(array.dtype)

    def dtype(self, key: Key) -> torch.dtype:
        tensor = self._bound.get(key)
        return tensor.dtype if tensor is not None else to_torch_dtype(self._shadow[key].dtype)

    # --- before a step ----------------------------------------------------------

    def refresh(self, torch_state: dict[Key, torch.Tensor], device: jax.Device) -> None:
        """Take in what torch holds now: tpu tensors are bound as they are; CPU tensors
        changed since we last saw them are uploaded, the rest keeps its device copy."""
        for key, t in torch_state.items():
            if is_tpu(t) and self._device_dtype(key, t) == t.dtype:
                self._bound[key] = t
                self._shadow.pop(key, None)
                self._reshard_bound(key, t)
                continue
            self._bound.pop(key, None)
            # Unchanged since we last saw it: the device's value (or its absence, for a
            # grad the step's zero_grad() dropped) is newer.
            if self._seen.get(key) == (id(t), t._version):
                continue
            where = self._where(key, tuple(t.shape), device)
            self._shadow[key] = _upload_owned(t, self._device_dtype(key, t), where)
            self._seen[key] = (id(t), t._version)
        for key in [k for k, t in self._bound.items() if torch_state.get(k) is not t]:
            del self._bound[key]  # gone from torch (a grad set to None by the user)

    def add_zeros(self, key: Key, shape: tuple[int, ...], dtype: Any, bind: Callable) -> None:
        """New state that starts as zeros (Adam's moments and step count)."""
        sharding = self._place(key, tuple(shape)) if self._place is not None else None
        if sharding is None:
            array = jnp.zeros(shape, dtype)
        else:  # made in place, each device its own shard
            array = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()
        if self.bind_new:
            self._bound[key] = bind(key, from_array(array, to_torch_dtype(dtype)))
        else:
            self._shadow[key] = array

    def donatable_inputs(self, keys: list[Key], device: jax.Device) -> list[jax.Array]:
        """The buffers of ``keys`` for a step that consumes them (they are donated).

        A bound buffer is also held by its tpu tensor, which the step rebinds; one
        that anything else holds too is copied first, so donating it cannot pull
        memory from under another tensor."""
        arrays = [self.get(k) for k in keys]
        for i in range(len(arrays)):
            if keys[i] in self._bound:
                array = arrays[i]
                # References: the list, this variable, getrefcount's argument, the
                # tensor's value: more means someone else shares the buffer.
                if sys.getrefcount(array) > 4:
                    arrays[i] = jnp.copy(array)
                    bump("donation_copies")
        return arrays

    def _where(self, key: Key, shape: tuple[int, ...], device: jax.Device) -> Any:
        if self._place is None:
            return device
        return self._place(key, shape) or device

    def _reshard_bound(self, key: Key, t: torch.Tensor) -> None:
        """A tpu tensor given to a sharded step moves onto the mesh as the strategy
        places it (once: the step's results keep that placement)."""
        if self._place is None:
            return
        sharding = self._place(key, tuple(t.shape))
        array = device_array(t, "compiled_input")
        if sharding is not None and array.sharding != sharding:
            bump("reshards")
            set_device_array(t, put(array, sharding))

    # --- after a step -----------------------------------------------------------

    def put(self, key: Key, array: jax.Array, bind: Callable) -> None:
        """Make ``array`` the value of ``key``; ``bind(key, tensor)`` attaches a new tpu
        tensor to the torch object it belongs to and returns it."""
        tensor = self._bound.get(key)
        if tensor is not None and tuple(tensor.shape) == tuple(array.shape):
            set_device_array(tensor, array)
            return
        if self.bind_new and key not in self._shadow:
            self._bound[key] = bind(key, from_array(array, to_torch_dtype(array.dtype)))
            return
        self._shadow[key] = array
        self.dirty = True

    def drop(self, key: Key) -> None:
        self._bound.pop(key, None)
        self._shadow.pop(key, None)

    def sync(self, target: Callable[[Key, torch.Tensor], torch.Tensor | None]) -> None:
        """Copy the shadowed buffers into torch; ``target(key, host)`` writes one and
        returns the tensor it wrote, or ``None``."""
        if not self.dirty:
            return
        self.dirty = False
        with torch.no_grad():
            for key, array in self._shadow.items():
                written = target(key, from_numpy(host_copy(array)))
                if written is not None:
                    self._seen[key] = (id(written), written._version)

    def forget_missing(self, keep: Callable[[Key], bool]) -> None:
        for key in [k for k in self._shadow if not keep(k)]:
            del self._shadow[key]


def _upload_owned(t: torch.Tensor, dtype: torch.dtype, where: Any) -> jax.Array:
    """A device copy that owns its memory, so donating it never touches torch's.
    ``where``: a device, or a sharding on a mesh."""
    bump("host_to_device")
    if is_tpu(t):
        array = device_array(t, "compiled_input").astype(to_jax_dtype(dtype))
        if isinstance(where, jax.sharding.Sharding) and array.sharding != where:
            array = put(array, where)
        return array
    return jax.device_put(to_numpy(t.detach().to(dtype)).copy(), where)
