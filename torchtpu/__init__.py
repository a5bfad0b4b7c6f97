"""torchtpu: PyTorch on any XLA device (TPU, GPU, CPU) with no code changes.

    model = torch.compile(model, backend="tpu")

The ``tpu`` backend is registered through an entry point, so the line above
needs no ``import torchtpu``. Import it for the rest of the public surface:
options, metrics and reports, and the training lifecycle: ``torchtpu.data``
(``DeviceLoader``), ``torchtpu.checkpoint``, ``torchtpu.export``,
``torchtpu.serving`` and ``torchtpu.monitor``; and scale-out, ``torchtpu.shard``
(``Strategy``, ``DataParallel``, ``FSDP``, ``TensorParallel``).

``torchtpu.serving`` runs an exported artifact in a process that has JAX but
not torch. Without torch, importing the package leaves out the rest of the
surface, so that ``import torchtpu.serving`` still works.
"""

try:
    import torch  # noqa: F401
except ImportError:  # a serving process: only torchtpu.serving is usable
    _HAS_TORCH = False
else:
    _HAS_TORCH = True

if _HAS_TORCH:
    # The training lifecycle and the planner. ``torchtpu.export`` and
    # ``torchtpu.plan`` are modules that are also functions.
    from torchtpu import checkpoint, data, export, monitor, plan, shard
    from torchtpu.capture import tpu_backend
    from torchtpu.capture.bucket import mark_bucketed
    from torchtpu.compile.program import Program, clear_program_cache, compile_log
    from torchtpu.config import Options, options, set_options
    from torchtpu.device import device_mode, patch_cuda, set_device_mode, sync
    from torchtpu.errors import (
        CheckpointError,
        CheckpointIntegrityError,
        CollectiveError,
        CompileError,
        DeviceError,
        IndexOutOfRangeError,
        LoweringError,
        LoweringUnsupported,
        OutOfMemoryError,
        RecompileError,
        RecompileWarning,
        ShardingError,
        TorchTPUError,
        UnsupportedOpError,
    )
    from torchtpu.examine import examine
    from torchtpu.metrics import metrics, report, reset_metrics
    from torchtpu.monitor import profile
    from torchtpu.shard import FSDP, DataParallel, ExpertParallel, Strategy, TensorParallel
    from torchtpu.stages import Stages, stages
    from torchtpu.train import CompiledStep, compile_step

from torchtpu import serving  # needs no torch

if _HAS_TORCH:  # users' Triton kernels on tpu and CPU tensors, where triton is installed
    from torchtpu.kernels.triton import install_if_available as _install_triton

    _install_triton()

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CheckpointIntegrityError",
    "CollectiveError",
    "ShardingError",
    "checkpoint",
    "data",
    "export",
    "monitor",
    "plan",
    "profile",
    "shard",
    "DataParallel",
    "ExpertParallel",
    "FSDP",
    "Strategy",
    "TensorParallel",
    "serving",
    "CompileError",
    "DeviceError",
    "IndexOutOfRangeError",
    "LoweringError",
    "LoweringUnsupported",
    "OutOfMemoryError",
    "RecompileError",
    "RecompileWarning",
    "Program",
    "Options",
    "TorchTPUError",
    "UnsupportedOpError",
    "CompiledStep",
    "clear_program_cache",
    "compile_log",
    "device_mode",
    "examine",
    "mark_bucketed",
    "compile_step",
    "metrics",
    "options",
    "patch_cuda",
    "report",
    "reset_metrics",
    "set_device_mode",
    "set_options",
    "stages",
    "Stages",
    "sync",
    "tpu_backend",
]
