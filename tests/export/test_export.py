"""torchtpu.export and torchtpu.serving: export in this process, serve in one without torch."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.export import Dim

import torchtpu.export
import torchtpu.serving
from torchtpu.serving import ArtifactError, InputError
from torchtpu.serving import format as fmt
from torchtpu.serving.http import make_server

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 64


def _gpt_module():
    spec = importlib.util.spec_from_file_location("example_gpt", ROOT / "examples" / "gpt.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    # Wide enough that its weights (about 280 kB) dwarf the program's own size.
    return torch.nn.Sequential(
        torch.nn.Linear(16, 256),
        torch.nn.GELU(),
        torch.nn.Linear(256, 256),
        torch.nn.Linear(256, 3),
    ).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An MLP (symbolic batch) and a GPT (symbolic batch and sequence), saved, with
    eager PyTorch's outputs at two sizes each."""
    root = tmp_path_factory.mktemp("export")
    mlp = _mlp()
    batch = Dim("batch", min=1, max=64)
    torchtpu.export(mlp, (torch.randn(2, 16),), {"input": {0: batch}}).save(root / "mlp")

    gpt_module = _gpt_module()
    torch.manual_seed(0)
    cfg = gpt_module.GPTConfig(vocab_size=VOCAB, context=16, layers=1, width=32, heads=2)
    gpt = gpt_module.GPT(cfg).eval()
    dims = {"idx": {0: Dim("batch", max=8), 1: Dim("seq", max=16)}}
    artifact = torchtpu.export(gpt, (torch.randint(0, VOCAB, (2, 8)),), dims)
    artifact.save(root / "gpt")

    rng = np.random.default_rng(0)
    refs = {}
    with torch.no_grad():
        for i, b in enumerate((1, 5)):
            x = rng.standard_normal((b, 16)).astype(np.float32)
            refs[f"mlp_x{i}"], refs[f"mlp_y{i}"] = x, mlp(torch.from_numpy(x)).numpy()
        for i, shape in enumerate(((1, 16), (3, 5))):
            idx = rng.integers(0, VOCAB, shape)
            refs[f"gpt_x{i}"], refs[f"gpt_y{i}"] = idx, gpt(torch.from_numpy(idx)).numpy()
    np.savez(root / "refs.npz", **refs)
    return root, refs


# The second process: torch cannot be imported there. It loads the GPT, checks it
# against eager PyTorch's outputs, and then serves it with `torchtpu serve`.
SERVING_SCRIPT = r"""
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"{name} is blocked in this serving process")

sys.meta_path.insert(0, NoTorch())

import numpy as np
import torchtpu.serving
from torchtpu.cli import main

root = sys.argv[1]
refs = np.load(root + "/refs.npz")
model = torchtpu.serving.load(root + "/gpt")
for i in range(2):  # two batch sizes (and sequence lengths)
    np.testing.assert_allclose(model(refs[f"gpt_x{i}"]), refs[f"gpt_y{i}"], rtol=1e-4, atol=1e-5)
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
print("matched", flush=True)
sys.exit(main(["serve", root + "/gpt", "--port", "0"]))
"""


def _post(url, body, content_type, accept=None):
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_round_trip_in_a_process_without_torch(exported):
    root, refs = exported
    process = subprocess.Popen(
        [sys.executable, "-c", SERVING_SCRIPT, str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "matched", process.stderr.read()[-3000:]
        line = process.stdout.readline()
        assert "serving" in line, process.stderr.read()[-3000:]
        base = line.split(" on ")[1].split()[0]
        assert base.startswith("http://127.0.0.1:")

        body = json.dumps({"inputs": [refs["gpt_x1"].tolist()]}).encode()
        status, kind, answer = _post(base + "/v1/predict", body, "application/json")
        assert status == 200 and kind == "application/json"
        got = np.asarray(json.loads(answer)["outputs"], np.float32)
        np.testing.assert_allclose(got, refs["gpt_y1"], rtol=1e-4, atol=1e-5)

        # Wrong dtype (float ids), then a sequence past the exported range: 4xx, JSON.
        floats = _npy(refs["gpt_x0"].astype(np.float32))
        status, _, answer = _post(base + "/v1/predict", floats, "application/x-npy")
        assert status == 400 and "idx" in json.loads(answer)["error"]["message"]
        too_long = _npy(np.zeros((1, 17), np.int64))
        status, _, answer = _post(base + "/v1/predict", too_long, "application/x-npy")
        error = json.loads(answer)["error"]
        assert status == 400 and "seq=17" in error["message"], error
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_weights_are_arguments_not_constants(exported):
    root, _ = exported
    manifest = json.loads((root / "mlp" / fmt.MANIFEST).read_text())
    assert [w["name"] for w in manifest["weights"]] == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "3.weight",
        "3.bias",
    ]
    program = (root / "mlp" / fmt.PROGRAM).stat().st_size
    weights = (root / "mlp" / fmt.WEIGHTS).stat().st_size
    assert weights > 250_000 and program < weights / 20, (program, weights)
    model = torchtpu.serving.load(root / "mlp")
    assert len(model.exported.in_avals) == 6 + 1


def test_manifest_records_specs_versions_and_hashes(exported):
    root, _ = exported
    manifest = json.loads((root / "gpt" / fmt.MANIFEST).read_text())
    assert manifest["format_version"] == fmt.FORMAT_VERSION
    assert manifest["platforms"] == ["cpu"]
    assert manifest["inputs"] == [{"name": "idx", "dtype": "int64", "shape": ["batch", "seq"]}]
    assert manifest["outputs"][0]["shape"] == ["batch", "seq", VOCAB]
    assert manifest["dims"] == {"batch": {"min": 1, "max": 8}, "seq": {"min": 1, "max": 16}}
    assert {"jax", "jaxlib", "torch"} <= set(manifest["versions"])
    assert set(manifest["sha256"]) == {fmt.PROGRAM, fmt.WEIGHTS}
    assert manifest["manifest_sha256"] == fmt.manifest_sha256(manifest)
    # The tied embedding is one weight, as torch.export lifts it once.
    assert sum(w["name"] == "tok.weight" for w in manifest["weights"]) == 1
    assert not list(root.glob(".gpt.*")), "the staging directory was left behind"


def _copy(root: Path, name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(root / name, target)
    return target


def test_tampered_files_are_refused(exported, tmp_path):
    root, _ = exported
    weights = _copy(root, "mlp", tmp_path) / fmt.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=fmt.WEIGHTS):
        torchtpu.serving.load(weights.parent)

    manifest = _copy(root, "gpt", tmp_path) / fmt.MANIFEST
    fields = json.loads(manifest.read_text())
    fields["dims"]["batch"]["max"] = 1000
    manifest.write_text(json.dumps(fields))
    with pytest.raises(ArtifactError, match="manifest.json was changed"):
        torchtpu.serving.load(manifest.parent)

    program = _copy(root, "mlp", tmp_path / "p") / fmt.PROGRAM
    program.unlink()
    with pytest.raises(ArtifactError, match="program.bin is missing"):
        torchtpu.serving.load(program.parent)


def _reseal(directory: Path, **changes) -> None:
    """Edit manifest fields and seal it again: an artifact as a future or older
    torchtpu would honestly write it."""
    file = directory / fmt.MANIFEST
    fields = {**json.loads(file.read_text()), **changes}
    fields.pop("manifest_sha256")
    file.write_text(fmt.manifest_text(fields))


def test_unknown_format_and_calling_convention_are_refused(exported, tmp_path):
    root, _ = exported
    future = _copy(root, "mlp", tmp_path / "f")
    _reseal(future, format_version=fmt.FORMAT_VERSION + 1)
    with pytest.raises(ArtifactError, match="format version 2"):
        torchtpu.serving.load(future)
    old = _copy(root, "mlp", tmp_path / "c")
    _reseal(old, calling_convention_version=1)
    with pytest.raises(ArtifactError, match="calling convention 1"):
        torchtpu.serving.load(old)


def test_artifact_for_another_platform_is_refused(tmp_path):
    model = torch.nn.Linear(4, 2).eval()
    artifact = torchtpu.export(model, (torch.randn(3, 4),), platforms=("tpu",))
    assert artifact.manifest["platforms"] == ["tpu"]
    artifact.save(tmp_path / "tpu")
    with pytest.raises(ArtifactError, match=r"exported for \['tpu'\].*platforms=\('tpu', 'cpu'\)"):
        torchtpu.serving.load(tmp_path / "tpu")


def test_export_is_the_module_and_the_function():
    from torchtpu.export import export

    assert callable(torchtpu.export)
    assert torchtpu.export.export is export
    assert isinstance(torchtpu.export.Artifact, type)


def test_wrong_inputs_name_the_input(exported):
    root, refs = exported
    model = torchtpu.serving.load(root / "mlp")
    with pytest.raises(InputError, match=r"input 'input': expected float32\[batch, 16\]"):
        model(np.zeros((2, 16), np.float64))
    with pytest.raises(InputError, match=r"got float32\[2, 15\]"):
        model(np.zeros((2, 15), np.float32))
    with pytest.raises(InputError, match="batch=65 is out of its range"):
        model(np.zeros((65, 16), np.float32))
    with pytest.raises(InputError, match="takes 1"):
        model(refs["mlp_x0"], refs["mlp_x0"])
    np.testing.assert_allclose(model(input=refs["mlp_x0"]), refs["mlp_y0"], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def server(exported):
    root, _ = exported
    model = torchtpu.serving.load(root / "gpt")
    srv = make_server(model, "127.0.0.1", 0, max_content_length=4096)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


def test_http_metadata_npz_and_errors(server, exported):
    _, refs = exported
    with urllib.request.urlopen(server + "/v1/metadata", timeout=60) as response:
        meta = json.loads(response.read())
    assert meta["inputs"][0]["name"] == "idx" and meta["dims"]["seq"]["max"] == 16

    buffer = io.BytesIO()
    np.savez(buffer, idx=refs["gpt_x1"])
    status, kind, answer = _post(
        server + "/v1/predict", buffer.getvalue(), "application/x-npz", "application/x-npz"
    )
    assert status == 200 and kind == "application/x-npz"
    with np.load(io.BytesIO(answer)) as outputs:
        np.testing.assert_allclose(outputs["output"], refs["gpt_y1"], rtol=1e-4, atol=1e-5)

    cases = [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (json.dumps({"inputs": []}).encode(), "application/json", 400, "missing input"),
        (json.dumps({"inputs": [[[1.5, 2.0]]]}).encode(), "application/json", 400, "idx"),
        (json.dumps({"inputs": [[[1, 2], [3]]]}).encode(), "application/json", 400, "idx"),
        (json.dumps({"inputs": [[[1, VOCAB + 5]]]}).encode(), "application/json", 400, "index"),
        (b"x" * 5000, "application/json", 413, ""),
        (b"abc", "text/plain", 415, "Content-Type"),
    ]
    for body, kind, want, text in cases:
        status, answer_kind, answer = _post(server + "/v1/predict", body, kind)
        assert status == want, (body[:40], status, answer)
        assert answer_kind == "application/json"
        assert text in json.loads(answer)["error"]["message"], answer
    error = json.loads(_post(server + "/v1/predict", cases[4][0], "application/json")[2])
    assert error["error"]["type"] == "IndexOutOfRange" and "embedding" in error["error"]["message"]


def test_unlowerable_op_is_named_before_export():
    class Unique(torch.nn.Module):
        def forward(self, x):
            return torch.unique(x)

    with pytest.raises(torchtpu.export.ExportError, match="unique"):
        torchtpu.export(Unique(), (torch.tensor([1, 2, 2]),))


def test_op_without_symbolic_sizes_names_the_op_and_the_dim():
    class PadByBatch(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.pad(x, (0, x.shape[0]))

    with pytest.raises(torchtpu.export.ExportError, match="constant_pad_nd.*'batch'"):
        torchtpu.export(PadByBatch(), (torch.randn(3, 4),), {"x": {0: Dim("batch", max=8)}})


@pytest.mark.slow
def test_hf_gpt2_symbolic_batch_and_sequence(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=2, n_head=2, use_cache=False
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, VOCAB, (2, 8))
    artifact = torchtpu.export(
        model, (ids,), {"input_ids": {0: Dim("batch", max=8), 1: Dim("seq", max=16)}}
    )
    artifact.save(tmp_path / "gpt2")
    served = torchtpu.serving.load(tmp_path / "gpt2")
    for shape in ((1, 16), (3, 5)):
        x = np.random.default_rng(shape[1]).integers(0, VOCAB, shape)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).logits.numpy()
        np.testing.assert_allclose(served(x)["logits"], want, rtol=1e-4, atol=1e-5)
