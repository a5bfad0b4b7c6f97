"""Text generation with a HuggingFace causal LM: greedy decoding and sampling.
Random weights from a small config, so nothing is downloaded. Runs on CUDA if there is one.

    python generate.py --new 24
"""

import argparse
import json
import time

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

transformers.logging.set_verbosity_error()
p = argparse.ArgumentParser()
p.add_argument("--new", type=int, default=24)
args = p.parse_args()

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=256))
model = model.to(device).eval()
prompt = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1)).to(device)
mask = torch.ones_like(prompt)
start = time.time()
greedy = model.generate(
    prompt, attention_mask=mask, max_new_tokens=args.new, do_sample=False, pad_token_id=0
)
greedy_s = time.time() - start
torch.manual_seed(123)
sampled = model.generate(
    prompt,
    attention_mask=mask,
    max_new_tokens=args.new,
    do_sample=True,
    top_k=40,
    temperature=0.8,
    pad_token_id=0,
)
result = {"greedy": greedy.cpu().tolist(), "sampled": sampled.cpu().tolist(), "greedy_s": greedy_s}
try:
    import torchtpu

    result["compiles"] = torchtpu.metrics()["compiles"]
except ImportError:
    pass
print("RESULT " + json.dumps(result))
