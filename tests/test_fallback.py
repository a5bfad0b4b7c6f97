"""Unsupported ops: a visible, counted eager fallback, or a clear error in strict mode."""

import os
import subprocess
import sys

import pytest
import torch
from _unlowered import OP, mystery  # noqa: F401

import torchtpu


def uses_unsupported(x):
    return mystery(x * 2) + 1


def test_fallback_runs_eagerly_with_warning_and_count():
    x = torch.randn(6)
    with pytest.warns(UserWarning, match="mystery"):
        out = torch.compile(uses_unsupported, backend="tpu")(x)
    torch.testing.assert_close(out, uses_unsupported(x))
    assert torchtpu.metrics()["fallbacks"] == {OP: 1}
    assert torchtpu.metrics()["compiles"] == 2  # the XLA segments either side


def _strict_error(exc_info) -> str:
    exc = exc_info.value
    texts = []
    while exc is not None:
        texts.append(f"{type(exc).__name__}: {exc}")
        exc = getattr(exc, "inner_exception", None) or exc.__cause__
    return "\n".join(texts)


def test_strict_option_names_op_shapes_dtypes_and_remedy():
    x = torch.randn(6, dtype=torch.float64)
    with pytest.raises(Exception) as info:
        torch.compile(uses_unsupported, backend="tpu", options={"strict": True})(x)
    text = _strict_error(info)
    assert "UnsupportedOpError" in text
    assert OP in text
    assert "Tensor[6]:float64" in text
    assert "What to do" in text


def test_set_options_strict():
    torchtpu.set_options(strict=True)
    with pytest.raises(Exception) as info:
        torch.compile(uses_unsupported, backend="tpu")(torch.randn(3))
    assert OP in _strict_error(info)


def test_strict_environment_variable(tmp_path):
    code = (
        "import torch\n"
        "torch.library.define('torchtpu_test2::mystery', '(Tensor x) -> Tensor')\n"
        "torch.library.impl('torchtpu_test2::mystery', 'cpu')(\n"
        "    lambda x: torch.from_numpy(x.numpy().copy()))  # untraceable: reads the values\n"
        "torch.library.register_fake('torchtpu_test2::mystery')(lambda x: torch.empty_like(x))\n"
        "f = lambda x: torch.ops.torchtpu_test2.mystery(x)\n"
        "try:\n"
        "    torch.compile(f, backend='tpu')(torch.randn(2))\n"
        "except Exception as e:\n"
        "    print('raised', 'UnsupportedOpError' in repr(e) + str(e))\n"
    )
    env = {**os.environ, "TORCHTPU_STRICT": "1", "TORCHTPU_CACHE_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert "raised True" in result.stdout, result.stderr[-2000:]


def test_report_lists_fallbacks(capsys):
    torch.compile(uses_unsupported, backend="tpu")(torch.randn(3))
    text = torchtpu.report()
    assert OP in text
    assert "compiles" in capsys.readouterr().out
