"""A worker that runs until stopped, printing a line every 50 ms; OUT_DIR/progress counts its steps.

Usage: loop.py OUT_DIR
"""

import sys
import time
from pathlib import Path

progress = Path(sys.argv[1]) / "progress"
step = 0
while True:
    step += 1
    progress.write_text(str(step))
    print(f"step {step}", flush=True)
    time.sleep(0.05)
