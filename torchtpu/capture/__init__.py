"""Stage 1, capture: TorchDynamo hands us an FX graph; AOTAutograd splits it into
forward and backward ATen graphs (functionalized, decomposed)."""

from torchtpu.capture.backend import tpu_backend

__all__ = ["tpu_backend"]
