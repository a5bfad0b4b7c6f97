"""Every entry point of a user's Triton kernel, for the six kernels of issue 15, against
PyTorch references: a launch on tpu tensors (device mode), the same launch inside
``torch.compile(backend="tpu")`` (strict, one graph), and ``torch.library.triton_op`` ops
(eager on CPU tensors, compiled on tpu tensors, with ``register_autograd`` backward passes);
then ``@triton.autotune`` / ``@triton.heuristics`` kernels at each entry point. Nothing here
calls ``install()``: ``import torchtpu`` does."""

from collections.abc import Callable

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

import triton_kernels as K  # noqa: E402
from torch.library import triton_op, wrap_triton  # noqa: E402

import torchtpu  # noqa: E402, F401  (installs the translator)

Tensor = torch.Tensor


def _plain(kernel: object) -> object:
    return kernel


# Each launcher runs its kernel(s) on its arguments' device and returns the outputs; ``w``
# wraps a kernel (``wrap_triton`` inside a triton_op body).


def add(x: Tensor, y: Tensor, w: Callable = _plain) -> Tensor:
    out = torch.empty_like(x)
    n = x.numel()
    w(K.add_kernel)[(triton.cdiv(n, 128),)](x, y, out, n, BLOCK=128)
    return out


def softmax(x: Tensor, w: Callable = _plain) -> Tensor:
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # rows of unit stride
    rows, cols = x.shape
    block = triton.next_power_of_2(cols)
    w(K.softmax_kernel)[(rows,)](out, x, x.stride(0), x.stride(1), out.stride(0), cols, BLOCK=block)
    return out


def matmul(a: Tensor, b: Tensor, w: Callable = _plain) -> Tensor:
    (M, Kd), N = a.shape, b.shape[1]
    c = torch.empty(M, N, dtype=torch.float16, device=a.device)
    grid = (triton.cdiv(M, 32) * triton.cdiv(N, 16),)
    strides = (*a.stride(), *b.stride(), *c.stride())
    w(K.matmul_kernel)[grid](a, b, c, M, N, Kd, *strides, BM=32, BN=16, BK=32, GROUP=2)
    return c


def histogram(x: Tensor, w: Callable = _plain) -> Tensor:
    out = torch.zeros(10, dtype=torch.int32, device=x.device)
    n = x.numel()
    w(K.histogram_kernel)[(triton.cdiv(n, 64),)](x, out, n, BLOCK=64)
    return out


EPS = 1e-5


def layernorm_fwd(x: Tensor, wt: Tensor, b: Tensor, w: Callable = _plain) -> tuple:
    M, N = x.shape
    y = torch.empty_like(x)
    mean = torch.empty(M, dtype=torch.float32, device=x.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)
    w(K.layernorm_fwd_kernel)[(M,)](x, y, wt, b, mean, rstd, x.stride(0), N, EPS, BLOCK_N=16)
    return y, mean, rstd


def layernorm_bwd(x: Tensor, dy: Tensor, wt: Tensor, mean: Tensor, rstd: Tensor, w=_plain):
    M, N = x.shape
    dx = torch.empty_like(x)
    dw = torch.empty(N, dtype=torch.float32, device=x.device)
    db = torch.empty(N, dtype=torch.float32, device=x.device)
    block = triton.next_power_of_2(N)
    w(K.layernorm_bwd_dx_kernel)[(M,)](x, dy, dx, wt, mean, rstd, x.stride(0), N, BLOCK_N=block)
    grid = (triton.cdiv(N, 16),)
    w(K.layernorm_bwd_dwdb_kernel)[grid](
        x, dy, mean, rstd, dw, db, M, N, x.stride(0), BLOCK_M=8, BLOCK_N=16
    )
    return dx, dw, db


def layernorm(x: Tensor, wt: Tensor, b: Tensor, dy: Tensor, w: Callable = _plain) -> tuple:
    y, mean, rstd = layernorm_fwd(x, wt, b, w)
    return (y, mean, rstd, *layernorm_bwd(x, dy, wt, mean, rstd, w))


P, SEED = 0.3, 1234


def dropout(x: Tensor, w: Callable = _plain) -> Tensor:
    out = torch.empty_like(x)
    n = x.numel()
    w(K.dropout_kernel)[(triton.cdiv(n, 128),)](x, out, n, P, SEED, BLOCK=128)
    return out


def _layernorm_ref(x: Tensor, wt: Tensor, b: Tensor, dy: Tensor) -> tuple:
    return (*K.layernorm_fwd_ref(x, wt, b, EPS), *K.layernorm_bwd_ref(x, wt, b, EPS, dy))


def _dropout_ref(x: Tensor) -> Tensor:
    keep = K.philox_rand_ref(SEED, torch.arange(x.numel()).numpy()) > P
    return K.dropout_ref(x, P, torch.from_numpy(keep))


# name -> (launcher, inputs, reference, tolerances)
CASES = {
    "add": (add, lambda: (torch.randn(1001), torch.randn(1001)), torch.add, {}),
    "softmax": (softmax, lambda: (torch.randn(7, 37),), lambda x: x.softmax(-1), {}),
    "matmul": (
        matmul,
        lambda: (torch.randn(70, 90).half(), torch.randn(90, 50).half()),
        lambda a, b: (a.float() @ b.float()).half(),
        dict(atol=2e-2, rtol=2e-3),
    ),
    "histogram": (
        histogram,
        lambda: (torch.randint(0, 10, (333,), dtype=torch.int32),),
        lambda x: torch.bincount(x, minlength=10).int(),
        {},
    ),
    "layernorm": (
        layernorm,
        lambda: (torch.randn(13, 40), torch.randn(40), torch.randn(40), torch.randn(13, 40)),
        _layernorm_ref,
        dict(atol=1e-4, rtol=1e-4),
    ),
    "dropout": (dropout, lambda: (torch.randn(1001),), _dropout_ref, {}),
}


# triton_op versions of the launchers. Layer norm's backward is its own op, registered as
# the forward op's autograd formula.


@triton_op("torchtpu_test::add", mutates_args={})
def add_op(x: Tensor, y: Tensor) -> Tensor:
    return add(x, y, wrap_triton)


add_op.register_autograd(lambda ctx, g: (g, g))


@triton_op("torchtpu_test::softmax", mutates_args={})
def softmax_op(x: Tensor) -> Tensor:
    return softmax(x, wrap_triton)


@triton_op("torchtpu_test::matmul", mutates_args={})
def matmul_op(a: Tensor, b: Tensor) -> Tensor:
    return matmul(a, b, wrap_triton)


@triton_op("torchtpu_test::histogram", mutates_args={})
def histogram_op(x: Tensor) -> Tensor:
    return histogram(x, wrap_triton)


@triton_op("torchtpu_test::layernorm_fwd", mutates_args={})
def layernorm_fwd_op(x: Tensor, wt: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return layernorm_fwd(x, wt, b, wrap_triton)


@triton_op("torchtpu_test::layernorm_bwd", mutates_args={})
def layernorm_bwd_op(
    x: Tensor, dy: Tensor, wt: Tensor, mean: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    return layernorm_bwd(x, dy, wt, mean, rstd, wrap_triton)


def _ln_setup(ctx, inputs, output):
    x, wt, _ = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, wt, mean, rstd)


def _ln_backward(ctx, dy, _dmean, _drstd):
    x, wt, mean, rstd = ctx.saved_tensors
    return layernorm_bwd_op(x, dy.contiguous(), wt, mean, rstd)


layernorm_fwd_op.register_autograd(_ln_backward, setup_context=_ln_setup)


def layernorm_op(x: Tensor, wt: Tensor, b: Tensor, dy: Tensor) -> tuple:
    y, mean, rstd = layernorm_fwd_op(x, wt, b)
    return (y, mean, rstd, *layernorm_bwd_op(x, dy, wt, mean, rstd))


@triton_op("torchtpu_test::dropout", mutates_args={})
def dropout_op(x: Tensor) -> Tensor:
    return dropout(x, wrap_triton)


OPS = {
    "add": add_op,
    "softmax": softmax_op,
    "matmul": matmul_op,
    "histogram": histogram_op,
    "layernorm": layernorm_op,
    "dropout": dropout_op,
}


def _check(got, want, tol: dict) -> None:
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, r in zip(got, want, strict=True):
        assert g.dtype == r.dtype, (g.dtype, r.dtype)
        torch.testing.assert_close(g.cpu(), r, **tol)


def _to(args: tuple, device: str) -> tuple:
    return tuple(a.to(device) for a in args)


def _compiled(fn: Callable) -> Callable:
    return torch.compile(fn, backend="tpu", fullgraph=True, options={"strict": True})


@pytest.mark.parametrize("name", list(CASES))
def test_device_mode_launch(name):
    launcher, make, ref, tol = CASES[name]
    args = make()
    got = launcher(*_to(args, "tpu"))
    for g in got if isinstance(got, tuple) else (got,):
        assert g.device.type == "tpu"
    _check(got, ref(*args), tol)


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_launch(name):
    launcher, make, ref, tol = CASES[name]
    args = make()
    _check(_compiled(launcher)(*args), ref(*args), tol)


@pytest.mark.parametrize("name", list(CASES))
def test_triton_op(name):
    """Eager on CPU tensors, on tpu tensors (device mode), then compiled on tpu tensors."""
    _, make, ref, tol = CASES[name]
    args = make()
    want = ref(*args)
    _check(OPS[name](*args), want, tol)
    _check(OPS[name](*_to(args, "tpu")), want, tol)
    torch._dynamo.reset()
    _check(_compiled(OPS[name])(*_to(args, "tpu")), want, tol)


def _add_loss(x: Tensor, y: Tensor) -> Tensor:
    return (add_op(x, y) * y).sum()


@pytest.mark.parametrize("mode", ["cpu", "tpu", "compiled"])
def test_triton_op_backward_add(mode):
    x, y = torch.randn(300), torch.randn(300)
    device = "tpu" if mode == "tpu" else "cpu"
    xs = x.to(device).requires_grad_()
    loss_fn = _compiled(_add_loss) if mode == "compiled" else _add_loss
    loss_fn(xs, y.to(device)).backward()
    torch.testing.assert_close(xs.grad.cpu(), y)


def _ln_loss(x: Tensor, wt: Tensor, b: Tensor, dy: Tensor) -> Tensor:
    return (layernorm_fwd_op(x, wt, b)[0] * dy).sum()


@pytest.mark.parametrize("mode", ["tpu", "compiled"])
def test_triton_op_backward_layernorm(mode):
    x, wt, b, dy = torch.randn(13, 40), torch.randn(40), torch.randn(40), torch.randn(13, 40)
    device = "tpu" if mode == "tpu" else "cpu"
    leaves = [t.to(device).requires_grad_() for t in (x, wt, b)]
    loss_fn = _compiled(_ln_loss) if mode == "compiled" else _ln_loss
    loss_fn(*leaves, dy.to(device)).backward()
    for leaf, want in zip(leaves, K.layernorm_bwd_ref(x, wt, b, EPS, dy), strict=True):
        torch.testing.assert_close(leaf.grad.cpu(), want, atol=1e-4, rtol=1e-4)


# --- @triton.autotune and @triton.heuristics ----------------------------------------------


@triton.autotune(
    configs=[triton.Config({"BLOCK": 64}), triton.Config({"BLOCK": 256}, num_warps=8)],
    key=["n"],
)
@triton.jit
def add_autotuned(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=m) + tl.load(y_ptr + offs, mask=m), mask=m)


@triton.heuristics({"BLOCK": lambda args: triton.next_power_of_2(args["n"]) // 4})
@triton.jit
def add_heuristic(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=m) + tl.load(y_ptr + offs, mask=m), mask=m)


@triton.autotune(configs=[triton.Config({"BLOCK": 32}), triton.Config({"BLOCK": 128})], key=[])
@triton.heuristics({"EVEN": lambda args: args["n"] % args["BLOCK"] == 0})
@triton.jit
def add_both(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr, EVEN: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if EVEN:
        out = tl.load(x_ptr + offs) + tl.load(y_ptr + offs)
        tl.store(out_ptr + offs, out)
    else:
        m = offs < n
        out = tl.load(x_ptr + offs, mask=m) + tl.load(y_ptr + offs, mask=m)
        tl.store(out_ptr + offs, out, mask=m)


def _decorated(kernel: object) -> Callable:
    def f(x: Tensor, y: Tensor, w: Callable = _plain) -> Tensor:
        out = torch.empty_like(x)
        n = x.numel()
        w(kernel)[lambda meta: (triton.cdiv(n, meta["BLOCK"]),)](x, y, out, n)
        return out

    return f


DECORATED = {"autotune": add_autotuned, "heuristics": add_heuristic, "both": add_both}


@triton_op("torchtpu_test::add_autotuned", mutates_args={})
def add_autotuned_op(x: Tensor, y: Tensor) -> Tensor:
    return _decorated(add_autotuned)(x, y, wrap_triton)


@pytest.mark.parametrize("kind", list(DECORATED))
@pytest.mark.parametrize("entry", ["cpu", "tpu", "compiled"])
def test_autotune_and_heuristics(kind, entry):
    f = _decorated(DECORATED[kind])
    x, y = torch.randn(1000), torch.randn(1000)
    if entry == "compiled":
        got = _compiled(f)(x, y)
    else:
        got = f(x.to(entry), y.to(entry))
    torch.testing.assert_close(got.cpu(), x + y)


@triton.autotune(configs=[triton.Config({"BLOCK": 64}), triton.Config({"BLOCK": 256})], key=["n"])
@triton.jit
def block_size_kernel(out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.full([BLOCK], BLOCK, tl.int32), mask=offs < n)


def _block_size(x: Tensor) -> Tensor:
    out = torch.zeros(x.shape, dtype=torch.int32, device=x.device)
    block_size_kernel[lambda meta: (triton.cdiv(x.numel(), meta["BLOCK"]),)](out, x.numel())
    return out


def test_autotune_picks_the_first_config_everywhere():
    from torchtpu.kernels.triton import choose_config

    x = torch.randn(300)
    assert choose_config(block_size_kernel, (x, 300), {}).kwargs == {"BLOCK": 64}
    for got in (_block_size(x), _block_size(x.to("tpu")), _compiled(_block_size)(x)):
        assert got.cpu().tolist() == [64] * 300
    assert block_size_kernel.best_config.kwargs == {"BLOCK": 64}
    torch.testing.assert_close(_compiled(add_autotuned_op)(x, x), x + x)


def test_has_triton_is_true_only_for_dynamos_capture():
    """Inductor and the rest of torch keep torch's own answer (False on a CPU-only machine)."""
    import torch.utils._triton as torch_triton

    truth = torch_triton.has_triton._torch_truth
    assert truth.__module__ == "torch.utils._triton"
    assert torch_triton.has_triton() == truth()


# --- what the lowering refuses, and how it is reported ------------------------------------


def test_stored_arguments_are_found_by_the_translator():
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    from torchtpu.kernels.triton.ops import stored_arguments

    x, y, out = torch.randn(100), torch.randn(100), torch.empty(100)
    hop = dict(
        kernel_idx=kernel_side_table.add_kernel(K.add_kernel),
        constant_args_idx=kernel_side_table.add_constant_args({"n": 100, "BLOCK": 64}),
        grid=[(2, 1, 1)],
        tma_descriptor_metadata={},
        kwargs={"x_ptr": x, "y_ptr": y, "out_ptr": out},
    )
    assert stored_arguments(hop) == ["out_ptr"]
    hist = dict(hop, kernel_idx=kernel_side_table.add_kernel(K.histogram_kernel))
    hist["kwargs"] = {"x_ptr": torch.zeros(100, dtype=torch.int32), "out_ptr": out}
    assert stored_arguments(hist) == ["out_ptr"]  # atomic_add counts as a store


@triton.jit
def inline_asm_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    y = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], tl.float32, True, 1)
    tl.store(out_ptr + offs, y, mask=offs < n)


def _inline_asm(x: Tensor) -> Tensor:
    out = torch.empty_like(x)
    inline_asm_kernel[(1,)](x, out, x.numel(), BLOCK=128)
    return out


def test_untranslatable_kernel_is_refused_up_front():
    """Strict mode names the construct before anything runs (eager, it raises the same)."""
    x = torch.randn(100)
    with pytest.raises(torchtpu.UnsupportedOpError, match="inline_asm"):
        _compiled(_inline_asm)(x)


def _softmax_of_views(x: Tensor) -> Tensor:
    # (x * 2).t() is made inside the graph: the kernel gets its strides (1, 7) as arguments,
    # and the lowering lays the value out by them. `out` is a view of a wider buffer (row
    # stride 40), written through.
    rows, cols = x.shape[1], x.shape[0]
    out = torch.zeros(rows, cols + 3, dtype=x.dtype, device=x.device)[:, 1 : cols + 1]
    t = (x * 2).t()
    K.softmax_kernel[(rows,)](out, t, t.stride(0), t.stride(1), out.stride(0), cols, BLOCK=64)
    return out + softmax(x.t())


def test_views_made_in_the_graph_are_laid_out_by_their_strides():
    torchtpu.reset_metrics()
    x = torch.randn(37, 7)
    got = _compiled(_softmax_of_views)(x)
    torch.testing.assert_close(got, (2 * x).t().softmax(-1) + x.t().softmax(-1))
    assert not torchtpu.metrics()["fallbacks"]
