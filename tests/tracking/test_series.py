"""The pure metric-series rules: request checks, the bucket grid, downsampling and smoothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capstan.errors import InvalidParameterValue
from capstan.tracking.series import (
    MAX_POINTS,
    Bucket,
    Grid,
    SeriesQuery,
    check_smoothing,
    downsample,
    series_query,
    smooth,
)

INT64 = st.integers(-(2**63), 2**63 - 1)
VALUES = st.one_of(st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, -math.inf]))


# -- the request ----------------------------------------------------------------------------------------------
def test_defaults() -> None:
    assert series_query() == SeriesQuery("step", None, None, 1000)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"x": "foo"}, "x:"),
    ({"x": "Step"}, "x:"),
    ({"max_points": 0}, "max_points:"),
    ({"max_points": MAX_POINTS + 1}, "max_points:"),
    ({"max_points": True}, "max_points:"),
    ({"x_min": 5.0, "x_max": 4.0}, "x_min:"),
    ({"x_min": math.nan}, "x_min:"),
    ({"x_max": math.inf}, "x_max:"),
])
def test_bad_requests_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidParameterValue) as caught:
        series_query(**kwargs)  # type: ignore[arg-type]  # deliberately wrong values
    assert str(caught.value.message).startswith(field)


def test_bounds_round_inwards_and_shift_on_the_relative_axis() -> None:
    assert series_query(x_min=1.2, x_max=7.8).bounds(0) == (2, 7)
    assert series_query(x_min=-1.5).bounds(0) == (-1, None)
    assert series_query(x="time", x_min=10, x_max=20).bounds(1000) == (10, 20)
    assert series_query(x="relative", x_min=10, x_max=20).bounds(1000) == (1010, 1020)
    low, high = series_query(x_min=1.2, x_max=1.8).bounds(0)  # no integer inside: an empty window
    assert low is not None and high is not None and low > high


@pytest.mark.parametrize("weight", [-0.1, 1.0, 0.9991, True])
def test_smoothing_weight_is_checked(weight: float) -> None:
    with pytest.raises(InvalidParameterValue, match=r"^smoothing:"):
        check_smoothing(weight)


# -- the grid -------------------------------------------------------------------------------------------------
@given(INT64, INT64, st.integers(1, MAX_POINTS))
def test_grid_covers_the_range_within_budget(a: int, b: int, max_points: int) -> None:
    lo, hi = min(a, b), max(a, b)
    grid = Grid.over(lo, hi, max_points)
    assert 1 <= grid.count <= max_points
    starts = grid.starts()
    assert starts[0] == lo and starts[-1] <= hi < starts[-1] + grid.width


def test_grid_of_one_point() -> None:
    assert Grid.over(7, 7, 1000) == Grid(7, 1, 1)


# -- downsampling ---------------------------------------------------------------------------------------------
def test_empty_and_one_point() -> None:
    assert downsample([], [], 10) == ()
    assert downsample([3], [0.5], 10) == (Bucket(3.0, 0.5, 0.5, 0.5, 1, 0),)


def test_few_points_come_back_one_by_one_with_duplicates_and_nonfinite() -> None:
    got = downsample([0, 1, 1, 2], [1.0, 2.0, 3.0, math.nan], 4)
    assert got == (Bucket(0.0, 1.0, 1.0, 1.0, 1, 0), Bucket(1.0, 2.0, 2.0, 2.0, 1, 0),
                   Bucket(1.0, 3.0, 3.0, 3.0, 1, 0), Bucket(2.0, None, None, None, 1, 1))


def test_mismatched_arrays_are_refused() -> None:
    with pytest.raises(InvalidParameterValue, match=r"^xs, ys:"):
        downsample([1, 2], [1.0], 10)


def test_spikes_survive_in_the_band() -> None:
    n = 100_000
    ys = np.zeros(n)
    ys[31_337] = 1000.0
    ys[77_777] = -500.0
    got = downsample(np.arange(n), ys, 500)
    assert len(got) == 500
    assert sum(b.points for b in got) == n
    assert max(b.high for b in got if b.high is not None) == 1000.0
    assert min(b.low for b in got if b.low is not None) == -500.0
    spike = next(b for b in got if b.high == 1000.0)
    assert spike.x - 100 < 31_337 < spike.x + 100 and spike.y == pytest.approx(1000.0 / spike.points)


def test_buckets_have_equal_width_along_x() -> None:
    xs = np.concatenate([np.arange(0, 1000), np.arange(10_000, 10_010)])  # dense, then a gap, then sparse
    got = downsample(xs, np.ones(xs.size), 100)
    assert [b.points for b in got[:10]] == [101] * 9 + [91]  # width ceil(10010 / 100) = 101
    assert got[-1].points == 10 and len(got) == 11  # empty buckets in the gap are left out


def test_nonfinite_values_are_counted_not_averaged() -> None:
    ys = np.array([1.0, math.nan, math.inf, 3.0, -math.inf, math.nan, math.nan, math.nan])
    got = downsample(np.arange(8), ys, 2)  # buckets of 4
    assert got == (Bucket(1.5, 2.0, 1.0, 3.0, 4, 2), Bucket(5.5, None, None, None, 4, 4))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-50, 10_000), VALUES), min_size=1, max_size=400), st.integers(1, 60))
def test_downsampling_keeps_every_point_and_the_extremes(points: list[tuple[int, float]], max_points: int) -> None:
    points.sort(key=lambda p: p[0])
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    got = downsample(xs, ys, max_points)
    finite = [y for y in ys if math.isfinite(y)]
    assert len(got) <= max(max_points, 1)
    assert sum(b.points for b in got) == len(points)
    assert sum(b.nonfinite for b in got) == len(points) - len(finite)
    assert [b.x for b in got] == sorted(b.x for b in got)
    highs = [b.high for b in got if b.high is not None]
    lows = [b.low for b in got if b.low is not None]
    assert max(highs, default=None) == max(finite, default=None)
    assert min(lows, default=None) == min(finite, default=None)
    for b in got:
        assert (b.y is None) == (b.points == b.nonfinite)
        if b.y is not None:
            assert b.low is not None and b.high is not None
            assert b.low - 1e-9 <= b.y <= b.high + 1e-9


# -- smoothing ------------------------------------------------------------------------------------------------
def _tensorboard(values: list[float], weight: float) -> list[float]:
    """The reference: a debiased EMA over single points, skipping non-finite values."""
    last, count, out = 0.0, 0, []
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        last = last * weight + (1 - weight) * v
        count += 1
        out.append(last / (1 - weight**count))
    return out


def test_weight_zero_changes_nothing() -> None:
    buckets = downsample(range(10), [float(i % 3) for i in range(10)], 10)
    assert smooth(buckets, 0.0) == buckets


def test_one_point_per_bucket_is_tensorboards_smoothing() -> None:
    values = [math.sin(i / 3) + (5.0 if i == 20 else 0.0) for i in range(60)]
    values[7] = math.nan
    got = smooth(downsample(range(60), values, 100), 0.8)
    want = _tensorboard(values, 0.8)
    for bucket, expected in zip(got, want, strict=True):
        if math.isfinite(expected):
            assert bucket.y == pytest.approx(expected)
        else:
            assert bucket.y is None


def test_a_bucket_moves_the_average_like_its_points() -> None:
    """A bucket of k points with mean m weighs as k points of value m, so zooming out keeps the curve."""
    weight = 0.9
    coarse = smooth([Bucket(0.0, 1.0, 1.0, 1.0, 1, 0), Bucket(5.0, 4.0, 0.0, 8.0, 10, 0)], weight)
    fine = _tensorboard([1.0] + [4.0] * 10, weight)
    assert coarse[-1].y == pytest.approx(fine[-1])
    assert (coarse[-1].low, coarse[-1].high) == (0.0, 8.0)  # the band stays raw


def test_constant_series_stays_constant_and_empty_buckets_pass() -> None:
    buckets = [Bucket(float(i), 2.5, 2.5, 2.5, 3, 0) for i in range(5)] + [Bucket(5.0, None, None, None, 2, 2)]
    got = smooth(buckets, 0.99)
    assert [b.y for b in got[:5]] == pytest.approx([2.5] * 5)
    assert got[5] == buckets[5]
