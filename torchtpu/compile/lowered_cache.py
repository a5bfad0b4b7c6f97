"""Lowered programs cached on disk, so that a new process skips lowering to JAX.

JAX's persistent cache (``cache_dir``) keeps compiled executables, keyed by the StableHLO
they were compiled from; a new process must still make that StableHLO, by running the
graph's ops through torchtpu's lowerings and JAX's tracer (0.6-0.9 s for a 100M-parameter
training step on two cores). A program that opts in (a ``GraphExecutor``'s: ``compile_step``
and the ``tpu`` backend) is instead made through ``jax.export``: the exported StableHLO is
written here, with what the program returns besides arrays (its output tree, Python-valued
outputs and bounds checks), and a later process with the same key deserializes it instead
of tracing. Both processes then compile the same module, ``jax.jit(exported.call)``, so
the XLA cache hits as well.

The key is the segment's fingerprint (its ops, arguments and constants), its inputs'
shapes, dtypes and weak types, donation, the random-seed input, the device's platform,
torchtpu's options and ``TORCHTPU_*`` environment switches, JAX's 64-bit and
matmul-precision settings, and the versions of torch, jax, jaxlib and torchtpu's own code.
An entry is a serialized ``jax.export`` artifact (StableHLO bytecode, never Python) and
a JSON file; one that does not load is a miss and is written again. Programs over a mesh,
or with outputs pinned to a sharding, are not cached, nor is a program ``jax.export``
refuses (logged, and counted in ``torchtpu.metrics()["lowered_cache_skips"]``);
``lowered_cache_hits`` and ``lowered_cache_misses`` count the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import jax
import torch

from torchtpu.config import options
from torchtpu.lower.checks import Check
from torchtpu.metrics import bump
from torchtpu.runtime import default_device

log = logging.getLogger("torchtpu")
FORMAT = 1
T = TypeVar("T")


@functools.cache
def code_version() -> str:
    """The versions of torch, jax and jaxlib and a digest of torchtpu's own code: a change
    of any makes new keys, for this cache and the step-graph cache."""
    import jaxlib

    digest = hashlib.sha256(f"{torch.__version__}|{jax.__version__}|{jaxlib.__version__}".encode())
    root = Path(__file__).resolve().parent.parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it to ``path``: a
    reader sees the old entry or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cache_subdir(name: str) -> Path | None:
    """``<cache_dir>/<name>``, where an on-disk cache of torchtpu's keeps its entries (JAX's
    cache reads and evicts only its own files), or None when caching is off."""
    cache_dir = options().cache_dir
    if not cache_dir:
        return None
    return Path(cache_dir).expanduser() / name


def read_entry(path: Path, decode: Callable[[], T], counter: str, what: str) -> T | None:
    """``decode()`` of the entry whose JSON file is ``path``, counted in
    ``{counter}_hits``; an absent entry is a miss (``{counter}_misses``), and so is a
    damaged one, logged as "``what`` ... does not load" (the caller writes it again)."""
    if not path.exists():
        bump(f"{counter}_misses")
        return None
    try:
        value = decode()
    except Exception as exc:  # noqa: BLE001  (a damaged entry is a miss, written again)
        log.warning("%s %s does not load (%s)", what, path, exc)
        bump(f"{counter}_misses")
        return None
    bump(f"{counter}_hits")
    return value


def directory() -> Path | None:
    """Where entries live (``<cache_dir>/torchtpu-lowered``), or None when caching is off."""
    return cache_subdir("torchtpu-lowered")


def key(
    fingerprint: str,
    specs: Sequence[jax.ShapeDtypeStruct],
    *,
    name: str,
    donate: Sequence[int],
    uses_rng: bool,
    seed_shape: tuple[int, ...],
) -> str | None:
    """The entry key of a program, or None if it is not cached here (caching off, or an
    input placed over a mesh)."""
    if directory() is None or any(getattr(s, "sharding", None) is not None for s in specs):
        return None
    digest = hashlib.sha256(f"{FORMAT}:{code_version()}:{fingerprint}:{name}".encode())
    for s in specs:
        digest.update(f"{tuple(s.shape)}|{s.dtype}|{bool(s.weak_type)};".encode())
    digest.update(f"donate={sorted(donate)} rng={uses_rng}:{seed_shape}".encode())
    digest.update(f"platform={default_device().platform}".encode())
    digest.update(repr(options()).encode())
    # Switches some lowerings read from the environment (TORCHTPU_FLASH, the Triton path).
    switches = sorted((k, v) for k, v in os.environ.items() if k.startswith("TORCHTPU_"))
    digest.update(repr([kv for kv in switches if kv[0] != "TORCHTPU_CACHE_DIR"]).encode())
    digest.update(
        f"x64={jax.config.jax_enable_x64} matmul={jax.config.jax_default_matmul_precision}".encode()
    )
    return digest.hexdigest()


@dataclasses.dataclass
class Entry:
    """A cached lowering: the exported program and what it returns besides arrays."""

    exported: Any  # jax.export.Exported
    out_treedef: Any
    static_outputs: dict[int, Any]
    checks: list[Check]


def load(entry_key: str) -> Entry | None:
    """The entry for ``entry_key``, or None (a miss, counted)."""
    where = directory()

    def decode() -> Entry:
        meta = json.loads((where / f"{entry_key}.json").read_text())
        return Entry(
            jax.export.deserialize(bytearray((where / f"{entry_key}.jax").read_bytes())),
            _decode_tree(meta["out_tree"]),
            {int(i): v for i, v in meta["static_outputs"].items()},
            [Check(**c) for c in meta["checks"]],
        )

    return read_entry(
        where / f"{entry_key}.json", decode, "lowered_cache", "torchtpu: the cached lowering"
    )


def store(entry_key: str, entry: Entry) -> None:
    """Write ``entry`` atomically; one whose outputs this cache cannot describe is skipped."""
    try:
        meta = {
            "format": FORMAT,
            "out_tree": _encode_tree(entry.out_treedef),
            "static_outputs": {str(i): _plain(v) for i, v in entry.static_outputs.items()},
            "checks": [dataclasses.asdict(c) for c in entry.checks],
        }
    except _Unsupported as exc:
        log.debug("torchtpu: lowering not cached: %s", exc)
        bump("lowered_cache_skips")
        return
    where = directory()
    where.mkdir(parents=True, exist_ok=True)
    blob = entry.exported.serialize()
    # The artifact first: a JSON file is only ever beside the artifact it describes.
    atomic_write(where / f"{entry_key}.jax", lambda p: Path(p).write_bytes(blob))
    atomic_write(where / f"{entry_key}.json", lambda p: Path(p).write_text(json.dumps(meta)))


class _Unsupported(Exception):
    """An output structure this cache does not store."""


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise _Unsupported(f"a {type(value).__name__} output")


def _encode_tree(treedef: Any) -> Any:
    """A JSON form of an output tree made of lists, tuples, dicts with string keys, None
    and leaves."""
    skeleton = jax.tree_util.tree_unflatten(treedef, [0] * treedef.num_leaves)

    def encode(node: Any) -> Any:
        if node is None:
            return None
        if isinstance(node, int) and not isinstance(node, bool):
            return 0
        if type(node) is list:
            return {"l": [encode(x) for x in node]}
        if type(node) is tuple:
            return {"t": [encode(x) for x in node]}
        if type(node) is dict and all(isinstance(k, str) for k in node):
            return {"d": [[k, encode(v)] for k, v in node.items()]}
        raise _Unsupported(f"a {type(node).__name__} in the output tree")

    encoded = encode(skeleton)
    if jax.tree_util.tree_structure(_decode_skeleton(encoded)) != treedef:
        raise _Unsupported("an output tree that does not round-trip")
    return encoded


def _decode_skeleton(data: Any) -> Any:
    if data is None or data == 0:
        return data
    if "l" in data:
        return [_decode_skeleton(x) for x in data["l"]]
    if "t" in data:
        return tuple(_decode_skeleton(x) for x in data["t"])
    return {k: _decode_skeleton(v) for k, v in data["d"]}


def _decode_tree(data: Any) -> Any:
    return jax.tree_util.tree_structure(_decode_skeleton(data))
