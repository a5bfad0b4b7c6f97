"""Launching localhost jobs for the multi-process tests: free ports, a clean
environment, and ``torchrun --nproc_per_node=2`` on 127.0.0.1 only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A port free on 127.0.0.1 whose successor (JAX's coordinator) is free too."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no pair of free ports on 127.0.0.1")


def env(tmp_path: Path) -> dict[str, str]:
    """The environment of a launch: its own cache, on the CPU."""
    out = {**os.environ, "TORCHTPU_CACHE_DIR": str(tmp_path / "cache")}
    out.pop("TORCHTPU_PLATFORM", None)
    out["JAX_PLATFORMS"] = "cpu"
    return out


def torchrun(tmp_path: Path, *command: str, timeout: int = 240) -> None:
    """``torchrun --nproc_per_node=2 <command>`` on 127.0.0.1; fails the test if it fails."""
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    args += ["--master_addr=127.0.0.1", f"--master_port={free_port()}", *command]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env(tmp_path))
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-6000:])
