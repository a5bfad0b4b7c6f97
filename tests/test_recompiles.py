"""Recompiles are visible and bounded: a warning after ``warn_recompiles``, a count
per graph, an error past ``max_recompiles``, and pow2 bucketing of marked
dimensions that compiles once per bucket with the results of no bucketing."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import torchtpu


@pytest.fixture(autouse=True)
def _fresh():
    torch._dynamo.reset()
    torchtpu.clear_program_cache()
    torchtpu.reset_metrics()


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def test_recompile_storm_warns_once_naming_line_dims_and_remedies():
    model = torch.compile(torch.nn.Linear(8, 4), backend="tpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in range(1, 41):
            model(torch.randn(batch, 8))
    storms = [w for w in caught if issubclass(w.category, torchtpu.RecompileWarning)]
    assert len(storms) == 1
    text = str(storms[0].message)
    assert "test_recompiles.py" in text and "has recompiled 8 times" in text
    assert "dim 0 took 2, 3, 4, 5, 6, 7, 8, 9, 10" in text
    for remedy in ["pad", "torch._dynamo.mark_static", "mark_bucketed", "docs/errors.md"]:
        assert remedy in text
    by_graph = torchtpu.metrics()["recompiles_by_graph"]
    (graph,) = by_graph
    assert "test_recompiles.py" in graph and by_graph[graph] == 38  # sizes 3..40


def test_max_recompiles_turns_the_next_one_into_an_error():
    model = torch.compile(torch.nn.Linear(8, 4), backend="tpu", options={"max_recompiles": 3})
    for batch in range(2, 7):
        model(torch.randn(batch, 8))  # a static graph for 2; the dynamic one: 3, then 3 more
    with pytest.raises(torchtpu.RecompileError, match=r"would recompile a 4th time.*3, 4, 5, 6, 7"):
        model(torch.randn(7, 8))
    assert torchtpu.metrics()["recompiles"] == 3


def test_compile_step_recompiles_are_counted_and_bounded():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    @torchtpu.compile_step(options={"max_recompiles": 1})
    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    step(torch.randn(4, 8), torch.randint(0, 3, (4,)))
    step(torch.randn(5, 8), torch.randint(0, 3, (5,)))
    assert sum(torchtpu.metrics()["recompiles_by_graph"].values()) == 1
    with pytest.raises(torchtpu.RecompileError, match="batch input 0 dim 0 took 4, 5, 6"):
        step(torch.randn(6, 8), torch.randint(0, 3, (6,)))


def test_pow2_buckets_compile_once_per_bucket_with_equal_results():
    model = _mlp()
    compiled = torch.compile(model, backend="tpu", options={"bucket": "pow2"})
    for batch in range(2, 41):
        x = torchtpu.mark_bucketed(torch.randn(batch, 8), 0)
        out = compiled(x)
        assert out.shape == (batch, 3)
        torch.testing.assert_close(out, model(x))
    # 2..40 fall in the buckets 2, 4, 8, 16, 32 and 64
    assert torchtpu.metrics()["compiles"] == 6


def test_bucketed_training_loss_and_grads_match_with_ignored_pad_labels():
    model = _mlp()

    def loss_fn(x, y):
        return F.cross_entropy(model(x), y)

    compiled = torch.compile(loss_fn, backend="tpu", options={"bucket": "pow2"})
    for batch in [3, 5, 7, 9]:
        x, y = torch.randn(batch, 8), torch.randint(0, 3, (batch,))
        model.zero_grad()
        loss_fn(x, y).backward()
        expected = [p.grad.clone() for p in model.parameters()]
        torchtpu.mark_bucketed(x, 0, pad_value=0)
        torchtpu.mark_bucketed(y, 0, pad_value=-100)  # cross_entropy's ignore_index
        model.zero_grad()
        loss = compiled(x, y)
        torch.testing.assert_close(loss, loss_fn(x, y))
        loss.backward()
        for p, g in zip(model.parameters(), expected, strict=True):
            torch.testing.assert_close(p.grad, g)
    assert torchtpu.metrics()["compiles"] == 6  # buckets 4, 8 and 16, forward and backward


def test_bucketing_refuses_an_unmarked_input_sharing_the_dimension():
    compiled = torch.compile(
        lambda x, y: F.cross_entropy(x, y), backend="tpu", options={"bucket": "pow2"}
    )
    compiled(torchtpu.mark_bucketed(torch.randn(4, 3), 0), torch.tensor([0, 1, 2, 0]))
    x = torchtpu.mark_bucketed(torch.randn(5, 3), 0)
    with pytest.raises(torchtpu.TorchTPUError, match=r"L\['y'\].*not marked.*mark_bucketed"):
        compiled(x, torch.randint(0, 3, (5,)))


def test_bucketed_input_changed_in_place_keeps_its_real_rows():
    def bump(x):
        x.add_(1)
        return x * 2

    compiled = torch.compile(bump, backend="tpu", options={"bucket": "pow2"})
    for batch in [3, 5]:
        x = torchtpu.mark_bucketed(torch.zeros(batch, 2), 0)
        out = compiled(x)
        torch.testing.assert_close(x, torch.ones(batch, 2))
        torch.testing.assert_close(out, torch.full((batch, 2), 2.0))


def test_mark_bucketed_checks_its_arguments():
    with pytest.raises(IndexError, match="dim 2 is out of range.*\\[3, 4\\]"):
        torchtpu.mark_bucketed(torch.zeros(3, 4), 2)
    with pytest.raises(Exception, match="bucket='pow3' is not one of"):  # Dynamo wraps it
        torch.compile(lambda x: x + 1, backend="tpu", options={"bucket": "pow3"})(
            torchtpu.mark_bucketed(torch.zeros(3), 0)
        )
