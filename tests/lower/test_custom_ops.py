"""Library custom ops with no lowering of ours, lowered through their own Python
implementation (``torchtpu.lower.custom``); opaque ones take the counted fallback."""

from __future__ import annotations

import copy

import pytest
import torch

import torchtpu
from torchtpu.compile.fallback import reset_warnings
from torchtpu.examine import FALLS_BACK, LOWERS, LOWERS_THROUGH_IMPLEMENTATION
from torchtpu.lower.custom import TensorSpec, python_kernel, traced

# --- the ops under test ----------------------------------------------------------------


@torch.library.custom_op("testlib::centered_gelu", mutates_args=())
def centered_gelu(x: torch.Tensor, w: torch.Tensor, scale: float, dims: list[int]) -> torch.Tensor:
    """gelu(x @ w) * scale, centred over ``dims``: several ATen ops, non-tensor arguments."""
    y = torch.nn.functional.gelu(x @ w) * scale
    return y - y.mean(dim=dims, keepdim=True)


@centered_gelu.register_fake
def _(x, w, scale, dims):
    return x.new_empty(x.shape[0], w.shape[1])


@torch.library.custom_op("testlib::gelu_grad", mutates_args=(), device_types="cpu")
def gelu_grad(grad: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """centered_gelu's backward calls this second op, whose kernel is for the CPU only."""
    cdf = 0.5 * (1 + torch.erf(pre / 2**0.5))
    pdf = torch.exp(-0.5 * pre * pre) / (2 * torch.pi) ** 0.5
    return grad * (cdf + pre * pdf)


@gelu_grad.register_fake
def _(grad, pre):
    return torch.empty_like(pre)


def _setup(ctx, inputs, output):
    x, w, scale, dims = inputs
    ctx.save_for_backward(x, w)
    ctx.scale, ctx.dims = scale, dims


def _backward(ctx, grad):
    x, w = ctx.saved_tensors
    grad = (grad - grad.mean(dim=ctx.dims, keepdim=True)) * ctx.scale
    g_pre = gelu_grad(grad, x @ w)
    return g_pre @ w.t(), x.t() @ g_pre, None, None


centered_gelu.register_autograd(_backward, setup_context=_setup)

# Only a Library.impl Python kernel for the CPU: no custom_op, no fake registration.
_LIB = torch.library.Library("testlib", "FRAGMENT")
_LIB.define("softclip(Tensor x, float limit) -> Tensor")
_LIB.impl("softclip", lambda x, limit: limit * torch.tanh(x / limit), "CPU")
softclip = torch.ops.testlib.softclip.default


@torch.library.custom_op("testlib::thresholded", mutates_args=())
def thresholded(x: torch.Tensor) -> torch.Tensor:
    """Python control flow on the data: cannot be traced."""
    return x * 2 if x.sum().item() > 0 else -x


thresholded.register_fake(lambda x: torch.empty_like(x))


@torch.library.custom_op("testlib::noisy", mutates_args=())
def noisy(x: torch.Tensor) -> torch.Tensor:
    return x + torch.rand_like(x)


noisy.register_fake(lambda x: torch.empty_like(x))

# A kernel compiled from C++, in PyTorch itself, with no lowering: genuinely opaque.
# It unpacks rows that embedding_bag_byte_prepack quantized to uint8 (with scale and bias).
UNPACK = torch.ops.quantized.embedding_bag_byte_unpack.default


def _packed() -> torch.Tensor:
    return torch.ops.quantized.embedding_bag_byte_prepack(torch.randn(4, 8))


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(6, 4)
        self.w = torch.nn.Parameter(torch.randn(4, 5) * 0.5)
        self.out = torch.nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = centered_gelu(self.inp(x), self.w, 0.75, [1])
        return self.out(h).squeeze(-1)


def _batches(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 6, generator=gen), torch.randn(8, generator=gen)) for _ in range(n)]


def _train(forward, model: torch.nn.Module, device: str = "cpu") -> list[float]:
    """SGD steps over ``_batches()`` by an eager loop calling ``forward``: the losses."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for x, y in _batches():
        loss = torch.nn.functional.mse_loss(forward(x.to(device)), y.to(device))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.fixture
def reference():
    torch.manual_seed(0)
    model = Block()
    start = copy.deepcopy(model)
    losses = _train(model, model)
    return start, (losses, {k: v.detach().clone() for k, v in model.state_dict().items()})


def _assert_same(got, expected):
    losses, state = got
    want_losses, want_state = expected
    torch.testing.assert_close(losses, want_losses, rtol=1e-5, atol=1e-5)
    for name, value in want_state.items():
        torch.testing.assert_close(state[name].cpu(), value, rtol=1e-5, atol=1e-5)


# --- the three front ends, strict mode ---------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "tpu"])
def test_trains_under_torch_compile_strict(reference, device):
    start, expected = reference
    torchtpu.set_options(strict=True)
    model = copy.deepcopy(start).to(device)
    losses = _train(torch.compile(model, backend="tpu"), model, device)
    _assert_same((losses, model.state_dict()), expected)
    assert torchtpu.metrics()["fallbacks"] == {}


def test_trains_under_compile_step_strict(reference):
    start, expected = reference
    torchtpu.set_options(strict=True)
    model = copy.deepcopy(start)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    @torchtpu.compile_step
    def step(x, y):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    losses = [step(x, y).item() for x, y in _batches()]
    _assert_same((losses, model.state_dict()), expected)
    assert torchtpu.metrics()["fallbacks"] == {}


def test_trains_in_device_mode_strict(reference):
    start, expected = reference
    torchtpu.set_options(strict=True)
    model = copy.deepcopy(start).to("tpu")
    losses = _train(model, model, "tpu")
    _assert_same((losses, model.state_dict()), expected)
    assert torchtpu.metrics()["fallbacks"] == {}


def test_a_cpu_only_kernel_on_tpu_tensors_is_recorded_not_copied_to_the_host():
    torchtpu.set_options(strict=True)
    grad, pre = torch.randn(3, 4), torch.randn(3, 4)
    expected = gelu_grad(grad, pre)
    tg, tp = grad.to("tpu"), pre.to("tpu")
    torchtpu.reset_metrics()
    out = gelu_grad(tg, tp) + softclip(tp, 1.5)  # kernels for the CPU key only
    assert out.device.type == "tpu"
    assert torchtpu.metrics()["device_to_host"] == 0  # recorded, nothing read back
    torch.testing.assert_close(out.cpu(), expected + softclip(pre, 1.5))
    assert torchtpu.metrics()["fallbacks"] == {}


# --- the traced graphs -------------------------------------------------------------------


def test_traced_graph_is_aten_ops_and_cached_per_signature():
    op = torch.ops.testlib.centered_gelu.default
    args = (TensorSpec((8, 4), torch.float32), TensorSpec((4, 5), torch.float32), 0.5, [1])
    gm = traced(op, args, {})
    targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert "aten.mm.default" in targets
    assert all(t.startswith("aten.") for t in targets), targets
    assert traced(op, args, {}) is gm
    assert traced(op, (*args[:2], 0.25, [1]), {}) is not gm  # another scalar value
    other = (TensorSpec((2, 4), torch.float32), *args[1:])
    assert traced(op, other, {}) is not gm
    assert python_kernel(op) == ("CompositeExplicitAutograd", "")
    assert python_kernel(softclip) == ("CPU", "")
    key, why = python_kernel(UNPACK)
    assert key is None and "compiled code registered from C++" in why


# --- what falls back, and why --------------------------------------------------------------


def _strict_text(exc_info) -> str:
    exc, texts = exc_info.value, []
    while exc is not None:
        texts.append(f"{type(exc).__name__}: {exc}")
        exc = getattr(exc, "inner_exception", None) or exc.__cause__
    return "\n".join(texts)


@pytest.mark.parametrize(
    ("fn", "op", "why"),
    [
        (lambda x: UNPACK(x) + 1, str(UNPACK), "compiled code registered from C++"),
        (lambda x: thresholded(x) + 1, "testlib.thresholded.default", "cannot be traced"),
        (lambda x: noisy(x) + 1, "testlib.noisy.default", "draws random numbers"),
    ],
    ids=["cpp-kernel", "data-dependent", "random"],
)
def test_opaque_ops_take_the_counted_fallback_with_the_reason(fn, op, why):
    reset_warnings()
    x = _packed() if op == str(UNPACK) else torch.randn(4, 8)
    with pytest.warns(UserWarning, match="has no XLA lowering") as caught:
        out = torch.compile(fn, backend="tpu")(x)
    text = " ".join(str(w.message) for w in caught)
    assert op in text and why in text
    assert torchtpu.metrics()["fallbacks"] == {op: 1}
    if op != "testlib.noisy.default":
        torch.testing.assert_close(out, fn(x))
    torch._dynamo.reset()
    with pytest.raises(Exception) as info:
        torch.compile(fn, backend="tpu", options={"strict": True})(x)
    text = _strict_text(info)
    assert "UnsupportedOpError" in text and op in text and why in text
    assert f"Tensor[{', '.join(map(str, x.shape))}]:{str(x.dtype)[6:]}" in text


def test_opaque_op_in_device_mode_falls_back_with_the_reason():
    reset_warnings()
    x = _packed()
    with pytest.warns(UserWarning, match="compiled code registered from C"):
        out = UNPACK(x.to("tpu"))
    torch.testing.assert_close(out.cpu(), UNPACK(x))
    assert torchtpu.metrics()["fallbacks"] == {str(UNPACK): 1}


_LIB.define("unpack_twice(Tensor x) -> Tensor")
_LIB.impl("unpack_twice", lambda x: UNPACK(x) * 2, "CPU")
torch.library.register_fake("testlib::unpack_twice", lambda x: UNPACK(x))


def test_an_unlowerable_op_inside_the_implementation_is_named():
    torchtpu.set_options(strict=True)
    x = _packed()
    op = torch.ops.testlib.unpack_twice.default
    with pytest.raises(torchtpu.UnsupportedOpError) as device:
        op(x.to("tpu"))
    with pytest.raises(Exception) as compiled:
        torch.compile(lambda t: op(t) + 1, backend="tpu")(x)
    for text in (str(device.value), _strict_text(compiled)):
        assert f"its implementation calls {UNPACK}, which torchtpu cannot lower" in text
        assert "compiled code registered from C++" in text


def test_library_impl_kernel_without_fake_lowers_strict():
    torchtpu.set_options(strict=True)
    x = torch.randn(3, 5)

    def fn(t):
        return softclip(t * 3, 2.0) + 1

    expected = fn(x)
    torch.testing.assert_close(torch.compile(fn, backend="tpu")(x), expected)
    torch.testing.assert_close(fn(x.to("tpu")).cpu(), expected)
    assert torchtpu.metrics()["fallbacks"] == {}


def test_mutating_op_falls_back_naming_the_op():
    @torch.library.custom_op("testlib::bump", mutates_args=("acc",))
    def bump(acc: torch.Tensor, x: torch.Tensor) -> None:
        acc.add_(x * 2)

    bump.register_fake(lambda acc, x: None)

    def fn(acc, x):
        bump(acc, x)
        return acc + 1

    reset_warnings()
    acc, x = torch.zeros(3), torch.ones(3)
    with pytest.warns(UserWarning, match="testlib.bump.default, which mutates its arguments"):
        out = torch.compile(fn, backend="tpu")(acc, x)
    assert out.tolist() == [3.0, 3.0, 3.0] and acc.tolist() == [2.0, 2.0, 2.0]


# --- examine -----------------------------------------------------------------------------


def test_examine_says_lowers_through_its_own_implementation():
    torch.manual_seed(0)
    report = torchtpu.examine(Block(), torch.randn(8, 6))
    statuses = {use.op: use.status for use in report.ops}
    assert statuses["testlib.centered_gelu.default"] == LOWERS_THROUGH_IMPLEMENTATION
    assert statuses["testlib.gelu_grad.default"] == LOWERS_THROUGH_IMPLEMENTATION  # backward
    assert statuses["aten.addmm.default"] == LOWERS
    assert report.fully_lowered
    assert report.counts == {LOWERS: len(report.ops), FALLS_BACK: 0}
    assert "lowers (through its own implementation)" in str(report)

    opaque = torchtpu.examine(lambda x: UNPACK(x) + 1, _packed())
    assert opaque.falls_back == [str(UNPACK)]
    assert "compiled code registered from C++" in str(opaque)
