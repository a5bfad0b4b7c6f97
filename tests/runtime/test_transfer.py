import jax
import pytest
import torch

import torchtpu
from torchtpu.runtime import default_device, from_device, jax_scope, to_device
from torchtpu.runtime.transfer import residency


def test_cpu_handover_is_zero_copy():
    t = torch.randn(64, 64)
    with jax_scope() as device:
        array = to_device(t, device)
        assert array.unsafe_buffer_pointer() == t.data_ptr()
        back = from_device(array * 2)
        assert back.data_ptr() == (array * 2).unsafe_buffer_pointer() or back.shape == t.shape


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.bool, torch.int64, torch.float64])
def test_round_trip_keeps_dtype_and_values(dtype):
    t = (torch.randn(5, 3) * 10).to(dtype)
    with jax_scope() as device:
        back = from_device(to_device(t, device))
    assert back.dtype == dtype
    assert torch.equal(back, t)


def test_non_contiguous_and_empty_tensors():
    t = torch.randn(4, 6).t()
    e = torch.empty(0, 3)
    with jax_scope() as device:
        assert torch.equal(from_device(to_device(t, device)), t)
        assert from_device(to_device(e, device)).shape == (0, 3)


def test_unchanged_tensor_is_uploaded_once_and_again_after_in_place_edit():
    """A tensor whose upload is a copy (not row-major) is sent again after an in-place
    edit; one whose array is its own memory (zero-copy on the CPU) already holds it."""
    t = torch.randn(8, 4).t()
    with jax_scope() as device:
        to_device(t, device)
        to_device(t, device)
        assert torchtpu.metrics()["host_to_device"] == 1
        t.add_(1)
        array = to_device(t, device)
    assert torchtpu.metrics()["host_to_device"] == 2
    assert torch.equal(torch.from_dlpack(array), t)

    shared = torch.randn(8)
    with jax_scope() as device:
        first = to_device(shared, device)
        shared.add_(1)
        again = to_device(shared, device)
        assert again is first and torchtpu.metrics()["host_to_device"] == 3
        assert torch.equal(torch.from_dlpack(again), shared)  # the edit is in it
        shared.resize_(4)  # same memory, another shape: a new upload
        resized = to_device(shared, device)
        assert resized.shape == (4,) and torchtpu.metrics()["host_to_device"] == 4


def test_residency_forgets_dead_tensors():
    with jax_scope() as device:
        before = len(residency)
        t = torch.randn(3)
        to_device(t, device)
        assert len(residency) == before + 1
        del t
    assert len(residency) == before


def test_default_device_is_cpu_here_and_platform_override_is_checked():
    assert default_device().platform == "cpu"
    torchtpu.set_options(platform="tpu")
    if not any(d.platform == "tpu" for d in jax.devices()):
        with pytest.raises(torchtpu.TorchTPUError, match="TORCHTPU_PLATFORM"):
            default_device()
    with pytest.raises(ValueError, match="platform"):
        torchtpu.set_options(platform="abacus")


def test_size_one_dims_with_odd_strides_get_a_row_major_layout():
    # is_contiguous() is True here, but the strides DLPack would hand over are not row-major.
    odd = torch.randn(1, 3).t()
    square = torch.randn(3, 3)
    out = torch.compile(lambda a, b: a @ b, backend="tpu")(square, odd)
    torch.testing.assert_close(out, square @ odd)
