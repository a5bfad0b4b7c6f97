"""Strategies on 8 virtual CPU devices, in one subprocess (XLA_FLAGS must be set
before JAX starts): small GPT-2 and Llama configs train 5 AdamW steps under
data, fully-sharded and tensor parallelism and their 2-D hybrids, and match one
device; plus the errors, ``describe``, the data-parallel collectives, sharded
initialisation from meta, ``torch.compile`` with a strategy and a sharded
``DeviceLoader``.

CI runs each strategy on one of the two models; ``-m slow`` runs all of them
on both.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from _devices8 import collect, start  # noqa: E402  (tests/shard, on sys.path)

SCRIPT = Path(__file__).with_name("_spmd.py")
CI = ["gpt2:one,dp,fsdp,tp,fsdp_tp", "llama:one,dp_fsdp,dp_tp"]
ALL = ["gpt2:one,dp,fsdp,tp,fsdp_tp,dp_fsdp,dp_tp", "llama:one,dp,fsdp,tp,fsdp_tp,dp_fsdp,dp_tp"]


def _start(args: list[str]) -> subprocess.Popen:
    return start(str(SCRIPT), args)


def _run(args: list[str]) -> dict:
    return collect(_start(args))


@pytest.fixture(scope="module")
def ci():
    # Two processes side by side: much of each is one thread (tracing, compiling).
    train, checks = _start(CI), _start(["checks"])
    return {"runs": collect(train)["runs"], "checks": collect(checks)["checks"]}


@pytest.fixture(scope="module")
def checks(ci):
    found = ci["checks"]
    assert found is not None and "crash" not in found, found
    return found


def _close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * (1.0 + abs(b))


def _matches_one_device(runs: dict) -> None:
    for (model, strategy), run in runs.items():
        one = runs[(model, "one")]
        # fp32, with the reductions split over devices in another order.
        for a, b in zip(run["losses"], one["losses"], strict=True):
            assert _close(a, b, 2e-5), (model, strategy, run["losses"], one["losses"])
        for name, value in one["params"].items():
            assert _close(run["params"][name], value, 1e-4), (model, strategy, name)
        assert run["compiles"] == 1, (model, strategy, "the whole step compiles once")


def test_strategies_match_one_device(ci):
    assert len(ci["runs"]) == 8
    _matches_one_device(ci["runs"])


def test_fsdp_memory_is_an_eighth_of_data_parallel(ci):
    dp, fsdp = ci["runs"][("gpt2", "dp")], ci["runs"][("gpt2", "fsdp")]
    # Parameters, grads-to-be and both Adam moments per device, from memory_analysis.
    assert fsdp["argument_bytes"] <= dp["argument_bytes"] / 8 + dp["layer_bytes"]
    assert dp["argument_bytes"] >= 3 * dp["param_bytes"]  # DP holds them all


@pytest.mark.slow
def test_every_strategy_on_both_models():
    _matches_one_device(_run(ALL)["runs"])


def test_errors_name_the_parameter_shape_and_axis(checks):
    assert "'0.weight' of shape [12, 64]" in checks["not_divisible"]
    assert "mesh axis 'model' of size 8" in checks["not_divisible"]
    assert "matches no parameter" in checks["matches_nothing"]
    assert "0.weight, 0.bias" in checks["matches_nothing"]
    assert "no mesh axis 'tp'" in checks["bad_axis"]
    assert "needs 16 devices, but JAX sees 8 cpu" in checks["too_large"]
    assert "xla_force_host_platform_device_count" in checks["too_large"]
    assert "found neither Llama-style" in checks["auto_rules"]
    assert "batch input 0 of shape [12, 64] and dtype float32" in checks["batch_not_divisible"]
    assert "divide by 8" in checks["batch_not_divisible"]


def test_data_parallel_moves_the_ideal_bytes(checks):
    # One ring all-reduce of the gradients: 2(N-1)/N of their bytes per device.
    assert checks["dp_kinds"] == ["all-reduce"]
    assert abs(checks["dp_wire_over_weights"] - 2 * 7 / 8) <= 0.1 * 2 * 7 / 8


def test_tensor_parallel_moves_megatrons_bytes(checks):
    # Per layer two all-reduces of the activations forward, two backward; before the
    # sums of split products were fused, the backward sent five (1.75x).
    assert checks["tp_kinds"] == ["all-reduce"]
    assert abs(checks["tp_wire_over_megatron"] - 1.0) <= 0.1


def test_describe_shows_rules_and_xla_shardings(checks):
    rows = {r[0]: r for r in checks["describe_rows"]}
    name, spec, shard, xla_in, xla_out = rows["transformer.h.0.attn.c_attn.weight"]
    assert spec == ["fsdp", "model"] and shard == [16, 96]
    assert xla_in == xla_out == "(fsdp, model)"
    assert rows["transformer.h.0.mlp.c_proj.weight"][1] == ["model", "fsdp"]
    assert rows["transformer.wte.weight"][1] == ["fsdp"]  # embeddings: FSDP only
    assert "collectives:" in checks["describe"]
    assert "MiB per device" in checks["describe"]


def test_materialize_from_meta_never_holds_the_model(checks):
    m = checks["materialize"]
    limit = m["model_bytes"] // 4  # the test's limit: a quarter of the model
    assert m["meta_before"]
    assert m["model_bytes"] > limit
    assert 0 < m["peak_host_bytes"] <= limit
    assert m["peak_host_bytes"] <= m["layer_bytes"] * 1.05
    assert m["shards"]["layers.0.weight"] == [[32, 256]] * 8
    assert m["same_values"]  # the same init as an eager model from the same seed
    assert _close(m["loss"], m["eager_loss"], 1e-5)


def test_torch_compile_with_a_strategy(checks):
    runs = checks["torch_compile"]
    for key in ["dp", "fsdp"]:
        for a, b in zip(runs[key]["losses"], runs["eager"]["losses"], strict=True):
            assert _close(a, b, 1e-5), (key, runs)
    assert runs["dp"]["first_input_spec"] == "P()"
    assert runs["fsdp"]["first_input_spec"] == "P('fsdp',)"
    # A model on tpu: its parameters move onto the mesh once, and the eager AdamW
    # step in device mode keeps them, and its moments, split there.
    for a, b in zip(runs["fsdp_tpu"]["losses"], runs["eager_adam"]["losses"], strict=True):
        assert _close(a, b, 1e-5), runs
    assert runs["fsdp_tpu"]["first_input_spec"] == "P('fsdp',)"
    assert runs["fsdp_tpu"]["held_specs"] == ["P('fsdp',)"] * 3


def test_device_loader_splits_batches_over_the_mesh(checks):
    loader = checks["loader"]
    assert loader["specs"] == ["P('fsdp',)"] * 4
    for a, b in zip(loader["losses"], loader["eager"], strict=True):
        assert _close(a, b, 1e-5)


def test_a_sharded_run_resumes_from_a_checkpoint(checks):
    ckpt = checks["checkpoint"]
    for a, b in zip(ckpt["resumed"], ckpt["straight"][2:], strict=True):
        assert _close(a, b, 1e-6), ckpt
    assert ckpt["layout"] == "P('fsdp',)"  # back on the mesh, split as the strategy says


def test_bf16_products_under_strategies(checks):
    """bf16-mixed steps, whose products carry row-major layout constraints on the CPU,
    train the same under FSDP and tensor parallelism as on one device."""
    runs = checks["bf16"]
    for key in ("fsdp", "tp"):
        for a, b in zip(runs[key], runs["one"], strict=True):
            assert _close(a, b, 2e-2), (key, runs)
