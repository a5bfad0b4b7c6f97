"""The persistent compilation cache makes a second process start warm."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json, torch, torchtpu
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
torch.compile(model, backend="tpu")(torch.randn(3, 16)).sum().backward()
m = torchtpu.metrics()
print(json.dumps({k: m[k] for k in ("compiles", "persistent_cache_hits",
                                     "persistent_cache_misses")}))
"""


def _start(script, cache_dir, cwd=None):
    env = {**os.environ, "TORCHTPU_CACHE_DIR": str(cache_dir)}
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )


def _counts(process):
    try:
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-2000:]
    return json.loads(stdout.strip().splitlines()[-1])


DEVICE_SCRIPT = """
import json, torch, torchtpu
torch.manual_seed(0)
model = torch.nn.Linear(16, 4).to("tpu")
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(2):
    model(torch.ones(3, 16, device="tpu")).square().sum().backward()
    opt.step()
m = torchtpu.metrics()
print(json.dumps({k: m[k] for k in ("compiles", "persistent_cache_hits",
                                     "persistent_cache_misses")}))
"""


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    """The first process of each test, all started at once (each is mostly one
    thread importing torch and JAX): the cold runs, and the one with no cache."""
    dirs = {k: tmp_path_factory.mktemp(k) for k in ("compile", "device", "empty")}
    runs = {
        "compile": _start(SCRIPT, dirs["compile"]),
        "device": _start(DEVICE_SCRIPT, dirs["device"]),
        "empty": _start(SCRIPT, "", cwd=dirs["empty"]),
    }
    return {k: (dirs[k], _counts(r)) for k, r in runs.items()}


def test_second_process_hits_the_disk_cache(cold):
    cache, first = cold["compile"]
    assert first["persistent_cache_hits"] == 0
    assert first["persistent_cache_misses"] == first["compiles"] == 2
    assert any(cache.iterdir())
    warm = _counts(_start(SCRIPT, cache))
    assert warm["persistent_cache_hits"] == 2
    assert warm["persistent_cache_misses"] == 0


def test_empty_cache_dir_disables_the_disk_cache(cold):
    cwd, counts = cold["empty"]
    assert counts["persistent_cache_hits"] == counts["persistent_cache_misses"] == 0
    assert os.listdir(cwd) == []  # nothing written where it ran either


def test_device_mode_programs_start_warm_from_the_disk_cache(cold):
    cache, first = cold["device"]
    assert first["persistent_cache_misses"] == first["compiles"] >= 1
    warm = _counts(_start(DEVICE_SCRIPT, cache))
    assert warm["persistent_cache_hits"] == first["compiles"]
    assert warm["persistent_cache_misses"] == 0
