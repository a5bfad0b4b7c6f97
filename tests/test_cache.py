"""The persistent compilation cache makes a second process start warm."""

import json
import os
import subprocess
import sys

SCRIPT = """
import json, torch, torchtpu
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
torch.compile(model, backend="tpu")(torch.randn(3, 16)).sum().backward()
m = torchtpu.metrics()
print(json.dumps({k: m[k] for k in ("compiles", "persistent_cache_hits",
                                     "persistent_cache_misses")}))
"""


def _run(cache_dir):
    env = {**os.environ, "TORCHTPU_CACHE_DIR": str(cache_dir)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_second_process_hits_the_disk_cache(tmp_path):
    cold = _run(tmp_path)
    assert cold["persistent_cache_hits"] == 0
    assert cold["persistent_cache_misses"] == cold["compiles"] == 2
    assert any(tmp_path.iterdir())
    warm = _run(tmp_path)
    assert warm["persistent_cache_hits"] == 2
    assert warm["persistent_cache_misses"] == 0


def test_empty_cache_dir_disables_the_disk_cache(tmp_path):
    cwd_before = set(os.listdir(tmp_path))
    env = {**os.environ, "TORCHTPU_CACHE_DIR": ""}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["persistent_cache_hits"] == counts["persistent_cache_misses"] == 0
    assert set(os.listdir(tmp_path)) == cwd_before


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


def test_device_mode_programs_start_warm_from_the_disk_cache(tmp_path):
    def run():
        env = {**os.environ, "TORCHTPU_CACHE_DIR": str(tmp_path)}
        result = subprocess.run(
            [sys.executable, "-c", DEVICE_SCRIPT],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    cold = run()
    assert cold["persistent_cache_misses"] == cold["compiles"] >= 1
    warm = run()
    assert warm["persistent_cache_hits"] == cold["compiles"]
    assert warm["persistent_cache_misses"] == 0
