"""Side module: scale-out. Strategies, meshes and sharding rules for running one
step SPMD over many devices (``compile_step(step, strategy=s)``).

- :mod:`~torchtpu.shard.mesh`: device meshes with named axes.
- :mod:`~torchtpu.shard.rules`: rules as data, parameter-name pattern -> spec,
  with the Megatron sets for Llama- and GPT-2-style blocks.
- :mod:`~torchtpu.shard.strategy`: :class:`Strategy` and the ready-made
  :class:`DataParallel`, :class:`FSDP`, :class:`TensorParallel`, :class:`ExpertParallel`.
- :mod:`~torchtpu.shard.expert`: expert parallelism's grouped matmuls, a
  ``shard_map`` with all-to-all dispatch and combine.
- :mod:`~torchtpu.shard.init`: a model built on ``meta`` materialised straight
  into its shards.
- :mod:`~torchtpu.shard.describe` and :mod:`~torchtpu.shard.hlo`: each
  parameter's sharding, the program's as XLA chose it, and its collectives.
- :mod:`~torchtpu.shard.launch` and :mod:`~torchtpu.shard.c10d`: PyTorch's own
  distributed code, one process per device under torchrun: JAX's distributed
  runtime started from torchrun's environment, and the ``"tpu"`` c10d
  process group (registered on import) running XLA collectives.
"""

from torchtpu.errors import CollectiveError
from torchtpu.shard.c10d import ProcessGroupTPU
from torchtpu.shard.hlo import Collective, collectives
from torchtpu.shard.init import materialize, meta_init
from torchtpu.shard.launch import initialize_from_env, launched
from torchtpu.shard.mesh import make_mesh
from torchtpu.shard.rules import RULE_SETS, Rule
from torchtpu.shard.strategy import (
    FSDP,
    DataParallel,
    ExpertParallel,
    Placement,
    Strategy,
    TensorParallel,
)

__all__ = [
    "RULE_SETS",
    "FSDP",
    "Collective",
    "CollectiveError",
    "DataParallel",
    "ExpertParallel",
    "Placement",
    "ProcessGroupTPU",
    "Rule",
    "Strategy",
    "TensorParallel",
    "collectives",
    "initialize_from_env",
    "launched",
    "make_mesh",
    "materialize",
    "meta_init",
]
