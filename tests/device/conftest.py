"""Each device-mode test starts with an empty recorded graph and fresh fallback warnings."""

from __future__ import annotations

import pytest

from torchtpu.device import lazy, tensor


@pytest.fixture(autouse=True)
def empty_graph():
    lazy.sync("explicit")
    tensor._WARNED.clear()
    yield
    lazy.sync("explicit")
