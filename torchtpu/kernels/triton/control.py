"""Control flow over traced values: a kernel's ``if``/``for``/``while`` as JAX control flow.

The translator runs a kernel's Python body; a branch or loop bound that depends on the program
id or on loaded data is a JAX tracer there, which Python's ``if`` and ``range`` cannot take.
``transform(fn)`` rewrites the kernel's AST (as Triton's own code generator walks it) so that

- ``for i in range(a, b, s)`` / ``tl.range(...)`` becomes ``for_((a, b, s), body, carried)``,
- ``if c: ... else: ...`` becomes ``if_(c, then, else_, carried)``,
- ``while c: ...`` becomes ``while_(cond, body, carried)``,
- ``a and b``, ``a or b``, ``not a`` and ``x if c else y`` become calls that short-circuit on
  Python values and compute elementwise on tensors,

where ``body``/``then``/``cond`` are nested functions over the *carried* names (those the
statement assigns). When the bound or condition is a Python value the helpers run the block as
Python would (``tl.static_range`` loops and branches on constexprs are unchanged); when it is
traced they emit ``jax.lax.fori_loop``/``while_loop``, or run both branches with stores
predicated and select the carried values (what ``jax.lax.cond`` becomes under ``vmap``).
An early ``return`` (``if c: ...; return [value]``) puts the rest of the function into the
other branch, and value returns become one assignment per path and a single ``return``.

Triton's own rules apply to traced loops and branches: a carried variable keeps its type, and a
name first assigned inside one is not visible after it.
"""

from __future__ import annotations

import ast
import copy
import functools
import inspect
import textwrap
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import triton.language as tl

from torchtpu.kernels.triton.builder import NeedsSequential, Value, np_dtype
from torchtpu.kernels.triton.errors import register_kernel_file, unsupported

# ----------------------------------------------------------------------------- the AST rewrite


def _assigned(stmts: list[ast.stmt]) -> list[str]:
    """Names a block assigns, in first-assignment order (nested functions excluded)."""
    names: list[str] = []

    class Visit(ast.NodeVisitor):
        def visit_Name(self, node: ast.Name) -> None:
            if isinstance(node.ctx, ast.Store) and node.id not in names:
                names.append(node.id)

        def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
            if node.name not in names:
                names.append(node.name)

        def visit_Lambda(self, node: ast.Lambda) -> None:
            pass

    for s in stmts:
        Visit().visit(s)
    return names


def _has(stmts: list[ast.stmt], kinds: tuple[type, ...], into_loops: bool = True) -> bool:
    """Whether a block holds a statement of ``kinds`` (not looking into nested functions, nor
    into nested loops unless ``into_loops``: a ``break`` there is that loop's own)."""
    for node in stmts:
        if isinstance(node, kinds):
            return True
        if isinstance(node, (ast.FunctionDef, ast.Lambda, ast.AsyncFunctionDef)):
            continue
        if not into_loops and isinstance(node, (ast.For, ast.While)):
            if ast.Return in kinds and _has(node.body, (ast.Return,)):
                return True
            continue
        children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
        if _has(children, kinds, into_loops):
            return True
    return False


def _name(id_: str, store: bool = False) -> ast.Name:
    return ast.Name(id=id_, ctx=ast.Store() if store else ast.Load())


def _rt(attr: str) -> ast.Attribute:
    return ast.Attribute(value=_name("__tt_rt"), attr=attr, ctx=ast.Load())


def _call(func: ast.expr, *args: ast.expr) -> ast.Call:
    return ast.Call(func=func, args=list(args), keywords=[])


def _tuple(names: list[str], store: bool = False) -> ast.Tuple:
    return ast.Tuple(
        elts=[_name(n, store) for n in names], ctx=ast.Store() if store else ast.Load()
    )


class _Rewriter(ast.NodeTransformer):
    def __init__(self) -> None:
        self.count = 0

    def _fresh(self, what: str) -> str:
        self.count += 1
        return f"__tt_{what}_{self.count}"

    def _fn(
        self,
        name: str,
        params: list[str],
        carried: list[str],
        body: list[ast.stmt],
        result: ast.expr | None = None,
    ) -> ast.FunctionDef:
        unpack = ast.Assign(targets=[_tuple(carried, store=True)], value=_name("__tt_c"))
        ret = ast.Return(value=result if result is not None else _tuple(carried))
        args = ast.arguments(
            posonlyargs=[],
            args=[ast.arg(arg=p) for p in [*params, "__tt_c"]],
            kwonlyargs=[],
            kw_defaults=[],
            defaults=[],
        )
        return ast.FunctionDef(
            name=name,
            args=args,
            body=[unpack, *body, ret],
            decorator_list=[],
            returns=None,
            type_params=[],
        )

    def _carried_now(self, carried: list[str]) -> ast.expr:
        names = ast.Tuple(elts=[ast.Constant(n) for n in carried], ctx=ast.Load())
        return _call(_rt("pick"), _call(_name("locals")), names)

    def block(self, stmts: list[ast.stmt]) -> list[ast.stmt]:
        return [out for stmt in stmts for out in self.statement(stmt)]

    def statement(self, stmt: ast.stmt) -> list[ast.stmt]:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return [stmt]
        if isinstance(stmt, ast.If):
            stmt.test = self.visit(stmt.test)
            stmt.body, stmt.orelse = self.block(stmt.body), self.block(stmt.orelse)
            if _has(stmt.body + stmt.orelse, (ast.Return,)) or _has(
                stmt.body + stmt.orelse, (ast.Break, ast.Continue), into_loops=False
            ):
                return [stmt]  # a nested return, or an enclosing loop's break: left to Python
            return self._if(stmt)
        if isinstance(stmt, ast.For):
            stmt.iter = self.visit(stmt.iter)
            stmt.body = self.block(stmt.body)
            if _is_range(stmt.iter) and isinstance(stmt.target, ast.Name) and not stmt.orelse:
                if not _has(stmt.body, (ast.Break, ast.Continue, ast.Return), into_loops=False):
                    return self._for(stmt)
            return [stmt]
        if isinstance(stmt, ast.While):
            stmt.test = self.visit(stmt.test)
            stmt.body = self.block(stmt.body)
            if not stmt.orelse and not _has(
                stmt.body, (ast.Break, ast.Continue, ast.Return), into_loops=False
            ):
                return self._while(stmt)
            return [stmt]
        if isinstance(stmt, (ast.With,)):
            stmt.body = self.block(stmt.body)
        return [self.visit(stmt)]

    def _for(self, stmt: ast.For) -> list[ast.stmt]:
        target = stmt.target.id  # type: ignore[attr-defined]
        carried = [n for n in _assigned(stmt.body) if n != target]
        body = self._fresh("body")
        call: ast.Call = stmt.iter  # type: ignore[assignment]
        kwargs = ast.Dict(
            keys=[ast.Constant(k.arg) for k in call.keywords],
            values=[k.value for k in call.keywords],
        )
        loop = _call(
            _rt("for_"),
            ast.Tuple(elts=list(call.args), ctx=ast.Load()),
            kwargs,
            _name(body),
            self._carried_now(carried),
            ast.Constant(tuple(carried)),
        )
        return self._emit(stmt, [self._fn(body, [target], carried, stmt.body)], carried, loop)

    def _if(self, stmt: ast.If) -> list[ast.stmt]:
        carried = _assigned(stmt.body + stmt.orelse)
        then, other = self._fresh("then"), self._fresh("else")
        fns = [
            self._fn(then, [], carried, stmt.body),
            self._fn(other, [], carried, stmt.orelse or [ast.Pass()]),
        ]
        branch = _call(
            _rt("if_"),
            stmt.test,
            _name(then),
            _name(other),
            self._carried_now(carried),
            ast.Constant(tuple(carried)),
        )
        return self._emit(stmt, fns, carried, branch)

    def _while(self, stmt: ast.While) -> list[ast.stmt]:
        carried = _assigned(stmt.body)
        cond, body = self._fresh("cond"), self._fresh("body")
        fns = [
            self._fn(cond, [], carried, [], result=stmt.test),
            self._fn(body, [], carried, stmt.body),
        ]
        loop = _call(
            _rt("while_"),
            _name(cond),
            _name(body),
            self._carried_now(carried),
            ast.Constant(tuple(carried)),
        )
        return self._emit(stmt, fns, carried, loop)

    def _emit(
        self, stmt: ast.stmt, fns: list[ast.stmt], carried: list[str], call: ast.expr
    ) -> list[ast.stmt]:
        assign = ast.Assign(targets=[_tuple(carried, store=True)], value=call)
        out = [*fns, assign]
        for node in out:
            ast.copy_location(node, stmt)
        return out

    # expressions: Python's boolean operators call __bool__, which a tracer cannot answer
    def visit_BoolOp(self, node: ast.BoolOp) -> ast.expr:
        node = self.generic_visit(node)  # type: ignore[assignment]
        fn = "and_" if isinstance(node.op, ast.And) else "or_"
        lambdas = [_lambda(v) for v in node.values]
        return ast.copy_location(_call(_rt(fn), *lambdas), node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.expr:
        node = self.generic_visit(node)  # type: ignore[assignment]
        if isinstance(node.op, ast.Not):
            return ast.copy_location(_call(_rt("not_"), node.operand), node)
        return node

    def visit_IfExp(self, node: ast.IfExp) -> ast.expr:
        node = self.generic_visit(node)  # type: ignore[assignment]
        call = _call(_rt("ifexp"), node.test, _lambda(node.body), _lambda(node.orelse))
        return ast.copy_location(call, node)

    def visit_Lambda(self, node: ast.Lambda) -> ast.expr:
        return node


def _lambda(expr: ast.expr) -> ast.Lambda:
    args = ast.arguments(
        posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[], vararg=None
    )
    return ast.Lambda(args=args, body=expr)


def _returns(stmts: list[ast.stmt]) -> bool:
    """Whether every path through a block ends in a ``return``."""
    if not stmts:
        return False
    last = stmts[-1]
    if isinstance(last, ast.Return):
        return True
    return isinstance(last, ast.If) and _returns(last.body) and _returns(last.orelse)


def _tail(stmts: list[ast.stmt]) -> list[ast.stmt]:
    """A function's body with the statements after ``if c: ... return`` moved into the branch
    that does not return, so that every ``return`` ends a path."""
    for i, stmt in enumerate(stmts):
        if isinstance(stmt, ast.If) and (_returns(stmt.body) or _returns(stmt.orelse)):
            rest = stmts[i + 1 :]
            if not _returns(stmt.body):
                stmt.body = stmt.body + rest
            if not _returns(stmt.orelse):
                stmt.orelse = stmt.orelse + rest
            stmt.body, stmt.orelse = _tail(stmt.body), _tail(stmt.orelse)
            return stmts[:i] + [stmt]
    return stmts


def _strip_returns(stmts: list[ast.stmt], var: str | None) -> bool:
    """Replace the returns ending a tail block's paths: bare ones by ``pass`` (``var`` None),
    value ones by ``var = value``. False where a return is elsewhere, or (with ``var``) a path
    falls off the end."""
    if _has(stmts[:-1], (ast.Return,)):
        return False
    last = stmts[-1] if stmts else None
    if isinstance(last, ast.Return):
        if (last.value is None) != (var is None):
            return False
        stmts[-1] = ast.copy_location(
            ast.Pass() if var is None else ast.Assign(targets=[_name(var, True)], value=last.value),
            last,
        )
        return True
    if isinstance(last, ast.If) and _has([last], (ast.Return,)):
        return _strip_returns(last.body, var) and _strip_returns(last.orelse, var)
    if last is not None and _has([last], (ast.Return,)):
        return False  # a return inside a loop or with-block
    return var is None


def _single_exit(body: list[ast.stmt]) -> list[ast.stmt]:
    """``body`` rewritten to return once, at its end (early exits become branches), or as it
    was where it cannot be."""
    new = _tail(copy.deepcopy(body))
    values = [
        n for n in ast.walk(ast.Module(body=new, type_ignores=[])) if isinstance(n, ast.Return)
    ]
    if not values:
        return body
    var = "__tt_ret" if any(r.value is not None for r in values) else None
    if not new or not _strip_returns(new, var):
        return body
    return new + ([ast.Return(value=_name(var))] if var else [])


def _is_range(node: ast.expr) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
    return name == "range"  # tl.static_range stays a Python loop, unrolled


@functools.cache
def transform(fn: Any) -> Any:
    """``fn`` (a ``@triton.jit`` function's Python function) with its control flow rewritten as
    above (Triton's own ``@jit`` library functions too: ``argmax``'s combine uses ``and``).

    Example::

        body = transform(kernel.fn)
        body(x_ptr, n, BLOCK=128)  # under the translator's patched triton.language
    """
    if not hasattr(fn, "__code__"):
        return fn
    try:
        lines, start = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        return fn  # no source (built at run time): run as Python
    filename = fn.__code__.co_filename
    if not (getattr(fn, "__module__", "") or "").startswith("triton."):
        register_kernel_file(filename)  # errors point at the user's lines, not Triton's
    tree = ast.parse(textwrap.dedent("".join(lines)))
    ast.increment_lineno(tree, start - 1)
    fdef = tree.body[0]
    if not isinstance(fdef, ast.FunctionDef):
        return fn
    fdef.decorator_list = []
    fdef.body = _Rewriter().block(_single_exit(fdef.body))
    # closures: rebuild the function inside a maker whose parameters hold the cells' values
    free = list(fn.__code__.co_freevars)
    maker_args = ast.arguments(
        posonlyargs=[],
        args=[ast.arg(arg=n) for n in free],
        kwonlyargs=[],
        kw_defaults=[],
        defaults=[],
    )
    maker = ast.FunctionDef(
        name="__tt_make",
        args=maker_args,
        body=[fdef, ast.Return(value=_name(fdef.name))],
        decorator_list=[],
        returns=None,
        type_params=[],
    )
    module_ast = ast.Module(body=[maker], type_ignores=[])
    ast.fix_missing_locations(module_ast)
    code = compile(module_ast, filename, "exec")
    namespace = dict(fn.__globals__)
    namespace["__tt_rt"] = _runtime
    exec(code, namespace)
    cells = [c.cell_contents for c in (fn.__closure__ or ())]
    new = namespace["__tt_make"](*cells)
    new.__defaults__ = fn.__defaults__
    new.__kwdefaults__ = fn.__kwdefaults__
    return new


# ----------------------------------------------------------------------------- the runtime


class _Undefined:
    """The value of a name a traced block assigns but that was not defined before it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}: first assigned inside a loop or branch over a traced value>"


def _traced(x: Any) -> bool:
    if isinstance(x, tl.constexpr):
        x = x.value
    if isinstance(x, tl.tensor):
        return isinstance(x.handle.data, jax.core.Tracer)
    return False


def _semantic() -> Any:
    from torchtpu.kernels.triton.lang import current_semantic

    return current_semantic()


def _py(x: Any) -> Any:
    """A concrete condition or bound as a Python value."""
    if isinstance(x, tl.constexpr):
        x = x.value
    if isinstance(x, tl.tensor):
        data = np.asarray(x.handle.data)
        return data.reshape(()).item() if data.size == 1 else data
    return x


class _Runtime:
    """The helpers the rewritten kernels call (as ``__tt_rt``)."""

    @staticmethod
    def pick(scope: dict[str, Any], names: tuple[str, ...]) -> tuple[Any, ...]:
        return tuple(scope[n] if n in scope else _Undefined(n) for n in names)

    # boolean operators
    @staticmethod
    def and_(*thunks: Any) -> Any:
        value = thunks[0]()
        for thunk in thunks[1:]:
            if not isinstance(value, tl.tensor):
                if not value:
                    return value
                value = thunk()
                continue
            value = _semantic().logical_and(value, _semantic().to_tensor(thunk()))
        return value

    @staticmethod
    def or_(*thunks: Any) -> Any:
        value = thunks[0]()
        for thunk in thunks[1:]:
            if not isinstance(value, tl.tensor):
                if value:
                    return value
                value = thunk()
                continue
            value = _semantic().logical_or(value, _semantic().to_tensor(thunk()))
        return value

    @staticmethod
    def not_(x: Any) -> Any:
        if isinstance(x, tl.tensor):
            return _semantic().not_(x)
        return not x

    @staticmethod
    def ifexp(cond: Any, then: Any, other: Any) -> Any:
        if not _traced(cond):
            return then() if _py(cond) else other()
        sem = _semantic()
        return sem.where(
            _scalar_cond(cond, "x if c else y"), sem.to_tensor(then()), sem.to_tensor(other())
        )

    # statements
    @staticmethod
    def for_(
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        body: Any,
        vals: tuple[Any, ...],
        names: tuple[str, ...],
    ) -> tuple[Any, ...]:
        args = args + tuple(kwargs[k] for k in ("step",) if k in kwargs and len(args) == 2)
        start, stop, step = (0, args[0], 1) if len(args) == 1 else (*args, 1)[:3]
        if not any(_traced(a) for a in (start, stop, step)):
            for i in range(int(_py(start)), int(_py(stop)), int(_py(step))):
                vals = body(i, vals)
            return vals
        return _traced_for(start, stop, step, body, vals, names)

    @staticmethod
    def if_(
        cond: Any, then: Any, other: Any, vals: tuple[Any, ...], names: tuple[str, ...]
    ) -> tuple[Any, ...]:
        if not _traced(cond):
            return then(vals) if _py(cond) else other(vals)
        return _traced_if(_scalar_cond(cond, "if"), then, other, vals, names)

    @staticmethod
    def while_(
        cond: Any, body: Any, vals: tuple[Any, ...], names: tuple[str, ...]
    ) -> tuple[Any, ...]:
        while True:
            c = cond(vals)
            if _traced(c):
                return _traced_while(cond, body, vals, names)
            if not _py(c):
                return vals
            vals = body(vals)


_runtime = _Runtime()


def _scalar_cond(cond: Any, what: str) -> Any:
    data = jnp.asarray(cond.handle.data)
    if data.size != 1:
        raise unsupported(
            f"`{what}` on a block of shape {tuple(data.shape)}",
            "needs a scalar condition",
            "reduce it first (tl.max, tl.sum)",
        )
    return data.reshape(()) != 0


# carried values: tl.tensors travel as JAX arrays; everything else must stay the same object


def _flatten(vals: tuple[Any, ...], names: tuple[str, ...], what: str) -> tuple[list[Any], list]:
    sem = _semantic()
    leaves, spec = [], []
    for name, v in zip(names, vals, strict=True):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = sem.to_tensor(v)  # a Python number carried by a traced block: Triton's rule
        if isinstance(v, tl.tensor):
            data = jnp.asarray(v.handle.data, np_dtype(v.type))
            leaves.append(data)
            spec.append(("tensor", name, v.type, v.handle.dtype, v.handle.buf))
        else:
            spec.append(("static", name, v, None, None))
    return leaves, spec


def _unflatten(leaves: list[Any], spec: list) -> tuple[Any, ...]:
    it = iter(leaves)
    out = []
    for kind, _, ty, dtype, buf in spec:
        out.append(tl.tensor(Value(next(it), dtype, buf), ty) if kind == "tensor" else ty)
    return tuple(out)


def _check(new: tuple[Any, ...], spec: list, what: str) -> list[Any]:
    leaves = []
    for v, (kind, name, ty, _, buf) in zip(new, spec, strict=True):
        if kind == "static":
            if isinstance(ty, _Undefined):
                continue  # first assigned inside: local to the block
            if v is not ty and not (type(v) is type(ty) and _same(v, ty)):
                raise unsupported(
                    what,
                    f"changes the Python value of {name!r} ({ty!r} -> {v!r})",
                    "carry a tensor instead (tl.full / tl.zeros)",
                )
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = _semantic().to_tensor(v)
        if not isinstance(v, tl.tensor) or v.type != ty or v.handle.buf != buf:
            got = v.type if isinstance(v, tl.tensor) else type(v).__name__
            raise unsupported(
                what,
                f"changes the type of {name!r} from {ty} to {got}",
                "give it its final type and shape before the block (Triton's "
                "rule for loop-carried and branch values)",
            )
        leaves.append(jnp.asarray(v.handle.data, np_dtype(ty)))
    return leaves


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def _builder() -> Any:
    return _semantic().builder


def _loop_state(builder: Any) -> tuple[Any, ...]:
    """The builder state a traced loop carries: the buffers, in sequential mode."""
    return tuple(builder.buffers) if builder.sequential else ()


def _run_block(fn: Any, args: tuple[Any, ...], state: tuple[Any, ...], what: str) -> Any:
    builder = _builder()
    n_records = len(builder.records)
    if builder.sequential:
        builder.buffers = list(state)
    out = fn(*args)
    if len(builder.records) != n_records:
        del builder.records[n_records:]
        raise NeedsSequential(f"a store or atomic inside {what}")
    return out, _loop_state(builder)


def _traced_for(
    start: Any, stop: Any, step: Any, body: Any, vals: tuple[Any, ...], names: tuple[str, ...]
) -> tuple[Any, ...]:
    sem, builder = _semantic(), _builder()
    bounds = [sem.to_tensor(_py(b) if not _traced(b) else b) for b in (start, stop, step)]
    ity = tl.int64 if any(b.type.scalar == tl.int64 for b in bounds) else tl.int32
    lo, hi, st = (jnp.asarray(b.handle.data, np_dtype(ity)).reshape(()) for b in bounds)
    trips = jnp.where(
        st > 0,
        (hi - lo + st - 1) // jnp.where(st > 0, st, 1),
        (lo - hi - st - 1) // jnp.where(st < 0, -st, 1),
    )
    trips = jnp.maximum(trips, 0)
    what = "a `for` loop over a traced range"
    leaves, spec = _flatten(vals, names, what)

    def step_fn(k: Any, carry: Any) -> Any:
        leaves, state = carry
        i = tl.tensor(Value(lo + k * st, ity), ity)
        new, state = _run_block(body, (i, _unflatten(leaves, spec)), state, what)
        return _check(new, spec, what), state

    leaves, state = jax.lax.fori_loop(
        jnp.zeros((), trips.dtype), trips, step_fn, (leaves, _loop_state(builder))
    )
    if builder.sequential:
        builder.buffers = list(state)
    return _unflatten(leaves, spec)


def _traced_while(
    cond: Any, body: Any, vals: tuple[Any, ...], names: tuple[str, ...]
) -> tuple[Any, ...]:
    builder = _builder()
    what = "a `while` loop on a traced condition"
    leaves, spec = _flatten(vals, names, what)
    predicate = builder.predicate

    def cond_fn(carry: Any) -> Any:
        leaves, state = carry
        c, _ = _run_block(cond, (_unflatten(leaves, spec),), state, what)
        c = _scalar_cond(_semantic().to_tensor(c), "while")
        return c if predicate is None else c & predicate  # a branch not taken does not loop

    def body_fn(carry: Any) -> Any:
        leaves, state = carry
        new, state = _run_block(body, (_unflatten(leaves, spec),), state, what)
        return _check(new, spec, what), state

    leaves, state = jax.lax.while_loop(cond_fn, body_fn, (leaves, _loop_state(builder)))
    if builder.sequential:
        builder.buffers = list(state)
    return _unflatten(leaves, spec)


def _traced_if(
    cond: Any, then: Any, other: Any, vals: tuple[Any, ...], names: tuple[str, ...]
) -> tuple[Any, ...]:
    """Both branches run, each with its stores predicated; the carried values are selected
    (``jax.lax.cond`` under ``vmap`` is this select)."""
    builder = _builder()
    outer = builder.predicate
    results = []
    for branch, pred in ((then, cond), (other, ~cond)):
        builder.predicate = pred if outer is None else outer & pred
        try:
            results.append(branch(vals))
        finally:
            builder.predicate = outer
    return tuple(_select(name, cond, a, b) for name, a, b in zip(names, *results, strict=True))


def _select(name: str, cond: Any, a: Any, b: Any) -> Any:
    """``a`` where ``cond`` else ``b``, for a value carried out of a traced ``if``."""
    if isinstance(a, _Undefined) or isinstance(b, _Undefined):
        return _Undefined(name)
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        return tuple(
            _select(f"{name}[{i}]", cond, x, y) for i, (x, y) in enumerate(zip(a, b, strict=True))
        )
    if not isinstance(a, tl.tensor) and not isinstance(b, tl.tensor):
        if a is b or (type(a) is type(b) and _same(a, b)):
            return a
    sem = _semantic()
    a, b = sem.to_tensor(a), sem.to_tensor(b)
    if a.type != b.type or a.handle.buf != b.handle.buf:
        shown = "the return value" if name == "__tt_ret" else repr(name)
        raise unsupported(
            "an `if` on a traced condition",
            f"gives {shown} the type {a.type} in one branch and {b.type} in the other",
            "give both branches one type",
        )
    data = jnp.where(cond, jnp.asarray(a.handle.data), jnp.asarray(b.handle.data))
    return tl.tensor(Value(data, a.handle.dtype, a.handle.buf), a.type)
