"""Padded lanes left out of translated kernels (torchtpu/kernels/triton/padding.py), with
``tl.max``/``tl.min`` still ignoring NaN as Triton's do (the padded lanes included)."""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from torchtpu.kernels.triton.launch import launch_cpu  # noqa: E402
from torchtpu.kernels.triton.padding import unpadded  # noqa: E402


def _padded_widths(fn, *args) -> set[str]:  # noqa: ANN001
    """The shapes of width 128 in ``fn``'s compiled program (the padded width used below)."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    return set(re.findall(r"\[\d+,128\]", text))


def _softmax(x):  # noqa: ANN001, ANN202
    p = jnp.pad(x, ((0, 0), (0, 28)), constant_values=-jnp.inf)
    e = jnp.exp(p - jnp.max(p, axis=1, keepdims=True))
    return (e / jnp.sum(e, axis=1, keepdims=True))[:, :100]


def test_a_padded_softmax_runs_on_the_rows_own_width():
    x = np.random.default_rng(0).standard_normal((64, 100)).astype(np.float32)
    np.testing.assert_allclose(unpadded(_softmax)(x), _softmax(x), rtol=1e-6, atol=1e-7)
    assert _padded_widths(_softmax, x)  # the plain program does work on the padded width
    assert not _padded_widths(unpadded(_softmax), x)


def test_split_reductions_are_exact_whatever_the_padding_value():
    x = np.arange(3 * 50, dtype=np.int32).reshape(3, 50) % 7

    def f(x):  # noqa: ANN001, ANN202
        p = jnp.pad(x, ((0, 0), (5, 73)), constant_values=3)  # both sides, a non-identity fill
        q = p * 2 + 1
        return (
            jnp.sum(q, axis=1),
            jnp.max(q, axis=1),
            jnp.min(p, axis=1),
            jnp.sum(q),  # every axis at once
            jnp.all(p > 0, axis=1),
            jnp.any(p == 6, axis=1),
        )

    for got, want in zip(unpadded(f)(x), f(x), strict=True):
        np.testing.assert_array_equal(got, want)


def test_seams_meet_through_broadcasts_slices_nested_jits_and_two_padded_axes():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 10)).astype(np.float32)
    w = rng.standard_normal(7).astype(np.float32)

    @jax.jit
    def inner(p, wp):  # noqa: ANN001, ANN202
        return p * wp[None, :]

    def f(x, w):  # noqa: ANN001, ANN202
        p = jnp.pad(x, ((1, 2), (0, 6)))  # both axes padded with zeros
        wp = jnp.pad(w, (2, 7))  # another seam on the same axis
        y = inner(p, wp) + 1.0
        s = jnp.sum(y, axis=(0, 1))
        row = jnp.sum(y, axis=1)[1:7]  # a slice of a reduction's result
        return s, row, y[1:7, 0:10], jnp.max(y[:, 3:12], axis=1)

    for got, want in zip(unpadded(f)(x, w), f(x, w), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_ops_it_does_not_know_run_unchanged():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)

    def f(x):  # noqa: ANN001, ANN202
        p = jnp.pad(x, ((0, 0), (0, 4)), constant_values=1.0)
        c = jnp.cumsum(p, axis=1)  # not split: a scan
        t = jax.lax.fori_loop(0, 3, lambda i, a: a + p[:, :4], jnp.zeros((3, 4)))
        return c[:, 2:6], jnp.argmax(p, axis=1), t, p.T[2:5]

    for got, want in zip(unpadded(f)(x), f(x), strict=True):
        np.testing.assert_array_equal(got, want)


@triton.jit
def _row_max_min(X, MAX, MIN, SOFT, n, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < n
    x = tl.load(X + row * n + cols, mask=ok, other=-float("inf"))
    tl.store(MAX + row, tl.max(x, axis=0))
    e = tl.exp(x - tl.max(x, axis=0))
    tl.store(SOFT + row * n + cols, e / tl.sum(e, axis=0), mask=ok)
    y = tl.load(X + row * n + cols, mask=ok, other=float("inf"))
    tl.store(MIN + row, tl.min(y, axis=0))


@pytest.mark.parametrize("n", [13, 16])
@pytest.mark.parametrize("with_nan", [False, True])
def test_max_and_min_ignore_nan_as_tritons_do(with_nan, n):
    x = torch.randn(4, n)
    if with_nan:
        x[1, 5] = float("nan")  # a NaN loses to the row's other values
        x[3] = float("nan")  # a row of NaN only gives NaN, unless padding lanes are in the block
    mx, mn, soft = torch.empty(4), torch.empty(4), torch.empty(4, n)
    launch_cpu(_row_max_min, (4,), x, mx, mn, soft, n, BLOCK=16)
    # The block's lanes past the row hold -inf (+inf for the minimum): in a row of NaN they
    # win, as in Triton's maxnum/minnum.
    pad = np.full((4, 16 - n), np.inf, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy: "All-NaN slice"
        want_max = np.nanmax(np.concatenate([x.numpy(), -pad], 1), axis=1)
        want_min = np.nanmin(np.concatenate([x.numpy(), pad], 1), axis=1)
    if with_nan:
        assert np.isnan(want_max[3]) == (n == 16)
    np.testing.assert_array_equal(mx.numpy(), want_max)
    np.testing.assert_array_equal(mn.numpy(), want_min)
    rows = [0, 2] if with_nan else [0, 1, 2, 3]
    torch.testing.assert_close(soft[rows], torch.softmax(x[rows], dim=1))
