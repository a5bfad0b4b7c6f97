"""Training on top of the pipeline: whole steps compiled into one XLA program.

``trace.py`` turns a step into one functional ATen graph, ``state.py`` keeps its
state on the device, ``step.py`` wires them to the executor; ``precision.py``
and ``remat.py`` change how the step is traced.
"""

from torchtpu.train.step import PRECISIONS, CompiledStep, compile_step

__all__ = ["PRECISIONS", "CompiledStep", "compile_step"]
