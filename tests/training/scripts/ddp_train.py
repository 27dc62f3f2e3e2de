"""A torch.distributed (gloo) worker, as it would run under torchrun: all-reduce the ranks, train a tiny model
with DDP, checkpoint every step with capstan.checkpoint, resume from the latest checkpoint.

Usage: ddp_train.py OUT_DIR STEPS KILL_AT (rank 1 SIGKILLs itself after step KILL_AT on attempt 1; -1: never)
"""

import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import capstan
import capstan.checkpoint

out, steps, kill_at = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
dist.init_process_group("gloo", init_method="env://")
rank, world = dist.get_rank(), dist.get_world_size()
attempt = int(os.environ["CAPSTAN_JOB_ATTEMPT"])
total = torch.tensor([float(rank)])
dist.all_reduce(total)
(out / f"allreduce-attempt-{attempt}-rank-{rank}").write_text(f"{total.item():g} {world}")

torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
ddp = DistributedDataParallel(model)
opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
start = 0
found = capstan.checkpoint.load_latest(map_location="cpu")
if found is not None:
    state, step = found
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    start = step + 1
(out / f"start-attempt-{attempt}-rank-{rank}").write_text(str(start))
generator = torch.Generator().manual_seed(rank)
for step in range(start, steps):
    x = torch.randn(8, 4, generator=generator)
    loss = ((ddp(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    capstan.log_metric("loss", loss.item(), step=step)
    capstan.checkpoint.save({"model": model.state_dict(), "opt": opt.state_dict()}, step)
    dist.barrier()  # every rank has passed the step once rank 0 has stored its checkpoint
    if attempt == 1 and rank == 1 and step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
dist.destroy_process_group()
