"""compile_step's lowered program cached on disk (compile/lowered_cache.py): a later
compile of the same step (a new process, here the in-memory program cache cleared) loads
the exported StableHLO instead of lowering, compiles the same module and trains the same;
bounds checks, random numbers and donation survive it; a damaged entry is a miss, and a
program jax.export refuses is lowered uncached and counted."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import jax
import pytest
import torch

import torchtpu
from torchtpu.compile import lowered_cache
from torchtpu.compile.program import clear_program_cache, programs


def _run(steps: int = 3, ids: torch.Tensor | None = None, dropout: float = 0.0) -> list[float]:
    """A fresh model, optimizer and compile_step (as a new process would make them)."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 6)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Dropout(dropout), torch.nn.Linear(16, 3)
    )
    params = [*emb.parameters(), *model.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8]) if ids is None else ids
    y = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))

    def body(ids):
        loss = torch.nn.functional.mse_loss(model(emb(ids)), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    step = torchtpu.compile_step(body, models=[emb, model], optimizers=[opt])
    torch.manual_seed(5)  # the step's random numbers are seeded from torch's generator
    return [float(step(ids)) for _ in range(steps)]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torchtpu.options(), "cache_dir", str(tmp_path / "xla"))
    clear_program_cache()
    torchtpu.reset_metrics()
    yield tmp_path / "xla" / "torchtpu-lowered"
    clear_program_cache()


def _counts() -> tuple[int, int, int]:
    m = torchtpu.metrics()
    return m["lowered_cache_hits"], m["lowered_cache_misses"], m["lowered_cache_skips"]


def test_a_second_compile_loads_the_lowering_and_trains_the_same(cache):
    first = _run()
    assert _counts() == (0, 1, 0)
    assert [p.suffix for p in sorted(cache.iterdir())] == [".jax", ".json"]
    clear_program_cache()
    text_before = torchtpu.metrics()["trace_seconds"]
    again = _run()
    assert _counts() == (1, 1, 0)
    assert again == first  # bit for bit
    assert torchtpu.metrics()["trace_seconds"] > text_before  # the wrapper is lowered, cheaply


def test_the_loaded_program_is_the_module_the_first_compiled(cache):
    _run(steps=1)
    (program,) = [p for p in programs() if p.name == "train_step"]
    cold_text = program.lowered_text()
    clear_program_cache()
    _run(steps=1)
    (program,) = [p for p in programs() if p.name == "train_step"]
    assert program.lowered_text() == cold_text
    # The optimizer state is still updated in place: donation is kept.
    assert "tf.aliasing_output" in cold_text or "jax.buffer_donor" in cold_text


def test_random_numbers_survive_the_cache(cache):
    first = _run(dropout=0.5)
    clear_program_cache()
    assert _run(dropout=0.5) == first
    assert _counts() == (1, 1, 0)


def test_bounds_checks_survive_the_cache(cache):
    _run(steps=1)
    clear_program_cache()
    bad = torch.tensor([1, 2, 3, 4, 5, 6, 7, 12])
    with pytest.raises(Exception, match="out of range") as raised:
        _run(steps=1, ids=bad)
    assert "embedding" in str(raised.value)
    assert _counts()[0] == 1  # the failing run used the cached program


def test_a_damaged_entry_is_a_miss_and_written_again(cache, caplog):
    first = _run()
    (blob,) = cache.glob("*.jax")
    blob.write_bytes(blob.read_bytes()[:50])
    clear_program_cache()
    with caplog.at_level(logging.WARNING, logger="torchtpu"):
        assert _run() == first
    assert "does not load" in caplog.text
    assert _counts() == (0, 2, 0)
    clear_program_cache()
    assert _run() == first and _counts() == (1, 2, 0)


def test_a_program_export_refuses_is_lowered_uncached_and_counted(cache, monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError("custom call not stable")

    monkeypatch.setattr(jax.export, "export", refuse)
    with_cache = _run()
    assert _counts() == (0, 1, 1)
    assert not cache.exists() or not any(cache.iterdir())
    monkeypatch.setattr(torchtpu.options(), "cache_dir", "")
    clear_program_cache()
    assert _run() == with_cache


def test_sharded_inputs_and_an_empty_cache_dir_are_not_cached(cache, monkeypatch):
    spec = jax.ShapeDtypeStruct((4,), jax.numpy.float32)
    kw = dict(name="train_step", donate=(), uses_rng=False, seed_shape=())
    assert lowered_cache.key("f", [spec], **kw) is not None
    mesh = jax.sharding.Mesh(jax.devices()[:1], ("x",))
    placed = jax.ShapeDtypeStruct(
        (4,), jax.numpy.float32, sharding=jax.sharding.NamedSharding(mesh, jax.P())
    )
    assert lowered_cache.key("f", [placed], **kw) is None
    monkeypatch.setattr(torchtpu.options(), "cache_dir", "")
    assert lowered_cache.key("f", [spec], **kw) is None
    _run(steps=1)
    assert _counts() == (0, 0, 0)


def test_the_entry_holds_no_python(cache):
    _run(steps=1)
    (meta,) = cache.glob("*.json")
    data = json.loads(meta.read_text())
    assert set(data) == {"format", "out_tree", "static_outputs", "checks"}
    assert all(set(c) <= {"op", "size", "dim", "negative", "where", "text"} for c in data["checks"])


SCRIPT = """
import json, torch, torchtpu
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
x = torch.randn(8, 16)
@torchtpu.compile_step
def step():
    loss = model(x).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss
losses = [float(step()) for _ in range(2)]
m = torchtpu.metrics()
keys = ("graph_cache_hits", "lowered_cache_hits", "persistent_cache_hits",
        "persistent_cache_misses")
print(json.dumps({"losses": losses, **{k: m[k] for k in keys}}))
"""


def test_a_second_process_loads_graph_lowering_and_executable(tmp_path):
    env = {**os.environ, "TORCHTPU_CACHE_DIR": str(tmp_path)}

    def run() -> dict:
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    cold, warm = run(), run()
    assert cold["lowered_cache_hits"] == cold["graph_cache_hits"] == 0
    assert cold["persistent_cache_misses"] >= 1
    assert warm["lowered_cache_hits"] == warm["graph_cache_hits"] == 1
    assert warm["persistent_cache_misses"] == 0
    assert warm["persistent_cache_hits"] == cold["persistent_cache_misses"]
    assert warm["losses"] == cold["losses"]
