"""Planning a job: how fast and how costly a training step would be on each chip.

    plan = torchtpu.plan(train_step, x, y, chips=["local", "h100", "v6e"], tokens=1e9)
    plan.rows       # one dict per chip
    print(plan)     # the table

The modules, in the order a plan is made: ``script`` (a script's step, for
``torchtpu plan script.py``), ``catalog`` (the chips and their sourced figures,
``chips.toml``), ``local`` (this machine's chip, measured), ``hlo`` (the compiled
programs' operations by class), ``model`` (the workload read from the compiled
programs, the per-operation roofline, the collectives, decoding), ``report`` (the
:class:`Plan` and its table), ``chart`` (its PNG).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils import _pytree as pytree

from torchtpu.plan.catalog import Chip, Figure, chip, load_catalog
from torchtpu.plan.model import (
    STRATEGIES,
    Collective,
    DecodeEstimate,
    Estimate,
    Workload,
    analytic_workload,
    decode_estimate,
    estimate,
    min_chips,
    workload_from_programs,
)
from torchtpu.plan.report import DecodePlan, Plan

ChipLike = str | Chip


def plan(
    step_or_model: Any,
    *example_inputs: Any,
    chips: Sequence[ChipLike] | None = None,
    n_chips: int = 1,
    strategy: str = "auto",
    tokens: float | None = None,
    tokens_per_step: float | None = None,
    catalog: dict[str, Chip] | None = None,
    show: bool = False,
) -> Plan:
    """Price one training (or inference) step on each chip in ``chips``.

    ``step_or_model``: a :class:`~torchtpu.CompiledStep` (called once already, or
    given example inputs: it is traced and compiled, not run), a model or
    function with example inputs (captured as ``torch.compile(..., backend="tpu")``
    would, forward and backward through :func:`torchtpu.stages`; the optimizer is
    not in those programs: plan a ``compile_step`` to include it), a list of
    :class:`~torchtpu.Program` s, or a :class:`Workload`.

    ``chips``: catalog keys or :class:`Chip` s, ``"local"`` for this machine
    (measured); default every catalog chip and ``"local"``. ``n_chips``: chips per
    job, each running the compiled step on its own batch (data parallel); the
    ``local`` row is always one chip.
    ``strategy``: ``"auto"`` (data parallel if a chip holds the step, else FSDP on
    enough chips), ``"single"``, ``"dp"`` or ``"fsdp"``. ``tokens``: the job's
    total tokens, for its cost and energy. ``tokens_per_step``: tokens one chip
    processes per step; by default the size of the first integer input of two or
    more dimensions (token ids), else the first input's batch (``samples``).
    ``show``: print the table.

    Example::

        import torch, torchtpu
        model = torch.nn.Linear(64, 64)
        p = torchtpu.plan(model, torch.randn(32, 64), chips=["local"])
        print(p)
        assert p.rows[0]["step_s"] > 0
    """
    workload = workload_of(step_or_model, example_inputs, tokens_per_step)
    keys = list(chips) if chips is not None else [*_default_chips(catalog), "local"]
    estimates = [
        # One local device: this machine is planned as itself, on one chip.
        _estimate(workload, _chip(c, catalog), 1 if c == "local" else n_chips, strategy)
        for c in keys
    ]
    result = Plan(workload, estimates, tokens)
    if show:
        print(result)
    return result


def decode(
    *,
    params: float,
    kv_bytes_per_token: float,
    context: float,
    tokens_per_s_per_query: float,
    bytes_per_param: float = 2.0,
    input_per_output: float = 1.0,
    chips: Sequence[ChipLike] | None = None,
    n_chips: int | None = None,
    catalog: dict[str, Chip] | None = None,
) -> DecodePlan:
    """Serving a decoder at ``tokens_per_s_per_query`` output tokens per second per
    query, on each chip: the batch that speed allows, time per token, the bound, and
    the cost of 1M output tokens with their ``input_per_output`` million input tokens
    (at the default 1.0: 1M in + 1M out). See :func:`~torchtpu.plan.model.decode_estimate`.

    Example::

        import torchtpu.plan
        d = torchtpu.plan.decode(params=70.6e9, kv_bytes_per_token=327_680, context=1500,
                                 tokens_per_s_per_query=30, chips=["h100"], n_chips=8)
        print(d)
    """
    keys = list(chips) if chips is not None else _default_chips(catalog)
    estimates = [
        decode_estimate(
            _chip(c, catalog),
            params=params,
            bytes_per_param=bytes_per_param,
            kv_bytes_per_token=kv_bytes_per_token,
            context=context,
            tokens_per_s_per_query=tokens_per_s_per_query,
            input_per_output=input_per_output,
            n=n_chips,
        )
        for c in keys
    ]
    return DecodePlan(estimates, tokens_per_s_per_query, input_per_output)


def _estimate(w: Workload, c: Chip, n: int, strategy: str) -> Estimate:
    if strategy != "auto":
        return estimate(w, c, n, strategy)
    if w.memory_bytes <= c.memory_bytes.value:
        return estimate(w, c, n, "single" if n == 1 else "dp")
    need = min_chips(w, c, "fsdp")
    if need is None:  # activations alone overflow a chip: report data parallel, not fitting
        return estimate(w, c, n, "single" if n == 1 else "dp")
    return estimate(w, c, max(n, need), "fsdp")


def _chip(c: ChipLike, catalog: dict[str, Chip] | None) -> Chip:
    if isinstance(c, Chip):
        return c
    if c == "local":
        from torchtpu.plan.local import local_chip

        return local_chip()
    return chip(c, catalog)


def _default_chips(catalog: dict[str, Chip] | None) -> list[str]:
    return list(catalog if catalog is not None else load_catalog())


# --- the workload of a step or model ------------------------------------------------------


def workload_of(
    step_or_model: Any, example_inputs: Sequence[Any] = (), tokens_per_step: float | None = None
) -> Workload:
    """The :class:`Workload` of one step: read from its compiled programs."""
    from torchtpu.compile.program import Program
    from torchtpu.stages import stages
    from torchtpu.train.step import CompiledStep

    if isinstance(step_or_model, Workload):
        return step_or_model
    grad_bytes, state_bytes = 0.0, None
    if isinstance(step_or_model, CompiledStep):
        step = step_or_model
        if example_inputs:
            programs = step.stages(*example_inputs).compile()
        else:
            programs = step.executor.programs
            example_inputs = _last_batch(step)
        grad_bytes = _step_grad_bytes(step)
    elif isinstance(step_or_model, Sequence) and all(isinstance(p, Program) for p in step_or_model):
        programs = list(step_or_model)
    else:
        if not example_inputs:
            raise TypeError(
                "plan: a model or function needs example inputs: "
                "torchtpu.plan(model, x, ...) (or pass a compiled step or a Workload)"
            )
        s = stages(step_or_model, *example_inputs)
        programs = s.compile()
        if any(name == "backward" for name, _ in s.graphs):
            params = _params(step_or_model)
            grad_bytes = sum(_nbytes(p) for p in params if p.requires_grad)
            state_bytes = sum(_nbytes(p) for p in params) + grad_bytes
    count, unit = (tokens_per_step, "tokens") if tokens_per_step else _batch_size(example_inputs)
    return workload_from_programs(
        programs, tokens=count, state_bytes=state_bytes, grad_bytes=grad_bytes, unit=unit
    )


def _batch_size(inputs: Sequence[Any]) -> tuple[float, str]:
    tensors = [t for t in pytree.tree_leaves(list(inputs)) if isinstance(t, torch.Tensor)]
    for t in tensors:
        if not t.dtype.is_floating_point and t.dtype != torch.bool and t.dim() >= 2:
            return float(t.numel()), "tokens"
    if tensors and tensors[0].dim() >= 1:
        return float(tensors[0].shape[0]), "samples"
    return 1.0, "steps"


def _last_batch(step: Any) -> list[Any]:
    """The batch tensors (as meta values) of the step's last program: the graph's last
    placeholders, after its state and learning rates (see ``train/trace.py``)."""
    for layout, executor, _ in step._programs.values():
        if executor is step.executor:
            n = layout.n_batch_tensors
            placeholders = [node for node in executor.gm.graph.nodes if node.op == "placeholder"]
            return [node.meta.get("val") for node in placeholders[len(placeholders) - n :]]
    return []


def _step_grad_bytes(step: Any) -> float:
    """Bytes of the gradients a data-parallel step would all-reduce: each trainable
    parameter in the dtype the step holds it on the device."""
    import numpy as np

    total = 0.0
    for i, p in enumerate(step._params()):
        if p.requires_grad:
            shape, dtype = step.store.aval(("param", i))
            total += float(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
    return total


def _params(model: Any) -> list[torch.Tensor]:
    return list(model.parameters()) if isinstance(model, torch.nn.Module) else []


def _nbytes(t: torch.Tensor) -> float:
    return float(t.numel() * t.element_size())


class _CallableModule(types.ModuleType):
    """``torchtpu.plan`` is both this package and the function :func:`plan`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Plan:
        return plan(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "STRATEGIES",
    "Chip",
    "Collective",
    "DecodeEstimate",
    "DecodePlan",
    "Estimate",
    "Figure",
    "Plan",
    "Workload",
    "analytic_workload",
    "chip",
    "decode",
    "decode_estimate",
    "estimate",
    "load_catalog",
    "plan",
    "workload_from_programs",
    "workload_of",
]
