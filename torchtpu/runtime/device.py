"""Device choice, 64-bit scope and the persistent compilation cache."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from collections.abc import Iterator

import jax
from jax._src import xla_bridge

from torchtpu.config import options
from torchtpu.errors import TorchTPUError
from torchtpu.metrics import bump

_ALIASES = {"cuda": "gpu", "rocm": "gpu"}


def _run_cpu_programs_inline() -> None:
    """XLA:CPU allocates a program's temporaries on the thread that runs it.

    On JAX's dispatch threads they come from a per-thread glibc arena, which
    serves a block over 64 MB only with a fresh mmap, unmapped again when freed;
    on the calling thread they come from the main heap, which can keep them (see
    :func:`_keep_host_memory`). Only a CPU client not yet created reads the flag,
    so this runs at import, before anyone asks JAX for a device.
    """
    opts = options()
    if opts.cpu_keep_host_memory and opts.platform in {None, "cpu", "auto"}:
        if not xla_bridge.backends_are_initialized():
            jax.config.update("jax_cpu_enable_async_dispatch", False)


@functools.cache
def _device_for(platform: str | None) -> jax.Device:
    _run_cpu_programs_inline()
    device = _pick(platform)
    if options().cpu_keep_host_memory and device.platform == "cpu":
        _keep_host_memory()
    return device


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
host_memory_kept = False


def _keep_host_memory() -> None:
    """Make glibc keep freed heap memory for reuse.

    XLA:CPU has no caching allocator: each program run mallocs its outputs and
    temporaries and frees them after. glibc serves blocks over 32 MB with mmap
    and returns them with munmap, so a training step's 250 MB of temporaries
    page-fault back in on every step (about 64k faults and 0.1-0.3 s of kernel
    time per step on the gpt2-small benchmark). With mmap off and no trimming,
    freed blocks stay in the heap for the next step. The cost: memory the
    process frees is not returned to the OS while it runs.
    """
    global host_memory_kept
    if host_memory_kept or not sys.platform.startswith("linux"):
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc only; musl has none
    if mallopt is None:
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    host_memory_kept = bool(ok)


def _pick(platform: str | None) -> jax.Device:
    # Local devices: with one process per device (torchrun), jax.devices() starts
    # with process 0's device, which other processes cannot address.
    if platform is None:
        return jax.local_devices()[0]
    name = _ALIASES.get(platform, platform)
    try:
        return jax.local_devices(backend=name)[0]
    except RuntimeError as exc:
        have = sorted({d.platform for d in jax.devices()})
        raise TorchTPUError(
            f"TORCHTPU_PLATFORM={platform!r} asks for a {name} device, but JAX found none "
            f"(JAX sees: {have}). Install the matching extra, e.g. `pip install "
            f"torchtpu[{'cuda' if name == 'gpu' else name}]`, or unset TORCHTPU_PLATFORM."
        ) from exc


def default_device() -> jax.Device:
    """The JAX device torchtpu runs programs on.

    ``TORCHTPU_PLATFORM=auto`` leaves the choice to each ``torch.compile`` graph
    (:mod:`torchtpu.capture.auto`); everything else runs on JAX's default device.

    Example::

        import torchtpu.runtime
        torchtpu.runtime.default_device().platform
    """
    platform = options().platform
    return _device_for(None if platform == "auto" else platform)


def platforms_present() -> list[str]:
    """The JAX platforms with a local device here, fastest kind first:
    a subset of ``["tpu", "gpu", "cpu"]``.

    Example::

        from torchtpu.runtime.device import platforms_present
        assert "cpu" in platforms_present()
    """
    present = []
    for name in ("tpu", "gpu", "cpu"):
        try:
            if jax.local_devices(backend=name):
                present.append(name)
        except RuntimeError:  # no such backend in this JAX install, or no device
            continue
    return present


@contextlib.contextmanager
def platform_scope(platform: str) -> Iterator[None]:
    """Run torchtpu's programs on ``platform`` inside this scope, whatever the
    ``platform`` option says outside it (the ``auto`` choice runs each candidate so).

    Example::

        from torchtpu.runtime.device import platform_scope
        with platform_scope("cpu"):
            ...
    """
    opts = options()
    saved = opts.platform
    opts.platform = platform
    try:
        yield
    finally:
        opts.platform = saved


def platform_name() -> str:
    """``"cpu"``, ``"gpu"`` or ``"tpu"``: the platform of :func:`default_device`."""
    platform = default_device().platform
    return "gpu" if platform in {"cuda", "rocm"} else platform


_cache_configured: str | None = None
_listening = False


def _on_jax_event(event: str, **_: object) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        bump("persistent_cache_hits")
    elif event == "/jax/compilation_cache/cache_misses":
        bump("persistent_cache_misses")


def _configure_persistent_cache() -> None:
    """Point JAX's persistent compilation cache at torchtpu's cache directory.

    Set once per process; a later change of ``cache_dir`` takes effect too.
    """
    global _cache_configured, _listening
    if not _listening:
        jax.monitoring.register_event_listener(_on_jax_event)
        _listening = True
    cache_dir = options().cache_dir
    if cache_dir == _cache_configured:
        return
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        # Cache every program: small ones are what a warm start is made of.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    else:
        jax.config.update("jax_compilation_cache_dir", None)
    _cache_configured = cache_dir


@contextlib.contextmanager
def jax_scope() -> Iterator[jax.Device]:
    """Run JAX code the way torchtpu's programs need it.

    64-bit types are on only inside this scope (PyTorch's int64 indices and
    float64 tensors keep their width), so a user's own JAX code elsewhere in the
    process keeps JAX's 32-bit default. The default device is torchtpu's.
    """
    _configure_persistent_cache()
    device = default_device()
    with jax.enable_x64(True), jax.default_device(device):
        yield device


_run_cpu_programs_inline()
