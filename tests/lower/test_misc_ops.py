"""histogramdd, take and linear_cross_entropy's chunked ops against eager PyTorch.

Each test compiles one function that covers several cases at once, so the file runs in a
few programs.
"""

import warnings

import jax.numpy as jnp
import torch
import torch.nn.functional as F

from torchtpu.lower.interpreter import RngStream, apply
from torchtpu.lower.registry import lookup
from torchtpu.runtime import jax_scope


def strict(fn):
    return torch.compile(fn, backend="tpu", options={"strict": True}, dynamic=False)


def test_histogramdd_matches_eager():
    torch.manual_seed(0)
    x = torch.randn(7, 3)
    x[0] = torch.tensor([0.0, 5.0, -5.0])  # a point outside the tensor edges below
    x[1, 2] = x[2, 2]  # ties
    weight = torch.rand(7)
    # Edges as tensors, one list of them unsorted: PyTorch bins those by its own binary
    # search, which the lowering replays.
    edges = [torch.tensor([-1.0, 0.0, 2.0]), torch.linspace(-2, 2, 5), torch.tensor([-1.0, 1.0])]
    unsorted = [torch.tensor([-2.0, 1.0, -0.5, 2.0]), edges[1], torch.tensor([-3.0, 3.0])]

    def fn(x, weight):
        return [
            torch.histogramdd(x, bins=[2, 3, 4]),
            torch.histogramdd(x, bins=[1, 2, 2], weight=weight, density=True),
            torch.histogramdd(x, bins=[2, 2, 2], range=[-1.0, 1.0, 0.0, 0.0, -2.0, 2.0]),
            torch.histogramdd(x, bins=edges, weight=weight),
            torch.histogramdd(x, bins=unsorted, density=True),
            torch.histogramdd(x[:, :1].expand(7, 2), bins=[3, 3]),  # every value equal
            torch.histogramdd(x[:0], bins=[2, 2, 2]),  # empty: numpy's range [0, 1]
        ]

    torch.testing.assert_close(strict(fn)(x, weight), fn(x, weight), equal_nan=True)


def test_take_matches_eager_for_negative_and_0d_indices():
    x = torch.arange(12.0).reshape(3, 4)

    def fn(x, index, scalar, zero):
        return torch.take(x, index), torch.take(scalar, zero), torch.take(scalar, zero - 1)

    args = (x, torch.tensor([[0, -1], [11, -12]]), torch.tensor(7.0), torch.tensor(0))
    torch.testing.assert_close(strict(fn)(*args), fn(*args))


def test_take_out_of_range_index_reads_like_gather():
    # PyTorch raises; a compiled program cannot, so the index reads what gather reads.
    with jax_scope():
        index = jnp.array([7, -6, -9, -12])
        out = apply(
            lookup(torch.ops.aten.take.default), (jnp.arange(5.0), index), {}, RngStream(None)
        )
    assert out.tolist() == [4.0, 4.0, 1.0, 0.0]


def _linear_ce_inputs(dtype=torch.float32):
    torch.manual_seed(0)
    x = torch.randn(5, 4, dtype=dtype, requires_grad=True)
    w = torch.randn(6, 4, dtype=dtype, requires_grad=True)
    b = torch.randn(6, dtype=dtype, requires_grad=True)
    target = torch.tensor([0, 5, 2, 1, 2])
    class_weight = torch.rand(6, dtype=dtype)
    return x, w, b, target, class_weight


def _chunked(reduction, **kwargs):
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=2, allow_retain_graph=True)

    def fn(x, w, b, target, class_weight):
        return F.linear_cross_entropy(
            x, w, target, linear_bias=b, reduction=reduction, options=options, **kwargs
        )

    return fn


def test_linear_cross_entropy_chunked_matches_eager():
    x, w, b, target, class_weight = _linear_ce_inputs()
    cases = [
        _chunked("mean"),
        _chunked("sum", ignore_index=2),
        _chunked("none", ignore_index=5),
    ]

    def fn(*args):
        out = [case(*args) for case in cases]
        out.append(_chunked("mean")(args[0], args[1], None, args[3], None))
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, ref = strict(fn)(x, w, b, target, class_weight), fn(x, w, b, target, class_weight)
    torch.testing.assert_close(out, ref)
    cotangents = [torch.rand_like(r) for r in ref]
    grads = torch.autograd.grad(out, (x, w, b), cotangents)
    ref_grads = torch.autograd.grad(ref, (x, w, b), cotangents)
    torch.testing.assert_close(grads, ref_grads)


def test_linear_cross_entropy_chunked_weighted_bfloat16():
    x, w, b, target, class_weight = _linear_ce_inputs(torch.bfloat16)
    fn = _chunked("mean")

    def weighted(x, w, b, target, class_weight):
        options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=2, allow_retain_graph=True)
        return F.linear_cross_entropy(x, w, target, weight=class_weight, options=options)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in (fn, weighted):
            args = (x.detach(), w.detach(), b.detach(), target, class_weight)
            torch.testing.assert_close(strict(f)(*args), f(*args), atol=1e-2, rtol=1.6e-2)
