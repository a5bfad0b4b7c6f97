"""``aten._foreach_*``: one op over lists of tensors, as the per-tensor op on each.

torch.optim's default (``foreach``) implementations issue one ``_foreach_*`` call
per update step for all parameters. Lowering them whole keeps the traced graph
small: tracing a GPT-2 optimizer step per tensor costs seconds of Python for
thousands of nodes, where the foreach form is a few dozen. Each element goes
through the registered per-tensor lowering with its own promotion policy, so
results match the per-tensor ops exactly.

A table maps each foreach overload to its per-tensor op. Arguments that are
lists (``Tensor[]`` or ``Scalar[]``) are indexed per element; the others are
shared. The functional overloads are registered; PyTorch's functionalization
turns the in-place ``_foreach_add_`` and friends into them.
"""

from __future__ import annotations

from typing import Any

from torchtpu.lower.interpreter import RngStream, apply
from torchtpu.lower.ops._util import aten
from torchtpu.lower.registry import lookup, register

_UNARY = (
    "abs acos asin atan ceil cos cosh erf erfc exp expm1 floor frac lgamma log log10 log1p "
    "log2 neg reciprocal round rsqrt sigmoid sign sin sinh sqrt tan tanh trunc"
).split()

# foreach name -> {overload: per-tensor op}
_BINARY = {
    name: {
        "Scalar": getattr(aten, name).Scalar,
        "ScalarList": getattr(aten, name).Scalar,
        "List": getattr(aten, name).Tensor,
        **({} if name == "sub" else {"Tensor": getattr(aten, name).Tensor}),
    }
    for name in ("add", "sub", "mul", "div")
}
_TABLE: dict[str, dict[str, Any]] = {
    **{name: {"default": getattr(aten, name).default} for name in _UNARY},
    **_BINARY,
    "clamp_min": {
        "Scalar": aten.clamp_min.default,
        "ScalarList": aten.clamp_min.default,
        "List": aten.clamp_min.Tensor,
    },
    "clamp_max": {
        "Scalar": aten.clamp_max.default,
        "ScalarList": aten.clamp_max.default,
        "List": aten.clamp_max.Tensor,
    },
    "maximum": {
        "Scalar": aten.clamp_min.default,
        "ScalarList": aten.clamp_min.default,
        "List": aten.maximum.default,
    },
    "minimum": {
        "Scalar": aten.clamp_max.default,
        "ScalarList": aten.clamp_max.default,
        "List": aten.minimum.default,
    },
    "pow": {
        "Scalar": aten.pow.Tensor_Scalar,
        "ScalarList": aten.pow.Tensor_Scalar,
        "List": aten.pow.Tensor_Tensor,
        "ScalarAndTensor": aten.pow.Scalar,
    },
    "lerp": {"Scalar": aten.lerp.Scalar, "ScalarList": aten.lerp.Scalar, "List": aten.lerp.Tensor},
    "addcmul": {"Scalar": aten.addcmul.default, "ScalarList": aten.addcmul.default},
    "addcdiv": {"Scalar": aten.addcdiv.default, "ScalarList": aten.addcdiv.default},
    "norm": {"Scalar": aten.linalg_vector_norm.default},
    "max": {"default": aten.max.default},
}


# addcmul/addcdiv take their scale positionally in the foreach schema and as the
# keyword ``value`` in the per-tensor one.
_VALUE_KEYWORD = {aten.addcmul.default, aten.addcdiv.default}


def _per_tensor(per_op: Any):
    def each(*args: Any, **kwargs: Any) -> list[Any]:
        lowering = lookup(per_op)
        if per_op in _VALUE_KEYWORD and len(args) > 3:
            args, kwargs = args[:3], {**kwargs, "value": args[3]}
        n = next(len(a) for a in args if isinstance(a, (list, tuple)))

        def pick(value: Any, i: int) -> Any:
            return value[i] if isinstance(value, (list, tuple)) else value

        return [
            apply(
                lowering,
                tuple(pick(a, i) for a in args),
                {k: pick(v, i) for k, v in kwargs.items()},
                RngStream(None),  # no per-tensor op in the table is random
            )
            for i in range(n)
        ]

    each.__name__ = f"foreach_{per_op.__name__}"
    return each


def _register_table() -> None:
    for name, overloads in _TABLE.items():
        packet = getattr(aten, f"_foreach_{name}")
        for overload, per_op in overloads.items():
            register(getattr(packet, overload))(_per_tensor(per_op))


_register_table()


@register(aten._foreach_clone.default)
def foreach_clone(tensors):
    return list(tensors)


def _unregistered() -> list[str]:
    """Foreach overloads whose per-tensor op has no lowering (checked by the tests)."""
    return [
        f"_foreach_{name}.{overload}"
        for name, overloads in _TABLE.items()
        for overload, per_op in overloads.items()
        if lookup(per_op) is None
    ]
