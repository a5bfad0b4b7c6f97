"""The collectives of a compiled SPMD program, read from its optimised HLO.

Each collective's ``bytes`` is the data it reduces or gathers (an all-reduce's
operand, an all-gather's gathered result, a reduce-scatter's full input) and
``wire_bytes`` what one device sends for it on a ring of its group's size:
``2(n-1)/n`` of that for an all-reduce, ``(n-1)/n`` for an all-gather, a
reduce-scatter or an all-to-all, all of it for a collective-permute.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

_KINDS = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
)
_INSTRUCTION = re.compile(
    # A tuple type may hold /*index=5*/ comments; it holds no parentheses.
    r"=\s*(?P<type>\([^()]*\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?)\s+"
    r"(?P<op>" + "|".join(_KINDS) + r")(?P<start>-start)?\("
)
_SHAPE = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_GROUPS_LIST = re.compile(r"replica_groups=\{(\{[0-9,]*\})")
_GROUPS_IOTA = re.compile(r"replica_groups=\[([0-9,]+)\]<=")
_PAIRS = re.compile(r"source_target_pairs=\{")
_BYTES = {"pred": 1, "s4": 1, "u4": 1, "c64": 8, "c128": 16}


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str
    bytes: int
    group_size: int
    line: str

    @property
    def wire_bytes(self) -> float:
        n = self.group_size
        if n <= 1:
            return 0.0
        if self.kind == "all-reduce":
            return 2 * (n - 1) / n * self.bytes
        if self.kind == "collective-permute":
            return float(self.bytes)
        return (n - 1) / n * self.bytes


def _dtype_bytes(name: str) -> int:
    if name in _BYTES:
        return _BYTES[name]
    # The width is the first number: bf16, c64, and f8e4m3fn (8 bits, not 843).
    width = re.match(r"[a-z]+(\d+)", name)
    if width is None:
        return int(np.dtype(name).itemsize)
    return max(1, int(width.group(1)) // 8)


def shapes_bytes(text: str) -> list[int]:
    """The bytes of each array type in an HLO type text (``f32[8,4]``, a tuple of them);
    tokens hold none.

    Example::

        shapes_bytes("(f32[8,4], bf16[2])")  # [128, 4]
    """
    out = []
    for dtype, dims in _SHAPE.findall(text):
        if dtype == "token":
            continue
        n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
        out.append(n * _dtype_bytes(dtype))
    return out


def _group_size(line: str, default: int) -> int:
    found = _GROUPS_IOTA.search(line)
    if found:
        return int(found.group(1).split(",")[-1])
    found = _GROUPS_LIST.search(line)
    if found:
        members = [m for m in found.group(1).strip("{}").split(",") if m]
        return len(members) or default
    if _PAIRS.search(line):
        return default
    return default


def collectives(hlo_text: str, n_devices: int) -> list[Collective]:
    """Every collective of ``hlo_text`` (a compiled program's ``as_text()``)."""
    out = []
    for line in hlo_text.splitlines():
        found = _INSTRUCTION.search(line)
        if not found:
            continue
        kind, sizes = found.group("op"), shapes_bytes(found.group("type"))
        if not sizes:
            continue
        if found.group("start") and kind in {"all-gather", "collective-permute"}:
            size = sizes[-1]  # (operand, result) pairs: the gathered result
        elif kind == "reduce-scatter":
            operands = line[found.end() :]
            size = sum(shapes_bytes(operands.split(")", 1)[0])) or sum(sizes) * n_devices
        else:
            size = sum(sizes)
        out.append(Collective(kind, size, _group_size(line, n_devices), line.strip()))
    return out


def summary(found: list[Collective]) -> dict[str, dict[str, float]]:
    """Per kind: how many, their bytes, and the bytes one device sends."""
    table: dict[str, dict[str, float]] = {}
    for c in found:
        row = table.setdefault(c.kind, {"count": 0, "bytes": 0, "wire_bytes": 0.0})
        row["count"] += 1
        row["bytes"] += c.bytes
        row["wire_bytes"] += c.wire_bytes
    return table
