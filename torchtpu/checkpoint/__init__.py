"""``torchtpu.checkpoint``: a whole training state saved and restored in one call.

    state = {"model": model, "optim": opt, "sched": sched, "loader": loader, "step": 100}
    torchtpu.checkpoint.save("ckpt/step_100", state)
    torchtpu.checkpoint.load("ckpt/step_100", state)   # restores in place

``state`` maps names to objects with ``state_dict()``/``load_state_dict()``
(modules, optimizers, LR schedulers, ``GradScaler``, ``DeviceLoader``, ...),
tensors (CPU, tpu, or ``jax.Array``) and plain values. The RNG state is always
saved too (torch's CPU generator, the tpu device's, Python's ``random`` and
NumPy's global one) and restored unless ``restore_rng=False``, so a resumed run
draws the same dropout masks and shuffles as one that never stopped.

Each tensor is copied to the host when ``save`` is called (the values of that
moment), then written with safetensors, one file per entry, into a checkpoint
directory that is committed by a rename (see :mod:`torchtpu.checkpoint.store`
for the protocol and what loading verifies). :class:`Manager` numbers
checkpoints by step, writes them in the background and keeps the last few.

In a job of several processes (torchrun with ``jax.distributed``, a TPU pod),
a state holding arrays split across processes is saved by every process
together: each writes only the shards it owns, process 0 commits, and loading
reads only the slices each process's shards need, onto any mesh (see
:mod:`torchtpu.checkpoint.sharded`). Every process must call ``save`` then.

Files written by ``torch.save`` are read by :func:`load_torch_file`, with
``weights_only=True`` only.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch

from torchtpu.checkpoint import sharded, store
from torchtpu.checkpoint.tree import Snapshot, Split, decode, encode
from torchtpu.errors import CheckpointError, CheckpointIntegrityError
from torchtpu.metrics import bump

__all__ = [
    "CheckpointError",
    "CheckpointIntegrityError",
    "Manager",
    "load",
    "load_torch_file",
    "save",
    "verify",
]

RNG = "__rng__"


# --- the state, taken apart and put back ----------------------------------------------


Files = dict[str, dict[str, torch.Tensor]]


def snapshot(state: Mapping[str, Any]) -> tuple[dict[str, Any], Files, dict[str, dict[str, Split]]]:
    """The tree, host tensors and split arrays' own shards of ``state`` now: the part
    of a save that must block (device-to-host copies, and copies of CPU tensors
    training will change)."""
    if RNG in state:
        raise CheckpointError(f"state entry name {RNG!r} is reserved for the RNG state")
    entries: dict[str, Any] = {}
    snaps: dict[str, Snapshot] = {}
    for name, obj in {**state, RNG: None}.items():
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"state entry names must be non-empty strings, got {name!r}")
        snap = snaps[name] = Snapshot()
        if name == RNG:
            kind, value = "rng", rng_state()
        elif _stateful(obj):
            kind, value = "state_dict", obj.state_dict()
        elif isinstance(obj, torch.Tensor | jax.Array):
            kind, value = "tensor", obj
        else:
            kind, value = "value", obj
        entries[name] = {
            "kind": kind,
            "file": store.file_name(name),
            "tree": encode(value, name, snap),
        }
    files, splits = {}, {}
    for name, snap in snaps.items():
        tensors = snap.finish()
        if snap.split:
            splits[name] = snap.split
            pieces = [t for split in snap.split.values() for _, t in split.pieces]
            bump("checkpoint_bytes", sum(t.numel() * t.element_size() for t in pieces))
        if not tensors:
            entries[name]["file"] = None
            continue
        files[entries[name]["file"]] = tensors
        bump("checkpoint_bytes", sum(t.numel() * t.element_size() for t in tensors.values()))
    names = [e["file"] for e in entries.values() if e["file"]]
    if len(set(names)) != len(names):
        raise CheckpointError(f"state entry names {sorted(entries)} map to clashing file names")
    return {"format": store.FORMAT, "entries": entries}, files, splits


def _peers(directory: Path, splits: dict[str, Any]) -> store.Peers | None:
    """The job's processes when ``state`` has arrays split across them (all of them
    then save together), else ``None`` (this process saves alone)."""
    return store.Peers(directory) if splits else None


def _write(
    directory: Path, tree: dict[str, Any], files: Files, splits: dict, peers: store.Peers | None
) -> None:
    if peers is None:
        store.write(directory, tree, files)
        return
    tree, files, part = sharded.local_part(tree, files, splits, RNG, peers.index, peers.count)
    store.write_together(directory, tree, files, part, sharded.merge, peers)


def _stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(
        getattr(obj, "load_state_dict", None)
    )


def restore(
    directory: Path,
    state: MutableMapping[str, Any],
    *,
    restore_rng: bool = True,
    strict: bool = True,
    manifest: dict[str, Any] | None = None,
) -> MutableMapping[str, Any]:
    """Put a verified checkpoint's values into ``state`` (see :func:`load`).

    ``manifest``: the checkpoint was verified without its files' hashes (but
    tree.json's); the files this process reads are hashed before any is used."""
    tree = store.read_tree(directory)
    entries = tree.get("entries", {})
    saved = set(entries) - {RNG}
    missing, unexpected = sorted(set(state) - saved), sorted(saved - set(state))
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"checkpoint {directory} does not fit the state: entries missing from the "
            f"checkpoint {missing}, entries the state lacks {unexpected}. Pass strict=False "
            "to restore only the entries both have."
        )
    names = [n for n in entries if n in state or n == RNG]
    for name in names:
        if "processes" in entries[name]:  # the RNG state of each process that saved
            saved = entries[name]["processes"]
            mine = jax.process_index()
            entries[name] = {**entries[name], **saved[mine if mine < len(saved) else 0]}
    readers = {
        name: sharded.Reader(
            directory,
            name,
            entries[name].get("shards") or {},
            sharded.likes(
                entries[name]["tree"], sharded.targets(entries[name]["kind"], state.get(name))
            ),
        )
        for name in names
        # In a job of several processes, host tensors too go onto split targets.
        if entries[name].get("shards") or (jax.process_count() > 1 and entries[name]["tree"])
    }
    if manifest is not None:
        needed = {entries[n]["file"] for n in names if entries[n]["file"]}
        needed.update(*(reader.files() for reader in readers.values()))
        store.check_hashes(directory, manifest, needed - {store.TREE})
    for name in names:
        entry = entries[name]
        tensors = store.read_tensors(directory, entry["file"]) if entry["file"] else {}
        if name in readers:
            with readers[name].open(tensors) as split:
                value = decode(entry["tree"], split, name)
        else:
            value = decode(entry["tree"], tensors, name)
        if entry["kind"] == "rng":
            if restore_rng:
                set_rng_state(value)
        elif entry["kind"] == "state_dict":
            if not _stateful(state[name]):
                raise CheckpointError(
                    f"checkpoint entry {name!r} holds a state_dict, but state[{name!r}] is a "
                    f"{type(state[name]).__qualname__} without load_state_dict()"
                )
            state[name].load_state_dict(value)
        else:
            state[name] = _into(state[name], value, name)
    return state


def _into(target: Any, value: Any, path: str) -> Any:
    """``value`` put where ``target`` was: copied into a torch tensor in place, placed
    with the target's sharding for a ``jax.Array`` (so a checkpoint restores onto
    another mesh), and matched leaf by leaf inside dicts, lists and tuples."""
    if isinstance(target, torch.Tensor) and isinstance(value, torch.Tensor):
        if target.shape != value.shape:
            raise CheckpointError(
                f"checkpoint entry {path} has shape {list(value.shape)}, the state's tensor "
                f"{list(target.shape)}"
            )
        with torch.no_grad():
            target.copy_(value)
        return target
    if isinstance(target, jax.Array) and isinstance(value, jax.Array):  # built in place
        return value if value.dtype == target.dtype else value.astype(target.dtype)
    if isinstance(target, jax.Array) and isinstance(value, torch.Tensor):
        from torchtpu.lower.dtypes import to_numpy

        if tuple(target.shape) != tuple(value.shape):
            raise CheckpointError(
                f"checkpoint entry {path} has shape {list(value.shape)}, the state's array "
                f"{list(target.shape)}"
            )
        return jax.device_put(to_numpy(value).astype(target.dtype), target.sharding)
    if isinstance(target, dict) and isinstance(value, dict):
        return {k: _into(target.get(k), v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(target, list | tuple) and isinstance(value, list | tuple):
        if len(target) == len(value):
            items = [
                _into(t, v, f"{path}.{i}")
                for i, (t, v) in enumerate(zip(target, value, strict=True))
            ]
            return type(value)(items)
    return value


# --- RNG ------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every generator a training run draws from: torch's CPU one, the tpu device's
    (compiled programs and device mode take their seeds from these), Python's
    ``random`` and NumPy's global one (data pipelines often use them)."""
    from torchtpu.runtime.rng import tpu_generator

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "tpu": tpu_generator().get_state(),
        "python": {"version": version, "state": torch.tensor(internal), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Put back what :func:`rng_state` returned."""
    from torchtpu.runtime.rng import tpu_generator

    torch.set_rng_state(state["torch"])
    tpu_generator().set_state(state["tpu"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))


# --- the public calls ------------------------------------------------------------------


def save(directory: str | Path, state: Mapping[str, Any]) -> Path:
    """Save ``state`` to checkpoint directory ``directory``, atomically.

    ``directory`` must not exist yet. Returns its path::

        torchtpu.checkpoint.save("ckpt/step_100", {"model": model, "optim": opt, "step": 100})
    """
    directory = Path(directory)
    tree, files, splits = snapshot(state)
    _write(directory, tree, files, splits, _peers(directory, splits))
    bump("checkpoint_saves")
    return directory


def load(
    directory: str | Path,
    state: MutableMapping[str, Any],
    *,
    restore_rng: bool = True,
    strict: bool = True,
) -> MutableMapping[str, Any]:
    """Restore checkpoint ``directory`` into ``state`` in place, and return ``state``.

    Objects get ``load_state_dict``; tensors are copied into; ``jax.Array`` entries
    are placed with the sharding of the array the state holds (so a checkpoint
    restores onto another mesh); plain values are replaced. The directory is
    verified against its manifest first (:class:`CheckpointIntegrityError` names
    the file that does not match). ``strict``: the checkpoint's entries and the
    state's must be the same names. ``restore_rng=False`` leaves the generators
    as they are::

        state = {"model": model, "optim": opt, "step": 0}
        torchtpu.checkpoint.load("ckpt/step_100", state)
        start = state["step"]
    """
    directory = Path(directory)
    if jax.process_count() == 1:
        store.verify(directory)
        return restore(directory, state, restore_rng=restore_rng, strict=strict)
    # Each process hashes only the files it reads, not the whole checkpoint.
    manifest = store.verify(directory, hashed=lambda name: name == store.TREE)
    return restore(directory, state, restore_rng=restore_rng, strict=strict, manifest=manifest)


def verify(directory: str | Path) -> None:
    """Check a checkpoint against its manifest, reading every byte; raises
    :class:`CheckpointIntegrityError` naming the first file that does not match."""
    store.verify(Path(directory))


def load_torch_file(path: str | Path) -> Any:
    """Read a ``torch.save`` file safely: ``weights_only=True`` (tensors, containers
    and primitives only; a file that would run code on load is refused), on the CPU."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, ...
        raise CheckpointError(
            f"{path} is not a weights-only torch.save file ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); torchtpu reads torch.save files "
            "only with weights_only=True, so nothing in them can run code"
        ) from e


# --- the manager ------------------------------------------------------------------------


class Manager:
    """Checkpoints numbered by step under ``root``: ``root/step_<N>``.

    ``save(step, state)`` takes the host copies now (the only part that blocks the
    caller) and, with ``async_save``, writes and commits in a background thread;
    the next ``save``, ``wait()`` or ``restore`` waits for it and re-raises its
    error, if any. After each commit only the newest ``keep`` checkpoints remain.
    Temporary directories of killed saves are ignored, and removed when the
    manager starts::

        manager = torchtpu.checkpoint.Manager("ckpt", keep=3)
        for step in range(start, steps):
            train_step()
            if step % 100 == 0:
                manager.save(step, state)
        manager.wait()
        ...
        manager.restore(state)  # the latest checkpoint; or step=N
    """

    def __init__(self, root: str | Path, keep: int | None = 3, async_save: bool = True) -> None:
        if keep is not None and keep < 1:
            raise ValueError(f"checkpoint.Manager(keep={keep}): keep at least 1, or None for all")
        self.root = Path(root)
        self.keep = keep
        self.async_save = async_save
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        # In a job of several processes sharing ``root``, process 0 alone cleans and
        # deletes: another's cleaning could not tell process 0's live writer (whose
        # pid is on another host) from a dead one.
        self._owner = jax.process_index() == 0
        if self._owner:
            store.clean_stale(self.root)

    def directory(self, step: int) -> Path:
        return self.root / f"step_{int(step)}"

    def steps(self) -> list[int]:
        """Committed checkpoints' steps, oldest first (temporary directories skipped)."""
        found = []
        for path in self.root.iterdir():
            name = path.name
            if (
                name.startswith("step_")
                and name[5:].isdigit()
                and (path / store.MANIFEST).is_file()
            ):
                found.append(int(name[5:]))
        return sorted(found)

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        """Checkpoint ``state`` as step ``step``; returns the directory it commits to."""
        self.wait()
        directory = self.directory(step)
        tree, files, splits = snapshot(state)
        # Made here, in call order, so every process's n-th save is the same one.
        args = (directory, tree, files, splits, _peers(directory, splits))
        if not self.async_save:
            self._write(*args)
            return directory
        self._thread = threading.Thread(
            target=self._background, args=args, name="torchtpu-checkpoint"
        )
        self._thread.start()
        return directory

    def _background(self, *args: Any) -> None:
        try:
            self._write(*args)
        except BaseException as e:  # re-raised on the caller's thread by wait()
            self._error = e

    def _write(self, directory: Path, *args: Any) -> None:
        _write(directory, *args)
        bump("checkpoint_saves")
        if self.keep is not None and self._owner:
            for old in self.steps()[: -self.keep]:
                store.remove(self.directory(old))

    def wait(self) -> None:
        """Wait for the save in flight; re-raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointError(f"the background checkpoint save failed: {error}") from error

    def restore(
        self,
        state: MutableMapping[str, Any],
        step: int | None = None,
        *,
        restore_rng: bool = True,
        strict: bool = True,
    ) -> MutableMapping[str, Any]:
        """Restore step ``step`` (the latest when ``None``) into ``state``; see :func:`load`.

        A checkpoint that fails verification is an error, never skipped for an older one."""
        self.wait()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no committed checkpoint under {self.root}")
        return load(self.directory(step), state, restore_rng=restore_rng, strict=strict)

    def close(self) -> None:
        self.wait()

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
