"""The functional step graph, cached on disk by the traced step it was made from.

``compile_step`` traces a step in two passes (``trace.py``): the first runs the user's code
(forward, backward, optimizer) into an ATen graph; the second functionalizes that graph. The
second pass is a deterministic function of the first pass's graph, torch's version and
torchtpu's code, so it is cached under a key made of exactly those: a new process (a warm
start) still runs the user's code through the first pass, which is what tells whether the
step is still the same one (no guards to trust, no stale graph), and skips the second.

The entry is JSON (nodes, their ATen targets by name, arguments, and each value's shape,
strides, dtype and device) plus a safetensors file for the graph's tensor constants. Loading
builds the graph with ``torch.fx`` from that data: targets resolve only to ``torch.ops``
overloads and ``operator`` functions, and nothing in the file is executed. An entry that does
not load (damaged, or from another format) is a miss and is written again. A graph holding
anything else (symbolic sizes, higher-order ops, submodules) is not cached.

The entries live in the XLA cache's directory (``options().cache_dir``), in
``torchtpu-graphs/`` (JAX's cache reads and evicts only its own ``*-cache`` files); an
empty ``cache_dir`` turns both off. ``torchtpu.metrics()`` counts ``graph_cache_hits``
and ``graph_cache_misses``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
from pathlib import Path
from typing import Any

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensorMode

from torchtpu.compile.lowered_cache import atomic_write, cache_subdir, code_version, read_entry
from torchtpu.lower.dtypes import to_numpy

log = logging.getLogger("torchtpu")
FORMAT = 1


class _Unsupported(Exception):
    """A graph this cache does not store."""


def directory() -> Path | None:
    """Where entries live, or None when caching is off."""
    return cache_subdir("torchtpu-graphs")


def key(first: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> str | None:
    """The key of the functional graph made from the first pass's ``first`` over
    ``inputs``: its code, its inputs' shapes, strides, dtypes, devices and ``requires_grad``,
    its tensor constants' bytes, and the code version. None if ``first`` holds something
    this cache does not store."""
    digest = hashlib.sha256(f"{FORMAT}:{code_version()}".encode())
    digest.update(first.code.encode())
    for t in inputs:
        digest.update(repr(_tensor_meta(t)).encode())
    try:
        for name, value in _constants(first).items():
            digest.update(name.encode())
            digest.update(repr(_tensor_meta(value)).encode())
            # numpy's bytes, in C order whatever the strides (0-d, or a broadcast's 0 stride)
            digest.update(to_numpy(value.detach().cpu()).tobytes())
    except _Unsupported:
        return None
    return digest.hexdigest()


def load(entry_key: str) -> torch.fx.GraphModule | None:
    """The cached functional graph for ``entry_key``, or None (a miss)."""
    where = directory()
    if where is None:
        return None
    path = where / f"{entry_key}.json"
    return read_entry(
        path,
        lambda: _decode(json.loads(path.read_text()), where / f"{entry_key}.safetensors"),
        "graph_cache",
        "compile_step: the cached step graph",
    )


def store(entry_key: str, gm: torch.fx.GraphModule) -> None:
    """Write ``gm`` under ``entry_key``, atomically; a graph this cache does not store is
    skipped (logged at debug level)."""
    where = directory()
    if where is None:
        return
    try:
        data = _encode(gm)
        constants = _constants(gm)
    except _Unsupported as exc:
        log.debug("compile_step: step graph not cached: %s", exc)
        return
    where.mkdir(parents=True, exist_ok=True)
    if constants:
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in constants.items()}
        atomic_write(where / f"{entry_key}.safetensors", lambda p: save_file(tensors, p))
    atomic_write(where / f"{entry_key}.json", lambda p: Path(p).write_text(json.dumps(data)))


def _constants(gm: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    out = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = getattr(gm, node.target)
            if not isinstance(value, torch.Tensor) or isinstance(value, torch.nn.Parameter):
                raise _Unsupported(f"attribute {node.target} is a {type(value).__name__}")
            out[node.target] = value
        elif node.op == "call_module":
            raise _Unsupported(f"submodule call {node.target}")
    return out


def _tensor_meta(t: torch.Tensor) -> tuple:
    if any(isinstance(s, torch.SymInt) for s in (*t.shape, *t.stride())):
        raise _Unsupported("symbolic sizes")
    return (tuple(t.shape), tuple(t.stride()), str(t.dtype), str(t.device), t.requires_grad)


# --- encoding ---------------------------------------------------------------------------

_DTYPES = {str(d): d for d in vars(torch).values() if isinstance(d, torch.dtype)}
_LAYOUTS = {str(v): v for v in vars(torch).values() if isinstance(v, torch.layout)}
_FORMATS = {str(v): v for v in vars(torch).values() if isinstance(v, torch.memory_format)}
_PYTHON = {"operator.getitem": operator.getitem}


def _target(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"op:{target._schema.name}.{target._overloadname}"
    for name, fn in _PYTHON.items():
        if target is fn:
            return f"py:{name}"
    raise _Unsupported(f"call target {target}")


def _resolve(name: str) -> Any:
    kind, _, rest = name.partition(":")
    if kind == "py":
        return _PYTHON[rest]
    if kind != "op":
        raise ValueError(f"unknown target {name!r}")
    qualified, _, overload = rest.rpartition(".")
    namespace, _, op = qualified.partition("::")
    packet = getattr(getattr(torch.ops, namespace), op)
    return getattr(packet, overload)


def _arg(a: Any) -> Any:
    if isinstance(a, torch.fx.Node):
        return {"n": a.name}
    if isinstance(a, bool | int | float | str) or a is None:
        return a
    if isinstance(a, list | tuple):
        return {"l" if isinstance(a, list) else "t": [_arg(x) for x in a]}
    if isinstance(a, torch.dtype):
        return {"dtype": str(a)}
    if isinstance(a, torch.device):
        return {"device": str(a)}
    if isinstance(a, torch.layout):
        return {"layout": str(a)}
    if isinstance(a, torch.memory_format):
        return {"memory_format": str(a)}
    raise _Unsupported(f"argument of type {type(a).__name__}")


def _val(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        shape, stride, dtype, device, requires_grad = _tensor_meta(v)
        return {"tensor": [list(shape), list(stride), dtype, device, requires_grad]}
    if isinstance(v, list | tuple):
        return {"l" if isinstance(v, list) else "t": [_val(x) for x in v]}
    if isinstance(v, bool | int | float) or v is None:
        return v
    raise _Unsupported(f"value of type {type(v).__name__}")


def _encode(gm: torch.fx.GraphModule) -> dict[str, Any]:
    nodes = []
    for node in gm.graph.nodes:
        entry: dict[str, Any] = {"name": node.name, "op": node.op}
        if node.op == "call_function":
            entry["target"] = _target(node.target)
        elif node.op in ("placeholder", "get_attr"):
            entry["target"] = node.target
        entry["args"] = _arg(tuple(node.args))
        entry["kwargs"] = {k: _arg(v) for k, v in node.kwargs.items()}
        if "val" in node.meta:
            entry["val"] = _val(node.meta["val"])
        nodes.append(entry)
    return {"format": FORMAT, "nodes": nodes}


def _decode(data: dict[str, Any], constants_path: Path) -> torch.fx.GraphModule:
    if data.get("format") != FORMAT:
        raise ValueError(f"format {data.get('format')!r}, not {FORMAT}")
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    graph = torch.fx.Graph()
    env: dict[str, torch.fx.Node] = {}

    def arg(a: Any) -> Any:
        if isinstance(a, dict):
            ((kind, value),) = a.items()
            if kind == "n":
                return env[value]
            if kind in ("l", "t"):
                items = [arg(x) for x in value]
                return items if kind == "l" else tuple(items)
            table = {"dtype": _DTYPES, "layout": _LAYOUTS, "memory_format": _FORMATS}
            return torch.device(value) if kind == "device" else table[kind][value]
        return a

    made: dict[str, torch.Tensor] = {}

    def val(v: Any) -> Any:
        if isinstance(v, dict):
            ((kind, value),) = v.items()
            if kind == "tensor":  # one fake tensor per distinct meta: only its meta is read
                meta = repr(value)
                if meta not in made:
                    shape, stride, dtype, device, requires_grad = value
                    with mode:
                        t = torch.empty_strided(shape, stride, dtype=_DTYPES[dtype], device=device)
                    made[meta] = t.requires_grad_(requires_grad) if requires_grad else t
                return made[meta]
            items = [val(x) for x in value]
            return items if kind == "l" else tuple(items)
        return v

    root = torch.nn.Module()
    if constants_path.exists():
        from safetensors.torch import load_file

        for name, tensor in load_file(constants_path).items():
            setattr(root, name, tensor)
    for entry in data["nodes"]:
        op = entry["op"]
        args = arg(entry["args"])
        kwargs = {k: arg(v) for k, v in entry["kwargs"].items()}
        if op == "call_function":
            target = _resolve(entry["target"])
        elif op in ("placeholder", "get_attr"):
            target = str(entry["target"])
        elif op == "output":
            target = "output"
        else:
            raise ValueError(f"node kind {op!r}")
        node = graph.create_node(op, target, args, kwargs, name=entry["name"])
        if node.name != entry["name"]:
            raise ValueError(f"node name {entry['name']!r} taken")
        if "val" in entry:
            node.meta["val"] = val(entry["val"])
        env[entry["name"]] = node
    graph.lint()
    return torch.fx.GraphModule(root, graph)
