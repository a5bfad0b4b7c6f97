"""Sums of matrix products as one product, for programs split over a mesh.

In a tensor-parallel backward, the gradient of a layer's input is a sum of
products whose contracted dimension is split over the ``model`` axis: the input
of ``q``/``k``/``v`` gets ``dq @ Wq + dk @ Wk + dv @ Wv``, the input of an MLP's
``gate``/``up`` two such terms. Each product is partial on every device, and the
partitioner all-reduces each before the sum: XLA's GPU pipeline merges them
afterwards (its ``AllReduceReassociate`` pass), XLA:CPU has no such pass and sends
three activations where one would do.

:func:`fuse_sums_of_products` rewrites such a sum in the graph, before it is
lowered, into ``torchtpu::sum_of_mm``: one ``dot_general`` over the stacked
products, which contracts the stacking axis and ``K`` together, so the sum is
all-reduced once. It applies to trees of ``aten.add.Tensor`` whose leaves are
``aten.mm`` products of one shape (each perhaps viewed to one shape), every
intermediate used once. Applied only under a strategy whose mesh has more than
one device: on one device the stacking would be a copy for nothing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx

aten = torch.ops.aten
_VIEWS = {
    aten.view.default,
    aten.view_copy.default,
    aten._unsafe_view.default,
    aten.reshape.default,
}
_ADD = aten.add.Tensor


def _product(node: Any) -> tuple[torch.fx.Node, Any] | None:
    """``(mm, view shape or None)`` when ``node`` is a matrix product, perhaps viewed,
    used only here."""
    if not isinstance(node, torch.fx.Node) or len(node.users) != 1:
        return None
    shape = None
    if node.target in _VIEWS:
        shape = tuple(node.args[1])
        node = node.args[0]
        if not isinstance(node, torch.fx.Node) or len(node.users) != 1:
            return None
    return (node, shape) if node.target is aten.mm.default else None


def _is_plain_add(node: Any) -> bool:
    return isinstance(node, torch.fx.Node) and node.target is _ADD and not node.kwargs


def _terms(root: torch.fx.Node) -> list[Any]:
    """The leaves of the tree of plain adds under ``root`` (inner adds used once)."""
    out, stack = [], list(root.args)
    while stack:
        arg = stack.pop()
        if _is_plain_add(arg) and len(arg.users) == 1:
            stack.extend(arg.args)
        else:
            out.append(arg)
    return out


def _same(products: list[tuple[torch.fx.Node, Any]]) -> bool:
    first_mm, first_shape = products[0]
    a0, b0 = (first_mm.args[0].meta.get("val"), first_mm.args[1].meta.get("val"))
    if a0 is None or b0 is None:
        return False
    for mm, shape in products:
        a, b = mm.args[0].meta.get("val"), mm.args[1].meta.get("val")
        if a is None or b is None or shape != first_shape:
            return False
        if (a.shape, b.shape, a.dtype, b.dtype) != (a0.shape, b0.shape, a0.dtype, b0.dtype):
            return False
    return True


def fuse_sums_of_products(gm: torch.fx.GraphModule) -> int:
    """Rewrite each sum of like matrix products in ``gm`` into one
    ``torchtpu::sum_of_mm``; returns how many sums were rewritten."""
    import torchtpu.lower.ops.linalg  # noqa: F401 - defines torchtpu::sum_of_mm

    graph = gm.graph
    done = 0
    gone: set[torch.fx.Node] = set()
    for root in reversed(list(graph.nodes)):
        if root in gone or not _is_plain_add(root):
            continue
        terms = _terms(root)
        products = [_product(t) for t in terms]
        if len(products) < 2 or any(p is None for p in products) or not _same(products):
            continue
        shape = products[0][1]
        with graph.inserting_before(root):
            fused = graph.call_function(
                torch.ops.torchtpu.sum_of_mm.default,
                ([mm.args[0] for mm, _ in products], [mm.args[1] for mm, _ in products]),
            )
            fused.meta.update(products[0][0].meta)
            result = fused
            if shape is not None:
                result = graph.call_function(aten.view.default, (fused, list(shape)))
                result.meta["val"] = root.meta.get("val")
        root.replace_all_uses_with(result)
        # The old adds, views and products are dead now (the operands are not).
        stack = [root]
        while stack:
            node = stack.pop()
            if node in gone or node.users or node.op != "call_function":
                continue
            gone.add(node)
            stack.extend(node.all_input_nodes)
            graph.erase_node(node)
        done += 1
    if done:
        graph.lint()
        gm.recompile()
    return done
