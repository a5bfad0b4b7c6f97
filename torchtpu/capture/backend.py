"""The ``tpu`` backend of ``torch.compile``.

It is registered through the ``torch_dynamo_backends`` entry point, so
``torch.compile(model, backend="tpu")`` works without ``import torchtpu``.
``options=`` of ``torch.compile`` overrides :class:`torchtpu.config.Options`
for that model, e.g. ``options={"strict": True}``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
from torch._dynamo.backends.common import aot_autograd

from torchtpu.capture.bucket import bucketed, source_name
from torchtpu.config import options_with
from torchtpu.decompose import decomposition_table
from torchtpu.metrics import bump
from torchtpu.run.executor import GraphExecutor
from torchtpu.runtime.device import platform_scope


def aot_backend(compiler_for: Callable[[str], Callable[..., Any]]) -> Any:
    """AOTAutograd set up as the ``tpu`` backend uses it (torchtpu's decompositions),
    with ``compiler_for(name)`` compiling the "forward", "backward" and "inference"
    graphs. ``torchtpu.examine`` captures through this too, so it sees what we run."""
    return aot_autograd(
        fw_compiler=compiler_for("forward"),
        bw_compiler=compiler_for("backward"),
        inference_compiler=compiler_for("inference"),
        decompositions=decomposition_table(),
    )


def tpu_backend(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    options: dict[str, Any] | None = None,
    **_: Any,
) -> Any:
    """Compile a Dynamo graph for XLA: ``torch.compile(model, backend="tpu")``.

    Example::

        model = torch.compile(torch.nn.Linear(4, 4), backend="tpu")
        model(torch.randn(2, 4))
    """
    opts = options_with(options, "torch.compile(backend='tpu')")
    if opts.platform == "auto":  # TORCHTPU_PLATFORM=auto: time each platform present
        from torchtpu.capture.auto import choose

        return choose(gm, example_inputs, options, eager=False)
    bump("graphs")
    # A platform named for this graph (the auto choice's candidates) holds for its
    # forward and backward programs, whatever the process-wide option says.
    pinned = (options or {}).get("platform")

    # The user's names for the graph's inputs (``L['x']``), for recompile reports:
    # AOTAutograd's forward takes them in the same order.
    names = [source_name(n) for n in gm.graph.nodes if n.op == "placeholder"]
    # Parameters by their name in the model, for a strategy's rules.
    params = {
        i: module_path(names[i])
        for i, v in enumerate(example_inputs)
        if isinstance(v, torch.nn.Parameter) and i < len(names)
    }

    def compiler(name: str):
        def compile_graph(graph: torch.fx.GraphModule, inputs: Sequence[Any]) -> GraphExecutor:
            first = name in {"forward", "inference"}
            executor = GraphExecutor(
                graph,
                opts,
                name=name,
                input_names=names if name == "forward" else None,
                param_names=params if first else None,
            )
            return executor if pinned is None else _Pinned(executor, pinned)

        return compile_graph

    compiled = aot_backend(compiler)(gm, example_inputs)
    return bucketed(compiled, gm, opts.bucket) if opts.bucket else compiled


class _Pinned:
    """A graph's executor that runs on ``platform`` (see :func:`platform_scope`)."""

    def __init__(self, executor: GraphExecutor, platform: str) -> None:
        self.executor = executor
        self.platform = platform
        self._boxed_call = True

    def __call__(self, *args: Any) -> list[Any]:
        with platform_scope(self.platform):
            return self.executor(*args)


def module_path(source: str) -> str:
    """A Dynamo source of a parameter as its name in the model:
    ``L['self']._modules['layers']._modules['0']._parameters['weight']`` (or
    ``L['self'].layers[0].weight``) is ``layers.0.weight``."""
    rest = source.split("]", 1)[1] if source.startswith("L[") else source
    parts = []
    for key, attr, index in re.findall(r"\['([^']+)'\]|\.(\w+)|\[(\d+)\]", rest):
        part = key or attr or index
        if part not in {"_modules", "_parameters", "_buffers"}:
            parts.append(part)
    return ".".join(parts)


_ROUTED = False


def route_default_backend() -> None:
    """``torch.compile(model)`` with PyTorch's default backend, on tpu tensors, compiles
    with the ``tpu`` backend: inductor cannot generate code for this device, so
    there is nothing else it could do. Said once, at info level. Graphs on other
    devices still go to inductor."""
    global _ROUTED
    if _ROUTED:
        return
    _ROUTED = True
    inductor = torch._TorchCompileInductorWrapper
    original = inductor.__call__

    def __call__(self: Any, model_: torch.fx.GraphModule, inputs_: Sequence[Any]) -> Any:
        if any(_on_tpu(x) for x in inputs_):
            _say_routed()
            return tpu_backend(model_, inputs_)
        return original(self, model_, inputs_)

    inductor.__call__ = __call__


def _on_tpu(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "tpu"


_SAID = False


def _say_routed() -> None:
    global _SAID
    if not _SAID:
        _SAID = True
        logging.getLogger("torchtpu").info(
            "torchtpu: torch.compile's default backend (inductor) cannot target the tpu "
            "device; graphs on tpu tensors compile with backend='tpu'."
        )
