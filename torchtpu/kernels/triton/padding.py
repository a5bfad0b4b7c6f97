"""Padded lanes left out of a translated kernel's work.

A Triton kernel works on power-of-two blocks, so a row of 1000 values is loaded into a block of
1024 lanes with ``mask=cols < n, other=-inf`` (or ``other=0``). Translated, that load is a
``pad`` of the row, and everything after it runs on the padded width. XLA:CPU does not move
the pad out of its fused reductions: a row softmax over 1000 columns took 1.3x the time of the
same softmax without the pad (``benchmarks/kernels.py``).

``unpadded(fn)`` runs ``fn``'s jaxpr again, op by op, with two rewrites:

- **a reduction across the edge of a pad is split there**: ``max(pad(x, -inf))`` becomes
  ``max(max(x), max(broadcast(-inf)))``, and ``sum(exp(pad(x) - m))`` becomes
  ``sum(exp(x - m)) + sum(exp(broadcast(-inf) - m))``: the pieces are exact (no assumption
  about what the padding value does to the result), and XLA folds the small pad pieces;
- **a slice is taken before the elementwise ops that feed it**, down to the pad it undoes,
  so a store of the row's 1000 values computes 1000 lanes, not 1024.

Both are exact rewrites of the same arithmetic (a split sum adds the same terms in another
order, as XLA's own reductions may). Anything the rewrites do not know is bound unchanged.

Example::

    def f(x):  # x: (4096, 1000)
        p = jnp.pad(x, ((0, 0), (0, 24)), constant_values=-jnp.inf)
        return jax.nn.softmax(p, axis=1)[:, :1000]

    jax.jit(unpadded(f))(x)  # the same values; no 1024-wide array in the compiled program
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax import lax
from jax.extend import core as jcore

# Primitives whose output lane i depends only on the operands' lane i (operands of the output's
# shape, or scalars).
_ELEMENTWISE = frozenset(
    """add sub mul div rem neg exp exp2 log log1p expm1 tanh logistic sin cos tan asin acos atan
    sinh cosh asinh acosh atanh sqrt rsqrt cbrt abs sign floor ceil round max min pow
    integer_pow select_n convert_element_type eq ne lt le gt ge and or not xor shift_left
    shift_right_logical shift_right_arithmetic is_finite nextafter erf erfc erf_inv atan2
    clamp copy copy_p reduce_precision population_count clz square bitcast_convert_type""".split()
)
_COMBINE: dict[str, Callable[[Any, Any], Any]] = {
    "reduce_sum": lax.add,
    "reduce_max": lax.max,
    "reduce_min": lax.min,
    "reduce_and": lax.bitwise_and,
    "reduce_or": lax.bitwise_or,
    "reduce_prod": lax.mul,
}
_INLINED = frozenset({"jit", "pjit", "closed_call"})

Seams = dict[int, tuple[int, ...]]  # axis -> inner positions where a pad's edge lies


class _Node:
    """A value of the rerun and how it was made (its primitive, parameters and operands), so
    a slice or a piece of it can be made again from its operands."""

    __slots__ = ("ins", "params", "prim", "seams", "value")

    def __init__(self, value: Any, prim: Any = None, params: Any = None, ins: Any = ()) -> None:
        self.value, self.prim, self.params, self.ins = value, prim, params or {}, tuple(ins)
        self.seams: Seams = _seams(self) if prim is not None else {}

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(getattr(self.value, "shape", ()))


def unpadded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a JAX function of arrays) computing the same values with its reductions split at
    pad edges and its slices taken before the elementwise ops that feed them (module doc)."""

    def run(*args: Any) -> Any:
        flat, tree = jax.tree.flatten(args)
        closed, shapes = jax.make_jaxpr(
            lambda *xs: fn(*jax.tree.unflatten(tree, xs)), return_shape=True
        )(*flat)
        return jax.tree.unflatten(jax.tree.structure(shapes), rerun(closed, flat))

    return run


def rerun(closed: Any, args: list[Any]) -> list[Any]:
    """The outputs of the closed jaxpr ``closed`` on ``args`` (flat), with ``unpadded``'s
    rewrites."""
    consts = [_Node(c) for c in closed.consts]
    outs = _Rerun().jaxpr(closed.jaxpr, consts, [_Node(x) for x in args])
    return [n.value for n in outs]


class _Rerun:
    def __init__(self) -> None:
        self.cuts: dict[tuple[int, tuple[int, ...], tuple[int, ...]], _Node] = {}
        self.keep: list[_Node] = []  # memo keys are ids: keep their nodes alive

    def jaxpr(self, jaxpr: Any, consts: list[_Node], args: list[_Node]) -> list[_Node]:
        env: dict[Any, _Node] = {}

        def read(v: Any) -> _Node:
            return _Node(v.val) if isinstance(v, jcore.Literal) else env[v]

        env.update(zip(jaxpr.constvars, consts, strict=True))
        env.update(zip(jaxpr.invars, args, strict=True))
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            with eqn.ctx.manager:
                outs = self.eqn(eqn.primitive, eqn.params, ins)
            env.update(zip(eqn.outvars, outs, strict=True))
        return [read(v) for v in jaxpr.outvars]

    def eqn(self, prim: Any, params: dict[str, Any], ins: list[_Node]) -> list[_Node]:
        name = prim.name
        if name in _INLINED and "jaxpr" in params:
            inner = params["jaxpr"]
            consts = [_Node(c) for c in getattr(inner, "consts", ())]
            return self.jaxpr(getattr(inner, "jaxpr", inner), consts, ins)
        if name == "slice" and params.get("strides") is None:
            return [self.slice(ins[0], params["start_indices"], params["limit_indices"])]
        if name in _COMBINE and len(ins) == 1:
            return [self.reduce(prim, params, ins[0])]
        if prim.multiple_results:
            bind = prim.get_bind_params(params)
            return [_Node(v) for v in prim.bind(*(n.value for n in ins), **bind)]
        return [_apply(prim, params, ins)]

    def reduce(self, prim: Any, params: dict[str, Any], x: _Node) -> _Node:
        """``prim`` over ``params["axes"]`` of ``x``, one piece per stretch between seams."""
        axes = tuple(int(a) for a in params["axes"])
        axis = next((a for a in axes if x.seams.get(a)), None)
        if axis is None:
            return _apply(prim, params, [x])
        edges = (0, *x.seams[axis], x.shape[axis])
        total: Any = None
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            start = [0] * len(x.shape)
            limit = list(x.shape)
            start[axis], limit[axis] = lo, hi
            part = self.reduce(prim, params, self.slice(x, start, limit)).value
            total = part if total is None else _COMBINE[prim.name](total, part)
        return _Node(total)

    def slice(self, x: _Node, start: Any, limit: Any) -> _Node:
        start, limit = tuple(int(s) for s in start), tuple(int(e) for e in limit)
        if start == (0,) * len(start) and limit == x.shape:
            return x
        key = (id(x), start, limit)
        if key not in self.cuts:
            self.keep.append(x)
            self.cuts[key] = self._slice(x, start, limit)
        return self.cuts[key]

    def _slice(self, x: _Node, start: tuple[int, ...], limit: tuple[int, ...]) -> _Node:
        name = x.prim.name if x.prim is not None else None
        shape = tuple(e - s for s, e in zip(start, limit, strict=True))
        if name in _ELEMENTWISE and _lanewise(x):
            ins = [self._cut_operand(i, x.shape, start, limit) for i in x.ins]
            return _apply(x.prim, x.params, ins)
        if name == "broadcast_in_dim" and len(x.ins) == 1:
            (src,) = x.ins
            dims = tuple(int(d) for d in x.params["broadcast_dimensions"])
            s = [start[d] if n == x.shape[d] else 0 for n, d in zip(src.shape, dims, strict=True)]
            e = [limit[d] if n == x.shape[d] else n for n, d in zip(src.shape, dims, strict=True)]
            params = {**x.params, "shape": shape}
            return _apply(x.prim, params, [self.slice(src, s, e)])
        if name == "slice" and x.params.get("strides") is None:
            base = x.params["start_indices"]
            return self.slice(
                x.ins[0],
                [b + s for b, s in zip(base, start, strict=True)],
                [b + e for b, e in zip(base, limit, strict=True)],
            )
        if name == "pad" and _plain_pad(x.params["padding_config"]):
            return self._slice_pad(x, start, limit, shape)
        if name in _COMBINE and len(x.ins) == 1:  # a piece of a reduction's result
            (src,) = x.ins
            axes = {int(a) for a in x.params["axes"]}
            kept = [d for d in range(len(src.shape)) if d not in axes]
            s, e = [0] * len(src.shape), list(src.shape)
            for out_dim, d in enumerate(kept):
                s[d], e[d] = start[out_dim], limit[out_dim]
            return self.reduce(x.prim, x.params, self.slice(src, s, e))
        return _apply(
            lax.slice_p, {"start_indices": start, "limit_indices": limit, "strides": None}, [x]
        )

    def _cut_operand(self, i: _Node, shape: Any, start: Any, limit: Any) -> _Node:
        """The part of an elementwise op's operand ``i`` (a scalar, or of the op's rank with
        dimensions of size 1 broadcast) that the slice ``start:limit`` of its output reads."""
        if not i.shape:
            return i
        s = [a if n == m else 0 for n, m, a in zip(i.shape, shape, start, strict=True)]
        e = [b if n == m else n for n, m, b in zip(i.shape, shape, limit, strict=True)]
        return self.slice(i, s, e)

    def _slice_pad(self, x: _Node, start: Any, limit: Any, shape: tuple[int, ...]) -> _Node:
        src, fill = x.ins
        inner_s, inner_e, config = [], [], []
        for (lo, _, _), n, s, e in zip(
            x.params["padding_config"], src.shape, start, limit, strict=True
        ):
            a, b = max(s, lo), min(e, lo + n)
            if a >= b:  # this piece is all padding
                params = {"shape": shape, "broadcast_dimensions": (), "sharding": None}
                return _apply(lax.broadcast_in_dim_p, params, [fill])
            inner_s.append(a - lo)
            inner_e.append(b - lo)
            config.append((a - s, e - b, 0))
        inner = self.slice(src, inner_s, inner_e)
        if all(c == (0, 0, 0) for c in config):
            return inner
        return _apply(x.prim, {**x.params, "padding_config": tuple(config)}, [inner, fill])


def _apply(prim: Any, params: dict[str, Any], ins: list[_Node]) -> _Node:
    value = prim.bind(*(n.value for n in ins), **prim.get_bind_params(params))
    return _Node(value, prim, params, ins)


def _lanewise(x: _Node) -> bool:
    """Whether each operand of ``x`` is a scalar or of ``x``'s rank, each dimension its size
    or 1 (lax's binary ops broadcast dimensions of size 1)."""
    return all(
        not i.shape
        or len(i.shape) == len(x.shape)
        and all(n in (1, m) for n, m in zip(i.shape, x.shape, strict=True))
        for i in x.ins
    )


def _plain_pad(config: Any) -> bool:
    return all(lo >= 0 and hi >= 0 and interior == 0 for lo, hi, interior in config)


def _seams(x: _Node) -> Seams:
    """Where pad edges lie inside ``x``, per axis, from its operands'."""
    name, ins = x.prim.name, x.ins
    if name in _ELEMENTWISE and _lanewise(x):
        out: dict[int, set[int]] = {}
        for i in ins:
            for axis, pos in i.seams.items():
                if i.shape[axis] == x.shape[axis]:
                    out.setdefault(axis, set()).update(pos)
        return {a: tuple(sorted(p)) for a, p in out.items()}
    if name == "pad" and _plain_pad(x.params["padding_config"]):
        src = ins[0]
        seams: Seams = {}
        for axis, ((lo, _, _), n) in enumerate(
            zip(x.params["padding_config"], src.shape, strict=True)
        ):
            pos = {p + lo for p in src.seams.get(axis, ())}
            pos |= {p for p in (lo, lo + n) if 0 < p < x.shape[axis]}
            if pos:
                seams[axis] = tuple(sorted(pos))
        return seams
    if name == "broadcast_in_dim" and len(ins) == 1:
        dims = [int(d) for d in x.params["broadcast_dimensions"]]
        return {dims[a]: p for a, p in ins[0].seams.items() if ins[0].shape[a] == x.shape[dims[a]]}
    if name == "slice" and x.params.get("strides") is None:
        seams = {}
        for axis, pos in ins[0].seams.items():
            s, e = x.params["start_indices"][axis], x.params["limit_indices"][axis]
            kept = tuple(p - s for p in pos if s < p < e)
            if kept:
                seams[axis] = kept
        return seams
    if name in _COMBINE and len(ins) == 1:
        axes = {int(a) for a in x.params["axes"]}
        kept = [d for d in range(len(ins[0].shape)) if d not in axes]
        return {kept.index(a): p for a, p in ins[0].seams.items() if a in kept}
    return {}
