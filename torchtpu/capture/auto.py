"""``backend="auto"`` and ``TORCHTPU_PLATFORM=auto``: time the candidates, keep the fastest.

``torch.compile(model, backend="auto")`` compiles each Dynamo graph for every JAX
platform with a local device (``tpu``, ``gpu``, ``cpu``) and also keeps eager PyTorch
as a candidate. On the graph's first call each candidate runs a warm-up call (its
compile) and ``repeats`` timed calls, forward and, where the outputs need gradients,
backward, on copies of the call's inputs; the fastest (median) is kept for every
later call and the first call's own result comes from it. ``TORCHTPU_PLATFORM=auto``
does the same for ``backend="tpu"`` among the XLA platforms alone.

The trials run on copies, with PyTorch's and the tpu device's random state restored
after them, so the real call sees the inputs, buffers and generators it would have
seen without them: results do not depend on which candidate wins. The choice, with
every candidate's time, is logged once per graph (``torchtpu`` logger, warning level)
and kept in ``torchtpu.metrics()["auto_choices"]``.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
from torch.utils import _pytree as pytree

from torchtpu.config import options_with
from torchtpu.errors import TorchTPUError, user_site
from torchtpu.metrics import record_auto_choice
from torchtpu.runtime.device import platforms_present
from torchtpu.runtime.rng import tpu_generator

REPEATS = 3
log = logging.getLogger("torchtpu")


@dataclasses.dataclass
class Candidate:
    """One way to run a graph: ``name`` (``"xla:cpu"``, ``"xla:gpu"``, ``"eager"``, ...)
    and ``fn``, called as Dynamo calls a backend's result."""

    name: str
    fn: Callable[..., Any]


@dataclasses.dataclass
class AutoChoice:
    """What ``auto`` chose for one graph, and why: each candidate's median seconds per
    call (forward, plus backward where trained), or the error that ruled it out."""

    graph: str
    chosen: str
    seconds: dict[str, float]
    failed: dict[str, str]

    def __str__(self) -> str:
        if not self.seconds:
            return f"auto: {self.graph}: {self.chosen} (the only candidate, not timed)"
        others = [f"{n} {_ms(s)}" for n, s in self.seconds.items() if n != self.chosen]
        others += [f"{n} failed ({e})" for n, e in self.failed.items()]
        head = f"auto: {self.graph}: chose {self.chosen}, {_ms(self.seconds[self.chosen])} per call"
        if self.chosen == "eager" and any(n.startswith("xla:") for n in self.seconds):
            head += "; XLA is slower than eager PyTorch on this graph"
        return head + (f" ({', '.join(others)})" if others else "")


def auto_backend(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    options: dict[str, Any] | None = None,
    **_: Any,
) -> Callable[..., Any]:
    """The ``auto`` backend of ``torch.compile``: each graph runs on the fastest of the
    XLA platforms present and eager PyTorch, timed on its first call.

    Example::

        model = torch.compile(torch.nn.Linear(64, 64), backend="auto")
        model(torch.randn(32, 64))        # times each candidate, keeps the fastest
        torchtpu.metrics()["auto_choices"]
    """
    options_with(options, "torch.compile(backend='auto')")  # an unknown option is an error
    return choose(gm, example_inputs, options, eager=True)


def choose(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    options: dict[str, Any] | None,
    *,
    eager: bool,
) -> Callable[..., Any]:
    """A callable that picks among :func:`candidates` on its first call (see the module)."""
    return AutoCompiled(candidates(gm, example_inputs, options, eager=eager), options)


def candidates(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    options: dict[str, Any] | None,
    *,
    eager: bool,
) -> list[Candidate]:
    """The graph compiled by the ``tpu`` backend for each platform present, then (with
    ``eager``) the graph itself, run by PyTorch."""
    from torchtpu.capture.backend import tpu_backend

    found = [
        Candidate(
            f"xla:{p}", tpu_backend(gm, example_inputs, options={**(options or {}), "platform": p})
        )
        for p in platforms_present()
    ]
    if eager:
        found.append(Candidate("eager", gm))
    return found


class AutoCompiled:
    """Runs the fastest candidate; the first call times them all."""

    def __init__(self, found: list[Candidate], options: dict[str, Any] | None) -> None:
        if not found:
            raise TorchTPUError("backend='auto': no candidate to run this graph on")
        self.candidates = found
        self.options = options
        self.choice: AutoChoice | None = None
        self._fn: Callable[..., Any] | None = None

    def __call__(self, *args: Any) -> Any:
        if self._fn is None:
            self._choose(args)
        return self._fn(*args)

    def _choose(self, args: tuple[Any, ...]) -> None:
        graph = user_site()
        seconds: dict[str, float] = {}
        failed: dict[str, str] = {}
        if len(self.candidates) == 1:
            chosen = self.candidates[0].name  # nothing to compare it with: no trial
        else:
            backward = torch.is_grad_enabled()
            strict = options_with(self.options, "torch.compile").strict
            with _random_state_kept():
                for c in self.candidates:
                    try:
                        seconds[c.name] = measure(c, args, backward=backward, repeats=REPEATS)
                    except Exception as exc:
                        if strict and isinstance(exc, TorchTPUError):
                            raise  # strict mode: an op that cannot lower is an error here too
                        failed[c.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            if not seconds:
                raise TorchTPUError(
                    f"backend='auto' at {graph}: every candidate failed on this graph: "
                    + "; ".join(f"{n}: {e}" for n, e in failed.items())
                )
            chosen = min(seconds, key=seconds.__getitem__)
        self.choice = AutoChoice(graph, chosen, seconds, failed)
        self._fn = next(c.fn for c in self.candidates if c.name == chosen)
        record_auto_choice(dataclasses.asdict(self.choice))
        log.warning("torchtpu %s", self.choice)


def measure(c: Candidate, args: Sequence[Any], *, backward: bool, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``c`` on fresh copies of ``args`` (after one
    untimed call that compiles), each waiting for its results; with ``backward``, each
    call also runs the backward pass of the outputs that need gradients (cotangent 1)."""
    times = []
    for i in range(repeats + 1):
        copies = _copies(args)
        start = time.perf_counter()
        out = c.fn(*copies)
        leaves = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if backward:
            trained = [t for t in leaves if t.requires_grad]
            if trained:
                torch.autograd.backward(trained, [torch.ones_like(t) for t in trained])
                leaves += [
                    t.grad for t in copies if isinstance(t, torch.Tensor) and t.grad is not None
                ]
        _wait(leaves)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _copies(args: Sequence[Any]) -> list[Any]:
    """Detached copies of the call's tensors, so trials mutate and train nothing real."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            copy = a.detach().clone()
            if a.requires_grad:
                copy.requires_grad_(True)
            out.append(copy)
        else:
            out.append(a)
    return out


def _wait(tensors: list[torch.Tensor]) -> None:
    """Block until the tensors' values exist (work is queued on a GPU or the tpu device)."""
    if any(t.device.type == "cuda" for t in tensors):
        torch.cuda.synchronize()
    if any(t.device.type == "tpu" for t in tensors):
        from torchtpu.device.tensor import device_array

        for t in tensors:
            if t.device.type == "tpu":
                device_array(t, "auto_trial").block_until_ready()


class _random_state_kept:
    """PyTorch's default generator, CUDA's and the tpu device's, restored on exit. (The
    model's parameters and buffers reach a Dynamo graph as inputs, which the trials copy.)"""

    def __enter__(self) -> None:
        self._cpu = torch.random.get_rng_state()
        self._tpu = tpu_generator().get_state()
        self._cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def __exit__(self, *_: object) -> None:
        torch.random.set_rng_state(self._cpu)
        tpu_generator().set_state(self._tpu)
        if self._cuda is not None:
            torch.cuda.set_rng_state_all(self._cuda)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"
