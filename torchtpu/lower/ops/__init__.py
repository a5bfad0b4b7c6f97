"""ATen lowerings, one module per op family. Importing this fills the registry."""

from torchtpu.lower.ops import (  # noqa: F401
    barrier,
    collective,
    conv,
    fft,
    foreach,
    grouped,
    indexing,
    ldl,
    linalg,
    nn,
    optim,
    pointwise,
    prims,
    random,
    reduction,
    sampling,
    shape,
    special,
    symbolic,
)
