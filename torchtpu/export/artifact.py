"""The exported artifact as a value: its manifest, program and weights, and how it
is written to disk (see ``torchtpu.serving.format`` for the layout)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import jaxlib
import safetensors.numpy
import torch

import torchtpu
from torchtpu.serving import format as fmt
from torchtpu.serving.model import spec_text


class Artifact:
    """A model exported by :func:`torchtpu.export`: a program that runs without
    PyTorch, its weights, and the manifest that describes both.

    ``save(path)`` writes it; ``torchtpu.serving.load(path)`` runs it.

    Example::

        artifact = torchtpu.export(model, (x,))
        print(artifact)                # inputs, outputs, platforms
        artifact.save("model.tpu")
    """

    def __init__(
        self, manifest: dict[str, Any], exported: jax.export.Exported, weights: dict[str, Any]
    ) -> None:
        self.manifest = manifest
        self.exported = exported
        self.weights = weights

    def __repr__(self) -> str:
        def spec(s: dict[str, Any]) -> str:
            return f"{s['name']}: {spec_text(s)}"

        inputs = ", ".join(spec(s) for s in self.manifest["inputs"])
        outputs = ", ".join(spec(s) for s in self.manifest["outputs"])
        size = sum(w.nbytes for w in self.weights.values())
        return (
            f"Artifact(({inputs}) -> ({outputs}), {len(self.weights)} weights "
            f"({size / 1e6:.1f} MB), platforms {self.manifest['platforms']})"
        )

    def as_text(self) -> str:
        """The exported program as StableHLO text."""
        return self.exported.mlir_module()

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the artifact to the directory ``path``, atomically: the files go to
        a temporary directory beside it, which is then renamed. An existing
        ``path`` is replaced only with ``overwrite=True``.

        Example::

            torchtpu.export(model, (x,)).save("model.tpu")
        """
        target = Path(path).absolute()
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            self._write(staging)
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
                os.replace(target, old / "artifact")
                os.replace(staging, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def _write(self, directory: Path) -> None:
        (directory / fmt.PROGRAM).write_bytes(bytes(self.exported.serialize()))
        stored = {
            name: w.view(fmt.STORED_AS[str(w.dtype)]) if str(w.dtype) in fmt.STORED_AS else w
            for name, w in self.weights.items()
        }
        safetensors.numpy.save_file(stored, str(directory / fmt.WEIGHTS))
        manifest = dict(self.manifest)
        manifest["sha256"] = {name: fmt.file_sha256(directory / name) for name in fmt.FILES}
        (directory / fmt.MANIFEST).write_text(fmt.manifest_text(manifest))
        for name in (*fmt.FILES, fmt.MANIFEST):
            with open(directory / name, "rb") as f:
                os.fsync(f.fileno())


def manifest(traced: Any, platforms: tuple[str, ...]) -> dict[str, Any]:
    """The manifest's fields but the hashes, which :meth:`Artifact.save` adds."""
    return {
        "format": fmt.FORMAT,
        "format_version": fmt.FORMAT_VERSION,
        "platforms": list(platforms),
        "calling_convention_version": traced.exported.calling_convention_version,
        "versions": {
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "torch": torch.__version__,
            "torchtpu": torchtpu.__version__,
        },
        "inputs": traced.inputs,
        "outputs": traced.outputs,
        "output_tree": traced.output_tree,
        "dims": traced.dims,
        "weights": [
            {"name": name, "dtype": str(w.dtype), "shape": list(w.shape)}
            for name, w in traced.weights.items()
        ],
        "checks": traced.checks,
        "uses_rng": traced.uses_rng,
    }
