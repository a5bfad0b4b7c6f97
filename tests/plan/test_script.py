"""``torchtpu plan script.py`` on a script that trains with plain ``torch.compile``, and the
PNG chart of a plan."""

from __future__ import annotations

import builtins
import sys
import textwrap

import pytest
import torch

import torchtpu
import torchtpu.plan
from torchtpu.cli import main
from torchtpu.plan.script import capture_script

SCRIPT = """
import torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Embedding(64, 16), torch.nn.Linear(16, 64))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
compiled = torch.compile(model, backend="tpu")
for _ in range(1000):
    ids = torch.randint(0, 64, (2, 8))
    loss = compiled(ids).logsumexp(-1).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
raise SystemExit("the CLI should have stopped the script")
"""


def test_a_torch_compile_script_is_stopped_and_its_graphs_planned(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    captured = capture_script(str(script), [], steps=2)
    assert captured.step is None
    assert [ex.name for ex in captured.executors] == ["forward", "backward"]
    w = captured.plannable()
    params = (64 * 16) + (16 * 64 + 64)
    assert (w.tokens, w.unit) == (16, "tokens")  # the (2, 8) ids, not the parameters
    assert w.grad_bytes == params * 4 and w.state_bytes == 2 * params * 4
    # forward and backward of the Linear layer at least: 3 matmuls of 16 x 16 x 64
    assert w.flops >= 3 * 2 * 16 * 16 * 64
    assert "forward, backward" in w.source and "optimizer" in w.source


def test_cli_plans_a_torch_compile_script_with_a_chart(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    png = tmp_path / "plan.png"
    code = main(["plan", "--chips", "local,h100", "--chart", str(png), str(script)])
    out = capsys.readouterr().out
    assert code == 0
    assert "torch.compile graphs" in out and "h100" in out and "tokens/s" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_a_script_without_a_compiled_step_is_told_what_to_do(tmp_path, capsys):
    script = tmp_path / "eager.py"
    script.write_text("import torch\nprint(torch.nn.Linear(2, 2)(torch.randn(1, 2)).shape)\n")
    assert main(["plan", "--chips", "h100", str(script)]) == 1
    assert "torch.compile(..., backend='tpu')" in capsys.readouterr().err


def test_chart_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch):
    p = torchtpu.plan(torch.nn.Linear(8, 8), torch.randn(4, 8), chips=["h100"])
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=r"torchtpu\[plot\]"):
        p.chart(tmp_path / "plan.png")
    assert not (tmp_path / "plan.png").exists()
