"""``torchtpu.compile_step``: a whole training step as one XLA program.

The user's step is ordinary PyTorch: forward, ``loss.backward()``,
``optimizer.step()``, ``optimizer.zero_grad()``. We trace it, real optimizer
code included, into one functional ATen graph whose inputs are the parameters,
buffers, gradients and optimizer state and whose outputs are their new values,
then compile it once. Between steps that state stays on the device, and its
buffers are donated so XLA updates it in place.

Tracing runs in two passes. The first (``make_fx`` on fake tensors) lets
autograd and the optimizer run, so the graph holds the backward ops and the
in-place updates; the second functionalizes that plain ATen graph. Each param
group's learning rate is a 0-dim tensor input, so a scheduler changes it
without a recompile; other hyperparameters are compile-time constants, and
changing one compiles a new program.

The torch objects are brought up to date lazily: before the model's eager
forward, ``state_dict()`` of the model or optimizer, an eager
``optimizer.step()``, or an explicit :meth:`CompiledStep.sync`. Changes made on
the torch side (``load_state_dict``, in-place edits) are seen through version
counters and uploaded before the next step.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from torchtpu.config import options_with
from torchtpu.decompose import decomposition_table
from torchtpu.errors import TorchTPUError
from torchtpu.lower.dtypes import from_numpy, to_jax_dtype, to_numpy, to_torch_dtype
from torchtpu.metrics import bump
from torchtpu.run.executor import GraphExecutor
from torchtpu.runtime import from_device, jax_scope
from torchtpu.train import precision as mixed
from torchtpu.train import remat

PRECISIONS = ("fp32", "bf16-mixed", "bf16-true")


def compile_step(
    fn: Callable[..., Any] | None = None,
    *,
    precision: str = "fp32",
    stochastic_rounding: bool = False,
    models: list[torch.nn.Module] | None = None,
    optimizers: list[torch.optim.Optimizer] | None = None,
    checkpoint: bool = False,
    options: dict[str, Any] | None = None,
) -> Any:
    """Compile a whole training step (forward, backward, optimizer) into one XLA program.

    ``fn`` closes over its model(s) and optimizer(s); they are found in its
    closure and globals, or pass ``models=`` and ``optimizers=``. It returns a
    loss tensor or a dict (or tuple) of tensors. Call LR schedulers outside it.

    precision: ``"fp32"``; ``"bf16-mixed"`` (bf16 compute in the model's
    forward, fp32 weights and optimizer state); ``"bf16-true"`` (bf16 weights on
    the device; with ``stochastic_rounding=True`` the optimizer updates fp32
    copies and rounds them to bf16 stochastically, seeded from PyTorch's RNG).

    checkpoint: recompute the activations of each block of the model's
    ``nn.ModuleList``s in the backward instead of keeping them (less memory,
    more compute); see ``memory_analysis()``.

    Example::

        model = torch.nn.Linear(8, 1)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        @torchtpu.compile_step
        def step(x, y):
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss

        loss = step(torch.randn(4, 8), torch.randn(4, 1))
    """
    if fn is None:
        return functools.partial(
            compile_step,
            precision=precision,
            stochastic_rounding=stochastic_rounding,
            models=models,
            optimizers=optimizers,
            checkpoint=checkpoint,
            options=options,
        )
    return CompiledStep(fn, precision, stochastic_rounding, models, optimizers, options, checkpoint)


def _discover(fn: Callable[..., Any], kind: type) -> list[Any]:
    """Instances of ``kind`` that ``fn`` reaches: closure, defaults, globals it names, self."""
    found: dict[int, Any] = {}

    def visit(value: Any) -> None:
        if isinstance(value, kind):
            found.setdefault(id(value), value)

    target = inspect.unwrap(fn)
    if inspect.ismethod(target):
        for value in vars(target.__self__).values():
            visit(value)
        target = target.__func__
    for cell in getattr(target, "__closure__", None) or ():
        with contextlib.suppress(ValueError):
            visit(cell.cell_contents)
    for value in getattr(target, "__defaults__", None) or ():
        visit(value)
    for value in (getattr(target, "__kwdefaults__", None) or {}).values():
        visit(value)
    code = getattr(target, "__code__", None)
    names = set(code.co_names) if code else set()
    for name in names:
        if name in getattr(target, "__globals__", {}):
            visit(target.__globals__[name])
    values = list(found.values())
    if kind is torch.nn.Module:  # keep roots only: a submodule is updated with its parent
        inner = {id(m) for v in values for m in v.modules() if m is not v}
        values = [v for v in values if id(v) not in inner]
    return values


@dataclasses.dataclass
class _Layout:
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

    def split(self, flat: list[Any]) -> list[list[Any]]:
        out, start = [], 0
        for n in self.counts():
            out.append(list(flat[start : start + n]))
            start += n
        return out


class CompiledStep:
    """A training step compiled by :func:`compile_step`. Call it like ``fn``."""

    def __init__(
        self,
        fn: Callable[..., Any],
        precision: str,
        stochastic_rounding: bool,
        models: list[torch.nn.Module] | None,
        optimizers: list[torch.optim.Optimizer] | None,
        overrides: dict[str, Any] | None,
        checkpoint: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"compile_step: precision={precision!r} is not one of {PRECISIONS}")
        if stochastic_rounding and precision != "bf16-true":
            raise ValueError(
                "compile_step: stochastic_rounding=True rounds bf16 weights, so it needs "
                f"precision='bf16-true' (got {precision!r})"
            )
        self.fn = fn
        self.precision = precision
        self.stochastic_rounding = stochastic_rounding
        self.checkpoint = checkpoint
        self.models = list(models) if models is not None else _discover(fn, torch.nn.Module)
        self.optimizers = (
            list(optimizers) if optimizers is not None else _discover(fn, torch.optim.Optimizer)
        )
        if not self.models and not self.optimizers:
            raise TorchTPUError(
                f"compile_step could not find a model or optimizer used by {fn!r}: pass "
                "models=[...] and optimizers=[...] explicitly."
            )
        self.opts = options_with(overrides, "compile_step")
        self._programs: dict[Any, tuple[_Layout, GraphExecutor, Any]] = {}
        self._device: dict[tuple, jax.Array] = {}
        self._seen: dict[tuple, tuple[int, int]] = {}
        self._dirty = False
        self._tracing = False
        self._last: GraphExecutor | None = None
        self._install_hooks()

    # --- public -----------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        params, buffers = self._params(), self._buffers()
        with jax_scope() as device:
            self._upload_changes(params, buffers, device)
            self._init_zero_state(params, device)
            layout, flat_batch = self._layout(args, kwargs, params, buffers)
            key = self._signature(layout, flat_batch)
            if key not in self._programs:
                self._programs[key] = self._compile(layout, flat_batch)
            layout, executor, out_spec = self._programs[key]
            self._last = executor
            inputs = self._inputs(layout, flat_batch, device)
            results = executor.run_on_device(inputs)
            user_out = self._absorb(layout, pytree.tree_unflatten(list(results), out_spec))
        return pytree.tree_map(
            lambda v: from_device(v) if isinstance(v, jax.Array) else v, user_out
        )

    def sync(self) -> None:
        """Copy the device's parameters, buffers, grads and optimizer state into torch."""
        if not self._dirty:
            return
        self._dirty = False
        params, buffers = self._params(), self._buffers()
        with torch.no_grad():
            for key, array in self._device.items():
                target = self._torch_target(key, params, buffers, array)
                if target is not None:
                    self._seen[key] = (id(target), target._version)
            for i, p in enumerate(params):
                if ("grad", i) not in self._device and p.grad is not None:
                    p.grad = None

    def memory_analysis(self) -> Any:
        """XLA's memory figures for the last step's program (arguments, outputs, temps)."""
        if self._last is None or not self._last.programs:
            raise TorchTPUError("compile_step: no program yet; call the step once first")
        return self._last.programs[-1].memory_analysis()

    def cost_analysis(self) -> dict[str, float]:
        """XLA's cost estimate (flops, bytes accessed) for the last step's program."""
        if self._last is None or not self._last.programs:
            raise TorchTPUError("compile_step: no program yet; call the step once first")
        return self._last.programs[-1].cost_analysis()

    # --- state bookkeeping ------------------------------------------------------

    def _params(self) -> list[torch.Tensor]:
        seen: dict[int, torch.Tensor] = {}
        for model in self.models:
            for p in model.parameters():
                seen.setdefault(id(p), p)
        for opt in self.optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    seen.setdefault(id(p), p)
        return list(seen.values())

    def _buffers(self) -> list[tuple[torch.nn.Module, str]]:
        seen: dict[int, tuple[torch.nn.Module, str]] = {}
        for model in self.models:
            for module in model.modules():
                for name, buf in module._buffers.items():
                    if buf is not None:
                        seen.setdefault(id(buf), (module, name))
        return list(seen.values())

    def _torch_state(
        self, params: list[torch.Tensor], buffers: list[tuple[torch.nn.Module, str]]
    ) -> dict[tuple, torch.Tensor]:
        index = {id(p): i for i, p in enumerate(params)}
        tensors: dict[tuple, torch.Tensor] = {}
        for i, p in enumerate(params):
            tensors[("param", i)] = p
            if p.grad is not None:
                tensors[("grad", i)] = p.grad
        for j, (module, name) in enumerate(buffers):
            tensors[("buffer", j)] = module._buffers[name]
        for o, opt in enumerate(self.optimizers):
            for p, state in opt.state.items():
                for name, value in state.items():
                    if isinstance(value, torch.Tensor):
                        tensors[("state", o, index[id(p)], name)] = value
        return tensors

    def _device_dtype(self, key: tuple, t: torch.Tensor) -> torch.dtype:
        if self.precision == "bf16-true" and key[0] in {"param", "buffer", "grad"}:
            if t.dtype.is_floating_point:
                return torch.bfloat16
        return t.dtype

    def _upload_changes(self, params, buffers, device: jax.Device) -> None:
        """Upload what torch changed since we last saw it; the device keeps the rest.

        A tensor changed on the torch side wins over the device's copy, e.g. after
        ``model.load_state_dict``; everything else stays where it is newest.
        """
        for key, t in self._torch_state(params, buffers).items():
            # Unchanged since we last saw it: the device's value (or its absence, for a
            # grad the step's zero_grad() dropped) is newer.
            if self._seen.get(key) == (id(t), t._version):
                continue
            self._device[key] = _upload_owned(t, self._device_dtype(key, t), device)
            self._seen[key] = (id(t), t._version)
            bump("host_to_device")

    def _init_zero_state(self, params: list[torch.Tensor], device: jax.Device) -> None:
        """Create Adam/AdamW state up front, as their lazy init would on the first step.

        That init is exactly zeros and a step count of 0, so doing it here lets the
        first program be the steady-state one instead of compiling two.
        """
        index = {id(p): i for i, p in enumerate(params)}
        for o, opt in enumerate(self.optimizers):
            if type(opt) not in (torch.optim.Adam, torch.optim.AdamW):
                continue
            for group in opt.param_groups:
                for p in group["params"]:
                    i = index[id(p)]
                    if (
                        not p.requires_grad
                        or opt.state.get(p)
                        or ("state", o, i, "step") in (self._device)
                    ):
                        continue
                    names = ["exp_avg", "exp_avg_sq"] + (
                        ["max_exp_avg_sq"] if group["amsgrad"] else []
                    )
                    like = self._device[("param", i)]
                    dtype = jax.numpy.float32 if self.stochastic_rounding else like.dtype
                    with jax.default_device(device):
                        step_dtype = to_jax_dtype(torch.get_default_dtype())
                        self._device[("state", o, i, "step")] = jax.numpy.zeros((), step_dtype)
                        for name in names:
                            self._device[("state", o, i, name)] = jax.numpy.zeros(like.shape, dtype)

    def _torch_target(self, key: tuple, params, buffers, array: jax.Array):
        host = _host_tensor(array)
        kind = key[0]
        if kind == "param":
            target = params[key[1]]
        elif kind == "grad":
            p = params[key[1]]
            if p.grad is None or p.grad.shape != host.shape:
                p.grad = host.to(p.dtype).clone()
                return p.grad
            target = p.grad
        elif kind == "buffer":
            module, name = buffers[key[1]]
            target = module._buffers[name]
        else:
            _, o, i, name = key
            state = self.optimizers[o].state[params[i]]
            if name not in state or state[name].shape != host.shape:
                state[name] = host.clone()
                return state[name]
            target = state[name]
        target.copy_(host.to(target.dtype))
        return target

    # --- tracing ----------------------------------------------------------------

    def _layout(self, args: tuple, kwargs: dict, params, buffers) -> tuple[_Layout, list[Any]]:
        leaves, spec = pytree.tree_flatten((args, kwargs))
        static = {i: v for i, v in enumerate(leaves) if not isinstance(v, torch.Tensor)}
        tensors = [v for v in leaves if isinstance(v, torch.Tensor)]
        # After _upload_changes the device holds every key torch has, and more.
        state_keys = sorted(k for k in self._device if k[0] == "state")
        grads = sorted(k[1] for k in self._device if k[0] == "grad")
        layout = _Layout(
            params=params,
            buffers=buffers,
            state_keys=[k[1:] for k in state_keys],
            grad_params=grads,
            n_lrs=[len(opt.param_groups) for opt in self.optimizers],
            batch_spec=spec,
            batch_static=static,
            n_batch_tensors=len(tensors),
        )
        return layout, tensors

    def _signature(self, layout: _Layout, batch: list[torch.Tensor]) -> Any:
        def aval(key: tuple) -> Any:
            a = self._device[key]
            return (a.shape, str(a.dtype))

        hyper = tuple(
            tuple(sorted((k, repr(v)) for k, v in g.items() if k not in {"params", "lr"}))
            for opt in self.optimizers
            for g in opt.param_groups
        )
        statics = tuple(
            (o, i, k, repr(v))
            for o, opt in enumerate(self.optimizers)
            for i, p in enumerate(layout.params)
            for k, v in opt.state.get(p, {}).items()
            if not isinstance(v, torch.Tensor)
        )
        return (
            tuple(aval(("param", i)) for i in range(len(layout.params))),
            tuple(p.requires_grad for p in layout.params),
            tuple(aval(("buffer", j)) for j in range(len(layout.buffers))),
            tuple((k, aval(("state", *k))) for k in layout.state_keys),
            tuple((i, aval(("grad", i))) for i in layout.grad_params),
            tuple((t.shape, t.dtype) for t in batch),
            str(layout.batch_spec),
            tuple(sorted((i, repr(v)) for i, v in layout.batch_static.items())),
            tuple(m.training for model in self.models for m in model.modules()),
            torch.is_grad_enabled(),
            hyper,
            statics,
        )

    def _fake_inputs(self, layout: _Layout, batch: list[torch.Tensor], mode: FakeTensorMode):
        def fake(key: tuple, requires_grad: bool = False) -> torch.Tensor:
            a = self._device[key]
            with mode:
                t = torch.empty(a.shape, dtype=to_torch_dtype(a.dtype))
            return t.requires_grad_(requires_grad)

        params = [fake(("param", i), p.requires_grad) for i, p in enumerate(layout.params)]
        buffers = [fake(("buffer", j)) for j in range(len(layout.buffers))]
        states = [fake(("state", *k)) for k in layout.state_keys]
        grads = [fake(("grad", i)) for i in layout.grad_params]
        with mode:
            lrs = [torch.empty((), dtype=torch.float32) for _ in range(sum(layout.n_lrs))]
        # A tensor lr that requires grad selects the optimizers' tensor-lr paths
        # (SGD's addcmul); the update itself runs under no_grad.
        lrs = [lr.requires_grad_(True) for lr in lrs]
        fake_batch = [mode.from_tensor(t) for t in batch]
        return [*params, *buffers, *states, *grads, *lrs, *fake_batch]

    def _compile(self, layout: _Layout, batch: list[torch.Tensor]):
        table = decomposition_table()
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        example = self._fake_inputs(layout, batch, mode)
        out_box: list[Any] = []

        def step_graph(*flat: torch.Tensor) -> list[Any]:
            params, buffers, states, grads, lrs, tensors = layout.split(list(flat))
            with self._swapped(layout, params, buffers, states, grads, lrs) as read_back:
                leaves = _merge_static(tensors, layout)
                if self.precision == "bf16-true":
                    leaves = [
                        t.to(torch.bfloat16)
                        if isinstance(t, torch.Tensor) and t.is_floating_point()
                        else t
                        for t in leaves
                    ]
                args, kwargs = pytree.tree_unflatten(leaves, layout.batch_spec)
                out = self.fn(*args, **kwargs)
                new_states, new_grads = read_back()
            flat_out, spec = pytree.tree_flatten((out, params, buffers, new_states, new_grads))
            out_box.append(spec)
            return flat_out

        self._tracing = True
        try:
            with _compiling(), _no_scheduler_steps():
                first = make_fx(step_graph, tracing_mode="fake", decomposition_table=table)(
                    *example
                )
                plain = [t.detach() for t in example]
                functional = make_fx(
                    torch.func.functionalize(first, remove="mutations_and_views"),
                    tracing_mode="fake",
                    decomposition_table=table,
                )(*plain)
        finally:
            self._tracing = False
            leaked = [p for p in layout.params if isinstance(p.grad, FakeTensor)]
            for p in leaked:
                p.grad = None
        if leaked:
            raise TorchTPUError(
                f"compile_step: the step used {len(leaked)} parameter(s) directly rather than "
                "through a model or optimizer it could see (e.g. a tensor captured as a default "
                "argument). Reach parameters through an nn.Module, or pass models=[...]."
            )
        _strip_side_effects(functional)
        n_state = sum(layout.counts()[:4])
        executor = GraphExecutor(
            functional, self.opts, name="train_step", donate=frozenset(range(n_state))
        )
        return layout, executor, out_box[-1]

    @contextlib.contextmanager
    def _swapped(self, layout, params, buffers, states, grads, lrs) -> Iterator[Callable]:
        """Point the model and optimizers at the traced tensors for the duration."""
        restore: list[Callable[[], None]] = []
        by_id = {id(p): q for p, q in zip(layout.params, params, strict=True)}
        for i, g in zip(layout.grad_params, grads, strict=True):
            params[i].grad = g
        for model in self.models:
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
        for o, opt in enumerate(self.optimizers):
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
            if self.precision == "bf16-mixed":
                stack.enter_context(mixed.autocast_forward(self.models))
            if self.stochastic_rounding:
                stack.enter_context(mixed.stochastic_rounding_step(self.optimizers))
            if self.checkpoint:
                stack.enter_context(remat.checkpointed(self.models))

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
                    for opt in self.optimizers
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

    def _inputs(self, layout: _Layout, batch: list[torch.Tensor], device) -> list[Any]:
        lrs = []
        for opt in self.optimizers:
            for group in opt.param_groups:
                lr = group["lr"]
                lr = float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)
                lrs.append(jax.device_put(np.float32(lr), device))
        return [
            *[self._device[("param", i)] for i in range(len(layout.params))],
            *[self._device[("buffer", j)] for j in range(len(layout.buffers))],
            *[self._device[("state", *k)] for k in layout.state_keys],
            *[self._device[("grad", i)] for i in layout.grad_params],
            *lrs,
            *batch,
        ]

    def _absorb(self, layout: _Layout, results: Any) -> Any:
        out, params, buffers, states, grads = results
        for i, value in enumerate(params):
            self._device[("param", i)] = value
        for j, value in enumerate(buffers):
            self._device[("buffer", j)] = value
        n = len(layout.params)
        for o in range(len(self.optimizers)):
            for i in range(n):
                for name, value in states[o * n + i].items():
                    if isinstance(value, jax.Array):
                        self._device[("state", o, i, name)] = value
        for i, g in enumerate(grads):
            if isinstance(g, jax.Array):
                self._device[("grad", i)] = g
            else:
                self._device.pop(("grad", i), None)
        self._dirty = True
        return out

    # --- keeping torch in step --------------------------------------------------

    def _install_hooks(self) -> None:
        def sync_hook(*_: Any, **__: Any) -> None:
            if not self._tracing:
                self.sync()

        for model in self.models:
            model.register_forward_pre_hook(sync_hook)
            model.register_state_dict_pre_hook(sync_hook)
        for opt in self.optimizers:
            opt.register_state_dict_pre_hook(sync_hook)
            opt.register_step_pre_hook(sync_hook)


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


def _merge_static(tensors: list[torch.Tensor], layout: _Layout) -> list[Any]:
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


def _upload_owned(t: torch.Tensor, dtype: torch.dtype, device: jax.Device) -> jax.Array:
    """A device copy that owns its memory, so donating it never touches torch's."""
    return jax.device_put(to_numpy(t.detach().to(dtype)).copy(), device)


def _host_tensor(array: jax.Array) -> torch.Tensor:
    return from_numpy(np.asarray(jax.device_get(array)))
