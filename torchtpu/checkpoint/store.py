"""A checkpoint directory on disk: written whole or not at all, verified before use.

Layout of a committed checkpoint::

    <dir>/tree.json             the state's structure, values and tensor references
    <dir>/<entry>.safetensors   the tensors of one state entry (model, optimizer, ...)
    <dir>/manifest.json         SHA-256 and size of every other file, and its own hash

Writing (:func:`write`) goes to a sibling temporary directory ``.tmp-<name>-<pid>-*``:
the files, each fsynced; then the manifest, last; then the directory is fsynced,
renamed to its final name (the commit) and the parent fsynced. A process killed
at any point leaves either the old state or the new checkpoint, plus perhaps a
temporary directory that readers ignore and :func:`clean_stale` removes.

Reading (:func:`verify`) trusts nothing: the manifest must hash to the value it
records, every file it lists must be a regular file (no links) of the listed size
and hash, and no other file may be present. Tensors are read with safetensors
and structure with ``json``: nothing is unpickled, so loading runs no code. The
hashes guard against corruption and mistakes, not against someone who rewrites
the manifest on purpose (that needs signatures).

Several processes holding parts of one state write one checkpoint together
(:func:`write_together`): process 0 makes the temporary directory and tells the
others its name, each process writes its own files into it (its shards, named
``<entry>.p<process>.safetensors``), tells process 0 their hashes, and process 0
writes the tree and the manifest and renames. The others return once process 0
says it committed. They talk through JAX's distributed key-value store
(:class:`Peers`), not through device collectives, so a save in a background
thread cannot interleave with a training step's collectives. Such a checkpoint's
manifest has version 2; a checkpoint written by one process keeps version 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from torchtpu.errors import CheckpointError, CheckpointIntegrityError
from torchtpu.serving.format import file_sha256  # one file hash for artifacts and checkpoints

FORMAT = "torchtpu-checkpoint"
VERSION = 1
SHARDED_VERSION = 2  # written by several processes, each its own shards (write_together)
MANIFEST = "manifest.json"
TREE = "tree.json"
_TMP = ".tmp-"
_TRASH = ".trash-"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_FAILED = "failed: "
PEER_TIMEOUT_S = 1800.0  # how long a process of a save together waits for another


def reached(point: str) -> None:
    """Called at each step of a write (``"arrays"``, ``"manifest"``, ``"renamed"``);
    tests replace it to kill the writer there."""


def file_name(entry: str, process: int | None = None) -> str:
    """The safetensors file of state entry ``entry``; with ``process``, the file of
    that process's shards of it."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", entry).lstrip(".") or "entry"
    return f"{safe}.safetensors" if process is None else f"{safe}.p{process}.safetensors"


# --- writing --------------------------------------------------------------------


def write(directory: Path, tree: dict[str, Any], files: dict[str, dict[str, torch.Tensor]]) -> None:
    """Write a checkpoint to ``directory`` atomically: ``tree`` to tree.json, and each
    ``files[name]`` (tensors by key) to safetensors file ``name``."""
    directory = Path(directory)
    tmp = _begin(directory)
    try:
        listed = _write_files(tmp, files)
        reached("arrays")
        _commit(tmp, directory, tree, listed, VERSION)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    reached("renamed")
    _fsync_dir(directory.parent)


def write_together(
    directory: Path,
    tree: dict[str, Any],
    files: dict[str, dict[str, torch.Tensor]],
    part: Any,
    merge: Callable[[dict[str, Any], list[Any]], dict[str, Any]],
    peers: Peers,
) -> None:
    """Write one checkpoint from every process of a job, atomically; each process
    calls it with its own ``files`` and ``part`` (JSON-able: what process 0 needs to
    know of them). Process 0 writes ``merge(tree, parts)`` (its ``tree``, the parts
    in process order) once all processes wrote their files, and commits. A process
    that fails or dies before then leaves no checkpoint, and the others raise."""
    directory = Path(directory)
    me = peers.index
    if me == 0:
        try:
            tmp = _begin(directory)
        except BaseException as e:
            peers.tell("tmp", None, e)
            raise
        peers.tell("tmp", tmp.name)
    else:
        tmp = directory.parent / peers.hear("tmp", 0, "start the save")
    try:
        listed = _write_files(tmp, files)
        reached("arrays")
    except BaseException as e:
        peers.tell(f"written/{me}" if me else "committed", None, e, f"writing {_contents(files)}")
        if me == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if me != 0:
        peers.tell(f"written/{me}", json.dumps({"files": listed, "part": part}))
        peers.hear("committed", 0, "commit the checkpoint")
        return
    try:
        parts = [part]
        for k in range(1, peers.count):
            written = json.loads(peers.hear(f"written/{k}", k, "write its files"))
            clash = sorted(set(written["files"]) & set(listed))
            if clash:
                raise CheckpointError(
                    f"process {k} wrote {clash} into checkpoint {directory}, which another "
                    "process wrote too; each process writes only its own files"
                )
            listed.update(written["files"])
            parts.append(written["part"])
        _commit(tmp, directory, merge(tree, parts), listed, SHARDED_VERSION)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        peers.tell("committed", None, e)
        raise
    reached("renamed")
    _fsync_dir(directory.parent)
    peers.tell("committed", "ok")


def _contents(files: dict[str, dict[str, torch.Tensor]], most: int = 4) -> str:
    """``files`` in a few words, for an error: each file and its first tensors."""
    said = []
    for name, tensors in files.items():
        items = [
            f"{k} {str(t.dtype).removeprefix('torch.')}{list(t.shape)}" for k, t in tensors.items()
        ]
        more = f", ... {len(items) - most} more" if len(items) > most else ""
        said.append(f"{name}: {', '.join(items[:most])}{more}")
    return "; ".join(said) or "no files"


def _begin(directory: Path) -> Path:
    """A new temporary directory beside ``directory``, which must not exist."""
    if directory.exists():
        raise CheckpointError(
            f"checkpoint directory {directory} already exists: a checkpoint is never "
            "overwritten in place. Save to a new directory (checkpoint.Manager numbers "
            "them by step), or remove the old one first."
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f"{_TMP}{directory.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def _write_files(tmp: Path, files: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
    listed: dict[str, dict[str, Any]] = {}
    for name, tensors in files.items():
        save_file(tensors, str(tmp / name), metadata={"format": FORMAT})
        listed[name] = _fsync_and_hash(tmp / name)
    return listed


def _commit(
    tmp: Path, directory: Path, tree: dict[str, Any], listed: dict[str, Any], version: int
) -> None:
    """The tree, then the manifest, then the rename: the checkpoint exists from here."""
    _write_json(tmp / TREE, tree)
    listed[TREE] = _fsync_and_hash(tmp / TREE)
    _write_json(tmp / MANIFEST, _manifest(listed, version))
    _fsync_and_hash(tmp / MANIFEST)
    _fsync_dir(tmp)
    reached("manifest")
    os.rename(tmp, directory)


class Peers:
    """The processes of a job saving one checkpoint together, talking through JAX's
    distributed key-value store (``jax.distributed``, which every job of several
    processes has started). Every process must make its ``Peers`` for the same
    saves in the same order: the n-th save of each process is one checkpoint.

    ``tell(what, value)`` publishes this process's ``value`` (or its error) under
    ``what``; ``hear(what, k, doing)`` waits for process ``k``'s, raising
    :class:`CheckpointError` with its error, or when it did not come within
    ``timeout`` seconds (a process that died, or one that did not call ``save``)."""

    _saves = itertools.count()
    _lock = threading.Lock()

    def __init__(self, directory: Path, timeout: float = PEER_TIMEOUT_S) -> None:
        import jax
        from jax._src import distributed

        self.client = distributed.global_state.client
        self.index, self.count = jax.process_index(), jax.process_count()
        if self.client is None:
            raise CheckpointError(
                f"checkpoint {directory}: this job has {self.count} processes but no "
                "jax.distributed client; start the job with torchrun (see docs/distributed.md)"
            )
        with Peers._lock:
            n = next(Peers._saves)
        self.directory = Path(directory)
        self.prefix = f"torchtpu/checkpoint/{n}/{self.directory.name}"
        self.timeout = timeout

    def tell(
        self, what: str, value: str | None, error: BaseException | None = None, doing: str = ""
    ) -> None:
        if error is None:
            self.client.key_value_set(f"{self.prefix}/{what}", value)
            return
        # Best effort: the error being reported is the one the caller raises.
        with contextlib.suppress(Exception):
            message = f"{type(error).__name__}: {error}" + (f" ({doing})" if doing else "")
            self.client.key_value_set(f"{self.prefix}/{what}", _FAILED + message)

    def hear(self, what: str, process: int, doing: str) -> str:
        key = f"{self.prefix}/{what}"
        try:
            value = self.client.blocking_key_value_get(key, int(self.timeout * 1000))
        except Exception as e:  # jax raises its runtime error for a timeout or a dead peer
            first = (str(e).splitlines() or [""])[0]
            raise CheckpointError(
                f"checkpoint {self.directory}: process {process} did not {doing} within "
                f"{self.timeout:g} s ({type(e).__name__}: {first}); every process of the job "
                f"must call save for the same checkpoint. Process {self.index} gives up on it."
            ) from e
        if process != self.index and what.startswith("written/"):
            self.client.key_value_delete(key)
        if value.startswith(_FAILED):
            raise CheckpointError(
                f"checkpoint {self.directory}: process {process} failed to {doing}, so "
                f"nothing was committed: {value[len(_FAILED) :]}"
            )
        return value


def _manifest(files: dict[str, dict[str, Any]], version: int = VERSION) -> dict[str, Any]:
    body = {"format": FORMAT, "version": version, "files": dict(sorted(files.items()))}
    return {**body, "manifest_sha256": _digest(body)}


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, allow_nan=False))


def _fsync_and_hash(path: Path) -> dict[str, Any]:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(directory: Path) -> None:
    """Delete a checkpoint: renamed away first, so a half-deleted one never looks whole."""
    trash = directory.parent / f"{_TRASH}{directory.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)


def is_temporary(name: str) -> bool:
    return name.startswith((_TMP, _TRASH))


def clean_stale(root: Path, active: Callable[[Path], bool] = lambda _: False) -> list[Path]:
    """Remove temporary directories under ``root`` left by writers that are gone (a
    killed save, an interrupted delete); the ones ``active`` claims are kept."""
    removed = []
    for path in Path(root).iterdir() if Path(root).is_dir() else ():
        if not is_temporary(path.name) or active(path):
            continue
        pid = _writer_pid(path.name)
        if pid is not None and pid != os.getpid() and _alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _writer_pid(name: str) -> int | None:
    parts = name.rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- reading --------------------------------------------------------------------


def verify(directory: Path, hashed: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """Check ``directory`` against its manifest; the manifest, or
    :class:`CheckpointIntegrityError` naming the first file that does not match.

    ``hashed(name)``: whether a listed file's SHA-256 is checked now (every file's by
    default; the others get their size checked, and :func:`check_hashes` later)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint at {directory}: not a directory")
    manifest = _read_manifest(directory)
    files = manifest["files"]
    for name, meta in files.items():
        path = _listed_file(directory, name)
        size = path.stat().st_size
        if size != meta.get("bytes"):
            raise CheckpointIntegrityError(
                f"checkpoint file {path} is {size} bytes, the manifest says {meta.get('bytes')}"
                " (truncated or changed); the checkpoint is not used"
            )
        if hashed is None or hashed(name):
            _check_hash(path, meta)
    for path in directory.iterdir():
        if path.name != MANIFEST and path.name not in files:
            raise CheckpointIntegrityError(
                f"checkpoint directory holds {path}, which its manifest does not list; a "
                "checkpoint opens only the files its manifest lists, so remove it"
            )
    if TREE not in files:
        raise CheckpointIntegrityError(
            f"checkpoint manifest {directory / MANIFEST} lists no {TREE}"
        )
    return manifest


def check_hashes(directory: Path, manifest: dict[str, Any], names: set[str]) -> None:
    """Check the SHA-256 of listed files ``names`` (which :func:`verify` left out)."""
    for name in sorted(names):
        if name not in manifest["files"]:
            raise CheckpointIntegrityError(
                f"checkpoint {directory} refers to {name}, which its manifest does not list"
            )
        _check_hash(_listed_file(directory, name), manifest["files"][name])


def _check_hash(path: Path, meta: dict[str, Any]) -> None:
    if file_sha256(path) != meta.get("sha256"):
        raise CheckpointIntegrityError(
            f"checkpoint file {path} does not match its SHA-256 in the manifest "
            "(its contents changed); the checkpoint is not used"
        )


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise CheckpointIntegrityError(
            f"{path} is missing or not a regular file: {directory} is not a committed "
            "checkpoint (an interrupted save never has one)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointIntegrityError(f"checkpoint manifest {path} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointIntegrityError(f"{path} is not a torchtpu checkpoint manifest")
    if manifest.get("version") not in (VERSION, SHARDED_VERSION):
        raise CheckpointError(
            f"{path} has checkpoint format version {manifest.get('version')}; this torchtpu "
            f"reads versions {VERSION} and {SHARDED_VERSION}"
        )
    recorded = manifest.pop("manifest_sha256", None)
    if recorded != _digest(manifest) or not isinstance(manifest.get("files"), dict):
        raise CheckpointIntegrityError(
            f"checkpoint manifest {path} does not match its own hash (it was edited)"
        )
    return manifest


def _listed_file(directory: Path, name: str) -> Path:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name == MANIFEST:
        raise CheckpointIntegrityError(
            f"checkpoint manifest {directory / MANIFEST} lists {name!r}, which is not a plain "
            "file name inside the checkpoint directory; refusing it"
        )
    path = directory / name
    if path.is_symlink() or not path.is_file():
        raise CheckpointIntegrityError(
            f"checkpoint file {path} is missing, a link or not a regular file"
        )
    return path


def read_tree(directory: Path) -> Any:
    return json.loads((Path(directory) / TREE).read_text())


def read_tensors(directory: Path, name: str) -> dict[str, torch.Tensor]:
    """The tensors of safetensors file ``name`` (already verified), on the CPU."""
    path = Path(directory) / name
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointIntegrityError(
            f"checkpoint file {path} is not readable safetensors: {e}"
        ) from e
