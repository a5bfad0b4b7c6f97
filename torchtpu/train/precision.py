"""Mixed precision for ``compile_step``: what each precision changes while tracing.

- ``bf16-mixed``: each model's forward runs under ``torch.autocast`` with
  bfloat16, so matmuls and convolutions compute in bf16 while weights, grads
  and optimizer state stay float32. The backward follows the forward's dtypes,
  as in eager PyTorch. ``torch.autocast`` regions in user code keep working.
- ``bf16-true`` with stochastic rounding: the optimizer updates float32 copies
  of the bf16 weights, and each result is rounded to bf16 up or down at random
  with probability given by its distance to the two neighbours, so small
  updates survive on average instead of being rounded away (the technique AWS
  Trainium uses). The noise comes from the program's seeded RNG input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def autocast_forward(models: list[torch.nn.Module], device_type: str = "cpu") -> Iterator[None]:
    """Run each root model's forward under bf16 autocast (for ``device_type``, the
    device the traced tensors are on) while tracing."""
    contexts: list[contextlib.AbstractContextManager] = []

    def enter(module, args):
        ctx = torch.autocast(device_type, dtype=torch.bfloat16)
        ctx.__enter__()
        contexts.append(ctx)

    def leave(module, args, output):
        contexts.pop().__exit__(None, None, None)
        return output

    handles = []
    for model in models:
        handles.append(model.register_forward_pre_hook(enter))
        handles.append(model.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def stochastic_round_to_bf16(x: torch.Tensor) -> torch.Tensor:
    """Round float32 ``x`` to bfloat16 stochastically (unbiased in expectation).

    Adding uniform noise below the 16 bits that bf16 drops, then truncating,
    rounds up with probability equal to the dropped fraction.
    """
    bits = x.float().contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device)
    rounded = (bits + noise) & -65536  # 0xFFFF0000: keep sign, exponent, 7 mantissa bits
    return rounded.view(torch.float32).to(torch.bfloat16)


@contextlib.contextmanager
def stochastic_rounding_step(optimizers: list[torch.optim.Optimizer]) -> Iterator[None]:
    """Make each ``optimizer.step()`` update float32 copies, then round them to bf16.

    The optimizer's state is keyed by the working copies during the update, so
    it is created and kept in float32.
    """
    originals = [(opt, opt.step) for opt in optimizers]
    for opt, original in originals:
        opt.step = _rounding_step(opt, original)
    try:
        yield
    finally:
        for opt, original in originals:
            opt.step = original


def _rounding_step(opt: torch.optim.Optimizer, original):
    def step(*args, **kwargs):
        groups = []
        for group in opt.param_groups:
            pairs = [(p, _working_copy(opt, p)) for p in group["params"]]
            group["params"] = [w for _, w in pairs]
            groups.append(pairs)
        try:
            return original(*args, **kwargs)
        finally:
            with torch.no_grad():
                for group, pairs in zip(opt.param_groups, groups, strict=True):
                    group["params"] = [p for p, _ in pairs]
                    for p, w in pairs:
                        if w in opt.state:
                            opt.state[p] = opt.state.pop(w)
                        p.copy_(stochastic_round_to_bf16(w))

    return step


def _working_copy(opt: torch.optim.Optimizer, p: torch.Tensor) -> torch.Tensor:
    w = p.detach().float()
    if p.grad is not None:
        w.grad = p.grad.float()
    if p in opt.state:
        opt.state[w] = opt.state.pop(p)
    return w
