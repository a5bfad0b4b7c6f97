"""``DeviceLoader``: host-to-device prefetch, input-pipeline stats, mid-epoch resume.

One epoch is one ``iter()`` of the loader. On the consumer's thread it records
the RNG state the epoch starts from, calls ``iter()`` on the inner loader and
pulls the first batch; a background thread pulls the rest, copies them to the
device with ``jax.device_put`` and waits for each copy, keeping a bounded
queue of batches that are already there. The consumer's ``next()`` only wraps
the device buffers as ``tpu`` tensors.

Where the random draws happen matters as much as the batches. PyTorch's
global generator is shared by all threads: a ``DataLoader`` draws its workers'
base seed (and, with workers, the shuffle order) when ``iter()`` is called,
and with ``num_workers=0`` draws the shuffle seed at the first ``next()``;
the training step draws dropout seeds from the same generator. Those draws
stay on the consumer's thread at the points where eager PyTorch makes them,
so a run draws the same numbers with or without prefetch.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
import torch
from torch.utils import _pytree as pytree

from torchtpu.device.tensor import from_array
from torchtpu.errors import TorchTPUError
from torchtpu.lower.dtypes import to_jax_dtype, to_numpy
from torchtpu.metrics import bump
from torchtpu.runtime import default_device
from torchtpu.shard.strategy import Strategy

THREAD_NAME = "torchtpu-DeviceLoader"
_POLL_S = 0.05  # how often a blocked producer or consumer looks whether the other side left


class _OnDevice:
    """A batch leaf the producer moved: its device buffer and the torch dtype to wrap it as."""

    __slots__ = ("array", "dtype", "nbytes")

    def __init__(self, array: jax.Array, dtype: torch.dtype, nbytes: int) -> None:
        self.array, self.dtype, self.nbytes = array, dtype, nbytes


class _Moved:
    """A batch whose CPU tensors are device buffers: flat leaves and the pytree spec."""

    __slots__ = ("leaves", "spec")

    def __init__(self, leaves: list[Any], spec: pytree.TreeSpec) -> None:
        self.leaves, self.spec = leaves, spec


class _Failure:
    """An exception raised on the producer's thread, to be raised on the consumer's."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


def _host_array(t: torch.Tensor) -> np.ndarray:
    """A NumPy array of CPU tensor ``t``'s value, in the dtype JAX holds it as."""
    if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):  # NumPy has no float8: go by bits
        bits = t.detach().contiguous().view(torch.uint8).numpy()
        return bits.view(np.dtype(to_jax_dtype(t.dtype)))
    return to_numpy(t)


def _moves(leaf: Any) -> bool:
    return (
        isinstance(leaf, torch.Tensor)
        and leaf.device.type == "cpu"
        and leaf.layout == torch.strided
    )


def _transfer(batch: Any, device: Any) -> _Moved:
    """Copy ``batch``'s CPU tensors to ``device`` (a JAX device, or a strategy that
    splits each tensor's first dimension over its mesh) and wait for the copies.

    On the CPU platform ``jax.device_put`` may keep the NumPy array's memory as
    the device buffer (``may_alias=False`` notwithstanding, in JAX 0.10), and a
    loader that refills one tensor in place would change batches already
    queued: there the host array is copied first.
    """
    strategy = device if isinstance(device, Strategy) else None
    if strategy is not None:
        device = next(iter(strategy.mesh.devices.flat))
    copy = device.platform == "cpu"
    leaves, spec = pytree.tree_flatten(batch)
    out: list[Any] = []
    with jax.enable_x64(True):  # int64 and float64 keep their width
        for leaf in leaves:
            if not _moves(leaf):
                out.append(leaf)
                continue
            try:
                host = _host_array(leaf)
                host = np.array(host, copy=True) if copy else host
                if strategy is not None:
                    array = strategy.place_batch(f"DeviceLoader batch leaf {len(out)}", host)
                else:
                    array = jax.device_put(host, device)
            except TorchTPUError:
                raise
            except Exception as exc:
                raise TorchTPUError(
                    f"DeviceLoader could not copy a batch tensor of shape {tuple(leaf.shape)} "
                    f"and dtype {leaf.dtype} to the device ({type(exc).__name__}: {exc}). "
                    "Convert it to a supported dtype in the dataset or collate_fn."
                ) from exc
            out.append(_OnDevice(array, leaf.dtype, leaf.numel() * leaf.element_size()))
    jax.block_until_ready([x.array for x in out if isinstance(x, _OnDevice)])
    return _Moved(out, spec)


def _wrap(moved: _Moved) -> Any:
    """The batch as the user sees it: each moved leaf a ``tpu`` tensor. Consumer's thread."""
    leaves = []
    for leaf in moved.leaves:
        if isinstance(leaf, _OnDevice):
            bump("host_to_device")
            bump("host_to_device_bytes", leaf.nbytes)
            leaf = from_array(leaf.array, leaf.dtype)
        leaves.append(leaf)
    return pytree.tree_unflatten(leaves, moved.spec)


class _Stats:
    __slots__ = (
        "batches",
        "skipped",
        "input_wait_s",
        "transfer_s",
        "background_transfer_s",
        "step_s",
    )

    def __init__(self) -> None:
        self.batches = self.skipped = 0
        self.input_wait_s = self.transfer_s = self.background_transfer_s = self.step_s = 0.0


class _Progress:
    """Where the current epoch stands, as the user has seen it (prefetched batches excluded)."""

    __slots__ = ("epoch", "in_progress", "batches", "rng_state", "generator_states", "inner")

    def __init__(self) -> None:
        self.epoch = 0
        self.in_progress = False
        self.batches = 0
        self.rng_state: torch.Tensor | None = None
        self.generator_states: list[torch.Tensor] | None = None
        self.inner: Any = None  # the inner loader's own state, when it has one


# Every prefetch thread still running, with its stop event; a thread outlives its
# epoch's objects (a ``break`` only asks it to stop), so exit must find it here.
_RUNNING: dict[threading.Thread, threading.Event] = {}


def _produce(*args: Any) -> None:
    try:
        _pump(*args)
    finally:
        _RUNNING.pop(threading.current_thread(), None)


def _pump(
    it: Iterator,
    out: queue.Queue,
    stop: threading.Event,
    device: jax.Device,
    stats: _Stats,
    snapshot: Callable[[], Any] | None,
) -> None:
    """The prefetch thread: pull, copy, queue, until the epoch ends or the consumer leaves.

    It holds no reference to the consumer's iterator, so dropping that iterator
    (a ``break``, garbage collection) is what tells this thread to stop.
    """
    while not stop.is_set():
        item: Any
        try:
            batch = next(it)
        except StopIteration:
            item = _END
        except BaseException as exc:  # raised again on the consumer's thread
            item = _Failure(exc)
        else:
            try:
                state = snapshot() if snapshot is not None else None
                start = time.perf_counter()
                moved = _transfer(batch, device)
                stats.background_transfer_s += time.perf_counter() - start
                item = (moved, state)
            except BaseException as exc:
                item = _Failure(exc)
        while True:
            try:
                out.put(item, timeout=_POLL_S)
                break
            except queue.Full:
                if stop.is_set():
                    return
        if not isinstance(item, tuple):
            return


class _Pipe:
    """The prefetch thread of one epoch and its bounded queue."""

    def __init__(
        self,
        it: Iterator,
        depth: int,
        device: jax.Device,
        stats: _Stats,
        snapshot: Callable[[], Any] | None,
    ) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=_produce,
            args=(it, self.queue, self.stop, device, stats, snapshot),
            name=THREAD_NAME,
            daemon=True,
        )
        _RUNNING[self.thread] = self.stop
        self.thread.start()

    def get(self) -> Any:
        while True:
            try:
                return self.queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    return _Failure(
                        RuntimeError("DeviceLoader's prefetch thread ended unexpectedly")
                    )

    def close(self, join: bool = False) -> None:
        self.stop.set()
        while True:  # free the queued device buffers now
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        if join and self.thread is not threading.current_thread():
            self.thread.join()


@atexit.register
def _stop_all() -> None:
    """At interpreter exit, stop and join every prefetch thread still running (its
    epoch may be long gone): a daemon thread still inside a device copy or a
    DataLoader's worker queue while the runtime shuts down aborts the process
    ("terminate called without an active exception")."""
    running = list(_RUNNING.items())
    for _, stop in running:
        stop.set()
    for thread, _ in running:
        thread.join(timeout=10)


class _Epoch(Iterator):
    """The iterator of one epoch: what ``iter(device_loader)`` returns."""

    def __init__(
        self,
        first: tuple[_Moved, Any] | None,
        source: Iterator | _Pipe | None,
        snapshot: Callable[[], Any] | None,
        progress: _Progress,
        stats: _Stats,
        started: float,
        where: Any = None,
    ) -> None:
        self._first = first
        self._source = source
        self._snapshot = snapshot
        self._progress = progress
        self._stats = stats
        self._last = started
        self._device = where if where is not None else default_device()
        self._closed = False
        self._finalizer = (
            weakref.finalize(self, source.close) if isinstance(source, _Pipe) else None
        )
        if first is None:  # an empty epoch
            self._finish()

    def __next__(self) -> Any:
        if self._closed:
            raise StopIteration
        stats = self._stats
        if self._first is not None:  # loaded and copied by ``iter()``, already counted
            (moved, state), self._first = self._first, None
        elif isinstance(self._source, _Pipe):
            start = time.perf_counter()
            item = self._source.get()
            stats.input_wait_s += time.perf_counter() - start
            if item is _END:
                self._finish()
                raise StopIteration
            if isinstance(item, _Failure):
                self.close()
                exc = item.exc
                if hasattr(exc, "add_note"):
                    exc.add_note("(raised on DeviceLoader's prefetch thread)")
                raise exc
            moved, state = item
        else:
            start = time.perf_counter()
            try:
                batch = next(self._source)
            except StopIteration:
                stats.input_wait_s += time.perf_counter() - start
                self._finish()
                raise
            loaded = time.perf_counter()
            stats.input_wait_s += loaded - start
            moved = _transfer(batch, self._device)
            stats.transfer_s += time.perf_counter() - loaded
            state = self._snapshot() if self._snapshot is not None else None
        out = _wrap(moved)
        now = time.perf_counter()
        stats.step_s += now - self._last
        self._last = now
        stats.batches += 1
        self._progress.batches += 1
        self._progress.inner = state
        return out

    def _finish(self) -> None:
        """The epoch ran to its end: the loader's state moves on to the next one."""
        p = self._progress
        p.epoch += 1
        p.in_progress = False
        p.batches = 0
        p.rng_state = p.generator_states = p.inner = None
        self.close()

    def close(self, join: bool = False) -> None:
        """Stop this epoch: the prefetch thread ends and queued batches are freed."""
        self._closed = True
        self._first = None
        source, self._source = self._source, None
        if isinstance(source, _Pipe):
            self._finalizer.detach()
            source.close(join=join)


class DeviceLoader(Iterable):
    """Batches of ``loader``, already on the ``tpu`` device when the training step asks.

    ``loader`` is any iterable of batches (a ``torch.utils.data.DataLoader``
    included). A batch is a tensor or a tuple, list or dict of them, nested as
    deep as needed; its CPU tensors arrive as ``tpu`` tensors of the same
    dtype, anything else (strings, numbers, tensors on other devices, objects
    that are not containers) is passed through unchanged.

    A background thread pulls batches, copies them to the device with
    ``jax.device_put`` and waits for the copy, so that loading and transfer
    overlap the step; it keeps ``device_prefetch`` batches ready (0: no
    thread, each ``next()`` loads and copies on the caller's thread). Each
    ``iter()`` is one epoch. On the caller's thread ``iter()`` records the RNG
    state, calls ``iter(loader)`` and pulls the first batch, where eager
    PyTorch draws a DataLoader's seeds; the thread makes only the later
    ``next()`` calls. Draws a dataset makes in ``__getitem__`` with
    ``num_workers=0`` therefore happen on the prefetch thread, concurrently
    with the step's: for bit-reproducible runs give the DataLoader workers, or
    make those draws from a generator of the dataset's own.

    Breaking out of the loop, or dropping the iterator, stops the thread. An
    exception in ``loader`` or in the copy is raised by the ``next()`` that
    would have returned that batch, with its traceback from the thread.

    ``strategy``: a :class:`torchtpu.Strategy`; each batch tensor goes to its
    mesh with its first dimension split over the strategy's data axes (with
    several processes, each loader gives its own rows of the global batch),
    as ``compile_step(..., strategy=strategy)`` takes it.

    Example::

        import torch, torchtpu.data
        data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,)))
        loader = torchtpu.data.DeviceLoader(torch.utils.data.DataLoader(data, batch_size=16))
        for x, y in loader:
            assert x.device.type == "tpu"
        loader.stats()["batches"]  # 4
    """

    def __init__(self, loader: Iterable, device_prefetch: int = 2, strategy: Any = None) -> None:
        if strategy is not None and not isinstance(strategy, Strategy):
            raise TypeError(f"DeviceLoader(strategy={strategy!r}): not a torchtpu.Strategy")
        self.strategy = strategy
        if isinstance(device_prefetch, bool) or not isinstance(device_prefetch, int):
            raise TypeError(f"device_prefetch must be an int, got {device_prefetch!r}")
        if device_prefetch < 0:
            raise ValueError(
                f"device_prefetch={device_prefetch}: it is how many batches wait on the device, "
                "0 or more (0 loads each batch when it is asked for)"
            )
        self.loader = loader
        self.device_prefetch = device_prefetch
        self._delegate = callable(getattr(loader, "state_dict", None)) and callable(
            getattr(loader, "load_state_dict", None)
        )
        self._progress = _Progress()
        self._stats = _Stats()
        self._resume: dict[str, Any] | None = None
        self._running: weakref.ref[_Epoch] | None = None
        self._pipe: _Pipe | None = None

    def _where(self) -> Any:
        return self.strategy if self.strategy is not None else default_device()

    def __len__(self) -> int:
        """The inner loader's ``len()``: batches in a whole epoch."""
        try:
            return len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(f"{type(self.loader).__name__} has no len()") from None

    def __iter__(self) -> Iterator[Any]:
        """Start an epoch (or resume the one ``load_state_dict`` gave); see the class doc."""
        self._stop_running()
        started = time.perf_counter()
        resume, self._resume = self._resume, None
        p = self._progress
        if resume is None and p.in_progress:  # the previous epoch was left early
            p.epoch += 1
        p.in_progress, p.batches = True, 0
        try:
            it, first, skip = self._start(resume)
        except BaseException:
            self._resume, p.in_progress = resume, False  # a retry resumes the same way
            raise
        stats = self._stats
        try:
            for _ in range(skip):  # fast-forward: loaded and dropped
                first = next(it)
            stats.skipped += skip
            p.batches = skip
        except StopIteration:
            first = _END
        loaded = time.perf_counter()
        stats.input_wait_s += loaded - started
        snapshot = self.loader.state_dict if self._delegate else None
        ready = None
        if first is not _END:
            ready = (_transfer(first, self._where()), snapshot() if snapshot else None)
            stats.transfer_s += time.perf_counter() - loaded
        source: Iterator | _Pipe = it
        if ready is not None and self.device_prefetch > 0:
            source = self._pipe = _Pipe(it, self.device_prefetch, self._where(), stats, snapshot)
        del it, first
        epoch = _Epoch(ready, source, snapshot, p, stats, started, self._where())
        self._running = weakref.ref(epoch)
        return epoch

    def _start(self, resume: dict[str, Any] | None) -> tuple[Iterator, Any, int]:
        """``iter()`` and the first ``next()`` of the inner loader, under the epoch's RNG.

        Returns the iterator, the first batch (or ``_END``) and how many more
        batches to drop to reach where ``resume`` left off.
        """
        p, inner = self._progress, self.loader
        if self._delegate:
            if resume is not None:
                inner.load_state_dict(resume["inner"])
            p.inner = resume["inner"] if resume is not None else inner.state_dict()
            it = iter(inner)
            return it, next(it, _END), 0
        gens = _generators(inner)
        restore = resume is not None and resume.get("rng_state") is not None
        if restore:
            states = resume["generator_states"] or []
            if len(states) != len(gens):
                raise TorchTPUError(
                    f"DeviceLoader.load_state_dict: the state records {len(states)} generator(s) "
                    f"of the loader and its sampler, but this loader has {len(gens)}. Build the "
                    "DataLoader as it was built when the state was saved."
                )
            p.rng_state = _byte_state(resume["rng_state"])
            p.generator_states = [_byte_state(s) for s in states]
            current = torch.get_rng_state()
            torch.set_rng_state(p.rng_state)
            for g, s in zip(gens, p.generator_states, strict=True):
                g.set_state(s)
        else:
            p.rng_state = torch.get_rng_state()
            p.generator_states = [g.get_state() for g in gens]
        try:
            it = iter(inner)
            first = next(it, _END)
        finally:
            if restore:  # the training RNG, restored by the checkpoint, continues untouched
                torch.set_rng_state(current)
        return it, first, resume["batches"] if restore else 0

    def _stop_running(self) -> None:
        epoch = self._running() if self._running is not None else None
        if epoch is not None:
            epoch.close()
        if self._pipe is not None:
            # A DataLoader with persistent workers hands every iter() the same iterator:
            # the old thread must be out of it before the new epoch starts.
            self._pipe.close(join=True)
        self._running = self._pipe = None

    def stats(self) -> dict[str, float]:
        """How much of the step time went to waiting for input, over the loader's life.

        - ``batches``: batches handed to the caller (skipped ones excluded).
        - ``input_wait_s``: time the caller's ``next()`` (and ``iter()``, which
          loads each epoch's first batch) blocked waiting for a batch. With
          ``device_prefetch=0`` it includes loading; with prefetch, only waits
          on the queue.
        - ``transfer_s``: host-to-device time on the caller's thread: every
          batch's with ``device_prefetch=0``, only each epoch's first batch's
          with prefetch.
        - ``background_transfer_s``: host-to-device time on the prefetch thread,
          off the critical path.
        - ``step_s``: the caller's step time: the sum, over batches handed out,
          of the time since the previous one was (for an epoch's first batch,
          since ``iter()`` was called).
        - ``input_fraction``: ``(input_wait_s + transfer_s) / step_s``, 0 before
          any batch.
        - ``skipped_batches``: batches loaded and dropped to resume an epoch.

        Example::

            loader = torchtpu.data.DeviceLoader([torch.ones(2)] * 3)
            for x in loader:
                pass
            loader.stats()["batches"]  # 3
        """
        s = self._stats
        critical = s.input_wait_s + s.transfer_s
        return {
            "batches": s.batches,
            "input_wait_s": s.input_wait_s,
            "transfer_s": s.transfer_s,
            "background_transfer_s": s.background_transfer_s,
            "step_s": s.step_s,
            "input_fraction": critical / s.step_s if s.step_s > 0 else 0.0,
            "skipped_batches": s.skipped,
        }

    def state_dict(self) -> dict[str, Any]:
        """Where the epoch stands, as plain data: resume it with :meth:`load_state_dict`.

        Keys: ``epoch`` (the current epoch, or the next one between epochs),
        ``batches`` (batches of it handed to the caller; batches prefetched
        but not yet handed out are not counted), and what recreates the
        epoch's order: ``rng_state`` (``torch.get_rng_state()`` just before the
        epoch's ``iter()``) and ``generator_states`` (the states of the
        DataLoader's and its sampler's own generators then), both ``None``
        between epochs. If the inner loader has ``state_dict``/``load_state_dict``
        (torchdata's ``StatefulDataLoader``), ``inner`` holds its state as of the
        last batch handed out instead of the RNG states. Values are ints,
        lists, ``None`` and CPU tensors. Call it on the thread that iterates.

        Example::

            state = loader.state_dict()  # {"epoch": 1, "batches": 5, "rng_state": ..., ...}
        """
        if self._resume is not None:
            return dict(self._resume)
        p = self._progress
        state: dict[str, Any] = {"epoch": p.epoch, "batches": p.batches if p.in_progress else 0}
        if self._delegate:
            state["inner"] = p.inner if p.in_progress else self.loader.state_dict()
        else:
            on = p.in_progress and p.rng_state is not None
            state["rng_state"] = p.rng_state.clone() if on else None
            state["generator_states"] = [s.clone() for s in p.generator_states] if on else None
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next ``iter()`` resume the epoch ``state`` was taken in.

        The next ``iter()`` sets the recorded RNG state(s), calls the inner
        loader's ``iter()`` and first ``next()``, puts the global RNG state back
        as it was (so the training RNG, restored by the checkpoint, continues
        untouched) and drops the ``batches`` already consumed. With a plain
        DataLoader those are loaded and dropped (fast-forward: it costs their
        loading time, not their transfer); a loader with its own
        ``load_state_dict`` resumes itself and nothing is dropped. Resumed
        batches are bit-identical to an uninterrupted run's when the epoch's
        order comes from the RNG (``shuffle=True``, worker seeds) and the
        DataLoader is built as it was.

        Example::

            loader = torchtpu.data.DeviceLoader(make_dataloader())
            loader.load_state_dict(checkpoint["loader"])
            for batch in loader:  # the rest of the saved epoch
                ...
        """
        need = {"epoch", "batches"} | ({"inner"} if self._delegate else {"rng_state"})
        missing = need - set(state)
        if missing:
            kind = "its inner loader's state" if self._delegate else "RNG states"
            raise TorchTPUError(
                f"DeviceLoader.load_state_dict: the state lacks {sorted(missing)}. This loader "
                f"resumes from {kind}; pass a state_dict() of a DeviceLoader around the same "
                "kind of loader."
            )
        self._stop_running()
        p = self._progress
        p.epoch, p.in_progress, p.batches = int(state["epoch"]), False, 0
        p.rng_state = p.generator_states = p.inner = None
        self._resume = dict(state)


def _byte_state(state: Any) -> torch.Tensor:
    """An RNG state as ``torch.set_rng_state`` takes it, however the checkpoint loaded it."""
    if isinstance(state, torch.Tensor):
        return state.to("cpu", torch.uint8)
    return torch.tensor(state, dtype=torch.uint8)


def _generators(loader: Any) -> list[torch.Generator]:
    """The CPU generators of ``loader``, its sampler and its batch sampler's sampler."""
    found: list[torch.Generator] = []
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (
        loader,
        getattr(loader, "sampler", None),
        getattr(batch_sampler, "sampler", None),
    ):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and g.device.type == "cpu":
            if all(g is not seen for seen in found):
                found.append(g)
    return found
