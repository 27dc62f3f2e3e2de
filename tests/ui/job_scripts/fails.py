"""A worker that prints a little, then rank 1 fails: a traceback on stderr and exit status 3 (every attempt).

Usage: fails.py
"""

import os
import sys

rank = int(os.environ["RANK"])
attempt = os.environ["CAPSTAN_JOB_ATTEMPT"]
print(f"rank {rank} attempt {attempt}: loading the data", flush=True)
if rank == 1:
    print("Traceback (most recent call last):", file=sys.stderr)
    print('  File "fails.py", line 14, in <module>', file=sys.stderr)
    print("ValueError: batch 7 has no labels", file=sys.stderr)
    sys.exit(3)
print(f"rank {rank}: waiting for the others", flush=True)
