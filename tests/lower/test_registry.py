import jax.numpy as jnp
import numpy as np
import pytest
import torch

from torchtpu.errors import RegistryError
from torchtpu.lower.dtypes import Promote
from torchtpu.lower.interpreter import RngStream, apply
from torchtpu.lower.registry import lookup, register, registered_ops
from torchtpu.runtime import jax_scope

aten = torch.ops.aten


def test_duplicate_registration_is_an_error():
    with pytest.raises(RegistryError, match="registered twice"):
        register(aten.add.Tensor)(lambda x, y: x + y)


def test_duplicate_sized_registration_is_an_error():
    from torchtpu.lower.registry import register_sized

    with pytest.raises(RegistryError, match="registered twice in register_sized"):
        register_sized(aten.nonzero.default, cut=lambda args, kwargs: None)(lambda x: ((), 0))


def test_packets_are_refused():
    with pytest.raises(RegistryError, match="overloads"):
        register(aten.add)(lambda x, y: x + y)


def test_core_ops_are_registered():
    ops = set(registered_ops())
    for op in (aten.mm.default, aten.convolution.default, aten.native_layer_norm.default):
        assert op in ops


@pytest.mark.parametrize(
    ("op", "args", "expected"),
    [
        (aten.add.Tensor, (np.arange(3, dtype=np.int32), 1.5), jnp.float32),
        (aten.div.Tensor, (np.arange(3), np.arange(1, 4)), jnp.float32),
        (aten.add.Tensor, (np.arange(3, dtype=np.int64), 2), jnp.int64),
        (aten.mul.Tensor, (np.ones(3, jnp.bfloat16), np.ones((), np.float32)), jnp.bfloat16),
        (aten.lt.Tensor, (np.ones(3, np.int8), np.ones(3, np.float16)), jnp.bool_),
        (aten.add.Tensor, (np.ones(3, np.bool_), np.ones(3, np.bool_)), jnp.bool_),
    ],
)
def test_promotion_policy_matches_pytorch(op, args, expected):
    with jax_scope():
        args = tuple(jnp.asarray(a, a.dtype) if hasattr(a, "dtype") else a for a in args)
        out = apply(lookup(op), args, {}, RngStream(None))
    assert out.dtype == expected


def test_random_lowering_without_key_is_refused():
    from torchtpu.errors import LoweringUnsupported

    with pytest.raises(LoweringUnsupported):
        apply(lookup(aten.rand.default), ([2],), {}, RngStream(None))


def test_promotion_kind_is_recorded():
    assert lookup(aten.div.Tensor).promote is Promote.INT_TO_FLOAT
    assert lookup(aten.native_dropout.default).rng
