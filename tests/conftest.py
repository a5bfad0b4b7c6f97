"""Shared fixtures: each test starts with fresh Dynamo state, counters and options."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# A private persistent cache, so tests neither read nor fill the user's; removed at exit.
if "TORCHTPU_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="torchtpu-test-cache-")
    os.environ["TORCHTPU_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

import torchtpu  # noqa: E402

torch._dynamo.config.recompile_limit = 64


@pytest.fixture(autouse=True)
def fresh_state():
    saved = torchtpu.Options(**vars(torchtpu.options()))
    torch._dynamo.reset()
    torchtpu.reset_metrics()
    yield
    torchtpu.set_options(**vars(saved))
