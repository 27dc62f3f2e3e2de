"""The data-preparation pipeline in front of ``capstan quickstart``.

It loads scikit-learn's bundled wine data (no network), damages it the way raw data usually is (missing values,
duplicated rows), then repairs it: column statistics, cleaning fanned out over indexed chunks, a join that drops
duplicates, and a stratified train/test split. Steps run as threads: they are light, and the quickstart should take
seconds. A second quickstart reuses every step from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from capstan.errors import InvalidState
from capstan.pipelines.dsl import Chunk, chunks, pipeline, step

if TYPE_CHECKING:
    from rich.console import Console

    from capstan.settings import Settings

TARGET = "target"
SPLIT = "split"


@step(isolation="thread")
def load_raw(seed: int = 7) -> Any:
    """The wine data with about 3 % of feature values missing and a few rows duplicated."""
    import numpy as np
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    rng = np.random.default_rng(seed)
    features = [c for c in frame.columns if c != TARGET]
    values = frame[features].to_numpy(dtype=float, copy=True)
    values[rng.random(values.shape) < 0.03] = np.nan
    frame[features] = values
    duplicates = frame.sample(n=6, random_state=seed)
    import pandas as pd

    return pd.concat([frame, duplicates], ignore_index=True)


@step(isolation="thread")
def profile(raw: Any) -> dict[str, dict[str, float]]:
    """Per-feature median and 1st/99th percentiles, used to fill and clip."""
    features = [c for c in raw.columns if c != TARGET]
    return {c: {"median": float(raw[c].median()), "low": float(raw[c].quantile(0.01)),
                "high": float(raw[c].quantile(0.99))} for c in features}


@step(isolation="thread")
def clean_chunk(chunk: Chunk, raw: Any, stats: dict[str, dict[str, float]]) -> Any:
    """One chunk of rows with missing values filled by the median and outliers clipped."""
    part = raw.iloc[list(chunk.slice(len(raw)))].copy()
    for column, s in stats.items():
        part[column] = part[column].fillna(s["median"]).clip(s["low"], s["high"])
    return part


@step(isolation="thread")
def combine(parts: list[Any]) -> Any:
    """The cleaned chunks in order, without duplicated rows."""
    import pandas as pd

    return pd.concat(parts).drop_duplicates().reset_index(drop=True)


@step(isolation="thread")
def split(frame: Any, test_size: float = 0.3, seed: int = 7) -> Any:
    """A stratified train/test split, marked in a ``split`` column."""
    from sklearn.model_selection import train_test_split

    train, _test = train_test_split(frame.index, test_size=test_size, random_state=seed, stratify=frame[TARGET])
    out = frame.copy()
    out[SPLIT] = "test"
    out.loc[train, SPLIT] = "train"
    return out


@pipeline
def wine_prep(seed: int = 7, n_chunks: int = 4, test_size: float = 0.3) -> Any:
    """Load, clean (fanned out over chunks), deduplicate and split the wine data."""
    raw = load_raw(seed)
    stats = profile(raw)
    parts = clean_chunk.map(chunks(n_chunks), raw=raw, stats=stats)
    return split(combine(parts), test_size, seed)


@dataclass(frozen=True, slots=True)
class PreparedData:
    """The prepared split, in the shape `capstan.quickstart.TrainingData` takes, plus the pipeline run's id."""

    x_train: Any
    x_test: Any
    y_train: Any
    y_test: Any
    description: str
    run_id: str
    cached_steps: int


def quickstart_prep(settings: Settings, *, console: Console | None = None, seed: int = 7) -> PreparedData:
    """Run `wine_prep` with the local stores of ``settings`` and return the train/test split."""
    from capstan.pipelines.runner import PipelineRunner

    runner = PipelineRunner.open(settings)
    try:
        result = runner.run(wine_prep, {"seed": seed}, ref="capstan.pipelines.quickstart:wine_prep",
                            source="quickstart")
        if not result.ok:
            raise InvalidState(f"data preparation failed: {result.run.message} (run {result.run_id}; see "
                               f"`capstan pipelines show {result.run_id}`)")
        frame = result.value()
    finally:
        runner.close()
    features = [c for c in frame.columns if c not in (TARGET, SPLIT)]
    train, test = frame[frame[SPLIT] == "train"], frame[frame[SPLIT] == "test"]
    cached = sum(1 for s in result.steps if s.state == "cached")
    description = (f"wine: {len(frame)} samples after cleaning, {len(features)} features, 3 classes "
                   f"(prepared by pipeline run {result.run_id[:12]})")
    if console is not None:
        console.print(f"Prepared the data with pipeline [bold]wine_prep[/bold] (run {result.run_id}, "
                      f"{len(result.steps)} steps, {cached} from cache); see `capstan pipelines show "
                      f"{result.run_id}`.")
    return PreparedData(train[features], test[features], train[TARGET], test[TARGET], description,
                        result.run_id, cached)
