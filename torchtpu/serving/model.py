"""Load an exported artifact and run it on numpy arrays, without PyTorch.

Loading checks, before anything runs: the format version, the SHA-256 of every
file (the manifest's own included), that the program was exported for this
process's platform, and that this jaxlib can call it (its calling-convention
version). Nothing is unpickled: the manifest is JSON, the program flatbuffers,
the weights safetensors.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import safetensors.numpy

from torchtpu.serving import format as fmt


class ArtifactError(Exception):
    """The artifact cannot be loaded here: damaged, or made for another platform or
    jaxlib. The message names the file or field and what to do."""


class InputError(ValueError):
    """The inputs do not match the artifact's input specs (count, name, dtype, shape)."""


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ServedModel:
    """An exported model, ready to run: call it with numpy arrays.

    It returns numpy arrays in the structure the PyTorch model returned: one
    array for a single tensor, a tuple for a tuple, a list for a list, and a
    dict for a dict, a namedtuple or a ``transformers`` ``ModelOutput`` (by
    field name). ``inputs`` and ``outputs`` are the specs (name, dtype, shape
    with symbolic dimensions as strings); ``dims`` the symbolic dimensions'
    ranges.

    Example::

        predict = torchtpu.serving.load("model.tpu")
        logits = predict(np.zeros((2, 16), np.int64))
    """

    def __init__(
        self, path: Path, manifest: dict[str, Any], exported: Any, weights: list[Any]
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.inputs: list[dict[str, Any]] = manifest["inputs"]
        self.outputs: list[dict[str, Any]] = manifest["outputs"]
        self.dims: dict[str, dict[str, int | None]] = manifest["dims"]
        self.exported = exported
        self._weights = weights
        self._run = jax.jit(exported.call)

    def __repr__(self) -> str:
        inputs = ", ".join(spec_text(s) for s in self.inputs)
        outputs = ", ".join(spec_text(s) for s in self.outputs)
        return f"ServedModel({self.path}: ({inputs}) -> ({outputs}))"

    def metadata(self) -> dict[str, Any]:
        """The input and output specs, dimension ranges, platforms and versions."""
        keys = ("inputs", "outputs", "dims", "platforms", "versions", "format_version")
        return {k: self.manifest[k] for k in keys}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run on ``args`` (one per input, in order) or ``kwargs`` (by input name).

        An ``np.ndarray`` must have its input's dtype exactly; nested lists and
        Python numbers are converted when no precision kind is lost (ints to
        float32, not floats to int64). Raises :class:`InputError` for inputs
        that do not match and ``IndexError`` for an index out of range inside
        the program (an embedding id past the vocabulary).
        """
        return self.structure(self.flat(*args, **kwargs))

    def flat(self, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        """As calling the model, but the outputs as a flat list, in the order of
        :attr:`outputs`."""
        arrays = self.bind(args, kwargs)
        extra = [np.uint32(secrets.randbits(32))] if self.manifest["uses_rng"] else []
        with jax.enable_x64(True):
            results = [np.asarray(r) for r in self._run(*extra, *self._weights, *arrays)]
        if self.manifest["checks"]:
            self._raise_checks(results.pop())
        return results

    def structure(self, flat: list[np.ndarray]) -> Any:
        """The flat outputs in the structure the PyTorch model returned them."""
        return _unflatten(self.manifest["output_tree"], flat)

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[np.ndarray]:
        """The inputs as arrays in order, checked against the specs."""
        names = [s["name"] for s in self.inputs]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise InputError(f"unknown input(s) {unknown}; the inputs are {names}")
        if len(args) > len(names):
            raise InputError(f"got {len(args)} inputs; the model takes {len(names)}: {names}")
        values = dict(zip(names, args, strict=False))
        for name, value in kwargs.items():
            if name in values:
                raise InputError(f"input {name!r} given twice (by position and by name)")
            values[name] = value
        missing = [n for n in names if n not in values]
        if missing:
            raise InputError(f"missing input(s) {missing}; the model takes {len(names)}: {names}")
        sizes: dict[str, tuple[int, str]] = {}
        return [self._check(spec, values[spec["name"]], sizes) for spec in self.inputs]

    def _check(self, spec: dict[str, Any], value: Any, sizes: dict) -> np.ndarray:
        name, want = spec["name"], np.dtype(jax.numpy.dtype(spec["dtype"]))
        expected = spec_text(spec, self.dims)
        if isinstance(value, np.ndarray) or isinstance(value, np.generic):
            array = np.asarray(value)
            if array.dtype != want:
                raise InputError(
                    f"input {name!r}: expected {expected}, got {array.dtype}{list(array.shape)}"
                )
        else:
            try:
                array = np.asarray(value)
            except ValueError as exc:  # ragged nested lists
                raise InputError(f"input {name!r}: expected {expected}, got {exc}") from exc
            if array.dtype == object or not np.can_cast(array.dtype, want, "same_kind"):
                raise InputError(
                    f"input {name!r}: expected {expected}, got values of type {array.dtype} "
                    f"that do not convert to {want} without loss"
                )
            array = array.astype(want)
        got = f"{array.dtype}{list(array.shape)}"
        if array.ndim != len(spec["shape"]):
            raise InputError(f"input {name!r}: expected {expected}, got {got}")
        for axis, (size, dim) in enumerate(zip(array.shape, spec["shape"], strict=True)):
            if isinstance(dim, int):
                if size != dim:
                    raise InputError(
                        f"input {name!r}: expected {expected}, got {got} (dimension {axis})"
                    )
                continue
            if not _NAME.fullmatch(dim):
                continue  # a derived size (2*batch): jax.export checks it against its root
            bounds = self.dims.get(dim, {"min": 1, "max": None})
            low, high = bounds["min"], bounds["max"]
            if size < low or (high is not None and size > high):
                raise InputError(
                    f"input {name!r}: expected {expected}, got {got}: {dim}={size} is out of "
                    f"its range [{low}, {high if high is not None else 'inf'}]"
                )
            if dim in sizes and sizes[dim][0] != size:
                first_size, first_input = sizes[dim]
                raise InputError(
                    f"input {name!r}: expected {expected}, got {got}: {dim}={size}, but input "
                    f"{first_input!r} has {dim}={first_size}"
                )
            sizes.setdefault(dim, (size, name))
        return array

    def _raise_checks(self, flags: np.ndarray) -> None:
        for k, check in enumerate(self.manifest["checks"]):
            if flags[2 * k]:
                raise IndexError(check_message(check, int(flags[2 * k + 1])))


def spec_text(spec: dict[str, Any], dims: dict[str, Any] | None = None) -> str:
    """``int64[batch, 16]``, with the ranges of its symbolic dimensions if given."""
    shape = ", ".join(str(d) for d in spec["shape"])
    text = f"{spec['dtype']}[{shape}]"
    named = [d for d in spec["shape"] if isinstance(d, str) and dims and d in dims]
    if named:
        ranges = ", ".join(
            f"{d} in [{dims[d]['min']}, {dims[d]['max'] or 'inf'}]" for d in dict.fromkeys(named)
        )
        text += f" ({ranges})"
    return text


def check_message(check: dict[str, Any], value: int) -> str:
    """The message of a bounds check that failed inside a served program."""
    where = f" (the model's line {check['where']})" if check.get("where") else ""
    if check.get("text"):
        return f"{check['op']}: {check['text'].format(value=value)}{where}"
    size = check["size"]
    valid = f"[{-size}, {size})" if check["negative"] else f"[0, {size})"
    of = f"dimension {check['dim']} of size {size}" if check["dim"] is not None else f"size {size}"
    return (
        f"{check['op']}: index {value} is out of range for {of} (valid: {valid}){where}. "
        "The results would be wrong, so none are returned; fix the input (a token id past "
        "the vocabulary, say)."
    )


def _unflatten(tree: Any, leaves: list[np.ndarray]) -> Any:
    if isinstance(tree, int):
        return leaves[tree]
    ((kind, items),) = tree.items()
    if kind == "dict":
        return {k: _unflatten(v, leaves) for k, v in items}
    values = [_unflatten(v, leaves) for v in items]
    return tuple(values) if kind == "tuple" else values


# --- loading --------------------------------------------------------------------------


def load(path: str | Path) -> ServedModel:
    """Load the artifact ``torchtpu.export(...).save(path)`` wrote, checking it first.

    Raises :class:`ArtifactError` if a file is missing or its SHA-256 differs
    from the manifest's, if the artifact's format version is unknown, if it was
    not exported for this process's platform, or if this jaxlib cannot call
    its program.

    Example::

        import numpy as np
        import torchtpu.serving
        predict = torchtpu.serving.load("/tmp/linear.tpu")
        y = predict(np.ones((5, 4), np.float32))
    """
    root = Path(path)
    manifest = _read_manifest(root)
    _verify_files(root, manifest)
    _check_platform(manifest)
    _check_calling_convention(manifest)
    exported = jax.export.deserialize(bytearray((root / fmt.PROGRAM).read_bytes()))
    weights = _read_weights(root, manifest)
    with jax.enable_x64(True):
        placed = [jax.device_put(w) for w in weights]
    return ServedModel(root, manifest, exported, placed)


def _read_manifest(root: Path) -> dict[str, Any]:
    file = root / fmt.MANIFEST
    if not file.is_file():
        raise ArtifactError(f"{file} is missing: {root} is not an artifact torchtpu.export wrote")
    try:
        manifest = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{file} is not valid JSON ({exc}); the artifact is damaged") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != fmt.FORMAT:
        raise ArtifactError(f"{file} is not a torchtpu export manifest")
    version = manifest.get("format_version")
    if version != fmt.FORMAT_VERSION:
        raise ArtifactError(
            f"{file}: format version {version!r}, but this torchtpu reads version "
            f"{fmt.FORMAT_VERSION}. Serve it with the torchtpu that exported it "
            f"({manifest.get('versions', {}).get('torchtpu', '?')}), or re-export the model "
            "with this one."
        )
    if manifest.get("manifest_sha256") != fmt.manifest_sha256(manifest):
        raise ArtifactError(
            f"{file} was changed after export (its SHA-256 does not match the one it "
            "records): the artifact cannot be trusted. Re-export the model."
        )
    return manifest


def _verify_files(root: Path, manifest: dict[str, Any]) -> None:
    for name in fmt.FILES:
        file = root / name
        if not file.is_file():
            raise ArtifactError(f"{file} is missing; the artifact is incomplete. Re-export it.")
        want = manifest["sha256"].get(name)
        got = fmt.file_sha256(file)
        if got != want:
            raise ArtifactError(
                f"{file}: SHA-256 {got} differs from the manifest's {want}; the file was "
                "changed or damaged after export. Re-export the model, or copy the artifact again."
            )


def current_platform() -> str:
    """The ``jax.export`` platform this process runs on: ``cpu``, ``cuda``, ``rocm``, ``tpu``."""
    return jax.export.default_export_platform()


def _check_platform(manifest: dict[str, Any]) -> None:
    here = current_platform()
    exported_for = manifest["platforms"]
    if here not in exported_for:
        both = ", ".join(repr(p) for p in [*exported_for, here])
        raise ArtifactError(
            f"the artifact was exported for {exported_for}, but this process runs on {here!r}. "
            f"Re-export it for this platform too: torchtpu.export(model, inputs, "
            f"platforms=({both})) (lowering for another platform needs no such device)."
        )


def _check_calling_convention(manifest: dict[str, Any]) -> None:
    version = manifest["calling_convention_version"]
    low = jax.export.minimum_supported_calling_convention_version
    high = jax.export.maximum_supported_calling_convention_version
    if not low <= version <= high:
        made_with = manifest.get("versions", {}).get("jaxlib", "?")
        raise ArtifactError(
            f"the program uses jax.export calling convention {version} (exported with jaxlib "
            f"{made_with}); this jaxlib ({jax.__version__}) calls versions {low} to {high}. "
            "Serve with a jaxlib in that window, or re-export with this one."
        )


def _read_weights(root: Path, manifest: dict[str, Any]) -> list[np.ndarray]:
    stored = safetensors.numpy.load_file(str(root / fmt.WEIGHTS))
    weights = []
    for spec in manifest["weights"]:
        name = spec["name"]
        if name not in stored:
            raise ArtifactError(f"{root / fmt.WEIGHTS} has no weight {name!r}")
        array = stored[name]
        if spec["dtype"] in fmt.STORED_AS:
            array = array.view(jax.numpy.dtype(spec["dtype"]))
        if str(array.dtype) != spec["dtype"] or list(array.shape) != spec["shape"]:
            raise ArtifactError(
                f"{root / fmt.WEIGHTS}: weight {name!r} is {array.dtype}{list(array.shape)}, "
                f"the manifest says {spec['dtype']}{spec['shape']}"
            )
        weights.append(array)
    return weights
