"""A worker that writes its pid and sleeps until stopped.

Usage: sleeper.py OUT_DIR [--exit-rank R --code C] [--ignore-term-rank R]
"""

import os
import signal
import sys
import time
from pathlib import Path

args = sys.argv[2:]
rank = int(os.environ["RANK"])
if "--ignore-term-rank" in args and rank == int(args[args.index("--ignore-term-rank") + 1]):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
(Path(sys.argv[1]) / f"pid-{rank}").write_text(str(os.getpid()))
if "--exit-rank" in args and rank == int(args[args.index("--exit-rank") + 1]):
    time.sleep(0.5)
    sys.exit(int(args[args.index("--code") + 1]))
while True:
    time.sleep(0.1)
