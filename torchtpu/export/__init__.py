"""Export a model for serving: one XLA program that runs without PyTorch.

    artifact = torchtpu.export(model, (x,), {"x": {0: torch.export.Dim("batch")}})
    artifact.save("model.tpu")
    # elsewhere, with JAX but no torch:
    predict = torchtpu.serving.load("model.tpu")
    predict(x_numpy)

``torchtpu.export`` is this module and is callable: ``torchtpu.export(...)`` and
``from torchtpu.export import export`` call the same function.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from typing import Any

import jax
import torch

from torchtpu.export.artifact import Artifact, manifest
from torchtpu.export.trace import ExportError, trace


def export(
    model: torch.nn.Module | Any,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    dynamic_shapes: Any = None,
    *,
    platforms: Sequence[str] | None = None,
) -> Artifact:
    """Capture ``model`` on ``example_inputs`` with ``torch.export`` and export it as an
    XLA program whose arguments are the model's weights and then its inputs.

    ``dynamic_shapes`` is what ``torch.export.export`` takes, e.g.
    ``{"x": {0: torch.export.Dim("batch", max=64)}}``: those dimensions stay
    symbolic, so the artifact runs at any size in range. ``platforms`` are the
    ``jax.export`` platforms to lower for (``"cpu"``, ``"cuda"``, ``"rocm"``,
    ``"tpu"``); the default is the current JAX backend's. Put the model in eval
    mode first: a served program cannot update buffers (batch norm statistics).

    Example::

        import torch, torchtpu
        model = torch.nn.Linear(4, 2).eval()
        batch = torch.export.Dim("batch", max=64)
        artifact = torchtpu.export(model, (torch.randn(3, 4),), {"input": {0: batch}})
        artifact.save("/tmp/linear.tpu", overwrite=True)
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    chosen = tuple(platforms) if platforms else (jax.export.default_export_platform(),)
    traced = trace(model, tuple(example_inputs), dynamic_shapes, chosen)
    return Artifact(manifest(traced, chosen), traced.exported, traced.weights)


class _CallableModule(types.ModuleType):
    """``torchtpu.export`` is both this package and the function :func:`export`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Artifact:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["Artifact", "ExportError", "export"]
