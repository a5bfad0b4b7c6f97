"""The native GPU path for users' Triton kernels (torchtpu/kernels/triton/native.py, issue 15).

On any machine: the switch and its reasons, Triton's type names for torch dtypes, the
tutorial kernels compiled by Triton for sm_90 (no GPU needed), and the custom call the
launch lowers to for ``cuda`` (the CUDA plugin's kernel-call objects replaced by a recorder,
since the plugin is not installed without a GPU). Marked ``gpu`` and skipped without a CUDA
GPU and JAX's CUDA plugin: the kernels run natively inside XLA and match the translator and
torch, and their speed is printed next to Triton's own launches on torch CUDA tensors.
"""

from __future__ import annotations

import os
import time
import zlib
from importlib import metadata

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from triton_kernels import (  # noqa: E402
    add_kernel,
    dropout_kernel,
    layernorm_fwd_kernel,
    matmul_kernel,
    softmax_kernel,
)

import torchtpu  # noqa: E402
from torchtpu.kernels.triton import native  # noqa: E402

# JAX and torch share the GPU in the gpu tests: keep JAX from taking 75% of it at start.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


@triton.jit
def count_kernel(x_ptr, n, out_ptr, BLOCK: tl.constexpr):
    """Counts ``x``'s values into ``out`` (a fresh, zeroed output: the last parameter)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x_ptr + offs, mask=offs < n, other=0)
    tl.atomic_add(out_ptr + v, 1, mask=offs < n)


@triton.jit
def double_and_count_kernel(x_ptr, n, twice, out_ptr, BLOCK: tl.constexpr):
    """Doubles ``x`` in place when ``twice`` (a bool scalar) and counts its low four bits
    into ``out`` (fresh, zeroed): one aliased and one fresh output."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x_ptr + offs, mask=offs < n, other=0)
    if twice:
        v = v * 2
    tl.store(x_ptr + offs, v, mask=offs < n)
    tl.atomic_add(out_ptr + (v & 15), 1, mask=offs < n)


# -- the switch --------------------------------------------------------------------------------


def test_off_by_default(monkeypatch):
    monkeypatch.delenv(native.ENV, raising=False)
    assert not native.enabled()
    assert native.why_not("cuda").startswith("TORCHTPU_TRITON_NATIVE is not 1")
    monkeypatch.setenv(native.ENV, "0")
    assert not native.enabled()


def test_why_not_names_the_platform_and_the_plugin(monkeypatch):
    monkeypatch.setenv(native.ENV, "1")
    assert native.enabled()
    assert native.why_not("cpu") == "the program is lowered for cpu, not cuda"
    assert native.why_not("tpu") == "the program is lowered for tpu, not cuda"
    if native.plugin() is None:  # a CPU-only machine: no jax-cuda12-plugin
        assert "CUDA plugin" in native.why_not("cuda")
        assert "CUDA plugin" in native.why_not("gpu")
    else:
        assert native.why_not("cuda") is None


def test_fallback_is_logged_with_its_reason(monkeypatch, caplog):
    monkeypatch.setenv(native.ENV, "1")
    with caplog.at_level("WARNING", logger="torchtpu"):
        assert not native.use_native("fallback_probe_kernel", "cpu")
    (record,) = [r for r in caplog.records if "fallback_probe_kernel" in r.getMessage()]
    assert "lowered for cpu, not cuda" in record.getMessage()
    assert "translator" in record.getMessage()


# -- Triton's type names -----------------------------------------------------------------------

TORCH_DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.bool,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_triton_type_is_what_triton_launcher_says(dtype):
    """Compared with Triton's own launcher code run on a (CPU) torch tensor of that dtype."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    want, _ = native_specialize_impl(CUDABackend, torch.empty(2, dtype=dtype), False, True, True)
    assert "*" + native.triton_type(dtype) == want
    if dtype not in (torch.uint16, torch.uint32):  # no JAX/NumPy twin needed beyond these
        twin = jnp.dtype(str(dtype).removeprefix("torch."))
        assert native.triton_type(twin) == native.triton_type(dtype)


def test_triton_type_refuses_what_triton_cannot_point_to():
    with pytest.raises(TypeError, match="complex64"):
        native.triton_type(torch.complex64)


def test_specialization_is_triton_launchers():
    """Pointers aligned (divisible by 16), ints divisible by 16 marked, 1 folded as a constant,
    floats unspecialized: what ``kernel[grid](...)`` on CUDA tensors compiles."""
    x = jnp.zeros(64, jnp.float32)
    spec = native.specialize(dropout_kernel, dict(X=x, OUT=x, n=64, p=0.5, seed=1, BLOCK=64))
    assert spec.signature == {
        "X": "*fp32",
        "OUT": "*fp32",
        "n": "i32",
        "p": "fp32",
        "seed": "constexpr",
        "BLOCK": "constexpr",
    }
    assert spec.constexprs == {"seed": 1, "BLOCK": 64}
    divisible = {p[0] for p, a in spec.attrs.items() if ["tt.divisibility", 16] in a}
    assert divisible == {0, 1, 2}  # X, OUT, and n = 64
    spec = native.specialize(dropout_kernel, dict(X=x, OUT=x, n=63, p=0.5, seed=2**40, BLOCK=64))
    assert spec.signature["seed"] == "i64" and spec.signature["n"] == "i32"
    assert not spec.attrs[(2,)]


@triton.jit
def copy_pair_kernel(ptrs, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(ptrs[0] + offs, tl.load(ptrs[1] + offs))


def test_tuple_arguments_are_refused_with_the_reason():
    x = jnp.zeros(16, jnp.float32)
    with pytest.raises(NotImplementedError, match=r"tuple arguments \(ptrs\)"):
        native.specialize(copy_pair_kernel, dict(ptrs=(x, x), BLOCK=16))


# -- Triton's compiler for sm_90, no GPU -------------------------------------------------------


def _add():
    x = jnp.zeros(1000, jnp.float32)
    return add_kernel, dict(x_ptr=x, y_ptr=x, out_ptr=x, n=1000, BLOCK=1024)


def _softmax():
    x = jnp.zeros((37, 7), jnp.float32)
    return softmax_kernel, dict(
        out_ptr=x, in_ptr=x, in_row=1, in_col=7, out_row=37, n_cols=37, BLOCK=64
    )


def _matmul():
    a = jnp.zeros((256, 256), jnp.float16)
    return matmul_kernel, dict(
        a=a, b=a, c=a, M=256, N=256, K=256, sam=256, sak=1, sbk=256, sbn=1, scm=256, scn=1,
        BM=64, BN=64, BK=32, GROUP=8,
    )  # fmt: skip


def _layernorm():
    x, v = jnp.zeros((8, 300), jnp.float32), jnp.zeros(300, jnp.float32)
    return layernorm_fwd_kernel, dict(
        X=x, Y=x, W=v, B=v, Mean=v, Rstd=v, stride=300, N=300, eps=1e-5, BLOCK_N=128
    )


KERNELS = {
    "add": (_add, ["x_ptr", "y_ptr", "out_ptr", "n"]),
    "softmax": (_softmax, ["out_ptr", "in_ptr", "in_col", "out_row", "n_cols"]),
    "matmul": (_matmul, ["a", "b", "c", "M", "N", "K", "sam", "sbk", "scm"]),
    "layernorm": (_layernorm, ["X", "Y", "W", "B", "Mean", "Rstd", "stride", "N", "eps"]),
}


@pytest.mark.parametrize("which", KERNELS)
def test_tutorial_kernel_compiles_for_sm90(which):
    make, runtime = KERNELS[which]
    fn, args = make()
    spec = native.specialize(fn, args)
    k = native.compile_for_gpu(fn, spec.signature, spec.constexprs, 4, 3, 90, spec.attrs)
    assert k.name == fn.__name__
    assert [n for n, _ in k.params] == runtime  # in_row = 1 and strides of 1 were folded
    assert k.num_warps == 4 and k.num_ctas == 1 and k.cluster_dims == (1, 1, 1)
    assert f".visible .entry {fn.__name__}(" in k.ptx
    assert ".target sm_90a" in k.ptx
    entry = k.ptx[k.ptx.index(".entry") : k.ptx.index(")", k.ptx.index(".entry"))]
    assert entry.count(".param .u64 .ptr") == 2 + sum(t.startswith("*") for _, t in k.params)
    assert entry.count(".param") == len(k.params) + 2  # + Triton's two scratch pointers
    assert k.cubin[:4] == b"\x7fELF"
    assert fn.__name__.encode() in k.cubin
    again = native.compile_for_gpu(fn, spec.signature, spec.constexprs, 4, 3, 90, spec.attrs)
    assert again is k


def test_matmul_uses_shared_memory_and_asked_warps():
    fn, args = _matmul()
    spec = native.specialize(fn, args)
    k = native.compile_for_gpu(fn, spec.signature, spec.constexprs, 8, 4, 90, spec.attrs)
    assert k.num_warps == 8
    assert k.shared_mem > 0  # its pipelined K tiles are staged in shared memory
    assert "wgmma" in k.ptx  # Hopper's tensor-core instruction for tl.dot


def _cuda12_ptxas() -> str:
    """Triton's bundled pre-Hopper ptxas, a CUDA 12 one: the kind jax-cuda12-plugin uses."""
    import subprocess

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    if "release 12." not in version:
        pytest.skip(f"Triton's bundled ptxas is not a CUDA 12 one: {version.strip()}")
    return path


def test_ptx_version_is_the_one_xlas_ptxas_accepts(monkeypatch, tmp_path):
    """Triton 3.9 writes PTX 9.x for its CUDA 13 ptxas; a CUDA 12 ptxas (what the plugin
    compiles the PTX with under jax-cuda12-plugin) refuses it. The version is read from that
    ptxas, and the PTX written for it assembles for sm_90a."""
    import subprocess

    ptxas = _cuda12_ptxas()
    monkeypatch.delenv(native.PTX_ENV, raising=False)
    monkeypatch.setattr(native, "plugin", lambda: object())
    monkeypatch.setattr(native, "_ptxas_candidates", lambda: [ptxas])
    native._detected_ptx_version.cache_clear()
    try:
        assert native.ptx_version_for_xla() == 88  # CUDA 12.9 -> PTX 8.8
    finally:
        native._detected_ptx_version.cache_clear()
    fn, args = _matmul()
    spec = native.specialize(fn, args)

    def assemble(ptx_version):
        monkeypatch.setenv(native.PTX_ENV, str(ptx_version))
        k = native.compile_for_gpu(fn, spec.signature, spec.constexprs, 8, 3, 90, spec.attrs)
        source = tmp_path / f"{ptx_version}.ptx"
        source.write_text(k.ptx)
        command = [ptxas, "--gpu-name=sm_90a", str(source), "-o", str(source) + ".cubin"]
        return subprocess.run(command, capture_output=True, text=True)

    assert assemble(88).returncode == 0
    refused = assemble(94)  # Triton's own default here
    assert refused.returncode != 0 and "Unsupported .version 9.4" in refused.stdout + refused.stderr


def test_ptx_version_override(monkeypatch):
    monkeypatch.setenv(native.PTX_ENV, "84")
    fn, args = _add()
    spec = native.specialize(fn, args)
    k = native.compile_for_gpu(fn, spec.signature, spec.constexprs, 4, 3, 90, spec.attrs)
    assert ".version 8.4" in k.ptx


# -- the custom call, lowered for cuda with the plugin's objects recorded ----------------------


class Recorder:
    """Stands in for ``jaxlib.gpu_triton`` (JAX's CUDA plugin): records what the lowering
    builds and serializes it as text."""

    def __init__(self):
        self.calls = []

    def create_array_parameter(self, bytes_to_zero, divisibility):
        return ("array", bytes_to_zero, divisibility)

    def create_scalar_parameter(self, value, dtype):
        return ("scalar", value, dtype)

    def TritonKernel(self, name, warps, ctas, shared, ptx, ttir, cc):  # noqa: N802
        assert ptx.startswith("//") and "tt.func" in ttir
        return (name, warps, ctas, shared, cc)

    def TritonKernelCall(self, kernel, g0, g1, g2, params):  # noqa: N802
        self.calls.append((kernel, (g0, g1, g2), params))
        recorder = self

        class Call:
            def to_proto(self, name, metadata):
                return repr((name, metadata, recorder.calls[-1])).encode()

        return Call()


@pytest.fixture
def recorder(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(native, "plugin", lambda: rec)
    return rec


def _compiled(fn, args, **kw):
    spec = native.specialize(fn, args)
    return native.compile_for_gpu(fn, spec.signature, spec.constexprs, attrs=spec.attrs, **kw)


def test_add_lowers_to_one_custom_call_writing_out_in_place(recorder):
    fn, args = _add()
    k = _compiled(fn, args)

    def f(x, y, out):
        args = dict(x_ptr=x, y_ptr=y, out_ptr=out, n=1000)
        return native.native_launch(k, (1,), args, input_output_aliases=["out_ptr"])

    x = jnp.zeros(1000, jnp.float32)
    lowered = jax.jit(f).trace(x, x, x).lower(lowering_platforms=("cuda",))
    text = lowered.as_text()
    assert text.count("stablehlo.custom_call @triton_kernel_call_ffi(%arg0, %arg1, %arg2)") == 1
    assert "operand_index = 2" in text  # the result is out_ptr's buffer
    ((kernel, grid, params),) = recorder.calls
    assert kernel == ("add_kernel", 4, 1, 0, 90)
    assert grid == (1, 1, 1)
    assert params == [("array", 0, 16)] * 3 + [("scalar", 1000, "i32")]
    assert _opaque(lowered) == repr(("add_kernel", b"", recorder.calls[0])).encode()


def _opaque(lowered) -> bytes:
    """The ``opaque`` attribute of the lowered program's one custom call, decompressed."""
    from jax._src.lib.mlir import ir

    def walk(block):
        for op in block.operations:
            yield op
            for region in op.regions:
                for inner in region.blocks:
                    yield from walk(inner)

    module = lowered.compiler_ir("stablehlo")
    (call,) = [op for op in walk(module.body) if op.operation.name == "stablehlo.custom_call"]
    config = ir.DictAttr(call.attributes["mhlo.backend_config"])
    return zlib.decompress(ir.StringAttr(config["opaque"]).value_bytes)


def test_fresh_zeroed_output_and_three_dimensional_grid(recorder):
    x = jnp.zeros(500, jnp.int32)
    out = jax.ShapeDtypeStruct((16,), jnp.int32)
    k = _compiled(count_kernel, dict(x_ptr=x, n=500, out_ptr=out, BLOCK=128))

    def f(x):
        return native.native_launch(
            k, (4, 2), dict(x_ptr=x, n=500), {"out_ptr": out}, zeroed_outputs=["out_ptr"]
        )

    lowered = jax.jit(f).trace(x).lower(lowering_platforms=("cuda",))
    text = lowered.as_text()
    assert "output_operand_aliases" not in text
    assert "-> tensor<16xi32>" in text
    ((_, grid, params),) = recorder.calls
    assert grid == (4, 2, 1)
    assert params == [("array", 0, 16), ("scalar", 500, "i32"), ("array", 64, 16)]
    assert _opaque(lowered) == repr(("count_kernel", b"", recorder.calls[0])).encode()


def test_aliased_and_fresh_outputs_with_a_bool_scalar(recorder):
    """XLA's results are the fresh outputs first, then the written arguments (the plugin
    binds pointers to operands, then results, in order); they come back by name."""
    x = jnp.zeros(500, jnp.int32)
    out = jax.ShapeDtypeStruct((16,), jnp.int32)
    args = dict(x_ptr=x, n=500, twice=True, out_ptr=out, BLOCK=128)
    k = _compiled(double_and_count_kernel, args)
    assert k.params == (("x_ptr", "*i32"), ("n", "i32"), ("twice", "u1"), ("out_ptr", "*i32"))

    def f(x):
        return native.native_launch(
            k, 4, dict(x_ptr=x, n=500, twice=True), {"out_ptr": out}, ["x_ptr"], ["out_ptr"]
        )

    text = jax.jit(f).trace(x).lower(lowering_platforms=("cuda",)).as_text()
    assert "-> (tensor<16xi32>, tensor<500xi32>)" in text
    assert "output_tuple_indices = [1], operand_index = 0" in text
    ((_, _, params),) = recorder.calls
    assert params == [
        ("array", 0, 16),
        ("scalar", 500, "i32"),
        ("scalar", True, "i1"),  # the plugin's name for a bool
        ("array", 64, 16),
    ]
    shapes = jax.eval_shape(f, x)
    assert {k: v.shape for k, v in shapes.items()} == {"x_ptr": (500,), "out_ptr": (16,)}


def _proto(buf: bytes) -> dict[int, list]:
    """A protobuf message's fields by number (varints as ints, the rest as bytes): enough to
    read the plugin's kernel call (jaxlib/gpu/triton.proto) without its generated code."""

    def varint(i):
        value = shift = 0
        while True:
            byte = buf[i]
            value, shift, i = value | (byte & 0x7F) << shift, shift + 7, i + 1
            if byte < 0x80:
                return value, i

    fields, i = {}, 0
    while i < len(buf):
        key, i = varint(i)
        kind = key & 7
        if kind == 0:
            value, i = varint(i)
        elif kind == 2:
            size, i = varint(i)
            value, i = buf[i : i + size], i + size
        else:
            width = 8 if kind == 1 else 4
            value, i = buf[i : i + width], i + width
        fields.setdefault(key >> 3, []).append(value)
    return fields


def test_kernel_call_built_with_the_plugins_objects():
    """With JAX's CUDA plugin installed (its Triton module loads without a GPU), the opaque
    attribute decodes, by the plugin's proto schema, to the kernel, grid and parameters."""
    lib = native.plugin()
    if lib is None:
        pytest.skip("JAX's CUDA plugin (jax-cuda12-plugin) is not installed")
    x = jnp.zeros(500, jnp.int32)
    out = jax.ShapeDtypeStruct((16,), jnp.int32)
    k = _compiled(double_and_count_kernel, dict(x_ptr=x, n=500, twice=True, out_ptr=out, BLOCK=128))

    def f(x):
        args = dict(x_ptr=x, n=500, twice=True)
        return native.native_launch(k, (4, 2), args, {"out_ptr": out}, ["x_ptr"], ["out_ptr"])

    top = _proto(_opaque(jax.jit(f).trace(x).lower(lowering_platforms=("cuda",))))
    assert top[4] == [b"double_and_count_kernel"]  # TritonAnyKernelCall.name
    call = _proto(top[1][0])  # .kernel_call
    assert (call[2], call[3], call[4]) == ([4], [2], [1])  # the grid
    kernel = _proto(call[1][0])
    assert kernel[1] == [k.name.encode()] and kernel[2] == [k.num_warps]
    assert kernel[4] == [k.ptx.encode()] and kernel[5] == [k.ttir.encode()]
    assert kernel[6] == [90] and kernel.get(10, [1]) == [1]  # compute capability, CTAs
    params = [_proto(p) for p in call[5]]
    assert [sorted(p) for p in params] == [[1], [3], [2], [1]]  # array, i32, bool, array
    assert _proto(params[0][1][0]) == {2: [16]}  # aligned, nothing zeroed
    assert params[1][3] == [500] and params[2][2] == [1]
    assert _proto(params[3][1][0]) == {1: [64], 2: [16]}  # 16 int32 zeroed


def test_launcher_takes_launch_buffers_with_offsets(recorder):
    """What launch.py would call: ``launch.Buffer`` arguments (a tensor's storage and its
    first element), the written ones put back into their storage."""
    from torchtpu.kernels.triton.launch import Buffer

    x, out = jnp.zeros(1003, jnp.float32), jnp.zeros(1000, jnp.float32)
    args = dict(x_ptr=Buffer(x, 3, tl.float32), y_ptr=Buffer(out, 0, tl.float32))
    args |= dict(out_ptr=Buffer(out, 0, tl.float32), n=1000, BLOCK=1024)
    f = native.launcher(add_kernel, (1,), args, ["out_ptr"], compute_capability=90)
    assert native.launcher(add_kernel, (1,), args, ["out_ptr"], compute_capability=90) is f
    text = f.trace(x, out, out).lower(lowering_platforms=("cuda",)).as_text()
    assert "stablehlo.slice %arg0 [3:1003]" in text
    assert text.count("custom_call @triton_kernel_call_ffi") == 1
    assert text.count("output_operand_alias<") == 1
    assert jax.eval_shape(f, x, out, out)["out_ptr"].shape == (1000,)

    every = native.launcher(add_kernel, (1,), args, None, compute_capability=90)
    shapes = jax.eval_shape(every, x, out, out)
    assert {k: v.shape for k, v in shapes.items()} == {
        "x_ptr": (1003,),  # put back whole, its first 3 elements untouched
        "y_ptr": (1000,),
        "out_ptr": (1000,),
    }
    text = every.trace(x, out, out).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("output_operand_alias<") == 3


def test_fresh_output_before_an_array_is_refused():
    fn, args = _softmax()
    k = _compiled(fn, args)
    x = jnp.zeros((37, 7), jnp.float32)
    scalars = dict(in_col=7, out_row=37, n_cols=37)
    with pytest.raises(ValueError, match="fresh output 'out_ptr' comes before .*'in_ptr'"):
        native.native_launch(k, (7,), dict(in_ptr=x, **scalars), {"out_ptr": x})


def test_launch_arguments_are_checked():
    fn, args = _matmul()
    k = _compiled(fn, args)
    a = jnp.zeros((256, 256), jnp.float16)
    ok = dict(a=a, b=a, c=a, M=256, N=256, K=256, sam=256, sbk=256, scm=256)
    with pytest.raises(ValueError, match="sak=2, but it was compiled with sak=1"):
        native.native_launch(k, 16, {**ok, "sak": 2})
    with pytest.raises(TypeError, match="missing argument 'scm'"):
        native.native_launch(k, 16, {k_: v for k_, v in ok.items() if k_ != "scm"})
    with pytest.raises(TypeError, match="'M' is written but is not an array"):
        native.native_launch(k, 16, ok, input_output_aliases=["M"])
    with pytest.raises(TypeError, match="a is a pointer"):
        native.native_launch(k, 16, {**ok, "a": 3})
    with pytest.raises(ValueError, match="grid"):
        native.native_launch(k, (1, 1, 1, 1), ok)
    with pytest.raises(TypeError, match="b is a float32 array, but the kernel was compiled for"):
        native.native_launch(k, 16, {**ok, "b": jnp.zeros(8, jnp.float32)})


def test_an_empty_grid_launches_nothing(recorder):
    fn, args = _add()
    k = _compiled(fn, args)
    x = jnp.arange(1000, dtype=jnp.float32)

    def f(x):
        args = dict(x_ptr=x, y_ptr=x, out_ptr=x, n=1000)
        return native.native_launch(k, (0,), args, input_output_aliases=["out_ptr"])

    lowered = jax.jit(f).trace(x).lower(lowering_platforms=("cuda",))
    assert "custom_call" not in lowered.as_text() and not recorder.calls
    np.testing.assert_array_equal(jax.jit(f)(x)["out_ptr"], x)  # unchanged, on any platform


def test_no_lowering_but_cuda():
    """Never a silent CPU path: lowering the call for the CPU is an error."""
    fn, args = _add()
    k = _compiled(fn, args)
    x = jnp.zeros(1000, jnp.float32)

    def f(x):
        args = dict(x_ptr=x, y_ptr=x, out_ptr=x, n=1000)
        return native.native_launch(k, 1, args, input_output_aliases=["out_ptr"])

    with pytest.raises(NotImplementedError, match="torchtpu_triton_native"):
        jax.jit(f).trace(x).lower(lowering_platforms=("cpu",))


# -- on a GPU ------------------------------------------------------------------------------------


def _why_skip_gpu() -> str | None:
    """Decided without starting JAX's backends (as tests/gpu/test_gpu.py does)."""
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    for dist in ("jax-cuda12-plugin", "jax-cuda13-plugin"):
        try:
            metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    else:
        return 'no CUDA JAX (pip install "torchtpu[cuda]")'
    if native.plugin() is None:
        return "JAX's CUDA plugin has no Triton kernel call (jaxlib.gpu_triton)"
    return None


@pytest.fixture
def on_cuda(monkeypatch):
    monkeypatch.setenv(native.ENV, "1")
    assert native.why_not() is None, native.why_not()


def _buffers(fn, tensors: dict[str, torch.Tensor], scalars: dict) -> dict:
    """Launch arguments for ``native.run`` and ``launch.run``: each tensor's flat elements
    (contiguous) as a JAX array on the GPU."""
    from torchtpu.kernels.triton.launch import _TL, Buffer

    args = {}
    for name in fn.arg_names:
        if name in tensors:
            t = tensors[name]
            data = jnp.asarray(t.detach().cpu().numpy().reshape(-1))
            args[name] = Buffer(data, 0, _TL[str(t.dtype)])
        elif name in scalars:
            args[name] = scalars[name]
    return args


def _both(fn, grid, tensors, scalars, written, **kw):
    from torchtpu.kernels.triton import launch

    args = _buffers(fn, tensors, scalars)
    got = native.run(fn, grid, args, written, **kw)
    want = launch.run(fn, grid, args)
    return {k: np.asarray(v) for k, v in got.items()}, {k: np.asarray(v) for k, v in want.items()}


@pytest.mark.parametrize("n", [1000, 1 << 20])
@pytest.mark.usefixtures("on_cuda")
@pytest.mark.gpu
@pytest.mark.skipif(_why_skip_gpu() is not None, reason=_why_skip_gpu() or "")
def test_gpu_vector_add(n):
    x, y = torch.randn(n), torch.randn(n)
    grid = (triton.cdiv(n, 1024),)
    tensors = dict(x_ptr=x, y_ptr=y, out_ptr=torch.zeros(n))
    got, want = _both(add_kernel, grid, tensors, dict(n=n, BLOCK=1024), ["out_ptr"])
    np.testing.assert_array_equal(got["out_ptr"], want["out_ptr"])
    np.testing.assert_array_equal(got["out_ptr"], (x + y).numpy())


@pytest.mark.usefixtures("on_cuda")
@pytest.mark.gpu
@pytest.mark.skipif(_why_skip_gpu() is not None, reason=_why_skip_gpu() or "")
def test_gpu_softmax():
    rows, cols = 300, 781
    x = torch.randn(rows, cols)
    tensors = dict(out_ptr=torch.zeros(rows, cols), in_ptr=x)
    scalars = dict(in_row=cols, in_col=1, out_row=cols, n_cols=cols, BLOCK=1024)
    got, want = _both(softmax_kernel, (rows,), tensors, scalars, ["out_ptr"])
    ref = torch.softmax(x, -1).numpy().reshape(-1)
    np.testing.assert_allclose(got["out_ptr"], want["out_ptr"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["out_ptr"], ref, rtol=1e-5, atol=1e-7)


@pytest.mark.usefixtures("on_cuda")
@pytest.mark.gpu
@pytest.mark.skipif(_why_skip_gpu() is not None, reason=_why_skip_gpu() or "")
def test_gpu_grouped_matmul_fp16():
    M, N, K = 1000, 520, 700  # edge tiles masked
    a = torch.randn(M, K, dtype=torch.float16)
    b = torch.randn(K, N, dtype=torch.float16)
    c = torch.zeros(M, N, dtype=torch.float16)
    grid = (triton.cdiv(M, 64) * triton.cdiv(N, 64),)
    scalars = dict(M=M, N=N, K=K, sam=K, sak=1, sbk=N, sbn=1, scm=N, scn=1)
    scalars |= dict(BM=64, BN=64, BK=32, GROUP=8)
    got, want = _both(matmul_kernel, grid, dict(a=a, b=b, c=c), scalars, ["c"])
    ref = (a.float() @ b.float()).numpy().reshape(-1)
    np.testing.assert_allclose(got["c"].astype(np.float32), ref, rtol=2e-3, atol=2e-2)
    np.testing.assert_allclose(got["c"], want["c"], rtol=2e-3, atol=2e-2)


def _median_ms(step, rounds: int = 50) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


@pytest.mark.usefixtures("on_cuda")
@pytest.mark.gpu
@pytest.mark.skipif(_why_skip_gpu() is not None, reason=_why_skip_gpu() or "")
def test_gpu_speed_against_triton_on_torch_tensors(capsys):
    """Printed, not asserted (benchmarks report speed), except that the results agree: each
    kernel 20 times per timed step, Triton's own launch on torch CUDA tensors vs the native
    custom call (written buffer donated, so the kernel writes in place) launched from Python
    one by one, and the 20 launches as one XLA program; same GPU, same run. The issue's
    target: native within 5% of Triton."""
    n, rows, cols, size = 1 << 26, 8192, 4096, 4096
    x, y = torch.randn(n, device="cuda"), torch.randn(n, device="cuda")
    s = torch.randn(rows, cols, device="cuda")
    a = torch.randn(size, size, device="cuda", dtype=torch.float16)
    cases = {
        "add 2^26 fp32": (
            add_kernel, (triton.cdiv(n, 1024),),
            dict(x_ptr=x, y_ptr=y, out_ptr=torch.empty_like(x)), dict(n=n, BLOCK=1024), "out_ptr",
        ),
        "softmax 8192x4096": (
            softmax_kernel, (rows,), dict(out_ptr=torch.empty_like(s), in_ptr=s),
            dict(in_row=cols, in_col=1, out_row=cols, n_cols=cols, BLOCK=4096), "out_ptr",
        ),
        "matmul 4096^3 fp16": (
            matmul_kernel, (triton.cdiv(size, 128) * triton.cdiv(size, 128),),
            dict(a=a, b=a, c=torch.empty_like(a)),
            dict(M=size, N=size, K=size, sam=size, sak=1, sbk=size, sbn=1, scm=size, scn=1,
                 BM=128, BN=128, BK=64, GROUP=8), "c",
        ),
    }  # fmt: skip
    from torchtpu.kernels.triton.launch import _TL, Buffer

    lines = []
    for label, (fn, grid, tensors, scalars, out) in cases.items():
        options = dict(num_warps=8, num_stages=3) if fn is matmul_kernel else {}

        def triton_step(fn=fn, grid=grid, tensors=tensors, scalars=scalars, options=options):
            for _ in range(20):
                fn[grid](**tensors, **scalars, **options)
            torch.cuda.synchronize()

        args = {  # arrays of XLA's own (donating torch's memory would free it under torch)
            k: Buffer(jnp.asarray(t.cpu().numpy().reshape(-1)), 0, _TL[str(t.dtype)])
            for k, t in tensors.items()
        }
        args |= scalars
        state = {"args": args}

        def native_step(fn=fn, grid=grid, out=out, options=options, state=state):
            for _ in range(20):
                new = native.run(fn, grid, state["args"], [out], donate=True, **options)
                state["args"] = {
                    **state["args"],
                    out: Buffer(new[out], 0, state["args"][out].dtype),
                }
            new[out].block_until_ready()

        # The same 20 launches as one XLA program: no Python between them.
        order = [k for k, v in state["args"].items() if isinstance(v, Buffer)]
        at = order.index(out)
        call = native.launcher(fn, grid, state["args"], [out], **options)

        def twenty(*data, call=call, at=at, out=out):
            data = list(data)
            for _ in range(20):
                data[at] = call(*data)[out]
            return data[at]

        program = jax.jit(twenty, donate_argnums=(at,))

        def program_step(program=program, order=order, at=at, state=state):
            data = [state["args"][k].data for k in order]
            new = program(*data)
            state["args"] = {
                **state["args"],
                order[at]: Buffer(new, 0, state["args"][order[at]].dtype),
            }
            new.block_until_ready()

        triton_step(), native_step(), program_step()  # compile all three
        t_triton = _median_ms(triton_step, 10)
        t_native = _median_ms(native_step, 10)
        t_program = _median_ms(program_step, 10)
        np.testing.assert_allclose(  # both computed the same kernel on the same inputs
            np.asarray(state["args"][out].data).astype(np.float32),
            tensors[out].float().cpu().numpy().reshape(-1),
            rtol=2e-3,
            atol=2e-2,
        )
        lines.append(
            f"{label:20s} triton {t_triton / 20:8.3f} ms   native, launch by launch "
            f"{t_native / 20:8.3f} ms ({t_native / t_triton:4.2f}x)   native, one program "
            f"{t_program / 20:8.3f} ms ({t_program / t_triton:4.2f}x)"
        )
    with capsys.disabled():
        print("\n" + "\n".join(lines))


# --- the wiring: launches reach the native path where it applies -------------------------


def test_tpu_launches_dispatch_to_the_native_path_with_what_they_write(monkeypatch):
    """With the native path available (faked here: a recorder stands in for ``native.run``,
    answering as the translator would), a device-mode launch hands it the kernel, grid,
    buffers, the names it stores to and its launch options; without, it is translated."""
    from torchtpu.kernels.triton import launch

    calls = []

    def fake_run(fn, grid, values, written, **options):
        calls.append((fn.__name__, grid, written, options))
        return launch.run(fn, grid, values)

    monkeypatch.setattr(native, "use_native", lambda name, platform=None: True)
    monkeypatch.setattr(native, "run", fake_run)
    x, y = torch.randn(1000, device="tpu"), torch.randn(1000, device="tpu")
    out = torch.empty(1000, device="tpu")
    add_kernel[(4,)](x, y, out, 1000, BLOCK=256, num_warps=2)
    assert calls == [("add_kernel", (4,), ["out_ptr"], {"num_warps": 2})]
    torch.testing.assert_close(out.cpu(), (x + y).cpu())

    # A kernel the native path refuses is translated, and the log says why.
    def refuse(fn, grid, values, written, **options):
        raise NotImplementedError("a refusal for the test")

    monkeypatch.setattr(native, "run", refuse)
    out2 = torch.empty(1000, device="tpu")
    add_kernel[(4,)](x, y, out2, 1000, BLOCK=256)
    torch.testing.assert_close(out2.cpu(), (x + y).cpu())


def test_compiled_launches_dispatch_to_the_native_path(monkeypatch):
    from torchtpu.kernels.triton import launch

    calls = []

    def fake_run(fn, grid, values, written, **options):
        calls.append((fn.__name__, grid, written))
        return launch.run(fn, grid, values)

    monkeypatch.setattr(native, "use_native", lambda name, platform=None: True)
    monkeypatch.setattr(native, "run", fake_run)
    torchtpu.clear_program_cache()  # an earlier test's program for this launch is not traced
    monkeypatch.setattr(torchtpu.options(), "cache_dir", "")  # nor its lowering on disk
    torch._dynamo.reset()

    @torch.compile(backend="tpu", fullgraph=True)
    def add(x, y):
        out = torch.empty_like(x)
        add_kernel[(4,)](x, y, out, 1000, BLOCK=256)
        return out

    x, y = torch.randn(1000), torch.randn(1000)
    torch.testing.assert_close(add(x, y), x + y)
    assert calls and all(c == ("add_kernel", (4, 1, 1), ["out_ptr"]) for c in calls)
