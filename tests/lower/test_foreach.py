"""``_foreach_*`` ops lower whole and match eager PyTorch element for element."""

from __future__ import annotations

import pytest
import torch

from torchtpu.lower.ops.foreach import _unregistered

STRICT = {"strict": True}


def _lists(n: int = 3):
    gen = torch.Generator().manual_seed(0)
    shapes = [(4,), (2, 3), ()][:n]
    a = [torch.rand(s, generator=gen) + 0.5 for s in shapes]
    b = [torch.rand(s, generator=gen) + 0.5 for s in shapes]
    c = [torch.rand(s, generator=gen) + 0.5 for s in shapes]
    return a, b, c


CASES = {
    "unary": lambda a, b, c: [
        *torch._foreach_sqrt(a),
        *torch._foreach_neg(b),
        *torch._foreach_exp(c),
    ],
    "scalar": lambda a, b, c: [*torch._foreach_add(a, 2.5), *torch._foreach_mul(b, -3)],
    "list": lambda a, b, c: [*torch._foreach_div(a, b), *torch._foreach_sub(a, b, alpha=2)],
    "scalar_list": lambda a, b, c: torch._foreach_mul(a, [1.0, 2.0, 3.0]),
    "tensor": lambda a, b, c: torch._foreach_mul(a, torch.tensor(1.5)),
    "pointwise": lambda a, b, c: [
        *torch._foreach_addcmul(a, b, c, 0.3),
        *torch._foreach_addcdiv(a, b, c, [0.1, 0.2, 0.3]),
    ],
    "lerp": lambda a, b, c: [*torch._foreach_lerp(a, b, 0.25), *torch._foreach_lerp(a, b, c)],
    "pow": lambda a, b, c: [*torch._foreach_pow(a, 2.0), *torch._foreach_pow(0.9, b)],
    "clamp": lambda a, b, c: [*torch._foreach_maximum(a, b), *torch._foreach_clamp_max(a, 0.8)],
    "norm": lambda a, b, c: [*torch._foreach_norm(a), *torch._foreach_norm(b, 1)],
    "in_place": lambda a, b, c: (torch._foreach_mul_(a, 0.5), torch._foreach_add_(a, b), a)[-1],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_eager(case):
    fn = CASES[case]
    got = torch.compile(fn, backend="tpu", options=STRICT)(*_lists())
    want = fn(*_lists())
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_every_table_entry_has_a_per_tensor_lowering():
    assert _unregistered() == []


def test_adamw_foreach_step_is_one_program_matching_eager():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    twin = torch.nn.Linear(8, 4)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(5, 8)

    def trainer(m):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2, foreach=True)

        def step():
            loss = m(x).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss

        return step

    import torchtpu

    compiled, eager = torchtpu.compile_step(trainer(model)), trainer(twin)
    for _ in range(3):
        torch.testing.assert_close(compiled(), eager(), rtol=1e-5, atol=1e-6)
    assert torchtpu.metrics()["fallbacks"] == {}
