"""The commit protocol of a checkpoint written by several processes
(``store.write_together``), in one process: each "process" is a thread, and JAX's
distributed key-value store is a dict. The real thing, two processes under
torchrun, is tests/distributed/test_checkpoint_multiprocess.py."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from torchtpu.checkpoint import store
from torchtpu.errors import CheckpointError


class _Store:
    """What ``Peers`` uses of JAX's distributed client."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.changed = threading.Condition()

    def key_value_set(self, key: str, value: str) -> None:
        with self.changed:
            self.values[key] = value
            self.changed.notify_all()

    def blocking_key_value_get(self, key: str, timeout_ms: int) -> str:
        with self.changed:
            if not self.changed.wait_for(lambda: key in self.values, timeout_ms / 1000):
                raise TimeoutError(f"DEADLINE_EXCEEDED: {key}")
            return self.values[key]

    def key_value_delete(self, key: str) -> None:
        with self.changed:
            self.values.pop(key, None)


def _peers(kv: _Store, directory: Path, index: int, count: int, timeout: float) -> store.Peers:
    peers = store.Peers.__new__(store.Peers)
    peers.client, peers.index, peers.count = kv, index, count
    peers.directory, peers.prefix, peers.timeout = directory, "save/0", timeout
    return peers


def _merge(tree: dict, parts: list) -> dict:
    return {**tree, "parts": parts}


def _save_together(directory: Path, count: int = 2, timeout: float = 30.0, only=None) -> list:
    """Each of ``count`` threads writes its own file; what each raised (or None)."""
    kv, errors = _Store(), [None] * count

    def process(k: int) -> None:
        files = {f"w.p{k}.safetensors": {"w@0": torch.full((2,), float(k))}}
        try:
            peers = _peers(kv, directory, k, count, timeout)
            store.write_together(directory, {"format": store.FORMAT}, files, k, _merge, peers)
        except Exception as e:  # noqa: BLE001 - the test reads it
            errors[k] = e

    ks = range(count) if only is None else only
    threads = [threading.Thread(target=process, args=(k,), name=f"process {k}") for k in ks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return errors


def test_every_process_writes_its_file_and_process_0_commits(tmp_path):
    assert _save_together(tmp_path / "c", count=3) == [None, None, None]
    manifest = store.verify(tmp_path / "c")
    assert manifest["version"] == store.SHARDED_VERSION
    assert sorted(manifest["files"]) == [
        store.TREE,
        "w.p0.safetensors",
        "w.p1.safetensors",
        "w.p2.safetensors",
    ]
    assert json.loads((tmp_path / "c" / store.TREE).read_text())["parts"] == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_a_refusal_in_process_0_reaches_the_others(tmp_path):
    (tmp_path / "c").mkdir()
    errors = _save_together(tmp_path / "c")
    assert isinstance(errors[0], CheckpointError) and "already exists" in str(errors[0])
    assert isinstance(errors[1], CheckpointError)
    assert "process 0 failed to start the save" in str(errors[1])
    assert "already exists" in str(errors[1])


def test_a_process_that_never_comes_leaves_nothing(tmp_path):
    errors = _save_together(tmp_path / "c", timeout=0.5, only=[0])
    assert isinstance(errors[0], CheckpointError)
    assert "process 1 did not write its files within 0.5 s" in str(errors[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary left


def test_a_failure_in_another_process_is_raised_in_all(tmp_path, monkeypatch):
    def fail_in_1(point: str) -> None:
        if point == "arrays" and threading.current_thread().name == "process 1":
            raise OSError("disk full")

    monkeypatch.setattr(store, "reached", fail_in_1)
    errors = _save_together(tmp_path / "c")
    assert isinstance(errors[1], OSError)
    assert isinstance(errors[0], CheckpointError)
    assert "process 1 failed to write its files" in str(errors[0])
    assert "OSError: disk full (writing w.p1.safetensors: w@0 float32[2])" in str(errors[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("version", [store.VERSION, store.SHARDED_VERSION])
def test_both_versions_are_read(tmp_path, version):
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / store.TREE).write_text("{}")
    listed = {store.TREE: store._fsync_and_hash(directory / store.TREE)}
    (directory / store.MANIFEST).write_text(json.dumps(store._manifest(listed, version)))
    assert store.verify(directory)["version"] == version
