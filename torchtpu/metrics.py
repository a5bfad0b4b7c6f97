"""Counters for what torchtpu did: compiles, cache hits, fallbacks, transfers."""

from __future__ import annotations

import collections
import copy
from typing import Any

_COUNTERS: dict[str, Any] = {}


def _fresh() -> dict[str, Any]:
    return {
        "compiles": 0,
        "cache_hits": 0,
        "compile_seconds": 0.0,
        "trace_seconds": 0.0,
        "fallbacks": collections.Counter(),
        "graph_breaks": 0,
        "graphs": 0,
        "recompiles": 0,
        "recompiles_by_graph": collections.Counter(),
        "executions": 0,
        "size_reads": 0,
        "host_to_device": 0,
        "host_to_device_bytes": 0,
        "resident_hits": 0,
        "device_to_host": 0,
        "device_to_host_bytes": 0,
        "persistent_cache_hits": 0,
        "persistent_cache_misses": 0,
        "graph_cache_hits": 0,
        "graph_cache_misses": 0,
        "lowered_cache_hits": 0,
        "lowered_cache_misses": 0,
        "lowered_cache_skips": 0,
        "syncs": collections.Counter(),
        "fused_compiles": 0,
        "fused_cache_hits": 0,
        "fused_runs": 0,
        "fused_ops": 0,
        "fused_max_ops": 0,
        "eager_ops": 0,
        "compile_sites": collections.Counter(),
        "checkpoint_saves": 0,
        "checkpoint_bytes": 0,
        "reshards": 0,
        "auto_choices": [],
    }


def reset_metrics() -> None:
    """Zero every counter. Example: ``torchtpu.reset_metrics()``."""
    _COUNTERS.clear()
    _COUNTERS.update(_fresh())


def bump(name: str, amount: float = 1) -> None:
    _COUNTERS[name] += amount


def record_auto_choice(choice: dict[str, Any]) -> None:
    _COUNTERS["auto_choices"].append(choice)


def count_fallback(op_name: str) -> None:
    _COUNTERS["fallbacks"][op_name] += 1


def metrics() -> dict[str, Any]:
    """A snapshot of torchtpu's counters.

    Keys: ``compiles`` (XLA programs built), ``cache_hits`` (programs reused
    from the in-memory cache), ``compile_seconds``, ``trace_seconds``,
    ``fallbacks`` (op -> eager runs), ``graph_breaks`` (Dynamo), ``graphs``
    (FX graphs received), ``recompiles`` (new shapes for a graph already
    compiled), ``recompiles_by_graph`` (graph, named by its source line ->
    recompiles; see ``warn_recompiles``), ``executions``, ``size_reads``
    (sizes or ``.item()`` values of data-dependent ops read back to the host),
    ``host_to_device`` / ``host_to_device_bytes`` (tensors uploaded),
    ``resident_hits`` (inputs already on the device) and ``device_to_host``;
    ``persistent_cache_hits`` / ``persistent_cache_misses`` (programs found
    in, or added to, the on-disk compilation cache); ``graph_cache_hits`` /
    ``graph_cache_misses`` (``compile_step`` graphs functionalized before, found on
    disk by their traced step, or not: ``torchtpu/train/graph_cache.py``);
    ``lowered_cache_hits`` / ``lowered_cache_misses`` / ``lowered_cache_skips``
    (``compile_step`` and ``tpu`` backend programs lowered before and loaded from
    disk, lowered now and stored, or refused by ``jax.export`` and lowered
    uncached: ``torchtpu/compile/lowered_cache.py``).

    Device mode (tensors on ``"tpu"``): ``syncs`` (reason -> times the
    recorded graph was run: ``item``, ``to_cpu``, ``print``, ``explicit``,
    ``optimizer_step``, ``graph_size``, ``fallback``, ``monitor``: a value
    logged to ``torchtpu.monitor`` dispatched, not waited for), ``fused_compiles``
    (fused programs built; also counted in ``compiles``), ``fused_cache_hits``
    (syncs that reused a fused program), ``fused_runs``, ``fused_ops`` (ops
    run in fused programs), ``fused_max_ops`` (the largest fused graph),
    ``eager_ops`` (ops run one at a time in strict eager mode) and, with
    ``TORCHTPU_DEBUG=1``, ``compile_sites`` (the Python line that caused each
    fused compile -> count).

    ``auto_choices``: one dict per graph compiled with ``backend="auto"`` (or
    ``TORCHTPU_PLATFORM=auto``): ``graph`` (its call site), ``chosen``, ``seconds``
    (candidate -> median seconds per call), ``failed`` (candidate -> error).

    Checkpoints: ``checkpoint_saves`` (committed) and ``checkpoint_bytes``
    (tensor bytes copied to the host for them).

    Example::

        import torchtpu
        torchtpu.metrics()["compiles"]
    """
    snap = copy.deepcopy(_COUNTERS)
    snap["fallbacks"] = dict(snap["fallbacks"])
    snap["recompiles_by_graph"] = dict(snap["recompiles_by_graph"])
    snap["graph_breaks"] = _dynamo_graph_breaks()
    return snap


def _dynamo_graph_breaks() -> int:
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - torch without dynamo
        return 0
    return int(sum(counters["graph_break"].values()))


def report() -> str:
    """Print the counters readably and return the text.

    Example::

        import torchtpu
        torchtpu.report()
    """
    snap = metrics()
    width = max(len(k) for k in snap)
    lines = ["torchtpu metrics"]
    for key, value in snap.items():
        if key in {"fallbacks", "auto_choices"}:
            continue
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        lines.append(f"  {key:<{width}}  {shown}")
    fallbacks = snap["fallbacks"]
    lines.append(f"  {'fallbacks':<{width}}  {sum(fallbacks.values())}")
    for op, n in sorted(fallbacks.items(), key=lambda kv: -kv[1]):
        lines.append(f"      {n:>6}  {op}")
    lines.append(f"  {'auto_choices':<{width}}  {len(snap['auto_choices'])}")
    for c in snap["auto_choices"]:
        times = ", ".join(f"{n} {s * 1e3:.3g} ms" for n, s in c["seconds"].items())
        lines.append(f"      {c['chosen']} at {c['graph']} ({times or 'not timed'})")
    text = "\n".join(lines)
    print(text)
    return text


reset_metrics()
