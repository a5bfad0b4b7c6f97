"""Train a small HF Llama with plain ``torch.compile(backend="tpu")``: a script to plan.

    torchtpu plan --chips local,h100,tpu-v6e --n-chips 8 --tokens 1e9 --chart plan.png \\
        examples/plan_llama.py --layers 2 --width 256

``torchtpu plan`` runs this script until its first training step has run, stops it, and
prices that step's compiled forward and backward programs on each chip. Run on its own,
it trains for ``--steps`` steps on random tokens and prints the losses.
"""

from __future__ import annotations

import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--width", type=int, default=256, help="hidden size")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--context", type=int, default=128, help="tokens per sequence")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.width,
        intermediate_size=args.width * 8 // 3,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=args.context,
    )
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    compiled = torch.compile(model, backend="tpu")
    params = sum(q.numel() for q in model.parameters())
    print(f"Llama: {params / 1e6:.2f}M parameters, {args.layers} layers x {args.width} wide")
    for step in range(args.steps):
        ids = torch.randint(0, args.vocab, (args.batch, args.context))
        loss = compiled(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        print(f"step {step}: loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
