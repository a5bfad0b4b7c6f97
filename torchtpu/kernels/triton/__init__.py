"""Users' Triton kernels on XLA devices: Triton's language translated to JAX (issue 15).

``import torchtpu`` installs the translator when the ``triton`` package is installed; then,
for tensors on ``tpu`` or the CPU, a ``@triton.jit`` kernel runs through XLA at every entry
point::

    add_kernel[grid](x, y, out, n, BLOCK=1024)             # eager code, device mode
    torch.compile(f, backend="tpu")                         # f launches it: part of the program
    @torch.library.triton_op("mylib::add", mutates_args={}) # wrap_triton(add_kernel)[grid](...)

CUDA tensors keep Triton's own path. See docs/kernels.md (entry points) and docs/triton.md
(the language subset translated). The names below other than :func:`install_if_available`
import ``triton`` on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

_LAZY = {
    "choose_config": "ops",
    "install": "ops",
    "normalize": "ops",
    "launch_cpu": "launch",
    "launch_tpu": "launch",
}

__all__ = ["install_if_available", *sorted(_LAZY)]


def install_if_available() -> bool:
    """Install the translator (``ops.install``) if the ``triton`` package is installed; return
    whether it is. A triton the translator cannot use is reported by a warning, not an error,
    so ``import torchtpu`` still works.

    Example::

        import torchtpu.kernels.triton as tt

        tt.install_if_available()  # what ``import torchtpu`` runs; True where triton is
    """
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        from torchtpu.kernels.triton.ops import install

        install()
    except (ImportError, AttributeError) as exc:
        import warnings

        warnings.warn(
            f"torchtpu: the installed triton cannot be used by torchtpu's Triton -> JAX "
            f"translator ({type(exc).__name__}: {exc}); kernel[grid](...) on tpu or CPU "
            "tensors will fail. Install the tested version: pip install triton==3.9.0.",
            stacklevel=2,
        )
        return False
    return True


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
    return getattr(module, name)
