"""The artifact format that ``torchtpu.export`` writes and ``torchtpu.serving`` reads.

An artifact is a directory of three files:

- ``manifest.json``: what the program takes and returns, what it was exported
  for and with, and the SHA-256 of the other files and of the manifest itself;
- ``program.bin``: the program, ``jax.export.Exported.serialize()`` (flatbuffers,
  no pickle);
- ``weights.safetensors``: the parameters and buffers, which the program takes
  as its first arguments, in the order ``manifest["weights"]`` lists them.

This module needs only the standard library, so both sides share it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

FORMAT = "torchtpu-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROGRAM = "program.bin"
WEIGHTS = "weights.safetensors"
FILES = (PROGRAM, WEIGHTS)

# safetensors.numpy has no bfloat16 (numpy has none either): such weights are
# stored as their raw 16 bits and given their dtype back on load.
STORED_AS = {"bfloat16": "uint16"}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_sha256(manifest: dict[str, Any]) -> str:
    """The hash of the manifest's fields other than ``manifest_sha256`` itself, in a
    canonical JSON form, so an edit of any field is seen."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def manifest_text(manifest: dict[str, Any]) -> str:
    sealed = {**manifest, "manifest_sha256": manifest_sha256(manifest)}
    return json.dumps(sealed, indent=2, sort_keys=True) + "\n"
