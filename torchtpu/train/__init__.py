"""Training on top of the pipeline: whole steps compiled into one XLA program."""

from torchtpu.train.step import PRECISIONS, CompiledStep, compile_step

__all__ = ["PRECISIONS", "CompiledStep", "compile_step"]
