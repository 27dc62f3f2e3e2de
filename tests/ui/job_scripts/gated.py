"""A worker that prints a line, waits until the file GATE exists, prints more and ends (exit 0); or, with
--forever, keeps printing until it is stopped.

Usage: gated.py GATE [--forever]
"""

import os
import sys
import time
from pathlib import Path

gate = Path(sys.argv[1])
rank = int(os.environ["RANK"])
print(f"rank {rank}: started", flush=True)
tick = 0
while "--forever" in sys.argv or not gate.exists():
    tick += 1
    if tick % 10 == 0:
        print(f"rank {rank}: waiting ({tick})", flush=True)
    time.sleep(0.05)
for step in range(3):
    print(f"rank {rank}: step {step} after the gate", flush=True)
print(f"rank {rank}: finished", flush=True)
