"""A worker that records its rank variables, logs to both streams and to the tracking run, and can fail on purpose.

Usage: rank_env.py OUT_DIR [--fail-rank R --fail-code C] (fails only on attempt 1) [--always-fail]
"""

import json
import os
import sys
from pathlib import Path

import capstan

NAMES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
         "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT",
         "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE", "CUDA_VISIBLE_DEVICES",
         "OMP_NUM_THREADS", "CAPSTAN_JOB_ID", "CAPSTAN_JOB_RUN_ID", "CAPSTAN_JOB_ATTEMPT", "CAPSTAN_CHECKPOINT_URI",
         "CAPSTAN_CHECKPOINT_KEEP", "CAPSTAN_URL", "EXTRA")

out = Path(sys.argv[1])
args = sys.argv[2:]
rank = int(os.environ["RANK"])
attempt = int(os.environ["CAPSTAN_JOB_ATTEMPT"])
seen = {name: os.environ.get(name) for name in NAMES}
seen["cwd"] = os.getcwd()
(out / f"attempt-{attempt}-rank-{rank}.json").write_text(json.dumps(seen))
print(f"hello from rank {rank}")
print(f"warning from rank {rank}", file=sys.stderr)
capstan.log_metric("rank_seen", rank, step=attempt)
capstan.log_param("world", os.environ["WORLD_SIZE"])
capstan.flush()
if "--fail-rank" in args:
    fail_rank = int(args[args.index("--fail-rank") + 1])
    code = int(args[args.index("--fail-code") + 1])
    if rank == fail_rank and (attempt == 1 or "--always-fail" in args):
        sys.exit(code)
