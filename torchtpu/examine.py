"""Which of a model's ATen ops torchtpu lowers, found before anything runs on XLA.

``examine`` captures the graphs exactly as the ``tpu`` backend would see them
(TorchDynamo, then AOTAutograd with torchtpu's decomposition table, forward and
backward when anything requires grad) and looks every op up in the lowering
registry. A library op with no lowering whose Python kernel lowers is listed
as "lowers (through its own implementation)" (that kernel is traced to ATen ops
with ``make_fx``). Nothing is traced with JAX or compiled: the captured graphs
run in eager PyTorch once, to reach the backward.

    report = torchtpu.examine(model, torch.randn(2, 4))
    print(report)

From a shell, with a factory returning ``(model, example_inputs)``::

    python -m torchtpu.examine my_project.models:tiny_model
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib
import operator
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
from torch._functorch.aot_autograd import make_boxed_func

from torchtpu.capture.backend import aot_backend
from torchtpu.errors import describe_value
from torchtpu.lower.custom import THROUGH_IMPLEMENTATION
from torchtpu.lower.interpreter import PYTHON_FUNCTIONS, lowering_status, node_op
from torchtpu.lower.registry import lookup

LOWERS = "lowers"
# A library op with no lowering of its own, lowered by tracing its Python kernel
# (torchtpu.lower.custom).
LOWERS_THROUGH_IMPLEMENTATION = "lowers (through its own implementation)"
FALLS_BACK = "falls back"


@dataclasses.dataclass
class OpUse:
    """One ATen op of the captured graphs: where it occurs and whether it lowers."""

    op: str
    status: str
    count: int
    graphs: list[str]
    example: str


@dataclasses.dataclass
class ExamineReport:
    """What :func:`examine` found. ``print(report)`` shows it as a table.

    ``ops`` lists every distinct op (ones that fall back first), ``graphs`` the
    kind of each captured ATen graph (``forward``, ``backward`` or
    ``inference``), ``graph_breaks`` Dynamo's reasons for splitting the model.
    """

    ops: list[OpUse]
    graphs: list[str]
    graph_breaks: list[str]

    @property
    def counts(self) -> dict[str, int]:
        """Distinct ops per status, e.g. ``{"lowers": 12, "falls back": 1}``; ops that
        lower through their own implementation count as lowering."""
        counted = collections.Counter(use.status for use in self.ops)
        lowers = counted[LOWERS] + counted[LOWERS_THROUGH_IMPLEMENTATION]
        return {LOWERS: lowers, FALLS_BACK: counted[FALLS_BACK]}

    @property
    def through_implementation(self) -> list[str]:
        """Library ops lowered by tracing their own Python implementation."""
        return [use.op for use in self.ops if use.status == LOWERS_THROUGH_IMPLEMENTATION]

    @property
    def falls_back(self) -> list[str]:
        return [use.op for use in self.ops if use.status == FALLS_BACK]

    @property
    def fully_lowered(self) -> bool:
        """True when every op lowers and Dynamo captured the model without a break."""
        return not self.falls_back and not self.graph_breaks

    def __str__(self) -> str:
        counts = self.counts
        kinds = ", ".join(self.graphs) or "none"
        through = len(self.through_implementation)
        through_text = f" ({through} through their own implementation)" if through else ""
        lines = [
            f"torchtpu.examine: {len(self.graphs)} ATen graph(s) ({kinds}), "
            f"{len(self.graph_breaks)} Dynamo graph break(s)",
            f"  {counts[LOWERS]} op(s) lower to XLA{through_text}, {counts[FALLS_BACK]} fall(s) "
            "back to eager PyTorch on the CPU (an error in strict mode)",
        ]
        if self.ops:
            width = max(len(use.op) for use in self.ops)
            state = max(10, *(len(use.status) for use in self.ops))
            lines.append("")
            lines.append(f"  {'status':<{state}}  {'nodes':>5}  {'op':<{width}}  graphs")
            for use in self.ops:
                graphs = ",".join(use.graphs)
                example = f"  e.g. {use.example}" if use.status == FALLS_BACK else ""
                lines.append(
                    f"  {use.status:<{state}}  {use.count:>5}  {use.op:<{width}}  {graphs}{example}"
                )
        for reason in self.graph_breaks:
            lines.append(f"  graph break: {reason}")
        return "\n".join(lines)

    __repr__ = __str__


def examine(model_or_fn: Callable[..., Any], *example_inputs: Any) -> ExamineReport:
    """List the ATen ops ``model_or_fn`` becomes and whether torchtpu lowers each.

    Captures like ``torch.compile(model_or_fn, backend="tpu")`` without tracing
    or compiling anything for XLA. The model runs once in eager PyTorch (and
    its backward, through ``torch.autograd.grad``, when parameters or inputs
    require grad; no ``.grad`` is written). Resets Dynamo's caches first, as
    ``torch._dynamo.reset()`` does, so every graph is captured afresh.

    Example::

        import torch, torchtpu
        report = torchtpu.examine(torch.nn.Linear(4, 2), torch.randn(3, 4))
        assert report.fully_lowered
    """
    graphs: list[tuple[str, torch.fx.GraphModule]] = []

    def compiler(name: str) -> Callable[..., Any]:
        def capture(gm: torch.fx.GraphModule, inputs: Sequence[Any]) -> Any:
            graphs.append((name, gm))
            return make_boxed_func(gm.forward)

        return capture

    backend = aot_backend(compiler)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(model_or_fn, backend=backend, dynamic=False)
    outputs = compiled(*example_inputs)
    run_backward(model_or_fn, example_inputs, outputs)
    breaks = [" ".join(str(r).split())[:200] for r in torch._dynamo.utils.counters["graph_break"]]
    return ExamineReport(_op_uses(graphs), [name for name, _ in graphs], breaks)


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def run_backward(model_or_fn: Any, inputs: Sequence[Any], outputs: Any) -> None:
    """Run the backward of the captured graphs once, so AOTAutograd compiles it."""
    params = list(model_or_fn.parameters()) if isinstance(model_or_fn, torch.nn.Module) else []
    wrt = [t for t in params + _tensors(list(inputs)) if t.requires_grad]
    outs = [t for t in _tensors(outputs) if t.requires_grad]
    if wrt and outs:
        cotangents = [torch.ones_like(t) for t in outs]
        torch.autograd.grad(outs, wrt, cotangents, allow_unused=True)


def _op_uses(graphs: list[tuple[str, torch.fx.GraphModule]]) -> list[OpUse]:
    uses: dict[str, OpUse] = {}
    for name, gm in graphs:
        for node in gm.graph.nodes:
            if node.op != "call_function" or node.target is operator.getitem:
                continue
            key = str(node_op(node))
            status, reason = _status(node)
            if key not in uses:
                uses[key] = OpUse(key, status, 0, [], _example(node, reason))
            use = uses[key]
            if status == FALLS_BACK and use.status != FALLS_BACK:
                # Lowered for some calls, refused for this one (its supports= check).
                use.status, use.example = FALLS_BACK, _example(node, reason)
            use.count += 1
            if name not in use.graphs:
                use.graphs.append(name)
    return sorted(uses.values(), key=lambda u: (u.status != FALLS_BACK, u.op))


def _status(node: torch.fx.Node) -> tuple[str, str]:
    """What the backend would decide for this node, before tracing anything: the
    registry, and the lowering's ``supports=`` check of these arguments."""
    try:
        status, reason = lowering_status(node)
    except TypeError:  # an unhashable target can have no lowering
        return FALLS_BACK, "no lowering"
    if status != "lowers":
        return FALLS_BACK, reason
    lowering = lookup(node_op(node)) if node.target not in PYTHON_FUNCTIONS else None
    if lowering is not None and lowering.via == THROUGH_IMPLEMENTATION:
        return LOWERS_THROUGH_IMPLEMENTATION, ""
    return LOWERS, ""


def _example(node: torch.fx.Node, reason: str = "") -> str:
    def meta(value: Any) -> Any:
        if isinstance(value, torch.fx.Node):
            return value.meta.get("val", value.name)
        if isinstance(value, (list, tuple)):
            return type(value)(meta(v) for v in value)
        return value

    args = [describe_value(meta(a)) for a in node.args]
    args += [f"{k}={describe_value(meta(v))}" for k, v in node.kwargs.items()]
    call = f"({', '.join(args)})"
    return f"{call}: {reason}" if reason else call


def _load(spec: str) -> tuple[Any, tuple[Any, ...]]:
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit(f"torchtpu examine: expected module:factory, got {spec!r}")
    made = getattr(importlib.import_module(module_name), attr)()
    if not (isinstance(made, tuple) and len(made) == 2):
        raise SystemExit(
            f"torchtpu examine: {spec}() must return (model_or_fn, example_inputs), "
            f"got {type(made).__name__}"
        )
    model, inputs = made
    return model, tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)


def main(argv: Sequence[str] | None = None) -> int:
    """``torchtpu examine module:factory``: print the report; exit 1 if an op falls back.

    ``factory`` is called with no arguments and returns ``(model_or_fn,
    example_inputs)``, e.g. ``return torch.nn.Linear(4, 2), (torch.randn(3, 4),)``.
    """
    parser = argparse.ArgumentParser(
        prog="torchtpu examine",
        description="List a model's ATen ops and whether torchtpu lowers each to XLA.",
    )
    parser.add_argument("factory", help="module:function returning (model_or_fn, example_inputs)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    model, inputs = _load(args.factory)
    report = examine(model, *inputs)
    print(report)
    return 0 if not report.falls_back else 1


if __name__ == "__main__":
    sys.exit(main())
