"""The step model: a workload's FLOPs, bytes and memory, priced on a chip.

A :class:`Workload` is what one chip runs per step: FLOPs and bytes accessed
from XLA's cost analysis of the compiled programs, memory from their memory
analysis (:func:`workload_from_programs`), never a formula of the user's code.
Only the published comparisons in ``benchmarks/plan_accuracy.py``, whose
programs cannot be compiled here, describe a workload by numbers
(:func:`analytic_workload`, labelled as such).

:func:`estimate` puts a workload on ``n`` chips of one kind with a strategy
and gives an :class:`Estimate`, a roofline:

- compute = FLOPs / (peak[dtype] * matmul_efficiency);
- memory = bytes accessed / HBM bandwidth;
- communication = the strategy's collectives, each priced on the chip's
  scale-up link (ring, mesh or torus formulas below) and, across scale-up
  domains, on the scale-out network;
- step = max(compute, memory) + the communication that compute cannot hide;
- bound = the largest of compute, memory and that exposed communication.

References: "How to Scale Your Model" (jax-ml.github.io/scaling-book, chapters
``sharding`` and ``training``) for the torus collectives and the DP/FSDP
traffic, NCCL-tests ``doc/PERFORMANCE.md`` for the ring bus-bandwidth formulas.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

from torchtpu.plan.catalog import Chip, Figure

# GPU scale-up domains (NVLink, xGMI) join over a scale-out network the catalog
# does not describe. One 400 Gb/s NIC per GPU is the DGX H100 / HGX reference
# design (8 x ConnectX-7); a TPU pod or Trainium UltraServer is one domain.
SCALE_OUT_BW = Figure(
    50e9,
    "one 400 Gb/s InfiniBand NDR NIC per GPU (NVIDIA DGX H100 reference design)",
    "2023",
    False,
)

# Data parallel: the gradient all-reduce overlaps the backward pass (DDP buckets,
# XLA's async collectives), about 2/3 of a step's FLOPs (backward = 2 x forward).
BACKWARD_FRACTION = 2 / 3

STRATEGIES = ("single", "dp", "fsdp")

# A float32 matmul at XLA's HIGHEST precision (torch's "highest", torchtpu's default)
# runs on a TPU's bf16 MXU as six bf16 passes (jax.lax.Precision, "bf16_6x").
FP32_PASSES = 6


@dataclasses.dataclass(frozen=True)
class Workload:
    """What one chip runs per step.

    flops, bytes_accessed: XLA's cost analysis, summed over the step's programs.
    memory_bytes: the most any one program holds (arguments + outputs +
    temporaries - aliased), the memory a chip needs without sharding.
    state_bytes: the part of it that sharding can split (weights, gradients,
    optimizer state: the donated buffers of a compile_step).
    grad_bytes: the gradients a data-parallel step all-reduces (0 for inference).
    tokens: tokens (or samples, see ``unit``) one chip processes per step.
    dtype: the matmul dtype (``"bf16"`` if the programs' matmuls run in bf16).
    source: where the figures come from, printed in the report.
    ops: the programs' top-level operations by class (:mod:`torchtpu.plan.hlo`); with
    them the roofline is taken per operation, at its class's rate. Empty for an
    analytic workload, which is priced on its totals.
    """

    flops: float
    bytes_accessed: float
    memory_bytes: float
    state_bytes: float = 0.0
    grad_bytes: float = 0.0
    tokens: float = 1.0
    dtype: str = "fp32"
    source: str = "program"
    unit: str = "tokens"
    ops: tuple[Any, ...] = ()
    extra_comm: tuple[Collective, ...] = ()


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective per step: ``kind`` is ``all-reduce``, ``all-gather`` or
    ``reduce-scatter`` of ``bytes`` over ``group`` chips. ``hidden_by`` is the
    fraction of the step's compute (or memory) time it can overlap (0: on the
    critical path)."""

    kind: str
    bytes: float
    group: int
    hidden_by: float = 0.0


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A workload on ``n`` chips of one kind: the roofline's terms, in seconds."""

    chip: Chip
    n: int
    strategy: str
    compute_s: float
    memory_s: float
    comm_s: float
    exposed_comm_s: float
    step_s: float
    bound: str
    memory_per_chip: float
    fits: bool
    min_chips: int | None
    peak: Figure
    estimated: tuple[str, ...]
    comm_formula: str
    flops: float
    by_class: tuple[tuple[str, float], ...] = ()  # (op class, seconds), per-op rooflines

    @property
    def mfu(self) -> float:
        """Model FLOPs / (step time * dense peak of the program's dtype), per chip."""
        return self.flops / (self.step_s * self.peak.value) if self.step_s else 0.0


# --- the programs ---------------------------------------------------------------------

_MATMUL = re.compile(r"(dot_general|convolution)")


def matmul_dtype(lowered_texts: Sequence[str]) -> str:
    """``"bf16"`` (or ``"fp16"``) if any matmul or convolution in the StableHLO takes
    that type, else ``"fp32"``. The lowered text, not the compiled one: XLA:CPU
    upcasts bf16 dots to f32, and the plan is for the chip that would not."""
    found = "fp32"
    for text in lowered_texts:
        for line in text.splitlines():
            if _MATMUL.search(line):
                if "bf16>" in line:
                    return "bf16"
                if "xf16>" in line:
                    found = "fp16"
    return found


def workload_from_programs(
    programs: Sequence[Any],
    *,
    tokens: float,
    state_bytes: float | None = None,
    grad_bytes: float = 0.0,
    unit: str = "tokens",
) -> Workload:
    """A workload from compiled :class:`~torchtpu.Program` s (one step's programs):
    FLOPs and bytes summed, memory the largest program's arguments + outputs +
    temporaries - aliased. ``state_bytes`` defaults to the donated (aliased) bytes."""
    if not programs:
        raise ValueError("plan: no compiled XLA programs to read (did the step run on XLA?)")
    from torchtpu.plan.hlo import op_costs

    flops = nbytes = 0.0
    memory = aliased = 0.0
    ops: list[Any] = []
    for program in programs:
        ops += op_costs(program.compiled_text())
        cost = program.cost_analysis()
        flops += float(cost.get("flops", 0.0))
        nbytes += float(cost.get("bytes accessed", 0.0))
        m = program.memory_analysis()
        held = (
            _field(m, "argument_size_in_bytes")
            + _field(m, "output_size_in_bytes")
            + _field(m, "temp_size_in_bytes")
            - _field(m, "alias_size_in_bytes")
        )
        memory = max(memory, held)
        aliased = max(aliased, _field(m, "alias_size_in_bytes"))
    dtype = matmul_dtype([p.lowered_text() for p in programs])
    return Workload(
        flops=flops,
        bytes_accessed=nbytes,
        memory_bytes=memory,
        state_bytes=aliased if state_bytes is None else state_bytes,
        grad_bytes=grad_bytes,
        tokens=tokens,
        dtype=dtype,
        source=f"XLA cost and memory analysis of {len(programs)} program(s)",
        unit=unit,
        ops=tuple(ops),
    )


def _field(memory: Any, name: str) -> float:
    return float(getattr(memory, name, 0) or 0)


def analytic_workload(
    *,
    params: float,
    tokens: float,
    chips: int,
    bytes_per_param: float = 2.0,
    state_bytes_per_param: float = 16.0,
    activation_bytes: float = 0.0,
    dtype: str = "bf16",
    extra_comm: tuple[Collective, ...] = (),
) -> Workload:
    """A training step described by numbers, for published results whose programs
    cannot be compiled here: 6 * params * tokens FLOPs over ``chips`` chips, bytes
    accessed = the weights read three times (forward, backward, update). Not what
    :func:`torchtpu.plan` uses for a real model: it reads the compiled programs."""
    per_chip_params = params / chips
    return Workload(
        flops=6 * params * tokens / chips,
        bytes_accessed=3 * per_chip_params * bytes_per_param,
        memory_bytes=per_chip_params * state_bytes_per_param + activation_bytes,
        state_bytes=per_chip_params * state_bytes_per_param,
        grad_bytes=per_chip_params * bytes_per_param,
        tokens=tokens / chips,
        dtype=dtype,
        source="analytic: 6 * params * tokens (published comparison, no program)",
        extra_comm=extra_comm,
    )


# --- communication --------------------------------------------------------------------

_DIMS = {"torus2d": 2, "torus3d": 3}


def collective_seconds(c: Collective, chip: Chip) -> tuple[float, str, bool]:
    """Seconds for one collective on ``chip``'s links, the formula used, and whether
    it rests on an unverified figure.

    Bandwidth terms only (no per-hop latency). ``S`` = bytes, ``n`` = chips, ``B`` =
    the chip's scale-up bandwidth, one direction, all its links together.
    An all-reduce moves 2(n-1)/n * S per chip (reduce-scatter + all-gather), the
    others (n-1)/n * S:

    - ``switch``/``ring``: t = k(n-1)/n * S / B (NCCL's bus bandwidth);
    - ``torus2d``/``torus3d``: a bidirectional ring along each axis the slice
      spans, all axes at once (scaling book: divide by the axes used): the
      slice's a of D axes give a/D of B, t = k(n-1)/n * S / (B a/D);
    - ``mesh`` (a full mesh of ``domain`` chips, MI300X): n-1 of the domain-1
      point-to-point links carry the traffic, t = k(n-1)/n * S / (B (n-1)/(domain-1));
    - beyond one domain: hierarchical, the scale-up part over d = domain chips
      and the rest over each chip's own NIC: t = k(d-1)/d * S / B
      + k(m-1)/m * (S/d) / SCALE_OUT_BW, m = n/d domains.
    """
    n, size = c.group, c.bytes
    if n <= 1 or size <= 0:
        return 0.0, "none (one chip)", False
    k = 2.0 if c.kind == "all-reduce" else 1.0
    if chip.link_bw is None:
        t = k * (n - 1) / n * size / SCALE_OUT_BW.value
        return t, f"{c.kind}: ring over scale-out {k:g}(n-1)/n*S/B_net", True
    d = min(n, max(chip.domain, 1))
    link = chip.link_bw.value * _link_share(chip, d)
    t = k * (d - 1) / d * size / link
    formula = f"{c.kind}: {_topology_text(chip)}"
    estimated = not chip.link_bw.verified
    if n > d:
        m = math.ceil(n / d)
        t += k * (m - 1) / m * (size / d) / SCALE_OUT_BW.value
        formula += " + scale-out ring across domains"
        estimated = True
    return t, formula, estimated


def _link_share(chip: Chip, n: int) -> float:
    """The fraction of the chip's scale-up bandwidth a collective over n chips uses."""
    if chip.topology in _DIMS:
        dims = _DIMS[chip.topology]
        return len(torus_slice(n, dims)) / dims
    if chip.topology == "mesh" and chip.domain > 1:
        return (n - 1) / (chip.domain - 1)
    return 1.0


def torus_slice(n: int, dims: int) -> list[int]:
    """The axes (sizes > 1) of the most nearly cubic slice of ``n`` chips in a torus of
    ``dims`` dimensions, factors of 2 dealt round the axes in turn."""
    shape = [1] * dims
    rest, axis = n, 0
    while rest > 1:
        f = 2 if rest % 2 == 0 else rest
        shape[axis % dims] *= f
        rest //= f
        axis += 1
    return [s for s in shape if s > 1]


def _topology_text(chip: Chip) -> str:
    if chip.topology in _DIMS:
        return "bidirectional rings on each torus axis used, k(n-1)/n*S/(B*a/D)"
    if chip.topology == "mesh":
        return "full mesh, k(n-1)/n*S/(B*(n-1)/(domain-1))"
    return "ring, k(n-1)/n*S/B"


def strategy_collectives(w: Workload, strategy: str, n: int) -> list[Collective]:
    """The collectives a strategy adds per step (scaling book, ``training``):
    data parallel all-reduces the gradients, hidden under the backward pass; FSDP
    all-gathers the weights in forward and backward and reduce-scatters the
    gradients, with the gathers prefetched under compute as well."""
    out = list(w.extra_comm)
    if n <= 1 or strategy == "single":
        return out
    if strategy == "dp":
        out.append(Collective("all-reduce", w.grad_bytes, n, BACKWARD_FRACTION))
    elif strategy == "fsdp":
        weights = w.grad_bytes  # weights travel in the gradient's dtype
        out += [
            Collective("all-gather", weights, n, 1 - BACKWARD_FRACTION),
            Collective("all-gather", weights, n, BACKWARD_FRACTION),
            Collective("reduce-scatter", w.grad_bytes, n, BACKWARD_FRACTION),
        ]
    else:
        raise ValueError(f"plan: strategy={strategy!r} is not one of {STRATEGIES}")
    return out


# --- the roofline ---------------------------------------------------------------------


def memory_per_chip(w: Workload, strategy: str, n: int) -> float:
    """Bytes one chip holds: everything for single/dp, the state split n ways for FSDP
    (activations and temporaries stay whole: each chip runs its own batch)."""
    if strategy == "fsdp" and n > 1:
        return w.memory_bytes - w.state_bytes + w.state_bytes / n
    return w.memory_bytes


def min_chips(w: Workload, chip: Chip, strategy: str) -> int | None:
    """The fewest chips whose memory holds the job: 1 if one chip does, for FSDP
    ceil(state / (memory - activations)), None if data parallel cannot fit."""
    capacity = chip.memory_bytes.value
    if w.memory_bytes <= capacity:
        return 1
    if strategy != "fsdp":
        return None
    room = capacity - (w.memory_bytes - w.state_bytes)
    return math.ceil(w.state_bytes / room) if room > 0 else None


def estimate(w: Workload, chip: Chip, n: int = 1, strategy: str = "dp") -> Estimate:
    """Price ``w`` (one chip's step) on ``n`` chips of ``chip`` with ``strategy``.

    step = max(compute, memory) + exposed communication, where each collective
    hides under its ``hidden_by`` share of max(compute, memory) (the pass it
    overlaps runs at that speed); ``bound`` names the largest of compute, memory
    and exposed communication.

    Example::

        e = estimate(Workload(flops=1e12, bytes_accessed=1e9, memory_bytes=1e9), chip)
        e.step_s, e.bound
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"plan: strategy={strategy!r} is not one of {STRATEGIES}")
    peak = chip_peak(chip, w.dtype)
    if w.ops:
        compute, memory, local, by_class, split = per_op_roofline(w, chip, peak.value)
    else:
        compute = w.flops / (peak.value * chip.matmul_efficiency.value)
        memory = w.bytes_accessed / chip.memory_bw.value
        local, by_class, split = max(compute, memory), (), {"compute": compute, "memory": memory}
    comm = exposed = 0.0
    formulas, comm_estimated = [], False
    for c in strategy_collectives(w, strategy, n):
        t, formula, est = collective_seconds(c, chip)
        comm += t
        exposed += max(0.0, t - c.hidden_by * local)
        formulas.append(formula)
        comm_estimated |= est
    step = local + exposed
    terms = {**split, "communication": exposed}
    bound = max(terms, key=terms.__getitem__)
    held = memory_per_chip(w, strategy, n)
    estimated = [f for f in ("peak", "matmul_efficiency", "memory_bw") if not _verified(chip, f, w)]
    if comm_estimated:
        estimated.append("link_bw")
    kinds = {o.kind for o in w.ops}
    if "conv" in kinds and not (chip.conv_efficiency and chip.conv_efficiency.verified):
        estimated.append("conv_efficiency")
    if "matvec" in kinds and not (chip.matvec_bw and chip.matvec_bw.verified):
        estimated.append("matvec_bw")
    if not chip.memory_bytes.verified:
        estimated.append("memory_bytes")
    return Estimate(
        chip=chip,
        n=n,
        strategy=strategy,
        compute_s=compute,
        memory_s=memory,
        comm_s=comm,
        exposed_comm_s=exposed,
        step_s=step,
        bound=bound,
        memory_per_chip=held,
        fits=held <= chip.memory_bytes.value,
        min_chips=min_chips(w, chip, strategy),
        peak=peak,
        estimated=tuple(estimated),
        comm_formula="; ".join(dict.fromkeys(formulas)) or "none",
        flops=w.flops,
        by_class=by_class,
    )


def pipeline_bubble(stages: int, microbatches: int, interleave: int = 1) -> float:
    """The idle fraction a pipeline adds to a step: (p - 1) / (v m) of the ideal time for a
    1F1B schedule of ``stages`` p, ``microbatches`` m and ``interleave`` v virtual stages
    per device (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on
    GPU Clusters", eq. 1 and section 2.2.2): step = ideal x (1 + bubble).

    Example::

        pipeline_bubble(16, 32)  # 15/32 = 0.469
    """
    if stages < 1 or microbatches < 1 or interleave < 1:
        raise ValueError(
            f"pipeline_bubble: stages={stages}, microbatches={microbatches}, "
            f"interleave={interleave}; each must be at least 1"
        )
    return (stages - 1) / (interleave * microbatches)


def class_rates(chip: Chip, peak: float) -> dict[str, tuple[float, float]]:
    """(FLOP/s, bytes/s) of each op class on ``chip``, ``peak`` the dense peak of the
    programs' dtype: matmuls at the matmul efficiency and HBM bandwidth; convolutions at
    ``conv_efficiency`` (else the matmul efficiency); matrix-vector products reading at
    ``matvec_bw`` (else HBM bandwidth); other ops at HBM bandwidth."""
    matmul = peak * chip.matmul_efficiency.value
    conv = peak * chip.conv_efficiency.value if chip.conv_efficiency else matmul
    bw = chip.memory_bw.value
    matvec = chip.matvec_bw.value if chip.matvec_bw else bw
    return {
        "matmul": (matmul, bw),
        "conv": (conv, bw),
        "matvec": (matmul, matvec),
        "other": (matmul, bw),
    }


def per_op_roofline(
    w: Workload, chip: Chip, peak: float
) -> tuple[float, float, float, tuple[tuple[str, float], ...], dict[str, float]]:
    """Compute and memory totals, and the step's device time as the sum over operations
    of max(FLOPs / class FLOP rate, bytes / class bandwidth): operations run one after
    another, each bound by its own resource. Also that time per class, and split by
    what bounds each operation (``{"compute": s, "memory": s}``).

    FLOPs and bytes are scaled to XLA's cost-analysis totals (the HLO counts are within a
    few per cent of them): XLA's figures are the workload's, the HLO gives their split."""
    rates = class_rates(chip, peak)
    counted = sum(o.flops for o in w.ops)
    scale = w.flops / counted if counted else 1.0
    moved = sum(o.bytes for o in w.ops)
    byte_scale = w.bytes_accessed / moved if moved else 1.0
    compute = memory = total = 0.0
    per_class = dict.fromkeys(rates, 0.0)
    split = {"compute": 0.0, "memory": 0.0}
    for o in w.ops:
        flop_rate, bw = rates[o.kind]
        c, m = o.flops * scale / flop_rate, o.bytes * byte_scale / bw
        compute, memory = compute + c, memory + m
        total += max(c, m)
        per_class[o.kind] += max(c, m)
        split["compute" if c >= m else "memory"] += max(c, m)
    by_class = tuple((k, t) for k, t in per_class.items() if t)
    return compute, memory, total, by_class, split


def _verified(chip: Chip, field: str, w: Workload) -> bool:
    if field == "peak":
        return chip_peak(chip, w.dtype).verified
    return getattr(chip, field).verified


def chip_peak(chip: Chip, dtype: str) -> Figure:
    """The chip's dense peak for ``dtype``; for float32 on a chip that publishes none
    (TPUs), the bf16 peak over the six passes XLA makes of it, marked an estimate."""
    try:
        return chip.peak(dtype)
    except KeyError:
        if dtype != "fp32" or "bf16" not in chip.peak_flops:
            raise
    bf16 = chip.peak_flops["bf16"]
    return Figure(
        bf16.value / FP32_PASSES,
        f"bf16 peak / {FP32_PASSES}: XLA's HIGHEST-precision f32 matmul (jax.lax.Precision)",
        bf16.date,
        False,
    )


# --- decoding -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DecodeEstimate:
    """Serving a model on ``n`` chips at a per-query speed: the largest batch that
    keeps each query at ``tokens_per_s_per_query``, and what a million tokens cost."""

    chip: Chip
    n: int
    batch: int
    token_s: float
    bound: str
    fits: bool
    output_tokens_per_s: float
    cost_per_1m_output: float | None
    estimated: tuple[str, ...]


def decode_estimate(
    chip: Chip,
    *,
    params: float,
    bytes_per_param: float = 2.0,
    kv_bytes_per_token: float,
    context: float,
    tokens_per_s_per_query: float,
    input_per_output: float = 1.0,
    n: int | None = None,
) -> DecodeEstimate:
    """Serve a decoder on ``n`` chips (tensor parallel, weights split n ways) so that
    each query gets ``tokens_per_s_per_query`` output tokens per second.

    One decode step (one token for each of B queries) reads the weights W and the
    batch's KV cache, B * context * kv_bytes_per_token, and computes 2 * params * B
    FLOPs, plus the prefill of ``input_per_output`` input tokens per output token
    (2 * params FLOPs each) that continuous batching runs in the same time. Its
    time is max(bytes / (n * HBM BW), FLOPs / (n * peak * efficiency)); B is the
    largest batch with that time <= 1 / speed whose KV cache fits beside the
    weights. Cost per 1M output tokens = n * price / 3600 / (B * speed) * 1e6,
    with their ``input_per_output`` million input tokens included (their prefill
    shares the step): at the default 1.0, the cost of 1M input + 1M output tokens.
    ``n`` defaults to the smallest power of two whose memory holds the weights and
    one query's KV cache.
    """
    weights = params * bytes_per_param
    kv_query = kv_bytes_per_token * context
    if n is None:
        n = 1
        while n * chip.memory_bytes.value < weights + kv_query and n < 1 << 16:
            n *= 2
    peak = chip_peak(chip, "bf16" if bytes_per_param <= 2 else "fp32")
    flops_rate = n * peak.value * chip.matmul_efficiency.value
    bw = n * chip.memory_bw.value
    step = 1.0 / tokens_per_s_per_query
    by_bw = (bw * step - weights) / kv_query
    by_compute = flops_rate * step / (2 * params * (1 + input_per_output))
    by_memory = (n * chip.memory_bytes.value - weights) / kv_query
    batch = max(0, math.floor(min(by_bw, by_compute, by_memory)))
    limits = {"memory": by_bw, "compute": by_compute, "capacity": by_memory}
    bound = min(limits, key=limits.__getitem__)
    b = max(batch, 1)
    token_s = max(
        (weights + b * kv_query) / bw, 2 * params * b * (1 + input_per_output) / flops_rate
    )
    out_rate = batch * tokens_per_s_per_query
    price = chip.price_per_hour
    cost = None
    if price is not None and out_rate > 0:
        cost = n * price.value / 3600 / out_rate * 1e6
    estimated = [
        f
        for f in ("memory_bw", "memory_bytes", "matmul_efficiency")
        if not getattr(chip, f).verified
    ]
    if not peak.verified:
        estimated.append("peak")
    return DecodeEstimate(
        chip=chip,
        n=n,
        batch=batch,
        token_s=token_s,
        bound=bound,
        fits=batch >= 1,
        output_tokens_per_s=out_rate,
        cost_per_1m_output=cost,
        estimated=tuple(estimated),
    )
