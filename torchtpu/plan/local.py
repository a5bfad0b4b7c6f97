"""The chip ``local``: the device torchtpu runs on here, described by measurement.

- Dense matmul peak: the best of repeated large matmuls
  (:func:`torchtpu.monitor.measure_peak_flops`), so its matmul efficiency is 1
  by definition: the peak *is* the achieved matmul rate. On XLA:CPU a bf16
  matmul is computed in float32 (the compiled HLO converts its operands), so
  there bf16 gets the float32 figure; on a GPU or TPU bf16 is measured.
- Memory bandwidth: the best rate of a large elementwise program, in the bytes
  its own cost analysis counts (read + write), the same count the step model
  divides by it.
- Memory: the host's physical memory on the CPU, the device's allocator limit
  on a GPU or TPU.
- Convolution efficiency: the FLOP rate of a training convolution (forward and both
  gradients of a 3x3, 64-channel convolution over 16 images of 32 x 32, a ResNet
  stage's shape), as a fraction of the matmul peak.
- Matrix-vector bandwidth: the rate at which a batch-8 product reads a 64 MiB float32
  matrix (a decode step's dots), in the bytes its cost analysis counts.

No price or power: the local machine's cost and energy are left blank.
The measurement runs once per process (about three seconds).
"""

from __future__ import annotations

import functools
import os
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp

from torchtpu.monitor.flops import measure_peak_flops
from torchtpu.plan.catalog import Chip, Figure
from torchtpu.runtime import jax_scope, platform_name

_SOURCE = "measured in this process"


@functools.cache
def local_chip() -> Chip:
    """The local device as a :class:`~torchtpu.plan.catalog.Chip`, measured once.

    Example::

        from torchtpu.plan.local import local_chip
        print(local_chip().peak("fp32").value)
    """
    today = time.strftime("%Y-%m-%d")
    kind = platform_name()
    fp32 = measure_peak_flops(0.6, n=2048 if kind == "cpu" else 8192)
    peaks = {"fp32": Figure(fp32, f"{_SOURCE}: float32 matmul", today, True)}
    if kind == "cpu":
        peaks["bf16"] = Figure(fp32, f"{_SOURCE}: XLA:CPU computes bf16 dots in f32", today, True)
    else:
        bf16 = measure_peak_flops(0.6, n=8192, dtype=jnp.bfloat16)
        peaks["bf16"] = Figure(bf16, f"{_SOURCE}: bfloat16 matmul", today, True)
    peaks["fp16"] = peaks["bf16"]
    with jax_scope() as device:
        name = getattr(device, "device_kind", kind) or kind
    return Chip(
        key="local",
        name=f"local ({name if kind != 'cpu' else platform.processor() or 'cpu'})",
        vendor="this machine",
        peak_flops=peaks,
        memory_bytes=Figure(_memory_bytes(), f"{_SOURCE}: {_memory_source()}", today, True),
        memory_bw=Figure(measure_bandwidth(), f"{_SOURCE}: elementwise program", today, True),
        link_bw=None,
        domain=1,
        topology="switch",
        tdp_w=None,
        price_per_hour=None,
        price_provider=None,
        matmul_efficiency=Figure(
            1.0, "1 by definition: the peak is the measured matmul", today, True
        ),
        conv_efficiency=Figure(
            min(1.0, measure_conv_flops() / fp32),
            f"{_SOURCE}: 3x3 convolution, forward and gradients / matmul peak",
            today,
            True,
        ),
        matvec_bw=Figure(
            measure_matvec_bandwidth(), f"{_SOURCE}: batch-8 matrix-vector", today, True
        ),
    )


def measure_bandwidth(seconds: float = 0.4, *, n: int = 1 << 25) -> float:
    """Bytes/s of ``x = 2 * x`` over ``n`` float32s (128 MiB, past every cache),
    counted as its cost analysis counts them (read + write).

    The input is donated, so the program writes in place: without that each run
    would write a fresh buffer, and on the CPU the first touch of its pages (not
    the memory's bandwidth) sets the time."""
    with jax_scope() as device:
        x = jax.device_put(jnp.ones((n,), jnp.float32), device)
        double = jax.jit(lambda a: a * 2, donate_argnums=0).lower(x).compile()
        cost = double.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        nbytes = float(cost.get("bytes accessed", 8 * n))
        x = double(x)
        x.block_until_ready()
        best, deadline = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            x = double(x)
            x.block_until_ready()
            best = min(best, time.perf_counter() - start)
    return nbytes / best


def measure_conv_flops(seconds: float = 0.4) -> float:
    """FLOP/s (cost-analysis FLOPs over the best time) of a training convolution:
    forward, input gradient and weight gradient of a 3x3 convolution, 64 -> 64
    channels, over 16 float32 images of 32 x 32."""

    def train(x: jax.Array, w: jax.Array) -> tuple[jax.Array, ...]:
        def conv(x: jax.Array, w: jax.Array) -> jax.Array:
            return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME")

        out, vjp = jax.vjp(conv, x, w)
        return (out, *vjp(out))

    with jax_scope() as device:
        x = jax.device_put(jnp.ones((16, 64, 32, 32), jnp.float32), device)
        w = jax.device_put(jnp.ones((64, 64, 3, 3), jnp.float32), device)
        return _best_rate(jax.jit(train).lower(x, w).compile(), (x, w), "flops", seconds)


def measure_matvec_bandwidth(seconds: float = 0.4) -> float:
    """Bytes/s of an (8, 4096) x (4096, 4096) float32 product, counted as its cost
    analysis counts them (the matrix, read once, dominates)."""
    with jax_scope() as device:
        x = jax.device_put(jnp.ones((8, 4096), jnp.float32), device)
        w = jax.device_put(jnp.ones((4096, 4096), jnp.float32), device)
        return _best_rate(
            jax.jit(jnp.matmul).lower(x, w).compile(), (x, w), "bytes accessed", seconds
        )


def _best_rate(compiled: Any, args: tuple[Any, ...], figure: str, seconds: float) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    jax.block_until_ready(compiled(*args))
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - start)
    return float(cost[figure]) / best


def _memory_bytes() -> float:
    if platform_name() != "cpu":
        with jax_scope() as device:
            stats = device.memory_stats() or {}
        if stats.get("bytes_limit"):
            return float(stats["bytes_limit"])
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _memory_source() -> str:
    return "physical memory" if platform_name() == "cpu" else "allocator bytes_limit"
