"""Split a graph into XLA segments and the eager nodes between them.

Nodes run in the graph's order; each maximal run of lowerable nodes becomes one
XLA program, and each node that must fall back runs alone in eager PyTorch.
"""

from __future__ import annotations

import dataclasses

import torch.fx


@dataclasses.dataclass
class Segment:
    """A run of nodes executed together, with the values crossing its border."""

    nodes: list[torch.fx.Node]
    inputs: list[torch.fx.Node]
    outputs: list[torch.fx.Node]
    eager: bool

    def __str__(self) -> str:
        kind = "eager" if self.eager else "xla"
        ops = ", ".join(str(n.target) for n in self.nodes[:4])
        more = f", ... ({len(self.nodes)} nodes)" if len(self.nodes) > 4 else ""
        return f"<{kind} segment: {ops}{more}>"


def partition(graph: torch.fx.Graph, eager_nodes: set[torch.fx.Node]) -> list[Segment]:
    """Segments of ``graph`` in execution order; ``eager_nodes`` run in PyTorch."""
    groups: list[tuple[bool, list[torch.fx.Node]]] = []
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        eager = node in eager_nodes
        if groups and not eager and not groups[-1][0]:
            groups[-1][1].append(node)
        else:
            groups.append((eager, [node]))

    output_node = next(n for n in reversed(graph.nodes) if n.op == "output")
    segments = []
    for eager, nodes in groups:
        members = set(nodes)
        inputs: dict[torch.fx.Node, None] = {}
        outputs: dict[torch.fx.Node, None] = {}
        for node in nodes:
            for used in node.all_input_nodes:
                if used not in members:
                    inputs[used] = None
            if any(user not in members or user is output_node for user in node.users):
                outputs[node] = None
        segments.append(Segment(nodes, list(inputs), list(outputs), eager))
    return segments
