"""What one logged value is: a host number now, or a device value on its way to the host.

:func:`take` runs on the caller's thread and never waits for the device: a
number on the host is converted at once; a device value (a ``tpu`` tensor's
buffer, a jax array) gets its copy to the host started and is handed on as it
is. :func:`to_host` runs on the monitor's writer thread and is the one place
that waits for a device value.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import numpy as np
import torch

from torchtpu.device import tensor as device_tensor


def take(name: str, value: Any, step: int) -> float | jax.Array | torch.Tensor:
    """``value`` as a float if it is on the host, else its device buffer with the copy
    to the host started (no wait). Refuses values that are not one number."""
    if isinstance(value, numbers.Real):  # bool, int, float and numpy's real scalars
        return float(value)
    if isinstance(value, torch.Tensor):
        _check_one(name, step, tuple(value.shape), value.dtype, value.numel())
        if device_tensor.is_tpu(value):
            # Runs the ops still recorded for it (asynchronously), as any use would.
            return _start_copy(device_tensor.device_array(value, "monitor"))
        if value.device.type == "cpu":
            return float(value.detach().reshape(()).item())
        if value.device.type == "meta":
            raise ValueError(
                f"TensorBoard.log: scalar {name!r} at step {step} is a meta tensor, which "
                "holds no value; log the tensor a real run computes."
            )
        return value.detach()  # another accelerator's tensor: read on the writer thread
    if isinstance(value, jax.Array):
        _check_one(name, step, tuple(value.shape), value.dtype, value.size)
        return _start_copy(value)
    if isinstance(value, np.ndarray | np.generic):
        _check_one(name, step, tuple(np.shape(value)), value.dtype, np.size(value))
        return float(np.asarray(value).reshape(()))
    raise TypeError(
        f"TensorBoard.log: scalar {name!r} at step {step} is a {type(value).__name__}; log a "
        "number, a one-element torch tensor (CPU or tpu), a numpy value or a jax array."
    )


def to_host(value: float | jax.Array | torch.Tensor) -> float:
    """The number ``value`` holds, waiting for the device if it is still computing it."""
    if isinstance(value, float):
        return value
    if isinstance(value, torch.Tensor):
        return float(value.reshape(()).item())
    return float(np.asarray(jax.device_get(value)).reshape(()))


def _start_copy(array: jax.Array) -> jax.Array:
    array.copy_to_host_async()
    return array


def _check_one(name: str, step: int, shape: tuple, dtype: Any, size: int) -> None:
    is_complex = dtype.is_complex if isinstance(dtype, torch.dtype) else np.dtype(dtype).kind == "c"
    if size == 1 and not is_complex:
        return
    where = f"TensorBoard.log: scalar {name!r} at step {step} has shape {shape} and dtype {dtype}"
    if size != 1:
        raise ValueError(
            f"{where}: {size} numbers, not one. Log one number per name: reduce it first "
            f"(e.g. .mean() or .norm()), or log its elements under names of their own "
            f"(tb.log(step, {{'{name}/0': value[0], '{name}/1': value[1]}}))."
        )
    raise ValueError(
        f"{where}: a complex number. TensorBoard plots real numbers: log its .real and "
        f".imag (or .abs()) under names of their own."
    )
