"""Ops whose output size depends on data, and .item(), run in XLA (torchtpu.lower.sized).

With Dynamo's capture switches on, these ops reach the backend instead of breaking the
graph; each runs as a padded program, its size is read back, and what follows is compiled
for that size.
"""

import pytest
import torch

import torchtpu


@pytest.fixture(autouse=True)
def capture_data_dependent():
    with torch._dynamo.config.patch(
        capture_dynamic_output_shape_ops=True, capture_scalar_outputs=True
    ):
        yield


def strict(fn):
    return torch.compile(fn, backend="tpu", options={"strict": True}, dynamic=False)


def test_nonzero_family_matches_eager():
    x = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    mask = torch.tensor([True, False, True])

    def fn(x, mask):
        return [
            torch.nonzero(x),
            torch.argwhere(x > 1),
            torch.nonzero(x[0, 1]),  # 0-d input: shape (0, 0)
            torch.masked_select(x, x > 0.5),
            x[x > 1],
            x[:, mask],
            x[x > 100],  # empty result
            torch.nonzero(x)[:, 1],  # a view of a computed value, not of an input
        ]

    got, want = strict(fn)(x, mask), fn(x, mask)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w)
    assert torchtpu.metrics()["size_reads"] == 8
    assert torchtpu.metrics()["fallbacks"] == {}


def test_unique_family_matches_eager():
    x = torch.tensor([[3, 1, 1], [2, 3, 3], [3, 1, 1]])

    def fn(x):
        return [
            torch.unique(x, return_inverse=True, return_counts=True),
            torch.unique(x, dim=0, return_inverse=True, return_counts=True),
            torch.unique_consecutive(x.flatten(), return_inverse=True, return_counts=True),
            torch.unique_consecutive(x, dim=1, return_counts=True),
        ]

    got, want = strict(fn)(x), fn(x)
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g, w, strict=True):
            torch.testing.assert_close(a, b)


def test_what_follows_is_compiled_for_each_size():
    def fn(x):
        idx = torch.nonzero(x > 0)
        return idx.float().mean(0) * idx.shape[0], x[x > 0].sum()

    step = strict(fn)
    x = torch.tensor([1.0, -1.0, 2.0, 3.0])
    y = torch.tensor([1.0, -1.0, -2.0, 3.0])  # a different count: a new program after it
    for value in (x, y, x):
        for g, w in zip(step(value), fn(value), strict=True):
            torch.testing.assert_close(g, w)
    compiled_after_x_y = torchtpu.metrics()["compiles"]
    step(torch.tensor([5.0, -1.0, 7.0, 1.0]))  # the size x had: its programs are reused
    assert torchtpu.metrics()["compiles"] == compiled_after_x_y


def test_item_values_feed_later_ops():
    def fn(x):
        n = int(x.sum().item())
        return x * n, x.max().item(), (x > 0).all().item()

    x = torch.tensor([1.5, 2.0, -0.5])
    got, want = strict(fn)(x), fn(x)
    torch.testing.assert_close(got[0], want[0])
    assert got[1] == want[1] and isinstance(got[1], float)
    assert got[2] == want[2] and isinstance(got[2], bool)


def test_view_at_a_data_dependent_offset():
    # The output is a view of the input at an offset read from a tensor: AOTAutograd
    # rebuilds it from the input with the layout the backend reports.
    x = torch.arange(60.0).reshape(3, 4, 5)
    for start in (-3, 0, 2):
        got = strict(lambda x, s: torch.narrow(x, 1, s, 2))(x, torch.tensor(start))
        torch.testing.assert_close(got, torch.narrow(x, 1, start, 2))


def test_bincount_computes_its_length_first():
    x = torch.tensor([0, 3, 3, 1])
    w = torch.tensor([0.5, 1.0, 2.0, -1.0])

    def fn(x, w):
        return [
            torch.bincount(x),
            torch.bincount(x, weights=w),
            torch.bincount(x, minlength=7),
            torch.bincount(x[:0], minlength=2),  # empty input: minlength zeros
        ]

    got, want = strict(fn)(x, w), fn(x, w)
    for g, v in zip(got, want, strict=True):
        assert g.dtype == v.dtype
        torch.testing.assert_close(g, v)


def test_op_without_sized_lowering_falls_back_visibly(monkeypatch):
    from torchtpu.lower import registry

    monkeypatch.delitem(registry._SIZED, torch.ops.aten.bincount.default)

    def fn(x):
        return torch.bincount(x) * 2

    x = torch.tensor([0, 3, 3, 1])
    with pytest.warns(UserWarning, match="bincount"):
        got = torch.compile(fn, backend="tpu", dynamic=False)(x)
    torch.testing.assert_close(got, fn(x))
    assert torchtpu.metrics()["fallbacks"]["aten.bincount.default"] == 1
    torch._dynamo.reset()
    with pytest.raises(Exception, match="bincount"):
        strict(fn)(x)


def test_complex32_is_held_as_complex64_with_half_parts():
    def fn(x):
        return (x * 3).chalf(), (x.chalf() * 2).to(torch.complex64)

    x = torch.randn(6, dtype=torch.complex64) * 100
    got, want = strict(fn)(x), fn(x)
    assert got[0].dtype == torch.complex32
    torch.testing.assert_close(got[0].to(torch.complex64), want[0].to(torch.complex64))
    torch.testing.assert_close(got[1], want[1])
