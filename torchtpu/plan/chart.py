"""A :class:`~torchtpu.plan.Plan` as a PNG: tokens/s and $ per 1M tokens per chip.

Two panels of horizontal bars, one row per chip in the plan's order, on log scales (a
CPU and a GPU differ by four orders of magnitude). The fastest and the cheapest chip
are coloured and labelled; a chip that does not fit is grey and hatched; a figure that
rests on an unverified catalog value ends in ``~``; a chip with no price says so.
matplotlib is an optional dependency (``pip install "torchtpu[plot]"``); the Agg
backend draws without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchtpu.plan.report import CHEAPEST, ESTIMATE, FASTEST, _si

_PLAIN, _FASTEST, _CHEAPEST, _BOTH, _NO_FIT = "#a6bddb", "#1b9e77", "#d95f02", "#6a3d9a", "#dddddd"


def draw(plan: Any, path: str | Path) -> Path:
    """Write ``plan``'s bar chart to ``path`` (PNG) and return the path.

    Example::

        import torch, torchtpu
        p = torchtpu.plan(torch.nn.Linear(64, 64), torch.randn(32, 64), chips=["h100", "tpu-v6e"])
        p.chart("plan.png")
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "Plan.chart (torchtpu plan --chart) needs matplotlib, which is not installed: "
            'pip install "torchtpu[plot]" (or matplotlib), or use plan.markdown() for a table'
        ) from exc
    if not plan.rows:
        raise ValueError("Plan.chart: the plan has no rows (chips=[]); plan at least one chip")
    unit = plan.workload.unit
    rows = plan.rows
    labels = [
        r["chip"]
        + (f" x{r['n_chips']}" if r["n_chips"] > 1 else "")
        + (f" [{', '.join(r['marks'])}]" if r["marks"] else "")
        for r in rows
    ]
    ys = list(range(len(rows)))[::-1]  # the plan's first chip on top
    fig, (speed, cost) = plt.subplots(
        1, 2, figsize=(11, 0.45 * len(rows) + 1.8), sharey=True, constrained_layout=True
    )
    for r, y in zip(rows, ys, strict=True):
        est = ESTIMATE if r["timing_estimated"] else ""
        colour, hatch = _style(r)
        speed.barh(y, r["tokens_per_s"], color=colour, hatch=hatch, edgecolor="white")
        speed.text(r["tokens_per_s"], y, f" {_si(r['tokens_per_s']).strip()}{est}", va="center")
        price = r["cost_per_1m_tokens"]
        if price is None:
            cost.text(0.0, y, " no price", va="center", color="#777777", transform=_x_axes(cost))
            continue
        price_est = est or (ESTIMATE if "price_per_hour" in r["estimates"] else "")
        cost.barh(y, price, color=colour, hatch=hatch, edgecolor="white")
        cost.text(price, y, f" ${price:.3g}{price_est}", va="center")
    speed.set_yticks(ys, labels)
    _scale(speed, [r["tokens_per_s"] for r in rows])
    speed.set_xlabel(f"{unit}/s (more is better)")
    _scale(cost, [r["cost_per_1m_tokens"] for r in rows if r["cost_per_1m_tokens"] is not None])
    cost.set_xlabel(f"$ per 1M {unit} (less is better)")
    for ax in (speed, cost):
        ax.margins(x=0.25)
        ax.grid(axis="x", which="major", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    legend = {
        _FASTEST: FASTEST,
        _CHEAPEST: CHEAPEST,
        _BOTH: f"{FASTEST} and {CHEAPEST}",
        _NO_FIT: "does not fit",
    }
    used = {_style(r)[0] for r in rows} - {_PLAIN}
    handles = [
        plt.Rectangle((0, 0), 1, 1, facecolor=c, hatch="//" if c == _NO_FIT else None, label=t)
        for c, t in legend.items()
        if c in used
    ]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    w = plan.workload
    fig.suptitle(
        f"{_si(w.tokens).strip()} {unit} per chip per step, {_si(w.flops)}FLOP, "
        f"{w.dtype} matmuls; {ESTIMATE}: rests on an unverified catalog figure",
        fontsize=10,
    )
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _scale(ax: Any, values: list[float]) -> None:
    """Log scale where the values span more than 30x (chips and a CPU), else linear from 0,
    so that a 2x difference looks like one."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

    positive = [v for v in values if v and v > 0 and v != float("inf")]
    if positive and max(positive) / min(positive) > 30:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xlim(left=0)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))


def _style(r: dict[str, Any]) -> tuple[str, str | None]:
    if not r["fits"]:
        return _NO_FIT, "//"
    marks = set(r["marks"])
    if marks == {FASTEST, CHEAPEST}:
        return _BOTH, None
    if FASTEST in marks:
        return _FASTEST, None
    if CHEAPEST in marks:
        return _CHEAPEST, None
    return _PLAIN, None


def _x_axes(ax: Any) -> Any:
    """Text placed at an axes fraction in x (the left edge) and a data position in y."""
    import matplotlib.transforms as transforms

    return transforms.blended_transform_factory(ax.transAxes, ax.transData)
