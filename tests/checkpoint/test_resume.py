"""A killed run resumes exactly: bitwise resume across processes, and kill -9 mid-save.

The run (``_train.py``) has dropout, a shuffled DataLoader with two workers whose
dataset draws random augmentations, AdamW, a StepLR schedule, gradient
accumulation and bf16 autocast, in one ``compile_step``, fed by a DeviceLoader.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import _train
import pytest
import torch

from torchtpu import checkpoint

SCRIPT = Path(__file__).with_name("_train.py")
N = 5  # steps before the save; an epoch is 12 batches: the save is mid-epoch, the end in epoch 1


def _script(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(root), *args], capture_output=True, text=True, timeout=600
    )


def _result(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_n_steps_save_and_n_more_in_a_fresh_process_equal_2n_straight(tmp_path):
    straight = _train.build()
    straight_losses = _train.train(straight, 2 * N + 3)  # past the end of an epoch, too
    first = _train.build()
    manager = checkpoint.Manager(tmp_path)
    assert _train.train(first, N) == straight_losses[:N]
    manager.save(N, first["state"])
    manager.wait()
    del first  # its loader's workers, and its compiled step

    resumed = _result(_script(tmp_path, "--steps", str(2 * N + 3), "--resume", "--control"))
    assert resumed["losses"] == straight_losses[N:]  # bit-equal floats
    assert resumed["params"] == _train.params(straight["state"]["model"])
    # Negative control: the same resume with the RNG not restored differs.
    assert resumed["control_losses"] != straight_losses[N:]


@pytest.mark.parametrize("point, survivor", [("arrays", 3), ("manifest", 3), ("renamed", 4)])
def test_kill_9_mid_save_leaves_the_last_committed_checkpoint(tmp_path, point, survivor):
    """SIGKILL after the arrays are written, before the commit rename, after it: the
    latest checkpoint is step 3 or 4 (never a torn one) and restores bitwise."""
    done = _script(
        tmp_path, "--steps", "6", "--save-at", "3", "--save-at", "4", "--kill-at", point, "--eager"
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    manager = checkpoint.Manager(tmp_path)  # also cleans the killed writer's temporary
    assert manager.steps() == [3, 4] if survivor == 4 else manager.steps() == [3]
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())

    run = _train.build(seed=7, compiled=False)
    manager.restore(run["state"])
    assert run["state"]["step"] == survivor
    expected = json.loads((tmp_path / f"expected_{survivor}.json").read_text())
    assert _train.params(run["state"]["model"]) == expected
    # And it trains on from there.
    assert len(_train.train(run, survivor + 1)) == 1
    assert torch.isfinite(run["state"]["model"].head.weight).all()
