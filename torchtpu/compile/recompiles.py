"""Recompiles made visible and bounded: one graph compiled again for new input
shapes is counted by its source line, warned about once it has recompiled
``warn_recompiles`` times, and refused past ``max_recompiles``.

Every front end reports here: :class:`~torchtpu.run.executor.GraphExecutor`
(``torch.compile``) once per new shape of a segment, and ``compile_step`` once
per new shape of its step.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from torchtpu.config import Options
from torchtpu.errors import RecompileError, RecompileWarning
from torchtpu.metrics import _COUNTERS, bump

# One variant: each input's shape, or None for an input that is not an array.
Variant = Sequence[tuple[int, ...] | None]


def note_recompile(
    graph: str, variants: Sequence[Variant], opts: Options, names: Sequence[str] = ()
) -> None:
    """Count one recompile of ``graph``; ``variants`` are the shapes it has compiled
    for, the new one last. Warn at ``opts.warn_recompiles``; raise past
    ``opts.max_recompiles``."""
    count = len(variants) - 1
    limit = opts.max_recompiles
    if limit is not None and count > limit:
        raise RecompileError(
            _message(graph, variants, names, f"would recompile a {_nth(count)} time")
            + f" max_recompiles={limit} forbids it."
        )
    bump("recompiles")
    _COUNTERS["recompiles_by_graph"][graph] += 1
    if opts.warn_recompiles and count == opts.warn_recompiles:
        warnings.warn(
            _message(graph, variants, names, f"has recompiled {count} times"),
            RecompileWarning,
            stacklevel=2,
        )


def varied_dims(variants: Sequence[Variant]) -> list[tuple[int, int, list[int]]]:
    """``(input, dim, sorted values)`` for every input dimension that differs
    between the variants."""
    found = []
    ranks = {len(v) for v in variants}
    if len(ranks) != 1:
        return found
    for i in range(ranks.pop()):
        shapes = [v[i] for v in variants]
        if any(s is None for s in shapes) or len({len(s) for s in shapes}) != 1:
            continue
        for d in range(len(shapes[0])):
            values = sorted({s[d] for s in shapes})
            if len(values) > 1:
                found.append((i, d, values))
    return found


def _message(graph: str, variants: Sequence[Variant], names: Sequence[str], what: str) -> str:
    dims = varied_dims(variants)
    if dims:
        varied = "; ".join(
            f"{names[i] if i < len(names) else f'input {i}'} dim {d} took {_values(v)}"
            for i, d, v in dims
        )
    else:
        varied = "the inputs' ranks or dtypes changed"
    return (
        f"torchtpu: the graph at {graph} {what}, once per new input shape ({varied}). "
        "Each recompile is a new XLA program. What to do: pad the inputs to a few fixed "
        "sizes; or mark the dimension static with torch._dynamo.mark_static(tensor, dim) "
        "if it should not vary; or bucket it: torchtpu.mark_bucketed(tensor, dim, "
        "pad_value) with options={'bucket': 'pow2'} compiles once per power of two. "
        "See docs/errors.md#recompiles."
    )


def _values(values: list[int]) -> str:
    shown = ", ".join(map(str, values[:12]))
    return f"{shown}, ... ({len(values)} values)" if len(values) > 12 else shown


def _nth(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
