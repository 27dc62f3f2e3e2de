"""Metric series for charts under ``/api/v1``: a run's metric downsampled on the server, alone or overlaid.

``GET /runs/{run_id}/metric-series/{key}`` and ``GET /metrics/series?run_id=a&run_id=b&key=k`` answer at most
``max_points`` buckets per run (`capstan.tracking.series`): ``[x, y, min, max, count, nonfinite]`` rows, where
``y`` is the (optionally smoothed) mean and ``min``/``max`` the band of the raw finite values, so a spike survives
any zoom level. The path differs from the metric history route (``/runs/{run_id}/metrics/{key}``) because metric
keys may contain ``/``: a ``.../series`` suffix there would be ambiguous (decision 0520). Reading needs ``read`` on
each run's project.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from starlette.responses import Response

from capstan.server.api_v1_common import authorize_run, render, services
from capstan.server.errors import NAMES_AN_OBJECT
from capstan.tracking.series import (
    DEFAULT_MAX_POINTS,
    MAX_POINTS,
    MAX_RUNS,
    MAX_SMOOTHING,
    MetricSeries,
    SeriesQuery,
    check_smoothing,
    series_query,
    smooth,
)

COLUMNS = ("x", "y", "min", "max", "count", "nonfinite")
_PARALLEL = 4

router = APIRouter(tags=["metric series"])

Axis = Annotated[Literal["step", "time", "relative"], Query(
    description="step; time (ms since the epoch); relative (ms since the series' first point)")]
XMin = Annotated[float | None, Query(description="window start on the x axis (inclusive)")]
XMax = Annotated[float | None, Query(description="window end on the x axis (inclusive)")]
MaxPoints = Annotated[int, Query(ge=1, le=MAX_POINTS, description="most buckets per run")]
Smoothing = Annotated[float, Query(ge=0.0, le=MAX_SMOOTHING,
                                   description="EMA weight of the line (0: off), as TensorBoard's slider")]


class SeriesOut(BaseModel):
    run_id: str
    key: str
    x: str
    points: int
    origin: int | None = None
    columns: list[str]
    buckets: list[list[float | None]]


class OverlayOut(BaseModel):
    key: str
    x: str
    columns: list[str]
    series: list[SeriesOut]


def _json(series: MetricSeries, smoothing: float) -> dict[str, Any]:
    buckets = smooth(series.buckets, smoothing) if smoothing else series.buckets
    return {"run_id": series.run_id, "key": series.key, "x": series.x, "points": series.points,
            "origin": series.origin, "columns": COLUMNS, "buckets": [list(b) for b in buckets]}


def _read(request: Request, run_ids: Sequence[str], key: str, query: SeriesQuery) -> list[MetricSeries]:
    for run_id in dict.fromkeys(run_ids):
        authorize_run(request, run_id, "read")
    tracking = services(request).tracking
    if len(run_ids) == 1:
        return [tracking.metric_series(run_ids[0], key, query)]
    # The database aggregates each series; reading them side by side overlaps that work.
    with ThreadPoolExecutor(max_workers=min(len(run_ids), _PARALLEL), thread_name_prefix="series") as pool:
        return list(pool.map(lambda run_id: tracking.metric_series(run_id, key, query), run_ids))


@router.get("/runs/{run_id}/metric-series/{key:path}", response_model=SeriesOut, responses=NAMES_AN_OBJECT,
            summary="A run's metric downsampled for a chart")
def run_metric_series(request: Request, run_id: str, key: str, x: Axis = "step", x_min: XMin = None,
                      x_max: XMax = None, max_points: MaxPoints = DEFAULT_MAX_POINTS,
                      smoothing: Smoothing = 0.0) -> Response:
    """At most ``max_points`` buckets of metric ``key`` inside ``[x_min, x_max]``: rows of ``columns``
    (``x, y, min, max, count, nonfinite``); ``points`` counts the source points in the window."""
    query = series_query(x, x_min, x_max, max_points)
    weight = check_smoothing(smoothing)
    return render(_json(_read(request, [run_id], key, query)[0], weight))


@router.get("/metrics/series", response_model=OverlayOut, responses=NAMES_AN_OBJECT,
            summary="One metric of several runs downsampled for an overlaid chart")
def overlay_metric_series(request: Request,
                          run_id: Annotated[list[str], Query(min_length=1, max_length=MAX_RUNS)],
                          key: Annotated[str, Query(min_length=1)], x: Axis = "step", x_min: XMin = None,
                          x_max: XMax = None, max_points: MaxPoints = DEFAULT_MAX_POINTS,
                          smoothing: Smoothing = 0.0) -> Response:
    """The same buckets as the one-run route for each ``run_id`` (repeat the parameter), in the order given."""
    query = series_query(x, x_min, x_max, max_points)
    weight = check_smoothing(smoothing)
    series = _read(request, run_id, key, query)
    return render({"key": key, "x": x, "columns": COLUMNS, "series": [_json(s, weight) for s in series]})
