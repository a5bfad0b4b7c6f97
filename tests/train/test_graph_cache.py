"""compile_step's functional graph cached on disk by the traced step (train/graph_cache.py):
a second compile of the same step loads it instead of functionalizing again, and trains
exactly as the first; a changed step, a damaged entry or an unknown target is a miss."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import torchtpu
from torchtpu.train import graph_cache


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.LayerNorm(16), torch.nn.GELU(), torch.nn.Linear(16, 3)
    )


def _losses(scale: float | torch.Tensor = 1.0, steps: int = 3) -> list[float]:
    """A fresh model, optimizer and compile_step (as a new process would make them)."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(8, 6, generator=torch.Generator().manual_seed(1)), torch.randn(8, 3)

    def body():
        loss = torch.nn.functional.mse_loss(model(x), y) * scale
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    step = torchtpu.compile_step(body, models=[model], optimizers=[opt])
    return [float(step()) for _ in range(steps)]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torchtpu.options(), "cache_dir", str(tmp_path / "xla"))
    torchtpu.reset_metrics()
    return tmp_path / "xla" / "torchtpu-graphs"


def _counts() -> tuple[int, int]:
    m = torchtpu.metrics()
    return m["graph_cache_hits"], m["graph_cache_misses"]


def test_a_second_compile_loads_the_graph_and_trains_the_same(cache):
    first = _losses()
    assert _counts() == (0, 1)
    assert len(list(cache.glob("*.json"))) == 1
    again = _losses()
    assert _counts() == (1, 1)
    assert again == first  # bit for bit


def test_the_loaded_graph_is_the_functionalized_one(cache, monkeypatch):
    made = []
    real_store = graph_cache.store
    monkeypatch.setattr(graph_cache, "store", lambda k, gm: (made.append(gm), real_store(k, gm)))
    _losses(steps=1)
    (key,) = [p.stem for p in cache.glob("*.json")]
    loaded = graph_cache.load(key)
    assert loaded.code == made[0].code
    originals = {n.name: n.meta.get("val") for n in made[0].graph.nodes}
    for node in loaded.graph.nodes:
        want, got = originals[node.name], node.meta.get("val")
        if isinstance(want, torch.Tensor):
            assert (got.shape, got.stride(), got.dtype, got.device) == (
                want.shape,
                want.stride(),
                want.dtype,
                want.device,
            )


def test_a_changed_step_is_a_new_entry(cache):
    _losses()
    _losses(scale=2.0)  # the traced step differs: a miss, and a second entry
    assert _counts() == (0, 2)
    assert len(list(cache.glob("*.json"))) == 2


def test_a_damaged_entry_is_a_miss_and_written_again(cache, caplog):
    first = _losses()
    (entry,) = cache.glob("*.json")
    entry.write_text(entry.read_text()[:100])
    with caplog.at_level(logging.WARNING, logger="torchtpu"):
        assert _losses() == first
    assert "does not load" in caplog.text
    assert _counts() == (0, 2)
    json.loads(entry.read_text())  # whole again
    assert _losses() == first and _counts() == (1, 2)


def test_only_torch_ops_and_operator_targets_resolve(cache):
    _losses(steps=1)
    (entry,) = cache.glob("*.json")
    data = json.loads(entry.read_text())
    call = next(n for n in data["nodes"] if n["op"] == "call_function")
    call["target"] = "py:os.system"
    entry.write_text(json.dumps(data))
    assert graph_cache.load(entry.stem) is None  # a miss, nothing run
    with pytest.raises(KeyError):
        graph_cache._resolve("py:os.system")
    with pytest.raises(ValueError):
        graph_cache._resolve("builtins:eval")


def test_tensor_constants_are_part_of_the_key(cache):
    """A tensor the step captures (here 0-d) is a constant of the traced graph: its value
    is in the key, and the entry stores it."""
    first = _losses(scale=torch.tensor(0.5))
    assert _losses(scale=torch.tensor(0.5)) == first and _counts() == (1, 1)
    _losses(scale=torch.tensor(0.25))
    assert _counts() == (1, 2)
    assert len(list(cache.glob("*.safetensors"))) == 2
    # A broadcast constant (stride 0) has no bytes view of its own.
    broadcast = _losses(scale=torch.tensor(0.5).expand(1))
    assert _counts() == (1, 3)
    assert _losses(scale=torch.tensor(0.5).expand(1)) == broadcast and _counts() == (2, 3)


def test_an_empty_cache_dir_turns_it_off(monkeypatch):
    monkeypatch.setattr(torchtpu.options(), "cache_dir", "")
    torchtpu.reset_metrics()
    _losses(steps=1)
    assert _counts() == (0, 0)
