"""A compiled program's operations by class, read from its optimised HLO.

XLA's cost analysis gives a program's totals; the step model also wants to know
*what kind* of work they are, since a chip runs each kind at its own rate. Each
top-level instruction of the entry computation (a fusion, a dot, a convolution, a
copy, ...) becomes one :class:`OpCost`:

- ``conv``: it is, or its fusion holds, a convolution. FLOPs = 2 x output elements x
  the kernel's elements per output feature (``dim_labels``' rhs dims other than ``o``);
- ``matmul``: a dot whose smaller non-contracting extent is over
  :data:`SKINNY` (rows or columns); FLOPs = 2 x batch x M x N x K;
- ``matvec``: a dot with at most :data:`SKINNY` rows or columns (a decode step's
  batch-of-8 products, attention of one query): it streams its matrix once and is
  bound by how fast the chip reads it;
- ``other``: everything else (elementwise, reductions, copies, gathers): no FLOPs
  counted, its bytes moved.

``bytes`` = the instruction's result plus its distinct operands, as XLA's cost
analysis counts a fusion; an operand a fusion only slices (``slice``,
``dynamic-slice``, ``gather``: one layer of a KV cache) counts the slices' bytes.
Parameters, constants, tuples, ``get-tuple-element`` and bitcasts move nothing and
are left out. The ops of a ``while`` body are counted once.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable

from torchtpu.shard.hlo import shapes_bytes

SKINNY = 16  # rows or columns at or below which a dot is a matrix-vector product
CLASSES = ("matmul", "matvec", "conv", "other")

_HEADER = re.compile(r"^(?:ENTRY\s+)?%(?P<name>[\w.\-]+)\s*\((?P<params>.*)\)\s*->.*\{\s*$")
_PARAM = re.compile(r"([\w.\-]+):\s*(\([^()]*\)|[a-z0-9]+\[[0-9,]*\])")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%(?P<name>[\w.\-]+)\s*=\s*"
    r"(?P<type>\([^()]*\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?)\s+"
    r"(?P<op>[\w\-$]+)\((?P<args>[^()]*)\)(?P<rest>.*)$"
)
_ARRAY = re.compile(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]")
_OPERAND = re.compile(r"%([\w.\-]+)")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_DIMS = re.compile(r"(lhs|rhs)_(contracting|batch)_dims=\{([0-9,]*)\}")
_LABELS = re.compile(r"dim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)")
_SLICING = {"slice", "dynamic-slice", "gather"}
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all"}


@dataclasses.dataclass(frozen=True)
class OpCost:
    """One top-level operation: its class (see the module), FLOPs and bytes moved."""

    kind: str
    flops: float
    bytes: float
    name: str = ""


@dataclasses.dataclass
class _Instruction:
    name: str
    type: str
    op: str
    operands: list[str]
    rest: str


def op_costs(hlo_text: str) -> list[OpCost]:
    """The entry computation's operations of an optimised HLO module, by class.

    Example::

        from torchtpu.plan.hlo import op_costs
        ops = op_costs(program.compiled_text())
        sum(o.flops for o in ops if o.kind == "matmul")
    """
    computations, shapes, params, entry = _parse(hlo_text)
    if entry is None:
        raise ValueError("plan: no ENTRY computation in this HLO text (is it a compiled module?)")
    out = []
    for ins in _with_loop_bodies(computations, entry):
        if ins.op in _FREE:
            continue
        nbytes = _type_bytes(ins.type) + _operand_bytes(ins, computations, shapes, params)
        kind, flops = _classify(ins, computations, shapes)
        out.append(OpCost(kind, flops, float(nbytes), ins.name))
    return out


def class_totals(ops: Iterable[OpCost]) -> dict[str, tuple[float, float]]:
    """FLOPs and bytes per class."""
    totals = {k: (0.0, 0.0) for k in CLASSES}
    for o in ops:
        f, b = totals[o.kind]
        totals[o.kind] = (f + o.flops, b + o.bytes)
    return totals


def _parse(
    text: str,
) -> tuple[dict[str, list[_Instruction]], dict[str, str], dict[str, list[str]], str | None]:
    computations: dict[str, list[_Instruction]] = {}
    shapes: dict[str, str] = {}
    params: dict[str, list[str]] = {}
    current: list[_Instruction] | None = None
    entry = None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = computations.setdefault(header["name"], [])
            if line.startswith("ENTRY"):
                entry = header["name"]
            found = _PARAM.findall(header["params"])
            params[header["name"]] = [name for name, _ in found]
            for name, type_ in found:
                shapes[name] = type_
            continue
        if current is None:
            continue
        m = _INSTRUCTION.match(line)
        if m:
            operands = _OPERAND.findall(m["args"])
            ins = _Instruction(m["name"], m["type"], m["op"], operands, m["rest"])
            current.append(ins)
            shapes[ins.name] = ins.type
    return computations, shapes, params, entry


def _operand_bytes(
    ins: _Instruction,
    computations: dict[str, list[_Instruction]],
    shapes: dict[str, str],
    params: dict[str, list[str]],
) -> int:
    called = _CALLS.search(ins.rest) if ins.op == "fusion" else None
    body = computations.get(called[1], []) if called else []
    names = params.get(called[1], []) if called else []
    read: dict[str, int] = {}
    for i, operand in enumerate(ins.operands):
        full = _type_bytes(shapes.get(operand, ""))
        uses = [u for u in body if i < len(names) and names[i] in u.operands]
        if uses and all(u.op in _SLICING for u in uses):
            full = min(full, sum(_type_bytes(u.type) for u in uses))
        read[operand] = max(read.get(operand, 0), full)
    return sum(read.values())


def _with_loop_bodies(computations: dict[str, list[_Instruction]], name: str) -> list[_Instruction]:
    out = []
    for ins in computations.get(name, []):
        if ins.op == "while":
            body = re.search(r"body=%([\w.\-]+)", ins.rest)
            if body:
                out += _with_loop_bodies(computations, body[1])
            continue
        out.append(ins)
    return out


def _classify(
    ins: _Instruction, computations: dict[str, list[_Instruction]], shapes: dict[str, str]
) -> tuple[str, float]:
    inner = [ins]
    called = _CALLS.search(ins.rest)
    if called:
        inner = _nested(computations, called[1])
    convs = [i for i in inner if i.op == "convolution"]
    if convs:
        return "conv", sum(_conv_flops(i, shapes) for i in convs)
    dots = [i for i in inner if i.op == "dot"]
    if dots:
        flops, skinny = 0.0, True
        for d in dots:
            f, rows_or_cols = _dot_flops(d, shapes)
            flops += f
            skinny &= rows_or_cols <= SKINNY
        return ("matvec" if skinny else "matmul"), flops
    return "other", 0.0


def _nested(computations: dict[str, list[_Instruction]], name: str) -> list[_Instruction]:
    out = []
    for ins in computations.get(name, []):
        out.append(ins)
        called = _CALLS.search(ins.rest)
        if called and called[1] != name:
            out += _nested(computations, called[1])
    return out


def _dims(type_text: str) -> list[int]:
    m = _ARRAY.search(type_text)
    return [int(d) for d in m[2].split(",") if d] if m else []


def _dot_flops(ins: _Instruction, shapes: dict[str, str]) -> tuple[float, int]:
    """2 x batch x M x N x K, and min(M, N)."""
    if len(ins.operands) < 2:
        return 0.0, 0
    lhs, rhs = (_dims(shapes.get(o, "")) for o in ins.operands[:2])
    spec = {
        (side, what): [int(d) for d in dims.split(",") if d]
        for side, what, dims in _DIMS.findall(ins.rest)
    }

    def free(dims: list[int], side: str) -> int:
        used = set(spec.get((side, "contracting"), [])) | set(spec.get((side, "batch"), []))
        return math.prod(d for i, d in enumerate(dims) if i not in used)

    k = math.prod(lhs[i] for i in spec.get(("lhs", "contracting"), []) if i < len(lhs))
    batch = math.prod(lhs[i] for i in spec.get(("lhs", "batch"), []) if i < len(lhs))
    m, n = free(lhs, "lhs"), free(rhs, "rhs")
    return 2.0 * batch * m * n * k, min(m, n)


def _conv_flops(ins: _Instruction, shapes: dict[str, str]) -> float:
    labels = _LABELS.search(ins.rest)
    if labels is None or len(ins.operands) < 2:
        return 0.0
    kernel = _dims(shapes.get(ins.operands[1], ""))
    per_output = math.prod(d for d, label in zip(kernel, labels[2], strict=False) if label != "o")
    groups = re.search(r"batch_group_count=(\d+)", ins.rest)
    return 2.0 * math.prod(_dims(ins.type)) * per_output / (int(groups[1]) if groups else 1)


def _type_bytes(type_text: str) -> int:
    return sum(shapes_bytes(type_text))
