"""Real scripts, written the way people write them, run unchanged under `torchtpu run`.

Each script knows nothing of torchtpu: it uses CUDA when `torch.cuda.is_available()`
and the CPU otherwise. Each runs twice, as `python script.py` (eager PyTorch on the
CPU) and as `torchtpu run script.py` (the tpu device, strict mode, so no op may
fall back to eager), and the results are compared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
pytest.importorskip("transformers")


def _start(script: str, *args: str, tpu: bool, env: dict | None = None) -> subprocess.Popen:
    command = [sys.executable]
    command += ["-m", "torchtpu.cli", "run"] if tpu else []
    command += [str(HERE / script), *args]
    environment = {**os.environ, **(env or {})}
    if tpu:
        environment["TORCHTPU_STRICT"] = "1"
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    )


def _result(process: subprocess.Popen) -> dict:
    try:
        stdout, stderr = process.communicate(timeout=600)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-4000:]
    line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def _run(script: str, *args: str, tpu: bool) -> dict:
    return _result(_start(script, *args, tpu=tpu))


def _both(script: str, *args: str) -> tuple[dict, dict]:
    """The eager and the torchtpu run, side by side: most of each is one thread
    (imports, tracing, compiling), so two cores take both in little more than one."""
    eager, ours = _start(script, *args, tpu=False), _start(script, *args, tpu=True)
    return _result(eager), _result(ours)


def _close(a: list[float], b: list[float], rtol: float) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert abs(x - y) <= rtol * max(abs(y), 1e-6), (a, b)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "input.txt"
    words = "the quick brown fox jumps over the lazy dog while a cat naps in the sun".split()
    path.write_text(" ".join(words[(i * 7) % len(words)] for i in range(3000)))
    return path


def test_char_gpt_trainer_matches_eager_and_resumes_from_its_checkpoint(text_file, tmp_path):
    """torch.compile(model), bf16 autocast, GradScaler, pin_memory + non_blocking, fused
    AdamW, a cosine schedule, gradient accumulation, torch.save/torch.load checkpoints."""
    common = ["--data", str(text_file), "--max_iters", "8", "--dtype", "bfloat16"]
    ckpt = tmp_path / "t.pt"
    eager_run = _start(
        "chargpt.py", *common, "--out", str(tmp_path / "e.pt"), "--compile", "0", tpu=False
    )
    ours_run = _start("chargpt.py", *common, "--out", str(ckpt), "--save_at", "4", tpu=True)
    eager, ours = _result(eager_run), _result(ours_run)
    assert ours["device"] == "tpu:0"
    # bf16 autocast on both sides: XLA and eager round bf16 products differently.
    _close(ours["losses"], eager["losses"], rtol=2e-3)
    assert ours["losses"][-1] < ours["losses"][0]
    resumed = _run("chargpt.py", *common, "--out", str(ckpt), "--resume", tpu=True)
    _close(resumed["losses"], ours["losses"][4:], rtol=1e-4)


def test_image_classification_loop_with_dataloader_workers_matches_eager():
    """DataLoader with workers and pin_memory, SGD with momentum, BatchNorm, StepLR, eval."""
    eager, ours = _both("vision.py")
    _close(ours["losses"], eager["losses"], rtol=1e-4)
    assert ours["accuracy"] == pytest.approx(eager["accuracy"], abs=1 / 64 + 1e-9)
    _close(ours["running_mean"], eager["running_mean"], rtol=1e-3)


def test_huggingface_fine_tuning_loop_matches_eager():
    """AdamW, get_linear_schedule_with_warmup, clip_grad_norm_."""
    eager, ours = _both("finetune.py")
    _close(ours["losses"], eager["losses"], rtol=1e-4)
    for a, b in zip(ours["logits"], eager["logits"], strict=True):
        _close(a, b, rtol=1e-3)


def test_generation_greedy_and_sampled_matches_eager_with_bounded_compiles(tmp_path):
    # The two torchtpu runs go side by side, each with a disk cache of its own.
    runs = [
        _start("generate.py", "--new", "24", tpu=False),
        _start("generate.py", "--new", "24", tpu=True),
        _start("generate.py", "--new", "48", tpu=True, env={"TORCHTPU_CACHE_DIR": str(tmp_path)}),
    ]
    eager, ours, longer = (_result(r) for r in runs)
    assert ours["greedy"] == eager["greedy"]
    # Sampling draws on the host from PyTorch's generator, seeded alike on both sides.
    assert ours["sampled"] == eager["sampled"]
    # Twice the tokens, the same programs: the cache is static, the loop's growing
    # tensors stay on the host.
    assert longer["compiles"] == ours["compiles"] <= 8
