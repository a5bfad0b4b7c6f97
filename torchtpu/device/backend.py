"""Registering ``tpu`` as a PyTorch device: the renamed PrivateUse1 backend.

PyTorch's Python path for a PrivateUse1 backend
(``torch.utils.backend_registration._setup_privateuseone_for_python_backend``)
renames the key, registers a device module (``torch.tpu``) and a device guard,
which is what lets the autograd engine run backward passes on tensors of the
new device. Every ATen op on a tpu tensor then reaches the PrivateUse1 key:

- one boxed fallback kernel sends ops with backend kernels (``add``, ``mm``)
  to :func:`torchtpu.device.tensor.kernel`;
- ops PyTorch implements once for every backend ("CompositeExplicitAutograd":
  ``t``, ``zeros``, ``_to_copy``...) get the same kernel registered for
  PrivateUse1, so we see them whole rather than as the ``as_strided`` and
  ``out=`` calls their generic kernels make. ``detach`` and ``alias`` keep
  PyTorch's generic kernels: they make a new TensorImpl on the same storage,
  which is exactly an alias of a tpu tensor, and FakeTensor and
  ``nn.Parameter`` rely on their results being fresh C++ tensors.

A few places in PyTorch serialise or print a tensor through its storage, which
for a tpu tensor holds no bytes; :func:`install` routes those through a CPU
copy (``torch.save``, ``copy.deepcopy``, printing).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from typing import Any

import torch

from torchtpu.device import amp, lazy
from torchtpu.device.module import TPUModule
from torchtpu.device.tensor import DEVICE_TYPE, is_tpu, kernel, to_cpu

_LIBRARIES: list[torch.library.Library] = []
# Set by patch_cuda(): a map_location naming CUDA means the tpu device.
cuda_means_tpu = False
log = logging.getLogger("torchtpu")

# Generic kernels we keep: they alias the storage, which is where a tpu tensor's value lives.
_GENERIC = {"aten::detach", "aten::alias"}


def _after_optimizer_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    lazy.end_of_step()


def install() -> None:
    """Make ``torch.device("tpu")`` a real device (once per process)."""
    if _LIBRARIES:
        return
    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

    taken = torch._C._get_privateuse1_backend_name()
    if taken not in {"privateuseone", DEVICE_TYPE}:
        raise RuntimeError(
            f"torchtpu cannot register the {DEVICE_TYPE!r} device: PyTorch's PrivateUse1 "
            f"backend is already named {taken!r} by another library in this process"
        )
    _setup_privateuseone_for_python_backend(DEVICE_TYPE, backend_module=TPUModule())
    fallback = torch.library.Library("_", "IMPL")
    fallback.fallback(kernel, "PrivateUse1")
    kernels = torch.library.Library("aten", "IMPL")
    for op in _composite_ops():
        kernels.impl(op.name().split("::", 1)[1], functools.partial(kernel, op), "PrivateUse1")
    _LIBRARIES.extend([fallback, kernels])
    amp.install()
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(_after_optimizer_step)
    _route_storage_users()
    _keep_parameters_when_moving()
    # A tpu view owns its storage (its strides are its own, not offsets into its
    # base's), so autograd must rebuild views by replaying the view ops rather than
    # with as_strided: an in-place op on a view (x[:, :n].copy_(y)) then gets the
    # right gradients. The same switch AOTAutograd turns on while it traces. It is
    # thread-local: set for the thread that imports torchtpu.
    torch._C._set_view_replay_enabled(True)
    _host_side_for_pinned_memory()
    _grouped_mm_meta()
    _accelerator_api()
    _load_onto_the_device()
    _runtime_not_traced()
    from torchtpu.capture.backend import route_default_backend

    route_default_backend()


# The runtime behind a tpu tensor: its kernels, the lazy graph, the programs and JAX.
_RUNTIME = (
    "jax",
    "jaxlib",
    "torchtpu.device.tensor",
    "torchtpu.device.lazy",
    "torchtpu.runtime",
    "torchtpu.compile",
    "torchtpu.lower",
    "torchtpu.run",
    "torchtpu.shard.c10d",
)


def _runtime_not_traced() -> None:
    """Dynamo never traces the runtime: an op on tpu tensors that runs eagerly while a
    compiled function is on the stack (after a graph break, in DDP's or FSDP2's hooks)
    reaches our Python kernel, and Dynamo would otherwise compile the kernel's frames,
    and JAX's, as if they were the user's code."""
    from torch._dynamo import trace_rules

    for name in _RUNTIME:
        trace_rules.add(name)


def _composite_ops() -> list[Any]:
    """Every ATen overload whose kernel for a new backend would be PyTorch's generic one."""
    found = []
    for name in dir(torch.ops.aten):
        packet = getattr(torch.ops.aten, name, None)
        if not isinstance(packet, torch._ops.OpOverloadPacket):
            continue
        for overload in packet.overloads():
            op = getattr(packet, overload)
            qualified = op.name()
            if qualified.split(".")[0] in _GENERIC:
                continue
            has = torch._C._dispatch_has_kernel_for_dispatch_key
            try:
                generic = has(qualified, "CompositeExplicitAutograd") or has(
                    qualified, "CompositeExplicitAutogradNonFunctional"
                )
                if generic and not has(qualified, "PrivateUse1"):
                    found.append(op)
            except RuntimeError:  # an overload name the dispatcher does not know
                continue
    return found


# --- places where PyTorch reaches into a tensor's storage ---------------------------------


def _route_storage_users() -> None:
    """``torch.save``, ``copy.deepcopy`` and printing read a tensor's storage bytes,
    which a tpu tensor does not have; they get a CPU copy instead."""
    reduce_ex = torch.Tensor.__reduce_ex__

    @functools.wraps(reduce_ex)
    def __reduce_ex__(self: torch.Tensor, proto: int) -> Any:
        if self.device.type == DEVICE_TYPE and is_tpu(self):
            # Saved as a CPU tensor: the file loads anywhere, with or without torchtpu.
            return (
                to_cpu(self.detach(), "to_cpu")
                .requires_grad_(self.requires_grad)
                .__reduce_ex__(proto)
            )
        return reduce_ex(self, proto)

    torch.Tensor.__reduce_ex__ = __reduce_ex__
    deepcopy = torch.Tensor.__deepcopy__

    @functools.wraps(deepcopy)
    def __deepcopy__(self: torch.Tensor, memo: dict) -> Any:
        if self.device.type == DEVICE_TYPE and is_tpu(self) and type(self) is torch.Tensor:
            with torch.no_grad():
                out = self.clone()
            out.requires_grad_(self.requires_grad)
            memo[id(self)] = out
            return out
        return deepcopy(self, memo)

    torch.Tensor.__deepcopy__ = __deepcopy__
    tensor_str = torch._tensor_str._str

    @functools.wraps(tensor_str)
    def _str(self: torch.Tensor, *, tensor_contents: str | None = None) -> str:
        if tensor_contents is None and self.device.type == DEVICE_TYPE and is_tpu(self):
            host = to_cpu(self.detach(), "print")
            if host.numel() > 0:
                tensor_contents = torch._tensor_str._tensor_str(host, len("tensor("))
        return tensor_str(self, tensor_contents=tensor_contents)

    torch._tensor_str._str = _str


def _keep_parameters_when_moving() -> None:
    """``model.to("tpu")`` keeps each parameter the same Python object, as
    ``model.cuda()`` does: tied weights stay tied and an optimizer made before
    the move still holds the model's parameters. PyTorch keeps objects across a
    move with ``param.data = moved`` only between its built-in devices, so for
    ``tpu`` the move swaps each tensor in place (``torch.utils.swap_tensors``)."""
    module = torch.nn.Module
    to = module.to

    @functools.wraps(to)
    def moving_to(self: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        with _swapping(self, device):
            return to(self, *args, **kwargs)

    module.to = moving_to
    tpu = getattr(module, DEVICE_TYPE)

    @functools.wraps(tpu)
    def moving_tpu(self: torch.nn.Module, device: Any = None) -> torch.nn.Module:
        with _swapping(self, torch.device(DEVICE_TYPE)):
            return tpu(self, device)

    setattr(module, DEVICE_TYPE, moving_tpu)
    to_empty = module.to_empty

    @functools.wraps(to_empty)
    def moving_to_empty(self: torch.nn.Module, *, device: Any, recurse: bool = True):
        with _swapping(self, torch.device(device) if device is not None else None):
            return to_empty(self, device=device, recurse=recurse)

    module.to_empty = moving_to_empty
    apply = module._apply

    @functools.wraps(apply)
    def syncing_apply(self: torch.nn.Module, fn: Any, *args: Any, **kwargs: Any) -> Any:
        steps = sys.modules.get("torchtpu.train.step")  # loaded once a compile_step exists
        if steps is not None:
            steps.sync_steps_of(self)  # a step's device copies first, then the move
        return apply(self, fn, *args, **kwargs)

    module._apply = syncing_apply


@contextlib.contextmanager
def _swapping(model: torch.nn.Module, device: torch.device | None) -> Any:
    crossing = device is not None and (
        device.type == DEVICE_TYPE or any(t.device.type == DEVICE_TYPE for t in model.parameters())
    )
    if crossing:
        from torchtpu.runtime import residency

        for t in list(model.parameters()) + list(model.buffers()):
            residency.forget(t)  # our weak reference would stop the swap
    previous = torch.__future__.get_swap_module_params_on_conversion()
    if crossing:
        torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        yield
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)
    if crossing and hasattr(model, "generate"):
        from torchtpu.device import generation

        generation.install(model)


def _grouped_mm_meta() -> None:
    """``aten._grouped_mm``'s meta kernel checks CUDA's limit (bfloat16 only), so
    Dynamo and device mode refused a float32 grouped matmul that XLA, and PyTorch's
    own CPU kernel, run. Ours checks the shapes alone: it gives PyTorch's output
    shape and the operands' (or ``out_dtype``'s) dtype."""
    from torch._meta_registrations import _create_grouped_mm_output_tensor

    op = torch.ops.aten._grouped_mm.default

    def meta(a, b, offs=None, bias=None, out_dtype=None):
        torch._check(
            a.dim() in (2, 3) and b.dim() in (2, 3),
            lambda: f"_grouped_mm: operands must be 2-d or 3-d, got {a.dim()}-d and {b.dim()}-d",
        )
        torch._check(
            (a.dim() == 3 and b.dim() == 3) or offs is not None,
            lambda: "_grouped_mm: a 2-d operand needs offs",
        )
        return _create_grouped_mm_output_tensor(a, b, offs, out_dtype)

    library = torch.library.Library("aten", "IMPL")
    library.impl("_grouped_mm", meta, "Meta", allow_override=True)
    _LIBRARIES.append(library)
    torch._decomp.meta_table[op] = meta
    op.py_kernels[torch._C.DispatchKey.Meta] = meta  # what the Python dispatcher runs
    op._dispatch_cache.clear()


def _host_side_for_pinned_memory() -> None:
    """``tensor.pin_memory()`` asks the current accelerator for a pinned-memory
    allocator, which a Python backend cannot provide. The XLA runtime stages its
    own host transfers, so for ``tpu`` a CPU tensor is already as good as pinned:
    ``pin_memory()`` returns it (DataLoader's ``pin_memory=True`` included)."""
    pin = torch.Tensor.pin_memory

    @functools.wraps(pin)
    def pin_memory(self: torch.Tensor, device: Any = None) -> torch.Tensor:
        target = torch.device(device) if device is not None else None
        if self.device.type == "cpu" and (target is None or target.type in (DEVICE_TYPE, "cuda")):
            return self
        return pin(self) if device is None else pin(self, device)

    torch.Tensor.pin_memory = pin_memory


def _accelerator_api() -> None:
    """``torch.accelerator``'s synchronize and memory calls go through C++ device
    interfaces a Python backend cannot fill; for ``tpu`` they go to ``torch.tpu``."""
    accelerator = torch.accelerator
    module = TPUModule

    def routed(name: str, ours: Any) -> None:
        original = getattr(accelerator, name, None)
        if original is None:
            return

        @functools.wraps(original)
        def call(*args: Any, **kwargs: Any) -> Any:
            current = accelerator.current_accelerator()
            if current is not None and current.type == DEVICE_TYPE:
                return ours(*args, **kwargs)
            return original(*args, **kwargs)

        setattr(accelerator, name, call)

    routed("synchronize", module.synchronize)
    for name in (
        "memory_allocated",
        "max_memory_allocated",
        "memory_reserved",
        "max_memory_reserved",
        "reset_peak_memory_stats",
        "memory_stats",
        "empty_cache",
    ):
        routed(name, getattr(module, name))


def _load_onto_the_device() -> None:
    """``torch.load(f, map_location="tpu")`` (or ``"cuda"`` under ``patch_cuda()``):
    PyTorch rebuilds tensors on a storage of the target device, which a tpu tensor
    does not have; the file is loaded onto the CPU (with the caller's
    ``weights_only`` and other arguments) and its tensors moved, each once."""
    load = torch.load

    @functools.wraps(load)
    def load_(f: Any, map_location: Any = None, *args: Any, **kwargs: Any) -> Any:
        if map_location is None and cuda_means_tpu:
            # A file saved on a CUDA machine, loaded as saved: its CUDA tensors come
            # to tpu, the rest stays on the CPU.
            from_cuda: set[int] = set()

            def restore(storage: Any, location: str) -> Any:
                if location.startswith("cuda"):
                    from_cuda.add(storage._cdata)
                return storage

            obj = load(f, restore, *args, **kwargs)
            return _moved(obj, {}, lambda t: t.untyped_storage()._cdata in from_cuda)
        if not _means_tpu(map_location):
            return load(f, map_location, *args, **kwargs)
        return _moved(load(f, "cpu", *args, **kwargs), {})

    torch.load = load_


def _means_tpu(location: Any) -> bool:
    if isinstance(location, dict):
        return bool(location) and all(_means_tpu(v) for v in location.values())
    if isinstance(location, (str, torch.device)):
        kind = torch.device(location).type if not isinstance(location, str) else location
        kind = kind.split(":")[0]
        return kind == DEVICE_TYPE or (cuda_means_tpu and kind == "cuda")
    return False


def _moved(obj: Any, memo: dict[int, Any], which: Any = None) -> Any:
    if isinstance(obj, torch.Tensor):
        if which is not None and not which(obj):
            return obj
        if id(obj) not in memo:
            moved = obj.detach().to(DEVICE_TYPE)
            if isinstance(obj, torch.nn.Parameter):
                moved = torch.nn.Parameter(moved, requires_grad=obj.requires_grad)
            memo[id(obj)] = moved
        return memo[id(obj)]
    if isinstance(obj, dict):
        out = type(obj)() if type(obj) is not dict else {}
        for k, v in obj.items():
            out[k] = _moved(v, memo, which)
        return out
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_moved(v, memo, which) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_moved(v, memo, which) for v in obj)
    return obj
