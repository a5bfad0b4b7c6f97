"""A model built on ``meta`` materialised straight into its shards.

``with meta_init(): model = Model(config)`` builds the model with its
parameters on the ``meta`` device (no memory) and its buffers real (rotary
tables, masks: small, and computed in ``__init__``). ``materialize(model,
strategy)`` then initialises one module at a time: that module's own
parameters get host memory, its ``reset_parameters()`` (or ``init(module)``)
fills them, each is split into the shards the strategy gives it, and the host
copy is dropped before the next module. The host never holds more than one
module's parameters; with several processes each makes only its own shards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import torch

from torchtpu.errors import ShardingError
from torchtpu.lower.dtypes import to_numpy
from torchtpu.shard.strategy import Strategy


@contextlib.contextmanager
def meta_init() -> Iterator[None]:
    """Build modules with their parameters on ``meta`` and their buffers real.

    Example::

        with torchtpu.shard.meta_init():
            model = MyModel(config)            # no parameter memory
        torchtpu.shard.materialize(model, torchtpu.FSDP())
    """
    original = torch.nn.Module.register_parameter

    def register(module: torch.nn.Module, name: str, param: Any) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = torch.nn.Parameter(
                param.to("meta"), requires_grad=param.requires_grad
            )

    torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


def materialize(
    model: torch.nn.Module,
    strategy: Strategy,
    init: Callable[[torch.nn.Module], None] | None = None,
) -> torch.nn.Module:
    """Give ``model``'s ``meta`` parameters values, each made directly as its shards
    on ``strategy``'s mesh; the parameters become ``tpu`` tensors holding them.

    ``init(module)`` fills one module's own parameters (default: the module's
    ``reset_parameters()``; for Hugging Face models pass ``model._init_weights``).
    Tied parameters stay tied. Returns ``model``.

    Example::

        model = torchtpu.shard.materialize(model, strategy)
        step = torchtpu.compile_step(train_step, strategy=strategy)
    """
    from torchtpu.device.tensor import from_array

    named = list(model.named_parameters())
    names = {id(p): n for n, p in named}
    plan = strategy.plan([(n, tuple(p.shape)) for n, p in named])
    for module_name, module in model.named_modules():
        for buffer_name, buffer in module.named_buffers(recurse=False):
            if buffer.is_meta and init is None:
                where = f"{module_name}.{buffer_name}" if module_name else buffer_name
                raise ShardingError(
                    f"materialize: buffer {where!r} {list(buffer.shape)} {buffer.dtype} is on "
                    "meta, and nothing would give it a value. Build the model under "
                    "torchtpu.shard.meta_init() (buffers stay real), or pass init= that fills it."
                )
    done: dict[int, torch.nn.Parameter] = {}
    with torch.no_grad():
        for module_name, module in model.named_modules():
            own = [(k, p) for k, p in module._parameters.items() if p is not None]
            fresh = [(k, p) for k, p in own if p.is_meta and id(p) not in done]
            if fresh:
                for k, p in fresh:
                    module._parameters[k] = torch.nn.Parameter(
                        torch.empty(p.shape, dtype=p.dtype), requires_grad=p.requires_grad
                    )
                _init_module(module, module_name, init)
                for k, p in fresh:
                    host = module._parameters[k]
                    sharding = strategy.sharding(plan[names[id(p)]].spec)
                    array = _from_host(to_numpy(host.detach()), sharding)
                    done[id(p)] = torch.nn.Parameter(
                        from_array(array, host.dtype), requires_grad=p.requires_grad
                    )
                    module._parameters[k] = done[id(p)]
                    del host
            for k, p in own:
                if id(p) in done:
                    module._parameters[k] = done[id(p)]
        for module in model.modules():
            for k, b in list(module._buffers.items()):
                if b is not None and b.device.type == "cpu":
                    module._buffers[k] = b.to("tpu")
    return model


def _init_module(
    module: torch.nn.Module, name: str, init: Callable[[torch.nn.Module], None] | None
) -> None:
    if init is not None:
        init(module)
        return
    reset = getattr(module, "reset_parameters", None)
    if reset is None:
        raise ShardingError(
            f"materialize: module {name or '<root>'!r} ({type(module).__name__}) has "
            f"parameters {sorted(module._parameters)} but no reset_parameters() to fill "
            "them. Pass init=fn, a function that fills one module's own parameters "
            "(for Hugging Face models: init=model._init_weights)."
        )
    reset()


def _from_host(host: np.ndarray, sharding: jax.sharding.NamedSharding) -> jax.Array:
    """A global array of ``host``'s value, each addressable device given its shard."""
    return jax.make_array_from_callback(
        host.shape, sharding, lambda index: np.array(host[index], copy=True)
    )
