"""Device-mode bugs the fuzz suite found (tests/fuzz), one regression test each."""

import torch

import torchtpu  # noqa: F401


def test_bool_and_int_scalars_get_their_own_recipes():
    b = torch.tensor([True, False], device="tpu")
    assert (b + 1).dtype == torch.int64
    assert (b + True).dtype == torch.bool  # was int64: the recipe of b + 1 was reused
    assert (b + 1).dtype == torch.int64


def test_in_place_view_ops_change_the_tensor_itself():
    v, m = torch.randn(3), torch.randn(3, 4)
    got = v.to("tpu") @ m.to("tpu")  # matmul's 1-d case ends in squeeze_(0)
    assert got.shape == (4,)
    torch.testing.assert_close(got.cpu(), v @ m)
    z0 = torch.randn(2, 3)
    z = z0.to("tpu")
    z.t_()
    z.add_(1)
    assert z.shape == (3, 2)
    torch.testing.assert_close(z.cpu(), z0.t() + 1)
    y = torch.randn(1, 4, device="tpu")
    y.unsqueeze_(0)
    assert y.cpu().shape == (1, 1, 4)


def test_pow_in_place_takes_the_tensor_scalar_overload():
    x0 = torch.randn(3)
    x = x0.to("tpu")
    x.pow_(2)
    torch.testing.assert_close(x.cpu(), x0.pow(2))


def test_masked_fill_with_a_cpu_scalar_tensor_value():
    x0, mask = torch.randn(3), torch.tensor([True, False, True])
    got = x0.to("tpu").masked_fill(mask.to("tpu"), torch.tensor(5.0))
    torch.testing.assert_close(got.cpu(), x0.masked_fill(mask, torch.tensor(5.0)))


def test_writes_to_a_tensor_made_from_data():
    t = torch.tensor([1.0, 2.0], device="tpu")  # a lift_fresh view
    t.add_(1)
    torch.testing.assert_close(t.cpu(), torch.tensor([2.0, 3.0]))
