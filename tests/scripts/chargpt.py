"""A single-file character-level GPT trainer, written the way such scripts are.

It knows nothing of torchtpu: it trains on CUDA when there is one, else on the CPU.
The test runs it unchanged as `python chargpt.py ...` (eager CPU) and as
`torchtpu run chargpt.py ...` (the tpu device) and compares the losses.

    python chargpt.py --data input.txt --out ckpt.pt --max_iters 8 [--resume]
"""

import argparse
import inspect
import json
import math
import os
import time
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--data", required=True)
p.add_argument("--out", required=True)
p.add_argument("--n_layer", type=int, default=2)
p.add_argument("--n_head", type=int, default=2)
p.add_argument("--n_embd", type=int, default=64)
p.add_argument("--block_size", type=int, default=32)
p.add_argument("--batch_size", type=int, default=4)
p.add_argument("--grad_accum", type=int, default=2)
p.add_argument("--max_iters", type=int, default=8)
p.add_argument("--save_at", type=int, default=-1)
p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--compile", type=int, default=1)
p.add_argument("--resume", action="store_true")
p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
p.add_argument("--time", action="store_true")
args = p.parse_args()

device = "cuda" if torch.cuda.is_available() else "cpu"
device_type = "cuda" if "cuda" in device else "cpu"
dtype = args.dtype
if dtype == "auto":  # bf16 where the accelerator has it, full precision on the CPU
    use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    dtype = "bfloat16" if use_bf16 else "float32"
ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
ctx = (
    nullcontext()
    if dtype == "float32"
    else torch.amp.autocast(device_type=device_type, dtype=ptdtype)
)
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
torch.manual_seed(1337)

with open(args.data) as f:
    text = f.read()
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}
data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
n = int(0.9 * len(data))
train_data, val_data = data[:n], data[n:]
vocab_size = len(chars)
data_gen = torch.Generator().manual_seed(7)


batch_state = data_gen.get_state()


def get_batch(split):
    global batch_state
    batch_state = data_gen.get_state()  # what a checkpoint stores, to replay this batch
    d = train_data if split == "train" else val_data
    ix = torch.randint(len(d) - args.block_size, (args.batch_size,), generator=data_gen)
    x = torch.stack([d[i : i + args.block_size] for i in ix])
    y = torch.stack([d[i + 1 : i + 1 + args.block_size] for i in ix])
    if device_type == "cuda":
        x, y = (
            x.pin_memory().to(device, non_blocking=True),
            y.pin_memory().to(device, non_blocking=True),
        )
    else:
        x, y = x.to(device), y.to(device)
    return x, y


class CausalSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = nn.Linear(args.n_embd, 3 * args.n_embd)
        self.c_proj = nn.Linear(args.n_embd, args.n_embd)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(args.n_embd, dim=2)
        k = k.view(B, T, args.n_head, C // args.n_head).transpose(1, 2)
        q = q.view(B, T, args.n_head, C // args.n_head).transpose(1, 2)
        v = v.view(B, T, args.n_head, C // args.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(args.n_embd)
        self.attn = CausalSelfAttention()
        self.ln_2 = nn.LayerNorm(args.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(args.n_embd, 4 * args.n_embd),
            nn.GELU(),
            nn.Linear(4 * args.n_embd, args.n_embd),
        )

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, args.n_embd)
        self.wpe = nn.Embedding(args.block_size, args.n_embd)
        self.h = nn.ModuleList([Block() for _ in range(args.n_layer)])
        self.ln_f = nn.LayerNorm(args.n_embd)
        self.lm_head = nn.Linear(args.n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            torch.nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None):
        pos = torch.arange(0, idx.size(1), dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas):
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        fused_available = "fused" in inspect.signature(torch.optim.AdamW).parameters
        use_fused = fused_available and device_type == "cuda"
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=use_fused)


def get_lr(it):
    warmup, decay_iters, min_lr = 2, args.max_iters, args.lr / 10
    if it < warmup:
        return args.lr * (it + 1) / (warmup + 1)
    ratio = (it - warmup) / max(decay_iters - warmup, 1)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * min(ratio, 1.0))) * (args.lr - min_lr)


model = GPT().to(device)
optimizer = model.configure_optimizers(0.1, args.lr, (0.9, 0.95))
iter_num = 0
if args.resume:
    checkpoint = torch.load(args.out, map_location=device)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    iter_num = checkpoint["iter_num"]
    data_gen.set_state(checkpoint["data_gen"].cpu())
raw_model = model
scaler = torch.amp.GradScaler(device_type, enabled=True)
if args.resume:
    scaler.load_state_dict(checkpoint["scaler"])
if args.compile:
    model = torch.compile(model)

losses, times = [], []
X, Y = get_batch("train")
while iter_num < args.max_iters:
    t0 = time.time()
    for group in optimizer.param_groups:
        group["lr"] = get_lr(iter_num)
    for _ in range(args.grad_accum):
        with ctx:
            logits, loss = model(X, Y)
            loss = loss / args.grad_accum
        X, Y = get_batch("train")
        scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    losses.append(loss.item() * args.grad_accum)
    times.append(time.time() - t0)
    iter_num += 1
    if iter_num == args.save_at:
        torch.save(
            {
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "iter_num": iter_num,
                "scaler": scaler.state_dict(),
                "data_gen": batch_state,
            },
            args.out + ".tmp",
        )
        os.replace(args.out + ".tmp", args.out)

result = {
    "device": str(next(raw_model.parameters()).device),
    "losses": losses,
    "step_s": sorted(times[2:])[len(times[2:]) // 2] if len(times) > 2 else None,
}
print("RESULT " + json.dumps(result))
