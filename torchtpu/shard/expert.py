"""Expert parallelism: grouped matmuls whose experts are split over the ``expert``
mesh axis, run as a ``jax.shard_map`` with all-to-all dispatch and combine.

A mixture-of-experts layer hands its grouped matmul the token rows sorted by
expert (``a``, (M, K)), the stacked expert weights (``b``, (G, K, N)) and the
group sizes. Left to GSPMD, ``ragged_dot`` on experts split over a mesh axis
would gather the weights onto every device. Here instead each device keeps only
its ``G / E`` experts (E: the ``expert`` axis size) and the tokens travel:

1. the sorted rows are cut into one chunk per device (every mesh axis; the
   devices of one ``expert`` row, a *group*, hold a contiguous run of rows);
2. **dispatch**: each device sends each of its group's devices the rows of its
   chunk that belong to that device's experts (``all_to_all`` over ``expert``).
   The rows are sorted, so what a device receives, in source order, is one
   contiguous run of the sorted rows: its experts' tokens of the group;
3. the device runs the grouped matmul on its own experts only;
4. **combine**: the results go back the way they came (a second ``all_to_all``)
   and each device puts them at its chunk's rows.

The weight gradient (the contraction form, (K, M) x (M, N) -> (G, K, N))
dispatches the rows of both operands the same way, computes each device's
experts' gradients from its group's tokens and sums them over the groups
(``psum`` over the other axes); the result stays split over ``expert``.

Shapes are static and nothing is dropped: each of the E slots of a device's
send buffer holds up to a whole chunk (M / n rows, n devices), because all of a
chunk may belong to one device's experts. So a device's dispatch buffers hold
``E x M / n`` rows each way, its group's whole token set: the memory a
replicated grouped matmul of the group's tokens would take, and the padded
all-to-all sends (E-1)/E of it. ``jax.lax.ragged_all_to_all`` would send only
the real rows, but XLA:CPU does not implement it.

Example (what ``aten._grouped_mm``'s lowering does under an ``ExpertParallel``
strategy)::

    out = rows_grouped(a, b, sizes, mesh, op="_grouped_mm")   # inside the step's jit
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from torchtpu.errors import ShardingError
from torchtpu.lower.ops.grouped import ragged_contraction, ragged_rows
from torchtpu.shard.rules import EXPERT_AXIS


def expert_axis_size(mesh: Mesh | None) -> int:
    """The size of ``mesh``'s ``expert`` axis (1 without a mesh or without the axis).

    Example::

        expert_axis_size(torchtpu.ExpertParallel().mesh)   # 8 on 8 devices
    """
    if mesh is None or EXPERT_AXIS not in mesh.shape:
        return 1
    return int(mesh.shape[EXPERT_AXIS])


def _check_groups(op: str, groups: int, shapes: str, mesh: Mesh) -> None:
    n = expert_axis_size(mesh)
    if groups % n:
        raise ShardingError(
            f"{op} of {shapes}: {groups} expert groups do not divide by mesh axis "
            f"{EXPERT_AXIS!r} of size {n}. Use an expert axis size that divides {groups} "
            "(ExpertParallel(data=k) puts the other devices on a data axis)."
        )


class _Layout:
    """Where the sorted rows lie: ``n`` chunks of ``chunk`` rows, one per device,
    the devices of each ``expert`` row of the mesh holding a contiguous run."""

    def __init__(self, mesh: Mesh, rows: int) -> None:
        self.mesh = mesh
        self.others = tuple(a for a in mesh.axis_names if a != EXPERT_AXIS)
        self.e = int(mesh.shape[EXPERT_AXIS])
        self.n = int(mesh.devices.size)
        self.chunk = max(1, math.ceil(rows / self.n))
        self.padded = self.chunk * self.n
        # Rows split over every axis, the expert axis minor: a group's chunks are adjacent.
        self.row_spec = P((*self.others, EXPERT_AXIS))

    def group_index(self) -> Any:
        index = jnp.int32(0)
        for axis in self.others:
            index = index * self.mesh.shape[axis] + lax.axis_index(axis)
        return index

    def pad(self, x: Any) -> Any:
        return jnp.pad(x, ((0, self.padded - x.shape[0]), (0, 0)))

    def plan(self, sizes: Any, local_groups: int) -> dict[str, Any]:
        """Inside the shard_map: this device's share of the exchange, from the
        global group sizes (every device knows them, so no counts travel)."""
        c, e = self.chunk, self.e
        ends = jnp.cumsum(sizes)
        starts = ends - sizes
        shard = jnp.arange(e, dtype=jnp.int32)
        lo = starts[shard * local_groups]  # each device's experts' rows: [lo, hi)
        hi = ends[(shard + 1) * local_groups - 1]
        me = lax.axis_index(EXPERT_AXIS)
        group_base = self.group_index() * (e * c)
        base = group_base + me * c  # this device's chunk: [base, base + c)
        send_start = jnp.clip(lo - base, 0, c)  # per destination, within my chunk
        send_count = jnp.clip(hi - base, 0, c) - send_start
        # What I receive: my experts' rows of the group, [first, last).
        first = jnp.clip(lo[me], group_base, group_base + e * c)
        last = jnp.clip(hi[me], group_base, group_base + e * c)
        return {
            "c": c,
            "ends": ends,
            "starts": starts,
            "base": base,
            "group_base": group_base,
            "send_start": send_start,
            "send_count": send_count,
            "first": first,
            "last": last,
            "me": me,
        }


def _dispatch(x: Any, plan: dict[str, Any]) -> Any:
    """(c, F) rows of my chunk -> (E*c, F): my experts' rows of the group, in order,
    zero past the last."""
    c = plan["c"]
    r = jnp.arange(c, dtype=jnp.int32)
    index = plan["send_start"][:, None] + r[None, :]  # (E, c)
    valid = r[None, :] < plan["send_count"][:, None]
    send = jnp.where(valid[..., None], x[jnp.clip(index, 0, c - 1)], 0)
    recv = lax.all_to_all(send, EXPERT_AXIS, 0, 0, tiled=False)  # recv[i]: from device i
    e = recv.shape[0]
    row = plan["first"] + jnp.arange(e * c, dtype=jnp.int32)  # global rows, in order
    source = jnp.clip((row - plan["group_base"]) // c, 0, e - 1)
    offset = row - jnp.maximum(plan["first"], plan["group_base"] + source * c)
    keep = row < plan["last"]
    taken = recv[source, jnp.clip(offset, 0, c - 1)]
    return jnp.where(keep[:, None], taken, 0)


def _combine(y: Any, plan: dict[str, Any], groups: int, local_groups: int) -> Any:
    """(E*c, N) results of my experts' rows -> (c, N) results of my chunk's rows."""
    c = plan["c"]
    e = y.shape[0] // c
    source = jnp.arange(e, dtype=jnp.int32)
    # What I received from each source sat at these rows of the compacted buffer.
    start = jnp.maximum(plan["first"], plan["group_base"] + source * c) - plan["first"]
    r = jnp.arange(c, dtype=jnp.int32)
    back = y[jnp.clip(start[:, None] + r[None, :], 0, e * c - 1)]
    back = lax.all_to_all(back, EXPERT_AXIS, 0, 0, tiled=False)  # back[t]: from device t
    row = plan["base"] + r  # my chunk's global rows
    expert = jnp.searchsorted(plan["ends"], row, side="right").astype(jnp.int32)
    dest = jnp.clip(expert // local_groups, 0, e - 1)
    at = jnp.clip(r - plan["send_start"][dest], 0, c - 1)
    out = back[dest, at]
    return jnp.where((expert < groups)[:, None], out, 0)


def _local_sizes(plan: dict[str, Any], local_groups: int) -> Any:
    """The sizes of my experts' groups within the rows I received."""
    ids = plan["me"] * local_groups + jnp.arange(local_groups, dtype=jnp.int32)
    top = jnp.minimum(plan["ends"][ids], plan["last"])
    bottom = jnp.maximum(plan["starts"][ids], plan["first"])
    return jnp.maximum(top - bottom, 0).astype(jnp.int32)


def rows_grouped(a: Any, b: Any, sizes: Any, mesh: Mesh, *, op: str, dtype: Any = None) -> Any:
    """``a`` (M, K) sorted by group, ``b`` (G, K, N) split over ``expert``, ``sizes``
    (G,) -> (M, N), each device computing only its own experts' rows.

    Example::

        out = rows_grouped(tokens, w, sizes, mesh, op="_grouped_mm")
    """
    groups = b.shape[0]
    _check_groups(op, groups, f"{list(a.shape)} and {list(b.shape)}", mesh)
    layout = _Layout(mesh, a.shape[0])
    local_groups = groups // layout.e

    def body(a_loc, b_loc, sizes):
        plan = layout.plan(sizes, local_groups)
        mine = _dispatch(a_loc, plan)
        y = ragged_rows(mine, b_loc, _local_sizes(plan, local_groups), dtype)
        return _combine(y, plan, groups, local_groups)

    run = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(layout.row_spec, P(EXPERT_AXIS), P()),
        out_specs=layout.row_spec,
    )
    return run(layout.pad(a), b, sizes.astype(jnp.int32))[: a.shape[0]]


def contraction_grouped(
    a: Any, b: Any, sizes: Any, mesh: Mesh, *, op: str, groups: int, dtype: Any = None
) -> Any:
    """``a`` (K, M), ``b`` (M, N), M in ``groups`` groups -> (G, K, N) split over
    ``expert``: the weight gradient of :func:`rows_grouped`, each device summing
    its own experts' products over every group of the mesh.

    Example::

        grad_w = contraction_grouped(tokens.T, grad, sizes, mesh, op="_grouped_mm", groups=8)
    """
    _check_groups(op, groups, f"{list(a.shape)} and {list(b.shape)}", mesh)
    layout = _Layout(mesh, b.shape[0])
    local_groups = groups // layout.e
    k = a.shape[0]
    common = jnp.result_type(a.dtype, b.dtype)

    def body(rows_loc, sizes):
        plan = layout.plan(sizes, local_groups)
        mine = _dispatch(rows_loc, plan)  # both operands' rows in one exchange
        lhs, rhs = mine[:, :k].T, mine[:, k:]
        local = _local_sizes(plan, local_groups)
        out = ragged_contraction(lhs, rhs, local, dtype)
        return lax.psum(out, layout.others) if layout.others else out

    rows = jnp.concatenate([a.T.astype(common), b.astype(common)], axis=1)
    run = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(layout.row_spec, P()),
        out_specs=P(EXPERT_AXIS),
    )
    return run(layout.pad(rows), sizes.astype(jnp.int32))
