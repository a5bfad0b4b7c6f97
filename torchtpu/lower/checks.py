"""Index bounds checked on the device, raised on the host when results are read.

A compiled program cannot raise, and XLA's gathers and scatters clamp or drop
an index out of range (an embedding lookup returns a row of NaN). So an
indexing op's lowering calls :func:`bounds`: inside the program it computes
whether any index is out of range and the first one that is. Each program
returns those flags as one small extra output (``Program`` splits it off), and
they wait in :data:`_PENDING` until the host next reads a result (a CPU
tensor of ``torch.compile``'s, ``.cpu()``, ``.item()``, ``print``): only then
are they read, from a program that has already finished, so checking adds no
sync. A flag that is set raises :class:`IndexOutOfRangeError` naming the op,
the index, the size and the user's line.

``TORCHTPU_CHECK_BOUNDS=0`` (``set_options(check_bounds=False)``) compiles no
checks. The option is part of every program's cache key.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from torchtpu.config import options
from torchtpu.errors import IndexOutOfRangeError, is_user_frame, user_site


@dataclasses.dataclass(frozen=True)
class Check:
    """One bounds check of a program: what it checked, and where the op came from."""

    op: str
    size: int | str  # a str names a symbolic size (an exported program's batch)
    dim: int | None
    negative: bool  # indices in [-size, size) are valid, else [0, size)
    where: str | None  # the user's line, where the graph recorded it
    text: str | None = None  # a condition's own message, with ``{value}``

    def message(self, index: int, read_at: str) -> str:
        where = f"at {self.where}" if self.where else f"in the compiled code read at {read_at}"
        if self.text is not None:
            return (
                f"{self.op}: {self.text.format(value=index)}, {where}. Inside a compiled program "
                "this cannot raise, so the results computed from it are wrong. "
                "See docs/errors.md#index-out-of-range."
            )
        valid = f"[-{self.size}, {self.size})" if self.negative else f"[0, {self.size})"
        of = (
            f"dimension {self.dim} of size {self.size}"
            if self.dim is not None
            else (f"a size of {self.size}")
        )
        return (
            f"{self.op}: index {index} is out of range for {of} (valid: {valid}), "
            f"{where}. Eager PyTorch raises here too; inside a compiled program the "
            "index was clamped, so the results computed from it are wrong. Fix the index "
            "(a tokenizer id past the embedding's size, say). TORCHTPU_CHECK_BOUNDS=0 turns "
            "the check off. See docs/errors.md#index-out-of-range."
        )


# --- while a program is traced ------------------------------------------------------

_COLLECTING: list[list[tuple[Any, Any, Check]]] = []
_CURRENT_NODE: list[Any] = [None]
# A frame of a recorded stack trace (Dynamo's ``stack_trace``): its file and line.
FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def collecting() -> list[tuple[Any, Any, Check]]:
    """Start collecting the checks of the program being traced; the caller pops the
    list with :func:`done` after tracing."""
    found: list[tuple[Any, Any, Check]] = []
    _COLLECTING.append(found)
    return found


def done(found: list[tuple[Any, Any, Check]]) -> None:
    _COLLECTING.remove(found)


def at_node(node: Any) -> None:
    """The interpreter says which FX node it lowers, for the check's source line."""
    _CURRENT_NODE[0] = node


def bounds(op: str, index: Any, size: int, *, dim: int | None = None, negative: bool) -> None:
    """Check inside the program that every element of ``index`` (a traced integer
    array) is in ``[-size, size)`` (``negative=True``) or ``[0, size)``."""
    if not _COLLECTING or not options().check_bounds:
        return
    index = jnp.asarray(index)
    if index.size == 0 or not jnp.issubdtype(index.dtype, jnp.integer):
        return
    flat = index.reshape(-1).astype(jnp.int64)
    bad = (flat < (-size if negative else 0)) | (flat >= size)
    first = flat[jnp.argmax(bad)]
    size_text = str(size) if jax.export.is_symbolic_dim(size) else int(size)
    check = Check(op, size_text, dim, negative, node_line(_CURRENT_NODE[0]))
    _COLLECTING[-1].append((jnp.any(bad), first, check))


def condition(op: str, bad: Any, value: Any, text: str) -> None:
    """Check inside the program that ``bad`` (a traced bool) is false; ``text`` says
    what was wrong, with ``{value}`` (a traced integer) filled in."""
    if not _COLLECTING or not options().check_bounds:
        return
    check = Check(op, 0, None, False, node_line(_CURRENT_NODE[0]), text)
    _COLLECTING[-1].append((jnp.asarray(bad), jnp.asarray(value).astype(jnp.int64), check))


def packed(found: list[tuple[Any, Any, Check]]) -> tuple[Any, list[Check]]:
    """One int64 vector of (flag, first bad index) pairs, and the checks it holds."""
    lanes = [v for flag, first, _ in found for v in (flag.astype(jnp.int64), first)]
    return jnp.stack(lanes), [c for _, _, c in found]


def node_line(node: Any) -> str | None:
    """The innermost user frame of the node's recorded stack (Dynamo's
    ``stack_trace``, or device mode's ``torchtpu_site``), else ``None``."""
    meta = getattr(node, "meta", None) or {}
    if meta.get("torchtpu_site"):
        return meta["torchtpu_site"]
    for path, line in reversed(FRAME.findall(meta.get("stack_trace") or "")):
        if is_user_frame(path):
            return f"{path}:{line}"
    return None


# Ops whose lowerings call bounds(): device mode records the user's line for them.
CHECKED_OPS = frozenset(
    "embedding index index_select gather take put scatter scatter_add scatter_reduce "
    "index_put _unsafe_index_put _index_put_impl index_add index_copy index_fill".split()
)


# --- when results are read ----------------------------------------------------------

_PENDING: list[tuple[jax.Array, list[Check]]] = []
_READY_SCAN = 64  # look at finished flags once this many wait, to keep the list short


def pending(flags: jax.Array, checks: list[Check]) -> None:
    """A program ran: its flags wait for the next read."""
    _PENDING.append((flags, checks))
    if len(_PENDING) >= _READY_SCAN:
        for item in [p for p in _PENDING if p[0].is_ready()]:
            _PENDING.remove(item)
            if _violation(item) is not None:
                _PENDING.insert(0, item)  # the next read raises it
                return


def raise_pending() -> None:
    """Read every waiting flag; raise for the first index out of range."""
    if not _PENDING:
        return
    waiting = list(_PENDING)
    _PENDING.clear()
    for item in waiting:
        found = _violation(item)
        if found is not None:
            raise IndexOutOfRangeError(found)


def _violation(item: tuple[jax.Array, list[Check]]) -> str | None:
    flags, checks = item
    values = np.asarray(flags)
    for k, check in enumerate(checks):
        if values[2 * k]:
            return check.message(int(values[2 * k + 1]), user_site())
    return None
