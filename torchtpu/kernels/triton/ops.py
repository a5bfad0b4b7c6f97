"""Triton's decorators and ``torch.library``'s Triton ops on XLA devices (issue 15).

:func:`install` puts the translator (``launch.py``) behind every entry point a user's
Triton kernel has, for tensors on ``tpu`` or the CPU (CUDA tensors keep Triton's own path):

- ``kernel[grid](...)`` in eager code or device mode (``launch.install``);
- the same launch inside ``torch.compile(backend="tpu")``: Dynamo captures it as
  ``triton_kernel_wrapper_functional`` and the lowering runs the translated kernel inside the
  XLA program;
- ``torch.library.triton_op`` bodies calling ``wrap_triton(kernel)[grid](...)``, eager (the
  launch above) and compiled (the same higher-order op, whose non-tensor arguments arrive
  as keyword arguments rather than constants: :func:`normalize` moves them).

``@triton.autotune`` picks one configuration, the first that Triton's own pruning
(``early_config_prune``, ``perf_model``) keeps, in eager code and under ``torch.compile``
alike, so both run the same kernel and give the same numbers. Timing each configuration
would compile one XLA program per configuration and per key, and on XLA the block sizes a
configuration sets mostly change the size of the traced program, not how fast it runs.
``@triton.heuristics`` is evaluated per launch, as Triton does.

Which tensors a launch writes (torch needs it to functionalize the launch, and asks Triton's
compiler, which needs a GPU driver) is answered by tracing the translated kernel abstractly:
:func:`stored_arguments`. The same trace lets the lowering refuse a kernel the translator
cannot express before anything runs, with the construct and the kernel's line as the reason.

``import torchtpu`` calls :func:`install` (through
``torchtpu.kernels.triton.install_if_available``) when the triton package is installed.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import torch

_INSTALLED = False

# The modules whose ``has_triton()`` decides whether Dynamo captures a Triton launch as a
# higher-order op. Only they are told that Triton can run here; inductor, export and the
# rest keep torch's own answer, so a CPU-only machine's inductor path is unchanged.
_CAPTURE_MODULES = frozenset(
    {"torch._dynamo.variables.builder", "torch._higher_order_ops.triton_kernel_wrap"}
)


def install() -> None:
    """Route users' Triton kernels on tpu and CPU tensors through the translator, at every
    entry point. Idempotent; ``import torchtpu`` calls it when ``triton`` imports.

    Example::

        import torchtpu.kernels.triton as tt

        tt.install()
        add_kernel[(4,)](x, y, out, n, BLOCK=256)  # x, y, out on "tpu" or the CPU
    """
    global _INSTALLED
    if _INSTALLED:
        return
    import torch.utils._triton as torch_triton
    from triton.runtime.autotuner import Autotuner

    from torchtpu.kernels.triton import launch

    truth = torch_triton.has_triton
    launch.install()
    torch_triton.has_triton = _capture_has_triton(getattr(truth, "_torch_truth", truth))
    _patch_autotuner(Autotuner)
    _patch_mutation_analysis()
    _INSTALLED = True


def _capture_has_triton(truth: Any) -> Any:
    def has_triton() -> bool:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        return caller in _CAPTURE_MODULES or truth()

    has_triton._torch_truth = truth  # type: ignore[attr-defined]
    return has_triton


# --- @triton.autotune ------------------------------------------------------------------


def _on_cuda(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return any(
        isinstance(a, torch.Tensor) and a.device.type == "cuda" for a in (*args, *kwargs.values())
    )


def choose_config(autotuner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The ``triton.Config`` torchtpu runs for an ``@triton.autotune`` kernel: the first one
    Triton's pruning keeps (the same choice in eager code and in compiled graphs).

    Example::

        config = choose_config(my_autotuned_kernel, (x, y, out, n), {})
        config.kwargs  # {"BLOCK": 128}
    """
    if len(autotuner.configs) == 1:
        return autotuner.configs[0]
    autotuner.nargs = dict(zip(autotuner.arg_names, args, strict=False))
    try:
        return autotuner.prune_configs(kwargs)[0]
    finally:
        autotuner.nargs = None


def _patch_autotuner(Autotuner: Any) -> None:
    original = Autotuner.run
    if getattr(original, "_torchtpu", False):
        return

    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _on_cuda(args, kwargs):
            return original(self, *args, **kwargs)
        config = choose_config(self, args, kwargs)
        clash = kwargs.keys() & config.kwargs.keys()
        if clash:
            raise ValueError(
                f"Triton kernel {self.base_fn.__name__}: {sorted(clash)} are given at the "
                "launch and also set by the @triton.autotune config; pass them one way only"
            )
        self.best_config = config
        full = {**kwargs, **config.all_kwargs()}
        if config.pre_hook is not None:
            config.pre_hook({**dict(zip(self.arg_names, args, strict=False)), **full})
        return self.fn.run(*args, **full)

    run._torchtpu = True  # type: ignore[attr-defined]
    Autotuner.run = run


# --- the compiled path ------------------------------------------------------------------


def _is_value(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str, torch.dtype))


def normalize(hop: dict[str, Any]) -> dict[str, Any]:
    """A ``triton_kernel_wrapper_functional`` call as the translator's lowering takes it:
    one plain ``@triton.jit`` kernel, one grid, tensors alone in ``kwargs``. An autotuned
    kernel becomes its chosen config's kernel (:func:`choose_config`: the first after Dynamo's
    pruning), with the config's values added to the constants; non-tensor arguments that
    ``wrap_triton`` passes as keyword arguments join the constants too.

    Example::

        normalize(dict(kernel_idx=3, constant_args_idx=5, grid=[(4, 1, 1), (2, 1, 1)], ...))
    """
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from triton.runtime.autotuner import Autotuner, Heuristics

    kernel = kernel_side_table.get_kernel(hop["kernel_idx"])
    consts = dict(kernel_side_table.get_constant_args(hop["constant_args_idx"]))
    grids = list(hop["grid"])
    plain = {k: v for k, v in hop["kwargs"].items() if _is_value(v)}
    if isinstance(kernel, Autotuner):
        # Dynamo gives one grid per config, in the configs' order, after its own pruning.
        config = kernel.configs[0]
        grids = grids[:1]
        consts.update(config.kwargs)
        kernel = kernel.fn
    if isinstance(kernel, Heuristics):
        return hop  # Dynamo folds heuristics into the launch; refused by the lowering below
    if not plain and kernel is kernel_side_table.get_kernel(hop["kernel_idx"]):
        return hop
    consts.update(plain)
    return {
        **hop,
        "kernel_idx": kernel_side_table.add_kernel(kernel),
        "constant_args_idx": kernel_side_table.add_constant_args(consts),
        "grid": grids,
        "kwargs": {k: v for k, v in hop["kwargs"].items() if k not in plain},
    }


# --- which tensors a launch writes ------------------------------------------------------


def stored_arguments(hop: dict[str, Any], grid: tuple[int, ...] = (1,)) -> list[str]:
    """The tensor arguments a ``triton_kernel_wrapper_*`` call's kernel stores to (or updates
    atomically), found by tracing the translated kernel abstractly (``jax.eval_shape``, over
    ``grid``'s programs). Torch asks this to functionalize a launch; its own answer needs a
    GPU driver (the kernel's TTIR) and, without one, is "every tensor argument".

    Example::

        stored_arguments(dict(kernel_idx=0, constant_args_idx=1, grid=[(4, 1, 1)],
                              tma_descriptor_metadata={}, kwargs={"x_ptr": x, "out_ptr": out}))
        # ["out_ptr"]
    """
    import jax
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from triton.runtime.jit import JITFunction

    from torchtpu.kernels.triton import launch
    from torchtpu.kernels.triton.builder import np_dtype

    hop = normalize(hop)
    fn = kernel_side_table.get_kernel(hop["kernel_idx"])
    if not isinstance(fn, JITFunction):
        raise TypeError(f"{type(fn).__name__} is not a @triton.jit kernel")
    consts = kernel_side_table.get_constant_args(hop["constant_args_idx"])
    tensors = {k: v for k, v in hop["kwargs"].items() if isinstance(v, torch.Tensor)}
    dtypes = {k: launch._TL[str(v.dtype)] for k, v in tensors.items()}
    values: dict[str, Any] = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in tensors:
            spec = jax.ShapeDtypeStruct((max(tensors[name].numel(), 1),), np_dtype(dtypes[name]))
            values[name] = launch.Buffer(spec, 0, dtypes[name])
        elif name in consts:
            values[name] = consts[name]
    return launch.stored_names(fn, grid, values)


def _patch_mutation_analysis() -> None:
    from torch._higher_order_ops import triton_kernel_wrap as wrap

    original = wrap.get_mutated_tensors
    if getattr(original, "_torchtpu", False):
        return

    def get_mutated_tensors(kernel_idx: int, constant_args_idx: int, kwargs: Any, tma: Any) -> Any:
        devices = {v.device.type for v in kwargs.values() if isinstance(v, torch.Tensor)}
        if "cuda" not in devices:
            hop = dict(
                kernel_idx=kernel_idx,
                constant_args_idx=constant_args_idx,
                grid=[(1, 1, 1)],
                tma_descriptor_metadata=tma,
                kwargs=kwargs,
            )
            try:
                return stored_arguments(hop)
            except Exception:  # noqa: BLE001  torch's own analysis answers, and warns
                pass
        return original(kernel_idx, constant_args_idx, kwargs, tma)

    get_mutated_tensors._torchtpu = True  # type: ignore[attr-defined]
    wrap.get_mutated_tensors = get_mutated_tensors
