"""Rank 1 dies abruptly after the first collective; rank 0 keeps calling collectives.

Rank 0 must stop with an error (the peer's connection closes, or JAX's
heartbeat notices the dead task), not wait forever.
"""

import os
import time

import torch
import torch.distributed as dist

import torchtpu  # noqa: F401
import torchtpu.shard.c10d  # noqa: F401 - registers "tpu"

dist.init_process_group("tpu")
x = torch.ones(4, device="tpu")
dist.all_reduce(x)
print(f"rank {dist.get_rank()} first all_reduce {x.cpu().tolist()}", flush=True)
if dist.get_rank() == 1:
    os._exit(17)
start = time.monotonic()
while time.monotonic() - start < 120:
    dist.all_reduce(x)
    x.cpu()
    time.sleep(0.2)
print("rank 0 was never stopped", flush=True)
