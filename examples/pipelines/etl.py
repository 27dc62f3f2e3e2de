"""A small data-preparation pipeline: gather, clean (fanned out), fix missing values, transform, label, split.

    capstan run examples/pipelines/etl.py --param rows=2000 --param shards=4
    capstan pipelines show <RUN_ID>
    capstan logs <RUN_ID> gather

Run it twice: the second run reuses every step from the cache. Change ``--param seed=...`` and only the steps
whose inputs changed run again.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import capstan.pipelines as cp

HERE = Path(__file__).resolve().parent

# A command step runs any executable; {placeholders} come from its keyword arguments, and whatever JSON it writes
# to $CAPSTAN_OUTPUT is its output. Mapped over chunks it also sees CHUNK_INDEX / CHUNK_COUNT.
profile_shard = cp.command_step([sys.executable, str(HERE / "profile_shard.py"), "{rows}"], name="profile_shard",
                                resources={"cpu": 0.5})


@cp.step(retries=2, retry_backoff=cp.Backoff(base_s=0.5, max_s=5), timeout=60)
def gather(rows: int, seed: int) -> list[dict[str, float | None]]:
    """Fetch raw records (synthetic here): some values are missing, some are out of range."""
    rng = random.Random(seed)
    print(f"gathering {rows} records")
    return [{"x": rng.gauss(0, 1) if rng.random() > 0.05 else None, "y": rng.uniform(-50, 150)}
            for _ in range(rows)]


@cp.step(isolation="thread")
def clean(chunk: cp.Chunk, records: list[dict[str, float | None]]) -> list[dict[str, float | None]]:
    """Drop out-of-range rows of one chunk."""
    part = [records[i] for i in chunk.slice(len(records))]
    return [r for r in part if r["y"] is not None and 0 <= r["y"] <= 100]


@cp.step(isolation="thread")
def impute(parts: list[list[dict[str, float | None]]]) -> list[dict[str, float]]:
    """Join the cleaned chunks (in order) and fill missing x with the mean."""
    rows = [r for part in parts for r in part]
    known = [r["x"] for r in rows if r["x"] is not None]
    mean = sum(known) / len(known) if known else 0.0
    return [{"x": r["x"] if r["x"] is not None else mean, "y": float(r["y"] or 0)} for r in rows]


@cp.step
def transform(rows: list[dict[str, float]]) -> list[list[float]]:
    """Scale y to [0, 1] and add a feature."""
    return [[r["x"], r["y"] / 100, r["x"] * r["y"] / 100] for r in rows]


@cp.step(isolation="thread")
def label(features: list[list[float]]) -> list[int]:
    return [int(f[0] + f[1] > 0.5) for f in features]


@cp.step
def split(features: list[list[float]], labels: list[int], test_fraction: float, seed: int) -> dict[str, int]:
    """Split into train and test; returns the sizes (the split itself would be written to storage)."""
    rng = random.Random(seed)
    test = {i for i in range(len(labels)) if rng.random() < test_fraction}
    return {"train": len(labels) - len(test), "test": len(test), "positive": sum(labels)}


@cp.pipeline
def etl(rows: int = 1000, shards: int = 4, test_fraction: float = 0.2, seed: int = 7):
    records = gather(rows, seed)
    profile_shard.map(cp.chunks(shards), rows=rows, max_parallel=2)
    cleaned = clean.map(cp.chunks(shards), records=records)
    features = transform(impute(cleaned))
    return split(features, label(features), test_fraction, seed)
