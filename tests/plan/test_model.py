"""The planner's arithmetic on hand-computed cases, and a plan of a real compiled step.

The fake chip has round numbers: 100 TFLOP/s bf16 and 10 fp32 at 50% matmul
efficiency, 10 GB at 1 TB/s, 100 GB/s of link one way, 8 chips on a switch,
500 W and $3.60 an hour ($0.001 a second).
"""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
from _chips import fake_chip, fig  # tests/plan, on sys.path

import torchtpu
import torchtpu.plan
from torchtpu.plan import Collective, Workload, decode_estimate, estimate
from torchtpu.plan.model import collective_seconds, torus_slice

ROW_KEYS = {
    "chip",
    "step_s",
    "tokens_per_s",
    "mfu",
    "fits",
    "min_chips",
    "strategy",
    "cost_per_step",
    "cost_per_1m_tokens",
    "energy_kwh",
    "bound",
}


def work(**kw) -> Workload:
    base = dict(flops=1e12, bytes_accessed=1e9, memory_bytes=1e9, tokens=1000, dtype="bf16")
    return Workload(**{**base, **kw})


def test_compute_bound_step_mfu_cost_and_energy():
    e = estimate(work(), fake_chip(), 1, "single")
    assert e.compute_s == pytest.approx(0.02)  # 1e12 / (100e12 * 0.5)
    assert e.memory_s == pytest.approx(1e-3)
    assert (e.step_s, e.bound) == (pytest.approx(0.02), "compute")
    assert e.mfu == pytest.approx(0.5)
    p = torchtpu.plan(work(), chips=[fake_chip()], tokens=1e6)
    r = p.rows[0]
    assert r["tokens_per_s"] == pytest.approx(50_000)
    assert r["cost_per_step"] == pytest.approx(2e-5)  # 0.02 s * $0.001/s
    assert r["cost_per_1m_tokens"] == pytest.approx(0.02)
    assert r["job_steps"] == 1000
    assert r["cost_job"] == pytest.approx(0.02)
    assert r["energy_kwh"] == pytest.approx(1000 * 0.02 * 500 / 3.6e6)


def test_memory_bound():
    e = estimate(work(flops=1e9, bytes_accessed=1e10), fake_chip(), 1, "single")
    assert (e.step_s, e.bound) == (pytest.approx(0.01), "memory")


def test_fp32_uses_the_fp32_peak_and_suggests_bf16():
    e = estimate(work(dtype="fp32"), fake_chip(), 1, "single")
    assert e.compute_s == pytest.approx(0.2)  # 1e12 / (10e12 * 0.5)
    assert e.mfu == pytest.approx(0.5)
    p = torchtpu.plan(work(dtype="fp32"), chips=[fake_chip()])
    assert p.rows[0]["consider_bf16"] and "consider bf16" in p.table()


def test_fp32_without_a_published_peak_is_six_bf16_passes_and_an_estimate():
    tpu = fake_chip(peak_flops={"bf16": fig(600e12)})
    e = estimate(work(dtype="fp32"), tpu, 1, "single")
    assert e.peak.value == pytest.approx(100e12) and not e.peak.verified
    assert "peak" in e.estimated


def test_ring_all_reduce_and_its_hierarchical_and_torus_and_mesh_forms():
    chip = fake_chip()
    t, _, _ = collective_seconds(Collective("all-reduce", 1e9, 8), chip)
    assert t == pytest.approx(2 * 7 / 8 * 1e9 / 100e9)
    t, _, _ = collective_seconds(Collective("all-gather", 1e9, 8), chip)
    assert t == pytest.approx(7 / 8 * 1e9 / 100e9)
    # 16 chips = 2 domains of 8: in-domain ring + each chip's S/8 over its 50 GB/s NIC.
    t, _, est = collective_seconds(Collective("all-reduce", 1e9, 16), chip)
    assert t == pytest.approx(0.0175 + 2 * 0.5 * (1e9 / 8) / 50e9) and est
    torus = fake_chip(topology="torus2d", domain=256)
    assert torus_slice(4, 2) == [2, 2] and torus_slice(2, 2) == [2]
    t, _, _ = collective_seconds(Collective("all-reduce", 1e9, 4), torus)
    assert t == pytest.approx(2 * 3 / 4 * 1e9 / 100e9)  # both axes: all of the link
    t, _, _ = collective_seconds(Collective("all-reduce", 1e9, 2), torus)
    assert t == pytest.approx(2 * 1 / 2 * 1e9 / 50e9)  # one axis of two: half of it
    mesh = fake_chip(topology="mesh")
    t, _, _ = collective_seconds(Collective("all-reduce", 1e9, 4), mesh)
    assert t == pytest.approx(2 * 3 / 4 * 1e9 / (100e9 * 3 / 7))  # 3 of 7 peer links


def test_communication_bound_data_parallel():
    # all-reduce 4 GB over 4 chips: 2*3/4*4e9/1e11 = 0.06 s, 2/3 of the 0.02 s compute hides.
    e = estimate(work(grad_bytes=4e9), fake_chip(), 4, "dp")
    assert e.comm_s == pytest.approx(0.06)
    assert e.exposed_comm_s == pytest.approx(0.06 - 2 / 3 * 0.02)
    assert e.step_s == pytest.approx(0.02 + 0.06 - 2 / 3 * 0.02)
    assert e.bound == "communication"
    r = torchtpu.plan(work(grad_bytes=4e9), chips=[fake_chip()], n_chips=4).rows[0]
    assert r["tokens_per_s"] == pytest.approx(4000 / e.step_s)
    assert r["cost_per_step"] == pytest.approx(e.step_s * 4 * 0.001)


def test_fits_and_min_chips():
    chip = fake_chip()
    assert estimate(work(memory_bytes=9e9), chip).fits
    big = work(memory_bytes=30e9, state_bytes=28e9, grad_bytes=2e9)
    e = estimate(big, chip, 1, "dp")
    assert not e.fits and e.min_chips is None
    # FSDP: activations 2 GB stay, 28 GB of state over (10 - 2) GB per chip -> 4 chips.
    assert estimate(big, chip, 1, "fsdp").min_chips == 4
    r = torchtpu.plan(big, chips=[chip]).rows[0]  # auto: FSDP on the chips it needs
    assert (r["strategy"], r["n_chips"], r["fits"], r["min_chips"]) == ("fsdp", 4, True, 4)
    assert r["memory_per_chip"] == pytest.approx(2e9 + 28e9 / 4)
    hopeless = work(memory_bytes=30e9, state_bytes=1e9)
    r = torchtpu.plan(hopeless, chips=[chip]).rows[0]
    assert not r["fits"] and r["min_chips"] is None
    assert "needs FSDP" in torchtpu.plan(hopeless, chips=[chip]).table()


def test_decode_cost_at_a_per_query_speed():
    # W = 2 GB; a query's KV cache = 1e5 B x 1000 = 0.1 GB; 10 tok/s -> 0.1 s a token.
    # Batch limits: bandwidth (1e11 - 2e9)/1e8 = 980, compute 5e12/(2e9*2) = 1250,
    # capacity (10e9 - 2e9)/1e8 = 80.
    d = decode_estimate(
        fake_chip(),
        params=1e9,
        kv_bytes_per_token=1e5,
        context=1000,
        tokens_per_s_per_query=10,
    )
    assert (d.n, d.batch, d.bound) == (1, 80, "capacity")
    assert d.output_tokens_per_s == pytest.approx(800)
    assert d.cost_per_1m_output == pytest.approx(0.001 / 800 * 1e6)  # $1.25
    assert d.token_s == pytest.approx((2e9 + 80 * 1e8) / 1e12)
    table = str(
        torchtpu.plan.decode(
            params=1e9,
            kv_bytes_per_token=1e5,
            context=1000,
            tokens_per_s_per_query=10,
            chips=[fake_chip()],
        )
    )
    assert "$1.25" in table and "capacity" in table


def test_marks_and_the_estimate_marker():
    fast = fake_chip("fast", price_per_hour=fig(36.0))
    cheap = fake_chip("cheap", peak_flops={"bf16": fig(50e12)}, price_per_hour=fig(1.0, False))
    p = torchtpu.plan(work(), chips=[fast, cheap])
    assert p.row("fast")["marks"] == ["fastest"]
    assert p.row("cheap")["marks"] == ["cheapest"]
    table = p.table()
    assert "fast [fastest]" in table and "cheap [cheapest]" in table
    cheap_line = next(line for line in table.splitlines() if line.startswith("cheap"))
    assert "~" in cheap_line  # its price is unverified
    fast_line = next(line for line in table.splitlines() if line.startswith("fast "))
    assert "~" not in fast_line
    assert p.markdown().count("|") > 20 and "~: rests on an unverified" in table


def test_a_real_compiled_step_and_the_local_chip():
    model = torch.nn.Sequential(torch.nn.Embedding(64, 32), torch.nn.Linear(32, 64))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    @torchtpu.compile_step
    def step(ids):
        loss = model(ids).logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    step(torch.randint(0, 64, (4, 8)))
    p = torchtpu.plan(step, chips=["local", fake_chip()], n_chips=1)
    w = p.workload
    assert w.flops > 0 and w.bytes_accessed > 0 and w.memory_bytes > 0
    assert (w.tokens, w.unit, w.dtype) == (32, "tokens", "fp32")
    grads = sum(q.numel() * 4 for q in model.parameters())
    assert w.grad_bytes == grads
    local = p.row("local")
    assert ROW_KEYS <= set(local)
    assert local["step_s"] > 0 and local["cost_per_step"] is None
    assert math.isfinite(local["tokens_per_s"])


def test_cli_plans_a_script(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import torch, torchtpu
            model = torch.nn.Sequential(torch.nn.Embedding(64, 16), torch.nn.Linear(16, 64))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

            @torchtpu.compile_step
            def step(ids):
                loss = model(ids).logsumexp(-1).mean()
                loss.backward()
                opt.step()
                opt.zero_grad()
                return loss

            for _ in range(1000):
                step(torch.randint(0, 64, (2, 8)))
            raise SystemExit("the CLI should have stopped the script")
            """
        )
    )
    from torchtpu.cli import main

    md = tmp_path / "plan.md"
    assert (
        main(["plan", "--chips", "local", "--steps", "2", "--markdown", str(md), str(script)]) == 0
    )
    out = capsys.readouterr().out
    assert "local" in out and "tokens/s" in out and "bound" in out
    assert md.read_text().startswith("plan:")


def test_a_model_with_inputs_is_planned_from_its_forward_and_backward_programs():
    model = torch.nn.Linear(64, 64)
    p = torchtpu.plan(model, torch.randn(32, 64), chips=[fake_chip()])
    w = p.workload
    assert w.flops >= 2 * 2 * 32 * 64 * 64  # forward and the weight gradient at least
    assert w.grad_bytes == (64 * 64 + 64) * 4 and (w.tokens, w.unit) == (32, "samples")
