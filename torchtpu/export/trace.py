"""From a model to a ``jax.export.Exported``: torch.export captures the ATen graph,
torchtpu's table decomposes it, and ``compile.export_segment`` lowers it with the
same interpreter every other front end uses.

Parameters and buffers are lifted placeholders of the captured graph; they stay
arguments of the exported function (weights first, in the graph's order, then the
user's inputs), so the program holds no weights and a new checkpoint needs no
re-export. torch.export's symbolic sizes become ``jax.export`` symbolic
dimensions named as the user's ``Dim`` s, with the same ranges.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import sympy
import torch
import torch.fx
import torch.utils._pytree as pytree
from torch.export.graph_signature import InputKind, OutputKind, TensorArgument

from torchtpu.compile.partition import Segment
from torchtpu.compile.program import export_segment
from torchtpu.decompose import decomposition_table
from torchtpu.errors import TorchTPUError
from torchtpu.lower.dtypes import to_jax_dtype, to_numpy
from torchtpu.lower.interpreter import NoLowering, is_sized, lowering_status
from torchtpu.runtime import jax_scope

WEIGHT_KINDS = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)


class ExportError(TorchTPUError):
    """A model cannot be exported as it is; the message says why and what to do."""


@dataclasses.dataclass
class Traced:
    """What :func:`trace` produces: the program and the facts the manifest records."""

    exported: jax.export.Exported
    weights: dict[str, np.ndarray]  # in argument order
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    output_tree: Any
    dims: dict[str, dict[str, int | None]]
    checks: list[dict[str, Any]]
    uses_rng: bool


def trace(
    model: Any,
    example_inputs: Sequence[torch.Tensor],
    dynamic_shapes: Any,
    platforms: Sequence[str],
) -> Traced:
    """Capture ``model`` with torch.export and export it with ``jax.export``."""
    ep = torch.export.export(model, tuple(example_inputs), dynamic_shapes=dynamic_shapes)
    ep = ep.run_decompositions(decomposition_table())
    graph = ep.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    nodes = [n for n in graph.nodes if n.op in ("call_function", "get_attr")]
    _refuse_unlowerable(nodes)

    by_name = {n.name: n for n in placeholders}
    weights: dict[str, np.ndarray] = {}
    weight_nodes: list[torch.fx.Node] = []
    user: list[torch.fx.Node] = []
    for spec in ep.graph_signature.input_specs:
        if spec.kind in WEIGHT_KINDS:
            weights[spec.target] = _weight(ep, spec.target)
            weight_nodes.append(by_name[spec.arg.name])
        elif spec.kind is InputKind.USER_INPUT and isinstance(spec.arg, TensorArgument):
            user.append(by_name[spec.arg.name])
        else:
            raise ExportError(
                f"the model takes {spec.arg} ({spec.kind.name}), which an exported program "
                "cannot: only tensor inputs are served. Close over other values (a Python int, "
                "a flag) in a wrapper module and export that."
            )

    names = _dim_names(model, example_inputs, dynamic_shapes, user)
    dims = _dim_ranges(ep, names)
    scope = jax.export.SymbolicScope(_constraints(dims))
    arguments = weight_nodes + user  # the exported function's parameters, in order
    leaves = [_spec(n, names, scope) for n in arguments]
    outputs = _user_outputs(ep, graph)

    segment = Segment(nodes, arguments, outputs, eager=False)
    treedef = jax.tree_util.tree_structure(list(range(len(leaves))))
    with jax_scope():
        try:
            exported, traced = export_segment(segment, treedef, leaves, platforms=platforms)
        except NoLowering as exc:
            raise _lowering_error(exc, names) from exc
    _, static = traced.out_info()
    if static:
        raise ExportError(
            f"outputs {sorted(static)} of the model are Python values, not tensors "
            f"({list(static.values())}); return tensors only."
        )
    checks = [dataclasses.asdict(c) for c in traced.checks()]
    out_avals = exported.out_avals[: len(outputs)]
    tree, out_names = _output_tree(ep, len(outputs))
    return Traced(
        exported=exported,
        weights=weights,
        inputs=[
            _describe(n.name, aval) for n, aval in zip(user, leaves[len(weights) :], strict=True)
        ],
        outputs=[_describe(name, a) for name, a in zip(out_names, out_avals, strict=True)],
        output_tree=tree,
        dims=dims,
        checks=checks,
        uses_rng=traced.uses_rng,
    )


def _refuse_unlowerable(nodes: list[torch.fx.Node]) -> None:
    problems = []
    for node in nodes:
        if node.op != "call_function":
            continue
        if is_sized(node):
            problems.append(f"{node.target}: its output size depends on the data")
            continue
        status, reason = lowering_status(node)
        if status != "lowers":
            problems.append(f"{node.target}: {reason}")
    if problems:
        listed = "\n  ".join(dict.fromkeys(problems))
        raise ExportError(
            "an exported program runs without PyTorch, so every op must lower to JAX; "
            f"these do not:\n  {listed}\nUse `torchtpu examine` for the reasons, and change "
            "the model or add the lowering."
        )


def _weight(ep: torch.export.ExportedProgram, target: str) -> np.ndarray:
    value = ep.state_dict[target] if target in ep.state_dict else ep.constants[target]
    return np.ascontiguousarray(to_numpy(value.detach().cpu()))


def _dim_names(
    model: Any, example_inputs: Sequence[Any], dynamic_shapes: Any, user: list[torch.fx.Node]
) -> dict[sympy.Symbol, str]:
    """torch.export's size symbols -> the names of the user's ``Dim`` s. A symbol the
    user did not name (``Dim.AUTO``) is called ``<input>_<dim>``."""
    per_input: list[Any] = [None] * len(user)
    if isinstance(dynamic_shapes, Mapping):
        fn = model.forward if isinstance(model, torch.nn.Module) else model
        bound = inspect.signature(fn).bind(*example_inputs).arguments
        per_input = [dynamic_shapes.get(name) for name in bound]
    elif isinstance(dynamic_shapes, (list, tuple)):
        per_input = list(dynamic_shapes)
    names: dict[sympy.Symbol, str] = {}
    for node, spec in zip(user, per_input, strict=False):
        items = spec.items() if isinstance(spec, Mapping) else enumerate(spec or ())
        for d, dim in items:
            size = node.meta["val"].shape[d]
            if not isinstance(size, torch.SymInt) or not hasattr(dim, "__name__"):
                continue
            expr = size.node.expr
            root = getattr(dim, "root", dim)  # a derived dim (2 * batch) names its root
            symbols = list(expr.free_symbols)
            if len(symbols) == 1 and _usable(root.__name__):
                names.setdefault(symbols[0], root.__name__)
    for node in user:
        for d, size in enumerate(node.meta["val"].shape):
            if isinstance(size, torch.SymInt):
                for symbol in size.node.expr.free_symbols:
                    names.setdefault(symbol, f"{node.name}_{d}")
    return names


def _usable(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is not None


def _dim_ranges(
    ep: torch.export.ExportedProgram, names: dict[sympy.Symbol, str]
) -> dict[str, dict[str, int | None]]:
    dims = {}
    for symbol, name in names.items():
        bounds = ep.range_constraints.get(symbol)
        low = int(bounds.lower) if bounds is not None and bounds.lower.is_finite else 1
        high = int(bounds.upper) if bounds is not None and bounds.upper.is_finite else None
        dims[name] = {"min": max(low, 1), "max": high}  # JAX's symbolic sizes are >= 1
    return dims


def _constraints(dims: dict[str, dict[str, int | None]]) -> list[str]:
    out = []
    for name, bounds in dims.items():
        if bounds["min"] > 1:
            out.append(f"{name} >= {bounds['min']}")
        if bounds["max"] is not None:
            out.append(f"{name} <= {bounds['max']}")
    return out


def _spec(node: torch.fx.Node, names: dict, scope: Any) -> jax.ShapeDtypeStruct:
    value = node.meta["val"]
    dtype = to_jax_dtype(value.dtype)
    if not any(isinstance(s, torch.SymInt) for s in value.shape):
        return jax.ShapeDtypeStruct(tuple(int(s) for s in value.shape), dtype)
    rename = {symbol: sympy.Symbol(name) for symbol, name in names.items()}
    text = ", ".join(str(_size_text(s, rename)) for s in value.shape)
    try:
        shape = jax.export.symbolic_shape(text, scope=scope)
    except Exception as exc:  # jax raises ValueError or its own errors for what it can't parse
        raise ExportError(
            f"input {node.name!r} has sizes ({text}) that jax.export cannot express: {exc}. "
            "Make those dimensions plain Dims (or static)."
        ) from exc
    return jax.ShapeDtypeStruct(shape, dtype)


def _size_text(size: Any, rename: dict) -> int | str:
    if isinstance(size, torch.SymInt):
        return str(size.node.expr.xreplace(rename))
    return int(size)


def _user_outputs(ep: torch.export.ExportedProgram, graph: torch.fx.Graph) -> list[torch.fx.Node]:
    out_node = next(n for n in reversed(graph.nodes) if n.op == "output")
    results = []
    for spec, value in zip(ep.graph_signature.output_specs, out_node.args[0], strict=True):
        if spec.kind is not OutputKind.USER_OUTPUT:
            raise ExportError(
                f"the model changes {spec.target} in its forward ({spec.kind.name}); a served "
                "program is stateless. Call model.eval() (batch norm updates its running "
                "statistics in training mode), or move the update out of forward."
            )
        if not isinstance(value, torch.fx.Node):
            raise ExportError(
                f"the model returns {value!r}, not a tensor; an exported program returns "
                "tensors only."
            )
        results.append(value)
    return results


def _output_tree(ep: torch.export.ExportedProgram, n: int) -> tuple[Any, list[str]]:
    """The outputs' structure as JSON (an index per tensor; tuples, lists, dicts) and
    a name per output, from its path in that structure (``logits``, ``0``, ``1.key``)."""
    structure = pytree.tree_unflatten(list(range(n)), ep.call_spec.out_spec)
    names = [""] * n

    def encode(value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, int):
            names[value] = ".".join(path) or "output"
            return value
        if isinstance(value, Mapping):
            return {"dict": [[str(k), encode(v, (*path, str(k)))] for k, v in value.items()]}
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            pairs = zip(value._fields, value, strict=True)
            return {"dict": [[k, encode(v, (*path, k))] for k, v in pairs]}
        if isinstance(value, (list, tuple)):
            kind = "list" if isinstance(value, list) else "tuple"
            return {kind: [encode(v, (*path, str(i))) for i, v in enumerate(value)]}
        raise ExportError(f"the model returns a {type(value).__name__}, which serving cannot")

    return encode(structure, ()), names


def _describe(name: str, aval: Any) -> dict[str, Any]:
    shape = [int(d) if not jax.export.is_symbolic_dim(d) else str(d) for d in aval.shape]
    return {"name": name, "dtype": str(np.dtype(aval.dtype)), "shape": shape}


def _lowering_error(exc: NoLowering, names: dict[sympy.Symbol, str]) -> ExportError:
    node = exc.node
    cause = str(exc).strip().splitlines()[0]
    symbolic = "symbolic" in cause.lower() or "inconclusive" in cause.lower()
    what = (
        "cannot handle the symbolic sizes of this export"
        if symbolic
        else "failed while the program was traced"
    )
    rename = {symbol: sympy.Symbol(name) for symbol, name in names.items()}
    shapes = [
        str(tuple(_size_text(s, rename) for s in a.meta["val"].shape))
        for a in node.all_input_nodes
        if isinstance(a.meta.get("val"), torch.Tensor)
    ]
    hint = (
        "Export with that dimension static (leave it out of dynamic_shapes), or report "
        "the op so its lowering learns symbolic sizes."
        if symbolic
        else "This is a bug in torchtpu's lowering; please report it."
    )
    return ExportError(
        f"{node.target} (node {node.name}, input shapes {', '.join(shapes)}) {what}: {cause}\n"
        f"{hint}"
    )
