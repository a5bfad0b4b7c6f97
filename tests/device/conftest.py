"""Each device-mode test starts with an empty recorded graph and fresh fallback warnings."""

from __future__ import annotations

import pytest

from torchtpu.compile import fallback
from torchtpu.device import lazy


@pytest.fixture(autouse=True)
def empty_graph():
    lazy.sync("explicit")
    fallback.reset_warnings()
    yield
    lazy.sync("explicit")
