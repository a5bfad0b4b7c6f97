"""Run torchtpu's full OpInfo conformance sweep and write docs/conformance.md.

    .venv/bin/python scripts/conformance.py                      # everything
    .venv/bin/python scripts/conformance.py --ops add,sum --dtypes float32,grad

Every sample of every op in PyTorch's ``op_db`` runs through
``torch.compile(backend="tpu")`` in strict mode at each forward dtype the op
supports (float32, bfloat16, int64, bool, complex64), plus float32 gradients
for ops that support autograd, and is compared with eager PyTorch. The checks
are those of ``tests/conformance/test_opinfo.py`` (shared through
``tests/conformance/_harness.py``). With ``--ops`` or ``--dtypes`` the report
goes to stdout unless ``--out`` names a file.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import platform
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "conformance"))
sys.path.insert(0, str(ROOT))

import _harness as h  # noqa: E402
import expected  # noqa: E402
import jax  # noqa: E402
import torch  # noqa: E402

GRAD = "grad"
COLUMNS = [h.dtype_name(d) for d in h.FORWARD_DTYPES] + [GRAD]


@dataclasses.dataclass
class Cell:
    """One op at one dtype (or its gradient): sample counts and what went wrong."""

    passed: int = 0
    failed: int = 0
    skipped: int = 0
    expected: str | None = None
    shape_only: str | None = None  # the reason, where values are not compared
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def ran(self) -> int:
        return self.passed + self.failed

    @property
    def ok(self) -> bool:
        return self.ran > 0 and self.failed == 0

    def text(self) -> str:
        if self.ran == 0:
            return "skip"
        mark = "" if self.failed == 0 else (" xfail" if self.expected else " FAIL")
        return f"{self.passed}/{self.ran}{mark}"


def sweep(ops, columns, limit) -> dict[str, dict[str, Cell]]:
    table: dict[str, dict[str, Cell]] = {}
    for n, op in enumerate(ops, 1):
        start = time.perf_counter()
        row = table.setdefault(h.op_id(op), {})
        for column in columns:
            cell = _run(op, column, limit)
            if cell is not None:
                row[column] = cell
        took = time.perf_counter() - start
        summary = " ".join(f"{c}={cell.text()}" for c, cell in row.items())
        print(
            f"[{n}/{len(ops)}] {h.op_id(op)} ({took:.1f}s) {summary}", file=sys.stderr, flush=True
        )
    return table


def _run(op, column, limit) -> Cell | None:
    grad = column == GRAD
    if grad:
        if not h.supports_grad(op):
            return None
        dtype = h.GRAD_DTYPE
    else:
        dtype = getattr(torch, column)
        if not h.forward_dtypes(op, (dtype,)):
            return None
    cell = Cell(
        expected=h.expected_reason(op, dtype, grad, one_sample=limit == 1),
        shape_only=h.shape_only_reason(op, dtype, grad),
    )
    for result in h.run_op(op, dtype, grad=grad, limit=limit):
        if result.status == "pass":
            cell.passed += 1
        elif result.status == "skip":
            cell.skipped += 1
        else:
            cell.failed += 1
            cell.failures.append(f"{result.kind}: {result.detail}")
    return cell


def totals(table, column) -> dict[str, float]:
    cells = [row[column] for row in table.values() if column in row]
    tested = [c for c in cells if c.ran]
    t = collections.Counter(
        ops=len(cells),
        ops_tested=len(tested),
        ops_skipped=len(cells) - len(tested),
        ops_passed=sum(c.ok for c in tested),
        ops_xfail=sum((not c.ok) and bool(c.expected) for c in tested),
        samples_passed=sum(c.passed for c in cells),
        samples_failed=sum(c.failed for c in cells),
        samples_skipped=sum(c.skipped for c in cells),
    )
    t["ops_pct"] = 100.0 * t["ops_passed"] / max(t["ops_tested"], 1)
    ran = t["samples_passed"] + t["samples_failed"]
    t["samples_pct"] = 100.0 * t["samples_passed"] / max(ran, 1)
    return dict(t)


def render(table, columns, argv, seconds) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(["python scripts/conformance.py", *argv])
    lines = [
        "# Op conformance against PyTorch's OpInfo database",
        "",
        f"Generated {now} by `{command}` in {seconds / 60:.1f} min.",
        f"torch {torch.__version__}, jax {jax.__version__}, python {platform.python_version()}, "
        f"JAX device: {jax.devices()[0].platform}.",
        "",
        'Each sample of each `op_db` entry runs through `torch.compile(backend="tpu")` in strict',
        "mode (no eager fallback) and is compared with eager PyTorch on the CPU. A sample passes",
        "only if its graph reached XLA, Dynamo did not break the graph, and every output (or",
        "gradient, from `torch.autograd.grad` at float32) matches within the dtype's tolerance",
        "(`tests/conformance/_compare.py`). Random ops and ops with uninitialised outputs are",
        "compared by shape and dtype only, and only those listed under",
        "[Compared by shape and dtype only](#compared-by-shape-and-dtype-only); an op that eager",
        "shows to be random but is not listed fails. An op passes at a dtype when all its",
        "samples pass.",
        "Dynamo runs with `capture_dynamic_output_shape_ops` and `capture_scalar_outputs` on,",
        "so ops whose output size depends on data (`nonzero`, `unique`, `x[mask]`) and",
        "`.item()` reach the backend, which runs them in XLA (`torchtpu/lower/sized.py`).",
        "Expected failures, tolerance overrides and shape-only checks, each with its reason, are",
        "in `tests/conformance/expected.py`.",
        "",
        "## Totals",
        "",
        "| | ops | ops passing | % | expected failures | ops skipped | samples passed | "
        "samples failed | samples skipped | samples % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for column in columns:
        t = totals(table, column)
        name = "gradients (float32)" if column == GRAD else column
        lines.append(
            f"| {name} | {t['ops_tested']} | {t['ops_passed']} | {t['ops_pct']:.1f} | "
            f"{t['ops_xfail']} | {t['ops_skipped']} | {t['samples_passed']} | "
            f"{t['samples_failed']} | {t['samples_skipped']} | {t['samples_pct']:.1f} |"
        )
    lines += [
        "",
        "`ops` counts ops with at least one sample that ran at that dtype; `ops skipped` those",
        "whose samples could not run at all (OpInfo gives none, or eager PyTorch rejects them).",
        "",
        "## Per op",
        "",
        "Cells give samples passed / samples run; `FAIL` marks an unexpected failure, `xfail` one",
        "listed in `expected.py`; a blank cell means OpInfo does not list the dtype for the op.",
        "The note gives the reason of an expected failure, and says where values are compared",
        "by shape and dtype only.",
        "",
        "| op | " + " | ".join(columns) + " | note |",
        "| --- | " + " | ".join("---" for _ in columns) + " | --- |",
    ]
    for name, row in table.items():
        cells = [row[c].text() if c in row else "" for c in columns]
        notes = sorted({c.expected for c in row.values() if c.expected})
        if any(c.shape_only for c in row.values()):
            notes.append("shape and dtype only")
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {'; '.join(notes)} |")
    lines += _shape_only_section(table)
    lines += ["", "## Failures", "", "First failure of each op and dtype that did not pass.", ""]
    for name, row in table.items():
        for column, cell in row.items():
            if cell.failures:
                tag = " (expected)" if cell.expected else ""
                detail = cell.failures[0].replace("|", "\\|")[:300]
                lines.append(f"- `{name}` {column}{tag}, {cell.failed} failed: {detail}")
    return "\n".join(lines) + "\n"


def _shape_only_section(table) -> list[str]:
    lines = [
        "",
        "## Compared by shape and dtype only",
        "",
        "These ops' values are random or unspecified, so only the shape and dtype of their",
        "outputs (or gradients) are compared with eager PyTorch: `shape_only` entries in",
        "`tests/conformance/expected.py`. `random samples` means only the samples whose eager",
        "results change with the seed; the others are compared by value.",
        "",
        "| op | applies to | samples | reason |",
        "| --- | --- | --- | --- |",
    ]
    checks = {None: "all checks", False: "forward", True: "gradient"}
    for entry in expected.TABLE:
        if entry.kind != expected.SHAPE_ONLY or entry.op not in table:
            continue
        where = checks[entry.grad] + (f" at {', '.join(entry.dtypes)}" if entry.dtypes else "")
        samples = "random samples" if entry.random_samples_only else "all"
        lines.append(f"| `{entry.op}` | {where} | {samples} | {entry.reason} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", help="comma-separated op ids or names (default: all of op_db)")
    parser.add_argument(
        "--dtypes", help=f"comma-separated columns among {','.join(COLUMNS)} (default: all)"
    )
    parser.add_argument("--limit", type=int, help="at most this many samples per op and dtype")
    parser.add_argument("--out", help="report path (default docs/conformance.md for a full run)")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument(
        "--merge",
        help="raw results of an earlier run (--json): rerun only --ops and report them merged",
    )
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    ops = h.all_ops()
    if args.ops:
        wanted = set(args.ops.split(","))
        ops = [op for op in ops if h.op_id(op) in wanted or op.name in wanted]
    columns = args.dtypes.split(",") if args.dtypes else COLUMNS
    unknown = set(columns) - set(COLUMNS)
    if unknown:
        parser.error(f"unknown dtypes {sorted(unknown)}; choose from {COLUMNS}")

    start = time.perf_counter()
    table = sweep(ops, columns, args.limit)
    if args.merge:
        earlier = json.loads(Path(args.merge).read_text())
        merged = {op: {c: Cell(**cell) for c, cell in row.items()} for op, row in earlier.items()}
        merged.update(table)
        table = merged
    report = render(table, columns, argv, time.perf_counter() - start)
    full_run = not (args.ops or args.dtypes or args.limit)
    out = args.out or (str(ROOT / "docs" / "conformance.md") if full_run else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(report)
        print(f"wrote {out}", file=sys.stderr)
    else:
        print(report)
    if args.json:
        raw = {
            op: {c: dataclasses.asdict(cell) for c, cell in row.items()}
            for op, row in table.items()
        }
        Path(args.json).write_text(json.dumps(raw, indent=1))
    for column in columns:
        t = totals(table, column)
        print(
            f"{column:>10}: {t['ops_passed']}/{t['ops_tested']} ops ({t['ops_pct']:.1f}%), "
            f"{t['samples_passed']}/{t['samples_passed'] + t['samples_failed']} samples "
            f"({t['samples_pct']:.1f}%), {t['samples_skipped']} samples skipped",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
