"""Stage 4, compile: split a graph where it must fall back, and build XLA programs."""

from torchtpu.compile.partition import Segment, partition
from torchtpu.compile.program import Program, build_program

__all__ = ["Program", "Segment", "build_program", "partition"]
