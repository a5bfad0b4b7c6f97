"""PyTorch's own distributed code on torchtpu: two localhost processes, one device each.

Each scenario is one launch (they are the slow part): an unchanged CUDA/NCCL
DDP script under `torchrun ... --no-python torchtpu run`, compared with the
same global batches in one eager CPU process; every collective of the ``tpu``
process group plus FSDP2 under plain torchrun; and a process that dies.
Only 127.0.0.1 is used.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _torchrun import env as _env  # tests/distributed, on sys.path
from _torchrun import free_port as _free_port
from _torchrun import torchrun as _torchrun

SCRIPTS = Path(__file__).with_name("scripts")
TORCHTPU = Path(sys.executable).with_name("torchtpu")


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _close(a: list[float], b: list[float], rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert abs(x - y) <= atol + rtol * abs(y), (a, b)


@pytest.mark.skipif(not TORCHTPU.exists(), reason="the torchtpu console script is not installed")
def test_unchanged_cuda_ddp_script_matches_one_process(tmp_path):
    script = str(SCRIPTS / "ddp_train.py")
    ref = tmp_path / "ref.json"
    # The one-process reference runs alongside the two-process job.
    reference_run = subprocess.Popen(
        [sys.executable, script, "--out", str(ref), "--world", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp_path),
    )
    out = tmp_path / "ddp.json"
    try:
        _torchrun(tmp_path, "--no-python", str(TORCHTPU), "run", script, "--out", str(out))
        _, stderr = reference_run.communicate(timeout=120)
    finally:
        reference_run.kill()
    assert reference_run.returncode == 0, stderr[-3000:]
    reference = _load(ref)
    ranks = [_load(Path(f"{out}.{r}")) for r in range(2)]
    for result in ranks:
        assert result["world"] == 2 and result["param_device"] == "tpu:0"
        _close(result["losses"], reference["losses"])
        assert result["params"].keys() == reference["params"].keys()
        for name, values in reference["params"].items():
            _close(result["params"][name], values)
    # DDP keeps the replicas bit-identical: every rank applied the same averaged gradient.
    assert ranks[0]["params"] == ranks[1]["params"]
    assert reference["losses"][-1] < reference["losses"][0]


def test_collectives_and_fsdp2_over_two_processes(tmp_path):
    out = tmp_path / "c.json"
    _torchrun(tmp_path, str(SCRIPTS / "collectives.py"), str(out))
    ranks = [_load(Path(f"{out}.{r}")) for r in range(2)]
    for r, got in enumerate(ranks):
        assert got["sum"] == [1.0, 3.0, 5.0, 7.0]
        assert got["avg"] == [0.5, 1.5, 2.5, 3.5]
        assert got["min"] == [5.0, -2.0]
        assert got["prod_0d"] == 6.0
        assert got["int64"] == [3, 2**41]
        assert got["bool_min"] == [False, True]
        assert got["band"] == [6, 0]
        assert got["async"] == [2.0, 4.0]
        assert got["all_gather"] == [[[0.0] * 3] * 2, [[1.0] * 3] * 2]
        assert got["all_gather_into_tensor"] == [[0.0] * 3] * 2 + [[1.0] * 3] * 2
        assert got["reduce_scatter_tensor"] == [[0.0, 3.0], [6.0, 9.0]][r]
        assert got["reduce_scatter"] == [[1.0, 1.0], [21.0, 21.0]][r]
        assert got["broadcast"] == [6.0, 6.0, 6.0]
        assert got["all_to_all_single"] == [[0.0, 1.0, 10.0, 11.0], [2.0, 3.0, 12.0, 13.0]][r]
        assert got["cpu_all_reduce"] == [3.0, 3.0, 3.0]
        assert got["all_gather_object"] == [{"rank": 0}, {"rank": 1}]
        errors = got["errors"]
        assert errors["premul_sum"].startswith("CollectiveError: allreduce on torch.float32[1]")
        assert "PREMUL_SUM" in errors["premul_sum"] and "ranks [0, 1]" in errors["premul_sum"]
        assert "BAND needs integer" in errors["band_float"]
        assert "only even splits" in errors["uneven_a2a"]
        assert "all on tpu" in errors["mixed"] and "on cpu" in errors["mixed"]
        assert errors["send"].startswith("CollectiveError: send on torch.float32[1] on tpu:0")
        # FSDP2: each rank holds half of each weight, and training matches one process.
        assert got["fsdp_shard_shape"] == [4, 4]
        _close(got["fsdp_losses"], got["ref_losses"])
        assert got["fsdp_max_diff"] < 1e-5
        # Unsharded parameters are freed between uses (no full-size buffer is live).
        assert got["fsdp_live_full_params"] == []
        assert "after its storage was freed" in got["fsdp_unsharded_read"]
        assert "torch.float32[8, 4]" in got["fsdp_unsharded_read"]
        # The tpu tensors went through XLA collectives, not a host round trip.
        assert "c10d allreduce over 2 processes" in got["programs"]
        assert "c10d reduce_scatter over 2 processes" in got["programs"]
        # Nothing fell back: functional collectives in compiled graphs are XLA collectives.
        assert got["fallbacks"] == {}
        assert got["funcol_eager"] == [3.0, 3.0]
        assert got["funcol_compiled"] == [7.0, 7.0]
        assert got["inplace_compiled"] == 18.0
        assert got["cpu_compiled"] == [2.0, 2.0, 4.0, 4.0]
        assert got["compiled_collectives"] == ["all-gather", "all-reduce"]
        lowered = got["lowered"]
        assert lowered["all_reduce"] == [10.0, 12.0, 14.0, 16.0]
        assert lowered["all_gather"] == [0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0]
        assert lowered["reduce_scatter"] == [[10.0, 12.0], [14.0, 16.0]][r]
        assert lowered["all_to_all"] == [[0.0, 1.0, 10.0, 11.0], [2.0, 3.0, 12.0, 13.0]][r]
        assert lowered["broadcast"] == [10.0, 11.0, 12.0, 13.0]
        assert "traced over the process mesh" in got["refused_outside_mesh"]
    assert ranks[1]["solo"] == [3.0] and "solo" not in ranks[0]
    for got in ranks:
        # DTensor: ColwiseParallel/RowwiseParallel over a DeviceMesh of the two processes.
        assert got["tp_shard_shape"] == [4, 4]
        _close(got["tp_losses"], got["tp_ref"])
        # The same under torch.compile: collectives in the forward and backward programs.
        _close(got["tp_compiled_losses"], got["tp_compiled_ref"])
        assert got["tp_compiled_graphs"] == {"forward": True, "backward": True}
        # Compiled DDP and FSDP2 models train as one process on the whole batch.
        assert got["ddp_compiled_max_diff"] < 1e-5
        assert got["fsdp2_compiled_max_diff"] < 1e-5
        # compile_step whose step all-reduces its own gradients (funcol).
        _close(got["step_losses"], got["step_ref"])
        assert got["step_max_diff"] < 1e-5
        # compile_step over the two processes' devices, each with half the batch.
        assert got["spmd_devices"] == 2
        _close(got["spmd_losses"], got["spmd_ref"])
        assert got["spmd_max_diff"] < 1e-5
        # The same with the model moved to tpu first.
        assert got["spmd_tpu_devices"] == 2
        _close(got["spmd_tpu_losses"], got["spmd_tpu_ref"])
        assert got["spmd_tpu_max_diff"] < 1e-5


def test_a_dead_process_stops_the_others(tmp_path):
    """Rank 1 exits abruptly; rank 0, launched without torchrun (which would kill it
    for us), must stop on its own with an error, well within a minute."""
    port = _free_port()
    env = _env(tmp_path)
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        TORCHTPU_HEARTBEAT_TIMEOUT="10",
    )
    script = str(SCRIPTS / "dies.py")
    procs = []
    for rank in range(2):
        env_r = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        procs.append(
            subprocess.Popen(
                [sys.executable, script],
                env=env_r,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        assert procs[1].wait(timeout=120) == 17
        died = time.monotonic()
        code = procs[0].wait(timeout=90)
        waited = time.monotonic() - died
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    out, err = procs[0].communicate()
    assert "rank 0 first all_reduce [2.0, 2.0, 2.0, 2.0]" in out
    assert "never stopped" not in out
    assert code != 0, err[-3000:]
    # Stopped by the failed collective, or (between collectives) by JAX's heartbeat.
    assert (
        "CollectiveError: c10d allreduce of float32[4] over ranks [0, 1] failed" in err
        or "heartbeat timeout" in err
    ), err[-3000:]
    assert waited < 60, (waited, err[-3000:])
