"""FLOPs per step, read from a compiled program's cost analysis, and the device's peak.

MFU is model FLOP/s over peak FLOP/s. The FLOPs are XLA's count for the
programs torchtpu compiled (the same figure ``CompiledStep.cost_analysis()``
and ``benchmarks/train_step.py`` report), never re-derived from the model.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

import jax
import jax.numpy as jnp

from torchtpu.compile.program import Program
from torchtpu.errors import TorchTPUError
from torchtpu.runtime import jax_scope
from torchtpu.train import CompiledStep

FlopsSource = float | int | CompiledStep | Program | None


def step_flops(source: FlopsSource) -> float | None:
    """FLOPs per step: ``source`` itself if a number, else XLA's count for the programs
    of a :class:`~torchtpu.CompiledStep` (its last call's, all segments) or of one
    :class:`~torchtpu.Program`. ``None`` before a step has compiled, or without a count.

    Example::

        flops = torchtpu.monitor.step_flops(train_step)  # after train_step has run once
    """
    if source is None or isinstance(source, int | float):
        return None if source is None else float(source)
    if isinstance(source, CompiledStep):
        try:
            programs = source.executor.programs
        except TorchTPUError:  # not called yet
            return None
    elif isinstance(source, Program):
        programs = [source]
    else:
        raise TypeError(
            f"flops_per_step must be a number, a torchtpu.CompiledStep or a torchtpu.Program, "
            f"got {type(source).__name__}"
        )
    total = sum(_flops(p) for p in programs)
    return total or None


# A compiled program's count never changes; asking XLA for it each logged step need not.
_COUNTED: weakref.WeakKeyDictionary[Program, float] = weakref.WeakKeyDictionary()


def _flops(program: Program) -> float:
    if program not in _COUNTED:
        _COUNTED[program] = float(program.cost_analysis().get("flops", 0.0))
    return _COUNTED[program]


def measure_peak_flops(seconds: float = 1.0, *, n: int = 2048, dtype: Any = jnp.float32) -> float:
    """FLOP/s of the best of repeated ``n x n`` matmuls on torchtpu's device, for ``mfu``.

    The same measurement ``benchmarks/train_step.py`` makes, on the device
    programs run on. Blocks for about ``seconds``; call it once, before training.
    On TPUs, pass ``dtype=jnp.bfloat16`` for the peak MFU is usually quoted against.

    Example::

        peak = torchtpu.monitor.measure_peak_flops()
        tb = torchtpu.monitor.TensorBoard("runs/x", flops_per_step=train_step, peak_flops=peak)
    """
    with jax_scope() as device:
        a = jax.device_put(jnp.ones((n, n), dtype), device)
        matmul = jax.jit(jnp.matmul)
        matmul(a, a).block_until_ready()
        best, deadline = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            matmul(a, a).block_until_ready()
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best
