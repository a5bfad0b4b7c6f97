"""ATen lowerings, one module per op family. Importing this fills the registry."""

from torchtpu.lower.ops import (  # noqa: F401
    conv,
    indexing,
    linalg,
    nn,
    pointwise,
    random,
    reduction,
    shape,
)
