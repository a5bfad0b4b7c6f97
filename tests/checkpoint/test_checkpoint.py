"""torchtpu.checkpoint: what it stores, how it restores, and what it refuses."""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import torchtpu
from torchtpu import checkpoint
from torchtpu.checkpoint import store
from torchtpu.errors import CheckpointError, CheckpointIntegrityError


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 6)
        self.mid = torch.nn.Linear(6, 6)
        self.head = torch.nn.Linear(6, 10, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("count", torch.tensor(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mid(self.embed(x))))


def _trained(steps: int = 3) -> tuple[Tied, torch.optim.Optimizer, object]:
    model = Tied()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5)
    for _ in range(steps):
        model(torch.randint(0, 10, (4, 3))).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def _fresh_state() -> dict:
    model = Tied()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return {
        "model": model,
        "optim": opt,
        "sched": torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5),
        "scaler": torch.amp.GradScaler("cpu"),
        "step": 0,
        "ids": torch.zeros(4, dtype=torch.int64),
        "misc": None,
    }


def _equal_trees(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal_trees(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal_trees, a, b))
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


def test_a_training_state_round_trips_bitwise_with_its_types(tmp_path):
    torch.manual_seed(0)
    model, opt, sched = _trained()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    misc = {
        "a": (1, 2.5, float("nan"), float("-inf")),
        3: [None, True, b"\x00\xff"],
        "d": torch.bfloat16,
    }
    ids = torch.arange(4)
    state = {"model": model, "optim": opt, "sched": sched, "scaler": scaler, "step": 3}
    checkpoint.save(tmp_path / "c", {**state, "ids": ids, "misc": misc})

    restored = _fresh_state()
    checkpoint.load(tmp_path / "c", restored)
    assert _equal_trees(model.state_dict(), restored["model"].state_dict())
    assert _equal_trees(opt.state_dict(), restored["optim"].state_dict())
    assert sched.state_dict() == restored["sched"].state_dict()
    assert scaler.state_dict() == restored["scaler"].state_dict()
    assert restored["step"] == 3 and torch.equal(restored["ids"], ids)
    assert _equal_trees(restored["misc"], misc)  # int keys, tuples, nan, bytes, dtypes
    # The tied weight is stored once.
    with safe_open(str(tmp_path / "c" / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == [
            "model.count",
            "model.embed.weight",
            "model.mid.bias",
            "model.mid.weight",
        ]


def test_the_rng_state_is_saved_and_restored_unless_asked_not_to(tmp_path):
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    torchtpu.runtime.rng.tpu_generator().manual_seed(7)
    checkpoint.save(tmp_path / "c", {"step": 1})
    draws = (
        torch.rand(3),
        random.random(),
        np.random.rand(),
        torchtpu.runtime.rng.draw_seed(torchtpu.runtime.rng.tpu_generator()),
    )
    torch.manual_seed(99)
    checkpoint.load(tmp_path / "c", {"step": 0}, restore_rng=False)
    assert not torch.equal(torch.rand(3), draws[0])
    checkpoint.load(tmp_path / "c", {"step": 0})
    again = (
        torch.rand(3),
        random.random(),
        np.random.rand(),
        torchtpu.runtime.rng.draw_seed(torchtpu.runtime.rng.tpu_generator()),
    )
    assert torch.equal(again[0], draws[0]) and again[1:] == draws[1:]


@pytest.mark.parametrize("where", ["cpu", "tpu"])
def test_compile_step_state_resumes_bitwise(tmp_path, where):
    """Saving reads the step's device state (through state_dict); loading is seen by
    the next step (through version counters), on a CPU model and a tpu one."""

    def run():
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(6, 12), torch.nn.Dropout(0.3), torch.nn.Linear(12, 1)
        ).to(where)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

        @torchtpu.compile_step
        def step(x):
            loss = model(x).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss

        return model, opt, step

    x = torch.randn(8, 6).to(where)
    model, opt, step = run()
    for _ in range(3):
        step(x)
    checkpoint.save(tmp_path / "c", {"model": model, "optim": opt})
    straight = [float(step(x)) for _ in range(3)]

    model2, opt2, step2 = run()
    step2(x)  # a compiled step that has state already: loading must replace it
    torch.manual_seed(42)
    checkpoint.load(tmp_path / "c", {"model": model2, "optim": opt2})
    resumed = [float(step2(x)) for _ in range(3)]
    assert resumed == straight
    assert _equal_trees(
        {k: v.cpu() for k, v in model.state_dict().items()},
        {k: v.cpu() for k, v in model2.state_dict().items()},
    )


def test_tpu_tensors_are_copied_at_save_time_and_loaded_in_place(tmp_path):
    t = torch.arange(6.0).to("tpu")
    manager = checkpoint.Manager(tmp_path, async_save=True)
    manager.save(1, {"t": t})
    t.add_(100)  # after save returns, changes do not reach the checkpoint
    manager.wait()
    target = torch.zeros(6).to("tpu")
    state = {"t": target}
    manager.restore(state)
    assert state["t"] is target and torch.equal(target.cpu(), torch.arange(6.0))


def test_jax_arrays_restore_onto_another_mesh(tmp_path):
    """Saved from an 8-device sharding, restored with a 4x2 mesh's: the values are
    equal and the arrays get the target's sharding."""
    code = textwrap.dedent(
        f"""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        import jax, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from torchtpu import checkpoint
        devices = np.array(jax.devices())
        row = Mesh(devices, ("x",))
        values = np.arange(64.0, dtype=np.float32).reshape(16, 4)
        w = jax.device_put(values, NamedSharding(row, P("x")))
        checkpoint.save({str(tmp_path / "c")!r}, {{"params": {{"w": w}}}})
        grid = Mesh(devices.reshape(4, 2), ("a", "b"))
        target = NamedSharding(grid, P("b", "a"))
        state = {{"params": {{"w": jax.device_put(np.zeros((16, 4), np.float32), target)}}}}
        checkpoint.load({str(tmp_path / "c")!r}, state)
        got = state["params"]["w"]
        assert got.sharding == target, got.sharding
        assert (np.asarray(got) == np.asarray(w)).all()
        print("OK", len(got.addressable_shards))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["OK", "8"]


# --- refusing what does not match ------------------------------------------------------


def _flip_tensor_byte(d: Path) -> str:
    path = d / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    return "model.safetensors"


def _truncate(d: Path) -> str:
    path = d / "optim.safetensors"
    path.write_bytes(path.read_bytes()[:-16])
    return "optim.safetensors"


def _edit_header(d: Path) -> str:
    path = d / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"F32"', b'"I32"', 1))
    return "model.safetensors"


def _edit_manifest(d: Path) -> str:
    path = d / store.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["files"]["model.safetensors"]["bytes"] += 0  # same size...
    manifest["files"]["model.safetensors"]["sha256"] = "0" * 64  # ...another hash
    path.write_text(json.dumps(manifest))
    return store.MANIFEST


def _plant_outside_path(d: Path) -> str:
    (d.parent / "outside.safetensors").write_bytes(b"x")
    path = d / store.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["manifest_sha256"] = None
    manifest["files"]["../outside.safetensors"] = {"sha256": "", "bytes": 1}
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    manifest["manifest_sha256"] = store._digest(body)  # a consistent manifest, lying
    path.write_text(json.dumps(manifest))
    return "../outside.safetensors"


def _symlink(d: Path) -> str:
    target = d.parent / "elsewhere.safetensors"
    (d / "model.safetensors").rename(target)
    (d / "model.safetensors").symlink_to(target)
    return "model.safetensors"


def _remove_file(d: Path) -> str:
    (d / "optim.safetensors").unlink()
    return "optim.safetensors"


@pytest.mark.parametrize(
    "tamper",
    [
        _flip_tensor_byte,
        _truncate,
        _edit_header,
        _edit_manifest,
        _plant_outside_path,
        _symlink,
        _remove_file,
    ],
)
def test_a_tampered_checkpoint_is_refused_naming_the_file(tmp_path, tamper):
    model, opt, _ = _trained(1)
    checkpoint.save(tmp_path / "c", {"model": model, "optim": opt})
    name = tamper(tmp_path / "c")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointIntegrityError, match=name.replace(".", r"\.")):
        checkpoint.load(tmp_path / "c", {"model": model, "optim": opt})
    assert _equal_trees(before, model.state_dict())  # nothing was restored


_OPENED: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and isinstance(args[0], str) and args[0].endswith("planted.pkl"):
        _OPENED.append(args[0])


def test_a_planted_pickle_is_refused_and_never_opened(tmp_path):
    sys.addaudithook(_audit)

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    checkpoint.save(tmp_path / "c", {"model": Tied()})
    (tmp_path / "c" / "planted.pkl").write_bytes(pickle.dumps(Boom()))
    _OPENED.clear()
    with pytest.raises(CheckpointIntegrityError, match=r"planted\.pkl"):
        checkpoint.load(tmp_path / "c", {"model": Tied()})
    assert _OPENED == [] and not (tmp_path / "pwned").exists()


def test_torch_save_files_are_read_weights_only(tmp_path):
    torch.save({"w": torch.ones(2), "n": 3}, tmp_path / "ok.pt")
    assert checkpoint.load_torch_file(tmp_path / "ok.pt")["n"] == 3

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(tmp_path / "bad.pt", "wb") as f:
        pickle.dump({"w": Boom()}, f)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        checkpoint.load_torch_file(tmp_path / "bad.pt")
    assert not (tmp_path / "pwned").exists()


def test_bad_state_gets_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"cannot save .*object at extra\.fn"):
        checkpoint.save(tmp_path / "a", {"extra": {"fn": object()}})
    assert not (tmp_path / "a").exists() and list(tmp_path.iterdir()) == []
    checkpoint.save(tmp_path / "b", {"step": 1})
    with pytest.raises(CheckpointError, match="already exists"):
        checkpoint.save(tmp_path / "b", {"step": 2})
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint \['model'\]"):
        checkpoint.load(tmp_path / "b", {"step": 0, "model": Tied()})
    state = {"step": 0, "model": Tied()}
    checkpoint.load(tmp_path / "b", state, strict=False)
    assert state["step"] == 1
    with pytest.raises(CheckpointError, match="shape"):
        checkpoint.save(tmp_path / "t", {"t": torch.zeros(3)})
        checkpoint.load(tmp_path / "t", {"t": torch.zeros(4)})


# --- the manager -------------------------------------------------------------------------


def test_the_manager_keeps_the_last_k_and_ignores_then_cleans_stale_temporaries(tmp_path):
    stale = tmp_path / ".tmp-step_9-999999999-deadbeef"  # a killed writer's
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    manager = checkpoint.Manager(tmp_path, keep=2)
    assert not stale.exists()  # no such process: cleaned when the manager starts
    (tmp_path / ".tmp-step_8-999999999-cafecafe").mkdir()
    for step in range(1, 5):
        manager.save(step, {"step": step, "w": torch.full((3,), float(step))})
    manager.wait()
    assert manager.steps() == [3, 4] and manager.latest_step() == 4
    state = {"step": 0, "w": torch.zeros(3)}
    manager.restore(state)
    assert state["step"] == 4 and torch.equal(state["w"], torch.full((3,), 4.0))
    manager.restore(state, step=3)
    assert state["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".tmp-step_8-999999999-cafecafe",
        "step_3",
        "step_4",
    ]
    checkpoint.Manager(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_3", "step_4"]


def test_a_background_save_error_is_raised_at_the_next_call(tmp_path):
    manager = checkpoint.Manager(tmp_path, keep=None)
    manager.save(1, {"step": 1})
    manager.wait()
    manager.save(1, {"step": 1})  # step_1 exists: fails in the background
    with pytest.raises(CheckpointError, match="background checkpoint save failed.*already exists"):
        manager.wait()
    with pytest.raises(FileNotFoundError, match="no committed checkpoint"):
        checkpoint.Manager(tmp_path / "empty").restore({})
