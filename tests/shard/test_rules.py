"""Rules, placements and the HLO collective reader, in-process on one device
(the 8-device runs are in test_spmd.py)."""

from __future__ import annotations

import pytest
import torch

import torchtpu
from torchtpu.errors import ShardingError
from torchtpu.shard import RULE_SETS, Rule, Strategy, collectives
from torchtpu.shard.rules import as_rules, detect_family
from torchtpu.shard.strategy import Placement


def test_rules_are_data_and_the_first_match_wins():
    rules = as_rules([(r"up\.weight$", ("model", None)), (r"weight$", (None, "model"))])
    s = Strategy({"model": 1}, rules)
    plan = s.plan([("mlp.up.weight", (8, 4)), ("mlp.down.weight", (4, 8))])
    assert plan["mlp.up.weight"].spec == ("model",)
    assert plan["mlp.down.weight"].spec == (None, "model")
    assert plan["mlp.up.weight"].rule == r"up\.weight$"


def test_bad_rules_are_clear_errors():
    with pytest.raises(ShardingError, match="not a regex"):
        Rule("(", ("model",))
    with pytest.raises(ShardingError, match="give \\(pattern, spec\\)"):
        as_rules([("only-a-pattern",)])
    with pytest.raises(ShardingError, match="no such rule set"):
        as_rules("mixtral")
    s = Strategy({"model": 1}, [(r"w$", ("model", None, None))])
    with pytest.raises(ShardingError, match="3 entries for a 2-d tensor"):
        s.plan([("w", (4, 4))])


def test_the_ready_rule_sets_match_their_families():
    assert detect_family(["model.layers.0.self_attn.q_proj.weight"]) == "llama"
    assert detect_family(["transformer.h.0.attn.c_attn.weight"]) == "gpt2"
    assert detect_family(["0.weight"]) is None
    llama = Strategy({"model": 1}, "llama").plan(
        [
            ("model.layers.0.self_attn.q_proj.weight", (64, 64)),
            ("model.layers.0.self_attn.o_proj.weight", (64, 64)),
            ("model.layers.0.mlp.down_proj.weight", (64, 128)),
        ]
    )
    assert llama["model.layers.0.self_attn.q_proj.weight"].spec == ("model",)  # column
    assert llama["model.layers.0.self_attn.o_proj.weight"].spec == (None, "model")  # row
    # GPT-2's Conv1D stores (in, out): column parallel splits the second dimension.
    gpt2 = {r.pattern: r.spec for r in RULE_SETS["gpt2"]}
    assert gpt2[r"\.(attn\.c_attn|mlp\.c_fc)\.weight$"] == (None, "model")


def test_fsdp_takes_the_largest_dimension_that_divides():
    s = torchtpu.FSDP()
    n = s.mesh.shape["fsdp"]
    plan = s.plan([("emb", (100 * n, 16 * n)), ("w", (3, 8 * n)), ("odd", (3, 5))])
    assert plan["emb"].spec == ("fsdp",)
    assert plan["w"].spec == (None, "fsdp")
    if n > 1:
        assert "no dimension divides" in plan["odd"].note


def test_a_mesh_larger_than_the_devices_is_an_error():
    import jax

    n = len(jax.devices())
    with pytest.raises(ShardingError, match=f"needs {2 * n} devices, but JAX sees {n}"):
        torchtpu.Strategy({"data": 2 * n})


def test_placement_shard_shape():
    s = Strategy({"data": 1, "model": 1})
    p = Placement("w", (8, 6), ("data", ("model",)), None)
    assert p.shard_shape(s.mesh) == (8, 6)


def test_one_device_strategy_matches_no_strategy():
    def train(strategy):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

        def step(x):
            loss = model(x).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss

        compiled = torchtpu.compile_step(step, strategy=strategy)
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
        return [float(compiled(x)) for _ in range(3)], model.state_dict()

    plain, plain_state = train(None)
    sharded, sharded_state = train(torchtpu.DataParallel())
    assert plain == pytest.approx(sharded, rel=1e-6)
    for k, v in plain_state.items():
        torch.testing.assert_close(sharded_state[k], v)


def test_compile_step_rejects_what_is_not_a_strategy():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="not a torchtpu.Strategy"):
        torchtpu.compile_step(lambda x: model(x).sum(), models=[model], strategy="fsdp")


# Lines as XLA prints them.
HLO = "\n".join(
    [
        "%all-reduce.5 = (f32[], f32[1024,256]{1,0}, /*index=2*/f32[1024]{0}) "
        "all-reduce(%a, %b, %c), channel_id=1, replica_groups=[1,8]<=[8], "
        "use_global_device_ids=true, to_apply=%add",
        "%all-gather = f32[64,256]{1,0} all-gather(f32[8,256]{1,0} %param), channel_id=2, "
        "replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}",
        "%reduce-scatter = bf16[128]{0} reduce-scatter(bf16[1024]{0} %g), channel_id=3, "
        "replica_groups=[1,8]<=[8], dimensions={0}, to_apply=%add",
        "%ags = (f32[2]{0}, f32[16]{0}) all-gather-start(f32[2]{0} %p), "
        "replica_groups=[1,8]<=[8], dimensions={0}",
        "%agd = f32[16]{0} all-gather-done(%ags)",
        "%add = f32[4]{0} add(%x, %y)",
    ]
)


def test_collectives_are_read_from_hlo():
    found = collectives(HLO, 8)
    kinds = [(c.kind, c.bytes, c.group_size) for c in found]
    assert kinds == [
        ("all-reduce", 4 + 1024 * 256 * 4 + 1024 * 4, 8),
        ("all-gather", 64 * 256 * 4, 4),
        ("reduce-scatter", 1024 * 2, 8),
        ("all-gather", 16 * 4, 8),
    ]
    assert found[0].wire_bytes == pytest.approx(2 * 7 / 8 * found[0].bytes)
    assert found[1].wire_bytes == pytest.approx(3 / 4 * found[1].bytes)


def test_hlo_array_bytes_read_each_dtypes_width():
    from torchtpu.shard.hlo import shapes_bytes

    text = "(f32[8,4], bf16[2], f8e4m3fn[10], f8e5m2[3], c64[2], pred[4], s32[], token[])"
    # fp8 types are one byte each (their names hold more digits than their width).
    assert shapes_bytes(text) == [128, 4, 10, 3, 16, 4, 4]
