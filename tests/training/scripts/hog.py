"""A worker that fills MEGABYTES of memory (every page written, so it is resident), holds it HOLD_S seconds, then
exits with CODE.

Usage: hog.py MEGABYTES [CODE [HOLD_S]] (only rank HOG_RANK, default 0, allocates; the others exit 0 at once)
"""

import os
import sys
import time

megabytes = int(sys.argv[1])
code = int(sys.argv[2]) if len(sys.argv) > 2 else 0
hold_s = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
if os.environ["RANK"] == os.environ.get("HOG_RANK", "0"):
    block = b"\x01" * (megabytes * 2**20)
    print(f"rank {os.environ['RANK']} holds {len(block) // 2**20} MiB", flush=True)
    time.sleep(hold_s)
    sys.exit(code)
