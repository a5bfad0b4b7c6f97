"""Users' Triton kernels through torchtpu's translator against the same math in torch ops.

    .venv/bin/python benchmarks/kernels.py                       # large sizes, 5 rounds
    .venv/bin/python benchmarks/kernels.py --sizes small --rounds 2
    .venv/bin/python benchmarks/kernels.py --write               # also benchmarks/kernels.md

For each tutorial kernel of issue 15 (tests/kernels/triton_kernels.py: vector add, row
softmax, layer-norm forward, grouped fp16 matmul, dropout, histogram), in this process and
taking turns, one call each per round (the median is reported):

- ``eager``: the same math as torch ops, eager PyTorch on the CPU;
- ``inductor``: those torch ops under ``torch.compile`` (inductor's C++ backend);
- ``torch ops, tpu``: those torch ops under ``torch.compile(backend="tpu")``;
- ``triton, tpu``: the Triton kernel launched inside ``torch.compile(backend="tpu")``, i.e.
  translated to JAX and compiled by XLA as part of the program;
- ``triton, device``: the Triton kernel launched on tpu tensors (device mode), read back;
- ``triton interpreter``: Triton's own interpreter (``TRITON_INTERPRET=1``) in a child
  process, one call after a warm-up (it is too slow for rounds; not interleaved).

Ratios are times over eager's and inductor's, and ``triton, tpu`` over ``torch ops, tpu``
(issue 15's targets on CPU: at most 1.5x for bandwidth-bound kernels, 2x for matmul).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "kernels"))  # the tutorial kernels

import torch  # noqa: E402
import triton  # noqa: E402
import triton_kernels as K  # noqa: E402

SIZES = {
    "small": {
        "add": 4097,
        "softmax": (64, 129),
        "layernorm": (64, 200),
        "matmul": (64, 48, 80),
        "dropout": 4097,
        "histogram": 4097,
    },
    "large": {
        "add": 1 << 24,
        "softmax": (4096, 1000),
        "layernorm": (4096, 1024),
        "matmul": (1024, 1024, 1024),
        "dropout": 1 << 24,
        "histogram": 1 << 24,
    },
}
BINS, P, SEED, EPS = 256, 0.2, 7, 1e-5
BANDWIDTH_BOUND = {"add", "softmax", "layernorm", "dropout", "histogram"}


def _inputs(name: str, size) -> tuple:  # noqa: ANN001
    g = torch.Generator().manual_seed(0)
    if name in ("add", "dropout"):
        return tuple(torch.randn(size, generator=g) for _ in range(2 if name == "add" else 1))
    if name == "softmax":
        return (torch.randn(*size, generator=g),)
    if name == "layernorm":
        m, n = size
        return (torch.randn(m, n, generator=g), torch.randn(n, generator=g), torch.randn(n))
    if name == "matmul":
        m, n, k = size
        a = torch.randn(m, k, generator=g).half()
        return (a, torch.randn(k, n, generator=g).half())
    return (torch.randint(0, BINS, (size,), generator=g, dtype=torch.int32),)


# The Triton launches. Each takes its inputs on one device and returns new outputs there.


def t_add(x, y):  # noqa: ANN001, ANN201
    out = torch.empty_like(x)
    K.add_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, out, x.numel(), BLOCK=1024)
    return out


def t_softmax(x):  # noqa: ANN001, ANN201
    out = torch.empty_like(x)
    rows, cols = x.shape
    block = triton.next_power_of_2(cols)
    K.softmax_kernel[(rows,)](out, x, x.stride(0), x.stride(1), out.stride(0), cols, BLOCK=block)
    return out


def t_layernorm(x, w, b):  # noqa: ANN001, ANN201
    m, n = x.shape
    y = torch.empty_like(x)
    mean = torch.empty(m, device=x.device)
    rstd = torch.empty(m, device=x.device)
    block = min(1024, triton.next_power_of_2(n))
    K.layernorm_fwd_kernel[(m,)](x, y, w, b, mean, rstd, x.stride(0), n, EPS, BLOCK_N=block)
    return y


def t_matmul(a, b):  # noqa: ANN001, ANN201
    (m, k), n = a.shape, b.shape[1]
    c = torch.empty(m, n, dtype=torch.float16, device=a.device)
    grid = (triton.cdiv(m, 64) * triton.cdiv(n, 64),)
    strides = (*a.stride(), *b.stride(), *c.stride())
    K.matmul_kernel[grid](a, b, c, m, n, k, *strides, BM=64, BN=64, BK=32, GROUP=8)
    return c


def t_dropout(x):  # noqa: ANN001, ANN201
    out = torch.empty_like(x)
    K.dropout_kernel[(triton.cdiv(x.numel(), 1024),)](x, out, x.numel(), P, SEED, BLOCK=1024)
    return out


def t_histogram(x):  # noqa: ANN001, ANN201
    out = torch.zeros(BINS, dtype=torch.int32, device=x.device)
    K.histogram_kernel[(triton.cdiv(x.numel(), 1024),)](x, out, x.numel(), BLOCK=1024)
    return out


TRITON = {
    "add": t_add,
    "softmax": t_softmax,
    "layernorm": t_layernorm,
    "matmul": t_matmul,
    "dropout": t_dropout,
    "histogram": t_histogram,
}

# The same math in torch ops. Dropout draws its mask from torch's generator (not Philox), so
# it costs the same work, not the same numbers.
TORCH = {
    "add": torch.add,
    "softmax": lambda x: torch.softmax(x, -1),
    "layernorm": lambda x, w, b: torch.nn.functional.layer_norm(x, x.shape[-1:], w, b, EPS),
    "matmul": torch.matmul,
    "dropout": lambda x: torch.nn.functional.dropout(x, P, training=True),
    # Not torch.bincount: its output size depends on the data, so Dynamo leaves it to eager
    # PyTorch (a graph break) and the row would time PyTorch's C++ bincount, not torchtpu.
    "histogram": lambda x: torch.zeros(BINS, dtype=torch.int32, device=x.device).index_add_(
        0, x, torch.ones_like(x)
    ),
}


def _systems(name: str, args: tuple) -> dict[str, Callable[[], object]]:
    import torchtpu

    tpu_args = tuple(a.to("tpu") for a in args)
    strict = dict(fullgraph=True, options={"strict": True})  # the translated kernel, or an error

    def device() -> object:
        out = TRITON[name](*tpu_args)
        return out.cpu()

    return {
        "eager": lambda: TORCH[name](*args),
        "inductor": _bound(torch.compile(TORCH[name]), args),
        "torch ops, tpu": _bound(torch.compile(TORCH[name], backend="tpu"), args),
        "triton, tpu": _bound(torch.compile(TRITON[name], backend="tpu", **strict), args),
        "triton, device": device,
        "_sync": torchtpu.sync,
    }


def _bound(fn: Callable, args: tuple) -> Callable[[], object]:
    return lambda: fn(*args)


def measure(name: str, size, rounds: int) -> dict[str, float]:  # noqa: ANN001
    """Median seconds per call of each system, taking turns (one call each per round)."""
    args = _inputs(name, size)
    systems = _systems(name, args)
    sync = systems.pop("_sync")
    for fn in systems.values():  # compile and warm up
        fn()
    sync()
    times: dict[str, list[float]] = {s: [] for s in systems}
    for _ in range(rounds):
        for system, fn in systems.items():
            start = time.perf_counter()
            fn()
            times[system].append(time.perf_counter() - start)
    torch._dynamo.reset()
    return {s: statistics.median(t) for s, t in times.items()}


def interpreter(name: str, size, timeout: float) -> float | None:  # noqa: ANN001
    """Seconds for one call under Triton's interpreter, in a child process; None if it took
    longer than ``timeout``."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, __file__, "--child", name, json.dumps(size)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        raise RuntimeError(f"Triton's interpreter failed on {name}:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _child(name: str, size) -> None:  # noqa: ANN001
    args = _inputs(name, size)
    TRITON[name](*args)
    start = time.perf_counter()
    TRITON[name](*args)
    print(time.perf_counter() - start)


def _size_text(size) -> str:  # noqa: ANN001
    return "x".join(str(s) for s in size) if isinstance(size, (tuple, list)) else str(size)


def table(results: list[tuple[str, object, dict[str, float], float | None]]) -> str:
    lines = [
        "| kernel | size | system | ms | x eager | x inductor | x torch ops, tpu |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, size, times, interp in results:
        rows = dict(times)
        if interp is not None:
            rows["triton interpreter"] = interp
        for system, t in rows.items():
            ref = times["torch ops, tpu"]
            vs_ops = f"{t / ref:.2f}" if system.startswith("triton") else ""
            lines.append(
                f"| {name} | {_size_text(size)} | {system} | {t * 1e3:.3f} | "
                f"{t / times['eager']:.2f} | {t / times['inductor']:.2f} | {vs_ops} |"
            )
    return "\n".join(lines)


def targets(results: list[tuple[str, object, dict[str, float], float | None]]) -> str:
    lines = []
    for name, _, times, _ in results:
        ratio = times["triton, tpu"] / times["torch ops, tpu"]
        limit = 1.5 if name in BANDWIDTH_BOUND else 2.0
        verdict = "met" if ratio <= limit else "missed"
        lines.append(
            f"- {name}: triton, tpu / torch ops, tpu = {ratio:.2f} (target <= {limit}: {verdict})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed calls per system")
    parser.add_argument("--sizes", choices=sorted(SIZES), default="large")
    parser.add_argument("--kernels", default=",".join(TRITON), help="comma-separated subset")
    parser.add_argument("--interpreter-timeout", type=float, default=600, help="seconds")
    parser.add_argument("--no-interpreter", action="store_true", help="skip Triton's interpreter")
    parser.add_argument("--write", action="store_true", help="also write benchmarks/kernels.md")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        _child(opts.child[0], json.loads(opts.child[1]))
        return

    results = []
    for name in opts.kernels.split(","):
        size = SIZES[opts.sizes][name]
        times = measure(name, size, opts.rounds)
        interp = None
        if not opts.no_interpreter:
            interp = interpreter(name, size, opts.interpreter_timeout)
        results.append((name, size, times, interp))
        print(f"{name} {_size_text(size)}: done", file=sys.stderr)

    import jax

    head = (
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), JAX platform "
        f"{jax.default_backend()}: torch {torch.__version__}, jax {jax.__version__}, "
        f"triton {triton.__version__}; sizes {opts.sizes}, median of {opts.rounds} rounds "
        "(the interpreter: one call after a warm-up, in a child process)."
    )
    text = "\n\n".join(
        [
            "# Triton kernels: translated vs torch ops (`benchmarks/kernels.py`)",
            head,
            table(results),
            "Issue 15's targets on CPU:\n\n" + targets(results),
        ]
    )
    print(text)
    if opts.write:
        (ROOT / "benchmarks" / "kernels.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
