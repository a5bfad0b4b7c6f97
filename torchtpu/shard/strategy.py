"""Strategies: how a model's parameters and a step's batch lie on a mesh.

A :class:`Strategy` is data: a mesh, a list of rules (parameter-name pattern
-> partition spec), the axis FSDP splits every other parameter over, and the
axes the batch is split over. ``compile_step(step, strategy=s)`` places the
step's state by it and compiles the whole step once, as one SPMD program;
XLA propagates the shardings through the step and inserts the collectives.

The ready-made strategies are the same class with other defaults:
:class:`DataParallel`, :class:`FSDP` (ZeRO-3), :class:`TensorParallel`,
:class:`ExpertParallel`, and their hybrids on a 2-D mesh (``FSDP(model=2)`` is
FSDP x TP, ``FSDP(data=2)`` is DP x FSDP, ``TensorParallel(data=2)`` is DP x
TP, ``ExpertParallel(data=2)`` EP x DP, ``ExpertParallel(fsdp=2)`` EP x FSDP).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import torch
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from torchtpu.errors import ShardingError
from torchtpu.lower.dtypes import to_jax_dtype
from torchtpu.shard.mesh import describe_mesh, make_mesh
from torchtpu.shard.rules import (
    EXPERT_AXIS,
    Rule,
    as_rules,
    check_used,
    detect_family,
    first_match,
)

AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class Placement:
    """One tensor's place on the mesh: its spec, the rule that gave it, and why a
    dimension FSDP would split stayed whole (``note``)."""

    name: str
    shape: tuple[int, ...]
    spec: tuple[Any, ...]
    rule: str | None
    note: str = ""

    def shard_shape(self, mesh: Mesh) -> tuple[int, ...]:
        full = zip(self.shape, self._full(), strict=True)
        return tuple(size // _axes_size(mesh, axes) for size, axes in full)

    def _full(self) -> tuple[Any, ...]:
        return self.spec + (None,) * (len(self.shape) - len(self.spec))


def _axes_of(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _axes_size(mesh: Mesh, entry: Any) -> int:
    return math.prod(mesh.shape[a] for a in _axes_of(entry))


class Strategy:
    """Where a model's tensors and a step's batch live on a mesh.

    mesh: a ``jax.sharding.Mesh`` or ``{axis: size}`` (one size may be ``-1``).
    rules: ``[(pattern, spec), ...]`` or a named set (``"llama"``, ``"gpt2"``,
    ``"auto"`` to pick one from the model's layer names); see
    :mod:`torchtpu.shard.rules`.
    fsdp_axis: split every parameter (and its gradient and optimizer state)
    over this axis too, on its largest dimension that divides (ZeRO-3).
    batch_axes: the axes a batch's first dimension is split over.

    Example::

        s = torchtpu.Strategy(mesh={"data": 2, "model": 4},
                              rules=[(r"mlp\\.up\\.weight$", ("model", None)),
                                     (r"mlp\\.down\\.weight$", (None, "model"))],
                              batch_axes=("data",))
        step = torchtpu.compile_step(train_step, strategy=s)
    """

    kind = "Strategy"

    def __init__(
        self,
        mesh: Mesh | Mapping[str, int],
        rules: Any = (),
        *,
        fsdp_axis: str | None = None,
        batch_axes: Sequence[str] = (),
        devices: Sequence[Any] | None = None,
    ) -> None:
        self.mesh = mesh if isinstance(mesh, Mesh) else make_mesh(mesh, devices)
        self._auto = rules == AUTO
        self.rules: list[Rule] = [] if self._auto else as_rules(rules)
        self.fsdp_axis = fsdp_axis
        self.batch_axes = tuple(batch_axes)
        for axis in [*self.batch_axes, *([fsdp_axis] if fsdp_axis else [])]:
            self._check_axis(axis, f"{self.kind}: axis {axis!r}")
        for rule in self.rules:
            for entry in rule.spec:
                for axis in _axes_of(entry):
                    self._check_axis(axis, f"sharding rule {rule.pattern!r} -> {rule.spec}")

    def __repr__(self) -> str:
        rules = "auto" if self._auto else f"{len(self.rules)} rule(s)"
        fsdp = f", fsdp over {self.fsdp_axis!r}" if self.fsdp_axis else ""
        batch = f"batch over {self.batch_axes}"
        return f"{self.kind}({describe_mesh(self.mesh)}, {rules}{fsdp}, {batch})"

    def _check_axis(self, axis: str, what: str) -> None:
        if axis not in self.mesh.shape:
            raise ShardingError(
                f"{what}: no mesh axis {axis!r}; the mesh has {dict(self.mesh.shape)}"
            )

    # --- placing parameters -----------------------------------------------------

    def resolve_rules(self, names: Sequence[str]) -> list[Rule]:
        """The rules for a model with these parameter names: ``"auto"`` picks a set."""
        if not self._auto:
            return self.rules
        family = detect_family(names)
        if family is None:
            sample = ", ".join(list(names)[:6])
            raise ShardingError(
                f"{self.kind}(rules='auto'): found neither Llama-style (q_proj, o_proj, "
                f"gate_proj, ...) nor GPT-2-style (attn.c_attn, mlp.c_fc) layers among the "
                f"parameters ({sample}, ...). Give rules=[(pattern, spec), ...]; see "
                "docs/scaling.md#rules."
            )
        return as_rules(family)

    def plan(
        self, named: Sequence[tuple[str, tuple[int, ...]]], check: bool = True
    ) -> dict[str, Placement]:
        """Each parameter's :class:`Placement`, by name; checks every size, and (with
        ``check``) that every required rule matches some parameter."""
        names = [n for n, _ in named]
        rules = self.resolve_rules(names)
        if check:
            check_used(rules, names)
        return {name: self._place(name, tuple(shape), rules) for name, shape in named}

    def _place(self, name: str, shape: tuple[int, ...], rules: list[Rule]) -> Placement:
        rule = first_match(rules, name)
        spec = list(rule.spec) if rule is not None else []
        where = f"rule {rule.pattern!r} -> {rule.spec}" if rule else "the strategy"
        if len(spec) > len(shape):
            raise ShardingError(
                f"parameter {name!r} of shape {list(shape)}: {where} gives {len(spec)} "
                f"entries for a {len(shape)}-d tensor; give one entry per dimension"
            )
        spec += [None] * (len(shape) - len(spec))
        for dim, entry in enumerate(spec):
            n = _axes_size(self.mesh, entry)
            if n > 1 and shape[dim] % n:
                raise ShardingError(
                    f"parameter {name!r} of shape {list(shape)}: dimension {dim} ({shape[dim]}) "
                    f"does not divide by mesh axis {entry!r} of size {n} ({where}). Use a "
                    f"mesh axis size that divides {shape[dim]}, or add a rule before it that "
                    f"keeps it whole: ({name!r}, ())"
                )
        note = ""
        used = {a for entry in spec for a in _axes_of(entry)}
        if self.fsdp_axis and self.fsdp_axis not in used:
            n = self.mesh.shape[self.fsdp_axis]
            free = [d for d in range(len(shape)) if spec[d] is None and shape[d] % n == 0]
            free = [d for d in free if shape[d] >= n]
            # A dimension tensor parallelism splits already can take the FSDP axis too.
            shared = [
                d
                for d in range(len(shape))
                if spec[d] is not None and shape[d] % (_axes_size(self.mesh, spec[d]) * n) == 0
            ]
            if free:
                dim = max(free, key=lambda d: (shape[d], -d))
                spec[dim] = self.fsdp_axis
            elif shared:
                dim = max(shared, key=lambda d: (shape[d], -d))
                spec[dim] = (*_axes_of(spec[dim]), self.fsdp_axis)
            elif n > 1:
                note = f"whole on {self.fsdp_axis!r}: no dimension divides by {n}"
        while spec and spec[-1] is None:
            spec.pop()
        return Placement(name, shape, tuple(spec), rule.pattern if rule else None, note)

    def sharding(self, spec: Sequence[Any]) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(*spec))

    # --- placing a batch ----------------------------------------------------------

    def batch_sharding(self, what: str, shape: Sequence[int], dtype: Any) -> NamedSharding:
        """The sharding of one batch tensor: its first dimension over the batch axes."""
        if not shape or not self.batch_axes:
            return self.sharding(())
        n = _axes_size(self.mesh, self.batch_axes)
        if shape[0] % n:
            raise ShardingError(
                f"{what} of shape {list(shape)} and dtype {dtype}: its first dimension "
                f"({shape[0]}) is the batch, split over mesh axes {self.batch_axes} of "
                f"{n} devices, and does not divide by {n}. Make the global batch a multiple "
                f"of {n} (drop_last=True in the DataLoader keeps the last batch full)."
            )
        return self.sharding((self.batch_axes if len(self.batch_axes) > 1 else self.batch_axes[0],))

    def place_batch(self, what: str, value: Any) -> jax.Array:
        """A batch tensor (torch, numpy or a device array) as a global array on the
        mesh. With several processes each gives its own rows, assembled with
        ``jax.make_array_from_process_local_data``."""
        if isinstance(value, jax.Array):
            sharding = self.batch_sharding(what, value.shape, value.dtype)
            if value.sharding == sharding:
                return value
            if jax.process_count() == 1:
                return jax.device_put(value, sharding)
            value = np.asarray(value)
        elif isinstance(value, torch.Tensor):
            from torchtpu.lower.dtypes import to_numpy

            if value.device.type == "tpu":
                from torchtpu.device.tensor import device_array

                return self.place_batch(what, device_array(value, "compiled_input"))
            value = to_numpy(value.detach().cpu())
        host = np.asarray(value)
        global_shape = (host.shape[0] * jax.process_count(), *host.shape[1:]) if host.ndim else ()
        sharding = self.batch_sharding(what, global_shape, host.dtype)
        return jax.make_array_from_process_local_data(sharding, host, global_shape)

    # --- seeing it ------------------------------------------------------------------

    def describe(self, model: torch.nn.Module, step: Any = None, *, file: Any = None) -> Any:
        """Print (and return) each parameter's sharding on the mesh; given a compiled
        step, also the shardings XLA chose for its program and its collectives."""
        from torchtpu.shard.describe import Description

        description = Description.of(self, model, step)
        print(description.table(), file=file)
        return description


class DataParallel(Strategy):
    """Every device holds the whole model and a slice of the batch; gradients are
    all-reduced. (DP x FSDP is ``FSDP(data=...)``, DP x TP ``TensorParallel(data=...)``.)

    Example::

        step = torchtpu.compile_step(train_step, strategy=torchtpu.DataParallel())
    """

    kind = "DataParallel"

    def __init__(self, devices: Sequence[Any] | None = None) -> None:
        super().__init__({"data": -1}, batch_axes=("data",), devices=devices)


class FSDP(Strategy):
    """Fully sharded data parallel (ZeRO-3): parameters, gradients and optimizer
    state split over the ``fsdp`` axis, gathered where the step needs them.

    ``data=k``: DP x FSDP, ``k`` replicas of an FSDP group. ``model=k``: FSDP x TP,
    with tensor-parallel ``rules`` (default ``"auto"``) over a ``model`` axis of ``k``.

    Example::

        step = torchtpu.compile_step(train_step, strategy=torchtpu.FSDP(model=2))
    """

    kind = "FSDP"

    def __init__(
        self,
        *,
        data: int = 1,
        model: int = 1,
        rules: Any = None,
        devices: Sequence[Any] | None = None,
    ) -> None:
        axes: dict[str, int] = {"data": data} if data > 1 else {}
        axes["fsdp"] = -1
        if model > 1:
            axes["model"] = model
        if rules is None:
            rules = AUTO if model > 1 else ()
        batch = ("data", "fsdp") if data > 1 else ("fsdp",)
        super().__init__(axes, rules, fsdp_axis="fsdp", batch_axes=batch, devices=devices)


class TensorParallel(Strategy):
    """Megatron tensor parallelism: attention and MLP weights split by column and
    by row over the ``model`` axis (``rules``, default ``"auto"``: the Llama or
    GPT-2 set, by the model's layer names). ``data=k``: DP x TP.

    Example::

        step = torchtpu.compile_step(train_step, strategy=torchtpu.TensorParallel("llama"))
    """

    kind = "TensorParallel"

    def __init__(
        self, rules: Any = AUTO, *, data: int = 1, devices: Sequence[Any] | None = None
    ) -> None:
        axes: dict[str, int] = {"data": data} if data > 1 else {}
        axes["model"] = -1
        batch = ("data",) if data > 1 else ()
        super().__init__(axes, rules, batch_axes=batch, devices=devices)


class ExpertParallel(Strategy):
    """Expert parallelism: the stacked expert weights of mixture-of-experts layers
    (and their gradients and optimizer state) split by expert over the ``expert``
    axis (``rules``, default the ``"experts"`` set), the batch split over every
    axis, everything else replicated. Under it the grouped matmuls of the experts
    run as a ``shard_map``: each device computes its own experts, the tokens
    travel to them and back by all-to-all (:mod:`torchtpu.shard.expert`).

    ``data=k``: EP x DP, ``k`` replicas of the expert group. ``fsdp=k``: EP x FSDP,
    every parameter also split over an ``fsdp`` axis of ``k`` (ZeRO-3).

    Example::

        step = torchtpu.compile_step(train_step, strategy=torchtpu.ExpertParallel())
    """

    kind = "ExpertParallel"

    def __init__(
        self,
        rules: Any = "experts",
        *,
        data: int = 1,
        fsdp: int = 1,
        devices: Sequence[Any] | None = None,
    ) -> None:
        axes: dict[str, int] = {"data": data} if data > 1 else {}
        if fsdp > 1:
            axes["fsdp"] = fsdp
        axes[EXPERT_AXIS] = -1
        super().__init__(
            axes,
            rules,
            fsdp_axis="fsdp" if fsdp > 1 else None,
            batch_axes=tuple(axes),
            devices=devices,
        )


def shape_bytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(to_jax_dtype(dtype)).itemsize
