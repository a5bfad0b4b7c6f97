"""torchtpu.monitor: TensorBoard scalars read back by TensorBoard's own reader, logged
without a device read on the caller's thread; profiler traces; the progress bar."""

from __future__ import annotations

import gc
import io
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax._src.array import ArrayImpl
from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)

import torchtpu
import torchtpu.monitor as monitor
from torchtpu.device.tensor import device_array
from torchtpu.metrics import bump
from torchtpu.monitor import events

# Counters that move when torchtpu reads from the device.
READS = ("device_to_host", "size_reads")


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    assert "tensorflow" not in sys.modules
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _f32(x: float) -> float:
    return float(np.float32(x))  # TensorBoard's scalar events hold float32


class _ReadSpy:
    """Records the thread of every read of a jax array: its Python entry points
    (``__array__``, ``float``, ``item``, ``_value``, ``__dlpack__``,
    ``block_until_ready``) and the functions that take the buffer protocol's way
    around them (``np.asarray``, ``np.array``, ``jax.device_get``); marks those made
    inside ``TensorBoard.log``."""

    METHODS = ("__array__", "__float__", "__int__", "__dlpack__", "item", "tolist")
    FUNCTIONS = ((np, "asarray"), (np, "array"), (jax, "device_get"))

    def __init__(self, monkeypatch) -> None:
        self.reads: list[tuple[int, bool]] = []
        self.in_log = False
        for name in (*self.METHODS, "block_until_ready"):
            monkeypatch.setattr(ArrayImpl, name, self._wrap(getattr(ArrayImpl, name)))
        value = ArrayImpl._value
        monkeypatch.setattr(ArrayImpl, "_value", property(self._wrap(value.fget)))
        for module, name in self.FUNCTIONS:
            monkeypatch.setattr(module, name, self._wrap(getattr(module, name)))
        log = events.TensorBoard.log

        def spied_log(tb, *args, **kwargs):
            self.in_log = True
            try:
                return log(tb, *args, **kwargs)
            finally:
                self.in_log = False

        monkeypatch.setattr(events.TensorBoard, "log", spied_log)

    def _wrap(self, fn):
        def read(*args, **kwargs):
            if args and isinstance(args[0], jax.Array):
                self.reads.append((threading.get_ident(), self.in_log))
            return fn(*args, **kwargs)

        return read

    def callers_reads_in_log(self) -> int:
        me = threading.get_ident()
        return sum(1 for ident, in_log in self.reads if ident == me and in_log)

    def other_threads_reads(self) -> int:
        me = threading.get_ident()
        return sum(1 for ident, _ in self.reads if ident != me)


def test_every_kind_of_value_reads_back_at_the_logged_steps(tmp_path):
    history = []
    with monitor.TensorBoard(tmp_path, every=5) as tb:
        for step in range(12):
            values = {
                "py": step / 3,
                "np": np.float32(step) * 2,
                "cpu": torch.tensor([step + 0.5]),
                "tpu": torch.full((), 0.25, device="tpu") * step,  # recorded, not yet run
                "jax": jnp.float32(step) - 1,
                "bf16": torch.tensor(step / 7, dtype=torch.bfloat16).to("tpu"),
            }
            tb.log(step, {"loss/train": step * 0.1}, **values)
            history.append(values)
    read = _scalars(tmp_path)
    for name in history[0]:
        expected = [(s, _f32(_number(history[s][name]))) for s in (0, 5, 10)]
        assert read[name] == expected, name
    assert read["loss/train"] == [(0, _f32(0.0)), (5, _f32(0.5)), (10, _f32(1.0))]
    builtins = {t for t in read if t.startswith("torchtpu/")}
    assert builtins == {"torchtpu/compiles", "torchtpu/host_transfers", "torchtpu/step_time_s"}
    assert [s for s, _ in read["torchtpu/step_time_s"]] == [5, 10]  # none before a previous


def _number(v) -> float:
    return v.float().cpu().item() if isinstance(v, torch.Tensor) else float(v)


def test_log_never_reads_the_device_on_the_callers_thread(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1).to("tpu")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    @torchtpu.compile_step
    def train_step(x, y):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    spy = _ReadSpy(monkeypatch)
    losses, norms = [], []
    x, y = torch.randn(8, 4).to("tpu"), torch.randn(8, 1).to("tpu")
    with monitor.TensorBoard(tmp_path, every=2, flops_per_step=train_step, peak_flops=1e9) as tb:
        for step in range(5):
            loss = train_step(x, y)  # a tpu tensor holding the program's output buffer
            norm = model.weight.detach().norm()  # recorded in device mode
            torchtpu.sync()  # run it now, so that log() has nothing to run either
            losses.append(loss)
            norms.append(norm)
            raw = device_array(loss, "explicit")  # the jax array itself
            before = torchtpu.metrics()
            with jax.transfer_guard_device_to_host("disallow"):  # enforced off the CPU
                tb.log(step, loss=loss, w_norm=norm, raw=raw)
            after = torchtpu.metrics()
            assert [after[k] for k in READS] == [before[k] for k in READS]
            assert after["syncs"] == before["syncs"]
    assert spy.callers_reads_in_log() == 0
    assert spy.other_threads_reads() >= 9  # the writer read the 3 values of steps 0, 2, 4
    read = _scalars(tmp_path)
    assert read["loss"] == [(s, _f32(losses[s].item())) for s in (0, 2, 4)]
    assert read["raw"] == read["loss"]
    assert read["w_norm"] == [(s, _f32(norms[s].item())) for s in (0, 2, 4)]
    assert [s for s, _ in read["torchtpu/mfu"]] == [2, 4]
    assert read["torchtpu/compiles"][0][1] >= 1 and read["torchtpu/compiles"][1][1] == 0
    assert monitor.step_flops(train_step) == sum(
        p.cost_analysis()["flops"] for p in train_step.executor.programs
    )


def test_built_in_scalars_are_per_step_rates_since_the_last_logged_step(tmp_path, monkeypatch):
    ticks = iter([10.0, 15.0, 17.0, 20.0, 24.0])
    monkeypatch.setattr(events, "_clock", lambda: next(ticks))
    tb = monitor.TensorBoard(
        tmp_path, every=10, tokens_per_step=1000, flops_per_step=2e9, peak_flops=1e12
    )
    for step in range(21):
        if step == 13:
            bump("compiles", 3)
            bump("host_to_device", 2)
            bump("device_to_host", 1)
        tb.log(step, loss=1.0)
    for step in range(21, 31):  # tokens= given per step overrides tokens_per_step
        tb.log(step, loss=1.0, tokens=step)
    tb.close()
    read = _scalars(tmp_path)
    approx = pytest.approx
    assert read["torchtpu/step_time_s"] == [(10, 0.5), (20, approx(0.2)), (30, approx(0.3))]
    tokens = read["torchtpu/tokens_per_s"]
    assert tokens == [(10, 2000.0), (20, approx(5000.0)), (30, approx(25.5 / 0.3, rel=1e-6))]
    assert read["torchtpu/mfu"][:2] == [(10, approx(2e9 / 0.5 / 1e12)), (20, approx(0.01))]
    assert read["torchtpu/compiles"] == [(0, 0.0), (10, 0.0), (20, 3.0), (30, 0.0)]
    assert read["torchtpu/host_transfers"] == [(0, 0.0), (10, 0.0), (20, 3.0), (30, 0.0)]


@pytest.mark.parametrize(
    "value, shape, dtype",
    [
        (torch.ones(2, 3), "(2, 3)", "torch.float32"),
        (torch.ones(4, device="tpu"), "(4,)", "torch.float32"),
        (jnp.ones((2, 2), jnp.int32), "(2, 2)", "int32"),
        (np.zeros(3), "(3,)", "float64"),
    ],
    ids=["cpu", "tpu", "jax", "numpy"],
)
def test_a_value_that_is_not_one_number_is_refused_by_name_shape_and_dtype(
    tmp_path, value, shape, dtype
):
    with monitor.TensorBoard(tmp_path) as tb:
        with pytest.raises(ValueError, match="not one") as info:
            tb.log(0, grad_norm=value)
    text = str(info.value)
    assert "'grad_norm'" in text and shape in text and dtype in text and "reduce it" in text


def test_other_mistakes_are_explained(tmp_path):
    with monitor.TensorBoard(tmp_path) as tb:
        with pytest.raises(ValueError, match="complex"):
            tb.log(0, z=torch.tensor(1j))
        with pytest.raises(TypeError, match="'name' at step 0 is a str"):
            tb.log(0, name="loss")
        with pytest.raises(TypeError, match="step must be an int"):
            tb.log(torch.tensor(0.5), loss=1.0)
    with pytest.raises(RuntimeError, match="closed"):
        tb.log(0, loss=1.0)
    with pytest.raises(ValueError, match="every"):
        monitor.TensorBoard(tmp_path, every=0)


def test_a_failing_writer_is_reported_on_the_callers_thread(tmp_path, monkeypatch):
    tb = monitor.TensorBoard(tmp_path)

    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(tb._worker.writer, "add_scalar", full_disk)
    tb.log(0, loss=1.0)
    with pytest.raises(RuntimeError, match="writer thread failed: No space left"):
        tb.flush()
    tb.close()


def test_a_monitor_dropped_without_close_still_writes_its_steps(tmp_path):
    tb = monitor.TensorBoard(tmp_path, every=1)
    tb.log(0, loss=jnp.float32(3.0))
    del tb
    gc.collect()
    assert _scalars(tmp_path)["loss"] == [(0, 3.0)]


def test_progress_shows_the_last_written_values(tmp_path):
    out = io.StringIO()
    with monitor.TensorBoard(tmp_path, every=2) as tb:
        bar = monitor.progress(range(4), monitor=tb, file=out, mininterval=0)
        for step in bar:
            tb.log(step, loss=torch.tensor(0.5 + step))
            tb.flush()  # so the bar, right after this step, sees it written
        bar.close()
    assert "step/s" in out.getvalue()
    assert bar.postfix == "step=2, loss=2.5"


def test_profile_traces_the_chosen_steps_and_the_whole_block(tmp_path):
    f = jax.jit(lambda a: (a @ a).sum())
    a = jnp.ones((64, 64))
    with monitor.profile(tmp_path / "steps", steps=range(1, 3)) as prof:
        for step in range(5):
            f(a).block_until_ready()
            prof.step()
            assert (prof.run_dir is not None) == (step >= 2)  # stopped after step 2
    with monitor.profile(tmp_path / "block") as whole:
        f(a).block_until_ready()
    for p in (prof, whole):
        assert p.run_dir.parent == p.logdir / "plugins" / "profile"
        planes = [f for f in p.files if f.name.endswith(".xplane.pb")]
        assert planes and all(f.stat().st_size > 0 for f in planes)
    with pytest.raises(ValueError, match="start < stop"):
        monitor.profile(tmp_path, steps=(3, 3))
