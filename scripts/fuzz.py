"""Run random op programs through torchtpu's front ends and count what happened.

    .venv/bin/python scripts/fuzz.py --examples 500                 # counts, to stdout
    .venv/bin/python scripts/fuzz.py --examples 500 --out docs/fuzz.md
    .venv/bin/python scripts/fuzz.py --examples 50 --seed 1000 --shrink

Program ``seed`` is ``random_program(seed)`` from ``tests/fuzz/_programs.py``, for
``--seed`` up to ``--seed + --examples - 1``: the drawers of the hypothesis strategy
the tests use, each program drawn independently. Each runs in eager PyTorch on the
CPU and then in each front end, and every output and every input it may have mutated
is compared. Per front end a program is ``passed``, ``failed`` (a value differs),
``errored`` (torchtpu or PyTorch raised where eager PyTorch did not), ``invalid``
(eager PyTorch itself rejected it; the strategy keeps only steps eager accepts, so
this stays at zero) or ``excluded`` (it holds a construct ``KNOWN`` lists for that
front end: a known bug or a documented limit). With ``--shrink`` each failing program
is shrunk (steps and inputs deleted while the same front end still fails the same
way) before it is reported.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import platform
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))
sys.path.insert(0, str(ROOT))

import _programs as p  # noqa: E402
import jax  # noqa: E402
import torch  # noqa: E402

STATUSES = (p.PASSED, p.FAILED, p.ERRORED, p.INVALID, p.EXCLUDED)


def _signature(outcome: p.Outcome) -> str:
    """What makes two failures the same one: the front end, the status, the error's
    type (for a mismatch, none: the values differ)."""
    kind = outcome.message.split(":")[0] if outcome.status == p.ERRORED else ""
    return f"{outcome.front_end} {outcome.status} {kind}".strip()


def fuzz(seeds: range, front_ends: list[str], shrink: bool, max_steps: int) -> dict:
    counts = {f: collections.Counter() for f in front_ends}
    failures: dict[str, list] = {}  # signature -> [(seed, outcome, program)]
    excluded = collections.Counter()
    fallbacks = collections.Counter()
    first_fallback: dict[str, str] = {}  # op -> "front end, seed N"
    for n, seed in enumerate(seeds, 1):
        program = p.random_program(seed, max_steps)
        for o in p.check(program, front_ends):
            counts[o.front_end][o.status] += 1
            fallbacks.update(o.fallbacks)
            for op in o.fallbacks:
                first_fallback.setdefault(op, f"first `{o.front_end}`, seed {seed}")
            excluded.update(f"{o.front_end}: {k}" for k in o.known)
            if o.status in (p.FAILED, p.ERRORED):
                failures.setdefault(_signature(o), []).append((seed, o, program))
        if n % 10 == 0 or n == len(seeds):
            done = " ".join(f"{f}={counts[f][p.PASSED]}/{n}" for f in front_ends)
            print(f"[{n}/{len(seeds)}] passed: {done}", file=sys.stderr, flush=True)
    if shrink:
        for signature, found in failures.items():
            seed, outcome, program = found[0]
            print(f"shrinking seed {seed} ({signature})", file=sys.stderr, flush=True)

            def fails(q: p.Program, outcome=outcome) -> bool:
                (r,) = p.check(q, [outcome.front_end])
                return _signature(r) == _signature(outcome)

            small = p.shrink(program, fails)
            (again,) = p.check(small, [outcome.front_end])
            found[0] = (seed, again, small)
    return {
        "counts": counts,
        "failures": failures,
        "excluded": excluded,
        "fallbacks": fallbacks,
        "first_fallback": first_fallback,
    }


def render(result: dict, front_ends: list[str], argv: list[str], seconds: float) -> str:
    counts, failures = result["counts"], result["failures"]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Fuzzing: random op programs against eager PyTorch",
        "",
        f"Generated {when} by `python scripts/fuzz.py {' '.join(argv)}` in {seconds / 60:.1f} min.",
        f"torch {torch.__version__}, jax {jax.__version__}, python {platform.python_version()}, "
        f"JAX device: {jax.devices()[0].platform}.",
        "",
        "Each program is a few steps over one to three small tensors (float32, bfloat16, "
        "int64, bool): views, in-place ops (on views too), broadcasting, type promotion, "
        "reductions, indexing with in-range indices and masks, matmuls, joins, casts "
        "(`tests/fuzz/_programs.py`). It runs in eager PyTorch on the CPU and in each "
        "front end: `device` (inputs on `tpu`, results read back with `.cpu()`), "
        '`compile` (`torch.compile(backend="tpu")` on CPU tensors) and `compile_tpu` '
        "(the same on tpu tensors). Every output and every input is compared, exactly "
        "where the values are exact in any correct implementation (integers, bools, "
        "small integer-valued floats), else within float32 or bfloat16 rounding. Then the "
        "inputs are negated in place and the outputs compared again, then the outputs one "
        "by one and everything compared again: a value that is a view of another must see "
        "the other's change, as in eager PyTorch. A failure in CI (`pytest tests/fuzz`; "
        "`pytest -m slow tests/fuzz` is the long profile) prints the program, shrunk, as "
        "a Python listing that runs as it stands.",
        "",
        "## Counts",
        "",
        "| front end | " + " | ".join(STATUSES) + " |",
        "| --- | " + " | ".join("---:" for _ in STATUSES) + " |",
    ]
    for f in front_ends:
        lines.append(f"| `{f}` | " + " | ".join(str(counts[f][s]) for s in STATUSES) + " |")
    lines += [
        "",
        "`failed`: a value differs; `errored`: torchtpu or PyTorch raised where eager "
        "PyTorch did not; `invalid`: eager PyTorch rejected the program; `excluded`: the "
        "program holds a construct known to fail on that front end (below).",
        "",
        "## Known failures, excluded",
        "",
        "Programs holding each construct, per front end it is known to fail on; those are "
        "not run there, except where only the values after the outputs change are skipped.",
        "",
        "| construct | programs | why |",
        "| --- | --- | --- |",
    ]
    for name, known in p.KNOWN.items():
        where = ", ".join(
            f"`{f}` {result['excluded'][f'{f}: {name}']}"
            for f in known.front_ends
            if f in front_ends
        )
        skipped = (
            " (values after the outputs change not compared)" if known.after_outputs_only else ""
        )
        lines.append(f"| {name}{skipped} | {where} | {known.why} |")
    lines += ["", "## Failures", ""]
    if not failures:
        lines += ["None.", ""]
    for signature, found in failures.items():
        seed, outcome, program = found[0]
        seeds = ", ".join(str(s) for s, _, _ in found[:20])
        more = f" and {len(found) - 20} more" if len(found) > 20 else ""
        lines += [
            f"### {signature}: {len(found)} program(s)",
            "",
            f"Seeds {seeds}{more}. Seed {seed}:",
            "",
            "```",
            outcome.message.strip()[:2000],
            "```",
            "",
            "```python" + repr(program).rstrip(),
            "```",
            "",
        ]
    fallbacks = result["fallbacks"]
    lines += ["## Ops that ran in eager PyTorch", ""]
    if fallbacks:
        first = result["first_fallback"]
        lines.append("Fallbacks, by op (times, all front ends together): ")
        lines[-1] += ", ".join(f"`{op}` ({n}; {first[op]})" for op, n in fallbacks.most_common())
        lines[-1] += "."
    else:
        lines.append("None: every op of every program reached XLA.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100, help="programs to run (100)")
    parser.add_argument("--seed", type=int, default=0, help="the first program's seed (0)")
    parser.add_argument(
        "--front-ends",
        default=",".join(p.FRONT_ENDS),
        help=f"comma-separated, among {','.join(p.FRONT_ENDS)} (default: all)",
    )
    parser.add_argument("--max-steps", type=int, default=10, help="steps per program (10)")
    parser.add_argument("--shrink", action="store_true", help="shrink one program per failure")
    parser.add_argument("--out", help="also write the report here as markdown")
    args = parser.parse_args(argv)
    front_ends = args.front_ends.split(",")
    unknown = set(front_ends) - set(p.FRONT_ENDS)
    if unknown:
        parser.error(f"unknown front ends {sorted(unknown)}; choose from {p.FRONT_ENDS}")

    warnings.filterwarnings("ignore")
    torch._dynamo.config.recompile_limit = 64
    start = time.perf_counter()
    seeds = range(args.seed, args.seed + args.examples)
    result = fuzz(seeds, front_ends, args.shrink, args.max_steps)
    report = render(result, front_ends, argv, time.perf_counter() - start)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
        print(f"wrote {args.out}", file=sys.stderr)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
