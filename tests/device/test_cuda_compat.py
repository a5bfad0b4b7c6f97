"""patch_cuda() and `torchtpu run`: a CUDA training script runs unchanged on the tpu device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("cuda_script.py")


def _run(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=240, env=os.environ
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_cuda_script_runs_unchanged_under_torchtpu_run():
    result = _run("-m", "torchtpu.cli", "run", str(SCRIPT), "6")
    assert result["available"] is True
    assert result["param_device"] == "tpu:0"
    # torch.autocast("cuda") became autocast on tpu: the linear layer ran in bfloat16.
    assert result["out_dtype"] == "torch.bfloat16"
    losses = result["losses"]
    assert len(losses) == 6 and all(loss == loss for loss in losses)
    assert losses[-1] < losses[0]


def test_the_cuda_calls_scripts_make_are_mapped_or_refused_clearly():
    result = _run("-m", "torchtpu.cli", "run", str(SCRIPT.with_name("cuda_surface.py")))
    assert result["available"] and result["count"] == 1 and result["current"] == 0
    assert "torchtpu" in result["name"] and result["total_memory"] > 0
    assert result["bf16"] is True
    assert result["elapsed_ms_positive"] and result["y_device"] == "tpu:0"
    assert result["allocated_positive"] and result["peak_at_least_allocated"]
    assert result["rng_replays"] and result["fork_rng_replays"]
    assert result["loaded_device"] == "tpu:0" and result["loaded_equal"]
    graph, fraction = (result["refused"][k] for k in ("0", "1"))
    assert graph.startswith("TorchTPUError: torch.cuda.CUDAGraph has no counterpart")
    assert "torch.compile" in graph
    assert fraction.startswith("TorchTPUError: torch.cuda.set_per_process_memory_fraction")
    assert result["nccl_backend"] == "tpu" and result["nccl_all_reduce"] == [1.0, 1.0, 1.0]
