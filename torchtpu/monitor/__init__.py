"""Watching a training run: TensorBoard scalars, profiler traces, a progress bar.

- :class:`TensorBoard` writes scalars (the loss, the learning rate, and
  torchtpu's step time, tokens/s, MFU, compiles and host transfers) to a
  TensorBoard run, every ``every`` steps, without making the device wait.
- :func:`profile` records a JAX profiler trace of a block or of chosen steps,
  for TensorBoard's profile plugin.
- :func:`progress` is a tqdm bar showing a TensorBoard's last written values.
- :func:`step_flops` and :func:`measure_peak_flops` give MFU's two figures.

The modules, in the order a logged value passes through them: ``scalars``
(taking a value on the caller's thread, reading it on the writer's),
``events`` (the TensorBoard writer), ``bar``; beside them ``flops`` and
``trace``.
"""

from torchtpu.monitor.bar import progress
from torchtpu.monitor.events import TensorBoard
from torchtpu.monitor.flops import measure_peak_flops, step_flops
from torchtpu.monitor.trace import Profile, profile

__all__ = [
    "Profile",
    "TensorBoard",
    "measure_peak_flops",
    "profile",
    "progress",
    "step_flops",
]
