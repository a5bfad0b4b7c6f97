"""Fused mode: recorded ops, sync points, the fingerprint cache; strict eager and blocking modes."""

from __future__ import annotations

import pytest
import torch

import torchtpu
from torchtpu.device import lazy


def _pending() -> int:
    return len(lazy.current_graph())


def test_ops_are_recorded_until_a_value_is_needed():
    x = torch.ones(4).to("tpu")
    y = (x * 3 + 1).relu()
    assert _pending() == 3 and torchtpu.metrics()["fused_runs"] == 0
    assert y.sum().item() == 16.0
    assert _pending() == 0
    m = torchtpu.metrics()
    assert m["syncs"] == {"item": 1} and m["fused_runs"] == 1 and m["fused_ops"] == 4


@pytest.mark.parametrize(
    "reason, trigger",
    [
        ("to_cpu", lambda t: t.cpu()),
        ("print", repr),
        ("item", lambda t: bool(t.sum() > 0)),
        ("explicit", lambda t: torchtpu.sync()),
    ],
)
def test_sync_points_are_counted_by_reason(reason, trigger):
    trigger(torch.ones(3).to("tpu") * 2)
    assert torchtpu.metrics()["syncs"][reason] == 1


def test_a_step_compiles_once_and_changing_scalars_do_not_recompile():
    x = torch.randn(8, 8).to("tpu")
    for step in range(5):
        lr = 0.1 / (step + 1)  # a new Python float every step: a program input
        y = (x * lr + step * 0.5).tanh()
        torchtpu.sync()
        expected = (x.cpu() * lr + step * 0.5).tanh()
        torch.testing.assert_close(y.cpu(), expected)
    m = torchtpu.metrics()
    assert m["fused_compiles"] == 1
    assert m["fused_cache_hits"] == 4


def test_different_structure_compiles_a_new_program():
    x = torch.randn(4).to("tpu")
    (x + 1).cpu()
    (x + 1).cpu()
    (x - 1).cpu()
    (torch.randn(5).to("tpu") + 1).cpu()
    assert torchtpu.metrics()["fused_compiles"] == 3


def test_unreferenced_intermediates_are_not_outputs():
    x = torch.randn(16).to("tpu")
    y = x
    for _ in range(10):
        y = y * 1.5
    torchtpu.sync()
    (program,) = torchtpu.compile.program.programs()[-1:]
    assert program.name == "device mode"
    assert program.n_ops == 10
    assert program.lowered_text().count("stablehlo.multiply") >= 10
    torch.testing.assert_close(y.cpu(), x.cpu() * 1.5**10)


def test_graph_size_limit_forces_a_sync():
    torchtpu.set_options(max_graph_ops=8)
    y = torch.ones(2).to("tpu")
    for _ in range(20):
        y = y + 1
    assert torchtpu.metrics()["syncs"]["graph_size"] == 2
    assert y.cpu().tolist() == [21.0, 21.0]


def test_random_ops_follow_torch_manual_seed():
    def draw():
        torch.manual_seed(123)
        return (torch.rand(4, device="tpu") + 0).cpu()

    assert torch.equal(draw(), draw())
    torch.manual_seed(1)
    a = torch.nn.functional.dropout(torch.ones(1000, device="tpu"), 0.5)
    assert 300 < int((a.cpu() == 0).sum()) < 700


def test_strict_eager_mode_runs_each_op_at_once():
    previous = torchtpu.set_device_mode("eager")
    try:
        x = torch.ones(3).to("tpu")
        y = x * 2 + 1
        assert _pending() == 0
        assert torchtpu.metrics()["eager_ops"] == 2
        assert y.cpu().tolist() == [3.0, 3.0, 3.0]
    finally:
        torchtpu.set_device_mode(previous)
    assert torchtpu.device_mode() == "fused"


def test_blocking_mode_raises_at_the_line():
    torchtpu.set_device_mode("blocking")
    try:
        x = torch.ones(2, 3).to("tpu")
        with pytest.raises(RuntimeError, match="same reduction dim|size mismatch|shapes"):
            x @ x
    finally:
        torchtpu.set_device_mode("fused")


def test_debug_mode_records_the_line_of_each_compile():
    torchtpu.set_options(debug=True)
    x = torch.ones(3).to("tpu")
    (x + 41).sum().item()
    sites = torchtpu.metrics()["compile_sites"]
    assert len(sites) == 1
    (site,) = sites
    assert "test_lazy.py" in site and "item" in site
    assert any("test_lazy.py" in line for line in torchtpu.compile_log())
