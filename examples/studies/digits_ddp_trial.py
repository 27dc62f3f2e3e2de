"""One trial of ``digits-ddp.yaml``: a training job whose workers train a small MLP on scikit-learn's digits with
DistributedDataParallel (gloo, CPU; torchrun's environment comes from `capstan train`). Each rank trains on its
shard of the training set, gradients are averaged across ranks, and rank 0 reports the test accuracy after every
epoch (`capstan.report`) and stops early when the study's pruner says so. A checkpoint per epoch lets a preempted
or restarted trial resume where it was.

Needs torch (`pip install torch`, or the runtime image on a cluster).
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.nn.parallel import DistributedDataParallel

import capstan
import capstan.checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--hidden", type=int, required=True)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.25, random_state=0, stratify=y)
    shard_x = torch.tensor(x_train[rank::world], dtype=torch.float32)
    shard_y = torch.tensor(y_train[rank::world])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, args.hidden), torch.nn.ReLU(), torch.nn.Linear(args.hidden, 10))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)
    start = 0
    found = capstan.checkpoint.load_latest()
    if found is not None:
        state, epoch = found
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = epoch + 1
    for epoch in range(start, args.epochs):
        for batch in torch.randperm(len(shard_x), generator=torch.Generator().manual_seed(epoch)).split(32):
            loss = torch.nn.functional.cross_entropy(ddp(shard_x[batch]), shard_y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        capstan.checkpoint.save({"model": model.state_dict(), "opt": opt.state_dict()}, epoch)
        stop = torch.tensor([0])
        if rank == 0:
            with torch.no_grad():
                predicted = model(torch.tensor(x_test, dtype=torch.float32)).argmax(dim=1).numpy()
            capstan.report(float((predicted == y_test).mean()), step=epoch)
            stop[0] = int(capstan.should_prune())
        dist.broadcast(stop, 0)  # every rank stops together when the pruner stops the trial
        if stop.item():
            break
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
