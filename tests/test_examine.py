"""torchtpu.examine: lists a model's ATen ops and whether each lowers, without running XLA."""

from __future__ import annotations

import textwrap

import pytest
import torch
from _unlowered import OP, mystery  # noqa: F401

import torchtpu
from torchtpu.examine import FALLS_BACK, LOWERS, main


def _statuses(report):
    return {use.op: use.status for use in report.ops}


def test_pointwise_function_lowers_without_compiling():
    before = torchtpu.metrics()["compiles"]
    report = torchtpu.examine(lambda x, y: torch.sin(x) * y + 1, torch.randn(3), torch.randn(3))
    assert report.fully_lowered
    assert report.graphs == ["inference"]
    assert _statuses(report)["aten.sin.default"] == LOWERS
    assert report.counts == {LOWERS: len(report.ops), FALLS_BACK: 0}
    assert torchtpu.metrics()["compiles"] == before  # nothing reached XLA


def test_module_with_parameters_captures_backward():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    report = torchtpu.examine(model, torch.randn(2, 4))
    assert report.graphs == ["forward", "backward"]
    assert any("backward" in use.graphs for use in report.ops)
    assert all(p.grad is None for p in model.parameters())  # examine writes no .grad


def test_op_without_lowering_falls_back():
    report = torchtpu.examine(lambda x: mystery(x).cos(), torch.randn(5))
    assert report.falls_back == ["torchtpu_test.mystery.default"]
    assert not report.fully_lowered
    text = str(report)
    assert "falls back" in text and "torchtpu_test.mystery.default" in text
    assert "Tensor[5]:float32" in text  # the failing op's arguments are shown


def test_graph_breaks_are_reported():
    def fn(x):
        y = x + 1
        torch._dynamo.graph_break()
        return y * 2

    report = torchtpu.examine(fn, torch.randn(2))
    assert report.graph_breaks
    assert not report.fully_lowered


def test_main_prints_report_and_sets_exit_code(tmp_path, monkeypatch, capsys):
    (tmp_path / "examine_factories.py").write_text(
        textwrap.dedent(
            """
            import torch

            def linear():
                return torch.nn.Linear(4, 2), (torch.randn(3, 4),)

            def not_a_pair():
                return torch.nn.Linear(4, 2)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["examine_factories:linear"]) == 0
    assert "aten.addmm.default" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="must return"):
        main(["examine_factories:not_a_pair"])
