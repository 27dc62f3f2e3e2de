"""A torch.distributed (gloo) worker of a partially admitted job: records its rank variables and what the
rendezvous agreed on (the world size and the all-reduced sum of the ranks).

Usage: partial_env.py OUT_DIR
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

out = Path(sys.argv[1])
dist.init_process_group("gloo", init_method="env://")
rank, world = dist.get_rank(), dist.get_world_size()
total = torch.tensor([float(rank)])
dist.all_reduce(total)
seen: dict[str, object] = {name: os.environ.get(name) for name in ("RANK", "WORLD_SIZE", "GROUP_RANK",
                                                                   "GROUP_WORLD_SIZE", "CAPSTAN_JOB_WORKERS_REQUESTED")}
seen.update(dist_world=world, ranks_sum=total.item())
(out / f"rank-{rank}.json").write_text(json.dumps(seen))
dist.destroy_process_group()
