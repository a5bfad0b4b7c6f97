"""Random op programs: a hypothesis strategy that builds them and a runner that checks them.

A program is one to three small input tensors and a list of steps, each one
line of PyTorch over a pool of named tensors (``t0``, ``t1``, ...): views,
in-place ops (on views too), broadcasting, reductions, indexing, type casts,
matmuls, joins, at float32, bfloat16, int64 and bool. Its ``repr`` is a
Python listing that runs as it stands.

``programs()`` builds each step by running it in eager PyTorch on the inputs
as they are drawn, so it knows every tensor's shape, dtype and values and
keeps only steps eager PyTorch accepts. It also tracks how exactly each value
is determined (``Level``): integer-valued float32 and bfloat16 values small
enough that every correctly rounded implementation computes them bit for bit
are compared exactly, like integers and bools; the rest within a tolerance.
Comparisons, argmax, casts to integers and the like are only applied to exact
values, so a difference of one ulp never flips a bool. Indices are in range.

``check(program)`` runs it in eager PyTorch on the CPU (the reference), in
device mode, and under ``torch.compile(backend="tpu")`` on CPU and on tpu
tensors, and compares every output and every input (which the program may
have mutated). Then it negates the inputs in place and compares the outputs
again, then the outputs one by one and compares everything: a value that is a
view of another must see the other's change, as in eager PyTorch.
"""

from __future__ import annotations

import dataclasses
import enum
import linecache
import math
import random
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from hypothesis import strategies as st

import torchtpu

FRONT_ENDS = ("device", "compile", "compile_tpu")

# Step kinds: how a step's result inherits exactness from what it reads.
EXACT = "exact"  # exact inputs give exact results (add, max, copies, casts)
SUM = "sum"  # exact while every partial sum is (sum, cumsum, index_add_)
DOT = "dot"  # exact while every partial sum of products is (matmul)
DISCRETE = "discrete"  # exact, and only applied to exact inputs (floor, argmax)
INEXACT = "inexact"  # rounded (mean, exp, division)

_F32_BOUND = 2**24  # integers below this are exact in float32 ...
_BF16_BOUND = 2**8  # ... and in bfloat16 (its 8-bit significand)
_INEXACT_LIMIT = 1e4  # larger inexact values carry errors no tolerance states well
_INT_LIMIT = 2**31  # int64 values stay far from overflow
_NAME = re.compile(r"\bt\d+\b")
_COPY_VIEW = re.compile(r"\.expand(_as)?\(|broadcast_to\(")
_UNFOLD = re.compile(r"\.unfold\(")
_LITERAL = re.compile(r"^\w+ = torch\.tensor\(.*device=dev\)$")


@dataclasses.dataclass(frozen=True)
class Known:
    """A construct some front ends are known to get wrong, and why."""

    front_ends: tuple[str, ...]
    why: str
    pattern: str | None = None  # a step whose line matches contains it (drawers note others)
    after_outputs_only: bool = False  # run, but skip the values after the outputs change


# ``check`` does not run a program that contains one of these on its front ends.
# Each names a bug or a documented limit: remove the entry once it is fixed.
DATA_DEPENDENT = "an op whose output size depends on data"
COPY_VIEW_WRITTEN = "an expand or unfold view of a tensor written after it was made"
WRITE_THROUGH_UNFOLD = "an in-place write through an unfold view"
WRITE_THROUGH_BOOL_EXPAND = "an in-place write to a bool tensor through an expand view"
BOOL_ADD_CPU_ALPHA = "add of a 0-dim CPU bool tensor with alpha"

EMPTY_MASK = "a bool mask index or masked_select on an empty tensor"
OUTPUT_ALIASES = "outputs that share memory, not an input's"
VIEW_ACROSS_BREAK = "a write, after a graph break, to a tensor with a view made before it"
KNOWN: dict[str, Known] = {
    DATA_DEPENDENT: Known(
        ("compile_tpu",),
        "torchtpu bug: under torch.compile on tpu tensors Dynamo breaks the graph at the op, "
        "then traces torchtpu's device kernel and JAX (SizedFailure, TypeError from jnp)",
        r"nonzero\(|argwhere\(|masked_select\(",  # and x[mask], which drawers note
    ),
    COPY_VIEW_WRITTEN: Known(
        ("device", "compile_tpu"),
        "documented limit (docs/device_mode.md, Known limits): on tpu, views made by expand "
        "and unfold are copies, so writes to the base or through the view are not shared",
    ),
    WRITE_THROUGH_UNFOLD: Known(
        ("compile", "compile_tpu"),
        "PyTorch bug (aot_eager and inductor alike): functionalizing a write through an "
        "unfold view zeroes the base's elements the view does not cover",
    ),
    WRITE_THROUGH_BOOL_EXPAND: Known(
        ("compile", "compile_tpu"),
        "PyTorch bug (aot_eager alike): functionalizing it subtracts bool tensors, "
        "which PyTorch refuses",
    ),
    EMPTY_MASK: Known(
        ("device",),
        "torchtpu bug: the padded lowering of aten.index (bool mask) and masked_select "
        "fails with a gather 'slice size out of range' (SizedFailure) when the input is empty",
    ),
    BOOL_ADD_CPU_ALPHA: Known(
        ("device",),
        "torchtpu bug: torch.add(bool_tensor, torch.tensor(True), alpha=2) on tpu raises "
        "'Tensor with dtype torch.int64 is not the expected dtype of torch.bool'",
        r"add_?\((\w+, )?torch\.tensor\((True|False)\), alpha=",
    ),
    OUTPUT_ALIASES: Known(
        ("compile", "compile_tpu"),
        "torchtpu bug (aot_eager gets it right): outputs of a graph compiled with "
        "backend='tpu' that are views of another output are copies (on tpu tensors also "
        "an output returned twice, as x.to(x.dtype) does), so a write to one is not seen "
        "in the other",
        after_outputs_only=True,
    ),
    VIEW_ACROSS_BREAK: Known(
        ("compile", "compile_tpu"),
        "the same torchtpu bug, seen inside the program: the view, an output of the graph "
        "before the break, does not see the write made by the graph after it",
    ),
}


class Level(enum.IntEnum):
    """How exactly a value is determined; compared at the looser of a tensor's reads."""

    EXACT = 0  # bit for bit in any correct implementation
    FLOAT32 = 1  # float32 rounding: rtol 1e-5
    BFLOAT16 = 2  # bfloat16 rounding: rtol 2e-2

    def tolerance(self, scale: float) -> tuple[float, float]:
        """``(rtol, atol)`` for a value whose inputs reached magnitude ``scale``."""
        eps = (0.0, 1e-5, 2e-2)[self]
        return eps, eps * max(1.0, scale)


# --- programs ------------------------------------------------------------------------

_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.int64: "int64",
    torch.bool: "bool",
    torch.bfloat16: "bfloat16",
}

# Input kinds: dtype, element, level. Exact kinds hold small integers.
_INPUT_KINDS: dict[str, tuple[torch.dtype, Callable[[_Ctx], Any], Level]] = {
    "float32": (torch.float32, lambda c: float(c.int(-4, 4)), Level.EXACT),
    "int64": (torch.int64, lambda c: c.int(-5, 5), Level.EXACT),
    "bool": (torch.bool, lambda c: c.flag(), Level.EXACT),
    "float32 real": (torch.float32, lambda c: c.int(-200, 200) / 100, Level.FLOAT32),
    "bfloat16": (torch.bfloat16, lambda c: float(c.int(-4, 4)), Level.EXACT),
    "bfloat16 real": (torch.bfloat16, lambda c: c.int(-200, 200) / 100, Level.BFLOAT16),
}
# Sizes shrink towards 2; one in ten is empty.
_SIZES = (2, 3, 1, 4, 2, 3, 1, 4, 2, 0)


def _nested(values: Sequence[Any], shape: tuple[int, ...]) -> Any:
    if not shape:
        return values[0]
    step = len(values) // shape[0]
    return [_nested(values[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


@dataclasses.dataclass(frozen=True)
class Input:
    """One input tensor, by value."""

    name: str
    kind: str
    shape: tuple[int, ...]
    values: tuple[Any, ...]

    @property
    def dtype(self) -> torch.dtype:
        return _INPUT_KINDS[self.kind][0]

    @property
    def level(self) -> Level:
        return _INPUT_KINDS[self.kind][2]

    def tensor(self) -> torch.Tensor:
        return torch.tensor(list(self.values), dtype=self.dtype).reshape(self.shape)

    def literal(self) -> str:
        dtype = "" if self.dtype != torch.bfloat16 else ", dtype=torch.bfloat16"
        if not self.values:
            return f"torch.zeros({self.shape}, dtype=torch.{_DTYPE_NAMES[self.dtype]})"
        return f"torch.tensor({_nested(self.values, self.shape)!r}{dtype})"


@dataclasses.dataclass(frozen=True)
class Program:
    """Inputs, one line of PyTorch per step, the names returned, and how exact each is.

    ``levels`` maps each input and output name to its ``Level`` and the largest
    magnitude among the values it was computed from (the tolerance's scale);
    ``flipped`` names the inputs and outputs ``run`` negates in place after the call;
    ``notes`` names the constructs in it that ``KNOWN`` lists.
    """

    inputs: tuple[Input, ...]
    steps: tuple[Step, ...]
    outputs: tuple[str, ...]
    levels: dict[str, tuple[Level, float]]
    flipped: tuple[str, ...] = ()
    notes: frozenset[str] = frozenset()

    def source(self) -> str:
        args = ", ".join(i.name for i in self.inputs)
        body = [f"    dev = {self.inputs[0].name}.device"] + [f"    {s.line}" for s in self.steps]
        returned = "".join(f"{o}, " for o in self.outputs).rstrip(" ")
        return "\n".join([f"def program({args}):", *body, f"    return ({returned})"]) + "\n"

    def function(self, sync: Callable[[], None]) -> Callable[..., tuple]:
        """The program as a Python function; ``sync()`` lines call ``sync``."""
        source = self.source()
        filename = f"<fuzz program {abs(hash(source)):x}>"
        # Registered so tracebacks, Dynamo and device mode's compile sites show the lines.
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        namespace: dict[str, Any] = {"torch": torch, "sync": sync}
        exec(compile(source, filename, "exec"), namespace)
        return namespace["program"]

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # hypothesis prints the falsifying example with this

    def __repr__(self) -> str:
        by_level: dict[Level, list[str]] = {}
        for name, (level, _) in self.levels.items():
            by_level.setdefault(level, []).append(name)
        compared = "; ".join(
            f"{level.name.lower()}: {', '.join(names)}" for level, names in sorted(by_level.items())
        )
        lines = ["", "import torch", "import torchtpu", "sync = torchtpu.sync", ""]
        lines += [self.source()]
        lines += [f"{i.name} = {i.literal()}" for i in self.inputs]
        lines += [f"# compared {compared}"]
        lines += [f"# contains: {', '.join(sorted(self.notes))}"] if self.notes else []
        lines += [""]
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Step:
    """One line: binds ``out`` to a new tensor, or writes ``target`` in place."""

    line: str
    kind: str = EXACT
    out: str | None = None
    target: str | None = None
    notes: frozenset[str] = frozenset()  # constructs ``KNOWN`` may exclude


# --- building: run each step in eager PyTorch as it is drawn -------------------------


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _is_float(t: torch.Tensor) -> bool:
    return t.dtype.is_floating_point


def _maxabs(t: torch.Tensor) -> float:
    return float(t.double().abs().max()) if t.numel() else 0.0


def _abssum(t: torch.Tensor) -> float:
    return float(t.double().abs().sum())


def _no_sync() -> None:
    pass


def _matching(line: str) -> set[str]:
    return {name for name, k in KNOWN.items() if k.pattern and re.search(k.pattern, line)}


class _Builder:
    """The program so far, run in eager PyTorch: the pool's values and their levels."""

    def __init__(self, inputs: tuple[Input, ...]) -> None:
        self.inputs = inputs
        self.steps: list[Step] = []
        self._code: dict[str, Any] = {}
        self._reset()

    def _reset(self) -> None:
        self.env: dict[str, Any] = {"torch": torch, "sync": _no_sync, "dev": torch.device("cpu")}
        self.names: list[str] = []
        self.meta: dict[int, tuple[Level, float]] = {}  # storage -> level, scale
        self.copy_views: dict[str, tuple[int, bool]] = {}  # name -> storage, made by unfold
        self.notes: set[str] = set()
        self.before_break: list[str] = []  # the names when Dynamo last broke the graph
        self.literals: set[int] = set()  # storages made by torch.tensor(data, device=dev)
        for inp in self.inputs:
            t = inp.tensor()
            self.env[inp.name] = t
            self.names.append(inp.name)
            self.meta[_storage(t)] = (inp.level, _maxabs(t))
        for step in self.steps:
            ok = self._apply(step)
            assert ok, f"replaying {step.line!r} failed"

    def level(self, name: str) -> Level:
        t = self.env[name]
        if not _is_float(t):
            return Level.EXACT
        return self.meta.get(_storage(t), (Level.FLOAT32, 0.0))[0]

    def next_name(self) -> str:
        return f"t{len(self.names)}"

    def add(self, step: Step) -> bool:
        """Keep ``step`` if eager PyTorch runs it and its values stay well-conditioned."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self._apply(step):
                self.steps.append(step)
                return True
            self._reset()  # the failed step may have written to the pool
            return False

    def _apply(self, step: Step) -> bool:
        reads = [n for n in dict.fromkeys(_NAME.findall(step.line)) if n != step.out]
        code = self._code.get(step.line)
        if code is None:
            code = self._code[step.line] = compile(step.line, "<step>", "exec")
        try:
            exec(code, self.env)
        except Exception:
            return False
        if step.out is None and step.target is None:
            return True  # sync()
        w = self.env[step.out or step.target]
        if not isinstance(w, torch.Tensor) or w.layout != torch.strided:
            return False
        key = _storage(w)
        if step.out is not None:
            if key in self.meta:  # a view of (or the same tensor as) a pool tensor
                self._note_view(step, key, reads)
                self.names.append(step.out)
                return True
        level, scale = self._judge(step, w, reads)
        if level is None:
            return False
        notes = step.notes | _matching(step.line)
        self.notes |= notes
        if DATA_DEPENDENT in notes:
            self.before_break = list(self.names)
        if step.target is not None:
            self._note_write(step, key)
        if step.out is not None:
            self.names.append(step.out)
            self.meta[key] = (level, scale)
            if _LITERAL.search(step.line):
                self.literals.add(key)
        else:
            old_level, old_scale = self.meta.get(key, (level, scale))
            self.meta[key] = (max(old_level, level), max(old_scale, scale))
        return True

    def _note_view(self, step: Step, key: int, reads: list[str]) -> None:
        notes = step.notes | _matching(step.line)
        self.notes |= notes
        if DATA_DEPENDENT in notes:
            self.before_break = list(self.names)
        unfold = bool(_UNFOLD.search(step.line))
        if unfold or _COPY_VIEW.search(step.line):
            self.copy_views[step.out] = (key, unfold)
        for r in reads:
            if r in self.copy_views:
                self.copy_views[step.out] = (key, self.copy_views[r][1] or unfold)

    def _note_write(self, step: Step, key: int) -> None:
        through = self.copy_views.get(step.target)
        if _UNFOLD.search(step.line) or (through is not None and through[1]):
            self.notes.add(WRITE_THROUGH_UNFOLD)
        expand = _COPY_VIEW.search(step.line) or (through is not None and not through[1])
        if expand and self.env[step.target].dtype == torch.bool:
            self.notes.add(WRITE_THROUGH_BOOL_EXPAND)
        if (
            _COPY_VIEW.search(step.line)
            or _UNFOLD.search(step.line)
            or any(k == key for k, _ in self.copy_views.values())
        ):
            self.notes.add(COPY_VIEW_WRITTEN)
        inputs = {_storage(self.env[i.name]) for i in self.inputs}
        sharing = [n for n in self.before_break if _storage(self.env[n]) == key]
        if key not in inputs and len(sharing) >= 2:
            self.notes.add(VIEW_ACROSS_BREAK)

    def _judge(self, step: Step, w: torch.Tensor, reads: list[str]) -> tuple[Level | None, float]:
        """The level and scale of what ``step`` wrote to ``w``; ``None`` to reject it."""
        tensors = [self.env[r] for r in reads if isinstance(self.env.get(r), torch.Tensor)]
        levels = [self.level(r) for r in reads if isinstance(self.env.get(r), torch.Tensor)]
        scale = max([_maxabs(w)] + [self.meta.get(_storage(t), (0, 0.0))[1] for t in tensors])
        worst = max(levels, default=Level.EXACT)
        if not _is_float(w):
            # An integer or bool computed from rounded floats could differ by a whole unit.
            if worst > Level.EXACT or _maxabs(w) >= _INT_LIMIT:
                return None, 0.0
            return Level.EXACT, scale
        if w.numel() and not bool(torch.isfinite(w).all()):
            return None, 0.0
        if step.kind == DISCRETE and worst > Level.EXACT:
            return None, 0.0
        bound = _BF16_BOUND if w.dtype == torch.bfloat16 else _F32_BOUND
        exact = (
            step.kind != INEXACT
            and worst == Level.EXACT
            and torch.equal(w, w.round())
            and _maxabs(w) < bound
        )
        if exact and step.kind == SUM:
            exact = sum(_abssum(t) for t in tensors) < bound
        if exact and step.kind == DOT:
            exact = math.prod(_abssum(t) for t in tensors) < bound
        if exact:
            return Level.EXACT, scale
        if _maxabs(w) > _INEXACT_LIMIT:
            return None, 0.0
        rounded = w.dtype == torch.bfloat16 or worst == Level.BFLOAT16
        return (Level.BFLOAT16 if rounded else Level.FLOAT32), scale

    def program(self) -> Program:
        outputs = tuple(s.out for s in self.steps if s.out is not None)
        # run() negates these afterwards, to see which values share memory; not those
        # with an expand or unfold view (COPY_VIEW_WRITTEN), nor ones eager would refuse.
        shared = {k for k, _ in self.copy_views.values()}
        flipped = tuple(
            name
            for name in [i.name for i in self.inputs] + list(outputs)
            if _storage(self.env[name]) not in shared and not _overlaps(self.env[name])
        )
        inputs = {_storage(self.env[i.name]) for i in self.inputs}
        made = [_storage(self.env[o]) for o in outputs if self.env[o].numel()]
        if any(made.count(k) > 1 for k in made if k not in inputs):
            self.notes.add(OUTPUT_ALIASES)
        levels = {}
        for name in [i.name for i in self.inputs] + list(outputs):
            t = self.env[name]
            levels[name] = self.meta.get(_storage(t), (Level.FLOAT32, _maxabs(t)))
            if not _is_float(t):
                levels[name] = (Level.EXACT, 0.0)
        notes = frozenset(self.notes)
        return Program(self.inputs, tuple(self.steps), outputs, levels, flipped, notes)


# --- drawing steps ---------------------------------------------------------------------


def _any(t: torch.Tensor) -> bool:
    return True


def _numeric(t: torch.Tensor) -> bool:
    return t.dtype != torch.bool


def _floating(t: torch.Tensor) -> bool:
    return _is_float(t)


def _args(shape: Sequence[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


class _Ctx:
    """What a step's drawer sees: the choices (hypothesis's ``draw``, or a seeded
    ``random.Random``) and the pool's values."""

    def __init__(self, draw: Callable | None = None, rng: random.Random | None = None) -> None:
        self._draw = draw
        self._rng = rng
        self.b: _Builder = None  # type: ignore[assignment]  # set once the inputs are drawn

    # choices: under hypothesis each shrinks towards its first option (or ``lo``)
    def int(self, lo: int, hi: int) -> int:
        if self._rng is not None:
            return self._rng.randint(lo, hi)
        return self._draw(st.integers(lo, hi))

    def flag(self) -> bool:
        return self.choice([False, True])

    def choice(self, options: Sequence[Any]) -> Any:
        if self._rng is not None:
            return self._rng.choice(options)
        return self._draw(st.sampled_from(options))

    def permutation(self, items: Sequence[Any]) -> list:
        if self._rng is not None:
            return self._rng.sample(list(items), len(items))
        return list(self._draw(st.permutations(items)))

    def dim(self, t: torch.Tensor, extra: int = 0) -> int:
        n = max(t.dim(), 1) + extra
        return self.int(-n, n - 1)

    def two_dims(self, t: torch.Tensor) -> tuple[int, int] | None:
        if t.dim() < 2:
            return None
        d1, d2 = self.permutation(range(t.dim()))[:2]
        return d1 - t.dim() * self.flag(), d2

    # the pool
    def value(self, name: str) -> Any:
        return self.b.env[name]

    def pick(self, pred: Callable[[torch.Tensor], bool] = _any, exact: bool = False) -> str | None:
        names = [
            n
            for n in self.b.names
            if pred(self.value(n)) and (not exact or self.b.level(n) == Level.EXACT)
        ]
        return self.choice(names) if names else None

    def partner(
        self,
        shape: torch.Size,
        pred: Callable[[torch.Tensor], bool] = _any,
        into: bool = False,
        exact: bool = False,
    ) -> str | None:
        """A pool tensor broadcastable with ``shape`` (``into``: to exactly ``shape``)."""

        def fits(t: torch.Tensor) -> bool:
            try:
                out = torch.broadcast_shapes(shape, t.shape)
            except RuntimeError:
                return False
            return pred(t) and (not into or out == shape)

        return self.pick(fits, exact)

    def operand(
        self,
        shape: torch.Size,
        pred: Callable[[torch.Tensor], bool] = _any,
        into: bool = False,
        exact: bool = False,
    ) -> str | None:
        """A tensor from the pool, a Python scalar or a 0-dim CPU tensor."""
        form = self.choice(["tensor", "scalar", "cpu scalar"])
        if form == "tensor":
            return self.partner(shape, pred, into, exact)
        s = self.scalar()
        return s if form == "scalar" else f"torch.tensor({s})"

    def scalar(self, kind: str | None = None) -> str:
        kind = kind or self.choice(["int", "float", "bool"])
        if kind == "int":
            return str(self.int(-3, 3))
        if kind == "float":
            return repr(self.choice([0.5, 2.0, -1.5, 0.25, -3.0]))
        return repr(self.flag())

    def scalar_for(self, t: torch.Tensor) -> str:
        return self.scalar("float" if _is_float(t) else "int" if _numeric(t) else "bool")

    # index literals
    def indices(self, n: int, count: int, unique: bool = False, negative: bool = True) -> list:
        if n == 0:
            return []
        if unique:
            values = self.permutation(range(n))[: min(count, n)]
        else:
            values = [self.int(0, n - 1) for _ in range(count)]
        if negative:
            values = [v - n if self.flag() else v for v in values]
        return values

    def index_tensor(self, values: Any, cpu: bool = False) -> str:
        device = "" if cpu else ", device=dev"
        if values == [] or (isinstance(values, list) and values and values[0] == []):
            return f"torch.tensor({values!r}, dtype=torch.int64{device})"
        return f"torch.tensor({values!r}{device})"

    def index_shape(self, n: int, unique: bool = False) -> Any:
        """Index values for a dim of size ``n``: 1-D, or 2-D when repeats are allowed."""
        if not unique and n and self.flag():
            rows = self.int(1, 2)
            return [self.indices(n, 2) for _ in range(rows)]
        return self.indices(n, self.int(0 if unique else 1, 4), unique)

    # steps
    def new(self, expr: str | None, kind: str = EXACT, notes: Sequence[str] = ()) -> Step | None:
        if expr is None:
            return None
        out = self.b.next_name()
        return Step(f"{out} = {expr}", kind, out=out, notes=frozenset(notes))

    def write(self, stmt: str | None, target: str, kind: str = EXACT) -> Step | None:
        return None if stmt is None else Step(stmt, kind, target=target)

    def eval(self, expr: str) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return eval(expr, self.b.env)
        except Exception:
            return None


def _factor_shape(c: _Ctx, numel: int) -> tuple[int, ...]:
    if numel == 0:
        return c.choice([(0,), (2, 0), (0, 1, 3)])
    if numel == 1 and c.flag():
        return ()
    factors, n, p = [], numel, 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    ndim = c.int(1, 3)
    shape = [1] * ndim
    for f in c.permutation(factors):
        shape[c.int(0, ndim - 1)] *= f
    if c.flag():
        shape[c.int(0, ndim - 1)] = -1
    return tuple(shape)


def _subscript(c: _Ctx, t: torch.Tensor) -> str:
    """A basic subscript: ints, slices with steps and bounds past the ends, None, ...."""
    if t.dim() == 0:
        return c.choice(["...", "None"])
    parts = []
    for size in t.shape[: c.int(1, t.dim())]:
        form = c.choice(["slice", "int", ":", "None"])
        if form == "None":
            parts.append("None")
            form = c.choice(["slice", ":"])
        if form == "int" and size:
            parts.append(str(c.int(-size, size - 1)))
        elif form == "slice":
            start = c.choice([None, c.int(-size - 1, size + 1)])
            stop = c.choice([None, c.int(-size - 1, size + 1)])
            step = c.choice([None, 2, 3, 1])
            text = f"{'' if start is None else start}:{'' if stop is None else stop}"
            parts.append(text + ("" if step is None else f":{step}"))
        else:
            parts.append(":")
    if c.int(0, 4) == 0:
        parts.insert(c.int(0, len(parts)), "...")
    return ", ".join(parts)


def _advanced(c: _Ctx, t: torch.Tensor, unique: bool = False) -> str | None:
    """An advanced subscript: index tensors (in range), bool masks, mixed with slices."""
    if t.dim() == 0:
        return None
    cpu = c.int(0, 3) == 0  # CPU indices on tpu tensors, as CUDA allows
    form = c.choice(["first", "second", "last", "pair", "mask", "mask var"])
    if form == "mask var":
        mask = c.pick(
            lambda m: (
                m.dtype == torch.bool and 0 < m.dim() <= t.dim() and m.shape == t.shape[: m.dim()]
            )
        )
        return mask
    if form == "mask":
        k = c.int(1, t.dim())
        values = [c.flag() for _ in range(math.prod(t.shape[:k]))]
        literal = _nested(values, tuple(t.shape[:k])) if values else []
        device = "" if cpu else ", device=dev"
        return f"torch.tensor({literal!r}, dtype=torch.bool{device})"
    if form == "pair" and t.dim() >= 2 and not unique:
        k = c.int(1, 3)
        i0 = c.index_tensor(c.indices(t.shape[0], k), cpu)
        i1 = c.index_tensor(c.indices(t.shape[1], c.choice([k, 1])), cpu)
        return f"{i0}, {i1}"
    d = {"first": 0, "second": 1, "last": t.dim() - 1}.get(form, 0)
    if d >= t.dim():
        d = 0
    index = c.index_tensor(c.index_shape(t.shape[d], unique), cpu)
    if d == 0:
        return index + (c.choice(["", ", 1:", ", ..., 0"]) if t.dim() >= 2 else "")
    return ("..., " if form == "last" else ":, " * d) + index


# Views of a tensor ``a`` with value ``t``: each returns an expression or None.
def _v_reshape(c, a, t):
    return f"{a}.{c.choice(['view', 'reshape'])}{_args(_factor_shape(c, t.numel()))}"


def _v_transpose(c, a, t):
    return f"{a}.transpose({c.dim(t)}, {c.dim(t)})"


def _v_permute(c, a, t):
    if t.dim() == 0:
        return None
    return f"{a}.permute{_args(c.permutation(range(t.dim())))}"


def _v_t(c, a, t):
    if t.dim() > 2:
        return f"{a}.mT"
    return f"{a}.t()" if c.flag() or t.dim() < 2 else f"{a}.T"


def _v_movedim(c, a, t):
    return f"{a}.movedim({c.dim(t)}, {c.dim(t)})"


def _v_subscript(c, a, t):
    return f"{a}[{_subscript(c, t)}]"


def _v_narrow(c, a, t):
    if t.dim() == 0:
        return None
    d = c.dim(t)
    n = t.shape[d]
    start = c.int(0, n)
    length = c.int(0, n - start)
    if start < n and c.flag():
        start -= n
    return f"{a}.narrow({d}, {start}, {length})"


def _v_select(c, a, t):
    if t.dim() == 0:
        return None
    d = c.dim(t)
    n = t.shape[d]
    if n == 0:
        return None
    return f"{a}.select({d}, {c.int(-n, n - 1)})"


def _v_unsqueeze(c, a, t):
    return f"{a}.unsqueeze({c.int(-t.dim() - 1, t.dim())})"


def _v_squeeze(c, a, t):
    form = c.choice(["all", "dim", "dims"])
    if form == "all":
        return f"{a}.squeeze()"
    if form == "dims" and t.dim() >= 2:
        d1, d2 = c.two_dims(t)
        return f"{a}.squeeze(({d1}, {d2}))"
    return f"{a}.squeeze({c.dim(t)})"


def _v_expand(c, a, t):
    form = c.choice(["expand", "broadcast_to", "expand_as"])
    if form == "expand_as":
        other = c.pick(lambda o: o.dim() >= t.dim() and _broadcasts_to(t.shape, o.shape))
        return None if other is None else f"{a}.expand_as({other})"
    shape = [c.int(1, 3) for _ in range(c.int(0, 1))]
    for size in t.shape:
        shape.append(c.int(1, 3) if size == 1 else c.choice([-1, size]))
    if form == "broadcast_to":
        return f"torch.broadcast_to({a}, {_args(shape)})"
    return f"{a}.expand{_args(shape)}"


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def _v_diagonal(c, a, t):
    dims = c.two_dims(t)
    if dims is None:
        return None
    offset = c.int(-2, 2)
    if c.flag():
        return f"{a}.diagonal({offset}, {dims[0]}, {dims[1]})"
    return f"torch.diagonal({a}, offset={offset})" if offset else f"{a}.diagonal()"


def _v_flatten(c, a, t):
    if c.flag() or t.dim() < 2:
        return f"{a}.flatten()"
    s = c.int(0, t.dim() - 1)
    return f"{a}.flatten({s}, {c.int(s, t.dim() - 1)})"


def _v_unflatten(c, a, t):
    if t.dim() == 0:
        return None
    d = c.dim(t)
    sizes = _factor_shape(c, t.shape[d])
    return None if not sizes else f"{a}.unflatten({d}, {_args(sizes)})"


def _v_unfold(c, a, t):
    if t.dim() == 0:
        return None
    d = c.dim(t)
    n = t.shape[d]
    if n == 0:
        return None
    return f"{a}.unfold({d}, {c.int(1, n)}, {c.int(1, 2)})"


def _v_split(c, a, t):
    if t.dim() == 0:
        return None
    d = c.dim(t)
    n = t.shape[d]
    form = c.choice(["split", "chunk", "unbind", "split sizes"])
    if form == "unbind":
        if n == 0:
            return None
        return f"{a}.unbind({d})[{c.int(-n, n - 1)}]"
    if form == "split sizes":
        first = c.int(0, n)
        call = f"split([{first}, {n - first}], {d})"
    else:
        call = f"{form}({c.int(1, 3)}, {d})"
    parts = c.eval(f"{a}.{call}")
    if not parts:
        return None
    return f"{a}.{call}[{c.int(-len(parts), len(parts) - 1)}]"


def _v_alias(c, a, t):
    return c.choice([f"{a}.detach()", f"{a}[...]", f"{a}.view_as({a})", f"{a}.contiguous()"])


VIEWS = {
    "reshape": _v_reshape,
    "transpose": _v_transpose,
    "permute": _v_permute,
    "t": _v_t,
    "movedim": _v_movedim,
    "subscript": _v_subscript,
    "narrow": _v_narrow,
    "select": _v_select,
    "unsqueeze": _v_unsqueeze,
    "squeeze": _v_squeeze,
    "expand": _v_expand,
    "diagonal": _v_diagonal,
    "flatten": _v_flatten,
    "unflatten": _v_unflatten,
    "unfold": _v_unfold,
    "split": _v_split,
    "alias": _v_alias,
}


# In-place writes to ``x`` (a pool name or a view expression of one) with value ``t``:
# each returns ``(statement, kind)`` or None. ``assignable``: ``x`` may be assigned to.
def _i_arith(c, x, t, assignable):
    op = c.choice(["add", "sub", "mul"])
    b = c.operand(t.shape, into=True)
    if b is None:
        return None
    form = c.choice(["method", "alpha", "augmented"])
    if form == "alpha" and op != "mul":
        return f"{x}.{op}_({b}, alpha={c.choice([2, -1])})", EXACT
    if form == "augmented" and assignable:
        return f"{x} {dict(add='+', sub='-', mul='*')[op]}= {b}", EXACT
    return f"{x}.{op}_({b})", EXACT


def _i_div(c, x, t, assignable):
    if not _is_float(t):
        return None
    b = c.partner(t.shape, _numeric, into=True)
    if b is None or c.flag():
        return f"{x}.div_({c.choice([2, 4, -0.5])})", INEXACT
    return f"{x}.div_({b}.abs() + 1)", INEXACT


def _i_clamp(c, x, t, assignable):
    lo = c.int(-3, 2)
    hi = c.int(lo, 3)
    forms = [f"{x}.clamp_({lo}, {hi})", f"{x}.clamp_(min={lo})", f"{x}.clamp_max_({hi})"]
    return c.choice(forms), EXACT


def _i_fill(c, x, t, assignable):
    if c.int(0, 3) == 0:
        return f"{x}.zero_()", EXACT
    return f"{x}.fill_({c.scalar_for(t)})", EXACT


def _i_copy(c, x, t, assignable):
    b = c.partner(t.shape, into=True)
    return None if b is None else (f"{x}.copy_({b})", EXACT)


def _i_unary(c, x, t, assignable):
    if _is_float(t) and c.flag():
        return f"{x}.{c.choice(['sigmoid_', 'tanh_'])}()", INEXACT
    return f"{x}.{c.choice(['neg_', 'abs_', 'relu_', 'square_'])}()", EXACT


def _i_masked_fill(c, x, t, assignable):
    m = c.partner(t.shape, lambda m: m.dtype == torch.bool, into=True)
    if m is None:
        return None
    value = c.scalar_for(t)
    if c.int(0, 2) == 0:
        value = f"torch.tensor({value})"
    return f"{x}.masked_fill_({m}, {value})", EXACT


def _source(c, shape: Sequence[int], t: torch.Tensor) -> str:
    """A tensor of ``shape`` and ``t``'s dtype: from the pool if one fits, else made."""
    fits = c.pick(lambda s: tuple(s.shape) == tuple(shape) and s.dtype == t.dtype)
    if fits is not None and c.flag():
        return fits
    dtype = f"dtype=torch.{_DTYPE_NAMES[t.dtype]}, device=dev"
    if c.flag() or t.dtype == torch.bool:
        return f"torch.full({_args(shape)}, {c.scalar_for(t)}, {dtype})"
    return f"torch.arange({math.prod(shape)}, {dtype}).reshape{_args(shape)}"


def _i_index(c, x, t, assignable):
    """index_add_, index_fill_, index_copy_ along a dim, with an index literal."""
    if t.dim() == 0:
        return None
    d = c.dim(t)
    n = t.shape[d]
    form = c.choice(["index_add_", "index_fill_", "index_copy_"])
    values = c.indices(n, c.int(0, 4), unique=form == "index_copy_", negative=False)
    index = c.index_tensor(values)
    if form == "index_fill_":
        return f"{x}.index_fill_({d}, {index}, {c.scalar_for(t)})", EXACT
    shape = list(t.shape)
    shape[d] = len(values)
    src = _source(c, shape, t)
    if form == "index_add_":
        alpha = c.choice(["", ", alpha=2"])
        return f"{x}.index_add_({d}, {index}, {src}{alpha})", SUM
    return f"{x}.index_copy_({d}, {index}, {src})", EXACT


def _i_index_put(c, x, t, assignable):
    if t.dim() == 0:
        return None
    accumulate = c.flag()
    values = c.indices(t.shape[0], c.int(0, 4), unique=not accumulate)
    index = c.index_tensor(values)
    value = f"torch.tensor({c.scalar_for(t)}, device=dev)"
    if t.dtype != torch.bool or not accumulate:
        fits = c.partner(t[values].shape, lambda v: v.dtype == t.dtype, into=True)
        value = fits if fits is not None and c.flag() else value
    kind = SUM if accumulate else EXACT
    return f"{x}.index_put_(({index},), {value}, accumulate={accumulate})", kind


def _i_setitem(c, x, t, assignable):
    sub = _subscript(c, t) if c.flag() else _advanced(c, t, unique=True)
    if sub is None:
        return None
    selected = c.eval(f"({x})[{sub}]")
    if selected is None:
        return None
    value = c.operand(selected.shape, into=True)
    if value is None:
        return None
    return f"{x}[{sub}] = {value}", EXACT


def _i_scatter(c, x, t, assignable):
    """scatter_add_, or scatter_ of one value (repeated indices then write the same)."""
    if t.dim() == 0:
        return None
    d = c.dim(t) % t.dim()
    if t.shape[d] == 0:
        return None
    shape = [c.int(0, 2) if k == d else c.int(0, n) for k, n in enumerate(t.shape)]
    values = [c.int(0, t.shape[d] - 1) for _ in range(math.prod(shape))]
    index = c.index_tensor(_nested(values, tuple(shape)) if values else [])
    if not values:
        index = f"torch.zeros({_args(shape)}, dtype=torch.int64, device=dev)"
    if c.flag():
        return f"{x}.scatter_({d}, {index}, {c.scalar_for(t)})", EXACT
    return f"{x}.scatter_add_({d}, {index}, {_source(c, shape, t)})", SUM


def _i_out(c, x, t, assignable):
    # An out= of another shape is resized (with a warning) in eager PyTorch; tpu tensors
    # refuse that by design, so the result has the out's shape.
    a = c.pick(lambda a: a.shape == t.shape)
    if a is None:
        return None
    b = c.operand(t.shape, into=True)
    if b is None:
        return None
    fn = c.choice(["add", "mul", "maximum", "sub"])
    return f"torch.{fn}({a}, {b}, out={x})", EXACT


INPLACE = {
    "arith": _i_arith,
    "div": _i_div,
    "clamp": _i_clamp,
    "fill": _i_fill,
    "copy": _i_copy,
    "unary": _i_unary,
    "masked_fill": _i_masked_fill,
    "index": _i_index,
    "index_put": _i_index_put,
    "setitem": _i_setitem,
    "scatter": _i_scatter,
    "out": _i_out,
}


# Elementwise ops: template, kind, operand filter, whether float operands must be exact.
UNARY = [
    ("-{a}", EXACT, _numeric, False),
    ("{a}.abs()", EXACT, _numeric, False),
    ("torch.exp({a}.clamp(-3, 3))", INEXACT, _floating, False),
    ("torch.sigmoid({a})", INEXACT, _numeric, False),
    ("torch.tanh({a})", INEXACT, _numeric, False),
    ("({a}.abs() + 1).sqrt()", INEXACT, _numeric, False),
    ("{a}.clamp({lo}, {hi})", EXACT, _numeric, False),
    ("{a}.clamp(min={lo})", EXACT, _numeric, False),
    ("torch.relu({a})", EXACT, _numeric, False),
    ("{a} ** 2", EXACT, _numeric, False),
    ("3 - {a}", EXACT, _numeric, False),
    ("0.5 * {a}", EXACT, _any, False),
    ("{a} + True", EXACT, _any, False),
    ("torch.logical_not({a})", EXACT, _any, True),
    ("~{a}", EXACT, lambda t: not _is_float(t), False),
    ("{a}.floor()", DISCRETE, _floating, True),
    ("{a}.round()", DISCRETE, _floating, True),
    ("torch.sign({a})", DISCRETE, _numeric, True),
    ("{a} > {lo}", EXACT, _numeric, True),
    ("{a} == {lo}", EXACT, _any, True),
    ("{a}.clone()", EXACT, _any, False),
]
BINARY = [
    ("{a} + {b}", EXACT, _any, False),
    ("{a} - {b}", EXACT, _numeric, False),
    ("{a} * {b}", EXACT, _any, False),
    ("torch.add({a}, {b}, alpha=2)", EXACT, _numeric, False),
    ("torch.maximum({a}, {b})", EXACT, _any, False),
    ("torch.minimum({a}, {b})", EXACT, _any, False),
    ("{a} / ({b}.abs() + 1)", INEXACT, _numeric, False),
    ("torch.div({a}, {b}.abs() + 1, rounding_mode='floor')", DISCRETE, _numeric, True),
    ("torch.remainder({a}, {b}.abs() + 1)", DISCRETE, _numeric, True),
    ("{a} // 3", DISCRETE, _numeric, True),
    ("{a} % 3", DISCRETE, _numeric, True),
    ("{a} == {b}", EXACT, _any, True),
    ("{a} != {b}", EXACT, _any, True),
    ("{a} < {b}", EXACT, _numeric, True),
    ("{a} >= {b}", EXACT, _numeric, True),
    ("torch.logical_and({a}, {b})", EXACT, _any, True),
    ("torch.logical_xor({a}, {b})", EXACT, _any, True),
    ("{a} & {b}", EXACT, lambda t: not _is_float(t), False),
    ("{a} | {b}", EXACT, lambda t: not _is_float(t), False),
    ("torch.clamp({a}, min={b})", EXACT, _numeric, False),
]
REDUCTIONS = [
    # template, kind, operand filter, exact operand, dims: "many" / "one" / "required"
    ("{a}.sum({dims})", SUM, _any, False, "many"),
    ("{a}.mean({dims})", INEXACT, _floating, False, "many"),
    ("{a}.amax({dims})", EXACT, _any, False, "many"),
    ("{a}.amin({dims})", EXACT, _any, False, "many"),
    ("{a}.max({dims}).values", EXACT, _any, False, "required"),
    ("{a}.argmax({dims})", DISCRETE, _numeric, True, "one"),
    ("{a}.argmin({dims})", DISCRETE, _numeric, True, "one"),
    ("{a}.max({dims}).indices", DISCRETE, _numeric, True, "required"),
    ("{a}.any({dims})", EXACT, _any, True, "one"),
    ("{a}.all({dims})", EXACT, _any, True, "one"),
    ("{a}.count_nonzero({dims})", EXACT, _any, True, "one"),
    ("{a}.prod({dims})", EXACT, lambda t: t.numel() <= 16 and _maxabs(t) <= 4, False, "one"),
    ("{a}.cumsum({dims})", SUM, _any, False, "required"),
    ("torch.softmax({a}, {dims})", INEXACT, _floating, False, "required"),
    ("torch.log_softmax({a}, {dims})", INEXACT, _floating, False, "required"),
    ("torch.sort({a}, {dims}, stable=True).values", EXACT, _any, False, "required"),
    (
        "torch.sort({a}, {dims}, descending=True, stable=True).indices",
        DISCRETE,
        _any,
        True,
        "required",
    ),
]


def _dims(c: _Ctx, t: torch.Tensor, how: str) -> str:
    keepdim = ", keepdim=True" if how != "required" and c.int(0, 2) == 0 else ""
    if how == "required":
        return str(c.dim(t))
    form = c.choice(["all", "dim", "dims"] if how == "many" else ["all", "dim"])
    if form == "all":
        return "" if not keepdim or how == "one" else f"dim=None{keepdim}"
    if form == "dims" and t.dim() >= 2:
        d1, d2 = c.two_dims(t)
        return f"({d1}, {d2}){keepdim}"
    return f"{c.dim(t)}{keepdim}"


# --- the op table: one drawer per family, each returning a Step or None -----------------


def _unary(c: _Ctx) -> Step | None:
    template, kind, pred, exact = c.choice(UNARY)
    a = c.pick(pred, exact)
    if a is None:
        return None
    lo = c.int(-3, 2)
    return c.new(template.format(a=a, lo=lo, hi=c.int(lo, 3)), kind)


def _binary(c: _Ctx) -> Step | None:
    template, kind, pred, exact = c.choice(BINARY)
    a = c.pick(pred, exact)
    if a is None:
        return None
    if ".abs()" in template:
        b = c.partner(c.value(a).shape, pred, exact=exact)
    else:
        b = c.operand(c.value(a).shape, pred, exact=exact)
    if b is None:
        return None
    if b in c.b.names and c.int(0, 4) == 0:
        a, b = b, a  # broadcasting and promotion from either side
    return c.new(template.format(a=a, b=b), kind)


def _where(c: _Ctx) -> Step | None:
    m = c.pick(lambda t: t.dtype == torch.bool)
    if m is None:
        return None
    shape = c.value(m).shape
    a = c.partner(shape)
    b = c.operand(shape)
    if a is None or b is None:
        return None
    if c.flag():
        return c.new(f"torch.where({m}, {a}, {b})")
    return c.new(f"{a}.where({m}, {b})")


def _reduction(c: _Ctx) -> Step | None:
    template, kind, pred, exact, how = c.choice(REDUCTIONS)
    a = c.pick(pred, exact)
    if a is None:
        return None
    return c.new(template.format(a=a, dims=_dims(c, c.value(a), how)), kind)


def _view(c: _Ctx) -> Step | None:
    a = c.pick()
    return c.new(c.choice(list(VIEWS.values()))(c, a, c.value(a)))


def _overlaps(t: torch.Tensor) -> bool:
    """Whether two elements of ``t`` share memory (eager PyTorch's writes are then
    order-dependent, and it refuses only some of them)."""
    offsets = torch.full(t.shape, t.storage_offset(), dtype=torch.int64)
    for d, (n, stride) in enumerate(zip(t.shape, t.stride(), strict=True)):
        offsets = offsets + (torch.arange(n) * stride).view(
            [n if k == d else 1 for k in range(t.dim())]
        )
    return offsets.unique().numel() < t.numel()


def _inplace(c: _Ctx) -> Step | None:
    a = c.pick(lambda t: not _overlaps(t))
    if a is None:
        return None
    written = c.choice(list(INPLACE.values()))(c, a, c.value(a), True)
    return None if written is None else c.write(written[0], a, written[1])


def _inplace_on_view(c: _Ctx) -> Step | None:
    """An in-place op on a view made in the same line: the base must change."""
    a = c.pick()
    view = c.choice(list(VIEWS.values()))(c, a, c.value(a))
    t = None if view is None else c.eval(view)
    if not isinstance(t, torch.Tensor) or _overlaps(t):
        return None
    written = c.choice(list(INPLACE.values()))(c, view, t, view.endswith("]"))
    return None if written is None else c.write(written[0], a, written[1])


def _index(c: _Ctx) -> Step | None:
    a = c.pick(lambda t: t.dim() > 0)
    if a is None:
        return None
    t = c.value(a)
    d = c.dim(t)
    n = t.shape[d]
    form = c.choice(["getitem", "index_select", "gather", "take", "derived", "masked", "nonzero"])
    if form == "getitem":
        sub = _advanced(c, t)
        if sub is None:
            return None
        mask = "torch.bool" in sub or (sub in c.b.env and c.value(sub).dtype == torch.bool)
        notes = [DATA_DEPENDENT] + ([EMPTY_MASK] if t.numel() == 0 else []) if mask else []
        return c.new(f"{a}[{sub}]", notes=notes)
    if form == "index_select":
        index = c.index_tensor(c.indices(n, c.int(0, 4), negative=False))
        return c.new(f"{a}.index_select({d}, {index})")
    if form == "gather":
        if n == 0:
            return None
        shape = [c.int(1, 3) if k == d % t.dim() else c.int(0, s) for k, s in enumerate(t.shape)]
        values = [c.int(0, n - 1) for _ in range(math.prod(shape))]
        if not values:
            return None
        return c.new(f"{a}.gather({d}, {c.index_tensor(_nested(values, tuple(shape)))})")
    if form == "take":
        index = c.index_tensor(c.indices(t.numel(), c.int(1, 4)))
        return c.new(f"torch.take({a}, {index})")
    if form == "derived":
        b = c.pick(lambda i: i.dtype == torch.int64)
        if b is None or n == 0:
            return None
        if c.flag():
            return c.new(f"{a}.index_select({d}, {b}.flatten().remainder({n}))")
        return c.new(f"{a}[{b}.clamp(0, {t.shape[0] - 1})]") if t.shape[0] else None
    if form == "masked":
        m = c.partner(t.shape, lambda m: m.dtype == torch.bool)
        if m is None:
            return None
        notes = [DATA_DEPENDENT] + ([EMPTY_MASK] if t.numel() == 0 else [])
        return c.new(f"torch.masked_select({a}, {m})", notes=notes)
    forms = [f"torch.nonzero({a})", f"{a}.nonzero()", f"torch.argwhere({a})"]
    return c.new(c.choice(forms), notes=[DATA_DEPENDENT])


def _matmul(c: _Ctx) -> Step | None:
    a = c.pick(lambda t: t.dim() >= 1 and _numeric(t))
    if a is None:
        return None
    t = c.value(a)
    if t.dim() >= 2 and c.int(0, 2) == 0:
        return c.new(c.choice([f"{a} @ {a}.mT", f"{a}.mT @ {a}"]), DOT)

    def fits(o: torch.Tensor) -> bool:
        try:
            torch.matmul(torch.empty(t.shape, device="meta"), torch.empty(o.shape, device="meta"))
        except RuntimeError:
            return False
        return o.dtype == t.dtype

    b = c.pick(fits)
    if b is None:
        return None
    forms = [f"{a} @ {b}", f"torch.matmul({a}, {b})"]
    if t.dim() == 2 and c.value(b).dim() == 2:
        forms += [f"{a}.mm({b})", f"torch.einsum('ij,jk->ik', {a}, {b})"]
    if t.dim() == 3 and c.value(b).dim() == 3:
        forms += [f"torch.bmm({a}, {b})"]
    return c.new(c.choice(forms), DOT)


def _join(c: _Ctx) -> Step | None:
    a = c.pick()
    t = c.value(a)
    if c.flag():
        d = c.int(-t.dim() - 1, t.dim())
        b = c.pick(lambda o: o.shape == t.shape)
        return c.new(f"torch.stack([{a}, {b}], {d})")
    if t.dim() == 0:
        return None
    d = c.dim(t)
    keep = [k for k in range(t.dim()) if k != d % t.dim()]

    def fits(o: torch.Tensor) -> bool:
        return o.dim() == t.dim() and all(o.shape[k] == t.shape[k] for k in keep)

    b = c.pick(fits)
    if c.flag():
        return c.new(f"torch.cat([{a}, {b}], {d})")
    return c.new(f"torch.cat(({b}, {a}, {b}), dim={d})")


def _cast(c: _Ctx) -> Step | None:
    a = c.pick()
    dtype = c.choice(list(_DTYPE_NAMES.values()))
    method = {"float32": "float", "int64": "long"}.get(dtype, dtype)
    form = c.choice(["to", "method", "type_as"])
    if form == "type_as":
        b = c.pick()
        return c.new(c.choice([f"{a}.type_as({b})", f"{a}.to({b}.dtype)"]))
    return c.new(f"{a}.to(torch.{dtype})" if form == "to" else f"{a}.{method}()")


def _create(c: _Ctx) -> Step | None:
    a = c.pick()
    t = c.value(a)
    dtype = f"torch.{c.choice(list(_DTYPE_NAMES.values()))}"
    form = c.choice(["zeros_like", "ones_like", "full_like", "arange", "eye", "new", "tensor"])
    if form == "zeros_like":
        return c.new(f"torch.zeros_like({a})")
    if form == "ones_like":
        return c.new(f"torch.ones_like({a}, dtype={dtype})")
    if form == "full_like":
        return c.new(f"torch.full_like({a}, {c.scalar_for(t)})")
    if form == "arange" and c.flag():
        return c.new(f"torch.arange({c.int(0, 4)}, device=dev)")
    if form == "arange":
        return c.new(f"torch.arange({t.numel()}, dtype={dtype}, device=dev).view{_args(t.shape)}")
    if form == "eye":
        return c.new(f"torch.eye({c.int(0, 4)}, device=dev)")
    if form == "new":
        return c.new(f"{a}.new_ones({_args(t.shape[::-1])})")
    return c.new(_literal(c, t))


def _literal(c: _Ctx, t: torch.Tensor) -> str:
    """``torch.tensor(data, device=dev)`` of ``t``'s shape (non-empty) and dtype."""
    shape = tuple(t.shape) if t.numel() else (2,)
    values = [_INPUT_KINDS[_DTYPE_NAMES[t.dtype]][1](c) for _ in range(math.prod(shape))]
    dtype = ", dtype=torch.bfloat16" if t.dtype == torch.bfloat16 else ""
    return f"torch.tensor({_nested(values, shape)!r}{dtype}, device=dev)"


def _sync(c: _Ctx) -> Step | None:
    return Step("sync()")


# Family -> (drawer, weight). Programs shrink towards the families listed first.
OPS: dict[str, tuple[Callable[[_Ctx], Step | None], int]] = {
    "binary": (_binary, 4),
    "unary": (_unary, 3),
    "view": (_view, 4),
    "inplace": (_inplace, 4),
    "inplace on view": (_inplace_on_view, 3),
    "reduction": (_reduction, 3),
    "index": (_index, 3),
    "cast": (_cast, 2),
    "where": (_where, 1),
    "matmul": (_matmul, 1),
    "join": (_join, 1),
    "create": (_create, 1),
    "sync": (_sync, 1),
}
_WEIGHTED = [name for name, (_, weight) in OPS.items() for _ in range(weight)]
_ATTEMPTS = 12  # drawers per step before the program stops early


def _input(c: _Ctx, name: str) -> Input:
    """One input tensor: rank 0-3, sizes 0-4, one of ``_INPUT_KINDS``."""
    kind = c.choice(list(_INPUT_KINDS))
    shape = tuple(c.choice(_SIZES) for _ in range(c.int(0, 3)))
    element = _INPUT_KINDS[kind][1]
    return Input(name, kind, shape, tuple(element(c) for _ in range(math.prod(shape))))


def _program(c: _Ctx, max_steps: int) -> Program:
    c.b = builder = _Builder(tuple(_input(c, f"t{i}") for i in range(c.int(1, 3))))
    for n in range(max_steps):
        if n and c.int(0, 7) == 0:
            break  # programs shrink by stopping early
        for _ in range(_ATTEMPTS):
            step = OPS[c.choice(_WEIGHTED)][0](c)
            if step is not None and builder.add(step):
                break
    return builder.program()


@st.composite
def programs(draw: Callable, max_steps: int = 10) -> Program:
    """A random valid program of 1 to ``max_steps`` steps over 1-3 inputs, shrinkable."""
    return _program(_Ctx(draw=draw), max_steps)


def random_program(seed: int, max_steps: int = 10) -> Program:
    """The same kind of program from a plain seeded generator: every draw independent,
    where hypothesis favours small examples and variations of earlier ones."""
    return _program(_Ctx(rng=random.Random(seed)), max_steps)


def rebuild(inputs: Sequence[Input], steps: Sequence[Step]) -> Program | None:
    """The program of these inputs and steps, or None if eager PyTorch rejects a step."""
    builder = _Builder(tuple(inputs))
    for step in steps:
        if not builder.add(step):
            return None
    return builder.program()


def shrink(program: Program, fails: Callable[[Program], bool]) -> Program:
    """A smaller program that still ``fails``: steps, then unused inputs, deleted one at a
    time, then input values set to zeros (hypothesis shrinks its own; this is for
    ``random_program``)."""
    changed = True
    while changed:
        changed = False
        for i in reversed(range(len(program.steps))):
            steps = program.steps[:i] + program.steps[i + 1 :]
            smaller = rebuild(program.inputs, steps) if steps else None
            if smaller is not None and fails(smaller):
                program, changed = smaller, True
        used = {n for s in program.steps for n in _NAME.findall(s.line)}
        for inp in program.inputs:
            if inp.name not in used and len(program.inputs) > 1:
                rest = [i for i in program.inputs if i is not inp]
                smaller = rebuild(rest, program.steps)
                if smaller is not None and fails(smaller):
                    program, changed = smaller, True
    for k, inp in enumerate(program.inputs):
        zero = dataclasses.replace(inp, values=tuple(type(v)(0) for v in inp.values))
        if zero != inp:
            smaller = rebuild(program.inputs[:k] + (zero,) + program.inputs[k + 1 :], program.steps)
            if smaller is not None and fails(smaller):
                program = smaller
    return program


# --- running: eager on the CPU against each front end -----------------------------------

PASSED, FAILED, ERRORED, INVALID, EXCLUDED = "passed", "failed", "errored", "invalid", "excluded"


class Mismatch(AssertionError):
    """A front end's value differs from eager PyTorch's."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one front end did with a program: passed, failed (a mismatch), errored."""

    front_end: str
    status: str
    message: str = ""
    fallbacks: tuple[str, ...] = ()  # ops that ran in eager PyTorch instead
    known: tuple[str, ...] = ()  # the ``KNOWN`` constructs that applied


def _host(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    return value


_AFTER_INPUTS = " after its inputs were negated in place"
_AFTER_OUTPUTS = " after its outputs were negated in place, one by one"


def _negate_(t: torch.Tensor) -> None:
    if t.dtype == torch.bool:
        t.logical_not_()
    else:
        t.neg_()


def run(program: Program, front_end: str) -> dict[str, Any]:
    """Run ``program`` as ``front_end`` ("eager" is the reference); its values on the host.

    Keys are the outputs and the inputs after the call; then the outputs again after
    the inputs in ``program.flipped`` were negated in place, and everything again after
    its outputs were too, one by one. A value that shares memory with another must
    see that one's change, as in eager PyTorch; negation is exact at every dtype."""
    args = [i.tensor() for i in program.inputs]
    if front_end in ("device", "compile_tpu"):
        args = [a.to("tpu") for a in args]
    fn = program.function(torchtpu.sync if front_end == "device" else _no_sync)
    if front_end.startswith("compile"):
        torch._dynamo.reset()
        fn = torch.compile(fn, backend="tpu", fullgraph=False)
    outs = dict(zip(program.outputs, fn(*args), strict=True))
    ins = {i.name: a for i, a in zip(program.inputs, args, strict=True)}
    values = {name: _host(t) for name, t in (outs | ins).items()}
    for name in program.flipped:
        if name in ins:
            _negate_(ins[name])
    values |= {name + _AFTER_INPUTS: _host(t) for name, t in outs.items()}
    for name in program.flipped:
        if name in outs:
            _negate_(outs[name])
    values |= {name + _AFTER_OUTPUTS: _host(t) for name, t in (outs | ins).items()}
    return values


def compare(
    program: Program,
    actual: dict[str, Any],
    expected: dict[str, Any],
    after_outputs: bool = True,
) -> None:
    """Raise ``Mismatch`` naming the first value that differs beyond its tolerance
    (``after_outputs=False``: of those before the outputs were negated)."""
    for key, want in expected.items():
        if not after_outputs and key.endswith(_AFTER_OUTPUTS):
            continue
        name = key.removesuffix(_AFTER_INPUTS).removesuffix(_AFTER_OUTPUTS)
        level, scale = program.levels[name]
        rtol, atol = level.tolerance(scale)
        try:
            torch.testing.assert_close(
                actual[key], want, rtol=rtol, atol=atol, equal_nan=True, check_stride=False
            )
        except AssertionError as e:
            raise Mismatch(f"{key} ({level.name.lower()}): {e}") from None


def _settle() -> None:
    """Leave device mode with nothing pending, whatever the last program did."""
    try:
        torchtpu.sync()
    except Exception:
        pass


def check(
    program: Program, front_ends: Sequence[str] = FRONT_ENDS, first_failure: bool = False
) -> list[Outcome]:
    """Run ``program`` in eager PyTorch and in each front end and compare.

    Returns one ``Outcome`` per front end (``first_failure``: up to the first that
    fails), all ``invalid`` if eager PyTorch rejects the program; ``excluded`` where
    the program contains a construct ``KNOWN`` lists for that front end."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = run(program, "eager")
        except Exception as e:
            return [Outcome(f, INVALID, _describe(e)) for f in front_ends]
        outcomes = []
        for front_end in front_ends:
            known = [n for n in sorted(program.notes) if front_end in KNOWN[n].front_ends]
            whole = [n for n in known if not KNOWN[n].after_outputs_only]
            if whole:
                outcomes.append(Outcome(front_end, EXCLUDED, "; ".join(whole), known=tuple(known)))
                continue
            torchtpu.reset_metrics()
            try:
                actual = run(program, front_end)
                compare(program, actual, expected, after_outputs=len(whole) == len(known))
                status, message = PASSED, ""
            except Mismatch as e:
                status, message = FAILED, str(e)
            except Exception as e:
                status, message = ERRORED, _describe(e)
            finally:
                _settle()
                torch._dynamo.reset()
            fallbacks = tuple(sorted(torchtpu.metrics()["fallbacks"]))
            outcomes.append(Outcome(front_end, status, message, fallbacks, tuple(known)))
            if first_failure and status in (FAILED, ERRORED):
                break
    return outcomes


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def assert_program(program: Program, front_ends: Sequence[str] = FRONT_ENDS) -> None:
    """Raise ``AssertionError`` with the listing unless every front end matches eager.

    It stops at the first front end that fails, which keeps hypothesis's shrinking short."""
    bad = [o for o in check(program, front_ends, True) if o.status in (FAILED, ERRORED)]
    if bad:
        (o,) = bad
        raise AssertionError(f"[{o.front_end}] {o.status}: {o.message}\n\nprogram:{program!r}")


__all__ = [
    "FRONT_ENDS",
    "KNOWN",
    "Known",
    "OPS",
    "Input",
    "Level",
    "Mismatch",
    "Outcome",
    "Program",
    "assert_program",
    "check",
    "compare",
    "programs",
    "random_program",
    "rebuild",
    "run",
    "shrink",
]
