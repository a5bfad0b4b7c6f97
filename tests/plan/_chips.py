"""A made-up chip for the planner's hand-computed cases: 10 TFLOP/s fp32 (100 bf16) at 50%
matmul efficiency, 1 TB/s, 100 GB/s links in a switch domain of 8, 500 W, $3.60 an hour."""

from __future__ import annotations

import dataclasses

from torchtpu.plan.catalog import Chip, Figure


def fig(value: float, verified: bool = True) -> Figure:
    return Figure(value, "test", "2026-01", verified)


def fake_chip(key: str = "fake", **changes) -> Chip:
    chip = Chip(
        key=key,
        name="Fake",
        vendor="test",
        peak_flops={"bf16": fig(100e12), "fp32": fig(10e12)},
        memory_bytes=fig(10e9),
        memory_bw=fig(1e12),
        link_bw=fig(100e9),
        domain=8,
        topology="switch",
        tdp_w=fig(500),
        price_per_hour=fig(3.6),
        price_provider="test cloud",
        matmul_efficiency=fig(0.5),
    )
    return dataclasses.replace(chip, **changes)
