"""Bucketed dimensions: a graph compiled once per power of two, not once per size.

``torchtpu.mark_bucketed(x, 0, pad_value)`` marks a dimension (and marks it
dynamic for Dynamo, so one symbolic graph is captured). With
``options={"bucket": "pow2"}``, each call of that graph pads the marked
dimension with ``pad_value`` up to the next power of two, runs the program for
that size, and cuts every output whose size depends on the dimension back to
the size it would have had. The padding lies at the end of the dimension, and
autograd sees the pad and the cut, so gradients flow to the real rows only.

The pad value is the user's contract: rows of it must not change the real
rows' results. A batch dimension padded with anything, with labels padded with
the loss's ``ignore_index``, is the usual case; a sum over the padded
dimension is not (the pad rows would be summed too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy
import torch
import torch.fx

from torchtpu.errors import TorchTPUError

_MARK = "_torchtpu_bucketed"
BUCKETS = ("pow2",)


def mark_bucketed(tensor: torch.Tensor, dim: int, pad_value: float = 0) -> torch.Tensor:
    """Mark ``tensor``'s dimension ``dim`` for bucketing, padded with ``pad_value``.

    Takes effect under ``torch.compile(..., backend="tpu", options={"bucket": "pow2"})``.
    Returns ``tensor``. Example::

        ids = torchtpu.mark_bucketed(ids, 0, pad_value=0)
        labels = torchtpu.mark_bucketed(labels, 0, pad_value=-100)  # ignore_index
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"torchtpu.mark_bucketed: expected a tensor, got {type(tensor).__name__}")
    if not -tensor.dim() <= dim < max(tensor.dim(), 1):
        raise IndexError(
            f"torchtpu.mark_bucketed: dim {dim} is out of range for a tensor of shape "
            f"{list(tensor.shape)}"
        )
    dim %= tensor.dim()
    marks = dict(getattr(tensor, _MARK, {}))
    marks[dim] = pad_value
    setattr(tensor, _MARK, marks)
    if tensor.shape[dim] > 1:  # Dynamo always specializes sizes 0 and 1
        torch._dynamo.maybe_mark_dynamic(tensor, dim)
    return tensor


def bucketed(compiled: Callable[..., Any], gm: torch.fx.GraphModule, policy: str) -> Callable:
    """``compiled`` (the backend's callable for ``gm``) with marked dimensions padded
    to their bucket and outputs cut back. A graph with no symbolic dimension is
    returned as it is."""
    if policy not in BUCKETS:
        raise ValueError(f"torch.compile(backend='tpu'): bucket={policy!r} is not one of {BUCKETS}")
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    values = [n.meta.get("example_value") for n in placeholders]
    if not any(_symbols(v) for v in values):
        return compiled
    outputs = next(n for n in reversed(gm.graph.nodes) if n.op == "output").args[0]
    out_values = [
        n.meta.get("example_value") if isinstance(n, torch.fx.Node) else n for n in outputs
    ]
    names = [source_name(n) for n in placeholders]
    plan = _Plan(values, out_values, names)

    def run(*args: Any) -> Any:
        boxed = len(args) == 1 and isinstance(args[0], list)
        flat = list(args[0]) if boxed else list(args)
        sizes = plan.sizes(flat)
        if not sizes:
            return compiled(*args)
        padded = plan.pad(flat, sizes)
        versions = [getattr(t, "_version", None) for t in padded]
        out = compiled(padded) if boxed else compiled(*padded)
        plan.write_back(flat, padded, versions, sizes)
        if boxed:
            args[0].clear()
        return plan.cut(out, sizes)

    run._boxed_call = getattr(compiled, "_boxed_call", False)
    return run


class _Plan:
    """Which inputs and outputs a graph's bucketed symbols reach."""

    def __init__(self, values: list[Any], out_values: list[Any], names: list[str]) -> None:
        self.values = values
        self.out_values = out_values
        self.names = names
        # (input, dim) -> the symbol of its size, where that size is a bare symbol
        self.dims = {
            (i, d): s.node.expr
            for i, v in enumerate(values)
            if isinstance(v, torch.Tensor)
            for d, s in enumerate(v.shape)
            if isinstance(s, torch.SymInt) and isinstance(s.node.expr, sympy.Symbol)
        }

    def sizes(self, args: list[Any]) -> dict[Any, tuple[int, int]]:
        """symbol -> (real size, bucket size) for the marked dimensions of ``args``."""
        sizes: dict[Any, tuple[int, int]] = {}
        for (i, d), symbol in self.dims.items():
            marks = getattr(args[i], _MARK, None)
            if marks and d in marks:
                n = int(args[i].shape[d])
                sizes[symbol] = (n, _pow2(n))
        return sizes

    def pad(self, args: list[Any], sizes: dict[Any, tuple[int, int]]) -> list[Any]:
        padded = list(args)
        for i, value in enumerate(self.values):
            if isinstance(value, torch.SymInt):
                expr = value.node.expr
                if expr in sizes:
                    padded[i] = sizes[expr][1]
                elif expr.free_symbols & set(sizes):
                    raise TorchTPUError(
                        f"torch.compile(backend='tpu', bucket=...): the graph takes the size "
                        f"{expr} of a bucketed dimension as an input, which cannot be padded; "
                        "mark a different dimension, or leave bucketing off for this model"
                    )
        for (i, d), symbol in self.dims.items():
            if symbol not in sizes:
                continue
            n, bucket = sizes[symbol]
            t = padded[i]
            marks = getattr(args[i], _MARK, None) or {}
            if d not in marks:
                raise TorchTPUError(
                    f"torch.compile(backend='tpu', bucket=...): input {self.names[i]} of shape "
                    f"{list(t.shape)} has dim {d} of the same size as a bucketed dimension, "
                    f"but is not marked: mark it too, with the value its padding should "
                    f"hold: torchtpu.mark_bucketed(tensor, {d}, pad_value)"
                )
            if bucket > n:
                shape = list(t.shape)
                shape[d] = bucket - n
                padded[i] = torch.cat([t, t.new_full(shape, marks[d])], dim=d)
        return padded

    def write_back(
        self,
        args: list[Any],
        padded: list[Any],
        versions: list[Any],
        sizes: dict[Any, tuple[int, int]],
    ) -> None:
        """An input the graph changed in place: its real rows go back to the user's."""
        for (i, d), symbol in self.dims.items():
            if symbol not in sizes or padded[i] is args[i]:
                continue
            if padded[i]._version != versions[i]:
                with torch.no_grad():
                    args[i].copy_(padded[i].narrow(d, 0, sizes[symbol][0]))

    def cut(self, out: Any, sizes: dict[Any, tuple[int, int]]) -> Any:
        real = {s: n for s, (n, _) in sizes.items()}
        cut = list(out)
        for k, value in enumerate(self.out_values):
            if isinstance(value, torch.SymInt) and value.node.expr.free_symbols & set(real):
                cut[k] = int(value.node.expr.subs(real))
            if not isinstance(value, torch.Tensor):
                continue
            for d, size in enumerate(value.shape):
                if isinstance(size, torch.SymInt) and size.node.expr.free_symbols & set(real):
                    cut[k] = cut[k].narrow(d, 0, int(size.node.expr.subs(real)))
        return type(out)(cut) if isinstance(out, tuple) else cut


def _symbols(value: Any) -> bool:
    if isinstance(value, torch.SymInt):
        return True
    return isinstance(value, torch.Tensor) and any(isinstance(s, torch.SymInt) for s in value.shape)


def _pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def source_name(node: torch.fx.Node) -> str:
    """A Dynamo graph input's name in the user's code (``L['x']``), else the node's."""
    source = getattr(node.meta.get("grapharg"), "source", None)
    return source.name if isinstance(getattr(source, "name", None), str) else node.name
