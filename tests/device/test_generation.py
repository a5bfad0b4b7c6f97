"""HF generate on the tpu device: exact tokens, and a number of programs that does not
grow with the number of tokens generated."""

from __future__ import annotations

import pytest
import torch

import torchtpu
from torchtpu.device.generation import bucket

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=256)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    ours = transformers.GPT2LMHeadModel(cfg).eval()
    ours.load_state_dict(ref.state_dict())
    return ref, ours.to("tpu")


def _ids():
    return torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(1))


def test_buckets_are_powers_of_two():
    assert [bucket(n) for n in (1, 64, 65, 200, 513)] == [64, 64, 128, 256, 1024]


@pytest.mark.parametrize("cache", [None, "static"])
def test_greedy_tokens_equal_eager_and_programs_do_not_grow(models, cache):
    ref, ours = models
    ids = _ids()
    counts = []
    for new in (10, 40):  # both fit one cache bucket (64)
        want = ref.generate(ids, max_new_tokens=new, do_sample=False, pad_token_id=0)
        before = torchtpu.metrics()["compiles"]
        got = ours.generate(
            ids.to("tpu"),
            max_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
            cache_implementation=cache,
        )
        counts.append(torchtpu.metrics()["compiles"] - before)
        assert got.device.type == "tpu"
        assert torch.equal(got.cpu(), want)
    assert counts[1] == 0  # 4x the tokens, the same programs as the first call
    assert torchtpu.metrics()["fallbacks"] == {}


def test_sampling_matches_eager_for_the_same_seed(models):
    ref, ours = models
    torch.manual_seed(7)
    want = ref.generate(_ids(), max_new_tokens=12, do_sample=True, top_k=10, pad_token_id=0)
    torch.manual_seed(7)
    got = ours.generate(
        _ids().to("tpu"), max_new_tokens=12, do_sample=True, top_k=10, pad_token_id=0
    )
    assert torch.equal(got.cpu(), want)


def test_a_compiled_forward_generates_with_one_decode_program(models):
    ref, ours = models
    ours.forward = torch.compile(ours.forward, backend="tpu")
    try:
        want = ref.generate(_ids(), max_new_tokens=20, do_sample=False, pad_token_id=0)
        got = ours.generate(_ids().to("tpu"), max_new_tokens=20, do_sample=False, pad_token_id=0)
        assert torch.equal(got.cpu(), want)
        graphs = torchtpu.metrics()["graphs"]
        ours.generate(_ids().to("tpu"), max_new_tokens=30, do_sample=False, pad_token_id=0)
        assert torchtpu.metrics()["graphs"] == graphs  # no recompile for more tokens
    finally:
        del ours.forward
