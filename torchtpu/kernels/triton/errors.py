"""The translator's error, and where in the user's kernel it happened.

A ``TritonTranslationError`` names the construct the translator cannot express (a ``tl``
function, the builder method Triton's semantic called for it, or a Python statement) and the
kernel's source ``file:line``, found by walking the Python stack for the innermost frame of a
kernel (or ``@triton.jit`` helper) the translator is running.
"""

from __future__ import annotations

import os
import sys

from torchtpu.errors import TorchTPUError

_KERNEL_FILES: set[str] = set()  # source files of the kernels and helpers being translated
_TL_DIR = os.sep + os.path.join("triton", "language") + os.sep


class TritonTranslationError(TorchTPUError):
    """A Triton kernel uses something outside the language subset torchtpu translates to JAX
    (see docs/triton.md, "Supported language").

    Example::

        try:
            kernel[grid](x, out, n, BLOCK=128)
        except TritonTranslationError as e:
            print(e)  # names the construct and the kernel's file:line
    """


def register_kernel_file(filename: str) -> None:
    """Frames from ``filename`` count as kernel source when an error is located."""
    _KERNEL_FILES.add(filename)


def kernel_location() -> str:
    """``file:line`` of the innermost kernel frame on the stack, or ``"unknown location"``."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename in _KERNEL_FILES:
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "unknown location"


def tl_function() -> str | None:
    """The outermost ``triton.language`` function on the stack (the ``tl.xyz`` the kernel
    called), or None."""
    frame, found = sys._getframe(1), None
    while frame is not None:
        name = frame.f_code.co_name
        if _TL_DIR in frame.f_code.co_filename and not name.startswith("_") and name != "wrapper":
            if "semantic.py" not in frame.f_code.co_filename:
                found = name
        if frame.f_code.co_filename in _KERNEL_FILES:
            break
        frame = frame.f_back
    return None if found is None else f"tl.{found}"


def unsupported(construct: str, why: str, fix: str = "") -> TritonTranslationError:
    """The error for ``construct`` at the current kernel line (raise it)."""
    called = tl_function()
    where = kernel_location()
    via = f"{called} (via {construct})" if called and called not in construct else construct
    msg = f"Triton kernel at {where}: {via} {why}"
    return TritonTranslationError(msg + (f"; {fix}" if fix else "") + ". See docs/triton.md.")
