"""Capturing a script's step for ``torchtpu plan script.py``.

The script runs as ``__main__`` (as ``torchtpu run`` runs it) until its step has run
``steps`` times, and is stopped there. Its step is either

- the first :class:`~torchtpu.CompiledStep` it calls (forward, backward and optimizer in
  one program), stopped after ``steps`` calls; or
- the graphs it compiles with ``torch.compile(..., backend="tpu")``:
  the forward, backward and inference graphs' executors, recorded in the order they
  first run. A step there is one call of the first graph to run and everything after it
  until that graph runs again (its backward graphs, the next graphs after a graph
  break); the script is stopped when the first graph is called for the ``steps + 1``-th
  time. The optimizer runs in eager PyTorch there and is not in the plan.

Only the :class:`Workload` is derived here; its figures come from the compiled programs.
"""

from __future__ import annotations

import dataclasses
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


class _StepsDone(BaseException):
    """Stops a script once its step has run enough; a BaseException so that the
    script's own ``except Exception`` does not catch it."""


@dataclasses.dataclass
class ScriptStep:
    """What a script ran: its first compiled step, or its ``torch.compile`` graphs.

    ``executors``: the graphs' executors in first-run order; ``batch``: the first
    graph's inputs other than parameters, as meta tensors (for the token count);
    ``param_bytes`` / ``grad_bytes``: its parameters' bytes, all and trainable."""

    path: str
    step: Any = None
    executors: list[Any] = dataclasses.field(default_factory=list)
    batch: list[torch.Tensor] = dataclasses.field(default_factory=list)
    param_bytes: float = 0.0
    grad_bytes: float = 0.0

    def plannable(self) -> Any:
        """What :func:`torchtpu.plan` takes: the compiled step, or the graphs' workload."""
        from torchtpu.plan import _batch_size, workload_from_programs

        if self.step is not None:
            return self.step
        if not self.executors:
            raise ValueError(
                f"torchtpu plan: {self.path} ran no torchtpu.compile_step and no "
                "torch.compile(..., backend='tpu') graph; compile its training step with one "
                "of them, or call torchtpu.plan(model, *inputs) in it"
            )
        programs = [p for ex in self.executors for p in ex.programs]
        tokens, unit = _batch_size(self.batch)
        trained = any(ex.name == "backward" for ex in self.executors)
        workload = workload_from_programs(
            programs,
            tokens=tokens,
            state_bytes=self.param_bytes + (self.grad_bytes if trained else 0.0),
            grad_bytes=self.grad_bytes if trained else 0.0,
            unit=unit,
        )
        graphs = ", ".join(ex.name for ex in self.executors)
        return dataclasses.replace(
            workload,
            source=f"{workload.source} of torch.compile graphs: {graphs}; an eager optimizer "
            "step is not in them",
        )


def capture_script(path: str, argv: Sequence[str] = (), steps: int = 1) -> ScriptStep:
    """Run the script at ``path`` with ``argv`` until its step has run ``steps`` times.

    Example::

        from torchtpu.plan.script import capture_script
        import torchtpu
        step = capture_script("examples/lm_demo.py", ["--steps", "2"])
        print(torchtpu.plan(step.plannable(), chips=["local", "h100"]))
    """
    from torchtpu.run.executor import GraphExecutor
    from torchtpu.train.step import CompiledStep

    found = ScriptStep(path)
    seen: dict[int, Any] = {}
    calls = [0]
    step_call, graph_call = CompiledStep.__call__, GraphExecutor.__call__

    def step_recording(self: CompiledStep, *a: object, **kw: object) -> object:
        if found.step is None and not found.executors:
            found.step = self
        out = step_call(self, *a, **kw)
        if self is found.step:
            calls[0] += 1
            if calls[0] >= steps:
                raise _StepsDone
        return out

    def graph_recording(self: GraphExecutor, *args: Any) -> list[Any]:
        if found.step is None:
            if id(self) not in seen:
                if not found.executors:
                    _note_first_graph(found, self, args)
                seen[id(self)] = self
                found.executors.append(self)
            if self is found.executors[0]:
                if calls[0] >= steps:
                    raise _StepsDone  # the next step begins: the last one ran whole
                calls[0] += 1
        return graph_call(self, *args)

    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [path, *argv]
    sys.path.insert(0, str(Path(path).resolve().parent))
    CompiledStep.__call__ = step_recording
    GraphExecutor.__call__ = graph_recording
    try:
        runpy.run_path(path, run_name="__main__")
    except _StepsDone:
        pass
    finally:
        CompiledStep.__call__, GraphExecutor.__call__ = step_call, graph_call
        sys.argv, sys.path[:] = saved_argv, saved_path
    return found


def _note_first_graph(found: ScriptStep, executor: Any, args: tuple[Any, ...]) -> None:
    """The first graph's parameters (bytes) and batch (meta tensors), read before the
    call: a boxed call empties its argument list."""
    inputs = list(args[0]) if len(args) == 1 and isinstance(args[0], list) else list(args)
    params = executor.param_names
    for i, value in enumerate(inputs):
        if not isinstance(value, torch.Tensor):
            continue
        if i in params:
            nbytes = float(value.numel() * value.element_size())
            found.param_bytes += nbytes
            if value.requires_grad:
                found.grad_bytes += nbytes
        else:
            found.batch.append(torch.empty_like(value, device="meta"))
