"""Every switch torchtpu reads, in one place.

Each option has an environment variable (read once, at import) and can be
changed at run time with :func:`set_options`. ``docs/debugging.md`` lists them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _default_cache_dir() -> str:
    if "TORCHTPU_CACHE_DIR" in os.environ:
        return os.environ["TORCHTPU_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "torchtpu" / "xla")


@dataclasses.dataclass
class Options:
    """torchtpu's run-time options.

    platform: ``"cpu"``, ``"gpu"``, ``"tpu"`` or ``"auto"`` (each ``torch.compile`` graph
        times the platforms present and keeps the fastest); ``None`` picks JAX's default
        device (TPU, else GPU, else CPU). Env: ``TORCHTPU_PLATFORM``.
    strict: turn every eager fallback into an error. Env: ``TORCHTPU_STRICT``.
    cache_dir: JAX persistent compilation cache; ``""`` disables it.
        Env: ``TORCHTPU_CACHE_DIR`` (default ``~/.cache/torchtpu/xla``).
    debug: record where each compile came from. Env: ``TORCHTPU_DEBUG``.
    cpu_opt_level: XLA:CPU's backend optimization level for our programs. 1
        compiles about twice as fast as XLA's default (2) with the same step
        times in our training benchmarks. Env: ``TORCHTPU_CPU_OPT_LEVEL``.
    eager: device mode runs each op at once (asynchronously) instead of
        recording it into a fused program. Env: ``TORCHTPU_EAGER``.
    blocking: device mode runs each op at once and waits for it, so an error
        is raised at the Python line that caused it. Env: ``TORCHTPU_BLOCKING``.
    max_graph_ops: device mode runs the recorded graph once it holds this many
        ops. Env: ``TORCHTPU_MAX_GRAPH_OPS`` (default 20000).
    cpu_keep_host_memory: on the CPU platform, where XLA's buffers are the
        process's own heap, keep freed memory for reuse instead of handing it
        back to the kernel, and run XLA:CPU programs on the calling thread. A
        training step's temporaries (hundreds of MB) then reuse the same pages
        each step instead of page-faulting fresh ones in. Read when torchtpu
        first picks its device. Env: ``TORCHTPU_CPU_KEEP_HOST_MEMORY=0`` turns
        it off (default on).
    warn_recompiles: after this many recompiles of one graph (new input shapes),
        warn once, naming the graph's line and the dimensions that varied.
        Env: ``TORCHTPU_WARN_RECOMPILES`` (default 8; 0 never warns).
    max_recompiles: the recompile after this many is a :class:`RecompileError`
        instead; ``None`` (the default) sets no limit. Env: ``TORCHTPU_MAX_RECOMPILES``.
    bucket: ``"pow2"`` pads the dimensions marked with
        :func:`torchtpu.mark_bucketed` up to the next power of two, so a graph
        compiles once per bucket rather than once per size; ``None`` (default)
        leaves every shape as it is. ``torch.compile`` only. Env: ``TORCHTPU_BUCKET``.
    check_bounds: indexing ops (``index``, ``index_select``, ``gather``,
        ``scatter*``, ``index_put``, ``embedding``, ``take``) check their
        indices inside the program, and an index out of range raises
        ``IndexError`` when the program's results are next read.
        Env: ``TORCHTPU_CHECK_BOUNDS=0`` turns it off (default on).
    debug_nans: a program whose floating-point outputs hold a NaN or Inf is
        re-run op by op, and the first op that made one is named in a
        :class:`FloatingPointError`. Env: ``TORCHTPU_DEBUG_NANS``.
    triton_chunk_bytes: a translated Triton launch whose programs, run all at once,
        would make an array larger than this runs its grid in chunks of programs, each
        under its own ``vmap`` (at most 64 chunks). Env: ``TORCHTPU_TRITON_CHUNK_BYTES``
        (default 1 GiB).
    strategy: a :class:`torchtpu.Strategy`: ``compile_step`` (and
        ``torch.compile(..., options={"strategy": s})``) runs its programs SPMD
        over the strategy's mesh, with the parameters and batch placed by it.
        ``None`` (default): one device. No environment variable.
    """

    platform: str | None = dataclasses.field(
        default_factory=lambda: os.environ.get("TORCHTPU_PLATFORM") or None
    )
    strict: bool = dataclasses.field(default_factory=lambda: _env_flag("TORCHTPU_STRICT"))
    cache_dir: str = dataclasses.field(default_factory=_default_cache_dir)
    debug: bool = dataclasses.field(default_factory=lambda: _env_flag("TORCHTPU_DEBUG"))
    cpu_opt_level: int = dataclasses.field(
        default_factory=lambda: int(os.environ.get("TORCHTPU_CPU_OPT_LEVEL", "1"))
    )
    eager: bool = dataclasses.field(default_factory=lambda: _env_flag("TORCHTPU_EAGER"))
    blocking: bool = dataclasses.field(default_factory=lambda: _env_flag("TORCHTPU_BLOCKING"))
    max_graph_ops: int = dataclasses.field(
        default_factory=lambda: int(os.environ.get("TORCHTPU_MAX_GRAPH_OPS") or 20000)
    )
    warn_recompiles: int = dataclasses.field(
        default_factory=lambda: int(os.environ.get("TORCHTPU_WARN_RECOMPILES") or 8)
    )
    max_recompiles: int | None = dataclasses.field(
        default_factory=lambda: (
            int(os.environ["TORCHTPU_MAX_RECOMPILES"])
            if os.environ.get("TORCHTPU_MAX_RECOMPILES")
            else None
        )
    )
    bucket: str | None = dataclasses.field(
        default_factory=lambda: os.environ.get("TORCHTPU_BUCKET") or None
    )
    check_bounds: bool = dataclasses.field(
        default_factory=lambda: (
            os.environ.get("TORCHTPU_CHECK_BOUNDS", "1").strip() not in {"0", "false", "no", "off"}
        )
    )
    debug_nans: bool = dataclasses.field(default_factory=lambda: _env_flag("TORCHTPU_DEBUG_NANS"))
    strategy: object = None
    triton_chunk_bytes: int = dataclasses.field(
        default_factory=lambda: int(os.environ.get("TORCHTPU_TRITON_CHUNK_BYTES") or (1 << 30))
    )
    cpu_keep_host_memory: bool = dataclasses.field(
        default_factory=lambda: (
            os.environ.get("TORCHTPU_CPU_KEEP_HOST_MEMORY", "1").strip()
            not in {"0", "false", "no", "off"}
        )
    )


_OPTIONS = Options()
_PLATFORMS = {"cpu", "gpu", "tpu", "cuda", "rocm", "auto"}


def options() -> Options:
    """The options in force. Example: ``torchtpu.options().strict``."""
    return _OPTIONS


def options_with(overrides: dict[str, object] | None, caller: str) -> Options:
    """A copy of the options in force with ``overrides`` applied; ``caller`` names
    the API in the error for an unknown option."""
    base = dataclasses.replace(_OPTIONS)
    for name, value in (overrides or {}).items():
        if not hasattr(base, name):
            valid = ", ".join(f.name for f in dataclasses.fields(Options))
            raise TypeError(f"{caller}: unknown option {name!r}; valid: {valid}")
        setattr(base, name, value)
    return base


def set_options(**changes: object) -> Options:
    """Change options at run time and return the new set.

    Example::

        import torchtpu
        torchtpu.set_options(strict=True)
    """
    for name, value in changes.items():
        if not hasattr(_OPTIONS, name):
            valid = ", ".join(f.name for f in dataclasses.fields(Options))
            raise TypeError(f"torchtpu.set_options: unknown option {name!r}; valid: {valid}")
        if name == "platform" and value is not None and value not in _PLATFORMS:
            raise ValueError(
                f"torchtpu.set_options: platform={value!r} is not one of {sorted(_PLATFORMS)}"
            )
        setattr(_OPTIONS, name, value)
    return _OPTIONS
