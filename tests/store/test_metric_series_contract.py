"""`TrackingStore.metric_series` on every metadata-store backend (SQLite and PostgreSQL): the buckets the database
aggregates equal `capstan.tracking.series.downsample` of the same points, on every x axis and window."""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
import pytest

from capstan.errors import ResourceDoesNotExist
from capstan.settings import Settings
from capstan.store.engine import create_store_engine
from capstan.store.tracking_series import RAW_LIMIT
from capstan.store.tracking_sql import SqlTrackingStore
from capstan.tracking.records import Metric
from capstan.tracking.series import Bucket, downsample, series_query
from helpers.clock import T0, FakeClock

N = RAW_LIMIT + 4_000  # more than RAW_LIMIT: large windows are aggregated by the database
PG_URL = os.environ.get("CAPSTAN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
"""The same server as ``tests/conftest.py`` uses (a module-scoped fixture cannot use its function-scoped one)."""


def _settings(kind: str, home: Path) -> Iterator[Settings]:
    if kind == "sqlite":
        yield Settings.for_home(home)
        return
    raw = PG_URL.replace("postgresql+psycopg", "postgresql")
    try:
        psycopg.connect(raw, connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    schema_name = f"capstan_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema_name}"')
    yield Settings.for_home(home, db_url=f"{PG_URL}?options=-csearch_path%3D{schema_name}")
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema_name}" CASCADE')


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlTrackingStore]:
    """One store per backend for the whole module (the large series is logged once)."""
    settings = _settings(request.param, tmp_path_factory.mktemp("series") / "home")
    engine = create_store_engine(next(settings))
    try:
        yield SqlTrackingStore(engine, clock=FakeClock())
    finally:
        engine.dispose()
        next(settings, None)


@dataclass(frozen=True)
class Big:
    run_id: str
    steps: np.ndarray
    stamps: np.ndarray
    values: np.ndarray


def _run(store: SqlTrackingStore) -> str:
    experiment = store.get_experiment_by_name("series", project="default")
    experiment_id = experiment.experiment_id if experiment else store.create_experiment("series", project="default")
    return store.create_run(experiment_id).run_id


def _log(store: SqlTrackingStore, run_id: str, key: str, steps: Sequence[int], stamps: Sequence[int],
         values: Sequence[float]) -> None:
    points = [Metric(key, v, t, s) for s, t, v in zip(steps, stamps, values, strict=True)]
    for start in range(0, len(points), 10_000):
        store.log_metrics_for_runs({run_id: points[start:start + 10_000]})


def _same(got: Sequence[Bucket], want: Sequence[Bucket]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g.points, g.nonfinite, g.low, g.high) == (w.points, w.nonfinite, w.low, w.high), (g, w)
        assert g.x == pytest.approx(w.x, rel=1e-12)
        assert (g.y is None and w.y is None) or g.y == pytest.approx(w.y, rel=1e-9, abs=1e-12), (g, w)


def _reference(xs: np.ndarray, then: np.ndarray, ys: np.ndarray, low: int | None, high: int | None,
               max_points: int, origin: int = 0) -> tuple[int, tuple[Bucket, ...]]:
    """`downsample` of the points inside ``low..high``, ordered as the store orders them point by point: by x,
    then by the other axis, then by the stored value (NaN is stored as 0.0)."""
    order = np.lexsort((np.nan_to_num(ys, nan=0.0), then, xs))
    xs, ys = xs[order], ys[order]
    keep = np.ones(xs.size, dtype=bool)
    if low is not None:
        keep &= xs >= low
    if high is not None:
        keep &= xs <= high
    buckets = downsample(xs[keep] - origin, ys[keep], max_points)
    return int(keep.sum()), buckets


@pytest.fixture(scope="module")
def big(store: SqlTrackingStore) -> Big:
    """N points of ``loss``: noise with spikes, NaN and infinities in places, a repeated step, and timestamps that
    are not in step order (so the time axis really orders by time)."""
    rng = np.random.default_rng(7)
    steps = np.arange(N, dtype=np.int64) * 3 - 5_000
    steps[100:110] = steps[99]  # eleven points at one step
    stamps = T0 + np.arange(N, dtype=np.int64) * 20 + rng.integers(0, 45, N)
    values = rng.standard_normal(N)
    values[[5, 6_000, 17_001]] = [250.0, -300.0, 1e6]
    values[[50, 51, 52, 9_000]] = math.nan
    values[[12_345, 23_456]] = [math.inf, -math.inf]
    run_id = _run(store)
    _log(store, run_id, "loss", steps.tolist(), stamps.tolist(), values.tolist())
    _log(store, run_id, "other", [0], [T0], [1.0])
    return Big(run_id, steps, stamps, values)


@pytest.mark.parametrize(("x_min", "x_max", "max_points"), [
    (None, None, 1000), (None, None, 7), (None, None, 5000), (-4_000.5, 60_000.0, 333), (20_000, None, 1000),
    (10_000, 10_600, 50),  # a small window: read point by point, bucketed in memory
    (None, -5_000, 10), (1e12, None, 10),
])
def test_step_axis_matches_the_reference(store: SqlTrackingStore, big: Big,
                                         x_min: float | None, x_max: float | None, max_points: int) -> None:
    run_id, steps, values = big.run_id, big.steps, big.values
    query = series_query("step", x_min, x_max, max_points)
    got = store.metric_series(run_id, "loss", query)
    points, want = _reference(steps, big.stamps, values, *query.bounds(0), max_points)
    assert (got.run_id, got.key, got.x, got.points, got.origin) == (run_id, "loss", "step", points, None)
    _same(got.buckets, want)


@pytest.mark.parametrize("axis", ["time", "relative"])
@pytest.mark.parametrize(("x_min", "x_max", "max_points"), [
    (None, None, 1000), (None, None, 3), (10_000, 470_000, 700), (60_000, 62_000, 1000),
])
def test_time_axes_match_the_reference(store: SqlTrackingStore, big: Big,
                                       axis: str, x_min: float | None, x_max: float | None, max_points: int) -> None:
    run_id, stamps, values = big.run_id, big.stamps, big.values
    origin = int(stamps.min())
    if axis == "time":
        x_min = None if x_min is None else x_min + origin
        x_max = None if x_max is None else x_max + origin
    query = series_query(axis, x_min, x_max, max_points)
    got = store.metric_series(run_id, "loss", query)
    shift = origin if axis == "relative" else 0
    points, want = _reference(stamps, big.steps, values, *query.bounds(shift), max_points, origin=shift)
    assert (got.x, got.points, got.origin) == (axis, points, origin if axis == "relative" else None)
    _same(got.buckets, want)


def test_spikes_and_nonfinite_values_survive_the_database(
        store: SqlTrackingStore, big: Big) -> None:
    run_id = big.run_id
    got = store.metric_series(run_id, "loss", series_query(max_points=100))
    assert len(got.buckets) <= 100 and got.points == N
    assert max(b.high for b in got.buckets if b.high is not None) == 1e6
    assert min(b.low for b in got.buckets if b.low is not None) == -300.0
    assert sum(b.nonfinite for b in got.buckets) == 6


def test_a_small_series_comes_back_point_by_point(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    _log(store, run_id, "acc", [0, 1, 1, 2], [T0 + 30, T0 + 10, T0 + 20, T0], [0.5, 0.6, 0.7, math.nan])
    got = store.metric_series(run_id, "acc", series_query())
    assert got.points == 4
    assert got.buckets == (Bucket(0.0, 0.5, 0.5, 0.5, 1, 0), Bucket(1.0, 0.6, 0.6, 0.6, 1, 0),
                           Bucket(1.0, 0.7, 0.7, 0.7, 1, 0), Bucket(2.0, None, None, None, 1, 1))
    by_time = store.metric_series(run_id, "acc", series_query("relative"))
    assert by_time.origin == T0
    assert [(b.x, b.y) for b in by_time.buckets] == [(0.0, None), (10.0, 0.6), (20.0, 0.7), (30.0, 0.5)]


def test_empty_windows(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    _log(store, run_id, "acc", [0, 10], [T0, T0 + 1], [1.0, 2.0])
    for query in (series_query(x_min=1, x_max=9), series_query(x_min=1.2, x_max=1.8), series_query(x_min=11)):
        got = store.metric_series(run_id, "acc", query)
        assert (got.points, got.buckets) == (0, ())


def test_unknown_run_or_key(store: SqlTrackingStore) -> None:
    run_id, other = _run(store), _run(store)
    _log(store, other, "only-there", [0], [T0], [1.0])
    with pytest.raises(ResourceDoesNotExist, match="Run 'nope' not found"):
        store.metric_series("nope", "acc", series_query())
    for key in ("never-logged", "only-there"):
        with pytest.raises(ResourceDoesNotExist, match=f"Metric '{key}' not found in run '{run_id}'"):
            store.metric_series(run_id, key, series_query())


def test_buckets_kept_between_reads_follow_new_points(store: SqlTrackingStore) -> None:
    """Step-axis buckets are kept between reads and stay right when points arrive inside them (out of order too),
    and when the series grows past its last step."""
    run_id = _run(store)
    n = RAW_LIMIT + 1_000
    steps = np.arange(n, dtype=np.int64)
    stamps = T0 + steps * 10
    values = np.sin(steps / 100.0)
    _log(store, run_id, "loss", steps.tolist(), stamps.tolist(), values.tolist())
    query = series_query(max_points=500)
    first = store.metric_series(run_id, "loss", query)
    hits = store._series_cache.hits  # the adapter's own cache
    assert store.metric_series(run_id, "loss", query) == first
    assert store._series_cache.hits >= hits + len(first.buckets)

    late = ([300, 300, 7_000, n - 1], [T0 + 1, T0 + 2, T0 + 3, T0 + 4], [99.0, math.nan, -math.inf, 5.0])
    _log(store, run_id, "loss", *late)
    grown = ([n + 5], [T0 + 10 * (n + 5)], [-7.0])
    _log(store, run_id, "loss", *grown)
    steps = np.concatenate([steps, late[0], grown[0]])
    stamps = np.concatenate([stamps, late[1], grown[1]])
    values = np.concatenate([values, late[2], grown[2]])
    for q in (query, series_query(max_points=500, x_max=n - 1)):
        got = store.metric_series(run_id, "loss", q)
        points, want = _reference(steps, stamps, values, *q.bounds(0), q.max_points)
        assert got.points == points
        _same(got.buckets, want)
