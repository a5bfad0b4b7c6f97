"""Checkpoints of a state split across two localhost processes (one torchrun launch):
each process writes only its own shards, process 0 commits, a reload redoes the
steps bitwise (in place and into fresh objects), a failure in one process commits
nothing; and the checkpoint loads in a single process, whole on the host.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from _torchrun import torchrun as _torchrun  # tests/distributed, on sys.path
from safetensors import safe_open

from torchtpu import checkpoint
from torchtpu.checkpoint import sharded, store
from torchtpu.errors import CheckpointError, CheckpointIntegrityError

SCRIPT = Path(__file__).with_name("scripts") / "sharded_checkpoint.py"


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> tuple[Path, list[dict], dict]:
    tmp = tmp_path_factory.mktemp("sharded")
    _torchrun(tmp, str(SCRIPT), str(tmp / "out"), str(tmp / "root"))
    ranks = [json.loads((tmp / f"out.{r}").read_text()) for r in range(2)]
    return tmp / "root", ranks, json.loads((tmp / "out.values").read_text())


def _elements(directory: Path, file: str) -> int:
    with safe_open(str(directory / file), "pt") as f:
        return sum(f.get_tensor(k).numel() for k in f.keys())  # noqa: SIM118


def test_each_process_writes_only_its_own_shards(job):
    root, ranks, _ = job
    c = root / "c"
    assert sorted(p.name for p in c.iterdir()) == [
        "__rng__.p0.safetensors",
        "__rng__.p1.safetensors",
        "manifest.json",
        "model.p0.safetensors",
        "model.p1.safetensors",
        "optim.p0.safetensors",
        "optim.p1.safetensors",
        "tree.json",
    ]
    manifest = json.loads((c / store.MANIFEST).read_text())
    tree = json.loads((c / store.TREE).read_text())
    assert manifest["version"] == store.SHARDED_VERSION and tree["processes"] == 2
    # FSDP splits every parameter (and its Adam moments) in two: half each.
    params = 16 * 8 + 16 + 4 * 16 + 4
    assert _elements(c, "model.p0.safetensors") == _elements(c, "model.p1.safetensors")
    assert _elements(c, "model.p0.safetensors") == params // 2
    # The moments are split too; the step counts are replicated: process 0 owns them.
    assert _elements(c, "optim.p1.safetensors") == params
    assert _elements(c, "optim.p0.safetensors") == params + 4
    weight = tree["entries"]["model"]["shards"]["model.0.weight"]
    assert weight["shape"] == [16, 8] and weight["dtype"] == "float32"
    assert [(p["file"], p["index"]) for p in weight["pieces"]] == [
        ("model.p0.safetensors", [[0, 8], [0, 8]]),
        ("model.p1.safetensors", [[8, 16], [0, 8]]),
    ]
    assert ranks[0]["split"] and ranks[0]["manager_steps"] == [2]
    assert (root / "m" / "step_2" / "model.p1.safetensors").is_file()


def test_reloading_redoes_the_steps_bitwise(job):
    _, ranks, _ = job
    for got in ranks:
        assert got["reference"] != got["before"]  # the reloads had something to undo
        assert got["step"] == 2
        for how in ("in_place", "fresh"):
            assert got[how] == got["reference"], how
            assert got[f"{how}_bitwise"] and got[f"{how}_shardings"], how


def test_each_process_reads_and_hashes_only_the_files_its_shards_need(job):
    _, ranks, _ = job
    own = [{f"{e}.p{r}.safetensors" for e in ("__rng__", "model", "optim")} for r in range(2)]
    # Process 1 also reads process 0's optimizer file, for the replicated step counts.
    wanted = [own[0], own[1] | {"optim.p0.safetensors"}]
    for got, files in zip(ranks, wanted, strict=True):
        assert set(got["used"]["read"]) == files
        assert set(got["used"]["hashed"]) == files | {store.MANIFEST, store.TREE}


def test_it_loads_onto_another_mesh_of_the_processes(job):
    """Replicated over both processes (each reads both files), and split on the
    other dimension: each process's blocks equal the saved values there."""
    _, ranks, _ = job
    for got in ranks:
        assert got["other_mesh"] == {"0.weight": True, "2.weight": True}
        both = {"model.p0.safetensors", "model.p1.safetensors"}
        assert both <= set(got["other_mesh_used"]["read"])
        assert both <= set(got["other_mesh_used"]["hashed"])


def test_a_checkpoint_of_one_process_loads_into_the_split_model(job):
    _, ranks, _ = job
    for got in ranks:
        assert got["one_values"] and got["one_shardings"]
        assert got["one_step"] == got["reference"][:1]  # and it trains on


def test_a_failure_in_one_process_commits_nothing(job):
    root, ranks, _ = job
    assert ranks[0]["failed_save"].startswith(
        f"CheckpointError: checkpoint {root / 'failed'}: process 1 failed to write its files"
    )
    # What process 1 was writing: its file of the entry, its shard's key, dtype and shape.
    assert "OSError: disk full (on purpose) (writing " in ranks[0]["failed_save"]
    assert "model.p1.safetensors: model.0.weight@0 float32[8, 8]" in ranks[0]["failed_save"]
    assert ranks[1]["failed_save"] == "OSError: disk full (on purpose)"
    assert sorted(p.name for p in root.iterdir()) == ["c", "m", "one"]  # no temporary left


def test_a_single_process_loads_it_whole(job):
    root, _, values = job
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    state = {"model": model, "optim": opt, "step": 0}
    checkpoint.load(root / "c", state, restore_rng=False)
    assert state["step"] == 2
    got = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, s in opt.state_dict()["state"].items():
        got.update({f"optim.{i}.{k}": v for k, v in s.items()})
    assert got.keys() == values.keys()
    for key, value in values.items():
        assert torch.equal(got[key], torch.tensor(value, dtype=got[key].dtype)), key
    # Onto tpu tensors on this process's one device, built from both processes' pieces.
    on_tpu = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).to("tpu")
    checkpoint.load(root / "c", {"model": on_tpu}, strict=False, restore_rng=False)
    for key, value in on_tpu.state_dict().items():
        assert value.device.type == "tpu"
        assert torch.equal(value.cpu(), torch.tensor(values[f"model.{key}"])), key


def test_a_changed_shard_file_is_refused_naming_it(job, tmp_path):
    root, _, _ = job
    copy = tmp_path / "c"
    copy.mkdir()
    for path in (root / "c").iterdir():
        copy.joinpath(path.name).write_bytes(path.read_bytes())
    data = bytearray((copy / "model.p1.safetensors").read_bytes())
    data[-3] ^= 0x01
    (copy / "model.p1.safetensors").write_bytes(bytes(data))
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    with pytest.raises(CheckpointIntegrityError, match=r"model\.p1\.safetensors"):
        checkpoint.load(copy, {"model": model, "optim": torch.optim.AdamW(model.parameters())})


def test_shards_that_do_not_cover_an_array_are_refused():
    tree = {"entries": {"w": {"kind": "tensor", "file": None, "tree": None, "shards": {}}}}
    tree["entries"]["w"]["shards"]["w"] = {"shape": [4, 2], "dtype": "float32", "sharding": "P"}
    piece = {"file": "w.p0.safetensors", "key": "w@0", "index": [[0, 2], [0, 2]]}
    parts = [{"pieces": {"w": {"w": [piece]}}, "rng": None}, {"pieces": {}, "rng": None}]
    with pytest.raises(CheckpointError, match=r"'w', tensor w float32\[4, 2\].*cover 4 of its 8"):
        sharded.merge(tree, parts)
