"""On the CPU platform torchtpu keeps freed host memory in the process.

Checked by behaviour, in fresh processes: a large buffer freed and allocated
again must not page-fault its memory back in. With the option off, the same
script must fault (so the check can fail).
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only"
)

# Plain malloc and memset, as XLA:CPU's buffers are (numpy's own large
# allocations ask for huge pages, which would hide the difference).
SCRIPT = """
import ctypes, json, resource
import torchtpu.runtime.device as d
from jax._src import xla_bridge

d.default_device()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 256 << 20
pages = size // resource.getpagesize()

def touch():
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    return p

libc.free(touch())
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
libc.free(touch())
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults": faults, "pages": pages, "kept": d.host_memory_kept,
                  "async": xla_bridge._CPU_ENABLE_ASYNC_DISPATCH.value}))
"""


def _run(keep: str) -> dict:
    env = dict(os.environ, TORCHTPU_CPU_KEEP_HOST_MEMORY=keep, TORCHTPU_PLATFORM="cpu")
    env.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_memory_is_reused_without_page_faults():
    on = _run("1")
    assert on["kept"] is True and on["async"] is False
    assert on["faults"] < on["pages"] // 10, on


def test_option_off_leaves_the_allocator_alone():
    off = _run("0")
    assert off["kept"] is False and off["async"] is True
    # glibc maps a 256 MB block afresh each time, so nearly every page faults again.
    assert off["faults"] > off["pages"] * 9 // 10, off
