"""Metric series for charts: the request, the bucket grid, the downsampling rule and smoothing (pure).

A chart never needs more points than it has pixels, so a series is cut into at most ``max_points`` buckets of equal
width along x and each bucket is summarised as a `Bucket`: the mean x of its points, the mean of its finite values
(the line), their smallest and largest values (a band, so a one-point spike stays visible however many points share
its bucket) and how many points it holds. NaN and ±inf values are never averaged or banded: they are counted in
``nonfinite`` so a chart can mark the bucket.

x is always an integer in stored units: ``step``, ``time`` (milliseconds since the epoch) or ``relative``
(milliseconds since the series' first point). `Grid` fixes the buckets for an integer range with no floating-point
rounding, so the SQL adapter (which aggregates each bucket in the database) and `downsample` (which aggregates
arrays in memory) cut the same series at the same places and agree to the last point. A window with no more points
than ``max_points`` is returned point by point (each its own bucket): nothing is lost.

`smooth` is the debiased exponential moving average of TensorBoard's smoothing slider, applied to bucket means with
each bucket weighted by how many finite points it holds (decision 0520).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from capstan.errors import InvalidParameterValue

if TYPE_CHECKING:
    import numpy.typing as npt

X_AXES = ("step", "time", "relative")
DEFAULT_MAX_POINTS = 1000
MAX_POINTS = 5000
MAX_SMOOTHING = 0.999
MAX_RUNS = 20
"""Most runs one overlay request may ask for."""


class Bucket(NamedTuple):
    """One summarised slice of a series."""

    x: float
    """Mean x of the bucket's points (all of them, finite values or not)."""
    y: float | None
    """Mean of the finite values; None when the bucket holds none."""
    low: float | None
    """Smallest finite value."""
    high: float | None
    """Largest finite value."""
    points: int
    """Points in the bucket."""
    nonfinite: int
    """Of which NaN, +inf or -inf."""


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    """What part of a series to read: the x axis, an inclusive window (None: open) and the bucket budget."""

    x: str = "step"
    x_min: float | None = None
    x_max: float | None = None
    max_points: int = DEFAULT_MAX_POINTS

    def bounds(self, origin: int) -> tuple[int | None, int | None]:
        """The window in stored units as inclusive integers (``origin`` is added on the ``relative`` axis);
        x values are integers, so rounding the bounds inwards selects exactly the points inside the window."""
        shift = origin if self.x == "relative" else 0
        low = None if self.x_min is None else math.ceil(self.x_min) + shift
        high = None if self.x_max is None else math.floor(self.x_max) + shift
        return low, high


@dataclass(frozen=True, slots=True)
class MetricSeries:
    """A downsampled metric series of one run."""

    run_id: str
    key: str
    x: str
    points: int
    """Source points inside the window."""
    buckets: tuple[Bucket, ...]
    origin: int | None = None
    """On the ``relative`` axis: the timestamp (ms) of the series' first point, which is x = 0."""


def series_query(x: str = "step", x_min: float | None = None, x_max: float | None = None,
                 max_points: int = DEFAULT_MAX_POINTS) -> SeriesQuery:
    """A checked `SeriesQuery`; bad input raises `InvalidParameterValue` naming the field."""
    if x not in X_AXES:
        raise InvalidParameterValue(f"x: must be one of {', '.join(X_AXES)}, got {x!r}")
    for name, value in (("x_min", x_min), ("x_max", x_max)):
        if value is not None and (isinstance(value, bool) or not math.isfinite(value)):
            raise InvalidParameterValue(f"{name}: must be a finite number, got {value!r}")
    if x_min is not None and x_max is not None and x_min > x_max:
        raise InvalidParameterValue(f"x_min: {x_min} is greater than x_max {x_max}")
    if isinstance(max_points, bool) or not isinstance(max_points, int) or not 1 <= max_points <= MAX_POINTS:
        raise InvalidParameterValue(f"max_points: must be an integer from 1 to {MAX_POINTS}, got {max_points!r}")
    return SeriesQuery(x, x_min, x_max, max_points)


def check_smoothing(smoothing: float) -> float:
    """The EMA weight: 0 (off) up to `MAX_SMOOTHING`."""
    if isinstance(smoothing, bool) or not (0.0 <= smoothing <= MAX_SMOOTHING):
        raise InvalidParameterValue(f"smoothing: must be a number from 0 to {MAX_SMOOTHING}, got {smoothing!r}")
    return float(smoothing)


@dataclass(frozen=True, slots=True)
class Grid:
    """Buckets of equal integer ``width`` from ``lo``: bucket ``i`` holds ``lo + i*width <= x < lo + (i+1)*width``;
    ``count`` buckets cover ``lo..hi`` and never exceed the budget."""

    lo: int
    width: int
    count: int

    @classmethod
    def over(cls, lo: int, hi: int, max_points: int) -> Grid:
        """The grid for the inclusive range ``lo..hi`` with at most ``max_points`` buckets."""
        span = hi - lo + 1
        width = -(-span // max_points)
        return cls(lo, width, -(-span // width))

    def starts(self) -> list[int]:
        """The first x of each bucket."""
        return [self.lo + i * self.width for i in range(self.count)]


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def downsample(xs: npt.ArrayLike, ys: npt.ArrayLike, max_points: int) -> tuple[Bucket, ...]:
    """Buckets of the points ``(xs[i], ys[i])``, sorted by x (integers): point by point when there are no more than
    ``max_points``, otherwise on `Grid.over` the points' x range."""
    import numpy as np  # not at import: the server's start-up path imports this module, and numpy costs ~0.1 s

    x = np.asarray(xs, dtype=np.int64)
    y = np.asarray(ys, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise InvalidParameterValue(f"xs, ys: need two 1-d arrays of one length, got {x.shape} and {y.shape}")
    if x.size == 0:
        return ()
    finite = np.isfinite(y)
    if x.size <= max_points:
        return tuple(Bucket(float(xi), v, v, v, 1, 0) if ok else Bucket(float(xi), None, None, None, 1, 1)
                     for xi, v, ok in zip(x.tolist(), y.tolist(), finite.tolist(), strict=True))
    grid = Grid.over(int(x[0]), int(x[-1]), max_points)
    starts = np.searchsorted(x, np.array(grid.starts(), dtype=np.int64), side="left")
    starts = np.unique(starts)  # empty buckets share their start with the next bucket
    counts = np.diff(np.append(starts, x.size))
    x_means = np.add.reduceat(x.astype(np.float64), starts) / counts
    finite_counts = np.add.reduceat(finite.astype(np.int64), starts)
    sums = np.add.reduceat(np.where(finite, y, 0.0), starts)
    lows = np.fmin.reduceat(np.where(finite, y, np.nan), starts)
    highs = np.fmax.reduceat(np.where(finite, y, np.nan), starts)
    buckets = []
    for xm, total, n, n_finite, low, high in zip(x_means.tolist(), sums.tolist(), counts.tolist(),
                                                  finite_counts.tolist(), lows.tolist(), highs.tolist(), strict=True):
        mean = total / n_finite if n_finite else None
        buckets.append(Bucket(xm, mean, _finite_or_none(low), _finite_or_none(high), n, n - n_finite))
    return tuple(buckets)


def smooth(buckets: Sequence[Bucket], weight: float) -> tuple[Bucket, ...]:
    """The debiased exponential moving average of the bucket means (the band is left as is).

    A bucket of ``k`` finite points moves the average as ``k`` points of its mean would (factor ``weight**k``), so
    one curve looks the same at every zoom level; with one point per bucket this is exactly TensorBoard's
    smoothing. Buckets without a finite value keep ``y = None`` and leave the average where it was.
    """
    if weight == 0.0:
        return tuple(buckets)
    average = 0.0
    mass = 0.0  # 1 - weight**(finite points so far): the debiasing factor
    out = []
    for bucket in buckets:
        finite = bucket.points - bucket.nonfinite
        if bucket.y is None or finite == 0:
            out.append(bucket)
            continue
        keep = weight ** finite
        average = keep * average + (1.0 - keep) * bucket.y
        mass = keep * mass + (1.0 - keep)
        out.append(bucket._replace(y=average / mass))
    return tuple(out)
