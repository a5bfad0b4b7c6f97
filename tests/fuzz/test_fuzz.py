"""Random op programs in device mode and under torch.compile, compared with eager PyTorch.

Each program (``_programs.py``) runs in eager PyTorch on the CPU, in device mode, and
under ``torch.compile(backend="tpu")`` on CPU and on tpu tensors; every output and
every input it may have mutated must match. A failure prints the program, shrunk by
hypothesis, as a Python listing that runs as it stands. The default (CI) profile runs
a few dozen programs; ``pytest -m slow tests/fuzz`` runs the long one, and
``scripts/fuzz.py`` runs any number and counts the outcomes per front end.
"""

from __future__ import annotations

import pytest

pytest.importorskip("hypothesis", reason="the fuzz tests draw their programs with hypothesis")

import _programs as p  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

# Drawing a program runs it in eager PyTorch, step by step: slower than hypothesis expects.
# No explain phase: each of its runs compiles, and the shrunk listing says enough.
_COMMON = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
)
FAST = settings(max_examples=30, **_COMMON)
LONG = settings(max_examples=500, **_COMMON)


@FAST
@given(p.programs())
def test_programs_match_eager(program):
    p.assert_program(program)


# Hypothesis favours small programs and variations of earlier ones; these come from the
# same drawers with a plain seeded generator, each drawn independently (no shrinking:
# ``scripts/fuzz.py --seed N --examples 1 --shrink`` shrinks one).
@pytest.mark.parametrize("seed", range(8))
def test_seeded_programs_match_eager(seed):
    p.assert_program(p.random_program(seed))


@pytest.mark.slow
@LONG
@given(p.programs())
def test_programs_match_eager_long(program):
    p.assert_program(program)


# --- the harness itself: no compiling ----------------------------------------------------


def _program(*lines: str, inputs: tuple[p.Input, ...]) -> p.Program:
    steps = []
    for line in lines:
        name, _, _ = line.partition(" = ")
        if " = " in line and name.isidentifier():
            steps.append(p.Step(line, out=name))
        else:
            steps.append(p.Step(line, target=line.split(".")[0]))
    program = p.rebuild(inputs, steps)
    assert program is not None, "eager PyTorch rejected the program"
    return program


def test_the_listing_runs_as_it_stands():
    x = p.Input("t0", "float32", (2, 2), (1.0, -2.0, 3.0, 4.0))
    program = _program("t1 = t0.t()", "t1.add_(1)", "t2 = t0.sum(0)", inputs=(x,))
    namespace: dict = {}
    exec(repr(program) + "\nresult = program(t0)\n", namespace)
    torch.testing.assert_close(namespace["t0"], torch.tensor([[2.0, -1.0], [4.0, 5.0]]))
    torch.testing.assert_close(namespace["result"][1], torch.tensor([6.0, 4.0]))


def test_exact_values_are_compared_exactly_and_rounded_ones_within_tolerance():
    x = p.Input("t0", "float32", (3,), (1.0, 2.0, 4.0))
    program = _program("t1 = t0 * 3", "t2 = t0.mean()", "t3 = t0 > 1", inputs=(x,))
    assert program.levels["t1"][0] == p.Level.EXACT
    assert program.levels["t2"][0] == p.Level.FLOAT32
    expected = p.run(program, "eager")
    nudged = dict(expected, t2=expected["t2"] + 1e-7)
    p.compare(program, nudged, expected)
    with pytest.raises(p.Mismatch, match="t1"):
        p.compare(program, dict(expected, t1=expected["t1"] + 1e-3), expected)


def test_comparisons_of_rounded_floats_are_not_drawn():
    x = p.Input("t0", "float32 real", (2,), (0.1, 0.2))
    assert p.rebuild((x,), [p.Step("t1 = t0 > 0", out="t1")]) is None
    assert p.rebuild((x,), [p.Step("t1 = t0.floor()", p.DISCRETE, out="t1")]) is None


def test_known_constructs_are_excluded_on_their_front_ends_only():
    x = p.Input("t0", "int64", (3,), (0, 1, 2))
    program = _program("t1 = t0.nonzero()", inputs=(x,))
    assert program.notes == {p.DATA_DEPENDENT}
    outcomes = {o.front_end: o.status for o in p.check(program, ["compile_tpu"])}
    assert outcomes == {"compile_tpu": p.EXCLUDED}
