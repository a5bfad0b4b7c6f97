"""Split a graph into XLA segments and the eager nodes between them.

Nodes run in the graph's order; each maximal run of lowerable nodes becomes one
XLA program, and each node that must fall back runs alone in eager PyTorch. A
node whose output size depends on data (``torchtpu.lower.sized``) also runs
alone, as a program of its own, since what follows it is compiled for its size.
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
    sized: bool = False

    def __str__(self) -> str:
        kind = "eager" if self.eager else "sized" if self.sized else "xla"
        ops = ", ".join(str(n.target) for n in self.nodes[:4])
        more = f", ... ({len(self.nodes)} nodes)" if len(self.nodes) > 4 else ""
        return f"<{kind} segment: {ops}{more}>"


def partition(
    graph: torch.fx.Graph,
    eager_nodes: set[torch.fx.Node],
    sized_nodes: set[torch.fx.Node] = frozenset(),
) -> list[Segment]:
    """Segments of ``graph`` in execution order; ``eager_nodes`` run in PyTorch,
    ``sized_nodes`` alone."""
    groups: list[tuple[str, list[torch.fx.Node]]] = []
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        kind = "eager" if node in eager_nodes else "sized" if node in sized_nodes else "xla"
        if groups and kind == "xla" and groups[-1][0] == "xla":
            groups[-1][1].append(node)
        else:
            groups.append((kind, [node]))

    output_node = next(n for n in reversed(graph.nodes) if n.op == "output")
    segments = []
    for kind, nodes in groups:
        members = set(nodes)
        inputs: dict[torch.fx.Node, None] = {}
        outputs: dict[torch.fx.Node, None] = {}
        for node in nodes:
            for used in node.all_input_nodes:
                if used not in members:
                    inputs[used] = None
            if any(user not in members or user is output_node for user in node.users):
                outputs[node] = None
        segments.append(
            Segment(nodes, list(inputs), list(outputs), kind == "eager", kind == "sized")
        )
    return segments
