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

    from capstan.pipelines.runner import PipelineRunner


def feature_names() -> tuple[str, ...]:
    """The wine data's 13 feature names, in column order."""
    from sklearn.datasets import load_wine

    return tuple(load_wine().feature_names)


# The steps pass plain numpy arrays (no pandas needed): one row per sample, the features in `feature_names` order,
# then the class label; `split` appends a column that is 1.0 for test rows.
@step(isolation="thread")
def load_raw(seed: int = 7) -> Any:
    """The wine data with about 3 % of feature values missing and a few rows duplicated."""
    import numpy as np
    from sklearn.datasets import load_wine

    wine = load_wine()
    rng = np.random.default_rng(seed)
    features = np.array(wine.data, dtype=float, copy=True)
    features[rng.random(features.shape) < 0.03] = np.nan
    rows = np.column_stack([features, wine.target.astype(float)])
    duplicates = rows[rng.choice(len(rows), size=6, replace=False)]
    return np.vstack([rows, duplicates])


@step(isolation="thread")
def profile(raw: Any) -> dict[str, dict[str, float]]:
    """Per-feature median and 1st/99th percentiles, used to fill and clip."""
    import numpy as np

    return {name: {"median": float(np.nanmedian(raw[:, i])), "low": float(np.nanquantile(raw[:, i], 0.01)),
                   "high": float(np.nanquantile(raw[:, i], 0.99))} for i, name in enumerate(feature_names())}


@step(isolation="thread")
def clean_chunk(chunk: Chunk, raw: Any, stats: dict[str, dict[str, float]]) -> Any:
    """One chunk of rows with missing values filled by the median and outliers clipped."""
    import numpy as np

    part = np.array(raw[list(chunk.slice(len(raw)))], dtype=float, copy=True)
    for i, name in enumerate(feature_names()):
        s = stats[name]
        column = part[:, i]
        column[np.isnan(column)] = s["median"]
        np.clip(column, s["low"], s["high"], out=column)
    return part


@step(isolation="thread")
def combine(parts: list[Any]) -> Any:
    """The cleaned chunks in order, without duplicated rows."""
    import numpy as np

    rows = np.vstack(parts)
    _unique, first = np.unique(rows, axis=0, return_index=True)
    return rows[np.sort(first)]


@step(isolation="thread")
def split(frame: Any, test_size: float = 0.3, seed: int = 7) -> Any:
    """A stratified train/test split, marked in a last column (1.0: test row)."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    _train, test = train_test_split(np.arange(len(frame)), test_size=test_size, random_state=seed,
                                    stratify=frame[:, -1])
    marked = np.column_stack([frame, np.zeros(len(frame))])
    marked[test, -1] = 1.0
    return marked


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
    feature_names: tuple[str, ...] = ()


def quickstart_prep(runner: PipelineRunner, *, console: Console | None = None, seed: int = 7) -> PreparedData:
    """Run `wine_prep` with ``runner`` and return the train/test split."""
    result = runner.run(wine_prep, {"seed": seed}, ref="capstan.pipelines.quickstart:wine_prep",
                        source="quickstart")
    if not result.ok:
        raise InvalidState(f"data preparation failed: {result.run.message} (run {result.run_id}; see "
                           f"`capstan pipelines show {result.run_id}`)")
    frame = result.value()
    names = feature_names()
    x, y, is_test = frame[:, :len(names)], frame[:, len(names)].astype(int), frame[:, -1] == 1.0
    cached = sum(1 for s in result.steps if s.state == "cached")
    description = (f"wine: {len(frame)} samples after cleaning, {len(names)} features, 3 classes "
                   f"(prepared by pipeline run {result.run_id[:12]})")
    if console is not None:
        console.print(f"Prepared the data with pipeline [bold]wine_prep[/bold] (run {result.run_id}, "
                      f"{len(result.steps)} steps, {cached} from cache); see `capstan pipelines show "
                      f"{result.run_id}`.")
    return PreparedData(x[~is_test], x[is_test], y[~is_test], y[is_test], description, result.run_id, cached,
                        names)
