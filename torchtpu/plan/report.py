"""A :class:`Plan`: one row per chip, printed as a table a person reads at a glance.

Each row prices the same workload (one chip's step, read from the compiled
programs) on one kind of chip: time per step, tokens/s, MFU, whether it fits
and the fewest chips that do, the strategy, cost per step, per 1M tokens and
for the whole job, the job's energy, and the bound (compute, memory or
communication). The fastest and the cheapest chip that fit are marked; a
figure resting on an unverified catalog value ends in ``~``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from torchtpu.plan.model import DecodeEstimate, Estimate, Workload

FASTEST, CHEAPEST, ESTIMATE = "fastest", "cheapest", "~"
COLUMNS = (
    ("chip", "chip"),
    ("n", "chips"),
    ("step", "time/step"),
    ("tok_s", "{unit}/s"),
    ("mfu", "MFU"),
    ("fits", "fits (min chips)"),
    ("strategy", "strategy"),
    ("cost_step", "$/step"),
    ("cost_1m", "$/1M {unit}"),
    ("cost_job", "$ job"),
    ("energy", "kWh job"),
    ("bound", "bound"),
)


@dataclasses.dataclass
class Plan:
    """The planner's answer: ``rows`` (one dict per chip), the :class:`Workload` they
    price, each chip's :class:`Estimate`, and the job (``tokens`` in all)."""

    workload: Workload
    estimates: list[Estimate]
    tokens: float | None = None
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.rows = [_row(self.workload, e, self.tokens) for e in self.estimates]
        _mark(self.rows)

    def row(self, chip: str) -> dict[str, Any]:
        """The row of the chip with this key."""
        for r in self.rows:
            if r["chip"] == chip:
                return r
        raise KeyError(f"plan: no row for chip {chip!r}; rows: {[r['chip'] for r in self.rows]}")

    def table(self) -> str:
        """The plan as an aligned text table with its header and legend."""
        return self._render(markdown=False)

    def markdown(self) -> str:
        """The plan as a markdown table with its header and legend."""
        return self._render(markdown=True)

    def chart(self, path: str | Path) -> Path:
        """Draw tokens/s and $ per 1M tokens per chip, the fastest and the cheapest marked,
        to the PNG ``path`` (needs matplotlib: ``pip install "torchtpu[plot]"``).

        Example::

            plan.chart("plan.png")
        """
        from torchtpu.plan.chart import draw

        return draw(self, path)

    def __str__(self) -> str:
        return self.table()

    def _render(self, markdown: bool) -> str:
        unit = self.workload.unit
        head = [title.format(unit=unit) for _, title in COLUMNS]
        body = [[_cell(r, key) for key, _ in COLUMNS] for r in self.rows]
        if markdown:
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(cells) + " |" for cells in body]
        else:
            widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
            fmt = "  ".join(f"{{:<{w}}}" for w in widths)
            lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
            lines += [fmt.format(*cells) for cells in body]
        return "\n".join([*self._header(), "", *lines, "", *self._legend()])

    def _header(self) -> list[str]:
        w = self.workload
        job = (
            f"job: {_si(self.tokens).strip()} {w.unit}"
            if self.tokens
            else "job: one step (pass tokens=)"
        )
        return [
            f"plan: {_si(w.flops)}FLOP, {_si(w.bytes_accessed)}B accessed, "
            f"{_si(w.memory_bytes)}B held, {_si(w.tokens).strip()} {w.unit} per chip per step, "
            f"{w.dtype} matmuls ({w.source}); {job}",
        ]

    def _legend(self) -> list[str]:
        notes = [
            f"{FASTEST}: most {self.workload.unit}/s; {CHEAPEST}: least $ per 1M "
            f"{self.workload.unit} (among chips that fit). {ESTIMATE}: rests on an unverified "
            "catalog figure. bound: the largest of compute, memory traffic and exposed "
            "communication.",
            (
                "step = the sum over the programs' operations of max(compute, memory) at "
                "each op class's rate (matmul, matvec, conv, other)"
                if self.workload.ops
                else "step = max(compute, memory)"
            )
            + " + communication not hidden under compute; "
            "MFU against the chip's dense peak for the programs' dtype.",
        ]
        if self.workload.dtype == "fp32" and any(r["consider_bf16"] for r in self.rows):
            slow = ", ".join(r["chip"] for r in self.rows if r["consider_bf16"])
            notes.append(
                f"consider bf16: the programs' matmuls are float32, several times slower than "
                f"bf16 on {slow} (compile_step(precision='bf16-mixed'))."
            )
        if any(not r["fits"] and r["min_chips"] is None for r in self.rows):
            notes.append(
                "does not fit: data parallel keeps every weight and optimizer state on each "
                "chip; it needs sharding (FSDP, issue 12)."
            )
        return notes


def _row(w: Workload, e: Estimate, job_tokens: float | None) -> dict[str, Any]:
    chip = e.chip
    tokens_per_step = w.tokens * e.n
    steps = math.ceil(job_tokens / tokens_per_step) if job_tokens else 1
    price, tdp = chip.price_per_hour, chip.tdp_w
    cost_step = e.step_s * e.n * price.value / 3600 if price is not None else None
    energy_step = e.step_s * e.n * tdp.value / 3.6e6 if tdp is not None else None
    timing_est = bool(set(e.estimated) - {"memory_bytes"})
    bf16 = chip.peak_flops.get("bf16")
    return {
        "chip": chip.key,
        "name": chip.name,
        "n_chips": e.n,
        "step_s": e.step_s,
        "tokens_per_s": tokens_per_step / e.step_s if e.step_s else math.inf,
        "mfu": e.mfu,
        "fits": e.fits,
        "min_chips": e.min_chips,
        "memory_per_chip": e.memory_per_chip,
        "strategy": e.strategy,
        "cost_per_step": cost_step,
        "cost_per_1m_tokens": cost_step / tokens_per_step * 1e6 if cost_step is not None else None,
        "cost_job": cost_step * steps if cost_step is not None else None,
        "energy_kwh": energy_step * steps if energy_step is not None else None,
        "job_steps": steps,
        "bound": e.bound,
        "compute_s": e.compute_s,
        "memory_s": e.memory_s,
        "comm_s": e.comm_s,
        "exposed_comm_s": e.exposed_comm_s,
        "comm_formula": e.comm_formula,
        "by_class": dict(e.by_class),
        "dtype": w.dtype,
        "consider_bf16": w.dtype == "fp32" and bf16 is not None and bf16.value >= 2 * e.peak.value,
        "estimates": list(e.estimated)
        + (["price_per_hour"] if price is not None and not price.verified else [])
        + (["tdp_w"] if tdp is not None and not tdp.verified else []),
        "timing_estimated": timing_est,
        "marks": [],
    }


def _mark(rows: list[dict[str, Any]]) -> None:
    fitting = [r for r in rows if r["fits"]]
    if fitting:
        max(fitting, key=lambda r: r["tokens_per_s"])["marks"].append(FASTEST)
    priced = [r for r in fitting if r["cost_per_1m_tokens"] is not None]
    if priced:
        min(priced, key=lambda r: r["cost_per_1m_tokens"])["marks"].append(CHEAPEST)


def _cell(r: dict[str, Any], key: str) -> str:
    est = ESTIMATE if r["timing_estimated"] else ""
    price_est = est or (ESTIMATE if "price_per_hour" in r["estimates"] else "")
    energy_est = est or (ESTIMATE if "tdp_w" in r["estimates"] else "")
    if key == "chip":
        return r["chip"] + (f" [{', '.join(r['marks'])}]" if r["marks"] else "")
    if key == "n":
        return str(r["n_chips"])
    if key == "step":
        return _seconds(r["step_s"]) + est
    if key == "tok_s":
        return _si(r["tokens_per_s"]).strip() + est
    if key == "mfu":
        return f"{100 * r['mfu']:.1f}%{est}"
    if key == "fits":
        fit_est = ESTIMATE if "memory_bytes" in r["estimates"] else ""
        need = "needs FSDP" if r["min_chips"] is None else str(r["min_chips"])
        return f"{'yes' if r['fits'] else 'no'} ({need}){fit_est}"
    if key == "strategy":
        return {"single": "single chip", "dp": "data parallel", "fsdp": "FSDP (issue 12)"}[
            r["strategy"]
        ]
    if key == "cost_step":
        return _money(r["cost_per_step"], price_est)
    if key == "cost_1m":
        return _money(r["cost_per_1m_tokens"], price_est)
    if key == "cost_job":
        return _money(r["cost_job"], price_est)
    if key == "energy":
        return "-" if r["energy_kwh"] is None else f"{r['energy_kwh']:.3g}{energy_est}"
    if key == "bound":
        return r["bound"]
    raise KeyError(key)


def _money(value: float | None, est: str) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"${value:,.0f}{est}"
    return f"${value:.3g}{est}"


def _seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def _si(value: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} "


@dataclasses.dataclass
class DecodePlan:
    """Serving at a per-query speed, one row per chip (:func:`torchtpu.plan.decode`)."""

    estimates: list[DecodeEstimate]
    tokens_per_s_per_query: float
    input_per_output: float = 1.0

    @property
    def rows(self) -> list[dict[str, Any]]:
        rows = [
            {
                "chip": d.chip.key,
                "n_chips": d.n,
                "batch": d.batch,
                "token_s": d.token_s,
                "output_tokens_per_s": d.output_tokens_per_s,
                "cost_per_1m": d.cost_per_1m_output,
                "bound": d.bound,
                "fits": d.fits,
                "estimated": bool(d.estimated),
                "price_estimated": d.chip.price_per_hour is not None
                and not d.chip.price_per_hour.verified,
                "marks": [],
            }
            for d in self.estimates
        ]
        priced = [r for r in rows if r["cost_per_1m"] is not None and r["fits"]]
        if priced:
            min(priced, key=lambda r: r["cost_per_1m"])["marks"].append(CHEAPEST)
        return rows

    def __str__(self) -> str:
        inputs = f"{self.input_per_output:g}M in + 1M out"
        head = ["chip", "chips", "batch", "time/token", "out tok/s", f"$ per {inputs}", "bound"]
        body = []
        for r in self.rows:
            est = ESTIMATE if r["estimated"] else ""
            body.append(
                [
                    r["chip"] + (f" [{', '.join(r['marks'])}]" if r["marks"] else ""),
                    str(r["n_chips"]),
                    str(r["batch"]) if r["fits"] else "0 (does not fit)",
                    _seconds(r["token_s"]) + est,
                    _si(r["output_tokens_per_s"]).strip() + est,
                    _money(r["cost_per_1m"], est or (ESTIMATE if r["price_estimated"] else "")),
                    r["bound"],
                ]
            )
        widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*cells) for cells in body]
        legend = (
            f"decode at {self.tokens_per_s_per_query:g} tok/s per query: the largest batch "
            "whose step (weights + KV cache over HBM bandwidth, or FLOPs over peak, with the "
            "prefill of the input tokens) takes 1/speed and whose KV cache fits. "
            f"{ESTIMATE}: rests on an unverified catalog figure."
        )
        return "\n".join([*lines, "", legend])
