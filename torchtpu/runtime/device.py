"""Device choice, 64-bit scope and the persistent compilation cache."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import jax

from torchtpu.config import options
from torchtpu.errors import TorchTPUError
from torchtpu.metrics import bump

_ALIASES = {"cuda": "gpu", "rocm": "gpu"}


@functools.cache
def _device_for(platform: str | None) -> jax.Device:
    if platform is None:
        return jax.devices()[0]
    name = _ALIASES.get(platform, platform)
    try:
        return jax.devices(name)[0]
    except RuntimeError as exc:
        have = sorted({d.platform for d in jax.devices()})
        raise TorchTPUError(
            f"TORCHTPU_PLATFORM={platform!r} asks for a {name} device, but JAX found none "
            f"(JAX sees: {have}). Install the matching extra, e.g. `pip install "
            f"torchtpu[{'cuda' if name == 'gpu' else name}]`, or unset TORCHTPU_PLATFORM."
        ) from exc


def default_device() -> jax.Device:
    """The JAX device torchtpu runs programs on.

    Example::

        import torchtpu.runtime
        torchtpu.runtime.default_device().platform
    """
    return _device_for(options().platform)


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
