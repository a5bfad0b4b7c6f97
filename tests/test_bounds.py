"""Indices out of range raise IndexError, as in eager PyTorch, from every front end;
``check_bounds=False`` compiles no checks; ``debug_nans`` names the op that made a NaN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import torchtpu
from torchtpu.lower import checks


@pytest.fixture(autouse=True)
def _clean():
    checks._PENDING.clear()
    yield
    checks._PENDING.clear()
    torchtpu.set_options(check_bounds=True, debug_nans=False)


def _emb() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Embedding(10, 4)


def test_compiled_embedding_raises_for_a_token_past_its_size():
    compiled = torch.compile(_emb(), backend="tpu")
    compiled(torch.tensor([1, 2]))
    with pytest.raises(IndexError, match=r"embedding: index 12 .* size 10 .*test_bounds.py:\d+"):
        compiled(torch.tensor([1, 12]))
    torch.testing.assert_close(compiled(torch.tensor([3])), _emb()(torch.tensor([3])))


def test_device_mode_index_raises_at_the_next_read_naming_its_line():
    a = torch.arange(12.0).view(3, 4).to("tpu")
    picked = a[torch.tensor([7], device="tpu")]  # recorded, not run: nothing raised yet
    with pytest.raises(IndexError, match=r"index: index 7 .*size 3 .*test_bounds.py:\d+"):
        picked.cpu()
    torch.testing.assert_close(
        a[torch.tensor([-1], device="tpu")].cpu(), torch.tensor([[8.0, 9, 10, 11]])
    )


def test_blocking_mode_raises_at_the_op():
    torchtpu.set_options(blocking=True)
    try:
        x = torch.zeros(3, device="tpu")
        with pytest.raises(IndexError, match="gather: index 3"):
            x.gather(0, torch.tensor([3], device="tpu"))
    finally:
        torchtpu.set_options(blocking=False)


def test_compile_step_raises_at_the_step_result():
    model = torch.nn.Sequential(_emb(), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    @torchtpu.compile_step
    def step(ids, y):
        loss = F.mse_loss(model(ids), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    step(torch.tensor([[1, 2]]), torch.zeros(1, 2))
    with pytest.raises(IndexError, match="embedding: index 11"):
        step(torch.tensor([[1, 11]]), torch.zeros(1, 2))


@pytest.mark.parametrize(
    "op, fn, pattern",
    [
        ("index_select", lambda x, i: x.index_select(0, i), "index_select: index 5"),
        ("gather", lambda x, i: x.gather(0, i), "gather: index 5"),
        ("scatter_add", lambda x, i: x.scatter_add(0, i, torch.ones_like(x[:1])), "scatter_add"),
        ("index_put", lambda x, i: x.index_put((i,), torch.tensor(1.0)), "index_put: index 5"),
        ("take", lambda x, i: x.take(i + 20), "take: index 25 .*\\[-12, 12\\)"),
        ("index_add", lambda x, i: x.index_add(0, i, torch.ones(1, 4)), "index_add: index 5"),
    ],
)
def test_indexing_ops_check_their_indices(op, fn, pattern):
    x = torch.arange(12.0).view(3, 4)
    index = torch.tensor([[5, 0, 0, 0]]) if op in {"gather", "scatter_add"} else torch.tensor([5])
    with pytest.raises(IndexError, match=pattern):
        torch.compile(fn, backend="tpu", dynamic=False)(x, index)


def test_negative_indices_in_range_pass_where_pytorch_accepts_them():
    x = torch.arange(12.0).view(3, 4)
    compiled = torch.compile(lambda x, i: (x[i], x.take(i)), backend="tpu")
    i = torch.tensor([-3, -1, 2])
    for got, want in zip(compiled(x, i), (x[i], x.take(i)), strict=True):
        torch.testing.assert_close(got, want)


def test_check_bounds_off_compiles_no_checks():
    torchtpu.set_options(check_bounds=False)
    torchtpu.clear_program_cache()
    out = torch.compile(_emb(), backend="tpu")(torch.tensor([12]))
    assert out.shape == (1, 4)  # XLA's out-of-range gather: no error, a wrong row
    assert all(not p.checks for p in torchtpu.compile.programs())


def test_debug_nans_names_the_first_op_that_made_one():
    torchtpu.set_options(debug_nans=True)

    def f(x):
        y = x * 2
        return torch.log(y - 1).sum() + y.sum()

    with pytest.raises(FloatingPointError, match=r"aten.log.default.*test_bounds.py:\d+"):
        torch.compile(f, backend="tpu")(torch.tensor([0.1, 2.0]))
    x = torch.tensor([0.1, 2.0], device="tpu")
    with pytest.raises(FloatingPointError, match="aten.sqrt.default"):
        (torch.sqrt(x - 1) * 3).cpu()
    torch.testing.assert_close(
        torch.compile(f, backend="tpu")(torch.tensor([1.0, 2.0])), f(torch.tensor([1.0, 2.0]))
    )
