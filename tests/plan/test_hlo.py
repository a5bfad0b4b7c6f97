"""Op classes read from compiled HLO, the per-operation roofline and the pipeline bubble,
on hand-computed cases."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from _chips import fake_chip, fig  # tests/plan, on sys.path

from torchtpu.plan import Workload, estimate
from torchtpu.plan.catalog import Figure
from torchtpu.plan.hlo import OpCost, class_totals, op_costs
from torchtpu.plan.model import class_rates, per_op_roofline, pipeline_bubble
from torchtpu.runtime import jax_scope


def compiled(fn, *shapes):
    with jax_scope():
        specs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
        return jax.jit(fn).lower(*specs).compile()


def cost(c):
    ca = c.cost_analysis()
    return ca[0] if isinstance(ca, list) else ca


def test_convolution_matmul_and_matvec_are_told_apart_and_counted():
    def fn(x, w, a, b, v):
        conv = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME")
        return conv, jnp.tanh(a @ b), v @ b

    c = compiled(fn, (2, 8, 16, 16), (4, 8, 3, 3), (64, 128), (128, 96), (4, 128))
    totals = class_totals(op_costs(c.as_text()))
    assert totals["conv"][0] == 2 * (2 * 4 * 16 * 16) * (8 * 3 * 3)
    assert totals["matmul"][0] == 2 * 64 * 128 * 96
    assert totals["matvec"][0] == 2 * 4 * 128 * 96  # 4 rows: at most SKINNY
    assert totals["other"][0] == 0.0
    flops = sum(f for f, _ in totals.values())
    assert flops == pytest.approx(cost(c)["flops"], rel=0.1)
    nbytes = sum(b for _, b in totals.values())
    assert nbytes == pytest.approx(cost(c)["bytes accessed"], rel=0.1)


def test_a_fusion_that_slices_an_operand_reads_only_the_slice():
    c = compiled(lambda cache: jnp.exp(cache[2]) * 2, (6, 1024, 64))
    ops = op_costs(c.as_text())
    layer = 1024 * 64 * 4
    assert sum(o.bytes for o in ops) == 2 * layer  # the slice read and the result written
    assert sum(o.bytes for o in ops) == pytest.approx(cost(c)["bytes accessed"], rel=0.05)


def test_not_a_compiled_module_is_a_clear_error():
    with pytest.raises(ValueError, match="no ENTRY computation"):
        op_costs("hello")


def test_per_op_roofline_sums_each_operation_at_its_class_rate():
    # fake chip: 10 TFLOP/s fp32 x 0.5 efficiency = 5e12 FLOP/s; 1 TB/s
    chip = fake_chip(conv_efficiency=fig(0.25), matvec_bw=fig(0.5e12))
    ops = (
        OpCost("matmul", 5e9, 1e6),  # compute: 1 ms (memory 1 us)
        OpCost("conv", 2.5e9, 1e6),  # at half the matmul rate: 1 ms
        OpCost("matvec", 1e6, 1e9),  # memory at 0.5 TB/s: 2 ms
        OpCost("other", 0.0, 3e9),  # memory at 1 TB/s: 3 ms
    )
    w = Workload(flops=7.5e9 + 1e6, bytes_accessed=4.002e9, memory_bytes=1e9, ops=ops)
    compute, memory, total, by_class, split = per_op_roofline(w, chip, 10e12)
    assert total == pytest.approx(7e-3, rel=1e-3)
    assert dict(by_class) == pytest.approx(
        {"matmul": 1e-3, "conv": 1e-3, "matvec": 2e-3, "other": 3e-3}, rel=1e-3
    )
    assert split == pytest.approx({"compute": 2e-3, "memory": 5e-3}, rel=1e-3)
    e = estimate(w, chip, 1, "single")
    assert e.step_s == pytest.approx(total) and e.bound == "memory"
    assert "conv_efficiency" not in e.estimated and "matvec_bw" not in e.estimated


def test_a_catalog_chip_without_class_rates_uses_its_matmul_rate_and_hbm_as_estimates():
    chip = fake_chip()
    rates = class_rates(chip, 10e12)
    assert rates["conv"] == rates["matmul"] == (5e12, 1e12)
    assert rates["matvec"] == (5e12, 1e12)
    w = Workload(flops=1e9, bytes_accessed=1e6, memory_bytes=1e6, ops=(OpCost("conv", 1e9, 1e6),))
    assert "conv_efficiency" in estimate(w, chip, 1, "single").estimated
    plain = dataclasses.replace(w, ops=())
    assert estimate(plain, chip, 1, "single").step_s == pytest.approx(2e-4)


def test_pipeline_bubble():
    assert pipeline_bubble(16, 32) == 15 / 32
    assert pipeline_bubble(4, 8, interleave=2) == 3 / 16
    assert pipeline_bubble(1, 1) == 0
    with pytest.raises(ValueError, match="microbatches=0"):
        pipeline_bubble(4, 0)


def test_a_real_plan_prices_each_class_and_the_local_chip_measures_their_rates():
    import torch

    import torchtpu

    # 32x32 outputs: on the CPU a convolution this large stays XLA's (smaller ones are
    # lowered as matrix products, see torchtpu/lower/ops/conv.py).
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 32 * 32, 10),
    )
    p = torchtpu.plan(model, torch.randn(4, 3, 32, 32), chips=["local", fake_chip()])
    kinds = {o.kind for o in p.workload.ops}
    assert {"conv", "other"} <= kinds
    for row in p.rows:
        assert row["by_class"]["conv"] > 0
        assert row["step_s"] == pytest.approx(sum(row["by_class"].values()))
    local = p.estimates[0].chip
    assert 0 < local.conv_efficiency.value <= 1 and local.matvec_bw.value > 0
    assert "per-operation" not in str(p) and "op class's rate" in str(p)


def test_class_rates_can_be_given_in_a_catalog_file(tmp_path, monkeypatch):
    from torchtpu.plan.catalog import ENV_VAR, load_catalog

    user = tmp_path / "rates.toml"
    user.write_text(
        "[chips.h100]\n"
        'conv_efficiency = { value = 55, unit = "%", source = "https://lab.example", '
        'date = "2026-12", verified = true }\n'
        'matvec_bw = { value = 3.0, unit = "TB/s", source = "https://lab.example", '
        'date = "2026-12" }\n'
    )
    monkeypatch.setenv(ENV_VAR, str(user))
    h100 = load_catalog()["h100"]
    assert h100.conv_efficiency == Figure(0.55, "https://lab.example", "2026-12", True)
    assert h100.matvec_bw.value == 3.0e12 and "matvec_bw" in h100.estimates()
    w = Workload(flops=1e9, bytes_accessed=1e9, memory_bytes=1e6, ops=(OpCost("matvec", 0, 1e9),))
    e = estimate(w, h100, 1, "single")
    assert e.step_s == pytest.approx(1e9 / 3.0e12) and "matvec_bw" in e.estimated
