"""Expert parallelism on 8 virtual CPU devices, in subprocesses (XLA_FLAGS must be
set before JAX starts; ``python tests/shard/test_expert.py mixtral:one,ep`` is
the worker): a small HF Mixtral with 8 experts trains 3 AdamW steps under
``ExpertParallel`` and its hybrids with ``compile_step`` and matches one device;
each device holds 1/8 of the experts and of their Adam moments; the program
moves tokens by all-to-all and never gathers the expert weights; the same under
``torch.compile(options={"strategy": ...})``; the dispatch and combine against
one ``ragged_dot`` on three meshes, and the CPU's tiled grouped matmuls.

CI runs EP and EP x FSDP on Mixtral; ``-m slow`` adds EP x DP and Qwen2-MoE.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from _devices8 import collect, start  # noqa: E402  (tests/shard, on sys.path)

VOCAB, BATCH, SEQ, STEPS, EXPERTS = 96, 8, 16, 3, 8
HIDDEN, INTERMEDIATE = 48, 40  # distinct sizes: an expert weight's shape is unmistakable
CI_TRAIN = ["mixtral:one,ep"]
CI_CHECKS = ["mixtral:ep_fsdp", "checks"]
SLOW = ["mixtral:one,ep_dp", "qwen2_moe:one,ep,ep_fsdp"]


# --- the test side ---------------------------------------------------------------------


def _start(args: list[str]) -> subprocess.Popen:
    return start(__file__, args)


@pytest.fixture(scope="module")
def ci() -> dict:
    # Two processes side by side: much of each is one thread (tracing, compiling).
    train, other = _start(CI_TRAIN), _start(CI_CHECKS)
    first, second = collect(train), collect(other)
    return {"runs": {**first["runs"], **second["runs"]}, "checks": second["checks"]}


def _close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * (1.0 + abs(b))


def _matches_one_device(runs: dict, one: dict) -> None:
    for (model, strategy), run in runs.items():
        reference = one[model]
        for a, b in zip(run["losses"], reference["losses"], strict=True):
            assert _close(a, b, 2e-5), (model, strategy, run["losses"], reference["losses"])
        for name, value in reference["params"].items():
            assert _close(run["params"][name], value, 1e-4), (model, strategy, name)
        assert run["compiles"] == 1, (model, strategy, "the whole step compiles once")


def _one_device(runs: dict) -> dict:
    return {model: run for (model, strategy), run in runs.items() if strategy == "one"}


def test_expert_parallel_matches_one_device(ci):
    runs = ci["runs"]
    assert set(runs) == {("mixtral", "one"), ("mixtral", "ep"), ("mixtral", "ep_fsdp")}
    _matches_one_device(runs, _one_device(runs))


def test_each_device_holds_an_eighth_of_the_experts(ci):
    for key in ["ep", "ep_fsdp"]:
        run = ci["runs"][("mixtral", key)]
        experts = run["expert_bytes"]
        assert experts > 0
        # The arrays the step holds: every expert weight and both Adam moments in
        # shards of 1/8 on every device.
        assert set(run["expert_shards"]) == set(run["expert_shapes"])
        for name, shards in run["expert_shards"].items():
            full = run["expert_shapes"][name]
            assert len(shards) == 8 and all(math.prod(s) * 8 == math.prod(full) for s in shards)
            if key == "ep":  # split by expert alone
                assert shards == [[full[0] // 8, *full[1:]]] * 8, (name, shards)
        assert run["expert_state_bytes_per_device"] * 8 <= 3 * experts * (1 + 1e-9)
    # XLA's own figure: the step's arguments shrink by 7/8 of the experts, their
    # two Adam moments included, against the same step with them replicated.
    ep, one = ci["runs"][("mixtral", "ep")], ci["runs"][("mixtral", "one")]
    saved = one["argument_bytes"] - ep["argument_bytes"]
    expected = 3 * ep["expert_bytes"] * 7 / 8
    assert abs(saved - expected) <= 0.01 * expected, (saved, expected)


def test_tokens_move_by_all_to_all_and_the_weights_stay_put(ci):
    for key in ["ep", "ep_fsdp"]:
        run = ci["runs"][("mixtral", key)]
        kinds = run["collectives"]
        # Per layer: forward dispatch + combine, the backward's input gradient
        # (dispatch + combine) and weight gradient (dispatch), for 2 grouped matmuls.
        assert kinds.get("all-to-all", 0) >= 2 * 2 * 5, kinds
        expert_shapes = {tuple(sorted(s)) for s in run["expert_shapes"].values()}
        for shape in run["all_gather_shapes"]:
            assert tuple(sorted(shape)) not in expert_shapes, (key, shape)
    # Pure EP replicates the rest, so nothing at all is gathered at the experts' size.
    assert all(
        sorted(s) != sorted(run_s)
        for s in ci["runs"][("mixtral", "ep")]["all_gather_shapes"]
        for run_s in ci["runs"][("mixtral", "ep")]["expert_shapes"].values()
    )


def test_describe_shows_expert_sharding_and_all_to_all(ci):
    checks = ci["checks"]
    assert checks is not None and "crash" not in checks, checks
    rows = {r[0]: r for r in checks["describe_rows"]}
    # EP x FSDP (fsdp=2 x expert=4): experts over 'expert', FSDP on the largest other dim.
    name, spec, shard = rows["model.layers.0.mlp.experts.gate_up_proj"]
    assert spec == ["expert", "fsdp"] and shard == [2, INTERMEDIATE, HIDDEN]
    assert rows["model.layers.0.mlp.gate.weight"][1] == [None, "fsdp"]  # the router: FSDP only
    assert "x all-to-all" in checks["describe"]


def test_errors_name_the_parameter_shape_and_axis(ci):
    checks = ci["checks"]
    message = checks["not_divisible"]
    assert message.startswith("ShardingError"), message
    assert "'model.layers.0.mlp.experts.gate_up_proj' of shape [6, 80, 48]" in message
    assert "mesh axis 'expert' of size 8" in message
    assert "matches no parameter" in checks["no_experts"]
    assert "ShardingError" in checks["lowering_not_divisible"]
    assert (
        "12 expert groups do not divide by mesh axis 'expert' of size 8"
        in (checks["lowering_not_divisible"])
    )


def test_dispatch_and_combine_equal_ragged_dot_on_every_mesh(ci):
    # Uneven and empty groups, rows past the last group, more groups than devices.
    errors = ci["checks"]["ep_functions"]
    assert len(errors) == 9
    for case, (rows_error, contraction_error) in errors.items():
        assert rows_error < 1e-5 and contraction_error < 1e-5, case


def test_torch_compile_with_expert_parallel(ci):
    run = ci["checks"]["torch_compile"]
    assert _close(run["loss"], run["eager_loss"], 1e-5), run
    assert run["grad_error"] <= 1e-4 * run["grad_scale"], run
    assert "all-to-all" in run["forward_kinds"], run


@pytest.mark.parametrize("rows, groups, tile", [(37, 8, 4), (130, 4, 16), (200, 3, 64), (0, 2, 8)])
def test_tiled_grouped_matmuls_equal_ragged_dot(rows, groups, tile):
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from torchtpu.lower.ops.grouped import tiled_contraction, tiled_rows

    rng = np.random.default_rng(rows)
    a = jnp.asarray(rng.normal(size=(rows, 6)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(groups, 6, 5)), jnp.float32)
    grad = jnp.asarray(rng.normal(size=(rows, 5)), jnp.float32)
    cuts = np.sort(rng.integers(0, rows + 1, size=groups))  # empty groups, unused rows
    sizes = jnp.asarray(np.diff(cuts, prepend=0), jnp.int32)
    numbers = lax.RaggedDotDimensionNumbers(
        dot_dimension_numbers=(([1], [0]), ([], [])),
        lhs_ragged_dimensions=[1],
        rhs_group_dimensions=[],
    )
    want = lax.ragged_dot_general(a.T, grad, sizes, numbers)
    got = tiled_contraction(a.T, grad, sizes, tile=tile)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if rows:
        np.testing.assert_allclose(
            tiled_rows(a, b, sizes, tile=tile), lax.ragged_dot(a, b, sizes), rtol=1e-5, atol=1e-5
        )


@pytest.mark.slow
def test_hybrids_and_qwen2_moe_match_one_device():
    processes = [_start([arg]) for arg in SLOW]
    runs: dict = {}
    for process in processes:
        runs.update(collect(process)["runs"])
    _matches_one_device(runs, _one_device(runs))


# --- the worker side (8 devices, in its own process) ----------------------------------


def _build(name: str):
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    common = dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=SEQ, num_experts_per_tok=2,
    )  # fmt: skip
    if name == "mixtral":
        cfg = transformers.MixtralConfig(
            **common, intermediate_size=INTERMEDIATE, num_local_experts=EXPERTS
        )
        return transformers.MixtralForCausalLM(cfg)
    cfg = transformers.Qwen2MoeConfig(
        **common, intermediate_size=64, moe_intermediate_size=INTERMEDIATE,
        shared_expert_intermediate_size=32, num_experts=EXPERTS,
    )  # fmt: skip
    return transformers.Qwen2MoeForCausalLM(cfg)


def _strategy(key: str):
    import torchtpu

    return {
        "one": lambda: None,
        "ep": torchtpu.ExpertParallel,
        "ep_dp": lambda: torchtpu.ExpertParallel(data=2),
        "ep_fsdp": lambda: torchtpu.ExpertParallel(fsdp=2),
    }[key]()


def _train(base, key: str) -> tuple[dict, object, object]:
    import copy

    import torch
    from _spmd import _lm_step_for  # the sharding tests' language-model step (tests/shard)

    import torchtpu

    model = copy.deepcopy(base)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = _lm_step_for(model, opt)
    strategy = _strategy(key)
    compiled = torchtpu.compile_step(step, strategy=strategy)
    gen = torch.Generator().manual_seed(1)
    torchtpu.reset_metrics()
    losses = [
        float(compiled(torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen))) for _ in range(STEPS)
    ]
    compiles = torchtpu.metrics()["compiles"]
    found = torchtpu.shard.collectives(compiled.executor.programs[-1].compiled_text(), 8)
    kinds: dict[str, int] = {}
    for c in found:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    gathered = [_result_shape(c.line) for c in found if c.kind == "all-gather"]
    experts = {n: p for n, p in model.named_parameters() if ".experts." in n}
    shards, state_bytes = _expert_shards(compiled, model, experts)
    record = {
        "losses": losses,
        "compiles": compiles,
        "argument_bytes": compiled.memory_analysis().argument_size_in_bytes,
        "expert_bytes": sum(p.numel() * 4 for p in experts.values()),
        "expert_shapes": {n: list(p.shape) for n, p in experts.items()},
        "expert_shards": shards,
        "expert_state_bytes_per_device": state_bytes,
        "collectives": kinds,
        "all_gather_shapes": [s for s in gathered if s is not None],
    }
    record["params"] = {k: v.double().sum().item() for k, v in model.state_dict().items()}
    return record, compiled, strategy


def _result_shape(line: str) -> list[int] | None:
    import re

    found = re.search(r"=\s*[a-z0-9]+\[([0-9,]*)\]", line)
    return [int(d) for d in found.group(1).split(",") if d] if found else None


def _expert_shards(compiled, model, experts: dict) -> tuple[dict, int]:
    """The shard shapes of each expert weight as the step holds it, and the bytes
    one device holds of the experts and their Adam moments."""
    names = compiled._param_names
    if not names:  # one device: nothing sharded
        return {}, 0
    shards, per_device = {}, 0
    for key in list(compiled.store.keys()):
        value, kind = compiled.store.get(key), key[0]
        if kind not in {"param", "state"}:
            continue
        name = names[key[1] if kind == "param" else key[2]]
        if name not in experts or tuple(value.shape) != tuple(experts[name].shape):
            continue
        local = [list(s.data.shape) for s in value.addressable_shards]
        if kind == "param":
            shards[name] = local
        first = value.addressable_shards[0].data
        per_device += first.size * first.dtype.itemsize
    return shards, per_device


def _error(fn) -> str:
    try:
        fn()
    except Exception as exc:  # the message is what the test reads
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _checks(strategy, model, step) -> dict:
    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    import torchtpu
    from torchtpu.shard import expert

    out: dict = {}
    with open(os.devnull, "w") as sink:
        description = strategy.describe(model, step, file=sink)
    out["describe"] = description.table()
    out["describe_rows"] = [[r.name, list(r.spec), list(r.shard_shape)] for r in description.rows]
    six = transformers.MixtralConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, num_local_experts=6,
    )  # fmt: skip
    odd = transformers.MixtralForCausalLM(six)
    shapes = [(n, tuple(p.shape)) for n, p in odd.named_parameters()]
    out["not_divisible"] = _error(lambda: torchtpu.ExpertParallel().plan(shapes))
    dense = torch.nn.Sequential(torch.nn.Linear(8, 8))
    dense_shapes = [(n, tuple(p.shape)) for n, p in dense.named_parameters()]
    out["no_experts"] = _error(lambda: torchtpu.ExpertParallel().plan(dense_shapes))
    mesh = torchtpu.ExpertParallel().mesh
    a, b = jnp.ones((16, 4)), jnp.ones((12, 4, 4))
    sizes = jnp.full((12,), 1, jnp.int32)
    out["lowering_not_divisible"] = _error(
        lambda: jax.jit(lambda a, b, s: expert.rows_grouped(a, b, s, mesh, op="_grouped_mm"))(
            a, b, sizes
        )
    )
    out["ep_functions"] = _ep_functions()
    out["torch_compile"] = _torch_compile()
    return out


def _torch_compile() -> dict:
    """torch.compile(options={"strategy": ExpertParallel()}) of a CPU model: its
    forward and backward programs against eager, and the forward's collectives."""
    import copy

    import torch
    import transformers

    import torchtpu

    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        num_local_experts=EXPERTS, num_experts_per_tok=2, max_position_embeddings=SEQ,
    )  # fmt: skip
    model = transformers.MixtralForCausalLM(cfg)
    eager = copy.deepcopy(model)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    run = torch.compile(model, backend="tpu", options={"strategy": torchtpu.ExpertParallel()})
    loss = run(input_ids=ids, labels=ids).loss
    loss.backward()
    eager_loss = eager(input_ids=ids, labels=ids).loss
    eager_loss.backward()
    name = "model.layers.0.mlp.experts.down_proj"
    grad = dict(model.named_parameters())[name].grad
    eager_grad = dict(eager.named_parameters())[name].grad
    forward = [p for p in torchtpu.compile.programs() if p.name == "forward"][-1]
    kinds = {c.kind for c in torchtpu.shard.collectives(forward.compiled_text(), 8)}
    return {
        "loss": float(loss),
        "eager_loss": float(eager_loss),
        "grad_error": float((grad - eager_grad).abs().max()),
        "grad_scale": float(eager_grad.abs().max()),
        "forward_kinds": sorted(kinds),
    }


def _ep_functions() -> dict:
    """torchtpu.shard.expert's dispatch/compute/combine against one ragged_dot, on a
    1-D and two 2-D meshes: the largest difference of each form."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from torchtpu.shard import expert
    from torchtpu.shard.mesh import make_mesh

    rng = np.random.default_rng(0)
    numbers = lax.RaggedDotDimensionNumbers(
        dot_dimension_numbers=(([1], [0]), ([], [])),
        lhs_ragged_dimensions=[1],
        rhs_group_dimensions=[],
    )
    out = {}
    for axes in [{"expert": 8}, {"data": 2, "expert": 4}, {"fsdp": 4, "expert": 2}]:
        mesh = make_mesh(axes)
        for rows, groups in [(37, 8), (64, 16), (5, 8)]:
            a = jnp.asarray(rng.normal(size=(rows, 6)), jnp.float32)
            b = jnp.asarray(rng.normal(size=(groups, 6, 5)), jnp.float32)
            grad = jnp.asarray(rng.normal(size=(rows, 5)), jnp.float32)
            cuts = np.sort(rng.integers(0, rows + 1, size=groups))
            sizes = jnp.asarray(np.diff(cuts, prepend=0), jnp.int32)
            got = jax.jit(lambda a, b, s, m=mesh: expert.rows_grouped(a, b, s, m, op="t"))(
                a, b, sizes
            )
            got_grad = jax.jit(
                lambda a, g, s, m=mesh, n=groups: expert.contraction_grouped(
                    a, g, s, m, op="t", groups=n
                )
            )(a.T, grad, sizes)
            want = lax.ragged_dot(a, b, sizes)
            want_grad = lax.ragged_dot_general(a.T, grad, sizes, numbers)
            key = f"{axes} rows={rows} groups={groups} sizes={np.asarray(sizes).tolist()}"
            out[key] = [
                float(jnp.abs(got - want).max()),
                float(jnp.abs(got_grad - want_grad).max()),
            ]
    return out


def main(argv: list[str]) -> None:
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    import traceback

    last = None
    for arg in argv:
        if arg == "checks":
            try:
                result = _checks(*last)
            except Exception:
                result = {"crash": traceback.format_exc()}
            print(json.dumps({"checks": result}), flush=True)
            continue
        name, keys = arg.split(":")
        base = _build(name)
        for key in keys.split(","):
            record, compiled, strategy = _train(base, key)
            print(json.dumps({"model": name, "strategy": key, **record}), flush=True)
            if strategy is not None:
                last = (strategy, base, compiled)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main(sys.argv[1:])
