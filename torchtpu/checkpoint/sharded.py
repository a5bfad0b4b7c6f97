"""Arrays split across processes: saved as the shards each process owns, read back
by global index onto whatever mesh and process count the loader has.

Saving (a job of several processes, one ``jax.distributed`` job): each process
keeps the shards it owns of every array that is not fully addressable (the
addressable ones with ``replica_id == 0``, see :class:`~torchtpu.checkpoint.tree.Split`)
and writes them to ``<entry>.p<process>.safetensors``. An entry's tree gets a
table of its split tensors, each with its global shape, torch dtype, sharding
text and pieces (file, key in the file, global ``[start, stop)`` bounds in each
dimension), which process 0 puts together from every process's part
(:func:`merge`). Host values (CPU tensors, fully addressable arrays, plain
values) are written by process 0 alone, so they must be the same on every
process; the RNG state differs between processes and is saved per process.

Loading: :class:`Reader` builds each split tensor on its target's sharding with
``jax.make_array_from_callback``, reading from the piece files only the slices
that overlap this process's shards (``safe_open(...).get_slice``). The target is
what the state holds at that place (a ``jax.Array`` or a tpu tensor; for an
optimizer state not made yet, its parameter). Without one, the tensor is put
together whole on the host.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch
from jax.sharding import NamedSharding, PartitionSpec
from safetensors import SafetensorError, safe_open

from torchtpu.checkpoint import store
from torchtpu.checkpoint.tree import _DTYPES, Bounds, Split, _unkey, bounds
from torchtpu.errors import CheckpointError, CheckpointIntegrityError
from torchtpu.lower.dtypes import to_jax_dtype, to_numpy

# --- saving ---------------------------------------------------------------------------


def local_part(
    tree: dict[str, Any],
    files: dict[str, dict[str, torch.Tensor]],
    splits: dict[str, dict[str, Split]],
    rng: str,
    process: int,
    count: int,
) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """What process ``process`` of ``count`` writes of a snapshot: its shard files,
    its RNG file, and (process 0 only) the host files; with the tree's tables of
    split tensors filled in, and the part process 0 needs (its pieces, its RNG)."""
    entries = tree["entries"]
    host_names = {e["file"] for e in entries.values() if e["file"]}
    ours = {name: store.file_name(name, k) for name in [*splits, rng] for k in range(count)}
    clash = sorted(host_names & set(ours.values()))
    if clash:
        raise CheckpointError(
            f"state entry names {sorted(entries)} map to clashing file names {clash} "
            "(a split entry's per-process files); rename the entries"
        )
    written = dict(files) if process == 0 else {}
    rng_tensors = written.pop(entries[rng]["file"], None) or files.get(entries[rng]["file"])
    part: dict[str, Any] = {"pieces": {}, "rng": {"file": None, "tree": entries[rng]["tree"]}}
    if rng_tensors:
        part["rng"]["file"] = store.file_name(rng, process)
        written[part["rng"]["file"]] = rng_tensors
    for name, split in splits.items():
        file = store.file_name(name, process)
        tensors, table, pieces = {}, {}, {}
        for key, s in split.items():
            table[key] = {
                "shape": list(s.shape),
                "dtype": str(s.dtype).removeprefix("torch."),
                "sharding": s.sharding,
            }
            pieces[key] = []
            for n, (where, tensor) in enumerate(s.pieces):
                stored = f"{key}@{n}"
                tensors[stored] = tensor
                pieces[key].append({"file": file, "key": stored, "index": [*map(list, where)]})
        entries[name]["shards"] = table
        part["pieces"][name] = pieces
        if tensors:
            written[file] = tensors
    return tree, written, part


def merge(tree: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Process 0's tree with every process's pieces and RNG state (``parts`` in
    process order); each split tensor must be covered whole by the pieces."""
    entries = tree["entries"]
    tree["processes"] = len(parts)
    for k, part in enumerate(parts):
        for name, pieces in part["pieces"].items():
            table = entries.get(name, {}).get("shards") or {}
            for key, listed in pieces.items():
                if key not in table:
                    raise CheckpointError(
                        f"process {k} holds shards of {key} (entry {name!r}), which process "
                        "0's state does not have: every process must save the same state"
                    )
                table[key].setdefault("pieces", []).extend(listed)
    for name, entry in entries.items():
        for key, meta in (entry.get("shards") or {}).items():
            covered = sum(_volume(p["index"]) for p in meta.get("pieces", []))
            if covered != math.prod(meta["shape"]):
                raise CheckpointError(
                    f"checkpoint entry {name!r}, tensor {key} {_describe(meta)}: the processes' "
                    f"shards cover {covered} of its {math.prod(meta['shape'])} elements; every "
                    "process must save the same state, with its arrays on the same mesh"
                )
    rng = [p["rng"] for p in parts]
    for name, entry in entries.items():
        if entry["kind"] == "rng":
            entries[name] = {"kind": "rng", "file": None, "tree": None, "processes": rng}
    return tree


def _volume(index: list[list[int]]) -> int:
    return math.prod(max(stop - start, 0) for start, stop in index)


def _describe(meta: dict[str, Any]) -> str:
    return f"{meta['dtype']}{list(meta['shape'])}"


# --- loading --------------------------------------------------------------------------


class _Beside:
    """No tensor of its own in the state yet (an optimizer's state before its first
    step): placed like parameter ``param`` when of its shape, else replicated on its
    mesh, as a sharded ``compile_step`` places it."""

    def __init__(self, param: Any) -> None:
        self.param = param


def targets(kind: str, obj: Any) -> Any:
    """What the state holds now where a checkpoint entry goes, to place split
    tensors like it: an object's ``state_dict()``, or the value itself."""
    if kind == "rng":
        return None
    if kind != "state_dict":
        return obj
    if not callable(getattr(obj, "state_dict", None)):
        return None  # restore() says what is wrong with it
    current = obj.state_dict()
    groups = getattr(obj, "param_groups", None)
    if not isinstance(groups, list) or not isinstance(current.get("state"), dict):
        return current
    # torch.optim numbers parameters in group order (Optimizer.state_dict).
    params: dict[int, Any] = {}
    start = 0
    for group in groups:
        for i, p in enumerate(group["params"], start):
            params[i] = p
        start += len(group["params"])
    state = {i: _Beside(p) for i, p in params.items()}
    return {**current, "state": {**state, **current["state"]}}


def likes(data: Any, target: Any) -> dict[str, Any]:
    """Each tensor key of tree ``data`` -> what ``target`` holds at its place."""
    found: dict[str, Any] = {}
    _walk(data, target, found)
    return found


def _walk(data: Any, target: Any, found: dict[str, Any]) -> None:
    if not isinstance(data, dict):
        return
    kind = data.get("t")
    beside = target if isinstance(target, _Beside) else None
    if kind == "tensor":
        found.setdefault(data["key"], target)
    elif kind == "dict":
        for k, v in zip(data["k"], data["v"], strict=True):
            key = _unkey(k)
            sub = beside or (target.get(key) if isinstance(target, Mapping) else None)
            _walk(v, sub, found)
    elif kind in ("list", "tuple"):
        for i, v in enumerate(data["v"]):
            fits = isinstance(target, list | tuple) and i < len(target)
            _walk(v, beside or (target[i] if fits else None), found)


class Reader(Mapping):
    """An entry's tensors as :func:`~torchtpu.checkpoint.tree.decode` asks for them:
    ``host`` ones as read; split ones built on their target's sharding (a
    ``jax.Array`` for a ``jax.Array``, a tpu tensor otherwise) or whole on the host.

    Made before anything is read, so :meth:`files` can say which files this process
    reads (to verify those); :meth:`open` then reads them."""

    def __init__(self, directory: Path, entry: str, table: dict[str, Any], like: dict) -> None:
        self.directory = Path(directory)
        self.entry = entry
        self.table = table
        self.like = like
        self.host: dict[str, torch.Tensor] = {}
        self.plans = {key: self._plan(key, meta, like.get(key)) for key, meta in table.items()}
        self._built: dict[str, Any] = {}
        self._handles: dict[str, Any] = {}
        self._stack: contextlib.ExitStack | None = None

    def _plan(self, key: str, meta: dict[str, Any], like: Any) -> tuple[Any, str]:
        """(sharding, "jax" | "tpu") to build on, or (None, "host")."""
        from torchtpu.device.tensor import device_array, is_tpu

        shape = tuple(meta["shape"])
        if meta["dtype"] not in _DTYPES:
            raise CheckpointError(f"{self._name(key, meta)} has unknown dtype {meta['dtype']!r}")
        if isinstance(like, _Beside):
            param = like.param
            if not is_tpu(param):
                return None, "host"
            sharding = device_array(param, "checkpoint").sharding
            if tuple(param.shape) == shape:
                return sharding, "tpu"
            if isinstance(sharding, NamedSharding):
                return NamedSharding(sharding.mesh, PartitionSpec()), "tpu"
            return None, "host"
        if isinstance(like, jax.Array) or is_tpu(like):
            if tuple(like.shape) != shape:
                raise CheckpointError(
                    f"{self._name(key, meta)} does not fit the state's tensor of shape "
                    f"{list(like.shape)} there (process {jax.process_index()})"
                )
            if isinstance(like, jax.Array):
                return like.sharding, "jax"
            return device_array(like, "checkpoint").sharding, "tpu"
        return None, "host"

    def _name(self, key: str, meta: dict[str, Any]) -> str:
        return f"checkpoint {self.directory} entry {self.entry!r}, tensor {key} {_describe(meta)},"

    def files(self) -> set[str]:
        """The files this process reads: those of the pieces its shards overlap."""
        needed: set[str] = set()
        for key, meta in self.table.items():
            sharding, _ = self.plans[key]
            shape = tuple(meta["shape"])
            if sharding is None:
                wants = [tuple((0, n) for n in shape)]
            else:
                indices = sharding.addressable_devices_indices_map(shape).values()
                wants = [bounds(i, shape) for i in indices]
            for piece in meta.get("pieces", []):
                if any(_overlap(want, _bounds_of(piece)) is not None for want in wants):
                    needed.add(piece["file"])
        return needed

    @contextlib.contextmanager
    def open(self, host: dict[str, torch.Tensor]) -> Iterator[Reader]:
        """Read, with the host tensors ``host``; the piece files stay open inside."""
        self.host = host
        with contextlib.ExitStack() as self._stack:
            yield self
        self._handles.clear()
        self._stack = None

    # --- the Mapping decode reads

    def __contains__(self, key: object) -> bool:
        return key in self.host or key in self.table

    def __getitem__(self, key: str) -> Any:
        if key in self.host:
            return self._place_host(key, self.host[key])
        if key not in self._built:
            self._built[key] = self._build(key, self.table[key])
        return self._built[key]

    def __iter__(self) -> Iterator[str]:
        yield from self.host
        yield from self.table

    def __len__(self) -> int:
        return len(self.host) + len(self.table)

    # --- reading

    def _place_host(self, key: str, tensor: torch.Tensor) -> Any:
        """A host tensor (saved whole, by one process) whose target is a tpu tensor
        split across processes: put on its sharding, as ``copy_`` would not (it would
        make a tensor of this process's device alone)."""
        from torchtpu.device.tensor import device_array, is_tpu

        like = self.like.get(key)
        param = like.param if isinstance(like, _Beside) else like
        if not is_tpu(param) or tuple(param.shape) != tuple(tensor.shape):
            return tensor
        sharding = device_array(param, "checkpoint").sharding
        if sharding.is_fully_addressable:
            return tensor
        array = jax.device_put(to_numpy(tensor).astype(to_jax_dtype(tensor.dtype)), sharding)
        return from_array_of(array, tensor.dtype)

    def _build(self, key: str, meta: dict[str, Any]) -> Any:
        shape, dtype = tuple(meta["shape"]), _DTYPES[meta["dtype"]]
        sharding, kind = self.plans[key]
        if sharding is None:
            return self._block(key, meta, tuple((0, n) for n in shape))
        numpy_dtype = np.dtype(to_jax_dtype(dtype))

        def block(index: tuple[slice, ...]) -> np.ndarray:
            return to_numpy(self._block(key, meta, bounds(index, shape))).astype(numpy_dtype)

        array = jax.make_array_from_callback(shape, sharding, block)
        return array if kind == "jax" else from_array_of(array, dtype)

    def _block(self, key: str, meta: dict[str, Any], want: Bounds) -> torch.Tensor:
        """Global block ``want`` of split tensor ``key``, from the pieces that overlap it."""
        dtype = _DTYPES[meta["dtype"]]
        out = torch.empty([stop - start for start, stop in want], dtype=dtype)
        filled = 0
        for piece in meta.get("pieces", []):
            have = _bounds_of(piece)
            common = _overlap(want, have)
            if common is None:
                continue
            source = tuple(slice(a - h, b - h) for (a, b), (h, _) in zip(common, have, strict=True))
            target = tuple(slice(a - w, b - w) for (a, b), (w, _) in zip(common, want, strict=True))
            out[target] = self._read(key, meta, piece, source, common == have)
            filled += math.prod(b - a for a, b in common)
        if filled != out.numel():
            raise CheckpointIntegrityError(
                f"{self._name(key, meta)} has pieces covering {filled} of the {out.numel()} "
                f"elements process {jax.process_index()} needs at {[list(w) for w in want]}"
            )
        return out

    def _read(self, key: str, meta: dict, piece: dict, source: tuple, whole: bool) -> torch.Tensor:
        path = self.directory / piece["file"]
        try:
            handle = self._handles.get(piece["file"])
            if handle is None:
                if self._stack is None:
                    raise CheckpointError("sharded.Reader read outside Reader.open()")
                handle = self._stack.enter_context(safe_open(str(path), "pt", device="cpu"))
                self._handles[piece["file"]] = handle
            extent = [stop - start for start, stop in _bounds_of(piece)]
            view = handle.get_slice(piece["key"])
            if list(view.get_shape()) != extent:
                raise CheckpointIntegrityError(
                    f"{self._name(key, meta)}: piece {piece['key']} in {path} has shape "
                    f"{view.get_shape()}, its index says {extent}"
                )
            tensor = handle.get_tensor(piece["key"]) if whole else view[source]
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointIntegrityError(
                f"{self._name(key, meta)}: cannot read piece {piece['key']!r} from {path} "
                f"(process {jax.process_index()}): {e}"
            ) from e
        if tensor.dtype != _DTYPES[meta["dtype"]]:
            raise CheckpointIntegrityError(
                f"{self._name(key, meta)}: piece {piece['key']} in {path} is {tensor.dtype}"
            )
        return tensor


def from_array_of(array: jax.Array, dtype: torch.dtype) -> torch.Tensor:
    from torchtpu.device.tensor import from_array

    return from_array(array, dtype)


def _bounds_of(piece: dict[str, Any]) -> Bounds:
    return tuple((int(a), int(b)) for a, b in piece["index"])


def _overlap(want: Bounds, have: Bounds) -> Bounds | None:
    if len(want) != len(have):
        raise CheckpointIntegrityError(f"a piece's index {have} does not match the tensor's rank")
    common = tuple((max(a, c), min(b, d)) for (a, b), (c, d) in zip(want, have, strict=True))
    return None if any(a >= b for a, b in common) else common
