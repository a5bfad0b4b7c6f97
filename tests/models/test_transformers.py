"""Real architectures from HuggingFace configs with random weights, in strict mode.

Each model's logits are compared with eager in float32, then both copies train
for three AdamW steps and their losses are compared. Dropout is set to zero so
the two runs see the same computation.
"""

import copy

import pytest
import torch

import torchtpu

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB = 96


def _ids():
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))


def _images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def gpt2():
    cfg = transformers.GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=32,
        resid_pdrop=0,
        embd_pdrop=0,
        attn_pdrop=0,
    )
    return transformers.GPT2LMHeadModel(cfg), {"input_ids": _ids(), "labels": _ids()}


def llama():
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(cfg), {"input_ids": _ids(), "labels": _ids()}


def bert():
    cfg = transformers.BertConfig(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        vocab_size=VOCAB,
        hidden_dropout_prob=0,
        attention_probs_dropout_prob=0,
    )
    return transformers.BertForMaskedLM(cfg), {"input_ids": _ids(), "labels": _ids()}


def t5():
    cfg = transformers.T5Config(
        num_layers=2,
        d_model=64,
        d_ff=128,
        num_heads=4,
        d_kv=16,
        vocab_size=VOCAB,
        dropout_rate=0,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    return transformers.T5ForConditionalGeneration(cfg), {"input_ids": _ids(), "labels": _ids()}


def vit():
    cfg = transformers.ViTConfig(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        num_labels=10,
        hidden_dropout_prob=0,
        attention_probs_dropout_prob=0,
    )
    return transformers.ViTForImageClassification(cfg), {
        "pixel_values": _images(),
        "labels": torch.tensor([1, 7]),
    }


def resnet():
    cfg = transformers.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10
    )
    return transformers.ResNetForImageClassification(cfg), {
        "pixel_values": _images(),
        "labels": torch.tensor([1, 7]),
    }


ARCHITECTURES = {"gpt2": gpt2, "llama": llama, "bert": bert, "t5": t5, "vit": vit, "resnet": resnet}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_logits_match_eager(name):
    torch.manual_seed(0)
    model, inputs = ARCHITECTURES[name]()
    model.eval()
    step = torch.compile(model, backend="tpu", options={"strict": True})
    with torch.no_grad():
        ours = step(**inputs).logits
        ref = model(**inputs).logits
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert torchtpu.metrics()["compiles"] >= 1
    assert torchtpu.metrics()["fallbacks"] == {}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_training_losses_match_eager(name):
    torch.manual_seed(0)
    model, inputs = ARCHITECTURES[name]()
    model.train()
    ours = copy.deepcopy(model)
    step = torch.compile(ours, backend="tpu", options={"strict": True})
    opt_ref = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-3)
    for _ in range(3):
        ref_loss = model(**inputs).loss
        ref_loss.backward()
        opt_ref.step()
        opt_ref.zero_grad()
        loss = step(**inputs).loss
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad()
        torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    # Adam divides by sqrt(v): where a gradient is near zero, rounding noise can
    # move an element by up to one step (lr), so weights get lr as tolerance.
    for p, q in zip(model.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-3)
    assert torchtpu.metrics()["fallbacks"] == {}


def _on_tpu(inputs: dict) -> dict:
    return {k: v.to("tpu") for k, v in inputs.items()}


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert", "vit"])
def test_compiled_on_tpu_tensors_trains_with_no_weight_transfers(name):
    """The usage TorchTPU documents: model.to("tpu"), torch.compile, an unmodified eager
    optimizer. Forward and backward are compiled programs, the optimizer step a fused
    device-mode program; weights, grads and optimizer state never leave the device."""
    torch.manual_seed(0)
    model, inputs = ARCHITECTURES[name]()
    model.train()
    ours = copy.deepcopy(model).to("tpu")
    step = torch.compile(ours, backend="tpu", options={"strict": True})
    opt_ref = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-3)
    device_inputs = _on_tpu(inputs)
    torchtpu.set_options(strict=True)  # no eager fallback in the optimizer either
    for i in range(3):
        ref_loss = model(**inputs).loss
        ref_loss.backward()
        opt_ref.step()
        opt_ref.zero_grad()
        torchtpu.reset_metrics()
        loss = step(**device_inputs).loss
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad()
        moved = torchtpu.metrics()
        torch.testing.assert_close(loss.cpu(), ref_loss, rtol=1e-5, atol=1e-5)
        # No byte moves between host and device in any step (the first step's tracing
        # moves a few empty constants); after it, not even an empty one.
        assert moved["host_to_device_bytes"] == 0 and moved["device_to_host_bytes"] == 0, i
        assert i == 0 or moved["host_to_device"] == moved["device_to_host"] == 0, (i, moved)
    assert all(p.device.type == "tpu" for p in ours.parameters())
    for p, q in zip(model.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(p, q.cpu(), rtol=0, atol=1e-3)
    assert torchtpu.metrics()["fallbacks"] == {}
