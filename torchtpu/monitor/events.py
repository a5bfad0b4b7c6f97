"""``torchtpu.monitor.TensorBoard``: scalars to a TensorBoard run, with no device sync.

The caller's thread only takes each logged value (:func:`~torchtpu.monitor.scalars.take`:
a host number is converted, a device value has its copy to the host started)
and puts a record on a queue. A writer thread waits for the device values,
works out the built-in scalars, and writes the events with PyTorch's
``SummaryWriter`` (the ``tensorboard`` package's event files).

The built-ins are timed by the writer: a step whose values came from the
device is stamped when they reached the host, so ``step_time_s`` follows the
device's pace even while the host dispatches steps ahead of it. A step whose
values were all on the host is stamped when ``log()`` was called.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import os
import queue
import threading
import time
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from torchtpu.metrics import metrics
from torchtpu.monitor import scalars
from torchtpu.monitor.flops import FlopsSource, step_flops

PREFIX = "torchtpu/"
# Counters whose change since the last logged step is logged, and what they sum.
COUNTERS = {
    "compiles": ("compiles",),
    "host_transfers": ("host_to_device", "device_to_host", "size_reads"),
}

_clock = time.perf_counter  # tests replace it to check the built-ins' arithmetic


@dataclasses.dataclass
class _Record:
    step: int
    values: dict[str, Any]  # name -> float, or a device value on its way to the host
    clock: float
    walltime: float
    tokens_per_step: float | None
    flops_per_step: float | None
    peak_flops: float | None
    counters: dict[str, int]


class TensorBoard:
    """Log scalars to a TensorBoard run in ``logdir``, every ``every`` steps, without
    making the device wait: device values reach the host on a writer thread.

    ``log(step, loss=..., lr=...)`` writes when ``step % every == 0``; call it every
    step (other steps cost a counter update). Values may be Python or numpy numbers,
    one-element torch tensors (CPU or ``tpu``) or jax arrays. Besides them it writes
    ``torchtpu/step_time_s`` (wall time per step since the last logged step),
    ``torchtpu/tokens_per_s`` (with ``tokens_per_step=`` or ``log(..., tokens=)``),
    ``torchtpu/mfu`` (with ``flops_per_step=``, a number or a
    :class:`~torchtpu.CompiledStep` whose program's cost analysis gives it, and
    ``peak_flops=``), and the changes in torchtpu's counters ``torchtpu/compiles``
    and ``torchtpu/host_transfers`` (uploads, reads and size reads).

    Example::

        import torch, torchtpu.monitor

        with torchtpu.monitor.TensorBoard("runs/example", every=10) as tb:
            for step in range(100):
                loss = torch.tensor(1.0 / (step + 1))
                tb.log(step, loss=loss, lr=1e-3)
        # tensorboard --logdir runs/example
    """

    def __init__(
        self,
        logdir: str | os.PathLike[str],
        every: int = 10,
        *,
        tokens_per_step: float | None = None,
        flops_per_step: FlopsSource = None,
        peak_flops: float | None = None,
        flush_secs: float = 10.0,
    ) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"TensorBoard: every={every!r} must be a positive int")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError(
                "torchtpu.monitor.TensorBoard writes with the tensorboard package: "
                "pip install tensorboard"
            ) from exc
        self.logdir = Path(logdir)
        self.every = every
        self.tokens_per_step = tokens_per_step
        self.flops_per_step = flops_per_step
        self.peak_flops = peak_flops
        self._tokens: list[float] = []  # tokens= of each call since the last logged step
        self._counted = self._counters()
        self._closed = False
        writer = SummaryWriter(str(self.logdir), flush_secs=flush_secs)
        self._worker = _Worker(writer)
        self._finalizer = weakref.finalize(self, self._worker.close)

    def log(
        self,
        step: int,
        values: Mapping[str, Any] | None = None,
        /,
        *,
        tokens: float | None = None,
        **named: Any,
    ) -> None:
        """Log scalars for ``step``; written only when ``step % every == 0``.

        Pass them as keywords (``loss=...``) or, for names that are not identifiers
        (``"loss/train"``), as a mapping. ``tokens=`` is the number of tokens this
        step processed (else ``tokens_per_step``). Never waits for the device.

        Example::

            tb.log(step, loss=loss, lr=sched.get_last_lr()[0], tokens=x.numel())
        """
        self._raise_if_failed()
        if self._closed:
            raise RuntimeError(f"TensorBoard({str(self.logdir)!r}) is closed; make a new one")
        step = _as_step(step)
        if tokens is not None:
            if not isinstance(tokens, numbers.Real):
                raise TypeError(
                    f"TensorBoard.log: tokens= must be a Python number (e.g. x.numel()), got "
                    f"{type(tokens).__name__}"
                )
            self._tokens.append(float(tokens))
        if step % self.every:
            return
        taken = {
            name: scalars.take(name, value, step)
            for name, value in {**(values or {}), **named}.items()
        }
        counted = self._counters()
        record = _Record(
            step=step,
            values=taken,
            clock=_clock(),
            walltime=time.time(),
            tokens_per_step=(
                sum(self._tokens) / len(self._tokens) if self._tokens else self.tokens_per_step
            ),
            flops_per_step=step_flops(self.flops_per_step),
            peak_flops=self.peak_flops,
            counters={k: counted[k] - self._counted[k] for k in COUNTERS},
        )
        self._counted = counted
        self._tokens = []
        self._worker.put(record)

    @property
    def latest(self) -> dict[str, float]:
        """The last written step's values, with ``"step"``: user scalars by their names,
        built-ins by theirs (``"torchtpu/step_time_s"``). Empty before the first write."""
        return dict(self._worker.latest)

    def flush(self) -> None:
        """Wait until every logged step is written to disk (waiting for its device values).

        Example::

            tb.flush()
        """
        self._worker.drain()
        self._raise_if_failed()

    def close(self) -> None:
        """Write what is left and close the event file. Example: ``tb.close()``."""
        if not self._closed:
            self._closed = True
            self._finalizer()
        self._raise_if_failed()

    def __enter__(self) -> TensorBoard:
        return self

    def __exit__(self, kind: type | None, *exc: object) -> None:
        if kind is None:
            self.close()
            return
        with contextlib.suppress(RuntimeError):  # the block's own error is the one to see
            self.close()

    def __repr__(self) -> str:
        return f"TensorBoard({str(self.logdir)!r}, every={self.every})"

    def _counters(self) -> dict[str, int]:
        snap = metrics()
        return {name: sum(snap[k] for k in keys) for name, keys in COUNTERS.items()}

    def _raise_if_failed(self) -> None:
        error, self._worker.error = self._worker.error, None
        if error is not None:
            raise RuntimeError(
                f"TensorBoard({str(self.logdir)!r}): the writer thread failed: {error}"
            ) from error


def _as_step(step: Any) -> int:
    # Not a tensor, even an integer one: reading a device tensor's value would wait for it.
    if not isinstance(step, torch.Tensor):
        with contextlib.suppress(AttributeError, TypeError):
            return step.__index__()
    raise TypeError(
        f"TensorBoard.log: step must be an int (the loop's step counter), got "
        f"{type(step).__name__} {step!r}"
    )


class _Worker:
    """The writer thread and what only it touches: the previous step's time and the
    ``SummaryWriter``. Holds no reference to its TensorBoard, so that one can be
    collected (and this closed) when the user drops it."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.latest: dict[str, float] = {}
        self.error: BaseException | None = None
        self._queue: queue.Queue[_Record | None] = queue.Queue()
        self._previous: tuple[int, float] | None = None
        self._thread = threading.Thread(target=self._run, name="torchtpu-monitor", daemon=True)
        self._thread.start()

    def put(self, record: _Record) -> None:
        self._queue.put(record)

    def drain(self) -> None:
        self._queue.join()
        self.writer.flush()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self.writer.close()

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            try:
                if record is None:
                    return
                self._write(record)
            except Exception as exc:  # raised on the caller's thread by its next call
                self.error = self.error or exc
            finally:
                self._queue.task_done()

    def _write(self, record: _Record) -> None:
        values, from_device = {}, False
        for name, value in record.values.items():
            from_device |= not isinstance(value, float)
            try:
                values[name] = scalars.to_host(value)
            except RuntimeError as exc:
                if "deleted" not in str(exc):
                    raise
                warnings.warn(
                    f"torchtpu.monitor: scalar {name!r} at step {record.step} was not "
                    "written: its device buffer was donated to a later step before it "
                    "reached the host. Log a value the step returns, not its state.",
                    stacklevel=1,
                )
        clock = _clock() if from_device else record.clock
        walltime = time.time() if from_device else record.walltime
        values.update(self._builtins(record, clock))
        for name, value in values.items():
            self.writer.add_scalar(name, value, record.step, walltime=walltime)
        self.latest = {"step": float(record.step), **values}

    def _builtins(self, record: _Record, clock: float) -> dict[str, float]:
        out = {PREFIX + name: float(n) for name, n in record.counters.items()}
        previous, self._previous = self._previous, (record.step, clock)
        if previous is None or record.step <= previous[0] or clock <= previous[1]:
            return out
        step_time = (clock - previous[1]) / (record.step - previous[0])
        out[PREFIX + "step_time_s"] = step_time
        if record.tokens_per_step:
            out[PREFIX + "tokens_per_s"] = record.tokens_per_step / step_time
        if record.flops_per_step and record.peak_flops:
            out[PREFIX + "mfu"] = record.flops_per_step / step_time / record.peak_flops
        return out
