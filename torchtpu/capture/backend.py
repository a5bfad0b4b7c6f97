"""The ``tpu`` backend of ``torch.compile``.

It is registered through the ``torch_dynamo_backends`` entry point, so
``torch.compile(model, backend="tpu")`` works without ``import torchtpu``.
``options=`` of ``torch.compile`` overrides :class:`torchtpu.config.Options`
for that model, e.g. ``options={"strict": True}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
from torch._dynamo.backends.common import aot_autograd

from torchtpu.config import Options, options
from torchtpu.decompose import decomposition_table
from torchtpu.metrics import bump
from torchtpu.run.executor import GraphExecutor


def _options_with(overrides: dict[str, Any] | None) -> Options:
    base = dataclasses.replace(options())
    for name, value in (overrides or {}).items():
        if not hasattr(base, name):
            valid = ", ".join(f.name for f in dataclasses.fields(Options))
            raise TypeError(
                f"torch.compile(backend='tpu'): unknown option {name!r}; valid: {valid}"
            )
        setattr(base, name, value)
    return base


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
    opts = _options_with(options)
    bump("graphs")

    def compiler(name: str):
        def compile_graph(graph: torch.fx.GraphModule, inputs: Sequence[Any]) -> GraphExecutor:
            return GraphExecutor(graph, opts, name=name)

        return compile_graph

    backend = aot_autograd(
        fw_compiler=compiler("forward"),
        bw_compiler=compiler("backward"),
        inference_compiler=compiler("inference"),
        decompositions=decomposition_table(),
    )
    return backend(gm, example_inputs)
