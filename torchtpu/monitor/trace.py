"""``torchtpu.monitor.profile``: a JAX profiler trace of a block, or of chosen steps.

The trace is JAX's own (``jax.profiler.start_trace``/``stop_trace``): an XSpace
file at ``<logdir>/plugins/profile/<run>/<host>.xplane.pb``, which TensorBoard's
profile plugin opens (``pip install tensorboard-plugin-profile``, then
``tensorboard --logdir <logdir>``, Profile tab).

At each edge of the trace the device is drained (device mode's recorded ops
are run and every live array waited for), so work queued before the first
traced step stays out of the trace and the last traced step's work is in it.
That wait happens twice per trace, never per step.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import jax

from torchtpu.device import sync


class Profile:
    """A JAX profiler trace, written under ``logdir``; see :func:`profile`."""

    def __init__(self, logdir: str | os.PathLike[str], steps: tuple[int, int] | None) -> None:
        self.logdir = Path(logdir)
        self.steps = steps
        self.step_count = 0
        self.run_dir: Path | None = None
        self._tracing = False
        self._before: set[Path] = set()

    @property
    def files(self) -> list[Path]:
        """The trace's files (``*.xplane.pb`` and friends), once it has stopped."""
        return sorted(p for p in self.run_dir.iterdir() if p.is_file()) if self.run_dir else []

    def step(self) -> None:
        """Mark the end of a step: the trace starts before step ``start`` and stops
        after step ``stop - 1`` (steps counted from 0 at the ``with``).

        Example::

            with torchtpu.monitor.profile("runs/x", steps=(3, 5)) as prof:
                for batch in loader:
                    train_step(*batch)
                    prof.step()
        """
        self.step_count += 1
        if self.steps is None:
            return
        start, stop = self.steps
        if self._tracing and self.step_count == stop:
            self._stop()
        elif not self._tracing and self.step_count == start:
            self._start()

    def __enter__(self) -> Profile:
        if self.steps is None or self.steps[0] == 0:
            self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tracing:
            self._stop()
        elif self.steps is not None and self.run_dir is None:
            warnings.warn(
                f"torchtpu.monitor.profile(steps={self.steps}): the block ended after "
                f"{self.step_count} step(s), before step {self.steps[0]}; no trace was "
                "written. Call .step() once per step.",
                stacklevel=2,
            )

    def __repr__(self) -> str:
        where = self.run_dir or self.logdir
        return f"Profile({str(where)!r}, steps={self.steps}, {len(self.files)} file(s))"

    def _start(self) -> None:
        _drain()
        self._before = set(_runs(self.logdir))
        try:
            jax.profiler.start_trace(str(self.logdir))
        except RuntimeError as exc:
            raise RuntimeError(
                f"torchtpu.monitor.profile({str(self.logdir)!r}): JAX's profiler is already "
                "tracing (another profile block, or jax.profiler.start_trace); stop that "
                "trace first: one trace runs at a time."
            ) from exc
        self._tracing = True

    def _stop(self) -> None:
        _drain()
        jax.profiler.stop_trace()
        self._tracing = False
        # Runs are named by the second they started: a trace within the same second as
        # the last one in this logdir shares its directory.
        runs = sorted(_runs(self.logdir), key=lambda p: (p not in self._before, p.stat().st_mtime))
        self.run_dir = runs[-1] if runs else None


def profile(
    logdir: str | os.PathLike[str], steps: tuple[int, int] | range | None = None
) -> Profile:
    """Trace a block with JAX's profiler into ``logdir``, for TensorBoard's profile plugin.

    ``steps=None`` traces the whole ``with`` block. ``steps=(start, stop)`` (or
    ``range(start, stop)``) traces exactly those steps, ``stop`` excluded: call
    ``.step()`` at the end of each step. After the block, ``.run_dir`` is the run's
    directory (``<logdir>/plugins/profile/<run>``) and ``.files`` its files. View it
    with ``pip install tensorboard-plugin-profile`` and ``tensorboard --logdir <logdir>``.

    Example::

        import torch, torchtpu.monitor

        with torchtpu.monitor.profile("runs/trace", steps=(2, 4)) as prof:
            for _ in range(6):
                torch.ones(256, 256, device="tpu").sum().item()
                prof.step()
        print(prof.files)
    """
    return Profile(logdir, _steps(steps))


def _steps(steps: tuple[int, int] | range | None) -> tuple[int, int] | None:
    if steps is None:
        return None
    if isinstance(steps, range):
        if steps.step != 1:
            raise ValueError(f"profile: steps={steps!r} must be consecutive (step 1)")
        steps = (steps.start, steps.stop)
    try:
        start, stop = (int(s) for s in steps)
    except (TypeError, ValueError):
        raise TypeError(f"profile: steps={steps!r} must be (start, stop) or a range") from None
    if not 0 <= start < stop:
        raise ValueError(f"profile: steps={steps!r} must have 0 <= start < stop")
    return start, stop


def _runs(logdir: Path) -> list[Path]:
    root = logdir / "plugins" / "profile"
    return [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []


def _drain() -> None:
    """Run what device mode has recorded and wait for every live array."""
    sync()
    for array in jax.live_arrays():
        with contextlib.suppress(RuntimeError):  # deleted (donated) since it was listed
            array.block_until_ready()
