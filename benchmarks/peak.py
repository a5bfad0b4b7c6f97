"""The machine's matmul peak, measured in the run that reports MFU against it.

    .venv/bin/python benchmarks/peak.py                  # the table, about 4 s
    .venv/bin/python benchmarks/peak.py --seconds 10 --sizes 1024,2048,4096

The limit a training step can reach is the fastest GEMM the hardware runs, not
one library's: on some CPUs torch's BLAS takes a slower path than XLA's (MKL
on AMD), on others the reverse. So this measures both, torch's ``torch.mm`` and
XLA's (``jax.jit`` of a dot, on the device torchtpu's programs run on), in
float32 and bfloat16, at several square sizes, and reports the best rate of
each as the peak. The measurements take turns, one timing each per round in a
rotating order, so that load from others on a shared machine hits them alike;
each keeps its best timing.

On Linux x86 CPUs it also derives the theoretical peak, cores x FMA units x
vector lanes x 2 x clock, from ``/proc/cpuinfo``, the process's CPU affinity and
the maximum clock, and says which of its inputs are assumptions.

``benchmarks/train_step.py`` and ``benchmarks/gpu.py`` import it.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import torch

from torchtpu.runtime import jax_scope

SIZES = (512, 1024, 2048)
DTYPES = ("fp32", "bf16")
LIBRARIES = ("torch", "xla")
_LABELS = {"torch": "torch", "xla": "XLA"}
_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_JAX_DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
# Each timing repeats the product until it takes at least this long, so that a
# small GEMM on a GPU is not a measurement of launch latency.
_MIN_TIMING_S = 2e-3


@dataclass(frozen=True)
class Rate:
    """The best FLOP/s one library reached for one dtype and size."""

    library: str  # "torch" or "xla"
    dtype: str  # "fp32" or "bf16"
    n: int  # the product is (n x n) @ (n x n)
    flops: float


@dataclass(frozen=True)
class Theoretical:
    """cores x FMA units x lanes x 2 x clock, per dtype, with the inputs spelled out."""

    flops: dict[str, float]  # dtype -> FLOP/s
    formula: dict[str, str]  # dtype -> the product that gives it
    assumptions: list[str]

    def describe(self) -> str:
        parts = [f"{d} {self.flops[d] / 1e9:,.0f} GFLOP/s ({self.formula[d]})" for d in self.flops]
        return "; ".join(parts) + "; assumed: " + "; ".join(self.assumptions)


@dataclass
class Peak:
    """Every measured rate, and the theoretical peak where it can be derived.

    Example::

        peak = measure(seconds=2)
        print(peak.header())
        mfu = achieved_flops_per_s / peak.value("fp32")
    """

    rates: list[Rate]
    device: str  # "cpu" or "cuda": where torch's GEMM ran
    theoretical: Theoretical | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def best(self, library: str | None = None, dtype: str | None = None) -> Rate:
        """The fastest measured rate, of one library and/or dtype if given."""
        picked = [
            r
            for r in self.rates
            if (library is None or r.library == library) and (dtype is None or r.dtype == dtype)
        ]
        if not picked:
            raise ValueError(f"no rate measured for library={library!r}, dtype={dtype!r}")
        return max(picked, key=lambda r: r.flops)

    def value(self, dtype: str = "fp32") -> float:
        """The peak MFU is reported against for a step computed in ``dtype``: the best
        GEMM of either library in that dtype. For bf16 it is the best of bf16 and fp32,
        since a bf16 step could always be computed in float32 instead."""
        if dtype == "bf16":
            return self.best().flops
        return self.best(dtype=dtype).flops

    def header(self, unit: float = 1e9, unit_name: str = "GFLOP/s") -> str:
        """One line: the peak, torch's and XLA's best GEMM per dtype, the theoretical peak."""

        def cell(r: Rate) -> str:
            return f"{r.flops / unit:,.1f} ({r.n})"

        libs = []
        for lib in LIBRARIES:
            cells = [f"{d} {cell(self.best(lib, d))}" for d in DTYPES if self._has(lib, d)]
            libs.append(f"{_LABELS[lib]}'s GEMM " + ", ".join(cells))
        best = {d: self.best(dtype=d) for d in DTYPES if self._has(None, d)}
        peak = ", ".join(
            f"{d} {r.flops / unit:,.1f} ({_LABELS[r.library]})" for d, r in best.items()
        )
        theory = (
            "theoretical "
            + ", ".join(f"{d} {v / unit:,.1f}" for d, v in self.theoretical.flops.items())
            if self.theoretical
            else "theoretical peak not derivable here"
        )
        return f"measured GEMM peak {peak} {unit_name}; {'; '.join(libs)} (size); {theory}"

    def table(self, unit: float = 1e9, unit_name: str = "GFLOP/s") -> str:
        """Markdown: one row per library and dtype, one column per size."""
        sizes = sorted({r.n for r in self.rates})
        lines = [
            f"| GEMM {unit_name} | " + " | ".join(str(n) for n in sizes) + " |",
            "|---|" + "---:|" * len(sizes),
        ]
        by_key = {(r.library, r.dtype, r.n): r.flops for r in self.rates}
        for lib in LIBRARIES:
            for d in DTYPES:
                if not self._has(lib, d):
                    continue
                cells = [
                    f"{by_key[lib, d, n] / unit:,.1f}" if (lib, d, n) in by_key else "n/a"
                    for n in sizes
                ]
                lines.append(f"| {_LABELS[lib]} {d} | " + " | ".join(cells) + " |")
        if self.theoretical:
            lines.append("\nTheoretical peak: " + self.theoretical.describe() + ".")
        lines.extend(f"\n{note}" for note in self.notes)
        return "\n".join(lines)

    def _has(self, library: str | None, dtype: str) -> bool:
        return any(
            (library is None or r.library == library) and r.dtype == dtype for r in self.rates
        )


# --- measurement -------------------------------------------------------------------------


def _torch_gemm(n: int, dtype: str, device: str):
    gen = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=_TORCH_DTYPES[dtype])
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=_TORCH_DTYPES[dtype])
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run(reps: int) -> None:
        for _ in range(reps):
            torch.mm(a, b)
        sync()

    return run


def _xla_gemm(n: int, dtype: str):
    with jax_scope() as device:
        key_a, key_b = jax.random.split(jax.random.key(n))
        a = jax.device_put(jax.random.normal(key_a, (n, n), _JAX_DTYPES[dtype]), device)
        b = jax.device_put(jax.random.normal(key_b, (n, n), _JAX_DTYPES[dtype]), device)
        # bf16 products accumulated in float32, as torchtpu lowers them (and as PyTorch's
        # kernels compute): XLA:CPU runs a bf16 x bf16 -> bf16 dot in float32 (about the
        # fp32 rate), but bf16 x bf16 -> f32 through its bf16 dot kernels (about 2x).
        wide = jnp.float32 if dtype == "bf16" else None
        dot = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=wide))

    def run(reps: int) -> None:
        with jax_scope():
            out = None
            for _ in range(reps):
                out = dot(a, b)
            out.block_until_ready()

    return run


def measure(
    seconds: float = 4.0,
    sizes: tuple[int, ...] = SIZES,
    dtypes: tuple[str, ...] = DTYPES,
    libraries: tuple[str, ...] = LIBRARIES,
    device: str = "cpu",
) -> Peak:
    """Time torch's and XLA's GEMMs in turn for about ``seconds`` and keep each one's best.

    ``device`` is where torch's tensors live ("cpu" or "cuda"); XLA's run on
    torchtpu's device (``TORCHTPU_PLATFORM``), which should be the same hardware.
    Both use their default precision: on NVIDIA GPUs XLA's float32 dot may use
    TF32 where torch's does not, so compare float32 there with care.
    """
    runs, notes = {}, []
    for lib in libraries:
        for d in dtypes:
            for n in sizes:
                try:
                    runs[lib, d, n] = (
                        _torch_gemm(n, d, device) if lib == "torch" else _xla_gemm(n, d)
                    )
                except Exception as exc:  # a dtype a library lacks here is a note, not a crash
                    notes.append(f"{lib} {d} {n}: not measured ({type(exc).__name__}: {exc})")
    reps, best = {}, {}
    for key, run in runs.items():
        run(1)  # compile, allocate, warm the caches
        start = time.perf_counter()
        run(1)
        once = time.perf_counter() - start
        reps[key] = max(1, math.ceil(_MIN_TIMING_S / max(once, 1e-9)))
        best[key] = once
    order = list(runs)
    start = time.perf_counter()
    deadline = start + seconds
    rounds = 0
    while rounds < 2 or time.perf_counter() < deadline:
        shift = rounds % len(order)
        for key in order[shift:] + order[:shift]:
            t0 = time.perf_counter()
            runs[key](reps[key])
            best[key] = min(best[key], (time.perf_counter() - t0) / reps[key])
        rounds += 1
    rates = [Rate(lib, d, n, 2 * n**3 / best[lib, d, n]) for lib, d, n in order]
    return Peak(
        rates=rates,
        device=device,
        theoretical=theoretical_peak() if device == "cpu" else None,
        seconds=time.perf_counter() - start,
        notes=notes,
    )


# --- theoretical peak (Linux x86 CPUs) -----------------------------------------------------


def _cpuinfo() -> list[dict[str, str]]:
    blocks, current = [], {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
            current = {}
            continue
        key, _, value = line.partition(":")
        current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def _max_clock_hz(info: dict[str, str]) -> tuple[float, str] | None:
    sysfs = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        return float(sysfs.read_text()) * 1e3, f"max clock from {sysfs}"
    except (OSError, ValueError):
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("CPU max MHz:"):
                return float(line.split(":")[1]) * 1e6, "max clock from lscpu"
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    name = info.get("model name", "")
    if "@" in name and name.rstrip().endswith("GHz"):
        try:
            return float(name.rsplit("@", 1)[1].strip()[:-3]) * 1e9, "the clock in the CPU's name"
        except ValueError:
            pass
    if "cpu MHz" in info:
        return (
            float(info["cpu MHz"]) * 1e6,
            "the clock /proc/cpuinfo reports (no max clock published here; under a "
            "hypervisor often the nominal clock, and turbo may run faster)",
        )
    return None


def theoretical_peak() -> Theoretical | None:
    """cores x FMA units x vector lanes x 2 x clock for this process's CPUs, or ``None``
    off Linux x86 or where the inputs cannot be read.

    Example::

        t = theoretical_peak()
        print(t.describe() if t else "not derivable")
    """
    if not (platform.system() == "Linux" and platform.machine() in {"x86_64", "AMD64"}):
        return None
    try:
        blocks = _cpuinfo()
    except OSError:
        return None
    if not blocks:
        return None
    info = blocks[0]
    flags = set(info.get("flags", "").split())
    allowed = os.sched_getaffinity(0)
    assumptions = []
    have_topology = all("core id" in b and "physical id" in b for b in blocks)
    if have_topology:
        cores = len(
            {
                (b["physical id"], b["core id"])
                for b in blocks
                if int(b.get("processor", -1)) in allowed
            }
        )
        if cores < len(allowed):
            assumptions.append(
                f"{len(allowed)} logical CPUs on {cores} physical cores: SMT threads share "
                "a core's FMA units, so cores are counted"
            )
    else:
        cores = len(allowed)
        assumptions.append(f"each of the {cores} CPUs this process may use is a physical core")
    clock = _max_clock_hz(info)
    if clock is None:
        return None
    hz, clock_source = clock
    assumptions.append(
        f"{hz / 1e9:.2f} GHz, {clock_source}; sustained AVX-512/AMX clocks are often lower"
    )
    if "avx512f" in flags:
        lanes, isa = 16, "AVX-512"
    elif "avx2" in flags and "fma" in flags:
        lanes, isa = 8, "AVX2+FMA"
    else:
        return None
    vendor, family = info.get("vendor_id", ""), int(info.get("cpu family", "0") or 0)
    if isa == "AVX-512" and vendor == "AuthenticAMD" and family == 0x19:
        units, why = 1, "Zen 4 runs a 512-bit FMA as two halves on its two 256-bit units"
    else:
        units, why = (
            2,
            "2 FMA units per core (Intel Xeon Gold/Platinum, AMD Zen 5; some parts have 1)",
        )
    assumptions.append(why)
    fp32_per_cycle = units * lanes * 2
    flops = {"fp32": cores * fp32_per_cycle * hz}
    formula = {
        "fp32": f"{cores} cores x {units} FMA x {lanes} {isa} lanes x 2 x {hz / 1e9:.2f} GHz"
    }
    if "amx_bf16" in flags:
        flops["bf16"] = cores * 1024 * hz
        formula["bf16"] = f"{cores} cores x 1024 AMX bf16 FLOP/cycle x {hz / 1e9:.2f} GHz"
        assumptions.append(
            "AMX: 1024 bf16 FLOP per cycle per core (Intel's figure for its tile unit)"
        )
    elif "avx512_bf16" in flags:
        flops["bf16"] = 2 * flops["fp32"]
        formula["bf16"] = "2 x fp32 (AVX512_BF16 dot products: two bf16 products per fp32 lane)"
    else:
        flops["bf16"] = flops["fp32"]
        formula["bf16"] = "as fp32 (no bf16 arithmetic: bf16 is computed in fp32)"
    return Theoretical(flops=flops, formula=formula, assumptions=assumptions)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = p.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(",") if s)
    peak = measure(args.seconds, sizes, device=args.device)
    print(peak.header())
    print()
    print(peak.table())


if __name__ == "__main__":
    main()
