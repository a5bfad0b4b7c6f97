"""Fine-tuning a HuggingFace sequence classifier the way the examples do: AdamW,
a linear schedule with warmup, gradient clipping. Random weights from a small
config and synthetic data, so nothing is downloaded. Runs on CUDA if there is one.

    python finetune.py --steps 6
"""

import argparse
import json

import torch
import transformers
from transformers import BertConfig, BertForSequenceClassification, get_linear_schedule_with_warmup

transformers.logging.set_verbosity_error()
p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=6)
args = p.parse_args()

device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(42)
config = BertConfig(
    vocab_size=200,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    num_labels=3,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.0,
)
model = BertForSequenceClassification(config)
model.to(device)
g = torch.Generator().manual_seed(0)
batches = []
for _ in range(args.steps):
    input_ids = torch.randint(1, 200, (8, 24), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[:, 20:] = 0
    labels = torch.randint(0, 3, (8,), generator=g)
    batches.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})

no_decay = ["bias", "LayerNorm.weight"]
grouped = [
    {
        "params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
        "weight_decay": 0.01,
    },
    {
        "params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)],
        "weight_decay": 0.0,
    },
]
optimizer = torch.optim.AdamW(grouped, lr=5e-4)
scheduler = get_linear_schedule_with_warmup(
    optimizer, num_warmup_steps=2, num_training_steps=args.steps
)
model.train()
model.config.hidden_dropout_prob = 0.0
for module in model.modules():  # dropout off, so both runs compute the same thing
    if isinstance(module, torch.nn.Dropout):
        module.p = 0.0
losses = []
for batch in batches:
    batch = {k: v.to(device) for k, v in batch.items()}
    outputs = model(**batch)
    loss = outputs.loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    losses.append(loss.item())
model.eval()
with torch.no_grad():
    logits = model(**{k: v.to(device) for k, v in batches[0].items()}).logits
print("RESULT " + json.dumps({"losses": losses, "logits": logits.cpu().tolist()}))
