"""A worker that checkpoints a counter every step and sleeps between steps; it records where it started.

Usage: steps.py OUT_DIR STEPS SLEEP_S
"""

import os
import sys
import time
from pathlib import Path

import capstan
import capstan.checkpoint

out, steps, sleep_s = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
rank, attempt = int(os.environ["RANK"]), int(os.environ["CAPSTAN_JOB_ATTEMPT"])
found = capstan.checkpoint.load_latest()
start = 0 if found is None else found[1] + 1
(out / f"start-attempt-{attempt}-rank-{rank}").write_text(str(start))
(out / f"pid-attempt-{attempt}-rank-{rank}").write_text(str(os.getpid()))
for step in range(start, steps):
    time.sleep(sleep_s)
    capstan.log_metric("step", step, step=step)
    capstan.checkpoint.save({"step": step, "total": (found[0]["total"] if found else 0) + step}, step)
    # replaced in one step, so a test reading it never sees an empty file between truncate and write
    (out / f"progress-rank-{rank}.tmp").write_text(str(step))
    os.replace(out / f"progress-rank-{rank}.tmp", out / f"progress-rank-{rank}")
