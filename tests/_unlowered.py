"""A custom op with no lowering, and never one: for fallback and examine tests.

Defined once here: registering the same op name from two test modules in one
process breaks torch.library (a native error under fake tensors).

A library op whose Python kernel can be traced is lowered through that kernel
(``torchtpu.lower.custom``), so the ``mystery`` ops compute on the host through
NumPy: their kernels read their input's values, which tracing cannot do, and
they stay unlowered.
"""

import torch

if __name__ != "_unlowered":
    raise ImportError(
        f"import this module as `_unlowered`, not `{__name__}`: a second import under "
        "another name registers its ops twice, and torch.library then fails natively"
    )

OP = "torchtpu_test.mystery.default"


def _bessel_j0_on_host(x: torch.Tensor) -> torch.Tensor:
    # .numpy() needs the values: a FakeTensor has none, so no trace gets past here.
    host = torch.from_numpy(x.detach().cpu().numpy())
    return torch.special.bessel_j0(host).to(x.device)


@torch.library.custom_op("torchtpu_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return _bessel_j0_on_host(x)


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


@torch.library.custom_op("torchtpu_test::mystery_cpu", mutates_args=(), device_types="cpu")
def mystery_cpu(x: torch.Tensor) -> torch.Tensor:
    """A kernel for the CPU only: on tpu tensors it can only take the eager fallback."""
    return _bessel_j0_on_host(x)


@mystery_cpu.register_fake
def _(x):
    return torch.empty_like(x)


@torch.library.custom_op("torchtpu_test::uncompilable", mutates_args=())
def uncompilable(x: torch.Tensor) -> torch.Tensor:
    """Lowered to a call XLA has no kernel for: the program fails to compile."""
    return x.clone()


@uncompilable.register_fake
def _(x):
    return torch.empty_like(x)


@torch.library.custom_op("torchtpu_test::crashing", mutates_args=())
def crashing(x: torch.Tensor) -> torch.Tensor:
    """Its lowering raises: a bug in a lowering, which must be reported as one."""
    return x * 2


@crashing.register_fake
def _(x):
    return torch.empty_like(x)


def _register_test_lowerings() -> None:
    import jax

    from torchtpu.lower.registry import register

    @register(torch.ops.torchtpu_test.uncompilable.default)
    def _uncompilable(x):
        target = "torchtpu_test_missing_kernel"
        return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(x.shape, x.dtype))(x)

    @register(torch.ops.torchtpu_test.crashing.default)
    def _crashing(x):
        raise ValueError("deliberately broken lowering")


_register_test_lowerings()
