"""Command step of examples/pipelines/etl.py: profiles one shard (CHUNK_INDEX of CHUNK_COUNT)."""

import json
import os
import sys

rows = int(sys.argv[1])
index, count = int(os.environ.get("CHUNK_INDEX", "0")), int(os.environ.get("CHUNK_COUNT", "1"))
start, stop = index * rows // count, (index + 1) * rows // count
print(f"shard {index + 1}/{count}: rows {start}..{stop - 1}")
with open(os.environ["CAPSTAN_OUTPUT"], "w") as fh:
    json.dump({"shard": index, "rows": stop - start}, fh)
