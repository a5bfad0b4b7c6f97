"""Lowering ATen to JAX: the registry of lowerings, the FX interpreter that runs them,
and the lowerings themselves (``torchtpu.lower.ops``)."""
