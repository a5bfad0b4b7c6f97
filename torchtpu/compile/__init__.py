"""Stage 4, compile: split a graph where it must fall back, and build XLA programs.

Every front end ends here: ``partition`` splits an ATen graph, ``fallback``
decides what may run in eager PyTorch, ``program`` lowers and compiles segments
into the one kind of ``Program`` (one cache, one set of compiler options), and
``sized`` runs the ops whose output size depends on data.
"""

from torchtpu.compile import program
from torchtpu.compile.partition import Segment, partition
from torchtpu.compile.program import (
    CACHE,
    Lowered,
    Program,
    build_program,
    clear_program_cache,
    programs,
)

__all__ = [
    "CACHE",
    "Lowered",
    "Program",
    "Segment",
    "build_program",
    "clear_program_cache",
    "partition",
    "program",
    "programs",
]
