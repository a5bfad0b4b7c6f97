"""Starting a sharding test's worker on 8 virtual CPU devices and reading what it prints:
the subprocess side of tests/shard/test_spmd.py and test_expert.py (XLA_FLAGS must be set
before JAX starts, so the 8-device work runs in a process of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def start(script: str, args: list[str]) -> subprocess.Popen:
    """``python script *args`` with 8 virtual CPU devices, its output captured."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    return subprocess.Popen(
        [sys.executable, script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def collect(process: subprocess.Popen) -> dict:
    """The worker's JSON lines: ``{"runs": {(model, strategy): record}, "checks": ...}``."""
    try:
        stdout, stderr = process.communicate(timeout=900)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-4000:]
    out: dict = {"runs": {}, "checks": None}
    for line in stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if "checks" in record:
                out["checks"] = record["checks"]
            else:
                out["runs"][(record["model"], record["strategy"])] = record
    return out
