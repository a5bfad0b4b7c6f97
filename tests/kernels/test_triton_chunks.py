"""A translated launch whose programs, all at once, would make an array over
``options().triton_chunk_bytes`` runs its grid in chunks of programs (launch._Plan.bounded):
the same results, each chunk loading the buffers as they were before the launch."""

from __future__ import annotations

import logging
import os
import sys

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from torchtpu import config  # noqa: E402
from torchtpu.kernels.triton import launch  # noqa: E402
from torchtpu.kernels.triton.launch import launch_cpu  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import triton_kernels as tk  # noqa: E402


@triton.jit
def _scaled_sums(X, OUT, N, BLOCK: tl.constexpr):
    """Every program reads all of ``X``: at once, the programs hold ``programs x N`` values."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    x = tl.load(X + cols, mask=cols < N, other=0.0)
    tl.store(OUT + pid, tl.sum(x * (pid + 1).to(tl.float32), axis=0))


@triton.jit
def _shift_in_place(X, N, BLOCK: tl.constexpr):
    """``x[i] = x[i - 1]`` for ``i >= 1``: each program loads a block another program stores."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(X + offs - 1, mask=(offs >= 1) & (offs < N), other=0.0)
    tl.store(X + offs, v, mask=(offs >= 1) & (offs < N))


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(config.options(), "triton_chunk_bytes", 64 * 1024)
    monkeypatch.setattr(launch, "_PLANS", {})  # no plan traced under another limit


def _plans() -> list:
    return list(launch._PLANS.values())


def test_a_grid_over_the_limit_runs_in_chunks(small_chunks, caplog):
    n, programs = 1000, 64  # 64 x 1024 float32 at once: 256 KiB, four chunks of 64 KiB
    x = torch.randn(n)
    out = torch.empty(programs)
    with caplog.at_level(logging.INFO, logger="torchtpu"):
        launch_cpu(_scaled_sums, (programs,), x, out, n, BLOCK=1024)
    torch.testing.assert_close(out, x.sum() * torch.arange(1, programs + 1.0))
    assert [p.chunks for p in _plans()] == [4]
    assert "running them in 4 chunks" in caplog.text


def test_chunks_load_the_buffers_as_they_were_before_the_launch(small_chunks, monkeypatch):
    monkeypatch.setattr(config.options(), "triton_chunk_bytes", 4 * 1024)
    x = torch.randn(5000)
    want = torch.cat([x[:1], x[:-1]])
    launch_cpu(_shift_in_place, (triton.cdiv(5000, 256),), x, 5000, BLOCK=256)
    assert [p.chunks for p in _plans()] == [5]  # 20 KiB read at once
    torch.testing.assert_close(x, want, rtol=0, atol=0)


def test_atomics_and_strided_stores_across_chunks(small_chunks, monkeypatch):
    monkeypatch.setattr(config.options(), "triton_chunk_bytes", 16 * 1024)
    x = torch.randint(0, 256, (40000,), dtype=torch.int32)
    hist = torch.zeros(256, dtype=torch.int32)
    launch_cpu(tk.histogram_kernel, (triton.cdiv(40000, 1024),), x, hist, 40000, BLOCK=1024)
    torch.testing.assert_close(hist, torch.bincount(x, minlength=256).int())
    rows = torch.randn(300, 100)[:, ::2]  # a strided view: 300 rows of 50
    out = torch.empty(300, 50)
    s0, s1 = rows.stride()
    launch_cpu(tk.softmax_kernel, (300,), out, rows, s0, s1, out.stride(0), 50, BLOCK=64)
    torch.testing.assert_close(out, torch.softmax(rows, dim=1))
    assert all(p.chunks > 1 for p in _plans())


def test_under_the_limit_one_vmap():
    x = torch.randn(100)
    out = torch.empty(8)
    launch_cpu(_scaled_sums, (8,), x, out, 100, BLOCK=128)
    plan = next(p for p in _plans() if p.fn is _scaled_sums and p.n == 8)
    assert plan.chunks == 1
