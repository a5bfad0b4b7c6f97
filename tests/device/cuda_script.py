"""A training script written for CUDA; tests/device/test_cuda_compat.py runs it unchanged."""

import json
import sys

import torch
import torch.nn.functional as F

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)).cuda()
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
scaler = torch.amp.GradScaler("cuda")
g = torch.Generator().manual_seed(1)
losses = []
for _ in range(int(sys.argv[1])):
    x = torch.randn(16, 8, generator=g).to(device)
    y = torch.randn(16, 1, generator=g).cuda()
    bias = torch.zeros(1, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
    loss = F.mse_loss(out.float() + bias, y)
    opt.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    torch.cuda.synchronize()
    losses.append(loss.item())
result = {
    "available": torch.cuda.is_available(),
    "param_device": str(next(model.parameters()).device),
    "out_dtype": str(out.dtype),
    "losses": losses,
}
print("RESULT " + json.dumps(result))
