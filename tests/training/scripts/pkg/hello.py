"""A module entry point (python -m pkg.hello OUT_DIR): writes its rank."""

import os
import sys
from pathlib import Path

(Path(sys.argv[1]) / f"module-rank-{os.environ['RANK']}").write_text(os.environ["WORLD_SIZE"])
