"""DeviceLoader: batches on the device, the same random draws as eager, bitwise resume."""

from __future__ import annotations

import collections
import gc
import threading
import time
import warnings

import pytest
import torch

import torchtpu
from torchtpu.data import DeviceLoader
from torchtpu.data.loader import THREAD_NAME

# DataLoader workers fork a process that has JAX's threads; they never use JAX.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def _wait_no_threads(timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _prefetch_threads() == []


@pytest.fixture(autouse=True)
def no_leaked_threads():
    yield
    for thread in _prefetch_threads():  # an ended epoch's thread may still be returning
        thread.join(timeout=1.0)
    if _prefetch_threads():
        gc.collect()  # slow with torch and JAX loaded: only when a thread is left
        _wait_no_threads()


def _cpu(batch):
    return torch.utils._pytree.tree_map(
        lambda t: t.cpu() if isinstance(t, torch.Tensor) else t, batch
    )


def _assert_same(a, b) -> None:
    la, sa = torch.utils._pytree.tree_flatten(a)
    lb, sb = torch.utils._pytree.tree_flatten(b)
    assert sa == sb
    for x, y in zip(la, lb, strict=True):
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert torch.equal(x, y)
        else:
            assert x == y


# --- transfer -------------------------------------------------------------------------

Pair = collections.namedtuple("Pair", "a b")


def _batches() -> list:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "x": torch.randn(4, 3, generator=g),
            "half": torch.randn(4, 3, generator=g).bfloat16(),
            "ids": torch.randint(0, 2**40, (4,), generator=g),  # beyond int32
            "mask": torch.rand(4, generator=g) > 0.5,
            "nested": [torch.arange(6, dtype=torch.uint8).reshape(2, 3).t(), "name", 7],
            "pair": Pair(
                torch.randn(2, generator=g).half(), torch.tensor(3.5, dtype=torch.float64)
            ),
        }
        for _ in range(3)
    ]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_batches_arrive_on_tpu_with_their_dtypes_and_values(prefetch):
    batches = _batches()
    seen = list(DeviceLoader(batches, device_prefetch=prefetch))
    assert len(seen) == 3
    assert torchtpu.metrics()["host_to_device"] == 3 * 7
    for got, want in zip(seen, batches, strict=True):
        assert got["x"].device.type == "tpu" and got["nested"][0].device.type == "tpu"
        assert isinstance(got["pair"], Pair) and got["nested"][1:] == ["name", 7]
        _assert_same(_cpu(got), want)


def test_a_loader_refilling_one_tensor_does_not_change_queued_batches():
    buf = torch.zeros(3)

    def refill():
        for i in range(5):
            buf.fill_(i)
            yield buf

    loader = DeviceLoader(refill(), device_prefetch=4)
    it = iter(loader)
    time.sleep(0.2)  # the thread fills the queue while buf keeps changing
    assert [float(x.cpu()[0]) for x in it] == [0, 1, 2, 3, 4]


def test_tpu_tensors_and_other_leaves_pass_through():
    on_tpu = torch.ones(2, device="tpu")
    (got,) = DeviceLoader([(on_tpu, None, 1.5)])
    assert got[0] is on_tpu and got[1:] == (None, 1.5)


# --- the batches feed every front end ----------------------------------------------------


def _data() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(
        torch.randn(36, 8, generator=g), torch.randint(0, 4, (36,), generator=g)
    )


def _mlp(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    return model.to(device)


def _losses(front_end: str) -> list[float]:
    device = "cpu" if front_end in ("eager", "compile_step cpu") else "tpu"
    model = _mlp(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    forward = torch.compile(model, backend="tpu") if front_end == "torch.compile" else model

    def step(x, y):
        loss = torch.nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    if front_end.startswith("compile_step"):
        step = torchtpu.compile_step(step)
    loader = torch.utils.data.DataLoader(_data(), batch_size=12)
    if front_end != "eager":
        loader = DeviceLoader(loader)
    return [float(step(x, y)) for x, y in loader]


@pytest.mark.parametrize(
    "front_end", ["compile_step cpu", "compile_step tpu", "device mode", "torch.compile"]
)
def test_batches_train_every_front_end_as_eager_does(front_end):
    expected = _losses("eager")
    torch.testing.assert_close(_losses(front_end), expected, rtol=1e-5, atol=1e-5)


# --- RNG: draws where eager PyTorch makes them ----------------------------------------------


class _Noisy(torch.utils.data.Dataset):
    """Items with an augmentation drawn from the global RNG (in a worker: its own seed)."""

    def __init__(self, noise: bool = True) -> None:
        self.noise = noise

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int):
        return torch.full((2,), float(i)), torch.rand(2) if self.noise else torch.zeros(2)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_training_draws_are_those_of_eager_pytorch(prefetch):
    """The DataLoader's seeds come from the global RNG at iter() and the first next(),
    while the step draws from it too: both match a plain eager loop's."""

    def run(wrap):
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(range(40), batch_size=4, shuffle=True)
        batches, draws = [], []
        for _ in range(2):
            for b in wrap(loader):
                batches.append(b.cpu())
                draws.append(torch.rand(1))  # the step's dropout seed, say
        return batches, draws

    expected = run(lambda dl: dl)
    got = run(lambda dl: DeviceLoader(dl, device_prefetch=prefetch))
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(torch.cat(a), torch.cat(b))


# --- mid-epoch resume -------------------------------------------------------------------------


def _noisy_loader(noise: bool = True, **kwargs) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(_Noisy(noise), batch_size=4, shuffle=True, **kwargs)


def _collect(epoch_iter, limit=None):
    out = []
    for batch in epoch_iter:
        out.append(_cpu(batch))
        torch.rand(1)  # the step draws from the global RNG while the thread prefetches
        if limit is not None and len(out) == limit:
            break
    return out


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_workers": 2},
        {"num_workers": 0, "generator": "own"},
        {"num_workers": 0},
    ],
    ids=["workers", "own-generator", "global-rng"],
)
def test_resume_mid_epoch_is_bitwise(kwargs):
    def make():
        kw = dict(kwargs)
        if kw.get("generator") == "own":
            kw["generator"] = torch.Generator().manual_seed(5)
        # With num_workers=0, __getitem__ runs on the prefetch thread, concurrently with
        # the step's draws (documented): bitwise runs need workers for random items.
        return _noisy_loader(noise=kw["num_workers"] > 0, **kw)

    torch.manual_seed(0)
    straight = DeviceLoader(make())
    epochs = [_collect(straight) for _ in range(2)]

    torch.manual_seed(0)
    first = DeviceLoader(make())
    assert len(_collect(first)) == 10
    assert len(_collect(first, limit=5)) == 5
    saved_rng = torch.get_rng_state()  # a checkpoint saves the training RNG too
    state = first.state_dict()
    assert state["epoch"] == 1 and state["batches"] == 5
    del first

    torch.manual_seed(1234)  # a new process: another global RNG
    resumed = DeviceLoader(make())
    torch.set_rng_state(saved_rng)  # the checkpoint restores the training RNG
    resumed.load_state_dict(state)
    rest = _collect(resumed)
    assert resumed.stats()["skipped_batches"] == 5 and resumed.stats()["batches"] == 5
    assert len(rest) == 5
    for got, want in zip(rest, epochs[1][5:], strict=True):
        _assert_same(got, want)
    assert resumed.state_dict()["epoch"] == 2


def test_state_dict_counts_handed_batches_not_prefetched_ones():
    loader = DeviceLoader(list(range(20)), device_prefetch=4)
    it = iter(loader)
    for _ in range(3):
        next(it)
    time.sleep(0.1)  # the thread is 4 batches ahead by now
    state = loader.state_dict()
    assert state["epoch"] == 0 and state["batches"] == 3
    assert isinstance(state["rng_state"], torch.Tensor)
    list(it)
    assert loader.state_dict() == {
        "epoch": 1,
        "batches": 0,
        "rng_state": None,
        "generator_states": None,
    }


def test_an_epoch_left_early_counts_as_one():
    loader = DeviceLoader(list(range(6)))
    for _ in loader:
        break
    assert loader.state_dict()["epoch"] == 0
    assert list(loader) == list(range(6))
    assert loader.state_dict()["epoch"] == 2


class _Stateful:
    """A loader that keeps its own position, as torchdata's StatefulDataLoader does."""

    def __init__(self, n: int) -> None:
        self.n, self.pos = n, 0

    def __iter__(self):
        while self.pos < self.n:
            self.pos += 1
            yield self.pos - 1
        self.pos = 0

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]


def test_a_loader_with_its_own_state_dict_is_delegated_to():
    loader = DeviceLoader(_Stateful(12), device_prefetch=3)
    got = _collect(loader, limit=4)
    time.sleep(0.1)  # the inner loader has moved on, prefetching
    state = loader.state_dict()
    assert state == {"epoch": 0, "batches": 4, "inner": {"pos": 4}}
    fresh = DeviceLoader(_Stateful(12))
    fresh.load_state_dict(state)
    rest = [int(x) for x in fresh]
    assert [int(x) for x in got] + rest == list(range(12))
    assert fresh.stats()["skipped_batches"] == 0


# --- stats ------------------------------------------------------------------------------------


class _Slow:
    """A synthetic loader: each batch costs 10 ms of host time."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            time.sleep(0.01)
            yield torch.ones(8)


@pytest.mark.parametrize("prefetch, steps, low, high", [(2, 200, 0.0, 0.05), (0, 100, 0.20, 1.0)])
def test_prefetch_hides_a_loader_half_the_step_time(prefetch, steps, low, high):
    loader = DeviceLoader(_Slow(steps), device_prefetch=prefetch)
    for x in loader:
        time.sleep(0.02)  # the step
        (x * 2).sum().item()  # and a tiny device program, synced
    stats = loader.stats()
    assert stats["batches"] == steps
    assert low < stats["input_fraction"] < high, stats  # expected: ~0 and ~0.33
    if prefetch:
        assert stats["background_transfer_s"] > 0
    else:
        assert stats["background_transfer_s"] == 0 and stats["transfer_s"] > 0


def test_stats_definitions_add_up():
    loader = DeviceLoader(_Slow(5), device_prefetch=0)
    assert loader.stats()["input_fraction"] == 0.0
    for _ in loader:
        time.sleep(0.01)
    s = loader.stats()
    assert s["input_wait_s"] >= 5 * 0.01 and s["step_s"] >= 5 * 0.01 + 4 * 0.01
    assert s["input_fraction"] == pytest.approx((s["input_wait_s"] + s["transfer_s"]) / s["step_s"])


# --- errors, threads, arguments ------------------------------------------------------------


def _failing(n: int):
    for i in range(n):
        yield torch.tensor([i])
    raise KeyError("bad record 3")


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_loader_error_surfaces_in_next_with_its_traceback(prefetch):
    got = []
    with pytest.raises(KeyError, match="bad record 3") as info:
        for x in DeviceLoader(_failing(3), device_prefetch=prefetch):
            got.append(int(x))
    assert got == [0, 1, 2]
    assert any(entry.name == "_failing" for entry in info.traceback)


def test_a_transfer_error_names_the_tensor():
    qint = torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)
    it = iter(DeviceLoader([torch.ones(1), qint], device_prefetch=2))
    next(it)
    with pytest.raises(torchtpu.TorchTPUError, match="shape \\(2,\\) and dtype torch.qint8"):
        next(it)


def test_breaking_out_or_dropping_the_loader_stops_the_thread():
    loader = DeviceLoader(iter(range(10**6)), device_prefetch=2)
    for _ in loader:
        break
    _wait_no_threads()
    it = iter(DeviceLoader(iter(range(10**6)), device_prefetch=2))
    next(it)
    assert len(_prefetch_threads()) == 1
    del it
    gc.collect()
    _wait_no_threads()


def test_a_new_epoch_stops_the_previous_one_first():
    # Persistent workers: every iter() of the DataLoader resets the same iterator, so
    # the old thread must be out of it before the new epoch starts.
    dl = _noisy_loader(num_workers=2, persistent_workers=True)
    loader = DeviceLoader(dl, device_prefetch=2)
    for _ in loader:
        break
    assert len(_prefetch_threads()) == 1
    assert len(list(loader)) == 10
    _wait_no_threads()
    del loader, dl
    gc.collect()


def test_arguments_are_checked():
    with pytest.raises(TypeError, match="not a torchtpu.Strategy"):
        DeviceLoader([], strategy="data_parallel")
    with pytest.raises(ValueError, match="device_prefetch=-1"):
        DeviceLoader([], device_prefetch=-1)
    assert len(DeviceLoader(_noisy_loader())) == 10
    with pytest.raises(TypeError, match="has no len"):
        len(DeviceLoader(iter([])))
    assert list(DeviceLoader([])) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DeviceLoader([torch.ones(1)])
