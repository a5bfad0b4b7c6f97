"""What a strategy does to a model: each parameter's sharding, the shardings XLA
chose for the compiled step, and the step's collectives."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from torchtpu.shard import hlo
from torchtpu.shard.mesh import describe_mesh
from torchtpu.shard.strategy import Placement, Strategy, shape_bytes


@dataclasses.dataclass
class Row:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    spec: tuple[Any, ...]
    shard_shape: tuple[int, ...]
    bytes_per_device: int
    note: str
    xla_in: str = ""  # the program's input sharding for it, as XLA chose
    xla_out: str = ""


@dataclasses.dataclass
class Description:
    """``rows``: one per parameter; ``collectives``: the compiled step's, if any."""

    strategy: Strategy
    rows: list[Row]
    collectives: list[hlo.Collective]
    compiled: bool

    @classmethod
    def of(cls, strategy: Strategy, model: torch.nn.Module, step: Any = None) -> Description:
        named = list(model.named_parameters())
        if step is not None and getattr(step, "strategy", None) is strategy:
            placements = step.placements()
        else:
            placements = strategy.plan([(n, tuple(p.shape)) for n, p in named])
        xla_in, xla_out, found = _program_shardings(step) if step is not None else ({}, {}, [])
        rows = []
        for name, p in named:
            placement: Placement = placements[name]
            shard = placement.shard_shape(strategy.mesh)
            rows.append(
                Row(
                    name,
                    tuple(p.shape),
                    p.dtype,
                    placement.spec,
                    shard,
                    shape_bytes(shard, p.dtype),
                    placement.note,
                    xla_in.get(name, ""),
                    xla_out.get(name, ""),
                )
            )
        return cls(strategy, rows, found, step is not None and bool(xla_in))

    @property
    def bytes_per_device(self) -> int:
        return sum(r.bytes_per_device for r in self.rows)

    @property
    def total_bytes(self) -> int:
        return sum(shape_bytes(r.shape, r.dtype) for r in self.rows)

    def __repr__(self) -> str:
        return (
            f"Description({self.strategy.kind} on {describe_mesh(self.strategy.mesh)}: "
            f"{len(self.rows)} parameters, {self.bytes_per_device / 2**20:.2f} MiB of "
            f"{self.total_bytes / 2**20:.2f} MiB per device, "
            f"{len(self.collectives)} collectives)"
        )

    def table(self) -> str:
        head = ["parameter", "shape", "spec", "per device", "MiB/dev"]
        if self.compiled:
            head += ["XLA in", "XLA out"]
        lines = [
            f"{self.strategy!r}",
            "| " + " | ".join(head) + " |",
            "|" + " --- |" * len(head),
        ]
        for r in self.rows:
            spec = spec_text(r.spec)
            if r.note:
                spec += f" [{r.note}]"
            cells = [r.name, str(list(r.shape)), spec, str(list(r.shard_shape))]
            cells.append(f"{r.bytes_per_device / 2**20:.3f}")
            if self.compiled:
                cells += [r.xla_in or "?", r.xla_out or "?"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append(
            f"parameters: {self.total_bytes / 2**20:.2f} MiB in all, "
            f"{self.bytes_per_device / 2**20:.2f} MiB per device"
        )
        if self.compiled:
            table = hlo.summary(self.collectives)
            if not table:
                lines.append("collectives in the compiled step: none")
            for kind, row in sorted(table.items()):
                lines.append(
                    f"collectives: {int(row['count'])} x {kind}, "
                    f"{row['bytes'] / 2**20:.2f} MiB, {row['wire_bytes'] / 2**20:.2f} MiB sent "
                    "per device"
                )
        return "\n".join(lines)


def _program_shardings(step: Any) -> tuple[dict[str, str], dict[str, str], list]:
    """For a compiled step: each parameter's input and output sharding in its
    program, as XLA chose them, and the program's collectives."""
    try:
        executor = step.executor
    except Exception:  # not called yet: nothing compiled to read
        return {}, {}, []
    xla = [s for s in executor.segments if not s.eager and not s.sized]
    programs = executor.programs
    if len(xla) != 1 or not programs:
        return {}, {}, []
    segment, program = xla[0], programs[-1]
    compiled = program.compiled
    names = step._param_names
    n_params = len(names)
    index = {node: i for i, node in enumerate(executor.placeholders)}
    in_shardings = list(compiled.input_shardings[0])
    if program.uses_rng:
        in_shardings = in_shardings[1:]
    xla_in: dict[str, str] = {}
    if len(in_shardings) == len(segment.inputs):
        for node, sharding in zip(segment.inputs, in_shardings, strict=True):
            i = index.get(node)
            if i is not None and i < n_params:
                xla_in[names[i]] = _spec_text(sharding)
    xla_out: dict[str, str] = {}
    out_shardings = jax_leaves(compiled.output_shardings)
    outputs = executor.output_node.args[0]
    produced = {node: j for j, node in enumerate(segment.outputs)}
    positions = [pos for pos in sorted(executor.out_shardings)]
    # The state outputs follow the user's outputs in the order of the state inputs.
    for k, pos in enumerate(positions[:n_params]):
        j = produced.get(outputs[pos])
        if j is not None and j < len(out_shardings):
            xla_out[names[k]] = _spec_text(out_shardings[j])
    found = hlo.collectives(program.compiled_text(), step.strategy.mesh.devices.size)
    return xla_in, xla_out, found


def jax_leaves(tree: Any) -> list[Any]:
    import jax

    return jax.tree_util.tree_leaves(tree, is_leaf=lambda x: hasattr(x, "spec"))


def _spec_text(sharding: Any) -> str:
    spec = getattr(sharding, "spec", None)
    return str(sharding) if spec is None else spec_text(tuple(spec))


def spec_text(spec: tuple[Any, ...]) -> str:
    """``("fsdp", ("model", "data"), None)`` as ``(fsdp, model+data)``."""
    entries = ["+".join(e) if isinstance(e, (tuple, list)) else str(e) for e in spec]
    while entries and entries[-1] == "None":
        entries.pop()
    return "(" + ", ".join(entries) + ")" if entries else "replicated"
