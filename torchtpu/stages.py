"""The pipeline's stages as values you can stop at and print, in the manner of JAX's
traced -> lowered -> compiled.

    s = torchtpu.stages(model, x)       # the captured ATen graphs (nothing compiled)
    print(s.graph_code())               # stage 1: each graph, as Python code
    for seg in s.lower(): print(seg)    # stage 2: each XLA segment's StableHLO
    for p in s.compile(): print(p)      # stage 3: compiled programs, cost and memory
    print(s)                            # all three

``torchtpu.stages`` captures exactly as ``torch.compile(model, backend="tpu")``
does (TorchDynamo, AOTAutograd with torchtpu's decompositions, forward and
backward when anything requires grad), partitions each graph as the backend
would, and lowers and compiles each XLA segment for the shapes the graph
recorded, through the same cache the backend uses: a later call of the
compiled model finds these programs. A :class:`~torchtpu.CompiledStep` gives
the same object for its whole-step graph (``step.stages(*args)``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
from torch._functorch.aot_autograd import make_boxed_func

from torchtpu.compile.program import Lowered, Program
from torchtpu.config import options_with
from torchtpu.run.executor import GraphExecutor


@dataclasses.dataclass
class LoweredSegment:
    """One XLA segment of a captured graph, lowered to StableHLO."""

    graph: str
    index: int
    nodes: int
    lowered: Lowered | None

    def as_text(self) -> str:
        if self.lowered is None:
            return "(input sizes depend on data: lowered when the graph runs)"
        return self.lowered.as_text()

    def __str__(self) -> str:
        return f"# {self.graph}, XLA segment {self.index} ({self.nodes} nodes)\n{self.as_text()}"


class Stages:
    """The captured graphs of a model or step, and the way to their programs."""

    def __init__(self, executors: Sequence[tuple[str, GraphExecutor]]) -> None:
        self.executors = list(executors)

    @property
    def graphs(self) -> list[tuple[str, torch.fx.GraphModule]]:
        """Each captured ATen graph, named ``forward``, ``backward``, ``inference`` or
        ``train_step``."""
        return [(name, ex.gm) for name, ex in self.executors]

    def graph_code(self) -> str:
        """Stage 1: every captured graph as readable Python, with its partition."""
        parts = []
        for name, ex in self.executors:
            segments = ", ".join(str(s) for s in ex.segments)
            parts.append(f"# {name} graph: {ex!r}\n# segments: {segments}\n{ex.gm.code.strip()}")
        return "\n\n".join(parts)

    def lower(self) -> list[LoweredSegment]:
        """Stage 2: each XLA segment traced and lowered to StableHLO (not compiled)."""
        out = []
        for name, ex in self.executors:
            for index, (segment, lowered) in enumerate(ex.lower()):
                out.append(LoweredSegment(name, index, len(segment.nodes), lowered))
        return out

    def compile(self) -> list[Program]:
        """Stage 3: each XLA segment's compiled program, with ``cost_analysis()`` and
        ``memory_analysis()``. Programs go into (or come from) the one cache."""
        return [p for _, ex in self.executors for _, p in ex.compile() if p is not None]

    def cost(self) -> dict[str, float]:
        """Total FLOPs and bytes accessed over the compiled programs (XLA's estimate)."""
        total = {"flops": 0.0, "bytes accessed": 0.0}
        for program in self.compile():
            cost = program.cost_analysis()
            for key in total:
                total[key] += float(cost.get(key, 0.0))
        return total

    def __str__(self) -> str:
        lowered = "\n\n".join(str(seg) for seg in self.lower())
        compiled = []
        for program in self.compile():
            memory = program.memory_analysis()
            compiled.append(
                f"{program!r}\n  cost: {program.cost_analysis()}\n  memory: {memory}\n"
                f"{program.compiled_text()}"
            )
        return (
            "=== stage 1: captured ATen graphs ===\n"
            f"{self.graph_code()}\n\n"
            "=== stage 2: lowered StableHLO ===\n"
            f"{lowered}\n\n"
            "=== stage 3: compiled XLA programs ===\n" + "\n\n".join(compiled)
        )

    def __repr__(self) -> str:
        names = ", ".join(name for name, _ in self.executors)
        return f"Stages({names})"


def stages(
    model_or_fn: Callable[..., Any], *example_inputs: Any, options: dict[str, Any] | None = None
) -> Stages:
    """Capture ``model_or_fn`` as ``torch.compile(model_or_fn, backend="tpu")`` would and
    return its :class:`Stages`.

    The captured graphs run once in eager PyTorch (and their backward, through
    ``torch.autograd.grad``, when parameters or inputs require grad; no
    ``.grad`` is written); nothing runs on XLA. Resets Dynamo's caches first.
    A :class:`~torchtpu.CompiledStep` gives the stages of its whole-step graph
    for these inputs.

    Example::

        import torch, torchtpu
        s = torchtpu.stages(torch.nn.Linear(4, 2), torch.randn(3, 4))
        print(s.graph_code())
        assert s.compile()[0].cost_analysis()["flops"] > 0
    """
    from torchtpu.capture.backend import aot_backend
    from torchtpu.examine import run_backward
    from torchtpu.train.step import CompiledStep

    if isinstance(model_or_fn, CompiledStep):
        return model_or_fn.stages(*example_inputs)
    opts = options_with(options, "torchtpu.stages")
    executors: list[tuple[str, GraphExecutor]] = []

    def compiler(name: str) -> Callable[..., Any]:
        def capture(gm: torch.fx.GraphModule, inputs: Sequence[Any]) -> Any:
            executors.append((name, GraphExecutor(gm, opts, name=name)))
            return make_boxed_func(gm.forward)

        return capture

    torch._dynamo.reset()
    compiled = torch.compile(model_or_fn, backend=aot_backend(compiler), dynamic=False)
    outputs = compiled(*example_inputs)
    run_backward(model_or_fn, example_inputs, outputs)
    return Stages(executors)
