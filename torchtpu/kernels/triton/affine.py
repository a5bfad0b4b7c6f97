"""Affine tile accesses: loads and stores as slices and reshapes of the flat buffer.

A pointer's offsets are often affine: ``pid * BLOCK + tl.arange(0, BLOCK)``, or
``row * stride + cols``. Next to a ``Value``'s data the builder keeps, where it can, an
``Affine``: the offset of lane ``i`` of program ``p`` is ``base[p] + sum(coef[j] * i[j])``.
``base`` holds one static integer per program (any function of the program id alone:
``tl.program_id`` starts it, and every integer op on such scalars is run in NumPy over all
programs, so the grouped ``pid // ...``, ``% ...`` of a matmul stay known); ``coef`` is one
static integer per block axis. Integer kernel arguments are static (the launch is traced per
value of its scalar arguments), as are ``tl.arange`` blocks and Python loop indices; data
loaded from memory, and the index of a loop with a traced trip count, are not, and a pointer
built from them has no affine form and is gathered.

:func:`plan` turns an affine form, the block shape and the buffer's size into a ``Layout``:
steps of pad / slice / reshape / transpose / broadcast that take the flat buffer to the block
of every program at once, shape ``(programs, *block)``. It finds a mixed-radix split of the
program id in which ``base`` is affine (``(groups, pn, pm % GROUP)`` for a grouped matmul;
where there is none, a few consecutive runs of programs that each have one), then orders all
axes by stride. Rows that overlap are cut to the lanes a static mask keeps (a softmax row block
wider than the row), or padded where the mask's bounds (:func:`bound`: ``cols < N`` kept next
to the mask as ``Value.cond``) drop the lanes past a row's end (a 2-D tile at the right edge);
a load reads other overlapping rows as windows (a few shifted slices side by side: a
convolution's ``x[i + j]``). :func:`load` runs the steps inside the vmap over programs through
``jax.custom_batching.custom_vmap``: batched over the program id, the rule returns the whole
grid's blocks; no gather is emitted. :func:`store` runs the steps backwards (each step has an
exact inverse) to place a store's values, stacked over programs, into the buffer: a ``select``
between the old and the new, not a scatter; it needs the lanes to hit distinct addresses
(checked statically). :func:`dot` multiplies two such loads' blocks as they lie in memory, once
for the whole grid: a matmul kernel's K-loop becomes one ``dot_general``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap


@dataclasses.dataclass(frozen=True, eq=False)  # eq: ``base`` is an array
class Affine:
    """Offsets ``base[p] + sum(coef[j] * i[j])``: ``base`` a 0-d (the same for every program)
    or 1-d (one per program) int64 NumPy array, ``coef`` one int per block axis."""

    base: np.ndarray
    coef: tuple[int, ...]

    @staticmethod
    def make(base: Any, coef: tuple[int, ...]) -> Affine:
        base = np.asarray(base, np.int64)
        if base.ndim == 1 and base.size and (base == base[0]).all():
            base = base[0]
        return Affine(base, tuple(int(c) for c in coef))

    @property
    def uniform(self) -> bool:
        """A scalar per program (no block axes with a stride)."""
        return not any(self.coef)


def coefs_of(arr: np.ndarray) -> tuple[int, tuple[int, ...]] | None:
    """``(origin, strides)`` if ``arr[i] == origin + sum(strides[j] * i[j])``, else None."""
    arr = np.asarray(arr, np.int64)
    if arr.size == 0:
        return None
    origin = int(arr.reshape(-1)[0])
    coef = []
    rebuilt = np.full(arr.shape, origin, np.int64)
    for j, size in enumerate(arr.shape):
        if size < 2:
            coef.append(0)
            continue
        step = int(np.take(arr, 1, axis=j).reshape(-1)[0] - origin)
        coef.append(step)
        shape = [1] * arr.ndim
        shape[j] = size
        rebuilt = rebuilt + step * np.arange(size, dtype=np.int64).reshape(shape)
    return (origin, tuple(coef)) if np.array_equal(rebuilt, arr) else None


def of(value: Any) -> Affine | None:
    """The affine form of a ``Value``'s integer offsets: the one tracked, or, for static NumPy
    data (``tl.arange`` blocks, constants), the one found in it."""
    if value.aff is not None:
        return value.aff
    data = value.data
    if not isinstance(data, np.ndarray | np.generic) or data.dtype.kind not in "iu":
        return None
    found = coefs_of(data) if np.ndim(data) else (int(data), ())
    return None if found is None else Affine.make(found[0], found[1])


def _static_scalar(a: Affine) -> int | None:
    return int(a.base) if a.base.ndim == 0 and not any(a.coef) else None


def add(a: Affine | None, b: Affine | None, sign: int = 1) -> Affine | None:
    if a is None or b is None:
        return None
    if len(a.coef) != len(b.coef):
        if a.coef and b.coef:
            return None
        n = max(len(a.coef), len(b.coef))
        a, b = (Affine(x.base, x.coef or (0,) * n) for x in (a, b))
    coef = tuple(x + sign * y for x, y in zip(a.coef, b.coef, strict=True))
    return Affine.make(a.base + sign * b.base, coef)


def mul(a: Affine | None, b: Affine | None) -> Affine | None:
    if a is None or b is None:
        return None
    for x, y in ((a, b), (b, a)):
        k = _static_scalar(y)
        if k is not None:
            return Affine.make(x.base * k, tuple(c * k for c in x.coef) or y.coef)
    if a.uniform and b.uniform:
        return Affine.make(a.base * b.base, a.coef or b.coef)
    return None


def uniform(fn: Any, args: list[Any], dtype: Any) -> Affine | None:
    """An integer op on per-program scalars, run in NumPy over every program."""
    affs = [of(v) for v in args]
    if any(a is None or a.coef for a in affs) or np.dtype(dtype).kind not in "iu":
        return None
    with np.errstate(all="ignore"):
        out = fn(*[a.base.astype(dtype) for a in affs])
    return Affine.make(np.asarray(out).astype(dtype), ())


def broadcast(a: Affine | None, old: tuple[int, ...], new: tuple[int, ...]) -> Affine | None:
    """``old``-shaped offsets broadcast to ``new`` (size-1 axes get stride 0)."""
    if a is None:
        return None
    coef = a.coef or (0,) * len(old)
    coef = (0,) * (len(new) - len(old)) + tuple(
        0 if size == 1 else c for size, c in zip(old, coef, strict=True)
    )
    return Affine(a.base, coef)


def expand_dims(a: Affine | None, axis: int, ndim: int) -> Affine | None:
    if a is None:
        return None
    coef = list(a.coef or (0,) * ndim)
    coef.insert(axis % (ndim + 1), 0)
    return Affine(a.base, tuple(coef))


def bounds(a: Affine, shape: tuple[int, ...]) -> tuple[int, int]:
    """The least and greatest offset over every program and lane."""
    coef = a.coef or (0,) * len(shape)
    lo, hi = int(np.min(a.base)), int(np.max(a.base))
    for c, size in zip(coef, shape, strict=True):
        lo += min(0, c * (size - 1))
        hi += max(0, c * (size - 1))
    return lo, hi


_HOLDS = {  # (always, never) for the range [lo, hi] of lhs - rhs
    "less": (lambda lo, hi: hi < 0, lambda lo, hi: lo >= 0),
    "less_equal": (lambda lo, hi: hi <= 0, lambda lo, hi: lo > 0),
    "greater": (lambda lo, hi: lo > 0, lambda lo, hi: hi <= 0),
    "greater_equal": (lambda lo, hi: lo >= 0, lambda lo, hi: hi < 0),
}


def bound(fn: str, a: Affine | None, b: Affine | None, shape: tuple[int, ...]) -> Any:
    """``a fn b`` as the one-term conjunction ``((a - b, fn),)`` (``a - b fn 0``), or None."""
    diff = add(a, b, -1)
    if diff is None or fn not in _HOLDS or len(diff.coef or shape) != len(shape):
        return None
    lo, hi = bounds(diff, shape)
    if lo < -(2**31) or hi >= 2**31:  # the int32 data may have wrapped
        return None
    return ((diff, fn),)


def compare(fn: str, a: Affine | None, b: Affine | None, shape: tuple[int, ...]) -> bool | None:
    """The comparison's result where it is the same in every program and lane (a bounds
    check such as ``offs < n`` on a grid that does not overrun), else None."""
    term = bound(fn, a, b, shape)
    if term is None:
        return None
    lo, hi = bounds(term[0][0], shape)
    always, never = _HOLDS[fn]
    return True if always(lo, hi) else False if never(lo, hi) else None


# ----------------------------------------------------------------------------- layouts


@dataclasses.dataclass(frozen=True)
class Layout:
    """How to take every program's block (the lanes in ``box``) from a flat buffer.

    ``steps`` go from the buffer to ``(programs, *box shape)`` (no program axis if the
    offsets are the same for every program); ``pad_box`` then pads it to the block shape.
    ``inside``: every lane of the box is within the buffer. ``distinct``: no two lanes share
    an address (a store may use the inverse steps). ``pieces``: where the program ids form
    no one grid, consecutive runs of them that do (then ``steps`` is empty). ``grid``: the
    split of the program id
    (empty if the offsets are the same in every program); the first ``core`` steps give an
    array over the ``real`` axes only (of ``(*grid, *block)``, those with a stride), in order."""

    steps: tuple[tuple[str, Any, tuple[int, ...]], ...]
    per_program: bool
    box: tuple[tuple[int, int], ...]
    shape: tuple[int, ...]
    inside: bool
    distinct: bool
    grid: tuple[int, ...] = ()
    real: tuple[int, ...] = ()
    core: int = 0
    pieces: tuple[tuple[int, int, Layout], ...] = ()  # runs of programs, each its own grid


def _shapes(n: int, limit: int = 1 << 20) -> list[tuple[int, ...]]:
    """Ways to split ``n`` programs into a row-major grid of up to three axes."""
    out: list[tuple[int, ...]] = [(n,)]
    if n > limit:
        return out
    divs = [d for d in range(2, n) if n % d == 0]
    out += [(d, n // d) for d in divs]
    out += [(a, b, n // (a * b)) for a, b in itertools.product(divs, divs) if n % (a * b) == 0]
    return [s for s in out if all(x > 1 for x in s) or s == (n,)]


def _split_programs(base: np.ndarray) -> tuple[tuple[int, ...], int, tuple[int, ...]] | None:
    """A grid shape of the program id in which ``base`` is affine: (shape, origin, strides)."""
    for shape in _shapes(base.size):
        found = coefs_of(base.reshape(shape))
        if found is not None:
            return shape, found[0], found[1]
    return None


def _runs(base: np.ndarray, most: int = 4, limit: int = 2048) -> list[tuple[int, int]] | None:
    """Consecutive runs of programs, each a grid in which ``base`` is affine, longest first
    (a grouped matmul: its full groups, then the partial last one), or None."""
    if base.size > limit:
        return None
    runs: list[tuple[int, int]] = []
    start = 0
    while start < base.size:
        if len(runs) == most:
            return None
        rest = base[start:]
        best = 1
        for c in range(1, rest.size + 1):
            if coefs_of(rest[:c]) is None:  # nor is any longer row: stop
                break
            for b in range(1, rest.size // c + 1):
                if coefs_of(rest[: b * c].reshape(b, c)) is None:
                    break
                n = rest.size // (b * c) * b * c
                if n > best and coefs_of(rest[:n].reshape(-1, b, c)) is not None:
                    best = n
        runs.append((start, start + best))
        start += best
    return runs


def _piecewise(base: tuple[int, ...], coef: Any, shape: Any, box: Any, size: int, terms: Any):
    runs = _runs(np.asarray(base, np.int64))
    if runs is None or len(runs) < 2:
        return None
    pieces = []
    for lo, hi in runs:
        cut = tuple((b[lo:hi] if isinstance(b, tuple) else b, c, fn) for b, c, fn in terms)
        piece = _plan(base[lo:hi], coef, shape, box, size, cut)
        if piece is None:
            return None
        pieces.append((lo, hi, piece))
    parts = [p for _, _, p in pieces]
    return Layout(
        (),
        True,
        box,
        shape,
        inside=all(p.inside for p in parts),
        distinct=all(p.distinct for p in parts),
        pieces=tuple(pieces),
    )


def box_of(mask: Any, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...] | None:
    """The bounding box of the lanes a static mask keeps (the whole block where the mask is
    traced or absent); None where it keeps no lane."""
    if not isinstance(mask, np.ndarray | np.generic):
        return tuple((0, s) for s in shape)
    keep = np.broadcast_to(np.asarray(mask, bool), shape)
    if not keep.any():
        return None
    box = []
    for j in range(len(shape)):
        hit = np.nonzero(keep.any(axis=tuple(k for k in range(len(shape)) if k != j)))[0]
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


_MAX_WINDOWS = 8  # shifted copies of a buffer for overlapping rows; more: gather


@functools.lru_cache(maxsize=4096)
def _plan(
    base: tuple[int, ...] | int,
    coef: tuple[int, ...],
    shape: tuple[int, ...],
    box: tuple[tuple[int, int], ...],
    size: int,
    terms: tuple[tuple[Any, tuple[int, ...], str], ...] = (),
) -> Layout | None:
    steps: list[tuple[str, Any, tuple[int, ...]]] = []
    cur: tuple[int, ...] = (size,)

    def step(kind: str, arg: Any, out: tuple[int, ...]) -> None:
        nonlocal cur
        steps.append((kind, arg, cur))
        cur = out

    if isinstance(base, tuple):
        split = _split_programs(np.asarray(base, np.int64))
        if split is None:
            return _piecewise(base, coef, shape, box, size, terms)
        grid, origin, grid_coef = split
    else:
        grid, origin, grid_coef = (), base, ()
    sizes = [hi - lo for lo, hi in box]
    origin += sum(lo * c for (lo, _), c in zip(box, coef, strict=True))
    axes = list(zip((*grid, *sizes), (*grid_coef, *coef), strict=True))
    real = [k for k, (s, c) in enumerate(axes) if s > 1 and c != 0]
    spread = [k for k, (s, c) in enumerate(axes) if s > 1 and c == 0]
    if any(axes[k][1] < 0 for k in real):
        return None
    order = sorted(real, key=lambda k: -axes[k][1])
    bounds = _mask_bounds(terms, grid, box, axes)
    inner = 1  # the span of the axes inside the one being placed (of lanes the mask keeps)
    windows: dict[int, int] = {}  # overlapping rows, read as shifted windows: how many
    for i in reversed(range(len(order))):
        s, c = axes[order[i]]
        if inner > c:  # rows overlap: padded if the mask drops the lanes past a row's end
            live = _live(bounds, order[i + 1 :], axes)
            if live is not None and live <= c:
                inner = live  # the rest are read as zeros (padding), and masked
            else:
                windows[i] = 0  # else each row is a window into the next (loads only)
        inner = c * (s - 1) + inner
    need = [1] * (len(order) + 1)  # the length of the segment an axis takes its rows from
    for i in reversed(range(len(order))):
        s, c = axes[order[i]]
        if i in windows:
            windows[i] = -(-need[i + 1] // c)
            if windows[i] > _MAX_WINDOWS:
                return None
            need[i] = (s + windows[i] - 1) * c
        else:
            need[i] = s * c
    last = origin + inner - 1
    length = need[0]
    lo_pad, hi_pad = max(0, -origin), max(0, origin + length - size)
    if lo_pad or hi_pad:
        step("pad", ((lo_pad, hi_pad),), (size + lo_pad + hi_pad,))
    step("slice", ((origin + lo_pad, origin + lo_pad + length),), (length,))
    lead: list[int] = []
    for i, k in enumerate(order):
        s, c = axes[k]
        want = need[i + 1]
        if i in windows:
            q = windows[i]
            step("window", (s, c, q), (*lead, s, q * c))
            step("slice", ((0, want),), (*lead, s, want))
        elif c > 1 or i + 1 < len(order):  # (a stride-1 axis with inner ones: rows padded)
            step("reshape", (*lead, s, c), (*lead, s, c))
            if want < c:
                step("slice", ((0, want),), (*lead, s, want))
            elif want > c:
                step("pad", ((0, want - c),), (*lead, s, want))
            if i + 1 == len(order):
                step("reshape", (*lead, s), (*lead, s))
        lead.append(s)
    if not order:
        step("reshape", (), ())
    perm = tuple(int(i) for i in np.argsort(order))
    if perm != tuple(range(len(perm))):
        step("transpose", perm, tuple(cur[i] for i in perm))
    core = len(steps)
    full = tuple(s for s, _ in axes)
    if spread:
        step("broadcast", (full, tuple(sorted(real))), full)
    elif full != cur:
        step("reshape", full, full)
    n = int(np.prod(grid)) if grid else 0
    if grid and len(grid) != 1:
        step("reshape", (n, *sizes), (n, *sizes))
    return Layout(
        tuple(steps),
        bool(grid),
        box,
        shape,
        inside=origin >= 0 and last < size,
        distinct=not spread and not windows,
        grid=tuple(grid),
        real=tuple(sorted(real)),
        core=core,
    )


def _key(a: Affine, ndim: int) -> tuple[Any, tuple[int, ...]]:
    base = tuple(int(b) for b in a.base) if a.base.ndim else int(a.base)
    return base, a.coef or (0,) * ndim


def plan(aff: Affine, shape: tuple[int, ...], box: Any, size: int, terms: Any = ()) -> Any:
    """The layout of ``aff``'s lanes (those in ``box``) in a buffer of ``size`` elements, or
    None if it is not slices and reshapes (then the access is a gather/scatter). ``terms``:
    the access's mask as affine bounds (``bound``), which may show that lanes running past
    the end of a row are masked (a 2-D tile at the right edge), so rows may be padded."""
    base, coef = _key(aff, len(shape))
    if len(coef) != len(shape):
        return None
    keys = tuple((*_key(a, len(shape)), fn) for a, fn in terms or ())
    return _plan(base, coef, tuple(shape), tuple(box), size, keys)


def _mask_bounds(terms: Any, grid: tuple[int, ...], box: Any, axes: list) -> list:
    """The mask's bounds ``d0 + sum(e[a] * x[a]) < 0`` (or ``<= 0``) over the layout's
    axes (the program grid split as the offsets' is, the box's origin folded in)."""
    out = []
    for base, coef, fn in terms:
        if fn not in ("less", "less_equal") or len(coef) != len(box):
            continue
        if isinstance(base, tuple):
            found = coefs_of(np.asarray(base, np.int64).reshape(grid)) if grid else None
            if found is None:
                continue
            d0, grid_coef = found
        else:
            d0, grid_coef = base, (0,) * len(grid)
        d0 += sum(lo * e for (lo, _), e in zip(box, coef, strict=True))
        bias = 0 if fn == "less" else 1  # x <= 0 is x < 1
        out.append((d0 - bias, (*grid_coef, *coef)))
    return out


def _live(bounds: list, inside: list[int], axes: list) -> int | None:
    """An exclusive bound on the offset within a row of the lanes the mask keeps, from a
    bound over exactly the row's own axes (``inside``) with strides proportional to theirs."""
    best = None
    for d0, e in bounds:
        if any(e[a] and axes[a][0] > 1 for a in range(len(axes)) if a not in inside):
            continue
        scale = {axes[a][1] // e[a] for a in inside if e[a] > 0 and axes[a][1] % e[a] == 0}
        if len(scale) != 1 or any(e[a] * next(iter(scale)) != axes[a][1] for a in inside):
            continue
        live = -d0 * next(iter(scale))  # offset = scale * (x - d0) < -scale * d0
        best = live if best is None else min(best, live)
    return best


def _forward(x: Any, steps: Any) -> Any:
    for kind, arg, _ in steps:
        if kind == "pad":
            cfg = [(0, 0, 0)] * (x.ndim - len(arg)) + [(lo, hi, 0) for lo, hi in arg]
            x = jax.lax.pad(x, jnp.zeros((), x.dtype), cfg)
        elif kind == "slice":
            starts = [0] * (x.ndim - len(arg)) + [lo for lo, _ in arg]
            stops = list(x.shape[: x.ndim - len(arg)]) + [hi for _, hi in arg]
            x = jax.lax.slice(x, starts, stops)
        elif kind == "reshape":
            x = x.reshape(arg)
        elif kind == "transpose":
            x = x.transpose(arg)
        elif kind == "window":  # rows of c, each reading q * c: q shifted copies side by side
            s, c, q = arg
            lead = x.shape[:-1]
            rows = [x[..., t * c : t * c + s * c].reshape(*lead, s, c) for t in range(q)]
            x = jnp.concatenate(rows, -1)
        else:  # broadcast
            x = jax.lax.broadcast_in_dim(x, *arg)
    return x


def _backward(x: Any, steps: Any) -> Any:
    """The inverse of ``_forward`` for distinct lanes: values back at their offsets, zeros
    (or False) at every other element."""
    for kind, arg, before in reversed(steps):
        if kind == "pad":
            lead = before[: len(before) - len(arg)]
            starts = [0] * len(lead) + [lo for lo, _ in arg]
            kept = zip(arg, before[len(lead) :], strict=True)
            stops = list(lead) + [lo + n for (lo, _), n in kept]
            x = jax.lax.slice(x, starts, stops)
        elif kind == "slice":
            lead = len(before) - len(arg)
            cfg = [(0, 0, 0)] * lead + [
                (lo, n - hi, 0) for (lo, hi), n in zip(arg, before[lead:], strict=True)
            ]
            x = jax.lax.pad(x, jnp.zeros((), x.dtype), cfg)
        elif kind == "reshape":
            x = x.reshape(before)
        else:  # transpose (broadcasts are never distinct)
            x = x.transpose(tuple(int(i) for i in np.argsort(arg)))
    return x


def _pad_box(x: Any, layout: Layout, fill: Any = 0) -> Any:
    lead = [(0, 0, 0)] if layout.per_program else []
    cfg = lead + [(lo, s - hi, 0) for (lo, hi), s in zip(layout.box, layout.shape, strict=True)]
    if all(c == (0, 0, 0) for c in cfg):
        return x
    return jax.lax.pad(x, jnp.asarray(fill, x.dtype), cfg)


def _blocks(buf: Any, layout: Layout, fill: Any) -> Any:
    """Every program's block (``(programs, *block)``, or ``block`` if it is the same for
    all), lanes outside the box ``fill``."""
    if layout.pieces:
        return jnp.concatenate([_blocks(buf, p, fill) for _, _, p in layout.pieces], 0)
    return _pad_box(_forward(buf, layout.steps), layout, fill)


def load(buf: Any, off: Any, pid: Any, layout: Layout, fill: Any = 0) -> Any:
    """The block of lanes ``off`` of ``buf`` for the program ``pid`` (lanes outside the
    layout's box are ``fill``); under the vmap over programs, every program's block at once
    by ``layout`` (``off`` is then not used)."""
    if not layout.per_program:
        return _blocks(buf, layout, fill)

    @custom_vmap
    def take(buf: Any, off: Any, pid: Any) -> Any:
        return jnp.take(buf, off, mode="clip")

    @take.def_vmap
    def grid(size: int, batched: list[bool], buf: Any, off: Any, pid: Any) -> Any:
        if batched != [False, True, True]:  # not the vmap over programs: gather
            axes = [0 if b else None for b in batched]
            return jax.vmap(take.fun, in_axes=axes)(buf, off, pid), True
        return _blocks(buf, layout, fill), True

    return take(buf, off, pid)


def store(buf: Any, layout: Layout, vals: Any, mask: Any) -> Any:
    """``buf`` with ``vals`` (stacked over programs, the block's shape) stored where ``mask``
    holds, by the inverse of ``layout``'s steps (its lanes are distinct; runs of programs
    are stored one after another, so where two runs share an address the later one wins)."""
    if layout.pieces:
        for lo, hi, piece in layout.pieces:
            buf = store(buf, piece, vals[lo:hi], mask[lo:hi])
        return buf
    lead = (slice(None),) if layout.per_program else ()
    box = lead + tuple(slice(lo, hi) for lo, hi in layout.box)
    vals = _backward(vals[box].astype(buf.dtype), layout.steps)
    hit = _backward(mask[box], layout.steps)
    return jnp.where(hit, vals, buf)


def dot(bufs: Any, tiles: Any, pid: Any, layouts: Any, masks: Any, acc: Any) -> Any:
    """``tiles[0] @ tiles[1]`` (accumulated in ``acc``) for the program ``pid``; under the
    vmap over programs, when both tiles are affine loads (``layouts`` of ``bufs``, masked by
    affine bounds, ``masks``: (terms, other)), one ``dot_general`` of the blocks as they lie
    in memory: the grouped programs of a matmul share row and column blocks, so this is the
    full matmul, not one per program."""
    la, lb = layouts

    def mm(a: Any, b: Any) -> Any:
        return jnp.matmul(a, b, preferred_element_type=acc)

    if not (la.per_program or lb.per_program):
        return mm(*tiles)

    @custom_vmap
    def per_program(buf_a: Any, buf_b: Any, a: Any, b: Any, pid: Any) -> Any:
        return mm(a, b)

    @per_program.def_vmap
    def grid(size: int, batched: list[bool], buf_a: Any, buf_b: Any, a: Any, b: Any, pid: Any):
        out = None
        if batched[:2] == [False, False] and batched[4]:
            out = _grid_dot(buf_a, buf_b, la, lb, masks, acc, size)
        if out is None:
            axes = [0 if x else None for x in batched[2:4]]
            out = jax.vmap(mm, in_axes=axes)(a, b)
        return out, True

    return per_program(*bufs, *tiles, pid)


def _grid_dot(buf_a: Any, buf_b: Any, la: Layout, lb: Layout, masks: Any, acc: Any, n: int):
    if la.pieces or lb.pieces:  # run by run, if the two tiles' runs are the same
        runs = [(lo, hi) for lo, hi, _ in la.pieces]
        if runs != [(lo, hi) for lo, hi, _ in lb.pieces]:
            return None
        outs = []
        for (lo, hi, pa), (_, _, pb) in zip(la.pieces, lb.pieces, strict=True):
            cut = tuple(
                (tuple((_cut(a, lo, hi), fn) for a, fn in terms), fill) for terms, fill in masks
            )
            outs.append(_grid_dot(buf_a, buf_b, pa, pb, cut, acc, hi - lo))
        return None if any(o is None for o in outs) else jnp.concatenate(outs, 0)
    grid = la.grid or lb.grid
    if la.grid and lb.grid and la.grid != lb.grid or len(la.shape) != 2 or len(lb.shape) != 2:
        return None
    letters = iter("abcdefgh")
    names = {f"p{k}": next(letters) for k in range(len(grid))} | {"i": "x", "k": "y", "j": "z"}

    def labelled(layout: Layout, buf: Any, block: tuple[str, str], mask: Any) -> Any:
        g = len(layout.grid)
        labels = [f"p{k}" if k < g else block[k - g] for k in layout.real]
        x = _forward(buf, layout.steps[: layout.core])
        terms, fill = mask
        for aff, fn in terms:
            value = _over_real(aff, layout, x.shape)
            if value is None:
                return None, ""
            x = jnp.where(_TEST[fn](value), x, jnp.asarray(fill, x.dtype))
        return x, "".join(names[label] for label in labels)

    xa, sa = labelled(la, buf_a, ("i", "k"), masks[0])
    xb, sb = labelled(lb, buf_b, ("k", "j"), masks[1])
    if "y" not in sa or "y" not in sb:
        return None
    full = [names[f"p{k}"] for k in range(len(grid))] + ["x", "z"]
    kept = [c for c in full if c in sa or c in sb]
    out = jnp.einsum(f"{sa},{sb}->{''.join(kept)}", xa, xb, preferred_element_type=acc)
    shape = (*grid, la.shape[0], lb.shape[1])
    out = jax.lax.broadcast_in_dim(out, shape, tuple(full.index(c) for c in kept))
    return out.reshape(n, *shape[len(grid) :])


def _cut(a: Affine, lo: int, hi: int) -> Affine:
    return Affine.make(a.base[lo:hi], a.coef) if a.base.ndim else a


_TEST = {
    "less": lambda v: v < 0,
    "less_equal": lambda v: v <= 0,
    "greater": lambda v: v > 0,
    "greater_equal": lambda v: v >= 0,
}


def _over_real(a: Affine, layout: Layout, shape: tuple[int, ...]) -> Any:
    """``a``'s values over the array ``layout``'s first ``core`` steps give (its ``real``
    axes), or None where ``a`` varies along an axis that array does not have."""
    grid, block = layout.grid, layout.shape
    if a.base.ndim:
        found = coefs_of(a.base.reshape(grid)) if grid else None
        if found is None:
            return None
        origin, grid_coef = found
    else:
        origin, grid_coef = int(a.base), (0,) * len(grid)
    value: Any = jnp.asarray(origin, jnp.int64)
    coef = (*grid_coef, *(a.coef or (0,) * len(block)))
    for k, (c, size) in enumerate(zip(coef, (*grid, *block), strict=True)):
        if c == 0 or size == 1:
            continue
        if k not in layout.real:
            return None
        iota = jax.lax.broadcasted_iota(jnp.int64, shape, layout.real.index(k))
        value = value + c * iota
    return value
