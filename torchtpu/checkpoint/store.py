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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
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
MANIFEST = "manifest.json"
TREE = "tree.json"
_TMP = ".tmp-"
_TRASH = ".trash-"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def reached(point: str) -> None:
    """Called at each step of a write (``"arrays"``, ``"manifest"``, ``"renamed"``);
    tests replace it to kill the writer there."""


def file_name(entry: str) -> str:
    """The safetensors file of state entry ``entry``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", entry).lstrip(".") or "entry"
    return f"{safe}.safetensors"


# --- writing --------------------------------------------------------------------


def write(directory: Path, tree: dict[str, Any], files: dict[str, dict[str, torch.Tensor]]) -> None:
    """Write a checkpoint to ``directory`` atomically: ``tree`` to tree.json, and each
    ``files[name]`` (tensors by key) to safetensors file ``name``."""
    directory = Path(directory)
    if directory.exists():
        raise CheckpointError(
            f"checkpoint directory {directory} already exists: a checkpoint is never "
            "overwritten in place. Save to a new directory (checkpoint.Manager numbers "
            "them by step), or remove the old one first."
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f"{_TMP}{directory.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        listed: dict[str, dict[str, Any]] = {}
        for name, tensors in files.items():
            save_file(tensors, str(tmp / name), metadata={"format": FORMAT})
            listed[name] = _fsync_and_hash(tmp / name)
        reached("arrays")
        _write_json(tmp / TREE, tree)
        listed[TREE] = _fsync_and_hash(tmp / TREE)
        _write_json(tmp / MANIFEST, _manifest(listed))
        _fsync_and_hash(tmp / MANIFEST)
        _fsync_dir(tmp)
        reached("manifest")
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    reached("renamed")
    _fsync_dir(directory.parent)


def _manifest(files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    body = {"format": FORMAT, "version": VERSION, "files": dict(sorted(files.items()))}
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


def verify(directory: Path) -> dict[str, Any]:
    """Check ``directory`` against its manifest; the manifest, or
    :class:`CheckpointIntegrityError` naming the first file that does not match."""
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
        if file_sha256(path) != meta.get("sha256"):
            raise CheckpointIntegrityError(
                f"checkpoint file {path} does not match its SHA-256 in the manifest "
                "(its contents changed); the checkpoint is not used"
            )
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
    if manifest.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {manifest.get('version')}; this torchtpu "
            f"reads version {VERSION}"
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
