"""Stage 5, run: execute a partitioned graph on torch tensors."""

from torchtpu.run.executor import GraphExecutor

__all__ = ["GraphExecutor"]
