"""``backend="auto"`` and ``TORCHTPU_PLATFORM=auto``: one timed choice per graph, reported,
and results that do not depend on which candidate wins."""

from __future__ import annotations

import logging

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend, register_backend
from torch._dynamo.exc import InvalidBackend

import torchtpu
import torchtpu.capture.auto as auto


@pytest.fixture(scope="module", autouse=True)
def registered():
    """``auto`` by its entry point when torchtpu is installed with it, else registered here."""
    try:
        lookup_backend("auto")
    except InvalidBackend:
        register_backend(auto.auto_backend, "auto")


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))


def grads_of(model, out):
    return torch.autograd.grad(out.square().sum(), list(model.parameters()))


def test_auto_chooses_once_reports_times_and_matches_eager(caplog):
    model = mlp()
    x = torch.randn(5, 8)
    compiled = torch.compile(model, backend="auto")
    with caplog.at_level(logging.WARNING, logger="torchtpu"):
        out = compiled(x)
    grads = grads_of(model, out)
    again = compiled(x)
    ref = model(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, grads_of(model, ref), strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)

    (choice,) = torchtpu.metrics()["auto_choices"]  # one graph, one choice
    assert set(choice["seconds"]) == {"xla:cpu", "eager"}
    assert all(s > 0 for s in choice["seconds"].values())
    assert choice["chosen"] == min(choice["seconds"], key=choice["seconds"].get)
    assert "test_auto.py" in choice["graph"]
    (line,) = [r.getMessage() for r in caplog.records if "auto:" in r.getMessage()]
    assert f"chose {choice['chosen']}" in line and "ms" in line
    assert "auto_choices" in torchtpu.report()


class Counting:
    """A fake candidate: the real XLA graph, counting its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


@pytest.mark.parametrize("fake_seconds, kept", [(1e-3, "fake"), (5.0, "xla:cpu")])
def test_the_faster_candidate_is_kept(monkeypatch, fake_seconds, kept):
    real = auto.candidates
    fakes = []

    def with_fake(gm, example_inputs, options, *, eager):
        found = real(gm, example_inputs, options, eager=False)
        fakes.append(Counting(found[0].fn))
        return [*found, auto.Candidate("fake", fakes[-1])]

    times = {"xla:cpu": 1.0, "fake": fake_seconds}
    monkeypatch.setattr(auto, "candidates", with_fake)
    monkeypatch.setattr(auto, "measure", lambda c, args, **_: times[c.name])
    model = mlp()
    x = torch.randn(5, 8)
    compiled = torch.compile(model, backend="auto")
    outs = [compiled(x) for _ in range(3)]
    for out in outs:
        torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)
    (choice,) = torchtpu.metrics()["auto_choices"]
    assert choice["chosen"] == kept
    assert choice["seconds"] == times
    assert fakes[0].calls == (3 if kept == "fake" else 0)  # trials were patched out


def test_trials_leave_buffers_and_random_state_as_eager_would():
    """Dropout and BatchNorm: the trials run on copies with the generators restored, so
    the real call (here eager, chosen) draws the same mask and updates the stats once."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5)
    )
    twin = torch.nn.Sequential(
        torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5)
    )
    twin.load_state_dict(model.state_dict())
    x = torch.randn(6, 8)

    compiled = torch.compile(model, backend="auto")
    auto_measure = auto.measure

    def eager_wins(c, args, **kw):
        seconds = auto_measure(c, args, **kw)  # really run: consumes RNG, mutates copies
        return seconds if c.name == "eager" else seconds + 1e3

    auto.measure = eager_wins
    try:
        torch.manual_seed(1)
        out = compiled(x)
        after = torch.rand(3)
    finally:
        auto.measure = auto_measure
    torch.manual_seed(1)
    ref = twin(x)
    ref_after = torch.rand(3)
    assert torchtpu.metrics()["auto_choices"][0]["chosen"] == "eager"
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(after, ref_after)
    torch.testing.assert_close(model[1].running_mean, twin[1].running_mean)
    assert int(model[1].num_batches_tracked) == 1


def test_a_failing_candidate_is_reported_not_chosen(monkeypatch):
    real = auto.candidates

    def broken(*args):
        raise RuntimeError("out of device memory")

    def with_broken(gm, example_inputs, options, *, eager):
        return [*real(gm, example_inputs, options, eager=eager), auto.Candidate("xla:gpu", broken)]

    monkeypatch.setattr(auto, "candidates", with_broken)
    model = mlp()
    x = torch.randn(5, 8)
    out = torch.compile(model, backend="auto")(x)
    torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)
    (choice,) = torchtpu.metrics()["auto_choices"]
    assert choice["failed"] == {"xla:gpu": "RuntimeError: out of device memory"}
    assert choice["chosen"] in {"xla:cpu", "eager"}


def test_platform_auto_with_the_tpu_backend_picks_among_xla_platforms():
    torchtpu.set_options(platform="auto")
    model = mlp()
    x = torch.randn(5, 8)
    out = torch.compile(model, backend="tpu")(x)
    torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)
    (choice,) = torchtpu.metrics()["auto_choices"]
    assert "eager" not in choice["seconds"]
    present = torchtpu.runtime.device.platforms_present()
    assert choice["chosen"] == f"xla:{present[0]}" or len(present) > 1
    assert torchtpu.runtime.default_device().platform in {"cpu", "gpu", "tpu", "cuda", "rocm"}
