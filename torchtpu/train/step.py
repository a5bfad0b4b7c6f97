"""``torchtpu.compile_step``: a whole training step as one XLA program.

The wiring of three parts: :mod:`~torchtpu.train.trace` turns the user's step
into one functional ATen graph, :mod:`~torchtpu.train.state` keeps the step's
state on the device between steps, and a
:class:`~torchtpu.run.executor.GraphExecutor` (the same one the ``tpu`` backend
uses) compiles and runs the graph, with the state's buffers donated so XLA
updates them in place.

A model on ``tpu`` keeps its state in its own tensors: parameters, buffers,
grads and optimizer state are read from them and rebound to the step's
results, so torch always sees the newest values. A model on the CPU keeps
device copies, brought into torch lazily: before the model's eager forward,
``state_dict()`` of the model or optimizer, an eager ``optimizer.step()``, or
an explicit :meth:`CompiledStep.sync`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import weakref
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import torch
import torch.fx
from torch.utils import _pytree as pytree

from torchtpu.compile.recompiles import note_recompile
from torchtpu.config import options_with
from torchtpu.errors import TorchTPUError
from torchtpu.lower.dtypes import to_jax_dtype
from torchtpu.run.executor import GraphExecutor
from torchtpu.runtime import from_device, jax_scope
from torchtpu.runtime.placement import on_mesh
from torchtpu.shard.strategy import Placement, Strategy
from torchtpu.train.state import StateStore
from torchtpu.train.trace import Layout, Tracing, trace_step

PRECISIONS = ("fp32", "bf16-mixed", "bf16-true")
DEVICE_TYPE = "tpu"


def compile_step(
    fn: Callable[..., Any] | None = None,
    *,
    precision: str = "fp32",
    stochastic_rounding: bool = False,
    models: list[torch.nn.Module] | None = None,
    optimizers: list[torch.optim.Optimizer] | None = None,
    checkpoint: bool = False,
    options: dict[str, Any] | None = None,
    strategy: Any = None,
) -> Any:
    """Compile a whole training step (forward, backward, optimizer) into one XLA program.

    ``fn`` closes over its model(s) and optimizer(s); they are found in its
    closure and globals, or pass ``models=`` and ``optimizers=``. It returns a
    loss tensor or a dict (or tuple) of tensors. Call LR schedulers outside it.
    The model may live on the CPU or on ``tpu`` (``model.to("tpu")``).

    precision: ``"fp32"``; ``"bf16-mixed"`` (bf16 compute in the model's
    forward, fp32 weights and optimizer state); ``"bf16-true"`` (bf16 weights on
    the device; with ``stochastic_rounding=True`` the optimizer updates fp32
    copies and rounds them to bf16 stochastically, seeded from PyTorch's RNG).

    checkpoint: recompute the activations of each block of the model's
    ``nn.ModuleList``s in the backward instead of keeping them (less memory,
    more compute); see ``memory_analysis()``.

    strategy: a :class:`torchtpu.Strategy` (``DataParallel()``, ``FSDP()``,
    ``TensorParallel()``, ...): the step runs as one SPMD program over its
    mesh, parameters, gradients and optimizer state placed by its rules and
    the batch split over its data axes; see ``docs/scaling.md``.

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
            strategy=strategy,
        )
    if strategy is not None:
        options = {**(options or {}), "strategy": strategy}
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


def _param_names(models: list[torch.nn.Module], params: list[torch.Tensor]) -> list[str]:
    """Each parameter's name in its model (the first name of a tied one); one only an
    optimizer holds is ``optimizer.param<i>``."""
    names: dict[int, str] = {}
    for model in models:
        for name, p in model.named_parameters():
            names.setdefault(id(p), name)
    return [names.get(id(p), f"optimizer.param{i}") for i, p in enumerate(params)]


def _origin(fn: Callable[..., Any]) -> str:
    try:
        target = inspect.unwrap(fn)
        return f"{inspect.getsourcefile(target)}:{inspect.getsourcelines(target)[1]}"
    except (TypeError, OSError):
        return "<unknown>"


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
        self.strategy = self.opts.strategy
        if self.strategy is not None and not isinstance(self.strategy, Strategy):
            raise TypeError(
                f"compile_step: strategy={self.strategy!r} is not a torchtpu.Strategy; use "
                "torchtpu.DataParallel(), torchtpu.FSDP(), torchtpu.TensorParallel() or "
                "torchtpu.Strategy(mesh=..., rules=...)"
            )
        self._placements: dict[str, Placement] = {}
        self._param_names: list[str] = []
        self.origin = _origin(fn)
        self._tracing = False
        self._bind_to(self._state_device())
        self._install_hooks()
        _LIVE.add(self)

    def _bind_to(self, device: torch.device) -> None:
        """Keep the state where the model lives: on ``tpu`` in its own tensors, on the
        CPU as device copies. A model moved since the last call starts afresh there
        (its state was synced before the move, see :func:`sync_before_move`)."""
        self.device = device
        self.store = StateStore(
            self._device_dtype,
            bind_new=device.type == DEVICE_TYPE and self.precision != "bf16-true",
            place=self._sharding_of if self.strategy is not None else None,
        )
        self._programs: dict[Any, tuple[Layout, GraphExecutor, Any]] = {}
        self._last: GraphExecutor | None = None

    # --- public -----------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with jax_scope() as device, on_mesh(self._mesh):
            layout, executor, out_spec, flat_batch = self._prepare(args, kwargs, device)
            inputs = self._inputs(layout, flat_batch, device)
            results = executor.run_on_device(inputs)
            user_out = self._absorb(layout, pytree.tree_unflatten(list(results), out_spec))
        return pytree.tree_map(lambda v: self._to_torch(v), user_out)

    def _prepare(self, args: tuple, kwargs: dict, device: Any) -> tuple:
        """Bring the state up to date and find (or trace) the program for these inputs."""
        params, buffers = self._params(), self._buffers()
        moved = self._state_device()
        if moved != self.device:
            self.sync()
            self._bind_to(moved)
        if self.strategy is not None:
            self._plan(params)
        self.store.refresh(self._torch_state(params, buffers), device)
        self._init_zero_state(params)
        layout, flat_batch = self._layout(args, kwargs, params, buffers)
        traced_batch = self._global_batch(flat_batch)
        key = self._signature(layout, traced_batch)
        if key not in self._programs:
            if self._programs:
                note_recompile(
                    self.origin,
                    [[tuple(shape) for shape, _ in k[3]] for k in [*self._programs, key]],
                    self.opts,
                    [f"batch input {i}" for i in range(len(flat_batch))],
                )
            self._programs[key] = self._compile(layout, traced_batch)
        layout, executor, out_spec = self._programs[key]
        self._last = executor
        return layout, executor, out_spec, flat_batch

    def sync(self) -> None:
        """Copy the step's state held as device copies into torch (for a model on the
        CPU; a model on ``tpu`` holds its state itself and needs no sync)."""
        if not self.store.dirty:
            return
        params, buffers = self._params(), self._buffers()
        self.store.sync(functools.partial(self._torch_target, params, buffers))
        for i, p in enumerate(params):
            if ("grad", i) not in self.store and p.grad is not None:
                p.grad = None

    @property
    def executor(self) -> GraphExecutor:
        if self._last is None:
            raise TorchTPUError("compile_step: no program yet; call the step once first")
        return self._last

    def stages(self, *args: Any, **kwargs: Any) -> Any:
        """The step's :class:`~torchtpu.stages.Stages` for these inputs (traced now if
        need be, nothing run), or for the last call's when none are given."""
        from torchtpu.stages import Stages

        if args or kwargs:
            with jax_scope() as device, on_mesh(self._mesh):
                executor = self._prepare(args, kwargs, device)[1]
        else:
            executor = self.executor
        return Stages([("train_step", executor)])

    def memory_analysis(self) -> Any:
        """XLA's memory figures for the last step's program (arguments, outputs, temps)."""
        return self._program().memory_analysis()

    def cost_analysis(self) -> dict[str, float]:
        """XLA's cost estimate (flops, bytes accessed) for the last step's program."""
        return self._program().cost_analysis()

    def _program(self) -> Any:
        programs = self.executor.programs
        if not programs:
            raise TorchTPUError("compile_step: no program yet; call the step once first")
        return programs[-1]

    # --- the mesh ---------------------------------------------------------------

    @property
    def _mesh(self) -> Any:
        return self.strategy.mesh if self.strategy is not None else None

    def placements(self) -> dict[str, Placement]:
        """Each parameter's place on the strategy's mesh, by name (empty without one)."""
        if self.strategy is not None and not self._placements:
            self._plan(self._params())
        return dict(self._placements)

    def _plan(self, params: list[torch.Tensor]) -> None:
        names = _param_names(self.models, params)
        if names == self._param_names and self._placements:
            return
        shapes = [tuple(p.shape) for p in params]
        self._placements = self.strategy.plan(list(zip(names, shapes, strict=True)))
        self._param_names = names

    def _global_batch(self, batch: list[torch.Tensor]) -> list[torch.Tensor]:
        """What the step is traced with: with several processes each gives its own
        rows and the program sees the global batch, so stand-ins of that shape."""
        if self.strategy is None or jax.process_count() == 1:
            return batch
        n = jax.process_count()
        return [t.new_empty((t.shape[0] * n, *t.shape[1:])) if t.ndim else t for t in batch]

    def _sharding_of(self, key: tuple, shape: tuple[int, ...]) -> Any:
        """Where a state key's buffer lives on the mesh: a parameter by its rule; its
        gradient and optimizer state of its shape alongside it; the rest replicated."""
        kind = key[0]
        if kind in {"param", "grad", "state"}:
            i = key[1] if kind != "state" else key[2]
            placement = self._placements[self._param_names[i]]
            if placement.shape == tuple(shape):
                return self.strategy.sharding(placement.spec)
        return self.strategy.sharding(())

    # --- the torch side ---------------------------------------------------------

    def _state_device(self) -> torch.device:
        devices = {p.device.type for p in self._params()}
        devices |= {b.device.type for model in self.models for b in model.buffers()}
        if len(devices) > 1:
            raise TorchTPUError(
                f"compile_step: the model's tensors live on {sorted(devices)}; move the whole "
                "model to one device (model.to('tpu') or model.to('cpu')) before compiling"
            )
        return torch.device(DEVICE_TYPE, 0) if devices == {DEVICE_TYPE} else torch.device("cpu")

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

    def _torch_state(self, params, buffers) -> dict[tuple, torch.Tensor]:
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

    def _init_zero_state(self, params: list[torch.Tensor]) -> None:
        """Create Adam/AdamW state up front, as their lazy init would on the first step.

        That init is exactly zeros and a step count of 0, so doing it here lets the
        first program be the steady-state one instead of compiling two.
        """
        bind = functools.partial(self._attach, params)
        for o, opt in enumerate(self.optimizers):
            if type(opt) not in (torch.optim.Adam, torch.optim.AdamW):
                continue
            for group in opt.param_groups:
                for p in group["params"]:
                    i = self._index(params, p)
                    if not p.requires_grad or opt.state.get(p):
                        continue
                    if ("state", o, i, "step") in self.store:
                        continue
                    names = ["exp_avg", "exp_avg_sq"] + (
                        ["max_exp_avg_sq"] if group["amsgrad"] else []
                    )
                    shape, dtype = self.store.aval(("param", i))
                    moment = jax.numpy.float32 if self.stochastic_rounding else dtype
                    step_dtype = to_jax_dtype(torch.get_default_dtype())
                    self.store.add_zeros(("state", o, i, "step"), (), step_dtype, bind)
                    for name in names:
                        self.store.add_zeros(("state", o, i, name), shape, moment, bind)

    @staticmethod
    def _index(params: list[torch.Tensor], p: torch.Tensor) -> int:
        for i, q in enumerate(params):
            if q is p:
                return i
        raise KeyError(p)

    def _attach(self, params: list[torch.Tensor], key: tuple, tensor: torch.Tensor):
        """Put a new tpu tensor where ``key`` belongs in torch: a grad or optimizer state."""
        if key[0] == "grad":
            params[key[1]].grad = tensor
        else:
            _, o, i, name = key
            self.optimizers[o].state[params[i]][name] = tensor
        return tensor

    def _torch_target(self, params, buffers, key: tuple, host: torch.Tensor):
        kind = key[0]
        if kind == "param":
            target = params[key[1]]
        elif kind == "grad":
            p = params[key[1]]
            if p.grad is None or p.grad.shape != host.shape:
                p.grad = host.to(p.dtype).to(p.device).clone()
                return p.grad
            target = p.grad
        elif kind == "buffer":
            module, name = buffers[key[1]]
            target = module._buffers[name]
        else:
            _, o, i, name = key
            state = self.optimizers[o].state[params[i]]
            if name not in state or state[name].shape != host.shape:
                state[name] = host.clone().to(params[i].device)
                return state[name]
            target = state[name]
        target.copy_(host.to(target.dtype))
        return target

    # --- the program --------------------------------------------------------------

    def _layout(self, args: tuple, kwargs: dict, params, buffers) -> tuple[Layout, list[Any]]:
        leaves, spec = pytree.tree_flatten((args, kwargs))
        static = {i: v for i, v in enumerate(leaves) if not isinstance(v, torch.Tensor)}
        tensors = [v for v in leaves if isinstance(v, torch.Tensor)]
        # After refresh the store holds every key torch has, and more.
        keys = list(self.store.keys())
        layout = Layout(
            params=params,
            buffers=buffers,
            state_keys=sorted(k[1:] for k in keys if k[0] == "state"),
            grad_params=sorted(k[1] for k in keys if k[0] == "grad"),
            n_lrs=[len(opt.param_groups) for opt in self.optimizers],
            batch_spec=spec,
            batch_static=static,
            n_batch_tensors=len(tensors),
        )
        return layout, tensors

    def _signature(self, layout: Layout, batch: list[torch.Tensor]) -> Any:
        aval = self.store.aval
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
            tuple(aval(k) for k in layout.state_inputs()),
            tuple(p.requires_grad for p in layout.params),
            tuple(layout.state_inputs()),
            tuple((t.shape, t.dtype) for t in batch),
            str(layout.batch_spec),
            tuple(sorted((i, repr(v)) for i, v in layout.batch_static.items())),
            tuple(m.training for model in self.models for m in model.modules()),
            torch.is_grad_enabled(),
            hyper,
            statics,
        )

    def _compile(self, layout: Layout, batch: list[torch.Tensor]):
        tracing = Tracing(
            self.fn,
            self.models,
            self.optimizers,
            self.precision,
            self.stochastic_rounding,
            self.checkpoint,
            self.device,
        )
        self._tracing = True
        try:
            graph, out_spec = trace_step(tracing, layout, self.store, batch)
        finally:
            self._tracing = False
        n_state = len(layout.state_inputs())
        executor = GraphExecutor(
            graph,
            self.opts,
            name="train_step",
            donate=frozenset(range(n_state)),
            origin=self.origin,
            out_shardings=self._state_out_shardings(graph, out_spec),
        )
        return layout, executor, out_spec

    def _state_out_shardings(self, graph: torch.fx.GraphModule, out_spec: Any) -> dict[int, Any]:
        """Graph output position -> sharding, for the state a sharded step returns: it
        comes back placed as it went in, so the next step (and donation) finds it so."""
        if self.strategy is None:
            return {}
        outputs = next(n for n in reversed(graph.graph.nodes) if n.op == "output").args[0]
        positions = pytree.tree_unflatten(list(range(out_spec.num_leaves)), out_spec)
        _, params, buffers, states, grads = positions
        n = len(params)
        pinned: dict[int, Any] = {}

        def pin(position: Any, key: tuple) -> None:
            node = outputs[position] if isinstance(position, int) else None
            value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
            if isinstance(value, torch.Tensor):
                pinned[position] = self._sharding_of(key, tuple(value.shape))

        for i, position in enumerate(params):
            pin(position, ("param", i))
        for j, position in enumerate(buffers):
            pin(position, ("buffer", j))
        for flat, names in enumerate(states):
            o, i = divmod(flat, n) if n else (0, 0)
            for name, position in names.items():
                pin(position, ("state", o, i, name))
        for i, position in enumerate(grads):
            pin(position, ("grad", i))
        return pinned

    def _inputs(self, layout: Layout, batch: list[torch.Tensor], device) -> list[Any]:
        lrs = []
        where = self.strategy.sharding(()) if self.strategy is not None else device
        for opt in self.optimizers:
            for group in opt.param_groups:
                lr = group["lr"]
                lr = float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)
                lrs.append(jax.device_put(np.float32(lr), where))
        state = self.store.donatable_inputs(layout.state_inputs(), device)
        if self.strategy is not None:
            batch = [self.strategy.place_batch(f"batch input {i}", t) for i, t in enumerate(batch)]
        return [*state, *lrs, *batch]

    def _absorb(self, layout: Layout, results: Any) -> Any:
        out, params, buffers, states, grads = results
        bind = functools.partial(self._attach, layout.params)
        for i, value in enumerate(params):
            self.store.put(("param", i), value, bind)
        for j, value in enumerate(buffers):
            self.store.put(("buffer", j), value, bind)
        n = len(layout.params)
        for o in range(len(self.optimizers)):
            for i in range(n):
                for name, value in states[o * n + i].items():
                    if isinstance(value, jax.Array):
                        self.store.put(("state", o, i, name), value, bind)
        for i, g in enumerate(grads):
            if isinstance(g, jax.Array):
                self.store.put(("grad", i), g, bind)
            else:
                self.store.drop(("grad", i))
                if self.store.bind_new and layout.params[i].grad is not None:
                    layout.params[i].grad = None  # the step zeroed it (set_to_none)
        return out

    def _to_torch(self, value: Any) -> Any:
        if not isinstance(value, jax.Array):
            return value
        if self.device.type == DEVICE_TYPE:
            from torchtpu.device.tensor import from_array
            from torchtpu.lower.dtypes import to_torch_dtype

            return from_array(value, to_torch_dtype(value.dtype))
        return from_device(value)

    # --- keeping torch in step --------------------------------------------------

    def _install_hooks(self) -> None:
        modules = [m for model in self.models for m in model.modules()]  # models included
        for owner in [*modules, *self.optimizers]:
            _STEPS_OF.setdefault(owner, weakref.WeakSet()).add(self)
        for model in self.models:
            model.register_forward_pre_hook(_sync_hook)
            model.register_state_dict_pre_hook(_sync_hook)
        for opt in self.optimizers:
            opt.register_state_dict_pre_hook(_sync_hook)
            opt.register_step_pre_hook(_sync_hook)


# Every module and optimizer a compile_step holds state for, and its steps. Their
# forward, state_dict and step hooks, and a move of a module (``to``, ``cuda``,
# ``cpu``, ``half``: PyTorch's ``Module._apply``), sync those steps first.
_STEPS_OF: weakref.WeakKeyDictionary[Any, weakref.WeakSet[CompiledStep]] = (
    weakref.WeakKeyDictionary()
)


_LIVE: weakref.WeakSet[CompiledStep] = weakref.WeakSet()


def sync_pending() -> None:
    """Sync every step whose state has device copies newer than torch's: before a
    ``torch.compile`` program reads a model's tensors. (Dynamo does not guard on a
    module's hooks, so a forward hook may not run under it.)"""
    for step in list(_LIVE):
        if step.store.dirty and not step._tracing:
            step.sync()


def sync_steps_of(owner: Any) -> None:
    """Copy the state that compile_steps of ``owner`` (a module or an optimizer) hold as
    device copies into torch, so eager code, a move or a save sees the trained values."""
    for step in list(_STEPS_OF.get(owner, ())):
        if not step._tracing:
            step.sync()


# One function for every step, not a closure per step, and run eagerly: torch.compile
# of a model keeps the hook it saw in its compiled code, and another model's compiled
# call would run that one.
@torch.compiler.disable
def _sync_hook(owner: Any, *_: Any, **__: Any) -> None:
    sync_steps_of(owner)
