"""Training text every machine has: the Python standard library's own sources.

Files are read from the running interpreter's stdlib directory. The choice is
deterministic (sorted by a hash of the file name, so the same Python version
gives the same corpus), and every tenth file by that hash is held out.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import torch


def _rank(path: Path) -> int:
    return int(hashlib.sha256(path.name.encode()).hexdigest(), 16)


def stdlib_corpus(max_bytes: int = 3_000_000) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(train bytes, held-out bytes, held-out file names) as uint8 tensors."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"), key=_rank)
    train, held_out, held_names, total = [], [], [], 0
    for path in files:
        data = path.read_bytes()
        if _rank(path) % 10 == 0:
            held_out.append(data)
            held_names.append(path.name)
        else:
            train.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    as_tensor = lambda chunks: torch.frombuffer(bytearray(b"\n".join(chunks)), dtype=torch.uint8)
    return as_tensor(train), as_tensor(held_out), held_names


def batches(data: torch.Tensor, batch: int, context: int, generator: torch.Generator):
    """Endless random windows (inputs, next-byte targets) as int64."""
    while True:
        start = torch.randint(0, len(data) - context - 1, (batch,), generator=generator)
        rows = torch.stack([data[s : s + context + 1] for s in start.tolist()]).long()
        yield rows[:, :-1], rows[:, 1:]
