"""The torch.cuda calls real scripts make, each exercised; run under `torchtpu run`."""

import io
import json
import socket

import torch
import torch.distributed as dist

out = {}
out["available"] = torch.cuda.is_available()
out["count"] = torch.cuda.device_count()
torch.cuda.set_device(0)
out["current"] = torch.cuda.current_device()
out["name"] = torch.cuda.get_device_name(0)
props = torch.cuda.get_device_properties(0)
out["total_memory"] = props.total_memory
out["capability"] = list(torch.cuda.get_device_capability())
out["bf16"] = torch.cuda.is_bf16_supported()
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
torch.backends.cudnn.benchmark = True
torch.backends.cudnn.deterministic = False
torch.cuda.manual_seed_all(3)
torch.cuda.empty_cache()
torch.cuda.reset_peak_memory_stats()

x = torch.randn(256, 256).pin_memory().to("cuda", non_blocking=True)
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
stream = torch.cuda.Stream()
with torch.cuda.stream(stream):
    start.record()
    y = (x @ x).relu()
    end.record()
torch.cuda.current_stream().wait_stream(stream)
end.synchronize()
out["elapsed_ms_positive"] = start.elapsed_time(end) > 0
out["y_device"] = str(y.device)
torch.cuda.synchronize()
out["allocated_positive"] = torch.cuda.memory_allocated() > 0
out["peak_at_least_allocated"] = torch.cuda.max_memory_allocated() >= torch.cuda.memory_allocated()
out["reserved"] = torch.cuda.memory_reserved() >= 0

state = torch.cuda.get_rng_state()
a = torch.rand(4, device="cuda").cpu()
torch.cuda.set_rng_state(state)
out["rng_replays"] = torch.equal(torch.rand(4, device="cuda").cpu(), a)
with torch.random.fork_rng(devices=[0], device_type="cuda"):
    inside = torch.rand(4, device="cuda").cpu()
out["fork_rng_replays"] = torch.equal(torch.rand(4, device="cuda").cpu(), inside)

model = torch.nn.Linear(8, 8).cuda()
for fused in (True, False):
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-2, fused=fused, foreach=None if fused else True
    )
    model(torch.randn(2, 8, device="cuda")).sum().backward()
    opt.step()
    opt.zero_grad()
buffer = io.BytesIO()
torch.save({"model": model.state_dict()}, buffer)
buffer.seek(0)
loaded = torch.load(buffer, map_location="cuda", weights_only=True)
out["loaded_device"] = str(loaded["model"]["weight"].device)
out["loaded_equal"] = torch.equal(loaded["model"]["weight"].cpu(), model.weight.cpu())

refused = {}
for call in (
    lambda: torch.cuda.CUDAGraph(),
    lambda: torch.cuda.set_per_process_memory_fraction(0.5),
):
    try:
        call()
        refused[len(refused)] = "no error"
    except Exception as exc:  # noqa: BLE001 - the test reads the type and message
        refused[len(refused)] = f"{type(exc).__name__}: {exc}"
out["refused"] = refused

# NCCL is the tpu process group: a job of one process, so no JAX distributed runtime.
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
out["nccl_backend"] = dist.get_backend()
summed = torch.ones(3, device="cuda")
dist.all_reduce(summed)
out["nccl_all_reduce"] = summed.cpu().tolist()
dist.destroy_process_group()
print("RESULT " + json.dumps(out))
