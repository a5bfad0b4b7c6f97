"""Tracing a training step into one functional ATen graph.

The user's step is ordinary PyTorch: forward, ``loss.backward()``,
``optimizer.step()``, ``optimizer.zero_grad()``. We trace it, real optimizer
code included, into one graph whose inputs are the parameters, buffers,
gradients, optimizer state, learning rates and batch, and whose outputs are
the step's results and the new values of that state.

Tracing runs in two passes. The first (``make_fx`` on fake tensors) lets
autograd and the optimizer run, so the graph holds the backward ops and the
in-place updates; the second functionalizes that plain ATen graph. Each param
group's learning rate is a 0-dim tensor input, so a scheduler changes it
without a recompile. Fake tensors live on the device the state lives on
(``tpu`` for a model on ``tpu``), so device-specific code in the model or the
optimizer traces as it would run.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from torchtpu.decompose import decomposition_table
from torchtpu.errors import TorchTPUError
from torchtpu.train import graph_cache, remat
from torchtpu.train import precision as mixed
from torchtpu.train.state import StateStore


@dataclasses.dataclass
class Layout:
    """Where each traced input comes from, and how the step was traced."""

    params: list[torch.Tensor]
    buffers: list[tuple[torch.nn.Module, str]]
    state_keys: list[tuple[int, int, str]]  # (optimizer, param index, state name)
    grad_params: list[int]  # params whose .grad is an input
    n_lrs: list[int]  # param groups per optimizer
    batch_spec: Any
    batch_static: dict[int, Any]
    n_batch_tensors: int

    def counts(self) -> list[int]:
        return [
            len(self.params),
            len(self.buffers),
            len(self.state_keys),
            len(self.grad_params),
            sum(self.n_lrs),
            self.n_batch_tensors,
        ]

    def state_inputs(self) -> list[tuple]:
        """The store keys of the step's state inputs, in order (they are donated)."""
        return [
            *[("param", i) for i in range(len(self.params))],
            *[("buffer", j) for j in range(len(self.buffers))],
            *[("state", *k) for k in self.state_keys],
            *[("grad", i) for i in self.grad_params],
        ]

    def split(self, flat: list[Any]) -> list[list[Any]]:
        out, start = [], 0
        for n in self.counts():
            out.append(list(flat[start : start + n]))
            start += n
        return out


@dataclasses.dataclass
class Tracing:
    """What the trace of a step needs besides its layout."""

    fn: Callable[..., Any]
    models: list[torch.nn.Module]
    optimizers: list[torch.optim.Optimizer]
    precision: str
    stochastic_rounding: bool
    checkpoint: bool
    device: torch.device  # where the state lives: fake tensors are made there


def trace_step(
    tracing: Tracing, layout: Layout, store: StateStore, batch: list[torch.Tensor]
) -> tuple[torch.fx.GraphModule, Any]:
    """The step as one functional ATen graph, and the tree spec of its outputs."""
    table = decomposition_table()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    example = _fake_inputs(tracing, layout, store, batch, mode)
    out_box: list[Any] = []

    def step_graph(*flat: torch.Tensor) -> list[Any]:
        params, buffers, states, grads, lrs, tensors = layout.split(list(flat))
        with _swapped(tracing, layout, params, buffers, states, grads, lrs) as read_back:
            leaves = _merge_static(tensors, layout)
            if tracing.precision == "bf16-true":
                leaves = [
                    t.to(torch.bfloat16)
                    if isinstance(t, torch.Tensor) and t.is_floating_point()
                    else t
                    for t in leaves
                ]
            args, kwargs = pytree.tree_unflatten(leaves, layout.batch_spec)
            out = tracing.fn(*args, **kwargs)
            new_states, new_grads = read_back()
        flat_out, spec = pytree.tree_flatten((out, params, buffers, new_states, new_grads))
        out_box.append(spec)
        return flat_out

    try:
        with _compiling(), _no_scheduler_steps():
            first = make_fx(step_graph, tracing_mode="fake", decomposition_table=table)(*example)
            entry = graph_cache.key(first, example)
            functional = graph_cache.load(entry) if entry is not None else None
            if functional is None:
                plain = [t.detach() for t in example]
                functional = make_fx(
                    torch.func.functionalize(first, remove="mutations_and_views"),
                    tracing_mode="fake",
                    decomposition_table=table,
                )(*plain)
                _strip_side_effects(functional)
                if entry is not None:
                    graph_cache.store(entry, functional)
    finally:
        leaked = [p for p in layout.params if isinstance(p.grad, FakeTensor)]
        for p in leaked:
            p.grad = None
    if leaked:
        raise TorchTPUError(
            f"compile_step: the step used {len(leaked)} parameter(s) directly rather than "
            "through a model or optimizer it could see (e.g. a tensor captured as a default "
            "argument). Reach parameters through an nn.Module, or pass models=[...]."
        )
    return functional, out_box[-1]


def _fake_inputs(
    tracing: Tracing,
    layout: Layout,
    store: StateStore,
    batch: list[torch.Tensor],
    mode: FakeTensorMode,
) -> list[torch.Tensor]:
    device = tracing.device

    def fake(key: tuple, requires_grad: bool = False) -> torch.Tensor:
        shape, _ = store.aval(key)
        with mode:
            t = torch.empty(shape, dtype=store.dtype(key), device=device)
        return t.requires_grad_(requires_grad)

    params = [fake(("param", i), p.requires_grad) for i, p in enumerate(layout.params)]
    buffers = [fake(("buffer", j)) for j in range(len(layout.buffers))]
    states = [fake(("state", *k)) for k in layout.state_keys]
    grads = [fake(("grad", i)) for i in layout.grad_params]
    with mode:
        lrs = [
            torch.empty((), dtype=torch.float32, device=device) for _ in range(sum(layout.n_lrs))
        ]
    # A tensor lr that requires grad selects the optimizers' tensor-lr paths
    # (SGD's addcmul); the update itself runs under no_grad.
    lrs = [lr.requires_grad_(True) for lr in lrs]
    with mode:
        # The batch joins the state's device, as the program's inputs all do.
        fake_batch = [torch.empty(t.shape, dtype=t.dtype, device=device) for t in batch]
    return [*params, *buffers, *states, *grads, *lrs, *fake_batch]


@contextlib.contextmanager
def _swapped(tracing: Tracing, layout: Layout, params, buffers, states, grads, lrs) -> Iterator:
    """Point the model and optimizers at the traced tensors for the duration."""
    restore: list[Callable[[], None]] = []
    by_id = {id(p): q for p, q in zip(layout.params, params, strict=True)}
    for i, g in zip(layout.grad_params, grads, strict=True):
        params[i].grad = g
    for model in tracing.models:
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is not None:
                    module._parameters[name] = by_id[id(p)]
                    restore.append(functools.partial(module._parameters.__setitem__, name, p))
    for (module, name), value in zip(layout.buffers, buffers, strict=True):
        old = module._buffers[name]
        module._buffers[name] = value
        restore.append(functools.partial(module._buffers.__setitem__, name, old))
    state_in = dict(zip(layout.state_keys, states, strict=True))
    lr_iter = iter(lrs)
    group_lrs = []
    for o, opt in enumerate(tracing.optimizers):
        saved_state, saved_groups = opt.state, [dict(g) for g in opt.param_groups]
        traced_state: dict[torch.Tensor, dict[str, Any]] = collections.defaultdict(dict)
        index = {id(p): i for i, p in enumerate(layout.params)}
        for p, st in saved_state.items():
            i = index[id(p)]
            traced_state[params[i]] = {
                k: (state_in[(o, i, k)] if (o, i, k) in state_in else v) for k, v in st.items()
            }
        for (oo, i, k), value in state_in.items():  # state so far only on the device
            if oo == o:
                traced_state[params[i]][k] = value
        opt.state = traced_state
        for group in opt.param_groups:
            group["params"] = [by_id[id(p)] for p in group["params"]]
            group["lr"] = next(lr_iter)
            group_lrs.append((group, group["lr"]))
            # foreach: _foreach_* ops lower whole (lower/ops/foreach.py), so the
            # optimizer traces as a few dozen nodes instead of thousands.
            for flag, value in (("capturable", True), ("foreach", True), ("fused", False)):
                if flag in group:
                    group[flag] = value

        def undo(opt=opt, saved_state=saved_state, saved_groups=saved_groups):
            opt.state = saved_state
            for group, saved in zip(opt.param_groups, saved_groups, strict=True):
                group.clear()
                group.update(saved)

        restore.append(undo)
    with contextlib.ExitStack() as stack:
        if tracing.precision == "bf16-mixed":
            stack.enter_context(mixed.autocast_forward(tracing.models, tracing.device.type))
        if tracing.stochastic_rounding:
            stack.enter_context(mixed.stochastic_rounding_step(tracing.optimizers))
        if tracing.checkpoint:
            stack.enter_context(remat.checkpointed(tracing.models))

        def read_back() -> tuple[list[Any], list[Any]]:
            for group, lr in group_lrs:
                if group["lr"] is not lr:
                    raise TorchTPUError(
                        "compile_step: the step changed a learning rate while traced "
                        "(an LR scheduler's step() inside the compiled function?). Call "
                        "scheduler.step() outside the compiled step; the learning rate "
                        "is a program input, so this never recompiles."
                    )
            new_states = [
                {k: v for k, v in opt.state.get(params[i], {}).items()}
                for opt in tracing.optimizers
                for i in range(len(params))
            ]
            return new_states, [p.grad for p in params]

        try:
            yield read_back
        finally:
            for undo in reversed(restore):
                undo()
            for p in params:
                p.grad = None


@contextlib.contextmanager
def _compiling() -> Iterator[None]:
    """Tell PyTorch code it is being compiled, as torch.compile and torch.export do:
    optimizers then keep step counts as tensors instead of calling ``.item()``."""
    old = torch.compiler._is_compiling_flag
    torch.compiler._is_compiling_flag = True
    try:
        yield
    finally:
        torch.compiler._is_compiling_flag = old


@contextlib.contextmanager
def _no_scheduler_steps() -> Iterator[None]:
    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise TorchTPUError(
            f"compile_step: {type(self).__name__}.step() was called inside the compiled step. "
            "Call scheduler.step() outside it; the learning rate is a program input, so "
            "changing it never recompiles."
        )

    scheduler = torch.optim.lr_scheduler.LRScheduler
    original = scheduler.step
    scheduler.step = refuse
    try:
        yield
    finally:
        scheduler.step = original


def _merge_static(tensors: list[torch.Tensor], layout: Layout) -> list[Any]:
    it = iter(tensors)
    total = layout.n_batch_tensors + len(layout.batch_static)
    return [layout.batch_static[i] if i in layout.batch_static else next(it) for i in range(total)]


def _strip_side_effects(gm: torch.fx.GraphModule) -> None:
    """Drop what the functional program does not need: profiler markers, and the
    copies back into inputs that functionalization appends (the new values are
    already outputs)."""
    graph = gm.graph
    for node in reversed(list(graph.nodes)):
        target = str(node.target)
        if node.op == "call_function" and target.startswith("profiler."):
            for user in list(node.users):
                graph.erase_node(user)
            graph.erase_node(node)
        elif (
            node.op == "call_function"
            and node.target is torch.ops.aten.copy_.default
            and node.args[0].op == "placeholder"
            and not node.users
        ):
            graph.erase_node(node)
    graph.lint()
    gm.recompile()
