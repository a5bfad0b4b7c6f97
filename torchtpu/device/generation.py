"""HF ``model.generate(...)`` on the tpu device with a bounded number of programs.

A generation loop grows tensors by one token per step (the token ids, the
attention mask, a dynamic KV cache). On XLA every new shape is a new program,
so a naive loop compiles once per generated token. For a HuggingFace model on
``tpu``, torchtpu's ``generate``:

- keeps the KV cache on the device in a *static* cache (HF's
  ``cache_implementation="static"``), sized to the next power of two of the
  longest sequence the call can reach (at least 64), so calls share it and
  every decode step has the same shapes; HF masks the unused positions
  exactly. Calls whose lengths fall in one bucket compile nothing new: for N
  new tokens at most O(log N) programs, and one per bucket for a static cache;
- runs the loop's bookkeeping (token ids, attention mask, stopping criteria,
  logits processors) on the host, where growing shapes cost nothing: each
  step sends the model its new inputs and reads back one row of logits, as
  HF's loop already moves logits to the token ids' device.

The model's forward runs on the device as the user set it up: in device mode,
or through ``torch.compile(backend="tpu")`` if its forward is compiled. A call
that brings its own cache (``past_key_values=``) or another
``cache_implementation`` runs HF's generate unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch

DEVICE_TYPE = "tpu"
SMALLEST_BUCKET = 64
_INSTALLED: set[type] = set()


def bucket(length: int) -> int:
    """The cache length for sequences up to ``length``: the next power of two."""
    size = SMALLEST_BUCKET
    while size < length:
        size *= 2
    return size


def install(model: torch.nn.Module) -> None:
    """Give ``model``'s class torchtpu's ``generate`` (once per class)."""
    cls = type(model)
    generate = getattr(cls, "generate", None)
    if generate is None or cls in _INSTALLED or getattr(generate, "_torchtpu", False):
        return
    _INSTALLED.add(cls)

    @functools.wraps(generate)
    def tpu_generate(self: Any, inputs: Any = None, generation_config: Any = None, **kwargs: Any):
        if not _on_tpu(self) or "past_key_values" in kwargs:
            return generate(self, inputs, generation_config, **kwargs)
        implementation = kwargs.get(
            "cache_implementation",
            getattr(generation_config or self.generation_config, "cache_implementation", None),
        )
        if implementation not in (None, "dynamic", "static") or not _supports_static(self):
            return generate(self, inputs, generation_config, **kwargs)
        inputs = _to_host(inputs)
        kwargs = {k: _to_host(v) for k, v in kwargs.items()}
        kwargs["cache_implementation"] = "static"
        if kwargs.get("max_cache_len") is None:
            kwargs["max_cache_len"] = bucket(_longest(self, inputs, generation_config, kwargs))
        with _inputs_to_device(self):
            out = generate(self, inputs, generation_config, **kwargs)
        return _to_device(out)

    tpu_generate._torchtpu = True
    cls.generate = tpu_generate


def _on_tpu(model: torch.nn.Module) -> bool:
    param = next(model.parameters(), None)
    return param is not None and param.device.type == DEVICE_TYPE


def _supports_static(model: Any) -> bool:
    return bool(getattr(model, "_can_compile_fullgraph", False)) and not getattr(
        model.config, "is_encoder_decoder", False
    )


def _longest(model: Any, inputs: Any, generation_config: Any, kwargs: dict) -> int:
    """The longest sequence this call can produce, as HF will compute it."""
    config = generation_config or model.generation_config
    ids = inputs if inputs is not None else kwargs.get("input_ids")
    prompt = ids.shape[-1] if isinstance(ids, torch.Tensor) else 0
    new = kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
    if new is not None:
        return prompt + int(new)
    return int(kwargs.get("max_length", getattr(config, "max_length", 20) or 20))


def _to_host(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.device.type == DEVICE_TYPE:
        return value.cpu()
    return value


def _to_device(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(DEVICE_TYPE)
    if isinstance(value, dict):  # HF's ModelOutput and plain dicts
        for key in list(value.keys()):
            value[key] = _to_device(value[key])
        return value
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_to_device(v) for v in value)
    return value


@contextlib.contextmanager
def _inputs_to_device(model: torch.nn.Module) -> Iterator[None]:
    """While generating, each forward call moves its host tensors to the device."""
    forward = model.forward
    own = model.__dict__.get("forward")  # a forward the user set (a compiled one, say)

    @functools.wraps(forward)
    def on_device(*args: Any, **kwargs: Any) -> Any:
        args = tuple(_input(a) for a in args)
        kwargs = {k: _input(v) for k, v in kwargs.items()}
        return forward(*args, **kwargs)

    model.forward = on_device
    try:
        yield
    finally:
        if own is not None:
            model.forward = own
        else:
            del model.forward


def _input(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.device.type == "cpu":
        return value.to(DEVICE_TYPE)
    return value
