"""A data-parallel training script written for CUDA and NCCL, the way people write them.

Under torchrun it trains with DistributedDataParallel, one process per GPU;
run as a single process it trains on the same global batches (both ranks'
samples at each step) on the CPU, which is what DDP must match. It knows
nothing of torchtpu: `torchrun ... --no-python torchtpu run ddp_train.py`
runs it unchanged on tpu devices.

    python ddp_train.py --out ref.json --world 2
    torchrun --nproc_per_node=2 ddp_train.py --out ddp.json
"""

import argparse
import json
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def make_data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)).squeeze(1)
    return TensorDataset(x, y)


def make_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--world", type=int, default=1, help="single process: ranks to emulate")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=8, help="per rank")
    args = p.parse_args()

    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("nccl")
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        rank, world = 0, args.world
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    data = make_data()
    model = make_model().to(device)
    if distributed:
        model = DDP(model, device_ids=[local_rank])
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    loss_fn = nn.MSELoss()
    samplers = [
        DistributedSampler(data, num_replicas=world, rank=r, shuffle=True, seed=0)
        for r in ([rank] if distributed else range(world))
    ]

    losses = []
    for epoch in range(args.epochs):
        for s in samplers:
            s.set_epoch(epoch)
        loaders = [DataLoader(data, batch_size=args.batch, sampler=s) for s in samplers]
        for batches in zip(*loaders, strict=True):
            x = torch.cat([b[0] for b in batches]).to(device, non_blocking=True)
            y = torch.cat([b[1] for b in batches]).to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x).squeeze(1), y)
            loss.backward()
            opt.step()
            reported = loss.detach().clone()
            if distributed:
                dist.all_reduce(reported, op=dist.ReduceOp.AVG)
            losses.append(reported.item())

    params = {k: v.detach().cpu().flatten().tolist() for k, v in model.state_dict().items()}
    params = {k.removeprefix("module."): v for k, v in params.items()}
    result = {
        "rank": rank,
        "world": world,
        "losses": losses,
        "params": params,
        "param_device": str(next(model.parameters()).device),
    }
    with open(args.out if not distributed else f"{args.out}.{rank}", "w") as f:
        json.dump(result, f)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
