"""Where a ``compile_step`` training step's time goes, per kind of XLA operation.

    .venv/bin/python benchmarks/step_profile.py                    # four transformers, fp32
    .venv/bin/python benchmarks/step_profile.py --models gpt2-small --precision bf16
    .venv/bin/python benchmarks/step_profile.py --write            # also step_profile.md
    .venv/bin/python benchmarks/step_profile.py --models resnet18,resnet50 --write \
        --out benchmarks/step_profile_conv.md

Each model of ``benchmarks/train_step.py`` is trained by ``compile_step`` (one XLA program
per step), warmed up, and a few steps are traced with JAX's profiler, XLA:CPU recording one
event per operation it runs (``--xla_cpu_enable_xprof_traceme``, set here before JAX starts).
Each operation of the step's optimised HLO is put in a kind by what it computes (a fusion by
the ops inside it): matrix products, convolutions, reductions, elementwise, copies and
transposes, scatters and gathers, sorts, the rest. The table gives each kind's time per step,
its share, and for products the FLOPs and the rate they ran at, against the GEMM peak
measured at the start of the run (``benchmarks/peak.py``, the best of torch and XLA).
"Products at peak" is the step time if every product ran at that peak and everything else
took the time it took: what the rest costs, in MFU.

XLA:CPU may run independent operations at once, so the operations' times can add up to more
than the step's wall time; the step's wall time is also split by what runs in it: products
(with or without other operations beside them), other operations alone, nothing traced.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
).strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import datetime  # noqa: E402
import glob  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import torch  # noqa: E402
from jax.profiler import ProfileData  # noqa: E402

import torchtpu  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import peak as peak_gemm  # noqa: E402
import train_step as bench  # noqa: E402

warnings.filterwarnings("ignore")
OUT = Path(__file__).with_name("step_profile.md")
KINDS = (
    "matrix products",
    "convolutions",
    "reductions",
    "elementwise",
    "copies, transposes",
    "scatter, gather",
    "sort",
    "other",
)

_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.-]+) = ([\w\[\]{}(), .:]*?) ([\w-]+)\((.*)$")
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")


def _computations(hlo: str) -> dict[str, list[str]]:
    comps: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.-]+) .*\{\s*$", line)
        if head and not line.startswith(" "):
            name = "ENTRY" if line.startswith("ENTRY") else head.group(1)
            comps[name] = []
        elif name is not None and line.startswith("  "):
            comps[name].append(line)
    return comps


def _dims(shape: str) -> list[int]:
    m = _SHAPE.search(shape)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _dot_flops(line: str, types: dict[str, str]) -> tuple[float, str]:
    """2 x output elements x contracted size of one ``dot``, and its operands' shapes and
    contracted dimensions (``f32[512,8192] x f32[8192,512], contracting 1 and 0``)."""
    m = _INSTR.match(line)
    if not m:
        return 0.0, ""
    out = _dims(m.group(2))
    lhs, rhs = (a.strip().lstrip("%").rstrip(")") for a in m.group(4).split(",")[:2])
    lc = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
    rc = re.search(r"rhs_contracting_dims=\{([\d,]*)\}", line)
    lhs_dims = _dims(types.get(lhs, ""))
    k = 1
    if lc and lhs_dims:
        k = math.prod(lhs_dims[int(d)] for d in lc.group(1).split(",") if d)

    def shape(name: str) -> str:
        found = _SHAPE.search(types.get(name, ""))
        return found.group(0) if found else "?"

    desc = f"{shape(lhs)} x {shape(rhs)}, contracting {lc.group(1) if lc else ''}"
    desc += f" and {rc.group(1) if rc else ''}"
    return 2.0 * math.prod(out) * k, desc


def classify(hlo: str) -> dict[str, tuple[str, float, str]]:
    """Each operation the step's program runs (ENTRY's instructions and those of the
    computations its loops and conditionals call): its kind and, for products, FLOPs and
    the product's shapes."""
    comps = _computations(hlo)
    types = {}
    for lines in comps.values():
        for line in lines:
            m = _INSTR.match(line)
            if m:
                types[m.group(1)] = m.group(2)

    def inside(comp: str, seen: set[str]) -> tuple[set[str], float, str]:
        ops, flops, desc = set(), 0.0, ""
        for line in comps.get(comp, []):
            m = _INSTR.match(line)
            if not m:
                continue
            ops.add(m.group(3))
            if m.group(3) == "dot":
                f, d = _dot_flops(line, types)
                flops, desc = flops + f, desc or d
            for callee in re.findall(r"(?:calls|to_apply)=%([\w.-]+)", line):
                if callee not in seen:
                    seen.add(callee)
                    sub, f, d = inside(callee, seen)
                    ops |= sub
                    flops, desc = flops + f, desc or d
        return ops, flops, desc

    result: dict[str, tuple[str, float, str]] = {}
    for comp in ["ENTRY", *[c for c in comps if "body" in c or "region" in c or "branch" in c]]:
        for line in comps.get(comp, []):
            m = _INSTR.match(line)
            if not m:
                continue
            name, opcode = m.group(1), m.group(3)
            if opcode in ("parameter", "constant", "tuple", "get-tuple-element", "bitcast"):
                continue
            ops, flops, desc = {opcode}, 0.0, ""
            if opcode == "dot":
                flops, desc = _dot_flops(line, types)
            for callee in re.findall(r"calls=%([\w.-]+)", line):
                sub, f, d = inside(callee, {callee})
                ops |= sub
                flops, desc = flops + f, desc or d
            result[name] = (_kind(ops), flops, desc)
    return result


_MOVES = {"copy", "transpose", "fusion", "slice", "concatenate", "pad", "reshape", "broadcast"}
_MOVES |= {"bitcast", "parameter", "constant", "tuple", "get-tuple-element"}


def _kind(ops: set[str]) -> str:
    if "dot" in ops:
        return "matrix products"
    if "convolution" in ops:
        return "convolutions"
    if ops & {"scatter", "gather", "dynamic-slice", "dynamic-update-slice"}:
        return "scatter, gather"
    if "sort" in ops:
        return "sort"
    if ops & {"reduce", "reduce-window"}:
        return "reductions"
    if ops <= _MOVES:
        return "copies, transposes"
    if ops & {"while", "conditional", "call", "custom-call", "all-reduce", "all-gather"}:
        return "other"
    return "elementwise"


def _trace_ops(step, steps: int, module: str) -> list[tuple[str, int, int]]:  # noqa: ANN001
    """Every run of an HLO operation of ``module`` in ``steps`` traced steps: (name, start,
    end) in nanoseconds."""
    logdir = tempfile.mkdtemp(prefix="step_profile_")
    jax.profiler.start_trace(logdir)
    try:
        for _ in range(steps):
            loss = step()
            float(loss.detach().float().cpu().item())
    finally:
        jax.profiler.stop_trace()
    runs = []
    for path in glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True):
        for plane in ProfileData.from_file(path).planes:
            for line in plane.lines:
                for ev in line.events:
                    stats = dict(ev.stats)
                    if stats.get("hlo_module") == module and "hlo_op" in stats:
                        start = int(ev.start_ns)
                        runs.append((stats["hlo_op"], start, start + int(ev.duration_ns)))
    return runs


def _covered(intervals: list[tuple[int, int]]) -> int:
    """Nanoseconds during which at least one of ``intervals`` runs."""
    total, end = 0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total, end = total + b - a, b
        elif b > end:
            total, end = total + b - end, b
    return total


def profile(name: str, precision: str, steps: int, peak: float) -> dict:
    factory, batch_fn = bench.MODELS[name]
    torch.manual_seed(0)
    model, size = factory()
    model.train()
    batch, _, _ = batch_fn(size)
    step = bench.system_compile_step(model, batch, precision)
    for _ in range(bench.WARMUP + 1):
        bench._timed(step)
    wall = statistics.median(bench._timed(step) for _ in range(steps))
    program = step._program()
    hlo = program.compiled_text()
    module = re.match(r"HloModule ([\w.-]+)", hlo).group(1)
    kinds = classify(hlo)
    runs = _trace_ops(step, steps, module)
    rows = {k: [set(), 0.0, 0.0] for k in KINDS}
    per_op: dict[str, float] = collections.Counter()
    for op, a, b in runs:
        kind, flops, _ = kinds.get(op, ("other", 0.0, ""))
        rows[kind][0].add(op)
        rows[kind][1] += (b - a) * 1e-9 / steps
        rows[kind][2] += flops / steps
        per_op[op] += (b - a) * 1e-9 / steps
    products = [(a, b) for op, a, b in runs if kinds.get(op, ("",))[0] == "matrix products"]
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:8]
    return {
        "name": name,
        "wall": wall,
        "flops": program.cost_analysis().get("flops", 0.0),
        "rows": {k: (len(v[0]), v[1], v[2]) for k, v in rows.items()},
        "busy": _covered([(a, b) for _, a, b in runs]) * 1e-9 / steps,
        "products": _covered(products) * 1e-9 / steps,
        "top": [(op, sec, *kinds.get(op, ("other", 0.0, ""))) for op, sec in top],
        "peak": peak,
    }


def table(r: dict) -> str:
    summed = sum(v[1] for v in r["rows"].values())
    mm = r["rows"]["matrix products"]
    others = r["busy"] - r["products"]
    idle = max(r["wall"] - r["busy"], 0.0)
    at_peak = mm[2] / r["peak"] + others + idle
    lines = [
        f"### {r['name']}",
        "",
        f"Step {r['wall'] * 1e3:.1f} ms ({r['flops'] / r['wall'] / 1e9:.1f} GFLOP/s, MFU "
        f"{r['flops'] / r['wall'] / r['peak']:.1%}). Of the step's wall time, products run "
        f"during {r['products'] * 1e3:.1f} ms, other operations alone during "
        f"{others * 1e3:.1f} ms, and no traced operation during {idle * 1e3:.1f} ms (work "
        f"on XLA's Eigen thread pool that outlasts its operation's event, such as products "
        f"XLA does not give YNNPACK; allocation; the host).",
        "",
        "Each kind's operations (XLA:CPU runs independent operations at once, so their times "
        f"add up to {summed * 1e3:.1f} ms, not the step's; the rate of products run beside "
        "others is lower than their own):",
        "",
        "| kind | ops | ms/step | share | GFLOP | GFLOP/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        n, sec, f = r["rows"][kind]
        if not n:
            continue
        rate = f"{f / sec / 1e9:.0f}" if f and sec else ""
        gflop = f"{f / 1e9:.1f}" if f else ""
        lines.append(f"| {kind} | {n} | {sec * 1e3:.1f} | {sec / summed:.0%} | {gflop} | {rate} |")
    lines += [
        "",
        f"Products at peak: {at_peak * 1e3:.1f} ms a step, MFU "
        f"{r['flops'] / at_peak / r['peak']:.0%}: the products' {mm[2] / 1e9:.1f} GFLOP at "
        f"{r['peak'] / 1e9:.0f} GFLOP/s, plus the time other operations alone and the host "
        f"take. Over the products' own wall time they ran at "
        f"{mm[2] / max(r['products'], 1e-12) / 1e9:.0f} GFLOP/s "
        f"({mm[2] / max(r['products'], 1e-12) / r['peak']:.0%} of the peak).",
        "",
        "Slowest operations (time summed over the step's runs of each):",
        "",
        "| operation | kind | ms/step | GFLOP/s | product |",
        "|---|---|---:|---:|---|",
    ]
    for op, sec, kind, f, desc in r["top"]:
        rate = f"{f / sec / 1e9:.0f}" if f else ""
        lines.append(f"| `{op}` | {kind} | {sec * 1e3:.2f} | {rate} | {desc} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="gpt2-small,llama-small,gpt2-medium,llama-medium")
    p.add_argument("--precision", choices=["fp32", "bf16", "bf16-true"], default="fp32")
    p.add_argument("--steps", type=int, default=5, help="traced and timed steps")
    p.add_argument("--write", action="store_true", help=f"also write {OUT.name}")
    p.add_argument("--out", type=Path, default=OUT, help="the file --write writes")
    args = p.parse_args()
    os.environ.setdefault("TORCHTPU_CACHE_DIR", tempfile.mkdtemp(prefix="step_profile_cache_"))
    gemm = peak_gemm.measure()
    peak = gemm.value("fp32" if args.precision == "fp32" else "bf16")
    head = (
        f"# Where a training step's time goes (`benchmarks/step_profile.py`)\n\n"
        f"{datetime.date.today().isoformat()}; {bench.machine()}; torch {torch.__version__}, "
        f"jax {jax.__version__}, torchtpu {torchtpu.__version__}; precision {args.precision}; "
        f"`compile_step`, {args.steps} traced steps.\n\n{gemm.header()}. Peak used: "
        f"{peak / 1e9:.1f} GFLOP/s.\n\nCommand: `.venv/bin/python benchmarks/step_profile.py "
        f"{' '.join(sys.argv[1:])}`"
    )
    print(head, flush=True)
    parts = [head]
    for name in args.models.split(","):
        start = time.perf_counter()
        text = table(profile(name, args.precision, args.steps, peak))
        print(f"\n{text}\n({time.perf_counter() - start:.0f} s)", flush=True)
        parts.append(text)
    if args.write:
        args.out.write_text("\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
